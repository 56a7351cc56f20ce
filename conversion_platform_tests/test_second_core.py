"""Sharing a slow function with a worker process (`transform.second_core`), for real.

Scope: the results are the function's, in order, and the worker computes part of them;
phone hashing gives the same digests and drop counts with and without the worker; an
error in the function is raised in the caller; a worker that dies mid-call costs no
value and is not started again; a script without a main guard is not run twice (the
trap of `multiprocessing`'s spawned children); a prefetch (ingest hashing an hour's numbers
while its lines are parsed) gives the same hour, and finishes when its worker dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from sqlalchemy.engine import Engine

from conversion_platform.ingest import log_chunks, log_conversions
from conversion_platform.ingest.log_conversions import ingest_server_logs
from conversion_platform.transform import normalise, second_core
from conversion_platform.transform.normalise import hash_identity_columns, hash_phone

pytestmark = pytest.mark.skipif(
    second_core._usable_cores() < 2, reason="a worker process needs a second core"
)


@pytest.fixture(autouse=True)
def fresh_worker() -> Iterator[None]:
    """Each test starts without a worker and leaves none behind."""
    second_core.stop_worker()
    yield
    second_core.stop_worker()


def slow_square_with_pid(value: int) -> tuple[int, int]:
    """Module level, so the worker can import it; slow enough that both sides get chunks."""
    time.sleep(0.002)
    return value * value, os.getpid()


def fail_on_13(value: int) -> int:
    if value == 13:
        raise ValueError("thirteen")
    return value + 1


def die_in_worker(value: int, caller_pid: int) -> int:
    """Kills the worker process the first time it runs there (a crash, not an error)."""
    if os.getpid() != caller_pid:
        os._exit(3)
    return -value


def _memo_size_of_hash_phone(caller_pid: int) -> int:
    return hash_phone.cache_info().currsize if os.getpid() != caller_pid else 0


def _warm_worker() -> None:
    second_core.map_on_two_cores(slow_square_with_pid, [(0,)] * 20, min_items=1, chunk_items=1)


def test_results_are_in_order_and_the_worker_computes_part_of_them() -> None:
    _warm_worker()
    items = [(i,) for i in range(1_000)]
    results = second_core.map_on_two_cores(slow_square_with_pid, items, min_items=1, chunk_items=10)
    assert [square for square, _ in results] == [i * i for i in range(1_000)]
    pids = [pid for _, pid in results]
    assert os.getpid() in pids  # the caller took the front ...
    assert {pid for pid in pids if pid != os.getpid()}  # ... and the worker the back
    assert pids[0] == os.getpid() and pids[-1] != os.getpid()


def test_below_the_threshold_no_worker_is_started() -> None:
    results = second_core.map_on_two_cores(slow_square_with_pid, [(2,)] * 10, min_items=11)
    assert results == [(4, os.getpid())] * 10
    assert second_core._worker is None


def test_phone_hashing_is_the_same_with_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    phones = [f"(212) 555-{i:04d}" for i in range(1_500)] + [
        "+49 30 901820",
        "0044 20 7946 0958",
        "not a phone",
        "undefined",
        "1111111111",
        "A" * 64,
        "+1 650-253-0000 ext. 12",
    ] * 20
    countries = (["us", "de", None, "GB"] * (len(phones) // 4 + 1))[: len(phones)]

    def hashed() -> tuple[pd.DataFrame, object]:
        hash_phone.cache_clear()
        frame = pd.DataFrame({"phone": phones, "country": countries})
        return hash_identity_columns(frame)

    monkeypatch.setattr(second_core, "MIN_ITEMS", 10**9)
    alone, alone_dropped = hashed()
    assert second_core._worker is None
    monkeypatch.setattr(second_core, "MIN_ITEMS", 100)
    monkeypatch.setattr(second_core, "CHUNK_ITEMS", 50)
    shared, shared_dropped = hashed()
    assert second_core._worker is not None and second_core._worker.alive()
    pd.testing.assert_frame_equal(shared, alone)
    assert shared_dropped == alone_dropped
    assert shared["phone_sha256"].notna().sum() > 500 and shared_dropped["phone_invalid"] > 0


def test_an_error_in_the_function_is_raised_in_the_caller() -> None:
    _warm_worker()
    items = [(i,) for i in range(2_000)]
    with pytest.raises(ValueError, match="thirteen"):
        second_core.map_on_two_cores(fail_on_13, items, min_items=1, chunk_items=10)
    # Near the end, where the worker works: its failure leaves the chunk to the caller.
    tail = [(i,) for i in range(100, 2_100)] + [(13,)]
    with pytest.raises(ValueError, match="thirteen"):
        second_core.map_on_two_cores(fail_on_13, tail, min_items=1, chunk_items=10)
    # The worker is still there and still right.
    fine = [(i,) for i in range(100, 2_100)]
    assert second_core.map_on_two_cores(fail_on_13, fine, min_items=1, chunk_items=10) == [
        i + 1 for i in range(100, 2_100)
    ]
    assert second_core._worker is not None and second_core._worker.alive()


def test_a_worker_that_dies_costs_no_value_and_is_not_started_again() -> None:
    _warm_worker()
    worker = second_core._worker
    assert worker is not None
    items = [(i, os.getpid()) for i in range(3_000)]
    results = second_core.map_on_two_cores(die_in_worker, items, min_items=1, chunk_items=10)
    assert results == [-i for i in range(3_000)]
    assert worker.process.wait(timeout=10) == 3
    assert second_core._get_worker() is None  # this process goes on alone
    assert second_core.map_on_two_cores(die_in_worker, items, min_items=1) == results


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            from conversion_platform.transform.second_core import map_on_two_cores
            from conversion_platform_tests.test_second_core import slow_square_with_pid

            print("script ran", flush=True)
            results = map_on_two_cores(
                slow_square_with_pid, [(i,) for i in range(500)], min_items=1, chunk_items=5
            )
            print(len(results), len({pid for _, pid in results}))
            """
        )
    )
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *sys.path])}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("script ran") == 1
    assert lines[-1].startswith("500 ")


def test_a_prefetch_hashes_ahead_and_gives_the_same_results() -> None:
    prefetch = second_core.Prefetch(hash_phone)
    first = [(f"(415) 555-{i:04d}", "US") for i in range(300)]
    second = [("+44 20 7946 0958", None), ("not a phone", "DE"), ("undefined", None)]
    prefetch.submit(first)
    prefetch.submit(second)
    known = prefetch.finish()
    hash_phone.cache_clear()
    assert known == {args: hash_phone(*args) for args in first + second}
    # The worker is free for others again.
    shared = second_core.map_on_two_cores(
        slow_square_with_pid, [(3,)] * 500, min_items=1, chunk_items=5
    )
    assert {square for square, _ in shared} == {9}
    assert {pid for _, pid in shared} - {os.getpid()}


def test_a_prefetch_whose_worker_dies_finishes_with_what_it_has() -> None:
    _warm_worker()
    prefetch = second_core.Prefetch(die_in_worker)
    prefetch.submit([(i, os.getpid()) for i in range(50)])
    assert prefetch.finish() == {}
    assert second_core._get_worker() is None


def test_ingest_hashes_phones_ahead_with_the_same_result(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log with many distinct numbers: the worker hashes them while the lines are
    parsed, and the hour is the one hashed without it (digests, drops, quarantine)."""
    hour = datetime(2026, 3, 2, 10, tzinfo=UTC)
    formats = ["({a}) 555-{b:04d}", "+1 {a} 555 {b:04d}", "0{a} {b:06d}", "{b}"]
    countries = ["US", "us", "United Kingdom", "DE", None, "France"]
    lines = [
        orjson.dumps(
            {
                "event_id": f"p{i}",
                "event_name": "lead",
                "event_time": (hour + timedelta(seconds=i)).isoformat(),
                "phone": formats[i % 4].format(a=200 + i % 700, b=i),
                **({"country": countries[i % 6]} if countries[i % 6] else {}),
            }
        )
        for i in range(3_000)
    ]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr(log_chunks, "CHUNK_LINES", 500)

    monkeypatch.setattr(log_conversions, "_PHONES_TO_PREFETCH", 10**9)
    alone = ingest_server_logs(engine, logs, [], [hour])
    assert second_core._worker is None
    used: list[int] = []
    real_finish = second_core.Prefetch.finish

    def finish(self: second_core.Prefetch) -> dict:
        known = real_finish(self)
        used.append(len(known))
        return known

    hashed_after: list[int] = []
    real_map = normalise.map_on_two_cores

    def map_rest(fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        hashed_after.append(len(items))
        return real_map(fn, items)

    monkeypatch.setattr(second_core.Prefetch, "finish", finish)
    monkeypatch.setattr(normalise, "map_on_two_cores", map_rest)
    monkeypatch.setattr(log_conversions, "_PHONES_TO_PREFETCH", 100)
    ahead = ingest_server_logs(engine, logs, [], [hour])
    assert used and used[0] > 2_000  # the numbers were hashed by the worker ...
    assert hashed_after == [0]  # ... every one of them, with the arguments hashing uses
    pd.testing.assert_frame_equal(ahead.frame, alone.frame)
    assert ahead.dropped_identifiers == alone.dropped_identifiers
    assert ahead.dropped_identifiers["phone_invalid"] > 0
    assert ahead.frame["phone_sha256"].notna().sum() > 500


def print_and_square(value: int) -> tuple[int, int]:
    """Writes to stdout, from Python and at the file-descriptor level, as C code might."""
    print("noise from python")
    os.write(1, b"noise from C\n")
    time.sleep(0.002)
    return value * value, os.getpid()


def test_output_of_the_function_in_the_worker_never_reaches_the_pipe() -> None:
    _warm_worker()
    items = [(i,) for i in range(400)]
    results = second_core.map_on_two_cores(print_and_square, items, min_items=1, chunk_items=5)
    assert [square for square, _ in results] == [i * i for i in range(400)]
    assert {pid for _, pid in results} - {os.getpid()}  # the worker computed some
    worker = second_core._worker
    assert worker is not None and worker.alive()  # not retired for a garbled reply


def test_the_worker_keeps_no_memo_of_the_values_it_hashed() -> None:
    """The caller empties its memo of plaintext after a run; the worker never has one."""
    hash_phone.cache_clear()
    items = [(f"(415) 555-{i:04d}", "US") for i in range(3_000)]
    second_core.map_on_two_cores(hash_phone, items, min_items=1, chunk_items=10)
    probe = second_core.map_on_two_cores(
        _memo_size_of_hash_phone, [(os.getpid(),)] * 200, min_items=1, chunk_items=1
    )
    assert len(probe) == 200
    assert max(probe) == 0
