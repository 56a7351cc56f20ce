"""The per-hour delivery report, current after every delivery attempt of its hour."""

from collections import Counter

import dagster as dg
import pandas as pd

from conversion_platform import events
from conversion_platform.defs.delivery_assets import DELIVERY_KEY_PREFIX
from conversion_platform.defs.metadata import column_schema, figures_metadata, markdown_table
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.defs.resources import OperationalDatabase, PlatformSettings
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.operations.delivery_report import (
    CONVERSION_COLUMNS,
    FIGURES,
    DestinationHourReport,
    hour_delivery_report,
    report_frame,
)

REPORT_GROUP = "report"
DELIVERY_REPORT = "delivery_report"


def _table(reports: list[DestinationHourReport]) -> str:
    """The hour's report as a person reads it: one row per destination."""
    rows = []
    for r in reports:
        f = r.figures
        rows.append(
            {
                "destination": r.destination,
                "eligible": f["eligible"],
                "delivered": f["delivered"],
                "dry run": f["dry_run"],
                "rejected": f["rejected"],
                "expired": f["expired"],
                "pending": f["pending"],
                "dead-lettered": f["dead_lettered"],
                "no consent": f["filtered_no_consent"],
                "server-only": f"{f['server_only']} ({float(f['server_recovered_share']):.1%})",
                "retries": r.retries,
                "next retry": f"{r.next_retry:%H:%M} UTC" if r.next_retry else "-",
                "circuit": r.circuit,
            }
        )
    return markdown_table(rows)


def build_delivery_report_asset(configs: list[DestinationConfig]) -> dg.AssetsDefinition:
    """`delivery_report`, downstream of every delivery asset so a run delivers, then reports."""
    destinations = [c.name for c in configs]

    @dg.asset(
        name=DELIVERY_REPORT,
        partitions_def=hourly_partitions,
        backfill_policy=single_run,
        group_name=REPORT_GROUP,
        kinds={"pandas", "parquet", "sql"},
        ins={
            "resolved_conversions": dg.AssetIn(
                "resolved_conversions", metadata={"columns": list(CONVERSION_COLUMNS)}
            )
        },
        deps=[dg.AssetKey([DELIVERY_KEY_PREFIX, name]) for name in destinations],
        code_version="1",
    )
    def delivery_report(
        context: dg.AssetExecutionContext,
        database: OperationalDatabase,
        platform: PlatformSettings,
        resolved_conversions: pd.DataFrame,
    ) -> dg.Output[pd.DataFrame]:
        """What each destination got of the hour, read from the delivery log: conversions
        eligible, delivered (or written to the outbox in dry-run mode), rejected by reason,
        expired, pending a retry, dead-lettered, and the share of delivered conversions that
        only server-side collection saw (the pixel missed them). Re-materialised after every
        delivery attempt of the hour, the retry sensor's included."""
        engine = database.engine()
        configured = [c.name for c in platform.destinations()]
        hours = hours_of_run(context)
        by_hour = events.frames_by_hour(resolved_conversions)
        frames = []
        per_hour: dict = {}
        reasons: Counter[tuple[str, str]] = Counter()
        last: list[DestinationHourReport] = []
        for _key, hour in hours:
            conversions = by_hour.get(pd.Timestamp(hour), resolved_conversions.iloc[0:0])
            reports = hour_delivery_report(engine, hour, configured, conversions)
            frames.append(report_frame(hour, reports))
            figures: dict[str, float | int] = {}
            for r in reports:
                for name in FIGURES:
                    figures[f"{r.destination}_{name}"] = r.figures[name]
                for reason, n in r.rejected_by_reason.items():
                    reasons[(r.destination, reason)] += n
            for name in FIGURES:
                if name != "server_recovered_share":
                    figures[name] = int(sum(int(r.figures[name]) for r in reports))
            per_hour[hour] = figures
            last = reports
        frame = pd.concat(frames, ignore_index=True) if frames else report_frame(hours[0][1], [])
        # The tables first: they are what a person opens the report for.
        metadata: dict[str, object] = {
            "report": dg.MetadataValue.md(
                _table(last)
                if len(hours) == 1
                else markdown_table(
                    frame.drop(columns=["next_retry"]).astype(str).to_dict("records")
                )
            ),
            "rejected_by_reason": dg.MetadataValue.md(
                markdown_table(
                    [
                        {"destination": d, "reason": r, "events": n}
                        for (d, r), n in reasons.most_common(30)
                    ]
                )
            ),
        }
        metadata.update(figures_metadata(context, per_hour, {h: k for k, h in hours}))
        metadata.update(
            {"dagster/row_count": len(frame), "dagster/column_schema": column_schema(frame)}
        )
        return dg.Output(frame, metadata=metadata)

    return delivery_report
