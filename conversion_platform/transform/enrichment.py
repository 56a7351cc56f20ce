"""Enrichment: a conversion gets the identifiers its person was seen with.

Contact identifiers (hashed email and phone in both forms, hashed external id) are the
person's, whenever seen: the person's earliest-seen one of each kind fills a conversion
that lacks it. Click ids are time-bound: a conversion gets, per click type, the most
recent click id its person was seen with *before* the conversion and still inside that
platform's click-through window (`IdentityRules.click_windows`). Meta's `fbc` is filled
from a stored fbc cookie, or built from an enriched fbclid with the click's time
(`fb.1.<click ms>.<fbclid>`, Meta's documented form). Values a conversion already has
are never replaced.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from conversion_platform.transform.identity_rules import IdentityRules

#: Person identifier kind -> (column it fills, column its variant fills).
CONTACT_FILLS: dict[str, tuple[str, str | None]] = {
    "email": ("email_sha256", "email_google_sha256"),
    "phone": ("phone_sha256", "phone_digits_sha256"),
    "external_id": ("external_id_sha256", None),
}


def _fill(frame: pd.DataFrame, column: str, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Set `column` at `rows` where it is empty; returns the rows actually filled."""
    current = frame[column].to_numpy(dtype=object, na_value=None)[rows]
    empty = pd.isna(current) & pd.notna(values)
    if empty.any():
        target = frame[column].astype(object).to_numpy(copy=True)
        target[rows[empty]] = values[empty]
        frame[column] = pd.Series(target, index=frame.index).astype(frame[column].dtype)
    return rows[empty]


def enrich_contacts(
    frame: pd.DataFrame, rows: np.ndarray, row_person: np.ndarray, identifiers: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Fill missing contact identifiers of `rows` from their persons' identifiers.

    `identifiers`: person_id, kind, value, variant, first_seen_us. Returns, per kind,
    the rows it filled.
    """
    filled: dict[str, np.ndarray] = {}
    if identifiers.empty or not len(rows):
        return filled
    first = identifiers.sort_values(
        ["person_id", "kind", "first_seen_us", "value"], kind="stable"
    ).drop_duplicates(["person_id", "kind"])
    persons = pd.Index(row_person[rows])
    for kind, (column, variant_column) in CONTACT_FILLS.items():
        mine = first.loc[first["kind"] == kind].set_index("person_id")
        if mine.empty:
            continue
        position = mine.index.get_indexer(persons)
        has = position >= 0
        values = np.full(len(rows), None, dtype=object)
        values[has] = mine["value"].to_numpy(dtype=object)[position[has]]
        empty_before = frame[column].isna().to_numpy()[rows]
        done = _fill(frame, column, rows, values)
        if variant_column is not None:
            variants = np.full(len(rows), None, dtype=object)
            stored = mine["variant"].to_numpy(dtype=object)
            stored = np.where(pd.isna(stored), mine["value"].to_numpy(dtype=object), stored)
            variants[has] = stored[position[has]]
            # the variant goes with its own identifier only
            variants[~empty_before] = None
            _fill(frame, variant_column, rows, variants)
        if len(done):
            filled[kind] = done
    return filled


def enrich_click_ids(
    frame: pd.DataFrame,
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
        if click_type not in frame.columns:
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
            frame,
            click_type,
            matched["row"].to_numpy(np.int64),
            matched["click_id"].to_numpy(dtype=object),
        )
        if len(done):
            filled[click_type] = done
            if click_type == "fbclid":
                fbclid_seen = matched.set_index("row")["first_seen_us"].reindex(done)
    if fbclid_seen is not None and "fbc" in frame.columns:
        done = fbclid_seen.index.to_numpy(np.int64)
        ids = frame["fbclid"].to_numpy(dtype=object, na_value=None)[done]
        built = np.array(
            [
                f"fb.1.{int(t) // 1000}.{c}"
                for t, c in zip(fbclid_seen.to_numpy(), ids, strict=True)
            ],
            dtype=object,
        )
        derived = _fill(frame, "fbc", done, built)
        if len(derived):
            filled["fbc"] = np.union1d(filled.get("fbc", np.zeros(0, np.int64)), derived)
    return filled


def enriched_labels(size: int, filled: dict[str, np.ndarray]) -> pd.Series:
    """Per row, the comma-separated names of what enrichment added (None for nothing)."""
    labels = np.full(size, "", dtype=object)
    for name in sorted(filled):
        rows = filled[name]
        labels[rows] = labels[rows] + ("," + name)
    out = pd.Series(labels, dtype="string").str.lstrip(",")
    return out.where(out != "", pd.NA)
