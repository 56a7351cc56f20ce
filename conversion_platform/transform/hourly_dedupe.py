"""Deduplicating a run's hours, in order, against the persistent ledger.

Copies are merged within each hour (`dedupe`); then each hour, in its own transaction,
replaces its claims in the ledger and drops the conversions another hour within the
window already delivered (`cross_hour` has the rules). A range therefore gives the same
result as its hours run one by one, in order.

A late duplicate is never merged into the row that was delivered (that row has left):
it is counted, and when it is the backend's copy of a conversion only the pixel had
reported, it is counted as a late backend confirmation, and as a value mismatch when
its value differs from the delivered one. Those counts are what a data team checks
when server-side money arrives after the pixel's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.store.dedupe_figures import HourDedupeFigures, replace_hour_figures
from conversion_platform.store.ledger import (
    LEDGER_COLUMNS,
    begin_hour_claim,
    fetch_neighbours,
    forget_before,
    insert_claims,
)
from conversion_platform.store.timecodes import to_micros, utc_instants
from conversion_platform.transform.cross_hour import CrossHourRules, decide_owners
from conversion_platform.transform.dedupe import (
    DEDUPED_COLUMNS,
    DEFAULT_MAX_EVENT_AGE,
    conformed,
    deduplicate_hour_frames,
)
from conversion_platform.transform.dedupe_keys import DEFAULT_FINGERPRINT_TOLERANCE

DEFAULT_WINDOW = timedelta(days=7)
_VALUE_EPSILON = 0.005  # money compared to the cent


@dataclass
class DedupeResult:
    """The run's conversions to deliver and, per hour, what deduplication did."""

    frame: pd.DataFrame
    per_hour: dict[datetime, HourDedupeFigures] = field(default_factory=dict)
    by_rule: dict[str, int] = field(default_factory=dict)


_NO_TIME = np.iinfo(np.int64).max


def _micros(values: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of a time column (NaT: int64's minimum)."""
    nanos = utc_instants(values).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return np.where(nanos == np.iinfo(np.int64).min, nanos, nanos // 1_000)


def _pair_codes(parts: list[tuple[np.ndarray, pd.Series]]) -> list[np.ndarray]:
    """One code per distinct (hour µs, dedupe key) across `parts`: equal pairs, equal codes."""
    hours = np.concatenate([h for h, _ in parts])
    # Arrow encodes the keys (missing ones get a code of their own): no Python str per key.
    # The parts stay chunks of one array (their texts are not copied into one buffer);
    # the chunks of the encoding share one dictionary, so codes agree across parts.
    keys = pa.chunked_array([events.arrow_text(k) for _, k in parts], type=pa.large_string())
    encoded = pc.dictionary_encode(keys, null_encoding="encode")
    codes = np.concatenate(
        [np.zeros(0, dtype=np.int64)]
        + [c.indices.to_numpy(zero_copy_only=False).astype(np.int64) for c in encoded.chunks]
    )
    distinct_keys = len(encoded.chunks[-1].dictionary) if encoded.num_chunks else 0
    hour_codes, hour_values = pd.factorize(hours)
    if len(hour_values) > 1:
        codes = pd.factorize(hour_codes.astype(np.int64) * distinct_keys + codes)[0]
    bounds = np.cumsum([len(h) for h, _ in parts])[:-1]
    return np.split(codes.astype(np.int64), bounds)


def _time_ranges(codes: np.ndarray, count: int, times_us: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per code, the first and last event time (µs) of its copies (`_NO_TIME` when none)."""
    known = times_us != np.iinfo(np.int64).min
    first = np.full(count, _NO_TIME, dtype=np.int64)
    last = np.full(count, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, codes[known], times_us[known])
    np.maximum.at(last, codes[known], times_us[known])
    return first, np.where(first == _NO_TIME, _NO_TIME, last)


def _optional_micros(values: np.ndarray) -> pd.arrays.IntegerArray:
    return pd.arrays.IntegerArray(values, values == _NO_TIME)


def _positions_by_hour(hour_us: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each hour's rows, in their order."""
    if not len(hour_us):
        return {}
    order = np.argsort(hour_us, kind="stable")
    hours, starts = np.unique(hour_us[order], return_index=True)
    return {int(h): part for h, part in zip(hours, np.split(order, starts[1:]), strict=True)}


@dataclass
class _HourOwners:
    """Per conversion of a run: the hour that delivered it and what that hour delivered."""

    hour_us: np.ndarray
    sources: np.ndarray
    value: np.ndarray


def _late_figures(
    conversions: pd.DataFrame, owners: _HourOwners, rows: np.ndarray, hour_us: int
) -> tuple[int, int, int, int]:
    """(late, delivered by a later hour, late backend confirmations, late value mismatches)
    of the conversions at `rows` (those another hour owns)."""
    if not len(rows):
        return 0, 0, 0, 0
    owner = owners.hour_us[rows]
    late = owner < hour_us
    later = owner > hour_us
    owner_sources = pd.Series(owners.sources[rows], dtype="string")
    owner_value = owners.value[rows]
    from_backend = (
        conversions["sources"].iloc[rows].astype("string").str.contains(events.SOURCE_SERVER)
    )
    owner_had_backend = owner_sources.str.contains(events.SOURCE_SERVER)
    confirmations = (
        late
        & from_backend.fillna(False).to_numpy(dtype=bool)
        & ~owner_had_backend.fillna(True).to_numpy(dtype=bool)
    )
    value = conversions["value"].iloc[rows].to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        mismatch = late & (np.abs(value - owner_value) > _VALUE_EPSILON)
    return int(late.sum()), int(later.sum()), int(confirmations.sum()), int(mismatch.sum())


def deduplicate_hours(
    engine: Engine,
    copies: pd.DataFrame,
    hours: list[datetime],
    window: timedelta = DEFAULT_WINDOW,
    tolerance: timedelta = DEFAULT_FINGERPRINT_TOLERANCE,
    *,
    max_event_age: timedelta = DEFAULT_MAX_EVENT_AGE,
    retention: timedelta | None = None,
) -> DedupeResult:
    """Merge copies within each hour, then keep what no other hour in the window delivered.

    `hours` are the run's hours (processed oldest first, each in its own transaction).
    Ledger rows older than `retention` (default: twice the window) before the newest
    hour are forgotten afterwards.

    Conversions and their claims are tied together by integer codes of (hour, dedupe
    key), computed once; each hour then works on positions, and the kept rows are taken
    from the merged frame once at the end.
    """
    merged, keyed = deduplicate_hour_frames(copies, tolerance, max_event_age)
    rules = CrossHourRules(
        window_us=int(window.total_seconds() * 1_000_000),
        tolerance_us=int(tolerance.total_seconds() * 1_000_000),
    )
    claims_all = keyed.match_keys
    copy_hour_us = _micros(keyed.frame[events.HOUR_COLUMN])
    merged_hour_us = _micros(merged[events.HOUR_COLUMN])
    claim_hour_us = claims_all["hour_us"].to_numpy(dtype=np.int64)
    copy_codes, merged_codes, claim_codes = _pair_codes(
        [
            (copy_hour_us, keyed.frame["dedupe_key"]),
            (merged_hour_us, merged["dedupe_key"]),
            (claim_hour_us, claims_all["dedupe_key"]),
        ]
    )
    count = int(
        max(
            (int(c.max()) + 1 for c in (copy_codes, merged_codes, claim_codes) if len(c)), default=0
        )
    )
    first, last = _time_ranges(copy_codes, count, _micros(keyed.frame["event_time"]))
    claims_all = claims_all.assign(
        first_event_time_us=_optional_micros(first[claim_codes]),
        last_event_time_us=_optional_micros(last[claim_codes]),
    )
    # The conversion (position in `merged`) of each claim.
    conversion_of_code = np.full(count, -1, dtype=np.int64)
    conversion_of_code[merged_codes] = np.arange(len(merged))
    claim_conversion = conversion_of_code[claim_codes]
    owners = _HourOwners(
        merged_hour_us.copy(),
        np.full(len(merged), pd.NA, dtype=object),
        np.full(len(merged), np.nan),
    )
    copies_hours, copies_counts = np.unique(copy_hour_us, return_counts=True)
    copies_per_hour = dict(zip(copies_hours.tolist(), copies_counts.tolist(), strict=True))
    conversions_by_hour = _positions_by_hour(merged_hour_us)
    claims_by_hour = _positions_by_hour(claim_hour_us)
    no_rows = np.array([], dtype=np.int64)

    kept: list[np.ndarray] = []
    per_hour: dict[datetime, HourDedupeFigures] = {}
    for hour in sorted(hours):
        hour_us = to_micros(hour)
        conversions = conversions_by_hour.get(hour_us, no_rows)
        mine = claims_by_hour.get(hour_us, no_rows)
        claims = claims_all if len(mine) == len(claims_all) else claims_all.iloc[mine]
        received = int(copies_per_hour.get(hour_us, 0))
        with engine.begin() as conn:
            begin_hour_claim(conn, hour)
            neighbours = fetch_neighbours(conn, claims["match_key"], hour, rules.window_us)
            others = _owned_elsewhere(decide_owners(claims, neighbours, hour_us, rules), hour_us)
            owners.hour_us[conversions] = hour_us
            owned = no_rows
            if len(others):
                at = pd.Index(merged["dedupe_key"].iloc[conversions]).get_indexer(
                    others["dedupe_key"]
                )
                found = at >= 0
                owned = conversions[at[found]]
                owners.hour_us[owned] = others["owner_hour_us"].to_numpy(dtype=np.int64)[found]
                owners.sources[owned] = others["owner_sources"].to_numpy(
                    dtype=object, na_value=pd.NA
                )[found]
                owners.value[owned] = others["owner_value"].to_numpy(dtype=np.float64)[found]
            insert_claims(
                conn, _ledger_rows(claims, claim_conversion[mine], merged, owners, hour_us)
            )
            new = conversions[owners.hour_us[conversions] == hour_us]
            late, later, confirmations, mismatches = _late_figures(merged, owners, owned, hour_us)
            figures = HourDedupeFigures(
                copies_in=received,
                merged_copies=received - len(conversions),
                late_duplicates=late,
                delivered_by_later_hour=later,
                late_backend_confirmations=confirmations,
                late_value_mismatches=mismatches,
                conversions_out=len(new),
            )
            replace_hour_figures(conn, hour, figures)
        kept.append(new)
        per_hour[hour] = figures
    if hours and retention != timedelta(0):
        keep = retention if retention is not None else 2 * window
        forget_before(engine, max(hours) - keep)
    frame = _rows_of(merged, np.concatenate(kept) if kept else no_rows)
    by_rule = {str(k): int(v) for k, v in frame["dedupe_rule"].value_counts().items()}
    return DedupeResult(frame, per_hour, by_rule)


def _owned_elsewhere(owners: pd.DataFrame, hour_us: int) -> pd.DataFrame:
    """The conversions `decide_owners` gave another hour (or an owner's delivery to)."""
    other = (
        (owners["owner_hour_us"].to_numpy(dtype=np.int64) != hour_us)
        | owners["owner_sources"].notna().to_numpy()
        | owners["owner_value"].notna().to_numpy()
    )
    return owners.loc[other]


def _rows_of(merged: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The merged rows at `rows`, in that order (the frame itself when that is all of it)."""
    if len(rows) == len(merged) and np.array_equal(rows, np.arange(len(merged))):
        return conformed(merged, DEDUPED_COLUMNS)
    if not len(rows):
        return events.empty_frame(DEDUPED_COLUMNS)
    taken = {c: merged[c].array.take(rows) for c in merged.columns}
    return conformed(pd.DataFrame(taken, copy=False), DEDUPED_COLUMNS)


def _ledger_rows(
    claims: pd.DataFrame,
    conversion: np.ndarray,
    merged: pd.DataFrame,
    owners: _HourOwners,
    hour_us: int,
) -> pd.DataFrame:
    """The hour's ledger rows: every key of every conversion, with its owner hour.

    `conversion`: per claim, the position of its conversion in `merged` (-1: none).
    """
    if claims.empty:
        return pd.DataFrame(columns=list(LEDGER_COLUMNS))
    known = conversion >= 0
    at = np.where(known, conversion, 0)

    def about(column: str) -> object:
        return merged[column].array.take(np.where(known, conversion, -1), allow_fill=True)

    return pd.DataFrame(
        {
            "match_key": claims["match_key"].astype("string").array,
            "hour_us": np.full(len(claims), hour_us, dtype=np.int64),
            "dedupe_key": claims["dedupe_key"].astype("string").array,
            "kind": claims["kind"].astype("string").array,
            "event_id": about("event_id"),
            "first_event_time_us": claims["first_event_time_us"].array,
            "last_event_time_us": claims["last_event_time_us"].array,
            "owner_hour_us": np.where(known, owners.hour_us[at], hour_us),
            "sources": about("sources"),
            "value": about("value"),
        },
        copy=False,
    )
