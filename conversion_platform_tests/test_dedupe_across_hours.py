"""Tests of deduplication across hours against the ledger (`transform.hourly_dedupe`,
`transform.cross_hour`, `store.ledger`), on SQLite and, when configured, PostgreSQL.

Scope: the boundary cases of the issue (pixel copy at 10:59:59 and backend copy at
11:00:02, in either order; a late duplicate 30 hours later; a duplicate 8 days later is
a new conversion, and the window then counts from it; a re-run of an hour after later
hours ran), fingerprints matched across an hour boundary within the tolerance, order
keys across hours, later hours run first, late backend copies counted (and value
mismatches), the per-hour figures persisted, ledger retention, and two hours claiming
one key at the same time from two threads (exactly one delivers it).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy.engine import Engine

from conversion_platform.store import ledger
from conversion_platform.store.dedupe_figures import read_hour_figures
from conversion_platform.store.ledger import ledger_rows
from conversion_platform.store.timecodes import to_micros
from conversion_platform.transform.hourly_dedupe import DedupeResult, deduplicate_hours
from conversion_platform_tests.dedupe_support import (
    at,
    copies_frame,
    copy,
    hour_of,
    ledger_engine,
    of_hour,
)

__all__ = ["ledger_engine"]  # the fixture, imported for pytest

WINDOW = timedelta(days=7)


def run(engine: Engine, frame: pd.DataFrame, *hours: datetime) -> DedupeResult:
    """Run `hours` as one run (a backfill when several), with their copies."""
    mine = frame.loc[frame["hour"].isin([pd.Timestamp(h) for h in hours])]
    return deduplicate_hours(engine, mine.reset_index(drop=True), list(hours), WINDOW)


def delivered(result: DedupeResult, hour: datetime) -> list[str]:
    return sorted(of_hour(result.frame, hour)["event_id"])


H10, H11 = hour_of(at(10)), hour_of(at(11))

BOUNDARY = [
    copy("pixel", at(10, 59, 59), event_id="e-1", value=10.0, currency="USD", mpid="mp-1"),
    copy("server", at(11, 0, 2), event_time=at(10, 59, 59), event_id="e-1", value=12.5,
         currency="USD", email="buyer@example.com"),
]  # fmt: skip


def test_pixel_copy_at_10_59_59_and_backend_copy_at_11_00_02(ledger_engine: Engine) -> None:
    frame = copies_frame(BOUNDARY)
    first = run(ledger_engine, frame, H10)
    second = run(ledger_engine, frame, H11)
    assert delivered(first, H10) == ["e-1"]
    assert delivered(second, H11) == []
    figures = second.per_hour[H11]
    assert (figures.copies_in, figures.late_duplicates, figures.conversions_out) == (1, 1, 0)
    # The backend confirmed a pixel-only delivery, with a different value: both counted.
    assert figures.late_backend_confirmations == 1
    assert figures.late_value_mismatches == 1
    rows = ledger_rows(ledger_engine, H10, H11 + timedelta(hours=1))
    assert set(rows["owner_hour_us"]) == {to_micros(H10)}


def test_the_boundary_pair_run_as_one_backfill_gives_the_same_result(
    ledger_engine: Engine,
) -> None:
    frame = copies_frame(BOUNDARY)
    result = run(ledger_engine, frame, H10, H11)
    assert delivered(result, H10) == ["e-1"]
    assert delivered(result, H11) == []
    assert result.per_hour[H11].late_duplicates == 1


def test_when_the_later_hour_runs_first_the_conversion_is_delivered_once(
    ledger_engine: Engine,
) -> None:
    frame = copies_frame(BOUNDARY)
    later = run(ledger_engine, frame, H11)
    earlier = run(ledger_engine, frame, H10)
    assert delivered(later, H11) == ["e-1"]
    assert delivered(earlier, H10) == []
    assert earlier.per_hour[H10].delivered_by_later_hour == 1
    # Re-running either hour now reproduces what it did.
    assert delivered(run(ledger_engine, frame, H11), H11) == ["e-1"]
    assert delivered(run(ledger_engine, frame, H10), H10) == []


def test_the_ledger_is_searched_a_slice_of_keys_at_a_time_and_misses_none(
    ledger_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hour's distinct match keys go to the ledger a slice at a time: every slice's
    matches count, and a key no other hour holds matches nothing."""
    monkeypatch.setattr(ledger, "_LOOKUP_KEYS", 4)
    pixel = [
        copy("pixel", at(10, 5, i), event_id=f"e-{i}", order_id=f"o-{i}", mpid=f"mp-{i}")
        for i in range(9)
    ]
    backend = [
        copy("server", at(11, 0, i), event_time=at(10, 5, i), event_id=f"e-{i}",
             order_id=f"o-{i}", email=f"buyer{i}@example.com")
        for i in range(0, 9, 2)
    ] + [copy("server", at(11, 1), event_id="new-1", order_id="o-new")]  # fmt: skip
    frame = copies_frame(pixel + backend)
    assert delivered(run(ledger_engine, frame, H10), H10) == sorted(f"e-{i}" for i in range(9))
    late = run(ledger_engine, frame, H11)
    assert delivered(late, H11) == ["new-1"]
    assert late.per_hour[H11].late_duplicates == 5
    assert late.per_hour[H11].late_backend_confirmations == 5


def test_a_late_duplicate_30_hours_later_is_not_delivered_again(ledger_engine: Engine) -> None:
    frame = copies_frame(
        [
            copy("pixel", at(10, 15), event_id="e-1"),
            copy("server", at(16, 15, day=1), event_time=at(10, 15), event_id="e-1"),
        ]
    )
    late_hour = hour_of(at(16, day=1))
    assert delivered(run(ledger_engine, frame, H10), H10) == ["e-1"]
    late = run(ledger_engine, frame, late_hour)
    assert delivered(late, late_hour) == []
    assert late.per_hour[late_hour].late_duplicates == 1


def test_a_duplicate_8_days_later_is_a_new_conversion_and_the_window_counts_from_it(
    ledger_engine: Engine,
) -> None:
    day8, day9 = hour_of(at(10, day=8)), hour_of(at(10, day=9))
    frame = copies_frame(
        [
            copy("server", at(10, 15), event_id="e-1"),
            copy("server", at(10, 15, day=8), event_id="e-1"),
            copy("server", at(10, 15, day=9), event_id="e-1"),
        ]
    )
    assert delivered(run(ledger_engine, frame, H10), H10) == ["e-1"]
    eighth = run(ledger_engine, frame, day8)
    assert delivered(eighth, day8) == ["e-1"]
    assert eighth.per_hour[day8].late_duplicates == 0
    # A third copy a day after the second is within the second's window: a duplicate.
    ninth = run(ledger_engine, frame, day9)
    assert delivered(ninth, day9) == []
    owners = ledger_rows(ledger_engine, day9, day9 + timedelta(hours=1))["owner_hour_us"]
    assert list(owners) == [to_micros(day8)]


def test_exactly_the_window_apart_is_still_a_duplicate(ledger_engine: Engine) -> None:
    frame = copies_frame(
        [
            copy("server", at(10, 5), event_id="e-1"),
            copy("server", at(10, 5, day=7), event_id="e-1"),
        ]
    )
    run(ledger_engine, frame, H10)
    week = hour_of(at(10, day=7))
    assert delivered(run(ledger_engine, frame, week), week) == []


def test_rerunning_an_hour_after_later_hours_ran_reproduces_it(ledger_engine: Engine) -> None:
    frame = copies_frame(
        [
            copy("pixel", at(10, 20), event_id="e-1"),
            copy("pixel", at(10, 25), event_id="e-2"),
            copy("server", at(11, 5), event_time=at(10, 20), event_id="e-1"),
            copy("server", at(12, 5), event_id="e-3"),
            copy("pixel", at(12, 6), event_time=at(10, 25), event_id="e-2"),
        ]
    )
    hours = [H10, H11, hour_of(at(12))]
    first = {h: run(ledger_engine, frame, h).frame for h in hours}
    again = run(ledger_engine, frame, H10).frame
    pd.testing.assert_frame_equal(again, first[H10])
    assert sorted(again["event_id"]) == ["e-1", "e-2"]
    pd.testing.assert_frame_equal(run(ledger_engine, frame, H11).frame, first[H11])
    assert list(first[hour_of(at(12))]["event_id"]) == ["e-3"]


def test_a_fingerprint_is_matched_across_the_hour_boundary(ledger_engine: Engine) -> None:
    lead = {"event_name": "lead", "email": "lead@example.com", "mpid": "mp-9"}
    frame = copies_frame(
        [
            copy("pixel", at(10, 59, 59), **lead),
            copy("pixel", at(11, 0, 40), **lead),  # 41 s later: one lead
            copy("pixel", at(11, 8, 0), **lead),  # 8 minutes later: another lead
        ]
    )
    result = run(ledger_engine, frame, H10, H11)
    assert len(of_hour(result.frame, H10)) == 1
    assert len(of_hour(result.frame, H11)) == 1
    assert result.per_hour[H11].late_duplicates == 1
    assert of_hour(result.frame, H11).loc[0, "event_time"] == pd.Timestamp(at(11, 8))


def test_a_fingerprint_past_the_tolerance_across_the_boundary_is_new(
    ledger_engine: Engine,
) -> None:
    lead = {"event_name": "lead", "email": "lead@example.com"}
    frame = copies_frame(
        [copy("pixel", at(10, 58, 0), **lead), copy("pixel", at(11, 0, 1), **lead)]
    )
    result = run(ledger_engine, frame, H10, H11)
    assert len(result.frame) == 2


def test_an_order_seen_by_the_pixel_and_later_by_the_access_log(ledger_engine: Engine) -> None:
    frame = copies_frame(
        [
            copy("pixel", at(10, 59, 58), event_id="e-5", order_id="o-5", value=8, currency="USD"),
            copy("log", at(11, 0, 3), event_time=at(10, 59, 58), order_id="o-5", value=8,
                 currency="USD"),
        ]
    )  # fmt: skip
    result = run(ledger_engine, frame, H10, H11)
    assert delivered(result, H10) == ["e-5"]
    assert delivered(result, H11) == []


def test_a_copy_linked_only_through_a_duplicate_of_another_hour_is_a_duplicate(
    ledger_engine: Engine,
) -> None:
    # Hour 10 delivers (e-1, o-1); hour 11 sees (e-2, o-1): a duplicate through the order;
    # hour 12 sees e-2 alone: still the conversion hour 10 delivered.
    h12 = hour_of(at(12))
    frame = copies_frame(
        [
            copy("pixel", at(10, 5), event_id="e-1", order_id="o-1"),
            copy("server", at(11, 5), event_id="e-2", order_id="o-1"),
            copy("pixel", at(12, 5), event_id="e-2"),
        ]
    )
    result = run(ledger_engine, frame, H10, H11, h12)
    assert delivered(result, H10) == ["e-1"]
    assert delivered(result, H11) == []
    assert delivered(result, h12) == []


def test_figures_are_persisted_and_replaced_on_a_rerun(ledger_engine: Engine) -> None:
    frame = copies_frame([*BOUNDARY, copy("server", at(11, 30), event_id="e-2")])
    for _ in range(2):
        run(ledger_engine, frame, H10, H11)
    figures = read_hour_figures(ledger_engine, H10, H11 + timedelta(hours=1))
    assert list(figures["copies_in"]) == [1, 2]
    assert list(figures["late_duplicates"]) == [0, 1]
    assert list(figures["conversions_out"]) == [1, 1]
    assert list(figures["duplicate_rate"]) == [0.0, 0.5]


def test_rows_older_than_the_retention_are_forgotten(ledger_engine: Engine) -> None:
    old, new = at(10, 5), at(10, 5, day=20)
    frame = copies_frame(
        [copy("server", old, event_id="e-old"), copy("server", new, event_id="e-new")]
    )
    run(ledger_engine, frame, hour_of(old))
    run(ledger_engine, frame, hour_of(new))
    rows = ledger_rows(ledger_engine, hour_of(old), hour_of(new) + timedelta(hours=1))
    assert list(rows["event_id"]) == ["e-new"]


def test_two_hours_claiming_one_key_at_once_deliver_it_once(ledger_engine: Engine) -> None:
    hours = [hour_of(at(h)) for h in range(10, 16)]
    frame = copies_frame([copy("server", h + timedelta(minutes=30), event_id="e-1") for h in hours])
    results: dict[datetime, DedupeResult] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(hours))

    def claim(hour: datetime) -> None:
        try:
            start.wait()
            results[hour] = run(ledger_engine, frame, hour)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(h,)) for h in hours]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sum(len(r.frame) for r in results.values()) == 1
