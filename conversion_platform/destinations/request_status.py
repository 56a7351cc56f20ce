"""Asking a platform for the per-event outcome of requests it accepted earlier.

Google's Data Manager API answers an ingest with a request id only; whether each event
was taken is known later from `requestStatus:retrieve`. Such requests are logged with
status `pending_status` (and their events too); this step asks about each, oldest first,
and records the verdict: every event delivered, every event rejected with Google's
reasons, or `unconfirmed` when Google reports a partial success (it gives counts per
reason, not which events failed). A request still processing is asked about again on the
next call, and given up as `unconfirmed` after `give_up_after`.

The delivery asset calls this at the start and the end of each run; the retry sensor can
call it between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import orjson
import requests
from sqlalchemy.engine import Engine

from conversion_platform.destinations.base import Destination
from conversion_platform.destinations.config import MODE_DRY_RUN, DestinationConfig
from conversion_platform.destinations.http_client import TransportError, send_request
from conversion_platform.store import delivery_log as log
from conversion_platform.store.timecodes import now_micros

#: verdict -> (batch row status, event status)
_RECORDED = {
    "delivered": ("delivered", log.EVENT_DELIVERED),
    "permanent": ("permanent", log.EVENT_PERMANENT),
    "unconfirmed": ("partial", log.EVENT_UNCONFIRMED),
}


@dataclass
class StatusPolling:
    """What one round of status requests found."""

    asked: int = 0
    resolved: int = 0
    processing: int = 0
    unreachable: int = 0
    events_delivered: int = 0
    events_rejected: int = 0
    events_unconfirmed: int = 0
    auth_failed: bool = False


#: Requests' verdicts recorded per transaction.
RECORD_EVERY = 50


@dataclass(frozen=True)
class _Verdict:
    """What the platform finally said of one request."""

    batch_id: int
    event_ids: list[str] | None
    outcome: str
    reason: str | None
    text: str | None


def _record(
    engine: Engine, destination: str, verdicts: list[_Verdict], polling: StatusPolling
) -> None:
    """Record the verdicts' requests and their pending events, in one transaction."""
    if not verdicts:
        return
    with engine.begin() as conn:
        for verdict in verdicts:
            batch_status, event_status = _RECORDED[verdict.outcome]
            changed = log.resolve_pending_batch(
                conn,
                verdict.batch_id,
                batch_status=batch_status,
                response=verdict.text or verdict.reason,
                event_status=event_status,
                reason=verdict.reason,
                destination=destination,
                event_ids=verdict.event_ids,
            )
            polling.resolved += 1
            if event_status == log.EVENT_DELIVERED:
                polling.events_delivered += changed
            elif event_status == log.EVENT_PERMANENT:
                polling.events_rejected += changed
            else:
                polling.events_unconfirmed += changed


def resolve_pending_requests(
    engine: Engine,
    destination: Destination,
    config: DestinationConfig,
    session: requests.Session,
    *,
    max_requests: int = 500,
    give_up_after: timedelta = timedelta(days=3),
    now_us: int | None = None,
) -> StatusPolling:
    """Ask about the destination's pending requests and record each one's final outcome."""
    polling = StatusPolling()
    if not destination.reports_status_later or config.effective_mode() == MODE_DRY_RUN:
        return polling
    credentials = config.read_credentials()
    if credentials is None:
        return polling
    with engine.connect() as conn:
        pending = log.pending_status_batches(conn, config.name, max_requests)
    now = now_us if now_us is not None else now_micros()
    # Verdicts are recorded `RECORD_EVERY` at a time, in one transaction: a commit per
    # group of requests instead of one per request (each commit writes every log page its
    # events touched), and what was learnt is kept if the round stops half-way.
    verdicts: list[_Verdict] = []
    for row in pending:
        request_id = row["platform_request_id"]
        if not request_id:
            verdict_outcome, reason, text = "unconfirmed", "no request id to ask about", None
        else:
            request = destination.request_status(str(request_id), config, credentials)
            polling.asked += 1
            try:
                status, body, _ = send_request(session, request, config.timeout_seconds)
            except TransportError:
                polling.unreachable += 1
                break  # the platform is not answering: ask again next time
            verdict = destination.classify_status(status, body)
            if verdict.outcome == "auth":
                polling.auth_failed = True
                break
            verdict_outcome, reason, text = verdict.outcome, verdict.reason, verdict.response_text
            if verdict_outcome == "processing":
                waited = timedelta(microseconds=now - int(row["finished_at_us"]))
                if waited < give_up_after:
                    polling.processing += 1
                    continue
                verdict_outcome = "unconfirmed"
                reason = f"no final status from the platform after {give_up_after}"
        event_ids = orjson.loads(row["event_ids"]) if row["event_ids"] else None
        verdicts.append(_Verdict(int(row["id"]), event_ids, verdict_outcome, reason, text))
        if len(verdicts) >= RECORD_EVERY:
            _record(engine, config.name, verdicts, polling)
            verdicts = []
    _record(engine, config.name, verdicts, polling)
    return polling
