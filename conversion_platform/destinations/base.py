"""The interface every ad-platform destination implements.

A destination encodes an hour of canonical rows as the platform's events (one JSON object
per event, built a column at a time, with the reason an event can't be sent), builds the
exact HTTP request for a batch of them, and classifies the platform's answer for the batch
and, where the platform says so, for each of its events. Everything else (filtering,
consent, expiry, batching, sending, retries, splitting, the delivery log) is shared in
`delivery.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from conversion_platform import events
from conversion_platform.destinations import json_columns as jc
from conversion_platform.destinations.config import DestinationConfig

STATUS_DELIVERED = "delivered"
STATUS_PARTIAL = "partial"
STATUS_RETRYABLE = "retryable"
STATUS_PERMANENT = "permanent"
STATUS_AUTH = "auth"
STATUS_DRY_RUN = "dry_run"
STATUS_VALIDATED = "validated"
STATUS_PENDING_STATUS = "pending_status"  # accepted; the platform reports per event later

#: Columns every platform's event carries (a destination's `columns_read` adds its own).
EVENT_COLUMNS = frozenset({"event_id", "event_name", "event_time", "value", "currency", "order_id"})

#: The general rule forwarders use: these HTTP statuses are worth retrying.
RETRYABLE_HTTP_STATUSES = frozenset({408, 423, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpRequest:
    """One request exactly as it will be sent; `body` is the outbox line in dry-run mode.

    Secrets live only in `secret_params` / `secret_headers`, never in `body`, `url`,
    `params` or `headers`, so the outbox and the delivery log never hold them.
    """

    method: str
    url: str
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    secret_params: dict[str, str] = field(default_factory=dict)
    secret_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    """What the platform said about one request, per event where it says so."""

    status: str
    http_status: int | None = None
    response_text: str | None = None
    retry_after_seconds: float | None = None
    #: position in the batch -> the platform's reason, for events it rejected for good
    rejected: dict[int, str] = field(default_factory=dict)
    #: position in the batch -> reason, for events the platform asks to send again later
    retry: dict[int, str] = field(default_factory=dict)
    #: a platform id for the request (Google: the request id to poll for per-event status)
    platform_request_id: str | None = None
    reason: str | None = None
    #: the error is about the request itself (pixel, account, payload shape), not about any
    #: one event: splitting the batch would only repeat it
    whole_request: bool = False


@dataclass(frozen=True)
class RequestStatus:
    """A platform's asynchronous verdict on an accepted request (Google Data Manager)."""

    #: `processing` (ask again later), `delivered`, `permanent` or `unconfirmed`
    #: (partly failed, and the platform does not say which events)
    outcome: str
    reason: str | None = None
    response_text: str | None = None


@dataclass(frozen=True)
class EncodedEvents:
    """An hour's events in the platform's JSON, checked one by one before batching.

    `json[i]` is event i's JSON object, or null when `problems[i]` says why the event can't
    be sent; with `comma_after`, each object is followed by a comma (`build(after=",")`),
    so delivery cuts a batch of neighbouring events from the buffer as it is. `groups[i]`,
    when given, is a key that limits which events share a request (Google: the
    conversion action, at most `max_groups_per_request` a request).
    """

    json: pa.Array
    problems: list[str | None]
    groups: list[str] | None = None
    comma_after: bool = False


@dataclass(frozen=True)
class EventBatch:
    """The events of one request: their ids and their JSON objects joined by commas."""

    number: int
    event_ids: list[str]
    events_json: bytes
    #: the distinct group keys of the batch, in first-seen order
    groups: tuple[str, ...] = ()

    def json_array(self) -> bytes:
        return b"[" + self.events_json + b"]"

    def __len__(self) -> int:
        return len(self.event_ids)


class Destination(ABC):
    """An ad platform's conversion API."""

    #: registry name (`meta_capi`, ...)
    platform: str
    #: most events one request may carry
    max_batch_size: int
    #: oldest event the platform accepts
    max_event_age: timedelta
    #: events further ahead than this of the platform's clock are refused
    max_future_skew: timedelta = timedelta(minutes=1)
    #: one bad event can fail the whole request, so a rejected batch is split to find it
    all_or_nothing: bool = True
    #: most distinct `EncodedEvents.groups` one request may carry (None: no limit)
    max_groups_per_request: int | None = None
    #: standard event names -> the platform's standard events
    standard_event_names: ClassVar[dict[str, str]] = {}
    #: the platform takes events without ad_user_data consent (without identifiers)
    accepts_consent_denied_events: bool = True
    #: the platform answers a status per request later (`request_status` is implemented)
    reports_status_later: bool = False
    #: the hour's columns `encode_events` reads (None: every column). Delivery hands the
    #: encoder only these, plus the ones it reads itself, so each chunk of events is taken
    #: without the rest; reading a column left out is an error (`json_columns.has_column`),
    #: never a column of nulls.
    columns_read: ClassVar[frozenset[str] | None] = None

    # -- event names ------------------------------------------------------------------------

    def platform_event_name(self, event_name: str, config: DestinationConfig) -> str | None:
        """The platform's name for one of ours: configured, standard, or as a custom event."""
        if event_name in config.event_names:
            return config.event_names[event_name]
        if event_name in self.standard_event_names:
            return self.standard_event_names[event_name]
        return self.custom_event_name(event_name, config)

    def custom_event_name(self, event_name: str, config: DestinationConfig) -> str | None:
        """How a non-standard event name is sent (platforms differ in casing rules)."""
        return event_name

    def platform_event_names(self, frame: pd.DataFrame, config: DestinationConfig) -> pa.Array:
        """`platform_event_name` of every row, computed once per distinct name."""
        return jc.apply_text(
            jc.text_column(frame, "event_name"), lambda n: self.platform_event_name(n, config)
        )

    # -- limits -----------------------------------------------------------------------------

    def batch_size(self, config: DestinationConfig) -> int:
        return max(1, min(config.batch_size or self.max_batch_size, self.max_batch_size))

    # -- building and reading requests --------------------------------------------------------

    @abstractmethod
    def encode_events(
        self, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        """Each row in the platform's event shape, checked per event before batching."""

    @abstractmethod
    def build_request(
        self,
        batch: EventBatch,
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        """The request for one batch (credentials None in dry-run mode)."""

    @abstractmethod
    def classify_response(
        self, status_code: int, body: bytes, headers: dict[str, str], batch: EventBatch
    ) -> BatchOutcome:
        """What the platform's answer means for the batch and each of its events."""

    def request_status(
        self, request_id: str, config: DestinationConfig, credentials: dict[str, str]
    ) -> HttpRequest:
        """The request asking for an accepted request's per-event outcome."""
        raise NotImplementedError(f"{self.platform} reports outcomes synchronously")

    def classify_status(self, status_code: int, body: bytes) -> RequestStatus:
        """What the platform's status answer says."""
        raise NotImplementedError(f"{self.platform} reports outcomes synchronously")


def first_problem(n: int, checks: list[tuple[np.ndarray, str]]) -> list[str | None]:
    """Per event, the reason of the first check that flags it (None when none does)."""
    reasons = np.full(n, None, dtype=object)
    for flagged, reason in reversed(checks):
        reasons[np.asarray(flagged, dtype=bool)] = reason
    return reasons.tolist()


def is_null(values: pa.Array) -> np.ndarray:
    """A numpy bool mask of the nulls of an Arrow array."""
    return values.is_null().to_numpy(zero_copy_only=False)


def identifiers_allowed(frame: pd.DataFrame, consent_required: bool = False) -> pd.Series:
    """True where the event may carry personal identifiers (ad_user_data not denied)."""
    consent = frame["consent_ad_user_data"].astype("string").fillna(events.CONSENT_UNKNOWN)
    if consent_required:
        return consent == events.CONSENT_GRANTED
    return consent != events.CONSENT_DENIED


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """`Retry-After` in seconds (delta form; an HTTP date is read as 60 s)."""
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 60.0


def response_text(body: bytes, limit: int = 4_000) -> str:
    """The platform's answer as text for the delivery log (truncated)."""
    return body[:limit].decode("utf-8", errors="replace")
