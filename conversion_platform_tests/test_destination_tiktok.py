"""TikTok Events API 2.0 destination, over real HTTP to the local emulator.

Scope: the request equals TikTok's documented shape field by field (`Access-Token` header,
`event_source` / `event_source_id` at the top, Unix seconds, email / phone (E.164 with `+`)
/ external id / names / zip hashed, city / state / country / ttclid / ttp / IP / user agent
in clear, properties with contents, page), event names, `test_event_code` in validate
mode, batching at 1,000 and 1,001, and events without consent sent without identifiers.
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


def test_body_is_tiktoks_documented_shape(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of([record("t-1"), record("t-2", event_name="wishlist_add", items=None)])
    report = deliver(engine, destination_config("tiktok", emulator.url), frame, tmp_path)
    assert report.delivered == 2
    request = emulator.requests("tiktok")[-1]
    assert request["path"] == "/tiktok/open_api/v1.3/event/track/"
    body = request["body"]
    assert body["event_source"] == "web"
    assert body["event_source_id"] == "CTESTPIXEL0000000001"
    assert "test_event_code" not in body
    purchase, custom = body["data"]
    assert purchase == {
        "event": "Purchase",
        "event_time": int((HOUR + timedelta(minutes=10)).timestamp()),
        "event_id": "t-1",
        "user": {
            "email": sha("ana.maria@gmail.com"),
            "phone": sha("+14155550132"),  # E.164 with +
            "external_id": sha("cust-42"),
            "first_name": sha("ana"),
            "last_name": sha("obrien"),
            "city": "sanfrancisco",  # not hashed
            "state": "ca",
            "country": "us",
            "zip_code": sha("94103"),  # hashed
            "ttclid": "E.C.P.test-ttclid",
            "ttp": "ttp-cookie-1",
            "ip": "198.51.100.7",
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        },
        "properties": {
            "value": 129.9,
            "currency": "USD",
            "order_id": "order-t-1",
            "content_type": "product",
            "contents": [{"content_id": "sku-1", "quantity": 2, "price": 64.95}],
        },
        "page": {
            "url": "https://shop.example/checkout/thanks",
            "referrer": "https://www.google.com/",
        },
    }
    assert custom["event"] == "wishlist_add"  # a custom event keeps its name
    assert "content_type" not in custom["properties"]
    assert emulator.accepted("tiktok") == {"t-1": 1, "t-2": 1}


def test_validate_mode_sends_a_test_event_code(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("tiktok", emulator.url, mode="validate")
    deliver(engine, config, frame_of([record("v-1")]), tmp_path)
    assert emulator.last_body("tiktok")["test_event_code"] == "TEST_VALIDATE"
    assert outcomes(engine, "tiktok")["v-1"][0] == "validated"


def test_batches_at_1000_and_1001(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("tiktok", emulator.url)
    assert deliver(engine, config, frame_of(many(1001, "b")), tmp_path).requests == 2
    assert [len(r["body"]["data"]) for r in emulator.requests("tiktok")] == [1000, 1]
    assert set(emulator.accepted("tiktok").values()) == {1}


def test_consent_is_applied_per_event_when_an_hour_is_encoded_in_chunks(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    """The chunks are taken from the hour's frame as they are encoded: each event keeps or
    loses its identifiers by its own consent, whichever chunk it falls in, and the order
    of the hour is kept."""
    records = many(11, "m")
    denied = {1, 4, 5, 9}
    for i in denied:
        records[i]["consent_ad_user_data"] = "denied"
    records[3]["event_name"] = "page_view"  # not forwarded: later chunks shift
    config = destination_config("tiktok", emulator.url, batch_size=2)
    report = deliver(engine, config, frame_of(records), tmp_path, chunk_rows=3)
    assert report.sent == 10
    sent = [e for r in emulator.requests("tiktok") for e in r["body"]["data"]]
    assert [e["event_id"] for e in sent] == [r["event_id"] for i, r in enumerate(records) if i != 3]
    for event in sent:
        position = int(event["event_id"].removeprefix("m-"))
        if position in denied:
            assert event["user"] == {"country": "us"}
        else:
            assert event["user"]["email"] and event["user"]["external_id"]


def test_events_without_consent_go_without_identifiers(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of([record("c-1", consent_ad_user_data="denied")])
    deliver(engine, destination_config("tiktok", emulator.url), frame, tmp_path)
    event = emulator.last_body("tiktok")["data"][0]
    assert event["user"] == {"country": "us"}  # a country is not a personal identifier
    assert event["properties"]["value"] == 129.9
    assert outcomes(engine, "tiktok")["c-1"][0] == "delivered"

    # Configured to receive nothing without consent: the event is filtered instead.
    emulator.reset()
    strict = destination_config("tiktok", emulator.url, send_without_consent=False)
    deliver(engine, strict, frame_of([record("c-2", consent_ad_user_data="denied")]), tmp_path)
    assert outcomes(engine, "tiktok")["c-2"] == ("filtered", "no ad_user_data consent")
    assert emulator.stats("tiktok")["requests"] == 0
