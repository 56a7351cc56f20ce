"""Dedupe keys: which copies, within one hour, are one conversion.

Each copy gets the key of the first rule that applies to it:

1. `event_id`: the sender's `event_id` with the event name (`event_id:purchase:abc`).
   The pixel and the backend share it; ids the platform generated itself (prefix
   `cpgen_`) don't count as sent.
2. `order_id`: a purchase without a sender id, by its order id (`order_id:purchase:o-1`).
3. `fingerprint`: otherwise the event's content (event name, value and identity fields:
   `mpid` and hashed email, phone and customer id; when it has none of those, IP and
   user agent) with event times within a tolerance (default 2 minutes). Copies are
   clustered per content: sorted by event time, a copy more than the tolerance after the
   one before it starts a new conversion.
4. `none`: a copy with none of the above (no sender id, no order id, no identifier at
   all) has nothing to be matched on and stands alone.

Purchases also link through their order: a purchase copy that has a sender id *and* an
order id carries the order's key as well, so the access log's thank-you page hit (no
event id) and the pixel's copy of the same order are one conversion, and so are two
pixel copies of one order with different event ids (a reloaded thank-you page). Copies
sharing any key are one conversion (connected components, computed with vectorised
label propagation).

Per conversion the rule recorded is `event_id` when one sender id covers every copy,
`order_id` when the order had to link them, else `fingerprint` or `none`. Its
`dedupe_key` is that key (for fingerprints the content key with the cluster's first
event time), and its `match_keys` (every event id and order key it holds, or its content
key) are what the cross-hour ledger looks up. Keys are readable text (event and order ids
are not personal data; fingerprint content is a SHA-256 of already hashed fields); a key
longer than 200 characters is replaced by its SHA-256 so index entries stay small.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from conversion_platform import events
from conversion_platform.ingest.records import GENERATED_EVENT_ID_PREFIX
from conversion_platform.store.timecodes import utc_instants

RULE_EVENT_ID = "event_id"
RULE_ORDER_ID = "order_id"
RULE_FINGERPRINT = "fingerprint"
RULE_NONE = "none"
RULES: tuple[str, ...] = (RULE_EVENT_ID, RULE_ORDER_ID, RULE_FINGERPRINT, RULE_NONE)

DEFAULT_FINGERPRINT_TOLERANCE = timedelta(minutes=2)

#: Prefix of the deterministic event id a merged conversion gets when no sender id covers it.
DERIVED_EVENT_ID_PREFIX = "cpdd_"

#: Identity fields of a fingerprint, when any is present.
FINGERPRINT_IDENTITY: tuple[str, ...] = (
    "mpid",
    "email_sha256",
    "phone_sha256",
    "external_id_sha256",
)
#: Identity fields of a fingerprint for copies without any of the above (server logs).
FINGERPRINT_WEAK_IDENTITY: tuple[str, ...] = ("client_ip", "user_agent")

_MAX_KEY_LENGTH = 200
_SEP = "\x1f"


@dataclass
class KeyedCopies:
    """Copies with their conversion's key, and the keys each conversion is known by.

    `frame` is the input with `dedupe_key`, `dedupe_rule` and `conversion_event_id`
    added (one conversion = one (hour, dedupe_key)); `match_keys` has one row per
    (hour, dedupe_key, match_key) with the key's `kind` (a rule name).
    """

    frame: pd.DataFrame
    match_keys: pd.DataFrame


def sha256_text(values: pd.Series) -> pd.Series:
    """SHA-256 hex of each distinct text, hashed once per distinct value."""
    uniques = values.dropna().unique()
    mapping = {u: hashlib.sha256(str(u).encode()).hexdigest() for u in uniques}
    return values.map(mapping).astype("string")


def bounded_keys(keys: pd.Series, kind: str) -> pd.Series:
    """Keys longer than the limit become `<kind>:sha256:<digest>` (index entries stay small)."""
    keys = keys.astype("string")
    long = keys.str.len().fillna(0) > _MAX_KEY_LENGTH
    if long.any():
        keys = keys.copy()
        keys[long] = f"{kind}:sha256:" + sha256_text(keys[long])
    return keys


def derived_event_ids(dedupe_keys: pd.Series) -> pd.Series:
    """The deterministic event id of a conversion no sender id covers."""
    return (DERIVED_EVENT_ID_PREFIX + sha256_text(dedupe_keys).str.slice(0, 32)).astype("string")


def sender_event_ids(frame: pd.DataFrame) -> pd.Series:
    """The sender's event id, or NA where there is none (or the platform generated it)."""
    event_id = frame["event_id"].astype("string")
    generated = event_id.str.startswith(GENERATED_EVENT_ID_PREFIX).fillna(False).astype(bool)
    return event_id.mask(generated)


def _time_us(series: pd.Series) -> np.ndarray:
    values = utc_instants(series)
    out = values.to_numpy(dtype="datetime64[ns]").astype("int64") // 1_000
    return np.where(values.isna().to_numpy(), np.iinfo(np.int64).min, out)


def _hour_us(frame: pd.DataFrame) -> np.ndarray:
    return _time_us(frame[events.HOUR_COLUMN])


def _group_codes(hour_us: np.ndarray, keys: pd.Series) -> np.ndarray:
    """A code per distinct (hour, key); rows without a key get a code of their own."""
    n = len(keys)
    codes = (
        pd.DataFrame({"h": hour_us, "k": keys.to_numpy()})
        .groupby(["h", "k"], sort=False, dropna=True)
        .ngroup()
        .to_numpy()
    )
    missing = np.isnan(codes) if codes.dtype.kind == "f" else codes < 0
    codes = np.where(missing, -1, codes).astype(np.int64)
    top = int(codes.max()) + 1 if n and (codes >= 0).any() else 0
    codes[missing] = top + np.arange(int(missing.sum()))
    return codes


def _smallest_per_group(groups: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row, the smallest non-negative code of its group (-1 when the group has none)."""
    big = np.iinfo(np.int64).max
    values = np.where(codes < 0, big, codes).astype(np.int64)
    smallest = np.full(int(groups.max()) + 1 if len(groups) else 0, big, dtype=np.int64)
    np.minimum.at(smallest, groups, values)
    picked = smallest[groups]
    return np.where(picked == big, -1, picked)


def _largest_per_group(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the largest value of its group."""
    largest = np.full(int(groups.max()) + 1 if len(groups) else 0, np.iinfo(np.int64).min)
    np.maximum.at(largest, groups, values)
    return largest[groups]


def _distinct_per_group(groups: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row, how many distinct non-negative codes its group holds."""
    present = codes >= 0
    width = int(codes.max()) + 1 if present.any() else 1
    pairs = np.unique(groups[present].astype(np.int64) * width + codes[present])
    counts = np.bincount(pairs // width, minlength=int(groups.max()) + 1 if len(groups) else 0)
    return counts[groups]


def _text_at(texts: pd.Index | np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The text of each code (NA for -1)."""
    table = np.append(np.asarray(texts, dtype=object), pd.NA)
    return table[np.where(codes < 0, len(table) - 1, codes)]


def _smallest_texts(groups: np.ndarray, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(code of each row's text, -1 for NA; per row, the smallest text of its group, NA
    when it has none).

    Texts are sorted only in groups holding two or more distinct ones (an order seen
    under several event ids, say): elsewhere the group's one text is its smallest.
    """
    codes, texts = pd.factorize(values)
    smallest = _text_at(texts, _smallest_per_group(groups, codes))
    ambiguous = np.flatnonzero(_distinct_per_group(groups, codes) > 1)
    if len(ambiguous):
        sub_codes, sub_texts = pd.factorize(values.iloc[ambiguous], sort=True)
        smallest[ambiguous] = _text_at(sub_texts, _smallest_per_group(groups[ambiguous], sub_codes))
    return codes, smallest


def _connected_labels(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """Connected components of rows linked by equal `codes_a` or equal `codes_b`.

    Label propagation: each row takes the smallest label of its groups until nothing
    changes; the number of rounds is the longest chain of links (almost always 1-2).
    """
    n = len(codes_a)
    labels = np.arange(n, dtype=np.int64)
    if n == 0:
        return labels
    size_a, size_b = int(codes_a.max()) + 1, int(codes_b.max()) + 1
    while True:
        smallest = np.full(size_a, n, dtype=np.int64)
        np.minimum.at(smallest, codes_a, labels)
        step = smallest[codes_a]
        smallest = np.full(size_b, n, dtype=np.int64)
        np.minimum.at(smallest, codes_b, step)
        step = smallest[codes_b]
        if np.array_equal(step, labels):
            return labels
        labels = step


def _fingerprint_content(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(content text, has any identity) of each copy: name, value and identity fields."""
    strong = frame[list(FINGERPRINT_IDENTITY)].astype("string")
    weak = frame[list(FINGERPRINT_WEAK_IDENTITY)].astype("string")
    has_strong = strong.notna().any(axis=1)
    has_weak = weak.notna().any(axis=1)
    name = frame["event_name"].astype("string").fillna("")
    value = frame["value"].astype("float64").astype("string").fillna("")
    content = name + _SEP + value
    for column in FINGERPRINT_IDENTITY:
        content = content + _SEP + strong[column].where(has_strong).fillna("")
    for column in FINGERPRINT_WEAK_IDENTITY:
        content = content + _SEP + weak[column].where(~has_strong).fillna("")
    return content, (has_strong | has_weak)


def _cluster_fingerprints(
    hour_us: np.ndarray, match_key: pd.Series, time_us: np.ndarray, tolerance: timedelta
) -> np.ndarray:
    """First event time (µs) of each copy's cluster: same hour and content, gaps ≤ tolerance."""
    order = np.lexsort((time_us, match_key.to_numpy(dtype=object).astype(str), hour_us))
    hours, keys, times = hour_us[order], match_key.to_numpy(dtype=object)[order], time_us[order]
    tol = int(tolerance.total_seconds() * 1_000_000)
    new = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        new[1:] = (
            (hours[1:] != hours[:-1]) | (keys[1:] != keys[:-1]) | (times[1:] - times[:-1] > tol)
        )
    cluster = np.cumsum(new) - 1
    starts = times[new][cluster]
    out = np.empty(len(order), dtype=np.int64)
    out[order] = starts
    return out


def assign_dedupe_keys(
    frame: pd.DataFrame, tolerance: timedelta = DEFAULT_FINGERPRINT_TOLERANCE
) -> KeyedCopies:
    """Link the copies of each hour into conversions (no rows are removed)."""
    frame = frame.reset_index(drop=True)
    n = len(frame)
    hour_us = _hour_us(frame)
    name = frame["event_name"].astype("string").fillna("")
    sender = sender_event_ids(frame)
    order = frame["order_id"].astype("string")
    has_id = sender.notna().to_numpy()
    has_order = ((name == events.PURCHASE) & order.notna()).to_numpy()
    id_key = bounded_keys(("event_id:" + name + ":" + sender).where(has_id), RULE_EVENT_ID)
    order_key = bounded_keys(("order_id:" + name + ":" + order).where(has_order), RULE_ORDER_ID)
    linked = has_id | has_order

    # Rows linked by event id or order key: connected components within each hour.
    rule = np.full(n, RULE_NONE, dtype=object)
    dedupe_key = pd.Series(pd.NA, index=frame.index, dtype="string")
    conversion_event_id = pd.Series(pd.NA, index=frame.index, dtype="string")
    match_parts: list[pd.DataFrame] = []
    if linked.any():
        idx = np.flatnonzero(linked)
        sub_hours = hour_us[idx]
        ids = id_key.iloc[idx].reset_index(drop=True)
        orders = order_key.iloc[idx].reset_index(drop=True)
        component = _connected_labels(_group_codes(sub_hours, ids), _group_codes(sub_hours, orders))
        # Per component, on integer codes (pandas' string min/nunique run per group in Python).
        id_codes, first_id = _smallest_texts(component, ids)
        _, first_order = _smallest_texts(component, orders)
        _, first_sender = _smallest_texts(component, sender.iloc[idx].reset_index(drop=True))
        distinct_ids = _distinct_per_group(component, id_codes)
        all_have_id = _largest_per_group(component, (id_codes < 0).astype(np.int64)) == 0
        by_event_id = (distinct_ids == 1) & all_have_id
        key = pd.Series(np.where(by_event_id, first_id, first_order), dtype="string")
        rule[idx] = np.where(by_event_id, RULE_EVENT_ID, RULE_ORDER_ID)
        dedupe_key.iloc[idx] = key.array
        conversion_event_id.iloc[idx] = first_sender  # NA: derived below
        keyed = pd.DataFrame(
            {
                "hour_us": sub_hours,
                "dedupe_key": key.array,  # Arrow text: no Python str per key
                "id_key": ids,
                "order_key": orders,
            }
        )
        for column, kind in (("id_key", RULE_EVENT_ID), ("order_key", RULE_ORDER_ID)):
            part = keyed.loc[keyed[column].notna(), ["hour_us", "dedupe_key", column]]
            match_parts.append(part.rename(columns={column: "match_key"}).assign(kind=kind))

    # Everything else: fingerprints of content within the tolerance, or nothing to match.
    rest = ~linked
    if rest.any():
        idx = np.flatnonzero(rest)
        sub = frame.iloc[idx]
        content, identified = _fingerprint_content(sub)
        times = _time_us(sub["event_time"])
        fingerprinted = identified.to_numpy() & (times != np.iinfo(np.int64).min)
        if fingerprinted.any():
            fp_idx = idx[fingerprinted]
            match_key = (
                f"{RULE_FINGERPRINT}:"
                + name.iloc[fp_idx].reset_index(drop=True)
                + ":"
                + sha256_text(content[fingerprinted].reset_index(drop=True)).str.slice(0, 40)
            )
            match_key = bounded_keys(match_key, RULE_FINGERPRINT)
            starts = _cluster_fingerprints(
                hour_us[fp_idx], match_key, times[fingerprinted], tolerance
            )
            key = match_key + "@" + pd.Series(starts).astype(str)
            rule[fp_idx] = RULE_FINGERPRINT
            dedupe_key.iloc[fp_idx] = key.array
            match_parts.append(
                pd.DataFrame(
                    {
                        "hour_us": hour_us[fp_idx],
                        "dedupe_key": key.array,
                        "match_key": match_key.array,
                        "kind": RULE_FINGERPRINT,
                    }
                )
            )
        none_idx = idx[~fingerprinted]
        if len(none_idx):
            # Nothing to match on: identical copies (same generated id) are still one.
            own = frame["event_id"].astype("string").iloc[none_idx]
            if own.isna().any():
                columns = [c for c in events.STORED_COLUMNS if c in frame.columns]
                content = pd.util.hash_pandas_object(frame.iloc[none_idx][columns], index=False)
                own = own.fillna("row" + pd.Series(content.to_numpy(), index=own.index).astype(str))
            key = bounded_keys(f"{RULE_NONE}:" + name.iloc[none_idx] + ":" + own, RULE_NONE)
            dedupe_key.iloc[none_idx] = key.array
            conversion_event_id.iloc[none_idx] = frame["event_id"].astype("string").iloc[none_idx]
            match_parts.append(
                pd.DataFrame(
                    {
                        "hour_us": hour_us[none_idx],
                        "dedupe_key": key.array,
                        "match_key": key.array,
                        "kind": RULE_NONE,
                    }
                )
            )

    needs_id = conversion_event_id.isna() & dedupe_key.notna()
    if needs_id.any():
        conversion_event_id[needs_id] = derived_event_ids(dedupe_key[needs_id])
    out = frame  # reset_index above made it a frame of our own
    out["dedupe_rule"] = pd.Series(events.string_array(rule), index=frame.index)
    out["dedupe_key"] = dedupe_key
    out["conversion_event_id"] = conversion_event_id
    match_keys = (
        pd.concat(match_parts, ignore_index=True)
        .drop_duplicates(["hour_us", "dedupe_key", "match_key"])
        .reset_index(drop=True)
        if match_parts
        else pd.DataFrame(
            {
                "hour_us": pd.Series([], dtype="int64"),
                "dedupe_key": pd.Series([], dtype="string"),
                "match_key": pd.Series([], dtype="string"),
                "kind": pd.Series([], dtype="object"),
            }
        )
    )
    match_keys["dedupe_key"] = match_keys["dedupe_key"].astype("string")
    match_keys["match_key"] = match_keys["match_key"].astype("string")
    return KeyedCopies(out, match_keys)
