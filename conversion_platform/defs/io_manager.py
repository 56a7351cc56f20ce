"""Parquet per asset per hour; a range output is split into one file per hour.

Dagster's stock `UPathIOManager` refuses an output spanning several partitions, which a
single-run backfill produces; this one writes each hour's rows (by the frame's `hour`
column) to that hour's file and loads a range back as one frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pandas as pd

from conversion_platform import events


class HourlyParquetIOManager(dg.ConfigurableIOManager):
    """Stores hourly DataFrames at `<base_dir>/<asset key>/<partition key>.parquet`."""

    base_dir: str

    def _path(self, asset_key: dg.AssetKey, partition_key: str) -> Path:
        return Path(self.base_dir).joinpath(*asset_key.path, f"{partition_key}.parquet")

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | None) -> None:
        if obj is None:
            return
        partitions_def = context.asset_partitions_def
        by_hour = (
            {hour: group for hour, group in obj.groupby(events.HOUR_COLUMN, sort=False)}
            if len(obj)
            else {}
        )
        for key in context.asset_partition_keys:
            start = pd.Timestamp(
                partitions_def.time_window_for_partition_key(key).start
            ).tz_convert("UTC")
            part = by_hour.get(start)
            if part is None:
                part = obj.iloc[0:0]
            path = self._path(context.asset_key, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".parquet.tmp")
            part.reset_index(drop=True).to_parquet(temporary, index=False, engine="pyarrow")
            os.replace(temporary, path)  # a reader never sees half a file

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        frames = []
        for key in context.asset_partition_keys:
            path = self._path(context.asset_key, key)
            if not path.exists():
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()} has no data for hour {key}: materialise it first"
                )
            frames.append(pd.read_parquet(path, engine="pyarrow"))
        if not frames:
            return events.empty_frame()
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
