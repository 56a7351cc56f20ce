"""Production storage for real: the operational database and the Dagster instance on PostgreSQL.

Scope: needs `CONVERSION_PLATFORM_TEST_PG_URL` (skips with the reason otherwise). Two fresh
databases: one is the platform's operational database (`CONVERSION_PLATFORM_DB_URL`), the
other holds Dagster's runs and event log through the committed
`deploy/dagster.postgres.yaml`, loaded as `DAGSTER_HOME/dagster.yaml` with its `DAGSTER_PG_*`
variables. A full hour runs through every stage; then a delivery that fails (500) is
retried by the retry sensor and recovers, with every event accepted once, and the retry
schedule, dead letters and Dagster's records all in PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from conversion_platform.emulator.server import running_emulator
from conversion_platform.operations.retry_planner import retry_schedule
from conversion_platform.settings import REPO_ROOT, Settings
from conversion_platform.store.database import engine_for
from conversion_platform.store.timecodes import from_micros
from conversion_platform_tests.conftest import PG_URL_VARIABLE
from conversion_platform_tests.operations_support import (
    TOKEN_VARIABLE,
    Emulator,
    FrozenClock,
    Platform,
    dead_letter_rows,
    event_statuses,
    hours_back,
    land_clean_traffic,
    latest_materialization_metadata,
    with_status,
    write_emulator_destinations,
)

STAGES = (
    "collected_conversions",
    "server_log_conversions",
    "deduplicated_conversions",
    "validated_conversions",
    "resolved_conversions",
    "delivery_report",
)


@pytest.fixture
def dagster_pg_url() -> Iterator[str]:
    """A second fresh database, for Dagster's own storage."""
    base = os.environ.get(PG_URL_VARIABLE)
    if not base:
        pytest.skip(f"{PG_URL_VARIABLE} is not set: PostgreSQL tests need a server (CI sets it)")
    name = f"cp_dagster_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_instance(
    dagster_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """The documented production dagster.yaml, pointed at the test database."""
    url = make_url(dagster_pg_url)
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(url.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", url.database or "")
    monkeypatch.setenv("DAGSTER_PG_USERNAME", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    dagster_home = tmp_path / "dagster_home_pg"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "dagster.postgres.yaml", dagster_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with running_emulator() as url:
        yield Emulator(url)


def test_hour_and_recovering_delivery_on_postgres(
    pg_url: str,
    dagster_pg_url: str,
    postgres_instance: dg.DagsterInstance,
    platform_home: Path,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(postgres_instance.run_storage, PostgresRunStorage)
    assert isinstance(postgres_instance.event_log_storage, PostgresEventLogStorage)
    assert postgres_instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
    assert postgres_instance.run_retries_enabled
    assert postgres_instance.run_retries_max_retries == 2
    assert postgres_instance.run_monitoring_enabled

    destinations = write_emulator_destinations(platform_home / "destinations.yaml", emulator.url)
    monkeypatch.setenv("CONVERSION_PLATFORM_DESTINATIONS", str(destinations))
    monkeypatch.setenv("CONVERSION_PLATFORM_DB_URL", pg_url)
    monkeypatch.setenv(TOKEN_VARIABLE, "emulator-token")
    settings = Settings.from_env()
    engine = engine_for(settings.db_url)
    assert engine.dialect.name == "postgresql"
    first, second = hours_back(2)
    land_clean_traffic(engine, [first, second], per_hour=15)
    platform = Platform(settings, postgres_instance, FrozenClock(datetime.now(UTC)))

    # A full hour through every stage.
    assert platform.run_hour(first).success
    for asset in STAGES:
        assert (settings.partitions_dir / asset / f"{platform.key(first)}.parquet").exists()
    delivered_first = with_status(event_statuses(engine), "delivered")
    assert delivered_first

    # A failing, then recovering, delivery.
    emulator.script(responses=[{"status": 500}])
    assert not platform.run_hour(second).success
    pending = with_status(event_statuses(engine), "retryable")
    assert pending
    assert not platform.tick().run_requests
    [row] = [r for r in retry_schedule(engine) if r["state"] == "waiting"]
    platform.clock.now = from_micros(row["next_attempt_at_us"])
    [request] = platform.tick().run_requests
    assert request.partition_key == platform.key(second)
    assert platform.execute(request).success

    statuses = event_statuses(engine)
    assert with_status(statuses, "delivered") == delivered_first | pending
    assert with_status(statuses, "retryable") == set()
    accepted = emulator.accepted()
    assert set(accepted) == delivered_first | pending and set(accepted.values()) == {1}
    assert dead_letter_rows(engine) == []
    assert platform.tick().skip_message == "nothing to retry: every delivered hour is settled"
    assert [r["state"] for r in retry_schedule(engine)] == ["resolved"]
    report = latest_materialization_metadata(
        postgres_instance, dg.AssetKey("delivery_report"), platform.key(second)
    )
    assert report["delivered"] == len(pending) and report["pending"] == 0

    # Dagster's records are in its PostgreSQL database, not in files under DAGSTER_HOME.
    dagster_engine = sa.create_engine(dagster_pg_url)
    with dagster_engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar()
        materialized = conn.execute(
            sa.text(
                "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            )
        ).scalar()
    dagster_engine.dispose()
    assert runs == 3
    assert materialized and materialized >= len(STAGES) + 2
