"""What an asset reports to the UI: row counts, column schemas, per-hour figures."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import dagster as dg
import pandas as pd


def column_schema(frame: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(str(c), str(t)) for c, t in frame.dtypes.items()])


def markdown_table(rows: list[Mapping[str, object]]) -> str:
    """A small markdown table (the UI renders it) from rows of equal keys."""
    if not rows:
        return "_nothing in this window_"
    headers = list(rows[0].keys())
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(h, "")) for h in headers) + " |")
    return "\n".join(lines)


def figures_metadata(
    context: dg.AssetExecutionContext,
    per_hour: Mapping[datetime, Mapping[str, float | int]],
    keys_by_hour: Mapping[datetime, str],
    *,
    asset_key: dg.AssetKey | None = None,
) -> dict[str, object]:
    """Numeric figures for the UI's plots, plus a per-hour table.

    One hour: the figures are that hour's. A range (a backfill run): the materialisation
    carries the window's totals and a per-hour table, and each hour's own figures are
    logged as an observation of that partition, so no hour is plotted with another's.
    """
    hours = sorted(per_hour)
    metadata: dict[str, object] = {}
    names = list(next(iter(per_hour.values()), {}).keys())
    for name in names:
        values = [per_hour[h][name] for h in hours]
        if all(isinstance(v, int) for v in values):
            metadata[name] = dg.MetadataValue.int(int(sum(values)))
        else:
            # Rates and shares: the window's mean hour (counts are summed above).
            metadata[name] = dg.MetadataValue.float(round(float(sum(values)) / len(values), 4))
    if len(hours) > 1:
        key = asset_key or context.asset_key
        for hour in hours:
            context.log_event(
                dg.AssetObservation(
                    asset_key=key,
                    partition=keys_by_hour[hour],
                    metadata={n: v for n, v in per_hour[hour].items()},
                )
            )
        metadata["hours_in_run"] = dg.MetadataValue.int(len(hours))
        metadata["per_hour"] = dg.MetadataValue.md(
            markdown_table([{"hour": keys_by_hour[h], **per_hour[h]} for h in hours])
        )
    return metadata
