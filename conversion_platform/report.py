"""The numbers a data team checks first, per hour: collected, duplicates, quarantined, delivered."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.store.dedupe_figures import read_hour_figures
from conversion_platform.store.delivery_log import event_status_counts
from conversion_platform.store.tables import quarantine
from conversion_platform.store.timecodes import to_micros
from conversion_platform.transform.match_quality import match_quality_column

DELIVERED_STATUSES = ("delivered", "pending_status", "validated", "dry_run")


def _rows(partitions_dir: Path, asset: str, key: str) -> int:
    path = partitions_dir / asset / f"{key}.parquet"
    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def _server_side_only(partitions_dir: Path, key: str) -> int:
    path = partitions_dir / "deduplicated_conversions" / f"{key}.parquet"
    if not path.exists():
        return 0
    sources = pd.read_parquet(path, columns=["sources"])["sources"].astype("string")
    return int((~sources.str.contains("pixel").fillna(True)).sum())


def hourly_summary(
    engine: Engine, partitions_dir: Path, hours: list[tuple[str, datetime]], destinations: list[str]
) -> pd.DataFrame:
    """One row per hour: what came in, what was removed, what each destination got."""
    if not hours:
        return pd.DataFrame()
    start, end = hours[0][1], hours[-1][1] + timedelta(hours=1)
    with engine.connect() as conn:
        quarantined = dict(
            conn.execute(
                sa.select(quarantine.c.hour_us, sa.func.count())
                .where(
                    quarantine.c.hour_us >= to_micros(start), quarantine.c.hour_us < to_micros(end)
                )
                .group_by(quarantine.c.hour_us)
            ).fetchall()
        )
    statuses = event_status_counts(engine, start, end)
    dedupe = read_hour_figures(engine, start, end).set_index("hour_us")
    rows = []
    for key, hour in hours:
        collected = _rows(partitions_dir, "collected_conversions", key) + _rows(
            partitions_dir, "server_log_conversions", key
        )
        deduplicated = _rows(partitions_dir, "deduplicated_conversions", key)
        row: dict[str, object] = {
            "hour": key,
            "collected": collected,
            "duplicates_removed": collected - deduplicated,
            # Copies of conversions an earlier hour already delivered (not sent again).
            "late_duplicates": int(dedupe["late_duplicates"].get(to_micros(hour), 0)),
            # Conversions the pixel never saw: what server-side collection recovered.
            "server_side_only": _server_side_only(partitions_dir, key),
            "quarantined": int(quarantined.get(to_micros(hour), 0)),
            "valid": _rows(partitions_dir, "validated_conversions", key),
        }
        hour_statuses = (
            statuses[statuses["hour_us"] == to_micros(hour)] if len(statuses) else statuses
        )
        for destination in destinations:
            mine = (
                hour_statuses[hour_statuses["destination"] == destination]
                if len(hour_statuses)
                else hour_statuses
            )
            delivered = (
                int(mine.loc[mine["status"].isin(DELIVERED_STATUSES), "events"].sum())
                if len(mine)
                else 0
            )
            row[f"{destination} delivered"] = delivered
        rows.append(row)
    return pd.DataFrame(rows)


def match_summary(
    partitions_dir: Path, keys: list[str], destinations: list[tuple[str, str]]
) -> dict[str, object]:
    """Over the hours: conversions with a strong key before and after identity enrichment,
    the uplift, and the mean match-quality score per (name, platform) destination."""
    columns = ["event_name", "strong_keys_before", "strong_keys_after", "match_quality"]
    scores = {name: match_quality_column(platform) for name, platform in destinations}
    frames = []
    for key in keys:
        path = partitions_dir / "resolved_conversions" / f"{key}.parquet"
        if path.exists():
            present = set(pq.ParquetFile(path).schema_arrow.names)
            wanted = [c for c in {*columns, *scores.values()} if c in present]
            frames.append(pd.read_parquet(path, columns=wanted))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    conversions = frame.loc[frame["event_name"] != "page_view"] if len(frame) else frame
    total = len(conversions)
    before = int((conversions["strong_keys_before"] > 0).sum()) if total else 0
    after = int((conversions["strong_keys_after"] > 0).sum()) if total else 0
    return {
        "conversions": total,
        "with_strong_key_before": before,
        "with_strong_key_after": after,
        "uplift_pct": round(100 * (after - before) / before, 1) if before else 0.0,
        "mean_match_quality": {
            name: round(float(conversions[column].mean()), 2)
            if total and column in conversions
            else 0.0
            for name, column in scores.items()
        },
    }
