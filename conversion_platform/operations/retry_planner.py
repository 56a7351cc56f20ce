"""Planning the retry sensor's tick: which destination-hours to run again, and which to give up.

Read from the delivery log: every destination-hour with events still `retryable` (the
platform failed or throttled them, or the destination's circuit held them). For each, the
next retry is due `policy.delay(n)` after its last failed attempt (or the last retry run
requested, whichever is later), and never before a platform's `Retry-After`. Due ones
get a retry request with a deterministic run key carrying the retry number; one whose
next retry would start past the policy's limit is dead-lettered with the last error.
Events rejected permanently are dead-lettered at once. A destination whose circuit is
open is held: no request, no give-up, until the credentials change or an operator resets
it (then its hours start a fresh cycle).

The plan is recorded in `delivery_retries` as it is made, so the next tick (and the
delivery report) knows how many retries each destination-hour had and when the next is due.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.destinations.base import STATUS_AUTH, STATUS_RETRYABLE
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.operations.circuits import CircuitChange, read_circuits, sync_circuit
from conversion_platform.operations.dead_letters import dead_letter_exhausted, dead_letter_rejected
from conversion_platform.operations.retry_policy import RetryPolicy, format_duration
from conversion_platform.store import delivery_log as log
from conversion_platform.store.operations_tables import delivery_retries
from conversion_platform.store.tables import delivery_batches, delivery_events
from conversion_platform.store.timecodes import from_micros, to_micros

STATE_WAITING = "waiting"
STATE_HELD = "held"
STATE_RESOLVED = "resolved"
STATE_DEAD_LETTERED = "dead_lettered"
_ACTIVE_STATES = (STATE_WAITING, STATE_HELD)

_MICROS = 1_000_000
#: How far back a platform's Retry-After can still matter for a whole destination.
_RETRY_AFTER_LOOKBACK_US = 7 * 86_400 * _MICROS
#: Resolved destination-hours are kept this long (the report shows their retries), then pruned.
_RESOLVED_KEPT_US = 30 * 86_400 * _MICROS
#: How far back the sensor looks for permanent rejections not yet dead-lettered.
_REJECTED_SWEEP_DAYS = 2


def _hours(n: int) -> str:
    return f"{n} destination-hour" + ("" if n == 1 else "s")


def retry_run_key(
    destination: str, partition_key: str, cycle_started_at_us: int, retry_number: int
) -> str:
    """The deterministic run key of retry `retry_number` of one destination-hour's cycle.

    The cycle (when this round of retries began: first failure, replay, circuit closed)
    is in the key because Dagster skips a run key a sensor has used before: retry 1 after a
    replay must not be mistaken for retry 1 of the first outage.
    """
    cycle = from_micros(cycle_started_at_us).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"delivery_retry:{destination}:{partition_key}:cycle-{cycle}:retry-{retry_number}"


@dataclass(frozen=True)
class RetryRequest:
    """One run to request: deliver `destination` for `partition_key` again."""

    destination: str
    hour: datetime
    partition_key: str
    retry_number: int
    run_key: str
    pending_events: int
    last_error: str | None


@dataclass(frozen=True)
class DestinationHour:
    destination: str
    partition_key: str
    pending_events: int
    detail: str
    due: datetime | None = None


@dataclass
class RetryPlan:
    """Everything one tick decided, for the sensor's result and its description."""

    now: datetime
    requests: list[RetryRequest] = field(default_factory=list)
    waiting: list[DestinationHour] = field(default_factory=list)
    in_flight: list[DestinationHour] = field(default_factory=list)
    held: list[DestinationHour] = field(default_factory=list)
    dead_lettered: list[DestinationHour] = field(default_factory=list)
    rejected_dead_lettered: int = 0
    resolved: list[DestinationHour] = field(default_factory=list)
    circuit_changes: list[CircuitChange] = field(default_factory=list)
    unconfigured: list[DestinationHour] = field(default_factory=list)

    def describe(self) -> str:
        """One paragraph for the sensor tick in the UI."""
        parts: list[str] = []
        for change in self.circuit_changes:
            state = "OPENED" if change.opened else "closed"
            parts.append(f"circuit {state} for {change.destination}: {change.reason}")
        if self.requests:
            parts.append(
                "retrying "
                + ", ".join(
                    f"{r.destination} {r.partition_key} (retry {r.retry_number}, {r.pending_events} events)"
                    for r in self.requests[:10]
                )
                + (f" and {len(self.requests) - 10} more" if len(self.requests) > 10 else "")
            )
        if self.held:
            held_by: dict[str, int] = {}
            for h in self.held:
                held_by[h.destination] = held_by.get(h.destination, 0) + 1
            parts.append(
                "held by an open circuit: "
                + ", ".join(
                    f"{d} ({n} hour{'' if n == 1 else 's'})" for d, n in sorted(held_by.items())
                )
                + " - fix the credentials or `conversion-platform circuit reset --destination D`"
            )
        if self.dead_lettered:
            parts.append(
                "gave up (dead-lettered): "
                + ", ".join(
                    f"{d.destination} {d.partition_key} ({d.pending_events} events)"
                    for d in self.dead_lettered
                )
            )
        if self.rejected_dead_lettered:
            parts.append(f"{self.rejected_dead_lettered} permanently rejected events dead-lettered")
        if self.waiting:
            first = min(self.waiting, key=lambda w: w.due or self.now)
            parts.append(
                f"{_hours(len(self.waiting))} waiting for the next retry "
                f"(first: {first.destination} {first.partition_key} {first.detail})"
            )
        if self.in_flight:
            parts.append(f"{_hours(len(self.in_flight))} with a run in progress")
        if self.unconfigured:
            parts.append(
                f"{_hours(len(self.unconfigured))} of destinations no longer configured left alone"
            )
        if not parts:
            return "nothing to retry: every delivered hour is settled"
        return "; ".join(parts)


@dataclass(frozen=True)
class _Failure:
    last_failure_us: int | None
    not_before_us: int | None


def _pending(conn: Connection) -> dict[tuple[str, int], int]:
    """Events waiting per (destination, hour_us): read from the status index alone."""
    rows = conn.execute(
        sa.select(delivery_events.c.destination, delivery_events.c.hour_us, sa.func.count())
        .where(delivery_events.c.status == log.EVENT_RETRYABLE)
        .group_by(delivery_events.c.destination, delivery_events.c.hour_us)
    ).fetchall()
    return {(r[0], int(r[1])): int(r[2]) for r in rows}


def _last_error(conn: Connection, destination: str, hour_us: int) -> str | None:
    """The reason one of the destination-hour's waiting events carries."""
    return conn.execute(
        sa.select(delivery_events.c.reason)
        .where(
            delivery_events.c.status == log.EVENT_RETRYABLE,
            delivery_events.c.destination == destination,
            delivery_events.c.hour_us == hour_us,
        )
        .limit(1)
    ).scalar()


def _failures(conn: Connection, min_hour_us: int) -> dict[tuple[str, int], _Failure]:
    retry_after_end = delivery_batches.c.finished_at_us + sa.cast(
        sa.func.coalesce(delivery_batches.c.retry_after_s, 0.0) * _MICROS, sa.BigInteger
    )
    rows = conn.execute(
        sa.select(
            delivery_batches.c.destination,
            delivery_batches.c.hour_us,
            sa.func.max(delivery_batches.c.finished_at_us),
            sa.func.max(retry_after_end),
        )
        .where(
            delivery_batches.c.status.in_((STATUS_RETRYABLE, STATUS_AUTH)),
            delivery_batches.c.hour_us >= min_hour_us,
        )
        .group_by(delivery_batches.c.destination, delivery_batches.c.hour_us)
    ).fetchall()
    return {(r[0], int(r[1])): _Failure(int(r[2]), int(r[3])) for r in rows}


def _destination_not_before(conn: Connection, now_us: int) -> dict[str, int]:
    """Per destination, the end of the latest Retry-After it answered (throttling is account-wide)."""
    rows = conn.execute(
        sa.select(
            delivery_batches.c.destination,
            sa.func.max(
                delivery_batches.c.finished_at_us
                + sa.cast(delivery_batches.c.retry_after_s * _MICROS, sa.BigInteger)
            ),
        )
        .where(
            delivery_batches.c.retry_after_s.is_not(None),
            delivery_batches.c.finished_at_us > now_us - _RETRY_AFTER_LOOKBACK_US,
        )
        .group_by(delivery_batches.c.destination)
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows if r[1] is not None}


def plan_retries(
    engine: Engine,
    configs: Collection[DestinationConfig],
    policy: RetryPolicy,
    now: datetime,
    *,
    partition_key_for: Callable[[datetime], str],
    busy_partitions: Collection[str] = (),
) -> RetryPlan:
    """Decide (and record) this tick's retries, give-ups and circuit changes at `now`.

    `busy_partitions` are partition keys with a run queued or in progress: their hours are
    left alone this tick, so two runs never deliver the same destination-hour at once.
    """
    plan = RetryPlan(now=now)
    now_us = to_micros(now)
    by_name = {c.name: c for c in configs}
    for config in configs:
        change = sync_circuit(engine, config)
        if change is not None:
            plan.circuit_changes.append(change)
    # The delivery runs dead-letter their rejections themselves; this catches any they missed.
    plan.rejected_dead_lettered = dead_letter_rejected(
        engine, updated_since=now - timedelta(days=_REJECTED_SWEEP_DAYS)
    )
    circuits = read_circuits(engine)
    busy = set(busy_partitions)

    with engine.begin() as conn:
        conn.execute(
            delivery_retries.delete().where(
                delivery_retries.c.state == STATE_RESOLVED,
                delivery_retries.c.updated_at_us < now_us - _RESOLVED_KEPT_US,
            )
        )
        pending = _pending(conn)
        failures = _failures(conn, min((h for _, h in pending), default=now_us))
        not_before = _destination_not_before(conn, now_us)
        rows = {
            (r["destination"], int(r["hour_us"])): dict(r)
            for r in conn.execute(sa.select(delivery_retries)).mappings()
        }

        for (destination, hour_us), row in rows.items():
            if row["state"] in _ACTIVE_STATES and (destination, hour_us) not in pending:
                conn.execute(
                    delivery_retries.update()
                    .where(
                        delivery_retries.c.destination == destination,
                        delivery_retries.c.hour_us == hour_us,
                    )
                    .values(
                        state=STATE_RESOLVED,
                        pending_events=0,
                        next_attempt_at_us=None,
                        updated_at_us=now_us,
                    )
                )
                plan.resolved.append(
                    DestinationHour(
                        destination, partition_key_for(from_micros(hour_us)), 0, "resolved"
                    )
                )

        inserts: list[dict[str, object]] = []
        updates: list[dict[str, object]] = []
        for (destination, hour_us), count in sorted(pending.items()):
            hour = from_micros(hour_us)
            key = partition_key_for(hour)
            if destination not in by_name:
                plan.unconfigured.append(DestinationHour(destination, key, count, "not configured"))
                continue
            row = rows.get((destination, hour_us))
            circuit = circuits.get(destination)
            circuit_open = circuit is not None and circuit.is_open
            fresh_cycle = (
                row is None
                or row["state"] in (STATE_RESOLVED, STATE_DEAD_LETTERED)
                or (row["state"] == STATE_HELD and not circuit_open)
            )
            if fresh_cycle:
                row = {
                    "destination": destination,
                    "hour_us": hour_us,
                    "state": STATE_WAITING,
                    "cycle_started_at_us": now_us,
                    "retries_requested": 0,
                    "last_requested_at_us": None,
                    "last_run_key": None,
                    "next_attempt_at_us": None,
                }
            assert row is not None
            before = dict(row)
            if fresh_cycle or row.get("pending_events") != count or not row.get("last_error"):
                row["last_error"] = _last_error(conn, destination, hour_us)
            reason = row["last_error"]
            row["pending_events"] = count

            if circuit_open:
                assert circuit is not None
                row["state"] = STATE_HELD
                row["next_attempt_at_us"] = None
                plan.held.append(DestinationHour(destination, key, count, circuit.describe()))
            elif key in busy:
                row["state"] = STATE_WAITING
                plan.in_flight.append(DestinationHour(destination, key, count, "run in progress"))
            else:
                row["state"] = STATE_WAITING
                retry_number = int(row["retries_requested"]) + 1
                failure = failures.get((destination, hour_us), _Failure(None, None))
                bases = [
                    t
                    for t in (failure.last_failure_us, row["last_requested_at_us"])
                    if t is not None
                ]
                due_us = (
                    max(bases)
                    + int(policy.delay(retry_number, f"{destination}|{hour_us}") * _MICROS)
                    if bases
                    else now_us
                )
                due_us = max(
                    due_us,
                    failure.not_before_us or 0,
                    not_before.get(destination, 0),
                )
                if retry_number > 1 and (
                    due_us - int(row["cycle_started_at_us"])
                    > policy.give_up_after_seconds * _MICROS
                ):
                    give_up = (
                        f"gave up after {retry_number - 1} retries over "
                        f"{format_duration((now_us - int(row['cycle_started_at_us'])) / _MICROS)}; "
                        f"last error: {reason or 'unknown'}"
                    )
                    moved = dead_letter_exhausted(conn, destination, hour_us, give_up)
                    row["state"] = STATE_DEAD_LETTERED
                    row["next_attempt_at_us"] = None
                    row["pending_events"] = 0
                    plan.dead_lettered.append(DestinationHour(destination, key, moved, give_up))
                elif due_us <= now_us:
                    run_key = retry_run_key(
                        destination, key, int(row["cycle_started_at_us"]), retry_number
                    )
                    row["retries_requested"] = retry_number
                    row["last_requested_at_us"] = now_us
                    row["last_run_key"] = run_key
                    row["next_attempt_at_us"] = None
                    plan.requests.append(
                        RetryRequest(destination, hour, key, retry_number, run_key, count, reason)
                    )
                else:
                    row["next_attempt_at_us"] = due_us
                    plan.waiting.append(
                        DestinationHour(
                            destination,
                            key,
                            count,
                            f"retry {retry_number} due {from_micros(due_us):%Y-%m-%d %H:%M:%S} UTC",
                            from_micros(due_us),
                        )
                    )
            exists = (destination, hour_us) in rows
            if not exists or row != before:  # a steady tick writes nothing
                row["updated_at_us"] = now_us
                (updates if exists else inserts).append(row)
        _save(conn, inserts, updates)
    return plan


_COLUMNS = tuple(c.name for c in delivery_retries.columns)


def _save(
    conn: Connection, inserts: list[dict[str, object]], updates: list[dict[str, object]]
) -> None:
    """Write the tick's new and changed rows, each kind in one statement."""
    if inserts:
        conn.execute(delivery_retries.insert(), [{k: r.get(k) for k in _COLUMNS} for r in inserts])
    if updates:
        keys = ("destination", "hour_us")
        statement = (
            delivery_retries.update()
            .where(
                delivery_retries.c.destination == sa.bindparam("key_destination"),
                delivery_retries.c.hour_us == sa.bindparam("key_hour_us"),
            )
            .values({k: sa.bindparam(k) for k in _COLUMNS if k not in keys})
        )
        conn.execute(
            statement,
            [
                {
                    **{k: r.get(k) for k in _COLUMNS if k not in keys},
                    "key_destination": r["destination"],
                    "key_hour_us": r["hour_us"],
                }
                for r in updates
            ],
        )


def pending_destination_hours(engine: Engine) -> dict[tuple[str, int], int]:
    """Events still waiting for delivery per (destination, hour_us), from the delivery log."""
    with engine.connect() as conn:
        return _pending(conn)


def retry_schedule(engine: Engine, destination: str | None = None) -> list[dict[str, object]]:
    """The recorded retry state of each destination-hour (for the CLI and the report)."""
    query = sa.select(delivery_retries).order_by(
        delivery_retries.c.destination, delivery_retries.c.hour_us
    )
    if destination is not None:
        query = query.where(delivery_retries.c.destination == destination)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
