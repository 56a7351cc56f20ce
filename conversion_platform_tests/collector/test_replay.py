"""The demo's path: synthetic pixel hits and backend events replayed through a collector
child process over HTTP as an import source (`cli.replay_through_collector`). Every event
is accounted for; stored rows keep the recorded time received, the client address given
in X-Forwarded-For, the browser's cookies and the click ids of the page URL; nothing
plaintext is stored."""

from __future__ import annotations

from conversion_platform import events
from conversion_platform.cli import replay_through_collector
from conversion_platform.settings import Settings
from conversion_platform.store.database import create_database_engine
from conversion_platform.synthetic import TrafficGenerator, last_complete_hours
from conversion_platform_tests.collector.conftest import all_stored_text, landing_rows


def _micros(moment) -> int:  # type: ignore[no-untyped-def]
    return int(moment.timestamp() * 1_000_000)


def test_replayed_traffic_lands_as_it_was_recorded(settings: Settings):
    generator = TrafficGenerator(seed=3, people=300)
    traffic = generator.generate(last_complete_hours(2), conversions_per_hour=40)

    pixel, server = replay_through_collector(settings, traffic)

    assert pixel.failed == 0 and server.failed == 0
    assert pixel.accepted + pixel.rejected == len(traffic.pixel_events)
    assert server.accepted + server.rejected == len(traffic.server_events)
    assert server.requests == 1  # up to 1,000 events a request
    engine = create_database_engine(settings.db_url)
    rows = {(r["source"], r["event_id"]): r for r in landing_rows(engine)}
    assert len(rows) == pixel.accepted + server.accepted

    checked = 0
    for hit in traffic.pixel_events:
        row = rows.get((events.SOURCE_PIXEL, hit["event_id"]))
        if row is None:
            continue  # one of the synthetic invalid events, refused and quarantined
        checked += 1
        assert row["received_at_us"] == _micros(hit["received_at"])
        assert row["client_ip"] == hit["client_ip"]
        assert row["user_agent"] == hit["user_agent"]
        assert row["mpid"] == hit["mpid"]
        assert row["fbp"] == hit["fbp"]
        for column in events.CLICK_ID_COLUMNS:
            assert row[column] == hit.get(column), column
        if hit.get("fbclid"):
            assert row["fbc"].endswith("." + hit["fbclid"])
        assert row["value_verified"] is False
    assert checked == pixel.accepted

    for event in traffic.server_events:
        row = rows.get((events.SOURCE_SERVER, event["event_id"]))
        if row is not None:
            assert row["received_at_us"] == _micros(event["received_at"])
            assert row["value_verified"] is True

    stored = all_stored_text(engine)
    for person in generator.people[:300]:
        assert person.email.strip().lower() not in stored
    engine.dispose()
