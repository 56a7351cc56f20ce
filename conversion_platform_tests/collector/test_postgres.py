"""The collector on a real PostgreSQL server (skipped with the reason when
`CONVERSION_PLATFORM_TEST_PG_URL` is unset): server batches and pixel hits land through
COPY in one transaction per group, with booleans, floats and hashes intact, rejects in
the quarantine, and no plaintext personal data."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson
import requests

from conversion_platform_tests.collector.conftest import (
    BACKEND_KEY,
    SITE_ORIGIN,
    StartCollector,
    all_stored_text,
)


def test_batches_and_hits_land_in_postgres(start_collector: StartCollector, pg_url: str):
    collector = start_collector(db_url=pg_url)
    now = datetime.now(UTC).isoformat()
    batch = {
        "events": [
            {
                "event_id": "pg-1",
                "event_name": "purchase",
                "event_time": now,
                "value": 19.99,
                "currency": "GBP",
                "email": "Someone@Example.org",
                "phone": "+44 20 7946 0958",
            },
            {"event_id": "pg-2", "event_name": "Not A Name", "email": "someone@example.org"},
        ]
    }
    answer = requests.post(
        f"{collector.url}/v1/events",
        data=orjson.dumps(batch),
        headers={"Authorization": f"Bearer {BACKEND_KEY}"},
        timeout=10,
    ).json()
    assert answer["accepted"] == 1 and [r["index"] for r in answer["rejected"]] == [1]
    hit = requests.post(
        f"{collector.url}/v1/pixel",
        data=orjson.dumps(
            {
                "event_name": "purchase",
                "event_id": "pg-1",
                "value": 20,
                "page_url": "https://shop.example/?gclid=G-pg",
            }
        ),
        headers={"Origin": SITE_ORIGIN},
        timeout=10,
    )
    assert hit.status_code == 200

    rows = {(r["source"], r["event_id"]): r for r in collector.landing()}
    server, pixel = rows[("server", "pg-1")], rows[("pixel", "pg-1")]
    assert server["value"] == 19.99 and server["value_verified"] is True
    assert server["email_sha256"] == hashlib.sha256(b"someone@example.org").hexdigest()
    assert server["phone_sha256"] == hashlib.sha256(b"+442079460958").hexdigest()
    assert server["site"] == "shop"
    assert pixel["value_verified"] is False and pixel["gclid"] == "G-pg"
    assert pixel["mpid"] == hit.cookies["_mpid"]
    [rejected] = collector.quarantined()
    assert rejected["event_id"] == "pg-2" and "unknown" in rejected["reason"]
    stored = all_stored_text(collector.engine)
    assert "someone@example.org" not in stored and "2079460958" not in stored
