"""The delivery retry sensor on a real Dagster test instance, through the emulator over HTTP.

Scope: hours are run by the project's hourly job; the sensor is evaluated with
`build_sensor_context` + `evaluate_tick` at a frozen clock, and the runs it requests are
executed as requested (partition, asset selection, tags). Covered: a destination that
fails 500, 500 then recovers is delivered in full with each event accepted once; a
permanent 400 is dead-lettered at once and never retried; an auth error opens the
circuit (nothing sent, the check fails, the sensor holds) until the credentials change
or an operator resets it; backoff times and Retry-After with a frozen clock; giving up
after the last retry; replay of dead letters; deterministic run keys; the delivery report
re-materialised after every attempt, failed ones included.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import requests

from conversion_platform import cli
from conversion_platform.defs.delivery_assets import CIRCUIT_CLOSED_CHECK
from conversion_platform.emulator.server import running_emulator
from conversion_platform.operations.retry_planner import retry_schedule
from conversion_platform.operations.retry_policy import RetryPolicy
from conversion_platform.settings import Settings
from conversion_platform.store.database import engine_for
from conversion_platform.store.delivery_log import batch_rows
from conversion_platform.store.landing import read_landing_events
from conversion_platform.store.timecodes import from_micros
from conversion_platform_tests.operations_support import (
    DESTINATION,
    TOKEN_VARIABLE,
    Emulator,
    FrozenClock,
    Platform,
    check_results,
    dead_letter_rows,
    event_statuses,
    hours_back,
    land_clean_traffic,
    latest_materialization_metadata,
    memory_backed_instance,
    with_status,
    write_emulator_destinations,
)

DELIVERY_KEY = dg.AssetKey(["delivery", DESTINATION])
REPORT_KEY = dg.AssetKey("delivery_report")


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    with running_emulator() as url:
        yield url


@pytest.fixture
def emulator(emulator_url: str) -> Emulator:
    client = Emulator(emulator_url)
    requests.post(f"{emulator_url}/_emulator/reset", timeout=5).raise_for_status()
    return client


@pytest.fixture
def live_settings(
    platform_home: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    destinations = write_emulator_destinations(platform_home / "destinations.yaml", emulator.url)
    monkeypatch.setenv("CONVERSION_PLATFORM_DESTINATIONS", str(destinations))
    monkeypatch.setenv(TOKEN_VARIABLE, "emulator-token-1")
    return Settings.from_env()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with memory_backed_instance() as instance:
        yield instance


def make_platform(
    settings: Settings, instance: dg.DagsterInstance, policy: RetryPolicy | None = None
) -> Platform:
    clock = FrozenClock(datetime.now(UTC))
    return Platform(settings, instance, clock, policy=policy or RetryPolicy())


def advance_to_next_due(platform: Platform) -> datetime:
    """Tick (recording when the next retries are due), then move the frozen clock to the
    earliest of them; returns it."""
    assert not platform.tick().run_requests, "something was due before the clock moved"
    engine = engine_for(platform.settings.db_url)
    due = min(r["next_attempt_at_us"] for r in retry_schedule(engine) if r["next_attempt_at_us"])
    platform.clock.now = from_micros(due)
    return platform.clock.now


def test_failing_500_500_then_recovering_is_delivered_once(
    live_settings: Settings, instance: dg.DagsterInstance, emulator: Emulator
) -> None:
    engine = engine_for(live_settings.db_url)
    [hour] = hours_back(1)
    land_clean_traffic(engine, [hour])
    platform = make_platform(live_settings, instance)
    key = platform.key(hour)
    emulator.script(responses=[{"status": 500}, {"status": 500}])

    first = platform.run_hour(hour)
    assert not first.success  # retryable batches left: a red partition
    pending = with_status(event_statuses(engine), "retryable")
    assert pending, "the 500 should leave the hour's events pending"
    # The report was skipped after the failed delivery step; the report sensor asks for it.
    [report_request] = platform.report_sensor_requests(first)
    assert report_request.partition_key == key
    assert platform.execute(report_request, "delivery_report_job").success
    assert latest_materialization_metadata(instance, REPORT_KEY, key)["pending"] == len(pending)

    data = platform.tick()  # at the time of the failure: retry 1 is not due yet
    assert not data.run_requests
    assert "1 destination-hour waiting for the next retry" in (data.skip_message or "")

    advance_to_next_due(platform)
    [retry_1] = platform.tick().run_requests
    assert retry_1.run_key.startswith(f"delivery_retry:{DESTINATION}:{key}:cycle-")
    assert retry_1.run_key.endswith(":retry-1")
    assert retry_1.partition_key == key
    assert set(retry_1.asset_selection) == {DELIVERY_KEY, REPORT_KEY}
    assert retry_1.tags["conversion_platform/retry"] == "1"
    assert not platform.execute(retry_1).success  # the second 500
    assert not platform.tick().run_requests  # retry 2 waits its own backoff

    advance_to_next_due(platform)
    [retry_2] = platform.tick().run_requests
    assert retry_2.run_key.endswith(":retry-2")
    assert platform.execute(retry_2).success

    statuses = event_statuses(engine)
    delivered = with_status(statuses, "delivered")
    assert delivered == pending
    assert with_status(statuses, "retryable", "dead_letter", "permanent") == set()
    accepted = emulator.accepted()
    assert set(accepted) == delivered
    assert set(accepted.values()) == {1}, "an event was accepted more than once"
    assert dead_letter_rows(engine) == []
    # The retry run re-materialised the report: current, with nothing pending.
    report = latest_materialization_metadata(instance, REPORT_KEY, key)
    assert report[f"{DESTINATION}_delivered"] == len(delivered)
    assert report["pending"] == 0 and report["dead_lettered"] == 0
    assert platform.tick().skip_message == "nothing to retry: every delivered hour is settled"
    assert [r["state"] for r in retry_schedule(engine)] == ["resolved"]


def test_permanent_rejection_is_dead_lettered_at_once(
    live_settings: Settings, instance: dg.DagsterInstance, emulator: Emulator
) -> None:
    engine = engine_for(live_settings.db_url)
    [hour] = hours_back(1)
    land_clean_traffic(engine, [hour])
    platform = make_platform(live_settings, instance)
    emulator.script(responses=[{"status": 400, "message": "Invalid parameter"}] * 200)

    result = platform.run_hour(hour)
    assert result.success, "permanent rejections are reported, not raised"
    statuses = event_statuses(engine)
    # The delivery log keeps what the platform said; the dead letters hold them with the reason.
    rejected = with_status(statuses, "permanent")
    assert rejected and with_status(statuses, "retryable", "delivered") == set()
    rows = dead_letter_rows(engine)
    assert {r["event_id"] for r in rows} == rejected
    assert {r["kind"] for r in rows} == {"rejected"}
    assert all("Meta error 100: Invalid parameter" in r["reason"] for r in rows)

    platform.clock.advance(7 * 24 * 3600)
    data = platform.tick()
    assert not data.run_requests, "a permanent error must never be retried"
    assert data.skip_message == "nothing to retry: every delivered hour is settled"
    assert len(dead_letter_rows(engine)) == len(rejected), "a sweep must not add them twice"
    assert emulator.accepted() == {}
    report = latest_materialization_metadata(instance, REPORT_KEY, platform.key(hour))
    assert report["dead_lettered"] == report["rejected"] == len(rejected)


def test_one_bad_event_is_dead_lettered_the_rest_delivered_and_replay_sends_it(
    live_settings: Settings,
    instance: dg.DagsterInstance,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = engine_for(live_settings.db_url)
    [hour] = hours_back(1)
    land_clean_traffic(engine, [hour])
    landed = read_landing_events(engine, hour, hour + timedelta(hours=1))
    conversions = landed[
        (landed["event_name"] != "page_view") & (landed["consent_ad_user_data"] != "denied")
    ]
    bad = str(sorted(conversions["event_id"])[0])
    emulator.script(fail_event_ids=[bad], fail_reason="has a value the platform refuses")
    platform = make_platform(live_settings, instance)

    assert platform.run_hour(hour).success
    statuses = event_statuses(engine)
    [row] = dead_letter_rows(engine)
    assert row["event_id"] == bad and row["kind"] == "rejected"
    assert "Meta error 100" in row["reason"]  # the platform's own code, kept as the reason
    delivered = with_status(statuses, "delivered")
    assert delivered and bad not in delivered
    assert set(emulator.accepted()) == delivered
    assert not platform.tick().run_requests

    emulator.clear()  # the cause is fixed
    key = platform.key(hour)
    assert cli.main(["replay", "--destination", DESTINATION, "--from", key, "--to", key]) == 0
    assert "1 dead-lettered events" in capsys.readouterr().out
    [request] = platform.tick().run_requests
    assert platform.execute(request).success
    accepted = emulator.accepted()
    assert set(accepted) == delivered | {bad} and set(accepted.values()) == {1}
    assert dead_letter_rows(engine) == []


def test_auth_error_opens_the_circuit_until_credentials_change(
    live_settings: Settings,
    instance: dg.DagsterInstance,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = engine_for(live_settings.db_url)
    first_hour, second_hour = hours_back(2)
    land_clean_traffic(engine, [first_hour, second_hour])
    platform = make_platform(live_settings, instance)
    emulator.script(responses=[{"status": 401}])

    first = platform.run_hour(first_hour)
    assert not first.success
    [evaluation] = check_results(instance, [first], CIRCUIT_CLOSED_CHECK)
    assert evaluation.passed is False
    assert "circuit open" in str(evaluation.metadata["reason"].value)
    requests_before = emulator.stats()["requests"]
    assert requests_before == 1

    # The next hour's run sends nothing while the circuit is open.
    second = platform.run_hour(second_hour)
    assert not second.success
    assert emulator.stats()["requests"] == requests_before
    held = with_status(event_statuses(engine), "retryable")
    assert held and all(r["status"] == "auth" for r in batch_rows(engine, DESTINATION)), (
        "only the one auth-failed request was made"
    )

    platform.clock.advance(3 * 24 * 3600)  # however long it stays open: no runs, no give-up
    data = platform.tick()
    assert not data.run_requests
    assert "held by an open circuit" in data.skip_message
    assert dead_letter_rows(engine) == []

    monkeypatch.setenv(TOKEN_VARIABLE, "emulator-token-2")  # the operator fixed the token
    data = platform.tick()
    [closed] = data.asset_events
    assert closed.check_name == CIRCUIT_CLOSED_CHECK and closed.passed is True
    assert {r.partition_key for r in data.run_requests} == {
        platform.key(first_hour),
        platform.key(second_hour),
    }
    for request in data.run_requests:
        assert platform.execute(request).success
    accepted = emulator.accepted()
    assert set(accepted) == held and set(accepted.values()) == {1}
    assert with_status(event_statuses(engine), "retryable") == set()


def test_operator_reset_closes_the_circuit(
    live_settings: Settings, instance: dg.DagsterInstance, emulator: Emulator, capsys
) -> None:
    engine = engine_for(live_settings.db_url)
    [hour] = hours_back(1)
    land_clean_traffic(engine, [hour])
    platform = make_platform(live_settings, instance)
    emulator.script(responses=[{"status": 400, "error_code": 190}])
    assert not platform.run_hour(hour).success
    data = platform.tick()
    assert not data.run_requests

    assert cli.main(["circuit", "status"]) == 0
    assert f"{DESTINATION}: circuit open" in capsys.readouterr().out
    assert cli.main(["circuit", "reset", "--destination", DESTINATION]) == 0
    assert "closed (operator)" in capsys.readouterr().out
    platform.clock.advance(120)
    [request] = platform.tick().run_requests
    assert platform.execute(request).success
    assert set(emulator.accepted().values()) == {1}
    # The old auth failure does not open the circuit again.
    assert not platform.tick().run_requests
    cli.main(["circuit", "status"])
    assert "closed (operator)" in capsys.readouterr().out


def test_backoff_and_retry_after_with_a_frozen_clock(
    live_settings: Settings, instance: dg.DagsterInstance, emulator: Emulator
) -> None:
    engine = engine_for(live_settings.db_url)
    [hour] = hours_back(1)
    land_clean_traffic(engine, [hour])
    policy = RetryPolicy()
    platform = make_platform(live_settings, instance, policy)
    emulator.script(
        responses=[{"status": 503}, {"status": 503}, {"status": 429, "retry_after": 7200}]
    )
    platform.run_hour(hour)
    platform.tick()

    def last_failure() -> datetime:
        return from_micros(max(r["finished_at_us"] for r in batch_rows(engine, DESTINATION)))

    requested_at: datetime | None = None
    for retry_number, low in ((1, 60), (2, 300)):
        # Backoff runs from the later of the last failure and the last retry requested (the
        # frozen clock runs ahead of the runs' own timestamps here).
        base = max(t for t in (last_failure(), requested_at) if t is not None)
        due = advance_to_next_due(platform)
        waited = (due - base).total_seconds()
        assert low <= waited <= low * 1.2 + 1, (retry_number, waited)
        platform.clock.now = due - timedelta(seconds=1)
        assert not platform.tick().run_requests, "a retry ran before its backoff"
        platform.clock.now = due
        [request] = platform.tick().run_requests
        requested_at = due
        assert request.run_key.endswith(f":retry-{retry_number}")
        platform.execute(request)

    # The third failure was a 429 with Retry-After: 7200 s, longer than the 30 min backoff.
    failed_at = last_failure()
    due = advance_to_next_due(platform)
    assert (due - failed_at).total_seconds() >= 7200
    platform.clock.now = failed_at + timedelta(seconds=1800 * 1.2 + 1)
    assert not platform.tick().run_requests, "Retry-After was not honoured"
    platform.clock.now = due
    [request] = platform.tick().run_requests
    assert platform.execute(request).success
    assert set(emulator.accepted().values()) == {1}


def test_gives_up_after_the_last_retry_and_replay_delivers(
    live_settings: Settings,
    instance: dg.DagsterInstance,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = engine_for(live_settings.db_url)
    [hour] = hours_back(1)
    land_clean_traffic(engine, [hour])
    # Short limit: 1 min, 5 min, then every 10 min until 30 min. No jitter: the jitter is
    # fixed per destination-hour, the hour here is the current one, and for one hour in
    # fourteen 20% of it puts the fourth retry (26 min without) past the 30 min limit.
    policy = RetryPolicy((60.0, 300.0), 600.0, 1800.0, 0.0)
    platform = make_platform(live_settings, instance, policy)
    emulator.script(responses=[{"status": 502}] * 50)
    platform.run_hour(hour)
    pending = with_status(event_statuses(engine), "retryable")

    retries = 0
    for _ in range(10):
        platform.tick()
        if not any(r["next_attempt_at_us"] for r in retry_schedule(engine)):
            break
        advance_to_next_due(platform)
        for result in platform.tick_and_execute():
            retries += 1
            assert not result.success
    assert retries == 4  # at ~1, ~6, ~16, ~26 min; the next (~36 min) is past the 30 min limit
    rows = dead_letter_rows(engine)
    assert {r["event_id"] for r in rows} == pending
    assert {r["kind"] for r in rows} == {"retries_exhausted"}
    assert all(r["reason"].startswith("gave up after 4 retries") for r in rows)
    assert "last error: Meta error" in rows[0]["reason"]
    assert [r["state"] for r in retry_schedule(engine)] == ["dead_lettered"]
    platform.clock.advance(24 * 3600)
    assert not platform.tick().run_requests

    emulator.clear()  # the platform is back
    key = platform.key(hour)
    assert cli.main(["replay", "--destination", DESTINATION, "--from", key, "--to", key]) == 0
    assert f"{len(pending)} dead-lettered events" in capsys.readouterr().out
    assert dead_letter_rows(engine) == []
    assert with_status(event_statuses(engine), "retryable") == pending
    [request] = platform.tick().run_requests
    assert request.run_key.endswith(":retry-1")  # a fresh cycle after the replay
    assert platform.execute(request).success
    accepted = emulator.accepted()
    assert set(accepted) == pending and set(accepted.values()) == {1}
    report = latest_materialization_metadata(instance, REPORT_KEY, key)
    assert report["delivered"] == len(pending) and report["dead_lettered"] == 0
