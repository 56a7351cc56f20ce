"""Field checks the emulated platforms share, written from the platforms' published rules.

Nothing here is imported from the destinations or the normalisation code (see DESIGN.md):
a check that reused our own hashing or formatting would only test it against itself.

Every check returns a short reason (or None when the value passes) instead of raising:
the emulator runs them for every event of 1,000-2,000-event batches, and exceptions in
that loop would cost more than the checks themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

# A SHA-256 digest as the platforms want it: 64 lowercase hex characters.
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
# The same 32 bytes in standard base64 (Google's Data Manager API accepts `encoding: BASE64`).
_SHA256_BASE64: Final = re.compile(r"[A-Za-z0-9+/]{43}=")
# RFC 3339 date-time, as protobuf's JSON mapping of google.protobuf.Timestamp accepts it.
_RFC3339: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
# Google Ads API `conversion_date_time`: "yyyy-mm-dd hh:mm:ss+|-hh:mm".
_ADS_DATETIME: Final = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}")
_DECIMAL: Final = re.compile(r"-?\d+(?:\.\d+)?")

#: An event time at or above this many "seconds" is really milliseconds: every Unix time in
#: milliseconds since 1973 is above it, and no time in seconds reaches it before year 5138.
MILLISECONDS_THRESHOLD: Final = 100_000_000_000

DAY: Final = 86_400


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a request (or one event of it) is refused.

    `kind` is a platform-neutral key (`"required"`, `"not_hashed"`, `"too_old"`, ...) that
    each platform module turns into its own error code; `index` is the event's position in
    the batch, or None for a request-level problem.
    """

    kind: str
    field: str
    message: str
    index: int | None = None


def is_sha256_hex(value: object) -> bool:
    """True for a 64-character lowercase hex string."""
    return type(value) is str and len(value) == 64 and _SHA256_HEX.fullmatch(value) is not None


def is_sha256_base64(value: object) -> bool:
    """True for the standard-base64 encoding of 32 bytes."""
    return type(value) is str and len(value) == 44 and _SHA256_BASE64.fullmatch(value) is not None


def hashed_error(value: object, *, allow_list: bool = False) -> str | None:
    """Reason why `value` is not a SHA-256 hex digest (or, if allowed, a list of them)."""
    if type(value) is str:
        if is_sha256_hex(value):
            return None
        return "must be a SHA-256 hash: 64 lowercase hex characters"
    if allow_list and type(value) is list:
        if not value:
            return "must not be an empty list"
        for item in value:
            if not is_sha256_hex(item):
                return "must hold SHA-256 hashes: 64 lowercase hex characters each"
        return None
    if allow_list:
        return "must be a SHA-256 hex string or a list of them"
    return "must be a SHA-256 hex string"


def plaintext_error(value: object, *, allow_list: bool = False) -> str | None:
    """Reason why `value` is not a non-empty plaintext string (a hash is refused)."""
    if allow_list and type(value) is list:
        if not value:
            return "must not be an empty list"
        for item in value:
            reason = plaintext_error(item)
            if reason is not None:
                return reason
        return None
    if type(value) is not str or not value:
        return "must be a non-empty string"
    if is_sha256_hex(value):
        return "must be sent in plaintext, not hashed"
    return None


def unix_seconds_problem(
    value: object, now: float, *, max_age: float | None, max_future: float | None
) -> tuple[str, str] | None:
    """(kind, message) when `value` is not an acceptable Unix time in whole seconds.

    kinds: `"type"` (not an integer), `"milliseconds"` (an integer of millisecond size),
    `"too_old"`, `"in_future"`.
    """
    if type(value) is not int:
        return "type", "must be a Unix timestamp in seconds (an integer)"
    if value >= MILLISECONDS_THRESHOLD:
        return "milliseconds", "looks like milliseconds; send Unix seconds"
    if max_age is not None and value < now - max_age:
        return "too_old", f"is more than {max_age / DAY:g} days in the past"
    if max_future is not None and value > now + max_future:
        return "in_future", f"is more than {max_future:g} seconds in the future"
    return None


def parse_rfc3339(value: object) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp string, or None if it is not one."""
    if type(value) is not str:
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    date, clock, fraction, offset = match.groups()
    text = f"{date}T{clock}"
    if fraction:
        text += "." + fraction[:6].ljust(6, "0")
    text += "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:  # a well-formed but impossible date such as 2026-02-30
        return None


def parse_ads_datetime(value: object) -> float | None:
    """Epoch seconds of a Google Ads `yyyy-mm-dd hh:mm:ss+hh:mm` string, or None."""
    if type(value) is not str or _ADS_DATETIME.fullmatch(value) is None:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def non_empty_string(value: object) -> bool:
    """True for a string with at least one non-space character."""
    return type(value) is str and value.strip() != ""


def is_number(value: object) -> bool:
    """True for an int or float (bool excluded), or a string holding a decimal number."""
    if type(value) in (int, float):
        return True
    return type(value) is str and _DECIMAL.fullmatch(value) is not None
