"""The benchmarks still run, at tiny sizes, so they don't rot: the pipeline at 2,000
events, the hour through the dagster CLI at 1,000, a two-hour backfill to the emulator,
and the bulk generator's traffic. Nothing here asserts a time: speed lives in benchmarks/."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from benchmarks import backfill, hour_as_run, pipeline
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.common import measure_command, phase_before
from conversion_platform.synthetic import generate_bulk

HOUR = datetime(2026, 3, 2, 10, tzinfo=UTC)


def test_bulk_traffic_is_seeded_with_duplicates_invalid_records_and_returning_people() -> None:
    traffic = generate_bulk([HOUR], 5_000, seed=3)
    again = generate_bulk([HOUR], 5_000, seed=3)
    pd.testing.assert_frame_equal(traffic.pixel, again.pixel)
    pd.testing.assert_frame_equal(traffic.server, again.server)
    assert traffic.records == 5_000
    # 20% of the records are second copies: pixel and backend share the event id.
    shared = set(traffic.pixel["event_id"]) & set(traffic.server["event_id"])
    assert len(shared) == traffic.seen_twice == 1_000
    assert 0.01 < traffic.invalid / traffic.conversions < 0.03
    # People come back: fewer distinct people than conversions, most seen several times.
    customers = traffic.server["external_id"].value_counts()
    assert customers.max() > 3 and len(customers) < len(traffic.server)
    times = pd.to_datetime(traffic.server["event_time"], utc=True)
    assert (
        (traffic.server["received_at"] >= times) | (times > traffic.server["received_at"])
    ).all()


def test_pipeline_benchmark_runs_at_2000_events(tmp_path: Path) -> None:
    result = pipeline.run(sizes=[2_000], work_dir=str(tmp_path))
    (measured,) = result["results"]
    assert measured["rows"]["read landing"] == 2_000
    assert measured["rows"]["dedupe"] == 1_600  # the 20% second copies merged away
    assert measured["rows"]["validate"] < 1_600
    assert set(measured["destinations"]) and all(
        d["mode"] == "dry_run" and d["requests"] >= 1 for d in measured["destinations"].values()
    )
    assert measured["peak_rss_mb"] > 0 and result["table"][-1]["stage"].startswith("TOTAL")


def test_hour_as_run_benchmark_materialises_the_hour_with_the_cli(tmp_path: Path) -> None:
    result = hour_as_run.run(size=1_000, work_dir=str(tmp_path))
    assert result["run_status"] == "SUCCESS", result["notes"]
    assert {"server_log_conversions", "deduplicated_conversions", "resolved_conversions"} <= set(
        result["steps"]
    )
    assert all(step["status"] == "STEP_SUCCESS" for step in result["steps"].values())
    assert result["setup"]["broken_lines"] == 5
    assert result["peak_tree_rss_mb"] > 0


def test_a_measured_command_counts_the_processes_it_starts() -> None:
    """The largest process's own peak, and the peak of the sum over the process tree
    (a worker process's memory counts in the second)."""
    held = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import time; block = b\"x\" * (200 << 20); time.sleep(1.5)'])\n"
        "block = b'x' * (120 << 20)\n"
        "time.sleep(1.5)\n"
        "child.wait()\n"
    )
    measured = measure_command([sys.executable, "-c", held], dict(os.environ))
    assert measured["returncode"] == 0, measured["stderr"]
    assert 200 <= measured["peak_rss_mb"] < 300  # the child's, the larger one
    assert measured["peak_tree_rss_mb"] >= 320  # both at once


def test_the_parquet_write_of_an_output_counts_as_storing_it() -> None:
    """Dagster writes an output between STEP_OUTPUT and its ASSET_MATERIALIZATION: that
    gap is the IO manager's, not the computation's (it read 0.01 s a step before)."""
    store = "store outputs (IO manager: Parquet write)"
    assert phase_before("ASSET_MATERIALIZATION", "STEP_OUTPUT") == store
    assert phase_before("HANDLED_OUTPUT", "ASSET_MATERIALIZATION") == store
    # a materialization the computation logs itself is part of the computation
    assert phase_before("ASSET_MATERIALIZATION", "STEP_INPUT").startswith("compute")
    assert phase_before("STEP_OUTPUT", "STEP_INPUT").startswith("compute")


def test_backfill_benchmark_delivers_to_the_emulator(tmp_path: Path) -> None:
    result = backfill.run(hours=2, records_per_hour=300, compare_hours=0, work_dir=str(tmp_path))
    assert result["backfill"]["run_status"] == "SUCCESS", result["notes"]
    deliveries = result["backfill"]["deliveries"]
    assert deliveries and all(counts.get("delivered", 0) > 0 for counts in deliveries.values())


def test_runner_skips_missing_modules_and_writes_results(tmp_path: Path, monkeypatch) -> None:
    import benchmarks.__main__ as runner

    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(runner, "BENCHMARKS", ("no_such_benchmark",))
    assert benchmarks_main([]) == 0
    written = (tmp_path / "results" / "latest.json").read_text()
    assert '"no_such_benchmark": "module not present"' in written
