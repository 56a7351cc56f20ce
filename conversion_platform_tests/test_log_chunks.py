"""Server-log files read a chunk of lines at a time (`ingest.log_chunks`): chunk and block
boundaries change nothing (records, line numbers, failed lines and the hour each belongs
to), and one pass over a file both indexes it and reads the window."""

from __future__ import annotations

import gzip
import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from conversion_platform.ingest import log_chunks, log_conversions
from conversion_platform.ingest.log_conversions import ingest_server_logs
from conversion_platform.ingest.record_columns import concat_coerced
from conversion_platform.store.tables import log_file_index
from conversion_platform.transform import second_core

H10 = datetime(2026, 3, 2, 10, tzinfo=UTC)


def _lines() -> list[bytes]:
    lines = [b"garbage before anything readable"]
    for i in range(60):
        moment = H10 + timedelta(minutes=2 * i)  # hours 10 and 11
        lines.append(
            orjson.dumps(
                {"event_id": f"e{i}", "event_name": "lead", "event_time": moment.isoformat()}
            )
        )
        if i % 7 == 3:
            lines.append(b'{"event_id": "cut", "event_name": "lead", "ev')
        if i % 11 == 5:
            lines.append(b'{"event_id": "x", "event_name": "lead"}')  # no time at all
    return lines


def _chunks(path: Path) -> list[log_chunks.LogChunk]:
    return list(log_chunks.read_log_chunks(path, []))


def _summary(chunks: list[log_chunks.LogChunk]) -> tuple[list, list]:
    records = [
        (n, r["event_id"], t)
        for c in chunks
        for n, r, t in zip(c.line_numbers, c.records, c.logged_ns, strict=True)
    ]
    failed = sorted((f.line_number, f.reason, f.hour_ns) for c in chunks for f in c.failed)
    return records, failed


@pytest.mark.parametrize("compress", [False, True])
def test_chunk_and_block_sizes_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    path = tmp_path / "app.log"
    data = b"\n".join(_lines()) + b"\n"
    path.write_bytes(gzip.compress(data) if compress else data)
    whole = _summary(_chunks(path))
    monkeypatch.setattr(log_chunks, "CHUNK_LINES", 3)
    monkeypatch.setattr(log_chunks, "_BLOCK_BYTES", 97)
    assert _summary(_chunks(path)) == whole
    records, failed = whole
    assert len(records) == 60
    first_hour = int(H10.timestamp()) * 1_000_000_000
    # The leading garbage takes the hour of the file's first readable line.
    assert failed[0][:2] == (1, "not a combined access-log line")
    assert failed[0][2] == first_hour
    # A failed line takes the hour of the readable line before it.
    by_number = {n: t - t % 3_600_000_000_000 for n, _, t in records}
    for number, _reason, hour in failed[1:]:
        before = max(n for n in by_number if n < number)
        assert hour == by_number[before]


def test_one_pass_indexes_the_file_and_reads_the_window(engine, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_bytes(b"\n".join(_lines()) + b"\n")
    result = ingest_server_logs(engine, logs, [], [H10])
    assert sorted(result.frame["event_id"]) == sorted(f"e{i}" for i in range(30))
    with engine.connect() as conn:
        row = conn.execute(sa.select(log_file_index)).one()
    assert row.first_time_us == int(H10.timestamp()) * 1_000_000
    assert row.last_time_us == int((H10 + timedelta(hours=1)).timestamp()) * 1_000_000
    assert row.lines == len(_lines())
    # Every broken line of hour 10 is quarantined once, with its line number.
    reasons = sorted(q.reason for q in result.quarantined)
    assert reasons.count("event_time is missing") == 3
    assert "not a combined access-log line" in reasons


def test_an_hour_read_in_many_chunks_is_the_hour_read_in_one(
    engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk's text becomes Arrow as it is coerced, and the chunks are chained: the
    hour is the same as when it is one chunk, with plaintext hashed and gaps kept."""
    lines = []
    for i in range(40):
        record = {
            "event_id": f"c{i}",
            "event_name": "purchase" if i % 2 else "lead",
            "event_time": (H10 + timedelta(minutes=i)).isoformat(),
            "email": f"Buyer{i % 5}@Example.com" if i % 3 else None,
            "phone": "+1 415 555 0100" if i % 4 == 0 else None,
            "order_id": i * 1000 if i % 5 == 0 else None,  # a number where text is expected
            "value": 10.5 * i,
            "currency": "USD",
            "city": "San Francisco" if i % 2 else None,
        }
        lines.append(orjson.dumps({k: v for k, v in record.items() if v is not None}))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    one = ingest_server_logs(engine, logs, [], [H10]).frame
    monkeypatch.setattr(log_chunks, "CHUNK_LINES", 3)
    many = ingest_server_logs(engine, logs, [], [H10]).frame
    pd.testing.assert_frame_equal(many, one)
    assert len(many) == 40
    assert str(many["email_sha256"].dtype) == str(many["event_id"].dtype) == "string"
    assert many["email_sha256"].isna().sum() == 14  # i % 3 == 0 for 14 of 40
    assert "email" not in many.columns
    assert list(many["order_id"].dropna()) == [str(i * 1000) for i in range(0, 40, 5)]


def test_coerced_chunks_of_arrow_text_are_chained_and_mixed_ones_become_objects() -> None:
    arrow = pd.DataFrame({"t": pd.array(["a", None], dtype="string")})
    more = pd.DataFrame({"t": pd.array(["b"], dtype="string")})
    objects = pd.DataFrame({"t": np.array(["c", None], dtype=object)})
    chained = concat_coerced([arrow, more])
    assert str(chained["t"].dtype) == "string"
    assert chained["t"].tolist() == ["a", pd.NA, "b"]
    mixed = concat_coerced([arrow, objects])
    assert mixed["t"].dtype == object
    assert mixed["t"].tolist() == ["a", None, "c", None]


def record_summary(chunk: log_chunks.LogChunk) -> list[tuple[int, str, int]]:
    """What a worker returns for a chunk (module level, so it can import it); slow enough
    that the caller and the worker both take chunks."""
    time.sleep(0.01)
    return [
        (n, r["event_id"], t)
        for n, r, t in zip(chunk.line_numbers, chunk.records, chunk.logged_ns, strict=True)
    ]


@pytest.mark.parametrize("compress", [False, True])
def test_chunks_read_on_two_cores_are_the_chunks_read_on_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    """With `then`, chunks are parsed by the worker too: the records kept for the hours
    asked for, the failed lines and their hours (settled across chunks, whoever parsed
    them), the line counts and the index's hour range are the same; a truncated gzip
    still ends with its error."""
    lines = [b"garbage", b"more garbage", *_lines()]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "app.log"
    path.write_bytes(gzip.compress(data)[:-40] if compress else data)
    monkeypatch.setattr(log_chunks, "CHUNK_LINES", 4)
    one = _chunks(path)
    hour_10 = np.array([int(H10.timestamp()) * 1_000_000_000], dtype=np.int64)
    # Warm the worker up with the test module, then read on two cores.
    list(log_chunks.read_log_chunks(path, [], then=record_summary))
    shared: list[str] = []
    real_map_chunk = second_core._Worker.map_chunk

    def map_chunk(self: second_core._Worker, fn: Callable[..., Any], items: Any) -> list[Any]:
        shared.append(fn.__name__)
        return real_map_chunk(self, fn, items)

    monkeypatch.setattr(second_core._Worker, "map_chunk", map_chunk)
    two = list(log_chunks.read_log_chunks(path, [], hours_ns=hour_10, then=record_summary))
    if second_core._usable_cores() > 1:
        assert shared.count("parse_piece") >= 2
    records, failed = _summary(one)
    assert [r for c in two for r in (c.outcome or [])] == [
        r for r in records if r[2] - r[2] % 3_600_000_000_000 == hour_10[0]
    ]
    assert all(c.records == [] for c in two)
    assert _summary(two)[1] == failed
    assert [c.lines_read for c in two] == [c.lines_read for c in one]
    assert [c.hour_range_ns for c in two] == [c.hour_range_ns for c in one]
    if not compress:
        assert sum(c.lines_read for c in one) == len(lines)
    else:
        assert failed[-1][1].startswith("unreadable compressed data after line")
    assert failed[0][:2] == (1, "not a combined access-log line")
    assert failed[0][2] == hour_10[0]  # from a later chunk: the file's first readable line


def test_a_chunk_from_the_worker_has_its_text_in_arrow_memory() -> None:
    """Unpickled Arrow text lives in Python bytes, outside Arrow's pool (freed, it was
    heap Arrow could not reuse); a checked chunk arriving from the worker moves it in,
    values and dtypes kept."""
    values = [f"value {i:06d}" if i % 7 else None for i in range(20_000)]
    frame = pd.DataFrame(
        {"text": pd.array(values, dtype="string"), "number": np.arange(20_000, dtype=np.int64)}
    )
    chunk = log_conversions.CoercedLogChunk(frame, np.zeros(20_000, dtype=np.int64), [])
    data = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
    before = pa.total_allocated_bytes()
    arrived = pickle.loads(data)
    assert pa.total_allocated_bytes() - before >= 12 * 17_142  # the text's bytes, at least
    pd.testing.assert_frame_equal(arrived.frame, frame)
    assert (arrived.hours_ns == chunk.hours_ns).all() and arrived.refused == []
