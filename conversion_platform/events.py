"""The canonical conversion model: what every stage reads and writes.

Two shapes exist:

* the **incoming** fields (`INCOMING_FIELDS`): what a pixel, a backend or a log line
  sends, in plaintext;
* the **stored** columns (`STORED_COLUMNS`): what the platform keeps. Personal fields
  (email, phone, names, external id) never appear here in plaintext: they are replaced,
  where data enters, by the SHA-256 of their normalised form, in every variant a
  destination needs (`email_sha256`, `email_google_sha256`, `phone_sha256`,
  `phone_digits_sha256`, ...). Location fields are kept normalised, unhashed, because
  Google and TikTok want them in the clear; destinations hash them where required.

Every stage after ingest adds columns (`sources`, `dedupe_rule`, `person_id`, ...) listed
in `STAGE_COLUMNS`; the frame between assets is always a pandas DataFrame with these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

# --- event names ------------------------------------------------------------------------

PURCHASE: Final = "purchase"
LEAD: Final = "lead"
COMPLETE_REGISTRATION: Final = "complete_registration"
SIGN_UP: Final = "sign_up"
START_TRIAL: Final = "start_trial"
SUBSCRIBE: Final = "subscribe"
ADD_TO_CART: Final = "add_to_cart"
INITIATE_CHECKOUT: Final = "initiate_checkout"
ADD_PAYMENT_INFO: Final = "add_payment_info"
CONTACT: Final = "contact"
SUBMIT_APPLICATION: Final = "submit_application"
PAGE_VIEW: Final = "page_view"

#: Standard event names. `page_view` is collected for identity (it carries click ids and
#: cookies) and forwarded only where a destination enables it.
STANDARD_EVENT_NAMES: Final[frozenset[str]] = frozenset(
    {
        PURCHASE,
        LEAD,
        COMPLETE_REGISTRATION,
        SIGN_UP,
        START_TRIAL,
        SUBSCRIBE,
        ADD_TO_CART,
        INITIATE_CHECKOUT,
        ADD_PAYMENT_INFO,
        CONTACT,
        SUBMIT_APPLICATION,
        PAGE_VIEW,
    }
)

#: Event names that are conversions (everything standard but `page_view`).
CONVERSION_EVENT_NAMES: Final[frozenset[str]] = STANDARD_EVENT_NAMES - {PAGE_VIEW}

#: Custom event names are accepted when they match this pattern (snake_case, bounded).
CUSTOM_EVENT_NAME_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$"

# --- sources and consent -------------------------------------------------------------------

SOURCE_PIXEL: Final = "pixel"
SOURCE_SERVER: Final = "server"
SOURCE_LOG: Final = "log"
SOURCES: Final[tuple[str, ...]] = (SOURCE_PIXEL, SOURCE_SERVER, SOURCE_LOG)

CONSENT_GRANTED: Final = "granted"
CONSENT_DENIED: Final = "denied"
CONSENT_UNKNOWN: Final = "unknown"
CONSENT_VALUES: Final[tuple[str, ...]] = (CONSENT_GRANTED, CONSENT_DENIED, CONSENT_UNKNOWN)

ACTION_SOURCES: Final[tuple[str, ...]] = (
    "website",
    "app",
    "phone_call",
    "chat",
    "email",
    "physical_store",
    "system_generated",
    "other",
)

# --- incoming fields --------------------------------------------------------------------

#: Click ids taken from the page URL's query string (query parameter -> column).
CLICK_ID_PARAMETERS: Final[dict[str, str]] = {
    "gclid": "gclid",
    "gbraid": "gbraid",
    "wbraid": "wbraid",
    "fbclid": "fbclid",
    "ttclid": "ttclid",
    "ScCid": "sccid",
    "sccid": "sccid",
    "epik": "epik",
    "li_fat_id": "li_fat_id",
    "rdt_cid": "rdt_cid",
    "msclkid": "msclkid",
}
CLICK_ID_COLUMNS: Final[tuple[str, ...]] = (
    "gclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "ttclid",
    "sccid",
    "epik",
    "li_fat_id",
    "rdt_cid",
    "msclkid",
)
#: Platform cookies, kept as received (never hashed).
COOKIE_COLUMNS: Final[tuple[str, ...]] = ("fbc", "fbp", "ttp")

#: Personal fields: hashed where they enter, never stored in plaintext.
PERSONAL_FIELDS: Final[tuple[str, ...]] = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "external_id",
)
#: Location fields: normalised where they enter, stored unhashed.
LOCATION_FIELDS: Final[tuple[str, ...]] = ("city", "region", "postal_code", "country")

#: The fields that arrive from a pixel, a backend or a log line.
INCOMING_FIELDS: Final[tuple[str, ...]] = (
    "event_id",
    "event_name",
    "event_time",
    "received_at",
    "source",
    "action_source",
    "page_url",
    "referrer",
    "mpid",
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "region",
    "postal_code",
    "country",
    "client_ip",
    "user_agent",
    *CLICK_ID_COLUMNS,
    *COOKIE_COLUMNS,
    "value",
    "currency",
    "order_id",
    "items",
    "consent_ad_user_data",
    "consent_ad_personalization",
)

# --- stored columns -----------------------------------------------------------------------

#: Hashed identity columns that replace the personal fields (SHA-256, lowercase hex).
HASHED_IDENTITY_COLUMNS: Final[tuple[str, ...]] = (
    "email_sha256",  # trimmed, lowercased
    "email_google_sha256",  # as above, dots removed from gmail.com / googlemail.com local parts
    "phone_sha256",  # E.164 with the leading +
    "phone_digits_sha256",  # E.164 digits only, no +
    "first_name_sha256",
    "last_name_sha256",
    "external_id_sha256",
)

STRING_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",
    "event_name",
    "source",
    "action_source",
    "page_url",
    "referrer",
    "mpid",
    *HASHED_IDENTITY_COLUMNS,
    *LOCATION_FIELDS,
    "client_ip",
    "user_agent",
    *CLICK_ID_COLUMNS,
    *COOKIE_COLUMNS,
    "currency",
    "order_id",
    "items",  # JSON array text: [{"id":..., "quantity":..., "price":...}]
    "consent_ad_user_data",
    "consent_ad_personalization",
)
TIMESTAMP_COLUMNS: Final[tuple[str, ...]] = ("event_time", "received_at")
FLOAT_COLUMNS: Final[tuple[str, ...]] = ("value",)
BOOL_COLUMNS: Final[tuple[str, ...]] = ("value_verified",)

#: What the landing table and server-log ingest produce, in this order.
STORED_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",
    "event_name",
    "event_time",
    "received_at",
    "source",
    "action_source",
    "page_url",
    "referrer",
    "mpid",
    *HASHED_IDENTITY_COLUMNS,
    *LOCATION_FIELDS,
    "client_ip",
    "user_agent",
    *CLICK_ID_COLUMNS,
    *COOKIE_COLUMNS,
    "value",
    "value_verified",
    "currency",
    "order_id",
    "items",
    "consent_ad_user_data",
    "consent_ad_personalization",
)

#: The hour (UTC, on the hour) an event belongs to: the partition it was received in.
HOUR_COLUMN: Final = "hour"

#: `DataFrame.attrs` key: the columns of the hour a frame was read or taken without (an
#: input that names its columns, a destination's chunk of events). Code that treats an
#: absent column as empty must raise for these instead (`json_columns.has_column`).
LEFT_OUT_COLUMNS: Final = "left_out_columns"

#: Ad platforms with their own match-quality score column (`match_quality_<platform>`).
MATCH_QUALITY_PLATFORMS: Final[tuple[str, ...]] = ("meta", "google", "tiktok", "snapchat")

#: Columns added by later stages.
STAGE_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "dedupe": ("sources", "dedupe_rule", "dedupe_key", "copies"),
    "identity": (
        "person_id",
        "strong_keys_before",
        "strong_keys_after",
        "match_quality",
        *(f"match_quality_{p}" for p in MATCH_QUALITY_PLATFORMS),
        "enriched_fields",  # what identity resolution added, e.g. "email,phone,fbclid"
    ),
}

TIMESTAMP_DTYPE: Final = "datetime64[ns, UTC]"
#: Text is `string[pyarrow]`: the package sets pandas' `mode.string_storage` on import
#: (see `conversion_platform/__init__.py`), so "string" means Arrow-backed everywhere.
STRING_DTYPE: Final = "string"


def string_array(values: Sequence[object] | np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Text values (str or None) as the model's string array, built by Arrow in one C pass
    (pandas' own constructor first checks every value in Python, twice as slow)."""
    try:
        return pd.arrays.ArrowStringArray(objects_as_large_text(values))
    except (pa.ArrowException, UnicodeEncodeError):
        return pd.array(values, dtype=STRING_DTYPE)


def objects_as_large_text(values: Sequence[object] | np.ndarray) -> pa.Array | pa.ChunkedArray:
    """Python text values (str or None; NaN counts as None) as an Arrow `large_string` array.

    Built as `string` and then cast: Arrow's converter from Python objects is six times
    slower when it builds `large_string` itself (124 ms against 19 ms for 300,000 values
    here). Raises `pa.ArrowException` or `UnicodeEncodeError` for values Arrow can't hold
    as text."""
    return pa.array(values, type=pa.string(), from_pandas=True).cast(pa.large_string())


def arrow_text(values: pd.Series) -> pa.Array:
    """A text column as one Arrow `large_string` array: an Arrow-backed column is its own
    array (no copy), any other costs one pass. Raises `pa.ArrowException` or
    `UnicodeEncodeError` for values Arrow can't hold as text."""
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        array = pa.array(values.array, type=pa.large_string())
    else:
        objects = np.asarray(values.array, dtype=object)
        array = objects_as_large_text(objects)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def as_string(series: pd.Series) -> pd.Series:
    """The series in the model's string dtype (an object column through `string_array`)."""
    if series.dtype == object:
        return pd.Series(string_array(series.to_numpy()), index=series.index, name=series.name)
    return series.astype(STRING_DTYPE)


def concat_releasing(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """`pd.concat(frames, ignore_index=True)`, the frames emptied (every column dropped).

    `pd.concat` copies numpy columns (numbers, times, flags: about 100 MiB at a million
    rows) and shares Arrow ones. A step's input frames stay referenced (by Dagster) for
    the step's whole life, so emptying them is what lets those copies' originals go. An
    Arrow column whose rows all come from one frame (the usual hour: the collector's or
    the logs') keeps that frame's array as it is, rather than pieces with empty ones, so
    `arrow_text` reads it later without joining the pieces into a copy.
    """
    combined = pd.concat(frames, ignore_index=True)
    for name in list(combined.columns):
        array = combined[name].array
        pieces = getattr(array, "_pa_array", None)
        if isinstance(pieces, pa.ChunkedArray) and pieces.num_chunks > 1:
            filled = [chunk for chunk in pieces.chunks if len(chunk)]
            if len(filled) == 1:
                combined[name] = pd.Series(type(array)(filled[0]), index=combined.index, name=name)
    for frame in frames:
        frame.drop(columns=list(frame.columns), inplace=True)
    return combined


def frames_by_hour(frame: pd.DataFrame) -> dict[pd.Timestamp, pd.DataFrame]:
    """The frame's rows by their hour, hours in order, each hour's rows in their order (as
    `groupby`; rows without an hour are left out); a frame of one hour is itself.

    Each hour is a slice of the frame, not a copy: a range of hours loaded for a backfill
    is its hours' frames one after the other, every column in one Arrow chunk per hour,
    and gathering each hour out of all the chunks copied the whole range, in time growing
    with the square of the hours (a week's resolved range, 168 chunks: 4.15 s a split,
    against 0.08 s). A frame not in hour order is put in order first, with one gather.
    """
    if not len(frame):
        return {}
    hours = frame[HOUR_COLUMN]
    if (hours == hours.iloc[0]).all():
        return {hours.iloc[0]: frame}
    if not isinstance(hours.dtype, pd.DatetimeTZDtype):
        return {hour: group for hour, group in frame.groupby(HOUR_COLUMN, sort=True)}
    nanos = hours.dt.tz_convert(None).to_numpy().view(np.int64)
    if (nanos[1:] < nanos[:-1]).any():
        order = np.argsort(nanos, kind="stable")
        frame, nanos = frame.take(order), nanos[order]
        hours = frame[HOUR_COLUMN]
    starts = np.flatnonzero(np.r_[True, nanos[1:] != nanos[:-1]])
    stops = np.r_[starts[1:], len(nanos)]
    missing = np.datetime64("NaT").view(np.int64)
    return {
        hours.iloc[start]: frame.iloc[start:stop]
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True)
        if nanos[start] != missing
    }


def column_dtypes(columns: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Pandas dtypes of the named columns (strings nullable, times UTC, value float)."""
    dtypes: dict[str, str] = {}
    for column in columns:
        if column in TIMESTAMP_COLUMNS or column == HOUR_COLUMN:
            dtypes[column] = TIMESTAMP_DTYPE
        elif column in FLOAT_COLUMNS or column.startswith("match_quality"):
            dtypes[column] = "float64"
        elif column in BOOL_COLUMNS:
            dtypes[column] = "boolean"
        elif column in ("copies", "strong_keys_before", "strong_keys_after"):
            dtypes[column] = "int64"
        else:
            dtypes[column] = STRING_DTYPE
    return dtypes


CANONICAL_COLUMNS: Final[tuple[str, ...]] = (HOUR_COLUMN, *STORED_COLUMNS)


def empty_frame(columns: tuple[str, ...] | list[str] = CANONICAL_COLUMNS) -> pd.DataFrame:
    """An empty frame with the model's dtypes: what an hour without events holds."""
    return conform(pd.DataFrame({c: [] for c in columns}), columns)


def conform(
    frame: pd.DataFrame, columns: tuple[str, ...] | list[str] = CANONICAL_COLUMNS
) -> pd.DataFrame:
    """Return `frame` with exactly `columns`, in order, with the model's dtypes.

    Missing columns are added as nulls; extra columns are dropped.
    """
    dtypes = column_dtypes(columns)
    # Arrays, not Series: the result gets a fresh index without a copy of every column.
    out: dict[str, object] = {}
    n = len(frame)
    for column in columns:
        dtype = dtypes[column]
        if column in frame.columns:
            series = frame[column]
            if str(series.dtype) != dtype:
                if dtype == TIMESTAMP_DTYPE:
                    series = pd.to_datetime(series, utc=True, format="mixed")
                    series = series.astype(TIMESTAMP_DTYPE)
                elif dtype == STRING_DTYPE:
                    series = as_string(series)
                else:
                    series = series.astype(dtype)
            out[column] = series.array
        else:
            out[column] = pd.Series([_MISSING.get(dtype, pd.NA)] * n, dtype=dtype).array
    return pd.DataFrame(out, columns=list(columns), index=pd.RangeIndex(n))


#: What a missing column holds: numpy dtypes can't hold pd.NA (counts start at 0).
_MISSING: Final[dict[str, object]] = {TIMESTAMP_DTYPE: pd.NaT, "float64": float("nan"), "int64": 0}
