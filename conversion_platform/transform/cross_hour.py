"""Across hours: is a conversion new, or a copy of one that another hour delivered?

The rules, given the ledger rows of other hours within the window (`window`, 7 days by
default, measured between the hours that received the copies):

* A conversion of hour H **matches** a ledger row of another hour h when they share an
  event-id or order key (exactly), or for fingerprints the same content with event
  times within the tolerance of each other (the row keeps its copies' first and last
  event time, so a copy at 10:59:59 in hour 10 and one at 11:00:40 in hour 11 match).
* The matched row points at the hour that delivered its conversion (`owner_hour_us`:
  h itself, or the hour h's copy was a duplicate of). If that owner is another hour
  within the window of H, H's conversion is a **duplicate** of it and is not delivered
  again; its owner is the earliest such hour. Otherwise H delivers it and owns it.

What follows (and what the property tests check):

* A key is delivered at most once within any window: an hour delivers only when no
  hour within the window has, and claims are serialised (`store.ledger`).
* Run in order (the hourly schedule; a backfill, which runs its range in order), a
  conversion belongs to the earliest hour that received it; a copy arriving hours
  later is a late duplicate; a copy more than the window after the delivered one is a
  new conversion, and the window then counts from it.
* An hour's own rows never count against it (they are replaced on each run), so
  re-running an hour, before or after later hours ran, reproduces its result.
* When a later hour ran first (an hour re-run after an outage, say), the conversion
  stays with the hour that already delivered it: the earlier hour counts its copy as
  `delivered_by_later_hour` instead of delivering it twice. Whatever order hours run
  in, every conversion is delivered exactly once; only which hour carries it can differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from conversion_platform.transform.dedupe_keys import RULE_FINGERPRINT

#: Per conversion: the owner hour and what the owner delivered (when a match shows it).
OWNER_COLUMNS: tuple[str, ...] = ("dedupe_key", "owner_hour_us", "owner_sources", "owner_value")


@dataclass(frozen=True)
class CrossHourRules:
    """The window (between hours received) and the fingerprint tolerance, in microseconds."""

    window_us: int
    tolerance_us: int


def decide_owners(
    claims: pd.DataFrame, neighbours: pd.DataFrame, hour_us: int, rules: CrossHourRules
) -> pd.DataFrame:
    """The owner hour of each conversion of hour `hour_us`.

    `claims`: one row per (dedupe_key, match_key) of the hour, with `kind`,
    `first_event_time_us` and `last_event_time_us`. `neighbours`: ledger rows of other
    hours (`store.ledger.LEDGER_COLUMNS`). Returns one row per dedupe_key with
    `owner_hour_us` (the hour itself when it is new), and the owner's `sources` and
    `value` where the owner's own row was among the matches.
    """
    keys = pd.Series(claims["dedupe_key"].unique(), dtype="string", name="dedupe_key")
    owners = pd.DataFrame(
        {
            "dedupe_key": keys,
            "owner_hour_us": np.int64(hour_us),
            "owner_sources": pd.Series(pd.NA, index=keys.index, dtype="string"),
            "owner_value": pd.Series(np.nan, index=keys.index, dtype="float64"),
        }
    )
    if claims.empty or neighbours.empty:
        return owners
    left = claims[["dedupe_key", "match_key", "kind", "first_event_time_us", "last_event_time_us"]]
    right = neighbours[
        [
            "match_key",
            "hour_us",
            "owner_hour_us",
            "first_event_time_us",
            "last_event_time_us",
            "sources",
            "value",
        ]
    ].rename(
        columns={
            "hour_us": "n_hour_us",
            "owner_hour_us": "n_owner_hour_us",
            "first_event_time_us": "n_first_us",
            "last_event_time_us": "n_last_us",
            "sources": "n_sources",
            "value": "n_value",
        }
    )
    left = left.assign(match_key=left["match_key"].astype(str))
    right = right.assign(match_key=right["match_key"].astype(str))
    matched = left.merge(right, on="match_key", how="inner")
    if matched.empty:
        return owners
    n_hour = matched["n_hour_us"].astype("int64")
    n_owner = matched["n_owner_hour_us"].astype("int64")
    fingerprint = (matched["kind"] == RULE_FINGERPRINT).to_numpy()
    first = matched["first_event_time_us"].astype("float64")
    last = matched["last_event_time_us"].astype("float64")
    n_first = matched["n_first_us"].astype("float64")
    n_last = matched["n_last_us"].astype("float64")
    overlapping = (n_first - rules.tolerance_us <= last) & (first <= n_last + rules.tolerance_us)
    close = ~fingerprint | overlapping.fillna(False).to_numpy()
    in_window = ((n_hour - hour_us).abs() <= rules.window_us) & (
        (n_owner - hour_us).abs() <= rules.window_us
    )
    candidate = matched.loc[close & in_window.to_numpy() & (n_owner != hour_us).to_numpy()]
    if candidate.empty:
        return owners
    chosen = candidate.groupby("dedupe_key", sort=False)["n_owner_hour_us"].min().astype("int64")
    # What the owner delivered, when its own row is one of the matches.
    own_rows = candidate.loc[
        (candidate["n_hour_us"] == candidate["n_owner_hour_us"])
        & (candidate["n_owner_hour_us"] == candidate["dedupe_key"].map(chosen))
    ].drop_duplicates("dedupe_key")
    owners = owners.set_index("dedupe_key")
    owners.loc[chosen.index, "owner_hour_us"] = chosen
    owners.loc[own_rows["dedupe_key"], "owner_sources"] = (
        own_rows["n_sources"].astype("string").to_numpy()
    )
    owners.loc[own_rows["dedupe_key"], "owner_value"] = (
        own_rows["n_value"].astype("float64").to_numpy()
    )
    owners["owner_hour_us"] = owners["owner_hour_us"].astype("int64")
    return owners.reset_index()
