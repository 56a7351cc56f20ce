"""Building platform JSON a column at a time, with Arrow compute.

A Python dict per event plus `json.dumps` costs about 10 s per million events per
destination. Here a `JsonObject` collects, member by member, column "pieces" (the member's
`,"key":` prefix where the event has a value and nothing where it hasn't, the value's text,
its closing quote or bracket), and assembles every event's object in one Arrow call. The
events of a request are then one slice of a single buffer. Only values that need JSON
escaping (rare: quotes, backslashes, control characters) and digests of distinct location
values go through Python.

Arrow's string joins cost about 100 ns per row per call plus a little per argument, so the
code keeps calls few and arguments many. It avoids `binary_join_element_wise(...,
null_handling="skip")`: in pyarrow 26 that drops the rows where every input is null.

Every array here is `large_string` (64-bit offsets): an hour of a million events can hold
more than the 2 GB a 32-bit string array allows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from conversion_platform import events

TEXT = pa.large_string()
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: Bytes a JSON string cannot hold as they are: control characters, `"` and `\`.
_ESCAPE_BYTES = np.zeros(256, dtype=bool)
_ESCAPE_BYTES[:0x20] = True
_ESCAPE_BYTES[[0x22, 0x5C]] = True
#: Lowercase hex digits, what a SHA-256 digest is written in.
_HEX_BYTES = np.zeros(256, dtype=bool)
_HEX_BYTES[list(b"0123456789abcdef")] = True
#: The Arrow JSON reader parses items in one block up to this size (consistent types).
_ITEMS_BLOCK_BYTES = 64 << 20


def lit(text: str) -> pa.Scalar:
    """A constant piece of JSON text."""
    return pa.scalar(text, TEXT)


EMPTY = lit("")


def null_text(n: int) -> pa.Array:
    return pa.nulls(n, TEXT)


def concat(*parts: pa.Array | pa.Scalar) -> pa.Array:
    """The parts joined without a separator; null when any part is null."""
    return pc.binary_join_element_wise(*parts, EMPTY)


def is_present(values: pa.Array) -> np.ndarray:
    """A numpy bool mask of the non-null values."""
    return values.is_valid().to_numpy(zero_copy_only=False)


def coalesce(*values: pa.Array) -> pa.Array:
    """The first non-null value per event."""
    return pc.coalesce(*values)


def with_default(values: pa.Array, default: object) -> pa.Array:
    """`values`, with `default` (when configured) where a value is missing."""
    return values.fill_null(lit(str(default))) if default else values


def mask_where(values: pa.Array, keep: np.ndarray) -> pa.Array:
    """`values` where `keep` is true, null elsewhere."""
    return pc.if_else(pa.array(keep, type=pa.bool_()), values, pa.scalar(None, values.type))


# --- pandas -> Arrow -------------------------------------------------------------------------


def has_column(frame: pd.DataFrame, column: str) -> bool:
    """Whether `frame` has the column. A column of the hour the frame was read or taken
    without (a destination whose `columns_read` misses it) raises: it must never read as
    nulls."""
    if column in frame.columns:
        return True
    if column in frame.attrs.get(events.LEFT_OUT_COLUMNS, ()):
        raise KeyError(
            f"column {column!r} was left out of the events: add it to the destination's "
            "columns_read"
        )
    return False


def text_column(frame: pd.DataFrame, column: str) -> pa.Array:
    """The column as Arrow text; missing values and empty strings are null.

    A pandas `string[pyarrow]` column converts without copying; a Python-backed one
    costs one pass over its objects.
    """
    if not has_column(frame, column):
        return null_text(len(frame))
    series = frame[column]
    dtype = series.dtype
    values: object
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
    if not has_column(frame, column):
        return pa.nulls(len(frame), pa.float64())
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan
    )
    return pa.array(values, type=pa.float64(), mask=~np.isfinite(values))


def unix_seconds(frame: pd.DataFrame, column: str = "event_time") -> np.ndarray:
    """Whole Unix seconds (int64) of a UTC timestamp column."""
    times = frame[column]
    if not isinstance(times.dtype, pd.DatetimeTZDtype):  # already instants: no parsing
        times = pd.to_datetime(times, utc=True)
    nanos = times.to_numpy(dtype="datetime64[ns]").astype("int64")
    return nanos // 1_000_000_000


def formatted_times(seconds: np.ndarray, pattern: str) -> pa.Array:
    """Unix seconds formatted in UTC with an strftime pattern (`%Y-%m-%dT%H:%M:%SZ`, ...).

    Each distinct second is formatted once: an hour has at most 3,600 of them, and
    Arrow's strftime costs about a microsecond a value (0.2 s a destination at 1M)."""
    distinct, inverse = np.unique(seconds, return_inverse=True)
    stamps = pa.array(distinct, type=pa.timestamp("s", tz="UTC"))
    texts = pc.strftime(stamps, format=pattern).cast(TEXT)
    return texts.take(pa.array(inverse.reshape(-1)))


# --- JSON values -----------------------------------------------------------------------------


def escaped(values: pa.Array) -> pa.Array:
    """What goes between a JSON string's quotes for each value (escaped where it must be)."""
    values = values.cast(TEXT)
    if len(values) == 0 or values.null_count == len(values):
        return values
    offsets = value_offsets(values)
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    flagged = np.flatnonzero(_ESCAPE_BYTES[data])
    if len(flagged) == 0:
        return values
    rows = np.unique(np.searchsorted(offsets[1:] - offsets[0], flagged, side="right"))
    mask = np.zeros(len(values), dtype=bool)
    mask[rows] = True
    texts = values.take(pa.array(rows)).to_pylist()
    replacements = pa.array(
        [None if t is None else orjson.dumps(t).decode()[1:-1] for t in texts], type=TEXT
    )
    return pc.replace_with_mask(values, pa.array(mask), replacements)


def number_text(values: pa.Array) -> pa.Array:
    """Finite numbers as JSON number text (`19.99`, `2`, `1e+21`); null otherwise."""
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_finite(values), values, pa.scalar(None, values.type))
    return values.cast(pa.string()).cast(TEXT)


def integer_text(values: np.ndarray) -> pa.Array:
    """Integers as JSON number text."""
    return pa.array(values, type=pa.int64()).cast(pa.string()).cast(TEXT)


@dataclass
class _Member:
    key: str
    opening: str  # text after `"key":` (a quote, a bracket, or the whole constant value)
    value: pa.Array | JsonObject | None
    closing: str
    valid: np.ndarray | None  # None: present for every event


class JsonObject:
    """One JSON object per event, assembled from column pieces in one Arrow call.

    Each member contributes pieces: its `"key":` (with a comma before it unless it is the
    event's first member present) plus the value's opening quote or bracket where the event
    has a value, nothing where it hasn't; the value's text; its closing quote or bracket.
    Nested objects contribute their own pieces in place, so an event with its nested
    objects is built by a single join, writing each byte once.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._members: list[_Member] = []
        self.present = np.zeros(n, dtype=bool)

    def _member(
        self,
        key: str,
        opening: str,
        value: pa.Array | JsonObject | None,
        closing: str,
        valid: np.ndarray | None,
    ) -> None:
        if valid is not None and valid.all():
            valid = None
        self._members.append(_Member(key, opening, value, closing, valid))
        if valid is None:
            self.present[:] = True
        else:
            self.present |= valid

    def string(self, key: str, values: pa.Array) -> JsonObject:
        """A JSON string (escaped where needed); absent where null."""
        self._member(key, '"', escaped(values), '"', is_present(values))
        return self

    def plain_string(self, key: str, values: pa.Array) -> JsonObject:
        """A JSON string of values that never need escaping (digests, codes, dates)."""
        self._member(key, '"', values.cast(TEXT), '"', is_present(values))
        return self

    def digest_list(self, key: str, digests: pa.Array) -> JsonObject:
        """`["<digest>"]`; absent where null."""
        self._member(key, '["', digests.cast(TEXT), '"]', is_present(digests))
        return self

    def string_list(self, key: str, values: pa.Array) -> JsonObject:
        """`["<value>"]`, escaped where needed; absent where null."""
        self._member(key, '["', escaped(values), '"]', is_present(values))
        return self

    def number(self, key: str, values: pa.Array) -> JsonObject:
        """A JSON number; absent where null (or not finite)."""
        text = number_text(values)
        self._member(key, "", text, "", is_present(text))
        return self

    def raw(self, key: str, json_text: pa.Array) -> JsonObject:
        """A value that already is JSON text (an array, an object); absent where null."""
        self._member(key, "", json_text.cast(TEXT), "", is_present(json_text))
        return self

    def constant(self, key: str, json_text: str, where: np.ndarray | None = None) -> JsonObject:
        """The same JSON value for every event (or where `where` is true)."""
        self._member(key, json_text, None, "", where)
        return self

    def object(self, key: str, child: JsonObject, always: bool = False) -> JsonObject:
        """A nested object; absent for events where it would be empty (unless `always`)."""
        self._member(key, "{", child, "}", None if always else child.present.copy())
        return self

    def pieces(self) -> list[pa.Array | Choice]:
        """The object's members as pieces to join (without the braces)."""
        n = len(self._members)
        # Per event, the first member present: it alone goes without a leading comma.
        first = np.full(self.n, n, dtype=np.int32)
        always_before = False
        out: list[pa.Array | Choice] = []
        for index, member in enumerate(self._members):
            bare = f'"{member.key}":{member.opening}'
            if member.valid is None:
                if index == 0 or always_before:
                    out.append(Choice(None, (bare if index == 0 else "," + bare,)))
                else:
                    codes = np.where(first > index, 0, 1).astype(np.int8)
                    out.append(Choice(codes, (bare, "," + bare)))
                first = np.minimum(first, index)
                always_before = True
            else:
                if always_before:
                    codes = np.where(member.valid, 1, 0).astype(np.int8)
                    out.append(Choice(codes, ("", "," + bare)))
                else:
                    codes = np.where(member.valid, np.where(first > index, 1, 2), 0)
                    out.append(Choice(codes.astype(np.int8), ("", bare, "," + bare)))
                    first = np.where(member.valid & (first > index), index, first)
            if isinstance(member.value, JsonObject):
                out.extend(member.value.pieces())
            elif member.value is not None:
                out.append(member.value)  # a null joins as nothing (`join_pieces`)
            if member.closing:
                if member.valid is None:
                    out.append(Choice(None, (member.closing,)))
                else:
                    out.append(Choice(member.valid.astype(np.int8), ("", member.closing)))
        return out

    def build(self, after: str = "") -> pa.Array:
        """`{...}` for every event (`{}` where no member is present), followed by `after`
        (a comma: an event's object as delivery joins it, at no extra cost)."""
        pieces = [Choice(None, ("{",)), *self.pieces(), Choice(None, ("}" + after,))]
        return join_pieces(merge_choices(pieces), self.n)

    def build_or_null(self) -> pa.Array:
        """`{...}`, or null for events without any member."""
        return mask_where(self.build(), self.present)


@dataclass(frozen=True)
class Choice:
    """A constant piece of JSON text per event: `texts[codes[i]]` (`texts[0]` for every
    event when `codes` is None)."""

    codes: np.ndarray | None
    texts: tuple[str, ...]

    def then(self, other: Choice) -> Choice:
        """This piece followed by `other`, as one piece."""
        if self.codes is None:
            return Choice(other.codes, tuple(self.texts[0] + t for t in other.texts))
        if other.codes is None:
            return Choice(self.codes, tuple(t + other.texts[0] for t in self.texts))
        codes = self.codes.astype(np.int16) * len(other.texts) + other.codes
        return Choice(codes, tuple(a + b for a in self.texts for b in other.texts))

    def piece(self) -> pa.Array | pa.Scalar:
        if self.codes is None:
            return lit(self.texts[0])
        return _choose(self.codes, self.texts)


#: Most texts a merged `Choice` may have (merging multiplies their numbers).
_MAX_CHOICES = 64


def merge_choices(pieces: list[pa.Array | Choice]) -> list[pa.Array | pa.Scalar]:
    """Adjacent constant pieces merged into one (a member's closing quote and the next
    member's key become one piece): fewer arguments to the join, fewer arrays to build."""
    out: list[pa.Array | pa.Scalar] = []
    pending: Choice | None = None
    for piece in pieces:
        if not isinstance(piece, Choice):
            if pending is not None:
                out.append(pending.piece())
                pending = None
            out.append(piece)
        elif pending is None:
            pending = piece
        elif len(pending.texts) * len(piece.texts) <= _MAX_CHOICES:
            pending = pending.then(piece)
        else:
            out.append(pending.piece())
            pending = piece
    if pending is not None:
        out.append(pending.piece())
    return out


def _choose(codes: np.ndarray, texts: tuple[str, ...]) -> pa.Array:
    """texts[code] for each event (one of a few constant pieces)."""
    return pa.array(list(texts), type=TEXT).take(pa.array(codes))


def join_pieces(pieces: list[pa.Array | pa.Scalar], n: int) -> pa.Array:
    """The pieces (columns of n values, or constants) joined per event, in one call; a
    null piece joins as nothing (Arrow's `replace` null handling, which, unlike `skip`,
    keeps rows whose pieces are all null)."""
    if not any(isinstance(p, pa.Array) for p in pieces):
        return pa.repeat(lit("".join(p.as_py() for p in pieces)), n)
    return pc.binary_join_element_wise(*pieces, EMPTY, null_handling="replace", null_replacement="")


def list_of_present(values: list[pa.Array]) -> pa.Array:
    """`[a,b,...]` of the JSON values present per event, null when none is."""
    element = JsonObject(len(values[0]))
    pieces: list[pa.Array | pa.Scalar] = [lit("[")]
    first = np.full(element.n, len(values), dtype=np.int32)
    for index, value in enumerate(values):
        valid = is_present(value)
        codes = np.where(valid, np.where(first > index, 1, 2), 0).astype(np.int8)
        pieces.append(_choose(codes, ("", "", ",")))
        pieces.append(value)
        first = np.where(valid & (first > index), index, first)
        element.present |= valid
    pieces.append(lit("]"))
    return mask_where(join_pieces(pieces, element.n), element.present)


def hex_digests(values: pa.Array) -> pa.Array:
    """Values that already are SHA-256 hex digests; anything else becomes null.

    A guard, not a transformation: the hashed columns hold digests by construction, and a
    value that is not one must never reach a platform (it could be plaintext).
    """
    values = values.cast(TEXT)
    if len(values) == 0 or values.null_count == len(values):
        return values
    offsets = value_offsets(values)
    ok = (np.diff(offsets) == 64) | ~is_present(values)
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    flagged = np.flatnonzero(~_HEX_BYTES[data])
    if len(flagged):
        ok[np.searchsorted(offsets[1:] - offsets[0], flagged, side="right")] = False
    if ok.all():
        return values
    return mask_where(values, ok)


def sha256_of(values: pa.Array) -> pa.Array:
    """SHA-256 hex of each (already normalised) value, once per distinct value.

    A value that already is a 64-character lowercase hex digest passes through.
    """
    return apply_text(
        values,
        lambda v: v if _SHA256_HEX.match(v) else hashlib.sha256(v.encode("utf-8")).hexdigest(),
    )


def map_text(values: pa.Array, mapping: dict[str, str]) -> pa.Array:
    """Each value through `mapping` (values not in it become null), once per distinct value."""
    return apply_text(values, mapping.get)


def apply_text(values: pa.Array, function: Callable[[str], str | None]) -> pa.Array:
    """`function` applied once per distinct value (None results become null)."""
    if len(values) == 0 or values.null_count == len(values):
        return values.cast(TEXT)
    distinct = pc.unique(values.drop_null())
    mapped = [function(v) for v in distinct.to_pylist()]
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
    lines = concat(lit('{"i":'), items, lit("}\n")).fill_null(lit("{}\n"))
    buffer = contiguous_text(lines)
    table = pa_json.read_json(
        pa.BufferReader(buffer),
        read_options=pa_json.ReadOptions(
            block_size=min(max(1 << 20, buffer.size + 1), _ITEMS_BLOCK_BYTES)
        ),
    )
    if table.num_rows != len(items) or "i" not in table.column_names:
        raise pa.ArrowInvalid("items rows do not line up")
    column = table.column("i").combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
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
    struct = pa.StructArray.from_arrays(
        [identifier.cast(TEXT), numeric("quantity"), numeric("price")], fields=list(ITEM_TYPE)
    )
    offsets = column.offsets.cast(pa.int64())
    return pa.LargeListArray.from_arrays(offsets, struct, mask=column.is_null())


def _parse_items_python(items: pa.Array) -> pa.Array:
    parsed: list[list[dict[str, object]] | None] = []
    for text in items.to_pylist():
        try:
            value = orjson.loads(text) if text is not None else None
        except orjson.JSONDecodeError:
            value = None
        rows = [
            {
                "id": None if item.get("id") is None else str(item.get("id")),
                "quantity": _number(item.get("quantity")),
                "price": _number(item.get("price")),
            }
            for item in (value if isinstance(value, list) else [])
            if isinstance(item, dict)
        ]
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
    element = JsonObject(len(values))
    element.string(id_key, values.field("id"))
    element.number(quantity_key, values.field("quantity"))
    element.number(price_key, values.field("price"))
    lists = pa.LargeListArray.from_arrays(items.offsets, element.build(), mask=items.is_null())
    joined = pc.binary_join(lists, lit(","))
    has_items = is_present(items) & (pc.list_value_length(items).fill_null(0).to_numpy() > 0)
    return mask_where(concat(lit("["), joined.cast(TEXT), lit("]")), has_items)


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
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)
    return offsets[values.offset : values.offset + len(values) + 1]
