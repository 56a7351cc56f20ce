"""The one partitioning of every asset: hours, UTC, on the hour, by time received."""

from __future__ import annotations

import os
from datetime import datetime

import dagster as dg
import pandas as pd

#: The first hour the platform knows; override for older history.
PARTITIONS_START = os.environ.get("CONVERSION_PLATFORM_PARTITIONS_START", "2025-01-01-00:00")

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")

#: A range of hours (a backfill) is one run that works through its hours in order.
single_run = dg.BackfillPolicy.single_run()


def hours_of_run(context: dg.AssetExecutionContext) -> list[tuple[str, datetime]]:
    """(partition key, hour start) for each hour this run materialises, in order."""
    keys = context.partition_keys
    return [
        (
            key,
            pd.Timestamp(hourly_partitions.time_window_for_partition_key(key).start)
            .tz_convert("UTC")
            .to_pydatetime(),
        )
        for key in keys
    ]
