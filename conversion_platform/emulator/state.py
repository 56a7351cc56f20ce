"""What one emulator instance remembers: counts, recent requests, failure scripts.

State lives in an `EmulatorState` object owned by one app (never module globals), so a
test can run several emulators at once. A single lock guards it: handlers run on the
server's event loop while tests and the demo may read or script it from other threads
through the control API.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

PLATFORMS: Final = ("meta", "google", "tiktok", "snapchat")

#: Request bodies kept per platform by default. Bodies are kept as the raw bytes received
#: (a 2,000-event batch is about 1 MB), so this bounds memory under a benchmark.
DEFAULT_RECENT_LIMIT: Final = 20


class ScriptError(ValueError):
    """A failure script that the control API refuses."""


@dataclass(frozen=True, slots=True)
class ScriptedResponse:
    """One entry of a failure script, consumed by one request.

    `status` None or 2xx means "handle the request normally" (after `delay_seconds`).
    Any other status is answered in the platform's own error format, with `error_code`,
    `error_subcode` and `message` overriding the platform's default for that status, and a
    `Retry-After` header when `retry_after` is set. `literal` keeps the HTTP status exactly
    as scripted where the platform would otherwise translate it (TikTok answers most errors
    with HTTP 200 and a code in the body).
    """

    status: int | None = None
    delay_seconds: float = 0.0
    retry_after: int | None = None
    error_code: int | str | None = None
    error_subcode: int | None = None
    message: str | None = None
    literal: bool = False

    @property
    def is_failure(self) -> bool:
        return self.status is not None and not 200 <= self.status < 300

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if value not in (None, 0.0, False):
                out[name] = value
        return out

    @classmethod
    def parse(cls, raw: object) -> ScriptedResponse:
        if not isinstance(raw, dict):
            raise ScriptError("each scripted response must be an object")
        unknown = set(raw) - set(cls.__slots__)
        if unknown:
            raise ScriptError(f"unknown keys in scripted response: {sorted(unknown)}")
        status = raw.get("status")
        if status is not None and (type(status) is not int or not 100 <= status <= 599):
            raise ScriptError("status must be an HTTP status code")
        delay = raw.get("delay_seconds", 0.0)
        if type(delay) not in (int, float) or delay < 0:
            raise ScriptError("delay_seconds must be a non-negative number")
        retry_after = raw.get("retry_after")
        if retry_after is not None and (type(retry_after) is not int or retry_after < 0):
            raise ScriptError("retry_after must be a non-negative integer of seconds")
        error_code = raw.get("error_code")
        if error_code is not None and type(error_code) not in (int, str):
            raise ScriptError("error_code must be an integer or a string")
        subcode = raw.get("error_subcode")
        if subcode is not None and type(subcode) is not int:
            raise ScriptError("error_subcode must be an integer")
        message = raw.get("message")
        if message is not None and type(message) is not str:
            raise ScriptError("message must be a string")
        literal = raw.get("literal", False)
        if type(literal) is not bool:
            raise ScriptError("literal must be a boolean")
        return cls(
            status=status,
            delay_seconds=float(delay),
            retry_after=retry_after,
            error_code=error_code,
            error_subcode=subcode,
            message=message,
            literal=literal,
        )


@dataclass(slots=True)
class GoogleRequestStatus:
    """What Data Manager's `requestStatus:retrieve` reports for one ingest request."""

    destinations: list[Any]
    record_count: int
    #: transactionId (or `#<index>` for an event without one) -> processing error reason
    failed: dict[str, str]
    processing_polls_left: int = 0


@dataclass(slots=True)
class PlatformState:
    """Counters, recent requests and the failure script of one emulated platform."""

    recent_limit: int
    requests: int = 0
    rejected_requests: int = 0
    validate_requests: int = 0
    events_accepted: int = 0
    accepted_by_event_id: dict[str, int] = field(default_factory=dict)
    recent: deque[dict[str, Any]] = field(init=False)
    script: deque[ScriptedResponse] = field(default_factory=deque)
    fail_event_ids: frozenset[str] = frozenset()
    fail_reason: str | None = None

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.recent_limit)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rejected_requests": self.rejected_requests,
            "validate_requests": self.validate_requests,
            "events_accepted": self.events_accepted,
            "accepted_by_event_id": dict(self.accepted_by_event_id),
        }

    def script_view(self) -> dict[str, Any]:
        return {
            "responses": [entry.as_dict() for entry in self.script],
            "fail_event_ids": sorted(self.fail_event_ids),
            "fail_reason": self.fail_reason,
        }


class EmulatorState:
    """All the state of one emulator app, behind one lock."""

    def __init__(self, recent_limit: int = DEFAULT_RECENT_LIMIT) -> None:
        self._lock = threading.Lock()
        self._recent_limit = recent_limit
        self._platforms = {name: PlatformState(recent_limit) for name in PLATFORMS}
        self._google_statuses: dict[str, GoogleRequestStatus] = {}
        self._google_processing_polls = 0

    # --- request handling ----------------------------------------------------------------

    def next_scripted(self, platform: str) -> ScriptedResponse | None:
        """Pop the next scripted response of `platform`, if any."""
        with self._lock:
            script = self._platforms[platform].script
            return script.popleft() if script else None

    def failing_ids(self, platform: str) -> tuple[frozenset[str], str | None]:
        """The event ids `platform` is scripted to reject, and the reason to give."""
        with self._lock:
            state = self._platforms[platform]
            return state.fail_event_ids, state.fail_reason

    def record(
        self,
        platform: str,
        *,
        path: str,
        status: int,
        body: bytes,
        accepted: bool,
        accepted_ids: list[str | None] | None = None,
        validate_only: bool = False,
    ) -> None:
        """Count one request and keep its body among the recent ones.

        `accepted_ids` lists the id of every event the platform took (None for an event
        without an id, which still counts in `events_accepted`). A validate-only request is
        counted apart and neither kept nor credited with events.
        """
        with self._lock:
            state = self._platforms[platform]
            if validate_only:
                state.validate_requests += 1
                return
            state.requests += 1
            if not accepted:
                state.rejected_requests += 1
            if accepted_ids:
                state.events_accepted += len(accepted_ids)
                counts = state.accepted_by_event_id
                for event_id in accepted_ids:
                    if event_id is not None:
                        counts[event_id] = counts.get(event_id, 0) + 1
            state.recent.append(
                {
                    "received_at": time.time(),
                    "path": path,
                    "status": status,
                    "accepted": accepted,
                    "body": body,
                }
            )

    # --- Google Data Manager request statuses -------------------------------------------

    def add_google_status(self, request_id: str, status: GoogleRequestStatus) -> None:
        with self._lock:
            status.processing_polls_left = self._google_processing_polls
            self._google_statuses[request_id] = status

    def poll_google_status(self, request_id: str) -> tuple[GoogleRequestStatus, bool] | None:
        """The status of `request_id` and whether it is still PROCESSING (one poll used)."""
        with self._lock:
            status = self._google_statuses.get(request_id)
            if status is None:
                return None
            if status.processing_polls_left > 0:
                status.processing_polls_left -= 1
                return status, True
            return status, False

    def peek_google_status(self, request_id: str) -> GoogleRequestStatus | None:
        with self._lock:
            return self._google_statuses.get(request_id)

    # --- control API ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {name: state.stats() for name, state in self._platforms.items()}

    def recent(self, platform: str, limit: int) -> list[dict[str, Any]]:
        """The last `limit` requests of `platform`, oldest first, bodies as raw bytes."""
        with self._lock:
            items = list(self._platforms[platform].recent)
        return items[-limit:] if limit > 0 else []

    def set_script(
        self,
        platform: str,
        *,
        responses: list[ScriptedResponse] | None,
        fail_event_ids: list[str] | None,
        fail_reason: str | None,
        google_processing_polls: int | None,
    ) -> dict[str, Any]:
        """Replace the parts of `platform`'s script that are given; return the script."""
        with self._lock:
            state = self._platforms[platform]
            if responses is not None:
                state.script = deque(responses)
            if fail_event_ids is not None:
                state.fail_event_ids = frozenset(fail_event_ids)
                state.fail_reason = fail_reason
            if google_processing_polls is not None:
                self._google_processing_polls = google_processing_polls
            view = state.script_view()
            if platform == "google":
                view["status_processing_polls"] = self._google_processing_polls
            return view

    def script_view(self, platform: str) -> dict[str, Any]:
        with self._lock:
            view = self._platforms[platform].script_view()
            if platform == "google":
                view["status_processing_polls"] = self._google_processing_polls
            return view

    def reset(self, platform: str | None = None) -> None:
        """Forget counts, recent requests and scripts (of one platform, or of all)."""
        with self._lock:
            names = PLATFORMS if platform is None else (platform,)
            for name in names:
                self._platforms[name] = PlatformState(self._recent_limit)
            if platform in (None, "google"):
                self._google_statuses.clear()
                self._google_processing_polls = 0
