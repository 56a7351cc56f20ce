"""The pandera contract of a deliverable conversion.

A row that breaks it is quarantined with every failed check; the rest go on. Only what
makes a row a conversion is checked here: an identity field that couldn't be normalised
was already dropped (and counted) where the data entered.

Every check is named for what is wrong, so a failed check *is* the quarantine reason:

| reason | the row |
|---|---|
| `<column>_missing` | lacks a required field (event id, name, event time, time received, source, consent) |
| `event_name_not_in_model` | has an event name that is neither a standard name of the model nor a custom name in the model's form (snake_case, starting with a letter, at most 64 characters) |
| `event_time_older_than_max_age` | happened longer before it was received than the configured maximum age |
| `event_time_after_received` | is stamped more than the clock-skew allowance (5 minutes) after it was received; closer ones are clamped to the time received before validation |
| `value_negative` | has a negative value |
| `currency_missing_with_value`, `currency_not_iso_4217` | has a value without an ISO 4217 currency |
| `<id column>_too_long` | has an id (event, order, mpid, click id, cookie) over 256 characters, or a URL over 4,096 |
| `source_unknown`, `action_source_unknown`, `<consent column>_invalid` | has a value outside the model's list |
| `<hashed column>_not_sha256` | has a hashed identifier that isn't a SHA-256 digest (malformed ones are dropped before validation, so this guards the contract) |

Custom event names are allowed because the model allows them (`events.CUSTOM_EVENT_NAME_PATTERN`)
and every destination sends them as custom events; a name that isn't in that form
(`Purchase Completed!!`) can't be mapped anywhere and is quarantined.
"""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pandera.pandas as pa

from conversion_platform import events
from conversion_platform.transform.currencies import ISO_4217_CODES
from conversion_platform.transform.dedupe import CLOCK_SKEW_ALLOWANCE
from conversion_platform.transform.pandera_checks import RowCheck, column_check
from conversion_platform.transform.text_checks import is_sha256_hex, one_of, within_length

MAX_ID_LENGTH = 256
MAX_URL_LENGTH = 4_096

REASON_EVENT_NAME_NOT_IN_MODEL = "event_name_not_in_model"
REASON_TOO_OLD = "event_time_older_than_max_age"
REASON_AFTER_RECEIVED = "event_time_after_received"
REASON_VALUE_NEGATIVE = "value_negative"
REASON_CURRENCY_MISSING = "currency_missing_with_value"
REASON_CURRENCY_NOT_ISO = "currency_not_iso_4217"
REASON_SOURCE_UNKNOWN = "source_unknown"
REASON_ACTION_SOURCE_UNKNOWN = "action_source_unknown"

ID_COLUMNS: tuple[str, ...] = (
    "event_id",
    "order_id",
    "mpid",
    *events.CLICK_ID_COLUMNS,
    *events.COOKIE_COLUMNS,
)
URL_COLUMNS: tuple[str, ...] = ("page_url", "referrer")
REQUIRED_COLUMNS: tuple[str, ...] = (
    events.HOUR_COLUMN,
    "event_id",
    "event_name",
    "event_time",
    "received_at",
    "source",
    "consent_ad_user_data",
    "consent_ad_personalization",
)

_SHA256 = r"^[0-9a-f]{64}$"
_CUSTOM_EVENT_NAME = re.compile(events.CUSTOM_EVENT_NAME_PATTERN)


def missing_reason(column: str) -> str:
    return f"{column}_missing"


def too_long_reason(column: str) -> str:
    return f"{column}_too_long"


def event_name_in_model(names: pd.Series) -> pd.Series:
    """True for standard event names and custom names in the model's snake_case form."""
    standard = names.isin(events.STANDARD_EVENT_NAMES).fillna(False).to_numpy(dtype=bool)
    ok = standard.copy()
    others = np.flatnonzero(~standard & names.notna().to_numpy())
    if len(others):
        # standard names are nearly every row: the pattern runs on the few others only
        values = names.to_numpy(dtype=object)[others]
        ok[others] = [isinstance(v, str) and bool(_CUSTOM_EVENT_NAME.fullmatch(v)) for v in values]
    return pd.Series(ok, index=names.index)


def _text_column(column: str, *checks: pa.Check) -> pa.Column:
    return pa.Column(events.STRING_DTYPE, list(checks), nullable=column not in REQUIRED_COLUMNS)


def _bounded(column: str, limit: int) -> pa.Column:
    return _text_column(
        column,
        column_check(
            lambda values: within_length(values, limit), too_long_reason(column), max_value=limit
        ),
    )


def _one_of(allowed: tuple[str, ...] | frozenset[str], reason: str) -> pa.Check:
    values = sorted(allowed)
    return column_check(lambda column: one_of(column, values), reason, allowed_values=values)


def build_conversion_schema(max_event_age: timedelta) -> pa.DataFrameSchema:
    """The schema, with the configured maximum event age (relative to the time received)."""
    columns: dict[str, pa.Column] = {
        events.HOUR_COLUMN: pa.Column(events.TIMESTAMP_DTYPE, nullable=False),
        **{c: _bounded(c, MAX_ID_LENGTH) for c in ID_COLUMNS},
        **{c: _bounded(c, MAX_URL_LENGTH) for c in URL_COLUMNS},
        "event_name": _text_column(
            "event_name",
            pa.Check(
                event_name_in_model,
                name=REASON_EVENT_NAME_NOT_IN_MODEL,
                error=REASON_EVENT_NAME_NOT_IN_MODEL,
            ),
        ),
        "event_time": pa.Column(events.TIMESTAMP_DTYPE, nullable=False),
        "received_at": pa.Column(events.TIMESTAMP_DTYPE, nullable=False),
        "source": _text_column(
            "source",
            _one_of(events.SOURCES, REASON_SOURCE_UNKNOWN),
        ),
        "action_source": _text_column(
            "action_source",
            _one_of(events.ACTION_SOURCES, REASON_ACTION_SOURCE_UNKNOWN),
        ),
        "value": pa.Column(
            "float64",
            pa.Check.ge(0, name=REASON_VALUE_NEGATIVE, error=REASON_VALUE_NEGATIVE),
            nullable=True,
        ),
        "currency": pa.Column(events.STRING_DTYPE, nullable=True),
        **{
            c: _text_column(
                c,
                _one_of(events.CONSENT_VALUES, f"{c}_invalid"),
            )
            for c in ("consent_ad_user_data", "consent_ad_personalization")
        },
        **{
            c: _text_column(c, column_check(is_sha256_hex, f"{c}_not_sha256", pattern=_SHA256))
            for c in events.HASHED_IDENTITY_COLUMNS
        },
    }
    max_age = pd.Timedelta(max_event_age)
    skew = pd.Timedelta(CLOCK_SKEW_ALLOWANCE)
    has_value = lambda df: df["value"].notna()  # noqa: E731
    # Rows with a missing time or value pass these by construction (the column fails them).
    return pa.DataFrameSchema(
        columns,
        checks=[
            RowCheck(
                lambda df: ~((df["received_at"] - df["event_time"]) > max_age),
                name=REASON_TOO_OLD,
            ),
            RowCheck(
                lambda df: ~((df["event_time"] - df["received_at"]) > skew),
                name=REASON_AFTER_RECEIVED,
            ),
            RowCheck(
                lambda df: ~(has_value(df) & df["currency"].isna()),
                name=REASON_CURRENCY_MISSING,
            ),
            RowCheck(
                lambda df: (
                    ~(
                        has_value(df)
                        & df["currency"].notna()
                        & ~df["currency"].isin(ISO_4217_CODES).fillna(False)
                    )
                ),
                name=REASON_CURRENCY_NOT_ISO,
            ),
        ],
        strict=False,
        coerce=False,
        name="conversion",
        description=(
            "A deduplicated conversion that can be delivered: required fields present, an "
            "event name from the model, an event time within the maximum age and not after "
            "it was received, a non-negative value with an ISO 4217 currency, bounded ids."
        ),
    )
