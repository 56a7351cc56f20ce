"""JSON-lines server logs: one conversion per line in the model's field names."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from conversion_platform.ingest.records import RecordError, parse_timestamp


class JsonLineError(ValueError):
    """A line that isn't a JSON object with a usable time."""


def parse_json_line(line: str | bytes) -> tuple[datetime, dict[str, Any]]:
    """(log time, record) for one line: `logged_at` when present, else `event_time`."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise JsonLineError(f"invalid JSON: {str(exc).split(':')[0]}") from exc
    if not isinstance(record, dict):
        raise JsonLineError("a JSON line must hold an object")
    stamp_field = "logged_at" if record.get("logged_at") is not None else "event_time"
    try:
        logged_at = parse_timestamp(record.get(stamp_field), stamp_field)
    except RecordError as exc:
        raise JsonLineError(str(exc)) from exc
    return logged_at, record
