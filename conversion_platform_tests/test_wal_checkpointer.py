"""The WAL is checkpointed by the engine's own thread, not inside the writers' commits."""

from __future__ import annotations

import gc
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from conversion_platform.store.database import (
    WAL_CHECKPOINT_PAGES,
    create_database_engine,
    wal_checkpointer,
)
from conversion_platform.store.wal_checkpointer import WalCheckpointer


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _rows_in_main_file(database: Path, scratch: Path) -> int:
    """Rows of `t` in the database file alone: what checkpoints copied out of the WAL."""
    shutil.copyfile(database, scratch)  # the main file only: no -wal beside the copy
    with sqlite3.connect(scratch) as conn:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()
        if not tables[0]:
            return 0
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def test_committed_pages_reach_the_database_file_without_a_commit_checkpointing(
    tmp_path: Path,
) -> None:
    database = tmp_path / "platform.db"
    engine = create_database_engine(f"sqlite:///{database}")
    checkpointer = wal_checkpointer(engine)
    assert checkpointer is not None and checkpointer.running
    with engine.begin() as conn:
        # Commits checkpoint only far past what this test writes (the thread's fallback).
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_CHECKPOINT_PAGES
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute(
            sa.text("INSERT INTO t (body) VALUES (:body)"),
            [{"body": f"row {i:06d}" * 20} for i in range(2_000)],
        )
    # The commit left the rows in the WAL (200 pages, far below the commit's own mark);
    # the thread copies them into the database file.
    assert _eventually(lambda: _rows_in_main_file(database, tmp_path / "copy.db") == 2_000)
    assert checkpointer.checkpoints >= 1
    # Nothing new in the WAL: the thread does not checkpoint again.
    settled = checkpointer.checkpoints
    time.sleep(5 * checkpointer.interval_s)
    assert checkpointer.checkpoints == settled
    engine.dispose()


def test_the_thread_ends_with_its_engine(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'platform.db'}")
    checkpointer = wal_checkpointer(engine)
    assert checkpointer is not None
    engine.dispose()
    del engine
    gc.collect()
    assert _eventually(lambda: not checkpointer.running)


def test_no_thread_for_a_database_in_memory() -> None:
    engine = create_database_engine("sqlite://")
    assert wal_checkpointer(engine) is None


def test_a_removed_database_is_not_created_again(tmp_path: Path) -> None:
    database = tmp_path / "gone.db"
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    # A WAL file without its database (removed while the platform ran).
    (tmp_path / "gone.db-wal").write_bytes(b"")
    database.unlink()
    checkpointer = WalCheckpointer(database, interval_s=0.01).start()
    assert _eventually(lambda: not checkpointer.running)
    assert not database.exists()
