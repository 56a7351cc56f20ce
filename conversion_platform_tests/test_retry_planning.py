"""The retry schedule, dead letters and circuits as plain Python over a real SQLite database.

Scope: `RetryPolicy` (durations, the default schedule out to 72 h, deterministic bounded
jitter, settings from the environment) and `plan_retries` fed with delivery-log rows
written by the delivery log's own functions: due and not-yet-due hours, Retry-After for
one hour and for a whole destination, hours with a run in progress, destinations no
longer configured, giving up, circuits opened by an auth failure and closed by a change of
credentials (only a fingerprint stored), and replay starting a fresh cycle. No Dagster
and no HTTP: the sensor and the emulator loop are tested in test_retry_sensor.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.operations.circuits import (
    credential_fingerprint,
    read_circuits,
    redact_credentials,
    reset_circuit,
)
from conversion_platform.operations.dead_letters import replay_dead_letters
from conversion_platform.operations.retry_planner import plan_retries, retry_run_key, retry_schedule
from conversion_platform.operations.retry_policy import (
    RetryPolicy,
    RetryPolicyError,
    format_duration,
    parse_duration,
)
from conversion_platform.store import delivery_log as log
from conversion_platform.store.operations_tables import dead_letters, destination_circuits
from conversion_platform.store.timecodes import to_micros

HOUR = datetime(2026, 3, 2, 10, tzinfo=UTC)
SECRET = "s3cr3t-token-value"


def key_for(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:%M")


def config(name: str = "meta_capi") -> DestinationConfig:
    return DestinationConfig(
        name=name, platform="meta_capi", credentials={"access_token": "TEST_META_TOKEN"}
    )


def fail(
    engine: Engine,
    at: datetime,
    *,
    destination: str = "meta_capi",
    hour: datetime = HOUR,
    ids: tuple[str, ...] = ("e1", "e2"),
    status: str = "retryable",
    retry_after: float | None = None,
    http_status: int = 503,
) -> None:
    """Record one failed attempt finishing at `at`, as the delivery step does."""
    with engine.begin() as conn:
        batch_id = log.record_batch(
            conn,
            destination=destination,
            hour=hour,
            run_id="run",
            batch_number=0,
            attempt=1,
            mode="live",
            status=status,
            http_status=http_status,
            event_ids=list(ids),
            response="error",
            retry_after_s=retry_after,
            platform_request_id=None,
            started_at_us=to_micros(at),
        )
        conn.execute(
            sa.text("UPDATE delivery_batches SET finished_at_us = :t WHERE id = :id"),
            {"t": to_micros(at), "id": batch_id},
        )
        log.record_event_outcomes(
            conn,
            destination,
            hour,
            [
                log.EventOutcome(
                    i, "purchase", log.EVENT_RETRYABLE, f"HTTP {http_status}", batch_id
                )
                for i in ids
            ],
        )


def plan(engine: Engine, now: datetime, policy: RetryPolicy | None = None, **kwargs):  # type: ignore[no-untyped-def]
    return plan_retries(
        engine,
        kwargs.pop("configs", [config()]),
        policy or RetryPolicy(),
        now,
        partition_key_for=key_for,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("5m", 300),
        ("2h", 7200),
        ("1.5h", 5400),
        ("3d", 259200),
        (" 6h ", 21600),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5 minutes", "-1m", "1w"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(RetryPolicyError):
        parse_duration(text)


def test_default_schedule_is_1m_5m_30m_2h_6h_then_6h_until_72h() -> None:
    policy = RetryPolicy()
    assert [policy.base_delay(n) for n in range(1, 8)] == [60, 300, 1800, 7200, 21600, 21600, 21600]
    elapsed, retries = 0.0, 0
    while elapsed + policy.base_delay(retries + 1) <= policy.give_up_after_seconds:
        retries += 1
        elapsed += policy.base_delay(retries)
    assert retries == 15 and format_duration(elapsed) == "68h36m"
    assert policy.describe().startswith("1m, 5m, 30m, 2h, 6h, then every 6h until 72h")


def test_jitter_is_bounded_and_deterministic() -> None:
    policy = RetryPolicy()
    delays = [policy.delay(1, f"meta_capi|{h}") for h in range(200)]
    assert all(60 <= d <= 72 for d in delays)
    assert len({round(d, 3) for d in delays}) > 150, "hours should not all retry together"
    assert policy.delay(3, "x|1") == policy.delay(3, "x|1")
    assert RetryPolicy(jitter_ratio=0).delay(2, "x") == 300


def test_policy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERSION_PLATFORM_RETRY_DELAYS", "30s, 2m")
    monkeypatch.setenv("CONVERSION_PLATFORM_RETRY_REPEAT_EVERY", "1h")
    monkeypatch.setenv("CONVERSION_PLATFORM_RETRY_GIVE_UP_AFTER", "1d")
    monkeypatch.setenv("CONVERSION_PLATFORM_RETRY_JITTER", "0")
    assert RetryPolicy.from_env() == RetryPolicy((30.0, 120.0), 3600.0, 86400.0, 0.0)
    monkeypatch.setenv("CONVERSION_PLATFORM_RETRY_JITTER", "lots")
    with pytest.raises(RetryPolicyError):
        RetryPolicy.from_env()


def test_due_only_after_the_backoff(engine: Engine) -> None:
    failed_at = HOUR + timedelta(hours=1, minutes=10)
    fail(engine, failed_at)
    policy = RetryPolicy(jitter_ratio=0)
    first = plan(engine, failed_at + timedelta(seconds=59), policy)
    assert not first.requests and len(first.waiting) == 1
    assert first.waiting[0].due == failed_at + timedelta(seconds=60)
    due = plan(engine, failed_at + timedelta(seconds=60), policy)
    [request] = due.requests
    # The cycle began when the first plan saw the failure (at 59 s).
    cycle = to_micros(failed_at + timedelta(seconds=59))
    assert request.run_key == retry_run_key("meta_capi", key_for(HOUR), cycle, 1)
    assert request.run_key == (
        f"delivery_retry:meta_capi:{key_for(HOUR)}:cycle-"
        f"{(failed_at + timedelta(seconds=59)):%Y%m%dT%H%M%S}.000000Z:retry-1"
    )
    assert request.pending_events == 2
    # Requested once: the same tick time does not request it again.
    assert not plan(engine, failed_at + timedelta(seconds=61), policy).requests


def test_retry_after_of_the_hour_and_of_the_destination(engine: Engine) -> None:
    failed_at = HOUR + timedelta(hours=2)
    fail(engine, failed_at, retry_after=3600)
    other_hour = HOUR + timedelta(hours=1)
    fail(engine, failed_at - timedelta(minutes=10), hour=other_hour, ids=("e9",))
    policy = RetryPolicy(jitter_ratio=0)
    result = plan(engine, failed_at + timedelta(minutes=30), policy)
    assert not result.requests, "a throttled destination is not retried before Retry-After"
    assert {w.due for w in result.waiting} == {failed_at + timedelta(hours=1)}
    result = plan(engine, failed_at + timedelta(hours=1), policy)
    assert {r.partition_key for r in result.requests} == {key_for(HOUR), key_for(other_hour)}


def test_busy_and_unconfigured_hours_are_left_alone(engine: Engine) -> None:
    failed_at = HOUR + timedelta(hours=2)
    fail(engine, failed_at)
    fail(engine, failed_at, destination="old_destination", ids=("x1",))
    later = failed_at + timedelta(hours=1)
    busy = plan(engine, later, busy_partitions={key_for(HOUR)})
    assert not busy.requests and len(busy.in_flight) == 1
    assert [u.destination for u in busy.unconfigured] == ["old_destination"]
    assert len(plan(engine, later).requests) == 1


def test_gives_up_when_the_next_retry_is_past_the_limit(engine: Engine) -> None:
    policy = RetryPolicy((60.0,), 600.0, 1200.0, 0.0)  # 1 min, then every 10 min, until 20 min
    now = HOUR + timedelta(hours=2)
    fail(engine, now)
    result = plan(engine, now, policy)
    attempts = 0
    first_cycle_keys: set[str] = set()
    for _ in range(10):
        if result.dead_lettered:
            break
        [waiting] = result.waiting
        assert waiting.due is not None
        now = waiting.due
        [request] = plan(engine, now, policy).requests
        first_cycle_keys.add(request.run_key)
        attempts += 1
        fail(engine, now)  # the retry failed too
        result = plan(engine, now, policy)
    assert attempts == 2  # at 1 min and 11 min; 21 min would be past 20 min
    [given_up] = result.dead_lettered
    assert given_up.pending_events == 2
    with engine.connect() as conn:
        rows = conn.execute(sa.select(dead_letters)).mappings().all()
    assert {r["kind"] for r in rows} == {"retries_exhausted"}
    assert rows[0]["reason"].startswith("gave up after 2 retries over")
    assert "last error: HTTP 503" in rows[0]["reason"]
    assert not plan(engine, now + timedelta(days=1), policy).requests

    result = replay_dead_letters(engine, "meta_capi", HOUR, HOUR + timedelta(hours=1))
    assert (result.events, result.hours) == (2, 1)
    [request] = plan(engine, now + timedelta(days=1), policy).requests
    assert request.retry_number == 1, "a replay starts a fresh cycle"
    assert request.run_key not in first_cycle_keys, "Dagster would skip a reused run key"


def test_auth_failure_holds_the_destination_until_credentials_change(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_META_TOKEN", SECRET)
    failed_at = HOUR + timedelta(hours=2)
    fail(engine, failed_at, status="auth", http_status=401)
    opened = plan(engine, failed_at + timedelta(days=5))
    [change] = opened.circuit_changes
    assert change.opened and "auth failed" in change.reason
    assert not opened.requests and not opened.dead_lettered and len(opened.held) == 1
    with engine.connect() as conn:
        stored = conn.execute(sa.select(destination_circuits)).mappings().one()
    assert SECRET not in str(dict(stored))
    assert stored["credential_fingerprint"] == credential_fingerprint(config())
    assert not plan(engine, failed_at + timedelta(days=6)).circuit_changes

    monkeypatch.setenv("TEST_META_TOKEN", SECRET + "-rotated")
    closed = plan(engine, failed_at + timedelta(days=6))
    [change] = closed.circuit_changes
    assert not change.opened and change.reason == "credentials changed"
    [request] = closed.requests
    assert request.retry_number == 1
    # The old auth failure does not open it again.
    assert not plan(engine, failed_at + timedelta(days=6, minutes=1)).circuit_changes


def test_operator_reset_and_redaction(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_META_TOKEN", SECRET)
    assert reset_circuit(engine, "meta_capi") is None
    fail(engine, HOUR + timedelta(hours=2), status="auth", http_status=401)
    plan(engine, HOUR + timedelta(hours=3))
    assert read_circuits(engine)["meta_capi"].is_open
    circuit = reset_circuit(engine, "meta_capi")
    assert circuit is not None and not circuit.is_open and circuit.closed_by == "operator"
    assert plan(engine, HOUR + timedelta(hours=3)).requests
    text = f"Malformed access token {SECRET}"
    assert redact_credentials(text, config()) == "Malformed access token [redacted]"


def test_fingerprint_changes_with_the_value_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_META_TOKEN", "a")
    first = credential_fingerprint(config())
    assert (
        credential_fingerprint(config("other")) == first
    )  # the name of the destination is not in it
    monkeypatch.setenv("TEST_META_TOKEN", "b")
    assert credential_fingerprint(config()) != first
    assert len(first) == 16


def test_resolved_hours_are_kept_a_month(engine: Engine) -> None:
    failed_at = HOUR + timedelta(hours=2)
    fail(engine, failed_at)
    plan(engine, failed_at)
    with engine.begin() as conn:  # the retry run delivered them
        log.record_event_outcomes(
            conn,
            "meta_capi",
            HOUR,
            [log.EventOutcome(i, "purchase", log.EVENT_DELIVERED, None, 1) for i in ("e1", "e2")],
        )
    [resolved] = plan(engine, failed_at + timedelta(minutes=5)).resolved
    assert resolved.partition_key == key_for(HOUR)
    assert [r["state"] for r in retry_schedule(engine)] == ["resolved"]
    plan(engine, failed_at + timedelta(days=29))
    assert len(retry_schedule(engine)) == 1
    plan(engine, failed_at + timedelta(days=31))
    assert retry_schedule(engine) == []
