"""Reading an hour of the landing table as CSV that the database writes and Arrow parses
(`store.landing_csv`): every value comes back as it went in, on SQLite and PostgreSQL,
and the same as the driver's row-by-row read."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from benchmarks.data import generate_and_land
from conversion_platform import events
from conversion_platform.store import landing, landing_csv

HOUR = datetime(2026, 11, 2, 14, tzinfo=UTC)
NEXT_HOUR = HOUR + timedelta(hours=1)

#: Text that CSV must carry: quotes, delimiters, line breaks, empty text, non-ASCII.
AWKWARD_TEXTS = [
    'say "hi"',
    '"',
    '""',
    "a,b,,c",
    "line one\nline two",
    "carriage\r\nreturn\r",
    "",
    " ",
    "Zürich, 東京 🙂",
    "\\N",
    "NULL",
    "null",
    "trailing backslash \\",
    "'single'",
    "it's",
    "'",
    "''",
]

#: Doubles whose shortest or 15-digit text is not the double itself.
AWKWARD_VALUES = [0.1 + 0.2, 129.99, 1e-300, 1.7976931348623157e308, -0.0, 2**53 + 1.0, 1 / 3]


def _stored(i: int, **values: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": f"e{i:04d}",
        "event_name": "purchase",
        "event_time": HOUR + timedelta(seconds=i),
        "received_at": HOUR + timedelta(seconds=i, milliseconds=250),
        "source": "server",
        "value": 10.0,
        "value_verified": True,
        "currency": "EUR",
    }
    record.update(values)
    return record


def _land(engine: Engine, records: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        landing.insert_landing_rows(conn, [landing.landing_row(r, site="shop") for r in records])


def _both_reads(engine: Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the CSV read, the driver's row-by-row read) of HOUR."""
    return (
        landing.read_landing_events(engine, HOUR, NEXT_HOUR),
        landing._read_landing_rows(engine, HOUR, NEXT_HOUR),
    )


def test_awkward_values_come_back_as_they_went_in(either_database: Engine) -> None:
    records = [_stored(i, page_url=text, items=text) for i, text in enumerate(AWKWARD_TEXTS)]
    # The hour's first row, its first column: where a bare U+FEFF would look like a
    # byte-order mark to a CSV reader.
    records[0]["event_id"] = "\ufeffe0000"
    offset = len(records)
    records += [
        _stored(offset + i, value=value, currency="USD") for i, value in enumerate(AWKWARD_VALUES)
    ]
    records += [
        _stored(100, value=None, value_verified=None, currency=None, page_url=None),
        _stored(101, value_verified=False, event_time=None),
    ]
    _land(either_database, records)

    frame, rows = _both_reads(either_database)

    pd.testing.assert_frame_equal(frame, rows, check_exact=True)
    assert frame["event_id"].iloc[0] == "\ufeffe0000"
    frame = frame.assign(event_id=frame["event_id"].str.lstrip("\ufeff"))
    by_id = frame.set_index("event_id")
    for i, text in enumerate(AWKWARD_TEXTS):
        assert by_id.at[f"e{i:04d}", "page_url"] == text
        assert by_id.at[f"e{i:04d}", "items"] == text
    for i, value in enumerate(AWKWARD_VALUES):
        got = by_id.at[f"e{offset + i:04d}", "value"]
        assert got == value  # SQLite itself stores -0.0 as 0
    empty = by_id.loc["e0100"]
    assert pd.isna(empty["page_url"]) and pd.isna(empty["currency"])  # null, not ""
    assert math.isnan(empty["value"]) and pd.isna(empty["value_verified"])
    assert not by_id.at["e0101", "value_verified"]
    assert not pd.isna(by_id.at["e0101", "value_verified"])
    assert pd.isna(by_id.at["e0101", "event_time"])
    assert by_id.at["e0006", "page_url"] == ""  # empty text stays empty text
    assert frame["received_at"].is_monotonic_increasing
    for column, dtype in events.column_dtypes(events.STORED_COLUMNS).items():
        assert str(frame[column].dtype) == dtype, column


def test_an_empty_hour_reads_as_an_empty_frame_of_the_model(either_database: Engine) -> None:
    frame, rows = _both_reads(either_database)
    assert len(frame) == 0
    pd.testing.assert_frame_equal(frame, rows)


def test_only_the_hours_rows_are_read_in_received_order(either_database: Engine) -> None:
    records = [
        _stored(1, received_at=NEXT_HOUR),  # the next hour: not this one
        _stored(2, received_at=HOUR + timedelta(minutes=30)),
        _stored(3, received_at=HOUR),
        _stored(4, received_at=HOUR - timedelta(microseconds=1)),  # the hour before
        _stored(5, received_at=NEXT_HOUR - timedelta(microseconds=1)),
    ]
    _land(either_database, records)
    frame = landing.read_landing_events(either_database, HOUR, NEXT_HOUR)
    assert frame["event_id"].tolist() == ["e0003", "e0002", "e0005"]


def test_the_landing_read_is_the_same_whatever_its_block_size(
    either_database: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_and_land(either_database, [HOUR], 400, seed=3)
    whole = landing.read_landing_events(either_database, HOUR, NEXT_HOUR)
    monkeypatch.setattr(landing_csv, "_LINES_PER_BLOCK", 37)
    monkeypatch.setattr(landing_csv, "_COPY_BYTES_PER_BLOCK", 4_000)
    monkeypatch.setattr(landing, "_FETCH_ROWS", 37)
    in_blocks = landing.read_landing_events(either_database, HOUR, NEXT_HOUR)
    row_by_row = landing._read_landing_rows(either_database, HOUR, NEXT_HOUR)
    assert len(whole) == 400
    pd.testing.assert_frame_equal(in_blocks, whole, check_exact=True)
    pd.testing.assert_frame_equal(row_by_row, whole, check_exact=True)


def test_a_block_of_lines_becomes_one_arrow_chunk_per_column(either_database: Engine) -> None:
    """More than Arrow's default block of text (1-8 MiB) in one block of lines still makes
    one chunk: later `take`s on the hour pay for every chunk."""
    long_items = "x" * 5_000
    _land(either_database, [_stored(i, items=long_items) for i in range(2_000)])  # 10 MB
    frame = landing.read_landing_events(either_database, HOUR, NEXT_HOUR)
    assert len(frame) == 2_000
    for column in ("event_id", "items"):
        assert frame[column].array._pa_array.num_chunks == 1, column


# Any text the landing table can hold: no lone surrogates (UTF-8 can't encode them), no
# NUL (the collector and ingest refuse it).
_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.one_of(st.none(), _TEXT), min_size=1, max_size=12),
    values=st.lists(
        st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=12,
    ),
)
def test_any_text_and_double_round_trip(
    either_database: Engine, texts: list[str | None], values: list[float | None]
) -> None:
    engine = either_database
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM landing_events")
    count = max(len(texts), len(values))
    records = [
        _stored(
            i,
            event_id=texts[i % len(texts)],
            user_agent=texts[i % len(texts)],
            order_id=texts[(i + 1) % len(texts)],
            value=values[i % len(values)],
        )
        for i in range(count)
    ]
    _land(engine, records)
    frame, rows = _both_reads(engine)
    pd.testing.assert_frame_equal(frame, rows, check_exact=True)
    assert frame["user_agent"].tolist() == [
        pd.NA if r["user_agent"] is None else r["user_agent"] for r in records
    ]


def test_a_flag_other_than_0_or_1_is_an_error_not_true(engine: Engine) -> None:
    _land(engine, [_stored(1)])
    with engine.begin() as conn:  # SQLite's numeric affinity keeps any number
        conn.exec_driver_sql("UPDATE landing_events SET value_verified = 2")
    with pytest.raises(ValueError, match="value_verified holds values other than 0 and 1"):
        landing.read_landing_events(engine, HOUR, NEXT_HOUR)
