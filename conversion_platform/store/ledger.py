"""The dedupe ledger: every key each hour received, and which hour delivered its conversion.

One row per (match key, hour, conversion): the keys a conversion is known by (its event
ids and order key, or its fingerprint content with the event-time range of its copies),
the hour that received it, and `owner_hour_us`, the hour that delivered the conversion
(this hour itself, or the hour it was a duplicate of). The rules that decide ownership
live in `transform.cross_hour`; this module stores and fetches.

Claims are serialised: an hour's claim runs in one transaction that first takes the
ledger's lock (PostgreSQL: a transaction-level advisory lock; SQLite: the write lock,
taken by the transaction's first statement, the delete of the hour's previous rows), so
two hours running at the same time can't both deliver one key.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from conversion_platform.events import arrow_text
from conversion_platform.store.database import can_copy, copy_rows
from conversion_platform.store.tables import dedupe_ledger
from conversion_platform.store.timecodes import now_micros, to_micros

#: Rows per `executemany` call when inserting claims.
_CHUNK = 50_000
#: Distinct match keys per lookup statement in `fetch_neighbours`.
_LOOKUP_KEYS = 100_000
#: `pg_advisory_xact_lock` id of the ledger ("cpledger" in ASCII, as an integer).
_PG_LOCK_ID = 0x6370_6C65_6467_6572

LEDGER_COLUMNS: tuple[str, ...] = (
    "match_key",
    "hour_us",
    "dedupe_key",
    "kind",
    "event_id",
    "first_event_time_us",
    "last_event_time_us",
    "owner_hour_us",
    "sources",
    "value",
)


def begin_hour_claim(conn: Connection, hour: datetime) -> None:
    """Take the ledger's lock and forget the hour's previous claims (in the caller's
    transaction): an hour's own keys never count against it on a re-run."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_ID)))
    # On SQLite this first write takes the database's write lock until commit.
    conn.execute(sa.delete(dedupe_ledger).where(dedupe_ledger.c.hour_us == to_micros(hour)))


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in LEDGER_COLUMNS})


def fetch_neighbours(
    conn: Connection, match_keys: pd.Series, hour: datetime, reach_us: int
) -> pd.DataFrame:
    """Rows of other hours within `reach_us` of `hour` that hold any of `match_keys`.

    The distinct keys travel `_LOOKUP_KEYS` at a time as one parameter (PostgreSQL: an
    array with `= ANY`; SQLite: a JSON array read by `json_each`), so a million keys are
    a few statements, not hundreds of `IN (...)` lists, and only one slice of them is
    ever a Python list (a million-key hour's keys as Python strings were 270 MB). When
    no other hour is in reach, the keys are not looked at at all.
    """
    hour_us = to_micros(hour)
    selected = ", ".join(LEDGER_COLUMNS)
    window = "hour_us >= :low AND hour_us <= :high AND hour_us != :hour"
    bounds = {"low": hour_us - reach_us, "high": hour_us + reach_us, "hour": hour_us}
    # No other hour in reach (the first hour, a fresh ledger): nothing to look up. The
    # hour index answers this at once; the key lookup would read every key first.
    anyone = conn.execute(
        sa.text(f"SELECT 1 FROM {dedupe_ledger.name} WHERE {window} LIMIT 1"), bounds
    ).first()
    if anyone is None or match_keys.empty:
        return _empty_rows()
    keys = pc.unique(arrow_text(match_keys).drop_null())
    if conn.dialect.name == "postgresql":
        statement = sa.text(
            f"SELECT {selected} FROM {dedupe_ledger.name} "
            f"WHERE match_key = ANY(CAST(:keys AS TEXT[])) AND {window}"
        )
    else:
        statement = sa.text(
            f"SELECT {selected} FROM {dedupe_ledger.name} "
            f"WHERE match_key IN (SELECT value FROM json_each(:keys)) AND {window}"
        )
    rows: list[Row] = []
    for start in range(0, len(keys), _LOOKUP_KEYS):
        part = keys.slice(start, _LOOKUP_KEYS).to_pylist()
        parameter: object = part
        if conn.dialect.name != "postgresql":
            parameter = orjson.dumps(part).decode()
        # Each key is looked up once, so the slices' rows never overlap.
        rows.extend(conn.execute(statement, {"keys": parameter, **bounds}).fetchall())
    if not rows:
        return _empty_rows()
    return pd.DataFrame(rows, columns=list(LEDGER_COLUMNS))


_INTEGER_COLUMNS = frozenset(
    {"hour_us", "first_event_time_us", "last_event_time_us", "owner_hour_us"}
)


def _python_values(series: pd.Series, column: str) -> list:
    """Plain Python values (None for missing) that every driver binds."""
    if column in _INTEGER_COLUMNS:
        series = pd.to_numeric(series)
        if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
            # No missing values: numpy's tolist is the fastest path.
            return series.to_numpy(dtype=np.int64).tolist()
        series = series.astype("Int64")
    elif column == "value":
        values = pd.to_numeric(series).to_numpy(dtype=np.float64, na_value=np.nan)
        return np.where(np.isnan(values), None, values).tolist()
    else:
        series = series.astype("string")
    return series.to_numpy(dtype=object, na_value=None).tolist()


def _key_order(rows: pd.DataFrame) -> np.ndarray:
    """Positions of `rows` in the primary key's order (match key, then hour).

    Inserting in the index's own order writes each B-tree page once instead of touching
    a random page per row: on SQLite seven times fewer CPU seconds for a 100,000-key hour.
    Arrow sorts the keys (a third of pandas' sorted factorize), read from the column's own
    Arrow buffers (a Python `str` per key was 260 MB at a million records); the order only
    speeds the insert up, so the rare rows sharing a match key and hour stay as they come.
    """
    keys = arrow_text(rows["match_key"])  # an Arrow-backed column as it is: no str per key
    hours = pa.array(pd.to_numeric(rows["hour_us"]).to_numpy(dtype=np.int64))
    table = pa.table({"match_key": keys, "hour_us": hours})
    order = pc.sort_indices(table, sort_keys=[("match_key", "ascending"), ("hour_us", "ascending")])
    return order.to_numpy()


def insert_claims(conn: Connection, rows: pd.DataFrame) -> int:
    """Insert the hour's rows (columns `LEDGER_COLUMNS`) in the caller's transaction.

    Straight to the driver with plain tuples, built column by column and in primary-key
    order: an hour can claim a million keys, and per-row parameter processing would cost
    more than the insert itself. PostgreSQL (psycopg 3) gets COPY; others `executemany`.
    """
    if rows.empty:
        return 0
    order = _key_order(rows)
    columns = [*LEDGER_COLUMNS, "recorded_at_us"]
    recorded_at = now_micros()
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    statement = (
        f"INSERT INTO {dedupe_ledger.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([marker] * len(columns))})"
    )
    copy = can_copy(conn)
    # A chunk of rows at a time: the Python tuples of a million-key hour would hold
    # gigabytes at once.
    for i in range(0, len(order), _CHUNK):
        part = rows.iloc[order[i : i + _CHUNK]]
        values = [_python_values(part[c], c) for c in LEDGER_COLUMNS]
        values.append([recorded_at] * len(part))
        records = list(zip(*values, strict=True))
        if copy:
            copy_rows(conn, dedupe_ledger.name, columns, records)
        else:
            conn.exec_driver_sql(statement, records)
    return len(order)


def ledger_rows(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """The rows of hours in [start, end), for reports and tests."""
    with engine.connect() as conn:
        result = conn.execute(
            sa.select(*[dedupe_ledger.c[c] for c in LEDGER_COLUMNS])
            .where(
                dedupe_ledger.c.hour_us >= to_micros(start),
                dedupe_ledger.c.hour_us < to_micros(end),
            )
            .order_by(dedupe_ledger.c.hour_us, dedupe_ledger.c.match_key)
        )
        return pd.DataFrame(result.fetchall(), columns=list(LEDGER_COLUMNS))


def forget_before(engine: Engine, moment: datetime) -> int:
    """Drop rows of hours before `moment` (older than any window still in use)."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.delete(dedupe_ledger).where(dedupe_ledger.c.hour_us < to_micros(moment))
        )
    return result.rowcount or 0
