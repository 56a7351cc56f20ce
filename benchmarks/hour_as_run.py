"""The hour as users run it: 1M conversions as raw JSON log lines through the whole graph.

One hour of N records (pixel and backend copies of each conversion, 20% of them second
copies, 2% invalid) is written as one JSON-lines server log with 0.5% broken lines, on a
fresh CONVERSION_PLATFORM_HOME and DAGSTER_HOME; then

    dagster asset materialize -m conversion_platform.definitions --select '*' --partition KEY

runs it with Dagster's own overhead included (CLI start, definitions load, the in-process
executor, Parquet I/O between assets, the pandera type check, ledger and delivery-log
writes), every enabled destination in dry-run mode. Wall time and peak memory are the
command's (its largest process's peak, and its whole process tree's, a worker included); per-step durations, and what each step spent its time on, come from the
Dagster event log in the instance's run storage.

    python -m benchmarks.hour_as_run --size 1000000
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    Home,
    dagster_command,
    format_table,
    fresh_home,
    load_average,
    measure_command,
    partition_key,
    rate,
    recent_hours,
    run_child,
)

NAME = "hour_as_run"
DEFAULT_SIZE = 1_000_000
TARGET_SECONDS = 30.0
TARGET_PEAK_MB = 3 * 1024


def prepare(size: int, seed: int, root: str, hour: str) -> dict[str, Any]:
    """Child process: the hour's records as one JSON-lines log in a fresh home."""
    from benchmarks.data import generate_and_land
    from conversion_platform.store.database import engine_for

    home = Home(Path(root))
    home.activate()
    started = time.perf_counter()
    landed = generate_and_land(
        engine_for(home.db_url),
        [datetime.fromisoformat(hour)],
        size,
        seed=seed,
        logs_dir=home.logs_dir,
        all_as_logs=True,
    )
    log_bytes = sum(p.stat().st_size for p in home.logs_dir.iterdir())
    return {
        "setup_s": round(time.perf_counter() - started, 2),
        "log_bytes": log_bytes,
        **landed.__dict__,
    }


def steps_table(steps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for step, info in steps.items():
        phases = info["phases"]
        rows.append(
            {
                "step": step,
                "seconds": info["seconds"],
                "load inputs": phases.get("load inputs (IO manager: Parquet read)", 0.0),
                "type check in": phases.get("input type checks", 0.0),
                "compute": phases.get("compute (+ output type check)", 0.0),
                "store outputs": phases.get("store outputs (IO manager: Parquet write)", 0.0),
                "status": (info["status"] or "").replace("STEP_", "").lower(),
            }
        )
    return rows


def run(size: int = DEFAULT_SIZE, seed: int = 7, work_dir: str | None = None) -> dict[str, Any]:
    hour = recent_hours(1)[0]
    key = partition_key(hour)
    home = fresh_home(f"hour-as-run-{size}", Path(work_dir) if work_dir else None)
    env = home.env()
    setup = run_child(
        "benchmarks.hour_as_run",
        "prepare",
        {"size": size, "seed": seed, "root": str(home.root), "hour": hour.isoformat()},
        env,
    )
    load_before = load_average()
    command = dagster_command(
        "asset",
        "materialize",
        "-m",
        "conversion_platform.definitions",
        "--select",
        "*",
        "--partition",
        key,
    )
    measured = measure_command(command, env, REPO_ROOT)
    timings = run_child(
        "benchmarks.common", "run_step_timings", {"dagster_home": str(home.dagster_home)}, env
    )
    run_info = (
        timings["runs"][-1]
        if timings["runs"]
        else {"steps": {}, "run_seconds": None, "status": "missing"}
    )
    step_seconds = sum(s["seconds"] for s in run_info["steps"].values())
    rows = steps_table(run_info["steps"])
    rows.append({"step": "sum of steps", "seconds": round(step_seconds, 2)})
    rows.append({"step": "run (RUN_START to RUN_SUCCESS)", "seconds": run_info["run_seconds"]})
    rows.append(
        {
            "step": "CLI start-up and teardown (wall - run)",
            "seconds": round(measured["wall_s"] - (run_info["run_seconds"] or 0.0), 2),
        }
    )
    rows.append(
        {
            "step": f"WALL (peak {measured['peak_rss_mb']:,.0f} MiB, process tree "
            f"{measured['peak_tree_rss_mb']:,.0f} MiB, {rate(size, measured['wall_s']):,.0f} records/s)",
            "seconds": measured["wall_s"],
        }
    )
    notes = []
    if measured["returncode"] != 0:
        notes.append(
            f"the dagster command failed (exit {measured['returncode']}): {measured['stderr'][-1500:]}"
        )
    print(
        f"  hour as run {size:>9,}: {measured['wall_s']:.1f} s wall, peak {measured['peak_rss_mb']:,.0f} MiB "
        f"(process tree {measured['peak_tree_rss_mb']:,.0f} MiB), "
        f"run {run_info['status']}",
        flush=True,
    )
    return {
        "name": NAME,
        "description": "one hour of raw JSON log lines through the whole graph with "
        "`dagster asset materialize --select '*' --partition KEY`, destinations in dry run",
        "targets": {"wall_s": TARGET_SECONDS, "peak_rss_mb": TARGET_PEAK_MB},
        "size": size,
        "partition": key,
        "command": " ".join(command[1:]).replace("-m dagster", "dagster", 1),
        "setup": setup,
        "wall_s": measured["wall_s"],
        "cpu_s": measured["cpu_s"],
        "peak_rss_mb": measured["peak_rss_mb"],
        "peak_tree_rss_mb": measured["peak_tree_rss_mb"],
        "records_per_s": rate(size, measured["wall_s"]),
        "run_status": run_info["status"],
        "run_seconds": run_info["run_seconds"],
        "steps": run_info["steps"],
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "table": rows,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hour_as_run", description=__doc__)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.size, seed=args.seed)
    print(format_table(result["table"]))
    for note in result["notes"]:
        print("note:", note)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
