"""Benchmark data: bulk synthetic traffic landed in the landing table or written as logs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.ingest.record_columns import coerce_record_frame, stored_frame
from conversion_platform.store.landing import LANDING_INSERT_COLUMNS, insert_landing_rows
from conversion_platform.store.tables import landing_events
from conversion_platform.store.timecodes import series_to_micros
from conversion_platform.synthetic import BulkTraffic, generate_bulk, write_bulk_json_log


@dataclass
class Landed:
    """What setting up the data produced."""

    records: int  # incoming records generated (pixel + server + log)
    landed: int  # rows committed to the landing table
    refused: int  # records the landing refused (quarantined by the collector in production)
    log_lines: int
    broken_lines: int
    conversions: int
    seen_twice: int
    invalid: int
    people: int


def _insert_landing(engine: Engine, frame: pd.DataFrame) -> int:
    """Bulk insert of stored-model rows with the driver's executemany on SQLite, COPY on
    PostgreSQL (setup only).

    Rows go in in the order received, as the collector commits them.
    """
    frame = frame.sort_values("received_at", kind="stable").reset_index(drop=True)
    columns = list(LANDING_INSERT_COLUMNS)
    data: dict[str, list] = {}
    for name in columns:
        if name.endswith("_us"):
            micros = series_to_micros(frame[name[: -len("_us")]])
            data[name] = [None if pd.isna(v) else int(v) for v in micros]
        elif name == "site":
            data[name] = [None] * len(frame)
        else:
            series = frame[name]
            values = series.astype(object).where(series.notna(), None)
            data[name] = values.tolist()
    rows = list(zip(*(data[c] for c in columns), strict=True))
    if engine.dialect.name != "sqlite":  # PostgreSQL: COPY, as the collector lands rows
        with engine.begin() as conn:
            return insert_landing_rows(conn, rows)
    statement = (
        f"INSERT INTO {landing_events.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for start in range(0, len(rows), 100_000):
            cursor.executemany(statement, rows[start : start + 100_000])
    return len(rows)


def land_traffic(engine: Engine, traffic: BulkTraffic) -> tuple[int, int]:
    """Check, hash and commit the pixel's and the backend's records; returns (landed, refused)."""
    landed = refused = 0
    for source, frame in (
        (events.SOURCE_PIXEL, traffic.pixel),
        (events.SOURCE_SERVER, traffic.server),
    ):
        if frame.empty:
            continue
        coerced = coerce_record_frame(
            frame.drop(columns=["received_at", "logged_at"], errors="ignore"),
            source,
            frame["received_at"],
            default_event_time=source == events.SOURCE_PIXEL,
        )
        stored, _ = stored_frame(coerced.frame, value_verified=source != events.SOURCE_PIXEL)
        landed += _insert_landing(engine, stored)
        refused += len(coerced.failures)
    return landed, refused


def generate_and_land(
    engine: Engine,
    hours: list[datetime],
    records_per_hour: int,
    *,
    seed: int,
    logs_dir: Path | None = None,
    log_share: float = 0.0,
    all_as_logs: bool = False,
    broken_share: float = 0.005,
    people: int | None = None,
) -> Landed:
    """Generate `records_per_hour` records in each hour; land them and/or write them as logs.

    `all_as_logs`: every record (pixel and backend copies included) is a JSON log line and
    nothing is landed. Otherwise pixel and backend records are landed, and the log-only
    conversions (`log_share` of those seen once) are written as JSON lines, one file per day.
    """
    traffic = generate_bulk(hours, records_per_hour, seed=seed, log_share=log_share, people=people)
    landed = refused = lines = broken = 0
    if all_as_logs:
        assert logs_dir is not None
        counts = write_bulk_json_log(
            traffic, logs_dir / "backend.jsonl", broken_share=broken_share, seed=seed
        )
        lines, broken = counts["records"], counts["broken"]
    else:
        landed, refused = land_traffic(engine, traffic)
        if logs_dir is not None and not traffic.log.empty:
            days = pd.to_datetime(traffic.log["logged_at"], utc=True).dt.strftime("%Y%m%d")
            for day in np.unique(days):
                part = BulkTraffic(
                    traffic.pixel.iloc[0:0],
                    traffic.server.iloc[0:0],
                    traffic.log.loc[(days == day).to_numpy()].reset_index(drop=True),
                    0,
                    0,
                    0,
                    0,
                )
                counts = write_bulk_json_log(
                    part,
                    logs_dir / f"backend-{day}.jsonl",
                    include_collected=False,
                    broken_share=broken_share,
                    seed=seed,
                )
                lines += counts["records"]
                broken += counts["broken"]
    return Landed(
        records=traffic.records,
        landed=landed,
        refused=refused,
        log_lines=lines,
        broken_lines=broken,
        conversions=traffic.conversions,
        seen_twice=traffic.seen_twice,
        invalid=traffic.invalid,
        people=traffic.people,
    )


def landing_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(landing_events)).scalar_one()
        )
