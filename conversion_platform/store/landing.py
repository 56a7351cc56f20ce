"""The landing table: what the collection endpoint committed, read back per hour."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform import events
from conversion_platform.store.tables import landing_events
from conversion_platform.store.timecodes import series_from_micros, series_to_micros, to_micros

_TIME_COLUMNS = {f"{name}_us": name for name in events.TIMESTAMP_COLUMNS}


def landing_rows(frame: pd.DataFrame, site: str | None = None) -> list[dict]:
    """Rows for `landing_events` from a frame in the stored model (hashed identity)."""
    out = pd.DataFrame(index=frame.index)
    for name in events.STORED_COLUMNS:
        if name in events.TIMESTAMP_COLUMNS:
            out[f"{name}_us"] = series_to_micros(frame[name]) if name in frame else pd.NA
        else:
            out[name] = frame.get(name)
    out["site"] = site
    records = out.astype(object).where(out.notna(), None).to_dict("records")
    return records


def insert_landing_events(conn: Connection, frame: pd.DataFrame, site: str | None = None) -> int:
    """Insert canonical rows (already hashed) in the caller's transaction; returns the count."""
    rows = landing_rows(frame, site)
    if rows:
        conn.execute(landing_events.insert(), rows)
    return len(rows)


def read_landing_events(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows received in [start, end), in the stored model with UTC timestamps."""
    query = (
        sa.select(landing_events)
        .where(
            landing_events.c.received_at_us >= to_micros(start),
            landing_events.c.received_at_us < to_micros(end),
        )
        .order_by(landing_events.c.received_at_us, landing_events.c.id)
    )
    with engine.connect() as conn:
        result = conn.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    for column, name in _TIME_COLUMNS.items():
        frame[name] = (
            series_from_micros(frame[column])
            if len(frame)
            else pd.Series([], dtype="datetime64[ns, UTC]")
        )
    frame = frame.drop(columns=[*_TIME_COLUMNS, "id"], errors="ignore")
    return events.conform(frame, events.STORED_COLUMNS)
