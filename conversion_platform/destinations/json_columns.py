"""Building platform JSON a column at a time, with Arrow compute.

A Python dict per event plus `json.dumps` costs about 10 s per million events per
destination. Here each JSON member is built for all events at once (`"em":["<hash>"]`,
null where the event has no value), members are joined into objects with nulls skipped,
and the events of a request are one slice of a single buffer. Only values that need
JSON escaping (rare: quotes, backslashes, control characters) and digests of distinct
location values go through Python.

Every array here is `large_string` (64-bit offsets): an hour of a million events can
hold more than the 2 GB a 32-bit string array allows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

TEXT = pa.large_string()
#: Characters a JSON string literal cannot hold as they are.
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SHA256_HEX_ARROW = r"^[0-9a-f]{64}$"


def lit(text: str) -> pa.Scalar:
    """A constant piece of JSON text."""
    return pa.scalar(text, TEXT)


def null_text(n: int) -> pa.Array:
    return pa.nulls(n, TEXT)


# --- pandas -> Arrow -------------------------------------------------------------------------


def text_column(frame: pd.DataFrame, column: str) -> pa.Array:
    """The column as Arrow text; missing values and empty strings are null.

    A pandas `string[pyarrow]` column converts without copying; a Python-backed one
    costs one pass over its objects.
    """
    if column not in frame.columns:
        return null_text(len(frame))
    series = frame[column]
    values: object
    dtype = series.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "python":
        values = getattr(series.array, "_ndarray", None)
        if values is None:
            values = series.to_numpy(dtype=object, na_value=None)
    elif isinstance(dtype, pd.StringDtype | pd.ArrowDtype):
        values = series.array
    else:
        values = series.astype("string").to_numpy(dtype=object, na_value=None)
    try:
        array = pa.array(values, type=TEXT, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):
        # Lone surrogates and the like: keep what can be kept, as the platforms would.
        cleaned = [
            None if v is None or v is pd.NA else str(v).encode("utf-8", "replace").decode()
            for v in series.astype(object).where(series.notna(), None)
        ]
        array = pa.array(cleaned, type=TEXT)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return blank_to_null(array)


def blank_to_null(values: pa.Array) -> pa.Array:
    """Empty strings become null (a platform reads `""` as a bad value, not as absent)."""
    if len(values) == 0 or values.null_count == len(values):
        return values
    empty = pc.equal(pc.binary_length(values), 0)
    if not pc.any(empty).as_py():
        return values
    return pc.if_else(empty, null_text(len(values)), values)


def float_values(frame: pd.DataFrame, column: str) -> pa.Array:
    """A numeric column as float64; NaN and infinities are null."""
    if column not in frame.columns:
        return pa.nulls(len(frame), pa.float64())
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan
    )
    return pa.array(values, type=pa.float64(), mask=~np.isfinite(values))


def unix_seconds(frame: pd.DataFrame, column: str = "event_time") -> np.ndarray:
    """Whole Unix seconds (int64) of a UTC timestamp column."""
    times = pd.to_datetime(frame[column], utc=True)
    return (times.to_numpy(dtype="datetime64[ns]").astype("int64") // 1_000_000_000).astype("int64")


def formatted_times(seconds: np.ndarray, pattern: str) -> pa.Array:
    """Unix seconds formatted in UTC with an strftime pattern (`%Y-%m-%dT%H:%M:%SZ`, ...)."""
    stamps = pa.array(seconds, type=pa.timestamp("s", tz="UTC"))
    return pc.strftime(stamps, format=pattern).cast(TEXT)


# --- JSON values -----------------------------------------------------------------------------


def json_strings(values: pa.Array) -> pa.Array:
    """Each value as a JSON string literal (`"..."`); null stays null."""
    values = values.cast(TEXT)
    quoted = pc.binary_join_element_wise(lit('"'), values, lit('"'), lit(""))
    if len(values) == 0:
        return quoted
    needs = pc.match_substring_regex(values, _NEEDS_ESCAPE)
    if not pc.any(needs).as_py():
        return quoted
    positions = np.flatnonzero(needs.fill_null(False).to_numpy(zero_copy_only=False))
    escaped = [orjson.dumps(v).decode() for v in values.take(pa.array(positions)).to_pylist()]
    python = quoted.to_pylist()
    for position, text in zip(positions.tolist(), escaped, strict=True):
        python[position] = text
    return pa.array(python, type=TEXT)


def json_numbers(values: pa.Array) -> pa.Array:
    """Finite numbers as JSON numbers (`19.99`, `2`, `1e+21`); null otherwise."""
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_finite(values), values, pa.scalar(None, values.type))
    return values.cast(pa.string()).cast(TEXT)


def json_integers(values: np.ndarray) -> pa.Array:
    """Integers as JSON numbers."""
    return pa.array(values, type=pa.int64()).cast(pa.string()).cast(TEXT)


def json_bool(flags: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(flags, type=pa.bool_()), lit("true"), lit("false"))


def const(text: str, n: int) -> pa.Array:
    """The same JSON text for every event."""
    return pa.repeat(lit(text), n)


def mask_where(values: pa.Array, keep: np.ndarray | pa.Array) -> pa.Array:
    """`values` where `keep` is true, null elsewhere."""
    if isinstance(keep, np.ndarray):
        keep = pa.array(keep, type=pa.bool_())
    return pc.if_else(keep, values, pa.scalar(None, values.type))


# --- JSON structure --------------------------------------------------------------------------


def concat(*parts: pa.Array | pa.Scalar) -> pa.Array:
    """The parts joined without a separator; null when any part is null."""
    return pc.binary_join_element_wise(*parts, lit(""))


def member(key: str, value_json: pa.Array) -> pa.Array:
    """`"key":<value>`, null where the value is null."""
    return pc.binary_join_element_wise(lit(f'"{key}":'), value_json, lit(""))


def join_members(members: Iterable[pa.Array]) -> pa.Array:
    """Members joined with commas, nulls skipped (`""` when every member is null).

    Not `binary_join_element_wise(..., null_handling="skip")`: in pyarrow 26 it drops the
    rows where every input is null, so the output comes out shorter than its inputs.
    """
    members = list(members)
    if len(members) == 1:
        return members[0].fill_null(lit(""))
    # Each present member followed by a comma, absent ones empty; then the one comma left
    # at the end goes (a member is `"key":<JSON value>`, and no JSON value ends in a comma).
    with_commas = [concat(m, lit(",")).fill_null(lit("")) for m in members]
    return pc.utf8_rtrim(concat(*with_commas), characters=",")


def obj(*members: pa.Array) -> pa.Array:
    """`{...}` of the members present (`{}` when none is)."""
    return concat(lit("{"), join_members(members), lit("}"))


def obj_or_null(*members: pa.Array) -> pa.Array:
    """`{...}` of the members present, null when none is."""
    inner = join_members(members)
    return concat(lit("{"), blank_to_null(inner), lit("}"))


def list_of_one(value_json: pa.Array) -> pa.Array:
    """`[<value>]`, null where the value is null."""
    return concat(lit("["), value_json, lit("]"))


def list_of_present(values: Iterable[pa.Array]) -> pa.Array:
    """`[a,b,...]` of the values present, null when none is."""
    inner = join_members(values)
    return concat(lit("["), blank_to_null(inner), lit("]"))


# --- hashing -------------------------------------------------------------------------------


def hex_digests(values: pa.Array) -> pa.Array:
    """Values that already are SHA-256 hex digests; anything else becomes null."""
    if len(values) == 0 or values.null_count == len(values):
        return values
    ok = pc.match_substring_regex(values, _SHA256_HEX_ARROW)
    if pc.all(ok).as_py():
        return values
    return pc.if_else(ok, values, pa.scalar(None, TEXT))


def sha256_of(values: pa.Array) -> pa.Array:
    """SHA-256 hex of each (already normalised) value, once per distinct value.

    A value that already is a 64-character lowercase hex digest passes through.
    """
    if len(values) == 0 or values.null_count == len(values):
        return values
    distinct = pc.unique(values.drop_null())
    digests = [
        v if _SHA256_HEX.match(v) else hashlib.sha256(v.encode("utf-8")).hexdigest()
        for v in distinct.to_pylist()
    ]
    return pa.array(digests, type=TEXT).take(pc.index_in(values, value_set=distinct))


def map_text(values: pa.Array, mapping: dict[str, str | None]) -> pa.Array:
    """Each value through `mapping` (values not in it become null), once per distinct value."""
    if len(values) == 0:
        return values
    distinct = pc.unique(values.drop_null())
    mapped = [mapping.get(v) for v in distinct.to_pylist()]
    return pa.array(mapped, type=TEXT).take(pc.index_in(values, value_set=distinct))


def apply_text(values: pa.Array, function: object) -> pa.Array:
    """`function` applied once per distinct value (None results become null)."""
    if len(values) == 0:
        return values
    distinct = pc.unique(values.drop_null())
    mapped = [function(v) for v in distinct.to_pylist()]  # type: ignore[operator]
    return pa.array(mapped, type=TEXT).take(pc.index_in(values, value_set=distinct))


# --- items -----------------------------------------------------------------------------------

ITEM_TYPE = pa.struct(
    [("id", pa.large_string()), ("quantity", pa.float64()), ("price", pa.float64())]
)


def parse_items(frame: pd.DataFrame) -> pa.Array:
    """The `items` JSON arrays as Arrow lists of {id, quantity, price} (null without items).

    Parsed in one go by Arrow's JSON reader; an hour whose items disagree in type (an id
    that is a number in one order and text in another) is parsed in Python instead.
    """
    n = len(frame)
    items = text_column(frame, "items")
    if n == 0 or items.null_count == n:
        return pa.nulls(n, pa.large_list(ITEM_TYPE))
    try:
        return _parse_items_arrow(items)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, KeyError):
        return _parse_items_python(items)


def _parse_items_arrow(items: pa.Array) -> pa.Array:
    lines = pc.binary_join_element_wise(lit('{"i":'), items, lit("}\n"), lit(""))
    lines = lines.fill_null(lit("{}\n"))
    buffer = contiguous_text(lines)
    block = max(1 << 20, buffer.size + 1)
    table = pa_json.read_json(
        pa.BufferReader(buffer),
        read_options=pa_json.ReadOptions(block_size=min(block, (1 << 31) - 1)),
    )
    if table.num_rows != len(items):
        raise pa.ArrowInvalid("items rows do not line up")
    if "i" not in table.column_names:
        raise pa.ArrowInvalid("no items parsed")
    column = table.column("i").combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise pa.ArrowInvalid("items is not a list")
    values = column.flatten()
    if not pa.types.is_struct(values.type):
        raise pa.ArrowInvalid("items are not objects")
    fields = {values.type.field(i).name: values.field(i) for i in range(values.type.num_fields)}
    length = len(values)

    def numeric(name: str) -> pa.Array:
        if name not in fields:
            return pa.nulls(length, pa.float64())
        return fields[name].cast(pa.float64())

    identifier = fields.get("id")
    if identifier is None:
        identifier = pa.nulls(length, TEXT)
    elif pa.types.is_floating(identifier.type):
        raise pa.ArrowInvalid("fractional item ids")
    identifier = identifier.cast(TEXT)
    struct = pa.StructArray.from_arrays(
        [identifier, numeric("quantity"), numeric("price")], fields=list(ITEM_TYPE)
    )
    offsets = column.offsets.cast(pa.int64())
    return pa.LargeListArray.from_arrays(offsets, struct, mask=column.is_null())


def _parse_items_python(items: pa.Array) -> pa.Array:
    parsed: list[list[dict[str, object]] | None] = []
    for text in items.to_pylist():
        if text is None:
            parsed.append(None)
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed.append(None)
            continue
        rows = []
        for item in value if isinstance(value, list) else []:
            if not isinstance(item, dict):
                continue
            identifier = item.get("id")
            rows.append(
                {
                    "id": None if identifier is None else str(identifier),
                    "quantity": _number(item.get("quantity")),
                    "price": _number(item.get("price")),
                }
            )
        parsed.append(rows or None)
    return pa.array(parsed, type=pa.large_list(ITEM_TYPE))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def items_json(items: pa.Array, keys: tuple[str, str, str]) -> pa.Array:
    """Each event's items as a JSON array of objects with the platform's key names for
    (id, quantity, price); null for events without items."""
    values = items.flatten()
    if len(values) == 0:
        return null_text(len(items))
    id_key, quantity_key, price_key = keys
    element = obj(
        member(id_key, json_strings(values.field("id"))),
        member(quantity_key, json_numbers(values.field("quantity"))),
        member(price_key, json_numbers(values.field("price"))),
    )
    offsets = items.offsets
    lists = pa.LargeListArray.from_arrays(offsets, element, mask=items.is_null())
    joined = blank_to_null(pc.binary_join(lists, lit(",")))
    return concat(lit("["), joined, lit("]"))


# --- the events of an hour as one buffer ------------------------------------------------------


def contiguous_text(values: pa.Array) -> pa.Buffer:
    """All values of a null-free text array, back to back, as one buffer (no copy)."""
    offsets = value_offsets(values)
    data = values.buffers()[2]
    if data is None:
        return pa.py_buffer(b"")
    return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def value_offsets(values: pa.Array) -> np.ndarray:
    """The int64 offsets (length n+1) of a large_string array, slice-aware."""
    buffer = values.buffers()[1]
    offsets = np.frombuffer(buffer, dtype=np.int64)
    return offsets[values.offset : values.offset + len(values) + 1]


def quoted(values: pa.Array) -> pa.Array:
    """`"value"` for values known to need no escaping (hex digests, codes, numbers as text)."""
    return concat(lit('"'), values.cast(TEXT), lit('"'))


def coalesce(*values: pa.Array) -> pa.Array:
    """The first non-null value per event."""
    return pc.coalesce(*values)


def is_present(values: pa.Array) -> np.ndarray:
    """A numpy bool mask of the non-null values."""
    return values.is_valid().to_numpy(zero_copy_only=False)
