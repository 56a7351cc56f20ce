"""Which events need no further sending: `settled_event_ids` on a real delivery log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from conversion_platform.settings import Settings
from conversion_platform.store import delivery_log as log
from conversion_platform.store.database import create_database_engine
from conversion_platform_tests.delivery_log_support import record_outcomes, record_query_plans

HOUR = datetime(2026, 11, 29, 10, tzinfo=UTC)


def test_settled_events_are_those_of_this_destination_that_need_no_more_sending(
    either_database: Engine,
) -> None:
    """Delivered, waiting for the platform's status, unconfirmed, rejected for good and
    dead-lettered events are settled; retryable, filtered and expired ones are not, nor
    is an event settled only for another destination, nor one never seen."""
    settled_statuses = sorted(log.SETTLED_STATUSES)
    for n, status in enumerate(settled_statuses):
        record_outcomes(either_database, "meta", HOUR - timedelta(hours=n), [f"s-{status}"], status)
    open_statuses = [log.EVENT_RETRYABLE, log.EVENT_FILTERED, log.EVENT_EXPIRED]
    for status in open_statuses:
        record_outcomes(either_database, "meta", HOUR, [f"o-{status}"], status)
    record_outcomes(either_database, "tiktok", HOUR, ["only-tiktok"], log.EVENT_DELIVERED)

    asked = [
        *(f"s-{s}" for s in settled_statuses),
        *(f"o-{s}" for s in open_statuses),
        "only-tiktok",
        "never-seen",
        'quote"and\\backslash',
    ]
    with either_database.connect() as conn:
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
        record_outcomes(engine, "meta", hour, ids, log.EVENT_DELIVERED)
    # No ANALYZE: the platform's databases have no statistics, the planner's worst case.
    plans = record_query_plans(
        engine, lambda s: "json_each" in s and s.lstrip().upper().startswith("SELECT")
    )

    asked = [f"h0-{i}" for i in range(0, 400, 2)] + ["nowhere"]
    with engine.connect() as conn:
        settled = log.settled_event_ids(conn, "meta", asked)
    engine.dispose()
    assert settled == set(asked) - {"nowhere"}
    ((_statement, plan),) = plans
    assert "USING PRIMARY KEY (destination=? AND event_id=?)" in plan, plan
    assert "ix_delivery_events_status" not in plan, plan
    assert "SCAN delivery_events" not in plan and "SCAN e " not in f"{plan} ", plan
