"""Tests of Arrow-backed text columns and the code paths built for them.

Scope: the package makes pandas' "string" dtype Arrow-backed; text arrays built by Arrow
equal pandas' own (missing values, values that aren't text); a frame of one hour is
handed on without a copy and a frame of several is split by hour; frames joined for
dedupe are emptied, and the one frame with rows is not copied; consent stripping on
Arrow columns; the landing read gives the same frame whatever its block size; the
ledger writes every claim when it writes them a chunk at a time; dedupe's (hour, key)
codes; and the text predicates on Python-backed columns as well as Arrow ones.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.destinations.delivery import strip_identifiers
from conversion_platform.store import ledger
from conversion_platform.transform.hourly_dedupe import _pair_codes
from conversion_platform.transform.text_checks import is_sha256_hex, normalised_in, one_of

HOUR = datetime(2026, 11, 2, 14, tzinfo=UTC)


def test_the_package_makes_string_columns_arrow_backed() -> None:
    values = pd.Series(["a", None], dtype=events.STRING_DTYPE)
    assert isinstance(values.dtype, pd.StringDtype)
    assert values.dtype.storage == "pyarrow"


def test_string_array_equals_pandas_own_and_falls_back_for_non_text() -> None:
    values = np.array(["ana", None, "", "ü"], dtype=object)
    built = events.string_array(values)
    assert built.dtype == pd.StringDtype("pyarrow")
    assert built.tolist() == pd.array(values, dtype="string").tolist()
    mixed = events.string_array(np.array(["x", 7, None], dtype=object))
    assert mixed.tolist() == ["x", "7", pd.NA]


def test_as_string_keeps_the_index_and_name() -> None:
    series = pd.Series(["a", None], index=[5, 9], name="mpid", dtype=object)
    converted = events.as_string(series)
    assert converted.index.tolist() == [5, 9]
    assert converted.name == "mpid"
    assert converted.dtype == events.STRING_DTYPE
    assert converted.isna().tolist() == [False, True]


def _frame(hours: list[datetime]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            events.HOUR_COLUMN: pd.to_datetime(hours, utc=True),
            "event_id": pd.Series([f"e{i}" for i in range(len(hours))], dtype="string"),
        }
    )


def test_a_frame_of_one_hour_is_handed_on_as_it_is() -> None:
    frame = _frame([HOUR, HOUR, HOUR])
    by_hour = events.frames_by_hour(frame)
    assert list(by_hour) == [pd.Timestamp(HOUR)]
    assert by_hour[pd.Timestamp(HOUR)] is frame


def test_a_frame_of_several_hours_is_split_by_hour_in_order() -> None:
    later = HOUR + timedelta(hours=1)
    by_hour = events.frames_by_hour(_frame([later, HOUR, later]))
    assert list(by_hour) == [pd.Timestamp(HOUR), pd.Timestamp(later)]
    assert by_hour[pd.Timestamp(HOUR)]["event_id"].tolist() == ["e1"]
    assert by_hour[pd.Timestamp(later)]["event_id"].tolist() == ["e0", "e2"]
    assert events.frames_by_hour(_frame([])) == {}


@pytest.mark.parametrize("shuffled", [False, True])
def test_splitting_by_hour_gives_what_groupby_gives(shuffled: bool) -> None:
    hours = [HOUR + timedelta(hours=h) for h in (0, 0, 1, 2, 2, 2, 5)]
    frame = _frame(hours)
    frame.loc[3, events.HOUR_COLUMN] = pd.NaT  # a row without an hour is left out, as groupby does
    if shuffled:
        frame = frame.sample(frac=1.0, random_state=3)
    by_hour = events.frames_by_hour(frame)
    expected = {hour: group for hour, group in frame.groupby(events.HOUR_COLUMN, sort=True)}
    assert list(by_hour) == list(expected)
    for hour, group in expected.items():
        pd.testing.assert_frame_equal(by_hour[hour], group)


def test_a_range_of_hours_is_split_into_slices_without_a_gather() -> None:
    """A backfill's range is its hours' frames one after the other (one Arrow chunk each):
    each hour comes back as its own rows in place, not gathered from every chunk."""
    parts = [_frame([HOUR + timedelta(hours=h)] * 3) for h in range(4)]
    frame = pd.concat(parts, ignore_index=True)
    assert frame["event_id"].array._pa_array.num_chunks == 4
    by_hour = events.frames_by_hour(frame)
    assert len(by_hour) == 4
    for part, (hour, group) in zip(parts, by_hour.items(), strict=True):
        assert hour == part[events.HOUR_COLUMN].iloc[0]
        chunks = group["event_id"].array._pa_array.chunks
        assert len(chunks) == 1
        # the hour's own buffer, not a copy
        source = part["event_id"].array._pa_array.chunks[0]
        assert chunks[0].buffers()[2].address == source.buffers()[2].address


def test_events_without_consent_lose_identifiers_on_arrow_columns() -> None:
    frame = pd.DataFrame(
        {
            "event_id": pd.Series(["a", "b", "c"], dtype="string"),
            "email_sha256": pd.Series(["1" * 64, "2" * 64, None], dtype="string"),
            "mpid": pd.Series(["m1", "m2", "m3"], dtype="string"),
        }
    )
    stripped = strip_identifiers(frame, pd.Series([True, False, True]))
    assert stripped["email_sha256"].tolist() == ["1" * 64, pd.NA, pd.NA]
    assert stripped["mpid"].tolist() == ["m1", pd.NA, "m3"]
    assert stripped["event_id"].tolist() == ["a", "b", "c"]
    assert stripped["mpid"].dtype == events.STRING_DTYPE
    assert frame["mpid"].tolist() == ["m1", "m2", "m3"]  # the input is not changed


def test_the_ledger_writes_every_claim_a_chunk_at_a_time(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    hour_us = int(HOUR.timestamp() * 1_000_000)
    count = 23
    rows = pd.DataFrame({column: [None] * count for column in ledger.LEDGER_COLUMNS})
    rows["match_key"] = [f"k{i:03d}" for i in reversed(range(count))]
    rows["dedupe_key"] = rows["match_key"]
    rows["hour_us"] = hour_us
    rows["kind"] = "event_id"
    rows["event_id"] = rows["match_key"]
    rows["owner_hour_us"] = hour_us
    monkeypatch.setattr(ledger, "_CHUNK", 5)
    with engine.begin() as conn:
        assert ledger.insert_claims(conn, rows) == count
    stored = ledger.ledger_rows(engine, HOUR, HOUR + timedelta(hours=1))
    assert sorted(stored["match_key"]) == sorted(rows["match_key"])


def test_equal_hour_and_key_pairs_get_equal_codes_across_parts() -> None:
    first = np.array([1, 1, 2, 1], dtype=np.int64)
    second = np.array([2, 1, 1], dtype=np.int64)
    codes = _pair_codes(
        [
            (first, pd.Series(["a", "b", "a", None], dtype="string")),
            (second, pd.Series(["a", None, "b"], dtype=object)),
        ]
    )
    a1, b1, a2, none1 = codes[0].tolist()
    assert len({a1, b1, a2, none1}) == 4  # (1,a), (1,b), (2,a), (1,<missing>)
    assert codes[1].tolist() == [a2, none1, b1]


@pytest.mark.parametrize("dtype", ["string[python]", "string[pyarrow]", "object"])
def test_text_predicates_agree_on_every_storage(dtype: str) -> None:
    digest = "ab" * 32
    values = pd.Series([digest, None, " TEST@example.com ", "x"], dtype=dtype)
    assert is_sha256_hex(values).tolist() == [True, True, False, False]
    assert one_of(values, {"x"}).tolist() == [False, True, False, True]
    assert normalised_in(values, {"test@example.com"}).tolist() == [False, False, True, False]


def _copies(ids: list[str], value: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": pd.array(ids, dtype=events.STRING_DTYPE),
            "event_name": pd.array(["lead"] * len(ids), dtype=events.STRING_DTYPE),
            "value": np.full(len(ids), value),
        }
    )


@pytest.mark.parametrize("collected_rows", [0, 2])
def test_frames_joined_for_dedupe_are_emptied_and_one_frame_of_rows_is_not_copied(
    collected_rows: int,
) -> None:
    collected = _copies([f"c{i}" for i in range(collected_rows)], 1.0)
    logged = _copies(["l0", "l1", None], 2.0)  # type: ignore[list-item]
    logged["only_in_logs"] = pd.array(["x", None, "z"], dtype=events.STRING_DTYPE)
    expected = pd.concat([collected, logged], ignore_index=True)
    kept_array = logged["event_id"].array._pa_array.chunk(0)

    joined = events.concat_releasing([collected, logged])

    pd.testing.assert_frame_equal(joined, expected)
    # The frames given are emptied, so nothing else holds their columns.
    assert list(collected.columns) == [] and list(logged.columns) == []
    # With one frame of rows, its arrays are taken as they are: one piece, no copy.
    if collected_rows == 0:
        for name in ("event_id", "event_name", "only_in_logs"):
            assert joined[name].array._pa_array.num_chunks == 1, name
        assert joined["event_id"].array._pa_array.chunk(0).buffers()[2].address == (
            kept_array.buffers()[2].address
        )
