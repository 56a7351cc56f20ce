"""Meta Conversions API destination, over real HTTP to the local emulator.

Scope: the request body for representative events equals Meta's documented shape field by
field (Unix seconds, SHA-256 of each normalised identifier with the phone as digits only,
IP / user agent / fbc / fbp in clear, fbc derived from fbclid, custom data and contents),
event-name mapping (standard, custom, page view only where enabled, overrides), Limited
Data Use, test_event_code in validate mode, batching at 1,000 and 1,001, and events Meta
can't take (no user agent, no consent) kept back with the reason.
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


def test_body_is_metas_documented_shape(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of(
        [
            record("m-1"),
            record(
                "m-2",
                event_name="lead",
                fbc="fb.1.1700000000000.from-cookie",
                value=None,
                currency=None,
                items=None,
                order_id=None,
                user_agent='Agent "quoted" \\ back',
            ),
        ]
    )
    report = deliver(engine, destination_config("meta_capi", emulator.url), frame, tmp_path)
    assert report.delivered == 2 and report.requests == 1

    request = emulator.requests("meta")[-1]
    assert request["path"] == "/meta/v24.0/123456789012345/events"
    body = request["body"]
    assert set(body) == {"data"}  # no test_event_code in live mode, no token in the body
    purchase, lead = body["data"]
    event_time = int((HOUR + timedelta(minutes=10)).timestamp())
    assert purchase == {
        "event_name": "Purchase",
        "event_time": event_time,
        "event_id": "m-1",
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout/thanks",
        "user_data": {
            "em": [sha("ana.maria@gmail.com")],  # trimmed, lowercased, dots kept for Meta
            "ph": [sha("14155550132")],  # E.164 digits only, no +
            "fn": [sha("ana")],
            "ln": [sha("obrien")],
            "ct": [sha("sanfrancisco")],
            "st": [sha("ca")],
            "zp": [sha("94103")],
            "country": [sha("us")],
            "external_id": [sha("cust-42")],
            "client_ip_address": "198.51.100.7",
            "client_user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "fbc": f"fb.1.{event_time * 1000}.IwAR-test",
            "fbp": "fb.1.1772445720000.1234567890",
        },
        "custom_data": {
            "value": 129.9,
            "currency": "USD",
            "order_id": "order-m-1",
            "contents": [{"id": "sku-1", "quantity": 2, "item_price": 64.95}],
        },
    }
    assert isinstance(purchase["event_time"], int)
    assert lead["event_name"] == "Lead"
    assert lead["user_data"]["fbc"] == "fb.1.1700000000000.from-cookie"  # the cookie wins
    assert lead["user_data"]["client_user_agent"] == 'Agent "quoted" \\ back'
    assert "custom_data" not in lead
    assert emulator.accepted("meta") == {"m-1": 1, "m-2": 1}


def test_event_names_standard_custom_page_view_and_overrides(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of(
        [
            record("n-1", event_name="sign_up"),
            record("n-2", event_name="newsletter_signup"),
            record("n-3", event_name="page_view"),
            record("n-4", event_name="start_trial"),
        ]
    )
    config = destination_config(
        "meta_capi", emulator.url, event_names={"start_trial": "TrialStarted"}
    )
    deliver(engine, config, frame, tmp_path)
    names = {e["event_id"]: e["event_name"] for e in emulator.last_body("meta")["data"]}
    assert names == {
        "n-1": "CompleteRegistration",
        "n-2": "newsletter_signup",
        "n-4": "TrialStarted",
    }

    emulator.reset()
    with_page_views = destination_config("meta_capi", emulator.url, forward_page_view=True)
    deliver(engine, with_page_views, frame, tmp_path)  # only the page view is left to send
    sent = emulator.last_body("meta")["data"]
    assert [(e["event_id"], e["event_name"]) for e in sent] == [("n-3", "PageView")]


def test_limited_data_use_and_validate_mode_test_event_code(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config(
        "meta_capi",
        emulator.url,
        mode="validate",
        test_event_code="TEST4242",
        settings={"limited_data_use": True},
    )
    report = deliver(engine, config, frame_of([record("v-1")]), tmp_path)
    body = emulator.last_body("meta")
    assert body["test_event_code"] == "TEST4242"
    event = body["data"][0]
    assert event["data_processing_options"] == ["LDU"]
    assert event["data_processing_options_country"] == 0
    assert event["data_processing_options_state"] == 0
    assert report.delivered == 1
    assert outcomes(engine, "meta_capi")["v-1"][0] == "validated"

    # A validated event is not settled: the live run sends it for real.
    live = destination_config("meta_capi", emulator.url)
    assert deliver(engine, live, frame_of([record("v-1")]), tmp_path).delivered == 1
    assert "test_event_code" not in emulator.last_body("meta")
    assert outcomes(engine, "meta_capi")["v-1"][0] == "delivered"


def test_batches_at_1000_and_1001(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("meta_capi", emulator.url)
    report = deliver(engine, config, frame_of(many(1000, "a")), tmp_path)
    assert report.requests == 1 and report.delivered == 1000
    report = deliver(engine, config, frame_of(many(1001, "b")), tmp_path)
    assert report.requests == 2 and report.delivered == 1001
    sizes = [len(r["body"]["data"]) for r in emulator.requests("meta")]
    assert sizes == [1000, 1000, 1]
    accepted = emulator.accepted("meta")
    assert len(accepted) == 2001 and set(accepted.values()) == {1}


def test_events_meta_cannot_take_are_kept_back_with_the_reason(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of(
        [
            record("k-1"),
            record("k-2", user_agent=None),  # website events need client_user_agent
            record("k-3", consent_ad_user_data="denied"),  # no identifiers may be sent
            record("k-4", event_time=(HOUR - timedelta(days=8)).isoformat()),  # too old
        ]
    )
    report = deliver(engine, destination_config("meta_capi", emulator.url), frame, tmp_path)
    assert [e["event_id"] for e in emulator.last_body("meta")["data"]] == ["k-1"]
    log = outcomes(engine, "meta_capi")
    assert log["k-1"] == ("delivered", None)
    assert log["k-2"] == (
        "permanent",
        "invalid for meta_capi: website event without client_user_agent",
    )
    assert log["k-3"] == ("filtered", "no ad_user_data consent")
    assert log["k-4"][0] == "expired"
    assert (report.rejected_total, report.filtered, report.expired) == (1, 1, 1)


def test_a_backend_event_without_page_url_takes_the_configured_site_url(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config(
        "meta_capi", emulator.url, settings={"default_event_source_url": "https://shop.example/"}
    )
    frame = frame_of([record("b-1", page_url=None), record("b-2")])
    deliver(engine, config, frame, tmp_path)
    urls = {e["event_id"]: e["event_source_url"] for e in emulator.last_body("meta")["data"]}
    assert urls == {"b-1": "https://shop.example/", "b-2": "https://shop.example/checkout/thanks"}
