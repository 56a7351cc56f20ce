"""Lazy validation: every failing row is quarantined with each failed check."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pandas as pd
import pandera.errors

from conversion_platform.transform.schema import CLOCK_SKEW_ALLOWANCE, build_conversion_schema


@dataclass
class ValidationResult:
    """Valid rows, invalid rows with their reasons, and how many times were clamped."""

    valid: pd.DataFrame
    invalid: pd.DataFrame
    reasons: dict[int, list[str]] = field(default_factory=dict)  # position in input -> reasons
    clamped_event_times: int = 0


def clamp_client_clock_skew(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Event times ahead of the time received by at most the allowance become the time received."""
    ahead = frame["event_time"] > frame["received_at"]
    within = ahead & (
        frame["event_time"] - frame["received_at"] <= pd.Timedelta(CLOCK_SKEW_ALLOWANCE)
    )
    if within.any():
        frame = frame.copy()
        frame.loc[within, "event_time"] = frame.loc[within, "received_at"]
    return frame, within


def validate_conversions(frame: pd.DataFrame, max_event_age: timedelta) -> ValidationResult:
    """Split `frame` into valid and invalid rows with the pandera schema (lazy)."""
    frame = frame.reset_index(drop=True)
    frame, clamped = clamp_client_clock_skew(frame)
    schema = build_conversion_schema(max_event_age)
    reasons: dict[int, list[str]] = {}
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for row in cases.itertuples(index=False):
            index = row.index
            if index is None or (isinstance(index, float) and pd.isna(index)):
                continue  # a column-level failure (missing column) is a code bug, raised below
            check = str(row.check)
            column = (
                row.column if isinstance(row.column, str) and row.column != "conversion" else None
            )
            reason = f"{column}: {check}" if column else check
            reasons.setdefault(int(index), []).append(reason)
        if not reasons:
            raise
    bad = pd.Series(False, index=frame.index)
    bad[list(reasons)] = True
    return ValidationResult(
        valid=frame.loc[~bad].reset_index(drop=True),
        invalid=frame.loc[bad],
        reasons=reasons,
        clamped_event_times=int(clamped.sum()),
    )


def describe_row(row: pd.Series) -> str:
    """A short redacted description of an invalid row (no personal data: it's hashed)."""
    fields = {
        c: row[c]
        for c in (
            "event_id",
            "event_name",
            "event_time",
            "received_at",
            "source",
            "value",
            "currency",
            "order_id",
        )
        if c in row.index and not pd.isna(row[c])
    }
    return ", ".join(f"{k}={v}" for k, v in fields.items())
