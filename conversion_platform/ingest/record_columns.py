"""Coercing many incoming records at once, column by column.

`records.coerce_record` checks one record in Python: right for a request of a few events,
about 20 µs a record, which is 20 s for an hour of a million log lines. This module gives
the same result for a whole batch, one column at a time: each column is checked with one
pass of cheap tests (is every value a string? does any need trimming?), and a record with
anything unusual in it (a number where text belongs, a time that isn't plain ISO 8601, no
`event_id`, an unknown consent word) goes through `coerce_record` itself. So the fast path
only ever handles the plain case, and the reasons a record is refused are exactly
`coerce_record`'s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from conversion_platform import events
from conversion_platform.ingest.records import _MAX_FIELD_LENGTH as MAX_FIELD_LENGTH
from conversion_platform.ingest.records import _RECORD_FIELDS as RECORD_FIELDS
from conversion_platform.ingest.records import RecordError, coerce_record, drop_malformed_prehashed
from conversion_platform.store.timecodes import utc_instants
from conversion_platform.transform.normalise import (
    hash_identity_columns,
    normalise_location_columns,
)
from conversion_platform.transform.page_urls import click_ids_from_url, scrub_url

#: ISO 8601 with a UTC offset that Python's `datetime.fromisoformat` and Arrow read alike.
_PLAIN_ISO = r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$"
#: Text fields of a coerced record (everything but times, value, items, source, consent).
_TEXT_FIELDS: tuple[str, ...] = tuple(
    f
    for f in events.INCOMING_FIELDS
    if f not in ("event_time", "received_at", "value", "items", "source")
    and not f.startswith("consent_")
)
_CONSENT_WORDS = {
    "granted": events.CONSENT_GRANTED,
    "true": events.CONSENT_GRANTED,
    "yes": events.CONSENT_GRANTED,
    "1": events.CONSENT_GRANTED,
    "denied": events.CONSENT_DENIED,
    "false": events.CONSENT_DENIED,
    "no": events.CONSENT_DENIED,
    "0": events.CONSENT_DENIED,
    "unknown": events.CONSENT_UNKNOWN,
}


@dataclass
class CoercedColumns:
    """The records that coerced, in input order, and the reasons the others were refused."""

    #: `RECORD_FIELDS` columns (object or, for text Arrow read, the model's string dtype;
    #: times as `datetime64[ns, UTC]`), one row per kept record
    frame: pd.DataFrame
    #: input position of each row of `frame`
    positions: np.ndarray
    #: (input position, reason) of each refused record
    failures: list[tuple[int, str]] = field(default_factory=list)


def _missing(values: np.ndarray) -> np.ndarray:
    """True where a value is absent (None; a NaN sent as a value is not absent)."""
    return np.equal(values, None)


def _object_array(values: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    # fromiter never descends into values that are themselves lists (an `items` array).
    return np.fromiter(values, dtype=object, count=n)


def _only_text(values: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """`values` with non-text ones blanked to None; rows holding non-text are marked slow."""
    if (
        pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")
        and not (pd.isna(values) & ~_missing(values)).any()
    ):
        return values  # text and None only (a NaN is skipped by `infer_dtype`, not text)
    odd = np.fromiter(
        (not (v is None or v.__class__ is str) for v in values.tolist()),
        dtype=bool,
        count=len(values),
    )
    slow |= odd
    values = values.copy()
    values[odd] = None
    return values


#: Every character Python's `str.strip()` removes (`str.isspace`), as an RE2 class: Arrow's
#: own trimming knows a different set (not U+001C-U+001F, for one).
_PYTHON_SPACE = (
    r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
    r"\x{202f}\x{205f}\x{3000}]"
)
#: Text that `str.strip()` would change, or that is empty (so None).
_NEEDS_CLEANING = rf"^$|^{_PYTHON_SPACE}|{_PYTHON_SPACE}$"


def _text_column(values: np.ndarray, slow: np.ndarray) -> tuple[np.ndarray | None, pa.Array | None]:
    """Trimmed text with empty strings as None; rows with non-text values are marked slow.

    One Arrow pass reads a column of text and None (anything else makes Arrow refuse
    it) and finds the few values to trim, blank or refuse for their length; only those
    are handled in Python. A column holding anything but text takes the slower path.
    Returns the values, and the same values as Arrow text when Arrow read the column;
    (None, None) for a column of None only."""
    array = _arrow_read(values)
    if array is None:
        return _text_column_in_python(values, slow), None
    if pa.types.is_null(array.type):
        return None, None
    out = values.copy()  # the caller's array stays as it was
    unclean = pc.fill_null(pc.match_substring_regex(array, _NEEDS_CLEANING), False)
    edits = np.flatnonzero(unclean.to_numpy(zero_copy_only=False))
    if len(edits):
        for i in edits.tolist():
            out[i] = out[i].strip() or None
        array = pc.replace_with_mask(array, unclean, pa.array(out[edits], type=pa.string()))
    longest = pc.max(pc.binary_length(array)).as_py()
    if longest is not None and longest > MAX_FIELD_LENGTH:
        # A value's UTF-8 bytes bound its characters: only those over the limit are counted.
        over = pc.fill_null(pc.greater(pc.binary_length(array), MAX_FIELD_LENGTH), False)
        for i in np.flatnonzero(over.to_numpy(zero_copy_only=False)).tolist():
            if out[i] is not None and len(out[i]) > MAX_FIELD_LENGTH:
                slow[i] = True
    return out, array


def _text_column_in_python(values: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """`_text_column` value by value: for columns that hold more than text and None."""
    values = _only_text(values, slow)
    cleaned = [None if v is None else (v.strip() or None) for v in values.tolist()]
    out = np.array(cleaned, dtype=object)  # text and None only: nothing to descend into
    if max(map(len, filter(None, cleaned)), default=0) > MAX_FIELD_LENGTH:
        slow |= np.fromiter(
            (v is not None and len(v) > MAX_FIELD_LENGTH for v in cleaned),
            dtype=bool,
            count=len(cleaned),
        )
    return out


def _mapped_column(
    values: np.ndarray, slow: np.ndarray, convert: Callable[[Any], Any]
) -> np.ndarray:
    """`convert` applied once per distinct text; what it refuses, and non-text, marks slow."""
    array = _arrow_text(values)
    if array is not None:
        # Arrow finds the distinct values; each row then takes its converted value.
        encoded = array.dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        converted = np.array([*map(_converting(convert), distinct), None], dtype=object)
        out = converted[pc.fill_null(encoded.indices, len(distinct)).to_numpy()]
        refused = any(v is _SLOW for v in converted.tolist())
    else:
        out, refused = _mapped_in_python(values, slow, convert)
    if refused:
        is_slow = np.fromiter((v is _SLOW for v in out.tolist()), dtype=bool, count=len(out))
        slow |= is_slow
        out[is_slow] = None
    return out


def _arrow_text(values: np.ndarray) -> pa.Array | None:
    """The values as Arrow text when they are all str or None, not all None (else None)."""
    array = _arrow_read(values)
    return array if array is not None and pa.types.is_string(array.type) else None


def _arrow_read(values: np.ndarray) -> pa.Array | None:
    """The values as Arrow text, or as a null array when all are None; None when they
    hold anything else (or nothing)."""
    if not len(values):
        return None
    try:
        # Arrow infers the type (a NaN, a number or bytes make it refuse, or infer another).
        array = pa.array(values)
    except (pa.ArrowException, UnicodeEncodeError):
        return None
    if isinstance(array, pa.ChunkedArray):
        return None  # over 2 GiB of text in one column: the value-by-value path takes it
    return array if pa.types.is_string(array.type) or pa.types.is_null(array.type) else None


def _converting(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def converted(value: Any) -> Any:
        try:
            return convert(value)
        except (RecordError, TypeError, ValueError, AttributeError):
            return _SLOW

    return converted


def _mapped_in_python(
    values: np.ndarray, slow: np.ndarray, convert: Callable[[Any], Any]
) -> tuple[np.ndarray, bool]:
    """`_mapped_column`'s values and whether any was refused, for columns of more than text."""
    values = _only_text(values, slow)
    missing = _missing(values)
    keys = pd.Series(values, dtype=object)
    converting = _converting(convert)
    mapping = {value: converting(value) for value in keys[~missing].unique()}
    out = keys.map(mapping).to_numpy(dtype=object)
    out[missing] = None
    return out, any(v is _SLOW for v in mapping.values())


_SLOW = object()
#: Text columns `coerce_columns` changes in place after reading them (click ids found in
#: the landing URL; URLs scrubbed), so their Arrow reading is not the final value.
_CHANGED_AFTER_READING = frozenset({"page_url", "referrer", *events.CLICK_ID_COLUMNS})


def _event_name(value: Any) -> Any:
    if value.__class__ is not str:
        return _SLOW
    text = value.strip()
    return text.lower() if text and len(text) <= MAX_FIELD_LENGTH else _SLOW


def _consent(value: Any) -> Any:
    if value.__class__ is not str:
        return _SLOW  # booleans and numbers: `coerce_record` reads them
    if value == "":
        return events.CONSENT_UNKNOWN
    return _CONSENT_WORDS.get(value.strip().lower(), _SLOW)


def _read_page_urls(out: dict[str, Any], none: np.ndarray) -> None:
    """As `coerce_record` does: click ids in the landing URL count as sent, then the page
    URL and the referrer lose anything personal. Each distinct URL is read once."""
    pages = out["page_url"]
    if pages is not none:
        codes, uniques = pd.factorize(pages)
        if len(uniques):
            found = [click_ids_from_url(url) for url in uniques]
            for column in sorted({c for ids in found for c in ids}):
                ids = np.array([f.get(column) for f in found] + [None], dtype=object)[codes]
                target = out[column]
                if target is none:
                    target = out[column] = none.copy()
                empty = pd.isna(target)
                target[empty] = ids[empty]
            out["page_url"] = np.array([scrub_url(u) for u in uniques] + [None], dtype=object)[
                codes
            ]
    referrers = out["referrer"]
    if referrers is not none:
        codes, uniques = pd.factorize(referrers)
        if len(uniques):
            out["referrer"] = np.array([scrub_url(u) for u in uniques] + [None], dtype=object)[
                codes
            ]


def _times(values: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of plain ISO 8601 text; anything else marks slow."""
    nanos = np.zeros(len(values), dtype=np.int64)
    text = _only_text(values, slow)
    missing = _missing(values)
    array = pa.array(text, type=pa.string(), from_pandas=True)
    plain = pc.fill_null(pc.match_substring_regex(array, _PLAIN_ISO), False).to_numpy(
        zero_copy_only=False
    )
    slow |= ~plain & ~missing
    if plain.any():
        try:
            parsed = pc.cast(pc.filter(array, pa.array(plain)), pa.timestamp("ns", tz="UTC"))
            nanos[plain] = parsed.cast(pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # An impossible date, an offset past 24 hours, a time beyond 2262: Python decides.
            slow |= plain
    return nanos


def _values(values: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Money as float (NaN when absent); text, booleans and non-finite numbers mark slow."""
    missing = _missing(values)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("floating", "integer", "mixed-integer-float", "empty"):
        out = np.where(missing, np.nan, values).astype(np.float64)
        slow |= ~missing & ~np.isfinite(out)
        return out
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        if missing[i]:
            continue
        if value.__class__ in (int, float) and math.isfinite(value):
            out[i] = float(value)
        else:
            slow[i] = True
    return out


def _items(values: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Items as compact JSON array text; anything but an array of objects marks slow."""
    out = np.full(len(values), None, dtype=object)
    missing = _missing(values)
    for i in np.flatnonzero(~missing):
        value = values[i]
        text = value.__class__ is str
        if text:
            if value == "":
                continue
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                slow[i] = True
                continue
        if value.__class__ is not list or not all(item.__class__ is dict for item in value):
            slow[i] = True
            continue
        if value or text:  # `coerce_record` keeps "[]" sent as text, drops an empty array
            out[i] = orjson.dumps(value).decode()
    return out


def coerce_columns(
    columns: Mapping[str, Sequence[Any] | np.ndarray],
    count: int,
    source: str,
    received_at: pd.Series | np.ndarray,
    record_at: Callable[[int], Any],
    *,
    default_event_time: bool = False,
) -> CoercedColumns:
    """Coerce `count` incoming records given as columns (field -> values; absent fields omitted).

    `received_at` holds each record's time received (UTC datetimes); `record_at(i)` returns
    record i as sent, for the ones checked by `coerce_record`; `default_event_time` gives a
    record without `event_time` its time received (the pixel's rule). The result's frame
    has the columns `records_to_frame` takes.
    """
    received = pd.Series(received_at)
    if str(received.dtype) != events.TIMESTAMP_DTYPE:
        received = pd.to_datetime(received, utc=True).astype(events.TIMESTAMP_DTYPE)
    received_ns = received.dt.tz_convert(None).to_numpy().view(np.int64)
    slow = np.zeros(count, dtype=bool)
    none = np.full(count, None, dtype=object)

    def column(name: str) -> np.ndarray | None:
        values = columns.get(name)
        if values is None:
            return None
        array = _object_array(values, count)
        return None if _missing(array).all() else array  # None only: as if absent

    out: dict[str, Any] = {}
    # Text columns Arrow read, by name: (the values as `out` holds them, the Arrow array).
    as_arrow: dict[str, tuple[np.ndarray, pa.Array]] = {}

    def text_column(name: str) -> np.ndarray:
        values = columns.get(name)
        if values is None or not count:
            return none
        # Arrow tells a column of None only (a null array): no separate pass for it.
        cleaned, array = _text_column(_object_array(values, count), slow)
        if cleaned is None:
            return none
        if array is not None and name not in _CHANGED_AFTER_READING:
            as_arrow[name] = (cleaned, array)
        return cleaned

    for name in _TEXT_FIELDS:
        if name == "event_name":
            continue
        out[name] = text_column(name)
    names = column("event_name")
    if names is None:
        slow[:] = True  # no event names at all: `coerce_record` says so for each
        out["event_name"] = none
    else:
        event_names = _mapped_column(names, slow, _event_name)
        slow |= _missing(names)
        out["event_name"] = event_names
    raw_times = column("event_time")
    if raw_times is None:
        raw_times = none
    time_missing = _missing(raw_times)
    nanos = _times(raw_times, slow)
    if default_event_time:
        nanos[time_missing] = received_ns[time_missing]
    else:
        slow |= time_missing
    out["event_time"] = nanos
    out["received_at"] = received_ns
    out["source"] = np.full(count, source, dtype=object)
    values = column("value")
    out["value"] = np.full(count, np.nan) if values is None else _values(values, slow)
    items = column("items")
    out["items"] = none if items is None else _items(items, slow)
    for name in ("consent_ad_user_data", "consent_ad_personalization"):
        values = column(name)
        if values is None:
            out[name] = np.full(count, events.CONSENT_UNKNOWN, dtype=object)
        else:
            consent = _mapped_column(values, slow, _consent)
            consent[_missing(values)] = events.CONSENT_UNKNOWN
            out[name] = consent
    currency = out["currency"]
    if currency is not none:
        out["currency"] = _mapped_column(currency, slow, str.upper)
    action = out["action_source"]
    out["action_source"] = (
        np.full(count, "website", dtype=object)
        if action is none
        else _mapped_column(np.where(pd.isna(action), "website", action), slow, str.lower)
    )
    for name in events.HASHED_IDENTITY_COLUMNS:
        out[name] = text_column(name)
    _read_page_urls(out, none)
    slow |= pd.isna(out["event_id"])  # a generated id needs the whole record

    failures: list[tuple[int, str]] = []
    keep = ~slow
    for position in np.flatnonzero(slow):
        try:
            coerced = coerce_record(
                record_at(int(position)),
                source,
                received_at=received.iloc[position].to_pydatetime(),
                default_event_time=received.iloc[position].to_pydatetime()
                if default_event_time
                else None,
            )
        except RecordError as exc:
            failures.append((int(position), str(exc)))
            continue
        try:
            coerced["event_time"] = pd.Timestamp(coerced["event_time"]).value
        except (OverflowError, pd.errors.OutOfBoundsDatetime):
            failures.append((int(position), "event_time is out of range"))
            continue
        keep[position] = True
        for name in RECORD_FIELDS:
            value = coerced[name]
            target = out[name]
            if name == "event_time":
                target[position] = value
            elif name == "received_at":
                continue
            elif name == "value":
                target[position] = np.nan if value is None else value
            else:
                if target is none:
                    target = out[name] = none.copy()
                target[position] = value
    positions = np.flatnonzero(keep)
    every = len(positions) == count
    filled = np.flatnonzero(keep & slow)  # rows `coerce_record` filled in
    columns: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        held = as_arrow.get(name)
        if held is not None and held[0] is out[name]:  # not replaced since it was read
            text = _kept_text(held[1], out[name], filled, None if every else positions)
            if text is not None:
                columns[name] = text
                continue
        values = out[name] if every else out[name][positions]
        if name in events.TIMESTAMP_COLUMNS:
            values = pd.DatetimeIndex(values.view("datetime64[ns]")).tz_localize("UTC")
        elif name == "value":
            values = values.astype(np.float64)
        columns[name] = values
    return CoercedColumns(column_frame(columns), positions, failures)


def _kept_text(
    array: pa.Array, values: np.ndarray, filled: np.ndarray, positions: np.ndarray | None
) -> pd.api.extensions.ExtensionArray | None:
    """The kept rows of a text column Arrow read, as the model's string array: the rows
    `coerce_record` filled in (`filled`) are taken from `values`. Saves converting the
    column from Python objects again (as `stored_frame` would)."""
    try:
        if len(filled):
            mask = np.zeros(len(values), dtype=bool)
            mask[filled] = True
            replacements = pa.array(values[filled], type=pa.string())
            array = pc.replace_with_mask(array, pa.array(mask), replacements)
    except (pa.ArrowException, UnicodeEncodeError):
        return None
    if positions is not None:
        array = array.take(pa.array(positions))
    return pd.arrays.ArrowStringArray(array.cast(pa.large_string()))


def column_frame(columns: Mapping[str, Any]) -> pd.DataFrame:
    """A frame with one block per column, built without inference or consolidation.

    The next steps add and drop columns of a million rows: with every object column in
    one consolidated block, each drop would copy all the others.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    frame = pd.DataFrame(index=pd.RangeIndex(n))
    for name, values in columns.items():
        frame[name] = values
    return frame


def concat_coerced(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Coerced frames one after the other, column by column (one block per column)."""
    if len(frames) == 1:
        return frames[0]
    columns: dict[str, Any] = {}
    for name in frames[0].columns:
        parts = [f[name] for f in frames]
        if isinstance(parts[0].dtype, pd.DatetimeTZDtype):
            columns[name] = pd.DatetimeIndex(
                np.concatenate([p.dt.tz_convert(None).to_numpy() for p in parts])
            ).tz_localize("UTC")
        elif all(isinstance(p.dtype, pd.StringDtype) for p in parts):
            # Arrow text: the chunks' buffers are chained, not copied.
            columns[name] = pd.concat(parts, ignore_index=True).array
        elif any(isinstance(p.dtype, pd.StringDtype) for p in parts):
            columns[name] = np.concatenate([p.to_numpy(dtype=object, na_value=None) for p in parts])
        else:
            columns[name] = np.concatenate([p.to_numpy() for p in parts])
    return column_frame(columns)


def coerce_record_frame(
    frame: pd.DataFrame, source: str, received_at: pd.Series, *, default_event_time: bool = False
) -> CoercedColumns:
    """`coerce_columns` for incoming records held in a DataFrame (missing values absent)."""
    # In a frame, NaN and pd.NA are how pandas says "absent".
    columns = {}
    for name in frame.columns:
        values = frame[name].to_numpy(dtype=object)
        absent = pd.isna(values)
        if absent.any():
            values = values.copy()
            values[absent] = None
        columns[name] = values

    def record_at(i: int) -> dict[str, Any]:
        return {c: v for c, values in columns.items() if (v := values[i]) is not None}

    return coerce_columns(
        columns,
        len(frame),
        source,
        received_at,
        record_at,
        default_event_time=default_event_time,
    )


def coerce_records(
    records: Sequence[Any],
    source: str,
    received_at: Sequence[datetime] | pd.Series | np.ndarray,
    *,
    default_event_time: bool = False,
) -> CoercedColumns:
    """`coerce_columns` for records as parsed JSON (dicts); non-objects are refused."""
    count = len(records)
    fields = (*events.INCOMING_FIELDS, *events.HASHED_IDENTITY_COLUMNS)
    columns: dict[str, list[Any]] = {}
    is_object = [r.__class__ is dict for r in records]
    for i, record in enumerate(records):
        if not is_object[i]:
            continue
        for key, value in record.items():
            target = columns.get(key)
            if target is None:
                if key not in fields:
                    continue
                target = columns[key] = [None] * count
            target[i] = value
    result = coerce_columns(
        columns,
        count,
        source,
        received_at,
        lambda i: records[i],
        default_event_time=default_event_time,
    )
    return result


def stored_frame(
    coerced: pd.DataFrame,
    *,
    hour_of: Sequence[datetime] | pd.Series | np.ndarray | None = None,
    value_verified: bool | Sequence[bool] = True,
    known_phones: Mapping[tuple[str, str | None], tuple[str | None, ...]] | None = None,
) -> tuple[pd.DataFrame, Counter[str]]:
    """Coerced records (a `CoercedColumns.frame`) in the stored model: what
    `records.records_to_frame` returns for the same records, without a dict per record
    (`known_phones`: phone hashes computed ahead, see `hash_identity_columns`)."""
    frame = normalise_location_columns(coerced)
    frame, malformed = drop_malformed_prehashed(frame)
    frame, dropped = hash_identity_columns(frame, known_phones)
    dropped.update(malformed)
    frame["value_verified"] = value_verified
    if hour_of is None:
        return events.conform(frame, events.STORED_COLUMNS), dropped
    hours = utc_instants(pd.Series(hour_of))
    frame[events.HOUR_COLUMN] = hours.array  # positional: one hour per coerced row
    return events.conform(frame, events.CANONICAL_COLUMNS), dropped
