"""Consent from identity resolution through delivery, over real HTTP to the emulator.

Scope: an event without `ad_user_data` consent is not linked or enriched by identity
resolution, carries no identifier to any destination, and reaches only destinations
that accept consent-denied events (never Meta); with consent required, unknown counts
as denied in identity and delivery alike; enriched identifiers of consented events do
reach the platform; identity's consent rule and delivery's are the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pandas as pd
import pyarrow as pa
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.destinations.base import (
    BatchOutcome,
    Destination,
    EncodedEvents,
    EventBatch,
    HttpRequest,
    identifiers_allowed,
)
from conversion_platform.destinations.config import MODE_DRY_RUN, MODE_LIVE, DestinationConfig
from conversion_platform.destinations.delivery import IDENTIFIER_COLUMNS, HourDeliverer
from conversion_platform.destinations.meta import MetaConversionsApi
from conversion_platform.emulator.server import running_emulator
from conversion_platform.store.tables import delivery_events
from conversion_platform.transform.consent import personal_data_allowed
from conversion_platform.transform.identity import resolve_hours
from conversion_platform.transform.identity_rules import IdentityRules
from conversion_platform.transform.normalise import hash_email
from conversion_platform_tests.identity_helpers import frame_of, row

TOKEN_VARIABLE = "CP_TEST_META_ACCESS_TOKEN"


class ConsentFlagDestination(Destination):
    """A platform that takes consent-denied events with its consent flag set (dry run only)."""

    platform = "flagging_test_platform"
    max_batch_size = 100
    max_event_age = timedelta(days=30)
    accepts_consent_denied_events = True
    standard_event_names: ClassVar[dict[str, str]] = {}

    def encode_events(
        self, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        pieces = []
        for record in frame.astype(object).where(frame.notna(), None).to_dict("records"):
            identifiers = {c: record[c] for c in IDENTIFIER_COLUMNS if record.get(c) is not None}
            payload = {
                "event_id": record["event_id"],
                "consent": {"ad_user_data": record["consent_ad_user_data"]},
                "user": identifiers,
            }
            pieces.append(orjson.dumps(payload).decode())
        return EncodedEvents(pa.array(pieces, type=pa.large_string()), [None] * len(pieces))

    def build_request(
        self,
        batch: EventBatch,
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        return HttpRequest(
            "POST", "http://127.0.0.1:9/unused", b'{"events":' + batch.json_array() + b"}"
        )

    def classify_response(
        self, status_code: int, body: bytes, headers: dict[str, str], batch: EventBatch
    ) -> BatchOutcome:
        raise AssertionError("dry run only")


@pytest.fixture
def emulator_url() -> Iterator[str]:
    with running_emulator() as url:
        yield url


def _hour() -> datetime:
    # Meta refuses events older than 7 days: the emulator checks against the clock.
    return (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)


def _traffic(hour: datetime) -> list[dict[str, Any]]:
    browser = {"client_ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (test)"}
    return [
        row(hour + timedelta(minutes=1), events.PAGE_VIEW, mpid="d1", fbclid="IwAR-ad", **browser),
        row(
            hour + timedelta(minutes=2), events.LEAD, mpid="d1", email="ann@example.com", **browser
        ),
        # later, pixel-only purchases on the same device
        row(hour + timedelta(minutes=30), event_id="granted", mpid="d1", **browser),
        row(
            hour + timedelta(minutes=31),
            event_id="denied",
            consent=events.CONSENT_DENIED,
            mpid="d1",
            email="ann@example.com",
            gclid="Cj0-denied",
            **browser,
        ),
        row(
            hour + timedelta(minutes=32),
            event_id="unknown",
            consent=events.CONSENT_UNKNOWN,
            mpid="d1",
            **browser,
        ),
    ]


def _resolve(
    engine: Engine, hour: datetime, traffic: list[dict[str, Any]], consent_required: bool
) -> pd.DataFrame:
    return resolve_hours(engine, frame_of(traffic), [hour], IdentityRules(), consent_required).frame


def _meta_config(emulator_url: str) -> DestinationConfig:
    return DestinationConfig(
        name="meta_capi",
        platform="meta_capi",
        mode=MODE_LIVE,
        base_url=f"{emulator_url}/meta",
        settings={"pixel_id": "1234567890", "api_version": "v24.0"},
        credentials={"access_token": TOKEN_VARIABLE},
        in_run_attempts=1,
    )


def _sent_to_meta(emulator_url: str) -> dict[str, dict[str, Any]]:
    answer = requests.get(f"{emulator_url}/_emulator/requests/meta?limit=50", timeout=10).json()
    sent: dict[str, dict[str, Any]] = {}
    for request in answer["requests"]:
        body = request["body"]
        document = orjson.loads(body) if isinstance(body, str) else body
        for event in document.get("data", []):
            sent[event["event_id"]] = event
    return sent


@pytest.mark.parametrize("consent_required", [False, True])
def test_meta_gets_enriched_consented_events_only(
    engine: Engine,
    settings,  # type: ignore[no-untyped-def]
    emulator_url: str,
    monkeypatch: pytest.MonkeyPatch,
    consent_required: bool,
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "test-token")
    hour = _hour()
    traffic = _traffic(hour)
    frame = _resolve(engine, hour, traffic, consent_required)
    resolved = frame.set_index("event_id")
    assert resolved.loc["granted", "email_sha256"] == hash_email("ann@example.com")[0]
    assert resolved.loc["granted", "fbclid"] == "IwAR-ad"
    assert pd.isna(resolved.loc["denied", "person_id"])
    assert pd.isna(resolved.loc["denied", "enriched_fields"])

    deliverer = HourDeliverer(
        engine,
        MetaConversionsApi(),
        _meta_config(emulator_url),
        requests.Session(),
        settings.outbox_dir,
        consent_required=consent_required,
    )
    report = deliverer.deliver_hour(frame, hour, hour.strftime("%Y-%m-%d-%H:%M"))
    sent = _sent_to_meta(emulator_url)
    expected = {"granted"} if consent_required else {"granted", "unknown"}
    assert set(sent) - {traffic[1]["event_id"]} == expected  # the lead is sent too
    assert report.filtered == (2 if consent_required else 1)
    user = sent["granted"]["user_data"]
    assert user["em"] == [hash_email("ann@example.com")[0]]  # from the person, not the event
    assert user["fbc"].endswith(".IwAR-ad")
    with engine.connect() as conn:
        status, reason = conn.execute(
            sa.select(delivery_events.c.status, delivery_events.c.reason).where(
                delivery_events.c.event_id == "denied"
            )
        ).one()
    assert status == "filtered" and "consent" in reason


def test_a_platform_taking_denied_events_gets_them_without_identifiers(
    engine: Engine,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    hour = _hour()
    frame = _resolve(engine, hour, _traffic(hour), consent_required=False)
    config = DestinationConfig(name="flagging", platform="flagging", mode=MODE_DRY_RUN)
    deliverer = HourDeliverer(
        engine, ConsentFlagDestination(), config, requests.Session(), settings.outbox_dir
    )
    report = deliverer.deliver_hour(frame, hour, "hour")
    lines = Path(report.outbox_file or "").read_bytes().splitlines()
    payloads = {e["event_id"]: e for line in lines for e in orjson.loads(line)["events"]}
    assert payloads["denied"]["user"] == {}
    assert payloads["denied"]["consent"] == {"ad_user_data": "denied"}
    assert payloads["granted"]["user"]["email_sha256"] == hash_email("ann@example.com")[0]
    assert payloads["granted"]["user"]["mpid"] == "d1"


@pytest.mark.parametrize("consent_required", [False, True])
def test_identity_and_delivery_share_one_consent_rule(consent_required: bool) -> None:
    frame = pd.DataFrame(
        {"consent_ad_user_data": ["granted", "denied", "unknown", None]}, dtype="string"
    )
    assert (
        personal_data_allowed(frame, consent_required).tolist()
        == identifiers_allowed(frame, consent_required).tolist()
    )
