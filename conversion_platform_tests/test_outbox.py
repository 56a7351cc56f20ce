"""The dry-run outbox: an hour's file replaced whole, or not at all.

Scope: every body lands, in order, one per line; the hour's old file stays until the new
one is complete; a failed write (a full disk: `/dev/full`) is raised, removes the
unfinished file and keeps the old one, and a dry-run hour whose outbox fails leaves
nothing in the delivery log.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from conversion_platform.destinations.outbox import OutboxWriter, outbox_path
from conversion_platform_tests.delivery_support import (
    HOUR,
    batches,
    deliver,
    destination_config,
    frame_of,
    many,
    outcomes,
)

pytest_plugins = ("conversion_platform_tests.delivery_support",)

KEY = "2026-03-02-14:00"
FULL_DISK = Path("/dev/full")


def _fill_disk_for(path: Path) -> None:
    """The writer's unfinished file is `/dev/full`: every write to it fails with ENOSPC."""
    if not FULL_DISK.exists():
        pytest.skip("/dev/full is not available on this system")
    path.with_suffix(".jsonl.tmp").symlink_to(FULL_DISK)


def test_every_body_lands_in_order_and_the_old_file_stays_until_published(tmp_path: Path) -> None:
    path = outbox_path(tmp_path, "meta_capi", KEY)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old\n")
    bodies = [(b'{"n":%d,"pad":"' % i) + b"x" * (i % 7_000) + b'"}' for i in range(2_000)]
    writer = OutboxWriter(tmp_path, "meta_capi", KEY)
    for body in bodies:
        writer.write(body)
    assert path.read_bytes() == b"old\n"  # a reader never sees half an hour
    writer.finish()
    assert path.read_bytes() == b"old\n"
    assert writer.publish() == path
    assert path.read_bytes().splitlines() == bodies
    assert not path.with_suffix(".jsonl.tmp").exists()


def test_a_failed_write_is_raised_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = outbox_path(tmp_path, "tiktok", KEY)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old\n")
    _fill_disk_for(path)
    writer = OutboxWriter(tmp_path, "tiktok", KEY)
    with pytest.raises(OSError, match="No space left on device"):
        for _ in range(100):
            writer.write(b"x" * 100_000)
        writer.finish()
    writer.discard()
    assert path.read_bytes() == b"old\n"
    assert not path.with_suffix(".jsonl.tmp").exists()


def test_a_dry_run_hour_whose_outbox_fails_leaves_nothing_behind(
    engine: Engine, tmp_path: Path
) -> None:
    """The hour fails with the write's error: the log is rolled back, the hour's old
    outbox file is kept, no unfinished file is left."""
    config = destination_config("meta_capi", None, mode="dry_run")
    frame = frame_of(many(2_500, "full"))
    path = outbox_path(tmp_path, "meta_capi", f"{HOUR:%Y-%m-%d-%H:%M}")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the previous run's bodies\n")
    _fill_disk_for(path)
    with pytest.raises(OSError, match="No space left on device"):
        deliver(engine, config, frame, tmp_path)
    assert outcomes(engine, "meta_capi") == {}
    assert batches(engine, "meta_capi") == []
    assert path.read_bytes() == b"the previous run's bodies\n"
    assert not path.with_suffix(".jsonl.tmp").exists()
    # Once the disk has room again, the hour goes through and replaces the old file.
    report = deliver(engine, config, frame, tmp_path)
    assert report.requests == 3
    assert len(path.read_bytes().splitlines()) == 3


def test_a_rename_that_fails_after_the_log_commits_keeps_the_finished_file(
    engine: Engine, tmp_path: Path
) -> None:
    """Once the log holds the hour, its bodies are never deleted: the finished file stays
    beside the hour's name and the error fails the delivery."""
    config = destination_config("meta_capi", None, mode="dry_run")
    frame = frame_of(many(2_500, "kept"))
    path = outbox_path(tmp_path, "meta_capi", f"{HOUR:%Y-%m-%d-%H:%M}")
    (path / "in-the-way").mkdir(parents=True)  # a non-empty folder where the file goes
    with pytest.raises(OSError):
        deliver(engine, config, frame, tmp_path)
    assert len(batches(engine, "meta_capi")) == 3  # the log committed the hour
    finished = path.with_suffix(".jsonl.tmp")
    assert len(finished.read_bytes().splitlines()) == 3
