"""The quarantine: every record the platform could not use, with its reason.

Nothing is dropped silently: parse failures, collector rejections and validation
failures all land here, redacted (no plaintext personal data), with their origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import quarantine
from conversion_platform.store.timecodes import from_micros, now_micros, to_micros

STAGE_PARSE = "parse"
STAGE_COLLECTOR = "collector"
STAGE_VALIDATION = "validation"

QUARANTINE_COLUMNS = (
    "hour",
    "stage",
    "source",
    "origin",
    "event_id",
    "event_name",
    "reason",
    "raw_redacted",
)


@dataclass(frozen=True)
class QuarantinedRecord:
    """One unusable record: where it came from, why, and its redacted text."""

    stage: str
    source: str
    hour: datetime
    origin: str
    reason: str
    raw_redacted: str | None = None
    event_id: str | None = None
    event_name: str | None = None


def _row(record: QuarantinedRecord, created_at_us: int) -> dict:
    return {
        "stage": record.stage,
        "source": record.source,
        "hour_us": to_micros(record.hour),
        "origin": record.origin,
        "event_id": record.event_id,
        "event_name": record.event_name,
        "reason": record.reason,
        "raw_redacted": record.raw_redacted,
        "created_at_us": created_at_us,
    }


def insert_quarantined(conn: Connection, records: Iterable[QuarantinedRecord]) -> int:
    """Add records in the caller's transaction."""
    created = now_micros()
    rows = [_row(r, created) for r in records]
    if rows:
        conn.execute(quarantine.insert(), rows)
    return len(rows)


def replace_quarantined(
    engine: Engine,
    stage: str,
    start: datetime,
    end: datetime,
    records: Iterable[QuarantinedRecord],
    sources: tuple[str, ...] | None = None,
) -> int:
    """Replace a stage's quarantine rows for hours in [start, end) in one transaction.

    Re-runs and backfills of an hour must not quarantine a record twice.
    """
    conditions = [
        quarantine.c.stage == stage,
        quarantine.c.hour_us >= to_micros(start),
        quarantine.c.hour_us < to_micros(end),
    ]
    if sources is not None:
        conditions.append(quarantine.c.source.in_(sources))
    with engine.begin() as conn:
        conn.execute(sa.delete(quarantine).where(*conditions))
        return insert_quarantined(conn, records)


def read_quarantined(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Quarantined records of hours in [start, end), oldest first."""
    query = (
        sa.select(quarantine)
        .where(quarantine.c.hour_us >= to_micros(start), quarantine.c.hour_us < to_micros(end))
        .order_by(quarantine.c.hour_us, quarantine.c.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    frame = pd.DataFrame(
        {
            "hour": pd.Series(
                [from_micros(r["hour_us"]) for r in rows], dtype="datetime64[ns, UTC]"
            ),
            **{c: pd.Series([r[c] for r in rows], dtype="string") for c in QUARANTINE_COLUMNS[1:]},
        }
    )
    return frame


#: Validation records hold every failed check, joined with this.
REASON_SEPARATOR = "; "


def reason_class(reason: str) -> str:
    """The reason without the quoted input it may end with (`value is not a number: 'x'`
    is counted as `value is not a number`), so counts group by kind of failure."""
    return reason.split(": ", 1)[0].strip()[:120] or "unknown"


def reason_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Records per (stage, reason), most frequent first; a validation record counts once
    under each check it failed."""
    if frame.empty:
        return pd.DataFrame({"stage": [], "reason": [], "records": []})
    reasons = frame["reason"].astype(str).str.split(REASON_SEPARATOR)
    exploded = pd.DataFrame({"stage": frame["stage"].astype(str), "reason": reasons}).explode(
        "reason"
    )
    classes = exploded["reason"].str.split(": ", n=1).str[0].str.strip().str.slice(0, 120)
    exploded["reason"] = classes.where(classes != "", "unknown")
    counts = exploded.groupby(["stage", "reason"]).size().rename("records").reset_index()
    return counts.sort_values(["records", "stage", "reason"], ascending=[False, True, True])
