"""Dedupe, validation (with the quarantine) and identity resolution of each hour."""

from collections import Counter
from datetime import timedelta

import dagster as dg
import pandas as pd
from dagster_pandera import pandera_schema_to_dagster_type

from conversion_platform import events
from conversion_platform.defs.metadata import column_schema, figures_metadata, markdown_table
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.defs.resources import OperationalDatabase, PlatformSettings
from conversion_platform.store.identity_graph import graph_totals
from conversion_platform.store.quarantine import (
    STAGE_VALIDATION,
    QuarantinedRecord,
    read_quarantined,
    replace_quarantined,
)
from conversion_platform.transform.hourly_dedupe import deduplicate_hours
from conversion_platform.transform.identity import resolve_hours
from conversion_platform.transform.schema import build_conversion_schema
from conversion_platform.transform.validate import describe_row, validate_conversions

DEDUPE_GROUP = "dedupe"
VALIDATE_GROUP = "validate"
IDENTITY_GROUP = "identity"

INVALID_RATE_CHECK = "invalid_rate_below_threshold"
DUPLICATE_RATE_CHECK = "duplicate_rate_in_usual_range"
#: The duplicate rate (copies removed / copies in) usually seen with pixel + backend.
USUAL_DUPLICATE_RATE = (0.0, 0.6)

ConversionFrame = pandera_schema_to_dagster_type(build_conversion_schema(timedelta(days=3650)))


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=single_run,
    group_name=DEDUPE_GROUP,
    kinds={"pandas", "parquet"},
    code_version="1",
    check_specs=[dg.AssetCheckSpec(DUPLICATE_RATE_CHECK, asset="deduplicated_conversions")],
)
def deduplicated_conversions(
    context: dg.AssetExecutionContext,
    database: OperationalDatabase,
    platform: PlatformSettings,
    collected_conversions: pd.DataFrame,
    server_log_conversions: pd.DataFrame,
):
    """One row per conversion: pixel, backend and log copies merged (`sources` says which
    paths saw it), and copies of conversions an earlier hour already received (within the
    dedupe window) removed as late duplicates."""
    hours = hours_of_run(context)
    copies = pd.concat([collected_conversions, server_log_conversions], ignore_index=True)
    result = deduplicate_hours(
        database.engine(),
        copies,
        [h for _, h in hours],
        window=timedelta(hours=platform.dedupe_window_hours),
    )
    frame = result.frame
    per_hour = result.per_hour
    copies_in = sum(f["copies_in"] for f in per_hour.values())
    removed = sum(f["duplicates_removed"] + f["late_duplicates"] for f in per_hour.values())
    rate = removed / copies_in if copies_in else 0.0
    metadata = figures_metadata(context, per_hour, {h: k for k, h in hours})
    multi_source = frame["sources"].astype("string").str.contains(",").fillna(False)
    metadata.update(
        {
            "dagster/row_count": len(frame),
            "dagster/column_schema": column_schema(frame),
            "duplicate_rate": float(round(rate, 4)),
            "seen_by_several_paths": int(multi_source.sum()),
            "by_rule": markdown_table(
                [
                    {"rule": r, "conversions": int(n)}
                    for r, n in frame["dedupe_rule"].value_counts().items()
                ]
            ),
        }
    )
    yield dg.Output(frame, metadata=metadata)
    low, high = USUAL_DUPLICATE_RATE
    yield dg.AssetCheckResult(
        check_name=DUPLICATE_RATE_CHECK,
        passed=low <= rate <= high or copies_in == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"duplicate_rate": float(round(rate, 4)), "usual_low": low, "usual_high": high},
    )


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
                "known event names, plausible event times, non-negative values with ISO 4217 "
                "currencies, bounded ids): what identity resolution and delivery receive."
            ),
            code_version="1",
        ),
        "quarantined_conversions": dg.AssetOut(
            kinds={"pandas", "parquet", "sql"},
            description=(
                "Every record of the hour that could not be used, from log parsing, the "
                "collector and validation, with its stage, origin, reason and redacted content."
            ),
            code_version="1",
        ),
    },
    check_specs=[
        dg.AssetCheckSpec(INVALID_RATE_CHECK, asset="validated_conversions", blocking=True)
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
    start, end = context.partition_time_window
    result = validate_conversions(
        deduplicated_conversions, timedelta(hours=platform.max_event_age_hours)
    )
    records = []
    reason_counts: Counter[str] = Counter()
    for position, reasons in result.reasons.items():
        row = result.invalid.loc[position]
        for reason in reasons:
            reason_counts[reason] += 1
        records.append(
            QuarantinedRecord(
                stage=STAGE_VALIDATION,
                source=str(row["source"]),
                hour=pd.Timestamp(row[events.HOUR_COLUMN]).to_pydatetime(),
                origin=f"dedupe_key={row['dedupe_key']}",
                reason="; ".join(reasons),
                raw_redacted=describe_row(row),
                event_id=None if pd.isna(row["event_id"]) else str(row["event_id"]),
                event_name=None if pd.isna(row["event_name"]) else str(row["event_name"]),
            )
        )
    # Re-runs and backfills replace the window's validation failures, never add to them.
    replace_quarantined(engine, STAGE_VALIDATION, start, end, records)
    quarantined = read_quarantined(engine, start, end)

    valid = result.valid
    per_hour = {}
    invalid_by_hour = (
        result.invalid[events.HOUR_COLUMN].value_counts()
        if len(result.invalid)
        else pd.Series(dtype=int)
    )
    valid_by_hour = valid[events.HOUR_COLUMN].value_counts() if len(valid) else pd.Series(dtype=int)
    quarantined_by_hour = (
        quarantined["hour"].value_counts() if len(quarantined) else pd.Series(dtype=int)
    )
    for _key, hour in hours:
        ts = pd.Timestamp(hour)
        n_valid = int(valid_by_hour.get(ts, 0))
        n_invalid = int(invalid_by_hour.get(ts, 0))
        per_hour[hour] = {
            "valid": n_valid,
            "invalid": n_invalid,
            "invalid_rate": round(n_invalid / (n_valid + n_invalid), 4)
            if n_valid + n_invalid
            else 0.0,
            "quarantined_total": int(quarantined_by_hour.get(ts, 0)),
        }
    keys_by_hour = {h: k for k, h in hours}
    valid_meta = figures_metadata(
        context, per_hour, keys_by_hour, asset_key=dg.AssetKey("validated_conversions")
    )
    valid_meta.update(
        {
            "dagster/row_count": len(valid),
            "dagster/column_schema": column_schema(valid),
            "clamped_event_times": result.clamped_event_times,
            "failed_checks": markdown_table(
                [{"check": r, "rows": n} for r, n in reason_counts.most_common()]
            ),
        }
    )
    yield dg.Output(valid, output_name="validated_conversions", metadata=valid_meta)

    by_reason = (
        quarantined.groupby(["stage", "reason"]).size().sort_values(ascending=False).head(30)
        if len(quarantined)
        else []
    )
    yield dg.Output(
        quarantined,
        output_name="quarantined_conversions",
        metadata={
            "dagster/row_count": len(quarantined),
            "dagster/column_schema": column_schema(quarantined),
            "from_parse": int((quarantined["stage"] == "parse").sum()) if len(quarantined) else 0,
            "from_collector": int((quarantined["stage"] == "collector").sum())
            if len(quarantined)
            else 0,
            "from_validation": int((quarantined["stage"] == "validation").sum())
            if len(quarantined)
            else 0,
            "by_reason": markdown_table(
                [
                    {"stage": s, "reason": r, "records": int(n)}
                    for (s, r), n in getattr(by_reason, "items", lambda: [])()
                ]
            ),
        },
    )
    total_valid = len(valid)
    total_invalid = len(result.invalid)
    rate = total_invalid / (total_valid + total_invalid) if total_valid + total_invalid else 0.0
    worst = max((f["invalid_rate"] for f in per_hour.values()), default=0.0)
    yield dg.AssetCheckResult(
        check_name=INVALID_RATE_CHECK,
        asset_key="validated_conversions",
        passed=worst <= platform.max_invalid_rate,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "invalid_rate": float(round(rate, 4)),
            "worst_hour_invalid_rate": float(worst),
            "threshold": float(platform.max_invalid_rate),
        },
        description="Delivery of an hour is stopped when its invalid rate passes the threshold.",
    )


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=single_run,
    group_name=IDENTITY_GROUP,
    kinds={"pandas", "parquet", "sql"},
    code_version="2",
)
def resolved_conversions(
    context: dg.AssetExecutionContext,
    database: OperationalDatabase,
    platform: PlatformSettings,
    validated_conversions: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Valid conversions with their person (`person_id`) from the persistent identity graph,
    enriched with the identifiers the person was seen with (hashed email and phone,
    external id, and recent click ids inside each platform's window), and a 0-10
    match-quality score per destination. Page views feed the graph; events without
    ad_user_data consent neither link nor get enriched. `matched_uplift_pct` is how many
    more conversions carry a strong key (email, phone or click id) after enrichment."""
    hours = hours_of_run(context)
    engine = database.engine()
    result = resolve_hours(
        engine,
        validated_conversions,
        [h for _, h in hours],
        platform.identity_rules(),
        consent_required=platform.consent_required,
    )
    frame = result.frame
    metadata = figures_metadata(context, result.per_hour, {h: k for k, h in hours})
    before = sum(int(f["with_strong_key_before"]) for f in result.per_hour.values())
    after = sum(int(f["with_strong_key_after"]) for f in result.per_hour.values())
    conversions = sum(int(f["conversions"]) for f in result.per_hour.values())
    if len(hours) > 1 and conversions:
        # Over a range, shares and the uplift are of the whole window, not a mean of hours.
        metadata["strong_key_share_before"] = dg.MetadataValue.float(round(before / conversions, 4))
        metadata["strong_key_share_after"] = dg.MetadataValue.float(round(after / conversions, 4))
        metadata["matched_uplift_pct"] = dg.MetadataValue.float(
            round(100 * (after - before) / before, 2) if before else 0.0
        )
    converting = frame["event_name"] != events.PAGE_VIEW
    metadata.update(
        {
            "dagster/row_count": len(frame),
            "dagster/column_schema": column_schema(frame),
            "identity_graph": dg.MetadataValue.md(
                markdown_table([{"table": k, "rows": v} for k, v in graph_totals(engine).items()])
            ),
            "match_quality_by_destination": dg.MetadataValue.md(
                markdown_table(
                    [
                        {
                            "platform": name,
                            "mean_score": round(float(frame.loc[converting, column].mean()), 2)
                            if converting.any()
                            else 0.0,
                        }
                        for name, column in [
                            ("all", "match_quality"),
                            *((p, f"match_quality_{p}") for p in events.MATCH_QUALITY_PLATFORMS),
                        ]
                    ]
                )
            ),
        }
    )
    return dg.Output(frame, metadata=metadata)
