"""Enrichment: a conversion gets the identifiers its person was seen with.

Contact identifiers (hashed email and phone in both forms, hashed external id) are the
person's, whenever seen: the contact digests its person carries (`identity_persons`:
the earliest seen of each kind) fill a conversion that lacks them. Click ids are
time-bound: a conversion gets, per click type, the most recent click id its person was
seen with *before* the conversion and still inside that platform's click-through window
(`IdentityRules.click_windows`). Meta's `fbc` is filled from a stored fbc cookie, or
built from an enriched fbclid with the click's time (`fb.1.<click ms>.<fbclid>`, Meta's
documented form). Values a conversion already has are never replaced.

The functions work on the hour's columns as object arrays (`values`), filled in place,
so a million-row hour is not copied column by column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from conversion_platform import events
from conversion_platform.transform.identity_rules import IdentityRules

#: Person identifier kind -> (column it fills, column its variant fills).
CONTACT_FILLS: dict[str, tuple[str, str | None]] = {
    "email": ("email_sha256", "email_google_sha256"),
    "phone": ("phone_sha256", "phone_digits_sha256"),
    "external_id": ("external_id_sha256", None),
}
#: Every column enrichment may fill.
ENRICHABLE_COLUMNS: tuple[str, ...] = (
    "email_sha256",
    "email_google_sha256",
    "phone_sha256",
    "phone_digits_sha256",
    "external_id_sha256",
)


def _fill(
    values: dict[str, np.ndarray], column: str, rows: np.ndarray, found: np.ndarray
) -> np.ndarray:
    """Set `column` at `rows` where it is empty and something was found; the rows filled."""
    target = values[column]
    empty = pd.isna(target[rows]) & pd.notna(found)
    target[rows[empty]] = found[empty]
    return rows[empty]


def enrich_contacts(
    values: dict[str, np.ndarray], rows: np.ndarray, row_person: np.ndarray, persons: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Fill missing contact identifiers of `rows` from their persons' contact digests.

    `persons`: person_id and the contact columns (`identity_persons`). Returns, per kind,
    the rows it filled.
    """
    filled: dict[str, np.ndarray] = {}
    if persons.empty or not len(rows):
        return filled
    position = pd.Index(persons["person_id"]).get_indexer(row_person[rows])
    has = position >= 0
    rows, position = rows[has], position[has]
    for kind, (column, variant_column) in CONTACT_FILLS.items():
        done = _fill(values, column, rows, persons[column].to_numpy(dtype=object)[position])
        if not len(done):
            continue
        filled[kind] = done
        if variant_column is not None:
            # the variant goes with its own digest, so it is set exactly where that was
            at = position[np.isin(rows, done)]
            values[variant_column][done] = persons[variant_column].to_numpy(dtype=object)[at]
    return filled


def enrich_click_ids(
    values: dict[str, np.ndarray],
    rows: np.ndarray,
    row_person: np.ndarray,
    times_us: np.ndarray,
    clicks: pd.DataFrame,
    rules: IdentityRules,
) -> dict[str, np.ndarray]:
    """Fill missing click ids of `rows` with the latest click seen before, within its window.

    `clicks`: person_id, click_type, click_id, first_seen_us. Returns, per click type,
    the rows it filled.
    """
    filled: dict[str, np.ndarray] = {}
    if clicks.empty or not len(rows):
        return filled
    left = pd.DataFrame(
        {"row": rows, "person_id": row_person[rows].astype(object), "t": times_us[rows]}
    ).sort_values("t", kind="stable")
    fbclid_seen: pd.Series | None = None
    for click_type, window in rules.click_windows.items():
        if click_type not in values:
            continue
        right = clicks.loc[
            clicks["click_type"] == click_type, ["person_id", "click_id", "first_seen_us"]
        ].sort_values("first_seen_us", kind="stable")
        if right.empty:
            continue
        matched = pd.merge_asof(
            left,
            right.astype({"first_seen_us": np.int64}),
            left_on="t",
            right_on="first_seen_us",
            by="person_id",
            direction="backward",
            tolerance=int(window.total_seconds() * 1_000_000),
        )
        matched = matched.loc[matched["click_id"].notna()]
        if matched.empty:
            continue
        done = _fill(
            values,
            click_type,
            matched["row"].to_numpy(np.int64),
            matched["click_id"].to_numpy(dtype=object),
        )
        if len(done):
            filled[click_type] = done
            if click_type == "fbclid":
                fbclid_seen = matched.set_index("row")["first_seen_us"].reindex(done)
    if fbclid_seen is not None and "fbc" in values:
        done = fbclid_seen.index.to_numpy(np.int64)
        built = np.array(
            [
                f"fb.1.{int(t) // 1000}.{c}"
                for t, c in zip(fbclid_seen.to_numpy(), values["fbclid"][done], strict=True)
            ],
            dtype=object,
        )
        derived = _fill(values, "fbc", done, built)
        if len(derived):
            filled["fbc"] = np.union1d(filled.get("fbc", np.zeros(0, np.int64)), derived)
    return filled


def enriched_labels(size: int, filled: dict[str, np.ndarray]) -> pd.Series:
    """Per row, the comma-separated names of what enrichment added (None for nothing)."""
    labels = np.full(size, None, dtype=object)
    for name in sorted(filled):
        rows = filled[name]
        empty = pd.isna(labels[rows])
        labels[rows[empty]] = name
        labels[rows[~empty]] = labels[rows[~empty]] + ("," + name)
    return pd.Series(events.string_array(labels))
