"""Reading server logs for a window of hours: files, their time index, lines by hour.

Every file under the logs folder is read, plain or gzip (told by its magic bytes, not its
name), holding JSON lines, combined access-log lines, or both. A line's hour is its log
time. A line that can't be read is kept for the quarantine and belongs to the hour of
the nearest readable line before it in the same file (or the file's first readable
line), so it is quarantined exactly once however many hours run.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.ingest.access_log import (
    AccessLogError,
    AccessLogRule,
    parse_access_log_line,
)
from conversion_platform.ingest.json_lines import JsonLineError, parse_json_line
from conversion_platform.store.tables import log_file_index
from conversion_platform.store.timecodes import from_micros, now_micros, to_micros

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_LINE_BYTES = 1_000_000


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


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number, bytes, error) for each line; a truncated gzip ends with an error."""
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    number = 0
    try:
        with opener(path, "rb") as handle:  # type: ignore[operator]
            for number, line in enumerate(handle, start=1):
                yield number, line, None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        yield (
            number + 1,
            None,
            f"unreadable compressed data after line {number}: {type(exc).__name__}",
        )


def read_log_lines(path: Path, rules: list[AccessLogRule]) -> Iterator[LogLine]:
    """Parse each line of one file (JSON object lines and combined access-log lines)."""
    name = str(path)
    for number, data, stream_error in _raw_lines(path):
        if stream_error is not None or data is None:
            yield LogLine(name, number, None, None, stream_error or "unreadable", "")
            continue
        if len(data) > _MAX_LINE_BYTES:
            yield LogLine(name, number, None, None, f"line longer than {_MAX_LINE_BYTES} bytes", "")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
            yield LogLine(name, number, None, None, "not valid UTF-8", raw)
            continue
        text = text.rstrip("\r\n")
        stripped = text.lstrip()
        if not stripped:
            continue  # blank lines carry nothing
        try:
            if stripped.startswith("{"):
                logged_at, record = parse_json_line(stripped)
            else:
                logged_at, maybe_record = parse_access_log_line(stripped, rules)
                if maybe_record is None:
                    yield LogLine(name, number, logged_at.astimezone(UTC), None, None, "")
                    continue
                record = maybe_record
        except (JsonLineError, AccessLogError) as exc:
            yield LogLine(name, number, None, None, str(exc), text)
            continue
        yield LogLine(name, number, logged_at.astimezone(UTC), record, None, text)


def _hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def lines_by_hour(path: Path, rules: list[AccessLogRule]) -> Iterator[tuple[datetime, LogLine]]:
    """Each line with the hour it belongs to (failed lines take their neighbour's hour)."""
    pending_failed: list[LogLine] = []
    last_hour: datetime | None = None
    for line in read_log_lines(path, rules):
        if line.logged_at is None:
            if last_hour is None:
                pending_failed.append(line)  # wait for the file's first readable line
            else:
                yield last_hour, line
            continue
        last_hour = _hour_of(line.logged_at)
        for failed in pending_failed:
            yield last_hour, failed
        pending_failed.clear()
        yield last_hour, line
    if pending_failed:
        # No readable line at all: the file's modification hour is the best we know.
        fallback = _hour_of(datetime.fromtimestamp(path.stat().st_mtime, tz=UTC))
        for failed in pending_failed:
            yield fallback, failed


def _scan_time_range(
    path: Path, rules: list[AccessLogRule]
) -> tuple[datetime | None, datetime | None, int]:
    first: datetime | None = None
    last: datetime | None = None
    count = 0
    for hour, _line in lines_by_hour(path, rules):
        count += 1
        first = hour if first is None or hour < first else first
        last = hour if last is None or hour > last else last
    return first, last, count


def refresh_log_index(
    engine: Engine, files: list[Path], rules: list[AccessLogRule]
) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Bring the index up to date for `files` (rescanning those whose size or mtime changed).

    Returns each file's (first hour, last hour) range.
    """
    with engine.connect() as conn:
        known = {row.path: row for row in conn.execute(sa.select(log_file_index)).fetchall()}
    ranges: dict[str, tuple[datetime | None, datetime | None]] = {}
    updates: list[dict[str, Any]] = []
    for path in files:
        stat = path.stat()
        row = known.get(str(path))
        if row is not None and row.size_bytes == stat.st_size and row.mtime_ns == stat.st_mtime_ns:
            ranges[str(path)] = (
                from_micros(row.first_time_us) if row.first_time_us is not None else None,
                from_micros(row.last_time_us) if row.last_time_us is not None else None,
            )
            continue
        first, last, count = _scan_time_range(path, rules)
        ranges[str(path)] = (first, last)
        updates.append(
            {
                "path": str(path),
                "size_bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "first_time_us": to_micros(first) if first else None,
                "last_time_us": to_micros(last) if last else None,
                "lines": count,
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
    return ranges


def read_logs_for_hours(
    engine: Engine, logs_dir: Path, rules: list[AccessLogRule], hours: list[datetime]
) -> tuple[dict[datetime, HourOfLogs], list[str]]:
    """Lines of every file that can hold one of `hours`, bucketed by hour.

    Each file is parsed once for the whole window. Returns the buckets and the files read.
    """
    buckets = {hour: HourOfLogs() for hour in hours}
    if not hours:
        return buckets, []
    window_start, window_end = min(hours), max(hours)
    files = list_log_files(logs_dir)
    ranges = refresh_log_index(engine, files, rules)
    read: list[str] = []
    for path in files:
        first, last = ranges[str(path)]
        if first is None or last is None or last < window_start or first > window_end:
            continue
        read.append(str(path))
        for hour, line in lines_by_hour(path, rules):
            bucket = buckets.get(hour)
            if bucket is None:
                continue
            if line.error is not None:
                bucket.failed.append(line)
            elif line.record is None:
                bucket.ignored += 1
            else:
                bucket.records.append((line, line.record))
    return buckets, read


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
