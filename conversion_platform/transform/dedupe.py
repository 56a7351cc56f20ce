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
import pyarrow as pa

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

_NAT = np.iinfo(np.int64).min
_LAST = np.iinfo(np.int64).max
#: The stage's own columns of a keyed copy (`dedupe_keys.KeyedCopies.frame`).
_KEYED_COLUMNS: tuple[str, ...] = (
    *events.CANONICAL_COLUMNS,
    "dedupe_key",
    "dedupe_rule",
    "conversion_event_id",
)
#: Columns whose merged value is the first present one in the rows' own order.
_AS_RECEIVED_COLUMNS: tuple[str, ...] = (
    events.HOUR_COLUMN,
    "dedupe_key",
    "dedupe_rule",
    "conversion_event_id",
    "event_name",
)


def _nanos(values: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch of a UTC time column (NaT: int64's minimum)."""
    return values.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _nat_last(nanos: np.ndarray) -> np.ndarray:
    """Sort keys that put missing times last, as `sort_values` does."""
    return np.where(nanos == _NAT, _LAST, nanos)


def _plausible(
    received: np.ndarray, event_time: np.ndarray, max_event_age: timedelta
) -> np.ndarray:
    """True where a copy's event time is plausible relative to when it was received."""
    known = (received != _NAT) & (event_time != _NAT)
    lag = np.where(known, received - event_time, 0)
    oldest = pd.Timedelta(max_event_age).value
    skew = pd.Timedelta(CLOCK_SKEW_ALLOWANCE).value
    return known & (lag <= oldest) & (lag >= -skew)


def _first_present(
    order: np.ndarray, groups: np.ndarray, present: np.ndarray, count: int
) -> np.ndarray:
    """Per group, the row of the first present value in `order` (-1 when none is).

    `order` lists rows grouped by group (ascending), each group's rows in priority order.
    """
    rows = order[present[order]]
    out = np.full(count, -1, dtype=np.int64)
    if len(rows):
        of = groups[rows]
        first = np.empty(len(rows), dtype=bool)
        first[0] = True
        np.not_equal(of[1:], of[:-1], out=first[1:])
        out[of[first]] = rows[first]
    return out


def _content_hashes(frame: pd.DataFrame, rows: np.ndarray, tied: np.ndarray) -> np.ndarray:
    """Per row of `rows`, a hash of the copy's content where `tied` says so (0 elsewhere):
    the last tie-breaker, needed only among copies of one conversion received at the
    same moment. `tied` holds positions in `rows`."""
    out = np.zeros(len(rows), dtype=np.uint64)
    if len(tied):
        columns = [c for c in events.STORED_COLUMNS if c in frame.columns]
        at = rows[tied]
        out[tied] = pd.util.hash_pandas_object(frame.iloc[at][columns], index=False).to_numpy()
    return out


def _tied(groups: np.ndarray, received: np.ndarray, event_time: np.ndarray) -> np.ndarray:
    """Rows sharing group, time received and event time with another row."""
    order = np.lexsort((event_time, received, groups))
    g, r, e = groups[order], received[order], event_time[order]
    same = (g[1:] == g[:-1]) & (r[1:] == r[:-1]) & (e[1:] == e[:-1])
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    return np.sort(order[tied])


def _rank_of(values: np.ndarray, rank: dict[str, int], other: int) -> np.ndarray:
    """Per value its rank (`other` for missing or unlisted values)."""
    ranks = np.full(len(values), other, dtype=np.int64)
    for name, value in rank.items():
        ranks[values == name] = value
    return ranks


def _merge_groups(
    frame: pd.DataFrame,
    rows_in: np.ndarray,
    groups: np.ndarray,
    count: int,
    max_event_age: timedelta,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """What the one row of each group (0..count-1) of two or more copies holds.

    The copies are the rows `rows_in` of `frame` (group `groups[i]` for row `rows_in[i]`);
    they are read column by column, never copied as a frame (at a million records a copy
    of the merged copies' rows was 0.3 GB at dedupe's peak). Returns (per column, the
    position in `rows_in` each group's value comes from, -1 for none; per column, values
    computed for the group; the group's copy count). All on integer arrays: the copies are
    ordered per group by path rank, time received, event time and content, and the first
    present value of each column is taken.
    """

    def present(column: str) -> np.ndarray:
        # Arrow answers from the validity bitmap: no value is read or copied.
        return frame[column].notna().to_numpy()[rows_in]

    def objects(column: str) -> np.ndarray:
        return frame[column].iloc[rows_in].to_numpy(dtype=object, na_value=None)

    source = objects("source")
    received = _nanos(frame["received_at"])[rows_in]
    event_time = _nanos(frame["event_time"])[rows_in]
    received_key, event_key = _nat_last(received), _nat_last(event_time)
    content = _content_hashes(frame, rows_in, _tied(groups, received_key, event_key))

    def ordered(rank: dict[str, int]) -> np.ndarray:
        ranks = _rank_of(source, rank, 9)
        return np.lexsort((content, event_key, received_key, ranks, groups))

    def firsts(order: np.ndarray, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {c: _first_present(order, groups, present(c), count) for c in columns}

    rows: dict[str, np.ndarray] = {}
    as_received = np.argsort(groups, kind="stable")
    rows.update(firsts(as_received, _AS_RECEIVED_COLUMNS))
    server_first = ordered(_SERVER_RANK)
    rows.update(firsts(server_first, SERVER_FIRST_COLUMNS))
    rows.update(firsts(ordered(_BROWSER_RANK), BROWSER_FIRST_COLUMNS))

    # Money travels as one unit: value, currency, verification and items of one copy.
    everything = np.ones(len(rows_in), dtype=bool)
    first_any = _first_present(server_first, groups, everything, count)
    first_valued = _first_present(server_first, groups, present("value"), count)
    money = np.where(first_valued >= 0, first_valued, first_any)
    for column in (*MONEY_COLUMNS, "source"):
        rows[column] = money

    # The earliest plausible event time; the earliest of all when none is plausible.
    implausible = ~_plausible(received, event_time, max_event_age)
    rows["event_time"] = _first_present(
        np.lexsort((event_key, implausible, groups)), groups, everything, count
    )
    rows["received_at"] = _first_present(
        np.lexsort((received_key, groups)), groups, everything, count
    )

    computed: dict[str, np.ndarray] = {}
    for column in CONSENT_COLUMNS:
        values = objects(column)
        strictest = np.zeros(count, dtype=np.int64)
        np.maximum.at(strictest, groups, _rank_of(values, _CONSENT_RANK, 0))
        computed[column] = _CONSENT_BY_RANK[strictest]

    # Every path that saw it, in the fixed order pixel, server, log.
    seen = np.zeros(count, dtype=np.int64)
    for bit, name in enumerate(events.SOURCES):
        seen[groups[source == name]] |= 1 << bit
    combinations = np.array(
        [
            ",".join(name for bit, name in enumerate(events.SOURCES) if code >> bit & 1)
            for code in range(1 << len(events.SOURCES))
        ],
        dtype=object,
    )
    computed["sources"] = combinations[seen]
    return rows, computed, np.bincount(groups, minlength=count)


def _group_codes(keyed: pd.DataFrame) -> tuple[np.ndarray, int]:
    """A code per distinct (hour, dedupe_key), numbered in order of first appearance."""
    hour_codes, hours = pd.factorize(keyed[events.HOUR_COLUMN], use_na_sentinel=False)
    key_codes, keys = pd.factorize(keyed["dedupe_key"], use_na_sentinel=False)
    if len(hours) <= 1:
        return key_codes.astype(np.int64), len(keys)
    codes, uniques = pd.factorize(hour_codes.astype(np.int64) * len(keys) + key_codes)
    return codes.astype(np.int64), len(uniques)


def _output_order(
    hour: np.ndarray, received: np.ndarray, event_id: pd.Series, dedupe_key: pd.Series
) -> np.ndarray:
    """Positions in (hour, received_at, event_id, dedupe_key) order, stable, missing last.

    Texts are compared only where hour and time received tie (rare): sorting every
    event id and key as text would cost more than the rest of the merge.
    """
    hour, received = _nat_last(hour), _nat_last(received)
    order = np.lexsort((received, hour))
    h, r = hour[order], received[order]
    same = (h[1:] == h[:-1]) & (r[1:] == r[:-1])
    if not same.any():
        return order
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    spots = np.flatnonzero(tied)
    rows = order[spots]
    run = np.cumsum(np.r_[True, ~same])[spots]

    def text_rank(values: pd.Series) -> np.ndarray:
        codes, _ = pd.factorize(values.iloc[rows], sort=True)
        return np.where(codes < 0, len(rows), codes)

    within = np.lexsort((spots, text_rank(dedupe_key), text_rank(event_id), run))
    order[spots] = rows[within]
    return order


def merge_copies(
    keyed: pd.DataFrame, max_event_age: timedelta = DEFAULT_MAX_EVENT_AGE
) -> pd.DataFrame:
    """One row per (hour, dedupe_key) of copies whose keys are assigned.

    Every output column is one `take` from the copies: per output row, the copy its value
    comes from (a single copy's own row; for merged copies, the row each policy picks).
    """
    if keyed.empty:
        return events.empty_frame(DEDUPED_COLUMNS)
    keyed = conformed(keyed, _KEYED_COLUMNS)
    groups, count = _group_codes(keyed)
    sizes = np.bincount(groups, minlength=count)
    single = sizes[groups] == 1
    single_rows = np.flatnonzero(single)
    multi_rows = np.flatnonzero(~single)
    # Merged groups renumbered 0..k-1 in order of first appearance (as the former groupby).
    multi_codes, multi_groups = pd.factorize(groups[multi_rows])
    picked, computed, copies = _merge_groups(
        keyed,
        multi_rows,
        multi_codes.astype(np.int64),
        len(multi_groups),
        max_event_age,
    )
    n_single = len(single_rows)

    def rows_of(column: str) -> np.ndarray:
        """Per output row (singles, then merged groups), the copy its `column` comes from."""
        merged = picked[column]
        return np.concatenate([single_rows, np.where(merged >= 0, multi_rows[merged], -1)])

    source_column = {"event_id": "conversion_event_id"}
    taken = {*picked, "event_id"}
    # The rows that set the output's order; every other column's rows are made as the
    # column is taken (at a million records they were 0.25 GB held at once).
    index_of = {
        c: rows_of(source_column.get(c, c))
        for c in ("event_id", "dedupe_key", events.HOUR_COLUMN, "received_at")
    }
    hour = _nanos(keyed[events.HOUR_COLUMN])
    received = _nanos(keyed["received_at"])

    def at_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, values[rows], _NAT)

    event_id = keyed["conversion_event_id"].array.take(index_of["event_id"], allow_fill=True)
    dedupe_key = keyed["dedupe_key"].array.take(index_of["dedupe_key"], allow_fill=True)
    order = _output_order(
        at_rows(hour, index_of[events.HOUR_COLUMN]),
        at_rows(received, index_of["received_at"]),
        pd.Series(event_id),
        pd.Series(dedupe_key),
    )

    out: dict[str, object] = {}
    dtypes = events.column_dtypes(DEDUPED_COLUMNS)
    for column in DEDUPED_COLUMNS:
        if column in taken:
            name = source_column.get(column, column)
            rows = index_of[column] if column in index_of else rows_of(name)
            out[column] = keyed[name].array.take(rows[order], allow_fill=True)
        elif column == "copies":
            counts = np.concatenate([np.ones(n_single, dtype=np.int64), copies])
            out[column] = counts[order]
        else:
            single = keyed["source"] if column == "sources" else keyed[column]
            out[column] = _computed_column(
                single, single_rows, computed[column], order, dtypes[column]
            )
    return pd.DataFrame(out, columns=list(DEDUPED_COLUMNS), copy=False)


def _computed_column(
    single: pd.Series,
    single_rows: np.ndarray,
    merged_values: np.ndarray,
    order: np.ndarray,
    dtype: str,
) -> object:
    """A column computed for merged groups: the single copies' own values at `single_rows`,
    then the groups' `merged_values`, in output `order`.

    The computed columns (sources, consent) are text, and stay in Arrow: as Python
    objects, each was a million `str` at a million records, at the moment dedupe's merge
    set the run's peak."""
    parts = [
        events.arrow_text(single).take(pa.array(single_rows)),
        events.objects_as_large_text(merged_values),
    ]
    return pd.array(pa.concat_arrays(parts).take(pa.array(order)), dtype=dtype)


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
