"""Reading server logs for a window of hours: files, their time index, lines by hour.

Every file under the logs folder is read, plain or gzip (told by its magic bytes, not its
name), holding JSON lines, combined access-log lines, or both. A line's hour is its log
time. A line that can't be read is kept for the quarantine and belongs to the hour of
the nearest readable line before it in the same file (or the file's first readable
line), so it is quarantined exactly once however many hours run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.ingest.access_log import AccessLogRule
from conversion_platform.ingest.log_chunks import FailedLine, LogChunk, read_log_chunks
from conversion_platform.store.tables import log_file_index
from conversion_platform.store.timecodes import from_micros, now_micros


@dataclass(frozen=True)
class LogLine:
    """One line: its place, its log time, and either a record or the reason it failed."""

    path: str
    line_number: int
    logged_at: datetime | None
    record: dict[str, Any] | None
    error: str | None
    raw: str

    @property
    def origin(self) -> str:
        return f"{self.path}:{self.line_number}"


@dataclass
class HourOfLogs:
    """What one hour's lines hold: conversion records, failed lines, lines that matched no rule."""

    records: list[tuple[LogLine, dict[str, Any]]] = field(default_factory=list)
    failed: list[LogLine] = field(default_factory=list)
    ignored: int = 0


def list_log_files(logs_dir: Path) -> list[Path]:
    """Every regular file under the logs folder, hidden files excluded, in path order."""
    if not logs_dir.exists():
        return []
    files = [
        p
        for p in logs_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(logs_dir).parts)
    ]
    return sorted(files)


@dataclass
class LogScan:
    """What the files that can hold a window of hours hold for it, each file parsed once."""

    chunks: list[LogChunk] = field(default_factory=list)  # records of the window's hours only
    failed: dict[datetime, list[LogLine]] = field(default_factory=dict)
    ignored: dict[datetime, int] = field(default_factory=dict)
    files_read: list[str] = field(default_factory=list)


def _hour_of_ns(nanos: int) -> datetime:
    return datetime.fromtimestamp(nanos // 1_000_000_000, tz=UTC)


def _known_ranges(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.path: row for row in conn.execute(sa.select(log_file_index)).fetchall()}


def scan_logs_for_hours(
    engine: Engine,
    logs_dir: Path,
    rules: list[AccessLogRule],
    hours: list[datetime],
    on_chunk: Callable[[LogChunk], None] | None = None,
    then: Callable[[LogChunk], Any] | None = None,
) -> LogScan:
    """Parse every file that can hold one of `hours`, keeping what belongs to them.

    The file index says which files can: a file it knows unchanged (same size and mtime)
    whose range misses the window is not opened. A new or changed file is parsed once,
    for the window and for the index together.

    With `on_chunk`, each chunk of the window's records is handed to it as soon as it is
    parsed instead of being kept in `LogScan.chunks`: only one chunk's parsed records are
    held at a time (ingest coerces and drops them chunk by chunk). With `then` (a
    module-level function), each chunk of the window's records is given to it as soon as
    it is parsed, on either of two cores, and its records are replaced by `then`'s result
    (`LogChunk.outcome`): see `read_log_chunks`.
    """
    scan = LogScan(failed={hour: [] for hour in hours}, ignored=dict.fromkeys(hours, 0))
    if not hours:
        return scan
    window_start, window_end = min(hours), max(hours)
    wanted = np.array(sorted(_ns(h) for h in hours), dtype=np.int64)
    known = _known_ranges(engine)
    updates: list[dict[str, Any]] = []
    for path in list_log_files(logs_dir):
        stat = path.stat()
        row = known.get(str(path))
        fresh = (
            row is not None and row.size_bytes == stat.st_size and row.mtime_ns == stat.st_mtime_ns
        )
        if fresh and (
            row.first_time_us is None
            or row.last_time_us is None
            or from_micros(row.last_time_us) < window_start
            or from_micros(row.first_time_us) > window_end
        ):
            continue
        first: int | None = None
        last: int | None = None
        lines = 0
        failed: list[FailedLine] = []
        holds_window = False
        for chunk in read_log_chunks(path, rules, hours_ns=wanted, then=then):
            if chunk.hour_range_ns is not None:
                low, high = chunk.hour_range_ns
                first = low if first is None else min(first, low)
                last = high if last is None else max(last, high)
            lines += chunk.lines_read
            failed.extend(chunk.failed)
            for stamp in chunk.ignored_hours_ns:
                hour = _hour_of_ns(stamp)
                if hour in scan.ignored:
                    scan.ignored[hour] += 1
                    holds_window = True
            if chunk.records_kept:
                holds_window = True
                chunk.failed = []
                chunk.ignored_hours_ns = []
                if on_chunk is not None:
                    on_chunk(chunk)
                else:
                    scan.chunks.append(chunk)
        failed.sort(key=lambda line: line.line_number)
        for line in failed:  # their hours are known once the whole file is read
            hour_ns = line.hour_ns
            assert hour_ns is not None
            first = hour_ns if first is None else min(first, hour_ns)
            last = hour_ns if last is None else max(last, hour_ns)
            hour = _hour_of_ns(hour_ns)
            if hour in scan.failed:
                holds_window = True
                scan.failed[hour].append(
                    LogLine(str(path), line.line_number, None, None, line.reason, line.raw)
                )
        if holds_window or (
            first is not None
            and last is not None
            and _hour_of_ns(last) >= window_start
            and _hour_of_ns(first) <= window_end
        ):
            scan.files_read.append(str(path))
        if not fresh:
            updates.append(
                {
                    "path": str(path),
                    "size_bytes": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "first_time_us": first // 1_000 if first is not None else None,
                    "last_time_us": last // 1_000 if last is not None else None,
                    "lines": lines,
                    "indexed_at_us": now_micros(),
                }
            )
    if updates:
        with engine.begin() as conn:
            conn.execute(
                sa.delete(log_file_index).where(
                    log_file_index.c.path.in_([u["path"] for u in updates])
                )
            )
            conn.execute(log_file_index.insert(), updates)
    return scan


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def _hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def read_logs_for_hours(
    engine: Engine, logs_dir: Path, rules: list[AccessLogRule], hours: list[datetime]
) -> tuple[dict[datetime, HourOfLogs], list[str]]:
    """Lines of every file that can hold one of `hours`, bucketed by hour, one `LogLine` each.

    Returns the buckets and the files read. (Ingest itself works on `scan_logs_for_hours`'
    chunks; this per-line view is for inspecting a window.)
    """
    scan = scan_logs_for_hours(engine, logs_dir, rules, hours)
    buckets = {hour: HourOfLogs() for hour in hours}
    for hour in hours:
        buckets[hour].failed = scan.failed.get(hour, [])
        buckets[hour].ignored = scan.ignored.get(hour, 0)
    for chunk in scan.chunks:
        for i, record in enumerate(chunk.records):
            stamp = chunk.logged_ns[i]
            logged_at = datetime.fromtimestamp(stamp // 1_000_000_000, tz=UTC).replace(
                microsecond=(stamp % 1_000_000_000) // 1_000
            )
            line = LogLine(
                chunk.path, chunk.line_numbers[i], logged_at, record, None, chunk.raw_text(i)
            )
            buckets[_hour_of(logged_at)].records.append((line, record))
    return buckets, scan.files_read


def hours_in(start: datetime, end: datetime) -> list[datetime]:
    """The UTC hours starting in [start, end)."""
    first = (
        pd.Timestamp(start).tz_convert("UTC")
        if pd.Timestamp(start).tzinfo
        else pd.Timestamp(start, tz="UTC")
    )
    last = (
        pd.Timestamp(end).tz_convert("UTC")
        if pd.Timestamp(end).tzinfo
        else pd.Timestamp(end, tz="UTC")
    )
    return [ts.to_pydatetime() for ts in pd.date_range(first, last, freq="h", inclusive="left")]
