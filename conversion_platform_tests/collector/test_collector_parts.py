"""The collector's pure parts: client address resolution behind proxies, the per-address
token bucket, write-key hashing and lookup, configuration from YAML and environment, what
a pixel hit becomes, and the per-row landing path (held equal to the frame path that log
ingest uses, by a property test)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversion_platform import events
from conversion_platform.collector.browser import BrowserRequest, browser_event, mpid_of
from conversion_platform.collector.client_ip import resolve_client_ip
from conversion_platform.collector.config import (
    CollectorConfigError,
    WriteKeySource,
    load_collector_config,
)
from conversion_platform.collector.rate_limit import RateLimiter, retry_after_header
from conversion_platform.collector.write_keys import (
    authenticate,
    bearer_token,
    generate_write_key,
    hash_write_key,
)
from conversion_platform.ingest.records import (
    coerce_record,
    record_to_stored_row,
    records_to_frame,
)

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # untrusted peer: header ignored
        ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # client's own claim ignored
        ("10.0.0.1", "198.51.100.1, 10.0.0.2", "198.51.100.1"),  # two proxies
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # all trusted: the leftmost
        ("10.0.0.1", "garbage, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "198.51.100.1, garbage", "10.0.0.1"),  # a garbled hop: stop there
        ("10.0.0.1", "198.51.100.1:4711", "198.51.100.1"),
        ("10.0.0.1", "[2001:db9::1]:443", "2001:db9::1"),
        ("2001:db8::1", "2001:db9::7", "2001:db9::7"),
        ("::ffff:10.0.0.1", "198.51.100.1", "198.51.100.1"),  # v4-mapped peer
    ],
)
def test_client_address_behind_trusted_proxies(peer: str, forwarded: str | None, client: str):
    assert resolve_client_ip(peer, forwarded, PROXIES) == client


def test_no_trusted_proxies_means_the_peer():
    assert resolve_client_ip("10.0.0.1", "198.51.100.1", ()) == "10.0.0.1"


def test_the_token_bucket_refills_and_says_how_long_to_wait():
    now = [100.0]
    limiter = RateLimiter(per_second=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(0.5)
    assert retry_after_header(wait) == "1"
    assert limiter.acquire("b") == 0.0  # another address, another bucket
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_the_token_bucket_forgets_idle_clients_instead_of_growing():
    now = [0.0]
    limiter = RateLimiter(per_second=1.0, burst=2, max_clients=100, clock=lambda: now[0])
    for i in range(100):
        limiter.acquire(f"old-{i}")
    now[0] += 10  # every old bucket is full again
    limiter.acquire("new")
    assert len(limiter._buckets) == 1


def test_rate_zero_disables_the_limit():
    limiter = RateLimiter(per_second=0, burst=1)
    assert all(limiter.acquire("a") == 0.0 for _ in range(1_000))


def test_write_keys_are_looked_up_by_their_hash():
    key = generate_write_key()
    assert key.startswith("cpk_") and len(key) > 40
    sources = [
        WriteKeySource("a", hash_write_key("other")),
        WriteKeySource("b", hash_write_key(key)),
    ]
    found = authenticate(key, sources)
    assert found is not None and found.name == "b"
    assert authenticate(key + "x", sources) is None
    assert authenticate(None, sources) is None
    assert hash_write_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None


def test_configuration_from_yaml_with_environment_overrides(tmp_path: Path):
    digest = hash_write_key("k1")
    path = tmp_path / "collector.yaml"
    path.write_text(
        f"""
sources:
  backend: {{key_sha256: {digest}, site: shop}}
allowed_origins: [https://shop.example/]
trusted_proxies: [10.0.0.0/8]
rate_limit: {{per_second: 5, burst: 10}}
cookie: {{domain: shop.example, secure: always}}
"""
    )
    config = load_collector_config(path, env={})
    assert [s.name for s in config.sources] == ["backend"]
    assert config.sources[0].site == "shop" and not config.sources[0].import_source
    assert config.origin_allowed("https://shop.example")
    assert not config.origin_allowed("https://evil.example")
    assert config.rate_per_second == 5 and config.rate_burst == 10
    assert config.cookie_domain == "shop.example" and config.cookie_secure == "always"

    digest2 = hash_write_key("k2")
    env = {
        "CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS": f"backend={digest2},replay={digest}:import",
        "CONVERSION_PLATFORM_COLLECTOR_ALLOWED_ORIGINS": "*",
        "CONVERSION_PLATFORM_COLLECTOR_TRUSTED_PROXIES": "127.0.0.1, ::1",
        "CONVERSION_PLATFORM_COLLECTOR_RATE_PER_SECOND": "0",
        "CONVERSION_PLATFORM_COLLECTOR_SQLITE_SYNCHRONOUS": "normal",
    }
    overridden = load_collector_config(path, env=env)
    by_name = {s.name: s for s in overridden.sources}
    assert by_name["backend"].key_sha256 == digest2
    assert by_name["replay"].import_source
    assert overridden.origin_allowed("https://anything.example")
    assert len(overridden.trusted_proxies) == 2
    assert overridden.rate_per_second == 0
    assert overridden.sqlite_synchronous == "NORMAL"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("sources: {a: {key_sha256: plaintext-key}}", "64-hex"),
        ("sources: {'bad name!': {key_sha256: " + "0" * 64 + "}}", "source name"),
        ("trusted_proxies: [not-a-network]", "trusted proxies"),
        ("cookie: {secure: sometimes}", "cookie secure"),
        ("- a list", "mapping"),
    ],
)
def test_a_broken_configuration_is_refused_with_the_reason(
    tmp_path: Path, yaml_text: str, message: str
):
    path = tmp_path / "collector.yaml"
    path.write_text(yaml_text)
    with pytest.raises(CollectorConfigError, match=message):
        load_collector_config(path, env={})


def test_the_committed_seed_configuration_loads():
    config = load_collector_config(Path(__file__).parents[2] / "seeds" / "collector.yaml", env={})
    assert config.sources == ()
    assert config.sqlite_synchronous == "FULL"


def _request(**cookies: str) -> BrowserRequest:
    return BrowserRequest(
        received_at=datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC),
        client_ip="198.51.100.1",
        user_agent="UA",
        cookies=cookies,
        referer="https://shop.example/from-referer?gclid=ref",
    )


def test_a_pixel_hit_takes_click_ids_cookies_and_derives_fbc():
    record = browser_event(
        {
            "event_name": "lead",
            "page_url": "https://shop.example/?fbclid=F1&gclid=G1",
            "gclid": "explicit",
            "client_ip": "1.2.3.4",
        },
        _request(_fbp="fb.1.1.2", _ttp="tt", _epik="ep"),
        "m" * 32,
    )
    assert record["fbclid"] == "F1"
    assert record["gclid"] == "explicit"  # the page's own value wins over the URL's
    assert record["fbc"] == "fb.1.1777636800250.F1"
    assert (record["fbp"], record["ttp"], record["epik"]) == ("fb.1.1.2", "tt", "ep")
    assert record["client_ip"] == "198.51.100.1"
    assert record["event_time"] == "2026-05-01T12:00:00.250000+00:00"


def test_a_pixel_hit_without_a_page_url_uses_the_referer():
    record = browser_event({"event_name": "lead"}, _request(), "m" * 32)
    assert record["page_url"] == "https://shop.example/from-referer?gclid=ref"
    assert record["gclid"] == "ref"
    assert "fbc" not in record


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("0123456789abcdef0123456789abcdef", True),
        ("short", False),
        ("a b" * 10, False),
        ("x" * 65, False),
        ("Abc_-0123456789xyz", True),
    ],
)
def test_only_a_well_formed_mpid_cookie_is_kept(value: str, kept: bool):
    assert (mpid_of({"_mpid": value}) == value) is kept


# --- the per-row landing path equals the frame path ---------------------------------------

_text = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["undefined", "N/A", "  ", "0"]),
)
_email = st.one_of(
    _text,
    st.sampled_from(
        [
            "Jane.Doe@Gmail.com",
            " a.b@googlemail.com ",
            "x@example.com",
            "not-an-email",
            "a" * 64,
            "0" * 64,
        ]
    ),
)
_phone = st.one_of(
    _text,
    st.sampled_from(
        [
            "+1 650 253 0000",
            "(415) 555-2671",
            "07700 900123",
            "+49 151 2345678",
            "0000000000",
            "+44",
            "1" * 64,
        ]
    ),
)
_country = st.one_of(
    _text, st.sampled_from(["US", "gb", "Germany", "United States", "fr", "zz", "United Kingdom"])
)
_region = st.one_of(_text, st.sampled_from(["CA", "California", "new york", "Ile-de-France"]))
_postal = st.one_of(_text, st.sampled_from(["94103-1234", "SW1A 1AA", "10115", "123"]))
_name = st.one_of(_text, st.sampled_from(["Zoë", "O'Brien", "  José-María ", "李"]))

records = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=8),
        "event_name": st.sampled_from(["purchase", "Lead"]),
        "event_time": st.just("2026-05-01T12:00:00+00:00"),
        "email": _email,
        "phone": _phone,
        "first_name": _name,
        "last_name": _name,
        "external_id": st.one_of(_text, st.just("cust-1")),
        "city": st.one_of(_text, st.sampled_from(["San Francisco", "Saint-Étienne"])),
        "region": _region,
        "postal_code": _postal,
        "country": _country,
        "value": st.one_of(st.none(), st.floats(0, 1e6), st.sampled_from(["12.50"])),
        "currency": st.one_of(st.none(), st.sampled_from(["usd", "EUR"])),
    },
    optional={
        "email_sha256": st.sampled_from(["f" * 64, "pre-hashed-but-odd", " " + "A" * 64]),
        "phone_sha256": st.sampled_from(["e" * 64, "+1 650 253 0000"]),
        "external_id_sha256": st.just("d" * 64),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(records, min_size=1, max_size=10), verified=st.booleans())
def test_the_row_path_stores_what_the_frame_path_stores(batch: list[dict], verified: bool):
    received = datetime(2026, 5, 1, 12, 0, 1, tzinfo=UTC)
    coerced = [coerce_record(r, events.SOURCE_SERVER, received) for r in batch]
    frame, frame_dropped = records_to_frame(coerced, value_verified=verified)
    row_dropped: Counter[str] = Counter()
    rows = [record_to_stored_row(c, value_verified=verified, dropped=row_dropped) for c in coerced]
    assert row_dropped == frame_dropped
    for position, row in enumerate(rows):
        expected = frame.iloc[position]
        for column in events.STORED_COLUMNS:
            want = expected[column]
            got = row[column]
            if pd.isna(want):
                assert got is None, (column, got)
            elif column in events.TIMESTAMP_COLUMNS:
                assert pd.Timestamp(got) == want, column
            else:
                assert got == want, (column, got, want)
