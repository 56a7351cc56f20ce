"""Server-log conversions of a window of hours, in the stored model, plus what failed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.ingest.access_log import AccessLogRule
from conversion_platform.ingest.records import RecordError, coerce_record, records_to_frame
from conversion_platform.ingest.server_logs import read_logs_for_hours
from conversion_platform.store.quarantine import STAGE_PARSE, QuarantinedRecord
from conversion_platform.transform.normalise import redact


@dataclass
class LogIngestResult:
    """The window's conversions and failed lines, with per-hour figures."""

    frame: pd.DataFrame
    quarantined: list[QuarantinedRecord]
    files_read: list[str]
    per_hour: dict[datetime, dict[str, int]] = field(default_factory=dict)
    dropped_identifiers: Counter[str] = field(default_factory=Counter)
    #: identity values dropped (unusable), per hour and reason
    dropped_by_hour: dict[datetime, Counter[str]] = field(default_factory=dict)


def ingest_server_logs(
    engine: Engine, logs_dir: Path, rules: list[AccessLogRule], hours: list[datetime]
) -> LogIngestResult:
    """Parse, check and hash the log lines of `hours`; failed lines become quarantine records."""
    buckets, files_read = read_logs_for_hours(engine, logs_dir, rules, hours)
    frames: list[pd.DataFrame] = []
    dropped_by_hour: dict[datetime, Counter[str]] = {}
    quarantined: list[QuarantinedRecord] = []
    per_hour: dict[datetime, dict[str, int]] = {}
    for hour in hours:
        bucket = buckets[hour]
        coerced: list[dict] = []
        figures = {"lines_parsed": 0, "lines_quarantined": 0, "lines_ignored": bucket.ignored}
        for line in bucket.failed:
            quarantined.append(
                QuarantinedRecord(
                    stage=STAGE_PARSE,
                    source=events.SOURCE_LOG,
                    hour=hour,
                    origin=line.origin,
                    reason=line.error or "unreadable",
                    raw_redacted=redact(line.raw),
                )
            )
            figures["lines_quarantined"] += 1
        for line, record in bucket.records:
            try:
                coerced.append(coerce_record(record, events.SOURCE_LOG, received_at=line.logged_at))
            except RecordError as exc:
                quarantined.append(
                    QuarantinedRecord(
                        stage=STAGE_PARSE,
                        source=events.SOURCE_LOG,
                        hour=hour,
                        origin=line.origin,
                        reason=str(exc),
                        raw_redacted=redact(line.raw),
                        event_id=str(record.get("event_id"))[:200]
                        if record.get("event_id")
                        else None,
                        event_name=str(record.get("event_name"))[:100]
                        if record.get("event_name")
                        else None,
                    )
                )
                figures["lines_quarantined"] += 1
                continue
            figures["lines_parsed"] += 1
        per_hour[hour] = figures
        # Per hour, so dropped identity values are counted in the hour they arrived.
        frame, dropped_by_hour[hour] = records_to_frame(coerced, hour_of=[hour] * len(coerced))
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if frames else records_to_frame([], hour_of=[])[0]
    dropped = sum(dropped_by_hour.values(), Counter())
    return LogIngestResult(frame, quarantined, files_read, per_hour, dropped, dropped_by_hour)
