"""Backfill: a week of hourly partitions through the whole graph, delivered to the emulator.

168 hours of 10,000 records each (pixel and backend copies landed in the landing table,
10% of the conversions seen once only in JSON-lines server logs, 20% second copies, 2%
invalid) run as ONE backfill run,

    dagster asset materialize -m conversion_platform.definitions --select '*' \\
        --partition-range FIRST...LAST

with every destination live against the local emulator over HTTP (base URLs from each
destination's `base_url_env`, fake credentials). Then, side by side and on identical
data, 24 hours backfilled as one run against the same 24 hours run one `--partition` at a
time, and the ratio of the two.

    python -m benchmarks.backfill --hours 168 --records-per-hour 10000 --compare-hours 24
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

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

NAME = "backfill"
DEFAULT_HOURS = 168
DEFAULT_RECORDS_PER_HOUR = 10_000
DEFAULT_COMPARE_HOURS = 24
TARGET_SECONDS = 180.0
#: Share of the conversions seen once that only the server logs saw.
LOG_SHARE = 0.1


def prepare(hours: list[str], records_per_hour: int, seed: int, root: str) -> dict[str, Any]:
    """Child process: land the hours' pixel and backend records, write the log-only ones."""
    from benchmarks.data import generate_and_land
    from conversion_platform.store.database import engine_for

    home = Home(Path(root))
    home.activate()
    started = time.perf_counter()
    landed = generate_and_land(
        engine_for(home.db_url),
        [datetime.fromisoformat(h) for h in hours],
        records_per_hour,
        seed=seed,
        logs_dir=home.logs_dir,
        log_share=LOG_SHARE,
    )
    return {"setup_s": round(time.perf_counter() - started, 2), **landed.__dict__}


def delivery_counts(root: str) -> dict[str, dict[str, int]]:
    """Child process: events per destination and outcome in the delivery log."""
    import sqlalchemy as sa

    from conversion_platform.store.database import engine_for
    from conversion_platform.store.tables import delivery_batches, delivery_events

    engine = engine_for(Home(Path(root)).db_url)
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                delivery_events.c.destination, delivery_events.c.status, sa.func.count()
            ).group_by(delivery_events.c.destination, delivery_events.c.status)
        ).fetchall()
        for destination, status, count in rows:
            out.setdefault(destination, {})[status] = int(count)
        requests = conn.execute(
            sa.select(delivery_batches.c.destination, sa.func.count()).group_by(
                delivery_batches.c.destination
            )
        ).fetchall()
        for destination, count in requests:
            out.setdefault(destination, {})["requests"] = int(count)
    return out


def emulator_environment(base_url: str) -> dict[str, str]:
    """Base-URL variables pointing each configured destination at the emulator, and fake
    credentials, so that every destination delivers live over HTTP."""
    document = yaml.safe_load((REPO_ROOT / "seeds" / "destinations.yaml").read_text()) or {}
    env: dict[str, str] = {}
    for name, raw in (document.get("destinations") or {}).items():
        if not isinstance(raw, dict) or raw.get("enabled", True) is False:
            continue
        platform = str(raw.get("platform", name))
        if raw.get("base_url_env"):
            # The emulator serves each platform under its own prefix (`/meta`, `/google`, ...).
            env[str(raw["base_url_env"])] = f"{base_url}/{platform.split('_')[0]}"
        for variable in (raw.get("credentials") or {}).values():
            env[str(variable)] = f"benchmark-fake-{str(variable).lower()}"
    return env


@contextmanager
def emulator() -> Iterator[str]:
    from conversion_platform.emulator.server import running_emulator

    with running_emulator() as url:
        yield url


def _materialize(home: Home, env: dict[str, str], keys: list[str]) -> dict[str, Any]:
    selection = (
        ["--partition", keys[0]]
        if len(keys) == 1
        else ["--partition-range", f"{keys[0]}...{keys[-1]}"]
    )
    command = dagster_command(
        "asset", "materialize", "-m", "conversion_platform.definitions", "--select", "*", *selection
    )
    return measure_command(command, env, REPO_ROOT)


def _prepared_home(
    name: str, hours: list[datetime], records_per_hour: int, seed: int, work_dir: str | None
) -> tuple[Home, dict[str, Any]]:
    home = fresh_home(name, Path(work_dir) if work_dir else None)
    setup = run_child(
        "benchmarks.backfill",
        "prepare",
        {
            "hours": [h.isoformat() for h in hours],
            "records_per_hour": records_per_hour,
            "seed": seed,
            "root": str(home.root),
        },
        home.env(),
    )
    return home, setup


def _step_rows(timings: dict[str, Any]) -> list[dict[str, Any]]:
    run_info = timings["runs"][-1] if timings["runs"] else {"steps": {}}
    return [
        {
            "step": step,
            "seconds": info["seconds"],
            "status": (info["status"] or "").replace("STEP_", "").lower(),
        }
        for step, info in run_info["steps"].items()
    ]


def run(
    hours: int = DEFAULT_HOURS,
    records_per_hour: int = DEFAULT_RECORDS_PER_HOUR,
    compare_hours: int = DEFAULT_COMPARE_HOURS,
    seed: int = 7,
    work_dir: str | None = None,
) -> dict[str, Any]:
    notes: list[str] = []
    table: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "name": NAME,
        "description": f"{hours} hours x {records_per_hour:,} records as one backfill run, delivered "
        f"live to the emulator; {compare_hours} hours as one run vs one run per hour",
        "targets": {"backfill_wall_s": TARGET_SECONDS},
        "hours": hours,
        "records_per_hour": records_per_hour,
        "notes": notes,
        "table": table,
    }
    with emulator() as url:
        env_extra = emulator_environment(url)
        # -- the week as one run --------------------------------------------------------------
        week = recent_hours(hours, hours_ago=1)
        keys = [partition_key(h) for h in week]
        home, setup = _prepared_home(f"backfill-{hours}h", week, records_per_hour, seed, work_dir)
        load_before = load_average()
        measured = _materialize(home, home.env(env_extra), keys)
        if measured["returncode"] != 0:
            notes.append(
                f"backfill run failed (exit {measured['returncode']}): {measured['stderr'][-1500:]}"
            )
        timings = run_child(
            "benchmarks.common",
            "run_step_timings",
            {"dagster_home": str(home.dagster_home)},
            home.env(),
        )
        deliveries = run_child(
            "benchmarks.backfill", "delivery_counts", {"root": str(home.root)}, home.env()
        )
        records = setup["records"]
        result["backfill"] = {
            "partition_range": f"{keys[0]}...{keys[-1]}",
            "setup": setup,
            "wall_s": measured["wall_s"],
            "cpu_s": measured["cpu_s"],
            "peak_rss_mb": measured["peak_rss_mb"],
            "peak_tree_rss_mb": measured["peak_tree_rss_mb"],
            "records_per_s": rate(records, measured["wall_s"]),
            "run_status": timings["runs"][-1]["status"] if timings["runs"] else "missing",
            "run_seconds": timings["runs"][-1]["run_seconds"] if timings["runs"] else None,
            "steps": timings["runs"][-1]["steps"] if timings["runs"] else {},
            "deliveries": deliveries,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        }
        print(
            f"  backfill {hours} h x {records_per_hour:,}: {measured['wall_s']:.1f} s wall, "
            f"peak {measured['peak_rss_mb']:,.0f} MiB (process tree "
            f"{measured['peak_tree_rss_mb']:,.0f} MiB), {result['backfill']['run_status']}",
            flush=True,
        )
        table.extend(
            {"what": f"backfill {hours} h: {r['step']}", "seconds": r["seconds"]}
            for r in _step_rows(timings)
        )
        for destination, counts in sorted(deliveries.items()):
            sent = counts.get("delivered", 0)
            table.append(
                {
                    "what": f"backfill {hours} h: delivered to {destination} "
                    f"({counts.get('requests', 0):,} requests; {', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()) if k not in ('delivered', 'requests'))})",
                    "events": sent,
                }
            )
        table.append(
            {
                "what": f"BACKFILL {hours} h x {records_per_hour:,} = {records:,} records, one run "
                f"(peak {measured['peak_rss_mb']:,.0f} MiB)",
                "seconds": measured["wall_s"],
                "records/s": rate(records, measured["wall_s"]),
            }
        )

        # -- one run against a run per hour, identical data -------------------------------------
        if compare_hours:
            day = recent_hours(compare_hours, hours_ago=1)
            day_keys = [partition_key(h) for h in day]
            one_home, one_setup = _prepared_home(
                f"backfill-compare-one-{compare_hours}h", day, records_per_hour, seed, work_dir
            )
            one = _materialize(one_home, one_home.env(env_extra), day_keys)
            many_home, _ = _prepared_home(
                f"backfill-compare-many-{compare_hours}h", day, records_per_hour, seed, work_dir
            )
            many_wall = many_cpu = 0.0
            many_peak = 0.0
            failed = 0
            for key in day_keys:
                each = _materialize(many_home, many_home.env(env_extra), [key])
                many_wall += each["wall_s"]
                many_cpu += each["cpu_s"]
                many_peak = max(many_peak, each["peak_rss_mb"])
                failed += each["returncode"] != 0
            if one["returncode"] != 0 or failed:
                notes.append(
                    f"comparison: one-run exit {one['returncode']}, {failed} per-hour run(s) failed"
                )
            ratio = round(many_wall / one["wall_s"], 2) if one["wall_s"] else None
            result["comparison"] = {
                "hours": compare_hours,
                "records": one_setup["records"],
                "one_run_wall_s": one["wall_s"],
                "one_run_cpu_s": one["cpu_s"],
                "one_run_peak_rss_mb": one["peak_rss_mb"],
                "run_per_hour_wall_s": round(many_wall, 2),
                "run_per_hour_cpu_s": round(many_cpu, 2),
                "run_per_hour_peak_rss_mb": many_peak,
                "ratio_run_per_hour_to_one_run": ratio,
            }
            print(
                f"  {compare_hours} h: one run {one['wall_s']:.1f} s, one run per hour "
                f"{many_wall:.1f} s (x{ratio})",
                flush=True,
            )
            table.append(
                {
                    "what": f"{compare_hours} h as one run",
                    "seconds": one["wall_s"],
                    "records/s": rate(one_setup["records"], one["wall_s"]),
                }
            )
            table.append(
                {
                    "what": f"{compare_hours} h as {compare_hours} runs, one per hour",
                    "seconds": round(many_wall, 2),
                    "records/s": rate(one_setup["records"], many_wall),
                }
            )
            table.append({"what": f"ratio (run per hour / one run): x{ratio}"})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backfill", description=__doc__)
    parser.add_argument("--hours", type=int, default=DEFAULT_HOURS)
    parser.add_argument("--records-per-hour", type=int, default=DEFAULT_RECORDS_PER_HOUR)
    parser.add_argument("--compare-hours", type=int, default=DEFAULT_COMPARE_HOURS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.hours, args.records_per_hour, args.compare_hours, seed=args.seed)
    print(format_table(result["table"]))
    for note in result["notes"]:
        print("note:", note)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
