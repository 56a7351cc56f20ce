"""Column-wise record coercion (`ingest.record_columns`) against the per-record rules
(`records.coerce_record`): the same records kept with the same values, the same records
refused with the same reasons, for plain and tricky input alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conversion_platform import events
from conversion_platform.ingest.record_columns import (
    coerce_record_frame,
    coerce_records,
    stored_frame,
)
from conversion_platform.ingest.records import (
    _RECORD_FIELDS,
    RecordError,
    coerce_record,
    records_to_frame,
)

RECEIVED = datetime(2026, 3, 2, 10, tzinfo=UTC)
_DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")

_TEXT = st.one_of(
    st.none(),
    st.sampled_from(
        # Every kind of space `str.strip()` removes, and one it keeps (U+200B), at either end.
        [
            "",
            "  ",
            " a ",
            "abc",
            "ÉCOLE",
            "Purchase ",
            "\xa0x\xa0",
            "\x1cy",
            "x" * 5000,
            "\x85a",
            "a\u3000",
            "\u2028 b",
            "\x0b",
            "\u200bz",
            "z\u200b",
            "y\x1f",
            "\t\n",
            "é" * 2100,
            " " + "x" * 4096,
            "x" * 4096 + "\u2029",
            "€" * 4097,
        ]
    ),
    st.text(max_size=12),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.booleans(),
    st.just([]),
    st.just({}),
)
_TIMES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-03-02T10:00:00+00:00",
            "2026-03-02T10:00:00Z",
            "2026-03-02 10:00:00.5+01:00",
            "2026-03-02T10:00:00.123456-05:30",
            "2026-03-02T10:00:00",
            "yesterday",
            "2026-02-30T10:00:00Z",
            " 2026-03-02T10:00:00Z",
            "2026-03-02T10:00:00.1234567+00:00",
            "3000-01-01T00:00:00Z",
            "2026-03-02T23:59:60Z",
        ]
    ),
    st.integers(1_700_000_000, 1_800_000_000_000),
    st.floats(allow_nan=True),
    st.booleans(),
)
_VALUES = st.one_of(
    st.none(), st.sampled_from(["", "4.5", "x"]), st.floats(), st.integers(-10, 10), st.booleans()
)
_ITEMS = st.one_of(
    st.none(),
    st.sampled_from(["", "[]", '[{"id":"a"}]', "notjson", "[1]"]),
    st.just([]),
    st.just([{"id": 1, "quantity": 2}]),
    st.just([1]),
)
_CONSENT = st.one_of(
    st.none(), st.sampled_from(["", " ", "granted", "DENIED", " yes ", "maybe", "0"]), st.booleans()
)
_RECORD = st.fixed_dictionaries(
    {},
    optional={
        "event_id": _TEXT,
        "event_name": st.one_of(_TEXT, st.sampled_from(["purchase", " Lead ", "sign_up"])),
        "event_time": _TIMES,
        "email": _TEXT,
        "phone": _TEXT,
        "currency": _TEXT,
        "action_source": _TEXT,
        "mpid": _TEXT,
        "country": _TEXT,
        "email_sha256": _TEXT,
        "value": _VALUES,
        "items": _ITEMS,
        "consent_ad_user_data": _CONSENT,
        "unknown_field": _TEXT,
    },
)


def _expected(records: list[Any], default: bool) -> tuple[dict[int, dict], dict[int, str]]:
    kept, refused = {}, {}
    for i, record in enumerate(records):
        received = RECEIVED + timedelta(seconds=i)
        try:
            coerced = coerce_record(
                record,
                "pixel",
                received_at=received,
                default_event_time=received if default else None,
            )
        except RecordError as exc:
            refused[i] = str(exc)
            continue
        try:
            pd.Timestamp(coerced["event_time"]).as_unit("ns")
        except (OverflowError, pd.errors.OutOfBoundsDatetime):
            refused[i] = "event_time is out of range"
            continue
        kept[i] = coerced
    return kept, refused


def _same(got: Any, expected: Any, field: str) -> bool:
    if got is pd.NA:  # a missing value of a text column Arrow read (the model's string dtype)
        got = None
    if field in events.TIMESTAMP_COLUMNS:
        return pd.Timestamp(got) == pd.Timestamp(expected)
    if field == "value":
        return (expected is None and math.isnan(got)) or got == expected
    return got == expected


def _texts(column: pd.Series) -> list[str | None]:
    """A text column's values, None for missing ones: comparing `pd.NA` in a list raises
    ("boolean value of NA is ambiguous") instead of showing which value differs."""
    return [None if value is pd.NA else value for value in column.tolist()]


def _check(records: list[Any], default: bool) -> None:
    received = [RECEIVED + timedelta(seconds=i) for i in range(len(records))]
    result = coerce_records(records, "pixel", received, default_event_time=default)
    kept, refused = _expected(records, default)
    assert dict(result.failures) == refused
    assert list(result.positions) == sorted(kept)
    for row, position in enumerate(result.positions):
        for field in _RECORD_FIELDS:
            got = result.frame[field].iloc[row]
            assert _same(got, kept[position][field], field), (position, field, got)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(_RECORD, st.just(["not", "an", "object"])), max_size=40), st.booleans())
def test_columns_agree_with_coerce_record(records: list[Any], default: bool) -> None:
    _check(records, default)


#: Text or nothing: each column of such records is read by Arrow (`_arrow_text`), which
#: finds the values to trim, blank or refuse; the other tests mix in numbers and so on.
_ONLY_TEXT = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            " ",
            "\x85a",
            "a\u3000",
            "\u2028 b",
            "\x0b",
            "\u200bz",
            "y\x1f",
            "€" * 4097,
            " " + "x" * 4096,
            "x" * 4096 + "\u2029",
            "é" * 2100,
            " Purchase",
            "GRANTED ",
            "no",
        ]
    ),
    st.text(max_size=6),
)
_TEXT_RECORD = st.fixed_dictionaries(
    {  # what a record needs to stay on the column path at all
        # blank or missing: `coerce_record` derives an id, which the column read by
        # Arrow must take in (the rows it filled in are patched)
        "event_id": st.sampled_from(["e1", " e2", "e3\x85", "\u3000e4", "", " ", None]),
        "event_name": st.sampled_from(["purchase", " Lead ", "sign_up\u2028"]),
        "event_time": st.just("2026-03-02T10:00:00Z"),
    },
    optional={
        name: _ONLY_TEXT
        for name in (
            "email",
            "currency",
            "action_source",
            "mpid",
            "page_url",
            "consent_ad_user_data",
        )
    },
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_TEXT_RECORD, min_size=1, max_size=30))
def test_columns_of_text_only_agree_with_coerce_record(records: list[Any]) -> None:
    _check(records, False)


def test_a_nan_in_a_text_field_agrees_with_coerce_record() -> None:
    """A JSON NaN where text belongs (hypothesis found it): `infer_dtype` skips NaN as
    missing, so the column looked like text; the record must take the per-record path."""
    base = {"event_id": "e1", "event_name": "purchase", "event_time": "2026-11-02T10:00:00Z"}
    _check([{**base, "order_id": float("nan")}, {**base, "event_id": "e2"}], False)


def test_plain_records_take_the_fast_path_and_agree() -> None:
    records = [
        {
            "event_id": f"e{i}",
            "event_name": "Purchase" if i % 2 else "lead",
            "event_time": f"2026-03-02T10:{i % 60:02d}:00Z",
            "email": f" Person{i}@Example.com ",
            "value": 10.5 + i,
            "currency": "eur",
            "items": [{"id": "sku", "quantity": 1, "price": 1.5}],
            "consent_ad_user_data": "granted",
        }
        for i in range(500)
    ]
    _check(records, default=False)


def test_text_read_by_arrow_keeps_the_rows_coerce_record_filled_in() -> None:
    """Text columns Arrow read come out in the model's string dtype, with the values
    `coerce_record` gave the rows it checked (here: a value sent as text, an `mpid` sent
    with spaces around it, an event id derived) and without the records it refused."""
    records = [
        {
            "event_id": f"e{i}",
            "event_name": "purchase",
            "event_time": "2026-03-02T10:00:00Z",
            "value": "4.5" if i % 3 == 0 else 4.5,  # text: checked by `coerce_record`
            "mpid": f" m{i}\u3000" if i % 4 == 0 else f"m{i}",
            "user_agent": None if i % 5 == 0 else f"agent {i}",
            "order_id": "o" * 5000 if i == 7 else f"o{i}",
            # Click ids found in the landing URL fill the columns, and URLs are scrubbed,
            # after the columns are read: those must not keep what Arrow read.
            "page_url": f"https://shop.example/p?gclid=G{i}&email=p{i}@example.com",
            "referrer": f"https://search.example/?q=x&phone=555{i:04d}",
            **({"gclid": f"sent{i}"} if i % 2 else {}),
        }
        for i in range(40)
    ]
    del records[11]["event_id"]  # `coerce_record` derives one from the record
    result = coerce_records(records, "pixel", [RECEIVED] * len(records))
    assert [p for p, _ in result.failures] == [7]
    for column in ("event_id", "mpid", "user_agent", "order_id"):
        assert str(result.frame[column].dtype) == events.STRING_DTYPE, column
    kept = [r for i, r in enumerate(records) if i != 7]
    assert _texts(result.frame["mpid"]) == [r["mpid"].strip() for r in kept]
    assert _texts(result.frame["user_agent"]) == [r["user_agent"] for r in kept]
    assert _texts(result.frame["order_id"]) == [r["order_id"] for r in kept]
    derived = coerce_record(records[11], "pixel", received_at=RECEIVED)["event_id"]
    assert _texts(result.frame["event_id"]) == [r.get("event_id", derived) for r in kept]
    _check(records, default=False)


def test_frame_input_treats_nan_as_absent_and_pixel_times_default_to_received() -> None:
    frame = pd.DataFrame(
        {
            "event_id": ["a", "b"],
            "event_name": ["lead", "lead"],
            "event_time": [None, "2026-03-02T10:00:00Z"],
            "value": [float("nan"), 3.0],
        }
    )
    received = pd.Series(pd.to_datetime(["2026-03-02T10:05:00Z", "2026-03-02T10:06:00Z"], utc=True))
    result = coerce_record_frame(frame, "pixel", received, default_event_time=True)
    assert result.failures == []
    assert result.frame["event_time"].iloc[0] == received.iloc[0]
    assert math.isnan(result.frame["value"].iloc[0])


@pytest.mark.parametrize("with_hours", [False, True])
def test_stored_frame_equals_records_to_frame(with_hours: bool) -> None:
    records = [
        {
            "event_id": f"e{i}",
            "event_name": "purchase",
            "event_time": "2026-03-02T10:00:00+00:00",
            "email": ["A.B@gmail.com", "undefined", None][i % 3],
            "phone": ["+1 415 555 0132", None, "12"][i % 3],
            "first_name": "Zoë",
            "city": "San Francisco",
            "postal_code": "94103-1234",
            "country": "US",
            # pre-hashed values: a digest, an upper-case padded digest, a plain address
            "email_sha256": [None, _DIGEST, f" {_DIGEST.upper()} ", "bob@example.com"][i % 4],
            "phone_sha256": [None, "+1 415 555 0199"][i % 2],
        }
        for i in range(12)
    ]
    received = [RECEIVED] * len(records)
    coerced = [coerce_record(r, "log", received_at=RECEIVED) for r in records]
    hours = [RECEIVED] * len(records) if with_hours else None
    expected, expected_dropped = records_to_frame(coerced, hour_of=hours)
    columns = coerce_records(records, "log", received)
    got, dropped = stored_frame(columns.frame, hour_of=hours)
    pd.testing.assert_frame_equal(got, expected)
    assert dropped == expected_dropped
    # Both ways in drop and count a value under a hashed name that is not a digest.
    assert dropped["email_sha256_malformed"] == 3
    assert dropped["phone_sha256_malformed"] == 6
    # Rows without a plaintext address keep the digest, lower-cased, or nothing.
    given = [r["email_sha256"] for r in records]
    kept = [got["email_sha256"].iloc[i] for i in range(len(records)) if i % 3]
    assert kept == [_DIGEST if g and "@" not in g else pd.NA for j, g in enumerate(given) if j % 3]
    stored_text = " ".join(str(v) for v in got.to_numpy().ravel())
    assert "bob@example.com" not in stored_text and "555 0199" not in stored_text
