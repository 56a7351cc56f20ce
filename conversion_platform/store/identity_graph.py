"""The identity graph's repository: reads and bulk writes over the `identity_*` tables.

Every write happens in the caller's transaction (one per hour), which starts with
`lock_graph` so two updates never interleave: on PostgreSQL the state row is locked
until commit, on SQLite the first write takes the database's write lock before any read.

An hour can hold a million rows, so reads and writes work on whole sets through the
driver's own cursor (tuples, `executemany`, `IN` lists on SQLite and `= ANY(array)` and
`COPY` for new rows on PostgreSQL), never one identifier at a time, and without building
a dict per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.store.tables import (
    identity_click_ids,
    identity_identifiers,
    identity_merges,
    identity_persons,
)
from conversion_platform.store.timecodes import now_micros

#: Values per `IN` list on SQLite (its limit on bound variables is 32,766).
_SQLITE_CHUNK = 20_000
#: SQLite page cache (KiB) for graph updates; pages are only allocated as they are used.
SQLITE_CACHE_KIB = 262_144
#: Rows per `executemany` call (keeps the driver's batches and memory bounded).
_WRITE_CHUNK = 50_000

#: On conflict, a click id keeps the earliest time it was seen (PostgreSQL, SQLite).
_EARLIEST = {
    True: "first_seen_us = LEAST(identity_click_ids.first_seen_us, excluded.first_seen_us)",
    False: "first_seen_us = MIN(identity_click_ids.first_seen_us, excluded.first_seen_us)",
}
COUNT_COLUMNS: dict[str, str] = {
    "mpid": "mpid_count",
    "email": "email_count",
    "phone": "phone_count",
    "external_id": "external_id_count",
}
#: The contact digests a person carries for enrichment.
CONTACT_COLUMNS: tuple[str, ...] = (
    "email_sha256",
    "email_google_sha256",
    "phone_sha256",
    "phone_digits_sha256",
    "external_id_sha256",
)
PERSON_COLUMNS: tuple[str, ...] = tuple(c.name for c in identity_persons.columns)
IDENTIFIER_COLUMNS: tuple[str, ...] = tuple(c.name for c in identity_identifiers.columns)
CLICK_COLUMNS: tuple[str, ...] = tuple(c.name for c in identity_click_ids.columns)


class _Driver:
    """The transaction's DBAPI cursor and the dialect's SQL spelling."""

    def __init__(self, conn: Connection) -> None:
        self.postgres = conn.engine.dialect.name == "postgresql"
        self.mark = "%s" if self.postgres else "?"
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def select_in(self, sql: str, values: Sequence[Any], extra: Sequence[Any] = ()) -> list[tuple]:
        """Run `sql` (with `{in}` where the value list goes; `extra` parameters after it)."""
        rows: list[tuple] = []
        if not len(values):
            return rows
        if self.postgres:
            self.cursor.execute(sql.format(**{"in": "= ANY(%s)"}), [list(values), *extra])
            return list(self.cursor.fetchall())
        for i in range(0, len(values), _SQLITE_CHUNK):
            chunk = list(values[i : i + _SQLITE_CHUNK])
            self.cursor.execute(
                sql.format(**{"in": f"IN ({self.marks(len(chunk))})"}), [*chunk, *extra]
            )
            rows.extend(self.cursor.fetchall())
        return rows

    def write(self, sql: str, rows: list[tuple]) -> None:
        for i in range(0, len(rows), _WRITE_CHUNK):
            self.cursor.executemany(sql, rows[i : i + _WRITE_CHUNK])

    def insert(self, table: sa.Table, columns: Sequence[str], rows: list[tuple]) -> None:
        """Plain inserts: `COPY ... FROM STDIN` on PostgreSQL (one stream, no statement
        per row), `executemany` on SQLite."""
        if not self.postgres:
            self.write(_insert_sql(self, table, columns), rows)
            return
        with self.cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _tuples(frame: pd.DataFrame, columns: Sequence[str], key: Sequence[str] = ()) -> list[tuple]:
    """Rows as tuples of plain Python values (None for missing), without a dict per row,
    in the order of the `key` columns when given: in key order each b-tree page is written
    once rather than at random."""
    order = None
    if key:
        # fixed-width unicode sorts in C, far faster than Python string comparisons
        order = np.lexsort(
            [np.asarray(frame[c].to_numpy(dtype=object), dtype=str) for c in key][::-1]
        )
    arrays = []
    for column in columns:
        series = frame[column]
        values = series.to_numpy(dtype=object)
        missing = series.isna().to_numpy()  # typed: no scan of Python objects for numbers
        if missing.any():
            values = np.where(missing, None, values)
        arrays.append((values if order is None else values[order]).tolist())
    return list(zip(*arrays, strict=True))


def _insert_sql(driver: _Driver, table: sa.Table, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({driver.marks(len(columns))})"


def lock_graph(conn: Connection, hour_us: int) -> None:
    """Take the graph's write lock for this transaction (the first statement of an update)."""
    driver = _Driver(conn)
    if not driver.postgres:
        # Large hours touch far more index pages than SQLite's default 8 MB cache holds.
        driver.cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    driver.cursor.execute(
        "INSERT INTO identity_graph_state (id, last_hour_us, updated_at_us) "
        f"VALUES (1, {driver.mark}, {driver.mark}) ON CONFLICT (id) DO UPDATE SET "
        "last_hour_us = excluded.last_hour_us, updated_at_us = excluded.updated_at_us",
        [hour_us, now_micros()],
    )


def lookup_identifiers(conn: Connection, kind: str, values: Sequence[str]) -> pd.DataFrame:
    """Stored identifiers of `kind` among `values`: value, person_id, linkable."""
    driver = _Driver(conn)
    rows = driver.select_in(
        "SELECT value, person_id, linkable FROM identity_identifiers "
        f"WHERE value {{in}} AND kind = {driver.mark}",
        values,
        [kind],
    )
    return pd.DataFrame(rows, columns=["value", "person_id", "linkable"])


def read_persons(conn: Connection, person_ids: Sequence[str]) -> pd.DataFrame:
    """Stored persons among `person_ids`: every column of `identity_persons`."""
    driver = _Driver(conn)
    rows = driver.select_in(
        f"SELECT {', '.join(PERSON_COLUMNS)} FROM identity_persons WHERE person_id {{in}}",
        person_ids,
    )
    return pd.DataFrame(rows, columns=list(PERSON_COLUMNS))


def insert_identifiers(conn: Connection, frame: pd.DataFrame) -> None:
    """New identifiers (every column of `identity_identifiers`)."""
    if frame.empty:
        return
    driver = _Driver(conn)
    rows = _tuples(frame, IDENTIFIER_COLUMNS, key=("kind", "value"))
    if driver.postgres:  # a boolean column: SQLite takes Python bools as 0/1 already
        position = IDENTIFIER_COLUMNS.index("linkable")
        rows = [(*r[:position], bool(r[position]), *r[position + 1 :]) for r in rows]
    driver.insert(identity_identifiers, IDENTIFIER_COLUMNS, rows)


def mark_unlinkable(conn: Connection, frame: pd.DataFrame) -> None:
    """Stored identifiers (kind, value) that may no longer link anyone."""
    if frame.empty:
        return
    driver = _Driver(conn)
    driver.write(
        f"UPDATE identity_identifiers SET linkable = {driver.mark} "
        f"WHERE kind = {driver.mark} AND value = {driver.mark}",
        [(False, k, v) for k, v in _tuples(frame, ["kind", "value"])],
    )


def insert_persons(conn: Connection, frame: pd.DataFrame) -> None:
    """New persons (every column of `identity_persons`)."""
    if frame.empty:
        return
    driver = _Driver(conn)
    driver.insert(
        identity_persons, PERSON_COLUMNS, _tuples(frame, PERSON_COLUMNS, key=("person_id",))
    )


def update_persons(conn: Connection, frame: pd.DataFrame) -> None:
    """Persons that gained identifiers or absorbed others: every column but the id."""
    if frame.empty:
        return
    driver = _Driver(conn)
    columns = [c for c in PERSON_COLUMNS if c not in ("person_id", "created_hour_us")]
    assignments = ", ".join(f"{c} = {driver.mark}" for c in columns)
    driver.write(
        f"UPDATE identity_persons SET {assignments} WHERE person_id = {driver.mark}",
        _tuples(frame, [*columns, "person_id"]),
    )


def record_merges(conn: Connection, merges: pd.DataFrame, hour_us: int) -> None:
    """Move each merged person's identifiers and click ids to the person it merged into,
    drop the merged person, and record the merge. `merges`: merged_person_id, into_person_id."""
    if merges.empty:
        return
    driver = _Driver(conn)
    pairs = _tuples(merges, ["merged_person_id", "into_person_id"])
    moved = dict(
        driver.select_in(
            "SELECT person_id, COUNT(*) FROM identity_identifiers "
            "WHERE person_id {in} GROUP BY person_id",
            [old for old, _ in pairs],
        )
    )
    driver.write(
        f"UPDATE identity_identifiers SET person_id = {driver.mark} WHERE person_id = {driver.mark}",
        [(new, old) for old, new in pairs],
    )
    # Click ids move by copy (both persons may know the same click id), then go.
    driver.write(
        "INSERT INTO identity_click_ids (person_id, click_type, click_id, first_seen_us, "
        f"first_hour_us) SELECT {driver.mark}, click_type, click_id, first_seen_us, first_hour_us "
        f"FROM identity_click_ids WHERE person_id = {driver.mark} "
        f"ON CONFLICT (person_id, click_type, click_id) DO UPDATE SET {_EARLIEST[driver.postgres]}",
        [(new, old) for old, new in pairs],
    )
    driver.write(
        f"DELETE FROM identity_click_ids WHERE person_id = {driver.mark}",
        [(old,) for old, _ in pairs],
    )
    driver.write(
        f"DELETE FROM identity_persons WHERE person_id = {driver.mark}",
        [(old,) for old, _ in pairs],
    )
    now = now_micros()
    driver.write(
        _insert_sql(
            driver,
            identity_merges,
            ["merged_person_id", "into_person_id", "hour_us", "identifiers_moved", "merged_at_us"],
        )
        + " ON CONFLICT (merged_person_id) DO NOTHING",
        [(old, new, hour_us, int(moved.get(old, 0)), now) for old, new in pairs],
    )


def upsert_click_ids(conn: Connection, frame: pd.DataFrame) -> None:
    """Click ids seen with persons; a click id already known keeps its earliest sighting."""
    if frame.empty:
        return
    driver = _Driver(conn)
    sql = (
        _insert_sql(driver, identity_click_ids, CLICK_COLUMNS)
        + f" ON CONFLICT (person_id, click_type, click_id) DO UPDATE SET {_EARLIEST[driver.postgres]}"
    )
    driver.write(sql, _tuples(frame, CLICK_COLUMNS, key=("person_id", "click_type", "click_id")))


def read_person_clicks(
    conn: Connection, person_ids: Sequence[str], since_us: int, until_us: int
) -> pd.DataFrame:
    """Click ids of the given persons first seen in [since, until]."""
    driver = _Driver(conn)
    rows = driver.select_in(
        "SELECT person_id, click_type, click_id, first_seen_us FROM identity_click_ids "
        f"WHERE person_id {{in}} AND first_seen_us >= {driver.mark} "
        f"AND first_seen_us <= {driver.mark}",
        person_ids,
        [since_us, until_us],
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


def _count(conn: Connection, table: sa.Table, *where: Any) -> int:
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar() or 0
    )


def graph_totals(engine: Engine) -> dict[str, int]:
    """Sizes of the graph: persons, identifiers (and unlinkable ones), merges, click ids."""
    with engine.connect() as conn:
        return {
            "persons": _count(conn, identity_persons),
            "identifiers": _count(conn, identity_identifiers),
            "unlinkable_identifiers": _count(
                conn, identity_identifiers, identity_identifiers.c.linkable.is_(False)
            ),
            "merges": _count(conn, identity_merges),
            "click_ids": _count(conn, identity_click_ids),
        }
