"""Rows of an hour taken for a delivery chunk (`delivery.take_rows`).

Scope: whatever rows are asked for (in order or not, none, the first and the last, a
span inside), from an hour whose Arrow columns are held in several chunks (as read from
a Parquet file's row groups) or in one, the result is exactly `frame.take(rows)`:
values, nulls, dtypes and index labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from conversion_platform.destinations.delivery import take_rows


def _hour(n: int, chunk_rows: int) -> pd.DataFrame:
    """n rows, each Arrow column in chunks of `chunk_rows`, text with nulls, numbers."""
    text = [None if i % 7 == 3 else f"event-{i}" for i in range(n)]
    numbers = [float(i) / 3 for i in range(n)]
    chunks = max(1, -(-n // chunk_rows))
    table = pa.Table.from_batches(
        [
            pa.record_batch(
                {
                    "event_id": pa.array(
                        text[i * chunk_rows : (i + 1) * chunk_rows], pa.large_string()
                    ),
                    "value": pa.array(numbers[i * chunk_rows : (i + 1) * chunk_rows], pa.float64()),
                }
            )
            for i in range(chunks)
        ],
        schema=pa.schema({"event_id": pa.large_string(), "value": pa.float64()}),
    )
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    frame.index = pd.RangeIndex(100, 100 + n)  # labels that are not positions
    return frame


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 60),
    chunk_rows=st.integers(1, 25),
    picks=st.lists(st.integers(0, 10**6), max_size=40),
    in_order=st.booleans(),
)
def test_rows_taken_are_those_of_frame_take(
    n: int, chunk_rows: int, picks: list[int], in_order: bool
) -> None:
    frame = _hour(n, chunk_rows)
    assert frame["event_id"].array._pa_array.num_chunks == max(1, -(-n // chunk_rows))
    rows = np.array([p % n for p in picks], dtype=np.int64)
    if in_order:
        rows = np.unique(rows)
    taken = take_rows(frame, rows)
    pd.testing.assert_frame_equal(taken, frame.take(rows))


def test_no_rows_is_an_empty_frame_with_the_hours_columns() -> None:
    frame = _hour(10, 4)
    taken = take_rows(frame, np.array([], dtype=np.int64))
    assert list(taken.columns) == list(frame.columns)
    assert len(taken) == 0
    assert (taken.dtypes == frame.dtypes).all()


def test_a_span_inside_the_hour_reads_only_its_own_chunks() -> None:
    frame = _hour(1_000, 100)
    rows = np.arange(421, 481, 3)
    taken = take_rows(frame, rows)
    pd.testing.assert_frame_equal(taken, frame.take(rows))
    assert taken["event_id"].tolist()[:2] == ["event-421", "event-424"]
