"""Sharing a slow function with a worker process (`transform.second_core`), for real.

Scope: the results are the function's, in order, and the worker computes part of them;
phone hashing gives the same digests and drop counts with and without the worker; an
error in the function is raised in the caller; a worker that dies mid-call costs no
value and is not started again; a script without a main guard is not run twice (the
trap of `multiprocessing`'s spawned children); a map begun early (`SharedMap`) and a
stream of pieces (`imap_on_two_cores`) give the same results, free the worker when done,
left or broken; ingest on two cores gives the hour it gives on one, and stops its worker
when done.
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
from conversion_platform.ingest.access_log import AccessLogRule
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


def test_a_shared_map_begun_early_gives_the_same_results() -> None:
    """The worker starts from the back at once; the caller joins in when it reads."""
    _warm_worker()
    items = [(i,) for i in range(600)]
    shared = second_core.SharedMap(slow_square_with_pid, items, min_items=1, chunk_items=10)
    time.sleep(0.5)  # the caller's other work: the worker goes on alone meanwhile
    results = shared.results()
    assert [square for square, _ in results] == [i * i for i in range(600)]
    worker_share = sum(pid != os.getpid() for _, pid in results)
    assert worker_share > 300  # its head start: more than half
    assert results[0][1] == os.getpid()  # the caller still took the front


def test_a_shared_map_closed_unread_frees_the_worker() -> None:
    _warm_worker()
    shared = second_core.SharedMap(
        slow_square_with_pid, [(i,) for i in range(2_000)], min_items=1, chunk_items=10
    )
    # While it holds the worker, another call computes alone ...
    alone = second_core.map_on_two_cores(slow_square_with_pid, [(2,)] * 50, min_items=1)
    assert {pid for _, pid in alone} == {os.getpid()}
    shared.close()
    # ... and once closed, the worker is free again.
    after = second_core.map_on_two_cores(
        slow_square_with_pid, [(3,)] * 500, min_items=1, chunk_items=5
    )
    assert {pid for _, pid in after} - {os.getpid()}


def test_a_shared_map_whose_worker_dies_costs_no_value() -> None:
    _warm_worker()
    items = [(i, os.getpid()) for i in range(500)]
    shared = second_core.SharedMap(die_in_worker, items, min_items=1, chunk_items=10)
    assert shared.results() == [-i for i in range(500)]
    assert second_core._get_worker() is None


def _stream(count: int, produced: list[int]) -> Iterator[tuple[int]]:
    for i in range(count):
        produced.append(i)
        yield (i,)


def slow_square_piece(value: int) -> tuple[int, int]:
    """A piece of a stream: slow enough that the caller and the worker take turns."""
    time.sleep(0.03)
    return value * value, os.getpid()


def test_a_stream_is_mapped_in_order_on_both_cores() -> None:
    _warm_worker()
    produced: list[int] = []
    results = []
    for square, pid in second_core.imap_on_two_cores(slow_square_piece, _stream(60, produced)):
        results.append((square, pid))
        # The stream is read as the results are used, not all at once ahead of them.
        assert len(produced) <= len(results) + 3
    assert [square for square, _ in results] == [i * i for i in range(60)]
    pids = [pid for _, pid in results]
    assert 10 <= sum(pid != os.getpid() for pid in pids) <= 50  # both sides took pieces
    worker = second_core._worker
    assert worker is not None and worker.alive() and not worker.busy.locked()


def test_a_stream_of_one_piece_starts_no_worker() -> None:
    assert list(second_core.imap_on_two_cores(slow_square_piece, [(4,)])) == [(16, os.getpid())]
    assert list(second_core.imap_on_two_cores(slow_square_piece, [])) == []
    assert second_core._worker is None


def test_an_error_in_a_piece_is_raised_in_the_caller_wherever_it_was_computed() -> None:
    _warm_worker()
    for bad in (1, 2, 3, 18):  # early pieces go to the worker, the last to either side
        items = [(13 if k == bad else 20 + k,) for k in range(20)]
        with pytest.raises(ValueError, match="thirteen"):
            list(second_core.imap_on_two_cores(fail_on_13, items))
        worker = second_core._worker
        assert worker is not None and worker.alive() and not worker.busy.locked()
    assert list(second_core.imap_on_two_cores(fail_on_13, [(i,) for i in range(20, 40)])) == [
        i + 1 for i in range(20, 40)
    ]


def die_in_worker_slowly(value: int, caller_pid: int) -> int:
    if os.getpid() == caller_pid:
        time.sleep(0.03)  # the caller is slow: the worker is handed a piece
    return die_in_worker(value, caller_pid)


def test_a_stream_whose_worker_dies_costs_no_value() -> None:
    _warm_worker()
    items = [(i, os.getpid()) for i in range(40)]
    results = list(second_core.imap_on_two_cores(die_in_worker_slowly, items))
    assert results == [-i for i in range(40)]
    assert second_core._get_worker() is None


def test_a_stream_left_early_frees_the_worker() -> None:
    _warm_worker()
    stream = second_core.imap_on_two_cores(slow_square_piece, [(i,) for i in range(40)])
    assert [next(stream)[0] for _ in range(3)] == [0, 1, 4]
    stream.close()
    worker = second_core._worker
    assert worker is not None and worker.alive() and not worker.busy.locked()
    after = second_core.map_on_two_cores(
        slow_square_with_pid, [(3,)] * 500, min_items=1, chunk_items=5
    )
    assert {pid for _, pid in after} - {os.getpid()}


def test_ingest_on_two_cores_gives_the_hour_it_gives_on_one(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log in many chunks, with many distinct numbers, broken lines and refused
    records: the worker parses and checks some chunks and hashes the phone numbers
    while the rest is hashed, and the hour is the one read on one core (digests, drops,
    quarantine)."""
    hour = datetime(2026, 3, 2, 10, tzinfo=UTC)
    formats = ["({a}) 555-{b:04d}", "+1 {a} 555 {b:04d}", "0{a} {b:06d}", "{b}"]
    countries = ["US", "us", "United Kingdom", "DE", None, "France"]
    lines = []
    for i in range(3_000):
        record = {
            "event_id": f"p{i}",
            "event_name": "lead" if i % 97 else "",  # an event name is required
            "event_time": (hour + timedelta(seconds=i)).isoformat(),
            "phone": formats[i % 4].format(a=200 + i % 700, b=i),
            "email": f"buyer{i % 400}@example.com",
            **({"country": countries[i % 6]} if countries[i % 6] else {}),
        }
        lines.append(orjson.dumps(record))
        if i % 250 == 7:
            lines.append(b'{"event_id": "cut", "ev')
        if i % 100 == 50:  # access-log lines: a conversion by a URL rule, and a page view
            stamp = (hour + timedelta(seconds=i)).strftime("%d/%b/%Y:%H:%M:%S +0000")
            lines.append(
                f'203.0.113.9 - - [{stamp}] "GET /checkout/thank-you?order_id=o{i}&value=5'
                f'&currency=USD HTTP/1.1" 200 1 "-" "ua"'.encode()
            )
            lines.append(
                f'203.0.113.9 - - [{stamp}] "GET /products/{i} HTTP/1.1" 200 1 "-" "ua"'.encode()
            )
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr(log_chunks, "CHUNK_LINES", 100)
    monkeypatch.setattr(second_core, "MIN_ITEMS", 100)

    rules = [
        AccessLogRule(
            event_name="purchase",
            path="/checkout/thank-you",
            fields={"order_id": "order_id", "value": "value", "currency": "currency"},
        )
    ]
    monkeypatch.setattr(second_core, "_usable_cores", lambda: 1)
    alone = ingest_server_logs(engine, logs, rules, [hour])
    assert second_core._worker is None
    monkeypatch.undo()
    monkeypatch.setattr(log_chunks, "CHUNK_LINES", 100)
    monkeypatch.setattr(second_core, "MIN_ITEMS", 100)
    # A worker warmed up with what ingest imports, kept between the two calls (ingest
    # stops it when done: a cold one would import while this small log is read alone).
    monkeypatch.setattr(log_conversions, "stop_idle_worker", lambda: True)
    ingest_server_logs(engine, logs, rules, [hour])

    sent: list[str] = []
    real_map_chunk = second_core._Worker.map_chunk

    def map_chunk(self: second_core._Worker, fn: Callable[..., Any], items: Any) -> list[Any]:
        sent.append(fn.__name__)
        return real_map_chunk(self, fn, items)

    hashed_after: list[int] = []
    real_map = normalise.map_on_two_cores

    def map_rest(fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        hashed_after.append(len(items))
        return real_map(fn, items)

    monkeypatch.setattr(second_core._Worker, "map_chunk", map_chunk)
    monkeypatch.setattr(normalise, "map_on_two_cores", map_rest)
    shared = ingest_server_logs(engine, logs, rules, [hour])
    assert sent.count("parse_piece") >= 2  # the worker parsed and checked chunks ...
    assert "hash_phone" in sent  # ... and hashed numbers ...
    assert hashed_after == [0]  # ... every number left was hashed ahead
    pd.testing.assert_frame_equal(shared.frame, alone.frame)
    assert shared.dropped_identifiers == alone.dropped_identifiers
    assert shared.dropped_identifiers["phone_invalid"] > 0
    assert shared.frame["phone_sha256"].notna().sum() > 500
    assert len(shared.frame) == 3_000 - len(range(0, 3_000, 97)) + 30  # 30 by the URL rule
    assert (shared.frame["order_id"].str.startswith("o")).sum() == 30
    assert shared.quarantined == alone.quarantined
    assert len(shared.quarantined) == 12 + len(range(0, 3_000, 97))
    assert shared.per_hour == alone.per_hour
    assert shared.per_hour[hour]["lines_ignored"] == 30  # the page views, matching no rule


def test_ingest_stops_its_worker_when_done(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory the worker grew parsing chunks is not kept through the rest of the
    run; the next call starts a new worker."""
    hour = datetime(2026, 3, 2, 10, tzinfo=UTC)
    lines = [
        orjson.dumps(
            {
                "event_id": f"m{i}",
                "event_name": "lead",
                "event_time": (hour + timedelta(seconds=i)).isoformat(),
                "phone": f"(415) 555-{i:04d}",
                "country": "US",
            }
        )
        for i in range(2_000)
    ]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr(log_chunks, "CHUNK_LINES", 200)
    monkeypatch.setattr(second_core, "MIN_ITEMS", 100)
    _warm_worker()
    worker = second_core._worker
    assert worker is not None
    result = ingest_server_logs(engine, logs, [], [hour])
    assert result.frame["phone_sha256"].notna().sum() == 2_000
    assert second_core._worker is None
    assert worker.process.poll() == 0  # it ended at the end of its input, not killed
    assert second_core._get_worker() is not None  # and a later call may start another


def test_a_busy_worker_is_not_stopped_as_idle() -> None:
    _warm_worker()
    worker = second_core._worker
    assert worker is not None
    shared = second_core.SharedMap(
        slow_square_with_pid, [(i,) for i in range(400)], min_items=1, chunk_items=10
    )
    assert second_core.stop_idle_worker() is False
    assert worker.alive()
    assert [square for square, _ in shared.results()] == [i * i for i in range(400)]
    assert second_core.stop_idle_worker() is True
    assert second_core._worker is None and worker.process.poll() == 0


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
