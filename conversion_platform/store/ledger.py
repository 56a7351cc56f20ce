"""The dedupe ledger: every dedupe key seen, owned by the earliest hour that received it.

An hour's copy of a key owned by an earlier hour inside the window is a late duplicate.
An hour's own keys never count against it, so re-running an hour reproduces its result,
and running hours in any order converges on the same owners.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import dedupe_ledger
from conversion_platform.store.timecodes import now_micros, series_to_micros, to_micros

_CHUNK = 5_000


def _chunks(values: list[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def owners_of(conn: Connection, keys: list[str]) -> dict[str, int]:
    """The owning hour (microseconds) of each known key."""
    owners: dict[str, int] = {}
    for chunk in _chunks(keys):
        rows = conn.execute(
            sa.select(dedupe_ledger.c.dedupe_key, dedupe_ledger.c.hour_us).where(
                dedupe_ledger.c.dedupe_key.in_(chunk)
            )
        )
        owners.update({row[0]: row[1] for row in rows})
    return owners


def claim_keys(conn: Connection, keys: pd.DataFrame, hour: datetime) -> None:
    """Record `hour` as the owner of `keys` unless an earlier hour owns them already.

    `keys` has columns dedupe_key, event_id, event_time.
    """
    if keys.empty:
        return
    hour_us = to_micros(hour)
    rows = pd.DataFrame(
        {
            "dedupe_key": keys["dedupe_key"].astype(str),
            "event_id": keys["event_id"].astype(str),
            "hour_us": hour_us,
            "event_time_us": series_to_micros(keys["event_time"]).astype("object"),
            "recorded_at_us": now_micros(),
        }
    ).to_dict("records")
    dialect = conn.engine.dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(dedupe_ledger)
        least = sa.func.least(dedupe_ledger.c.hour_us, stmt.excluded.hour_us)
    else:
        stmt = sqlite.insert(dedupe_ledger)
        least = sa.func.min(dedupe_ledger.c.hour_us, stmt.excluded.hour_us)
    stmt = stmt.on_conflict_do_update(index_elements=["dedupe_key"], set_={"hour_us": least})
    for i in range(0, len(rows), _CHUNK):
        conn.execute(stmt, rows[i : i + _CHUNK])


def forget_before(engine: Engine, moment: datetime) -> int:
    """Drop keys owned by hours before `moment` (older than any window still in use)."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.delete(dedupe_ledger).where(dedupe_ledger.c.hour_us < to_micros(moment))
        )
    return result.rowcount or 0


def late_duplicate_mask(
    owners: dict[str, int], keys: pd.Series, hour: datetime, window: timedelta
) -> pd.Series:
    """True for keys owned by an earlier hour that is still inside the window."""
    hour_us = to_micros(hour)
    window_us = int(window.total_seconds() * 1_000_000)
    owner = keys.map(owners)
    return owner.notna() & (owner < hour_us) & (hour_us - owner.fillna(hour_us) <= window_us)
