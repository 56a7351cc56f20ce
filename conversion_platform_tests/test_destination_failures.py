"""Every failure class, for every destination, over real HTTP to the local emulator.

Scope, per destination (Meta, Google Data Manager, Google legacy, TikTok, Snapchat): a
5xx answered twice then success (retried in the run, each attempt a row of the delivery
log); 429 with a short `Retry-After` (honoured, then retried) and with a long one (left to
the retry sensor, the wait recorded); a request that times out; a permanent 400 with the
platform's own error code (not retried, the code in the reason); an auth failure (no
further batch sent); a batch refused because of one event (split until that event alone
is dead-lettered); and re-materialising after a partial failure, which sends only what is
left, so the emulator takes each event exactly once. In-run waits are recorded, not slept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from conversion_platform.destinations.config import DestinationConfig
from conversion_platform_tests.delivery_support import (
    EmulatorControl,
    batches,
    deliver,
    destination_config,
    frame_of,
    many,
    outcomes,
)

#: The emulator, its control client and the credential fixture.
pytest_plugins = ("conversion_platform_tests.delivery_support",)

#: case -> (destination name, emulator platform, extra config, status of an accepted event)
CASES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "meta": ("meta_capi", "meta", {}, "delivered"),
    "google": ("google_ads", "google", {}, "pending_status"),
    "google_legacy": (
        "google_ads",
        "google",
        {"settings": {"api": "legacy", "api_version": "v24"}},
        "delivered",
    ),
    "tiktok": ("tiktok", "tiktok", {}, "delivered"),
    "snapchat": ("snapchat", "snapchat", {}, "delivered"),
}
#: a permanent error in each platform's own words: (scripted error code, text in the reason)
PERMANENT_CODES: dict[str, tuple[int | str, str]] = {
    "meta": (100, "Meta error 100"),
    "google": ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    "google_legacy": (
        "conversionUploadError.INVALID_CONVERSION_ACTION",
        "INVALID_CONVERSION_ACTION",
    ),
    "tiktok": (40002, "TikTok code 40002"),
    "snapchat": ("Invalid pixel data", "Invalid pixel data"),
}


class Case:
    def __init__(self, key: str, url: str, **overrides: Any) -> None:
        name, self.platform, extra, self.accepted = CASES[key]
        self.key = key
        self.config: DestinationConfig = destination_config(name, url, **{**extra, **overrides})


@pytest.fixture(params=list(CASES))
def case_key(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_5xx_twice_then_delivered(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url)
    emulator.script(case.platform, responses=[{"status": 500}, {"status": 502}])
    waits: list[float] = []
    report = deliver(engine, case.config, frame_of(many(3, "r")), tmp_path, sleep=waits.append)
    rows = batches(engine, case.config.name)
    assert [(r["attempt"], r["status"], r["http_status"]) for r in rows] == [
        (1, "retryable", 500),
        (2, "retryable", 502),
        (3, case.accepted, 200),
    ]
    assert waits == [0.01, 0.02]  # exponential backoff from retry_backoff_seconds
    assert report.pending == 0 and report.requests == 3
    assert {s for s, _ in outcomes(engine, case.config.name).values()} == {case.accepted}
    assert emulator.accepted(case.platform) == {"r-0000": 1, "r-0001": 1, "r-0002": 1}


def test_429_with_short_retry_after_is_honoured_in_the_run(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url, max_in_run_wait_seconds=5.0)
    emulator.script(case.platform, responses=[{"status": 429, "retry_after": 2}])
    waits: list[float] = []
    deliver(engine, case.config, frame_of(many(2, "q")), tmp_path, sleep=waits.append)
    rows = batches(engine, case.config.name)
    assert [(r["status"], r["retry_after_s"]) for r in rows] == [
        ("retryable", 2.0),
        (case.accepted, None),
    ]
    assert waits == [2.0]
    assert len(emulator.accepted(case.platform)) == 2


def test_429_with_long_retry_after_is_left_to_the_retry_sensor(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url)
    emulator.script(case.platform, responses=[{"status": 429, "retry_after": 120}])
    waits: list[float] = []
    report = deliver(engine, case.config, frame_of(many(2, "q")), tmp_path, sleep=waits.append)
    rows = batches(engine, case.config.name)
    assert [(r["status"], r["retry_after_s"]) for r in rows] == [("retryable", 120.0)]
    assert waits == []  # longer than max_in_run_wait_seconds: not waited for in the run
    assert report.pending == 2 and report.retry_after_seconds == 120.0
    assert {s for s, _ in outcomes(engine, case.config.name).values()} == {"retryable"}
    assert emulator.accepted(case.platform) == {}


def test_a_timeout_is_retried(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url, timeout_seconds=0.3)
    emulator.script(case.platform, responses=[{"status": 503, "delay_seconds": 1.0}])
    deliver(engine, case.config, frame_of(many(2, "w")), tmp_path)
    first, second = batches(engine, case.config.name)
    assert first["status"] == "retryable" and first["http_status"] is None
    assert "timed out after 0.3s" in first["response"]
    assert second["status"] == case.accepted
    assert set(emulator.accepted(case.platform).values()) == {1}


def test_a_permanent_400_is_not_retried_and_keeps_the_platforms_code(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url)
    code, expected = PERMANENT_CODES[case_key]
    script: dict[str, Any] = {"status": 400, "error_code": code}
    if case_key == "snapchat":
        script = {"status": 400, "message": code}
    emulator.script(case.platform, responses=[script])
    report = deliver(engine, case.config, frame_of(many(1, "p")), tmp_path)
    rows = batches(engine, case.config.name)
    assert [r["status"] for r in rows] == ["permanent"]
    status, reason = outcomes(engine, case.config.name)["p-0000"]
    assert status == "permanent" and expected in (reason or "")
    assert report.rejected_total == 1 and report.pending == 0


def test_an_auth_failure_stops_the_destination(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url, batch_size=2)
    emulator.script(case.platform, responses=[{"status": 401}])
    report = deliver(engine, case.config, frame_of(many(6, "a")), tmp_path)
    rows = batches(engine, case.config.name)
    assert [r["status"] for r in rows] == ["auth"]  # one request, not retried
    # Counted by this test's event ids: a request an earlier test's client gave up on can
    # still reach a busy emulator after this test's reset.
    ours = [r for r in emulator.requests(case.platform) if "a-000" in json.dumps(r["body"])]
    assert len(ours) == 1
    assert "a-0002" not in json.dumps(ours[0]["body"])
    assert report.auth_failed and report.pending == 6
    log = outcomes(engine, case.config.name)
    assert log["a-0000"][0] == "retryable" and (log["a-0000"][1] or "").startswith("auth: ")
    assert log["a-0005"] == ("retryable", "not sent: destination auth failed")


@pytest.mark.parametrize("case_key", ["meta", "tiktok", "snapchat"])
def test_a_batch_refused_for_one_event_is_split_to_find_it(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url)
    emulator.script(case.platform, fail_event_ids=["b-0005"], fail_reason="bad value")
    report = deliver(engine, case.config, frame_of(many(8, "b")), tmp_path)
    log = outcomes(engine, case.config.name)
    status, reason = log.pop("b-0005")
    assert status == "permanent" and "bad value" in (reason or "")
    assert {s for s, _ in log.values()} == {"delivered"}
    assert report.delivered == 7 and report.rejected_total == 1
    accepted = emulator.accepted(case.platform)
    assert len(accepted) == 7 and set(accepted.values()) == {1}
    # 8 refused -> 4 ok + 4 refused -> 2 refused (-> 1 ok + 1 refused) + 2 ok; every part
    # is logged under batch 0, each request an attempt.
    rows = batches(engine, case.config.name)
    assert [(len(r["event_ids"]), r["status"]) for r in rows] == [
        (8, "permanent"),
        (4, "delivered"),
        (4, "permanent"),
        (2, "permanent"),
        (1, "delivered"),
        (1, "permanent"),
        (2, "delivered"),
    ]
    assert {r["batch_number"] for r in rows} == {0}
    assert [r["attempt"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]


def test_rematerialising_after_a_partial_failure_sends_only_the_rest(
    case_key: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    case = Case(case_key, emulator.url, batch_size=2)
    # The first request goes through; the second fails on every in-run attempt.
    emulator.script(
        case.platform, responses=[{}, {"status": 503}, {"status": 503}, {"status": 503}]
    )
    frame = frame_of(many(4, "m"))
    first = deliver(engine, case.config, frame, tmp_path)
    assert first.pending == 2
    log = outcomes(engine, case.config.name)
    assert [log[f"m-000{i}"][0] for i in range(4)] == [case.accepted] * 2 + ["retryable"] * 2

    second = deliver(engine, case.config, frame, tmp_path)
    assert second.already_settled == 2 and second.sent == 2 and second.pending == 0
    assert [r["event_ids"] for r in batches(engine, case.config.name)][-1] == ["m-0002", "m-0003"]
    assert emulator.accepted(case.platform) == {f"m-000{i}": 1 for i in range(4)}
    # A third run has nothing left to send.
    assert deliver(engine, case.config, frame, tmp_path).sent == 0
