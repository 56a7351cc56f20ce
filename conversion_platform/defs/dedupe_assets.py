"""Deduplication of each hour, and the check that its duplicate rate is in its usual range."""

from datetime import timedelta

import dagster as dg
import pandas as pd

from conversion_platform import events
from conversion_platform.defs.metadata import column_schema, figures_metadata, markdown_table
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.defs.resources import OperationalDatabase, PlatformSettings
from conversion_platform.store.dedupe_figures import trailing_duplicate_rates
from conversion_platform.transform.duplicate_rate import (
    LOOKBACK_HOURS,
    MIN_COPIES,
    judge_hour,
)
from conversion_platform.transform.hourly_dedupe import deduplicate_hours

DEDUPE_GROUP = "dedupe"
DUPLICATE_RATE_CHECK = "duplicate_rate_in_usual_range"


def _server_side_only(frame: pd.DataFrame) -> pd.Series:
    """Conversions the pixel never saw: what server-side collection recovered."""
    sources = frame["sources"].astype("string")
    return ~sources.str.contains(events.SOURCE_PIXEL).fillna(False) & sources.notna()


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=single_run,
    group_name=DEDUPE_GROUP,
    kinds={"pandas", "parquet"},
    code_version="2",
    check_specs=[
        dg.AssetCheckSpec(
            DUPLICATE_RATE_CHECK,
            asset="deduplicated_conversions",
            description=(
                "Warns when an hour's duplicate rate leaves its usual range: the median of "
                "the trailing 7 days' hours ± 4 robust standard deviations (at least ± 0.05), "
                "or the configured range until 12 hours of history exist."
            ),
        )
    ],
)
def deduplicated_conversions(
    context: dg.AssetExecutionContext,
    database: OperationalDatabase,
    platform: PlatformSettings,
    collected_conversions: pd.DataFrame,
    server_log_conversions: pd.DataFrame,
):
    """One row per conversion: pixel, backend and log copies merged (`sources` says which
    paths saw it, `dedupe_rule` which key matched them), without the conversions another
    hour within the dedupe window already delivered (counted as late duplicates)."""
    engine = database.engine()
    hours = hours_of_run(context)
    keys_by_hour = {hour: key for key, hour in hours}
    # One frame of the copies; the inputs are emptied, so their memory can go.
    copies = events.concat_releasing([collected_conversions, server_log_conversions])
    result = deduplicate_hours(
        engine,
        copies,
        [hour for _, hour in hours],
        window=timedelta(hours=platform.dedupe_window_hours),
        tolerance=timedelta(seconds=platform.dedupe_tolerance_seconds),
        max_event_age=timedelta(hours=platform.max_event_age_hours),
    )
    frame = result.frame
    recovered = _server_side_only(frame)
    several = frame["sources"].astype("string").str.contains(",").fillna(False)
    frame_hours = frame[events.HOUR_COLUMN]
    per_hour = {}
    for _key, hour in hours:
        mine = (frame_hours == pd.Timestamp(hour)).to_numpy()
        per_hour[hour] = {
            **result.per_hour[hour].as_metadata(),
            "seen_by_several_paths": int(several[mine].sum()),
            "server_side_only": int(recovered[mine].sum()),
        }
    metadata = figures_metadata(context, per_hour, keys_by_hour)
    metadata.update(
        {
            "dagster/row_count": len(frame),
            "dagster/column_schema": column_schema(frame),
            "by_rule": dg.MetadataValue.md(
                markdown_table(
                    [{"rule": rule, "conversions": n} for rule, n in sorted(result.by_rule.items())]
                )
            ),
        }
    )
    yield dg.Output(frame, metadata=metadata)

    configured = (platform.duplicate_rate_low, platform.duplicate_rate_high)
    verdicts = []
    for key, hour in hours:
        figures = result.per_hour[hour]
        history = trailing_duplicate_rates(engine, hour, LOOKBACK_HOURS, MIN_COPIES)
        usual, bounds = judge_hour(figures.duplicate_rate, figures.copies_in, history, configured)
        verdicts.append(
            {
                "hour": key,
                "duplicate_rate": round(figures.duplicate_rate, 4),
                "copies_in": figures.copies_in,
                "usual_low": bounds.low,
                "usual_high": bounds.high,
                "basis": bounds.basis,
                "history_hours": bounds.history_hours,
                "in_range": usual,
            }
        )
    outside = [v for v in verdicts if not v["in_range"]]
    shown = outside[0] if outside else verdicts[-1]
    check_metadata: dict[str, object] = {
        "duplicate_rate": float(shown["duplicate_rate"]),
        "usual_low": float(shown["usual_low"]),
        "usual_high": float(shown["usual_high"]),
        "basis": str(shown["basis"]),
        "hours_outside": len(outside),
    }
    if len(verdicts) > 1:
        check_metadata["per_hour"] = dg.MetadataValue.md(markdown_table(verdicts))
    yield dg.AssetCheckResult(
        check_name=DUPLICATE_RATE_CHECK,
        passed=not outside,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=check_metadata,
        description=(
            f"{len(outside)} hour(s) outside the usual duplicate rate: "
            + ", ".join(str(v["hour"]) for v in outside)
            if outside
            else "every hour's duplicate rate is in its usual range"
        ),
    )
