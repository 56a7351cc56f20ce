"""Helpers for identity tests: deduplicated rows in the canonical model, and the graph engine.

Rows are what `validated_conversions` hands identity resolution; personal values given
in plaintext here are hashed with the platform's own hashers before they reach the row,
as ingest does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.store.database import create_database_engine
from conversion_platform.store.tables import (
    identity_click_ids,
    identity_identifiers,
    identity_merges,
    identity_persons,
)
from conversion_platform.transform.identity import DEDUPED_COLUMNS, IdentityResult, resolve_hours
from conversion_platform.transform.identity_rules import IdentityRules
from conversion_platform.transform.normalise import hash_email, hash_external_id, hash_phone

HOUR = datetime(2026, 3, 2, 10, tzinfo=UTC)
_ids = itertools.count()


def at(hour_offset: float, minute: int = 0) -> datetime:
    """A moment `hour_offset` hours after HOUR (fractions allowed), plus minutes."""
    return HOUR + timedelta(hours=hour_offset, minutes=minute)


def row(
    when: datetime,
    name: str = events.PURCHASE,
    *,
    consent: str = events.CONSENT_GRANTED,
    email: str | None = None,
    phone: str | None = None,
    external_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One deduplicated event at `when` (its hour is the hour `when` falls in)."""
    event_id = f"ev{next(_ids):06d}"
    record: dict[str, Any] = {
        events.HOUR_COLUMN: when.replace(minute=0, second=0, microsecond=0),
        "event_id": event_id,
        "event_name": name,
        "event_time": when,
        "received_at": when,
        "source": events.SOURCE_PIXEL,
        "action_source": "website",
        "page_url": "https://shop.example/p",
        "consent_ad_user_data": consent,
        "consent_ad_personalization": consent,
        "sources": events.SOURCE_PIXEL,
        "dedupe_rule": "event_id",
        "dedupe_key": event_id,
        "copies": 1,
    }
    if email is not None:
        record["email_sha256"], record["email_google_sha256"], _ = hash_email(email)
    if phone is not None:
        record["phone_sha256"], record["phone_digits_sha256"], _ = hash_phone(phone, "US")
    if external_id is not None:
        record["external_id_sha256"], _ = hash_external_id(external_id)
    record.update(fields)
    return record


def frame_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return events.conform(pd.DataFrame(rows), DEDUPED_COLUMNS)


def resolve(
    engine: Engine,
    rows: list[dict[str, Any]],
    rules: IdentityRules | None = None,
    consent_required: bool = False,
) -> IdentityResult:
    """Resolve the hours of `rows`, in order, as the asset does."""
    frame = frame_of(rows)
    hours = sorted({pd.Timestamp(h).to_pydatetime() for h in frame[events.HOUR_COLUMN]})
    return resolve_hours(engine, frame, hours, rules or IdentityRules(), consent_required)


def by_event(result: IdentityResult) -> dict[str, dict[str, Any]]:
    """Resolved rows by event id, as plain dicts (None for missing)."""
    frame = result.frame
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return {r["event_id"]: r for r in records}


def graph_snapshot(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of the graph's tables, sorted, for comparing states."""
    snapshot = {}
    with engine.connect() as conn:
        for table in (identity_identifiers, identity_persons, identity_merges, identity_click_ids):
            columns = [c for c in table.columns if c.name != "merged_at_us"]
            rows = conn.execute(sa.select(*columns)).all()
            snapshot[table.name] = sorted(tuple(r) for r in rows)
    return snapshot


#: Databases the graph tests run on (PostgreSQL skips without a server).
DATABASES = ["sqlite", "postgresql"]


def open_graph_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The operational database of a `graph_engine` fixture parametrised by DATABASES."""
    if request.param == "sqlite":
        engine = create_database_engine(f"sqlite:///{tmp_path / 'graph.db'}")
    else:
        engine = create_database_engine(request.getfixturevalue("pg_url"))
    yield engine
    engine.dispose()
