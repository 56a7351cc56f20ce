"""The committed seed files (`seeds/`), copied into a test home with their hours moved.

The seeds describe hour 2026-03-02 10:00 UTC (and a little of 11:00). Delivery refuses
events older than a platform's limit, so tests that deliver move every timestamp by a
whole number of hours to a recent hour; minutes, seconds and hour boundaries are kept.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from conversion_platform.ingest.landing_writer import land_events
from conversion_platform.settings import SEEDS_DIR

SEED_HOUR = datetime(2026, 3, 2, 10, tzinfo=UTC)
_ACCESS_STAMP = re.compile(r"\[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\]")
_ACCESS_FORMAT = "%d/%b/%Y:%H:%M:%S %z"
_TIME_FIELDS = ("event_time", "logged_at", "received_at")


def _shift_iso(value: str, delta: timedelta) -> str:
    return (datetime.fromisoformat(value) + delta).isoformat(timespec="milliseconds")


def _shift_record(record: dict[str, Any], delta: timedelta) -> dict[str, Any]:
    return {
        k: _shift_iso(v, delta) if k in _TIME_FIELDS and isinstance(v, str) else v
        for k, v in record.items()
    }


def copy_seed_logs(logs_dir: Path, delta: timedelta = timedelta(0)) -> list[Path]:
    """The seed server logs, each timestamp moved by `delta`; broken lines are kept as they are."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted((SEEDS_DIR / "server_logs").iterdir()):
        out: list[bytes] = []
        for raw in source.read_bytes().splitlines():
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                out.append(raw)
                continue
            if text.lstrip().startswith("{"):
                try:
                    out.append(json.dumps(_shift_record(json.loads(text), delta)).encode())
                except json.JSONDecodeError:
                    out.append(raw)
                continue
            out.append(
                _ACCESS_STAMP.sub(
                    lambda m: (
                        "["
                        + (datetime.strptime(m.group(1), _ACCESS_FORMAT) + delta).strftime(
                            _ACCESS_FORMAT
                        )
                        + "]"
                    ),
                    text,
                ).encode()
            )
        target = logs_dir / source.name
        target.write_bytes(b"\n".join(out) + b"\n")
        written.append(target)
    return written


def land_seed_payloads(engine: Engine, delta: timedelta = timedelta(0)) -> dict[str, int]:
    """Commit the seed collector payloads to the landing table, moved by `delta`."""
    payloads = json.loads((SEEDS_DIR / "collector_payloads.json").read_text())
    counts = {}
    for source, entries in payloads.items():
        records = [_shift_record(e["event"], delta) for e in entries]
        received = [datetime.fromisoformat(_shift_iso(e["received_at"], delta)) for e in entries]
        result = land_events(engine, records, source, received, origin=f"seed-{source}")
        counts[source] = result.accepted
        counts[f"{source}_rejected"] = len(result.rejected)
    return counts


def recent_hour_delta(hours_ago: int = 2) -> timedelta:
    """The shift that moves the seed hour to `hours_ago` complete hours before now."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return (now - timedelta(hours=hours_ago)) - SEED_HOUR
