"""Tests of validation and of where bad input lands (`transform.validate`, `transform.schema`,
`ingest.landing_writer`, `ingest.records`, `store.quarantine`, `store.identity_drops`).

Scope: every invalid class of a conversion fails with its named reason (event name not
in the model, too old, after the time received, negative value, value without an ISO
4217 currency, ids and URLs too long, missing required fields, values outside the
model's lists), several reasons on one row, custom snake_case names accepted, client
clock skew up to 5 minutes clamped and counted, malformed hashed identifiers dropped and
counted without costing the conversion, the redacted description of a quarantined row;
and at the collector: records that can't be conversions quarantined with their reason in
the landing transaction, identity values that can't be normalised dropped and counted
per hour and path, and a malformed pre-hashed value never stored.
"""

from __future__ import annotations

import gc
import weakref
from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.ingest.landing_writer import land_events
from conversion_platform.store.identity_drops import dropped_identifier_counts
from conversion_platform.store.quarantine import read_quarantined, reason_counts
from conversion_platform.store.tables import landing_events
from conversion_platform.transform.dedupe import deduplicate_hour_frames
from conversion_platform.transform.normalise import sha256_hex
from conversion_platform.transform.validate import (
    quarantine_records,
    validate_conversions,
)
from conversion_platform_tests.dedupe_support import at, copies_frame, copy, hour_of

MAX_AGE = timedelta(days=7)
VALID = {"event_id": "e-ok", "value": 10.0, "currency": "USD", "order_id": "o-ok"}


def conversions(*copies: dict, **column_overrides: object) -> pd.DataFrame:
    """Deduplicated rows of `copies`, with columns overwritten after ingest (for values
    that ingest itself would refuse)."""
    frame = deduplicate_hour_frames(copies_frame(list(copies)))[0]
    for column, value in column_overrides.items():
        frame[column] = pd.Series([value] * len(frame), dtype=frame[column].dtype)
    return frame


def reasons_of(frame: pd.DataFrame) -> list[str]:
    result = validate_conversions(frame, MAX_AGE)
    assert len(result.valid) + len(result.invalid) == len(frame)
    return list(result.invalid["reasons"])


def test_a_valid_conversion_passes() -> None:
    result = validate_conversions(conversions(copy("server", at(10, 5), **VALID)), MAX_AGE)
    assert (len(result.valid), len(result.invalid)) == (1, 0)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event_name": "Purchase Completed!!"}, "event_name_not_in_model"),
        ({"event_name": "x" * 65}, "event_name_not_in_model"),
        ({"event_name": "9lives"}, "event_name_not_in_model"),
        ({"value": -5.0}, "value_negative"),
        ({"value": 5.0, "currency": None}, "currency_missing_with_value"),
        ({"value": 5.0, "currency": "DOLLARS"}, "currency_not_iso_4217"),
        ({"value": 5.0, "currency": "XYZ"}, "currency_not_iso_4217"),
        ({"event_id": "e" * 257}, "event_id_too_long"),
        ({"order_id": "o" * 257}, "order_id_too_long"),
        ({"gclid": "g" * 300}, "gclid_too_long"),
        ({"fbp": "f" * 300}, "fbp_too_long"),
    ],
)
def test_each_invalid_field_fails_with_its_reason(fields: dict, reason: str) -> None:
    frame = conversions(copy("server", at(10, 5), **{**VALID, **fields}))
    assert reasons_of(frame) == [reason]


def test_custom_snake_case_event_names_are_in_the_model() -> None:
    frame = conversions(copy("server", at(10, 5), event_name="request_demo", event_id="e-1"))
    assert reasons_of(frame) == []


def test_a_currency_without_a_value_is_not_checked() -> None:
    frame = conversions(copy("server", at(10, 5), event_id="e-1", currency="DOLLARS"))
    assert reasons_of(frame) == []


@pytest.mark.parametrize(
    ("age", "reason"),
    [
        (timedelta(days=7), None),
        (timedelta(days=7, seconds=1), "event_time_older_than_max_age"),
        (timedelta(days=30), "event_time_older_than_max_age"),
    ],
)
def test_event_time_not_older_than_the_maximum_age(age: timedelta, reason: str | None) -> None:
    received = at(10, 5)
    frame = conversions(copy("server", received, event_time=received - age, event_id="e-1"))
    assert reasons_of(frame) == ([reason] if reason else [])


def test_the_maximum_age_is_configurable() -> None:
    received = at(10, 5)
    frame = conversions(copy("server", received, event_time=received - timedelta(hours=3)))
    assert list(validate_conversions(frame, timedelta(hours=2)).invalid["reasons"]) == [
        "event_time_older_than_max_age"
    ]


def test_client_clock_skew_up_to_five_minutes_is_clamped_and_counted() -> None:
    received = at(10, 5)
    frame = conversions(
        copy("pixel", received, event_time=received + timedelta(minutes=4), event_id="e-1"),
        copy("pixel", received, event_time=received + timedelta(minutes=5), event_id="e-2"),
        copy("pixel", received, event_time=received + timedelta(seconds=301), event_id="e-3"),
        copy("pixel", received, event_time=received + timedelta(hours=2), event_id="e-4"),
    )
    result = validate_conversions(frame, MAX_AGE)
    assert result.clamped_event_times == 2
    assert sorted(result.valid["event_id"]) == ["e-1", "e-2"]
    assert (result.valid["event_time"] == pd.Timestamp(received)).all()
    assert sorted(result.invalid["event_id"]) == ["e-3", "e-4"]
    assert set(result.invalid["reasons"]) == {"event_time_after_received"}


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("event_time", pd.NaT, "event_time_missing"),
        ("event_name", pd.NA, "event_name_missing"),
        ("event_id", pd.NA, "event_id_missing"),
        ("consent_ad_user_data", pd.NA, "consent_ad_user_data_missing"),
        ("source", "email", "source_unknown"),
        ("action_source", "carrier_pigeon", "action_source_unknown"),
        ("consent_ad_personalization", "maybe", "consent_ad_personalization_invalid"),
        ("page_url", "https://shop.example/" + "p" * 5_000, "page_url_too_long"),
    ],
)
def test_missing_fields_and_values_outside_the_model(
    column: str, value: object, reason: str
) -> None:
    frame = conversions(copy("server", at(10, 5), **VALID), **{column: value})
    assert reasons_of(frame) == [reason]


def test_every_failed_check_of_a_row_is_reported_in_a_fixed_order() -> None:
    frame = conversions(
        copy("server", at(10, 5), event_name="Bad Name", value=-1.0, currency="DOLLARS")
    )
    assert reasons_of(frame) == ["currency_not_iso_4217; event_name_not_in_model; value_negative"]
    result = validate_conversions(frame, MAX_AGE)
    assert result.reason_counts() == {
        "currency_not_iso_4217": 1,
        "event_name_not_in_model": 1,
        "value_negative": 1,
    }


def test_valid_rows_go_on_when_others_fail() -> None:
    frame = conversions(
        copy("server", at(10, 5), **VALID),
        copy("server", at(10, 6), event_id="e-bad", value=-3.0, currency="USD"),
        copy("server", at(10, 7), event_id="e-ok-2", event_name="lead"),
    )
    result = validate_conversions(frame, MAX_AGE)
    assert sorted(result.valid["event_id"]) == ["e-ok", "e-ok-2"]
    assert list(result.invalid["event_id"]) == ["e-bad"]


def test_a_validated_frame_is_freed_with_its_last_reference_not_by_the_collector() -> None:
    """pandera caches an accessor that points back at a frame it validates in place; left
    there, the hour's frame lived until the cyclic collector ran, through the next stage."""
    frame = conversions(
        copy("server", at(10, 5), **VALID),
        copy("server", at(10, 6), event_id="e-bad", value=-3.0, currency="USD"),
    )
    gc.collect()
    gc.disable()
    try:
        checked = weakref.ref(frame)
        result = validate_conversions(frame, MAX_AGE)
        assert len(result.valid) == 1
        del frame
        assert checked() is None
    finally:
        gc.enable()


def test_malformed_hashed_identifiers_are_dropped_and_the_conversion_kept() -> None:
    frame = conversions(
        copy("server", at(10, 5), **VALID), email_sha256="not-a-digest", phone_sha256="ABC"
    )
    result = validate_conversions(frame, MAX_AGE)
    assert len(result.valid) == 1
    assert result.valid[["email_sha256", "phone_sha256"]].isna().all().all()
    assert result.dropped_identifiers == {"email_sha256_malformed": 1, "phone_sha256_malformed": 1}


def test_quarantine_records_describe_the_row_without_personal_data() -> None:
    frame = conversions(
        copy(
            "server",
            at(10, 5),
            event_id="e-1",
            value=-1.0,
            currency="USD",
            email="secret.person@example.com",
            phone="+1 415 555 0100",
            page_url="https://shop.example/thanks?email=secret.person@example.com",
        )
    )
    records = quarantine_records(validate_conversions(frame, MAX_AGE).invalid)
    assert len(records) == 1
    record = records[0]
    assert (record.stage, record.source, record.reason) == (
        "validation",
        "server",
        "value_negative",
    )
    assert record.hour == hour_of(at(10))
    assert "event_id=e-1" in record.raw_redacted
    assert "value=-1.0" in record.raw_redacted
    assert "secret" not in record.raw_redacted
    assert "415" not in record.raw_redacted
    assert record.origin == "dedupe_key=event_id:purchase:e-1"


# --- at the collector: the landing transaction ---------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"event_time": "2026-03-02T10:00:00+00:00"}, "event_name is missing"),
        ({"event_name": "lead", "event_time": "yesterday"}, "event_time is not ISO 8601"),
        ({"event_name": "lead", "event_time": "2026-03-02T10:00:00"}, "event_time has no UTC offset"),
        ({"event_name": "lead"}, "event_time is missing"),
        ({"event_name": "purchase", "event_time": 1772445600, "value": "ten"}, "value is not a number"),
        ({"event_name": "lead", "event_time": 1772445600, "consent_ad_user_data": "perhaps"},
         "consent_ad_user_data must be granted, denied or unknown"),
        ({"event_name": "purchase", "event_time": 1772445600, "items": "nope"}, "items is not a JSON array"),
        ({"event_name": ["lead"], "event_time": 1772445600}, "event_name must be a string"),
    ],
)  # fmt: skip
def test_records_that_cannot_be_conversions_are_quarantined_by_the_collector(
    engine: Engine, record: dict, reason: str
) -> None:
    received = at(10, 30)
    result = land_events(
        engine, [record, {"event_name": "lead", "event_time": 1772445600}], "server", received
    )
    assert result.accepted == 1
    assert [i for i, _ in result.rejected] == [0]
    quarantined = read_quarantined(
        engine, hour_of(received), hour_of(received) + timedelta(hours=1)
    )
    assert list(quarantined["stage"]) == ["collector"]
    assert list(quarantined["source"]) == ["server"]
    assert quarantined.loc[0, "reason"].startswith(reason)
    assert list(reason_counts(quarantined)["reason"]) == [reason.split(": ")[0]]


def test_unusable_identity_values_are_dropped_counted_and_never_cost_the_conversion(
    engine: Engine,
) -> None:
    received = at(10, 30)
    records = [
        {"event_id": "e-1", "event_name": "lead", "event_time": 1772445600, "email": "no-at-sign",
         "phone": "not a number"},
        {"event_id": "e-2", "event_name": "lead", "event_time": 1772445600, "email": "undefined",
         "email_sha256": "bob@example.com"},
        {"event_id": "e-3", "event_name": "lead", "event_time": 1772445600,
         "email": "Real.Person@Example.com"},
    ]  # fmt: skip
    result = land_events(engine, records, "server", received)
    assert result.accepted == 3
    counts = dropped_identifier_counts(
        engine, hour_of(received), hour_of(received) + timedelta(hours=1)
    )
    assert dict(zip(counts["reason"], counts["count"], strict=True)) == {
        "email_invalid": 1,
        "email_placeholder": 1,
        "email_sha256_malformed": 1,
        "phone_invalid": 1,
    }
    assert set(counts["source"]) == {"server"}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(landing_events.c.event_id, landing_events.c.email_sha256)
        ).all()
    stored = dict(rows)
    assert stored["e-1"] is None and stored["e-2"] is None
    assert stored["e-3"] == sha256_hex("real.person@example.com")
    with engine.connect() as conn:
        everything = " ".join(
            str(v) for row in conn.execute(sa.select(landing_events)).all() for v in row
        )
    assert "bob@example.com" not in everything
    assert "no-at-sign" not in everything


def test_dropped_identifiers_are_counted_in_the_hour_each_event_arrived(engine: Engine) -> None:
    records = [
        {"event_name": "lead", "event_time": 1772445600, "email": "bad"},
        {"event_name": "lead", "event_time": 1772449200, "email": "bad"},
        {"event_name": "lead", "event_time": 1772449201, "email": "null"},
    ]
    received = [at(10, 5), at(11, 5), at(11, 6)]
    land_events(engine, records, events.SOURCE_PIXEL, received)
    counts = dropped_identifier_counts(engine, hour_of(at(10)), hour_of(at(12)))
    by_hour = counts.groupby("hour")["count"].sum()
    assert list(by_hour.to_numpy()) == [1, 2]
