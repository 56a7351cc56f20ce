"""The hourly Parquet IO manager: what a step stores is what the next step loads.

Scope: an hour's frame written by `handle_output` and read back by `load_input` (every
column, or those of the columns an input names that the file has, its other columns named
in the frame's attrs) is equal to it, values and dtypes; text comes back as one Arrow
array per column for an hour larger than Arrow's read batches (a `take` over a column in
pieces cost a delivery up to five times more); the attrs naming what an input left out
are never stored with an output; a missing hour is a clear error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from conversion_platform import events
from conversion_platform.defs.io_manager import HourlyParquetIOManager
from conversion_platform.defs.partitions import hourly_partitions

KEY = "2026-11-30-10:00"
ASSET = dg.AssetKey("resolved_conversions")
#: More rows than `pq.read_table`'s batches of 131,072: read that way, each column came
#: back in two pieces.
ROWS = 140_000


def _hour_frame(rows: int) -> pd.DataFrame:
    hour = pd.Timestamp("2026-11-30 10:00", tz="UTC")
    ids = pd.array([f"evt-{i:07d}" for i in range(rows)], dtype=events.STRING_DTYPE)
    names = np.array(["purchase", "lead", None], dtype=object)[np.arange(rows) % 3]
    return pd.DataFrame(
        {
            events.HOUR_COLUMN: pd.Series([hour] * rows, dtype=events.TIMESTAMP_DTYPE),
            "event_id": ids,
            "event_name": pd.array(names, dtype=events.STRING_DTYPE),
            "event_time": hour + pd.to_timedelta(np.arange(rows) % 3600, unit="s"),
            "value": np.where(np.arange(rows) % 5 == 0, np.nan, np.arange(rows) / 10),
        }
    )


def _store(tmp_path: Path, frame: pd.DataFrame) -> HourlyParquetIOManager:
    manager = HourlyParquetIOManager(base_dir=str(tmp_path))
    context = dg.build_output_context(
        asset_key=ASSET, partition_key=KEY, asset_partitions_def=hourly_partitions
    )
    manager.handle_output(context, frame)
    return manager


def _load(manager: HourlyParquetIOManager, columns: list[str] | None = None) -> pd.DataFrame:
    context = dg.build_input_context(
        asset_key=ASSET,
        partition_key=KEY,
        asset_partitions_def=hourly_partitions,
        definition_metadata={"columns": columns} if columns else None,
    )
    return manager.load_input(context)


def test_an_hour_loads_back_equal_with_each_text_column_in_one_piece(tmp_path: Path) -> None:
    frame = _hour_frame(ROWS)
    loaded = _load(_store(tmp_path, frame))
    pd.testing.assert_frame_equal(loaded, frame)
    for column in ("event_id", "event_name"):
        assert loaded[column].array._pa_array.num_chunks == 1, column


def test_an_input_reads_only_the_columns_it_names(tmp_path: Path) -> None:
    frame = _hour_frame(1_000)
    loaded = _load(_store(tmp_path, frame), ["value", "event_id", "not_in_the_file"])
    pd.testing.assert_frame_equal(loaded, frame[["value", "event_id"]])
    # The file's other columns are named, so code that reads an absent column as empty
    # can tell "not read" from "not there".
    assert loaded.attrs[events.LEFT_OUT_COLUMNS] == {"hour", "event_name", "event_time"}
    assert events.LEFT_OUT_COLUMNS not in _load(_store(tmp_path, frame)).attrs


def test_what_an_input_left_out_is_never_stored_with_an_output(tmp_path: Path) -> None:
    frame = _hour_frame(1_000)
    narrowed = _load(_store(tmp_path, frame), ["event_id", "value"])
    assert events.LEFT_OUT_COLUMNS in narrowed.attrs
    # A step's output derived from its narrowed input, stored (pyarrow would try to keep
    # the attrs in the file, and warn that it can't) and read back whole.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = _store(tmp_path / "again", narrowed)
    reread = _load(manager)
    pd.testing.assert_frame_equal(reread, frame[["event_id", "value"]])
    assert events.LEFT_OUT_COLUMNS not in reread.attrs
    assert events.LEFT_OUT_COLUMNS in narrowed.attrs  # the step's own frame is untouched


def test_an_hour_not_materialised_is_a_clear_error(tmp_path: Path) -> None:
    manager = HourlyParquetIOManager(base_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no data for hour 2026-11-30-10:00"):
        _load(manager)
