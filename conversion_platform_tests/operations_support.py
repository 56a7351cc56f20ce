"""Helpers for the operations tests: clean synthetic traffic, a destinations file aimed at
the emulator, a frozen clock, and a platform that runs hours, ticks the retry sensor on a
real Dagster instance and executes the runs it requests.

Nothing here is faked: runs are real `execute_in_process` runs of the project's own
`Definitions`, the database is the test's, and the ad platform is the emulator over HTTP.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.definitions import build_definitions
from conversion_platform.defs.sensors import (
    DELIVERY_REPORT_SENSOR,
    DELIVERY_RETRY_SENSOR,
    build_delivery_retry_sensor,
)
from conversion_platform.ingest.landing_writer import land_events
from conversion_platform.operations.retry_policy import RetryPolicy
from conversion_platform.settings import Settings
from conversion_platform.store.operations_tables import dead_letters
from conversion_platform.store.tables import delivery_events
from conversion_platform.synthetic import TrafficGenerator

TOKEN_VARIABLE = "META_CAPI_ACCESS_TOKEN"
DESTINATION = "meta_capi"
#: Dagster's console logger at WARNING: test output stays readable.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@contextmanager
def memory_backed_instance() -> Iterator[dg.DagsterInstance]:
    """A persistent test instance (what `build_sensor_context` needs) kept in tmpfs.

    Dagster's SQLite storage commits every event; on a busy disk those syncs, not the
    work, dominated these tests. Falls back to the default temporary folder.
    """
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with (
        tempfile.TemporaryDirectory(prefix="cp-dagster-", dir=shm) as folder,
        dg.instance_for_test(temp_dir=folder) as instance,
    ):
        yield instance


def write_emulator_destinations(path: Path, emulator_url: str, *, in_run_attempts: int = 1) -> Path:
    """A destinations file with Meta aimed at the emulator; one attempt a run unless told."""
    path.write_text(
        "destinations:\n"
        f"  {DESTINATION}:\n"
        "    platform: meta_capi\n"
        f"    base_url: {emulator_url}/meta\n"
        "    settings: {pixel_id: '1234567890', api_version: v24.0}\n"
        f"    credentials: {{access_token: {TOKEN_VARIABLE}}}\n"
        f"    in_run_attempts: {in_run_attempts}\n"
        "    max_in_run_wait_seconds: 0.1\n"
    )
    return path


def land_clean_traffic(
    engine: Engine, hours: list[datetime], per_hour: int = 12, seed: int = 3
) -> int:
    """Land traffic every conversion of which Meta can take (pixel-seen, valid); returns rows landed.

    Backend-only conversions carry no page URL or user agent, which Meta requires of
    website events; they would be rejected by design, so they are left out here.
    """
    traffic = TrafficGenerator(seed=seed, people=150).generate(
        hours, conversions_per_hour=per_hour, invalid_share=0.0, broken_line_share=0.0
    )
    pixel_ids = {r["event_id"] for r in traffic.pixel_events}
    server = [r for r in traffic.server_events if r["event_id"] in pixel_ids]
    landed = 0
    for source, records in (
        (events.SOURCE_PIXEL, traffic.pixel_events),
        (events.SOURCE_SERVER, server),
    ):
        land_events(engine, records, source, [r["received_at"] for r in records], origin="test")
        landed += len(records)
    return landed


def hours_back(count: int, now: datetime | None = None) -> list[datetime]:
    """`count` complete UTC hours ending an hour before `now`, oldest first."""
    now = now or datetime.now(UTC)
    current = now.replace(minute=0, second=0, microsecond=0)
    return [current - timedelta(hours=count - i) for i in range(count)]


@dataclass
class FrozenClock:
    """A clock that only moves when told to."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Emulator:
    """The emulator's control API over HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url

    def script(self, **script: Any) -> None:
        response = requests.post(f"{self.url}/_emulator/meta/script", json=script, timeout=5)
        response.raise_for_status()

    def clear(self) -> None:
        self.script(responses=[], fail_event_ids=[])

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_emulator/stats", timeout=5).json()["meta"]

    def accepted(self) -> dict[str, int]:
        return dict(self.stats()["accepted_by_event_id"])


@dataclass(frozen=True)
class Tick:
    """What one sensor evaluation asked for, after the daemon's run-key deduplication."""

    run_requests: list[dg.RunRequest]
    skip_message: str | None
    cursor: str | None
    asset_events: list[Any]


@dataclass
class Platform:
    """The project's Definitions on a real test instance, with a frozen clock for the sensor."""

    settings: Settings
    instance: dg.DagsterInstance
    clock: FrozenClock
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    cursor: str | None = None
    runs: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    #: run keys the sensor already had launched: the daemon skips a request that reuses one
    used_run_keys: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.sensor = build_delivery_retry_sensor(clock=self.clock, policy=self.policy)
        self.defs = build_definitions(self.settings, retry_sensor=self.sensor)
        self.hourly_job = self.defs.resolve_job_def("hourly_conversions_job")
        self.retry_job = self.defs.resolve_job_def("delivery_retry_job")
        self.partitions = self.hourly_job.partitions_def
        assert self.partitions is not None

    def key(self, hour: datetime) -> str:
        return self.partitions.get_partition_key_for_timestamp(hour.timestamp())

    def run_hour(self, hour: datetime) -> dg.ExecuteInProcessResult:
        result = self.hourly_job.execute_in_process(
            partition_key=self.key(hour),
            instance=self.instance,
            raise_on_error=False,
            run_config=QUIET,
        )
        self.runs.append(result)
        return result

    def run_range(self, first: datetime, last: datetime) -> dg.ExecuteInProcessResult:
        """One run over the hours first..last (a single-run backfill)."""
        result = self.hourly_job.execute_in_process(
            instance=self.instance,
            raise_on_error=False,
            run_config=QUIET,
            tags={
                "dagster/asset_partition_range_start": self.key(first),
                "dagster/asset_partition_range_end": self.key(last),
            },
        )
        self.runs.append(result)
        return result

    def tick(self) -> Tick:
        """One evaluation of the retry sensor at the frozen clock's time."""
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            repository_def=self.defs.get_repository_def(),
            resources=self.defs.resources,
            sensor_name=DELIVERY_RETRY_SENSOR,
        )
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        # As the sensor daemon does: a run key already used by this sensor launches nothing.
        fresh = [r for r in data.run_requests or [] if r.run_key not in self.used_run_keys]
        self.used_run_keys.update(r.run_key for r in fresh if r.run_key)
        return Tick(fresh, data.skip_message, data.cursor, list(data.asset_events))

    def execute(
        self, run_request: dg.RunRequest, job_name: str = "delivery_retry_job"
    ) -> dg.ExecuteInProcessResult:
        """Run what a sensor asked for, as the daemon would (same tags, partition, selection)."""
        job = self.defs.resolve_job_def(run_request.job_name or job_name)
        result = job.execute_in_process(
            partition_key=run_request.partition_key,
            asset_selection=list(run_request.asset_selection)
            if run_request.asset_selection
            else None,
            instance=self.instance,
            raise_on_error=False,
            tags={**run_request.tags, "dagster/run_key": run_request.run_key or ""},
            run_config=QUIET,
        )
        self.runs.append(result)
        return result

    def tick_and_execute(self) -> list[dg.ExecuteInProcessResult]:
        data = self.tick()
        return [self.execute(r) for r in data.run_requests or []]

    def report_sensor_requests(self, result: dg.ExecuteInProcessResult) -> list[dg.RunRequest]:
        """What the delivery-report sensor asks for when `result` (a failed run) ends."""
        run = self.instance.get_run_by_id(result.run_id)
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
        )
        sensor = self.defs.get_sensor_def(DELIVERY_REPORT_SENSOR)
        context = dg.build_run_status_sensor_context(
            sensor_name=DELIVERY_REPORT_SENSOR,
            dagster_instance=self.instance,
            dagster_run=run,
            dagster_event=failure,
            repository_def=self.defs.get_repository_def(),
        )
        output = sensor(context)
        if output is None or isinstance(output, dg.SkipReason):
            return []
        return [output] if isinstance(output, dg.RunRequest) else list(output)


def event_statuses(engine: Engine, destination: str = DESTINATION) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(delivery_events.c.event_id, delivery_events.c.status).where(
                delivery_events.c.destination == destination
            )
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def dead_letter_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(dead_letters)).mappings()]


def with_status(statuses: dict[str, str], *wanted: str) -> set[str]:
    return {eid for eid, status in statuses.items() if status in wanted}


def latest_materialization_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> dict[str, Any]:
    """Metadata values of the latest materialisation of one partition of an asset."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset_key.to_user_string()} {partition} was never materialised"
    materialization = records[0].asset_materialization
    assert materialization is not None
    return {k: v.value for k, v in materialization.metadata.items()}


def check_results(
    instance: dg.DagsterInstance, results: Iterable[dg.ExecuteInProcessResult], check_name: str
) -> list[dg.AssetCheckEvaluation]:
    """Evaluations of `check_name` the runs stored (what the UI shows), oldest first."""
    found = []
    for result in results:
        for entry in instance.all_logs(
            result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            evaluation = entry.dagster_event.event_specific_data  # type: ignore[union-attr]
            if evaluation.check_name == check_name:
                found.append(evaluation)
    return found
