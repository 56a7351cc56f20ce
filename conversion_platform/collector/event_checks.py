"""What the collector refuses before an event is coerced, with every reason at once.

Coercion (`ingest.records.coerce_record`) stops at the first problem; these checks name
all of an event's problems with its name and field types in one answer, so a sender can
fix a payload in one round. Checks of the content (value, currency, times) stay with the
validation stage, which quarantines per hour with the same reasons for every source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from conversion_platform import events

_CUSTOM_NAME = re.compile(events.CUSTOM_EVENT_NAME_PATTERN)
#: Fields holding text (numbers are accepted and read as their text).
_TEXT_FIELDS = tuple(
    f
    for f in events.INCOMING_FIELDS
    if f not in ("event_time", "received_at", "value", "items", "event_name")
    and not f.startswith("consent_")
)
_NUMBER_OR_TEXT = (str, int, float)
_TEXT_FIELD_POSITION = {field: position for position, field in enumerate(_TEXT_FIELDS)}


def event_name_error(name: Any) -> str | None:
    if name is None or name == "":
        return "event_name is missing"
    if not isinstance(name, str):
        return "event_name must be a string"
    normalised = name.strip().lower()
    if normalised in events.STANDARD_EVENT_NAMES or _CUSTOM_NAME.match(normalised):
        return None
    return (
        f"event_name {name[:64]!r} is unknown: use a standard name (purchase, lead, sign_up, "
        "...) or a custom snake_case name of at most 64 characters"
    )


def event_errors(record: Mapping[str, Any]) -> list[str]:
    """Every reason the collector refuses `record` before coercion (empty: go on)."""
    errors: list[str] = []
    name_error = event_name_error(record.get("event_name"))
    if name_error:
        errors.append(name_error)
    # The fields the record has (fewer than the model's), reported in the model's order.
    field_errors: list[tuple[int, str]] = []
    for field, value in record.items():
        position = _TEXT_FIELD_POSITION.get(field)
        if position is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, _NUMBER_OR_TEXT):
            field_errors.append((position, f"{field} must be a string"))
        elif isinstance(value, str) and "\x00" in value:
            field_errors.append((position, f"{field} contains a NUL character"))
    if field_errors:
        errors.extend(error for _, error in sorted(field_errors))
    value = record.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER_OR_TEXT)):
        errors.append("value must be a number")
    items = record.get("items")
    if items is not None and not isinstance(items, list | str):
        errors.append("items must be an array of objects")
    return errors
