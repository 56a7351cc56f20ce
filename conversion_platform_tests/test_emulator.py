"""Tests of the local ad-platform emulator (`conversion_platform.emulator`), over real HTTP.

Scope: every request goes through `requests` to an emulator started on loopback by
`running_emulator()`. For each platform (Meta, Google Data Manager, Google Ads legacy
upload, TikTok, Snapchat) a valid request is accepted and counted by event id, and each
check refuses a bad request in that platform's own response format (unhashed identifier,
hashed plaintext, millisecond timestamp, too many events, too old an event, missing token,
...). The control API is covered too: failure scripts (500, 500, 200 sequences; 429 with
Retry-After; a delay past the client's timeout; errors with the platform's code;
`fail_event_ids`), the recent-requests view, reset, Google's asynchronous request status,
and the independence of two emulators. Request bodies are written by hand from the
platforms' documentation: nothing here imports the destination code.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests

from conversion_platform.emulator.server import running_emulator

NOW = int(time.time())
DAY = 86_400
CUSTOMER = "1234567890"
TIMEOUT = 5


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def ads_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S+00:00", time.gmtime(epoch))


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_emulator() as url:
        yield url


@pytest.fixture()
def emu(base_url: str) -> Iterator[Emulator]:
    client = Emulator(base_url)
    client.reset()
    yield client
    client.session.close()


class Emulator:
    """A thin client for the emulator's platform endpoints and control API."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url
        self.session = requests.Session()

    def reset(self) -> None:
        self.session.post(f"{self.url}/_emulator/reset", timeout=TIMEOUT).raise_for_status()

    def stats(self, platform: str) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/_emulator/stats", timeout=TIMEOUT)
        return response.json()[platform]

    def script(self, platform: str, **script: Any) -> dict[str, Any]:
        response = self.session.post(
            f"{self.url}/_emulator/{platform}/script", json=script, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text
        return response.json()

    def meta(self, body: Any, token: str | None = "tok", **kwargs: Any) -> requests.Response:
        params = {"access_token": token} if token else {}
        url = f"{self.url}/meta/v24.0/1234567890/events"
        return self.session.post(url, params=params, json=body, timeout=TIMEOUT, **kwargs)

    def google(self, body: Any, token: str | None = "tok") -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.url}/google/v1/events:ingest"
        return self.session.post(url, json=body, headers=headers, timeout=TIMEOUT)

    def google_status(self, request_id: str) -> requests.Response:
        url = f"{self.url}/google/v1/requestStatus:retrieve"
        headers = {"Authorization": "Bearer tok"}
        params = {"requestId": request_id}
        return self.session.get(url, params=params, headers=headers, timeout=TIMEOUT)

    def google_ads(
        self, body: Any, version: str = "v19", headers: dict[str, str] | None = None
    ) -> requests.Response:
        if headers is None:
            headers = {"Authorization": "Bearer tok", "developer-token": "dev"}
        url = f"{self.url}/google/{version}/customers/{CUSTOMER}:uploadClickConversions"
        return self.session.post(url, json=body, headers=headers, timeout=TIMEOUT)

    def tiktok(self, body: Any, token: str | None = "tok", **kwargs: Any) -> requests.Response:
        headers = {"Access-Token": token} if token else {}
        url = f"{self.url}/tiktok/open_api/v1.3/event/track/"
        return self.session.post(url, json=body, headers=headers, timeout=TIMEOUT, **kwargs)

    def snapchat(
        self, body: Any, token: str | None = "tok", validate: bool = False
    ) -> requests.Response:
        params = {"access_token": token} if token else {}
        suffix = "/validate" if validate else ""
        url = f"{self.url}/snapchat/v3/pixel-1/events{suffix}"
        return self.session.post(url, params=params, json=body, timeout=TIMEOUT)


# --- request builders (from each platform's documentation) ------------------------------


def meta_event(event_id: str, /, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": [sha("ana@example.com")],
            "ph": [sha("14155550100")],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0",
            "fbc": "fb.1.1700000000000.IwAR0abc",
            "fbp": "fb.1.1700000000000.123456789",
        },
        "custom_data": {"value": 42.5, "currency": "EUR"},
    }
    event.update(overrides)
    return event


def google_event(transaction_id: str, /, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "transactionId": transaction_id,
        "eventTimestamp": iso(NOW - 3600),
        "conversionValue": 42.5,
        "currency": "EUR",
        "eventSource": "WEB",
        "adIdentifiers": {"gclid": "Cj0KCQiA-test-gclid"},
        "userData": {
            "userIdentifiers": [
                {"emailAddress": sha("ana@example.com")},
                {"phoneNumber": sha("+14155550100")},
                {
                    "address": {
                        "givenName": sha("ana"),
                        "familyName": sha("lopez"),
                        "regionCode": "US",
                        "postalCode": "94110",
                    }
                },
            ]
        },
        "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
    }
    event.update(overrides)
    return event


def google_request(events: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "destinations": [
            {
                "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": CUSTOMER},
                "productDestinationId": "987654",
            }
        ],
        "events": events,
        "encoding": "HEX",
        **extra,
    }


def ads_conversion(order_id: str, /, **overrides: Any) -> dict[str, Any]:
    conversion: dict[str, Any] = {
        "gclid": "Cj0KCQiA-test-gclid",
        "conversionAction": f"customers/{CUSTOMER}/conversionActions/555",
        "conversionDateTime": ads_time(NOW - 3600),
        "conversionValue": 42.5,
        "currencyCode": "EUR",
        "orderId": order_id,
        "userIdentifiers": [{"hashedEmail": sha("ana@example.com")}],
        "consent": {"adUserData": "GRANTED", "adPersonalization": "GRANTED"},
    }
    conversion.update(overrides)
    return conversion


def tiktok_event(event_id: str, /, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "CompletePayment",
        "event_time": NOW - 60,
        "event_id": event_id,
        "user": {
            "email": sha("ana@example.com"),
            "phone": sha("+14155550100"),
            "external_id": sha("customer-1"),
            "ttclid": "E.C.P.test",
            "ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0",
        },
        "properties": {"value": 42.5, "currency": "EUR"},
        "page": {"url": "https://shop.example/thanks"},
    }
    event.update(overrides)
    return event


def tiktok_request(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"event_source": "web", "event_source_id": "CPIXEL123", "data": events}


def snap_event(event_id: str, /, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "PURCHASE",
        "event_time": NOW - 60,
        "event_id": event_id,
        "action_source": "WEB",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": [sha("ana@example.com")],
            "ph": [sha("14155550100")],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0",
            "sc_click_id": "click-1",
        },
        "custom_data": {"value": "42.5", "currency": "EUR", "order_id": "o-1"},
    }
    event.update(overrides)
    return event


def meta_error(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert {"message", "type", "code", "fbtrace_id"} <= set(error)
    return error


def google_error(response: requests.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    return error


# --- Meta --------------------------------------------------------------------------------


def test_meta_accepts_a_valid_batch_and_counts_by_event_id(emu: Emulator) -> None:
    response = emu.meta({"data": [meta_event("m-1"), meta_event("m-2")]})
    assert response.status_code == 200
    body = response.json()
    assert body["events_received"] == 2
    assert body["messages"] == []
    assert body["fbtrace_id"]
    emu.meta({"data": [meta_event("m-1")], "test_event_code": "TEST123"})
    stats = emu.stats("meta")
    assert stats["requests"] == 2
    assert stats["events_accepted"] == 3
    assert stats["accepted_by_event_id"] == {"m-1": 2, "m-2": 1}


def test_meta_accepts_form_encoded_data(emu: Emulator) -> None:
    form = {"data": orjson.dumps([meta_event("f-1")]).decode(), "access_token": "tok"}
    url = f"{emu.url}/meta/v24.0/1234567890/events"
    response = emu.session.post(url, data=form, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert emu.stats("meta")["accepted_by_event_id"] == {"f-1": 1}


def test_meta_unhashed_email_fails_the_whole_batch_naming_the_index(emu: Emulator) -> None:
    bad = meta_event("m-2", user_data={"em": "ana@example.com", "client_user_agent": "UA"})
    error = meta_error(emu.meta({"data": [meta_event("m-1"), bad]}))
    assert error["code"] == 100
    assert error["type"] == "OAuthException"
    assert "index 1" in error["error_user_msg"]
    assert "data[1].user_data.em" in error["error_user_msg"]
    assert emu.stats("meta")["events_accepted"] == 0


@pytest.mark.parametrize(
    ("user_data", "field"),
    [
        ({"client_user_agent": "UA", "client_ip_address": sha("203.0.113.7")}, "client_ip_address"),
        ({"client_user_agent": sha("UA")}, "client_user_agent"),
        ({"client_user_agent": "UA", "fbc": sha("fb.1.1.x")}, "fbc"),
        ({"client_user_agent": "UA", "fbc": "IwAR0abc"}, "fbc"),
        ({"client_user_agent": "UA", "ph": "+1 415 555 0100"}, "ph"),
        ({"client_user_agent": "UA", "external_id": "customer-1"}, "external_id"),
        ({"client_user_agent": "UA", "em": [sha("a").upper()]}, "em"),
    ],
)
def test_meta_refuses_wrongly_hashed_user_data(
    emu: Emulator, user_data: dict[str, Any], field: str
) -> None:
    error = meta_error(emu.meta({"data": [meta_event("m-1", user_data=user_data)]}))
    assert error["code"] == 100
    assert f"user_data.{field}" in error["error_user_msg"]


def test_meta_refuses_a_millisecond_event_time(emu: Emulator) -> None:
    error = meta_error(emu.meta({"data": [meta_event("m-1", event_time=NOW * 1000)]}))
    assert error["code"] == 100
    assert "milliseconds" in error["error_user_msg"]


def test_meta_refuses_an_event_older_than_seven_days(emu: Emulator) -> None:
    old = meta_event("m-2", event_time=NOW - 8 * DAY)
    error = meta_error(emu.meta({"data": [meta_event("m-1"), old]}))
    assert error["code"] == 100
    assert error["error_subcode"] == 2804003
    assert "index 1" in error["error_user_msg"]


def test_meta_refuses_an_event_in_the_future(emu: Emulator) -> None:
    # The clock now, not at import: a long suite can run this test many minutes later.
    ahead = int(time.time()) + 600
    error = meta_error(emu.meta({"data": [meta_event("m-1", event_time=ahead)]}))
    assert error["code"] == 100
    assert error["error_subcode"] == 2804004


def test_meta_refuses_more_than_1000_events(emu: Emulator) -> None:
    events = [meta_event(f"m-{i}") for i in range(1001)]
    error = meta_error(emu.meta({"data": events}))
    assert error["code"] == 100
    assert "1000" in error["error_user_msg"]
    assert emu.meta({"data": events[:1000]}).status_code == 200


@pytest.mark.parametrize(
    ("missing", "field"),
    [
        ({"event_name": None}, "event_name"),
        ({"action_source": None}, "action_source"),
        ({"event_source_url": None}, "event_source_url"),
        ({"user_data": {"em": [sha("a")]}}, "client_user_agent"),
    ],
)
def test_meta_refuses_missing_required_fields(
    emu: Emulator, missing: dict[str, Any], field: str
) -> None:
    event = {k: v for k, v in meta_event("m-1", **missing).items() if v is not None}
    error = meta_error(emu.meta({"data": [event]}))
    assert field in error["error_user_msg"]


def test_meta_refuses_a_request_without_access_token(emu: Emulator) -> None:
    error = meta_error(emu.meta({"data": [meta_event("m-1")]}, token=None))
    assert error["code"] == 190
    assert error["type"] == "OAuthException"


def test_meta_fail_event_ids_fail_the_whole_batch(emu: Emulator) -> None:
    emu.script("meta", fail_event_ids=["m-2"])
    error = meta_error(emu.meta({"data": [meta_event("m-1"), meta_event("m-2")]}))
    assert "index 1" in error["error_user_msg"]
    assert emu.meta({"data": [meta_event("m-1")]}).status_code == 200
    assert emu.stats("meta")["accepted_by_event_id"] == {"m-1": 1}


# --- Google Data Manager -----------------------------------------------------------------


def test_google_ingest_accepts_and_reports_success_asynchronously(emu: Emulator) -> None:
    response = emu.google(google_request([google_event("t-1"), google_event("t-2")]))
    assert response.status_code == 200, response.text
    request_id = response.json()["requestId"]
    assert len(request_id) == 36
    assert emu.stats("google")["accepted_by_event_id"] == {"t-1": 1, "t-2": 1}
    status = emu.google_status(request_id)
    assert status.status_code == 200
    (per_destination,) = status.json()["requestStatusPerDestination"]
    assert per_destination["requestStatus"] == "SUCCESS"
    assert per_destination["eventsIngestionStatus"] == {"recordCount": "2"}
    assert per_destination["destination"]["productDestinationId"] == "987654"


def test_google_status_reports_scripted_failures_per_reason(emu: Emulator) -> None:
    emu.script("google", fail_event_ids=["t-2"], status_processing_polls=1)
    old = google_event("t-3", eventTimestamp=iso(NOW - 100 * DAY))
    response = emu.google(google_request([google_event("t-1"), google_event("t-2"), old]))
    request_id = response.json()["requestId"]
    first = emu.google_status(request_id).json()["requestStatusPerDestination"][0]
    assert first["requestStatus"] == "PROCESSING"
    second = emu.google_status(request_id).json()["requestStatusPerDestination"][0]
    assert second["requestStatus"] == "PARTIAL_SUCCESS"
    counts = {c["reason"]: c["recordCount"] for c in second["errorInfo"]["errorCounts"]}
    assert counts == {
        "PROCESSING_ERROR_REASON_INVALID_EVENT": "1",
        "PROCESSING_ERROR_REASON_EVENT_TOO_OLD": "1",
    }
    detail = emu.session.get(
        f"{emu.url}/_emulator/google/request_status/{request_id}", timeout=TIMEOUT
    ).json()
    assert detail["failed"] == {
        "t-2": "PROCESSING_ERROR_REASON_INVALID_EVENT",
        "t-3": "PROCESSING_ERROR_REASON_EVENT_TOO_OLD",
    }
    assert emu.stats("google")["accepted_by_event_id"] == {"t-1": 1}


def test_google_status_flags_user_data_sent_without_consent(emu: Emulator) -> None:
    denied = google_event("t-1", consent={"adUserData": "CONSENT_DENIED"})
    request_id = emu.google(google_request([denied])).json()["requestId"]
    (status,) = emu.google_status(request_id).json()["requestStatusPerDestination"]
    assert status["requestStatus"] == "FAILED"
    assert status["errorInfo"]["errorCounts"][0]["reason"] == (
        "PROCESSING_ERROR_REASON_DENIED_CONSENT"
    )


def test_google_status_of_an_unknown_request_is_not_found(emu: Emulator) -> None:
    error = google_error(emu.google_status("no-such-request"), 404)
    assert error["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("identifier", "reason", "field"),
    [
        ({"emailAddress": "ana@example.com"}, "INVALID_SHA256_FORMAT", "email_address"),
        ({"phoneNumber": "+14155550100"}, "INVALID_SHA256_FORMAT", "phone_number"),
        ({"emailAddress": sha("a").upper()}, "INVALID_SHA256_FORMAT", "email_address"),
        (
            {
                "address": {
                    "givenName": "ana",
                    "familyName": sha("l"),
                    "regionCode": "US",
                    "postalCode": "94110",
                }
            },
            "INVALID_SHA256_FORMAT",
            "given_name",
        ),
        (
            {
                "address": {
                    "givenName": sha("a"),
                    "familyName": sha("l"),
                    "regionCode": sha("us"),
                    "postalCode": "94110",
                }
            },
            "INVALID_COUNTRY_CODE",
            "region_code",
        ),
        (
            {
                "address": {
                    "givenName": sha("a"),
                    "familyName": sha("l"),
                    "regionCode": "US",
                    "postalCode": sha("94110"),
                }
            },
            "INVALID_POSTAL_CODE",
            "postal_code",
        ),
        ({"emailAddress": sha("a"), "phoneNumber": sha("b")}, "INVALID_FORMAT", "[0]"),
    ],
)
def test_google_fast_fails_on_a_bad_identifier(
    emu: Emulator, identifier: dict[str, Any], reason: str, field: str
) -> None:
    bad = google_event("t-2", userData={"userIdentifiers": [identifier]})
    error = google_error(emu.google(google_request([google_event("t-1"), bad])))
    assert error["status"] == "INVALID_ARGUMENT"
    assert "events[1]" in error["message"]
    info = next(d for d in error["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == reason
    violation = next(d for d in error["details"] if d["@type"].endswith("BadRequest"))
    assert field in violation["fieldViolations"][0]["field"]
    assert emu.stats("google")["events_accepted"] == 0


def test_google_refuses_a_unix_number_timestamp(emu: Emulator) -> None:
    error = google_error(emu.google(google_request([google_event("t-1", eventTimestamp=NOW)])))
    assert "events[0].event_timestamp" in error["message"]


def test_google_refuses_too_many_events_and_identifiers(emu: Emulator) -> None:
    events = [google_event(f"t-{i}") for i in range(2001)]
    error = google_error(emu.google(google_request(events)))
    assert "2000" in error["message"]
    identifiers = [{"emailAddress": sha(f"{i}@example.com")} for i in range(11)]
    crowded = google_event("t-1", userData={"userIdentifiers": identifiers})
    error = google_error(emu.google(google_request([crowded])))
    info = next(d for d in error["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == "TOO_MANY_USER_IDENTIFIERS"


def test_google_requires_a_destination_and_encoding(emu: Emulator) -> None:
    body = google_request([google_event("t-1")])
    body["destinations"][0].pop("productDestinationId")
    error = google_error(emu.google(body))
    assert "product_destination_id" in error["message"]
    body = google_request([google_event("t-1")])
    body.pop("encoding")
    error = google_error(emu.google(body))
    assert "encoding" in error["message"]


def test_google_refuses_a_request_without_token(emu: Emulator) -> None:
    error = google_error(emu.google(google_request([google_event("t-1")]), token=None), 401)
    assert error["status"] == "UNAUTHENTICATED"


def test_google_validate_only_checks_without_recording(emu: Emulator) -> None:
    response = emu.google(google_request([google_event("t-1")], validateOnly=True))
    assert response.status_code == 200
    assert response.json() == {}
    stats = emu.stats("google")
    assert stats["events_accepted"] == 0
    assert stats["validate_requests"] == 1


# --- Google Ads legacy upload ------------------------------------------------------------


def test_google_ads_upload_accepts_conversions(emu: Emulator) -> None:
    body = {"conversions": [ads_conversion("o-1"), ads_conversion("o-2")], "partialFailure": True}
    response = emu.google_ads(body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert "partialFailureError" not in payload
    assert [r["gclid"] for r in payload["results"]] == ["Cj0KCQiA-test-gclid"] * 2
    assert emu.stats("google")["accepted_by_event_id"] == {"o-1": 1, "o-2": 1}


def test_google_ads_upload_reports_partial_failures_by_index(emu: Emulator) -> None:
    emu.script("google", fail_event_ids=["o-4"])
    conversions = [
        ads_conversion("o-1"),
        ads_conversion("o-2", userIdentifiers=[{"hashedEmail": "ana@example.com"}]),
        ads_conversion("o-3", conversionDateTime="2026-01-02T03:04:05Z"),
        ads_conversion("o-4"),
        ads_conversion("o-5", userIdentifiers=[{"hashedEmail": sha(str(i))} for i in range(6)]),
    ]
    response = emu.google_ads({"conversions": conversions, "partialFailure": True})
    assert response.status_code == 200
    payload = response.json()
    assert payload["results"][0]["conversionAction"].endswith("/555")
    assert payload["results"][1:] == [{}, {}, {}, {}]
    (failure,) = payload["partialFailureError"]["details"]
    assert failure["@type"].endswith("errors.GoogleAdsFailure")
    by_index = {
        e["location"]["fieldPathElements"][0]["index"]: e["errorCode"] for e in failure["errors"]
    }
    assert by_index == {
        1: {"fieldError": "INVALID_VALUE"},
        2: {"dateError": "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET"},
        3: {"conversionUploadError": "CLICK_NOT_FOUND"},
        4: {"collectionSizeError": "TOO_MANY"},
    }
    assert emu.stats("google")["accepted_by_event_id"] == {"o-1": 1}


def test_google_ads_upload_without_partial_failure_is_all_or_nothing(emu: Emulator) -> None:
    conversions = [ads_conversion("o-1"), ads_conversion("o-2", conversionAction="bad")]
    error = google_error(emu.google_ads({"conversions": conversions}))
    (failure,) = error["details"]
    assert failure["errors"][0]["errorCode"] == {
        "conversionUploadError": "INVALID_CONVERSION_ACTION"
    }
    assert emu.stats("google")["events_accepted"] == 0


def test_google_ads_upload_checks_headers_and_batch_size(emu: Emulator) -> None:
    body = {"conversions": [ads_conversion("o-1")], "partialFailure": True}
    error = google_error(emu.google_ads(body, headers={"developer-token": "dev"}), 401)
    assert error["status"] == "UNAUTHENTICATED"
    error = google_error(emu.google_ads(body, headers={"Authorization": "Bearer tok"}))
    assert error["details"][0]["errors"][0]["errorCode"] == {
        "requestError": "DEVELOPER_TOKEN_PARAMETER_MISSING"
    }
    later = emu.google_ads(body, version="v24", headers={"Authorization": "Bearer tok"})
    assert later.status_code == 200
    many = {"conversions": [ads_conversion(f"o-{i}") for i in range(2001)], "partialFailure": True}
    error = google_error(emu.google_ads(many))
    assert error["details"][0]["errors"][0]["errorCode"] == {
        "conversionUploadError": "TOO_MANY_CONVERSIONS_IN_REQUEST"
    }


# --- TikTok ------------------------------------------------------------------------------


def tiktok_code(response: requests.Response) -> tuple[int, str]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"]
    return body["code"], body["message"]


def test_tiktok_accepts_a_valid_batch(emu: Emulator) -> None:
    response = emu.tiktok(tiktok_request([tiktok_event("k-1"), tiktok_event("k-2")]))
    assert tiktok_code(response) == (0, "OK")
    assert response.json()["data"] == {}
    assert emu.stats("tiktok")["accepted_by_event_id"] == {"k-1": 1, "k-2": 1}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user": {"email": "ana@example.com"}}, "data[1].user.email"),
        ({"user": {"phone": "+14155550100"}}, "data[1].user.phone"),
        ({"user": {"ip": sha("203.0.113.7")}}, "data[1].user.ip"),
        ({"event_time": NOW * 1000}, "data[1].event_time"),
        ({"event_time": str(NOW)}, "data[1].event_time"),
        ({"event_id": 273196}, "data[1].event_id"),
        ({"event": ""}, "data[1].event"),
    ],
)
def test_tiktok_refuses_bad_events_with_code_40002(
    emu: Emulator, overrides: dict[str, Any], field: str
) -> None:
    body = tiktok_request([tiktok_event("k-1"), tiktok_event("k-2", **overrides)])
    code, message = tiktok_code(emu.tiktok(body))
    assert code == 40002
    assert field in message
    assert emu.stats("tiktok")["events_accepted"] == 0


def test_tiktok_refuses_too_many_events_and_a_missing_token(emu: Emulator) -> None:
    events = [tiktok_event(f"k-{i}") for i in range(1001)]
    code, _ = tiktok_code(emu.tiktok(tiktok_request(events)))
    assert code == 40002
    code, _ = tiktok_code(emu.tiktok(tiktok_request([tiktok_event("k-1")]), token=None))
    assert code == 40105
    body = tiktok_request([tiktok_event("k-1")])
    body["event_source"] = "website"
    assert tiktok_code(emu.tiktok(body))[0] == 40002


def test_tiktok_fail_event_ids(emu: Emulator) -> None:
    emu.script("tiktok", fail_event_ids=["k-2"])
    code, message = tiktok_code(
        emu.tiktok(tiktok_request([tiktok_event("k-1"), tiktok_event("k-2")]))
    )
    assert code == 40002
    assert "data[1]" in message


# --- Snapchat ----------------------------------------------------------------------------


def snap_invalid(response: requests.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "INVALID"
    return body["reason"]


def test_snapchat_accepts_a_valid_batch(emu: Emulator) -> None:
    response = emu.snapchat({"data": [snap_event("s-1"), snap_event("s-2")]})
    assert response.status_code == 200
    assert response.json()["status"] == "VALID"
    assert emu.stats("snapchat")["accepted_by_event_id"] == {"s-1": 1, "s-2": 1}


def test_snapchat_validate_records_nothing(emu: Emulator) -> None:
    assert emu.snapchat({"data": [snap_event("s-1")]}, validate=True).status_code == 200
    bad = snap_event("s-1", event_time=NOW * 1000)
    snap_invalid(emu.snapchat({"data": [bad]}, validate=True))
    stats = emu.stats("snapchat")
    assert stats["events_accepted"] == 0
    assert stats["requests"] == 0
    assert stats["validate_requests"] == 2


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"event_time": NOW - 38 * DAY}, "data[1].event_time"),
        ({"event_time": NOW * 1000}, "milliseconds"),
        ({"user_data": {"em": ["ana@example.com"], "sc_click_id": "c"}}, "Unhashed PII"),
        ({"user_data": {"sc_click_id": sha("c")}}, "data[1].user_data.sc_click_id"),
        ({"user_data": {"client_user_agent": "UA"}}, "Insufficient PII"),
        ({"custom_data": {"value": "10"}}, "currency"),
        ({"event_source_url": None}, "event_source_url"),
    ],
)
def test_snapchat_refuses_bad_events(emu: Emulator, overrides: dict[str, Any], needle: str) -> None:
    event = {k: v for k, v in snap_event("s-2", **overrides).items() if v is not None}
    reason = snap_invalid(emu.snapchat({"data": [snap_event("s-1"), event]}))
    assert needle in reason
    assert "data[1]" in reason


def test_snapchat_refuses_too_many_events_and_a_missing_token(emu: Emulator) -> None:
    events = [snap_event(f"s-{i}") for i in range(2001)]
    assert "2000" in snap_invalid(emu.snapchat({"data": events}))
    snap_invalid(emu.snapchat({"data": [snap_event("s-1")]}, token=None), 401)


def test_snapchat_fail_event_ids(emu: Emulator) -> None:
    emu.script("snapchat", fail_event_ids=["s-1"], fail_reason="duplicate")
    assert "data[0]: duplicate" in snap_invalid(emu.snapchat({"data": [snap_event("s-1")]}))


# --- failure scripts ---------------------------------------------------------------------


def test_script_500_500_200_sequence(emu: Emulator) -> None:
    emu.script("meta", responses=[{"status": 500}, {"status": 500}, {"status": 200}])
    statuses = [emu.meta({"data": [meta_event("m-1")]}).status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    stats = emu.stats("meta")
    assert stats["requests"] == 4
    assert stats["rejected_requests"] == 2
    assert stats["accepted_by_event_id"] == {"m-1": 2}


def test_scripted_errors_use_each_platform_format(emu: Emulator) -> None:
    emu.script("meta", responses=[{"status": 503}])
    error = emu.meta({"data": [meta_event("m-1")]}).json()["error"]
    assert error["code"] == 2
    assert error["is_transient"] is True
    emu.script("google", responses=[{"status": 500}])
    assert google_error(emu.google(google_request([google_event("t-1")])), 500)["status"] == (
        "INTERNAL"
    )
    emu.script("snapchat", responses=[{"status": 503}])
    response = emu.snapchat({"data": [snap_event("s-1")]})
    assert response.status_code == 503
    assert set(response.json()) == {"status", "reason"}
    emu.script("tiktok", responses=[{"status": 502}])
    response = emu.tiktok(tiktok_request([tiktok_event("k-1")]))
    assert response.status_code == 502
    assert response.json()["code"] == 50000


def test_script_429_with_retry_after(emu: Emulator) -> None:
    emu.script("google", responses=[{"status": 429, "retry_after": 7}])
    response = emu.google(google_request([google_event("t-1")]))
    assert response.headers["Retry-After"] == "7"
    assert google_error(response, 429)["status"] == "RESOURCE_EXHAUSTED"
    assert emu.google(google_request([google_event("t-1")])).status_code == 200


def test_tiktok_throttling_is_a_body_code_unless_literal(emu: Emulator) -> None:
    emu.script(
        "tiktok", responses=[{"status": 429}, {"status": 429, "literal": True}, {"status": 401}]
    )
    body = tiktok_request([tiktok_event("k-1")])
    assert tiktok_code(emu.tiktok(body))[0] == 40100
    literal = emu.tiktok(body)
    assert literal.status_code == 429
    assert literal.json()["code"] == 40100
    assert tiktok_code(emu.tiktok(body))[0] == 40105


def test_script_400_with_the_platform_error_code(emu: Emulator) -> None:
    emu.script("meta", responses=[{"status": 400, "error_code": 100, "error_subcode": 2804019}])
    error = meta_error(emu.meta({"data": [meta_event("m-1")]}))
    assert (error["code"], error["error_subcode"]) == (100, 2804019)
    emu.script("meta", responses=[{"status": 401}])
    response = emu.meta({"data": [meta_event("m-1")]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 190
    emu.script(
        "google",
        responses=[
            {"status": 400, "error_code": "conversionUploadError.TOO_RECENT_CONVERSION_ACTION"}
        ],
    )
    error = google_error(emu.google_ads({"conversions": [ads_conversion("o-1")]}))
    assert error["details"][0]["errors"][0]["errorCode"] == {
        "conversionUploadError": "TOO_RECENT_CONVERSION_ACTION"
    }


def test_script_delay_beyond_the_client_timeout(emu: Emulator) -> None:
    emu.script("snapchat", responses=[{"delay_seconds": 1.0}])
    url = f"{emu.url}/snapchat/v3/pixel-1/events"
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            url, params={"access_token": "tok"}, json={"data": [snap_event("s-1")]}, timeout=0.2
        )
    assert time.monotonic() - started < 1.0
    time.sleep(1.0)  # let the delayed request finish before the next test resets
    assert emu.snapchat({"data": [snap_event("s-2")]}).status_code == 200


def test_script_view_and_invalid_scripts(emu: Emulator) -> None:
    view = emu.script("tiktok", responses=[{"status": 500}, {"delay_seconds": 2}])
    assert view["responses"] == [{"status": 500}, {"delay_seconds": 2.0}]
    url = f"{emu.url}/_emulator/tiktok/script"
    assert emu.session.get(url, timeout=TIMEOUT).json()["responses"][0] == {"status": 500}
    for bad in ({"responses": [{"status": 42}]}, {"responses": [{"stat": 500}]}, {"nope": 1}):
        assert emu.session.post(url, json=bad, timeout=TIMEOUT).status_code == 400
    response = emu.session.post(f"{emu.url}/_emulator/pinterest/script", json={}, timeout=TIMEOUT)
    assert response.status_code == 404


# --- control API -------------------------------------------------------------------------


def test_recent_requests_and_reset(emu: Emulator) -> None:
    for i in range(3):
        emu.tiktok(tiktok_request([tiktok_event(f"k-{i}")]))
    emu.script("tiktok", responses=[{"status": 500}], fail_event_ids=["x"])
    recent = emu.session.get(f"{emu.url}/_emulator/requests/tiktok?limit=2", timeout=TIMEOUT)
    requests_seen = recent.json()["requests"]
    assert [r["body"]["data"][0]["event_id"] for r in requests_seen] == ["k-1", "k-2"]
    assert requests_seen[0]["path"] == "/tiktok/open_api/v1.3/event/track/"
    emu.reset()
    assert emu.stats("tiktok")["requests"] == 0
    assert emu.stats("tiktok")["accepted_by_event_id"] == {}
    script = emu.session.get(f"{emu.url}/_emulator/tiktok/script", timeout=TIMEOUT).json()
    assert script["responses"] == []
    assert script["fail_event_ids"] == []
    assert tiktok_code(emu.tiktok(tiktok_request([tiktok_event("k-9")])))[0] == 0


def test_two_emulators_keep_separate_state(emu: Emulator) -> None:
    with running_emulator() as other_url:
        other = Emulator(other_url)
        other.script("meta", responses=[{"status": 500}])
        assert other.meta({"data": [meta_event("m-1")]}).status_code == 500
        assert emu.meta({"data": [meta_event("m-1")]}).status_code == 200
        assert other.stats("meta")["events_accepted"] == 0
        assert emu.stats("meta")["events_accepted"] == 1
        other.session.close()
