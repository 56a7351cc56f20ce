"""Dead-lettering an hour's events reads that hour's index entries, not the whole log."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.operations.dead_letters import (
    KIND_REJECTED,
    KIND_RETRIES_EXHAUSTED,
    dead_letter_exhausted,
    dead_letter_rejected,
)
from conversion_platform.settings import Settings
from conversion_platform.store import delivery_log as log
from conversion_platform.store.database import create_database_engine
from conversion_platform.store.operations_tables import dead_letters
from conversion_platform.store.tables import delivery_events
from conversion_platform.store.timecodes import to_micros
from conversion_platform_tests.delivery_log_support import record_outcomes, record_query_plans

HOUR = datetime(2026, 11, 29, 10, tzinfo=UTC)
EARLIER = HOUR - timedelta(hours=1)


def _letters(engine: Engine) -> dict[tuple[str, str], tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                dead_letters.c.destination,
                dead_letters.c.event_id,
                dead_letters.c.kind,
                dead_letters.c.reason,
            )
        ).fetchall()
    return {(r.destination, r.event_id): (r.kind, r.reason) for r in rows}


def _statuses(engine: Engine, destination: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(delivery_events.c.event_id, delivery_events.c.status).where(
                delivery_events.c.destination == destination
            )
        ).fetchall()
    return {r.event_id: r.status for r in rows}


def test_an_hours_rejections_and_exhausted_retries_are_dead_lettered_and_no_others(
    either_database: Engine,
) -> None:
    """The hour's rejected events of the destination are dead-lettered once, with their
    own reasons; those of another hour or destination wait for their own turn. Giving up
    on an hour's retries dead-letters its retryable events only, and marks them."""
    record_outcomes(
        either_database, "meta", HOUR, ["r1", "r2"], log.EVENT_PERMANENT, "no event_source_url"
    )
    record_outcomes(either_database, "meta", HOUR, ["ok"], log.EVENT_DELIVERED, None)
    record_outcomes(either_database, "meta", HOUR, ["w1", "w2"], log.EVENT_RETRYABLE, "HTTP 503")
    record_outcomes(either_database, "meta", EARLIER, ["old-r"], log.EVENT_PERMANENT, "too old")
    record_outcomes(either_database, "meta", EARLIER, ["old-w"], log.EVENT_RETRYABLE, "HTTP 503")
    record_outcomes(either_database, "tiktok", HOUR, ["t1"], log.EVENT_PERMANENT, "bad pixel")

    assert dead_letter_rejected(either_database, "meta", [HOUR]) == 2
    assert dead_letter_rejected(either_database, "meta", [HOUR]) == 0  # once only
    assert _letters(either_database) == {
        ("meta", "r1"): (KIND_REJECTED, "no event_source_url"),
        ("meta", "r2"): (KIND_REJECTED, "no event_source_url"),
    }
    assert dead_letter_rejected(either_database, "meta", [HOUR, EARLIER]) == 1
    assert ("meta", "old-r") in _letters(either_database)

    with either_database.begin() as conn:
        moved = dead_letter_exhausted(conn, "meta", to_micros(HOUR), "retries ran out")
    assert moved == 2
    letters = _letters(either_database)
    assert letters[("meta", "w1")] == (KIND_RETRIES_EXHAUSTED, "retries ran out")
    assert ("meta", "old-w") not in letters and ("tiktok", "t1") not in letters
    statuses = _statuses(either_database, "meta")
    assert statuses["w1"] == statuses["w2"] == log.EVENT_DEAD_LETTER
    assert statuses["old-w"] == log.EVENT_RETRYABLE
    assert statuses["r1"] == log.EVENT_PERMANENT and statuses["ok"] == log.EVENT_DELIVERED


def test_dead_lettering_an_hour_seeks_its_index_entries_instead_of_reading_the_log(
    settings: Settings,
) -> None:
    """On SQLite the hour's events are found in a status index, seeking destination, hour
    and status at once, and read by key: no statement reads the destination's whole log,
    which a delivery run did for every hour it delivered (a backfill's hours each read all
    those before)."""
    engine = create_database_engine(settings.db_url)
    for n in range(5):
        hour = HOUR - timedelta(hours=n)
        record_outcomes(
            engine, "meta", hour, [f"d{n}-{i}" for i in range(300)], log.EVENT_DELIVERED, ""
        )
        record_outcomes(
            engine, "meta", hour, [f"p{n}-{i}" for i in range(20)], log.EVENT_PERMANENT, "no"
        )
        record_outcomes(
            engine, "meta", hour, [f"w{n}-{i}" for i in range(20)], log.EVENT_RETRYABLE, "503"
        )
    plans = record_query_plans(engine, lambda statement: "delivery_events" in statement)

    assert dead_letter_rejected(engine, "meta", [HOUR]) == 20
    with engine.begin() as conn:
        assert dead_letter_exhausted(conn, "meta", to_micros(HOUR), "gave up") == 20
    engine.dispose()
    assert len(plans) == 3  # the rejected, the exhausted, and the exhausted's update
    # Either status index will do (the planner, without statistics, picks either): a
    # seek on destination, hour and status together.
    hour_seek = re.compile(
        r"ix_delivery_events_dest_hour_status \(destination=\? AND hour_us=\? AND status=\?\)"
        r"|ix_delivery_events_status \(status=\? AND destination=\? AND hour_us=\?\)"
    )
    for _statement, plan in plans:
        assert hour_seek.search(plan), plan
        assert "PRIMARY KEY (destination=?)" not in plan, plan
        assert "SCAN delivery_events" not in plan, plan


def _age(engine: Engine, event_ids: list[str], updated: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            delivery_events.update()
            .where(delivery_events.c.event_id.in_(event_ids))
            .values(updated_at_us=to_micros(updated))
        )


def test_the_sweep_dead_letters_recent_rejections_a_run_missed_and_no_others(
    either_database: Engine,
) -> None:
    """The retry sensor's sweep takes rejections recorded since its moment that are not
    dead-lettered yet, of any destination and hour; older ones are left alone."""
    now = datetime.now(UTC)
    record_outcomes(
        either_database, "meta", EARLIER, ["recent-m"], log.EVENT_PERMANENT, "no consent"
    )
    record_outcomes(either_database, "tiktok", HOUR, ["recent-t"], log.EVENT_PERMANENT, "bad pixel")
    record_outcomes(either_database, "meta", HOUR, ["old"], log.EVENT_PERMANENT, "too old")
    record_outcomes(either_database, "meta", HOUR, ["waiting"], log.EVENT_RETRYABLE, "HTTP 503")
    _age(either_database, ["old"], now - timedelta(days=5))

    assert dead_letter_rejected(either_database, updated_since=now - timedelta(days=2)) == 2
    assert set(_letters(either_database)) == {("meta", "recent-m"), ("tiktok", "recent-t")}
    assert dead_letter_rejected(either_database, updated_since=now - timedelta(days=2)) == 0
    assert dead_letter_rejected(either_database, updated_since=now - timedelta(days=7)) == 1
    assert ("meta", "old") in _letters(either_database) and ("meta", "waiting") not in _letters(
        either_database
    )


def test_the_sweep_reads_the_recent_rejections_only(settings: Settings) -> None:
    """On SQLite the sweep seeks the partial index of rejected events by update time: each
    minute's tick reads the last days' rejections, not every rejection ever recorded."""
    engine = create_database_engine(settings.db_url)
    now = datetime.now(UTC)
    for n in range(4):
        ids = [f"p{n}-{i}" for i in range(50)]
        record_outcomes(engine, "meta", HOUR - timedelta(hours=n), ids, log.EVENT_PERMANENT, "no")
        record_outcomes(
            engine, "meta", HOUR - timedelta(hours=n), [f"d{n}"], log.EVENT_DELIVERED, None
        )
        if n:
            _age(engine, ids, now - timedelta(days=30))
    plans = record_query_plans(
        engine, lambda s: "delivery_events" in s and s.lstrip().upper().startswith("SELECT")
    )

    assert dead_letter_rejected(engine, updated_since=now - timedelta(days=2)) == 50
    engine.dispose()
    ((_statement, plan),) = plans
    assert "ix_delivery_events_rejected_updated (updated_at_us>?)" in plan, plan
    assert "ix_delivery_events_status" not in plan and "SCAN" not in plan, plan
