"""The operational database: engine creation and schema set-up.

SQLite (WAL mode, so readers never block the writer) is the embedded default;
PostgreSQL is the production choice. Both are reached through SQLAlchemy 2.x Core.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store import operations_tables  # (also registers its tables)
from conversion_platform.store.tables import metadata
from conversion_platform.store.wal_checkpointer import WalCheckpointer

#: Bytes of the database file a bulk read may read through a memory map (`memory_mapped_reads`).
MMAP_SIZE_BYTES = 1 << 30
#: WAL pages (4 KiB each) after which a commit checkpoints the WAL itself (SQLite's
#: default is 1,000): only when the process's checkpointing thread falls behind.
WAL_CHECKPOINT_PAGES = 50_000
#: The size a checkpointed WAL file is cut back to.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def _configure_sqlite(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL lets the collector write while an hour is being read; NORMAL is durable in WAL
    # mode against process crashes (a commit is in the WAL before COMMIT returns).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # No memory map but for the bulk reads that gain from one (`memory_mapped_reads`):
    # unmapping a map the size of a large database costs tens of milliseconds, and a
    # connection that mapped what it read had to unmap it on every return to the pool.
    cursor.execute("PRAGMA mmap_size=0")
    # The engine's `WalCheckpointer` thread checkpoints the WAL as it grows, so commits
    # don't wait for a checkpoint's fsyncs; a commit checkpoints only past 200 MB of WAL
    # (the thread fell behind or is gone). The file is cut back to 64 MB afterwards.
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    cursor.close()


def _release_memory_map(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """On a connection's return to the pool: no memory map left behind.

    A mapped page counts in the process's resident memory for as long as it stays mapped,
    and a pooled connection would keep its map while it waits (after reading a
    million-row hour, 690 MB of the pipeline's 4.5 GB peak, held through every later
    stage). `memory_mapped_reads` unmaps when it ends; this catches a map it could not
    drop (its pragma failed) or one set by hand. Nothing is mapped otherwise, so it costs
    a pragma.
    """
    if dbapi_connection is None:  # invalidated
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA mmap_size=0")  # unmaps at once
        cursor.close()
    except sqlite3.Error:
        pass  # the pages stay mapped until the next return: memory, not correctness


@contextmanager
def memory_mapped_reads(conn: Connection) -> Iterator[None]:
    """Within: SQLite reads the database through a memory map (other databases: nothing).

    Reading an hour of a million landing rows through mapped pages instead of read()
    calls saves about a third of SQLite's time. Mapped pages count in the process's
    resident memory, so the map is dropped when the read ends; the pages stay in the
    page cache. Only for large reads: dropping a map costs time in proportion to the
    pages it holds (on the week's backfill database, tens of milliseconds), which every
    hour's transactions paid when all connections mapped their reads.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    driver = conn.connection.driver_connection
    driver.execute(f"PRAGMA mmap_size={MMAP_SIZE_BYTES}")  # type: ignore[union-attr]
    try:
        yield
    finally:
        # On failure the pool's check-in unmaps it (`_release_memory_map`).
        with suppress(sqlite3.Error):
            driver.execute("PRAGMA mmap_size=0")  # type: ignore[union-attr]


def create_database_engine(url: str) -> Engine:
    """An engine for `url` with the schema created (idempotent)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _configure_sqlite)
        sa.event.listen(engine, "checkin", _release_memory_map)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    metadata.create_all(engine)
    operations_tables.ensure_operations_indexes(engine)
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        checkpointer = WalCheckpointer(Path(database).resolve()).start()
        _checkpointers[engine] = checkpointer
        weakref.finalize(engine, checkpointer.request_stop)
    return engine


#: The WAL checkpointing thread of each SQLite engine on a file.
_checkpointers: weakref.WeakKeyDictionary[Engine, WalCheckpointer] = weakref.WeakKeyDictionary()


def wal_checkpointer(engine: Engine) -> WalCheckpointer | None:
    """The thread that checkpoints `engine`'s WAL (SQLite on a file), if any."""
    return _checkpointers.get(engine)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL per process (engines hold connection pools)."""
    return create_database_engine(url)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def can_copy(conn: Connection) -> bool:
    """True on PostgreSQL through psycopg 3, whose `COPY ... FROM STDIN` bulk-loads rows."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Stream `rows` into `table` with `COPY ... FROM STDIN` (see `can_copy`), inside the
    connection's transaction."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    finally:
        cursor.close()
