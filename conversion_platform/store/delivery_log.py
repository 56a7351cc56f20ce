"""The delivery log: one row per request attempt, and each event's latest outcome.

An event delivered to a destination is never sent to it again: `settled_event_ids`
tells the delivery step what to skip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from operator import itemgetter
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

#: ids per settled-lookup query on PostgreSQL (one array parameter each)
_LOOKUP_CHUNK = 100_000
#: PostgreSQL: from this many rows, outcomes go by COPY into `_INCOMING`, then one upsert
_COPY_MIN_ROWS = 1_000
_INCOMING = "delivery_events_incoming"
#: rows per executemany call
_WRITE_CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class EventOutcome:
    event_id: str
    event_name: str | None
    status: str
    reason: str | None = None
    batch_id: int | None = None
    match_quality: float | None = None


def settled_event_ids(conn: Connection, destination: str, event_ids: list[str]) -> set[str]:
    """Those of `event_ids` that need no further sending to `destination`.

    One query for all of them: the ids go as one JSON array (SQLite's `json_each`) or one
    array parameter (PostgreSQL's `= ANY`), not as thousands of bound parameters.

    On SQLite the ids drive the query (`CROSS JOIN` fixes the order): each is one seek in
    the primary key. Left to itself, SQLite's planner read every settled event of the
    destination from the status index instead, so each hour of a backfill read all the
    hours before it (a 96-hour backfill spent 38 of its 350 s there).
    """
    if not event_ids:
        return set()
    statuses = sorted(SETTLED_STATUSES)
    if conn.dialect.name == "sqlite":
        sql = (
            "SELECT e.event_id FROM json_each(?) AS ids CROSS JOIN delivery_events AS e "
            "ON e.destination = ? AND e.event_id = ids.value WHERE e.status IN ({s})"
        ).format(s=", ".join("?" * len(statuses)))
        rows = conn.exec_driver_sql(sql, (orjson.dumps(event_ids).decode(), destination, *statuses))
        return {r[0] for r in rows}
    settled: set[str] = set()
    sql = (
        "SELECT event_id FROM delivery_events WHERE destination = %s "
        "AND status = ANY(%s) AND event_id = ANY(%s)"
    )
    for i in range(0, len(event_ids), _LOOKUP_CHUNK):
        rows = conn.exec_driver_sql(sql, (destination, statuses, event_ids[i : i + _LOOKUP_CHUNK]))
        settled.update(r[0] for r in rows)
    return settled


@dataclass(frozen=True)
class BatchRow:
    """One request attempt, as `delivery_batches` holds it."""

    destination: str
    hour: datetime
    run_id: str | None
    batch_number: int
    attempt: int
    mode: str
    status: str
    http_status: int | None
    event_ids: list[str]
    response: str | None
    retry_after_s: float | None
    platform_request_id: str | None
    started_at_us: int
    #: when the attempt's outcome was known (now when not given)
    finished_at_us: int | None = None

    def values(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "hour_us": to_micros(self.hour),
            "run_id": self.run_id,
            "batch_number": self.batch_number,
            "attempt": self.attempt,
            "mode": self.mode,
            "status": self.status,
            "http_status": self.http_status,
            "event_count": len(self.event_ids),
            "event_ids": orjson.dumps(self.event_ids).decode(),
            "response": (self.response or "")[:4_000] or None,
            "retry_after_s": self.retry_after_s,
            "platform_request_id": self.platform_request_id,
            "started_at_us": self.started_at_us,
            "finished_at_us": self.finished_at_us or now_micros(),
        }


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
    row = BatchRow(
        destination,
        hour,
        run_id,
        batch_number,
        attempt,
        mode,
        status,
        http_status,
        event_ids,
        response,
        retry_after_s,
        platform_request_id,
        started_at_us,
    )
    result = conn.execute(delivery_batches.insert().values(**row.values()))
    return int(result.inserted_primary_key[0])


def record_batches(conn: Connection, rows: Sequence[BatchRow]) -> list[int]:
    """Add many attempts' rows in one statement; returns their ids, in order."""
    if not rows:
        return []
    statement = delivery_batches.insert().returning(
        delivery_batches.c.id, sort_by_parameter_order=True
    )
    result = conn.execute(statement, [row.values() for row in rows])
    return [int(r[0]) for r in result]


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


@dataclass
class OutcomeColumns:
    """Events' outcomes column by column (no object per event), to record in one go."""

    event_ids: list[str] = field(default_factory=list)
    event_names: list[str | None] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    batch_ids: list[int | None] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    match_quality: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def add(
        self,
        event_ids: Sequence[str],
        event_names: Sequence[str | None],
        status: str,
        reason: str | None = None,
        batch_id: int | None = None,
        match_quality: Sequence[float | None] | None = None,
    ) -> None:
        """Events sharing one status, reason and batch (names and scores per event)."""
        n = len(event_ids)
        self.event_ids.extend(event_ids)
        self.event_names.extend(event_names)
        self.statuses.extend(repeat(status, n))
        self.reasons.extend(repeat((reason or "")[:1_000] or None, n))
        self.batch_ids.extend(repeat(batch_id, n))
        self.attempts.extend(repeat(0 if batch_id is None else 1, n))
        self.match_quality.extend(repeat(None, n) if match_quality is None else match_quality)

    def extend(self, other: OutcomeColumns) -> None:
        self.event_ids += other.event_ids
        self.event_names += other.event_names
        self.statuses += other.statuses
        self.reasons += other.reasons
        self.batch_ids += other.batch_ids
        self.attempts += other.attempts
        self.match_quality += other.match_quality


#: The same upsert on SQLite for many rows at once: each row is a JSON array (event id,
#: name, status, reason, batch id, attempts, match quality) of one JSON document.
_UPSERT_EVENTS_JSON = (
    "INSERT INTO delivery_events (destination, event_id, event_name, hour_us, status, "
    "reason, batch_id, attempts, match_quality, updated_at_us) "
    "SELECT ?1, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), ?2, "
    "json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]'), "
    "json_extract(j.value, '$[4]'), json_extract(j.value, '$[5]'), "
    "json_extract(j.value, '$[6]'), ?3 FROM json_each(?4) AS j WHERE true "
    + _UPSERT_EVENT[_UPSERT_EVENT.index("ON CONFLICT") :]
)


def record_event_outcomes(
    conn: Connection, destination: str, hour: datetime, outcomes: Iterable[EventOutcome]
) -> None:
    """Upsert each event's latest outcome; `attempts` counts sends across runs.

    The hour an event was first recorded under is kept.
    """
    columns = OutcomeColumns()
    for o in outcomes:
        columns.add([o.event_id], [o.event_name], o.status, o.reason, o.batch_id, [o.match_quality])
    record_outcome_columns(conn, destination, hour, columns)


def record_outcome_columns(
    conn: Connection, destination: str, hour: datetime, columns: OutcomeColumns
) -> None:
    """`record_event_outcomes` of outcomes held column by column.

    Rows go in event id order (stable: a later outcome of the same event still wins), so
    the primary key's B-tree is written page after page rather than at random. On SQLite
    the rows travel as one JSON array per statement (read by `json_each`), a third
    cheaper than binding ten parameters a row.
    """
    if not columns:
        return
    now = now_micros()
    hour_us = to_micros(hour)
    rows = list(
        zip(
            columns.event_ids,
            columns.event_names,
            columns.statuses,
            columns.reasons,
            columns.batch_ids,
            columns.attempts,
            columns.match_quality,
            strict=False,
        )
    )
    rows.sort(key=itemgetter(0))
    if conn.dialect.name == "sqlite":
        for i in range(0, len(rows), _WRITE_CHUNK):
            document = orjson.dumps(rows[i : i + _WRITE_CHUNK]).decode()
            conn.exec_driver_sql(_UPSERT_EVENTS_JSON, (destination, hour_us, now, document))
        return
    driver = conn.connection.driver_connection
    if len(rows) >= _COPY_MIN_ROWS and conn.dialect.driver == "psycopg" and _distinct_ids(columns):
        _copy_upsert(conn, driver, destination, hour_us, now, rows)
        return
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = _UPSERT_EVENT.format(p=placeholder)
    for i in range(0, len(rows), _WRITE_CHUNK):
        conn.exec_driver_sql(
            sql,
            [
                (destination, e, n, hour_us, st, r, b, a, q, now)
                for e, n, st, r, b, a, q in rows[i : i + _WRITE_CHUNK]
            ],
        )


def _distinct_ids(columns: OutcomeColumns) -> bool:
    return len(set(columns.event_ids)) == len(columns.event_ids)


def _copy_upsert(
    conn: Connection,
    driver: Any,
    destination: str,
    hour_us: int,
    now: int,
    rows: list[tuple[Any, ...]],
) -> None:
    """PostgreSQL (psycopg 3): COPY the rows into a temporary table, then one upsert.

    One statement can't update a row twice, so this is only for distinct event ids.
    """
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING} (event_id TEXT, event_name TEXT, "
        "status TEXT, reason TEXT, batch_id BIGINT, attempts INTEGER, "
        "match_quality DOUBLE PRECISION) ON COMMIT DELETE ROWS"
    )
    with driver.cursor() as cursor, cursor.copy(f"COPY {_INCOMING} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    conn.exec_driver_sql(
        "INSERT INTO delivery_events (destination, event_id, event_name, hour_us, status, "
        "reason, batch_id, attempts, match_quality, updated_at_us) "
        "SELECT %s, event_id, event_name, %s, status, reason, batch_id, attempts, "
        f"match_quality, %s FROM {_INCOMING} ORDER BY event_id "
        + _UPSERT_EVENT[_UPSERT_EVENT.index("ON CONFLICT") :],
        (destination, hour_us, now),
    )
    conn.exec_driver_sql(f"TRUNCATE {_INCOMING}")


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
    destination: str | None = None,
    event_ids: list[str] | None = None,
) -> int:
    """Record a request's final status: its row, and each of its events still pending.

    Returns how many events changed. Events re-sent or settled since are left alone.
    Given the request's destination and event ids (its batch row holds them), its events
    are found by the log's primary key; otherwise by a scan for `batch_id`, which costs a
    pass over the whole log.
    """
    now = now_micros()
    conn.execute(
        delivery_batches.update()
        .where(delivery_batches.c.id == batch_id)
        .values(status=batch_status, response=(response or "")[:4_000] or None, resolved_at_us=now)
    )
    values = {
        "status": event_status,
        "reason": (reason or "")[:1_000] or None,
        "updated_at_us": now,
    }
    pending = sa.and_(
        delivery_events.c.batch_id == batch_id,
        delivery_events.c.status == EVENT_PENDING_STATUS,
    )
    if destination is None or event_ids is None:
        return int(
            conn.execute(delivery_events.update().where(pending).values(**values)).rowcount or 0
        )
    changed = 0
    for i in range(0, len(event_ids), 1_000):
        result = conn.execute(
            delivery_events.update()
            .where(
                delivery_events.c.destination == destination,
                delivery_events.c.event_id.in_(event_ids[i : i + 1_000]),
                pending,
            )
            .values(**values)
        )
        changed += int(result.rowcount or 0)
    return changed


def event_rows(engine: Engine, destination: str) -> dict[str, dict[str, Any]]:
    """Each event's latest outcome at `destination`, by event id (for tests and the CLI)."""
    query = sa.select(delivery_events).where(delivery_events.c.destination == destination)
    with engine.connect() as conn:
        return {r["event_id"]: dict(r) for r in conn.execute(query).mappings()}
