"""Checkpointing a SQLite database's write-ahead log from a background thread.

SQLite copies the WAL back into the database file (a checkpoint) inside the COMMIT that
takes the WAL past `wal_autocheckpoint` pages, and with `synchronous=NORMAL` that
checkpoint waits for two fsyncs. The delivery log, the dedupe ledger and the identity
graph have random keys, so their commits write a page per row and the WAL fills fast: a
delivery's commit after each request then waited for the disk every few requests. Here a
thread of the process checkpoints instead, on its own connection, whenever the WAL file
has grown: the waiting for the disk happens beside the work, not inside a commit. The
connections keep an automatic checkpoint at a higher mark, for a process whose thread
falls behind or is gone.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

#: How often the thread looks at the WAL file (a stat; a checkpoint only if it grew).
CHECK_INTERVAL_S = 0.2


class WalCheckpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` on `path` when its WAL file has changed.

    PASSIVE never waits for readers or the writer: it copies what it can and leaves the
    rest for the next round. `request_stop` ends the thread (it is a daemon: a process may exit
    without it; an interrupted checkpoint is one SQLite recovers from).
    """

    def __init__(self, path: Path, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0  # rounds that ran a checkpoint (for tests and figures)
        self._wal = Path(f"{path}-wal")
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"wal-checkpoint:{path.name}", daemon=True
        )

    def start(self) -> WalCheckpointer:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the thread to end after its current round (returns at once)."""
        self._stopped.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        seen: tuple[int, int] | None = None
        try:
            while not self._stopped.wait(self.interval_s):
                state = self._wal_state()
                if state is None or state == seen:
                    continue
                if conn is None:
                    conn = self._connect()
                    if conn is None:
                        return  # the database is gone: nothing left to checkpoint
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    continue  # busy or a transient error: the next round tries again
                self.checkpoints += 1
                seen = self._wal_state()
        finally:
            if conn is not None:
                conn.close()

    def _wal_state(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._wal)
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def _connect(self) -> sqlite3.Connection | None:
        try:
            # mode=rw: never create a database that was removed meanwhile.
            conn = sqlite3.connect(
                f"file:{self.path}?mode=rw", uri=True, timeout=1, check_same_thread=False
            )
        except sqlite3.Error:
            return None
        conn.execute("PRAGMA synchronous=NORMAL")  # the fsyncs a checkpoint needs, no more
        return conn
