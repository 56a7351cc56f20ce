"""Merging the copies of each conversion within an hour into one row.

Which copies are one conversion is `dedupe_keys`' job; this module decides what the one
row holds (all vectorised; copies are ordered per conversion, then the first non-empty
value of each column is taken):

| columns | taken from |
|---|---|
| `value`, `currency`, `value_verified`, `items` | together, from the first copy with a value, in the order server, log, pixel (the backend's money; the pixel's is unverified) |
| `order_id` | first non-empty, server, log, pixel |
| hashed email, phone, names, customer id; city, region, postal code, country | first non-empty, server, log, pixel |
| `client_ip`, `user_agent`, `page_url`, `referrer`, `action_source`, `mpid`, cookies (`fbc`, `fbp`, `ttp`), click ids | first non-empty, pixel, server, log (what the browser saw) |
| `event_time` | the earliest of the copies whose own time is plausible (not older than the maximum age, not more than the clock-skew allowance after it was received); the earliest of all when none is |
| `received_at` | the earliest |
| consent (`consent_ad_user_data`, `consent_ad_personalization`) | `denied` if any copy says denied, else `granted` if any says granted, else `unknown`: a stated denial beats a grant, and a stated choice beats a copy that doesn't know (a backend usually can't see the browser's consent banner, so its `unknown` is not a disagreement) |
| `source` | the copy the money came from |
| `sources` | every path that saw it, comma-joined in the fixed order pixel, server, log |
| `event_id` | the sender's id when one covers every copy; for an order seen under several ids, the smallest; otherwise `cpdd_` + SHA-256 of the dedupe key (deterministic) |
| `dedupe_rule`, `dedupe_key` | from `dedupe_keys` |
| `copies` | how many copies were merged |

Within one path and rank, ties are broken by time received, event time and then the
copy's content, so the result never depends on the order rows arrive in. Every
identifier any copy had is kept (one value per column; where copies disagree, the order
above decides). Copies in other hours are never merged into a row here: the ledger
(`hourly_dedupe`) counts them as late duplicates.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from conversion_platform import events
from conversion_platform.transform.dedupe_keys import (
    DEFAULT_FINGERPRINT_TOLERANCE,
    KeyedCopies,
    assign_dedupe_keys,
)

#: Client clocks ahead of the server by up to this are plausible (validation clamps them).
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)
DEFAULT_MAX_EVENT_AGE = timedelta(days=7)

MONEY_COLUMNS: tuple[str, ...] = ("value", "currency", "value_verified", "items")
SERVER_FIRST_COLUMNS: tuple[str, ...] = (
    "order_id",
    *events.HASHED_IDENTITY_COLUMNS,
    *events.LOCATION_FIELDS,
)
BROWSER_FIRST_COLUMNS: tuple[str, ...] = (
    "client_ip",
    "user_agent",
    "page_url",
    "referrer",
    "action_source",
    "mpid",
    *events.COOKIE_COLUMNS,
    *events.CLICK_ID_COLUMNS,
)
CONSENT_COLUMNS: tuple[str, ...] = ("consent_ad_user_data", "consent_ad_personalization")
#: Columns set from the conversion as a whole rather than picked from one copy.
CONVERSION_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_name",
    "event_time",
    "received_at",
    "source",
)

#: The merged row's columns.
DEDUPED_COLUMNS: tuple[str, ...] = (*events.CANONICAL_COLUMNS, *events.STAGE_COLUMNS["dedupe"])

_BROWSER_RANK = {events.SOURCE_PIXEL: 0, events.SOURCE_SERVER: 1, events.SOURCE_LOG: 2}
_SERVER_RANK = {events.SOURCE_SERVER: 0, events.SOURCE_LOG: 1, events.SOURCE_PIXEL: 2}
_CONSENT_RANK = {events.CONSENT_UNKNOWN: 0, events.CONSENT_GRANTED: 1, events.CONSENT_DENIED: 2}
_CONSENT_BY_RANK = np.array(
    [events.CONSENT_UNKNOWN, events.CONSENT_GRANTED, events.CONSENT_DENIED], dtype=object
)
_GROUP = "_conversion"


def _plausible_times(frame: pd.DataFrame, max_event_age: timedelta) -> pd.Series:
    """True where a copy's event time is plausible relative to when it was received."""
    lag = frame["received_at"] - frame["event_time"]
    return (
        (lag <= pd.Timedelta(max_event_age)) & (lag >= -pd.Timedelta(CLOCK_SKEW_ALLOWANCE))
    ).fillna(False)


def _ordered(copies: pd.DataFrame, rank: dict[str, int], columns: list[str]) -> pd.DataFrame:
    """`columns` of the copies, ordered per conversion by path rank, then deterministically."""
    ranks = copies["source"].astype("object").map(rank).fillna(9).astype("int64")
    keys = [_GROUP, "_rank", "received_at", "event_time", "_content"]
    subset = copies[[c for c in dict.fromkeys([*keys[:1], *keys[2:], *columns])]]
    return subset.assign(_rank=ranks.to_numpy()).sort_values(keys, kind="stable")


def _first_rows(ordered: pd.DataFrame) -> pd.Series:
    return ordered.drop_duplicates(_GROUP).set_index(_GROUP)["_row"]


def _merge_groups(copies: pd.DataFrame, max_event_age: timedelta) -> pd.DataFrame:
    """One row per `_conversion` of `copies` (every group has two or more copies)."""
    copies = copies.assign(
        _row=np.arange(len(copies)),
        _content=pd.util.hash_pandas_object(
            copies[list(events.STORED_COLUMNS)], index=False
        ).to_numpy(),
    )
    server_first = _ordered(copies, _SERVER_RANK, [*SERVER_FIRST_COLUMNS, "value", "_row"])
    browser_first = _ordered(copies, _BROWSER_RANK, list(BROWSER_FIRST_COLUMNS))
    by_server = server_first.groupby(_GROUP, sort=True)
    by_browser = browser_first.groupby(_GROUP, sort=True)

    parts: list[pd.DataFrame | pd.Series] = [
        copies.groupby(_GROUP, sort=True)[
            [events.HOUR_COLUMN, "dedupe_key", "dedupe_rule", "conversion_event_id", "event_name"]
        ].first(),
        by_server[list(SERVER_FIRST_COLUMNS)].first(),
        by_browser[list(BROWSER_FIRST_COLUMNS)].first(),
    ]

    # Money travels as one unit: value, currency, verification and items of one copy.
    first_any = _first_rows(server_first)
    first_valued = _first_rows(server_first[server_first["value"].notna()])
    money_rows = first_valued.reindex(first_any.index).fillna(first_any).astype("int64")
    money = copies.iloc[money_rows.to_numpy()][[*MONEY_COLUMNS, "source"]]
    money.index = money_rows.index
    parts.append(money)

    plausible = _plausible_times(copies, max_event_age)
    all_times = copies.groupby(_GROUP, sort=True)["event_time"].min()
    plausible_times = copies.loc[plausible].groupby(_GROUP, sort=True)["event_time"].min()
    parts.append(plausible_times.reindex(all_times.index).fillna(all_times).rename("event_time"))
    parts.append(copies.groupby(_GROUP, sort=True)["received_at"].min())

    for column in CONSENT_COLUMNS:
        ranks = copies[column].astype("object").map(_CONSENT_RANK).fillna(0).astype("int64")
        strictest = ranks.groupby(copies[_GROUP], sort=True).max()
        parts.append(
            pd.Series(_CONSENT_BY_RANK[strictest.to_numpy()], index=strictest.index, name=column)
        )

    flags = pd.DataFrame(
        {s: (copies["source"] == s).fillna(False).to_numpy() for s in events.SOURCES},
        index=copies[_GROUP].to_numpy(),
    )
    seen = flags.groupby(level=0, sort=True).max()
    sources = pd.Series("", index=seen.index, dtype=object)
    for source in events.SOURCES:
        sources = sources.where(~seen[source], sources + "," + source)
    parts.append(sources.str.lstrip(",").rename("sources"))
    parts.append(copies.groupby(_GROUP, sort=True).size().rename("copies"))

    merged = pd.concat(parts, axis=1)
    merged["event_id"] = merged.pop("conversion_event_id")
    return merged.reset_index(drop=True)


def merge_copies(
    keyed: pd.DataFrame, max_event_age: timedelta = DEFAULT_MAX_EVENT_AGE
) -> pd.DataFrame:
    """One row per (hour, dedupe_key) of copies whose keys are assigned."""
    if keyed.empty:
        return events.empty_frame(DEDUPED_COLUMNS)
    keyed = keyed.reset_index(drop=True)  # a new frame: adding a column leaves the caller's alone
    keyed[_GROUP] = keyed.groupby([events.HOUR_COLUMN, "dedupe_key"], sort=False).ngroup()
    sizes = keyed.groupby(_GROUP, sort=False)[_GROUP].transform("size")
    single = (sizes == 1).to_numpy()
    singles = keyed.loc[single].copy()
    singles["sources"] = singles["source"].astype("string")
    singles["copies"] = 1
    singles["event_id"] = singles["conversion_event_id"]
    frames = [singles]
    if not single.all():
        frames.append(_merge_groups(keyed.loc[~single], max_event_age))
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else singles
    merged = events.conform(merged, DEDUPED_COLUMNS)
    merged = merged.sort_values(
        [events.HOUR_COLUMN, "received_at", "event_id", "dedupe_key"], kind="stable"
    )
    return merged.reset_index(drop=True)


def conformed(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """`frame` as `events.conform` would give it; as is when it already is (no copy)."""
    dtypes = events.column_dtypes(columns)
    if list(frame.columns) == list(columns) and all(
        str(frame[c].dtype) == dtypes[c] for c in columns
    ):
        return frame.reset_index(drop=True)
    return events.conform(frame, columns)


def deduplicate_hour_frames(
    frame: pd.DataFrame,
    tolerance: timedelta = DEFAULT_FINGERPRINT_TOLERANCE,
    max_event_age: timedelta = DEFAULT_MAX_EVENT_AGE,
) -> tuple[pd.DataFrame, KeyedCopies]:
    """Assign keys and merge copies within each hour of `frame`.

    Returns the merged rows and the keyed copies (whose `match_keys` the ledger needs).
    """
    keyed = assign_dedupe_keys(conformed(frame, events.CANONICAL_COLUMNS), tolerance)
    return merge_copies(keyed.frame, max_event_age), keyed
