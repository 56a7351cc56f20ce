"""Lazy validation: every failing row is quarantined with each failed check.

Before the contract is checked, two repairs that never cost a conversion:

* hashed identifiers that are not SHA-256 digests are dropped and counted
  (`<column>_malformed`): the identifier can't be used, the conversion can;
* event times up to the clock-skew allowance after the time received are clamped to the
  time received and counted (a client clock a little fast); further ahead is invalid.

The rows left failing the schema (`schema.build_conversion_schema`) are returned with
their reasons, each a failed check's name, joined with `; ` in a fixed order.

The valid frame returned is remembered as proven (by identity, while it lives), so a
consumer about to check the same frame against the same contract, the Dagster type of
the validated asset, can trust the proof instead of validating every row again.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd
import pandera.errors

from conversion_platform import events
from conversion_platform.store.quarantine import STAGE_VALIDATION, QuarantinedRecord
from conversion_platform.store.timecodes import utc_instants
from conversion_platform.transform.dedupe import CLOCK_SKEW_ALLOWANCE
from conversion_platform.transform.schema import (
    build_conversion_schema,
    missing_reason,
)
from conversion_platform.transform.text_checks import is_sha256_hex

REASON_SEPARATOR = "; "
#: Fields shown in a quarantined row's redacted content (none of them personal data).
DESCRIBED_FIELDS: tuple[str, ...] = (
    "event_id",
    "event_name",
    "event_time",
    "received_at",
    "source",
    "sources",
    "value",
    "currency",
    "order_id",
    "dedupe_rule",
)
_DESCRIBE_LIMIT = 80
#: Frames `validate_conversions` returned as valid: id -> (the frame, weakly; the maximum
#: event age it was validated with; its shape and columns then).
_PROVEN: dict[int, tuple[weakref.ReferenceType[pd.DataFrame], timedelta, tuple]] = {}


def _fingerprint(frame: pd.DataFrame) -> tuple:
    return (len(frame), tuple(frame.columns), tuple(str(t) for t in frame.dtypes))


def _remember_proven(frame: pd.DataFrame, max_event_age: timedelta) -> None:
    key = id(frame)
    ref = weakref.ref(frame, lambda _ref, key=key: _PROVEN.pop(key, None))
    _PROVEN[key] = (ref, max_event_age, _fingerprint(frame))


def proven_valid(frame: object, max_event_age: timedelta) -> bool:
    """True when `frame` is a valid frame `validate_conversions` returned, validated with a
    maximum event age of at most `max_event_age` (so it meets that contract too), with the
    same rows count, columns and dtypes as then. A frame changed in place after
    validation is the caller's responsibility: the proof is for the object returned."""
    entry = _PROVEN.get(id(frame))
    if entry is None or entry[0]() is not frame:
        return False
    assert isinstance(frame, pd.DataFrame)
    return entry[1] <= max_event_age and entry[2] == _fingerprint(frame)


@dataclass
class ValidationResult:
    """Valid rows; invalid rows with a `reasons` column; what was repaired on the way."""

    valid: pd.DataFrame
    invalid: pd.DataFrame
    clamped: pd.Series = field(default_factory=lambda: pd.Series(dtype=bool))  # per input row
    dropped_identifiers: Counter[str] = field(default_factory=Counter)

    @property
    def clamped_event_times(self) -> int:
        return int(self.clamped.sum())

    def reason_counts(self) -> Counter[str]:
        """How many invalid rows failed each check (a row counts once per check)."""
        counts: Counter[str] = Counter()
        if len(self.invalid):
            exploded = self.invalid["reasons"].str.split(REASON_SEPARATOR).explode()
            counts.update({str(k): int(v) for k, v in exploded.value_counts().items()})
        return counts


def drop_malformed_identifiers(frame: pd.DataFrame) -> tuple[pd.DataFrame, Counter[str]]:
    """Null hashed identity values that aren't SHA-256 digests; count them by column."""
    dropped: Counter[str] = Counter()
    out = frame
    for column in events.HASHED_IDENTITY_COLUMNS:
        if column not in frame.columns:
            continue
        bad = ~is_sha256_hex(frame[column])
        if bad.any():
            if out is frame:
                out = frame.copy(deep=False)  # the other columns are shared, never written
            out[column] = frame[column].mask(bad)
            dropped[f"{column}_malformed"] += int(bad.sum())
    return out, dropped


def clamp_client_clock_skew(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Event times ahead of the time received by at most the allowance become the time received."""
    ahead = frame["event_time"] - frame["received_at"]
    within = ((ahead > pd.Timedelta(0)) & (ahead <= pd.Timedelta(CLOCK_SKEW_ALLOWANCE))).fillna(
        False
    )
    if within.any():
        frame = frame.copy()
        frame.loc[within, "event_time"] = frame.loc[within, "received_at"]
    return frame, within.astype(bool)


def _reasons_by_row(failures: pd.DataFrame, n: int) -> pd.Series:
    """One `; `-joined reason string per failing row position (NA where none failed)."""
    rows = failures.dropna(subset=["index"])
    if len(rows) < len(failures):
        # A failure without a row (a missing column, a wrong dtype) is a bug upstream.
        raise ValueError(
            "the frame doesn't have the conversion model's columns: "
            + "; ".join(
                f"{c}: {k}"
                for c, k in failures.loc[failures["index"].isna(), ["column", "check"]]
                .astype(str)
                .itertuples(index=False)
            )
        )
    checks = rows["check"].astype(str)
    columns = rows["column"].astype(str)
    reason = checks.where(checks != "not_nullable", columns.map(missing_reason))
    pairs = pd.DataFrame({"index": rows["index"].astype("int64"), "reason": reason})
    pairs = pairs.drop_duplicates()
    flags = pd.crosstab(pairs["index"], pairs["reason"]).astype(bool)
    joined = pd.Series("", index=flags.index, dtype=object)
    for name in sorted(flags.columns):
        joined = joined.where(~flags[name], joined + REASON_SEPARATOR + name)
    joined = joined.str.slice(len(REASON_SEPARATOR))
    return joined.reindex(range(n))


def _forget_pandera_accessor(frame: pd.DataFrame) -> None:
    """Break the reference cycle pandera leaves on a frame it validated in place.

    pandas caches the `frame.pandera` accessor on the frame, and the accessor holds the
    frame: only Python's cyclic collector frees such a frame, and it runs on counts of
    objects, not bytes, so a million-row hour (0.7 GB) stayed alive through the next
    stage. Without the cached accessor the frame goes when its last reference does;
    `frame.pandera` still works (pandas makes a new accessor on the next access)."""
    vars(frame).pop("pandera", None)


def validate_conversions(frame: pd.DataFrame, max_event_age: timedelta) -> ValidationResult:
    """Split `frame` into valid and invalid rows with the pandera schema (lazy)."""
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        frame = frame.reset_index(drop=True)
    frame, dropped = drop_malformed_identifiers(frame)
    frame, clamped = clamp_client_clock_skew(frame)
    schema = build_conversion_schema(max_event_age)
    reasons = pd.Series(pd.NA, index=frame.index, dtype=object)
    try:
        # in place: the schema neither coerces nor fills, so pandera's copy of the frame
        # would only cost time
        schema.validate(frame, lazy=True, inplace=True)
    except pandera.errors.SchemaErrors as exc:
        reasons = _reasons_by_row(exc.failure_cases, len(frame))
    finally:
        _forget_pandera_accessor(frame)
    bad = reasons.notna().to_numpy()
    invalid = frame.loc[bad].copy()
    invalid["reasons"] = reasons[bad].astype("string")
    valid = frame.take(np.flatnonzero(~bad))
    valid.index = pd.RangeIndex(len(valid))  # a new frame already: renumbered, not copied
    _remember_proven(valid, max_event_age)
    return ValidationResult(
        valid=valid,
        invalid=invalid.reset_index(drop=True),
        clamped=clamped,
        dropped_identifiers=dropped,
    )


def describe_rows(frame: pd.DataFrame) -> pd.Series:
    """Short redacted descriptions (`event_id=..., value=...`) of rows; no personal data."""
    text = pd.Series("", index=frame.index, dtype=object)
    for column in DESCRIBED_FIELDS:
        if column not in frame.columns:
            continue
        values = frame[column]
        if column in events.TIMESTAMP_COLUMNS:
            shown = values.dt.strftime("%Y-%m-%dT%H:%M:%S%z")
        else:
            shown = values.astype("string").str.slice(0, _DESCRIBE_LIMIT)
        part = (column + "=" + shown.astype(object)).where(values.notna(), "")
        text = np.where((text != "") & (part != ""), text + ", " + part, text + part)
        text = pd.Series(text, index=frame.index, dtype=object)
    return text


def quarantine_records(invalid: pd.DataFrame) -> list[QuarantinedRecord]:
    """Quarantine records of invalid rows (`ValidationResult.invalid`)."""
    if invalid.empty:
        return []
    described = describe_rows(invalid)
    hours = utc_instants(invalid[events.HOUR_COLUMN])
    columns = zip(
        invalid["source"].astype("string").fillna("unknown"),
        hours.astype(object),
        invalid["dedupe_key"].astype("string").fillna("").str.slice(0, 200),
        invalid["reasons"].astype(str),
        described,
        invalid["event_id"].astype("string").str.slice(0, 200),
        invalid["event_name"].astype("string").str.slice(0, 100),
        strict=True,
    )
    return [
        QuarantinedRecord(
            stage=STAGE_VALIDATION,
            source=str(source),
            hour=hour,
            origin=f"dedupe_key={key}",
            reason=reason,
            raw_redacted=text,
            event_id=None if pd.isna(event_id) else str(event_id),
            event_name=None if pd.isna(name) else str(name),
        )
        for source, hour, key, reason, text, event_id, name in columns
    ]
