"""Reading one server-log file fast, in chunks of lines, each line parsed once.

The file is read in large blocks (gzip told by its magic bytes), cut at line ends, and
parsed a chunk of lines at a time: a JSON object line with one `orjson.loads`, its log
time (`logged_at`, else `event_time`) read for the whole chunk at once, and anything out
of the ordinary (a Unix timestamp, a time that isn't plain ISO 8601, bytes that aren't
UTF-8, a line that isn't JSON) through the per-line parsers, so every reason a line is
refused is theirs. Access-log lines go through `parse_access_log_line`. A chunk is
parsed on its own (`parse_lines`), so ingest parses and checks a file's chunks on two
cores at once; only the hours of failed lines are settled in file order afterwards.

A line that can't be read belongs to the hour of the nearest readable line before it in
the same file (or the file's first readable line; in a file with none, the hour the file
was last modified), so it is quarantined exactly once however many hours run.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
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
from conversion_platform.transform.second_core import imap_on_two_cores

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
    """A line that can't be read: where it is, why, its (unredacted) text, its hour
    (None until known: see `parse_lines`)."""

    line_number: int
    reason: str
    raw: str
    hour_ns: int | None = None


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
    #: log times of records read by the per-line parsers (access-log hits), by line number
    slow_times: dict[int, datetime] = field(default_factory=dict)
    first_line_number: int = 1
    #: every line of the chunk but blank ones: records (before `hours_ns`), ignored, failed
    lines_read: int = 0
    #: the earliest and latest hour of the chunk's readable lines, records and ignored
    hour_range_ns: tuple[int, int] | None = None
    #: the hours of the chunk's first and last readable line, by line number
    first_readable_hour_ns: int | None = None
    last_readable_hour_ns: int | None = None
    #: why the file could not be read past this chunk (a truncated gzip), if it couldn't
    stream_error: str | None = None
    #: records in the hours asked for (`read_log_chunks`' `hours_ns`), and `then`'s result
    records_kept: int = 0
    outcome: Any = None

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


def read_log_chunks(
    path: Path,
    rules: list[AccessLogRule],
    *,
    hours_ns: np.ndarray | None = None,
    then: Callable[[LogChunk], Any] | None = None,
) -> Iterator[LogChunk]:
    """Parse the file a chunk of lines at a time; failed lines carry the hour they belong to.

    Failed lines before the file's first readable line get their hour when it is found,
    possibly in a later chunk: read a file's chunks to the end before using their hours.

    `hours_ns` (hour starts, UTC ns) keeps only the records of those hours in each chunk
    (`LogChunk.lines_read` and `hour_range_ns` still count every line). `then`, a
    module-level function, is applied to each chunk right after it is parsed; its result
    is the chunk's `outcome` and the chunk's records are let go. With `then`, the chunks
    are parsed on two cores (`imap_on_two_cores`): `then` should turn the records into
    something compact, as ingest's column checks do.
    """
    name = str(path)
    pieces = _pieces(path, name, rules, hours_ns, then)
    parsed = (
        imap_on_two_cores(parse_piece, pieces, imports=(then.__module__,))
        if then is not None
        else (parse_piece(*piece) for piece in pieces)
    )
    last_hour: int | None = None
    pending: list[FailedLine] = []  # failed lines before the file's first readable line
    for chunk in parsed:
        if pending and chunk.first_readable_hour_ns is not None:
            for line in pending:
                line.hour_ns = chunk.first_readable_hour_ns
            pending.clear()
        for line in chunk.failed:
            if line.hour_ns is not None:
                continue
            if last_hour is not None:
                line.hour_ns = last_hour
            elif chunk.first_readable_hour_ns is not None:
                line.hour_ns = chunk.first_readable_hour_ns
            else:
                pending.append(line)
        if chunk.last_readable_hour_ns is not None:
            last_hour = chunk.last_readable_hour_ns
        if chunk.stream_error is not None:
            after = chunk.first_line_number - 1
            line = FailedLine(
                after + 1,
                f"unreadable compressed data after line {after}: {chunk.stream_error}",
                "",
            )
            chunk.failed.append(line)
            chunk.lines_read += 1
            if last_hour is None:
                pending.append(line)
            else:
                line.hour_ns = last_hour
        yield chunk
    if pending:
        # No readable line at all: the file's modification hour is the best we know.
        moment = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        fallback = _ns(moment.replace(minute=0, second=0, microsecond=0))
        for line in pending:
            line.hour_ns = fallback


def _pieces(
    path: Path,
    name: str,
    rules: list[AccessLogRule],
    hours_ns: np.ndarray | None,
    then: Callable[[LogChunk], Any] | None,
) -> Iterator[tuple[Any, ...]]:
    """`parse_piece`'s arguments for each batch of the file's lines."""
    number = 0
    for lines, stream_error in _lines(path):
        yield (lines, name, number + 1, rules, stream_error, hours_ns, then)
        number += len(lines)


def parse_piece(
    lines: list[bytes],
    path: str,
    first_number: int,
    rules: list[AccessLogRule],
    stream_error: str | None = None,
    hours_ns: np.ndarray | None = None,
    then: Callable[[LogChunk], Any] | None = None,
) -> LogChunk:
    """One batch of lines parsed (`parse_lines`), kept to `hours_ns`, and given to `then`."""
    chunk = parse_lines(lines, path, first_number, rules)
    chunk.stream_error = stream_error
    if hours_ns is not None:
        keep = np.isin(chunk.hours_ns(), hours_ns)
        if not keep.all():
            index = np.flatnonzero(keep).tolist()
            chunk.records = [chunk.records[i] for i in index]
            chunk.line_numbers = [chunk.line_numbers[i] for i in index]
            chunk.logged_ns = [chunk.logged_ns[i] for i in index]
            chunk.raws = [chunk.raws[i] for i in index]
    chunk.records_kept = len(chunk.records)
    if then is not None and chunk.records_kept:
        chunk.outcome = then(chunk)
        chunk.records, chunk.line_numbers, chunk.logged_ns, chunk.raws = [], [], [], []
    return chunk


def parse_lines(
    lines: list[bytes], path: str, first_number: int, rules: list[AccessLogRule]
) -> LogChunk:
    """A batch of a file's lines (`first_number` is the first one's line number) parsed.

    A failed line gets the hour of the nearest readable line before it in the batch;
    one with none before it is left with `hour_ns` None, for `read_log_chunks` to give
    the hour from earlier batches (it depends on nothing else, so batches of a file can
    be parsed in any order and on any core).
    """
    chunk = LogChunk(path, first_line_number=first_number)
    number = first_number - 1
    records, numbers = chunk.records, chunk.line_numbers
    ignored_numbers: list[int] = []
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    # The hot loop: one `loads` per plain JSON object line; the rest below.
    for data in lines:
        number += 1
        if data[:1] == b"{" and len(data) < MAX_LINE_BYTES:
            try:
                record = loads(data)
            except decode_error:
                record = None
            if record.__class__ is dict:
                records.append(record)
                numbers.append(number)
                continue
        _parse_slow(chunk, data, number, rules, ignored_numbers)
    stamps = [
        stamp if (stamp := r.get("logged_at")) is not None else r.get("event_time") for r in records
    ]
    raws: list[bytes | str] = [lines[n - first_number] for n in numbers]
    # Log times at once; the odd ones (numbers, offsets missing, ...) through the line parser.
    nanos, plain = _plain_stamps(stamps)
    refused: list[int] = []
    for i in np.flatnonzero(~plain).tolist():
        text = _text(raws[i]) if isinstance(raws[i], bytes) else raws[i]
        try:
            if text is None:
                raise JsonLineError("not valid UTF-8")
            moment, _ = (
                parse_json_line(text)
                if text.lstrip().startswith("{")
                else (chunk.slow_times[numbers[i]], None)
            )
        except JsonLineError as exc:
            chunk.failed.append(
                FailedLine(numbers[i], str(exc), text if text is not None else _replace(raws[i]))
            )
            refused.append(i)
            continue
        nanos[i] = _ns(moment.astimezone(UTC))
    if refused:
        keep = np.ones(len(records), dtype=bool)
        keep[refused] = False
        index = np.flatnonzero(keep).tolist()
        chunk.records = [records[i] for i in index]
        chunk.line_numbers = [numbers[i] for i in index]
        raws = [raws[i] for i in index]
        nanos = nanos[keep]
    chunk.raws = raws
    chunk.logged_ns = nanos.tolist()
    chunk.slow_times.clear()
    chunk.lines_read = len(chunk.records) + len(chunk.ignored_hours_ns) + len(chunk.failed)
    # The hour of a failed line: the nearest readable line before it in the batch.
    readable_numbers = np.concatenate(
        (
            np.asarray(chunk.line_numbers, dtype=np.int64),
            np.asarray(ignored_numbers, dtype=np.int64),
        )
    )
    readable_hours = np.concatenate(
        (nanos - nanos % _NS_PER_HOUR, np.asarray(chunk.ignored_hours_ns, dtype=np.int64))
    )
    if not len(readable_numbers):
        return chunk
    chunk.hour_range_ns = (int(readable_hours.min()), int(readable_hours.max()))
    order = np.argsort(readable_numbers, kind="stable")
    readable_numbers, readable_hours = readable_numbers[order], readable_hours[order]
    chunk.first_readable_hour_ns = int(readable_hours[0])
    chunk.last_readable_hour_ns = int(readable_hours[-1])
    for line in chunk.failed:
        before = int(np.searchsorted(readable_numbers, line.line_number)) - 1
        if before >= 0:
            line.hour_ns = int(readable_hours[before])
    return chunk


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
    ignored_numbers: list[int],
) -> None:
    """One line the fast path didn't take, with the per-line parsers' rules and reasons."""
    if len(data) + 1 > MAX_LINE_BYTES:
        chunk.failed.append(FailedLine(number, f"line longer than {MAX_LINE_BYTES} bytes", ""))
        return
    text = _text(data)
    if text is None:
        chunk.failed.append(FailedLine(number, "not valid UTF-8", _replace(data)))
        return
    stripped = text.lstrip()
    if not stripped:
        return  # blank lines carry nothing
    try:
        if stripped.startswith("{"):
            logged_at, record = parse_json_line(stripped)
        else:
            logged_at, maybe = parse_access_log_line(stripped, rules)
            if maybe is None:
                stamp = _ns(logged_at.astimezone(UTC))
                chunk.ignored_hours_ns.append(stamp - stamp % _NS_PER_HOUR)
                ignored_numbers.append(number)
                return
            record = maybe
    except (JsonLineError, AccessLogError) as exc:
        chunk.failed.append(FailedLine(number, str(exc), text))
        return
    # Read by a line parser: its log time is known; the record's own fields may not say it.
    chunk.records.append(record)
    chunk.line_numbers.append(number)
    chunk.slow_times[number] = logged_at
