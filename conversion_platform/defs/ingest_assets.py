"""Ingest: the hour's conversions from server logs and from the collection endpoint."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd

from conversion_platform import events
from conversion_platform.defs.metadata import column_schema, figures_metadata, markdown_table
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.defs.resources import OperationalDatabase, ServerLogSource
from conversion_platform.ingest.log_conversions import ingest_server_logs
from conversion_platform.store.identity_drops import (
    dropped_identifier_counts,
    replace_dropped_identifiers,
)
from conversion_platform.store.landing import read_landing_events
from conversion_platform.store.quarantine import STAGE_PARSE, replace_quarantined

INGEST_GROUP = "ingest"


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=single_run,
    group_name=INGEST_GROUP,
    kinds={"pandas", "parquet"},
    code_version="1",
)
def server_log_conversions(
    context: dg.AssetExecutionContext, database: OperationalDatabase, server_logs: ServerLogSource
) -> dg.Output[pd.DataFrame]:
    """Conversions read from the site's server logs (JSON lines and access-log lines
    matched by URL rules) written in this hour, with personal data hashed. Lines that
    can't be read are quarantined with file, line number and reason."""
    engine = database.engine()
    hours = hours_of_run(context)
    keys_by_hour = {hour: key for key, hour in hours}
    start, end = context.partition_time_window
    result = ingest_server_logs(
        engine, Path(server_logs.logs_dir), server_logs.rules(), [h for _, h in hours]
    )
    # Re-runs and backfills replace the window's parse failures instead of adding to them.
    replace_quarantined(
        engine, STAGE_PARSE, start, end, result.quarantined, sources=(events.SOURCE_LOG,)
    )
    # Re-runs replace the window's dropped-identifier counts too.
    replace_dropped_identifiers(engine, start, end, result.dropped_by_hour, events.SOURCE_LOG)
    per_hour = {
        hour: {
            "conversions": figures["lines_parsed"],
            "lines_quarantined": figures["lines_quarantined"],
            "lines_ignored": figures["lines_ignored"],
            "identifiers_dropped": sum(result.dropped_by_hour.get(hour, {}).values()),
        }
        for hour, figures in result.per_hour.items()
    }
    metadata = figures_metadata(context, per_hour, keys_by_hour)
    metadata.update(
        {
            "dagster/row_count": len(result.frame),
            "dagster/column_schema": column_schema(result.frame),
            "files_read": len(result.files_read),
            "identifiers_dropped_by_reason": dg.MetadataValue.md(
                markdown_table(
                    [
                        {"reason": r, "values": n}
                        for r, n in result.dropped_identifiers.most_common()
                    ]
                )
            ),
        }
    )
    return dg.Output(result.frame, metadata=metadata)


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=single_run,
    group_name=INGEST_GROUP,
    kinds={"pandas", "parquet", "sql"},
    code_version="1",
)
def collected_conversions(
    context: dg.AssetExecutionContext, database: OperationalDatabase
) -> dg.Output[pd.DataFrame]:
    """Conversions the collection endpoint (browser pixel and site backend) committed to the
    landing table with `received_at` in this hour, personal data already hashed."""
    engine = database.engine()
    frames = []
    per_hour = {}
    hours = hours_of_run(context)
    for _key, hour in hours:
        frame = read_landing_events(engine, hour, hour + timedelta(hours=1))
        frame.insert(0, events.HOUR_COLUMN, pd.Timestamp(hour))
        frames.append(frame)
        per_hour[hour] = {
            "conversions": len(frame),
            "from_pixel": int((frame["source"] == events.SOURCE_PIXEL).sum()),
            "from_server": int((frame["source"] == events.SOURCE_SERVER).sum()),
        }
    if not frames:
        frame = events.empty_frame()
    else:
        # One hour (the usual run): no concat copy of a million rows.
        frame = events.conform(
            frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        )
    # Identity values the collector dropped (unusable) when it landed these events.
    start, end = context.partition_time_window
    dropped = dropped_identifier_counts(
        engine, start, end, sources=(events.SOURCE_PIXEL, events.SOURCE_SERVER)
    )
    dropped_by_hour = dropped.groupby("hour")["count"].sum() if len(dropped) else pd.Series()
    for hour in per_hour:
        per_hour[hour]["identifiers_dropped"] = int(dropped_by_hour.get(pd.Timestamp(hour), 0))
    by_reason = (
        dropped.groupby(["source", "reason"])["count"].sum().sort_values(ascending=False)
        if len(dropped)
        else pd.Series(dtype="int64")
    )
    metadata = figures_metadata(context, per_hour, {h: k for k, h in hours})
    metadata.update(
        {
            "dagster/row_count": len(frame),
            "dagster/column_schema": column_schema(frame),
            "identifiers_dropped_by_reason": dg.MetadataValue.md(
                markdown_table(
                    [
                        {"source": s, "reason": r, "values": int(n)}
                        for (s, r), n in by_reason.items()
                    ]
                )
            ),
        }
    )
    return dg.Output(frame, metadata=metadata)
