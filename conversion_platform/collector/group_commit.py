"""Group commit: concurrent requests share one transaction; each is answered after it.

Request handlers check and hash their events (`prepare_landing`, on the event loop, in
slices), put the result on a queue and await a future. One writer task takes everything
queued, has a worker thread insert it all in one transaction (one statement per table
where the database allows), and resolves each request's future only after the commit
returned. While a group commits, the next one gathers, so the busier the collector, the
larger the groups and the cheaper each event; an idle collector commits a lone request at
once. Nothing is acknowledged before it is durable.

The worker thread runs almost no Python: it shares the interpreter's lock with the event
loop, and each time the database driver gives the lock up (for a statement, for the sync
to disk) it must win it back from a busy loop. Keeping the Python work on the loop keeps
those hand-offs few.

If a group's transaction fails, its requests are retried one transaction each, so one
request the database refuses can't fail the others; a request that still fails gets the
error, and its events are not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from conversion_platform.collector.database import no_lock, writer_lock
from conversion_platform.ingest.landing_writer import (
    LandingResult,
    PreparedLanding,
    commit_prepared,
)

logger = logging.getLogger(__name__)


class StorageUnavailable(RuntimeError):
    """The database could not commit a request's events; nothing of it was acknowledged."""


class Overloaded(RuntimeError):
    """Too many events are waiting for a commit; the request should be retried later."""


@dataclass
class LandingRequest:
    """One request's prepared events (or only a quarantine entry for an unusable payload)."""

    prepared: PreparedLanding
    future: asyncio.Future[LandingResult] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return max(1, len(self.prepared.rows) + len(self.prepared.quarantined))


@dataclass
class CommitStats:
    """Counters for `/healthz` and the benchmark's report."""

    groups: int = 0
    requests: int = 0
    events: int = 0
    largest_group: int = 0
    failed_groups: int = 0
    write_seconds: float = 0.0  # insert and commit (including the sync to disk)


class GroupCommitter:
    """The single writer of one collector process."""

    def __init__(
        self, engine: Engine, *, max_group_events: int = 20_000, max_queued: int = 100_000
    ):
        self.engine = engine
        self._lock = writer_lock(engine)
        self.max_group_events = max_group_events
        self.max_queued = max_queued
        self.stats = CommitStats()
        self._queue: asyncio.Queue[LandingRequest | None] | None = None
        self._queued_events = 0
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None
        self._conn: Connection | None = None  # the writer thread's own connection
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._executor.submit(self._discard_connection).result()
        self._executor.shutdown(wait=True)

    async def land(self, request: LandingRequest) -> LandingResult:
        """Queue `request` and wait until its events are committed (or refused)."""
        if self._queue is None or self._task is None or self._task.done():
            raise StorageUnavailable("the writer is not running")
        if self._queued_events + request.size > self.max_queued:
            raise Overloaded(f"{self._queued_events} events are waiting for a commit")
        request.future = asyncio.get_running_loop().create_future()
        self._queued_events += request.size
        self._waiting += 1
        self._queue.put_nowait(request)
        try:
            return await asyncio.shield(request.future)
        finally:
            self._waiting -= 1

    @property
    def queued_events(self) -> int:
        """Events queued and not yet taken into a group."""
        return self._queued_events

    @property
    def waiting_requests(self) -> int:
        """Requests queued or being committed, not yet answered."""
        return self._waiting

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            group = [first]
            size = first.size
            while size < self.max_group_events and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                group.append(item)
                size += item.size
            self._queued_events -= size
            try:
                outcomes = await loop.run_in_executor(self._executor, self._commit_group, group)
            except Exception as exc:  # the writer must outlive any one group
                logger.exception("group commit failed unexpectedly")
                failure = StorageUnavailable(f"unexpected error ({type(exc).__name__})")
                outcomes = [failure] * len(group)
            for request, outcome in zip(group, outcomes, strict=True):
                future = request.future
                if future is None or future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    # --- in the worker thread -----------------------------------------------------------

    def _commit(self, prepared: Sequence[PreparedLanding]) -> None:
        # One connection held for the writer's life: checking one out of the pool and
        # back in for each group cost more than a small group's insert.
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect()
        try:
            with self._lock.held() if self._lock else no_lock(), self._conn.begin():
                commit_prepared(self._conn, prepared)
        except Exception:
            self._discard_connection()  # the next commit starts on a fresh connection
            raise

    def _discard_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def _commit_group(self, group: Sequence[LandingRequest]) -> list[LandingResult | BaseException]:
        outcomes: list[LandingResult | BaseException] = [r.prepared.result for r in group]
        started = time.perf_counter()
        # Any exception here comes from the database or its driver (COPY goes to psycopg
        # directly, so its errors aren't SQLAlchemy's).
        try:
            self._commit([r.prepared for r in group])
        except Exception as exc:
            self.stats.failed_groups += 1
            if len(group) == 1:
                return [_unavailable(exc)]
            logger.warning("a group of %d requests failed to commit; retrying each", len(group))
            for position, request in enumerate(group):
                try:
                    self._commit([request.prepared])
                except Exception as single:
                    outcomes[position] = _unavailable(single)
        self.stats.write_seconds += time.perf_counter() - started
        committed = [
            r for r, o in zip(group, outcomes, strict=True) if not isinstance(o, BaseException)
        ]
        self.stats.groups += 1
        self.stats.requests += len(committed)
        events = sum(r.prepared.result.accepted for r in committed)
        self.stats.events += events
        self.stats.largest_group = max(self.stats.largest_group, events)
        return outcomes


def _unavailable(exc: Exception) -> StorageUnavailable:
    # The driver's message can hold values of the row; only the class goes to the client.
    kind = type(exc).__name__
    logger.error("commit failed: %s", kind)
    return StorageUnavailable(f"the database refused the commit ({kind})")
