"""The delivery report of one hour: per destination, what happened to its conversions.

Read from the delivery log (each event's latest outcome), the dead letters and the retry
schedule, joined with the hour's resolved conversions for the one figure the log can't
give: how many delivered conversions only server-side collection saw (the pixel missed
them: ad blockers, closed tabs, consent banners), which is what the platform is for.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

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
    pattern = rf"(?:^|,){events.SOURCE_PIXEL}(?:,|$)"
    return ~text.str.contains(pattern, regex=True).astype(bool)


#: The columns of the hour's conversions the report reads (the delivery report asset
#: loads only these from Parquet).
CONVERSION_COLUMNS = (events.HOUR_COLUMN, "event_id", "sources")

#: The delivery log's (destination, hour, status) index, named to SQLite's planner. The
#: report's counts read it alone: no table row is read per event, except the reasons of
#: rejected ones.
_DESTINATION_HOUR_STATUS_INDEX = next(
    index.name
    for index in delivery_events.indexes
    if [c.name for c in index.columns] == ["destination", "hour_us", "status"]
)


def _logged_destinations(conn: Connection) -> list[str]:
    """Every destination named in the delivery log, read by skipping along its index (one
    seek per destination, not a scan of its rows)."""
    column = delivery_events.c.destination
    step = sa.select(sa.func.min(column)).scalar_subquery()
    names = sa.select(step.label("name")).cte("names", recursive=True)
    following = (
        sa.select(column).where(column > names.c.name).order_by(column).limit(1).scalar_subquery()
    )
    names = names.union_all(sa.select(following).where(names.c.name.is_not(None)))
    return [r[0] for r in conn.execute(sa.select(names.c.name).where(names.c.name.is_not(None)))]


def _log_table(conn: Connection, alias: str = "") -> str:
    """The delivery log in a FROM clause, on SQLite with its (destination, hour, status)
    index named: the planner, without statistics, may otherwise take the primary key's
    destination prefix (every hour of the destination instead of this one)."""
    named = f"{delivery_events.name} AS {alias}" if alias else delivery_events.name
    if conn.dialect.name == "sqlite":
        return f"{named} INDEXED BY {_DESTINATION_HOUR_STATUS_INDEX}"
    return named


def _count_sent(
    conn: Connection,
    destinations: list[str],
    hour_us: int,
    statuses: tuple[str, ...],
    event_ids: list[str],
) -> dict[str, int]:
    """Per destination, how many of `event_ids` the hour's log has with one of `statuses`
    (through a temporary table of the ids, joined with the hour's index entries)."""
    table = sa.Table(
        f"report_ids_{uuid.uuid4().hex[:12]}",
        sa.MetaData(),
        sa.Column("event_id", sa.Text, primary_key=True),
        prefixes=["TEMPORARY"],
    )
    table.create(conn)
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    insert = f"INSERT INTO {table.name} (event_id) VALUES ({placeholder})"
    try:
        # In key order (each B-tree page written once), as plain driver tuples.
        ordered = sorted(event_ids)
        for i in range(0, len(ordered), 50_000):
            conn.exec_driver_sql(insert, [(e,) for e in ordered[i : i + 50_000]])
        rows = conn.execute(
            sa.text(
                f"SELECT e.destination, count(*) FROM {_log_table(conn, 'e')} "
                f"JOIN {table.name} AS i ON i.event_id = e.event_id "
                "WHERE e.destination IN :destinations AND e.hour_us = :hour_us "
                "AND e.status IN :statuses GROUP BY e.destination"
            ).bindparams(
                sa.bindparam("destinations", expanding=True),
                sa.bindparam("statuses", expanding=True),
            ),
            {"destinations": destinations, "hour_us": hour_us, "statuses": list(statuses)},
        ).fetchall()
    finally:
        table.drop(conn)
    return {str(name): int(n) for name, n in rows}


def hour_counts_statement(conn: Connection) -> sa.TextClause:
    """The hour's outcome counts per (destination, status), and per reason for the
    permanent rejections, in one statement (one snapshot of the log); its parameters are
    `destinations`, `hour_us` and `permanent`.

    Counted by the database: an hour of a million conversions is millions of outcome
    rows, of which the report needs the totals. The status counts read the (destination,
    hour, status) index alone; only rejected events are read from the table, for their
    reasons.
    """
    log_table = _log_table(conn)
    return sa.text(
        f"SELECT destination, status, NULL AS reason, count(*) AS events FROM {log_table} "
        "WHERE destination IN :destinations AND hour_us = :hour_us AND status != :permanent "
        "GROUP BY destination, status "
        "UNION ALL "
        f"SELECT destination, status, reason, count(*) AS events FROM {log_table} "
        "WHERE destination IN :destinations AND hour_us = :hour_us AND status = :permanent "
        "GROUP BY destination, status, reason"
    ).bindparams(sa.bindparam("destinations", expanding=True))


def hour_delivery_report(
    engine: Engine, hour: datetime, destinations: list[str], conversions: pd.DataFrame
) -> list[DestinationHourReport]:
    """The report of `hour` for each destination (the configured ones, and any in the log)."""
    hour_us = to_micros(hour)
    sent_ok_statuses = (*DELIVERED_STATUSES, log.EVENT_DRY_RUN)
    server_only_ids: list[str] = []
    if len(conversions) and "sources" in conversions.columns:
        flags = _server_only(conversions["sources"]).to_numpy()
        server_only_ids = conversions.loc[flags, "event_id"].astype(str).unique().tolist()
    with engine.begin() as conn:
        # Every query names the destinations, so each is a seek on the log's
        # (destination, hour, status) index rather than a scan of every hour's outcomes.
        known = sorted({*destinations, *_logged_destinations(conn)})
        counts = pd.DataFrame(
            conn.execute(
                hour_counts_statement(conn),
                {"destinations": known, "hour_us": hour_us, "permanent": log.EVENT_PERMANENT},
            ).fetchall(),
            columns=["destination", "status", "reason", "events"],
        )
        dead = pd.DataFrame(
            conn.execute(
                sa.select(dead_letters.c.destination, dead_letters.c.kind, sa.func.count())
                .where(dead_letters.c.destination.in_(known), dead_letters.c.hour_us == hour_us)
                .group_by(dead_letters.c.destination, dead_letters.c.kind)
            ).fetchall(),
            columns=["destination", "kind", "events"],
        )
        retries = {
            r.destination: r
            for r in conn.execute(
                sa.select(delivery_retries).where(delivery_retries.c.hour_us == hour_us)
            )
        }
        server_only_by_destination = (
            _count_sent(conn, known, hour_us, sent_ok_statuses, server_only_ids)
            if server_only_ids
            else {}
        )
    circuits = read_circuits(engine)

    names = list(dict.fromkeys([*destinations, *sorted(set(counts["destination"]))]))
    reports = []
    for name in names:
        mine = counts[counts["destination"] == name]
        mine_dead = dead[dead["destination"] == name]
        status = mine.groupby("status")["events"].sum()

        def count(*statuses: str, _status: pd.Series = status) -> int:
            return int(sum(int(_status.get(s, 0)) for s in statuses))

        permanent = mine[mine["status"] == log.EVENT_PERMANENT]
        rejected_reasons: Counter[str] = Counter(
            {str(r): int(n) for r, n in zip(permanent["reason"], permanent["events"], strict=True)}
        )
        sent = count(*sent_ok_statuses)
        server_only = server_only_by_destination.get(name, 0)
        figures: dict[str, float | int] = {
            "eligible": int(mine["events"].sum()) - count(log.EVENT_FILTERED),
            "delivered": count(*DELIVERED_STATUSES),
            "dry_run": count(log.EVENT_DRY_RUN),
            "rejected": int(sum(rejected_reasons.values())),
            "expired": count(log.EVENT_EXPIRED),
            "pending": count(log.EVENT_RETRYABLE),
            "dead_lettered": int(mine_dead["events"].sum()),
            "retries_exhausted": int(
                mine_dead.loc[mine_dead["kind"] == KIND_RETRIES_EXHAUSTED, "events"].sum()
            ),
            "filtered_no_consent": count(log.EVENT_FILTERED),
            "server_only": server_only,
            "server_recovered_share": round(server_only / sent, 4) if sent else 0.0,
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
