"""Times in the operational database are integer microseconds since the Unix epoch (UTC).

Integers sort, index and compare the same on SQLite and PostgreSQL, and convert to and
from pandas timestamps without parsing text.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd


def to_micros(moment: datetime | pd.Timestamp) -> int:
    """Microseconds since the epoch of an aware (or UTC-naive) moment."""
    ts = pd.Timestamp(moment)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1_000)


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime for microseconds since the epoch."""
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def utc_instants(values: pd.Series) -> pd.Series:
    """`values` as UTC timestamps: `pd.to_datetime(values, utc=True)`, without its cache
    when they are timestamps already. Before it decides to cache, `to_datetime` turns up
    to 500 of the values into Timestamp objects, about 12 ms a call whatever the length:
    a backfill's dedupe and identity steps paid it a few times an hour.
    """
    cache = not pd.api.types.is_datetime64_any_dtype(values.dtype)
    return pd.to_datetime(values, utc=True, cache=cache)


def series_to_micros(series: pd.Series) -> pd.Series:
    """Integer microseconds (nullable) of a UTC datetime series."""
    values = utc_instants(series)
    out = values.astype("int64") // 1_000
    return out.astype("Int64").where(values.notna(), pd.NA)


def series_from_micros(series: pd.Series) -> pd.Series:
    """UTC datetime series from integer microseconds (nulls stay NaT)."""
    return pd.to_datetime(series.astype("Int64"), unit="us", utc=True).astype("datetime64[ns, UTC]")


def now_micros() -> int:
    return to_micros(datetime.now(UTC))
