"""Run the benchmarks: `python -m benchmarks [NAME ...] [options]` (what `make bench` runs).

Runs every benchmark module found (in the order below; a missing one is skipped with a
note), prints each one's table, and writes all figures, with the machine they come from,
to `benchmarks/results/run-<time>.json` and `benchmarks/results/latest.json`.
`--reference` also writes `benchmarks/results/reference.json`, the committed copy the
README's figures come from.

A benchmark module has `run(...) -> dict` (JSON-ready; a `table` entry, a list of flat
rows, is what gets printed) and `main()`. Options are passed to `run` only when its
signature takes them.

    python -m benchmarks                                  # everything, full sizes
    python -m benchmarks pipeline --sizes 100000,300000,1000000
    python -m benchmarks backfill --hours 24 --records-per-hour 5000
    python -m benchmarks --quick                          # tiny sizes: does it all still run?
    python -m benchmarks --combine results/run-A.json results/run-B.json --reference
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, format_table, load_average, machine

#: Every benchmark, in the order they run; modules that don't exist (yet) are skipped.
BENCHMARKS: tuple[str, ...] = (
    "pipeline",
    "hour_as_run",
    "backfill",
    "collector",
    "delivery",
    "retry_sensor",
)

#: `--quick`: sizes small enough to run in a minute or two (a smoke run, not figures).
QUICK: dict[str, Any] = {
    "sizes": [2_000],
    "size": 2_000,
    "hours": 3,
    "records_per_hour": 500,
    "compare_hours": 2,
    "quick": True,
}


def _arguments(run: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options `run` takes (by parameter name; **kwargs takes them all)."""
    parameters = inspect.signature(run).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in parameters}


def _print_result(name: str, result: dict[str, Any]) -> None:
    print(f"\n== {name}: {result.get('description', '')}")
    table = result.get("table")
    if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        print(format_table(table))
    else:
        flat = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
        print(format_table([flat]) if flat else json.dumps(result, indent=2, default=str)[:4000])
    for note in result.get("notes", []):
        print(f"  note: {note}")


def _combine(paths: list[Path], reference: bool) -> int:
    """One results file from several runs (benchmarks run separately, e.g. in parallel)."""
    runs = [json.loads(p.read_text()) for p in paths]
    combined: dict[str, Any] = {
        "combined_from": [p.name for p in paths],
        "started_at": min(r["started_at"] for r in runs),
        "finished_at": max(r.get("finished_at", r["started_at"]) for r in runs),
        "machine": runs[-1]["machine"],
        "load_average_at_start": [r.get("load_average_at_start") for r in runs],
        "load_average_at_end": [r.get("load_average_at_end") for r in runs],
        "commands": [r.get("command") for r in runs],
        "benchmarks": {},
        "skipped": {},
        "failed": {},
    }
    for run in runs:
        for key in ("benchmarks", "skipped", "failed"):
            combined[key].update(run.get(key, {}))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "latest.json"
    path.write_text(json.dumps(combined, indent=2, default=str) + "\n")
    if reference:
        shutil.copy(path, RESULTS_DIR / "reference.json")
    for name, result in combined["benchmarks"].items():
        _print_result(name, result)
    print(f"\ncombined into {path}{' and reference.json' if reference else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    parser.add_argument(
        "--sizes", help="pipeline sizes, comma separated (default 100000,300000,1000000)"
    )
    parser.add_argument(
        "--size", type=int, help="records in the hour run with the dagster CLI (default 1000000)"
    )
    parser.add_argument("--hours", type=int, help="backfill hours (default 168)")
    parser.add_argument(
        "--records-per-hour", type=int, help="backfill records per hour (default 10000)"
    )
    parser.add_argument(
        "--compare-hours",
        type=int,
        help="hours of the one-run vs run-per-hour comparison (default 24)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--work-dir", help="where benchmark homes go (default /tmp/conversion-platform-bench)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: check that everything runs"
    )
    parser.add_argument(
        "--reference", action="store_true", help="also write results/reference.json"
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="RUN_JSON",
        help="merge the benchmarks of earlier run files (later files win) instead of running",
    )
    args = parser.parse_args(argv)
    if args.combine:
        return _combine([Path(p) for p in args.combine], args.reference)

    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    options: dict[str, Any] = dict(QUICK) if args.quick else {}
    options["seed"] = args.seed
    if args.work_dir:
        options["work_dir"] = args.work_dir
    if args.sizes:
        options["sizes"] = [int(s) for s in args.sizes.split(",") if s.strip()]
    for name in ("size", "hours", "records_per_hour", "compare_hours"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)

    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started_at": started.isoformat(),
        "command": " ".join(
            ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine(),
        "load_average_at_start": load_average(),
        "benchmarks": {},
        "skipped": {},
        "failed": {},
    }
    print(
        f"machine: {report['machine']['nproc']} cores, {report['machine']['cpu_model']}, "
        f"{report['machine']['ram_gb']} GB RAM; load average {report['load_average_at_start']}"
    )
    for name in args.names or BENCHMARKS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.{name}":
                raise
            print(f"\n== {name}: skipped (benchmarks/{name}.py is not there yet)")
            report["skipped"][name] = "module not present"
            continue
        run = getattr(module, "run", None)
        if run is None:
            print(f"\n== {name}: skipped (no run())")
            report["skipped"][name] = "no run()"
            continue
        print(f"\n-- running {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = run(**_arguments(run, options))
        except Exception as exc:  # one broken benchmark never hides the others' figures
            traceback.print_exc()
            report["failed"][name] = f"{type(exc).__name__}: {exc}"
            continue
        result = dict(result or {})
        result.setdefault("wall_s", round(time.perf_counter() - t0, 1))
        report["benchmarks"][name] = result
        _print_result(name, result)
    report["finished_at"] = datetime.now(UTC).isoformat()
    report["load_average_at_end"] = load_average()

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"run-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    shutil.copy(path, RESULTS_DIR / "latest.json")
    if args.reference:
        shutil.copy(path, RESULTS_DIR / "reference.json")
    print(
        f"\nfigures written to {path} (and latest.json{', reference.json' if args.reference else ''})"
    )
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
