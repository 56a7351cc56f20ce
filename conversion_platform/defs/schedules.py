"""The hourly job and its schedule: each hour runs a few minutes after it closes."""

from __future__ import annotations

import dagster as dg

from conversion_platform.defs.partitions import hourly_partitions
from conversion_platform.settings import Settings

hourly_conversions_job = dg.define_asset_job(
    "hourly_conversions_job",
    selection=dg.AssetSelection.all(),
    partitions_def=hourly_partitions,
    description="Every stage of one hour: ingest, dedupe, validate, resolve identities, deliver.",
)


def build_hourly_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """Runs the previous hour's partition at `schedule_delay_minutes` past each hour, so
    events that reach the collector a little late are still in their hour."""
    minute = max(0, min(59, settings.schedule_delay_minutes))
    return dg.build_schedule_from_partitioned_job(
        hourly_conversions_job,
        minute_of_hour=minute,
        name="hourly_conversions_schedule",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
