"""An outage, end to end: the ad platform refuses a destination for hours while the schedule
keeps running, then the platform's own orchestration is down for two hours.

Scope: six hours of clean generated traffic; the hourly schedule is evaluated at each
hour's tick and its run executed on a real test instance; the emulator answers 503 for
the destination during two scheduled hours (the retry sensor's attempts fail too);
then two hours are not run at all and the freshness check shows the missed hour. After
recovery a single-run backfill covers the missed hours and the retry sensor, evaluated
at a frozen clock moved to each due time, re-runs the refused ones. At the end every
eligible conversion has been accepted by the platform exactly once, nothing is pending,
nothing is in the dead-letter table, and each hour's delivery report says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from conversion_platform.emulator.server import running_emulator
from conversion_platform.operations.retry_planner import retry_schedule
from conversion_platform.settings import Settings
from conversion_platform.store.database import engine_for
from conversion_platform.store.timecodes import from_micros
from conversion_platform_tests.operations_support import (
    DESTINATION,
    QUIET,
    TOKEN_VARIABLE,
    Emulator,
    FrozenClock,
    Platform,
    dead_letter_rows,
    event_statuses,
    hours_back,
    land_clean_traffic,
    latest_materialization_metadata,
    memory_backed_instance,
    with_status,
    write_emulator_destinations,
)

SCHEDULE = "hourly_conversions_schedule"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with running_emulator() as url:
        yield Emulator(url)


def run_scheduled_hour(platform: Platform, hour: datetime) -> dg.ExecuteInProcessResult:
    """Evaluate the schedule at the tick after `hour` and execute the run it requests."""
    schedule = platform.defs.resolve_schedule_def(SCHEDULE)
    tick_time = hour + timedelta(hours=1, minutes=platform.settings.schedule_delay_minutes)
    context = dg.build_schedule_context(
        instance=platform.instance, scheduled_execution_time=tick_time
    )
    [request] = schedule.evaluate_tick(context).run_requests or []
    assert request.partition_key == platform.key(hour)
    result = platform.hourly_job.execute_in_process(
        partition_key=request.partition_key,
        instance=platform.instance,
        tags=request.tags,
        raise_on_error=False,
        run_config=QUIET,
    )
    platform.runs.append(result)
    return result


def freshness_results(platform: Platform) -> dict[str, bool]:
    """Evaluate every asset's freshness check now (as its sensor or a run would); passed per asset."""
    check_keys = {
        key
        for key in platform.defs.resolve_asset_graph().asset_check_keys
        if key.name == "freshness_check"
    }
    job = platform.defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection=check_keys
    )
    result = job.execute_in_process(
        instance=platform.instance, raise_on_error=False, run_config=QUIET
    )
    return {e.asset_key.to_user_string(): e.passed for e in result.get_asset_check_evaluations()}


def retry_until_settled(platform: Platform, max_ticks: int = 40) -> int:
    """Tick the retry sensor, run what it requests, move the clock to the next due retry."""
    engine = engine_for(platform.settings.db_url)
    runs = 0
    for _ in range(max_ticks):
        executed = platform.tick_and_execute()
        runs += len(executed)
        if executed:
            continue
        due = [r["next_attempt_at_us"] for r in retry_schedule(engine) if r["next_attempt_at_us"]]
        if not due:
            return runs
        platform.clock.now = max(platform.clock.now, from_micros(min(due)))
    raise AssertionError("the retry sensor did not settle")


def test_outage_recovers_every_conversion_exactly_once(
    platform_home: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    destinations = write_emulator_destinations(platform_home / "destinations.yaml", emulator.url)
    monkeypatch.setenv("CONVERSION_PLATFORM_DESTINATIONS", str(destinations))
    monkeypatch.setenv(TOKEN_VARIABLE, "emulator-token")
    settings = Settings.from_env()
    engine = engine_for(settings.db_url)
    hours = hours_back(6)
    # The collector kept collecting through both outages: every hour's events are landed.
    land_clean_traffic(engine, hours, per_hour=10, seed=21)

    with memory_backed_instance() as instance:
        platform = Platform(settings, instance, FrozenClock(datetime.now(UTC)))
        assert run_scheduled_hour(platform, hours[0]).success

        # The ad platform refuses the destination for two hours; the schedule keeps going.
        emulator.script(responses=[{"status": 503}] * 1_000)
        for hour in hours[1:3]:
            assert not run_scheduled_hour(platform, hour).success
            platform.clock.advance(600)  # the sensor's retries within the outage fail too
            for result in platform.tick_and_execute():
                assert not result.success
        refused = emulator.stats()["rejected_requests"]
        assert refused >= 4  # two hourly runs and a retry of each
        assert len(with_status(event_statuses(engine), "retryable")) > 0

        emulator.clear()  # the ad platform is back
        assert run_scheduled_hour(platform, hours[3]).success

        # Then Dagster itself was down for the last two hours: no run at all for them.
        # (The freshness check expects one of these two, whatever the minute now.)
        freshness = freshness_results(platform)
        assert freshness[f"delivery/{DESTINATION}"] is False, "the missed hour must show"
        assert freshness["resolved_conversions"] is False

        backfill = platform.run_range(hours[4], hours[5])
        assert backfill.success
        assert all(freshness_results(platform).values()), "the backfill made every asset fresh"

        retry_runs = retry_until_settled(platform)
        assert retry_runs >= 2, "each refused hour needs a retry run"

        statuses = event_statuses(engine)
        eligible = {eid for eid, status in statuses.items() if status != "filtered"}
        assert eligible == with_status(statuses, "delivered")
        accepted = emulator.accepted()
        assert set(accepted) == eligible
        assert set(accepted.values()) == {1}, "a conversion was delivered twice"
        assert dead_letter_rows(engine) == []
        for hour in hours:
            report = latest_materialization_metadata(
                instance, dg.AssetKey("delivery_report"), platform.key(hour)
            )
            assert report["pending"] == 0 and report["dead_lettered"] == 0, platform.key(hour)
            assert report["delivered"] == report["eligible"] > 0, platform.key(hour)
