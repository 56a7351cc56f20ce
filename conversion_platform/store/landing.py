"""The landing table: what the collection endpoint committed, read back per hour."""

from __future__ import annotations

from datetime import datetime

import numpy as np
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


#: Rows fetched from the driver at a time: big enough to amortise calls, small enough to stay in cache.
_FETCH_ROWS = 50_000


def _column_frame(names: list[str], chunks: list[np.ndarray]) -> pd.DataFrame:
    """A frame from blocks of rows (2-D object arrays), built one column at a time."""
    table = (
        (np.concatenate(chunks) if len(chunks) > 1 else chunks[0])
        if chunks
        else np.empty((0, len(names)), dtype=object)
    )
    n = len(table)
    out: dict[str, object] = {}
    for j, name in enumerate(names):
        values = np.ascontiguousarray(table[:, j])
        if name in _TIME_COLUMNS:
            if n and not any(v is None for v in values):
                nanos = values.astype(np.int64) * 1_000
                out[_TIME_COLUMNS[name]] = pd.DatetimeIndex(
                    nanos.view("datetime64[ns]")
                ).tz_localize("UTC")
            else:
                out[_TIME_COLUMNS[name]] = series_from_micros(pd.Series(values, dtype=object))
        elif name in events.FLOAT_COLUMNS:
            out[name] = pd.array(values, dtype="Float64").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        elif name in events.BOOL_COLUMNS:
            out[name] = pd.array(values, dtype="boolean")
        else:
            # Text: the model's nullable string dtype, straight from the driver's str/None.
            out[name] = pd.array(values, dtype=events.STRING_DTYPE)
    return pd.DataFrame(out)


def read_landing_events(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows received in [start, end), in the stored model with UTC timestamps."""
    selected = [c for c in landing_events.columns if c.name not in ("id", "site")]
    query = (
        sa.select(*selected)
        .where(
            landing_events.c.received_at_us >= to_micros(start),
            landing_events.c.received_at_us < to_micros(end),
        )
        .order_by(landing_events.c.received_at_us, landing_events.c.id)
    )
    chunks: list[np.ndarray] = []
    with engine.connect() as conn:
        result = conn.execute(query)
        # The driver's own cursor: SQLAlchemy's Row objects cost more than the query.
        cursor = result.cursor
        names = [d[0] for d in cursor.description]
        while rows := cursor.fetchmany(_FETCH_ROWS):
            chunks.append(np.array(rows, dtype=object).reshape(len(rows), len(names)))
        result.close()
    frame = _column_frame(names, chunks)
    return events.conform(frame, events.STORED_COLUMNS)
