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

from collections.abc import Iterable
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import dedupe_ledger
from conversion_platform.store.timecodes import now_micros, to_micros

#: Keys per lookup statement: well under SQLite's and PostgreSQL's bind-parameter limits.
_CHUNK = 5_000
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


def _chunks(values: list[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


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
    conn: Connection, match_keys: list[str], hour: datetime, reach_us: int
) -> pd.DataFrame:
    """Rows of other hours within `reach_us` of `hour` that hold any of `match_keys`."""
    hour_us = to_micros(hour)
    frames = []
    columns = [dedupe_ledger.c[c] for c in LEDGER_COLUMNS]
    for chunk in _chunks(sorted(set(match_keys))):
        result = conn.execute(
            sa.select(*columns).where(
                dedupe_ledger.c.match_key.in_(chunk),
                dedupe_ledger.c.hour_us >= hour_us - reach_us,
                dedupe_ledger.c.hour_us <= hour_us + reach_us,
                dedupe_ledger.c.hour_us != hour_us,
            )
        )
        rows = result.fetchall()
        if rows:
            frames.append(pd.DataFrame(rows, columns=list(LEDGER_COLUMNS)))
    if not frames:
        return _empty_rows()
    return pd.concat(frames, ignore_index=True)


def insert_claims(conn: Connection, rows: pd.DataFrame) -> int:
    """Insert the hour's rows (columns `LEDGER_COLUMNS`) in the caller's transaction."""
    if rows.empty:
        return 0
    out = rows[list(LEDGER_COLUMNS)].astype(object)
    out = out.where(out.notna(), None)
    out["recorded_at_us"] = now_micros()
    records = out.to_dict("records")  # numpy scalars become Python ones here
    for i in range(0, len(records), _CHUNK):
        conn.execute(dedupe_ledger.insert(), records[i : i + _CHUNK])
    return len(records)


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
