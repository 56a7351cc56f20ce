"""Tests of which copies within an hour are one conversion (`transform.dedupe_keys`).

Scope: the key rules in order (sender event id, purchase order id, content fingerprint
within the tolerance, nothing to match on), ids the platform generated itself not
counting as sent, purchases linked through their order id (access-log hit without id +
pixel copy with one; two event ids for one order), the rule and key recorded, the
deterministic event id of fallback keys, bounded key length, and the match keys the
ledger receives. Copies are built through the real ingest coercion and hashing.
"""

from __future__ import annotations

import pandas as pd
import pytest

from conversion_platform.transform.dedupe import deduplicate_hour_frames
from conversion_platform.transform.dedupe_keys import (
    DERIVED_EVENT_ID_PREFIX,
    RULE_EVENT_ID,
    RULE_FINGERPRINT,
    RULE_NONE,
    RULE_ORDER_ID,
    assign_dedupe_keys,
)
from conversion_platform_tests.dedupe_support import at, copies_frame, copy


def keyed(copies: list[dict]) -> pd.DataFrame:
    return assign_dedupe_keys(copies_frame(copies)).frame


def merged(copies: list[dict]) -> pd.DataFrame:
    return deduplicate_hour_frames(copies_frame(copies))[0]


def test_copies_sharing_event_id_and_name_are_one_conversion_by_event_id() -> None:
    out = merged(
        [
            copy("pixel", at(10, 5), event_id="e-1", value=10, currency="USD"),
            copy("server", at(10, 6), event_id="e-1", value=10, currency="USD"),
        ]
    )
    assert len(out) == 1
    row = out.iloc[0]
    assert row["dedupe_rule"] == RULE_EVENT_ID
    assert row["dedupe_key"] == "event_id:purchase:e-1"
    assert row["event_id"] == "e-1"
    assert row["copies"] == 2


def test_same_event_id_with_different_names_are_different_conversions() -> None:
    out = merged(
        [
            copy("pixel", at(10, 5), event_id="e-1", event_name="lead"),
            copy("server", at(10, 6), event_id="e-1", event_name="sign_up"),
        ]
    )
    assert sorted(out["event_name"]) == ["lead", "sign_up"]
    assert set(out["copies"]) == {1}


def test_purchases_without_event_id_fall_back_to_the_order_id() -> None:
    out = merged(
        [
            copy("server", at(10, 5), order_id="o-1", value=30, currency="EUR"),
            copy("log", at(10, 7), order_id="o-1", value=30, currency="EUR"),
            copy("log", at(10, 8), order_id="o-2", value=5, currency="EUR"),
        ]
    )
    assert len(out) == 2
    first = out.set_index("order_id").loc["o-1"]
    assert first["dedupe_rule"] == RULE_ORDER_ID
    assert first["dedupe_key"] == "order_id:purchase:o-1"
    assert first["copies"] == 2
    assert first["event_id"].startswith(DERIVED_EVENT_ID_PREFIX)


def test_order_ids_only_key_purchases() -> None:
    out = merged(
        [
            copy("server", at(10, 5), event_name="lead", order_id="o-1", email="a@shop.example"),
            copy("server", at(10, 30), event_name="lead", order_id="o-1", email="a@shop.example"),
        ]
    )
    # Not purchases: the fingerprint decides, and 25 minutes apart they are two leads.
    assert len(out) == 2
    assert set(out["dedupe_rule"]) == {RULE_FINGERPRINT}


def test_generated_ids_do_not_count_as_sent() -> None:
    frame = keyed([copy("log", at(10, 5), order_id="o-9", value=1, currency="USD")])
    assert frame.loc[0, "event_id"].startswith("cpgen_")
    assert frame.loc[0, "dedupe_rule"] == RULE_ORDER_ID


def test_access_log_hit_without_id_joins_the_pixel_copy_of_the_same_order() -> None:
    out = merged(
        [
            copy("pixel", at(10, 5), event_id="e-7", order_id="o-7", value=20, currency="USD"),
            copy("log", at(10, 5, 1), order_id="o-7", value=20, currency="USD"),
        ]
    )
    assert len(out) == 1
    row = out.iloc[0]
    assert row["sources"] == "pixel,log"
    assert row["dedupe_rule"] == RULE_ORDER_ID
    assert row["event_id"] == "e-7", "the sender's id is kept for the platforms' own dedupe"


def test_two_event_ids_for_one_order_are_one_conversion_with_the_smallest_id() -> None:
    out = merged(
        [
            copy("pixel", at(10, 5), event_id="e-b", order_id="o-1", value=9, currency="USD"),
            copy("pixel", at(10, 9), event_id="e-a", order_id="o-1", value=9, currency="USD"),
            copy("server", at(10, 6), event_id="e-b", order_id="o-1", value=9, currency="USD"),
        ]
    )
    assert len(out) == 1
    assert out.loc[0, "event_id"] == "e-a"
    assert out.loc[0, "dedupe_rule"] == RULE_ORDER_ID
    assert out.loc[0, "copies"] == 3


def test_links_are_transitive_through_event_ids_and_orders() -> None:
    # e-1 and e-2 share o-1; e-2 also appears without the order; o-2 has no link.
    out = merged(
        [
            copy("pixel", at(10, 1), event_id="e-1", order_id="o-1"),
            copy("server", at(10, 2), event_id="e-2", order_id="o-1"),
            copy("pixel", at(10, 3), event_id="e-2"),
            copy("server", at(10, 4), event_id="e-3", order_id="o-2"),
        ]
    )
    assert sorted(out["copies"]) == [1, 3]


@pytest.mark.parametrize(
    ("seconds_apart", "conversions"),
    [(0, 1), (119, 1), (120, 1), (121, 2), (600, 2)],
)
def test_fingerprint_copies_within_the_tolerance_are_one(
    seconds_apart: int, conversions: int
) -> None:
    out = merged(
        [
            copy("pixel", at(10, 10), event_name="lead", mpid="m-1", email="x@shop.example"),
            copy(
                "pixel",
                at(10, 10, seconds_apart),
                event_name="lead",
                mpid="m-1",
                email="x@shop.example",
            ),
        ]
    )
    assert len(out) == conversions
    assert set(out["dedupe_rule"]) == {RULE_FINGERPRINT}


def test_fingerprint_clusters_chain_copies_each_within_the_tolerance_of_the_last() -> None:
    times = [at(10, 0, 0), at(10, 1, 50), at(10, 3, 40), at(10, 9, 0)]
    out = merged([copy("pixel", t, event_name="lead", mpid="m-1") for t in times])
    assert sorted(out["copies"]) == [1, 3]


@pytest.mark.parametrize(
    "difference",
    [{"value": 11}, {"mpid": "m-2"}, {"email": "y@shop.example"}, {"event_name": "sign_up"}],
)
def test_fingerprint_content_differs_when_name_value_or_identity_differs(
    difference: dict,
) -> None:
    base = {"event_name": "lead", "mpid": "m-1", "email": "x@shop.example", "value": 10,
            "currency": "USD"}  # fmt: skip
    out = merged(
        [copy("pixel", at(10, 10), **base), copy("pixel", at(10, 10), **{**base, **difference})]
    )
    assert len(out) == 2


def test_anonymous_copies_fall_back_to_ip_and_user_agent() -> None:
    out = merged(
        [
            copy("log", at(10, 10), event_name="lead", client_ip="1.2.3.4", user_agent="UA"),
            copy("log", at(10, 10, 30), event_name="lead", client_ip="1.2.3.4", user_agent="UA"),
            copy("log", at(10, 10, 40), event_name="lead", client_ip="5.6.7.8", user_agent="UA"),
        ]
    )
    assert sorted(out["copies"]) == [1, 2]


def test_copies_with_nothing_to_match_on_stand_alone() -> None:
    out = merged(
        [
            copy("server", at(10, 10), event_name="lead"),
            copy("server", at(10, 10, 30), event_name="lead"),
        ]
    )
    assert len(out) == 2
    assert set(out["dedupe_rule"]) == {RULE_NONE}
    assert out["event_id"].str.startswith("cpgen_").all()


def test_fallback_event_ids_are_deterministic_and_do_not_depend_on_the_copy() -> None:
    one = merged([copy("server", at(10, 5), order_id="o-1")])
    other = merged([copy("log", at(10, 9), order_id="o-1", value=3, currency="USD")])
    assert one.loc[0, "event_id"] == other.loc[0, "event_id"]
    assert one.loc[0, "event_id"].startswith(DERIVED_EVENT_ID_PREFIX)


def test_long_ids_give_bounded_keys() -> None:
    long_id = "x" * 3_000
    frame = keyed(
        [copy("pixel", at(10, 1), event_id=long_id), copy("server", at(10, 2), event_id=long_id)]
    )
    keys = frame["dedupe_key"].unique()
    assert len(keys) == 1
    assert keys[0].startswith("event_id:sha256:")
    assert len(keys[0]) < 100


def test_match_keys_list_every_key_of_each_conversion() -> None:
    result = assign_dedupe_keys(
        copies_frame(
            [
                copy("pixel", at(10, 1), event_id="e-1", order_id="o-1"),
                copy("log", at(10, 2), order_id="o-1"),
                copy("pixel", at(10, 3), event_name="lead", mpid="m-1"),
            ]
        )
    )
    keys = result.match_keys.sort_values("match_key")
    assert list(keys["kind"]) == [RULE_EVENT_ID, RULE_FINGERPRINT, RULE_ORDER_ID]
    purchase = keys.loc[keys["kind"] != RULE_FINGERPRINT, "dedupe_key"].unique()
    assert list(purchase) == ["order_id:purchase:o-1"]


def test_copies_in_different_hours_are_never_merged_here() -> None:
    out = merged(
        [
            copy("pixel", at(10, 59, 59), event_id="e-1"),
            copy("server", at(11, 0, 2), event_id="e-1"),
        ]
    )
    assert len(out) == 2
    assert set(out["copies"]) == {1}
