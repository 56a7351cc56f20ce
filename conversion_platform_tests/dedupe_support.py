"""Helpers for the dedupe, validation and quarantine tests (not a test module).

Copies are built the way the platform builds them: plaintext records go through
`coerce_record` and `records_to_frame` (normalisation and hashing), and each copy's
`hour` is the hour it was received, as ingest assigns it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy.engine import Engine

from conversion_platform.ingest.records import coerce_record, records_to_frame
from conversion_platform.store.database import create_database_engine

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)


def at(hour: int, minute: int = 0, second: int = 0, *, day: int = 0) -> datetime:
    """A moment `day` days and `hour` hours after DAY0."""
    return DAY0 + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def copy(
    source: str,
    received_at: datetime,
    *,
    event_time: datetime | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One incoming copy: plaintext fields as a pixel, backend or log line sends them."""
    record: dict[str, Any] = {"event_name": "purchase", **fields}
    record["event_time"] = (event_time or received_at).isoformat()
    return {"source": source, "received_at": received_at, "record": record}


def copies_frame(copies: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The canonical frame (with `hour`) of copies made by `copy()`."""
    coerced = [
        coerce_record(c["record"], c["source"], received_at=c["received_at"]) for c in copies
    ]
    frame, _dropped = records_to_frame(coerced, hour_of=[hour_of(c["received_at"]) for c in copies])
    # Money from the pixel is unverified, as the landing writer marks it.
    frame["value_verified"] = (frame["source"] != "pixel").astype("boolean")
    return frame


def of_hour(frame: pd.DataFrame, hour: datetime) -> pd.DataFrame:
    return frame.loc[frame["hour"] == pd.Timestamp(hour)].reset_index(drop=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The operational database on SQLite, and on PostgreSQL when one is configured."""
    if request.param == "sqlite":
        yield request.getfixturevalue("engine")
        return
    url = request.getfixturevalue("pg_url")
    engine = create_database_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
