"""Backfilling after an outage: a range of hours as one run equals the hours run one by one.

Scope: two fresh platform homes receive the same 48 hours of generated traffic (collector
payloads and server logs, broken lines and invalid events included). One runs the hourly
job once per hour; the other runs the whole range as one single-run backfill. Every hour's
rows at every stage, its quarantine, each event's delivery outcome and the request bodies
written to the outbox (dry-run mode) must be the same. A second test runs the README's
exact command, `dagster asset materialize ... --partition-range A...B`, in a subprocess
on a fresh CONVERSION_PLATFORM_HOME and DAGSTER_HOME.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from conversion_platform import events
from conversion_platform.definitions import build_definitions
from conversion_platform.ingest.landing_writer import land_events
from conversion_platform.settings import REPO_ROOT, Settings
from conversion_platform.store.database import engine_for
from conversion_platform.store.tables import delivery_events, quarantine
from conversion_platform.synthetic import TrafficGenerator, write_server_logs
from conversion_platform_tests.operations_support import QUIET, hours_back, memory_backed_instance

HOURS = 48
STAGES = (
    "collected_conversions",
    "server_log_conversions",
    "deduplicated_conversions",
    "validated_conversions",
    "quarantined_conversions",
    "resolved_conversions",
    "delivery_report",
)
#: Columns that record when a row was processed, not what it says.
VOLATILE = {"created_at", "recorded_at", "updated_at_us", "created_at_us"}


def _home(
    root: Path, name: str, hours: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    home = root / name
    home.mkdir()
    monkeypatch.setenv("CONVERSION_PLATFORM_HOME", str(home))
    # With 4 conversions an hour one invalid event is 25 %: the blocking invalid-rate check
    # would stop hours here, and in a range run it stops the whole range (see the README's
    # backfill section); this test compares the hours' data, so the check never blocks.
    monkeypatch.setenv("CONVERSION_PLATFORM_MAX_INVALID_RATE", "1.0")
    # One destination (dry run: request bodies to the outbox) keeps 49 runs affordable; the
    # delivery code is the same factory for all of them.
    destinations = root / f"{name}-destinations.yaml"
    destinations.write_text(
        "destinations:\n  meta_capi:\n    platform: meta_capi\n"
        "    settings: {pixel_id: '1234567890', api_version: v24.0}\n"
        "    credentials: {access_token: BACKFILL_TEST_UNSET_TOKEN}\n"
    )
    monkeypatch.setenv("CONVERSION_PLATFORM_DESTINATIONS", str(destinations))
    settings = Settings.from_env()
    generator = TrafficGenerator(seed=48, people=120)
    traffic = generator.generate(hours, conversions_per_hour=4)
    engine = engine_for(settings.db_url)
    for source, records in (
        (events.SOURCE_PIXEL, traffic.pixel_events),
        (events.SOURCE_SERVER, traffic.server_events),
    ):
        land_events(engine, records, source, [r["received_at"] for r in records], origin="test")
    write_server_logs(traffic, settings.logs_dir, hours[0])
    return settings


def _frame(settings: Settings, asset: str, key: str) -> pd.DataFrame:
    frame = pd.read_parquet(settings.partitions_dir / asset / f"{key}.parquet")
    frame = frame.drop(columns=[c for c in frame.columns if c in VOLATILE])
    order = [c for c in ("destination", "event_id", "dedupe_key", "origin", "reason") if c in frame]
    return frame.sort_values(order).reset_index(drop=True) if order else frame


def _outcomes(settings: Settings) -> pd.DataFrame:
    with engine_for(settings.db_url).connect() as conn:
        rows = conn.execute(
            sa.select(
                delivery_events.c.destination,
                delivery_events.c.event_id,
                delivery_events.c.hour_us,
                delivery_events.c.status,
                delivery_events.c.reason,
            )
        ).fetchall()
    return pd.DataFrame(rows).sort_values(["destination", "event_id"]).reset_index(drop=True)


def _quarantine(settings: Settings) -> pd.DataFrame:
    with engine_for(settings.db_url).connect() as conn:
        rows = conn.execute(
            sa.select(
                quarantine.c.stage,
                quarantine.c.source,
                quarantine.c.hour_us,
                quarantine.c.origin,
                quarantine.c.reason,
            )
        ).fetchall()
    return (
        pd.DataFrame(rows)
        .sort_values(["hour_us", "stage", "origin", "reason"])
        .reset_index(drop=True)
    )


# 49 Dagster runs (one backfill, 48 single hours): Dagster's own overhead per run dominates.
@pytest.mark.timeout(1200)
def test_48_hours_in_one_run_equal_the_hours_one_by_one(
    platform_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hours = hours_back(HOURS)
    one_by_one = _home(tmp_path, "one_by_one", hours, monkeypatch)
    backfill = _home(tmp_path, "backfill", hours, monkeypatch)

    # An in-memory instance: 48 runs on an on-disk test instance take twice as long.
    instance = dg.DagsterInstance.ephemeral()
    job = build_definitions(one_by_one).resolve_job_def("hourly_conversions_job")
    keys = [job.partitions_def.get_partition_key_for_timestamp(h.timestamp()) for h in hours]
    single = {
        key: job.execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False, run_config=QUIET
        ).success
        for key in keys
    }

    with memory_backed_instance() as instance:
        job = build_definitions(backfill).resolve_job_def("hourly_conversions_job")
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=QUIET,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
        )
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.tags["dagster/asset_partition_range_end"] == keys[-1]
        assert len(instance.get_runs()) == 1, "a backfill of a range is one run"

    assert all(single.values()), [k for k, ok in single.items() if not ok]
    assert result.success
    for key in keys:
        for asset in STAGES:
            pd.testing.assert_frame_equal(
                _frame(backfill, asset, key), _frame(one_by_one, asset, key), obj=f"{asset} {key}"
            )
        for destination_dir in (one_by_one.outbox_dir).iterdir():
            name = destination_dir.name
            single_body = (destination_dir / f"{key}.jsonl").read_bytes()
            backfill_body = (backfill.outbox_dir / name / f"{key}.jsonl").read_bytes()
            assert backfill_body == single_body, f"outbox of {name} {key} differs"
    pd.testing.assert_frame_equal(_outcomes(backfill), _outcomes(one_by_one))
    pd.testing.assert_frame_equal(_quarantine(backfill), _quarantine(one_by_one))
    outcomes = _outcomes(backfill)
    assert outcomes["hour_us"].nunique() == HOURS, "every hour delivered something"
    assert (outcomes["status"] == "dry_run").sum() > HOURS


def test_readme_backfill_command_on_a_fresh_home(tmp_path: Path) -> None:
    """The exact `dagster asset materialize --partition-range` command of the README."""
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    hours = hours_back(3)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONVERSION_PLATFORM_") and not k.endswith("_ACCESS_TOKEN")
    }
    env.update(CONVERSION_PLATFORM_HOME=str(home), DAGSTER_HOME=str(dagster_home))
    settings = Settings(
        home=home,
        db_url=f"sqlite:///{home / 'platform.db'}",
        logs_dir=home / "server_logs",
        destinations_file=REPO_ROOT / "seeds" / "destinations.yaml",
        access_log_rules_file=REPO_ROOT / "seeds" / "access_log_rules.yaml",
    )
    traffic = TrafficGenerator(seed=5, people=60).generate(hours, conversions_per_hour=5)
    engine = engine_for(settings.db_url)
    for source, records in (
        (events.SOURCE_PIXEL, traffic.pixel_events),
        (events.SOURCE_SERVER, traffic.server_events),
    ):
        land_events(engine, records, source, [r["received_at"] for r in records], origin="test")
    engine.dispose()
    first, last = (h.strftime("%Y-%m-%d-%H:%M") for h in (hours[0], hours[-1]))
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "conversion_platform.definitions",
        "--select",
        "*",
        "--partition-range",
        f"{first}...{last}",
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for hour in hours:
        key = hour.strftime("%Y-%m-%d-%H:%M")
        for asset in STAGES:
            assert (home / "partitions" / asset / f"{key}.parquet").exists(), (asset, key)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1
        assert runs[0].tags["dagster/asset_partition_range_start"] == first
        assert runs[0].tags["dagster/asset_partition_range_end"] == last
