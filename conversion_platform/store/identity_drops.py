"""Counts of identity values dropped where data entered, by hour, path and reason.

An identity field that can't be normalised (an email without `@`, a phone that isn't a
number, a placeholder such as `undefined`) is dropped from its event and never costs the
conversion; these counts are how a data team sees it happening. The collector adds its
counts in the transaction that lands the events; log ingest replaces its hours' counts
on each run. The values themselves are never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import dropped_identifiers
from conversion_platform.store.timecodes import from_micros, now_micros, to_micros


def _rows(per_hour: Mapping[datetime, Mapping[str, int]], source: str) -> list[dict]:
    recorded = now_micros()
    return [
        {
            "hour_us": to_micros(hour),
            "source": source,
            "reason": reason,
            "count": int(count),
            "recorded_at_us": recorded,
        }
        for hour, counts in per_hour.items()
        for reason, count in counts.items()
        if count
    ]


def add_dropped_identifiers(
    conn: Connection, per_hour: Mapping[datetime, Mapping[str, int]], source: str
) -> int:
    """Add counts in the caller's transaction (the collector's landing commit)."""
    rows = _rows(per_hour, source)
    if rows:
        conn.execute(dropped_identifiers.insert(), rows)
    return len(rows)


def replace_dropped_identifiers(
    engine: Engine,
    start: datetime,
    end: datetime,
    per_hour: Mapping[datetime, Mapping[str, int]],
    source: str,
) -> None:
    """Replace a path's counts for hours in [start, end) in one transaction (re-runs of
    log ingest must not count twice)."""
    with engine.begin() as conn:
        conn.execute(
            sa.delete(dropped_identifiers).where(
                dropped_identifiers.c.source == source,
                dropped_identifiers.c.hour_us >= to_micros(start),
                dropped_identifiers.c.hour_us < to_micros(end),
            )
        )
        add_dropped_identifiers(conn, per_hour, source)


def dropped_identifier_counts(
    engine: Engine, start: datetime, end: datetime, sources: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Totals per (hour, source, reason) for hours in [start, end)."""
    conditions = [
        dropped_identifiers.c.hour_us >= to_micros(start),
        dropped_identifiers.c.hour_us < to_micros(end),
    ]
    if sources is not None:
        conditions.append(dropped_identifiers.c.source.in_(sources))
    total = sa.func.sum(dropped_identifiers.c.count)
    query = (
        sa.select(
            dropped_identifiers.c.hour_us,
            dropped_identifiers.c.source,
            dropped_identifiers.c.reason,
            total,
        )
        .where(*conditions)
        .group_by(
            dropped_identifiers.c.hour_us,
            dropped_identifiers.c.source,
            dropped_identifiers.c.reason,
        )
        .order_by(
            dropped_identifiers.c.hour_us,
            dropped_identifiers.c.source,
            dropped_identifiers.c.reason,
        )
    )
    with engine.connect() as conn:
        rows = conn.execute(query).fetchall()
    return pd.DataFrame(
        {
            "hour": pd.Series([from_micros(int(r[0])) for r in rows], dtype="datetime64[ns, UTC]"),
            "source": pd.Series([r[1] for r in rows], dtype="string"),
            "reason": pd.Series([r[2] for r in rows], dtype="string"),
            "count": pd.Series([int(r[3]) for r in rows], dtype="int64"),
        }
    )
