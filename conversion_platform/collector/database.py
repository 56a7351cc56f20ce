"""The collector's database engine: the platform's, with SQLite commits made durable.

The platform's SQLite connections use `synchronous=NORMAL` (a commit survives a crash of
the process). The collector acknowledges events to senders that won't send them again,
so by default its commits also survive a crash of the machine: `synchronous=FULL` syncs
the write-ahead log at each commit, which group commit pays once per group.
PostgreSQL commits are durable with its defaults (`synchronous_commit=on`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.collector.config import CollectorConfig
from conversion_platform.store.database import create_database_engine, is_sqlite


def collector_engine(url: str, config: CollectorConfig) -> Engine:
    """An engine for the collector (schema created), SQLite synchronous set per config."""
    engine = create_database_engine(url)
    if is_sqlite(engine):
        level = config.sqlite_synchronous

        def _synchronous(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA synchronous={level}")
            cursor.close()

        sa.event.listen(engine, "connect", _synchronous)
        engine.dispose()  # connections made before the listener use the default
    return engine


class WriterLock:
    """An exclusive lock on a file beside the SQLite database, held around each commit.

    With several worker processes, SQLite makes a writer that finds the database locked
    sleep and retry (1, 2, 5, 10 ... ms), which turns into latency spikes. Taking this
    lock first queues the writers in the kernel instead, which wakes the next one the
    moment the lock is released.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def writer_lock(engine: Engine) -> WriterLock | None:
    """The cross-process commit lock for a file SQLite database; None otherwise."""
    database = engine.url.database if is_sqlite(engine) else None
    if not database or database == ":memory:":
        return None
    return WriterLock(Path(database).with_name(Path(database).name + ".collector-lock"))


def no_lock() -> AbstractContextManager[None]:
    return contextlib.nullcontext()
