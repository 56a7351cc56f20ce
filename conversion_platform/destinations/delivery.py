"""Delivering one hour of resolved conversions to one destination.

Shared by every platform: which events go (event names, consent), which were settled
already (never sent twice), which are too old (expired), per-event checks, batching at the
platform's limit, sending with in-run retries (or writing the outbox in dry-run mode),
splitting a batch the platform refused as a whole to find the event at fault, and
recording every attempt and every event's outcome in the delivery log.

An event's outcome is written in the same transaction as the attempt that settled it, so
a run that dies half-way never forgets what the platform already took. While one batch's
outcome is written, the next batch is already on its way (one request in flight ahead,
never after an auth failure), so the platform's time and ours overlap. In dry-run mode
nothing is settled: the hour's request rows and outcomes are written together, in one
transaction, once its bodies are built.

Outcomes are kept column by column (`delivery_log.OutcomeColumns`), not as an object per
event, and the rules that pick an hour's events narrow one array of row positions; the
events are then taken from the hour's frame a chunk at a time, so at most one chunk's copy
is alive (a copy of the whole hour was 0.6 GB at a million events).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import requests
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.destinations import json_columns as jc
from conversion_platform.destinations.base import (
    STATUS_AUTH,
    STATUS_DELIVERED,
    STATUS_PARTIAL,
    STATUS_PENDING_STATUS,
    STATUS_PERMANENT,
    STATUS_RETRYABLE,
    STATUS_VALIDATED,
    BatchOutcome,
    Destination,
    EventBatch,
    HttpRequest,
    identifiers_allowed,
)
from conversion_platform.destinations.config import (
    MODE_DRY_RUN,
    MODE_VALIDATE,
    DestinationConfig,
)
from conversion_platform.destinations.dry_run_log import DryRunLog, WrittenBatch
from conversion_platform.destinations.http_client import TransportError, send_request
from conversion_platform.destinations.outbox import OutboxWriter
from conversion_platform.store import delivery_log as log
from conversion_platform.store.timecodes import now_micros
from conversion_platform.transform.match_quality import match_quality_column

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

#: Events this close to a platform's age limit are reported expired rather than sent: the
#: request (and its in-run retries) must reach the platform while they are still in time.
EXPIRY_MARGIN = timedelta(minutes=10)


@dataclass
class HourDelivery:
    """What happened to one destination-hour."""

    destination: str
    hour: datetime
    mode: str
    eligible: int = 0
    sent: int = 0
    delivered: int = 0  # accepted by the platform (or validated, or written in dry-run)
    awaiting_status: int = 0  # accepted; the platform reports per event later
    already_settled: int = 0
    expired: int = 0
    filtered: int = 0
    duplicates: int = 0
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


#: The columns delivery reads of an hour itself (filters, consent, outcomes), beside those
#: its destination's encoder reads.
_DELIVERY_COLUMNS = frozenset(
    {"event_id", "event_name", "event_time", "consent_ad_user_data", "match_quality"}
)


def columns_delivered(destination: Destination) -> frozenset[str] | None:
    """The columns of an hour that delivering it to `destination` reads (None: all)."""
    if destination.columns_read is None:
        return None
    own = {match_quality_column(destination.platform)}
    return destination.columns_read | _DELIVERY_COLUMNS | own


def strip_identifiers(frame: pd.DataFrame, allowed: pd.Series) -> pd.DataFrame:
    """Events without ad_user_data consent lose every identifier before anything is built."""
    if allowed.all():
        return frame
    frame = frame.copy(deep=False)
    keep = allowed.to_numpy(dtype=bool)
    for column in IDENTIFIER_COLUMNS:
        if column in frame.columns:
            frame[column] = _missing_unless(frame[column], keep)
    return frame


def _missing_unless(values: pd.Series, keep: np.ndarray) -> pd.Series:
    """`values` where `keep`, missing elsewhere; an Arrow column in one Arrow pass (pandas'
    own setitem on it converts every value to Python and back)."""
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        arrow = pa.array(values.array)
        kept = pc.if_else(pa.array(keep), arrow, pa.scalar(None, arrow.type))
        return pd.Series(pd.arrays.ArrowStringArray(kept), index=values.index, name=values.name)
    return values.where(keep)


def _id_objects(values: pd.Series) -> np.ndarray:
    """Event ids as Python text (a missing one as "<NA>"): Arrow-backed text in one Arrow
    pass (`astype(str)` went through pandas' element-wise conversion first)."""
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        return values.to_numpy(dtype=object, na_value="<NA>")
    return values.astype(str).to_numpy(dtype=object)


class EligibleEvents:
    """The rows of an hour's frame a destination will encode, in sending order, and
    whether each may keep its identifiers (ad_user_data consent). `ids` and `names` are
    the hour's event ids and names as Python values, converted once for all chunks."""

    def __init__(
        self,
        frame: pd.DataFrame,
        positions: np.ndarray,
        allowed: np.ndarray,
        columns: Collection[str] | None = None,
        *,
        ids: np.ndarray,
        names: np.ndarray,
    ) -> None:
        # The hour's columns the chunks are without: those the hour was read without, and
        # those left out here.
        left_out = set(frame.attrs.get(events.LEFT_OUT_COLUMNS, ()))
        if columns is not None:
            kept = [c for c in frame.columns if c in columns]
            if len(kept) < len(frame.columns):
                left_out.update(frame.columns.difference(kept))
                frame = frame[kept]  # Arrow columns are shared, not copied
        self._left_out = frozenset(left_out) if left_out else None
        self._frame = frame
        self._positions = positions
        self._allowed = allowed
        self._ids, self._names = ids, names
        #: every row, in order: chunks are slices of the frame, not copies
        self._in_order = len(positions) == len(frame) and bool(
            (positions == np.arange(len(frame))).all()
        )

    def __len__(self) -> int:
        return len(self._positions)

    def chunk(self, start: int, stop: int) -> pd.DataFrame:
        """Rows `start:stop` of the selection as a frame of their own (index 0..n-1),
        identifiers removed where consent is denied."""
        frame = self._frame
        if self._in_order:
            chunk = frame if start == 0 and stop >= len(frame) else frame.iloc[start:stop]
        else:
            chunk = frame.take(self._positions[start:stop])
        if not chunk.index.equals(pd.RangeIndex(len(chunk))):
            chunk = chunk.copy(deep=False)
            chunk.index = pd.RangeIndex(len(chunk))
        chunk = strip_identifiers(chunk, pd.Series(self._allowed[start:stop]))
        if self._left_out is not None:
            chunk.attrs[events.LEFT_OUT_COLUMNS] = self._left_out
        return chunk

    def ids_and_names(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The event ids and names of rows `start:stop` of the selection."""
        rows = self._positions[start:stop]
        return self._ids[rows], self._names[rows]


class EventRun:
    """The sendable events of (a chunk of) an hour: ids, names, scores and JSON objects.

    Event i's JSON object is a slice of a buffer holding the encoder's objects each
    followed by a comma (rows `keep` leaves out, the events that can't be sent, are
    skipped); a request's body is one slice of it where its events lie side by side, and
    otherwise joins the slices of its runs of events side by side (or, for positions that
    are not a run, of each event) with commas. Events carried over from the previous
    chunk (a batch's worth at most) come first, as bytes.
    """

    def __init__(
        self,
        event_ids: list[str],
        json: pa.Array,
        groups: list[str] | None,
        carried: Carry | None = None,
        *,
        keep: np.ndarray | None = None,
        names: list[str | None] | None = None,
        quality: list[float | None] | None = None,
        comma_after: bool = False,
    ) -> None:
        carried = carried or Carry([], [], [] if groups is not None else None)
        n = len(event_ids)
        self._carried = carried.pieces
        self.event_ids = carried.event_ids + event_ids
        self.groups = None if groups is None else (carried.groups or []) + groups
        self.names: list[str | None] = carried.names + (
            [None] * n if names is None else list(names)
        )
        self.quality: list[float | None] = carried.quality + (
            [None] * n if quality is None else list(quality)
        )
        if isinstance(json, pa.ChunkedArray):
            json = json.combine_chunks()
        if json.type != jc.TEXT:
            json = json.cast(jc.TEXT)
        # Each event's object with a comma after it, back to back: a batch of events side
        # by side in the buffer is then one slice of it. The encoders build them so
        # (`comma_after`); anything else is copied once with the commas added.
        if not comma_after:
            json = jc.concat(json, jc.lit(","))
        offsets = jc.value_offsets(json)
        starts, ends = offsets[:-1] - offsets[0], offsets[1:] - offsets[0]
        if keep is not None:
            starts, ends = starts[keep], ends[keep]
        self._starts: list[int] = starts.tolist()
        self._ends: list[int] = ends.tolist()  # past the comma
        #: the events that do not start where the one before ended (a left-out event
        #: between them), in order: a run of events is one slice between two of them
        self._gaps = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        self._data = memoryview(jc.contiguous_text(json))

    def __len__(self) -> int:
        return len(self.event_ids)

    def _view(self, i: int) -> bytes | memoryview:
        if i < len(self._carried):
            return self._carried[i]
        i -= len(self._carried)
        return self._data[self._starts[i] : self._ends[i] - 1]

    def piece(self, i: int) -> bytes:
        """Event i's JSON object."""
        return bytes(self._view(i))

    def batch(self, number: int, positions: Sequence[int]) -> EventBatch:
        carried = len(self._carried)
        first, last = 0, -1  # this chunk's events first..last, when `positions` are a run
        if isinstance(positions, range) and positions.step == 1:
            first, last = positions.start - carried, positions.stop - carried - 1
        if 0 <= first <= last:
            # Each stretch of events side by side in the buffer is one slice (the events
            # and the commas between them): one for the whole batch unless events left
            # out lie between (joining a slice per event instead cost a second a
            # destination at 1M events where a sixth of them were left out).
            low, high = np.searchsorted(self._gaps, (first + 1, last + 1))
            cuts = [first, *self._gaps[low:high].tolist(), last + 1]
            data, starts, ends = self._data, self._starts, self._ends
            body = b",".join([data[starts[a] : ends[b - 1] - 1] for a, b in pairwise(cuts)])
            event_ids = self.event_ids[carried + first : carried + last + 1]
        else:
            body = b",".join([self._view(i) for i in positions])
            event_ids = [self.event_ids[i] for i in positions]
        groups: tuple[str, ...] = ()
        if self.groups is not None:
            groups = tuple(dict.fromkeys(self.groups[i] for i in positions))
        return EventBatch(number, event_ids, body, groups)

    def carry(self, positions: range) -> Carry:
        """The events at `positions`, to open the next chunk's first batch."""
        return Carry(
            [self.event_ids[i] for i in positions],
            [self.piece(i) for i in positions],
            None if self.groups is None else [self.groups[i] for i in positions],
            [self.names[i] for i in positions],
            [self.quality[i] for i in positions],
        )


@dataclass
class Carry:
    """Encoded events of a chunk's last, partial batch, carried into the next chunk."""

    event_ids: list[str]
    pieces: list[bytes]
    groups: list[str] | None
    names: list[str | None] = field(default_factory=list)
    quality: list[float | None] = field(default_factory=list)


def plan_batches(
    n: int, size: int, groups: list[str] | None, max_groups: int | None
) -> list[range]:
    """Consecutive ranges of at most `size` events and at most `max_groups` groups each."""
    if groups is None or max_groups is None or len(set(groups)) <= max_groups:
        return [range(i, min(i + size, n)) for i in range(0, n, size)]
    ranges: list[range] = []
    start, seen = 0, set[str]()
    for i, group in enumerate(groups):
        if i - start >= size or (group not in seen and len(seen) >= max_groups):
            ranges.append(range(start, i))
            start, seen = i, set()
        seen.add(group)
    if start < n:
        ranges.append(range(start, n))
    return ranges


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
        chunk_rows: int = 100_000,
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
        self.chunk_rows = chunk_rows
        #: set while the destination's circuit is open: nothing is sent, every sendable
        #: event is recorded retryable with this reason (see operations/circuits.py)
        self.hold_reason = hold_reason

    # -- one hour --------------------------------------------------------------------------

    def deliver_hour(self, frame: pd.DataFrame, hour: datetime, partition_key: str) -> HourDelivery:
        config = self.config
        mode = config.effective_mode()
        credentials = config.read_credentials() if mode != MODE_DRY_RUN else None
        report = HourDelivery(config.name, hour, mode)
        now = pd.Timestamp(self.clock())
        selection, outcomes = self._eligible(frame, report, now)
        outbox = (
            OutboxWriter(self.outbox_dir, config.name, partition_key)
            if mode == MODE_DRY_RUN
            else None
        )
        context = _BatchContext(hour, mode, credentials, report)
        dry_run_log: DryRunLog | None = None
        if outbox is None:
            with self.engine.begin() as conn:
                log.record_outcome_columns(conn, config.name, hour, outcomes)
        else:
            # Dry run: the hour's outcomes are written with its batches, in one transaction,
            # by a writer thread while the next chunk is encoded.
            context.unsent = outcomes
            dry_run_log = DryRunLog(
                self.engine, config.name, hour, self.run_id, f"written to {outbox.path}"
            )
        try:
            self._deliver_chunks(selection, now, context, outbox, dry_run_log)
            if outbox is not None and dry_run_log is not None:
                dry_run_log.record([], context.unsent)
                outbox.finish()  # the log will say the bodies are in the file
        except BaseException:
            try:
                if dry_run_log is not None:
                    dry_run_log.abandon()
            finally:
                if outbox is not None:
                    outbox.discard()
            raise
        if outbox is not None and dry_run_log is not None:
            try:
                dry_run_log.commit()
            except BaseException:
                outbox.discard()
                raise
            # After the commit nothing is discarded: a failed rename keeps the finished
            # file beside the hour's name, and the error fails the step.
            report.outbox_file = str(outbox.publish())
        return report

    def _deliver_chunks(
        self,
        selection: EligibleEvents,
        now: pd.Timestamp,
        context: _BatchContext,
        outbox: OutboxWriter | None,
        dry_run_log: DryRunLog | None,
    ) -> None:
        """Encode the hour a chunk at a time and send (or, dry run, write) its batches."""
        destination = self.destination
        size = destination.batch_size(self.config)
        carry: Carry | None = None
        number = 0
        # An hour is encoded a chunk at a time: memory stays bounded and is reused, and a
        # chunk's last partial batch is carried into the next so requests stay full.
        chunk_rows = max(self.chunk_rows, size)
        for start in range(0, max(len(selection), 1), chunk_rows):
            chunk = selection.chunk(start, start + chunk_rows)
            ids, names = selection.ids_and_names(start, start + chunk_rows)
            last_chunk = start + chunk_rows >= len(selection)
            run = self._encode_chunk(chunk, ids, names, now, carry, context)
            ranges = plan_batches(len(run), size, run.groups, destination.max_groups_per_request)
            carry = None
            if not last_chunk and ranges and len(ranges[-1]) < size:
                carry = run.carry(ranges.pop())
            if outbox is not None and dry_run_log is not None:
                for positions in ranges:
                    self._write_batch(outbox, context, run, positions, number)
                    number += 1
                # The events that won't be sent go with the chunk's batches: the chunk's
                # rejected ones lie in its range of event ids (the first chunk also takes
                # the hour's filtered and expired ones).
                dry_run_log.record(context.written, context.unsent)
                context.written, context.unsent = [], log.OutcomeColumns()
                continue
            self._send_all(context, run, number, ranges)
            number += len(ranges)

    def _send_all(
        self, ctx: _BatchContext, run: EventRun, first_number: int, ranges: list[range]
    ) -> None:
        """Send a chunk's batches in order. While one batch's outcome is being written to
        the log, the next one is already travelling (never after an auth failure)."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="delivery") as pool:

            def prepare(index: int, start: bool) -> _Prepared:
                batch = run.batch(first_number + index, ranges[index])
                request = self.destination.build_request(
                    batch, self.config, ctx.credentials, ctx.mode
                )
                future = pool.submit(self._transmit, request) if start else None
                return _Prepared(ranges[index], batch, request, future, now_micros())

            prepared: _Prepared | None = None
            for index in range(len(ranges)):
                if ctx.report.auth_failed or self.hold_reason:
                    if prepared is not None and prepared.future is not None:
                        prepared.future.result()  # already on its way: let it land
                    self._not_sent(ctx, run, ranges[index])
                    prepared = None
                    continue
                current = prepared or prepare(index, start=False)
                start_next = (
                    (lambda i=index + 1: prepare(i, start=True))
                    if index + 1 < len(ranges)
                    else None
                )
                prepared = self._send(ctx, run, current, start_next)

    def _transmit(self, request: HttpRequest) -> tuple[int, bytes, dict[str, str]]:
        return send_request(self.session, request, self.config.timeout_seconds)

    def _eligible(
        self, frame: pd.DataFrame, report: HourDelivery, now: pd.Timestamp
    ) -> tuple[EligibleEvents, log.OutcomeColumns]:
        """The events to encode, and the outcomes of those that won't be (filtered, expired).

        Each rule narrows an array of row positions; nothing is copied here (the chunks
        are taken as they are encoded)."""
        config, destination = self.config, self.destination
        outcomes = log.OutcomeColumns()
        ids = _id_objects(frame["event_id"])
        names = frame["event_name"].to_numpy(dtype=object, na_value=None)
        positions = np.flatnonzero(forwarded_event_names(frame, config).to_numpy())
        duplicated = pd.Series(ids[positions]).duplicated().to_numpy()
        if duplicated.any():
            # One log row per event id and destination: a second event under the same id
            # would overwrite the first one's outcome (and the platforms dedupe on it).
            report.duplicates = int(duplicated.sum())
            positions = positions[~duplicated]
        report.eligible = len(positions)
        # In event id order (Arrow compares text byte by byte, as SQLite's keys do): the
        # hour is encoded and its outcomes recorded a chunk at a time, and event ids are
        # random, so chunks in arrival order each wrote their outcomes all over the log's
        # key range. In id order each chunk's outcomes follow the last chunk's, and the
        # settled lookup seeks in key order too.
        order = pc.array_sort_indices(events.arrow_text(frame["event_id"]).take(positions))
        positions = positions[order.to_numpy()]

        # Settled events first: an event delivered before is never re-examined, so a
        # changed consent or age can't turn its record into something else.
        with self.engine.connect() as conn:
            settled = log.settled_event_ids(conn, config.name, ids[positions].tolist())
        if settled:
            is_settled = pd.Series(ids[positions]).isin(settled).to_numpy()
            report.already_settled = int(is_settled.sum())
            positions = positions[~is_settled]

        allowed = identifiers_allowed(frame, self.consent_required).to_numpy()[positions]
        if not (destination.accepts_consent_denied_events and config.send_without_consent):
            denied = positions[~allowed]
            outcomes.add(
                ids[denied].tolist(),
                names[denied].tolist(),
                log.EVENT_FILTERED,
                "no ad_user_data consent",
            )
            report.filtered = len(denied)
            positions, allowed = positions[allowed], allowed[allowed]

        age = now - frame["event_time"]
        limit = pd.Timedelta(destination.max_event_age - EXPIRY_MARGIN)
        too_old = (age > limit).to_numpy()[positions]
        expired = positions[too_old]
        outcomes.add(
            ids[expired].tolist(),
            names[expired].tolist(),
            log.EVENT_EXPIRED,
            f"older than {destination.max_event_age}",
        )
        report.expired = len(expired)
        positions, allowed = positions[~too_old], allowed[~too_old]
        max_groups = destination.max_groups_per_request
        if max_groups is not None:
            event_names = pd.Series(names[positions])
            if event_names.nunique() > max_groups:
                # Events of one name (so of one group) side by side: each request then
                # names as few groups as it can.
                order = event_names.sort_values(kind="stable").index.to_numpy()
                positions, allowed = positions[order], allowed[order]
        selection = EligibleEvents(
            frame, positions, allowed, columns_delivered(destination), ids=ids, names=names
        )
        return selection, outcomes

    def _encode_chunk(
        self,
        chunk: pd.DataFrame,
        ids: np.ndarray,
        names: np.ndarray,
        now: pd.Timestamp,
        carry: Carry | None,
        ctx: _BatchContext,
    ) -> EventRun:
        """Encode a chunk (its event ids and names given as Python values), record the
        events that can't be sent, and keep the rest."""
        destination, report = self.destination, ctx.report
        encoded = destination.encode_events(chunk, self.config, now.to_pydatetime())
        problems = np.array(encoded.problems, dtype=object)
        in_future = (
            chunk["event_time"] - now > pd.Timedelta(destination.max_future_skew)
        ).to_numpy()
        problems[in_future & (problems == None)] = "event_time is in the future"  # noqa: E711
        invalid = problems != None  # noqa: E711
        if invalid.any():
            rejected = log.OutcomeColumns()
            for problem in dict.fromkeys(problems[invalid].tolist()):
                reason = f"invalid for {destination.platform}: {problem}"
                rows = problems == problem
                rejected.add(ids[rows].tolist(), names[rows].tolist(), log.EVENT_PERMANENT, reason)
                report.rejected[reason] += int(rows.sum())
            if ctx.unsent is not None:
                ctx.unsent.extend(rejected)
            else:
                with self.engine.begin() as conn:
                    log.record_outcome_columns(conn, self.config.name, ctx.hour, rejected)
        keep = ~invalid
        kept_ids = ids[keep].tolist()
        groups = (
            None
            if encoded.groups is None
            else [str(g) for g, k in zip(encoded.groups, keep, strict=True) if k]
        )
        quality: list[float | None] | None = None
        # This platform's own score where identity resolution computed one.
        score_column = match_quality_column(destination.platform)
        if score_column not in chunk.columns:
            score_column = "match_quality"
        if score_column in chunk.columns:
            scores = chunk[score_column].to_numpy(dtype="float64", na_value=np.nan)[keep]
            quality = np.where(np.isnan(scores), None, scores).tolist()
            report.match_quality_sum += float(np.nansum(scores))
        run = EventRun(
            kept_ids,
            encoded.json,
            groups,
            carry,
            keep=None if not invalid.any() else keep,
            names=names[keep].tolist(),
            quality=quality,
            comma_after=encoded.comma_after,
        )
        report.sent += len(kept_ids)
        return run

    def _write_batch(
        self, outbox: OutboxWriter, ctx: _BatchContext, run: EventRun, positions: range, number: int
    ) -> None:
        """Dry run: the batch's body to the outbox; its row and its events' outcomes go to
        the hour's `DryRunLog` with the rest of the chunk."""
        batch = run.batch(number, positions)
        outbox.write(self.destination.build_request(batch, self.config, None, MODE_DRY_RUN).body)
        ctx.report.requests += 1
        ctx.written.append(
            WrittenBatch(
                number,
                batch.event_ids,
                run.names[positions.start : positions.stop],
                run.quality[positions.start : positions.stop],
                now_micros(),
            )
        )

    def _not_sent(self, ctx: _BatchContext, run: EventRun, positions: Sequence[int]) -> None:
        """After an auth failure: the remaining batches wait for the credentials to change."""
        outcomes = log.OutcomeColumns()
        outcomes.add(
            [run.event_ids[i] for i in positions],
            [run.names[i] for i in positions],
            log.EVENT_RETRYABLE,
            self.hold_reason or "not sent: destination auth failed",
        )
        with self.engine.begin() as conn:
            log.record_outcome_columns(conn, self.config.name, ctx.hour, outcomes)
        ctx.report.pending += len(positions)

    # -- one batch -------------------------------------------------------------------------

    def _send(
        self,
        ctx: _BatchContext,
        run: EventRun,
        prepared: _Prepared,
        start_next: Callable[[], _Prepared] | None = None,
    ) -> _Prepared | None:
        """Send one batch with in-run retries; split it when the platform refused it whole.

        Returns the next batch, already sent by `start_next` once this one's outcome was
        final (unless the destination's credentials failed)."""
        config, destination = self.config, self.destination
        batch, request, number = prepared.batch, prepared.request, prepared.batch.number
        outcome = BatchOutcome(STATUS_RETRYABLE, reason="not sent")
        following: _Prepared | None = None
        split = False
        for attempt in range(1, max(1, config.in_run_attempts) + 1):
            started = now_micros()
            if attempt == 1 and prepared.future is not None:
                started = prepared.sent_at_us
            try:
                if attempt == 1 and prepared.future is not None:
                    status, body, headers = prepared.future.result()
                else:
                    status, body, headers = self._transmit(request)
                outcome = destination.classify_response(status, body, headers, batch)
            except TransportError as exc:
                outcome = BatchOutcome(STATUS_RETRYABLE, None, None, reason=str(exc))
            ctx.report.requests += 1
            ctx.attempts[number] = ctx.attempts.get(number, 0) + 1
            wait = self._wait(outcome, attempt)
            final = (
                outcome.status != STATUS_RETRYABLE
                or attempt >= config.in_run_attempts
                or wait > config.max_in_run_wait_seconds
            )
            split = final and self._split(outcome, batch)
            if final and not split and start_next is not None and outcome.status != STATUS_AUTH:
                following = start_next()  # travels while this batch is logged
            with self.engine.begin() as conn:
                batch_id = log.record_batch(
                    conn,
                    destination=config.name,
                    hour=ctx.hour,
                    run_id=self.run_id,
                    batch_number=number,
                    attempt=ctx.attempts[number],
                    mode=ctx.mode,
                    status=outcome.status,
                    http_status=outcome.http_status,
                    event_ids=batch.event_ids,
                    response=outcome.response_text or outcome.reason,
                    retry_after_s=outcome.retry_after_seconds,
                    platform_request_id=outcome.platform_request_id,
                    started_at_us=started,
                )
                if final:
                    outcomes = self._outcomes(ctx, run, prepared, outcome, batch_id, split)
                    log.record_outcome_columns(conn, config.name, ctx.hour, outcomes)
            if final:
                break
            self.sleep(wait)
        if not split:
            return following
        positions = list(prepared.positions)
        if outcome.rejected:
            # The platform named the events at fault and took none: send the rest again.
            parts = [[p for i, p in enumerate(positions) if i not in outcome.rejected]]
        else:
            middle = len(positions) // 2
            parts = [positions[:middle], positions[middle:]]
        for part in parts:
            if part:
                self._send(ctx, run, self._prepared(ctx, run, number, part))
        return start_next() if start_next is not None and not ctx.report.auth_failed else None

    def _prepared(
        self, ctx: _BatchContext, run: EventRun, number: int, positions: Sequence[int]
    ) -> _Prepared:
        batch = run.batch(number, positions)
        request = self.destination.build_request(batch, self.config, ctx.credentials, ctx.mode)
        return _Prepared(positions, batch, request, None, now_micros())

    def _wait(self, outcome: BatchOutcome, attempt: int) -> float:
        if outcome.retry_after_seconds is not None:
            return outcome.retry_after_seconds
        return self.config.retry_backoff_seconds * 2 ** (attempt - 1)

    def _split(self, outcome: BatchOutcome, batch: EventBatch) -> bool:
        """Whether a finally refused batch is split (or re-sent without the events named)."""
        if outcome.status != STATUS_PERMANENT or outcome.whole_request:
            return False
        if outcome.rejected:
            return len(outcome.rejected) < len(batch)
        return self.destination.all_or_nothing and len(batch) > 1

    def _outcomes(
        self,
        ctx: _BatchContext,
        run: EventRun,
        prepared: _Prepared,
        outcome: BatchOutcome,
        batch_id: int,
        split: bool,
    ) -> log.OutcomeColumns:
        """Each event's outcome after the batch's last attempt (nothing for a split batch,
        except the events the platform named)."""
        report, batch, positions = ctx.report, prepared.batch, prepared.positions
        results = log.OutcomeColumns()

        def add(indices: Sequence[int], status: str, reason: str | None = None) -> None:
            at = [positions[i] for i in indices]
            results.add(
                [run.event_ids[p] for p in at],
                [run.names[p] for p in at],
                status,
                reason,
                batch_id,
                [run.quality[p] for p in at],
            )

        everything = range(len(batch))
        if outcome.status == STATUS_PERMANENT:
            for i, reason in outcome.rejected.items():
                report.rejected[reason] += 1
                add([i], log.EVENT_PERMANENT, reason)
            if split:
                return results
            reason = outcome.reason or f"HTTP {outcome.http_status}"
            rest = [i for i in everything if i not in outcome.rejected]
            report.rejected[reason] += len(rest)
            add(rest, log.EVENT_PERMANENT, reason)
            return results
        if outcome.status in (
            STATUS_DELIVERED,
            STATUS_PENDING_STATUS,
            STATUS_PARTIAL,
            STATUS_VALIDATED,
        ):
            accepted = log.EVENT_DELIVERED
            if ctx.mode == MODE_VALIDATE or outcome.status == STATUS_VALIDATED:
                accepted = log.EVENT_VALIDATED
            elif outcome.status == STATUS_PENDING_STATUS:
                accepted = log.EVENT_PENDING_STATUS
            rejected = {i: r for i, r in outcome.rejected.items() if i in everything}
            for i, reason in rejected.items():
                report.rejected[reason] += 1
                add([i], log.EVENT_PERMANENT, reason)
            retry = {
                i: r for i, r in outcome.retry.items() if i in everything and i not in rejected
            }
            for i, reason in retry.items():
                report.pending += 1
                add([i], log.EVENT_RETRYABLE, reason)
            taken = [i for i in everything if i not in rejected and i not in retry]
            if accepted == log.EVENT_PENDING_STATUS:
                report.awaiting_status += len(taken)
            else:
                report.delivered += len(taken)
            add(taken, accepted)
            if outcome.retry and outcome.retry_after_seconds is not None:
                report.retry_after_seconds = outcome.retry_after_seconds
            return results
        if outcome.status == STATUS_AUTH:
            report.auth_failed = True
        report.pending += len(batch)
        report.retry_after_seconds = outcome.retry_after_seconds
        reason = outcome.reason or f"HTTP {outcome.http_status}"
        if outcome.status == STATUS_AUTH:
            reason = f"auth: {reason}"
        add(everything, log.EVENT_RETRYABLE, reason)
        return results


@dataclass
class _Prepared:
    """A batch ready to send, and its first request when it is already on its way."""

    positions: Sequence[int]
    batch: EventBatch
    request: HttpRequest
    future: Future[tuple[int, bytes, dict[str, str]]] | None
    #: when the first request left (for a batch already on its way)
    sent_at_us: int


@dataclass
class _BatchContext:
    """What every batch of one destination-hour shares."""

    hour: datetime
    mode: str
    credentials: dict[str, str] | None
    report: HourDelivery
    #: dry run: the outcomes of the events not sent (filtered, expired, invalid), recorded
    #: at the hour's end, and the batches written to the outbox since the last chunk was
    #: handed to the hour's `DryRunLog`
    unsent: log.OutcomeColumns | None = None
    written: list[WrittenBatch] = field(default_factory=list)
    #: requests sent per batch number (the split parts of a batch count on)
    attempts: dict[int, int] = field(default_factory=dict)
