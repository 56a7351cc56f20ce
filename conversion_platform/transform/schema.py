"""The pandera contract of a deliverable conversion.

A row that breaks it is quarantined with every failed check; the rest go on. Only what
makes a row a conversion is checked here: an identity field that couldn't be normalised
was already dropped (and counted) where the data entered.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pandera.pandas as pa

from conversion_platform import events
from conversion_platform.transform.currencies import ISO_4217_CODES

MAX_ID_LENGTH = 256
MAX_URL_LENGTH = 4_096

#: Client clocks ahead of the server by up to this are clamped to the time received.
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)

CHECK_EVENT_NAME_KNOWN = "event_name_known"
CHECK_EVENT_TIME_NOT_TOO_OLD = "event_time_not_older_than_max_age"
CHECK_EVENT_TIME_NOT_IN_FUTURE = "event_time_not_after_received"
CHECK_CURRENCY_WITH_VALUE = "currency_is_iso_4217_when_value_present"

_ID_COLUMNS = ("event_id", "order_id", "mpid", *events.CLICK_ID_COLUMNS, *events.COOKIE_COLUMNS)


def _bounded(column: str, limit: int, required: bool = False) -> pa.Column:
    return pa.Column(
        events.STRING_DTYPE,
        pa.Check.str_length(max_value=limit, error=f"{column} longer than {limit}"),
        nullable=not required,
        required=True,
    )


def _event_name_known(names: pd.Series) -> pd.Series:
    known = names.isin(events.STANDARD_EVENT_NAMES)
    custom = names.str.fullmatch(events.CUSTOM_EVENT_NAME_PATTERN).fillna(False)
    return (known | custom).astype(bool)


def build_conversion_schema(max_event_age: timedelta) -> pa.DataFrameSchema:
    """The schema, with the configured maximum event age (relative to the time received)."""
    columns: dict[str, pa.Column] = {
        events.HOUR_COLUMN: pa.Column(events.TIMESTAMP_DTYPE, nullable=False),
        "event_id": _bounded("event_id", MAX_ID_LENGTH, required=True),
        "event_name": pa.Column(
            events.STRING_DTYPE,
            pa.Check(_event_name_known, name=CHECK_EVENT_NAME_KNOWN, error="unknown event name"),
            nullable=False,
        ),
        "event_time": pa.Column(events.TIMESTAMP_DTYPE, nullable=False),
        "received_at": pa.Column(events.TIMESTAMP_DTYPE, nullable=False),
        "source": pa.Column(events.STRING_DTYPE, pa.Check.isin(events.SOURCES), nullable=False),
        "action_source": pa.Column(
            events.STRING_DTYPE, pa.Check.isin(events.ACTION_SOURCES), nullable=True
        ),
        "page_url": _bounded("page_url", MAX_URL_LENGTH),
        "referrer": _bounded("referrer", MAX_URL_LENGTH),
        "value": pa.Column("float64", pa.Check.ge(0, error="value is negative"), nullable=True),
        "currency": pa.Column(events.STRING_DTYPE, nullable=True),
        "consent_ad_user_data": pa.Column(
            events.STRING_DTYPE, pa.Check.isin(events.CONSENT_VALUES)
        ),
        "consent_ad_personalization": pa.Column(
            events.STRING_DTYPE, pa.Check.isin(events.CONSENT_VALUES)
        ),
        **{c: _bounded(c, MAX_ID_LENGTH) for c in _ID_COLUMNS if c != "event_id"},
        **{
            c: pa.Column(
                events.STRING_DTYPE,
                pa.Check.str_matches(r"^[0-9a-f]{64}$", error=f"{c} is not a SHA-256 digest"),
                nullable=True,
            )
            for c in events.HASHED_IDENTITY_COLUMNS
        },
    }
    max_age = pd.Timedelta(max_event_age)
    skew = pd.Timedelta(CLOCK_SKEW_ALLOWANCE)
    return pa.DataFrameSchema(
        columns,
        checks=[
            pa.Check(
                lambda df: (
                    (df["received_at"] - df["event_time"] <= max_age) | df["event_time"].isna()
                ),
                name=CHECK_EVENT_TIME_NOT_TOO_OLD,
                error=f"event_time more than {max_event_age} before received_at",
            ),
            pa.Check(
                lambda df: (df["event_time"] - df["received_at"] <= skew) | df["event_time"].isna(),
                name=CHECK_EVENT_TIME_NOT_IN_FUTURE,
                error=f"event_time more than {CLOCK_SKEW_ALLOWANCE} after received_at",
            ),
            pa.Check(
                lambda df: df["value"].isna() | df["currency"].isin(ISO_4217_CODES),
                name=CHECK_CURRENCY_WITH_VALUE,
                error="value without an ISO 4217 currency",
            ),
        ],
        strict=False,
        coerce=False,
        name="conversion",
        description="A deduplicated conversion, ready for identity resolution and delivery.",
    )
