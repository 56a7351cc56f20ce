"""Writing incoming events to the landing table: checked, hashed, committed together.

The collector and the demo both land events here. Each event is checked on its own;
the ones that can't be conversions are quarantined with their reason, and the valid ones
are committed in the same transaction, so an acknowledgement means both are durable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.ingest.records import RecordError, coerce_record, records_to_frame
from conversion_platform.store.identity_drops import add_dropped_identifiers
from conversion_platform.store.landing import insert_landing_events
from conversion_platform.store.quarantine import (
    STAGE_COLLECTOR,
    QuarantinedRecord,
    insert_quarantined,
)
from conversion_platform.transform.normalise import redact


@dataclass
class LandingResult:
    accepted: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def land_events(
    engine: Engine,
    records: Sequence[Mapping[str, Any]],
    source: str,
    received_at: datetime | Sequence[datetime],
    *,
    origin: str = "collector",
    site: str | None = None,
) -> LandingResult:
    """Check, hash and commit `records`; rejected ones go to the quarantine in the same commit.

    `received_at` is one moment for the whole request or one per record. Money fields
    that arrive only from the pixel are marked unverified.
    """
    result = LandingResult()
    accepted: list[dict[str, Any]] = []
    quarantined: list[QuarantinedRecord] = []
    for index, record in enumerate(records):
        moment = received_at[index] if isinstance(received_at, Sequence) else received_at
        try:
            coerced = coerce_record(
                record,
                source,
                received_at=moment,
                default_event_time=moment if source == events.SOURCE_PIXEL else None,
            )
        except RecordError as exc:
            result.rejected.append((index, str(exc)))
            raw = (
                orjson.dumps(record, default=str).decode()
                if isinstance(record, Mapping)
                else str(record)
            )
            quarantined.append(
                QuarantinedRecord(
                    stage=STAGE_COLLECTOR,
                    source=source,
                    hour=_hour(moment),
                    origin=f"{origin}#{index}",
                    reason=str(exc),
                    raw_redacted=redact(raw),
                    event_id=str(record.get("event_id"))[:200]
                    if isinstance(record, Mapping) and record.get("event_id")
                    else None,
                    event_name=str(record.get("event_name"))[:100]
                    if isinstance(record, Mapping) and record.get("event_name")
                    else None,
                )
            )
            continue
        accepted.append(coerced)
    # Per hour received, so dropped identity values are counted in the hour they arrived.
    by_hour: dict[datetime, list[dict[str, Any]]] = {}
    for coerced in accepted:
        by_hour.setdefault(_hour(coerced["received_at"]), []).append(coerced)
    frames, dropped = [], {}
    for hour, group in by_hour.items():
        frame, dropped[hour] = records_to_frame(group, value_verified=source != events.SOURCE_PIXEL)
        frames.append(frame)
    with engine.begin() as conn:
        for frame in frames:
            result.accepted += insert_landing_events(conn, frame, site)
        insert_quarantined(conn, quarantined)
        add_dropped_identifiers(conn, dropped, source)
    return result
