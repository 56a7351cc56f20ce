"""Freshness checks: a missed hour shows as a failed check on each hourly asset.

Dagster 1.13's `FreshnessPolicy` (which superseded freshness checks in 1.12) judges an
asset by its latest materialisation of any partition, so a backfill of an old hour makes
an asset look fresh while the last hour is missing. The time-partition freshness check
asks the question a data team has: was the last complete hour materialised by its
deadline? So these use `build_time_partition_freshness_checks`, run by their own sensor
(and by every run of the assets, which turns a failed check green again).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dagster as dg

from conversion_platform.settings import Settings

FRESHNESS_SENSOR = "hourly_freshness_checks_sensor"
#: How long after the schedule's start an hour may take before it counts as missed.
RUN_ALLOWANCE_MINUTES = 30


def freshness_deadline_cron(settings: Settings) -> str:
    """Minute past each hour by which the previous hour must be done (schedule + allowance)."""
    delay = max(0, min(59, settings.schedule_delay_minutes))
    return f"{min(59, delay + RUN_ALLOWANCE_MINUTES)} * * * *"


def build_freshness_checks(
    assets: Sequence[dg.AssetsDefinition], settings: Settings
) -> tuple[Sequence[dg.AssetChecksDefinition], dg.SensorDefinition]:
    """One freshness check per hourly asset, and the sensor that evaluates them."""
    keys = [key for asset in assets for key in asset.keys]
    with warnings.catch_warnings():
        # "Superseded by FreshnessPolicy": chosen deliberately (see the module docstring);
        # the notice would otherwise print on every CLI command that loads the definitions.
        warnings.simplefilter("ignore", category=dg.SupersessionWarning)
        checks = dg.build_time_partition_freshness_checks(
            assets=keys,
            deadline_cron=freshness_deadline_cron(settings),
            timezone="UTC",
            severity=dg.AssetCheckSeverity.ERROR,
        )
        sensor = dg.build_sensor_for_freshness_checks(
            freshness_checks=checks,
            name=FRESHNESS_SENSOR,
            minimum_interval_seconds=300,
            default_status=dg.DefaultSensorStatus.RUNNING,
        )
    return checks, sensor
