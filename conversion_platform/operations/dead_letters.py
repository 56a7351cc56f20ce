"""Dead letters: events a destination will not get without an operator, and their replay.

An event is dead-lettered with its reason when the platform (or our per-event check
before sending) rejected it permanently, at once, or when its retries ran out. A row in
`dead_letters` says which and why; in the delivery log a rejected event keeps its status
`permanent` (what the platform said) and one out of retries becomes `dead_letter`; both
are settled, so nothing sends them again. `replay_dead_letters` puts them back in the
queue (status `retryable`) after the cause is fixed; the retry sensor's next tick
requests the runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store import delivery_log as log
from conversion_platform.store.operations_tables import (
    dead_letters,
    delivery_events_rejected_by_update,
    delivery_retries,
)
from conversion_platform.store.tables import delivery_events
from conversion_platform.store.timecodes import now_micros, to_micros

KIND_REJECTED = "rejected"
KIND_RETRIES_EXHAUSTED = "retries_exhausted"
KINDS = (KIND_REJECTED, KIND_RETRIES_EXHAUSTED)

REPLAYED_PREFIX = "replayed; was: "


@dataclass(frozen=True)
class ReplayResult:
    destination: str
    events: int
    hours: int


def _chosen_events(where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """The events matching `where`, found by their keys first and then read by key.

    The keys come from the (destination, hour, status) index alone. Asked for the other
    columns in the same query, SQLite's planner (which has no statistics here) read every
    row of the destination instead, so each hour's dead-lettering cost what the whole
    log costs, and a backfill's hours each read all the hours before them.
    """
    keys = (
        sa.select(delivery_events.c.destination, delivery_events.c.event_id)
        .where(where)
        .correlate(None)
    )
    return sa.tuple_(delivery_events.c.destination, delivery_events.c.event_id).in_(keys)


def _move_to_dead_letters(
    conn: Connection,
    chosen: sa.ColumnElement[bool],
    kind: str,
    reason: str | None,
    new_status: str | None,
) -> int:
    """Dead-letter the delivery events `chosen` names (see `_chosen_events`).

    `reason` None keeps each event's own; `new_status` None keeps its delivery-log status.
    """
    rows = conn.execute(
        sa.select(
            delivery_events.c.destination,
            delivery_events.c.event_id,
            delivery_events.c.event_name,
            delivery_events.c.hour_us,
            delivery_events.c.reason,
            delivery_events.c.attempts,
        ).where(chosen)
    ).fetchall()
    if not rows:
        return 0
    now = now_micros()
    records = [
        {
            "destination": r.destination,
            "event_id": r.event_id,
            "event_name": r.event_name,
            "hour_us": r.hour_us,
            "kind": kind,
            "reason": (reason or r.reason or "rejected")[:1_000],
            "attempts": int(r.attempts or 0),
            "dead_lettered_at_us": now,
        }
        for r in rows
    ]
    # An event dead-lettered before and replayed has no row left; a stale one is replaced.
    for i in range(0, len(records), 1_000):
        chunk = records[i : i + 1_000]
        for destination in {r["destination"] for r in chunk}:
            ids = [r["event_id"] for r in chunk if r["destination"] == destination]
            conn.execute(
                dead_letters.delete().where(
                    dead_letters.c.destination == destination, dead_letters.c.event_id.in_(ids)
                )
            )
        conn.execute(dead_letters.insert(), chunk)
    if new_status is not None:
        update = delivery_events.update().where(chosen).values(status=new_status, updated_at_us=now)
        if reason is not None:
            update = update.values(reason=reason[:1_000])
        conn.execute(update)
    return len(records)


def dead_letter_rejected(
    engine: Engine,
    destination: str | None = None,
    hours: list[datetime] | None = None,
    *,
    updated_since: datetime | None = None,
) -> int:
    """Dead-letter, with their own reasons, permanently rejected events not dead-lettered yet.

    Narrowed to one destination's hours (what a delivery run just recorded) or to events
    updated since a moment (the retry sensor's sweep); returns how many were added.
    """
    already = sa.exists().where(
        dead_letters.c.destination == delivery_events.c.destination,
        dead_letters.c.event_id == delivery_events.c.event_id,
    )
    where = sa.and_(delivery_events.c.status == log.EVENT_PERMANENT, ~already)
    if destination is not None:
        where = sa.and_(where, delivery_events.c.destination == destination)
    if hours is not None:
        where = sa.and_(where, delivery_events.c.hour_us.in_([to_micros(h) for h in hours]))
    with engine.begin() as conn:
        if updated_since is None:
            chosen = _chosen_events(where)
        elif destination is None and hours is None:
            chosen = _rejected_since(conn, to_micros(updated_since))
        else:
            since = delivery_events.c.updated_at_us >= to_micros(updated_since)
            chosen = _chosen_events(sa.and_(where, since))
        return _move_to_dead_letters(conn, chosen, KIND_REJECTED, None, None)


def _rejected_since(conn: Connection, since_us: int) -> sa.ColumnElement[bool]:
    """Rejected events recorded since `since_us` and not dead-lettered (the retry sensor's
    sweep), found in the partial index of rejected events by update time.

    SQLite is told the index (`INDEXED BY`): without statistics its planner prefers the
    status index's equality, every rejection ever recorded, read each minute.
    """
    hint = f" INDEXED BY {delivery_events_rejected_by_update.name}"
    keys = (
        sa.text(
            "SELECT k.destination, k.event_id FROM delivery_events AS k"
            + (hint if conn.dialect.name == "sqlite" else "")
            + f" WHERE k.status = '{log.EVENT_PERMANENT}' AND k.updated_at_us >= :since"
            " AND NOT EXISTS (SELECT 1 FROM dead_letters AS d"
            " WHERE d.destination = k.destination AND d.event_id = k.event_id)"
        )
        .bindparams(since=since_us)
        .columns(destination=sa.Text, event_id=sa.Text)
    )
    return sa.tuple_(delivery_events.c.destination, delivery_events.c.event_id).in_(keys)


def dead_letter_exhausted(conn: Connection, destination: str, hour_us: int, reason: str) -> int:
    """Dead-letter the destination-hour's events still waiting for a retry (retries ran out)."""
    where = sa.and_(
        delivery_events.c.destination == destination,
        delivery_events.c.hour_us == hour_us,
        delivery_events.c.status == log.EVENT_RETRYABLE,
    )
    return _move_to_dead_letters(
        conn, _chosen_events(where), KIND_RETRIES_EXHAUSTED, reason, log.EVENT_DEAD_LETTER
    )


def replay_dead_letters(
    engine: Engine,
    destination: str,
    start: datetime,
    end: datetime,
    kind: str | None = None,
) -> ReplayResult:
    """Put the destination's dead letters of hours in [start, end) back in the queue.

    Each event's delivery-log status becomes `retryable` (reason: what it was), its
    dead-letter row goes, and each hour's retry schedule starts afresh, so the retry
    sensor requests a run on its next tick.
    """
    where = sa.and_(
        dead_letters.c.destination == destination,
        dead_letters.c.hour_us >= to_micros(start),
        dead_letters.c.hour_us < to_micros(end),
    )
    if kind is not None:
        where = sa.and_(where, dead_letters.c.kind == kind)
    now = now_micros()
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(dead_letters.c.event_id, dead_letters.c.hour_us, dead_letters.c.reason).where(
                where
            )
        ).fetchall()
        if not rows:
            return ReplayResult(destination, 0, 0)
        by_reason: dict[str, list[str]] = {}
        for row in rows:
            by_reason.setdefault(row.reason, []).append(row.event_id)
        for reason, ids in by_reason.items():
            for i in range(0, len(ids), 1_000):
                conn.execute(
                    delivery_events.update()
                    .where(
                        delivery_events.c.destination == destination,
                        delivery_events.c.event_id.in_(ids[i : i + 1_000]),
                        delivery_events.c.status.in_((log.EVENT_DEAD_LETTER, log.EVENT_PERMANENT)),
                    )
                    .values(
                        status=log.EVENT_RETRYABLE,
                        reason=(REPLAYED_PREFIX + reason)[:1_000],
                        updated_at_us=now,
                    )
                )
        conn.execute(dead_letters.delete().where(where))
        hours = sorted({int(r.hour_us) for r in rows})
        # A fresh cycle: the sensor's next tick finds them due at once.
        conn.execute(
            delivery_retries.delete().where(
                delivery_retries.c.destination == destination,
                delivery_retries.c.hour_us.in_(hours),
            )
        )
    return ReplayResult(destination, len(rows), len(hours))


def dead_letter_summary(engine: Engine, destination: str | None = None) -> pd.DataFrame:
    """Dead letters per destination, hour, kind and reason."""
    query = sa.select(
        dead_letters.c.destination,
        dead_letters.c.hour_us,
        dead_letters.c.kind,
        dead_letters.c.reason,
        sa.func.count().label("events"),
    ).group_by(
        dead_letters.c.destination,
        dead_letters.c.hour_us,
        dead_letters.c.kind,
        dead_letters.c.reason,
    )
    if destination is not None:
        query = query.where(dead_letters.c.destination == destination)
    with engine.connect() as conn:
        rows = conn.execute(
            query.order_by(dead_letters.c.destination, dead_letters.c.hour_us)
        ).fetchall()
    return pd.DataFrame(rows, columns=["destination", "hour_us", "kind", "reason", "events"])


def count_dead_letters(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar() or 0)
