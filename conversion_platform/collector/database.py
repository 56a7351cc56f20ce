"""The collector's database engine: the platform's, with SQLite commits made durable.

The platform's SQLite connections use `synchronous=NORMAL` (a commit survives a crash of
the process). The collector acknowledges events to senders that won't send them again,
so by default its commits also survive a crash of the machine: `synchronous=FULL` syncs
the write-ahead log at each commit, which group commit pays once per group.
PostgreSQL commits are durable with its defaults (`synchronous_commit=on`).
"""

from __future__ import annotations

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
