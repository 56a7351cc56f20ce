"""The identity graph's repository: reads and bulk writes over the `identity_*` tables.

Every write happens in the caller's transaction (one per hour), which starts with
`lock_graph` so two updates never interleave: on PostgreSQL the state row is locked
until commit, on SQLite the first write takes the database's write lock before any read.
Reads and writes work on whole sets (chunked `IN` lists, executemany), never one
identifier at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import (
    identity_click_ids,
    identity_graph_state,
    identity_identifiers,
    identity_merges,
    identity_persons,
)
from conversion_platform.store.timecodes import now_micros

_CHUNK = 5_000
COUNT_COLUMNS: dict[str, str] = {
    "mpid": "mpid_count",
    "email": "email_count",
    "phone": "phone_count",
    "external_id": "external_id_count",
}


def _chunks(values: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _records(frame: pd.DataFrame, columns: Iterable[str]) -> list[dict]:
    """Rows as dicts of plain Python values (None for missing)."""
    part = frame[list(columns)]
    return part.astype(object).where(part.notna(), None).to_dict("records")


def _insert(conn: Connection, table: sa.Table):  # type: ignore[no-untyped-def]
    return (postgresql if conn.engine.dialect.name == "postgresql" else sqlite).insert(table)


def lock_graph(conn: Connection, hour_us: int) -> None:
    """Take the graph's write lock for this transaction (the first statement of an update)."""
    updated = conn.execute(
        sa.update(identity_graph_state)
        .where(identity_graph_state.c.id == 1)
        .values(last_hour_us=hour_us, updated_at_us=now_micros())
    )
    if not updated.rowcount:
        stmt = _insert(conn, identity_graph_state).values(
            id=1, last_hour_us=hour_us, updated_at_us=now_micros()
        )
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        conn.execute(
            sa.update(identity_graph_state)
            .where(identity_graph_state.c.id == 1)
            .values(last_hour_us=hour_us, updated_at_us=now_micros())
        )


def lookup_identifiers(conn: Connection, kind: str, values: Sequence[str]) -> pd.DataFrame:
    """Stored identifiers of `kind` among `values`: value, person_id, linkable."""
    t = identity_identifiers
    rows: list[tuple] = []
    for chunk in _chunks(list(values)):
        rows.extend(
            conn.execute(
                sa.select(t.c.value, t.c.person_id, t.c.linkable).where(
                    t.c.kind == kind, t.c.value.in_(chunk)
                )
            ).all()
        )
    return pd.DataFrame(rows, columns=["value", "person_id", "linkable"])


def person_stats(conn: Connection, person_ids: Sequence[str]) -> pd.DataFrame:
    """First-seen time and identifier counts per kind of the given persons."""
    t = identity_persons
    columns = ["person_id", "first_seen_us", *COUNT_COLUMNS.values()]
    rows: list[tuple] = []
    for chunk in _chunks(list(person_ids)):
        rows.extend(
            conn.execute(
                sa.select(*(t.c[c] for c in columns)).where(t.c.person_id.in_(chunk))
            ).all()
        )
    return pd.DataFrame(rows, columns=columns)


def insert_identifiers(conn: Connection, frame: pd.DataFrame) -> None:
    """New identifiers: kind, value, variant, person_id, linkable, first_seen_us, first_hour_us."""
    if frame.empty:
        return
    rows = _records(frame, [c.name for c in identity_identifiers.columns])
    for chunk in _chunks(rows):
        conn.execute(identity_identifiers.insert(), list(chunk))


def mark_unlinkable(conn: Connection, frame: pd.DataFrame) -> None:
    """Stored identifiers (kind, value) that may no longer link anyone."""
    if frame.empty:
        return
    t = identity_identifiers
    stmt = (
        sa.update(t)
        .where(t.c.kind == sa.bindparam("k"), t.c.value == sa.bindparam("v"))
        .values(linkable=False)
    )
    conn.execute(
        stmt, [{"k": k, "v": v} for k, v in zip(frame["kind"], frame["value"], strict=True)]
    )


def insert_persons(conn: Connection, frame: pd.DataFrame) -> None:
    """New persons with their counts."""
    if frame.empty:
        return
    rows = _records(frame, [c.name for c in identity_persons.columns])
    for chunk in _chunks(rows):
        conn.execute(identity_persons.insert(), list(chunk))


def update_persons(conn: Connection, frame: pd.DataFrame) -> None:
    """Counts and first-seen time of persons that gained identifiers or absorbed others."""
    if frame.empty:
        return
    t = identity_persons
    stmt = (
        sa.update(t)
        .where(t.c.person_id == sa.bindparam("pid"))
        .values(
            first_seen_us=sa.bindparam("first_seen"),
            updated_hour_us=sa.bindparam("hour"),
            **{c: sa.bindparam(f"n_{c}") for c in COUNT_COLUMNS.values()},
        )
    )
    params = [
        {
            "pid": row["person_id"],
            "first_seen": int(row["first_seen_us"]),
            "hour": int(row["updated_hour_us"]),
            **{f"n_{c}": int(row[c]) for c in COUNT_COLUMNS.values()},
        }
        for row in _records(
            frame, ["person_id", "first_seen_us", "updated_hour_us", *COUNT_COLUMNS.values()]
        )
    ]
    conn.execute(stmt, params)


def record_merges(conn: Connection, merges: pd.DataFrame, hour_us: int) -> None:
    """Move each merged person's identifiers and click ids to the person it merged into,
    drop the merged person, and record the merge. `merges`: merged_person_id, into_person_id."""
    if merges.empty:
        return
    pairs = [
        {"old": old, "new": new}
        for old, new in zip(merges["merged_person_id"], merges["into_person_id"], strict=True)
    ]
    moved: dict[str, int] = {}
    t = identity_identifiers
    for chunk in _chunks(pairs):
        old_ids = [p["old"] for p in chunk]
        counted = conn.execute(
            sa.select(t.c.person_id, sa.func.count())
            .where(t.c.person_id.in_(old_ids))
            .group_by(t.c.person_id)
        ).all()
        moved.update({pid: int(n) for pid, n in counted})
    for table in (identity_identifiers, identity_click_ids):
        conn.execute(
            sa.update(table)
            .where(table.c.person_id == sa.bindparam("old"))
            .values(person_id=sa.bindparam("new")),
            pairs,
        )
    conn.execute(
        sa.delete(identity_persons).where(identity_persons.c.person_id == sa.bindparam("old")),
        [{"old": p["old"]} for p in pairs],
    )
    now = now_micros()
    stmt = _insert(conn, identity_merges).on_conflict_do_nothing(
        index_elements=["merged_person_id"]
    )
    conn.execute(
        stmt,
        [
            {
                "merged_person_id": p["old"],
                "into_person_id": p["new"],
                "hour_us": hour_us,
                "identifiers_moved": moved.get(p["old"], 0),
                "merged_at_us": now,
            }
            for p in pairs
        ],
    )


def upsert_click_ids(conn: Connection, frame: pd.DataFrame) -> None:
    """Click ids seen with identifiers; a click id already known keeps its earliest sighting."""
    if frame.empty:
        return
    t = identity_click_ids
    stmt = _insert(conn, t)
    earliest = (
        sa.func.least(t.c.first_seen_us, stmt.excluded.first_seen_us)
        if conn.engine.dialect.name == "postgresql"
        else sa.func.min(t.c.first_seen_us, stmt.excluded.first_seen_us)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["kind", "value", "click_type", "click_id"],
        set_={"first_seen_us": earliest, "person_id": stmt.excluded.person_id},
    )
    rows = _records(frame, [c.name for c in t.columns])
    for chunk in _chunks(rows):
        conn.execute(stmt, list(chunk))


def read_person_identifiers(
    conn: Connection, person_ids: Sequence[str], kinds: Sequence[str]
) -> pd.DataFrame:
    """The identifiers of the given persons: person_id, kind, value, variant, first_seen_us."""
    t = identity_identifiers
    rows: list[tuple] = []
    for chunk in _chunks(list(person_ids)):
        rows.extend(
            conn.execute(
                sa.select(t.c.person_id, t.c.kind, t.c.value, t.c.variant, t.c.first_seen_us).where(
                    t.c.person_id.in_(chunk), t.c.kind.in_(list(kinds))
                )
            ).all()
        )
    return pd.DataFrame(rows, columns=["person_id", "kind", "value", "variant", "first_seen_us"])


def read_person_clicks(
    conn: Connection, person_ids: Sequence[str], since_us: int, until_us: int
) -> pd.DataFrame:
    """Click ids of the given persons first seen in [since, until]."""
    t = identity_click_ids
    rows: list[tuple] = []
    for chunk in _chunks(list(person_ids)):
        rows.extend(
            conn.execute(
                sa.select(t.c.person_id, t.c.click_type, t.c.click_id, t.c.first_seen_us).where(
                    t.c.person_id.in_(chunk),
                    t.c.first_seen_us >= since_us,
                    t.c.first_seen_us <= until_us,
                )
            ).all()
        )
    return pd.DataFrame(rows, columns=["person_id", "click_type", "click_id", "first_seen_us"])


def current_person_id(conn: Connection, person_id: str) -> str:
    """The person an old id lives on as, following recorded merges."""
    seen = {person_id}
    while True:
        into = conn.execute(
            sa.select(identity_merges.c.into_person_id).where(
                identity_merges.c.merged_person_id == person_id
            )
        ).scalar()
        if into is None or into in seen:
            return person_id
        seen.add(into)
        person_id = into


def graph_totals(engine: Engine) -> dict[str, int]:
    """Sizes of the graph: persons, identifiers (and unlinkable ones), merges, click ids."""
    with engine.connect() as conn:
        return {
            "persons": int(
                conn.execute(sa.select(sa.func.count()).select_from(identity_persons)).scalar() or 0
            ),
            "identifiers": int(
                conn.execute(sa.select(sa.func.count()).select_from(identity_identifiers)).scalar()
                or 0
            ),
            "unlinkable_identifiers": int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(identity_identifiers)
                    .where(identity_identifiers.c.linkable.is_(False))
                ).scalar()
                or 0
            ),
            "merges": int(
                conn.execute(sa.select(sa.func.count()).select_from(identity_merges)).scalar() or 0
            ),
            "click_ids": int(
                conn.execute(sa.select(sa.func.count()).select_from(identity_click_ids)).scalar()
                or 0
            ),
        }
