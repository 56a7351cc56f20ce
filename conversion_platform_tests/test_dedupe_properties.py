"""Property tests (hypothesis) of deduplication over generated streams.

Scope: streams of distinct conversions, each seen as one to four copies spread over
several hours and the three paths (pixel, backend, log), matched by event id, by order
id (with and without event ids) or by fingerprint. Properties, on SQLite:

* run in order, each distinct conversion gives exactly one row, in the earliest hour
  that received a copy of it; the number of rows equals the number of conversions;
* a backfill of the range (one call), re-running every hour afterwards (in any order),
  and shuffling the rows within the stream all give identical output;
* run in any order, every conversion is still delivered exactly once, and a second
  pass in any order reproduces each hour's output;
* the merged row keeps the union of its copies' identifiers (each value one a copy had);
* with a short window over a long stream, the hours that deliver a key are exactly the
  reference rule's (the first copy, then the first copy more than the window after the
  last delivery), and in any order no two deliveries of a key are within the window.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from conversion_platform.store.tables import dedupe_hour_figures, dedupe_ledger, metadata
from conversion_platform.transform.hourly_dedupe import deduplicate_hours
from conversion_platform_tests.dedupe_support import DAY0, copies_frame, copy

WINDOW = timedelta(days=7)
IDENTIFIERS = ("email_sha256", "phone_sha256", "external_id_sha256", "mpid", "client_ip",
               "user_agent", "gclid", "fbp")  # fmt: skip
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: For the properties that run every hour several times per example.
MULTI_PASS_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=12)


@pytest.fixture(scope="module")
def store() -> Iterator[Engine]:
    """One in-memory SQLite database for the module (tables emptied per example): the real
    SQL, without a file's commit cost on every hour of every example."""
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def reset(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(dedupe_ledger))
        conn.execute(sa.delete(dedupe_hour_figures))


@dataclass(frozen=True)
class Stream:
    """Copies (as `copy()` makes them), and the distinct conversion each copy belongs to."""

    copies: tuple[dict, ...]
    conversion_of: tuple[int, ...]
    hours: tuple[datetime, ...]

    def frame(self) -> pd.DataFrame:
        return copies_frame(list(self.copies)).assign(_truth=list(self.conversion_of))


SOURCES = ("pixel", "server", "log")


@st.composite
def streams(draw: st.DrawFn, max_hours: int = 4, max_conversions: int = 8) -> Stream:
    n_hours = draw(st.integers(2, max_hours))
    hours = tuple(DAY0 + timedelta(hours=10 + i) for i in range(n_hours))
    copies: list[dict] = []
    truth: list[int] = []
    for i in range(draw(st.integers(1, max_conversions))):
        kind = draw(st.sampled_from(["event_id", "order_id", "order_and_id", "fingerprint"]))
        first_hour = draw(st.integers(0, n_hours - 1))
        event_time = hours[first_hour] + timedelta(seconds=draw(st.integers(0, 3_599)))
        name = "purchase" if kind != "fingerprint" else draw(st.sampled_from(["lead", "sign_up"]))
        value = draw(st.sampled_from([None, 10.0, 25.5]))
        # A fingerprint's content is the same in every copy (that's what matches them).
        shared = {"mpid": f"mp-{i}", "email": f"person{i}@example.com"}
        for _ in range(draw(st.integers(1, 4))):
            source = draw(st.sampled_from(SOURCES))
            hour = draw(st.integers(first_hour, n_hours - 1))
            fields: dict = {"event_name": name}
            if kind == "fingerprint":
                fields.update(shared)
                if value is not None:
                    fields.update(value=value, currency="USD")
                copy_time = event_time + timedelta(seconds=draw(st.integers(0, 60)))
            else:
                copy_time = event_time + timedelta(seconds=draw(st.integers(0, 5)))
                if kind in ("event_id", "order_and_id"):
                    fields["event_id"] = f"e-{i}" if kind == "event_id" else f"e-{i}-{source}"
                if kind in ("order_id", "order_and_id") or draw(st.booleans()):
                    fields["order_id"] = f"o-{i}"
                if draw(st.booleans()):
                    fields.update(value=draw(st.sampled_from([5.0, 10.0, 99.99])), currency="EUR")
                for field, made in (
                    ("email", f"person{i}@example.com"),
                    ("phone", f"+1415555{i:04d}"),
                    ("external_id", f"cust-{i}"),
                    ("mpid", f"mp-{i}-{draw(st.integers(0, 1))}"),
                    ("client_ip", f"203.0.113.{i}"),
                    ("user_agent", f"agent-{source}"),
                    ("gclid", f"G-{i}"),
                    ("fbp", f"fb.1.1.{i}"),
                ):
                    if draw(st.booleans()):
                        fields[field] = made
            received = max(copy_time, hours[hour]) + timedelta(seconds=draw(st.integers(0, 59)))
            received = min(received, hours[hour] + timedelta(minutes=59, seconds=59))
            copies.append(copy(source, received, event_time=copy_time, **fields))
            truth.append(i)
    return Stream(tuple(copies), tuple(truth), hours)


def run_hours(
    engine: Engine, frame: pd.DataFrame, hours: list[datetime]
) -> dict[datetime, pd.DataFrame]:
    """Each hour in `hours` as its own run, in that order; each hour's latest output."""
    out = {}
    for hour in hours:
        mine = frame.loc[frame["hour"] == pd.Timestamp(hour)].drop(columns="_truth")
        out[hour] = deduplicate_hours(engine, mine.reset_index(drop=True), [hour], WINDOW).frame
    return out


def truth_of(stream_frame: pd.DataFrame, output: pd.DataFrame) -> pd.Series:
    """The generated conversion of each output row (through its copies' event ids / keys)."""
    from conversion_platform.transform.dedupe_keys import assign_dedupe_keys

    keyed = assign_dedupe_keys(stream_frame.drop(columns="_truth")).frame
    keyed["_truth"] = stream_frame["_truth"].to_numpy()
    lookup = keyed.groupby(["hour", "dedupe_key"])["_truth"].agg(lambda s: frozenset(s))
    return pd.Series(
        [lookup[(h, k)] for h, k in zip(output["hour"], output["dedupe_key"], strict=True)],
        dtype=object,
    )


def backfill(engine: Engine, frame: pd.DataFrame, hours: list[datetime]) -> pd.DataFrame:
    """All hours as one run, in order (equal to separate runs in order: tested below)."""
    return deduplicate_hours(engine, frame.drop(columns="_truth"), hours, WINDOW).frame


def all_rows(outputs: dict[datetime, pd.DataFrame]) -> pd.DataFrame:
    frames = [outputs[h] for h in sorted(outputs)]
    return pd.concat(frames, ignore_index=True)


@PROPERTY_SETTINGS
@given(stream=streams())
def test_in_order_one_row_per_conversion_in_its_earliest_hour(
    store: Engine, stream: Stream
) -> None:
    reset(store)
    frame = stream.frame()
    rows = backfill(store, frame, list(stream.hours))
    conversions = set(stream.conversion_of)
    assert len(rows) == len(conversions)
    truths = truth_of(frame, rows)
    assert all(len(t) == 1 for t in truths), "a row merged two different conversions"
    delivered = [next(iter(t)) for t in truths]
    assert sorted(delivered) == sorted(conversions), "a conversion delivered twice or never"
    earliest = frame.groupby("_truth")["hour"].min()
    for hour, conversion in zip(rows["hour"], delivered, strict=True):
        assert hour == earliest[conversion]


@MULTI_PASS_SETTINGS
@given(stream=streams(), seed=st.integers(0, 2**16))
def test_backfill_reruns_and_row_order_give_identical_output(
    store: Engine, stream: Stream, seed: int
) -> None:
    reset(store)
    frame = stream.frame()
    in_order = run_hours(store, frame, list(stream.hours))

    reset(store)
    pd.testing.assert_frame_equal(backfill(store, frame, list(stream.hours)), all_rows(in_order))

    shuffler = random.Random(seed)
    again_order = list(stream.hours)
    shuffler.shuffle(again_order)
    again = run_hours(store, frame, again_order)
    for hour in stream.hours:
        pd.testing.assert_frame_equal(again[hour], in_order[hour])

    reset(store)
    rows = list(range(len(frame)))
    shuffler.shuffle(rows)
    shuffled = backfill(store, frame.iloc[rows].reset_index(drop=True), list(stream.hours))
    pd.testing.assert_frame_equal(shuffled, all_rows(in_order))


@MULTI_PASS_SETTINGS
@given(stream=streams(), seed=st.integers(0, 2**16))
def test_any_order_delivers_each_conversion_once_and_a_second_pass_reproduces_it(
    store: Engine, stream: Stream, seed: int
) -> None:
    reset(store)
    frame = stream.frame()
    shuffler = random.Random(seed)
    order = list(stream.hours)
    shuffler.shuffle(order)
    first = run_hours(store, frame, order)
    rows = all_rows(first)
    truths = truth_of(frame, rows)
    delivered = sorted(next(iter(t)) for t in truths)
    assert delivered == sorted(set(stream.conversion_of))

    shuffler.shuffle(order)
    second = run_hours(store, frame, order + order[:2])
    for hour in stream.hours:
        pd.testing.assert_frame_equal(second[hour], first[hour])


@PROPERTY_SETTINGS
@given(stream=streams(max_hours=2))
def test_merging_keeps_the_union_of_identifiers(store: Engine, stream: Stream) -> None:
    reset(store)
    frame = stream.frame()
    rows = backfill(store, frame, list(stream.hours))
    truths = truth_of(frame, rows)
    for (_, row), truth in zip(rows.iterrows(), truths, strict=True):
        copies = frame.loc[(frame["_truth"] == next(iter(truth))) & (frame["hour"] == row["hour"])]
        for column in IDENTIFIERS:
            had = set(copies[column].dropna())
            if had:
                assert row[column] in had, (column, row[column], had)
            else:
                assert pd.isna(row[column])
        values = set(copies["value"].dropna())
        assert (row["value"] in values) if values else pd.isna(row["value"])


SHORT_WINDOW = timedelta(hours=2)
SPAN_HOURS = 7


@st.composite
def key_occurrences(draw: st.DrawFn) -> dict[str, list[int]]:
    """For a few event ids, the hours (0 to SPAN_HOURS - 1) that receive a copy."""
    return {
        f"e-{k}": sorted(draw(st.sets(st.integers(0, SPAN_HOURS - 1), min_size=1, max_size=6)))
        for k in range(draw(st.integers(1, 3)))
    }


def reference_deliveries(hours: list[int], window_hours: int) -> list[int]:
    """The rule, stated plainly: the first copy, then the first more than the window after."""
    delivered: list[int] = []
    for hour in hours:
        if not delivered or hour - delivered[-1] > window_hours:
            delivered.append(hour)
    return delivered


def occurrence_frame(occurrences: dict[str, list[int]]) -> pd.DataFrame:
    copies = [
        copy("server", DAY0 + timedelta(hours=h, minutes=30), event_id=key)
        for key, hours in occurrences.items()
        for h in hours
    ]
    return copies_frame(copies)


@settings(PROPERTY_SETTINGS, max_examples=15)
@given(occurrences=key_occurrences(), seed=st.integers(0, 2**16))
def test_deliveries_follow_the_window_in_order_and_never_repeat_within_it(
    store: Engine, occurrences: dict[str, list[int]], seed: int
) -> None:
    frame = occurrence_frame(occurrences)
    hours = [DAY0 + timedelta(hours=h) for h in range(SPAN_HOURS)]
    # Retention is not under test here: keep every row of the span.
    keep = timedelta(days=1)

    def index(hour: pd.Timestamp | datetime) -> int:
        return int((pd.Timestamp(hour) - pd.Timestamp(DAY0)).total_seconds() // 3600)

    def delivered(rows: pd.DataFrame) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {k: [] for k in occurrences}
        for event_id, hour in zip(rows["event_id"], rows["hour"], strict=True):
            out[event_id].append(index(hour))
        return {k: sorted(v) for k, v in out.items()}

    reset(store)
    in_order = deduplicate_hours(store, frame, hours, SHORT_WINDOW, retention=keep).frame
    window_hours = int(SHORT_WINDOW.total_seconds() // 3600)
    for key, hours_delivered in delivered(in_order).items():
        assert hours_delivered == reference_deliveries(occurrences[key], window_hours)

    reset(store)
    order = list(hours)
    random.Random(seed).shuffle(order)
    outputs = {}
    for hour in order:
        mine = frame.loc[frame["hour"] == pd.Timestamp(hour)].reset_index(drop=True)
        outputs[hour] = deduplicate_hours(store, mine, [hour], SHORT_WINDOW, retention=keep).frame
    for key, hours_delivered in delivered(all_rows(outputs)).items():
        assert hours_delivered, f"{key} never delivered"
        gaps = [b - a for a, b in itertools.pairwise(hours_delivered)]
        assert all(gap > window_hours for gap in gaps), (key, hours_delivered)
