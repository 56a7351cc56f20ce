"""Shared pieces of the destination tests (not a test module).

Canonical frames built from plaintext records the way ingest builds them (normalised and
hashed by `records_to_frame`), a client for the emulator's control API, a configuration
per destination pointing at a running emulator, and a one-call hour delivery. Nothing here
imports the emulator's checks: tests talk to it over HTTP only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import orjson
import pandas as pd
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.defs.delivery_assets import build_delivery_asset
from conversion_platform.defs.partitions import hourly_partitions, single_run
from conversion_platform.defs.resources import resources_from_settings
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.destinations.delivery import HourDeliverer, HourDelivery
from conversion_platform.destinations.http_client import new_session
from conversion_platform.destinations.registry import destination_for
from conversion_platform.emulator.server import running_emulator
from conversion_platform.ingest.records import coerce_record, records_to_frame
from conversion_platform.settings import Settings
from conversion_platform.store.tables import delivery_batches, delivery_events

TOKEN_VARIABLE = "TEST_DESTINATION_ACCESS_TOKEN"
TOKEN = "test-token-not-a-secret"
#: The hour delivered in tests: recent, so no platform's age limit applies.
HOUR = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
PREFIX = {"meta_capi": "meta", "google_ads": "google", "tiktok": "tiktok", "snapchat": "snapchat"}
SETTINGS: dict[str, dict[str, Any]] = {
    "meta_capi": {"pixel_id": "123456789012345", "api_version": "v24.0"},
    "google_ads": {"customer_id": "123-456-7890", "conversion_action_id": "700000001"},
    "tiktok": {"pixel_code": "CTESTPIXEL0000000001"},
    "snapchat": {"pixel_id": "3f1c2a9e-0d4b-4c8e-9a51-6b7d2e0f4a10"},
}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def record(event_id: str, **overrides: Any) -> dict[str, Any]:
    """A plaintext conversion as a site's backend sends it, with every identifier."""
    base: dict[str, Any] = {
        "event_id": event_id,
        "event_name": "purchase",
        "event_time": (HOUR + timedelta(minutes=10)).isoformat(),
        "action_source": "website",
        "page_url": "https://shop.example/checkout/thanks",
        "referrer": "https://www.google.com/",
        "external_id": "cust-42",
        "email": " Ana.Maria@GMail.com ",
        "phone": "+1 (415) 555-0132",
        "first_name": "Ana",
        "last_name": "O'Brien",
        "city": "San Francisco",
        "region": "California",
        "postal_code": "94103-1234",
        "country": "US",
        "client_ip": "198.51.100.7",
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        "gclid": "Cj0KCQ-test-gclid",
        "fbclid": "IwAR-test",
        "fbp": "fb.1.1772445720000.1234567890",
        "ttclid": "E.C.P.test-ttclid",
        "ttp": "ttp-cookie-1",
        "sccid": "sc-click-1",
        "value": 129.9,
        "currency": "usd",
        "order_id": f"order-{event_id}",
        "items": [{"id": "sku-1", "quantity": 2, "price": 64.95}],
        "consent_ad_user_data": "granted",
        "consent_ad_personalization": "granted",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def frame_of(records: list[dict[str, Any]], hour: datetime = HOUR) -> pd.DataFrame:
    """The resolved hour a delivery asset receives, from plaintext records."""
    received = hour + timedelta(minutes=30)
    coerced = [coerce_record(r, events.SOURCE_SERVER, received) for r in records]
    frame, _ = records_to_frame(coerced, hour_of=[hour] * len(coerced))
    frame["match_quality"] = np.linspace(4.0, 8.0, len(frame)) if len(frame) else []
    return frame


def many(n: int, prefix: str = "e", **overrides: Any) -> list[dict[str, Any]]:
    """`n` records with ids `<prefix>-0000`..., spread over the hour."""
    return [
        record(
            f"{prefix}-{i:04d}",
            event_time=(HOUR + timedelta(seconds=i % 3600)).isoformat(),
            order_id=None,
            **overrides,
        )
        for i in range(n)
    ]


class EmulatorControl:
    """The emulator's control API, over HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def reset(self) -> None:
        self.session.post(f"{self.url}/_emulator/reset", timeout=5).raise_for_status()

    def stats(self, platform: str) -> dict[str, Any]:
        return self.session.get(f"{self.url}/_emulator/stats", timeout=5).json()[platform]

    def accepted(self, platform: str) -> dict[str, int]:
        """How many times the emulator took each event id (Google: transaction id)."""
        return self.stats(platform)["accepted_by_event_id"]

    def script(self, platform: str, **script: Any) -> None:
        response = self.session.post(
            f"{self.url}/_emulator/{platform}/script", json=script, timeout=5
        )
        assert response.status_code == 200, response.text

    def requests(self, platform: str, limit: int = 50) -> list[dict[str, Any]]:
        response = self.session.get(
            f"{self.url}/_emulator/requests/{platform}", params={"limit": limit}, timeout=5
        )
        return response.json()["requests"]

    def last_body(self, platform: str) -> Any:
        return self.requests(platform, 1)[-1]["body"]

    def google_failed(self, request_id: str) -> dict[str, str]:
        response = self.session.get(
            f"{self.url}/_emulator/google/request_status/{request_id}", timeout=5
        )
        return response.json()["failed"]


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    with running_emulator() as url:
        yield url


@pytest.fixture
def emulator(emulator_url: str) -> Iterator[EmulatorControl]:
    control = EmulatorControl(emulator_url)
    control.reset()
    yield control
    control.session.close()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch, platform_home: Path) -> str:
    """The destination's credential, set for this test only."""
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    return TOKEN


def destination_config(
    name: str, base_url: str | None, mode: str = "live", **overrides: Any
) -> DestinationConfig:
    """A destination pointed at the emulator, with in-run retries that don't wait long."""
    settings = {**SETTINGS[name], **overrides.pop("settings", {})}
    fields: dict[str, Any] = {
        "name": name,
        "platform": name,
        "mode": mode,
        "base_url": f"{base_url}/{PREFIX[name]}" if base_url else None,
        "settings": settings,
        "credentials": {"access_token": TOKEN_VARIABLE},
        "timeout_seconds": 2.0,
        "in_run_attempts": 3,
        "max_in_run_wait_seconds": 0.5,
        "retry_backoff_seconds": 0.01,
    }
    fields.update(overrides)
    return DestinationConfig(**fields)


def deliver(
    engine: Engine,
    config: DestinationConfig,
    frame: pd.DataFrame,
    outbox: Path,
    *,
    hour: datetime = HOUR,
    sleep: Callable[[float], None] | None = None,
    chunk_rows: int | None = None,
) -> HourDelivery:
    """Deliver one hour as the delivery asset does, with a fresh keep-alive session
    (`chunk_rows` encodes the hour in smaller chunks than the asset does)."""
    session = new_session()
    try:
        deliverer = HourDeliverer(
            engine,
            destination_for(config.platform, config.settings),
            config,
            session,
            outbox,
            sleep=sleep or (lambda seconds: None),
            **({"chunk_rows": chunk_rows} if chunk_rows else {}),
        )
        return deliverer.deliver_hour(frame, hour, hour.strftime("%Y-%m-%d-%H:%M"))
    finally:
        session.close()


def outcomes(engine: Engine, destination: str) -> dict[str, tuple[str, str | None]]:
    """Each event's (status, reason) in the delivery log."""
    query = sa.select(
        delivery_events.c.event_id, delivery_events.c.status, delivery_events.c.reason
    ).where(delivery_events.c.destination == destination)
    with engine.connect() as conn:
        return {r.event_id: (r.status, r.reason) for r in conn.execute(query)}


def batches(engine: Engine, destination: str) -> list[dict[str, Any]]:
    """The delivery log's batch rows (one per attempt), oldest first, ids parsed."""
    query = (
        sa.select(delivery_batches)
        .where(delivery_batches.c.destination == destination)
        .order_by(delivery_batches.c.id)
    )
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    for row in rows:
        row["event_ids"] = orjson.loads(row["event_ids"])
    return rows


#: The partition key of `HOUR`.
KEY = HOUR.strftime("%Y-%m-%d-%H:%M")


@dg.asset(name="resolved_conversions", partitions_def=hourly_partitions, backfill_policy=single_run)
def resolved_conversions() -> pd.DataFrame:
    """Stands in for the identity stage: its partition is written to the IO manager's file."""
    raise AssertionError("not materialised in these tests")


def write_resolved_hour(settings: Settings, frame: pd.DataFrame) -> None:
    """`HOUR` of the resolved conversions where the IO manager reads it."""
    path = settings.partitions_dir / "resolved_conversions" / f"{KEY}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def materialize_delivery(
    settings: Settings, config: DestinationConfig, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """The `delivery/<name>` asset of `config`, for `HOUR`, in a real run on `instance`."""
    asset = build_delivery_asset(config)
    return dg.materialize(
        [resolved_conversions, asset],
        selection=[asset.key],
        partition_key=KEY,
        resources=resources_from_settings(settings),
        instance=instance,
        raise_on_error=False,
    )
