"""The operational SQLite database's connection settings, read back from SQLite itself."""

from __future__ import annotations

from pathlib import Path

from conversion_platform.store.database import (
    WAL_CHECKPOINT_PAGES,
    WAL_SIZE_LIMIT_BYTES,
    create_database_engine,
)


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
