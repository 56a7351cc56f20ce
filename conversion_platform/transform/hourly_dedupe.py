"""Deduplicating a window of hours, in order, against the persistent ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.store.ledger import claim_keys, late_duplicate_mask, owners_of
from conversion_platform.transform.dedupe import (
    DEDUPED_COLUMNS,
    DEFAULT_FINGERPRINT_TOLERANCE,
    deduplicate_hour_frames,
)


@dataclass
class DedupeResult:
    """The window's unique conversions and, per hour, what was removed."""

    frame: pd.DataFrame
    per_hour: dict[datetime, dict[str, int]] = field(default_factory=dict)


def deduplicate_hours(
    engine: Engine,
    copies: pd.DataFrame,
    hours: list[datetime],
    window: timedelta,
    tolerance: timedelta = DEFAULT_FINGERPRINT_TOLERANCE,
) -> DedupeResult:
    """Merge copies within each hour, then drop keys an earlier hour in the window owns.

    Hours are processed in order, each claiming its keys in the ledger in its own
    transaction, so a range gives the same result as its hours run one by one.
    """
    merged = deduplicate_hour_frames(copies, tolerance)
    kept: list[pd.DataFrame] = []
    per_hour: dict[datetime, dict[str, int]] = {}
    by_hour = {hour: group for hour, group in merged.groupby(events.HOUR_COLUMN, sort=True)}
    copies_per_hour = (
        copies.groupby(events.HOUR_COLUMN).size() if len(copies) else pd.Series(dtype=int)
    )
    for hour in sorted(hours):
        group = by_hour.get(pd.Timestamp(hour))
        received = int(copies_per_hour.get(pd.Timestamp(hour), 0))
        if group is None or group.empty:
            per_hour[hour] = {
                "copies_in": received,
                "duplicates_removed": 0,
                "late_duplicates": 0,
                "conversions_out": 0,
            }
            continue
        with engine.begin() as conn:
            keys = group["dedupe_key"].astype(str)
            owners = owners_of(conn, keys.tolist())
            late = late_duplicate_mask(owners, keys, hour, window)
            claim_keys(conn, group.loc[~late, ["dedupe_key", "event_id", "event_time"]], hour)
        unique = group.loc[~late.to_numpy()]
        kept.append(unique)
        per_hour[hour] = {
            "copies_in": received,
            "duplicates_removed": int(received - len(group)),
            "late_duplicates": int(late.sum()),
            "conversions_out": len(unique),
        }
    frame = pd.concat(kept, ignore_index=True) if kept else events.empty_frame(DEDUPED_COLUMNS)
    return DedupeResult(events.conform(frame, DEDUPED_COLUMNS), per_hour)
