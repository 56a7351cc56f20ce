"""The operational SQLite database's connection settings, read back from SQLite itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.data import generate_and_land
from conversion_platform.store.database import (
    MMAP_SIZE_BYTES,
    WAL_CHECKPOINT_PAGES,
    WAL_SIZE_LIMIT_BYTES,
    create_database_engine,
    memory_mapped_reads,
)
from conversion_platform.store.landing import read_landing_events

HOUR = datetime(2026, 11, 30, 6, tzinfo=UTC)


def test_every_connection_gets_wal_and_its_checkpoint_settings(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'platform.db'}")
    try:
        # Two connections at once: each is configured when it opens, not only the first.
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                pragma = {
                    name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in (
                        "journal_mode",
                        "synchronous",
                        "wal_autocheckpoint",
                        "journal_size_limit",
                    )
                }
                assert pragma == {
                    "journal_mode": "wal",
                    "synchronous": 1,  # NORMAL
                    "wal_autocheckpoint": WAL_CHECKPOINT_PAGES,
                    "journal_size_limit": WAL_SIZE_LIMIT_BYTES,
                }
    finally:
        engine.dispose()


def _mapped(path: Path) -> bool:
    """Whether this process has the file `path` memory-mapped (Linux: /proc/self/maps). The
    WAL index (`-shm`) is always mapped; only the database file itself counts here."""
    target = str(path.resolve())
    return any(
        line.split(maxsplit=5)[-1] == target
        for line in Path("/proc/self/maps").read_text().splitlines()
        if line.endswith(target)
    )


@pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps, which only Linux has"
)
def test_only_bulk_reads_map_the_database_and_nothing_stays_mapped(tmp_path: Path) -> None:
    """Connections read without a memory map, but for the bulk reads that gain from one
    (the landing table's hour), which drop their map when done; a connection back in the
    pool has nothing mapped, even when a mapped read did not end."""
    path = tmp_path / "platform.db"
    engine = create_database_engine(f"sqlite:///{path}")
    count = "SELECT count(*), max(page_url) FROM landing_events"
    try:
        generate_and_land(engine, [HOUR], 2_000, seed=5)
        with engine.connect() as conn:  # pages still in the WAL are read from there, unmapped
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        # Two connections at once, so the pool holds more than one.
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 0
                conn.exec_driver_sql(count).one()
            assert not _mapped(path)  # ordinary reads: no map
            with memory_mapped_reads(first):
                first.exec_driver_sql(count).one()
                assert _mapped(path)  # a bulk read goes through the map
            assert not _mapped(path)  # and drops it when done
            # A map nothing dropped (set by hand here): the pool's check-in unmaps it.
            first.exec_driver_sql(f"PRAGMA mmap_size={MMAP_SIZE_BYTES}")
            first.exec_driver_sql(count).one()
            assert _mapped(path)
        assert not _mapped(path)

        frame = read_landing_events(engine, HOUR, HOUR + timedelta(hours=1))

        assert len(frame) == 2_000
        assert not _mapped(path)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 0
    finally:
        engine.dispose()
