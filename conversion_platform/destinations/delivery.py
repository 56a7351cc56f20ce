"""Delivering one hour of resolved conversions to one destination.

Shared by every platform: which events go (event names, consent), which are too old
(expired), which were settled already (never sent twice), per-event checks, batching at
the platform's limit, sending with in-run retries (or writing the outbox in dry-run
mode), splitting an all-or-nothing batch the platform rejected to find the event at
fault, and recording every attempt and every event's outcome in the delivery log.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.destinations.base import (
    STATUS_AUTH,
    STATUS_DELIVERED,
    STATUS_PENDING_STATUS,
    STATUS_PERMANENT,
    STATUS_RETRYABLE,
    BatchOutcome,
    Destination,
    identifiers_allowed,
)
from conversion_platform.destinations.config import (
    MODE_DRY_RUN,
    MODE_VALIDATE,
    DestinationConfig,
)
from conversion_platform.destinations.http_client import TransportError, send_request
from conversion_platform.destinations.outbox import write_outbox
from conversion_platform.store import delivery_log as log
from conversion_platform.store.timecodes import now_micros

#: Identifier columns removed from events whose ad_user_data consent is denied.
IDENTIFIER_COLUMNS: tuple[str, ...] = (
    *events.HASHED_IDENTITY_COLUMNS,
    "mpid",
    "client_ip",
    "user_agent",
    *events.CLICK_ID_COLUMNS,
    *events.COOKIE_COLUMNS,
    "city",
    "region",
    "postal_code",
)


@dataclass
class HourDelivery:
    """What happened to one destination-hour."""

    destination: str
    hour: datetime
    mode: str
    eligible: int = 0
    sent: int = 0
    delivered: int = 0
    already_settled: int = 0
    expired: int = 0
    filtered: int = 0
    pending: int = 0  # retryable, still undelivered after the in-run retries
    rejected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    auth_failed: bool = False
    retry_after_seconds: float | None = None
    match_quality_sum: float = 0.0
    outbox_file: str | None = None

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def mean_match_quality(self) -> float | None:
        return self.match_quality_sum / self.sent if self.sent else None


def forwarded_event_names(frame: pd.DataFrame, config: DestinationConfig) -> pd.Series:
    """True for events this destination receives (page views only where enabled)."""
    names = frame["event_name"].astype("string")
    keep = ~names.isin(config.exclude_events)
    if not config.forward_page_view:
        keep &= names != events.PAGE_VIEW
    return keep.fillna(False).astype(bool)


def strip_identifiers(frame: pd.DataFrame, allowed: pd.Series) -> pd.DataFrame:
    """Events without ad_user_data consent lose every identifier before anything is built."""
    if allowed.all():
        return frame
    frame = frame.copy()
    for column in IDENTIFIER_COLUMNS:
        if column in frame.columns:
            frame.loc[~allowed, column] = pd.NA
    return frame


class HourDeliverer:
    """Delivers hours to one destination; one instance per destination and run."""

    def __init__(
        self,
        engine: Engine,
        destination: Destination,
        config: DestinationConfig,
        session: requests.Session,
        outbox_dir: Path,
        *,
        consent_required: bool = False,
        run_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        hold_reason: str | None = None,
    ) -> None:
        self.engine = engine
        self.destination = destination
        self.config = config
        self.session = session
        self.outbox_dir = outbox_dir
        self.consent_required = consent_required
        self.run_id = run_id
        self.clock = clock or (lambda: pd.Timestamp.now(tz="UTC").to_pydatetime())
        self.sleep = sleep
        #: set while the destination's circuit is open: nothing is sent, every sendable
        #: event is recorded retryable with this reason (see operations/circuits.py)
        self.hold_reason = hold_reason

    # -- one hour --------------------------------------------------------------------------

    def deliver_hour(self, frame: pd.DataFrame, hour: datetime, partition_key: str) -> HourDelivery:
        config, destination = self.config, self.destination
        mode = config.effective_mode()
        credentials = config.read_credentials() if mode != MODE_DRY_RUN else None
        report = HourDelivery(config.name, hour, mode)
        outcomes: list[log.EventOutcome] = []

        frame = frame.loc[forwarded_event_names(frame, config)].reset_index(drop=True)
        report.eligible = len(frame)
        allowed = identifiers_allowed(frame, self.consent_required)
        frame = strip_identifiers(frame, allowed)
        if not (destination.accepts_consent_denied_events and config.send_without_consent):
            for row in frame.loc[~allowed, ["event_id", "event_name"]].itertuples(index=False):
                outcomes.append(
                    log.EventOutcome(
                        row.event_id, row.event_name, log.EVENT_FILTERED, "no ad_user_data consent"
                    )
                )
            report.filtered += int((~allowed).sum())
            frame = frame.loc[allowed].reset_index(drop=True)

        now = pd.Timestamp(self.clock())
        too_old = (now - frame["event_time"]) > pd.Timedelta(destination.max_event_age)
        for row in frame.loc[too_old, ["event_id", "event_name"]].itertuples(index=False):
            outcomes.append(
                log.EventOutcome(
                    row.event_id,
                    row.event_name,
                    log.EVENT_EXPIRED,
                    f"older than {destination.max_event_age}",
                )
            )
        report.expired = int(too_old.sum())
        frame = frame.loc[~too_old].reset_index(drop=True)

        with self.engine.connect() as conn:
            settled = log.settled_event_ids(
                conn, config.name, frame["event_id"].astype(str).tolist()
            )
        if settled:
            is_settled = frame["event_id"].isin(settled)
            report.already_settled = int(is_settled.sum())
            frame = frame.loc[~is_settled].reset_index(drop=True)

        names = dict(zip(frame["event_id"], frame["event_name"], strict=False))
        quality = (
            dict(zip(frame["event_id"], frame["match_quality"], strict=False))
            if "match_quality" in frame.columns
            else {}
        )
        prepared = destination.prepare_events(frame, config)
        payloads: list[tuple[str, dict[str, Any]]] = []
        for item in prepared:
            if item.payload is None:
                reason = f"invalid for {destination.platform}: {item.problem}"
                report.rejected[reason] += 1
                outcomes.append(
                    log.EventOutcome(
                        item.event_id, names.get(item.event_id), log.EVENT_PERMANENT, reason
                    )
                )
            else:
                payloads.append((item.event_id, item.payload))
        report.sent = len(payloads)
        report.match_quality_sum = float(sum(quality.get(eid) or 0.0 for eid, _ in payloads))

        size = destination.batch_size(config)
        batches = [payloads[i : i + size] for i in range(0, len(payloads), size)]
        if mode == MODE_DRY_RUN:
            bodies = [
                destination.build_request([p for _, p in b], config, None, mode).body
                for b in batches
            ]
            report.outbox_file = str(
                write_outbox(self.outbox_dir, config.name, partition_key, bodies)
            )
            report.requests = len(bodies)
            with self.engine.begin() as conn:
                for number, batch in enumerate(batches):
                    batch_id = log.record_batch(
                        conn,
                        destination=config.name,
                        hour=hour,
                        run_id=self.run_id,
                        batch_number=number,
                        attempt=1,
                        mode=mode,
                        status=log.EVENT_DRY_RUN,
                        http_status=None,
                        event_ids=[eid for eid, _ in batch],
                        response=f"written to {report.outbox_file}",
                        retry_after_s=None,
                        platform_request_id=None,
                        started_at_us=now_micros(),
                    )
                    outcomes.extend(
                        log.EventOutcome(
                            eid, names.get(eid), log.EVENT_DRY_RUN, None, batch_id, quality.get(eid)
                        )
                        for eid, _ in batch
                    )
                log.record_event_outcomes(conn, config.name, hour, outcomes)
            return report

        for number, batch in enumerate(batches):
            if report.auth_failed or self.hold_reason:
                outcomes.extend(
                    log.EventOutcome(
                        eid,
                        names.get(eid),
                        log.EVENT_RETRYABLE,
                        self.hold_reason or "not sent: destination auth failed",
                    )
                    for eid, _ in batch
                )
                report.pending += len(batch)
                continue
            outcomes.extend(
                self._send_batch(batch, number, hour, mode, credentials, report, names, quality)
            )
        with self.engine.begin() as conn:
            log.record_event_outcomes(conn, config.name, hour, outcomes)
        return report

    # -- one batch -------------------------------------------------------------------------

    def _send_batch(
        self,
        batch: list[tuple[str, dict[str, Any]]],
        number: int,
        hour: datetime,
        mode: str,
        credentials: dict[str, str] | None,
        report: HourDelivery,
        names: dict[str, str],
        quality: dict[str, float],
    ) -> list[log.EventOutcome]:
        config, destination = self.config, self.destination
        event_ids = [eid for eid, _ in batch]
        request = destination.build_request([p for _, p in batch], config, credentials, mode)
        outcome: BatchOutcome | None = None
        batch_id = 0
        for attempt in range(1, max(1, config.in_run_attempts) + 1):
            started = now_micros()
            try:
                status, body, headers = send_request(self.session, request, config.timeout_seconds)
                outcome = destination.classify_response(status, body, headers, event_ids)
            except TransportError as exc:
                outcome = BatchOutcome(STATUS_RETRYABLE, None, None, reason=str(exc))
            report.requests += 1
            with self.engine.begin() as conn:
                batch_id = log.record_batch(
                    conn,
                    destination=config.name,
                    hour=hour,
                    run_id=self.run_id,
                    batch_number=number,
                    attempt=attempt,
                    mode=mode,
                    status=outcome.status,
                    http_status=outcome.http_status,
                    event_ids=event_ids,
                    response=outcome.response_text or outcome.reason,
                    retry_after_s=outcome.retry_after_seconds,
                    platform_request_id=outcome.platform_request_id,
                    started_at_us=started,
                )
            if outcome.status != STATUS_RETRYABLE or attempt >= config.in_run_attempts:
                break
            wait = (
                outcome.retry_after_seconds
                if outcome.retry_after_seconds is not None
                else 0.5 * 2 ** (attempt - 1)
            )
            if wait > config.max_in_run_wait_seconds:
                break  # a long Retry-After is honoured by the retry sensor, not by blocking the run
            self.sleep(wait)
        assert outcome is not None

        if (
            outcome.status == STATUS_PERMANENT
            and destination.all_or_nothing
            and len(batch) > 1
            and not outcome.rejected_events
        ):
            # One bad event sinks the whole request: split to find it, deliver the rest.
            middle = len(batch) // 2
            return self._send_batch(
                batch[:middle], number, hour, mode, credentials, report, names, quality
            ) + self._send_batch(
                batch[middle:], number, hour, mode, credentials, report, names, quality
            )

        results: list[log.EventOutcome] = []
        if outcome.status in (STATUS_DELIVERED, STATUS_PENDING_STATUS) or outcome.rejected_events:
            delivered_status = (
                log.EVENT_VALIDATED
                if mode == MODE_VALIDATE
                else (
                    log.EVENT_PENDING_STATUS
                    if outcome.status == STATUS_PENDING_STATUS
                    else log.EVENT_DELIVERED
                )
            )
            for eid in event_ids:
                if eid in outcome.rejected_events:
                    reason = outcome.rejected_events[eid]
                    report.rejected[reason] += 1
                    results.append(
                        log.EventOutcome(
                            eid,
                            names.get(eid),
                            log.EVENT_PERMANENT,
                            reason,
                            batch_id,
                            quality.get(eid),
                        )
                    )
                else:
                    report.delivered += 1
                    results.append(
                        log.EventOutcome(
                            eid, names.get(eid), delivered_status, None, batch_id, quality.get(eid)
                        )
                    )
            return results
        if outcome.status == STATUS_PERMANENT:
            reason = outcome.reason or f"HTTP {outcome.http_status}"
            report.rejected[reason] += len(batch)
            return [
                log.EventOutcome(
                    eid, names.get(eid), log.EVENT_PERMANENT, reason, batch_id, quality.get(eid)
                )
                for eid in event_ids
            ]
        if outcome.status == STATUS_AUTH:
            report.auth_failed = True
        report.pending += len(batch)
        report.retry_after_seconds = outcome.retry_after_seconds
        reason = outcome.reason or f"HTTP {outcome.http_status}"
        return [
            log.EventOutcome(
                eid, names.get(eid), log.EVENT_RETRYABLE, reason, batch_id, quality.get(eid)
            )
            for eid in event_ids
        ]
