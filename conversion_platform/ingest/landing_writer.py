"""Writing incoming events to the landing table: checked, hashed, committed together.

The collector and the demo both land events here. Each event is checked on its own;
the ones that can't be conversions are quarantined with their reason, and the valid ones
are committed in the same transaction, so an acknowledgement means both are durable.

Landing is two steps so that the collector can commit many requests in one transaction
(group commit): `prepare_landing` checks and hashes one request's events (no database),
`commit_prepared` writes any number of prepared requests in the caller's transaction
with one executemany per table. `land_events` does both for one request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection, Engine

from conversion_platform import events
from conversion_platform.ingest.records import RecordError, coerce_record, record_to_stored_row
from conversion_platform.store.identity_drops import add_dropped_identifiers
from conversion_platform.store.landing import insert_landing_rows, landing_row
from conversion_platform.store.quarantine import (
    STAGE_COLLECTOR,
    QuarantinedRecord,
    insert_quarantined,
)
from conversion_platform.transform.normalise import redact

#: Event times outside these bounds can't be read back into an hourly frame (pandas
#: timestamps end in 2262), so they are refused at the door rather than break an hour.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)

#: A check run on each raw event before it is coerced: returns the reasons it is refused.
EventCheck = Callable[[Mapping[str, Any]], list[str]]


@dataclass
class LandingResult:
    accepted: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    #: Every reason of each rejected event, by index (`rejected` joins them with "; ").
    errors: dict[int, list[str]] = field(default_factory=dict)


@dataclass
class PreparedLanding:
    """One request's events, checked and hashed, ready to commit: nothing plaintext."""

    result: LandingResult
    rows: list[tuple[Any, ...]]  # landing_row tuples
    quarantined: list[QuarantinedRecord]
    source: str = events.SOURCE_SERVER
    #: Identity values dropped (unusable, never stored), counted per hour received.
    dropped: dict[datetime, Counter[str]] = field(default_factory=dict)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _landable_errors(coerced: Mapping[str, Any]) -> list[str]:
    """What the stored model can't hold even though the record coerced."""
    errors = []
    event_time = coerced["event_time"]
    if not EARLIEST_EVENT_TIME <= event_time < LATEST_EVENT_TIME:
        errors.append("event_time is out of range (1970 to 2200)")
    for name, value in coerced.items():
        if isinstance(value, str) and "\x00" in value:
            errors.append(f"{name} contains a NUL character")
    return errors


def quarantined_payload(
    record: Any,
    source: str,
    moment: datetime,
    origin: str,
    reason: str,
) -> QuarantinedRecord:
    """A quarantine entry for an unusable event or payload, redacted, with its reason."""
    if isinstance(record, bytes):
        raw = record.decode("utf-8", "replace")
    elif isinstance(record, Mapping | list):
        try:
            raw = orjson.dumps(record, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):
            raw = repr(record)
    else:
        raw = str(record)
    is_mapping = isinstance(record, Mapping)
    event_id = record.get("event_id") if is_mapping else None
    event_name = record.get("event_name") if is_mapping else None
    return QuarantinedRecord(
        stage=STAGE_COLLECTOR,
        source=source,
        hour=_hour(moment),
        origin=origin,
        reason=reason.replace("\x00", "\\x00"),
        raw_redacted=redact(raw).replace("\x00", "\\x00"),
        event_id=str(event_id)[:200].replace("\x00", "") if event_id else None,
        event_name=str(event_name)[:100].replace("\x00", "") if event_name else None,
    )


def prepare_landing(
    records: Sequence[Any],
    source: str,
    received_at: datetime | Sequence[datetime],
    *,
    origin: str = "collector",
    site: str | None = None,
    check: EventCheck | None = None,
    first_index: int = 0,
) -> PreparedLanding:
    """Check and hash `records` (no database): landing rows and quarantine entries.

    `received_at` is one moment for the whole request or one per record. Money fields
    that arrive only from the pixel are marked unverified. `check`, when given, refuses
    events before coercion (the collector's stricter rules for what it accepts).
    `first_index` numbers the records when they are a slice of a larger request.
    """
    result = LandingResult()
    rows: list[tuple[Any, ...]] = []
    quarantined: list[QuarantinedRecord] = []
    dropped: dict[datetime, Counter[str]] = {}
    value_verified = source != events.SOURCE_PIXEL
    per_record = not isinstance(received_at, datetime)
    for position, record in enumerate(records):
        moment: datetime = received_at[position] if per_record else received_at  # type: ignore[index,assignment]
        index = first_index + position
        errors: list[str] = []
        if not isinstance(record, dict | Mapping):  # (dict first: the ABC check is slow)
            errors.append("event must be a JSON object")
        elif check is not None:
            errors = check(record)
        coerced: dict[str, Any] | None = None
        if not errors:
            try:
                coerced = coerce_record(
                    record,
                    source,
                    received_at=moment,
                    default_event_time=moment if source == events.SOURCE_PIXEL else None,
                )
            except RecordError as exc:
                errors.append(str(exc))
            else:
                errors = _landable_errors(coerced)
        if errors or coerced is None:
            reason = "; ".join(errors)
            result.rejected.append((index, reason))
            result.errors[index] = errors
            quarantined.append(
                quarantined_payload(record, source, moment, f"{origin}#{index}", reason)
            )
            continue
        hour = _hour(moment)
        counts = dropped.get(hour)
        if counts is None:
            counts = dropped[hour] = Counter()
        stored = record_to_stored_row(coerced, value_verified=value_verified, dropped=counts)
        rows.append(landing_row(stored, site))
    result.accepted = len(rows)
    return PreparedLanding(
        result=result,
        rows=rows,
        quarantined=quarantined,
        source=source,
        dropped={hour: counts for hour, counts in dropped.items() if counts},
    )


def merge_prepared(parts: Sequence[PreparedLanding]) -> PreparedLanding:
    """One request's prepared slices (made with consecutive `first_index`) as one."""
    result = LandingResult()
    merged = PreparedLanding(
        result=result, rows=[], quarantined=[], source=parts[0].source if parts else "server"
    )
    for part in parts:
        result.accepted += part.result.accepted
        result.rejected.extend(part.result.rejected)
        result.errors.update(part.result.errors)
        merged.rows.extend(part.rows)
        merged.quarantined.extend(part.quarantined)
        for hour, counts in part.dropped.items():
            merged.dropped.setdefault(hour, Counter()).update(counts)
    return merged


def commit_prepared(conn: Connection, prepared: Sequence[PreparedLanding]) -> int:
    """Write prepared requests in the caller's transaction: one statement per table (and
    per source for the dropped-identifier counts)."""
    rows = [row for p in prepared for row in p.rows]
    quarantined = [q for p in prepared for q in p.quarantined]
    insert_landing_rows(conn, rows)
    insert_quarantined(conn, quarantined)
    dropped: dict[str, dict[datetime, Counter[str]]] = {}
    for p in prepared:
        for hour, counts in p.dropped.items():
            dropped.setdefault(p.source, {}).setdefault(hour, Counter()).update(counts)
    for source, per_hour in dropped.items():
        add_dropped_identifiers(conn, per_hour, source)
    return len(rows)


def land_events(
    engine: Engine,
    records: Sequence[Mapping[str, Any]],
    source: str,
    received_at: datetime | Sequence[datetime],
    *,
    origin: str = "collector",
    site: str | None = None,
    check: EventCheck | None = None,
) -> LandingResult:
    """Check, hash and commit `records`; rejected ones go to the quarantine in the same commit.

    `received_at` is one moment for the whole request or one per record. Money fields
    that arrive only from the pixel are marked unverified.
    """
    prepared = prepare_landing(records, source, received_at, origin=origin, site=site, check=check)
    with engine.begin() as conn:
        commit_prepared(conn, [prepared])
    return prepared.result
