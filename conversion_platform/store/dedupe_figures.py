"""What deduplication did to each hour, kept so later hours can compare against it.

The duplicate-rate check judges an hour against the trailing hours' rates, and the
report shows late duplicates per hour; both read this table. An hour's row is replaced
in the same transaction as its ledger claims, so a re-run never counts twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import dedupe_hour_figures
from conversion_platform.store.timecodes import from_micros, now_micros, to_micros


@dataclass(frozen=True)
class HourDedupeFigures:
    """One hour's figures (counts are conversions unless they say copies)."""

    copies_in: int = 0
    merged_copies: int = 0  # copies folded into another copy of the same hour
    late_duplicates: int = 0  # conversions an earlier hour already delivered
    delivered_by_later_hour: int = 0  # conversions a later hour (run first) delivered
    late_backend_confirmations: int = 0  # late copies from the backend of pixel-only deliveries
    late_value_mismatches: int = 0  # late copies whose value differs from the delivered one
    conversions_out: int = 0

    @property
    def duplicate_rate(self) -> float:
        """Share of the hour's copies not delivered as a conversion of their own."""
        return (self.copies_in - self.conversions_out) / self.copies_in if self.copies_in else 0.0

    def as_metadata(self) -> dict[str, float | int]:
        return {**asdict(self), "duplicate_rate": round(self.duplicate_rate, 4)}


def replace_hour_figures(conn: Connection, hour: datetime, figures: HourDedupeFigures) -> None:
    """Write the hour's row in the caller's transaction (replacing an earlier run's)."""
    hour_us = to_micros(hour)
    conn.execute(sa.delete(dedupe_hour_figures).where(dedupe_hour_figures.c.hour_us == hour_us))
    conn.execute(
        dedupe_hour_figures.insert(),
        {
            "hour_us": hour_us,
            **asdict(figures),
            "duplicate_rate": figures.duplicate_rate,
            "recorded_at_us": now_micros(),
        },
    )


def read_hour_figures(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows of hours in [start, end), oldest first, with an `hour` column (UTC)."""
    with engine.connect() as conn:
        result = conn.execute(
            sa.select(dedupe_hour_figures)
            .where(
                dedupe_hour_figures.c.hour_us >= to_micros(start),
                dedupe_hour_figures.c.hour_us < to_micros(end),
            )
            .order_by(dedupe_hour_figures.c.hour_us)
        )
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    frame.insert(
        0,
        "hour",
        pd.Series([from_micros(int(h)) for h in frame["hour_us"]], dtype="datetime64[ns, UTC]"),
    )
    return frame


def trailing_duplicate_rates(
    engine: Engine, hour: datetime, lookback_hours: int, min_copies: int
) -> list[float]:
    """Duplicate rates of the hours before `hour` (within the lookback) with enough copies."""
    hour_us = to_micros(hour)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(dedupe_hour_figures.c.duplicate_rate)
            .where(
                dedupe_hour_figures.c.hour_us < hour_us,
                dedupe_hour_figures.c.hour_us >= hour_us - lookback_hours * 3_600_000_000,
                dedupe_hour_figures.c.copies_in >= min_copies,
            )
            .order_by(dedupe_hour_figures.c.hour_us)
        ).fetchall()
    return [float(r[0]) for r in rows]
