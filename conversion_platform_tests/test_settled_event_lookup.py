"""Which events need no further sending: `settled_event_ids` on a real delivery log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.settings import Settings
from conversion_platform.store import delivery_log as log
from conversion_platform.store.database import create_database_engine

HOUR = datetime(2026, 11, 29, 10, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Engine]:
    """The platform's database: SQLite, and PostgreSQL when the test server is configured."""
    url = settings.db_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_database_engine(url)
    yield engine
    engine.dispose()


def _record(engine: Engine, destination: str, hour: datetime, ids: list[str], status: str) -> None:
    with engine.begin() as conn:
        log.record_event_outcomes(
            conn,
            destination,
            hour,
            [log.EventOutcome(i, "purchase", status, None, batch_id=None) for i in ids],
        )


def test_settled_events_are_those_of_this_destination_that_need_no_more_sending(
    store: Engine,
) -> None:
    """Delivered, waiting for the platform's status, unconfirmed, rejected for good and
    dead-lettered events are settled; retryable, filtered and expired ones are not, nor
    is an event settled only for another destination, nor one never seen."""
    settled_statuses = sorted(log.SETTLED_STATUSES)
    for n, status in enumerate(settled_statuses):
        _record(store, "meta", HOUR - timedelta(hours=n), [f"s-{status}"], status)
    open_statuses = [log.EVENT_RETRYABLE, log.EVENT_FILTERED, log.EVENT_EXPIRED]
    for status in open_statuses:
        _record(store, "meta", HOUR, [f"o-{status}"], status)
    _record(store, "tiktok", HOUR, ["only-tiktok"], log.EVENT_DELIVERED)

    asked = [
        *(f"s-{s}" for s in settled_statuses),
        *(f"o-{s}" for s in open_statuses),
        "only-tiktok",
        "never-seen",
        'quote"and\\backslash',
    ]
    with store.connect() as conn:
        assert log.settled_event_ids(conn, "meta", asked) == {f"s-{s}" for s in settled_statuses}
        assert log.settled_event_ids(conn, "tiktok", asked) == {"only-tiktok"}
        assert log.settled_event_ids(conn, "meta", []) == set()


def test_the_settled_lookup_seeks_each_id_instead_of_reading_the_destinations_log(
    settings: Settings,
) -> None:
    """On SQLite each asked id is one seek in the primary key: an hour's lookup costs what
    its own events cost, however many hours the log already holds. (The planner, left to
    itself, read every settled event of the destination from the status index, so each
    hour of a backfill read all the hours before it.)"""
    engine = create_database_engine(settings.db_url)
    for hour_number in range(6):
        hour = HOUR - timedelta(hours=hour_number)
        ids = [f"h{hour_number}-{i}" for i in range(400)]
        _record(engine, "meta", hour, ids, log.EVENT_DELIVERED)
    # No ANALYZE: the platform's databases have no statistics, the planner's worst case.
    plans: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def explain(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if "json_each" in statement and statement.lstrip().upper().startswith("SELECT"):
            rows = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.append(" | ".join(str(row[-1]) for row in rows))

    asked = [f"h0-{i}" for i in range(0, 400, 2)] + ["nowhere"]
    with engine.connect() as conn:
        settled = log.settled_event_ids(conn, "meta", asked)
    engine.dispose()
    assert settled == set(asked) - {"nowhere"}
    (plan,) = plans
    assert "USING PRIMARY KEY (destination=? AND event_id=?)" in plan, plan
    assert "ix_delivery_events_status" not in plan, plan
    assert "SCAN delivery_events" not in plan and "SCAN e " not in f"{plan} ", plan
