"""Normalisation and hashing of personal fields where data enters (PLATFORMS.md rules).

Scope: the scalar normalisers and hashers in `transform/normalise.py` with tricky inputs,
compared against SHA-256 digests computed independently (`printf '%s' VALUE | sha256sum`);
the frame entry point `hash_identity_columns` (distinct values, drop counts, pre-hashed
columns); page-URL scrubbing (`transform/page_urls.py`); and `records_to_frame`, the path
both the collector and log ingest take, leaving no plaintext behind.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conversion_platform.ingest.record_columns import coerce_records
from conversion_platform.ingest.records import coerce_record, records_to_frame
from conversion_platform.transform.normalise import (
    hash_email,
    hash_external_id,
    hash_identity_columns,
    hash_name,
    hash_phone,
    normalise_city,
    normalise_country,
    normalise_email,
    normalise_location_columns,
    normalise_name,
    normalise_phone,
    normalise_postal_code,
    normalise_region,
    sha256_hex,
)
from conversion_platform.transform.page_urls import click_ids_from_url, scrub_url

# Digests computed outside the code under test, with coreutils' sha256sum.
D_JOHN_PROMO_GMAIL = "80f9126efd0446cb338c54ea6fe3d4af8fa3fe93db0024b14150441550e632a2"
D_JOHN_PROMO_GMAIL_NODOTS = "4dfee298ccfab85c3c2369440292b9a1e57795b008fe3d680add19dcd4414b64"
D_JANE_EXAMPLE = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
D_JANE_GOOGLEMAIL_DOTS = "71441b6ad830149397c2677e4d4eb9b5d6795a7832631ab2ae37fcb119da15d9"
D_JANE_GOOGLEMAIL = "fae868fcb95956d818cd68d2b23f8bbd93bfcaa5eccc5b8c7b7b4b97bf3b61cb"
D_JOERG_UNICODE = "fde43de0401646cd495f9bfd268ad9ce07f82d805d5e0d8c13ba0a83b41e6700"
D_US_PLUS = "cb6880e416769253645cb9c6b8989154bf66a56a77fc14c81fb1019663cbb928"
D_US_DIGITS = "758fbf68945f21c416814c539ab578876c8d98fb69e6da692def92cd52417fe0"
D_GB_PLUS = "42665f0be57cc01155844c5bf6ed208c2a32f8da144a949a2f7b69f007810eb6"
D_GB_DIGITS = "d2db976dff17e6a44bd3a25a2ba91efc63ccb18de90db7a560e7cf93544934bd"
D_DE_PLUS = "663a4322addcdcc2be9435bfd2505066dc1048b89d33e48f363119f18bdd71e8"
D_DE_DIGITS = "c0f8f0bebbbac96451ee8d8def84a02ae9e34c877775437cb9d458328315afa7"
D_FR_PLUS = "42d573cfc315801d4cd8eddd5416b416a0bf298b9b9e12d6b07442c91db42bd8"
D_FR_DIGITS = "8a3e7886c9335e82e02299fa3e87b46e2de3b0c63d56003e30a5029394a47661"
D_JOSE = "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
D_OBRIEN = "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba"
D_ZOE = "2752b88686847fa5c86f47b94ce652b7b3f22a91c37617d451a4db9afa431450"
D_JEAN_LUC = "a840f80e929f88163152c2dc5f35721a9534ece0ca77bfe8973ed4498a1633a6"
D_BJOERN = "2ffa7a462f787d7660573391616d361754c86284c9f310f17e11f9005dc76b4d"
D_LI = "c16667ca7839a011a548628372ac24f56500a68088eac17e3e7ee6edf9c54125"
D_CUST_42 = "e760798c0441b21c3993467e39fc0f88b732b794bf3e7e1916fbe718cd2e4e58"


def test_sha256_matches_an_independent_digest() -> None:
    assert sha256_hex("jane.doe@example.com") == D_JANE_EXAMPLE
    assert sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "digest", "google_digest"),
    [
        ("jane.doe@example.com", D_JANE_EXAMPLE, D_JANE_EXAMPLE),
        ("  JANE.DOE@EXAMPLE.COM \t", D_JANE_EXAMPLE, D_JANE_EXAMPLE),  # padded, upper-case
        ("Jane Doe <Jane.Doe@Example.com>", D_JANE_EXAMPLE, D_JANE_EXAMPLE),  # display form
        ("mailto:jane.doe@example.com", D_JANE_EXAMPLE, D_JANE_EXAMPLE),
        # gmail: every dot goes from Google's variant, the plus tag stays, Meta's keeps both
        ("John.Doe+Promo@Gmail.com", D_JOHN_PROMO_GMAIL, D_JOHN_PROMO_GMAIL_NODOTS),
        ("johndoe+promo@gmail.com", D_JOHN_PROMO_GMAIL_NODOTS, D_JOHN_PROMO_GMAIL_NODOTS),
        # googlemail.com too, and not only the first dot
        ("J.A.N.E@googlemail.com", D_JANE_GOOGLEMAIL_DOTS, D_JANE_GOOGLEMAIL),
        ("Jörg.Müller@Example.DE", D_JOERG_UNICODE, D_JOERG_UNICODE),  # Unicode local part
        # a digest passes through; upper-case hex is the same digest
        (D_JANE_EXAMPLE, D_JANE_EXAMPLE, D_JANE_EXAMPLE),
        (D_JANE_EXAMPLE.upper(), D_JANE_EXAMPLE, D_JANE_EXAMPLE),
    ],
)
def test_email_digests(raw: str, digest: str, google_digest: str) -> None:
    assert hash_email(raw) == (digest, google_digest, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "email_placeholder"),
        ("   ", "email_placeholder"),
        ("undefined", "email_placeholder"),
        ("NULL", "email_placeholder"),
        ("n/a", "email_placeholder"),
        ("not-an-email", "email_invalid"),
        ("john@localhost", "email_invalid"),
        ("john doe@example.com", "email_invalid"),
        ("a@b@c.com", "email_invalid"),
        ("d41d8cd98f00b204e9800998ecf8427e", "email_invalid"),  # an MD5, not SHA-256
    ],
)
def test_email_junk_is_dropped_with_a_reason(raw: str, reason: str) -> None:
    assert hash_email(raw) == (None, None, reason)


def test_google_variant_only_touches_gmail_domains() -> None:
    assert normalise_email(" A.B@Example.com ") == "a.b@example.com"
    assert hash_email("a.b@example.com")[1] == sha256_hex("a.b@example.com")
    assert hash_email("a.b.c+x.y@gmail.com")[1] == sha256_hex("abc+xy@gmail.com")


# --- phone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "plus_digest", "digits_digest"),
    [
        ("(415) 555-2671", "US", D_US_PLUS, D_US_DIGITS),  # national, event's country
        ("415.555.2671", "US", D_US_PLUS, D_US_DIGITS),
        ("+1 (415) 555-2671 ext. 99", None, D_US_PLUS, D_US_DIGITS),  # extension dropped
        ("(415) 555-2671 x12", "US", D_US_PLUS, D_US_DIGITS),
        ("tel:+1-415-555-2671", "GB", D_US_PLUS, D_US_DIGITS),  # + wins over the region
        ("011 1 415 555 2671", "US", D_US_PLUS, D_US_DIGITS),  # US international prefix
        ("07400 123456", "GB", D_GB_PLUS, D_GB_DIGITS),
        ("0044 7400 123456", "FR", D_GB_PLUS, D_GB_DIGITS),  # 00 international prefix
        ("+44 (0)7400 123456", None, D_GB_PLUS, D_GB_DIGITS),
        ("+49 1512 3456789", "DE", D_DE_PLUS, D_DE_DIGITS),
        ("01512 3456789", "DE", D_DE_PLUS, D_DE_DIGITS),
        ("06 12 34 56 78", "FR", D_FR_PLUS, D_FR_DIGITS),
        ("33612345678", None, D_FR_PLUS, D_FR_DIGITS),  # no region: read as international
        (D_US_PLUS, "US", D_US_PLUS, D_US_PLUS),  # a digest passes through
    ],
)
def test_phone_digests(raw: str, region: str | None, plus_digest: str, digits_digest: str) -> None:
    assert hash_phone(raw, region) == (plus_digest, digits_digest, None)


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "US", "phone_placeholder"),
        ("0", "US", "phone_placeholder"),
        ("none", None, "phone_placeholder"),
        ("555", "US", "phone_invalid"),
        ("call me", "US", "phone_invalid"),
        ("(111) 111-1111", "US", "phone_invalid"),
        ("+1 555 555 5555", None, "phone_invalid"),
        ("+44 7777 777777", None, "phone_invalid"),  # one repeated digit: a placeholder
        ("415 555 2671", "XX", "phone_invalid"),  # unknown region, no country code
    ],
)
def test_phone_junk_is_dropped_with_a_reason(raw: str, region: str | None, reason: str) -> None:
    assert hash_phone(raw, region) == (None, None, reason)


def test_phone_region_decides_national_numbers() -> None:
    assert normalise_phone("07400 123456", "GB") == "+447400123456"
    assert normalise_phone("07400 123456", "US") is None
    assert normalise_phone("(415) 555-2671", "us") == "+14155552671"


# --- names, external id, location ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "digest"),
    [
        ("José", D_JOSE),
        ("  JOSÉ ", D_JOSE),
        ("Jose\u0301", D_JOSE),  # decomposed accent: NFC makes it the same name
        ("O'Brien", D_OBRIEN),
        ("Zoë", D_ZOE),
        ("Jean-Luc", sha256_hex("jeanluc")),
        ("Jean  Luc.", D_JEAN_LUC),
        ("BJÖRN", D_BJOERN),
        ("李", D_LI),  # non-Latin scripts are kept
    ],
)
def test_name_digests(raw: str, digest: str) -> None:
    assert hash_name(raw) == (digest, None)


def test_name_junk() -> None:
    assert hash_name("undefined") == (None, "name_placeholder")
    assert hash_name("!!!") == (None, "name_invalid")
    assert normalise_name(" Mary   Ann ") == "mary ann"


def test_external_id_is_trimmed_and_case_kept() -> None:
    assert hash_external_id("  cust-0000042 ") == (D_CUST_42, None)
    assert hash_external_id("CUST-0000042")[0] != D_CUST_42
    assert hash_external_id("null") == (None, "external_id_placeholder")
    assert hash_external_id("0") == (None, "external_id_placeholder")


@pytest.mark.parametrize(
    ("function", "raw", "expected"),
    [
        (normalise_city, "San Francisco", "sanfrancisco"),
        (normalise_city, "St. Louis", "stlouis"),
        (normalise_city, "Zürich", "zürich"),
        (normalise_region, "California", "ca"),
        (normalise_region, " NY ", "ny"),
        (normalise_region, "Bavaria", None),
        (normalise_country, "United States", "us"),
        (normalise_country, "GB", "gb"),
        (normalise_country, "Narnia", None),
    ],
)
def test_location_normalisers(function, raw: str, expected: str | None) -> None:  # type: ignore[no-untyped-def]
    assert function(raw) == expected


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("94103-1234", "us", "94103"),
        ("9410", "us", None),
        ("SW1A 1AA", "gb", "sw1a1aa"),
        ("10115", "de", "10115"),
        ("  ", "us", None),
    ],
)
def test_postal_codes(raw: str, country: str, expected: str | None) -> None:
    assert normalise_postal_code(raw, country) == expected


# --- the frame entry point -------------------------------------------------------------------


def test_frame_hashing_replaces_plaintext_and_counts_drops() -> None:
    frame = pd.DataFrame(
        {
            "email": [" John.Doe+Promo@GMAIL.com", "undefined", None, "not-an-email"],
            "phone": ["(415) 555-2671", "07400 123456", "0000000000", None],
            "country": ["US", "United Kingdom", "us", None],
            "first_name": ["José", None, "", "Zoë"],
            "last_name": ["O'Brien", None, None, None],
            "external_id": ["cust-0000042", 42, None, "null"],
            "postal_code": ["94103-1234", "SW1A 1AA", None, "x"],
        }
    )
    frame = normalise_location_columns(frame)
    out, dropped = hash_identity_columns(frame)
    for plaintext in ("email", "phone", "first_name", "last_name", "external_id"):
        assert plaintext not in out.columns
    assert out["email_sha256"].tolist()[0] == D_JOHN_PROMO_GMAIL
    assert out["email_google_sha256"].tolist()[0] == D_JOHN_PROMO_GMAIL_NODOTS
    assert out["email_sha256"].isna().tolist() == [False, True, True, True]
    # the phone's default region is the event's (normalised) country
    assert out["phone_sha256"].tolist()[:2] == [D_US_PLUS, D_GB_PLUS]
    assert out["phone_digits_sha256"].tolist()[:2] == [D_US_DIGITS, D_GB_DIGITS]
    assert out["phone_sha256"].isna().tolist()[2:] == [True, True]
    assert out["first_name_sha256"].tolist()[0] == D_JOSE
    assert out["first_name_sha256"].tolist()[3] == D_ZOE
    assert out["last_name_sha256"].tolist()[0] == D_OBRIEN
    assert out["external_id_sha256"].tolist()[:2] == [D_CUST_42, sha256_hex("42")]
    assert out["postal_code"].tolist()[:2] == ["94103", "sw1a1aa"]
    assert out["country"].tolist()[:2] == ["us", "gb"]
    assert dropped == {
        "email_placeholder": 1,
        "email_invalid": 1,
        "phone_invalid": 1,
        "name_placeholder": 1,
        "external_id_placeholder": 1,
    }
    assert str(out["email_sha256"].dtype) == "string"


def test_values_sent_under_hashed_names_are_never_stored_in_the_clear() -> None:
    frame = pd.DataFrame(
        {
            "email_sha256": ["Jane.Doe@Example.com", D_JANE_EXAMPLE.upper(), "garbage"],
            "phone_sha256": [None, "(415) 555-2671", None],
            "country": ["us", "us", "us"],
        }
    )
    out, dropped = hash_identity_columns(frame)
    assert out["email_sha256"].tolist()[:2] == [D_JANE_EXAMPLE, D_JANE_EXAMPLE]
    assert pd.isna(out["email_sha256"].tolist()[2])
    assert out["phone_sha256"].tolist()[1] == D_US_PLUS
    # the missing sibling variant takes the digest given
    assert out["phone_digits_sha256"].tolist()[1] == D_US_PLUS
    assert out["email_google_sha256"].tolist()[0] == D_JANE_EXAMPLE
    assert dropped == {"email_sha256_invalid": 1}


def test_each_distinct_value_is_hashed_once() -> None:
    hash_email.cache_clear()
    frame = pd.DataFrame({"email": ["a@example.com", "b@example.com"] * 5_000})
    out, _ = hash_identity_columns(frame)
    assert hash_email.cache_info().misses == 2
    assert out["email_sha256"].nunique() == 2


@given(st.emails())
def test_hashing_a_digest_again_changes_nothing(email: str) -> None:
    digest, google, reason = hash_email(email)
    if reason is None:
        assert hash_email(digest) == (digest, digest, None)
        assert hash_email(digest.upper())[0] == digest
        assert google == hash_email(email.upper())[1]


# --- page URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://shop.example/p/1?gclid=Cj0KabC&utm_source=ads",
            "https://shop.example/p/1?gclid=Cj0KabC&utm_source=ads",
        ),
        (
            "https://shop.example/?utm_source=news&email=John.Doe%40gmail.com&fbclid=IwAR1",
            "https://shop.example/?utm_source=news&fbclid=IwAR1",
        ),
        ("https://shop.example/u/john%40x.com?x=1", "https://shop.example/u/redacted?x=1"),
        (
            "https://shop.example/t?Phone=%2B1+415+555+2671&order_id=ord-1",
            "https://shop.example/t?order_id=ord-1",
        ),
        ("https://shop.example/t?ref=415-555-2671", "https://shop.example/t"),
        ("https://shop.example/t?utm_content=jane%2Bx%40y.com", "https://shop.example/t"),
        ("https://shop.example/t?first_name=Jos%C3%A9&token=abc", "https://shop.example/t"),
        ("https://shop.example/t#email=a@b.co", "https://shop.example/t"),
        ("https://shop.example/t#/checkout", "https://shop.example/t#/checkout"),
        ("/checkout?order_id=o-1&value=12.5", "/checkout?order_id=o-1&value=12.5"),
        (None, None),
    ],
)
def test_page_urls_lose_personal_data(url: str | None, expected: str | None) -> None:
    assert scrub_url(url) == expected


def test_click_ids_are_read_from_the_landing_url() -> None:
    url = "https://shop.example/?ScCid=abc123&gclid=Cj0K&fbclid=IwAR9&utm_source=x"
    assert click_ids_from_url(url) == {"sccid": "abc123", "gclid": "Cj0K", "fbclid": "IwAR9"}
    assert click_ids_from_url("https://shop.example/") == {}


def test_records_leave_no_plaintext_behind() -> None:
    received = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    record = {
        "event_name": "purchase",
        "event_time": "2026-03-01T11:59:00+00:00",
        "email": "  Jane.Doe@Example.com",
        "phone": "(415) 555-2671",
        "first_name": "José",
        "last_name": "O'Brien",
        "external_id": "cust-0000042",
        "country": "United States",
        "page_url": "https://shop.example/thanks?email=jane.doe%40example.com&gclid=Cj0Kxyz",
        "referrer": "https://mail.example/inbox?to=jane.doe@example.com",
    }
    coerced = coerce_record(record, "server", received)
    assert coerced["gclid"] == "Cj0Kxyz"
    frame, dropped = records_to_frame([coerced])
    assert not dropped
    row = frame.iloc[0]
    assert row["email_sha256"] == D_JANE_EXAMPLE
    assert row["phone_sha256"] == D_US_PLUS
    assert row["external_id_sha256"] == D_CUST_42
    assert row["page_url"] == "https://shop.example/thanks?gclid=Cj0Kxyz"
    assert row["referrer"] == "https://mail.example/inbox"
    text = " ".join(str(v) for v in row.tolist()).lower()
    for plaintext in ("jane", "415", "josé", "brien", "cust-"):
        assert plaintext not in text


def test_the_column_wise_path_scrubs_urls_and_reads_click_ids_too() -> None:
    received = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    records = [
        {
            "event_id": f"e{i}",
            "event_name": "page_view",
            "event_time": "2026-03-01T11:59:00+00:00",
            "page_url": url,
            "referrer": "https://mail.example/read?addr=jane.doe%40example.com",
        }
        for i, url in enumerate(
            [
                "https://shop.example/?utm_source=news&email=jane.doe%40example.com&gclid=G1",
                "https://shop.example/p?fbclid=F1&phone=%2B14155552671",
                "https://shop.example/plain",
            ]
        )
    ]
    result = coerce_records(records, "pixel", [received] * len(records))
    frame = result.frame
    one_by_one = [coerce_record(r, "pixel", received) for r in records]
    for column in ("page_url", "referrer", "gclid", "fbclid"):
        assert frame[column].tolist() == [r[column] for r in one_by_one], column
    assert frame["page_url"].tolist()[:2] == [
        "https://shop.example/?utm_source=news&gclid=G1",
        "https://shop.example/p?fbclid=F1",
    ]
    assert frame["referrer"].tolist()[0] == "https://mail.example/read"
