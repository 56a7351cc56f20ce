"""Identity resolution of each hour (dedupe and validation live in `dedupe_assets` and
`validation_assets`)."""

import dagster as dg
import pandas as pd

from conversion_platform import events
from conversion_platform.defs.metadata import column_schema, figures_metadata, markdown_table
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.defs.resources import OperationalDatabase, PlatformSettings
from conversion_platform.store.identity_graph import graph_totals
from conversion_platform.transform.identity import resolve_hours

IDENTITY_GROUP = "identity"


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
