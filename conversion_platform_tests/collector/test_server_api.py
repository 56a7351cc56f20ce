"""The server-side API (`POST /v1/events`) over real HTTP on loopback, on SQLite: auth,
every error answer, per-event rejection with quarantine, what the landing table holds,
import sources' `received_at`, and that no plaintext personal data is stored."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import requests

from conversion_platform.collector.config import MAX_BODY_BYTES
from conversion_platform_tests.collector.conftest import (
    BACKEND_KEY,
    IMPORT_KEY,
    RunningCollector,
    all_stored_text,
)

AUTH = {"Authorization": f"Bearer {BACKEND_KEY}"}
PERSON = {
    "email": "  Jane.Doe@Example.com ",
    "phone": "+1 (650) 253-0000",
    "first_name": "Zoë",
    "last_name": "O'Brien",
    "external_id": "cust-424242",
}
PLAINTEXT = ("jane.doe@example.com", "6502530000", "253-0000", "zoë", "o'brien", "cust-424242")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def purchase(event_id: str, **fields: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "event_name": "purchase",
        "event_time": datetime.now(UTC).isoformat(),
        "value": 42.5,
        "currency": "eur",
        "order_id": f"order-{event_id}",
        **fields,
    }


def post(collector: RunningCollector, body: object, headers: dict[str, str] | None = None):
    return requests.post(
        f"{collector.url}/v1/events",
        data=body if isinstance(body, bytes) else orjson.dumps(body),
        headers={**AUTH, **(headers or {})},
        timeout=10,
    )


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert payload["error"] == code
    assert payload["message"]
    return payload


def test_accepted_events_are_committed_hashed_before_the_answer(collector: RunningCollector):
    before = datetime.now(UTC)
    response = post(collector, {"events": [purchase("e1", **PERSON), purchase("e2")]})
    after = datetime.now(UTC)

    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "rejected": []}
    rows = {r["event_id"]: r for r in collector.landing()}
    assert set(rows) == {"e1", "e2"}
    first = rows["e1"]
    assert first["source"] == "server"
    assert first["site"] == "shop"
    assert first["value"] == 42.5 and first["currency"] == "EUR"
    assert first["value_verified"] is True
    assert first["email_sha256"] == sha256("jane.doe@example.com")
    assert first["email_google_sha256"] == sha256("jane.doe@example.com")
    assert first["phone_sha256"] == sha256("+16502530000")
    assert first["phone_digits_sha256"] == sha256("16502530000")
    assert first["first_name_sha256"] == sha256("zoë")
    assert first["last_name_sha256"] == sha256("obrien")
    assert first["external_id_sha256"] == sha256("cust-424242")
    received = datetime.fromtimestamp(first["received_at_us"] / 1e6, tz=UTC)
    assert before - timedelta(seconds=1) <= received <= after
    stored = all_stored_text(collector.engine)
    for plaintext in PLAINTEXT:
        assert plaintext not in stored


def test_invalid_events_are_refused_by_index_and_quarantined_with_reasons(
    collector: RunningCollector,
):
    batch = [
        purchase("good-1", **PERSON),
        purchase("bad-name", event_name="Purchase Completed!!", **PERSON),
        purchase("bad-value", value="forty"),
        "not an object",
        {"event_id": "no-time", "event_name": "lead"},
        purchase("bad-types", event_name=["purchase"], page_url={"a": 1}),
        purchase("good-2"),
    ]
    response = post(collector, {"events": batch})

    assert response.status_code == 200
    payload = response.json()
    assert payload["accepted"] == 2
    rejected = {r["index"]: r["errors"] for r in payload["rejected"]}
    assert set(rejected) == {1, 2, 3, 4, 5}
    assert "unknown" in rejected[1][0] and "Purchase Completed!!" in rejected[1][0]
    assert rejected[2] == ["value is not a number: 'forty'"]
    assert rejected[3] == ["event must be a JSON object"]
    assert rejected[4] == ["event_time is missing"]
    assert "event_name must be a string" in rejected[5]
    assert "page_url must be a string" in rejected[5]

    assert sorted(r["event_id"] for r in collector.landing()) == ["good-1", "good-2"]
    quarantined = collector.quarantined()
    by_index = {int(q["origin"].rsplit("#", 1)[1]): q for q in quarantined}
    assert set(by_index) == {1, 2, 3, 4, 5}
    for index, row in by_index.items():
        assert row["stage"] == "collector" and row["source"] == "server"
        assert row["origin"].startswith("collector:/v1/events:shop-backend:")
        assert row["reason"] == "; ".join(rejected[index])
    assert by_index[1]["event_id"] == "bad-name"
    assert '"email":"[redacted]"' in by_index[1]["raw_redacted"]
    stored = all_stored_text(collector.engine)
    for plaintext in PLAINTEXT:
        assert plaintext not in stored


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer cpk_not_a_key"},
        {"Authorization": f"Basic {BACKEND_KEY}"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "unknown key", "wrong scheme", "empty token"],
)
def test_without_a_valid_write_key_nothing_is_stored(
    collector: RunningCollector, headers: dict[str, str]
):
    response = requests.post(
        f"{collector.url}/v1/events",
        data=orjson.dumps({"events": [purchase("x")]}),
        headers=headers,
        timeout=10,
    )
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert collector.landing() == [] and collector.quarantined() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/events"), ("PUT", "/v1/pixel"), ("DELETE", "/healthz"), ("POST", "/pixel.js")],
)
def test_a_wrong_method_is_405_with_allow(collector: RunningCollector, method: str, path: str):
    response = requests.request(method, f"{collector.url}{path}", headers=AUTH, timeout=10)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"]


def test_an_unknown_path_is_404_json(collector: RunningCollector):
    assert_error(requests.get(f"{collector.url}/v2/nothing", timeout=10), 404, "not_found")


def test_malformed_json_is_400_and_kept_redacted_in_quarantine(collector: RunningCollector):
    body = b'{"events": [{"event_name": "purchase", "email": "jane.doe@example.com", '
    payload = assert_error(post(collector, body), 400, "malformed_json")
    assert "not valid JSON" in str(payload["message"])
    [row] = collector.quarantined()
    assert row["stage"] == "collector" and row["source"] == "server"
    assert row["reason"].startswith("malformed_json")
    assert "jane.doe" not in row["raw_redacted"]
    assert collector.landing() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([{"event_name": "purchase"}], "JSON object"),
        ({"event": []}, "JSON object"),
        ({"events": {"0": {}}}, "JSON object"),
        ({"events": []}, "empty"),
    ],
    ids=["array", "no events key", "events not an array", "empty"],
)
def test_a_body_that_is_not_a_batch_is_400(collector: RunningCollector, body: object, message: str):
    payload = assert_error(post(collector, body), 400, "invalid_request")
    assert message in str(payload["message"])
    assert collector.landing() == []


def test_more_than_1000_events_is_413_and_nothing_is_stored(collector: RunningCollector):
    events = [purchase(f"e{i}") for i in range(1_001)]
    assert_error(post(collector, {"events": events}), 413, "too_many_events")
    assert collector.landing() == []
    # The limit itself is allowed.
    assert post(collector, {"events": events[:1_000]}).json()["accepted"] == 1_000


def test_a_body_over_1_mb_is_413_whether_declared_or_streamed(collector: RunningCollector):
    filler = "x" * 4_000
    events = [purchase(f"e{i}", referrer=filler) for i in range(260)]
    body = orjson.dumps({"events": events})
    assert len(body) > MAX_BODY_BYTES
    assert_error(post(collector, body), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(body), 64_000):
            yield body[start : start + 64_000]

    streamed = requests.post(f"{collector.url}/v1/events", data=chunks(), headers=AUTH, timeout=10)
    assert_error(streamed, 413, "payload_too_large")
    assert collector.landing() == []


def test_only_an_import_source_sets_received_at(collector: RunningCollector):
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    event = purchase("imported", received_at=past.isoformat())
    response = post(collector, {"events": [event]}, {"Authorization": f"Bearer {IMPORT_KEY}"})
    assert response.json() == {"accepted": 1, "rejected": []}
    live = post(collector, {"events": [purchase("live", received_at=past.isoformat())]})
    assert live.json()["accepted"] == 1

    rows = {r["event_id"]: r for r in collector.landing()}
    assert rows["imported"]["received_at_us"] == int(past.timestamp() * 1_000_000)
    assert rows["imported"]["site"] is None
    live_received = datetime.fromtimestamp(rows["live"]["received_at_us"] / 1e6, tz=UTC)
    assert live_received > past + timedelta(hours=4)


def test_an_import_source_cannot_land_events_in_the_future_or_too_far_back(
    collector: RunningCollector,
):
    now = datetime.now(UTC)
    batch = [
        purchase("future", received_at=(now + timedelta(hours=1)).isoformat()),
        purchase("ancient", received_at=(now - timedelta(days=90)).isoformat()),
        purchase("garbled", received_at="yesterday"),
        purchase("fine", received_at=(now - timedelta(days=2)).isoformat()),
    ]
    response = post(collector, {"events": batch}, {"Authorization": f"Bearer {IMPORT_KEY}"})
    payload = response.json()
    assert payload["accepted"] == 1
    errors = {r["index"]: r["errors"] for r in payload["rejected"]}
    assert errors[0] == ["received_at is in the future"]
    assert "hours in the past" in errors[1][0]
    assert "ISO 8601" in errors[2][0]
    assert [r["event_id"] for r in collector.landing()] == ["fine"]
    assert len(collector.quarantined()) == 3


def test_health_and_openapi(collector: RunningCollector):
    health = requests.get(f"{collector.url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["database"] == "reachable"
    document = requests.get(f"{collector.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/events", "/v1/pixel", "/v1/pixel.gif", "/pixel.js", "/healthz"} <= set(
        document["paths"]
    )


def test_a_gzip_body_is_accepted_and_its_events_committed(collector: RunningCollector):
    events = [purchase(f"gz{i}", **PERSON) for i in range(3)]
    body = gzip.compress(orjson.dumps({"events": events}))
    response = post(collector, body, {"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3, "rejected": []}
    assert sorted(r["event_id"] for r in collector.landing()) == ["gz0", "gz1", "gz2"]
    # Two gzip members (what concatenated gzip files are) are one body.
    text = orjson.dumps({"events": [purchase(f"two{i}") for i in range(2)]})
    half = len(text) // 2
    two_members = gzip.compress(text[:half]) + gzip.compress(text[half:])
    response = post(collector, two_members, {"Content-Encoding": "x-gzip"})
    assert response.json()["accepted"] == 2
    stored = {r["event_id"] for r in collector.landing()}
    assert {"two0", "two1"} <= stored
    stored_text = all_stored_text(collector.engine)
    assert not any(plaintext in stored_text for plaintext in PLAINTEXT)


def test_a_gzip_body_over_1_mb_decompressed_is_413_and_nothing_is_stored(
    collector: RunningCollector,
):
    filler = "x" * 4_000
    events = [purchase(f"big{i}", referrer=filler) for i in range(260)]
    text = orjson.dumps({"events": events})
    assert len(text) > MAX_BODY_BYTES
    compressed = gzip.compress(text)
    assert len(compressed) < MAX_BODY_BYTES // 10
    assert_error(
        post(collector, compressed, {"Content-Encoding": "gzip"}), 413, "payload_too_large"
    )
    # A bomb: a few KB that would decompress to 50 MB.
    bomb = gzip.compress(b" " * 50_000_000)
    assert_error(post(collector, bomb, {"Content-Encoding": "gzip"}), 413, "payload_too_large")
    assert collector.landing() == []
    assert collector.quarantined() == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"events": []}',  # not compressed at all
        b"\x1f\x8b\x08\x00garbage",
        b"",
    ],
    ids=["plain", "garbage", "empty"],
)
def test_a_bad_gzip_stream_is_400_bad_encoding(collector: RunningCollector, body: bytes):
    payload = assert_error(post(collector, body, {"Content-Encoding": "gzip"}), 400, "bad_encoding")
    assert "gzip" in str(payload["message"])
    assert collector.landing() == []


def test_a_cut_short_or_padded_gzip_stream(collector: RunningCollector):
    whole = gzip.compress(orjson.dumps({"events": [purchase("pad1")]}))
    cut = post(collector, whole[: len(whole) - 6], {"Content-Encoding": "gzip"})
    assert_error(cut, 400, "bad_encoding")
    trailing = post(collector, whole + b"not gzip", {"Content-Encoding": "gzip"})
    assert_error(trailing, 400, "bad_encoding")
    assert collector.landing() == []
    padded = post(collector, whole + b"\x00" * 8, {"Content-Encoding": "gzip"})
    assert padded.json()["accepted"] == 1


def test_another_content_encoding_is_415(collector: RunningCollector):
    response = post(collector, b"\x00\x01", {"Content-Encoding": "br"})
    assert_error(response, 415, "unsupported_encoding")
    # identity is no encoding at all.
    plain = post(collector, {"events": [purchase("id1")]}, {"Content-Encoding": "identity"})
    assert plain.json()["accepted"] == 1
