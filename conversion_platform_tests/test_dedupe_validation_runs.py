"""Dagster runs of ingest, dedupe and validation (`defs.dedupe_assets`,
`defs.validation_assets`, `defs.ingest_assets`) on a fresh platform home.

Scope, each with a real in-process run of the project's own job or assets:

* the blocking invalid-rate check stops the hour: with more than 10% invalid conversions
  neither identity resolution nor the delivery asset materialises and no outbox file is
  written; the same hour under the threshold delivers (so the test can tell);
* every invalid input class (collector rejection, unreadable log line, each validation
  failure) lands in the quarantine with its stage, path and reason, the
  `quarantined_conversions` asset reports counts by reason, and
  `conversion-platform quarantine --hour H` lists them;
* the duplicate-rate check warns when an hour leaves the trailing hours' usual range
  and passes inside it;
* dropped identity values are counted in the ingest assets' metadata;
* a backfill of three hours as one run gives the same deduplicated output and ledger as
  the hours run one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import orjson
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.cli import main as cli_main
from conversion_platform.definitions import build_definitions
from conversion_platform.defs.dedupe_assets import DUPLICATE_RATE_CHECK, deduplicated_conversions
from conversion_platform.defs.ingest_assets import collected_conversions, server_log_conversions
from conversion_platform.defs.partitions import hourly_partitions
from conversion_platform.defs.resources import resources_from_settings
from conversion_platform.defs.validation_assets import INVALID_RATE_CHECK
from conversion_platform.ingest.landing_writer import land_events
from conversion_platform.settings import Settings
from conversion_platform.store.database import engine_for
from conversion_platform.store.dedupe_figures import HourDedupeFigures, replace_hour_figures
from conversion_platform.store.ledger import ledger_rows
from conversion_platform.store.quarantine import read_quarantined

DELIVERY = dg.AssetKey(["delivery", "meta_capi"])
#: Two hours ago: recent enough for Meta's 7-day limit, so delivery really writes the outbox.
HOUR = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
KEY = hourly_partitions.get_partition_key_for_timestamp(HOUR.timestamp())


def moment(minute: int, second: int = 0, hour: datetime = HOUR) -> datetime:
    return hour + timedelta(minutes=minute, seconds=second)


def purchase(event_id: str, minute: int, **fields: object) -> dict:
    return {
        "event_id": event_id,
        "event_name": "purchase",
        "event_time": moment(minute).isoformat(),
        "value": 20.0,
        "currency": "EUR",
        "email": f"{event_id}@example.com",
        "client_ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0",
        "page_url": "https://shop.example/thanks",
        "consent_ad_user_data": "granted",
        "consent_ad_personalization": "granted",
        **fields,
    }


@pytest.fixture
def store(settings: Settings) -> Iterator[Engine]:
    yield engine_for(settings.db_url)


def run_job(settings: Settings, key: str = KEY, **tags: str) -> dg.ExecuteInProcessResult:
    definitions = build_definitions(settings)
    job = definitions.resolve_job_def("hourly_conversions_job")
    return job.execute_in_process(
        partition_key=key if not tags else None,
        tags=tags or None,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def materialised(result: dg.ExecuteInProcessResult) -> set[dg.AssetKey]:
    return {e.asset_key for e in result.get_asset_materialization_events()}


def check_passed(result: dg.ExecuteInProcessResult, name: str) -> bool:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation.passed


def write_log(settings: Settings, lines: list[bytes]) -> None:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    (settings.logs_dir / "backend.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_the_blocking_check_stops_the_hours_delivery(settings: Settings, store: Engine) -> None:
    good = [purchase(f"ok-{i}", 5 + i) for i in range(8)]
    bad = [
        purchase("bad-1", 20, value=-4.0),
        purchase("bad-2", 21, currency="DOLLARS"),
    ]  # 2 of 10 conversions invalid: 20% > 10%
    land_events(store, good + bad, "server", moment(30))
    result = run_job(settings)
    assert not result.success
    assert check_passed(result, INVALID_RATE_CHECK) is False
    done = materialised(result)
    assert dg.AssetKey("validated_conversions") in done
    assert dg.AssetKey("resolved_conversions") not in done
    assert DELIVERY not in done
    assert not (settings.outbox_dir / "meta_capi" / f"{KEY}.jsonl").exists()
    quarantined = read_quarantined(store, HOUR, HOUR + timedelta(hours=1))
    assert sorted(quarantined["reason"]) == ["currency_not_iso_4217", "value_negative"]


def test_an_hour_under_the_threshold_is_delivered(settings: Settings, store: Engine) -> None:
    good = [purchase(f"ok-{i}", 5 + i) for i in range(10)]
    bad = [purchase("bad-1", 20, value=-4.0)]  # 1 of 11: 9% <= 10%
    land_events(store, good + bad, "server", moment(30))
    result = run_job(settings)
    assert result.success
    assert check_passed(result, INVALID_RATE_CHECK) is True
    assert DELIVERY in materialised(result)
    outbox = settings.outbox_dir / "meta_capi" / f"{KEY}.jsonl"
    sent = [
        e["event_id"]
        for line in outbox.read_bytes().splitlines()
        for e in orjson.loads(line)["data"]
    ]
    assert sorted(sent) == sorted(e["event_id"] for e in good)


def test_every_invalid_class_lands_in_the_quarantine_with_its_reason(
    settings: Settings,
    store: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Enough valid conversions that the hour stays under the blocking threshold.
    monkeypatch.setenv("CONVERSION_PLATFORM_MAX_INVALID_RATE", "0.5")
    settings = Settings.from_env()
    valid = [purchase(f"ok-{i}", i) for i in range(10)]
    land_events(
        store,
        [
            *valid,
            {"event_name": "lead"},  # no event_time: the collector refuses it
            {"event_name": "lead", "event_time": moment(1).isoformat(), "value": "ten"},
            purchase("neg", 12, value=-1.0),
            purchase("cur", 13, value=5.0, currency="DOLLARS"),
            purchase("nocur", 14, value=5.0, currency=None),
            purchase("name", 15, event_name="Purchase Completed!!"),
            purchase("old", 16, event_time=(HOUR - timedelta(days=9)).isoformat()),
            purchase("future", 17, event_time=(moment(17) + timedelta(hours=2)).isoformat()),
            purchase("i" * 300, 18),
        ],
        "server",
        moment(40),
    )
    write_log(
        settings,
        [
            b'{"event_id": "log-1", "event_name": "lead", "email": "someone@exa',
            orjson.dumps({"event_name": "lead", "logged_at": moment(41).isoformat(),
                          "event_time": "not a time"}),
            orjson.dumps({"event_id": "log-ok", "event_name": "lead",
                          "logged_at": moment(42).isoformat(), "event_time": moment(42).isoformat(),
                          "email": "a@example.com"}),
        ],
    )  # fmt: skip
    result = run_job(settings)
    assert result.success, "the hour stays under the raised threshold"
    quarantined = read_quarantined(store, HOUR, HOUR + timedelta(hours=1))
    found = {
        (s, r.split(": ")[0])
        for s, r in zip(quarantined["stage"], quarantined["reason"], strict=True)
    }
    assert found == {
        ("collector", "event_time is missing"),
        ("collector", "value is not a number"),
        ("parse", "invalid JSON"),
        ("parse", "event_time is not ISO 8601"),
        ("validation", "value_negative"),
        ("validation", "currency_not_iso_4217"),
        ("validation", "currency_missing_with_value"),
        ("validation", "event_name_not_in_model"),
        ("validation", "event_time_older_than_max_age"),
        ("validation", "event_time_after_received"),
        ("validation", "event_id_too_long"),
    }
    by_id = dict(zip(quarantined["event_id"], quarantined["reason"], strict=True))
    assert by_id["neg"] == "value_negative"
    assert by_id["future"] == "event_time_after_received"
    assert set(quarantined.loc[quarantined["stage"] == "parse", "source"]) == {"log"}
    assert not quarantined["raw_redacted"].str.contains("someone@exa").any()

    (asset_event,) = [
        e for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("quarantined_conversions")
    ]  # fmt: skip
    metadata = asset_event.materialization.metadata
    assert metadata["from_collector"].value == 2
    assert metadata["from_parse"].value == 2
    assert metadata["from_validation"].value == 7
    assert "| validation | value_negative | 1 |" in metadata["by_reason"].value
    parquet = pd.read_parquet(
        settings.partitions_dir / "quarantined_conversions" / f"{KEY}.parquet"
    )
    assert len(parquet) == 11

    capsys.readouterr()
    assert cli_main(["quarantine", "--hour", KEY]) == 0
    listed = capsys.readouterr().out
    assert "11 records" in listed
    for reason in ("value_negative", "event_time is missing", "event_name_not_in_model"):
        assert reason in listed


def test_the_quarantine_command_refuses_a_malformed_hour(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["quarantine", "--hour", "yesterday"])
    assert exit_info.value.code == 2
    assert "partition key" in capsys.readouterr().err
    assert cli_main(["quarantine", "--hour", "2026-03-02-10:00"]) == 0
    assert "nothing quarantined" in capsys.readouterr().out


def seed_history(engine: Engine, rate: float, hours: int = 24) -> None:
    with engine.begin() as conn:
        for i in range(1, hours + 1):
            copies = 100
            out = round(copies * (1 - rate + (0.02 if i % 2 else -0.02)))
            replace_hour_figures(
                conn,
                HOUR - timedelta(hours=i),
                HourDedupeFigures(copies_in=copies, conversions_out=out),
            )


def materialise_dedupe(settings: Settings) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [collected_conversions, server_log_conversions, deduplicated_conversions],
        partition_key=KEY,
        resources=resources_from_settings(settings),
        instance=dg.DagsterInstance.ephemeral(),
    )


@pytest.mark.parametrize(
    ("singles", "pairs", "tens", "usual"),
    [
        (8, 6, 0, True),  # 20 copies, 14 conversions: rate 0.3, as usual
        (20, 0, 0, False),  # nothing shared any more (the pixel lost its event_id): 0.0
        (0, 0, 4, False),  # a sender re-sending everything ten times: 0.9
    ],
)
def test_the_duplicate_rate_check_warns_outside_the_usual_range(
    settings: Settings, store: Engine, singles: int, pairs: int, tens: int, usual: bool
) -> None:
    # The trailing day: about 30% of copies were further copies of a conversion.
    seed_history(store, 0.3)
    pixel, server = [], []
    for i in range(singles):
        pixel.append(purchase(f"s-{i}", i))
    for i in range(pairs):
        pixel.append(purchase(f"p-{i}", i))
        server.append(purchase(f"p-{i}", i))
    for i in range(tens):
        pixel.extend(purchase(f"t-{i}", i) for _ in range(5))
        server.extend(purchase(f"t-{i}", i) for _ in range(5))
    land_events(store, pixel, "pixel", moment(50))
    if server:
        land_events(store, server, "server", moment(51))
    result = materialise_dedupe(settings)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == DUPLICATE_RATE_CHECK
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.passed is usual
    metadata = evaluation.metadata
    assert metadata["basis"].value == "trailing hours"
    assert metadata["usual_low"].value <= 0.3 <= metadata["usual_high"].value


def test_without_history_the_configured_range_applies(settings: Settings, store: Engine) -> None:
    land_events(store, [purchase(f"e-{i}", i) for i in range(30)], "server", moment(50))
    result = materialise_dedupe(settings)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed
    assert evaluation.metadata["basis"].value == "configured range"
    assert (evaluation.metadata["usual_low"].value, evaluation.metadata["usual_high"].value) == (
        0.0,
        0.75,
    )


def test_dropped_identifiers_are_counted_in_the_ingest_assets_metadata(
    settings: Settings, store: Engine
) -> None:
    land_events(
        store,
        [purchase("e-1", 1, email="undefined"), purchase("e-2", 2, phone="12")],
        "server",
        moment(10),
    )
    write_log(
        settings,
        [orjson.dumps({"event_id": "l-1", "event_name": "lead", "event_time": moment(11).isoformat(),
                       "email": "not-an-email", "mpid": "m"}),
         # a plain address under the hashed name: dropped and counted, as the collector does
         orjson.dumps({"event_id": "l-2", "event_name": "lead", "event_time": moment(12).isoformat(),
                       "email_sha256": "bob@example.com", "mpid": "n"})],
    )  # fmt: skip
    result = materialise_dedupe(settings)
    metadata = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert metadata["collected_conversions"]["identifiers_dropped"].value == 2
    assert (
        "email_placeholder"
        in metadata["collected_conversions"]["identifiers_dropped_by_reason"].value
    )
    assert metadata["server_log_conversions"]["identifiers_dropped"].value == 2
    log_reasons = metadata["server_log_conversions"]["identifiers_dropped_by_reason"].value
    assert "email_invalid" in log_reasons and "email_sha256_malformed" in log_reasons
    assert metadata["deduplicated_conversions"]["conversions_out"].value == 4


def _three_hours(store: Engine) -> list[str]:
    hours = [HOUR - timedelta(hours=2), HOUR - timedelta(hours=1), HOUR]
    land_events(
        store,
        [purchase("e-1", 59, event_time=moment(59, 58, hours[0]).isoformat())],
        "pixel",
        moment(59, 59, hours[0]),
    )
    land_events(
        store,
        [purchase("e-1", 0, event_time=moment(59, 58, hours[0]).isoformat())],
        "server",
        moment(0, 2, hours[1]),
    )
    land_events(
        store,
        [purchase("e-2", 5, event_time=moment(5, 0, hours[1]).isoformat())],
        "pixel",
        moment(5, 1, hours[1]),
    )
    land_events(
        store,
        [purchase("e-2", 5, event_time=moment(5, 0, hours[1]).isoformat())],
        "server",
        moment(3, 0, hours[2]),
    )
    land_events(
        store,
        [purchase("e-3", 9, event_time=moment(9, 0, hours[2]).isoformat())],
        "server",
        moment(9, 1, hours[2]),
    )
    return [hourly_partitions.get_partition_key_for_timestamp(h.timestamp()) for h in hours]  # fmt: skip


def _outputs(settings: Settings, keys: list[str]) -> dict[str, pd.DataFrame]:
    return {
        k: pd.read_parquet(settings.partitions_dir / "deduplicated_conversions" / f"{k}.parquet")
        for k in keys
    }


def test_a_backfill_run_gives_the_same_result_as_the_hours_one_by_one(
    settings: Settings, store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _three_hours(store)
    for key in keys:
        assert run_job(settings, key).success
    one_by_one = _outputs(settings, keys)
    ledger_before = ledger_rows(store, HOUR - timedelta(hours=2), HOUR + timedelta(hours=1))

    other_home = tmp_path / "other_home"
    other_home.mkdir()
    monkeypatch.setenv("CONVERSION_PLATFORM_HOME", str(other_home))
    other = Settings.from_env()
    other_store = engine_for(other.db_url)
    _three_hours(other_store)
    result = run_job(
        other,
        **{
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
    )
    assert result.success
    backfill = _outputs(other, keys)
    for key in keys:
        pd.testing.assert_frame_equal(backfill[key], one_by_one[key])
    assert [sorted(f["event_id"]) for f in one_by_one.values()] == [["e-1"], ["e-2"], ["e-3"]]
    ledger_after = ledger_rows(other_store, HOUR - timedelta(hours=2), HOUR + timedelta(hours=1))
    columns = ["match_key", "hour_us", "dedupe_key", "owner_hour_us", "event_id"]
    pd.testing.assert_frame_equal(ledger_after[columns], ledger_before[columns])
    with other_store.connect() as conn:
        late = conn.execute(
            sa.text("SELECT sum(late_duplicates) FROM dedupe_hour_figures")
        ).scalar()
    assert late == 2
