"""Each destination's events are taken with the columns its encoder reads, and nothing else.

Scope: an hour with every column filled gives the very same outbox and delivery log
whether the events are taken with the destination's `columns_read` or with every column
(for each destination, in chunks, with consent-denied and re-ordered events so chunks
are taken, not sliced); the encoder really sees fewer columns; in a Dagster run the
delivery step reads only those columns of the hour's Parquet file and writes the same
bodies; a column an encoder reads but its destination does not declare is a clear error,
never a column of nulls, in a run too; a column the hour does not have at all still reads
as nulls.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy.engine import Engine

from conversion_platform.defs import delivery_assets
from conversion_platform.destinations.base import Destination, EncodedEvents
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.destinations.delivery import HourDeliverer, columns_delivered
from conversion_platform.destinations.http_client import new_session
from conversion_platform.destinations.registry import destination_for
from conversion_platform.settings import Settings
from conversion_platform.store.database import create_database_engine
from conversion_platform_tests.delivery_support import (
    HOUR,
    KEY,
    destination_config,
    frame_of,
    many,
    materialize_delivery,
    outcomes,
    write_resolved_hour,
)

#: (configured destination, platform settings): the four platforms and Google's legacy API
DESTINATIONS = [
    ("meta_capi", {}),
    ("google_ads", {}),
    ("google_ads", {"merchant_id": "m-1"}),  # cart data: the items are read
    ("google_ads", {"api": "legacy"}),
    ("tiktok", {}),
    ("snapchat", {}),
]


def full_hour() -> pd.DataFrame:
    """Every column filled on every row; some rows without ad_user_data consent, several
    event names (Google then orders the events by name), two chunks and a bit."""
    records = many(
        23,
        "c",
        fbc="fb.1.1772445720000.click",
        gbraid="gb-1",
        wbraid="wb-1",
        mpid="mpid-1",
        epik="epik-1",
        li_fat_id="li-1",
        rdt_cid="rdt-1",
        msclkid="ms-1",
    )
    for i, row in enumerate(records):
        row["order_id"] = f"order-{i}"
        row["event_name"] = ["purchase", "lead", "sign_up", "add_to_cart"][i % 4]
        if i % 5 == 2:
            row["consent_ad_user_data"] = "denied"
    frame = frame_of(records)
    assert not [c for c in frame.columns if frame[c].isna().any()], "every column filled"
    return frame


def recording(destination: Destination, every_column: bool) -> Destination:
    """The destination, recording the columns of each chunk it encodes."""
    base = type(destination)
    seen: list[list[str]] = []

    def encode_events(
        self: Destination, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        seen.append(list(frame.columns))
        return base.encode_events(self, frame, config, now)

    namespace: dict[str, Any] = {"encode_events": encode_events, "seen": seen}
    if every_column:
        namespace["columns_read"] = None
    return type(f"Recording{base.__name__}", (base,), namespace)()


def deliver_dry_run(
    engine: Engine,
    destination: Destination,
    config: DestinationConfig,
    frame: pd.DataFrame,
    outbox: Path,
) -> bytes:
    session = new_session()
    try:
        deliverer = HourDeliverer(
            engine, destination, config, session, outbox, sleep=lambda s: None, chunk_rows=10
        )
        report = deliverer.deliver_hour(frame, HOUR, HOUR.strftime("%Y-%m-%d-%H:%M"))
    finally:
        session.close()
    assert report.mode == "dry_run" and report.sent > 0
    return Path(report.outbox_file or "").read_bytes()


@pytest.mark.parametrize(("name", "settings"), DESTINATIONS)
def test_events_taken_with_the_declared_columns_encode_as_with_every_column(
    name: str, settings: dict[str, str], tmp_path: Path
) -> None:
    frame = full_hour()
    config = destination_config(name, None, mode="dry_run", settings=settings, batch_size=5)
    results = {}
    for every_column in (False, True):
        engine = create_database_engine(f"sqlite:///{tmp_path / f'every-{every_column}.db'}")
        destination = recording(destination_for(name, settings), every_column)
        body = deliver_dry_run(engine, destination, config, frame, tmp_path / f"out-{every_column}")
        results[every_column] = (body, outcomes(engine, name), destination.seen)  # type: ignore[attr-defined]
        engine.dispose()

    narrowed, whole = results[False], results[True]
    assert narrowed[0] == whole[0]  # byte for byte the same request bodies
    assert narrowed[1] == whole[1]  # and the same outcome for every event
    assert len(narrowed[2]) == len(whole[2]) >= 2  # up to 23 events in chunks of 10
    declared = destination_for(name, settings).columns_read
    assert declared, f"{name} declares the columns it reads"
    for columns in narrowed[2]:
        assert set(columns) <= (columns_delivered(destination_for(name, settings)) or set())
        assert len(columns) < len(frame.columns)
    assert all(columns == list(frame.columns) for columns in whole[2])


def test_a_column_read_but_not_declared_is_an_error_not_nulls(
    engine: Engine, tmp_path: Path
) -> None:
    undeclared = meta_without_user_agent()
    config = destination_config("meta_capi", None, mode="dry_run")
    with pytest.raises(KeyError, match=r"'user_agent' was left out .* columns_read"):
        deliver_dry_run(engine, undeclared, config, full_hour(), tmp_path / "outbox")
    assert outcomes(engine, "meta_capi") == {}  # the failed hour left nothing behind
    assert not list((tmp_path / "outbox").rglob("*.jsonl*"))


def test_a_column_the_hour_does_not_have_still_reads_as_nulls(
    engine: Engine, tmp_path: Path
) -> None:
    frame = full_hour().drop(columns=["fbp", "region"])
    config = destination_config("meta_capi", None, mode="dry_run")
    body = deliver_dry_run(engine, destination_for("meta_capi"), config, frame, tmp_path / "o")
    assert b'"fbc":' in body and b'"ct":' in body
    assert b'"fbp":' not in body and b'"st":' not in body


def materialize_with(
    settings: Settings, config: DestinationConfig, frame: pd.DataFrame
) -> dg.ExecuteInProcessResult:
    write_resolved_hour(settings, frame)
    with dg.instance_for_test() as instance:
        return materialize_delivery(settings, config, instance)


def meta_without_user_agent() -> Destination:
    """Meta's destination with `user_agent` missing from the columns it declares."""
    meta = destination_for("meta_capi")
    declared = (meta.columns_read or frozenset()) - {"user_agent"}
    return type("MetaWithoutUserAgent", (type(meta),), {"columns_read": declared})()


@pytest.mark.parametrize(("name", "settings"), DESTINATIONS)
def test_a_delivery_step_reads_only_its_columns_and_writes_the_whole_hours_bodies(
    name: str,
    settings: dict[str, str],
    platform_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = full_hour()
    home = Settings.from_env()
    config = destination_config(name, None, mode="dry_run", settings=settings, batch_size=5)
    in_run = recording(destination_for(name, settings), every_column=False)
    monkeypatch.setattr(delivery_assets, "destination_for", lambda *args: in_run)
    assert materialize_with(home, config, frame).success
    written = (home.outbox_dir / name / f"{KEY}.jsonl").read_bytes()

    engine = create_database_engine(f"sqlite:///{tmp_path / 'whole.db'}")
    whole = recording(destination_for(name, settings), every_column=True)
    assert written == deliver_dry_run(engine, whole, config, frame, tmp_path / "whole")
    engine.dispose()
    delivered = columns_delivered(destination_for(name, settings)) or set()
    for columns in in_run.seen:  # type: ignore[attr-defined]
        assert set(columns) <= delivered and len(columns) < len(frame.columns)


def test_a_column_left_out_of_a_delivery_steps_input_is_an_error_in_the_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    undeclared = meta_without_user_agent()
    monkeypatch.setattr(delivery_assets, "destination_for", lambda *args: undeclared)
    config = destination_config("meta_capi", None, mode="dry_run")
    result = materialize_with(settings, config, full_hour())
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None
    assert "'user_agent' was left out" in str(failure.message) + str(failure.cause)
