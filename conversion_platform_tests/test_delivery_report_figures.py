"""The delivery report's figures, counted from a real delivery log (SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.operations.dead_letters import dead_letter_rejected
from conversion_platform.operations.delivery_report import hour_delivery_report
from conversion_platform.settings import Settings
from conversion_platform.store import delivery_log as log
from conversion_platform.store.database import create_database_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Engine]:
    """The platform's database: SQLite, and PostgreSQL when the test server is configured."""
    url = settings.db_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_database_engine(url)
    yield engine
    engine.dispose()


HOUR = datetime(2026, 11, 29, 10, tzinfo=UTC)
OTHER_HOUR = datetime(2026, 11, 29, 11, tzinfo=UTC)


def _outcomes(
    prefix: str, n: int, status: str, reason: str | None = None
) -> list[log.EventOutcome]:
    return [
        log.EventOutcome(f"{prefix}{i}", "purchase", status, reason, batch_id=None)
        for i in range(n)
    ]


def test_figures_per_destination_from_the_log(store: Engine) -> None:
    with store.begin() as conn:
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

    assert dead_letter_rejected(store, "meta", [HOUR]) == 3

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
        for r in hour_delivery_report(store, HOUR, ["meta", "tiktok", "snapchat"], conversions)
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


def test_without_the_sources_column_no_conversion_counts_as_server_only(store: Engine) -> None:
    with store.begin() as conn:
        log.record_event_outcomes(conn, "meta", HOUR, _outcomes("d", 2, log.EVENT_DELIVERED))
    frame = pd.DataFrame({"event_id": ["d0", "d1"]})
    (meta,) = hour_delivery_report(store, HOUR, ["meta"], frame)
    assert meta.figures["delivered"] == 2
    assert meta.figures["server_only"] == 0


def test_a_database_made_before_the_status_index_gets_it_on_the_next_start(store: Engine) -> None:
    """The delivery log's (destination, hour) index became (destination, hour, status): an
    older database gains the new index when the platform next opens it, loses the old one,
    and the report reads the hour's counts from the new index alone."""
    with store.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_delivery_events_dest_hour_status")
        conn.exec_driver_sql(
            "CREATE INDEX ix_delivery_events_dest_hour ON delivery_events (destination, hour_us)"
        )
        log.record_event_outcomes(conn, "meta", HOUR, _outcomes("d", 3, log.EVENT_DELIVERED))
    reopened = create_database_engine(store.url.render_as_string(hide_password=False))
    try:
        columns = {
            index["name"]: index["column_names"]
            for index in sa.inspect(reopened).get_indexes("delivery_events")
        }
        assert columns["ix_delivery_events_dest_hour_status"] == [
            "destination",
            "hour_us",
            "status",
        ]
        assert "ix_delivery_events_dest_hour" not in columns
        (meta,) = hour_delivery_report(reopened, HOUR, ["meta"], pd.DataFrame())
        assert meta.figures["delivered"] == 3
        if reopened.dialect.name == "sqlite":
            with reopened.connect() as conn:
                plan = " ".join(
                    str(row[-1])
                    for row in conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN SELECT destination, status, count(*) "
                        "FROM delivery_events INDEXED BY ix_delivery_events_dest_hour_status "
                        "WHERE destination IN ('meta') AND hour_us = 1 GROUP BY destination, status"
                    )
                )
            assert "COVERING INDEX ix_delivery_events_dest_hour_status" in plan
    finally:
        reopened.dispose()
