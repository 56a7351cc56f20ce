"""Group commit: concurrent requests share one transaction and each is answered only after
its commit (over HTTP, with the database held locked by the test); a request the database
refuses doesn't fail the others of its group; storage failures and back-pressure are 503s
that acknowledge nothing. On SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import requests
import sqlalchemy as sa

from conversion_platform.collector.database import collector_engine
from conversion_platform.collector.group_commit import (
    GroupCommitter,
    LandingRequest,
    StorageUnavailable,
)
from conversion_platform.collector.server import collector_process
from conversion_platform.collector.write_keys import hash_write_key
from conversion_platform.ingest.landing_writer import prepare_landing, quarantined_payload
from conversion_platform.settings import Settings
from conversion_platform_tests.collector.conftest import (
    BACKEND_KEY,
    RunningCollector,
    StartCollector,
    landing_rows,
    make_config,
)

AUTH = {"Authorization": f"Bearer {BACKEND_KEY}"}


def batch(prefix: str, size: int = 3) -> bytes:
    now = datetime.now(UTC).isoformat()
    return orjson.dumps(
        {
            "events": [
                {"event_id": f"{prefix}-{i}", "event_name": "lead", "event_time": now}
                for i in range(size)
            ]
        }
    )


def wait_until(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_concurrent_requests_share_a_commit_and_are_answered_after_it(
    collector: RunningCollector, settings: Settings
):
    committer = collector.app.state.collector.committer
    db_path = settings.db_url.split("///", 1)[1]
    lock = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")  # the test holds the write lock: no commit can happen
    answers: list[requests.Response] = []
    done = threading.Event()
    requests_count = 12
    try:
        with ThreadPoolExecutor(max_workers=requests_count) as pool:
            futures = [
                pool.submit(
                    requests.post,
                    f"{collector.url}/v1/events",
                    data=batch(f"r{i}"),
                    headers=AUTH,
                    timeout=60,
                )
                for i in range(requests_count)
            ]
            wait_until(lambda: committer.waiting_requests == requests_count, "all requests queued")
            # Every request is inside the collector, none can be committed: none is answered.
            assert not any(f.done() for f in futures)
            assert committer.stats.groups == 0
            lock.execute("ROLLBACK")
            answers = [f.result() for f in futures]
            done.set()
    finally:
        if not done.is_set() and lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()

    assert [a.status_code for a in answers] == [200] * requests_count
    assert all(a.json()["accepted"] == 3 for a in answers)
    assert len(collector.landing()) == 3 * requests_count
    # The writer's first group waited on the lock; every other request queued behind it
    # and was committed together: two transactions for twelve requests.
    assert committer.stats.groups == 2
    assert committer.stats.requests == requests_count


def test_a_full_queue_is_503_and_acknowledges_nothing(
    start_collector: StartCollector, settings: Settings
):
    collector = start_collector(max_queued_events=5)
    committer = collector.app.state.collector.committer
    lock = sqlite3.connect(settings.db_url.split("///", 1)[1], isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(max_workers=2) as pool:

        def send(name: str):  # type: ignore[no-untyped-def]
            return pool.submit(
                requests.post,
                f"{collector.url}/v1/events",
                data=batch(name, 4),
                headers=AUTH,
                timeout=60,
            )

        first = send("a")
        wait_until(
            lambda: committer.waiting_requests == 1 and committer.queued_events == 0,
            "the first request taken by the writer (which waits on the lock)",
        )
        second = send("b")
        wait_until(lambda: committer.queued_events == 4, "the second request queued")
        refused = requests.post(
            f"{collector.url}/v1/events", data=batch("c", 4), headers=AUTH, timeout=60
        )
        lock.execute("ROLLBACK")
        lock.close()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error"] == "overloaded"
    assert refused.headers["retry-after"] == "1"
    stored = sorted(r["event_id"] for r in collector.landing())
    assert stored == [f"{p}-{i}" for p in ("a", "b") for i in range(4)]


def test_when_the_database_refuses_the_commit_the_answer_is_503(collector: RunningCollector):
    with collector.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE landing_events RENAME TO landing_elsewhere"))
    response = requests.post(
        f"{collector.url}/v1/events", data=batch("lost"), headers=AUTH, timeout=10
    )
    assert response.status_code == 503
    assert response.json()["error"] == "storage_unavailable"
    assert "retry-after" in response.headers
    with collector.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE landing_elsewhere RENAME TO landing_events"))
    # The collector recovers once the database does.
    again = requests.post(
        f"{collector.url}/v1/events", data=batch("kept"), headers=AUTH, timeout=10
    )
    assert again.status_code == 200
    assert sorted(r["event_id"] for r in collector.landing()) == ["kept-0", "kept-1", "kept-2"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_one_request_the_database_refuses_does_not_fail_its_group(
    settings: Settings, database: str, request: pytest.FixtureRequest
):
    db_url = request.getfixturevalue("pg_url") if database == "postgresql" else settings.db_url
    engine = collector_engine(db_url, make_config())
    now = datetime.now(UTC)

    def landing(prefix: str) -> LandingRequest:
        record = {"event_id": f"{prefix}-1", "event_name": "lead", "event_time": now.isoformat()}
        return LandingRequest(prepare_landing([record], "server", now, origin=f"test:{prefix}"))

    poisoned = landing("poisoned")
    bad_entry = quarantined_payload({}, "server", now, "test", "x")
    # A quarantine entry without a reason breaks a NOT NULL constraint at insert time.
    poisoned.prepared.quarantined.append(replace(bad_entry, reason=None))  # type: ignore[arg-type]

    async def scenario() -> list[object]:
        committer = GroupCommitter(engine)
        await committer.start()
        try:
            # Queued before the writer runs: one group.
            return await asyncio.gather(
                committer.land(landing("first")),
                committer.land(poisoned),
                committer.land(landing("third")),
                return_exceptions=True,
            )
        finally:
            await committer.stop()
            assert committer.stats.failed_groups == 1

    first, middle, third = asyncio.run(scenario())
    assert first.accepted == 1 and third.accepted == 1  # type: ignore[union-attr]
    assert isinstance(middle, StorageUnavailable)
    assert "IntegrityError" in str(middle)
    assert sorted(r["event_id"] for r in landing_rows(engine)) == ["first-1", "third-1"]
    engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_many_concurrent_clients_all_land(
    start_collector: StartCollector, database: str, request: pytest.FixtureRequest
):
    db_url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    collector = start_collector(db_url=db_url)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(
                lambda i: requests.post(
                    f"{collector.url}/v1/events",
                    data=batch(f"c{i}", 10),
                    headers=AUTH,
                    timeout=60,
                ),
                range(64),
            )
        )
    assert [a.status_code for a in answers] == [200] * 64
    assert len({r["event_id"] for r in collector.landing()}) == 640
    stats = collector.app.state.collector.committer.stats
    assert stats.requests == 64 and stats.events == 640


def test_two_worker_processes_write_one_sqlite_database(tmp_path: Path):
    """Several workers (`--workers 2`): each process group-commits on its own, taking
    turns on the database; every acknowledged event is stored exactly once."""
    db_url = f"sqlite:///{tmp_path / 'platform.db'}"
    (tmp_path / "none.yaml").write_text("{}\n")
    env = {
        "CONVERSION_PLATFORM_HOME": str(tmp_path / "home"),
        "CONVERSION_PLATFORM_DB_URL": db_url,
        "CONVERSION_PLATFORM_COLLECTOR_CONFIG": str(tmp_path / "none.yaml"),
        "CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS": f"backend={hash_write_key(BACKEND_KEY)}",
    }
    names = [f"w{i}" for i in range(48)]
    with collector_process(env, workers=2) as collector:

        def send(name: str) -> requests.Response:
            with requests.Session() as session:  # a connection each: both workers get some
                return session.post(
                    f"{collector.url}/v1/events", data=batch(name, 20), headers=AUTH, timeout=60
                )

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(send, names))
        assert collector.process.poll() is None
    assert [a.status_code for a in answers] == [200] * len(names)
    assert all(a.json() == {"accepted": 20, "rejected": []} for a in answers)
    engine = sa.create_engine(db_url)
    try:
        stored = [r["event_id"] for r in landing_rows(engine)]
    finally:
        engine.dispose()
    assert sorted(stored) == sorted(f"{name}-{i}" for name in names for i in range(20))
