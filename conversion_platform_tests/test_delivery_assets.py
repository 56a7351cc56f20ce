"""Delivery assets in real Dagster runs (`materialize` on a test instance) against the emulator.

Scope: a partitioned `delivery/<name>` asset built by the factory delivers its hour live
over HTTP and reports sent / accepted / rejected / expired / pending / match quality in
its metadata; Google's asset polls the request status in the same run, so its events end
delivered; a run whose retryable batches stay undelivered fails after recording them,
and re-materialising the partition sends only the rest; a permanent rejection is reported
and dead-lettered, not raised.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy.engine import Engine

from conversion_platform.operations.dead_letters import dead_letter_summary
from conversion_platform.settings import Settings
from conversion_platform_tests.delivery_support import (
    EmulatorControl,
    destination_config,
    frame_of,
    many,
    materialize_delivery,
    outcomes,
    record,
    write_resolved_hour,
)

#: The emulator, its control client and the credential fixture.
pytest_plugins = ("conversion_platform_tests.delivery_support",)


def _metadata(instance: dg.DagsterInstance, name: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(dg.AssetKey(["delivery", name]))
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_google_delivery_asset_delivers_and_polls_status_in_one_run(
    emulator: EmulatorControl, engine: Engine, settings: Settings, token: str
) -> None:
    write_resolved_hour(
        settings, frame_of([*many(3, "g"), record("g-old", event_name="page_view")])
    )
    config = destination_config("google_ads", emulator.url)
    with dg.instance_for_test() as instance:
        result = materialize_delivery(settings, config, instance)
        assert result.success
        metadata = _metadata(instance, "google_ads")
    assert metadata["mode"] == "live" and metadata["platform"] == "google_ads"
    assert metadata["eligible"] == 3 and metadata["sent"] == 3 and metadata["accepted"] == 3
    assert metadata["awaiting_status"] == 3 and metadata["status_events_delivered"] == 3
    assert metadata["rejected"] == 0 and metadata["pending"] == 0
    assert 4.0 <= float(metadata["mean_match_quality"]) <= 8.0  # type: ignore[arg-type]
    assert {s for s, _ in outcomes(engine, "google_ads").values()} == {"delivered"}
    assert emulator.accepted("google") == {"g-0000": 1, "g-0001": 1, "g-0002": 1}


def test_undelivered_batches_fail_the_run_and_a_rerun_sends_only_the_rest(
    emulator: EmulatorControl, engine: Engine, settings: Settings, token: str
) -> None:
    write_resolved_hour(settings, frame_of(many(4, "m")))
    config = destination_config("meta_capi", emulator.url, batch_size=2)
    emulator.script("meta", responses=[{}, {"status": 503}, {"status": 503}, {"status": 503}])
    with dg.instance_for_test() as instance:
        failed = materialize_delivery(settings, config, instance)
        assert not failed.success
        log = outcomes(engine, "meta_capi")
        assert sorted(s for s, _ in log.values()) == ["delivered"] * 2 + ["retryable"] * 2

        rerun = materialize_delivery(settings, config, instance)
        assert rerun.success
        metadata = _metadata(instance, "meta_capi")
    assert metadata["already_delivered"] == 2 and metadata["sent"] == 2
    assert metadata["delivered"] == 2 and metadata["requests"] == 1
    assert emulator.accepted("meta") == {f"m-000{i}": 1 for i in range(4)}


def test_a_permanent_rejection_is_reported_not_raised(
    emulator: EmulatorControl, engine: Engine, settings: Settings, token: str
) -> None:
    write_resolved_hour(settings, frame_of(many(3, "p")))
    config = destination_config("snapchat", emulator.url)
    emulator.script("snapchat", fail_event_ids=["p-0001"], fail_reason="bad click id")
    with dg.instance_for_test() as instance:
        assert materialize_delivery(settings, config, instance).success
        metadata = _metadata(instance, "snapchat")
    assert metadata["delivered"] == 2 and metadata["rejected"] == 1
    assert "bad click id" in str(metadata["rejected_by_reason"])
    # A permanent rejection stays 'permanent' in the log and is dead-lettered at once, for
    # that event alone, with the platform's reason.
    status, reason = outcomes(engine, "snapchat")["p-0001"]
    assert status == "permanent" and "bad click id" in (reason or "")
    letters = dead_letter_summary(engine, "snapchat")
    assert letters["events"].sum() == 1
    assert "bad click id" in letters["reason"].iloc[0]
