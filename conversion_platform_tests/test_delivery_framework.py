"""The shared delivery machinery, with the emulator where a platform is needed.

Scope: modes (dry run without credentials writes exactly the bodies live mode POSTs, and
rewrites them on a re-run; no secret reaches the outbox or the delivery log), JSON that
needs escaping, consent (required vs not), duplicates within an hour, settled events left
alone whatever changed since, the digest guard (a non-digest in a hashed column is never
sent), Google's limit of 10 conversion actions a request, the YAML configuration and the
registry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.destinations.config import (
    DestinationConfigError,
    load_destination_configs,
)
from conversion_platform.destinations.delivery import HourDeliverer, plan_batches
from conversion_platform.destinations.dry_run_log import DryRunLog, WrittenBatch
from conversion_platform.destinations.google_ads import GoogleAdsDataManager
from conversion_platform.destinations.google_ads_legacy import GoogleAdsClickConversions
from conversion_platform.destinations.http_client import new_session
from conversion_platform.destinations.registry import destination_for
from conversion_platform.destinations.request_status import resolve_pending_requests
from conversion_platform.settings import SEEDS_DIR
from conversion_platform.store import delivery_log as log
from conversion_platform.store.database import create_database_engine
from conversion_platform.store.tables import delivery_batches, delivery_events
from conversion_platform_tests.delivery_support import (
    HOUR,
    TOKEN,
    EmulatorControl,
    batches,
    deliver,
    destination_config,
    frame_of,
    many,
    outcomes,
    record,
)

#: The emulator, its control client and the credential fixture.
pytest_plugins = ("conversion_platform_tests.delivery_support",)

PLATFORMS = [
    ("meta_capi", "meta"),
    ("google_ads", "google"),
    ("tiktok", "tiktok"),
    ("snapchat", "snapchat"),
]


@pytest.mark.parametrize(("name", "platform"), PLATFORMS)
def test_dry_run_writes_exactly_the_bodies_live_mode_posts(
    name: str,
    platform: str,
    emulator: EmulatorControl,
    engine: Engine,
    platform_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = frame_of(many(5, "d", user_agent='UA "x"\n\ttab'))
    config = destination_config(name, emulator.url, batch_size=2)
    # No credential set: dry run, whatever the configured mode.
    assert config.effective_mode() == "dry_run"
    report = deliver(engine, config, frame, tmp_path / "outbox")
    assert report.mode == "dry_run" and report.requests == 3
    outbox = Path(report.outbox_file or "")
    assert outbox == tmp_path / "outbox" / name / f"{HOUR:%Y-%m-%d-%H:%M}.jsonl"
    lines = outbox.read_bytes().splitlines()
    assert {s for s, _ in outcomes(engine, name).values()} == {"dry_run"}

    # The same hour live (a fresh log): the emulator receives the very same bodies.
    monkeypatch.setenv("TEST_DESTINATION_ACCESS_TOKEN", TOKEN)
    engine_live = create_database_engine(f"sqlite:///{tmp_path / 'live.db'}")
    deliver(engine_live, config, frame, tmp_path / "outbox-live")
    received = [r["body"] for r in emulator.requests(platform)]
    assert [orjson.loads(line) for line in lines] == received

    # A re-run in dry-run mode rewrites the hour's file, it never appends.
    monkeypatch.delenv("TEST_DESTINATION_ACCESS_TOKEN")
    deliver(engine, config, frame, tmp_path / "outbox")
    assert outbox.read_bytes().splitlines() == lines


def test_no_secret_reaches_the_outbox_or_the_log(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    for name, _ in PLATFORMS:
        config = destination_config(name, emulator.url)
        deliver(engine, config, frame_of([record(f"{name}-1")]), tmp_path)
        dry = destination_config(name, emulator.url, mode="dry_run")
        deliver(engine, dry, frame_of([record(f"{name}-2")]), tmp_path)
    with engine.connect() as conn:
        dump = repr(conn.execute(sa.select(delivery_batches)).fetchall())
        dump += repr(conn.execute(sa.select(delivery_events)).fetchall())
    assert TOKEN not in dump
    for path in tmp_path.rglob("*.jsonl"):
        assert TOKEN.encode() not in path.read_bytes()


def test_text_that_needs_escaping_round_trips(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    awkward = (
        'https://shop.example/a?q="quoted"&p=back\\slash&n=new\nline&t=\ttab&c=\x01&u=café ☕ 日本'
    )
    frame = frame_of([record("j-1", page_url=awkward, user_agent='Agent/1 "x"')])
    deliver(engine, destination_config("meta_capi", emulator.url), frame, tmp_path)
    event = emulator.last_body("meta")["data"][0]
    assert event["event_source_url"] == awkward
    assert event["user_data"]["client_user_agent"] == 'Agent/1 "x"'


def test_consent_required_treats_unknown_consent_as_denied(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of([record("u-1", consent_ad_user_data="unknown"), record("u-2")])
    config = destination_config("meta_capi", emulator.url)
    deliverer = HourDeliverer(
        engine,
        destination_for("meta_capi"),
        config,
        new_session(),
        tmp_path,
        consent_required=True,
    )
    report = deliverer.deliver_hour(frame, HOUR, "k")
    assert report.filtered == 1 and report.delivered == 1
    assert outcomes(engine, "meta_capi")["u-1"][0] == "filtered"


def test_duplicate_event_ids_in_an_hour_are_sent_once(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of([record("dup-1"), record("dup-1", event_name="lead"), record("dup-2")])
    report = deliver(engine, destination_config("tiktok", emulator.url), frame, tmp_path)
    assert report.duplicates == 1 and report.delivered == 2
    assert emulator.accepted("tiktok") == {"dup-1": 1, "dup-2": 1}


def test_settled_events_are_left_alone_whatever_changed(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    config = destination_config("meta_capi", emulator.url)
    deliver(engine, config, frame_of([record("z-1")]), tmp_path)
    # The same event again, now without consent: it was delivered, and stays so.
    report = deliver(
        engine, config, frame_of([record("z-1", consent_ad_user_data="denied")]), tmp_path
    )
    assert report.already_settled == 1 and report.filtered == 0 and report.requests == 0
    assert outcomes(engine, "meta_capi")["z-1"] == ("delivered", None)
    assert emulator.accepted("meta") == {"z-1": 1}


def test_a_value_that_is_not_a_digest_is_never_sent(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    frame = frame_of([record("h-1")])
    frame["email_sha256"] = "ana@example.com"  # plaintext where a digest belongs
    frame["phone_digits_sha256"] = frame["phone_digits_sha256"].str.upper()
    deliver(engine, destination_config("meta_capi", emulator.url), frame, tmp_path)
    user = emulator.last_body("meta")["data"][0]["user_data"]
    assert "em" not in user and "ph" not in user
    assert "fn" in user


def test_google_puts_at_most_10_conversion_actions_in_a_request(
    emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    names = [f"custom_{i:02d}" for i in range(12)]
    records = [
        record(f"ca-{i:02d}", event_name=name, order_id=None) for i, name in enumerate(names)
    ]
    config = destination_config(
        "google_ads", emulator.url, event_names={n: f"8000000{i:02d}" for i, n in enumerate(names)}
    )
    report = deliver(engine, config, frame_of(records * 1), tmp_path)
    bodies = [r["body"] for r in emulator.requests("google")]
    assert report.requests == 2
    assert [len(b["destinations"]) for b in bodies] == [10, 2]
    for body in bodies:
        references = {d["reference"] for d in body["destinations"]}
        assert {e["destinationReferences"][0] for e in body["events"]} <= references
    assert plan_batches(5, 2, ["a", "a", "b", "c", "c"], 2) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
    ]
    assert plan_batches(5, 2, None, None) == [range(0, 2), range(2, 4), range(4, 5)]


def test_default_configuration_enables_all_four_with_env_var_names(
    monkeypatch: pytest.MonkeyPatch, platform_home: Path
) -> None:
    monkeypatch.setenv("CONVERSION_PLATFORM_TIKTOK_BASE_URL", "http://127.0.0.1:9/tiktok")
    configs = {c.name: c for c in load_destination_configs(SEEDS_DIR / "destinations.yaml")}
    assert set(configs) == {"meta_capi", "google_ads", "tiktok", "snapchat"}
    for config in configs.values():
        assert config.mode == "live"
        assert config.credentials and all(v.isupper() for v in config.credentials.values())
        assert config.effective_mode() == "dry_run"  # no credentials in the environment
        destination_for(config.platform, config.settings)
    assert configs["tiktok"].base_url == "http://127.0.0.1:9/tiktok"
    assert configs["meta_capi"].base_url == "https://graph.facebook.com"
    assert isinstance(
        destination_for("google_ads", configs["google_ads"].settings), GoogleAdsDataManager
    )
    assert isinstance(destination_for("google_ads", {"api": "legacy"}), GoogleAdsClickConversions)
    with pytest.raises(ValueError, match="unknown platform 'myspace'"):
        destination_for("myspace")


def test_a_credential_value_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "destinations.yaml"
    path.write_text(
        "destinations:\n  meta_capi:\n    credentials:\n      access_token: EAAB-real-token\n"
    )
    with pytest.raises(DestinationConfigError, match="environment variables"):
        load_destination_configs(path)


@pytest.mark.parametrize(("name", "platform"), PLATFORMS)
def test_an_hour_encoded_in_chunks_sends_the_same_full_batches(
    name: str, platform: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    records = many(13, "c")
    records[6]["event_name"] = "page_view"  # not forwarded: chunks are uneven
    config = destination_config(name, emulator.url, batch_size=3)
    session = new_session()
    chunked = HourDeliverer(
        engine, destination_for(name, config.settings), config, session, tmp_path, chunk_rows=4
    )
    report = chunked.deliver_hour(frame_of(records), HOUR, "k")
    assert report.sent == 12 and report.requests == 4
    bodies = [r["body"] for r in emulator.requests(platform)]
    key = "events" if platform == "google" else "data"
    sent_ids = [e.get("event_id") or e.get("transactionId") for body in bodies for e in body[key]]
    assert [len(body[key]) for body in bodies] == [3, 3, 3, 3]
    assert sent_ids == [r["event_id"] for i, r in enumerate(records) if i != 6]
    assert set(emulator.accepted(platform).values()) == {1}


@pytest.mark.parametrize(("name", "platform"), PLATFORMS)
def test_an_hours_events_go_out_in_event_id_order_chunk_after_chunk(
    name: str, platform: str, engine: Engine, tmp_path: Path
) -> None:
    """Whatever order the hour holds its events in, they are encoded, batched and logged
    in event id order, so each chunk's outcomes follow the last chunk's in the log's key
    order; the events that can't be sent (no consent) are logged with them."""
    rng = np.random.default_rng(11)
    ids = [f"{rng.integers(16**12):012x}" for _ in range(23)]  # random, in no order
    records = [
        record(event_id, order_id=None, consent_ad_user_data="denied" if i % 5 == 0 else "granted")
        for i, event_id in enumerate(ids)
    ]
    config = destination_config(name, None, mode="dry_run", batch_size=3)
    report = deliver(engine, config, frame_of(records), tmp_path, chunk_rows=4)
    assert ids != sorted(ids)
    key = "events" if platform == "google" else "data"
    outbox = Path(report.outbox_file or "").read_bytes().splitlines()
    bodies = [orjson.loads(line)[key] for line in outbox]
    sent = [e.get("event_id") or e.get("transactionId") for body in bodies for e in body]
    assert sent == sorted(sent) and len(sent) == report.sent >= 18
    assert all(len(body) <= 3 for body in bodies)
    # Those not sent are the ones without consent (where the platform takes none), logged.
    logged = outcomes(engine, name)
    assert set(logged) == set(ids)
    assert {e for e, (status, _) in logged.items() if status == "dry_run"} == set(sent)
    unsent = {e: reason for e, (status, reason) in logged.items() if status != "dry_run"}
    assert set(unsent) == set(ids) - set(sent)
    assert set(unsent.values()) <= {"no ad_user_data consent"}


@pytest.mark.parametrize("mode", ["live", "dry_run"])
def test_an_empty_hour_sends_nothing_and_fails_nothing(
    mode: str, emulator: EmulatorControl, engine: Engine, token: str, tmp_path: Path
) -> None:
    for name, _ in PLATFORMS:
        config = destination_config(name, emulator.url, mode=mode)
        report = deliver(engine, config, frame_of([]), tmp_path)
        assert (report.sent, report.requests, report.pending) == (0, 0, 0)
    assert all(emulator.stats(p)["requests"] == 0 for _, p in PLATFORMS)


def test_the_delivery_log_on_postgresql(
    pg_url: str, emulator: EmulatorControl, token: str, tmp_path: Path
) -> None:
    """The same log on PostgreSQL: a partial failure, a re-run, and Google's status poll."""
    engine = create_database_engine(pg_url)
    try:
        config = destination_config("google_ads", emulator.url, batch_size=2)
        emulator.script("google", responses=[{}, {"status": 503}, {"status": 503}, {"status": 503}])
        frame = frame_of(many(4, "pg"))
        assert deliver(engine, config, frame, tmp_path).pending == 2
        again = deliver(engine, config, frame, tmp_path)
        assert again.already_settled == 2 and again.sent == 2
        session = new_session()
        polled = resolve_pending_requests(engine, destination_for("google_ads"), config, session)
        session.close()
        assert polled.events_delivered == 4
        log = outcomes(engine, "google_ads")
        assert {s for s, _ in log.values()} == {"delivered"}
        attempts = [r["attempt"] for r in batches(engine, "google_ads")]
        assert attempts == [1, 1, 2, 3, 1]
        assert emulator.accepted("google") == {f"pg-000{i}": 1 for i in range(4)}
    finally:
        engine.dispose()


@pytest.mark.parametrize("chunk_rows", [None, 1_000])
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_large_dry_run_hour_is_logged_whole_and_a_rerun_counts_attempts(
    database: str, chunk_rows: int | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Thousands of outcomes at once (the bulk writes: a JSON document on SQLite, COPY on
    PostgreSQL): one row per event with its batch, one row per request, both runs; the
    same when the hour is encoded, and handed to the log's writer, a chunk at a time."""
    if database == "postgresql":
        engine = create_database_engine(request.getfixturevalue("pg_url"))
    else:
        engine = request.getfixturevalue("engine")
    try:
        config = destination_config("meta_capi", None, mode="dry_run")
        records = many(2_400, "bulk") + many(300, "denied", consent_ad_user_data="denied")
        frame = frame_of(records)
        for _ in range(2):
            report = deliver(engine, config, frame, tmp_path, chunk_rows=chunk_rows)
            assert (report.sent, report.filtered, report.requests) == (2_400, 300, 3)
        query = sa.select(delivery_events).where(delivery_events.c.destination == "meta_capi")
        with engine.connect() as conn:
            rows = {r["event_id"]: dict(r) for r in conn.execute(query).mappings()}
        logged = batches(engine, "meta_capi")
        assert [b["event_count"] for b in logged] == [1_000, 1_000, 400] * 2
        assert {b["status"] for b in logged} == {"dry_run"}
        last_run = {e: b["id"] for b in logged[3:] for e in b["event_ids"]}
        assert len(rows) == 2_700 and len(last_run) == 2_400
        for event_id, row in rows.items():
            if event_id.startswith("denied"):
                assert (row["status"], row["attempts"], row["batch_id"]) == ("filtered", 0, None)
                assert row["reason"] == "no ad_user_data consent"
            else:
                assert (row["status"], row["attempts"]) == ("dry_run", 2)
                assert row["batch_id"] == last_run[event_id]
                assert row["event_name"] == "purchase" and row["match_quality"] is not None
        outbox = (tmp_path / "meta_capi").glob("*.jsonl")
        assert [len(p.read_bytes().splitlines()) for p in outbox] == [3]
    finally:
        if database == "postgresql":
            engine.dispose()


def _written(number: int, ids: list[str]) -> WrittenBatch:
    return WrittenBatch(number, ids, ["purchase"] * len(ids), [0.5] * len(ids), 1)


def test_an_abandoned_dry_run_hour_leaves_nothing_in_the_log(engine: Engine) -> None:
    """A failure while the hour is encoded rolls back what the writer already recorded."""
    dry_run_log = DryRunLog(engine, "meta_capi", HOUR, "run-1", "written to x")
    dry_run_log.record([_written(0, ["a", "b"])])
    dry_run_log.record([_written(1, ["c"])])
    dry_run_log.abandon()
    assert outcomes(engine, "meta_capi") == {}
    assert batches(engine, "meta_capi") == []


def test_a_failure_in_the_log_writer_surfaces_and_keeps_nothing(engine: Engine) -> None:
    """The writer thread's error is raised by `commit`, and the hour is rolled back whole."""
    dry_run_log = DryRunLog(engine, "meta_capi", HOUR, "run-1", "written to x")
    dry_run_log.record([_written(0, ["a", "b"])])
    broken = log.OutcomeColumns()
    broken.add(["d"], ["purchase"], None)  # type: ignore[arg-type]  # status is NOT NULL
    dry_run_log.record([], broken)
    with pytest.raises(sa.exc.IntegrityError):
        dry_run_log.commit()
    assert outcomes(engine, "meta_capi") == {}
    assert batches(engine, "meta_capi") == []


def test_a_committed_dry_run_hour_holds_every_chunk(engine: Engine) -> None:
    dry_run_log = DryRunLog(engine, "meta_capi", HOUR, "run-1", "written to x")
    dry_run_log.record([_written(0, ["a", "b"])])
    dry_run_log.record([_written(1, ["c"])])
    unsent = log.OutcomeColumns()
    unsent.add(["z"], ["purchase"], log.EVENT_FILTERED, "no ad_user_data consent")
    dry_run_log.record([], unsent)
    dry_run_log.commit()
    assert outcomes(engine, "meta_capi") == {
        "a": ("dry_run", None),
        "b": ("dry_run", None),
        "c": ("dry_run", None),
        "z": ("filtered", "no ad_user_data consent"),
    }
    assert [b["event_ids"] for b in batches(engine, "meta_capi")] == [["a", "b"], ["c"]]
