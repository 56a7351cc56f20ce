"""The one `Definitions` object: everything the Dagster UI shows."""

from __future__ import annotations

import dagster as dg

from conversion_platform.defs.dedupe_assets import deduplicated_conversions
from conversion_platform.defs.delivery_assets import build_delivery_assets
from conversion_platform.defs.freshness import build_freshness_checks
from conversion_platform.defs.ingest_assets import collected_conversions, server_log_conversions
from conversion_platform.defs.report_assets import build_delivery_report_asset
from conversion_platform.defs.resources import PlatformSettings, resources_from_settings
from conversion_platform.defs.schedules import build_hourly_schedule, hourly_conversions_job
from conversion_platform.defs.sensors import (
    build_delivery_retry_sensor,
    delivery_report_job,
    delivery_report_sensor,
    delivery_retry_job,
)
from conversion_platform.defs.transform_assets import resolved_conversions
from conversion_platform.defs.validation_assets import validate_conversions_asset
from conversion_platform.settings import Settings


def build_definitions(
    settings: Settings | None = None, *, retry_sensor: dg.SensorDefinition | None = None
) -> dg.Definitions:
    """Definitions for the given settings (the environment's by default).

    `retry_sensor` replaces the default retry sensor (tests pass one with a frozen clock).
    """
    settings = settings or Settings.from_env()
    resources = resources_from_settings(settings)
    platform: PlatformSettings = resources["platform"]  # type: ignore[assignment]
    configs = platform.destinations()
    delivery_assets = build_delivery_assets(configs)
    hourly_assets = [
        server_log_conversions,
        collected_conversions,
        deduplicated_conversions,
        validate_conversions_asset,
        resolved_conversions,
        *delivery_assets,
        build_delivery_report_asset(configs),
    ]
    freshness_checks, freshness_sensor = build_freshness_checks(hourly_assets, settings)
    return dg.Definitions(
        assets=hourly_assets,
        asset_checks=freshness_checks,
        jobs=[hourly_conversions_job, delivery_retry_job, delivery_report_job],
        schedules=[build_hourly_schedule(settings)],
        sensors=[
            retry_sensor or build_delivery_retry_sensor(),
            delivery_report_sensor,
            freshness_sensor,
        ],
        resources=resources,
        # One process for the whole hour: a subprocess per step costs seconds each,
        # more than the work of most steps.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
