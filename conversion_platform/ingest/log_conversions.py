"""Server-log conversions of a window of hours, in the stored model, plus what failed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.ingest.access_log import AccessLogRule
from conversion_platform.ingest.log_chunks import LogChunk
from conversion_platform.ingest.record_columns import coerce_records, concat_coerced, stored_frame
from conversion_platform.ingest.server_logs import scan_logs_for_hours
from conversion_platform.memory import return_free_heap
from conversion_platform.store.quarantine import STAGE_PARSE, QuarantinedRecord
from conversion_platform.transform.normalise import (
    PhonesHashedAhead,
    clear_hashing_caches,
    redact,
)
from conversion_platform.transform.second_core import stop_idle_worker


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


def _hour(nanos: int) -> datetime:
    return datetime.fromtimestamp(nanos // 1_000_000_000, tz=UTC)


def ingest_server_logs(
    engine: Engine, logs_dir: Path, rules: list[AccessLogRule], hours: list[datetime]
) -> LogIngestResult:
    """Parse, check and hash the log lines of `hours`; failed lines become quarantine records.

    Records are checked a chunk of lines at a time, column by column
    (`record_columns.coerce_records`), with `coerce_record`'s reasons for the ones refused.
    Chunks of lines are parsed and checked on two cores (here and a worker process),
    and the worker hashes the phone numbers while this process hashes the rest.
    Afterwards the memo of hashed plaintext values is emptied, the parse's freed heap
    goes back to the system and the worker is stopped: a million lines left 0.3 GB of
    memo and 1.1 GB of free heap resident through every later step of the run, and the
    worker 350 MB (250 MB with its free heap returned; later steps don't use it).
    """
    try:
        return _ingest(engine, logs_dir, rules, hours)
    finally:
        clear_hashing_caches()
        return_free_heap()
        stop_idle_worker()


def _text_as_arrow(frame: pd.DataFrame) -> pd.DataFrame:
    """The chunk's text columns as Arrow strings, in place.

    As Python objects, a million log lines' columns were 2.3 GB before anything became
    Arrow at the end of ingest (0.75 GB as Arrow), and both forms were alive at once for
    the conversion: ingest's peak. A column Arrow can't hold as text stays as it is.
    """
    for name in frame.columns:
        if frame[name].dtype == object:
            try:
                frame[name] = events.as_string(frame[name])
            except (TypeError, ValueError):
                continue
    return frame


@dataclass
class CoercedLogChunk:
    """A chunk of log records checked column by column (`coerce_log_chunk`)."""

    frame: pd.DataFrame  # the records kept, text columns as Arrow
    hours_ns: np.ndarray  # the hour of each kept record (UTC ns)
    refused: list[QuarantinedRecord]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled (a chunk the worker checked): its text is moved into Arrow's memory."""
        self.__dict__.update(state)
        self.frame = _text_in_arrow_pool(self.frame)


def coerce_log_chunk(chunk: LogChunk) -> CoercedLogChunk:
    """Check a parsed chunk's records (`coerce_records`); the refused become quarantine
    records. Runs on either core (`read_log_chunks`' `then`): what it returns is compact,
    its dicts go no further."""
    logged = pd.Series(np.asarray(chunk.logged_ns, dtype="datetime64[ns]")).dt.tz_localize("UTC")
    coerced = coerce_records(chunk.records, events.SOURCE_LOG, logged)
    hours_ns = chunk.hours_ns()
    refused: list[QuarantinedRecord] = []
    for position, reason in coerced.failures:
        record = chunk.records[position]
        refused.append(
            QuarantinedRecord(
                stage=STAGE_PARSE,
                source=events.SOURCE_LOG,
                hour=_hour(int(hours_ns[position])),
                origin=f"{chunk.path}:{chunk.line_numbers[position]}",
                reason=reason,
                raw_redacted=redact(chunk.raw_text(position)),
                event_id=str(record.get("event_id"))[:200] if record.get("event_id") else None,
                event_name=str(record.get("event_name"))[:100]
                if record.get("event_name")
                else None,
            )
        )
    return CoercedLogChunk(_text_as_arrow(coerced.frame), hours_ns[coerced.positions], refused)


def _text_in_arrow_pool(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame's Arrow text columns with their buffers in Arrow's own memory, in place.

    A chunk checked by the worker arrives unpickled, its Arrow buffers Python `bytes` in
    the C heap: once freed (after ingest) that heap is free memory Arrow's allocator can't
    reuse, which stayed resident while dedupe, the next step, allocated its own. A copy
    of a chunk's text (about 30 MB per 100,000 lines) moves it into Arrow's pool, and
    the unpickled buffers go at once. Chunks checked here are in the pool already: only
    unpickling (`CoercedLogChunk.__setstate__`) calls this.
    """
    for name in frame.columns:
        dtype = frame[name].dtype
        if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
            copied = pa.concat_arrays([events.arrow_text(frame[name])])
            frame[name] = pd.Series(pd.arrays.ArrowStringArray(copied), index=frame.index)
    return frame


def _ingest(
    engine: Engine, logs_dir: Path, rules: list[AccessLogRule], hours: list[datetime]
) -> LogIngestResult:
    frames: list[pd.DataFrame] = []
    hour_parts: list[np.ndarray] = []
    parsed: Counter[datetime] = Counter()
    refused: dict[datetime, list[QuarantinedRecord]] = {hour: [] for hour in hours}

    def collect(chunk: LogChunk) -> None:
        """Keep a chunk's checked records (computed on either core) in file order."""
        outcome: CoercedLogChunk = chunk.outcome
        for record in outcome.refused:
            refused[record.hour].append(record)
        for hour_ns, count in zip(*np.unique(outcome.hours_ns, return_counts=True), strict=True):
            parsed[_hour(int(hour_ns))] += int(count)
        frames.append(outcome.frame)
        hour_parts.append(outcome.hours_ns)

    # Each chunk of lines is parsed and checked on one of two cores as it is read.
    scan = scan_logs_for_hours(
        engine, logs_dir, rules, hours, on_chunk=collect, then=coerce_log_chunk
    )
    per_hour = {
        hour: {
            "lines_parsed": parsed[hour],
            "lines_quarantined": len(scan.failed.get(hour, [])) + len(refused[hour]),
            "lines_ignored": scan.ignored.get(hour, 0),
        }
        for hour in hours
    }
    # Per hour: lines that couldn't be read first, then records refused by the checks.
    quarantined_by_hour: dict[datetime, list[QuarantinedRecord]] = {
        hour: [
            *(
                QuarantinedRecord(
                    stage=STAGE_PARSE,
                    source=events.SOURCE_LOG,
                    hour=hour,
                    origin=line.origin,
                    reason=line.error or "unreadable",
                    raw_redacted=redact(line.raw),
                )
                for line in scan.failed.get(hour, [])
            ),
            *refused[hour],
        ]
        for hour in hours
    }
    if frames:
        coerced_frame = concat_coerced(frames)
        frames.clear()  # the chunks' columns are in `coerced_frame` now
        hour_ns = np.concatenate(hour_parts)
        # In hour order, and within an hour in file and line order.
        order = np.argsort(hour_ns, kind="stable")
        if not (order == np.arange(len(order))).all():
            coerced_frame = concat_coerced([coerced_frame.take(order).reset_index(drop=True)])
            hour_ns = hour_ns[order]
        hour_of = pd.Series(hour_ns.astype("datetime64[ns]")).dt.tz_localize("UTC")
    else:
        coerced_frame = coerce_records([], events.SOURCE_LOG, []).frame
        hour_of = pd.Series([], dtype="datetime64[ns, UTC]")
    # The phone numbers are hashed by the worker while the other columns are hashed here.
    known_phones = (
        PhonesHashedAhead(
            coerced_frame["phone"],
            coerced_frame["country"] if "country" in coerced_frame.columns else None,
        )
        if "phone" in coerced_frame.columns
        else None
    )
    try:
        frame, dropped_by_hour = _stored_by_hour(coerced_frame, hour_of, known_phones)
    finally:
        if known_phones is not None:
            known_phones.close()
    dropped = sum(dropped_by_hour.values(), Counter())
    quarantined = [q for hour in hours for q in quarantined_by_hour[hour]]
    return LogIngestResult(frame, quarantined, scan.files_read, per_hour, dropped, dropped_by_hour)


def _stored_by_hour(
    coerced_frame: pd.DataFrame,
    hour_of: pd.Series,
    known_phones: PhonesHashedAhead | None,
) -> tuple[pd.DataFrame, dict[datetime, Counter[str]]]:
    """The coerced records in the stored model, hour by hour (usually one), so dropped
    identity values count in the hour they arrived."""
    parts: list[pd.DataFrame] = []
    dropped_by_hour: dict[datetime, Counter[str]] = {}
    # As integers: a tz-aware series' `to_numpy` would make a Timestamp object per row.
    hour_values = hour_of.array.asi8 if len(hour_of) else np.zeros(0, dtype=np.int64)
    boundaries = np.flatnonzero(hour_values[1:] != hour_values[:-1]) + 1 if len(hour_values) else []
    for positions in np.split(np.arange(len(hour_values)), boundaries) if len(hour_values) else []:
        whole = len(positions) == len(hour_values)  # one hour: no copy of a million rows
        part, dropped_here = stored_frame(
            coerced_frame if whole else coerced_frame.iloc[positions].reset_index(drop=True),
            hour_of=hour_of if whole else hour_of.iloc[positions].reset_index(drop=True),
            known_phones=known_phones,
        )
        dropped_by_hour[pd.Timestamp(hour_of.iloc[positions[0]]).to_pydatetime()] = dropped_here
        parts.append(part)
    if parts:
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    else:
        frame, _ = stored_frame(coerced_frame, hour_of=hour_of)
    return frame, dropped_by_hour
