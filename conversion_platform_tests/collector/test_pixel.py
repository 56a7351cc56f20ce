"""The browser path over real HTTP on loopback: `POST /v1/pixel` and `GET /v1/pixel.gif`,
the `_mpid` cookie (set, refreshed, replaced, Secure only over https), click ids and
`fbc` derivation, platform cookies, client address and user agent, CORS, rate limiting,
replayed hits from an import source, refused events, and `/pixel.js`."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import orjson
import pytest
import requests

from conversion_platform.collector.app import PIXEL_GIF
from conversion_platform.collector.browser import MPID_MAX_AGE_SECONDS
from conversion_platform_tests.collector.conftest import (
    IMPORT_KEY,
    SITE_ORIGIN,
    RunningCollector,
    StartCollector,
    all_stored_text,
)

PAGE = "https://shop.example/checkout/thank-you"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"


def hit(
    collector: RunningCollector,
    event: dict[str, object],
    *,
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        f"{collector.url}/v1/pixel",
        data=orjson.dumps(event),
        headers={
            "Content-Type": "text/plain;charset=UTF-8",
            "User-Agent": AGENT,
            "Origin": SITE_ORIGIN,
            **(headers or {}),
        },
        cookies=cookies,
        timeout=10,
    )


def set_cookie(response: requests.Response) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


def only_row(collector: RunningCollector) -> dict[str, object]:
    [row] = collector.landing()
    return row


def test_a_first_hit_sets_mpid_and_records_it(collector: RunningCollector):
    before = datetime.now(UTC)
    response = hit(
        collector,
        {
            "event_name": "purchase",
            "event_id": "px-1",
            "page_url": PAGE,
            "value": 99.0,
            "currency": "USD",
            "order_id": "A-1",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "rejected": [], "event_id": "px-1"}

    cookie = set_cookie(response)["_mpid"]
    assert len(cookie.value) == 32
    assert cookie["max-age"] == str(MPID_MAX_AGE_SECONDS) == "34560000"
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert not cookie["secure"]  # plain http
    row = only_row(collector)
    assert row["mpid"] == cookie.value
    assert row["source"] == "pixel"
    assert row["value"] == 99.0 and row["value_verified"] is False
    assert row["user_agent"] == AGENT
    assert row["client_ip"] == "127.0.0.1"
    assert row["page_url"] == PAGE
    assert row["event_time_us"] == row["received_at_us"]  # defaults to the time received
    assert datetime.fromtimestamp(row["received_at_us"] / 1e6, tz=UTC) >= before - timedelta(
        seconds=1
    )


def test_a_returning_browser_keeps_its_mpid_and_the_cookie_is_refreshed(
    collector: RunningCollector,
):
    mpid = "0123456789abcdef0123456789abcdef"
    response = hit(
        collector, {"event_name": "page_view", "page_url": PAGE}, cookies={"_mpid": mpid}
    )
    assert response.status_code == 200
    refreshed = set_cookie(response)["_mpid"]
    assert refreshed.value == mpid
    assert refreshed["max-age"] == "34560000"
    assert only_row(collector)["mpid"] == mpid


def test_a_malformed_mpid_cookie_is_replaced(collector: RunningCollector):
    response = hit(collector, {"event_name": "page_view"}, cookies={"_mpid": "<script>"})
    new = set_cookie(response)["_mpid"].value
    assert new != "<script>" and len(new) == 32
    assert only_row(collector)["mpid"] == new


def test_click_ids_come_from_the_page_url_and_fbc_is_derived_from_fbclid(
    collector: RunningCollector,
):
    url = (
        "https://shop.example/p/1?utm_source=x&fbclid=IwAR0abc&gclid=Cj0KCQ&gbraid=gb1"
        "&wbraid=wb1&ttclid=E.C.P.tt&ScCid=sc-9&epik=ep-1&li_fat_id=li-2&rdt_cid=rd-3"
        "&msclkid=ms-4"
    )
    response = hit(collector, {"event_name": "page_view", "page_url": url})
    assert response.status_code == 200
    row = only_row(collector)
    assert row["fbclid"] == "IwAR0abc"
    assert row["gclid"] == "Cj0KCQ" and row["gbraid"] == "gb1" and row["wbraid"] == "wb1"
    assert row["ttclid"] == "E.C.P.tt" and row["sccid"] == "sc-9" and row["epik"] == "ep-1"
    assert row["li_fat_id"] == "li-2" and row["rdt_cid"] == "rd-3" and row["msclkid"] == "ms-4"
    received_ms = row["received_at_us"] // 1_000
    assert row["fbc"] == f"fb.1.{received_ms}.IwAR0abc"


def test_the_fbc_cookie_wins_over_derivation_and_platform_cookies_are_read(
    collector: RunningCollector,
):
    cookies = {
        "_fbc": "fb.1.1700000000000.IwAR-old",
        "_fbp": "fb.1.1700000000000.123456789",
        "_ttp": "ttp-cookie-1",
        "_epik": "epik-cookie-1",
    }
    hit(
        collector,
        {"event_name": "lead", "page_url": "https://shop.example/?fbclid=IwAR-new"},
        cookies=cookies,
    )
    row = only_row(collector)
    assert row["fbc"] == "fb.1.1700000000000.IwAR-old"
    assert row["fbclid"] == "IwAR-new"
    assert row["fbp"] == "fb.1.1700000000000.123456789"
    assert row["ttp"] == "ttp-cookie-1"
    assert row["epik"] == "epik-cookie-1"


def test_the_page_cannot_claim_an_address_agent_or_mpid(collector: RunningCollector):
    response = hit(
        collector,
        {"event_name": "lead", "client_ip": "8.8.8.8", "user_agent": "forged", "mpid": "m" * 32},
    )
    cookie = set_cookie(response)["_mpid"].value
    row = only_row(collector)
    assert (row["client_ip"], row["user_agent"], row["mpid"]) == ("127.0.0.1", AGENT, cookie)


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(start_collector: StartCollector):
    untrusted = start_collector()
    hit(untrusted, {"event_name": "lead"}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert only_row(untrusted)["client_ip"] == "127.0.0.1"

    trusted = start_collector(
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
    )
    # The client's own claim (left) is ignored: the first hop the proxies don't vouch for is
    # the address the outermost trusted proxy received the request from.
    hit(
        trusted,
        {"event_name": "lead"},
        headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.7, 10.1.2.3"},
    )
    # Both collectors write to the test's one database: the second row is this hit.
    assert [r["client_ip"] for r in trusted.landing()] == ["127.0.0.1", "198.51.100.7"]


def test_the_cookie_is_secure_over_https_reported_by_a_trusted_proxy(
    start_collector: StartCollector,
):
    collector = start_collector(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    secure = hit(collector, {"event_name": "lead"}, headers={"X-Forwarded-Proto": "https"})
    assert set_cookie(secure)["_mpid"]["secure"] is True
    plain = hit(collector, {"event_name": "lead"}, headers={"X-Forwarded-Proto": "http"})
    assert not set_cookie(plain)["_mpid"]["secure"]

    untrusted = start_collector()
    spoofed = hit(untrusted, {"event_name": "lead"}, headers={"X-Forwarded-Proto": "https"})
    assert not set_cookie(spoofed)["_mpid"]["secure"]


def test_the_gif_endpoint_lands_a_hit_from_the_query_string(collector: RunningCollector):
    response = requests.get(
        f"{collector.url}/v1/pixel.gif",
        params={
            "event_name": "purchase",
            "event_id": "gif-1",
            "value": "12.5",
            "currency": "usd",
            "page_url": "https://shop.example/?gclid=G-1",
        },
        headers={"User-Agent": AGENT},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content == PIXEL_GIF
    assert response.headers["cache-control"] == "no-store"
    row = only_row(collector)
    assert (row["event_id"], row["value"], row["currency"], row["gclid"]) == (
        "gif-1",
        12.5,
        "USD",
        "G-1",
    )
    assert row["mpid"] == set_cookie(response)["_mpid"].value


def test_a_head_request_for_the_gif_stores_nothing(collector: RunningCollector):
    response = requests.head(
        f"{collector.url}/v1/pixel.gif", params={"event_name": "lead"}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert collector.landing() == []


def test_the_page_url_falls_back_to_the_referer(collector: RunningCollector):
    requests.get(
        f"{collector.url}/v1/pixel.gif",
        params={"event_name": "page_view"},
        headers={"Referer": "https://shop.example/landing?ttclid=T-1"},
        timeout=10,
    )
    row = only_row(collector)
    assert row["page_url"] == "https://shop.example/landing?ttclid=T-1"
    assert row["ttclid"] == "T-1"


def test_an_invalid_hit_is_400_with_reasons_and_quarantined(collector: RunningCollector):
    response = hit(collector, {"event_name": "Add To Cart!", "email": "jane@example.com"})
    assert response.status_code == 400
    payload = response.json()
    assert payload["error"] == "invalid_event"
    assert "unknown" in payload["errors"][0]
    assert "set-cookie" in response.headers
    assert collector.landing() == []
    [row] = collector.quarantined()
    assert row["source"] == "pixel" and row["stage"] == "collector"
    assert "jane@example.com" not in all_stored_text(collector.engine)

    garbled = hit(collector, "not json at all")  # type: ignore[arg-type]
    assert garbled.status_code == 400  # a JSON string is valid JSON but not an object
    broken = requests.post(f"{collector.url}/v1/pixel", data=b"{oops", timeout=10)
    assert broken.status_code == 400 and broken.json()["error"] == "malformed_json"
    assert len(collector.quarantined()) == 3


def test_an_oversized_hit_is_413(collector: RunningCollector):
    response = hit(collector, {"event_name": "lead", "referrer": "x" * 70_000})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert collector.landing() == []


def test_cors_for_an_allowed_origin(collector: RunningCollector):
    response = hit(collector, {"event_name": "lead"})
    assert response.headers["access-control-allow-origin"] == SITE_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in response.headers["vary"]

    preflight = requests.options(
        f"{collector.url}/v1/pixel",
        headers={
            "Origin": SITE_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == SITE_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Content-Type" in preflight.headers["access-control-allow-headers"]


def test_cors_refuses_other_origins_and_stores_nothing(collector: RunningCollector):
    response = hit(collector, {"event_name": "lead"}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert response.json()["error"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in response.headers
    preflight = requests.options(
        f"{collector.url}/v1/pixel",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    # Without an Origin (an <img>, a server) CORS doesn't apply.
    assert (
        requests.get(
            f"{collector.url}/v1/pixel.gif", params={"event_name": "lead"}, timeout=10
        ).status_code
        == 200
    )
    assert len(collector.landing()) == 1


def test_a_client_over_its_rate_is_429_with_retry_after(start_collector: StartCollector):
    collector = start_collector(
        rate_per_second=0.5,
        rate_burst=3,
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    statuses = [
        hit(collector, {"event_name": "lead"}, headers={"X-Forwarded-For": "198.51.100.1"})
        for _ in range(4)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    limited = statuses[-1]
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    # Another address has its own budget.
    other = hit(collector, {"event_name": "lead"}, headers={"X-Forwarded-For": "198.51.100.2"})
    assert other.status_code == 200
    assert len(collector.landing()) == 4


def test_an_import_source_replays_a_hit_at_its_recorded_time(collector: RunningCollector):
    recorded = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)
    response = hit(
        collector,
        {"event_name": "page_view"},
        headers={"Authorization": f"Bearer {IMPORT_KEY}", "X-Received-At": recorded.isoformat()},
    )
    assert response.status_code == 200
    row = only_row(collector)
    assert row["received_at_us"] == row["event_time_us"] == int(recorded.timestamp() * 1e6)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Received-At": "2026-01-01T00:00:00+00:00"}, 403),
        ({"Authorization": "Bearer cpk_unknown", "X-Received-At": "2026-01-01T00:00:00Z"}, 401),
        ({"Authorization": f"Bearer {IMPORT_KEY}", "X-Received-At": "whenever"}, 400),
    ],
    ids=["no key", "unknown key", "garbled time"],
)
def test_a_received_at_header_without_an_import_key_is_refused(
    collector: RunningCollector, headers: dict[str, str], status: int
):
    assert hit(collector, {"event_name": "lead"}, headers=headers).status_code == status
    assert collector.landing() == []


def test_pixel_js_is_served(collector: RunningCollector):
    response = requests.get(f"{collector.url}/pixel.js", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert "sendBeacon" in response.text and "w.cp = cp" in response.text
