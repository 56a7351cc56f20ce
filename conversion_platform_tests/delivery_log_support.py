"""Test support for the delivery log's queries: outcomes written as a delivery writes them,
and the SQLite plan of each statement an engine runs (`EXPLAIN QUERY PLAN`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.store import delivery_log as log


def record_query_plans(engine: Engine, wanted: Callable[[str], bool]) -> list[tuple[str, str]]:
    """From now on, (statement, plan) of each single statement `engine` runs that `wanted`
    accepts, the plan's steps joined by ` | `; the list fills as statements run."""
    plans: list[tuple[str, str]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def explain(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if not executemany and wanted(statement):
            rows = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.append((statement, " | ".join(str(row[-1]) for row in rows)))

    return plans


def record_outcomes(
    engine: Engine,
    destination: str,
    hour: datetime,
    event_ids: list[str],
    status: str,
    reason: str | None = None,
) -> None:
    """The events' outcomes in the delivery log, in one transaction."""
    with engine.begin() as conn:
        log.record_event_outcomes(
            conn,
            destination,
            hour,
            [log.EventOutcome(i, "purchase", status, reason, batch_id=None) for i in event_ids],
        )
