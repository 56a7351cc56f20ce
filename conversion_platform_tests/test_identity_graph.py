"""The persistent identity graph on a real database (SQLite, and PostgreSQL when configured).

Scope: `transform/identity.py` with `store/identity_graph.py`: transitive linking across
hours, merges that keep the older person and are recorded, the per-kind caps and
unlinkable shared identifiers, junk values, idempotent re-runs, enrichment with contact
identifiers and with click ids inside each platform's window, and consent (denied events
never link nor get enriched; unknown counts as denied when consent is required).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from conversion_platform import events
from conversion_platform.store.identity_graph import current_person_id, graph_totals
from conversion_platform.store.tables import identity_identifiers, identity_merges, identity_persons
from conversion_platform.transform.identity import resolve_hours
from conversion_platform.transform.identity_graph import connected_components
from conversion_platform.transform.identity_rules import IdentityRules
from conversion_platform.transform.normalise import hash_email, hash_phone, sha256_hex
from conversion_platform_tests.identity_helpers import (
    DATABASES,
    at,
    by_event,
    frame_of,
    graph_snapshot,
    open_graph_engine,
    resolve,
    row,
)

EMAIL_A = "ann.smith@example.com"
EMAIL_B = "bob@example.com"
PHONE_B = "(415) 555-2671"


@pytest.fixture(params=DATABASES)
def graph_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from open_graph_engine(request, tmp_path)


def _digest(email: str) -> str:
    return hash_email(email)[0]  # type: ignore[return-value]


def _person_of(engine: Engine, kind: str, value: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(identity_identifiers.c.person_id).where(
                identity_identifiers.c.kind == kind, identity_identifiers.c.value == value
            )
        ).scalar()


def test_links_are_transitive_across_hours_and_enrich_later_conversions(
    graph_engine: Engine,
) -> None:
    # hour 0: an ad click lands on device 1; hour 1: a purchase on device 1 with an email;
    # hour 2: the same email on device 2; hour 3: a pixel-only conversion on device 2.
    click = row(at(0, 5), events.PAGE_VIEW, mpid="device-1", fbclid="IwAR-click-1")
    first = row(at(1, 10), mpid="device-1", email=EMAIL_A)
    second = row(at(2, 20), events.LEAD, mpid="device-2", email=EMAIL_A, phone=PHONE_B)
    later = row(at(3, 30), events.SIGN_UP, mpid="device-2")
    result = resolve(graph_engine, [click, first, second, later])
    rows = by_event(result)

    person = rows[later["event_id"]]["person_id"]
    assert person is not None
    assert {rows[e["event_id"]]["person_id"] for e in (click, first, second, later)} == {person}
    enriched = rows[later["event_id"]]
    assert enriched["email_sha256"] == _digest(EMAIL_A)
    assert enriched["email_google_sha256"] == hash_email(EMAIL_A)[1]
    assert enriched["phone_sha256"] == hash_phone(PHONE_B, "US")[0]
    assert enriched["phone_digits_sha256"] == hash_phone(PHONE_B, "US")[1]
    # the fbclid from the page view three hours earlier on the other device, as fbc too
    assert enriched["fbclid"] == "IwAR-click-1"
    click_ms = int(at(0, 5).timestamp() * 1000)
    assert enriched["fbc"] == f"fb.1.{click_ms}.IwAR-click-1"
    assert set(enriched["enriched_fields"].split(",")) == {"email", "phone", "fbclid", "fbc"}
    assert enriched["strong_keys_before"] == 0
    assert enriched["strong_keys_after"] == 3
    assert enriched["match_quality_meta"] == 9.0
    # the page view feeds the graph but is not enriched itself
    assert rows[click["event_id"]]["enriched_fields"] is None
    hour3 = result.per_hour[at(3)]
    assert hour3["with_strong_key_before"] == 0
    assert hour3["with_strong_key_after"] == 1
    assert hour3["conversions_enriched"] == 1


def test_merging_two_people_keeps_the_older_id_and_records_the_merge(
    graph_engine: Engine,
) -> None:
    older = row(at(0, 1), mpid="laptop", email=EMAIL_A)
    newer = row(at(1, 1), mpid="phone-browser", phone=PHONE_B)
    resolve(graph_engine, [older, newer])
    person_a = _person_of(graph_engine, "email", _digest(EMAIL_A))
    person_b = _person_of(graph_engine, "phone", hash_phone(PHONE_B, "US")[0])
    assert person_a and person_b and person_a != person_b

    bridge = row(at(2, 1), external_id="cust-1", email=EMAIL_A, phone=PHONE_B)
    result = resolve(graph_engine, [bridge])
    assert by_event(result)[bridge["event_id"]]["person_id"] == person_a
    assert result.per_hour[at(2)]["persons_merged"] == 1
    with graph_engine.connect() as conn:
        merges = conn.execute(sa.select(identity_merges)).mappings().all()
        assert [(m["merged_person_id"], m["into_person_id"]) for m in merges] == [
            (person_b, person_a)
        ]
        assert merges[0]["identifiers_moved"] == 2  # phone and the phone-browser mpid
        assert current_person_id(conn, person_b) == person_a
        persons = conn.execute(sa.select(identity_persons)).mappings().all()
        assert [p["person_id"] for p in persons] == [person_a]
        assert (persons[0]["mpid_count"], persons[0]["email_count"]) == (2, 1)
        assert (persons[0]["phone_count"], persons[0]["external_id_count"]) == (1, 1)
    for kind, value in (
        ("mpid", "phone-browser"),
        ("phone", hash_phone(PHONE_B, "US")[0]),
        ("external_id", sha256_hex("cust-1")),
    ):
        assert _person_of(graph_engine, kind, value) == person_a


def test_a_shared_device_does_not_merge_its_users(graph_engine: Engine) -> None:
    # a shop's till or a family computer: one cookie, seven people's emails in one hour
    emails = [f"shopper{i}@example.com" for i in range(7)]
    shared = [row(at(0, i), mpid="till-1", email=e) for i, e in enumerate(emails)]
    own_device = [row(at(0, 30 + i), mpid=f"own-{i}", email=e) for i, e in enumerate(emails)]
    result = resolve(graph_engine, shared + own_device)
    rows = by_event(result)
    persons = {rows[r["event_id"]]["person_id"] for r in own_device}
    assert len(persons) == 7  # seven people, not one
    assert result.per_hour[at(0)]["identifiers_made_unlinkable"] == 1
    with graph_engine.connect() as conn:
        till = (
            conn.execute(
                sa.select(identity_identifiers).where(identity_identifiers.c.value == "till-1")
            )
            .mappings()
            .one()
        )
        assert till["linkable"] is False and till["person_id"] is None
        assert conn.execute(sa.select(sa.func.max(identity_persons.c.email_count))).scalar() == 1
    # and it stays unlinkable: next hour the till with one email links nobody
    again = row(at(1, 0), mpid="till-1", email=emails[0], phone=PHONE_B)
    later = row(at(1, 5), events.LEAD, mpid="till-1")
    own_person = rows[own_device[0]["event_id"]]["person_id"]
    rows = by_event(resolve(graph_engine, [again, later]))
    assert rows[again["event_id"]]["person_id"] == own_person
    assert rows[later["event_id"]]["person_id"] is None  # nobody is enriched through it
    assert rows[later["event_id"]]["enriched_fields"] is None


def test_a_person_never_grows_past_the_cap(graph_engine: Engine) -> None:
    rules = IdentityRules(caps={"email": 3, "phone": 5, "external_id": 5, "mpid": 10})
    hour0 = [row(at(0, i), mpid="device", email=f"alias{i}@example.com") for i in range(3)]
    resolve(graph_engine, hour0, rules)
    fourth = row(at(1, 0), mpid="device", email="alias3@example.com")
    result = resolve(graph_engine, [fourth], rules)
    assert result.per_hour[at(1)]["links_refused_by_cap"] == 1
    with graph_engine.connect() as conn:
        counts = conn.execute(sa.select(identity_persons.c.email_count)).scalars().all()
    assert counts == [3]
    assert _person_of(graph_engine, "email", _digest("alias3@example.com")) is None
    # two capped persons are not merged through a new bridge either
    other = [row(at(2, i), mpid="other", email=f"other{i}@example.com") for i in range(3)]
    bridge = row(at(3, 0), email="alias0@example.com", mpid="other")
    result = resolve(graph_engine, [*other, bridge], rules)
    assert result.per_hour[at(3)]["persons_merged"] == 0
    assert result.per_hour[at(3)]["links_refused_by_cap"] == 1


def test_the_callers_frame_is_left_as_it_was(graph_engine: Engine) -> None:
    """Resolution shares the caller's column arrays (no copy of every cell) and replaces
    the columns it changes (junk blanked, contacts enriched) instead of writing into them."""
    frame = frame_of(
        [
            row(at(0, 1), mpid="m-1", email="ana@example.com", phone="+14155550100"),
            row(at(0, 2), mpid="m-1"),  # enriched with Ana's email and phone
            row(at(0, 3), mpid="undefined", email="test@test.com"),  # junk blanked
        ]
    )
    before = frame.copy(deep=True)
    result = resolve_hours(graph_engine, frame, [at(0)], IdentityRules())
    assert result.per_hour[at(0)]["junk_identifiers_removed"] == 2  # one email, one mpid
    assert result.frame["email_sha256"].notna().sum() == 2
    pd.testing.assert_frame_equal(frame, before)


def test_junk_values_are_removed_and_never_link(graph_engine: Engine) -> None:
    junk_rows = [
        row(at(0, 1), mpid="m-1", email="test@test.com"),
        row(at(0, 2), mpid="m-2", email_sha256=sha256_hex("test@test.com")),
        row(at(0, 3), mpid="m-3", email_sha256=sha256_hex(""), email_google_sha256=sha256_hex("")),
        row(at(0, 4), mpid="m-4", external_id_sha256=sha256_hex("NULL")),
        row(at(0, 5), mpid="m-5", phone_sha256=sha256_hex("+15555555555")),
        row(at(0, 6), mpid="m-6", phone_digits_sha256=sha256_hex("447777777777")),
        row(at(0, 7), mpid="undefined", email="email@example.com"),
        row(at(0, 8), mpid="m-8", external_id_sha256=sha256_hex("0")),
    ]
    result = resolve(graph_engine, junk_rows)
    rows = by_event(result)
    for r in junk_rows:
        out = rows[r["event_id"]]
        for column in (
            "email_sha256",
            "email_google_sha256",
            "phone_sha256",
            "phone_digits_sha256",
            "external_id_sha256",
        ):
            assert out[column] is None, (r["mpid"], column)
    assert rows[junk_rows[6]["event_id"]]["mpid"] is None
    assert result.per_hour[at(0)]["junk_identifiers_removed"] == 9
    totals = graph_totals(graph_engine)
    assert totals["persons"] == 0 and totals["identifiers"] == 0  # nothing was linked


def test_a_custom_blocklist_and_no_domain_blocking(graph_engine: Engine) -> None:
    rules = IdentityRules(blocked_emails=("orders@shop.example",), blocked_values=("guest",))
    events_ = [
        row(at(0, 1), mpid="a", email="orders@shop.example"),
        row(at(0, 2), mpid="b", email="orders@shop.example"),
        row(at(0, 3), mpid="GUEST", email="real.person@shop.example"),
        row(at(0, 4), mpid="c", email="test@test.com"),  # the defaults were replaced
    ]
    rows = by_event(resolve(graph_engine, events_, rules))
    assert rows[events_[0]["event_id"]]["email_sha256"] is None
    assert rows[events_[0]["event_id"]]["person_id"] is None
    assert rows[events_[2]["event_id"]]["mpid"] is None
    # the same domain is not blocked: a real address on it stays
    assert rows[events_[2]["event_id"]]["email_sha256"] == _digest("real.person@shop.example")
    assert rows[events_[3]["event_id"]]["person_id"] is not None


def test_rerunning_hours_changes_nothing(graph_engine: Engine) -> None:
    hours = [
        [
            row(at(0, 1), events.PAGE_VIEW, mpid="d1", gclid="gclid-1"),
            row(at(0, 2), mpid="d1", email=EMAIL_A),
            row(at(0, 3), mpid="d2", phone=PHONE_B),
        ],
        [
            row(at(1, 1), email=EMAIL_A, phone=PHONE_B),  # merges the two
            row(at(1, 2), events.LEAD, mpid="d2"),
        ],
        [row(at(2, i), mpid="shared", email=f"user{i}@example.com") for i in range(12)],
    ]
    for offset, events_of_hour in enumerate(hours):
        first = resolve(graph_engine, events_of_hour)
        assert first.per_hour[at(offset)]["persons_merged"] == (1 if offset == 1 else 0)
        state = graph_snapshot(graph_engine)
        rerun = resolve(graph_engine, events_of_hour)
        assert graph_snapshot(graph_engine) == state
        assert rerun.frame.equals(first.frame)
        figures = rerun.per_hour[at(offset)]
        assert (figures["persons_merged"], figures["identifiers_new"]) == (0, 0)
        assert figures["identifiers_made_unlinkable"] == 0
    assert first.per_hour[at(2)]["conversions"] == 12
    # a backfill of the whole range later adds nothing either (an older hour re-run later
    # may be enriched with what the graph learned since, but links nothing new)
    state = graph_snapshot(graph_engine)
    again = resolve(graph_engine, [r for h in hours for r in h])
    assert graph_snapshot(graph_engine) == state
    assert sum(f["persons_merged"] + f["identifiers_new"] for f in again.per_hour.values()) == 0
    assert len(again.frame) == sum(len(h) for h in hours)


@pytest.mark.parametrize(
    ("click_type", "age", "expected"),
    [
        ("fbclid", timedelta(days=6, hours=23), True),
        ("fbclid", timedelta(days=7, hours=1), False),  # Meta: 7 days
        ("ttclid", timedelta(days=8), False),  # TikTok: 7 days
        ("gclid", timedelta(days=80), True),  # Google: 90 days
        ("gclid", timedelta(days=91), False),
        ("sccid", timedelta(days=27), True),  # Snapchat: 28 days
        ("sccid", timedelta(days=29), False),
    ],
)
def test_click_ids_enrich_only_inside_their_window(
    graph_engine: Engine, click_type: str, age: timedelta, expected: bool
) -> None:
    conversion_time = at(0, 30) + timedelta(days=100)
    click = row(conversion_time - age, events.PAGE_VIEW, mpid="d", **{click_type: "click-xyz"})
    login = row(conversion_time - age + timedelta(minutes=1), mpid="d", email=EMAIL_A)
    conversion = row(conversion_time, email=EMAIL_A)
    rows = by_event(resolve(graph_engine, [click, login, conversion]))
    assert (rows[conversion["event_id"]][click_type] == "click-xyz") is expected


def test_the_latest_click_before_the_conversion_wins(graph_engine: Engine) -> None:
    older = row(at(0, 1), events.PAGE_VIEW, mpid="d", gclid="gclid-old")
    newer = row(at(1, 1), events.PAGE_VIEW, mpid="d", gclid="gclid-new")
    conversion = row(at(1, 30), mpid="d", email=EMAIL_A)
    after = row(at(1, 45), events.PAGE_VIEW, mpid="d", gclid="gclid-after")
    own = row(at(1, 50), mpid="d", gclid="gclid-own")
    rows = by_event(resolve(graph_engine, [older, newer, conversion, after, own]))
    assert rows[conversion["event_id"]]["gclid"] == "gclid-new"  # not the one seen after it
    assert rows[own["event_id"]]["gclid"] == "gclid-own"  # a conversion's own id is kept
    assert rows[conversion["event_id"]]["enriched_fields"] == "gclid"


def test_click_windows_are_configurable(graph_engine: Engine) -> None:
    rules = IdentityRules(click_windows={"fbclid": timedelta(days=10)})
    click = row(at(0, 1), events.PAGE_VIEW, mpid="d", fbclid="fb-click")
    conversion = row(at(0, 2) + timedelta(days=9), mpid="d", email=EMAIL_A)
    rows = by_event(resolve(graph_engine, [click, conversion], rules))
    assert rows[conversion["event_id"]]["fbclid"] == "fb-click"


def test_events_without_consent_neither_link_nor_get_enriched(graph_engine: Engine) -> None:
    known = [
        row(at(0, 1), events.PAGE_VIEW, mpid="d", fbclid="fb-1"),
        row(at(0, 2), mpid="d", email=EMAIL_A),
    ]
    denied = row(at(1, 1), consent=events.CONSENT_DENIED, mpid="d", phone=PHONE_B)
    denied_pixel = row(at(1, 2), consent=events.CONSENT_DENIED, mpid="d")
    unknown = row(at(1, 3), consent=events.CONSENT_UNKNOWN, mpid="d")
    result = resolve(graph_engine, [*known, denied, denied_pixel, unknown])
    rows = by_event(result)
    # the denied phone never entered the graph
    assert _person_of(graph_engine, "phone", hash_phone(PHONE_B, "US")[0]) is None
    for event in (denied, denied_pixel):
        out = rows[event["event_id"]]
        assert out["person_id"] is None
        assert out["enriched_fields"] is None
        assert out["email_sha256"] is None
        assert out["match_quality"] == 0.0
        assert all(out[f"match_quality_{p}"] == 0.0 for p in events.MATCH_QUALITY_PLATFORMS)
        assert out["strong_keys_before"] == 0
    assert result.per_hour[at(1)]["events_without_consent"] == 2
    # unknown counts as granted by default
    assert rows[unknown["event_id"]]["email_sha256"] == _digest(EMAIL_A)


def test_consent_required_makes_unknown_count_as_denied(graph_engine: Engine) -> None:
    known = row(at(0, 1), mpid="d", email=EMAIL_A)
    unknown_link = row(at(0, 2), consent=events.CONSENT_UNKNOWN, mpid="d", phone=PHONE_B)
    unknown_conversion = row(at(0, 3), consent=events.CONSENT_UNKNOWN, mpid="d")
    rows = by_event(
        resolve(graph_engine, [known, unknown_link, unknown_conversion], consent_required=True)
    )
    assert _person_of(graph_engine, "phone", hash_phone(PHONE_B, "US")[0]) is None
    assert rows[unknown_conversion["event_id"]]["email_sha256"] is None
    assert rows[unknown_conversion["event_id"]]["person_id"] is None
    assert rows[known["event_id"]]["person_id"] is not None


def test_an_empty_hour_resolves_to_nothing(graph_engine: Engine) -> None:
    result = resolve_hours(graph_engine, frame_of([]).iloc[0:0], [at(0)], IdentityRules())
    assert result.frame.empty
    assert result.per_hour[at(0)]["conversions"] == 0
    assert list(result.frame.columns)[-1] == "enriched_fields"


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60),
        )
    )
)
def test_connected_components_match_a_plain_search(
    graph: tuple[int, list[tuple[int, int]]],
) -> None:
    size, edges = graph
    a = np.array([e[0] for e in edges], dtype=np.int64)
    b = np.array([e[1] for e in edges], dtype=np.int64)
    labels = connected_components(size, a, b)
    neighbours: dict[int, set[int]] = {i: set() for i in range(size)}
    for x, y in edges:
        neighbours[x].add(y)
        neighbours[y].add(x)
    for start in range(size):
        seen, todo = {start}, [start]
        while todo:
            for nxt in neighbours[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert labels[start] == min(seen)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_event_times_are_read_as_microseconds_whatever_the_columns_unit(unit: str) -> None:
    from conversion_platform.transform.identity import _times_us

    moment = pd.Timestamp("2026-11-30 10:15:30.123456", tz="UTC")
    frame = pd.DataFrame({"event_time": pd.Series([moment]).astype(f"datetime64[{unit}, UTC]")})
    expected = pd.Timestamp(moment).floor({"s": "s", "ms": "ms"}.get(unit, "us"))
    assert _times_us(frame).tolist() == [expected.value // 1_000]
