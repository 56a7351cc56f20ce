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
from conversion_platform.store.timecodes import to_micros
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


def _time_ranges(keyed: pd.DataFrame) -> pd.DataFrame:
    """First and last event time (µs) of each conversion's copies."""
    times = pd.to_datetime(keyed["event_time"], utc=True)
    micros = pd.Series(
        times.to_numpy(dtype="datetime64[ns]").astype("int64") // 1_000, index=keyed.index
    ).where(times.notna())
    frame = pd.DataFrame(
        {
            "hour_us": (
                pd.to_datetime(keyed[events.HOUR_COLUMN], utc=True)
                .to_numpy(dtype="datetime64[ns]")
                .astype("int64")
                // 1_000
            ),
            "dedupe_key": keyed["dedupe_key"].astype(str),
            "t": micros,
        }
    )
    grouped = frame.groupby(["hour_us", "dedupe_key"], sort=False)["t"]
    return pd.DataFrame(
        {
            "first_event_time_us": grouped.min().astype("Int64"),
            "last_event_time_us": grouped.max().astype("Int64"),
        }
    ).reset_index()


def _late_figures(
    conversions: pd.DataFrame, owners: pd.DataFrame, hour_us: int
) -> tuple[int, int, int, int]:
    """(late, delivered by a later hour, late backend confirmations, late value mismatches)."""
    owner = conversions["dedupe_key"].map(owners["owner_hour_us"])
    late = owner < hour_us
    later = owner > hour_us
    owner_sources = conversions["dedupe_key"].map(owners["owner_sources"]).astype("string")
    owner_value = conversions["dedupe_key"].map(owners["owner_value"]).astype("float64")
    from_backend = conversions["sources"].astype("string").str.contains(events.SOURCE_SERVER)
    owner_had_backend = owner_sources.str.contains(events.SOURCE_SERVER)
    confirmations = late & from_backend.fillna(False) & ~owner_had_backend.fillna(True)
    value = conversions["value"].astype("float64")
    mismatch = late & ((value - owner_value).abs() > _VALUE_EPSILON).fillna(False)
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
    """
    merged, keyed = deduplicate_hour_frames(copies, tolerance, max_event_age)
    rules = CrossHourRules(
        window_us=int(window.total_seconds() * 1_000_000),
        tolerance_us=int(tolerance.total_seconds() * 1_000_000),
    )
    ranges = _time_ranges(keyed.frame) if len(keyed.frame) else None
    claims_all = keyed.match_keys
    if ranges is not None and len(claims_all):
        claims_all = claims_all.merge(ranges, on=["hour_us", "dedupe_key"], how="left")
    merged_hour_us = (
        merged[events.HOUR_COLUMN].to_numpy(dtype="datetime64[ns]").astype("int64") // 1_000
        if len(merged)
        else np.array([], dtype="int64")
    )
    copies_hour_us = (
        pd.to_datetime(copies[events.HOUR_COLUMN], utc=True)
        .to_numpy(dtype="datetime64[ns]")
        .astype("int64")
        // 1_000
        if len(copies)
        else np.array([], dtype="int64")
    )
    copies_per_hour = pd.Series(copies_hour_us).value_counts()

    kept: list[pd.DataFrame] = []
    per_hour: dict[datetime, HourDedupeFigures] = {}
    for hour in sorted(hours):
        hour_us = to_micros(hour)
        conversions = merged.loc[merged_hour_us == hour_us]
        claims = claims_all.loc[claims_all["hour_us"] == hour_us] if len(claims_all) else claims_all
        received = int(copies_per_hour.get(hour_us, 0))
        with engine.begin() as conn:
            begin_hour_claim(conn, hour)
            neighbours = fetch_neighbours(
                conn, claims["match_key"].astype(str).tolist(), hour, rules.window_us
            )
            owners = decide_owners(claims, neighbours, hour_us, rules).set_index("dedupe_key")
            conversion_owner = (
                conversions["dedupe_key"].map(owners["owner_hour_us"]).fillna(hour_us)
            )
            insert_claims(conn, _ledger_rows(claims, conversions, owners, hour_us))
            new = (conversion_owner == hour_us).to_numpy()
            late, later, confirmations, mismatches = _late_figures(conversions, owners, hour_us)
            figures = HourDedupeFigures(
                copies_in=received,
                merged_copies=received - len(conversions),
                late_duplicates=late,
                delivered_by_later_hour=later,
                late_backend_confirmations=confirmations,
                late_value_mismatches=mismatches,
                conversions_out=int(new.sum()),
            )
            replace_hour_figures(conn, hour, figures)
        kept.append(conversions.loc[new])
        per_hour[hour] = figures
    if hours and retention != timedelta(0):
        keep = retention if retention is not None else 2 * window
        forget_before(engine, max(hours) - keep)
    frame = pd.concat(kept, ignore_index=True) if kept else events.empty_frame(DEDUPED_COLUMNS)
    frame = conformed(frame, DEDUPED_COLUMNS)
    by_rule = {str(k): int(v) for k, v in frame["dedupe_rule"].value_counts().items()}
    return DedupeResult(frame, per_hour, by_rule)


def _ledger_rows(
    claims: pd.DataFrame, conversions: pd.DataFrame, owners: pd.DataFrame, hour_us: int
) -> pd.DataFrame:
    """The hour's ledger rows: every key of every conversion, with its owner hour."""
    if claims.empty:
        return pd.DataFrame(columns=list(LEDGER_COLUMNS))
    about = conversions.set_index(conversions["dedupe_key"].astype(str))[
        ["event_id", "sources", "value"]
    ]
    keys = claims["dedupe_key"].astype(str)
    rows = pd.DataFrame(
        {
            "match_key": claims["match_key"].astype(str).to_numpy(),
            "hour_us": hour_us,
            "dedupe_key": keys.to_numpy(),
            "kind": claims["kind"].astype(str).to_numpy(),
            "event_id": keys.map(about["event_id"]).to_numpy(),
            "first_event_time_us": claims["first_event_time_us"].astype("Int64").to_numpy(object),
            "last_event_time_us": claims["last_event_time_us"].astype("Int64").to_numpy(object),
            "owner_hour_us": (
                keys.map(owners["owner_hour_us"]).fillna(hour_us).astype("int64").to_numpy()
            ),
            "sources": keys.map(about["sources"]).to_numpy(),
            "value": keys.map(about["value"]).to_numpy(),
        }
    )
    return rows
