"""Tests of what the one row of a conversion holds when its copies merge (`transform.dedupe`).

Scope: money and order fields from the backend as one unit (never a value from one copy
with another copy's currency), browser fields (IP, user agent, page URL, cookies, click
ids) from the pixel, the union of identifiers, the earliest plausible event time, the
most restrictive consent, `sources` in a fixed order, the merged row's source and copy
count, a policy for every column of the model, and that the result doesn't depend on the
order rows arrive in.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest

from conversion_platform import events
from conversion_platform.transform.dedupe import (
    BROWSER_FIRST_COLUMNS,
    CONSENT_COLUMNS,
    CONVERSION_COLUMNS,
    MONEY_COLUMNS,
    SERVER_FIRST_COLUMNS,
    deduplicate_hour_frames,
)
from conversion_platform.transform.normalise import sha256_hex
from conversion_platform_tests.dedupe_support import at, copies_frame, copy


def merge(copies: list[dict]) -> pd.DataFrame:
    return deduplicate_hour_frames(copies_frame(copies))[0]


def one(copies: list[dict]) -> pd.Series:
    out = merge(copies)
    assert len(out) == 1, out
    return out.iloc[0]


PIXEL = {
    "event_id": "e-1",
    "value": 99.0,
    "currency": "USD",
    "client_ip": "203.0.113.9",
    "user_agent": "Mozilla/5.0 pixel",
    "page_url": "https://shop.example/thanks?gclid=G1",
    "referrer": "https://shop.example/cart",
    "mpid": "mp-1",
    "fbp": "fb.1.1.111",
    "fbc": "fb.1.1.fbclid1",
    "gclid": "G1",
}
SERVER = {
    "event_id": "e-1",
    "value": 95.5,
    "currency": "EUR",
    "order_id": "o-1",
    "items": [{"id": "sku-1", "quantity": 1, "price": 95.5}],
    "email": "Buyer@Example.com",
    "phone": "+44 7700 900123",
    "first_name": "Zoë",
    "city": "London",
    "country": "GB",
    "client_ip": "10.0.0.1",
    "user_agent": "python-requests/2.31",
}


def test_every_column_of_the_model_has_a_merge_policy() -> None:
    covered = {
        *MONEY_COLUMNS,
        *SERVER_FIRST_COLUMNS,
        *BROWSER_FIRST_COLUMNS,
        *CONSENT_COLUMNS,
        *CONVERSION_COLUMNS,
    }
    assert set(events.STORED_COLUMNS) <= covered


def test_money_and_order_from_the_backend_browser_fields_from_the_pixel() -> None:
    row = one([copy("pixel", at(10, 5), **PIXEL), copy("server", at(10, 6), **SERVER)])
    assert row["value"] == 95.5
    assert row["currency"] == "EUR"
    assert bool(row["value_verified"]) is True
    assert row["order_id"] == "o-1"
    assert "sku-1" in row["items"]
    assert row["client_ip"] == "203.0.113.9"
    assert row["user_agent"] == "Mozilla/5.0 pixel"
    assert row["page_url"] == PIXEL["page_url"]
    assert row["referrer"] == PIXEL["referrer"]
    assert (row["mpid"], row["fbp"], row["fbc"], row["gclid"]) == (
        "mp-1",
        "fb.1.1.111",
        "fb.1.1.fbclid1",
        "G1",
    )
    assert row["source"] == "server"
    assert row["sources"] == "pixel,server"


def test_money_travels_as_a_unit_from_the_first_copy_with_a_value() -> None:
    # The backend knows the order but not its value: value AND currency come from the pixel.
    row = one(
        [
            copy("pixel", at(10, 5), event_id="e-1", value=12.0, currency="GBP"),
            copy("server", at(10, 6), event_id="e-1", order_id="o-1", currency="JPY"),
        ]
    )
    assert (row["value"], row["currency"]) == (12.0, "GBP")
    assert bool(row["value_verified"]) is False, "a pixel-only value stays unverified"
    assert row["order_id"] == "o-1"
    assert row["source"] == "pixel"


def test_log_money_ranks_between_backend_and_pixel() -> None:
    row = one(
        [
            copy("pixel", at(10, 5), event_id="e-1", value=1.0, currency="USD"),
            copy("log", at(10, 5, 2), event_id="e-1", value=2.0, currency="USD"),
        ]
    )
    assert row["value"] == 2.0
    assert row["sources"] == "pixel,log"


def test_backend_fields_fill_in_where_the_pixel_had_none() -> None:
    row = one(
        [
            copy("pixel", at(10, 5), event_id="e-1", mpid="mp-1"),
            copy("server", at(10, 6), event_id="e-1", client_ip="10.0.0.1", gclid="G-server"),
        ]
    )
    assert row["client_ip"] == "10.0.0.1"
    assert row["gclid"] == "G-server"


def test_every_identifier_either_copy_had_is_kept() -> None:
    row = one(
        [
            copy(
                "pixel",
                at(10, 5),
                event_id="e-1",
                email="form@example.com",
                mpid="mp-1",
                ttclid="T1",
            ),
            copy("server", at(10, 6), event_id="e-1", phone="+1 415 555 0123", external_id="c-42"),
        ]
    )
    assert row["email_sha256"] == sha256_hex("form@example.com")
    assert row["phone_sha256"] == sha256_hex("+14155550123")
    assert row["external_id_sha256"] == sha256_hex("c-42")
    assert (row["mpid"], row["ttclid"]) == ("mp-1", "T1")


def test_where_copies_disagree_on_personal_identity_the_backend_wins() -> None:
    row = one(
        [
            copy("pixel", at(10, 5), event_id="e-1", email="typed@example.com"),
            copy("server", at(10, 6), event_id="e-1", email="account@example.com"),
        ]
    )
    assert row["email_sha256"] == sha256_hex("account@example.com")


def test_the_earliest_event_time_and_time_received() -> None:
    row = one(
        [
            copy("pixel", at(10, 5, 30), event_time=at(10, 5, 20), event_id="e-1"),
            copy("server", at(10, 5, 40), event_time=at(10, 5, 10), event_id="e-1"),
        ]
    )
    assert row["event_time"] == pd.Timestamp(at(10, 5, 10))
    assert row["received_at"] == pd.Timestamp(at(10, 5, 30))


def test_an_implausible_copy_time_does_not_override_a_plausible_one() -> None:
    # The pixel's clock is 30 days behind; the backend's stamp is right.
    row = one(
        [
            copy("pixel", at(10, 5), event_time=at(10, 5, day=-30), event_id="e-1"),
            copy("server", at(10, 6), event_time=at(10, 4, 59), event_id="e-1"),
        ]
    )
    assert row["event_time"] == pd.Timestamp(at(10, 4, 59))


def test_when_no_copy_time_is_plausible_the_earliest_stays_for_validation_to_judge() -> None:
    row = one(
        [
            copy("pixel", at(10, 5), event_time=at(10, 5, day=-30), event_id="e-1"),
            copy("server", at(10, 6), event_time=at(10, 6, day=-20), event_id="e-1"),
        ]
    )
    assert row["event_time"] == pd.Timestamp(at(10, 5, day=-30))


@pytest.mark.parametrize(
    ("pixel", "server", "merged"),
    [
        ("granted", "granted", "granted"),
        ("granted", "denied", "denied"),
        ("denied", "granted", "denied"),
        ("denied", "unknown", "denied"),
        ("unknown", "granted", "granted"),
        ("granted", None, "granted"),
        (None, None, "unknown"),
    ],
)
def test_consent_the_most_restrictive_stated_choice_wins(
    pixel: str | None, server: str | None, merged: str
) -> None:
    row = one(
        [
            copy("pixel", at(10, 5), event_id="e-1", consent_ad_user_data=pixel,
                 consent_ad_personalization=pixel),
            copy("server", at(10, 6), event_id="e-1", consent_ad_user_data=server,
                 consent_ad_personalization="denied"),
        ]
    )  # fmt: skip
    assert row["consent_ad_user_data"] == merged
    assert row["consent_ad_personalization"] == "denied"


def test_sources_are_listed_once_each_in_a_fixed_order() -> None:
    row = one(
        [
            copy("log", at(10, 5), event_id="e-1"),
            copy("server", at(10, 6), event_id="e-1"),
            copy("pixel", at(10, 7), event_id="e-1"),
            copy("pixel", at(10, 8), event_id="e-1"),
        ]
    )
    assert row["sources"] == "pixel,server,log"
    assert row["copies"] == 4


def test_a_single_copy_keeps_its_fields_and_gets_the_stage_columns() -> None:
    out = merge([copy("pixel", at(10, 5), **PIXEL)])
    row = out.iloc[0]
    assert (row["sources"], row["copies"], row["dedupe_rule"]) == ("pixel", 1, "event_id")
    assert row["value"] == 99.0


def test_the_result_does_not_depend_on_the_order_rows_arrive_in() -> None:
    copies = [
        copy("pixel", at(10, 5), **PIXEL),
        copy("server", at(10, 6), **SERVER),
        copy("pixel", at(10, 6), event_id="e-1", client_ip="198.51.100.1"),
        copy("log", at(10, 7), order_id="o-1", value=95.5, currency="EUR"),
        copy("pixel", at(10, 20), event_name="lead", mpid="mp-2"),
        copy("pixel", at(10, 21), event_name="lead", mpid="mp-2"),
        copy("server", at(10, 30), event_id="e-2", event_name="sign_up"),
    ]
    frame = copies_frame(copies)
    expected = deduplicate_hour_frames(frame)[0]
    shuffler = random.Random(4)
    for _ in range(5):
        order = list(range(len(frame)))
        shuffler.shuffle(order)
        shuffled = deduplicate_hour_frames(frame.iloc[order].reset_index(drop=True))[0]
        pd.testing.assert_frame_equal(shuffled, expected)
    assert len(expected) == 3
