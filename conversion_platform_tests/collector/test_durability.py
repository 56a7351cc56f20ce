"""Durability: a load generator posts batches while the collector process is killed with
SIGKILL, several rounds; afterwards every event that got a 200 is in the landing table,
and no batch is stored in part. On SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import requests
import sqlalchemy as sa

from conversion_platform.collector.server import collector_process
from conversion_platform.collector.write_keys import hash_write_key
from conversion_platform.store.database import create_database_engine

KEY = "cpk_durability_test_key"
ROUNDS = 3
BATCH = 50
THREADS = 4
#: Acknowledged batches per round before the kill (the load keeps going while it dies).
KILL_AFTER_ACKS = 12


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_url")
    else:
        yield f"sqlite:///{tmp_path / 'platform.db'}"


def _batch(name: str) -> tuple[list[str], bytes]:
    ids = [f"{name}-{i}" for i in range(BATCH)]
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "event_id": i,
            "event_name": "purchase",
            "event_time": now,
            "value": 1.0,
            "currency": "USD",
            "email": f"{i}@example.com",
        }
        for i in ids
    ]
    return ids, orjson.dumps({"events": events})


def _load(
    url: str,
    round_: int,
    stop: threading.Event,
    acked: list[list[str]],
    interrupted: list[str],
    lock: threading.Lock,
) -> None:
    """Post batches until the collector stops answering; record those answered 200."""
    session = requests.Session()
    thread = threading.current_thread().name
    n = 0
    while not stop.is_set():
        ids, body = _batch(f"r{round_}-{thread}-b{n}")
        n += 1
        try:
            response = session.post(
                f"{url}/v1/events",
                data=body,
                timeout=10,
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            )
        except requests.RequestException:
            with lock:  # the collector died under us: this batch's fate is unknown
                interrupted.append(ids[0])
            return
        if response.status_code == 200:
            assert response.json()["accepted"] == BATCH
            with lock:
                acked.append(ids)


def test_every_acknowledged_event_survives_sigkill(db_url: str, tmp_path: Path):
    create_database_engine(db_url).dispose()
    env = {
        "CONVERSION_PLATFORM_HOME": str(tmp_path / "home"),
        "CONVERSION_PLATFORM_DB_URL": db_url,
        "CONVERSION_PLATFORM_COLLECTOR_CONFIG": str(tmp_path / "none.yaml"),
        "CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS": f"loadgen={hash_write_key(KEY)}",
    }
    (tmp_path / "none.yaml").write_text("{}\n")
    acked: list[list[str]] = []
    interrupted: list[str] = []
    lock = threading.Lock()
    for round_ in range(ROUNDS):
        with collector_process(env) as collector:
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=_load,
                    args=(collector.url, round_, stop, acked, interrupted, lock),
                    name=f"t{t}",
                    daemon=True,
                )
                for t in range(THREADS)
            ]
            before = len(acked)
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while len(acked) - before < KILL_AFTER_ACKS and time.monotonic() < deadline:
                time.sleep(0.005)
            collector.process.kill()  # SIGKILL, mid-load: requests are in flight
            collector.process.wait()
            stop.set()
            for thread in threads:
                thread.join(20)
            assert len(acked) - before >= KILL_AFTER_ACKS, "the load never got going"

    engine = create_database_engine(db_url)
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(sa.text("SELECT event_id FROM landing_events"))}
        plaintext = conn.execute(
            sa.text("SELECT count(*) FROM landing_events WHERE email_sha256 LIKE '%@%'")
        ).scalar_one()
    engine.dispose()

    assert interrupted, "no request was in flight at any kill"
    acknowledged = {event_id for ids in acked for event_id in ids}
    assert len(acknowledged) >= ROUNDS * KILL_AFTER_ACKS * BATCH
    lost = acknowledged - stored
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:3]}"
    # A batch is one transaction: after a kill it is stored whole or not at all.
    batches: dict[str, int] = {}
    for event_id in stored:
        batches[event_id.rsplit("-", 1)[0]] = batches.get(event_id.rsplit("-", 1)[0], 0) + 1
    assert set(batches.values()) == {BATCH}
    assert plaintext == 0
