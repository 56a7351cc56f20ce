"""Validation of each hour against the pandera contract, the quarantine, and the blocking
check that stops delivery of an hour with too many invalid conversions."""

from datetime import timedelta

import dagster as dg
import pandas as pd
from dagster_pandera import pandera_schema_to_dagster_type

from conversion_platform import events
from conversion_platform.defs.metadata import column_schema, figures_metadata, markdown_table
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.defs.resources import OperationalDatabase, PlatformSettings
from conversion_platform.store.quarantine import (
    STAGE_COLLECTOR,
    STAGE_PARSE,
    STAGE_VALIDATION,
    read_quarantined,
    reason_counts,
    replace_quarantined,
)
from conversion_platform.transform.schema import build_conversion_schema
from conversion_platform.transform.validate import (
    proven_valid,
    quarantine_records,
    validate_conversions,
)

VALIDATE_GROUP = "validate"
INVALID_RATE_CHECK = "invalid_rate_below_threshold"

#: The maximum event age of the type: the setting is applied by validation itself; the
#: type only checks that what left validation keeps the contract.
_TYPE_MAX_EVENT_AGE = timedelta(days=36_500)
_PANDERA_TYPE = pandera_schema_to_dagster_type(build_conversion_schema(_TYPE_MAX_EVENT_AGE))


def _conversion_frame_check(context: dg.TypeCheckContext, value: object) -> dg.TypeCheck:
    """The frame the asset has just validated against this contract passes on that proof
    (validating every row twice costs as much as the asset's own validation); any other
    frame is validated by pandera, as `dagster-pandera` does."""
    if proven_valid(value, _TYPE_MAX_EVENT_AGE):
        return dg.TypeCheck(
            success=True,
            description="validated against this schema by the asset that produced it",
        )
    return _PANDERA_TYPE.type_check(context, value)


#: The contract as the asset's Dagster type: dagster-pandera's type (name, description and
#: the schema's columns and checks, which the UI shows) with the check above.
ConversionFrame = dg.DagsterType(
    type_check_fn=_conversion_frame_check,
    name=_PANDERA_TYPE.unique_name,
    description=_PANDERA_TYPE.description,
    metadata=_PANDERA_TYPE.metadata,
    typing_type=pd.DataFrame,
)


def _by_hour(frame: pd.DataFrame, column: str = events.HOUR_COLUMN) -> pd.Series:
    return frame[column].value_counts() if len(frame) else pd.Series(dtype="int64")


@dg.multi_asset(
    partitions_def=hourly_partitions,
    backfill_policy=single_run,
    group_name=VALIDATE_GROUP,
    outs={
        "validated_conversions": dg.AssetOut(
            dagster_type=ConversionFrame,
            kinds={"pandas", "parquet", "pandera"},
            description=(
                "Deduplicated conversions that meet the pandera contract (required fields, "
                "event names from the model, event times within the maximum age and not after "
                "they were received, non-negative values with ISO 4217 currencies, bounded "
                "ids): what identity resolution and delivery receive."
            ),
            code_version="2",
        ),
        "quarantined_conversions": dg.AssetOut(
            kinds={"pandas", "parquet", "sql"},
            description=(
                "Every record of the hour that could not be used, from log parsing, the "
                "collector and validation, with its stage, path, origin, reason and redacted "
                "content. `conversion-platform quarantine --hour H` lists them."
            ),
            code_version="2",
        ),
    },
    check_specs=[
        dg.AssetCheckSpec(
            INVALID_RATE_CHECK,
            asset="validated_conversions",
            blocking=True,
            description=(
                "Stops the run before identity resolution and delivery when an hour's "
                "invalid rate (conversions failing the contract / conversions validated) "
                "passes the threshold (CONVERSION_PLATFORM_MAX_INVALID_RATE, default 0.10)."
            ),
        )
    ],
)
def validate_conversions_asset(
    context: dg.AssetExecutionContext,
    database: OperationalDatabase,
    platform: PlatformSettings,
    deduplicated_conversions: pd.DataFrame,
):
    engine = database.engine()
    hours = hours_of_run(context)
    keys_by_hour = {hour: key for key, hour in hours}
    start, end = context.partition_time_window
    result = validate_conversions(
        deduplicated_conversions, timedelta(hours=platform.max_event_age_hours)
    )
    # Re-runs and backfills replace the window's validation failures, never add to them.
    replace_quarantined(engine, STAGE_VALIDATION, start, end, quarantine_records(result.invalid))
    quarantined = read_quarantined(engine, start, end)

    valid, invalid = result.valid, result.invalid
    valid_by_hour, invalid_by_hour = _by_hour(valid), _by_hour(invalid)
    clamped_rows = deduplicated_conversions.reset_index(drop=True).loc[result.clamped.to_numpy()]
    clamped_by_hour = _by_hour(clamped_rows)
    quarantined_by_hour = _by_hour(quarantined, "hour")
    per_hour: dict = {}
    for _key, hour in hours:
        ts = pd.Timestamp(hour)
        n_valid, n_invalid = int(valid_by_hour.get(ts, 0)), int(invalid_by_hour.get(ts, 0))
        total = n_valid + n_invalid
        per_hour[hour] = {
            "valid": n_valid,
            "invalid": n_invalid,
            "invalid_rate": round(n_invalid / total, 4) if total else 0.0,
            "clamped_event_times": int(clamped_by_hour.get(ts, 0)),
            "quarantined_all_stages": int(quarantined_by_hour.get(ts, 0)),
        }
    valid_meta = figures_metadata(
        context, per_hour, keys_by_hour, asset_key=dg.AssetKey("validated_conversions")
    )
    valid_meta.update(
        {
            "dagster/row_count": len(valid),
            "dagster/column_schema": column_schema(valid),
            "identifiers_dropped": sum(result.dropped_identifiers.values()),
            "failed_checks": dg.MetadataValue.md(
                markdown_table(
                    [{"check": r, "rows": n} for r, n in result.reason_counts().most_common()]
                )
            ),
        }
    )
    yield dg.Output(valid, output_name="validated_conversions", metadata=valid_meta)

    stages = quarantined["stage"].astype(str) if len(quarantined) else pd.Series(dtype=str)
    counts = reason_counts(quarantined)
    yield dg.Output(
        quarantined,
        output_name="quarantined_conversions",
        metadata={
            "dagster/row_count": len(quarantined),
            "dagster/column_schema": column_schema(quarantined),
            "from_parse": int((stages == STAGE_PARSE).sum()),
            "from_collector": int((stages == STAGE_COLLECTOR).sum()),
            "from_validation": int((stages == STAGE_VALIDATION).sum()),
            "by_reason": dg.MetadataValue.md(
                markdown_table(
                    [
                        {"stage": s, "reason": r, "records": int(n)}
                        for s, r, n in counts.head(40).itertuples(index=False)
                    ]
                )
            ),
        },
    )

    threshold = float(platform.max_invalid_rate)
    over = [
        (keys_by_hour[hour], figures["invalid_rate"])
        for hour, figures in per_hour.items()
        if figures["invalid_rate"] > threshold
    ]
    worst = max((f["invalid_rate"] for f in per_hour.values()), default=0.0)
    yield dg.AssetCheckResult(
        check_name=INVALID_RATE_CHECK,
        asset_key="validated_conversions",
        passed=not over,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "worst_hour_invalid_rate": float(worst),
            "threshold": threshold,
            "hours_over_threshold": len(over),
            "invalid": len(invalid),
            "valid": len(valid),
        },
        description=(
            "Delivery stopped: invalid rate over "
            f"{threshold:.0%} in " + ", ".join(f"{k} ({rate:.1%})" for k, rate in over)
            if over
            else f"every hour's invalid rate is at most {threshold:.0%}"
        ),
    )
