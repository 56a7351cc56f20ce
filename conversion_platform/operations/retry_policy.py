"""When the retry sensor tries a failed destination-hour again, and when it gives up.

Default: 1 min, 5 min, 30 min, 2 h and 6 h after each failed attempt, then every 6 h
until 72 h after the first failure. Each delay is lengthened by up to `jitter_ratio`
(20 %), so hours that failed together do not all retry in the same minute. The jitter
is derived from the destination, hour and retry number rather than drawn at random: every
tick computes the same due time, and a test with a frozen clock knows it exactly.

Configurable from the environment:

| variable | default | meaning |
|---|---|---|
| `CONVERSION_PLATFORM_RETRY_DELAYS` | `1m,5m,30m,2h,6h` | wait before retry 1, 2, ... after a failed attempt |
| `CONVERSION_PLATFORM_RETRY_REPEAT_EVERY` | `6h` | wait between retries after the listed ones |
| `CONVERSION_PLATFORM_RETRY_GIVE_UP_AFTER` | `72h` | no retry starts later than this after the first failure |
| `CONVERSION_PLATFORM_RETRY_JITTER` | `0.2` | each wait is lengthened by up to this share |
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class RetryPolicyError(ValueError):
    """A retry setting that can't be read."""


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `5m`, `2h`, `3d`."""
    match = _DURATION.match(text)
    if not match:
        raise RetryPolicyError(f"not a duration: {text!r} (use e.g. 90s, 5m, 2h, 3d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """`90s`, `5m`, `2h30m`: short and exact enough for logs and the UI."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with deterministic jitter, up to a time limit."""

    delays_seconds: tuple[float, ...] = (60.0, 300.0, 1800.0, 7200.0, 21600.0)
    repeat_every_seconds: float = 21600.0
    give_up_after_seconds: float = 72 * 3600.0
    jitter_ratio: float = 0.2

    def __post_init__(self) -> None:
        if not self.delays_seconds or any(d <= 0 for d in self.delays_seconds):
            raise RetryPolicyError("retry delays must be positive and at least one")
        if self.repeat_every_seconds <= 0 or self.give_up_after_seconds <= 0:
            raise RetryPolicyError("the repeat interval and the give-up time must be positive")
        if not 0 <= self.jitter_ratio <= 1:
            raise RetryPolicyError("the jitter ratio must be between 0 and 1")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        raw_delays = os.environ.get("CONVERSION_PLATFORM_RETRY_DELAYS")
        raw_repeat = os.environ.get("CONVERSION_PLATFORM_RETRY_REPEAT_EVERY")
        raw_give_up = os.environ.get("CONVERSION_PLATFORM_RETRY_GIVE_UP_AFTER")
        raw_jitter = os.environ.get("CONVERSION_PLATFORM_RETRY_JITTER")
        default = cls()
        try:
            jitter = float(raw_jitter) if raw_jitter else default.jitter_ratio
        except ValueError:
            raise RetryPolicyError(f"not a number: {raw_jitter!r}") from None
        return cls(
            delays_seconds=tuple(parse_duration(p) for p in raw_delays.split(","))
            if raw_delays
            else default.delays_seconds,
            repeat_every_seconds=parse_duration(raw_repeat)
            if raw_repeat
            else default.repeat_every_seconds,
            give_up_after_seconds=parse_duration(raw_give_up)
            if raw_give_up
            else default.give_up_after_seconds,
            jitter_ratio=jitter,
        )

    def base_delay(self, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1-based), without jitter."""
        if retry_number < 1:
            raise ValueError("retries are numbered from 1")
        if retry_number <= len(self.delays_seconds):
            return self.delays_seconds[retry_number - 1]
        return self.repeat_every_seconds

    def jitter_fraction(self, key: str, retry_number: int) -> float:
        """A stable number in [0, 1) for this destination-hour and retry."""
        digest = hashlib.sha256(f"{key}#{retry_number}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def delay(self, retry_number: int, key: str) -> float:
        """Seconds to wait before retry `retry_number` of `key`, jitter included."""
        return self.base_delay(retry_number) * (
            1 + self.jitter_ratio * self.jitter_fraction(key, retry_number)
        )

    def describe(self) -> str:
        listed = ", ".join(format_duration(d) for d in self.delays_seconds)
        return (
            f"{listed}, then every {format_duration(self.repeat_every_seconds)} until "
            f"{format_duration(self.give_up_after_seconds)} (+ up to {self.jitter_ratio:.0%} jitter)"
        )
