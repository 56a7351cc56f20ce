"""A dry-run hour's delivery log, written by a writer thread while the hour is encoded.

Dry run writes each batch's body to the outbox and records every batch and every
event's outcome in one transaction, so an hour is in the log whole or not at all. The
writing is as costly as the encoding (a row per event and destination), and both the
database driver (SQLite's steps, psycopg's I/O) and Arrow's kernels release the GIL: so
each chunk's batches are handed to one writer thread, which records them inside the
hour's transaction while the next chunk is encoded. The writer owns its connection from
opening to commit or rollback.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, RootTransaction
from sqlalchemy.engine import Engine

from conversion_platform.destinations.config import MODE_DRY_RUN
from conversion_platform.store import delivery_log as log


@dataclass
class WrittenBatch:
    """A batch written to the outbox (its events; the body is not kept)."""

    number: int
    event_ids: list[str]
    names: list[str | None]
    quality: list[float | None]
    at_us: int


class DryRunLog:
    """Records a dry-run hour's batches and outcomes in one transaction, off the main thread.

    `record` queues work and returns at once; `commit` waits for it and commits;
    `abandon` rolls everything back. A failure in the writer surfaces in `commit`.
    """

    def __init__(
        self, engine: Engine, destination: str, hour: datetime, run_id: str | None, response: str
    ) -> None:
        self._engine = engine
        self._destination = destination
        self._hour = hour
        self._run_id = run_id
        self._response = response
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dry-run-log")
        self._queued: list[Future[None]] = []
        self._conn: Connection | None = None
        self._transaction: RootTransaction | None = None

    def record(self, batches: list[WrittenBatch], unsent: log.OutcomeColumns | None = None) -> None:
        """Queue batches written to the outbox (and outcomes of events not sent)."""
        if batches or unsent:
            self._queued.append(self._writer.submit(self._write, batches, unsent))

    def commit(self) -> None:
        """Wait for the queued work and commit the hour (rolled back if any of it failed)."""
        try:
            for queued in self._queued:
                queued.result()
            self._writer.submit(self._finish, True).result()
        except BaseException:
            self.abandon()
            raise
        finally:
            self._writer.shutdown()

    def abandon(self) -> None:
        """Roll back whatever was recorded (the outbox file is removed by its owner)."""
        for queued in self._queued:
            queued.cancel()
        try:
            self._writer.submit(self._finish, False).result()
        except RuntimeError:
            pass  # the writer was already shut down: `commit` finished or rolled back
        finally:
            self._writer.shutdown()

    # -- the writer thread ------------------------------------------------------------------

    def _write(self, batches: list[WrittenBatch], unsent: log.OutcomeColumns | None) -> None:
        if self._conn is None:
            self._conn = self._engine.connect()
            self._transaction = self._conn.begin()
        conn = self._conn
        batch_ids = log.record_batches(
            conn,
            [
                log.BatchRow(
                    destination=self._destination,
                    hour=self._hour,
                    run_id=self._run_id,
                    batch_number=batch.number,
                    attempt=1,
                    mode=MODE_DRY_RUN,
                    status=log.EVENT_DRY_RUN,
                    http_status=None,
                    event_ids=batch.event_ids,
                    response=self._response,
                    retry_after_s=None,
                    platform_request_id=None,
                    started_at_us=batch.at_us,
                    finished_at_us=batch.at_us,
                )
                for batch in batches
            ],
        )
        outcomes = unsent or log.OutcomeColumns()
        for batch, batch_id in zip(batches, batch_ids, strict=True):
            outcomes.add(
                batch.event_ids, batch.names, log.EVENT_DRY_RUN, None, batch_id, batch.quality
            )
        log.record_outcome_columns(conn, self._destination, self._hour, outcomes)

    def _finish(self, commit: bool) -> None:
        conn, transaction = self._conn, self._transaction
        self._conn = self._transaction = None
        if conn is None or transaction is None:
            return
        try:
            if commit:
                transaction.commit()
            else:
                transaction.rollback()
        finally:
            conn.close()
