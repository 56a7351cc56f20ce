"""The delivery log: one row per request attempt, and each event's latest outcome.

An event delivered to a destination is never sent to it again: `settled_event_ids`
tells the delivery step what to skip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import delivery_batches, delivery_events
from conversion_platform.store.timecodes import now_micros, to_micros

EVENT_DELIVERED = "delivered"
EVENT_PENDING_STATUS = "pending_status"
#: accepted in a request the platform later reported as partly failed without saying which
#: events failed (Google Data Manager reports counts per reason), or never reported on
EVENT_UNCONFIRMED = "unconfirmed"
EVENT_DRY_RUN = "dry_run"
EVENT_VALIDATED = "validated"
EVENT_RETRYABLE = "retryable"
EVENT_PERMANENT = "permanent"
EVENT_EXPIRED = "expired"
EVENT_FILTERED = "filtered"
EVENT_DEAD_LETTER = "dead_letter"

#: Outcomes after which an event is never sent again (replay moves dead letters back).
SETTLED_STATUSES = frozenset(
    {EVENT_DELIVERED, EVENT_PENDING_STATUS, EVENT_UNCONFIRMED, EVENT_PERMANENT, EVENT_DEAD_LETTER}
)

_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class EventOutcome:
    event_id: str
    event_name: str | None
    status: str
    reason: str | None = None
    batch_id: int | None = None
    match_quality: float | None = None


def settled_event_ids(conn: Connection, destination: str, event_ids: list[str]) -> set[str]:
    """Those of `event_ids` that need no further sending to `destination`."""
    settled: set[str] = set()
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    statuses = sorted(SETTLED_STATUSES)
    for i in range(0, len(event_ids), _CHUNK):
        chunk = event_ids[i : i + _CHUNK]
        # Plain SQL: binding thousands of ids through SQLAlchemy's expanding IN costs more
        # than the index lookups themselves.
        sql = (
            "SELECT event_id FROM delivery_events WHERE destination = {p} "
            "AND status IN ({s}) AND event_id IN ({ids})"
        ).format(
            p=placeholder,
            s=", ".join([placeholder] * len(statuses)),
            ids=", ".join([placeholder] * len(chunk)),
        )
        rows = conn.exec_driver_sql(sql, (destination, *statuses, *chunk))
        settled.update(r[0] for r in rows)
    return settled


def record_batch(
    conn: Connection,
    *,
    destination: str,
    hour: datetime,
    run_id: str | None,
    batch_number: int,
    attempt: int,
    mode: str,
    status: str,
    http_status: int | None,
    event_ids: list[str],
    response: str | None,
    retry_after_s: float | None,
    platform_request_id: str | None,
    started_at_us: int,
) -> int:
    """Add one attempt's row; returns its id."""
    result = conn.execute(
        delivery_batches.insert().values(
            destination=destination,
            hour_us=to_micros(hour),
            run_id=run_id,
            batch_number=batch_number,
            attempt=attempt,
            mode=mode,
            status=status,
            http_status=http_status,
            event_count=len(event_ids),
            event_ids=orjson.dumps(event_ids).decode(),
            response=(response or "")[:4_000] or None,
            retry_after_s=retry_after_s,
            platform_request_id=platform_request_id,
            started_at_us=started_at_us,
            finished_at_us=now_micros(),
        )
    )
    return int(result.inserted_primary_key[0])


#: Upsert of one event's outcome, as plain SQL that SQLite and PostgreSQL both take, run
#: through the driver's executemany: SQLAlchemy's per-row parameter processing cost more
#: than the database itself at a thousand rows a batch.
_UPSERT_EVENT = (
    "INSERT INTO delivery_events (destination, event_id, event_name, hour_us, status, "
    "reason, batch_id, attempts, match_quality, updated_at_us) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
    "ON CONFLICT (destination, event_id) DO UPDATE SET "
    "status = excluded.status, reason = excluded.reason, "
    "batch_id = COALESCE(excluded.batch_id, delivery_events.batch_id), "
    "attempts = delivery_events.attempts + excluded.attempts, "
    "match_quality = excluded.match_quality, updated_at_us = excluded.updated_at_us"
)


def record_event_outcomes(
    conn: Connection, destination: str, hour: datetime, outcomes: Iterable[EventOutcome]
) -> None:
    """Upsert each event's latest outcome; `attempts` counts sends across runs.

    The hour an event was first recorded under is kept.
    """
    now = now_micros()
    hour_us = to_micros(hour)
    rows = [
        (
            destination,
            o.event_id,
            o.event_name,
            hour_us,
            o.status,
            (o.reason or "")[:1_000] or None,
            o.batch_id,
            1 if o.batch_id is not None else 0,
            o.match_quality,
            now,
        )
        for o in outcomes
    ]
    if not rows:
        return
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = _UPSERT_EVENT.format(p=placeholder)
    for i in range(0, len(rows), _CHUNK):
        conn.exec_driver_sql(sql, rows[i : i + _CHUNK])


def event_status_counts(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Events per (destination, hour, status) for hours in [start, end)."""
    query = (
        sa.select(
            delivery_events.c.destination,
            delivery_events.c.hour_us,
            delivery_events.c.status,
            sa.func.count().label("events"),
        )
        .where(
            delivery_events.c.hour_us >= to_micros(start),
            delivery_events.c.hour_us < to_micros(end),
        )
        .group_by(
            delivery_events.c.destination, delivery_events.c.hour_us, delivery_events.c.status
        )
    )
    with engine.connect() as conn:
        rows = conn.execute(query).fetchall()
    return pd.DataFrame(rows, columns=["destination", "hour_us", "status", "events"])


def event_reasons(
    engine: Engine, destination: str, start: datetime, end: datetime, statuses: tuple[str, ...]
) -> dict[str, int]:
    """Count of events by reason for the given statuses in [start, end)."""
    query = (
        sa.select(delivery_events.c.reason, sa.func.count())
        .where(
            delivery_events.c.destination == destination,
            delivery_events.c.hour_us >= to_micros(start),
            delivery_events.c.hour_us < to_micros(end),
            delivery_events.c.status.in_(statuses),
        )
        .group_by(delivery_events.c.reason)
    )
    with engine.connect() as conn:
        return {str(r[0]): int(r[1]) for r in conn.execute(query)}


def batch_rows(engine: Engine, destination: str | None = None) -> list[dict[str, Any]]:
    """Every batch row (for tests, the CLI and the retry sensor)."""
    query = sa.select(delivery_batches).order_by(delivery_batches.c.id)
    if destination is not None:
        query = query.where(delivery_batches.c.destination == destination)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


# --- requests the platform reports on later (Google Data Manager) --------------------------


def pending_status_batches(
    conn: Connection, destination: str, limit: int = 500
) -> list[dict[str, Any]]:
    """Accepted requests of `destination` still waiting for their per-event status, oldest first."""
    query = (
        sa.select(
            delivery_batches.c.id,
            delivery_batches.c.hour_us,
            delivery_batches.c.event_ids,
            delivery_batches.c.platform_request_id,
            delivery_batches.c.finished_at_us,
        )
        .where(
            delivery_batches.c.destination == destination,
            delivery_batches.c.status == EVENT_PENDING_STATUS,
        )
        .order_by(delivery_batches.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(query).mappings()]


def resolve_pending_batch(
    conn: Connection,
    batch_id: int,
    *,
    batch_status: str,
    response: str | None,
    event_status: str,
    reason: str | None,
) -> int:
    """Record a request's final status: its row, and each of its events still pending.

    Returns how many events changed. Events re-sent or settled since are left alone.
    """
    now = now_micros()
    conn.execute(
        delivery_batches.update()
        .where(delivery_batches.c.id == batch_id)
        .values(status=batch_status, response=(response or "")[:4_000] or None, resolved_at_us=now)
    )
    result = conn.execute(
        delivery_events.update()
        .where(
            delivery_events.c.batch_id == batch_id,
            delivery_events.c.status == EVENT_PENDING_STATUS,
        )
        .values(status=event_status, reason=(reason or "")[:1_000] or None, updated_at_us=now)
    )
    return int(result.rowcount or 0)


def event_rows(engine: Engine, destination: str) -> dict[str, dict[str, Any]]:
    """Each event's latest outcome at `destination`, by event id (for tests and the CLI)."""
    query = sa.select(delivery_events).where(delivery_events.c.destination == destination)
    with engine.connect() as conn:
        return {r["event_id"]: dict(r) for r in conn.execute(query).mappings()}
