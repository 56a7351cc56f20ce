"""The delivery report's figures, counted from a real delivery log (SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.operations.dead_letters import dead_letter_rejected
from conversion_platform.operations.delivery_report import hour_delivery_report
from conversion_platform.settings import Settings
from conversion_platform.store import delivery_log as log
from conversion_platform.store.database import create_database_engine
from conversion_platform_tests.delivery_log_support import record_query_plans

HOUR = datetime(2026, 11, 29, 10, tzinfo=UTC)
OTHER_HOUR = datetime(2026, 11, 29, 11, tzinfo=UTC)


def _outcomes(
    prefix: str, n: int, status: str, reason: str | None = None
) -> list[log.EventOutcome]:
    return [
        log.EventOutcome(f"{prefix}{i}", "purchase", status, reason, batch_id=None)
        for i in range(n)
    ]


def test_figures_per_destination_from_the_log(either_database: Engine) -> None:
    with either_database.begin() as conn:
        log.record_event_outcomes(
            conn,
            "meta",
            HOUR,
            [
                *_outcomes("d", 6, log.EVENT_DELIVERED),
                *_outcomes("p", 2, log.EVENT_PERMANENT, "bad email"),
                *_outcomes("q", 1, log.EVENT_PERMANENT, "no event_source_url"),
                *_outcomes("f", 3, log.EVENT_FILTERED, "no ad_user_data consent"),
                *_outcomes("x", 1, log.EVENT_EXPIRED, "older than 7 days"),
                *_outcomes("r", 2, log.EVENT_RETRYABLE, "HTTP 503"),
            ],
        )
        log.record_event_outcomes(conn, "tiktok", HOUR, _outcomes("d", 4, log.EVENT_DRY_RUN))
        # Another hour's outcomes are not this hour's.
        log.record_event_outcomes(conn, "meta", OTHER_HOUR, _outcomes("o", 5, log.EVENT_DELIVERED))

    assert dead_letter_rejected(either_database, "meta", [HOUR]) == 3

    # d0-d2 only the backend saw (the pixel missed them); d3-d5 the pixel saw too.
    conversions = pd.DataFrame(
        {
            events.HOUR_COLUMN: pd.Timestamp(HOUR),
            "event_id": [f"d{i}" for i in range(6)],
            "sources": ["server", "server,log", "log", "pixel", "pixel,server", "log,pixel"],
        }
    )
    reports = {
        r.destination: r
        for r in hour_delivery_report(
            either_database, HOUR, ["meta", "tiktok", "snapchat"], conversions
        )
    }

    assert list(reports) == ["meta", "tiktok", "snapchat"]
    meta = reports["meta"].figures
    assert meta["eligible"] == 6 + 2 + 1 + 1 + 2  # everything but the filtered
    assert meta["delivered"] == 6
    assert meta["rejected"] == 3
    assert reports["meta"].rejected_by_reason == {"bad email": 2, "no event_source_url": 1}
    assert meta["filtered_no_consent"] == 3
    assert meta["expired"] == 1
    assert meta["pending"] == 2
    assert meta["dead_lettered"] == 3
    assert meta["server_only"] == 3
    assert meta["server_recovered_share"] == 0.5

    tiktok = reports["tiktok"].figures
    assert tiktok["dry_run"] == 4 and tiktok["delivered"] == 0
    assert tiktok["server_only"] == 3  # d0, d1, d2 written to the outbox
    assert tiktok["server_recovered_share"] == 0.75

    snapchat = reports["snapchat"].figures  # configured, nothing in the log yet
    assert snapchat["eligible"] == 0 and snapchat["server_recovered_share"] == 0.0


def test_without_the_sources_column_no_conversion_counts_as_server_only(
    either_database: Engine,
) -> None:
    with either_database.begin() as conn:
        log.record_event_outcomes(conn, "meta", HOUR, _outcomes("d", 2, log.EVENT_DELIVERED))
    frame = pd.DataFrame({"event_id": ["d0", "d1"]})
    (meta,) = hour_delivery_report(either_database, HOUR, ["meta"], frame)
    assert meta.figures["delivered"] == 2
    assert meta.figures["server_only"] == 0


def test_a_database_made_before_the_status_index_gets_it_on_the_next_start(
    either_database: Engine,
) -> None:
    """The delivery log's (destination, hour) index became (destination, hour, status): an
    older database gains the new index when the platform next opens it (the old one stays
    for processes of the previous version), and the report's figures are unchanged."""
    with either_database.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_delivery_events_dest_hour_status")
        conn.exec_driver_sql("DROP INDEX ix_delivery_events_rejected_updated")
        conn.exec_driver_sql(
            "CREATE INDEX ix_delivery_events_dest_hour ON delivery_events (destination, hour_us)"
        )
        log.record_event_outcomes(conn, "meta", HOUR, _outcomes("d", 3, log.EVENT_DELIVERED))
    url = either_database.url.render_as_string(hide_password=False)
    # Two processes opening it at once: the second finds the index being or already made.
    first, second = create_database_engine(url), create_database_engine(url)
    try:
        columns = {
            index["name"]: index["column_names"]
            for index in sa.inspect(second).get_indexes("delivery_events")
        }
        assert columns["ix_delivery_events_dest_hour_status"] == [
            "destination",
            "hour_us",
            "status",
        ]
        assert columns["ix_delivery_events_dest_hour"] == ["destination", "hour_us"]
        # and the retry sweep's partial index of rejected events, made since
        assert columns["ix_delivery_events_rejected_updated"] == ["updated_at_us"]
        (meta,) = hour_delivery_report(first, HOUR, ["meta"], pd.DataFrame())
        assert meta.figures["delivered"] == 3
    finally:
        first.dispose()
        second.dispose()


def test_the_reports_queries_read_only_the_hours_index_entries(settings: Settings) -> None:
    """On SQLite every report query on the delivery log seeks the hour in the (destination,
    hour, status) index, the status counts and the server-only join from the index alone:
    a report's cost follows its hour's size, not the log's."""
    engine = create_database_engine(settings.db_url)
    with engine.begin() as conn:
        for hour in (HOUR, OTHER_HOUR):
            log.record_event_outcomes(conn, "meta", hour, _outcomes("d", 4, log.EVENT_DELIVERED))
            log.record_event_outcomes(conn, "meta", hour, _outcomes("p", 2, log.EVENT_PERMANENT))
    plans = record_query_plans(
        engine, lambda s: s.lstrip().upper().startswith("SELECT") and "hour_us" in s
    )

    conversions = pd.DataFrame({"event_id": ["d0", "d1"], "sources": ["server", "pixel"]})
    (meta,) = hour_delivery_report(engine, HOUR, ["meta"], conversions)
    engine.dispose()
    assert meta.figures["delivered"] == 4 and meta.figures["rejected"] == 2
    assert meta.figures["server_only"] == 1
    on_log = [(sql, plan) for sql, plan in plans if "delivery_events" in sql]
    assert len(on_log) == 2  # the counts, and the server-only join
    for _sql, plan in on_log:
        assert "ix_delivery_events_dest_hour_status (destination=? AND hour_us=?" in plan, plan
        assert "PRIMARY KEY" not in plan and "SCAN" not in plan.replace("SCAN i", ""), plan
    # The hour's dead letters too: a seek per destination, not a read of every hour's.
    (dead_plan,) = [plan for sql, plan in plans if "FROM dead_letters" in sql]
    assert "ix_dead_letters_dest_hour (destination=? AND hour_us=?)" in dead_plan, dead_plan
    counts_plan = next(plan for sql, plan in on_log if "UNION ALL" in sql)
    assert "COVERING INDEX ix_delivery_events_dest_hour_status" in counts_plan
