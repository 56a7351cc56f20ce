"""The delivery report of one hour: per destination, what happened to its conversions.

Read from the delivery log (each event's latest outcome), the dead letters and the retry
schedule, joined with the hour's resolved conversions for the one figure the log can't
give: how many delivered conversions only server-side collection saw (the pixel missed
them: ad blockers, closed tabs, consent banners), which is what the platform is for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.operations.circuits import read_circuits
from conversion_platform.operations.dead_letters import KIND_RETRIES_EXHAUSTED
from conversion_platform.store import delivery_log as log
from conversion_platform.store.operations_tables import dead_letters, delivery_retries
from conversion_platform.store.tables import delivery_events
from conversion_platform.store.timecodes import from_micros, to_micros

DELIVERED_STATUSES = (log.EVENT_DELIVERED, log.EVENT_PENDING_STATUS, log.EVENT_VALIDATED)

#: The report's figures per destination, in the order the UI shows them.
FIGURES = (
    "eligible",
    "delivered",
    "dry_run",
    "rejected",
    "expired",
    "pending",
    "dead_lettered",
    "retries_exhausted",
    "filtered_no_consent",
    "server_only",
    "server_recovered_share",
)

REPORT_COLUMNS = (
    events.HOUR_COLUMN,
    "destination",
    *FIGURES,
    "retries",
    "next_retry",
    "circuit",
)


@dataclass
class DestinationHourReport:
    """One destination's figures for one hour."""

    destination: str
    figures: dict[str, float | int]
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    next_retry: datetime | None = None
    circuit: str = "closed"


def _server_only(sources: pd.Series) -> pd.Series:
    """True where no browser pixel saw the conversion (only the backend or the logs)."""
    text = sources.astype("string").fillna("")
    return ~text.str.split(",").apply(lambda parts: events.SOURCE_PIXEL in parts)


def hour_delivery_report(
    engine: Engine, hour: datetime, destinations: list[str], conversions: pd.DataFrame
) -> list[DestinationHourReport]:
    """The report of `hour` for each destination (the configured ones, and any in the log)."""
    hour_us = to_micros(hour)
    with engine.connect() as conn:
        outcomes = pd.DataFrame(
            conn.execute(
                sa.select(
                    delivery_events.c.destination,
                    delivery_events.c.event_id,
                    delivery_events.c.status,
                    delivery_events.c.reason,
                ).where(delivery_events.c.hour_us == hour_us)
            ).fetchall(),
            columns=["destination", "event_id", "status", "reason"],
        )
        dead = pd.DataFrame(
            conn.execute(
                sa.select(
                    dead_letters.c.destination,
                    dead_letters.c.event_id,
                    dead_letters.c.kind,
                    dead_letters.c.reason,
                ).where(dead_letters.c.hour_us == hour_us)
            ).fetchall(),
            columns=["destination", "event_id", "kind", "reason"],
        )
        retries = {
            r.destination: r
            for r in conn.execute(
                sa.select(delivery_retries).where(delivery_retries.c.hour_us == hour_us)
            )
        }
    circuits = read_circuits(engine)
    server_only_ids: set[str] = set()
    if len(conversions) and "sources" in conversions.columns:
        flags = _server_only(conversions["sources"])
        server_only_ids = set(conversions.loc[flags.to_numpy(), "event_id"].astype(str))

    names = list(dict.fromkeys([*destinations, *sorted(set(outcomes["destination"]))]))
    reports = []
    for name in names:
        mine = outcomes[outcomes["destination"] == name]
        mine_dead = dead[dead["destination"] == name]
        status = mine["status"].value_counts()

        def count(*statuses: str, _status: pd.Series = status) -> int:
            return int(sum(int(_status.get(s, 0)) for s in statuses))

        rejected_reasons: Counter[str] = Counter(
            str(reason) for reason in mine.loc[mine["status"] == log.EVENT_PERMANENT, "reason"]
        )
        sent_ok = mine[mine["status"].isin((*DELIVERED_STATUSES, log.EVENT_DRY_RUN))]
        server_only = int(sent_ok["event_id"].astype(str).isin(server_only_ids).sum())
        figures: dict[str, float | int] = {
            "eligible": len(mine) - count(log.EVENT_FILTERED),
            "delivered": count(*DELIVERED_STATUSES),
            "dry_run": count(log.EVENT_DRY_RUN),
            "rejected": int(sum(rejected_reasons.values())),
            "expired": count(log.EVENT_EXPIRED),
            "pending": count(log.EVENT_RETRYABLE),
            "dead_lettered": len(mine_dead),
            "retries_exhausted": int((mine_dead["kind"] == KIND_RETRIES_EXHAUSTED).sum()),
            "filtered_no_consent": count(log.EVENT_FILTERED),
            "server_only": server_only,
            "server_recovered_share": round(server_only / len(sent_ok), 4) if len(sent_ok) else 0.0,
        }
        retry = retries.get(name)
        circuit = circuits.get(name)
        reports.append(
            DestinationHourReport(
                destination=name,
                figures=figures,
                rejected_by_reason=rejected_reasons,
                retries=int(retry.retries_requested) if retry is not None else 0,
                next_retry=from_micros(retry.next_attempt_at_us)
                if retry is not None and retry.next_attempt_at_us
                else None,
                circuit="open" if circuit is not None and circuit.is_open else "closed",
            )
        )
    return reports


def report_frame(hour: datetime, reports: list[DestinationHourReport]) -> pd.DataFrame:
    """One row per destination of the hour, in `REPORT_COLUMNS` order."""
    rows = [
        {
            events.HOUR_COLUMN: pd.Timestamp(hour),
            "destination": r.destination,
            **r.figures,
            "retries": r.retries,
            "next_retry": pd.Timestamp(r.next_retry) if r.next_retry else pd.NaT,
            "circuit": r.circuit,
        }
        for r in reports
    ]
    frame = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    frame[events.HOUR_COLUMN] = pd.to_datetime(frame[events.HOUR_COLUMN], utc=True)
    frame["next_retry"] = pd.to_datetime(frame["next_retry"], utc=True)
    return frame
