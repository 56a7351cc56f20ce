"""Identity resolution of each hour (dedupe and validation live in `dedupe_assets` and
`validation_assets`)."""

import dagster as dg
import pandas as pd

from conversion_platform import events
from conversion_platform.defs.metadata import column_schema, figures_metadata
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.transform.identity import resolve_identities

IDENTITY_GROUP = "identity"


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=single_run,
    group_name=IDENTITY_GROUP,
    kinds={"pandas", "parquet"},
    code_version="1",
)
def resolved_conversions(
    context: dg.AssetExecutionContext, validated_conversions: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Valid conversions with their person (`person_id`), every identifier the person was
    seen with, and a 0-10 match-quality score; what the delivery assets send."""
    hours = hours_of_run(context)
    frames = [
        resolve_identities(group)
        for _, group in validated_conversions.groupby(events.HOUR_COLUMN, sort=True)
    ]
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else resolve_identities(validated_conversions)
    )
    per_hour = {}
    by_hour = {h: g for h, g in frame.groupby(events.HOUR_COLUMN)} if len(frame) else {}
    for _key, hour in hours:
        group = by_hour.get(pd.Timestamp(hour))
        n = 0 if group is None else len(group)
        before = 0 if group is None else int((group["strong_keys_before"] > 0).sum())
        after = 0 if group is None else int((group["strong_keys_after"] > 0).sum())
        per_hour[hour] = {
            "conversions": n,
            "with_strong_key_before": before,
            "with_strong_key_after": after,
            "strong_key_share_before": round(before / n, 4) if n else 0.0,
            "strong_key_share_after": round(after / n, 4) if n else 0.0,
            "mean_match_quality": round(float(group["match_quality"].mean()), 3) if n else 0.0,
        }
    metadata = figures_metadata(context, per_hour, {h: k for k, h in hours})
    metadata.update(
        {"dagster/row_count": len(frame), "dagster/column_schema": column_schema(frame)}
    )
    return dg.Output(frame, metadata=metadata)
