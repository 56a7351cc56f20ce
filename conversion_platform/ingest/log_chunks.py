"""Reading one server-log file fast, in chunks of lines, each line parsed once.

The file is read in large blocks (gzip told by its magic bytes), cut at line ends, and
parsed a chunk of lines at a time: a JSON object line with one `orjson.loads`, its log
time (`logged_at`, else `event_time`) read for the whole chunk at once, and anything out
of the ordinary (a Unix timestamp, a time that isn't plain ISO 8601, bytes that aren't
UTF-8, a line that isn't JSON) through the per-line parsers, so every reason a line is
refused is theirs. Access-log lines go through `parse_access_log_line`.

A line that can't be read belongs to the hour of the nearest readable line before it in
the same file (or the file's first readable line; in a file with none, the hour the file
was last modified), so it is quarantined exactly once however many hours run.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from conversion_platform.ingest.access_log import (
    AccessLogError,
    AccessLogRule,
    parse_access_log_line,
)
from conversion_platform.ingest.json_lines import JsonLineError, parse_json_line

MAX_LINE_BYTES = 1_000_000
#: Lines parsed per chunk: big enough for the column-wise steps, small enough for the cache.
CHUNK_LINES = 100_000
_BLOCK_BYTES = 32 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_NS_PER_HOUR = 3_600 * 1_000_000_000
_PLAIN_ISO = r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$"
_BRACE = ord("{")


@dataclass
class FailedLine:
    """A line that can't be read: where it is, why, its (unredacted) text, its hour."""

    line_number: int
    reason: str
    raw: str
    hour_ns: int = 0


@dataclass
class LogChunk:
    """The readable conversion records of a run of lines, and the lines that failed."""

    path: str
    records: list[dict[str, Any]] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    logged_ns: list[int] = field(default_factory=list)  # log time of each record (UTC ns)
    raws: list[bytes | str] = field(default_factory=list)  # each record's line, for the quarantine
    failed: list[FailedLine] = field(default_factory=list)
    ignored_hours_ns: list[int] = field(default_factory=list)  # access-log hits matching no rule

    def hours_ns(self) -> np.ndarray:
        stamps = np.asarray(self.logged_ns, dtype=np.int64)
        return stamps - stamps % _NS_PER_HOUR

    def raw_text(self, i: int) -> str:
        raw = self.raws[i]
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw


def _blocks(path: Path) -> Iterator[tuple[bytes, str | None]]:
    """(bytes, error) blocks of the file; a truncated gzip ends with an error."""
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    if not compressed:
        with path.open("rb") as handle:
            while block := handle.read(_BLOCK_BYTES):
                yield block, None
        return
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read1(_BLOCK_BYTES):
                yield block, None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        yield b"", type(exc).__name__


def _lines(path: Path) -> Iterator[tuple[list[bytes], str | None]]:
    """Complete lines of the file in batches of about `CHUNK_LINES`, then a stream error if any."""
    tail = b""
    for block, error in _blocks(path):
        if error is not None:
            yield [], error  # the incomplete last line is lost with the stream
            return
        data = tail + block
        cut = data.rfind(b"\n")
        if cut < 0:
            tail = data
            continue
        tail = data[cut + 1 :]
        lines = data[:cut].split(b"\n")
        for start in range(0, len(lines), CHUNK_LINES):
            yield lines[start : start + CHUNK_LINES], None
    if tail:
        yield [tail], None


def _plain_stamps(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(UTC ns, readable) of log-time values: plain ISO 8601 text read at once."""
    text = [v if v.__class__ is str else None for v in values]
    array = pa.array(text, type=pa.string())
    plain = pc.fill_null(pc.match_substring_regex(array, _PLAIN_ISO), False)
    nanos = np.zeros(len(values), dtype=np.int64)
    mask = plain.to_numpy(zero_copy_only=False)
    if mask.any():
        try:
            parsed = pc.cast(pc.filter(array, plain), pa.timestamp("ns", tz="UTC"))
            nanos[mask] = parsed.cast(pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            mask[:] = False  # an impossible date somewhere: let the line parser decide each
    return nanos, mask


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def read_log_chunks(path: Path, rules: list[AccessLogRule]) -> Iterator[LogChunk]:
    """Parse the file a chunk of lines at a time; failed lines carry the hour they belong to.

    Failed lines before the file's first readable line get their hour when it is found,
    possibly in a later chunk: read a file's chunks to the end before using their hours.
    """
    name = str(path)
    number = 0
    last_hour: int | None = None
    pending: list[FailedLine] = []  # failed lines before the file's first readable line
    for lines, stream_error in _lines(path):
        chunk = LogChunk(name)
        # Each line's kind and index, in file order: 0 record, 1 failed, 2 no rule matched.
        order: list[tuple[int, int]] = []
        stamps: list[Any] = []
        raws: list[bytes] = []
        for data in lines:
            number += 1
            if len(data) + 1 > MAX_LINE_BYTES:
                chunk.failed.append(
                    FailedLine(number, f"line longer than {MAX_LINE_BYTES} bytes", "")
                )
                order.append((1, len(chunk.failed) - 1))
                continue
            if data[:1] == b"{" or data.lstrip()[:1] == b"{":
                try:
                    record = orjson.loads(data)
                except orjson.JSONDecodeError:
                    record = None
                if record.__class__ is dict:
                    stamp = record.get("logged_at")
                    stamps.append(stamp if stamp is not None else record.get("event_time"))
                    chunk.records.append(record)
                    chunk.line_numbers.append(number)
                    raws.append(data)
                    order.append((0, len(chunk.records) - 1))
                    continue
            # Everything else, and JSON that didn't parse: the line parsers decide (and say why).
            kind, index = _parse_slow(chunk, data, number, rules, stamps, raws)
            if kind >= 0:
                order.append((kind, index))
        # Log times of the JSON records at once; the odd ones through the line parser.
        nanos, plain = _plain_stamps(stamps)
        refused: dict[int, FailedLine] = {}
        for i in np.flatnonzero(~plain):
            text = _text(raws[i])
            try:
                if text is None:
                    raise JsonLineError("not valid UTF-8")
                moment, _ = parse_json_line(text)
            except JsonLineError as exc:
                refused[int(i)] = FailedLine(
                    chunk.line_numbers[i], str(exc), text if text is not None else _replace(raws[i])
                )
                continue
            nanos[i] = _ns(moment.astimezone(UTC))
        chunk.logged_ns = nanos.tolist()
        chunk.raws = raws  # type: ignore[assignment]
        if refused:
            chunk.failed.extend(refused.values())
        if chunk.failed or pending:
            # The hour of a failed line: the nearest readable line before it, in file order.
            for kind, index in order:
                if kind == 0 and index not in refused:
                    stamp = chunk.logged_ns[index]
                    last_hour = stamp - stamp % _NS_PER_HOUR
                elif kind == 2:
                    last_hour = chunk.ignored_hours_ns[index]
                else:
                    line = refused[index] if kind == 0 else chunk.failed[index]
                    if last_hour is None:
                        pending.append(line)
                    else:
                        line.hour_ns = last_hour
                    continue
                if pending:
                    for line in pending:
                        line.hour_ns = last_hour
                    pending.clear()
        elif order:
            kind, index = order[-1]
            stamp = chunk.logged_ns[index] if kind == 0 else chunk.ignored_hours_ns[index]
            last_hour = stamp - stamp % _NS_PER_HOUR
        if stream_error is not None:
            line = FailedLine(
                number + 1, f"unreadable compressed data after line {number}: {stream_error}", ""
            )
            chunk.failed.append(line)
            if last_hour is None:
                pending.append(line)
            else:
                line.hour_ns = last_hour
        if refused:
            keep = [i for i in range(len(chunk.records)) if i not in refused]
            chunk.records = [chunk.records[i] for i in keep]
            chunk.line_numbers = [chunk.line_numbers[i] for i in keep]
            chunk.logged_ns = [chunk.logged_ns[i] for i in keep]
            chunk.raws = [chunk.raws[i] for i in keep]
        yield chunk
    if pending:
        # No readable line at all: the file's modification hour is the best we know.
        moment = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        fallback = _ns(moment.replace(minute=0, second=0, microsecond=0))
        for line in pending:
            line.hour_ns = fallback


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


def _replace(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").rstrip("\r\n")


def _parse_slow(
    chunk: LogChunk,
    data: bytes,
    number: int,
    rules: list[AccessLogRule],
    stamps: list[Any],
    raws: list[bytes],
) -> tuple[int, int]:
    """One line the fast path didn't take: (kind, index) as in `read_log_chunks`, -1 to skip."""
    text = _text(data)
    if text is None:
        chunk.failed.append(FailedLine(number, "not valid UTF-8", _replace(data)))
        return 1, len(chunk.failed) - 1
    stripped = text.lstrip()
    if not stripped:
        return -1, -1  # blank lines carry nothing
    try:
        if stripped.startswith("{"):
            logged_at, record = parse_json_line(stripped)
        else:
            logged_at, maybe = parse_access_log_line(stripped, rules)
            stamp = _ns(logged_at.astimezone(UTC))
            if maybe is None:
                chunk.ignored_hours_ns.append(stamp - stamp % _NS_PER_HOUR)
                return 2, len(chunk.ignored_hours_ns) - 1
            record = maybe
    except (JsonLineError, AccessLogError) as exc:
        chunk.failed.append(FailedLine(number, str(exc), text))
        return 1, len(chunk.failed) - 1
    # A record read by the line parser: its log time is already known; keep it as text.
    stamps.append(logged_at.astimezone(UTC).isoformat())
    chunk.records.append(record)
    chunk.line_numbers.append(number)
    raws.append(data)
    return 0, len(chunk.records) - 1
