"""An hour of the landing table read as CSV text that the database writes and Arrow parses.

Fetching the hour's rows as tuples makes a Python object of every value (42 columns of
every row), and turning those objects into columns cost as much as the query: at
300,000 rows, about 5 s in the driver's fetch and 5 s more to build, convert and free the
objects. Here the database renders each row as one line of CSV and Arrow's CSV reader,
in C++, turns a block of lines into typed columns.

* SQLite writes a line with one `printf` of SQL literals (`%Q`: text in single quotes
  with quotes doubled, so newlines and commas stay inside; a null as the bare word
  `NULL`; integers quoted too). It does not write doubles: its decimal text of a double
  is not always that double (1.7976931348623157e308 comes back as ...56e308), so the
  float column comes as a value of its own beside each line. (Concatenating quoted
  fields with `||` cost three times as much as the whole read: every `||` copies the
  line so far.)
* PostgreSQL writes `COPY ... TO STDOUT` in CSV, every value quoted: a null as an empty
  field, an empty text as `""`, a double in its shortest form that reads back the same.

Either way a quoted value is never null (`NULL` and empty text survive as text). A NUL
character would end `%Q`'s text early, but none reaches the landing table: the collector
and server-log ingest refuse text with one, since PostgreSQL cannot store it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy.engine import Connection

from conversion_platform import events
from conversion_platform.store.tables import landing_events

#: The columns an hour is read with, in the CSV's column order (all but `id` and `site`).
LANDING_READ_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in landing_events.columns if c.name not in ("id", "site")
)

_TIME_COLUMNS = frozenset(f"{name}_us" for name in events.TIMESTAMP_COLUMNS)
_FLOAT_COLUMNS = frozenset(events.FLOAT_COLUMNS)
_BOOL_COLUMNS = frozenset(events.BOOL_COLUMNS)

#: Lines of CSV parsed at a time: large enough for Arrow's threads, small enough that the
#: driver's strings of only one block are alive at a time.
_LINES_PER_BLOCK = 50_000

#: Bytes of PostgreSQL's COPY output parsed at a time.
_COPY_BYTES_PER_BLOCK = 64 << 20


def _arrow_type(column: str) -> pa.DataType:
    if column in _TIME_COLUMNS:
        return pa.int64()
    if column in _FLOAT_COLUMNS:
        return pa.float64()
    if column in _BOOL_COLUMNS:
        return pa.int8()  # 0/1 on SQLite; PostgreSQL's boolean is cast to an integer
    return pa.large_string()


#: What each column is parsed as: microseconds, the value as a double, the flag as 0/1.
LANDING_ARROW_SCHEMA = pa.schema([(c, _arrow_type(c)) for c in LANDING_READ_COLUMNS])

#: The columns SQLite writes as text: all but the doubles, which come beside each line.
_SQLITE_TEXT_COLUMNS = tuple(c for c in LANDING_READ_COLUMNS if c not in _FLOAT_COLUMNS)
_SQLITE_VALUE_COLUMNS = tuple(c for c in LANDING_READ_COLUMNS if c in _FLOAT_COLUMNS)


@dataclass(frozen=True)
class CsvDialect:
    """How one database writes landing CSV: its quote character and its null."""

    quote: str
    null: str

    def parse_options(self) -> pa_csv.ParseOptions:
        # Text may hold line breaks, inside quotes.
        return pa_csv.ParseOptions(
            quote_char=self.quote, double_quote=True, newlines_in_values=True
        )

    def convert_options(self) -> pa_csv.ConvertOptions:
        return pa_csv.ConvertOptions(
            column_types=LANDING_ARROW_SCHEMA,
            null_values=[self.null],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )


#: SQLite's `printf('%Q')`: SQL literals.
SQLITE_LITERALS = CsvDialect(quote="'", null="NULL")
#: PostgreSQL's `COPY ... (FORMAT csv)`.
POSTGRES_CSV = CsvDialect(quote='"', null="")


def parse_landing_csv(
    text: bytes, dialect: CsvDialect, columns: tuple[str, ...] = LANDING_READ_COLUMNS
) -> pa.Table:
    """Lines of landing CSV (UTF-8) holding `columns`, as a table of those columns typed
    as in `LANDING_ARROW_SCHEMA`."""
    if not text:
        return pa.schema([LANDING_ARROW_SCHEMA.field(c) for c in columns]).empty_table()
    return pa_csv.read_csv(
        io.BytesIO(text),
        # One block: one Arrow chunk per column for the block's rows (Arrow's default of
        # 1 MiB, or 8, would cut a 50,000-line block into many, and every later `take` on
        # the hour pays for each chunk).
        read_options=pa_csv.ReadOptions(column_names=list(columns), block_size=len(text) + 1),
        parse_options=dialect.parse_options(),
        convert_options=dialect.convert_options(),
    )


def _sqlite_line_query() -> str:
    line = "printf('" + ",".join(["%Q"] * len(_SQLITE_TEXT_COLUMNS)) + "', "
    line += ", ".join(_SQLITE_TEXT_COLUMNS) + ")"
    return (
        f"SELECT {', '.join((line, *_SQLITE_VALUE_COLUMNS))} FROM {landing_events.name}"
        " WHERE received_at_us >= ? AND received_at_us < ?"
        " ORDER BY received_at_us, id"
    )


_SQLITE_LINE_QUERY = _sqlite_line_query()


def _sqlite_block_table(text: bytes, doubles: list[tuple[float | None, ...]]) -> pa.Table:
    table = parse_landing_csv(text, SQLITE_LITERALS, _SQLITE_TEXT_COLUMNS)
    for name, values in zip(_SQLITE_VALUE_COLUMNS, doubles, strict=True):
        table = table.append_column(name, pa.array(values, type=pa.float64()))
    return table.select(list(LANDING_READ_COLUMNS))


def _sqlite_tables(conn: Connection, start_us: int, end_us: int) -> list[pa.Table]:
    """Arrow parses a block on a second thread while SQLite writes the next one (both
    release the GIL), at most one block behind."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    tables: list[pa.Table] = []
    try:
        cursor.execute(_SQLITE_LINE_QUERY, (start_us, end_us))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="landing-csv") as parser:
            pending: Future[pa.Table] | None = None
            while rows := cursor.fetchmany(_LINES_PER_BLOCK):
                lines, *doubles = zip(*rows, strict=True)
                del rows
                text = ("\n".join(lines) + "\n").encode()
                del lines
                if pending is not None:
                    tables.append(pending.result())
                pending = parser.submit(_sqlite_block_table, text, doubles)
            if pending is not None:
                tables.append(pending.result())
    finally:
        cursor.close()
    return tables


def _postgres_copy_query(start_us: int, end_us: int) -> str:
    fields = ", ".join(
        f"{column}::int" if column in _BOOL_COLUMNS else column for column in LANDING_READ_COLUMNS
    )
    # COPY takes no bound parameters; both bounds are integers formatted here. Every
    # value is quoted (FORCE_QUOTE): a block never starts with a bare text, whose leading
    # U+FEFF Arrow would take for a byte-order mark and drop.
    return (
        f"COPY (SELECT {fields} FROM {landing_events.name}"
        f" WHERE received_at_us >= {int(start_us)} AND received_at_us < {int(end_us)}"
        " ORDER BY received_at_us, id) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)"
    )


def _postgres_tables(conn: Connection, start_us: int, end_us: int) -> Iterator[pa.Table]:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        # Doubles in their shortest exact form whatever the server's default; text in the
        # UTF-8 that Arrow reads (this transaction only).
        cursor.execute("SET LOCAL extra_float_digits = 3")
        cursor.execute("SET LOCAL client_encoding = 'UTF8'")
        with cursor.copy(_postgres_copy_query(start_us, end_us)) as copy:
            block = bytearray()
            for data in copy:  # one row a piece
                block += data
                if len(block) >= _COPY_BYTES_PER_BLOCK:
                    yield parse_landing_csv(bytes(block), POSTGRES_CSV)
                    block.clear()
            if block:
                yield parse_landing_csv(bytes(block), POSTGRES_CSV)
    finally:
        cursor.close()


def read_landing_table(conn: Connection, start_us: int, end_us: int) -> pa.Table:
    """The rows received in [start_us, end_us), in (received_at_us, id) order, as one
    Arrow table (`LANDING_ARROW_SCHEMA`), each block of lines parsed as soon as the
    database has written it. SQLite, or PostgreSQL through psycopg 3 (`can_copy`)."""
    if conn.dialect.name == "sqlite":
        tables = _sqlite_tables(conn, start_us, end_us)
    else:
        tables = list(_postgres_tables(conn, start_us, end_us))
    if not tables:
        return LANDING_ARROW_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    _check_flags(table)
    return table


def _check_flags(table: pa.Table) -> None:
    """A flag column holds 0 or 1: SQLite's numeric affinity would keep any other number,
    which must not read as True."""
    for name in _BOOL_COLUMNS:
        bounds = pc.min_max(table.column(name))
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if (low is not None and low < 0) or (high is not None and high > 1):
            raise ValueError(
                f"landing_events.{name} holds values other than 0 and 1 (from {low} to {high})"
            )
