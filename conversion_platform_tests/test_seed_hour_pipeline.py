"""One hour of the committed seed data through the whole asset graph with a real
`materialize`: counts at every stage, the quarantine, the Meta outbox body, re-runs,
the blocking invalid-rate check, the schedule, and that `Definitions` loads."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import orjson
import pandas as pd
import pytest
import sqlalchemy as sa

from conversion_platform.definitions import build_definitions
from conversion_platform.settings import Settings
from conversion_platform.store.database import engine_for
from conversion_platform.store.tables import delivery_batches, delivery_events, quarantine
from conversion_platform_tests.seed_data import (
    SEED_HOUR,
    copy_seed_logs,
    land_seed_payloads,
    recent_hour_delta,
)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def seeded(platform_home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, datetime, str]:
    """Seed logs and payloads moved to a recent hour; returns settings, the hour and its key."""
    delta = recent_hour_delta(hours_ago=3)
    settings = Settings.from_env()
    copy_seed_logs(settings.logs_dir, delta)
    counts = land_seed_payloads(engine_for(settings.db_url), delta)
    assert counts == {"pixel": 3, "pixel_rejected": 0, "server": 3, "server_rejected": 1}
    hour = SEED_HOUR + delta
    return settings, hour, hour.strftime("%Y-%m-%d-%H:%M")


def _materialize(
    settings: Settings, key: str, instance: dg.DagsterInstance
) -> dg.ExecuteInJobResult:
    definitions = build_definitions(settings)
    job = definitions.resolve_job_def("hourly_conversions_job")
    return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


def _parquet(settings: Settings, asset: str, key: str) -> pd.DataFrame:
    return pd.read_parquet(settings.partitions_dir / asset / f"{key}.parquet")


def test_definitions_load_with_every_stage() -> None:
    definitions = build_definitions()
    keys = {k.to_user_string() for k in definitions.resolve_all_asset_keys()}
    assert {
        "server_log_conversions",
        "collected_conversions",
        "deduplicated_conversions",
        "validated_conversions",
        "quarantined_conversions",
        "resolved_conversions",
        "delivery/meta_capi",
    } <= keys
    assert definitions.resolve_job_def("hourly_conversions_job") is not None
    assert definitions.resolve_schedule_def("hourly_conversions_schedule") is not None
    checks = {c.name for c in definitions.resolve_asset_graph().asset_check_keys}
    assert {"invalid_rate_below_threshold", "duplicate_rate_in_usual_range"} <= checks


def test_seed_hour_with_default_threshold_blocks_delivery(seeded, tmp_path: Path) -> None:
    """2 of the hour's 8 conversions are invalid (25% > 10%): the blocking check stops delivery."""
    settings, _hour, key = seeded
    with dg.instance_for_test() as instance:
        result = _materialize(settings, key, instance)
        assert not result.success
        check = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("validated_conversions"), "invalid_rate_below_threshold")
        )
        assert check is not None and check.event is not None
        assert check.event.asset_check_evaluation.passed is False
        assert (
            instance.get_latest_materialization_event(dg.AssetKey(["delivery", "meta_capi"]))
            is None
        )
    assert not (settings.outbox_dir / "meta_capi" / f"{key}.jsonl").exists()


def test_seed_hour_end_to_end(seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERSION_PLATFORM_MAX_INVALID_RATE", "0.3")
    _, hour, key = seeded
    settings = Settings.from_env()
    with dg.instance_for_test() as instance:
        assert _materialize(settings, key, instance).success

        collected = _parquet(settings, "collected_conversions", key)
        logs = _parquet(settings, "server_log_conversions", key)
        deduped = _parquet(settings, "deduplicated_conversions", key)
        valid = _parquet(settings, "validated_conversions", key)
        quarantined = _parquet(settings, "quarantined_conversions", key)
        resolved = _parquet(settings, "resolved_conversions", key)

        assert len(collected) == 5  # srv-1008 was received at 11:00:00.000: next hour
        assert len(logs) == 5
        assert len(deduped) == 8  # srv-1001 (pixel + log) and srv-1003 (log + pixel) merged
        merged = deduped.set_index("event_id")
        assert merged.loc["srv-1001", "sources"] == "pixel,log"
        assert merged.loc["srv-1001", "value"] == pytest.approx(129.9)
        assert merged.loc["srv-1001", "mpid"] == "mp-7f3a9c"  # browser field from the pixel
        assert merged.loc["srv-1001", "email_sha256"] == _sha(
            "jane.doe@example.com"
        )  # from the log copy
        assert merged.loc["srv-1001", "currency"] == "USD"
        assert merged.loc["srv-1003", "sources"] == "pixel,log"
        assert merged.loc["srv-1003", "event_time"] == pd.Timestamp(
            hour + timedelta(minutes=59, seconds=59)
        )

        # The lead without an id and the access-log purchase carry ids the platform derived.
        sender_ids = {e for e in valid["event_id"] if not e.startswith("cp")}
        assert sender_ids == {"srv-1001", "srv-1003", "srv-1006", "pv-1"}
        assert len(valid) == 6
        assert len(resolved) == 6
        by_stage = quarantined.groupby("stage").size().to_dict()
        assert by_stage == {"collector": 1, "parse": 3, "validation": 2}
        reasons = set(quarantined["reason"])
        assert "event_name is missing" in reasons
        assert any("value_negative" in r for r in reasons)
        assert any("currency_not_iso_4217" in r for r in reasons)
        # No plaintext personal data in the quarantine.
        assert not quarantined["raw_redacted"].fillna("").str.contains("example.com").any()

        materialization = instance.get_latest_materialization_event(
            dg.AssetKey("deduplicated_conversions")
        )
        metadata = materialization.asset_materialization.metadata  # type: ignore[union-attr]
        assert metadata["dagster/row_count"].value == 8
        assert metadata["merged_copies"].value == 2

    # Meta in dry run: one request body, the 4 conversions that may go to Meta.
    outbox = (settings.outbox_dir / "meta_capi" / f"{key}.jsonl").read_bytes().splitlines()
    assert len(outbox) == 1
    body = orjson.loads(outbox[0])
    by_id = {e["event_id"]: e for e in body["data"]}
    # pv-1 is a page view (not forwarded); srv-1006 has no ad_user_data consent (Meta can't take it).
    assert {e for e in by_id if not e.startswith("cp")} == {"srv-1001", "srv-1003"}
    assert len(by_id) == 4
    purchase = by_id["srv-1001"]
    assert purchase["event_name"] == "Purchase"
    assert purchase["event_time"] == int((hour + timedelta(minutes=4, seconds=58)).timestamp())
    assert isinstance(purchase["event_time"], int)
    assert purchase["action_source"] == "website"
    assert (
        purchase["event_source_url"] == "https://shop.example/checkout/thank-you?fbclid=IwAR-seed"
    )
    user = purchase["user_data"]
    assert user["em"] == [_sha("jane.doe@example.com")]
    assert user["ph"] == [_sha("14155550132")]  # digits only, no +
    assert user["fn"] == [_sha("jane")] and user["ln"] == [_sha("doe")]
    assert user["ct"] == [_sha("sanfrancisco")]
    assert user["st"] == [_sha("ca")]
    assert user["zp"] == [_sha("94103")]
    assert user["country"] == [_sha("us")]
    assert user["external_id"] == [_sha("cust-1001")]
    assert user["client_ip_address"] == "198.51.100.7"  # never hashed
    assert user["client_user_agent"].startswith("Mozilla/5.0 (Windows NT 10.0")
    assert user["fbp"] == "fb.1.1772445720000.1234567890"
    assert user["fbc"] == f"fb.1.{purchase['event_time'] * 1000}.IwAR-seed"
    assert purchase["custom_data"] == {
        "value": 129.9,
        "currency": "USD",
        "order_id": "o-1001",
        "contents": [{"id": "sku-1", "quantity": 2, "item_price": 64.95}],
    }
    access = next(
        e for eid, e in by_id.items() if e["event_name"] == "Purchase" and eid != "srv-1001"
    )
    assert access["custom_data"]["order_id"] == "o-2001"
    assert access["custom_data"]["value"] == 49.0

    engine = engine_for(settings.db_url)
    with engine.connect() as conn:
        batches = (
            conn.execute(
                sa.select(delivery_batches).where(delivery_batches.c.destination == "meta_capi")
            )
            .mappings()
            .all()
        )
        statuses = dict(
            conn.execute(
                sa.select(delivery_events.c.event_id, delivery_events.c.status).where(
                    delivery_events.c.destination == "meta_capi"
                )
            ).fetchall()
        )
    assert (
        len(batches) == 1 and batches[0]["status"] == "dry_run" and batches[0]["event_count"] == 4
    )
    assert statuses["srv-1006"] == "filtered"
    assert sum(1 for s in statuses.values() if s == "dry_run") == 4


def test_rerunning_an_hour_gives_the_same_result(
    seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVERSION_PLATFORM_MAX_INVALID_RATE", "0.3")
    _, _hour, key = seeded
    settings = Settings.from_env()
    assets = [
        "deduplicated_conversions",
        "validated_conversions",
        "quarantined_conversions",
        "resolved_conversions",
    ]
    with dg.instance_for_test() as instance:
        assert _materialize(settings, key, instance).success
        first = {a: _parquet(settings, a, key) for a in assets}
        outbox_first = (settings.outbox_dir / "meta_capi" / f"{key}.jsonl").read_bytes()
        assert _materialize(settings, key, instance).success
        for asset in assets:
            pd.testing.assert_frame_equal(
                first[asset], _parquet(settings, asset, key), check_like=False
            )
        assert (settings.outbox_dir / "meta_capi" / f"{key}.jsonl").read_bytes() == outbox_first
    with engine_for(settings.db_url).connect() as conn:
        # Hour 10's 6 quarantined records, once each (hour 11's broken line belongs to hour 11).
        assert conn.execute(sa.select(sa.func.count()).select_from(quarantine)).scalar() == 6
        events_rows = conn.execute(
            sa.select(sa.func.count())
            .select_from(delivery_events)
            .where(delivery_events.c.destination == "meta_capi")
        ).scalar()
    assert events_rows == 5  # 4 dry-run bodies + 1 filtered, recorded once each


def test_schedule_runs_the_previous_hour() -> None:
    definitions = build_definitions()
    schedule = definitions.resolve_schedule_def("hourly_conversions_schedule")
    tick = datetime(2026, 11, 29, 14, 10, tzinfo=UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        result = schedule.evaluate_tick(context)
    assert result.run_requests is not None and len(result.run_requests) == 1
    assert result.run_requests[0].partition_key == "2026-11-29-13:00"
    assert schedule.cron_schedule == "10 * * * *"
