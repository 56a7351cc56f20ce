"""The landing table: what the collection endpoint committed, read back per hour."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform import events
from conversion_platform.store.database import can_copy, copy_rows, memory_mapped_reads
from conversion_platform.store.landing_csv import read_landing_table
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = datetime.resolution

#: Column order of `landing_row` tuples (every landing column but the generated id).
LANDING_INSERT_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in landing_events.columns if c.name != "id"
)
_STORED_NAME_OF = {f"{name}_us": name for name in events.TIMESTAMP_COLUMNS}


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // _ONE_MICROSECOND


#: Per landing column: the stored-model name it comes from, and whether it is a time.
_ROW_SOURCES: tuple[tuple[str, bool], ...] = tuple(
    (_STORED_NAME_OF.get(column, column), column in _STORED_NAME_OF)
    for column in LANDING_INSERT_COLUMNS
)


def landing_row(stored: Mapping[str, Any], site: str | None = None) -> tuple[Any, ...]:
    """A `landing_events` row (values in `LANDING_INSERT_COLUMNS` order) from one
    stored-model record (`record_to_stored_row`); times become microseconds."""
    get = stored.get
    values = [_micros(get(name)) if is_time else get(name) for name, is_time in _ROW_SOURCES]
    values[_SITE_POSITION] = site
    return tuple(values)


_SITE_POSITION = LANDING_INSERT_COLUMNS.index("site")


#: SQLite binds at most 32,766 parameters a statement since 3.32, 999 before.
_SQLITE_MAX_PARAMETERS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def insert_landing_rows(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert `landing_row` tuples in the caller's transaction, in as few statements as
    the database allows.

    The driver is called directly: SQLAlchemy's per-row parameter processing cost more
    than the insert itself. PostgreSQL (psycopg 3) gets COPY, three times faster than
    executemany there. SQLite gets multi-row INSERTs (hundreds of rows a statement): its
    driver releases the GIL around every statement step, so an executemany of n rows
    means n GIL hand-offs, each of which can wait for a busy event loop thread.
    """
    if not rows:
        return 0
    names = ", ".join(LANDING_INSERT_COLUMNS)
    dialect = conn.dialect
    if can_copy(conn):
        copy_rows(conn, landing_events.name, LANDING_INSERT_COLUMNS, rows)
        return len(rows)
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([mark] * len(LANDING_INSERT_COLUMNS)) + ")"
    if dialect.name != "sqlite":
        conn.exec_driver_sql(
            f"INSERT INTO {landing_events.name} ({names}) VALUES {one}", list(rows)
        )
        return len(rows)
    per_statement = _SQLITE_MAX_PARAMETERS // len(LANDING_INSERT_COLUMNS)
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = ", ".join([one] * len(chunk))
        conn.exec_driver_sql(
            f"INSERT INTO {landing_events.name} ({names}) VALUES {values}",
            tuple(value for row in chunk for value in row),
        )
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
            out[name] = events.string_array(values)
    return pd.DataFrame(out, copy=False)


def _frame_from_arrow(table: pa.Table) -> pd.DataFrame:
    """A frame in the stored model from a `landing_csv` table, one column at a time."""
    out: dict[str, object] = {}
    for name in table.column_names:
        column = table.column(name)
        if name in _TIME_COLUMNS:
            if column.null_count == 0:
                nanos = column.to_numpy() * 1_000
                out[_TIME_COLUMNS[name]] = pd.DatetimeIndex(
                    nanos.view("datetime64[ns]")
                ).tz_localize("UTC")
            else:
                micros = column.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
                out[_TIME_COLUMNS[name]] = series_from_micros(micros)
        elif name in events.FLOAT_COLUMNS:
            out[name] = column.to_numpy()  # nulls become NaN
        elif name in events.BOOL_COLUMNS:
            flags = pc.fill_null(column, 0).to_numpy().astype(bool)
            out[name] = pd.arrays.BooleanArray(flags, column.is_null().to_numpy())
        else:
            out[name] = pd.arrays.ArrowStringArray(column)
    return pd.DataFrame(out, copy=False)


def read_landing_events(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows received in [start, end), in the stored model with UTC timestamps.

    SQLite and PostgreSQL (psycopg 3) write the rows as CSV and Arrow parses it
    (`landing_csv`); any other database is read row by row through its driver.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite" or can_copy(conn):
            with memory_mapped_reads(conn):
                table = read_landing_table(conn, to_micros(start), to_micros(end))
            frame = _frame_from_arrow(table)
            return events.conform(frame, events.STORED_COLUMNS)
    return _read_landing_rows(engine, start, end)


def _read_landing_rows(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """`read_landing_events` through the driver's row tuples."""
    selected = [c for c in landing_events.columns if c.name not in ("id", "site")]
    query = (
        sa.select(*selected)
        .where(
            landing_events.c.received_at_us >= to_micros(start),
            landing_events.c.received_at_us < to_micros(end),
        )
        .order_by(landing_events.c.received_at_us, landing_events.c.id)
    )
    parts: list[pd.DataFrame] = []
    with engine.connect() as conn, memory_mapped_reads(conn):
        result = conn.execute(query)
        # The driver's own cursor: SQLAlchemy's Row objects cost more than the query.
        cursor = result.cursor
        names = [d[0] for d in cursor.description]
        # Each block of rows becomes columns (Arrow text, numpy numbers) at once, so the
        # driver's Python objects of only one block are alive at a time.
        while rows := cursor.fetchmany(_FETCH_ROWS):
            block = np.array(rows, dtype=object).reshape(len(rows), len(names))
            del rows
            parts.append(_column_frame(names, [block]))
        result.close()
    if not parts:
        frame = _column_frame(names, [])
    elif len(parts) == 1:
        frame = parts[0]
    else:
        frame = pd.concat(parts, ignore_index=True)  # Arrow text: chunks joined, not copied
    return events.conform(frame, events.STORED_COLUMNS)
