"""Snapchat Conversions API v3 destination, over real HTTP to the local emulator.

Scope: the request equals Snap's documented shape field by field (Unix seconds, every
user_data field SHA-256 hashed with the phone as digits only, IP / user agent / click id
in clear, WEB action source, custom data), event names (standard capitals, custom slots),
`/events/validate` in validate mode, batching at 2,000 and 2,001, the 37-day age limit,
and events Snap can't take (no match key, a purchase without value) kept back.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from conversion_platform_tests.delivery_support import (
    HOUR,
    EmulatorControl,
    deliver,
    destination_config,
    frame_of,
    many,
    outcomes,
    record,
    sha,
)

#: The emulator, its control client and the credential fixture.
pytest_plugins = ("conversion_platform_tests.delivery_support",)


def test_body_is_snaps_documented_shape(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of(
        [
            record("s-1"),
            record("s-2", event_name="lead", value=None, currency=None, items=None),
            record("s-3", event_name="newsletter_signup", value=None, currency=None, items=None),
        ]
    )
    report = deliver(engine, destination_config("snapchat", emulator.url), frame, tmp_path)
    assert report.delivered == 3
    request = emulator.requests("snapchat")[-1]
    assert request["path"] == "/snapchat/v3/3f1c2a9e-0d4b-4c8e-9a51-6b7d2e0f4a10/events"
    purchase, lead, custom = request["body"]["data"]
    assert purchase == {
        "event_name": "PURCHASE",
        "event_time": int((HOUR + timedelta(minutes=10)).timestamp()),
        "event_id": "s-1",
        "action_source": "WEB",
        "event_source_url": "https://shop.example/checkout/thanks",
        "user_data": {
            "em": [sha("ana.maria@gmail.com")],
            "ph": [sha("14155550132")],  # digits only, no +
            "fn": [sha("ana")],
            "ln": [sha("obrien")],
            "ct": [sha("sanfrancisco")],
            "st": [sha("ca")],
            "zp": [sha("94103")],
            "country": [sha("us")],
            "external_id": [sha("cust-42")],
            "client_ip_address": "198.51.100.7",
            "client_user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "sc_click_id": "sc-click-1",
        },
        "custom_data": {
            "value": 129.9,
            "currency": "USD",
            "order_id": "order-s-1",
            "contents": [{"id": "sku-1", "quantity": 2, "item_price": 64.95}],
        },
    }
    assert lead["event_name"] == "CUSTOM_EVENT_1"
    assert custom["event_name"] == "CUSTOM_EVENT_5"
    assert emulator.accepted("snapchat") == {"s-1": 1, "s-2": 1, "s-3": 1}


def test_validate_mode_uses_the_validate_endpoint(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("snapchat", emulator.url, mode="validate")
    report = deliver(engine, config, frame_of([record("v-1")]), tmp_path)
    assert report.delivered == 1
    assert emulator.stats("snapchat")["validate_requests"] == 1
    assert emulator.stats("snapchat")["events_accepted"] == 0
    assert outcomes(engine, "snapchat")["v-1"][0] == "validated"


def test_batches_at_2000_and_2001(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("snapchat", emulator.url)
    assert deliver(engine, config, frame_of(many(2001, "b")), tmp_path).requests == 2
    assert [len(r["body"]["data"]) for r in emulator.requests("snapchat")] == [2000, 1]
    assert len(emulator.accepted("snapchat")) == 2001


def test_events_snap_cannot_take_are_kept_back(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    no_key = dict(
        email=None, phone=None, external_id=None, sccid=None, client_ip=None, event_name="lead"
    )
    frame = frame_of(
        [
            record("k-1"),
            record("k-2", **no_key),
            record("k-3", value=None),  # PURCHASE needs value and currency
            record("k-4", event_time=(HOUR - timedelta(days=38)).isoformat()),
            record("k-5", event_time=(HOUR - timedelta(days=30)).isoformat()),
        ]
    )
    report = deliver(engine, destination_config("snapchat", emulator.url), frame, tmp_path)
    log = outcomes(engine, "snapchat")
    assert log["k-1"][0] == log["k-5"][0] == "delivered"
    assert log["k-2"][0] == "permanent" and "no key to match" in (log["k-2"][1] or "")
    assert log["k-3"] == ("permanent", "invalid for snapchat: PURCHASE without value and currency")
    assert log["k-4"][0] == "expired"
    assert report.expired == 1 and report.rejected_total == 2
