"""Google Ads destinations (Data Manager API, and legacy uploadClickConversions), over real
HTTP to the local emulator.

Scope: the ingest request equals the documented shape field by field (RFC 3339 timestamps,
the Google email variant, phone E.164 with `+`, address names hashed and region / postal
code in clear, one click id, consent enums, one destination per conversion action with
events pointing at theirs, `encoding: HEX`, `validateOnly` in validate mode); batching at
2,000 and 2,001; the asynchronous per-event status (request recorded `pending_status`,
then polled to delivered, rejected, or unconfirmed on a partial success, and left pending
while Google is still processing); fast fail naming an event (set aside, the rest sent
again); and the legacy API's body, its 5-identifier limit, partial failures per index and
TOO_RECENT retries.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from conversion_platform.destinations import request_status
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.destinations.http_client import new_session
from conversion_platform.destinations.registry import destination_for
from conversion_platform.destinations.request_status import (
    StatusPolling,
    resolve_pending_requests,
)
from conversion_platform_tests.delivery_support import (
    HOUR,
    EmulatorControl,
    batches,
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


def poll(engine: Engine, config: DestinationConfig) -> StatusPolling:
    session = new_session()
    try:
        destination = destination_for(config.platform, config.settings)
        return resolve_pending_requests(engine, destination, config, session)
    finally:
        session.close()


def test_ingest_body_is_the_documented_shape(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of(
        [
            record("g-1"),
            record(
                "g-2",
                event_name="lead",
                gclid=None,
                gbraid="gbraid-1",
                wbraid="wbraid-1",
                first_name=None,
                order_id=None,
                value=None,
                currency=None,
                items=None,
                consent_ad_personalization="denied",
            ),
        ]
    )
    config = destination_config("google_ads", emulator.url, event_names={"purchase": "700000002"})
    report = deliver(engine, config, frame, tmp_path)
    assert report.awaiting_status == 2 and report.requests == 1

    request = emulator.requests("google")[-1]
    assert request["path"] == "/google/v1/events:ingest"
    body = request["body"]
    assert body["encoding"] == "HEX" and "validateOnly" not in body
    account = {"accountType": "GOOGLE_ADS", "accountId": "1234567890"}
    assert body["destinations"] == [
        {
            "reference": "700000002",
            "operatingAccount": account,
            "productDestinationId": "700000002",
        },
        {
            "reference": "700000001",
            "operatingAccount": account,
            "productDestinationId": "700000001",
        },
    ]
    purchase, lead = body["events"]
    assert purchase == {
        "destinationReferences": ["700000002"],
        "transactionId": "order-g-1",
        "eventTimestamp": (HOUR + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "WEB",
        "userData": {
            "userIdentifiers": [
                {"emailAddress": sha("anamaria@gmail.com")},  # Google: gmail dots removed
                {"phoneNumber": sha("+14155550132")},  # E.164 with +
                {
                    "address": {
                        "givenName": sha("ana"),
                        "familyName": sha("obrien"),
                        "regionCode": "US",
                        "postalCode": "94103",
                    }
                },
            ]
        },
        "adIdentifiers": {"gclid": "Cj0KCQ-test-gclid"},
        "eventDeviceInfo": {
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "ipAddress": "198.51.100.7",
        },
        "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
        "conversionValue": 129.9,
        "currency": "USD",
    }
    assert lead["destinationReferences"] == ["700000001"]  # the default conversion action
    assert lead["transactionId"] == "g-2"  # no order id: the event id
    assert lead["adIdentifiers"] == {"gbraid": "gbraid-1"}  # one click id an event
    # No first name: no address identifier (Google takes an address only whole).
    assert [next(iter(i)) for i in lead["userData"]["userIdentifiers"]] == [
        "emailAddress",
        "phoneNumber",
    ]
    assert lead["consent"] == {
        "adUserData": "CONSENT_GRANTED",
        "adPersonalization": "CONSENT_DENIED",
    }
    assert "conversionValue" not in lead


def test_async_status_is_polled_into_each_events_final_outcome(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("google_ads", emulator.url, batch_size=3)
    # Request 1 (3 events): all fine. Request 2: one event fails processing later.
    emulator.script("google", fail_event_ids=["s-0004"], status_processing_polls=1)
    report = deliver(engine, config, frame_of(many(6, "s")), tmp_path)
    assert report.awaiting_status == 6 and report.delivered == 0
    assert {s for s, _ in outcomes(engine, "google_ads").values()} == {"pending_status"}
    rows = batches(engine, "google_ads")
    assert [r["status"] for r in rows] == ["pending_status", "pending_status"]
    assert all(r["platform_request_id"] for r in rows)

    # First poll: Google is still processing both; nothing changes.
    first = poll(engine, config)
    assert (first.asked, first.processing, first.resolved) == (2, 2, 0)
    emulator.script("google", status_processing_polls=0)

    second = poll(engine, config)
    assert (second.resolved, second.events_delivered, second.events_unconfirmed) == (2, 3, 3)
    log = outcomes(engine, "google_ads")
    assert {e: log[e][0] for e in ("s-0000", "s-0001", "s-0002")} == dict.fromkeys(
        ("s-0000", "s-0001", "s-0002"), "delivered"
    )
    # Google reports counts per reason, not which event failed: the request's events are
    # recorded unconfirmed with the counts, and never sent again.
    status, reason = log["s-0004"]
    assert status == "unconfirmed"
    assert reason is not None and "PARTIAL_SUCCESS: 1 of 3" in reason
    assert "PROCESSING_ERROR_REASON_INVALID_EVENT" in reason
    rows = batches(engine, "google_ads")
    assert [r["status"] for r in rows] == ["delivered", "partial"]
    assert all(r["resolved_at_us"] for r in rows)
    assert emulator.google_failed(rows[1]["platform_request_id"]) == {
        "s-0004": "PROCESSING_ERROR_REASON_INVALID_EVENT"
    }

    # Nothing is pending any more, and a re-run sends nothing.
    assert poll(engine, config).asked == 0
    assert deliver(engine, config, frame_of(many(6, "s")), tmp_path).sent == 0


def test_a_request_google_fails_whole_rejects_each_event(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("google_ads", emulator.url)
    emulator.script(
        "google",
        fail_event_ids=["f-0000", "f-0001"],
        fail_reason="PROCESSING_ERROR_REASON_GCLID_NOT_FOUND",
    )
    deliver(engine, config, frame_of(many(2, "f")), tmp_path)
    polled = poll(engine, config)
    assert polled.events_rejected == 2
    log = outcomes(engine, "google_ads")
    assert log["f-0000"] == (
        "permanent",
        "Google FAILED: PROCESSING_ERROR_REASON_GCLID_NOT_FOUND x2",
    )


def test_batches_at_2000_and_2001(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("google_ads", emulator.url)
    assert deliver(engine, config, frame_of(many(2000, "a")), tmp_path).requests == 1
    assert deliver(engine, config, frame_of(many(2001, "b")), tmp_path).requests == 2
    assert [len(r["body"]["events"]) for r in emulator.requests("google")] == [2000, 2000, 1]
    polled = poll(engine, config)
    assert polled.events_delivered == 4001
    accepted = emulator.accepted("google")
    assert len(accepted) == 4001 and set(accepted.values()) == {1}


def test_fast_fail_naming_an_event_sets_it_aside_and_sends_the_rest(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    # A stored country that is not ISO alpha-2 passes our checks but not Google's: the
    # request fails fast, naming events[1].
    frame = frame_of([record("x-1"), record("x-2"), record("x-3")])
    frame.loc[frame["event_id"] == "x-2", "country"] = "n4"
    config = destination_config("google_ads", emulator.url)
    report = deliver(engine, config, frame, tmp_path)
    log = outcomes(engine, "google_ads")
    assert log["x-2"][0] == "permanent"
    assert "INVALID_COUNTRY_CODE" in (log["x-2"][1] or "")
    assert log["x-1"][0] == log["x-3"][0] == "pending_status"
    rows = batches(engine, "google_ads")
    assert [(r["status"], r["event_ids"]) for r in rows] == [
        ("permanent", ["x-1", "x-2", "x-3"]),
        ("pending_status", ["x-1", "x-3"]),
    ]
    assert report.rejected_total == 1
    poll(engine, config)
    assert emulator.accepted("google") == {"order-x-1": 1, "order-x-3": 1}


def test_validate_only_mode(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("google_ads", emulator.url, mode="validate")
    report = deliver(engine, config, frame_of([record("v-1")]), tmp_path)
    assert report.delivered == 1
    assert outcomes(engine, "google_ads")["v-1"][0] == "validated"
    assert emulator.stats("google")["validate_requests"] == 1
    assert emulator.stats("google")["events_accepted"] == 0


# --- legacy uploadClickConversions ---------------------------------------------------------


def legacy(url: str, **overrides: object) -> DestinationConfig:
    return destination_config(
        "google_ads",
        url,
        settings={"api": "legacy", "api_version": "v24"},
        event_names={"purchase": "700000002"},
        **overrides,
    )


def test_legacy_body_is_the_documented_shape(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of([record("l-1"), record("l-2", gclid=None, email=None, phone=None)])
    report = deliver(engine, legacy(emulator.url), frame, tmp_path)
    assert report.delivered == 2
    request = emulator.requests("google")[-1]
    assert request["path"] == "/google/v24/customers/1234567890:uploadClickConversions"
    body = request["body"]
    assert body["partialFailure"] is True and "validateOnly" not in body
    first, second = body["conversions"]
    assert first == {
        "conversionAction": "customers/1234567890/conversionActions/700000002",
        "conversionDateTime": (HOUR + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S+00:00"),
        "gclid": "Cj0KCQ-test-gclid",
        "conversionValue": 129.9,
        "currencyCode": "USD",
        "orderId": "order-l-1",
        "userIdentifiers": [
            {"hashedEmail": sha("anamaria@gmail.com")},
            {"hashedPhoneNumber": sha("+14155550132")},
            {
                "addressInfo": {
                    "hashedFirstName": sha("ana"),
                    "hashedLastName": sha("obrien"),
                    "city": "sanfrancisco",
                    "state": "ca",
                    "countryCode": "US",
                    "postalCode": "94103",
                }
            },
        ],
        "userIpAddress": "198.51.100.7",
        "consent": {"adUserData": "GRANTED", "adPersonalization": "GRANTED"},
    }
    assert "gclid" not in second and len(second["userIdentifiers"]) == 1
    assert len(first["userIdentifiers"]) <= 5
    assert emulator.accepted("google") == {"order-l-1": 1, "order-l-2": 1}


def test_legacy_partial_failure_rejects_only_the_events_named(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    emulator.script("google", fail_event_ids=["l-0002"])
    records = [dict(r, order_id=r["event_id"]) for r in many(4, "l")]
    report = deliver(engine, legacy(emulator.url), frame_of(records), tmp_path)
    assert report.requests == 1 and report.delivered == 3
    log = outcomes(engine, "google_ads")
    assert log["l-0002"] == (
        "permanent",
        "Google conversionUploadError.CLICK_NOT_FOUND: Rejected by the emulator's failure script.",
    )
    assert [log[f"l-000{i}"][0] for i in (0, 1, 3)] == ["delivered"] * 3
    assert batches(engine, "google_ads")[0]["status"] == "partial"
    # A re-run sends nothing: every event is settled.
    assert deliver(engine, legacy(emulator.url), frame_of(records), tmp_path).sent == 0


def test_legacy_too_recent_conversions_are_retried_later(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    emulator.script("google", fail_event_ids=["t-0001"], fail_reason="TOO_RECENT_CONVERSION_ACTION")
    records = [dict(r, order_id=r["event_id"]) for r in many(2, "t")]
    report = deliver(engine, legacy(emulator.url), frame_of(records), tmp_path)
    log = outcomes(engine, "google_ads")
    assert log["t-0000"][0] == "delivered"
    assert log["t-0001"][0] == "retryable" and "TOO_RECENT" in (log["t-0001"][1] or "")
    assert report.pending == 1 and report.retry_after_seconds == 6 * 3600
    emulator.script("google", fail_event_ids=[])
    again = deliver(engine, legacy(emulator.url), frame_of(records), tmp_path)
    assert again.sent == 1 and again.delivered == 1
    assert emulator.accepted("google") == {"t-0000": 1, "t-0001": 1}


def test_legacy_conversions_without_click_id_or_identifier_are_not_sent(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of(
        [
            record(
                "u-1",
                gclid=None,
                email=None,
                phone=None,
                first_name=None,
                last_name=None,
                city=None,
                region=None,
                postal_code=None,
                country=None,
            )
        ]
    )
    report = deliver(engine, legacy(emulator.url), frame, tmp_path)
    assert report.sent == 0 and report.requests == 0
    assert outcomes(engine, "google_ads")["u-1"] == (
        "permanent",
        "invalid for google_ads: needs a gclid, gbraid, wbraid or user identifiers",
    )


def test_verdicts_recorded_before_a_round_fails_are_kept(
    emulator: EmulatorControl,
    engine: Engine,
    token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verdicts are committed a group at a time: when something fails half-way through a
    polling round, the requests already recorded stay resolved, and the rest stay pending
    for the next round."""
    config = destination_config("google_ads", emulator.url, batch_size=3)
    emulator.script("google", status_processing_polls=0)
    deliver(engine, config, frame_of(many(6, "f")), tmp_path)
    monkeypatch.setattr(request_status, "RECORD_EVERY", 1)
    destination = destination_for(config.platform, config.settings)
    classify = destination.classify_status
    answers: list[int] = []

    def classify_then_fail(status: int, body: bytes) -> object:
        answers.append(status)
        if len(answers) == 2:
            raise RuntimeError("the second answer could not be read")
        return classify(status, body)

    monkeypatch.setattr(destination, "classify_status", classify_then_fail)
    session = new_session()
    try:
        with pytest.raises(RuntimeError, match="second answer"):
            resolve_pending_requests(engine, destination, config, session)
    finally:
        session.close()
    assert [r["status"] for r in batches(engine, "google_ads")] == ["delivered", "pending_status"]
    log = outcomes(engine, "google_ads")
    assert {log[f"f-{i:04d}"][0] for i in range(3)} == {"delivered"}
    assert {log[f"f-{i:04d}"][0] for i in range(3, 6)} == {"pending_status"}
    # The next round resolves the rest.
    assert poll(engine, config).resolved == 1
