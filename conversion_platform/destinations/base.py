"""The interface every ad-platform destination implements.

A destination maps canonical rows to the platform's events, says how many fit a
request, builds the exact HTTP request, and classifies the platform's answer per event
as delivered, retryable or permanent with the platform's reason. Everything else
(filtering, consent, expiry, batching, sending, retries, the delivery log) is shared in
`delivery.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import pandas as pd

from conversion_platform import events
from conversion_platform.destinations.config import DestinationConfig

STATUS_DELIVERED = "delivered"
STATUS_PARTIAL = "partial"
STATUS_RETRYABLE = "retryable"
STATUS_PERMANENT = "permanent"
STATUS_AUTH = "auth"
STATUS_DRY_RUN = "dry_run"
STATUS_VALIDATED = "validated"
STATUS_PENDING_STATUS = "pending_status"  # accepted; the platform reports per event later

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
    #: event id -> the platform's reason, for events rejected permanently on their own
    rejected_events: dict[str, str] = field(default_factory=dict)
    #: a platform id for the request (Google: the request id to poll for per-event status)
    platform_request_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class PreparedEvent:
    """One event in the platform's shape, or the reason it can't be sent."""

    event_id: str
    payload: dict[str, Any] | None
    problem: str | None = None


class Destination(ABC):
    """An ad platform's conversion API."""

    #: registry name (`meta_capi`, ...)
    platform: str
    #: most events one request may carry
    max_batch_size: int
    #: oldest event the platform accepts
    max_event_age: timedelta
    #: one bad event rejects the whole request (Meta, Google Data Manager)
    all_or_nothing: bool = False
    #: standard event names -> the platform's standard events
    standard_event_names: ClassVar[dict[str, str]] = {}
    #: the platform accepts events without ad_user_data consent (with its flags set)
    accepts_consent_denied_events: bool = True

    def platform_event_name(self, event_name: str, config: DestinationConfig) -> str:
        """The platform's name for one of ours: configured, standard, or as a custom event."""
        if event_name in config.event_names:
            return config.event_names[event_name]
        return self.standard_event_names.get(event_name, self.custom_event_name(event_name))

    def custom_event_name(self, event_name: str) -> str:
        """How a non-standard event name is sent (platforms differ in casing rules)."""
        return event_name

    def batch_size(self, config: DestinationConfig) -> int:
        return min(config.batch_size or self.max_batch_size, self.max_batch_size)

    @abstractmethod
    def prepare_events(self, frame: pd.DataFrame, config: DestinationConfig) -> list[PreparedEvent]:
        """Each row in the platform's event shape, checked per event before batching."""

    @abstractmethod
    def build_request(
        self,
        payloads: list[dict[str, Any]],
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        """The request for one batch (credentials None in dry-run mode)."""

    @abstractmethod
    def classify_response(
        self, status_code: int, body: bytes, headers: dict[str, str], event_ids: list[str]
    ) -> BatchOutcome:
        """What the platform's answer means for the batch and each of its events."""


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
