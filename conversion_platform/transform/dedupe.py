"""Deduplication within an hour: one conversion, one row.

Copies of one conversion (the pixel's and the backend's, or a log line's) share a dedupe
key, chosen by the first rule that applies:

1. `event_id`: the sender's `event_id` with the event name (the copies share it);
2. `order_id`: for purchases without a sender id, the order id with the event name;
3. `fingerprint`: otherwise the event's content (name, identity fields, value), with
   event times within a tolerance (default 2 minutes) counted as one.

Copies merge into one row: money and order fields from the backend or log copy,
cookies, IP, user agent and page URL from the browser, the earliest `event_time`, the
first non-empty value of every identifier any copy had, the most restrictive consent,
and `sources` listing which paths saw it. Merging is per hour; copies in other hours
are caught by the ledger (`store.ledger`).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np
import pandas as pd

from conversion_platform import events
from conversion_platform.ingest.records import GENERATED_EVENT_ID_PREFIX

RULE_EVENT_ID = "event_id"
RULE_ORDER_ID = "order_id"
RULE_FINGERPRINT = "fingerprint"

DEFAULT_FINGERPRINT_TOLERANCE = timedelta(minutes=2)

#: Fields taken from the backend (or log) copy first: money and the order.
SERVER_FIRST_COLUMNS: tuple[str, ...] = ("value", "value_verified", "currency", "order_id", "items")
#: Fields taken from the browser copy first.
BROWSER_FIRST_COLUMNS: tuple[str, ...] = (
    "client_ip",
    "user_agent",
    "page_url",
    "referrer",
    "mpid",
    *events.COOKIE_COLUMNS,
    "action_source",
)
_FINGERPRINT_FIELDS: tuple[str, ...] = (
    "event_name",
    "mpid",
    "email_sha256",
    "phone_sha256",
    "external_id_sha256",
    "value",
)
_CONSENT_RANK = {events.CONSENT_GRANTED: 0, events.CONSENT_UNKNOWN: 1, events.CONSENT_DENIED: 2}
_CONSENT_BY_RANK = np.array(
    [events.CONSENT_GRANTED, events.CONSENT_UNKNOWN, events.CONSENT_DENIED], dtype=object
)
_SOURCE_ORDER = {events.SOURCE_PIXEL: 0, events.SOURCE_SERVER: 1, events.SOURCE_LOG: 2}

DEDUPED_COLUMNS: tuple[str, ...] = (*events.CANONICAL_COLUMNS, *events.STAGE_COLUMNS["dedupe"])


def _digest(parts: pd.Series) -> pd.Series:
    uniques = parts.unique()
    mapping = {u: hashlib.sha256(u.encode()).hexdigest()[:40] for u in uniques}
    return parts.map(mapping)


def assign_dedupe_keys(
    frame: pd.DataFrame, tolerance: timedelta = DEFAULT_FINGERPRINT_TOLERANCE
) -> pd.DataFrame:
    """Add `dedupe_key` and `dedupe_rule` to each copy (no rows are removed)."""
    frame = frame.copy()
    event_id = frame["event_id"].astype("string")
    generated = event_id.isna() | event_id.str.startswith(GENERATED_EVENT_ID_PREFIX).fillna(True)
    name = frame["event_name"].astype("string").fillna("")
    order = frame["order_id"].astype("string")
    by_order = generated & (name == events.PURCHASE) & order.notna()
    by_fingerprint = generated & ~by_order

    rule = pd.Series(RULE_EVENT_ID, index=frame.index, dtype="object")
    rule[by_order] = RULE_ORDER_ID
    rule[by_fingerprint] = RULE_FINGERPRINT
    key = pd.Series("", index=frame.index, dtype="object")
    key[~generated] = ("id\x1f" + name[~generated] + "\x1f" + event_id[~generated]).astype(object)
    key[by_order] = ("order\x1f" + name[by_order] + "\x1f" + order[by_order]).astype(object)
    if by_fingerprint.any():
        fp = frame.loc[by_fingerprint]
        content = fp["event_name"].astype("string").fillna("")
        for column in _FINGERPRINT_FIELDS[1:]:
            content = content + "\x1f" + fp[column].astype("string").fillna("")
        times = fp["event_time"]
        order_idx = np.lexsort((times.values.astype("int64"), content.values.astype(str)))
        sorted_content = content.values[order_idx]
        sorted_times = times.values.astype("int64")[order_idx]
        cluster_start = np.empty(len(order_idx), dtype="int64")
        tol = int(tolerance.total_seconds() * 1e9)
        start = 0
        for i in range(len(order_idx)):
            if (
                i == 0
                or sorted_content[i] != sorted_content[i - 1]
                or sorted_times[i] - start > tol
            ):
                start = sorted_times[i]
            cluster_start[i] = start
        starts = pd.Series(cluster_start, index=fp.index[order_idx]).reindex(fp.index)
        key[by_fingerprint] = ("fp\x1f" + content + "\x1f" + starts.astype(str)).astype(object)
    frame["dedupe_rule"] = rule.astype("string")
    frame["dedupe_key"] = _digest(key).astype("string")
    return frame


def merge_copies(frame: pd.DataFrame) -> pd.DataFrame:
    """Merge the copies of each (hour, dedupe key) into one row (keys must be assigned)."""
    if frame.empty:
        out = events.empty_frame(DEDUPED_COLUMNS)
        return out
    frame = frame.reset_index(drop=True)
    group_cols = [events.HOUR_COLUMN, "dedupe_key"]
    duplicated = frame.duplicated(group_cols, keep=False)
    singles = frame.loc[~duplicated].copy()
    singles["sources"] = singles["source"].astype("string")
    singles["copies"] = 1
    copies = frame.loc[duplicated]
    if copies.empty:
        merged = singles
    else:
        merged = pd.concat([singles, _merge_groups(copies, group_cols)], ignore_index=True)
    merged = merged.sort_values([events.HOUR_COLUMN, "received_at", "event_id"], kind="stable")
    return events.conform(merged, DEDUPED_COLUMNS)


def _merge_groups(copies: pd.DataFrame, group_cols: list[str]) -> pd.DataFrame:
    source_rank = copies["source"].map(_SOURCE_ORDER).fillna(9).astype(int)
    # Browser-first order: pixel, server, log. Server-first: server, log, pixel.
    browser_first = copies.assign(_rank=source_rank).sort_values(
        [*group_cols, "_rank"], kind="stable"
    )
    server_first = copies.assign(_rank=(source_rank + 2) % 3).sort_values(
        [*group_cols, "_rank"], kind="stable"
    )
    other_columns = [
        c
        for c in copies.columns
        if c
        not in (
            *group_cols,
            *SERVER_FIRST_COLUMNS,
            *BROWSER_FIRST_COLUMNS,
            "event_time",
            "received_at",
        )
        and not c.startswith("consent_")
        and c not in ("source", "dedupe_rule")
    ]
    grouped_browser = browser_first.groupby(group_cols, sort=True, observed=True)
    grouped_server = server_first.groupby(group_cols, sort=True, observed=True)
    parts = [
        grouped_server[list(SERVER_FIRST_COLUMNS) + other_columns].first(),
        grouped_browser[list(BROWSER_FIRST_COLUMNS)].first(),
        grouped_browser[["event_time", "received_at"]].min(),
        grouped_browser["dedupe_rule"].first(),
    ]
    for column in ("consent_ad_user_data", "consent_ad_personalization"):
        ranks = browser_first[column].map(_CONSENT_RANK).fillna(1).astype(int)
        strictest = ranks.groupby([browser_first[c] for c in group_cols], sort=True).max()
        parts.append(
            pd.Series(_CONSENT_BY_RANK[strictest.to_numpy()], index=strictest.index, name=column)
        )
    flags = (
        pd.get_dummies(browser_first["source"].astype(str))
        .groupby([browser_first[c] for c in group_cols], sort=True)
        .max()
    )
    sources = pd.Series("", index=flags.index, dtype=object)
    for source in events.SOURCES:
        if source in flags.columns:
            sources = sources.where(~flags[source], sources + "," + source)
    parts.append(sources.str.lstrip(",").rename("sources"))
    parts.append(grouped_browser.size().rename("copies"))
    merged = pd.concat(parts, axis=1).reset_index()
    # The merged row carries the source of its money fields' copy.
    merged["source"] = grouped_server["source"].first().to_numpy()
    # Without a sender id the merged row keeps a deterministic id: the smallest of its copies'.
    if "event_id" in copies.columns:
        merged["event_id"] = grouped_browser["event_id"].min().to_numpy()
    return merged


def deduplicate_hour_frames(
    frame: pd.DataFrame, tolerance: timedelta = DEFAULT_FINGERPRINT_TOLERANCE
) -> pd.DataFrame:
    """Assign keys and merge copies within each hour of `frame`."""
    if frame.empty:
        return events.empty_frame(DEDUPED_COLUMNS)
    return merge_copies(assign_dedupe_keys(frame, tolerance))
