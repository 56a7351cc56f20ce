"""Pipeline throughput: one hour of N conversions from the landing table to request bodies.

In one process, without Dagster: read the hour from the landing table, deduplicate it
(against the ledger), validate it (pandera), resolve identities, and deliver it to every
enabled destination in dry-run mode (request bodies built, written to the outbox, every
event's outcome in the delivery log). Each stage is timed; peak memory is the measuring
process's maximum resident set size. The data is generated and landed first, in another
process, so neither its time nor its memory counts.

N counts incoming records (pixel and backend copies), of which 20% are the second copy
of a conversion and 2% are invalid.

    python -m benchmarks.pipeline --sizes 100000,300000,1000000
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Home,
    Stages,
    fresh_home,
    load_average,
    peak_rss_mb,
    rate,
    recent_hours,
    run_child,
)

NAME = "pipeline"
DEFAULT_SIZES = (100_000, 300_000, 1_000_000)
TARGET_EVENTS_PER_SECOND = 100_000
TARGET_PEAK_MB = 3 * 1024


def prepare(size: int, seed: int, root: str, hour: str) -> dict[str, Any]:
    """Child process: a fresh home with one hour of `size` records in the landing table."""
    from benchmarks.data import generate_and_land
    from conversion_platform.store.database import engine_for

    home = Home(Path(root))
    home.activate()
    started = time.perf_counter()
    landed = generate_and_land(
        engine_for(home.db_url), [datetime.fromisoformat(hour)], size, seed=seed
    )
    return {"setup_s": round(time.perf_counter() - started, 2), **landed.__dict__}


class _TimedDestination:
    """A destination whose event encoding and request building are timed (the rest passes)."""

    def __init__(self, destination: Any, stages: Stages, name: str) -> None:
        self._destination = destination
        self._stages = stages
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._destination, attribute)

    def encode_events(self, *args: Any, **kwargs: Any) -> Any:
        with self._stages.time(f"{self._name}: encode events"):
            return self._destination.encode_events(*args, **kwargs)

    def build_request(self, *args: Any, **kwargs: Any) -> Any:
        with self._stages.time(f"{self._name}: build bodies"):
            return self._destination.build_request(*args, **kwargs)


def measure(root: str, hour: str, size: int, profile: str | None = None) -> dict[str, Any]:
    """Child process: the timed pipeline over the prepared hour (profiled when `profile`
    names a file: pyinstrument's text report goes there)."""
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
        try:
            return _measure(root, hour, size)
        finally:
            profiler.stop()
            Path(profile).write_text(profiler.output_text(show_all=False))
    return _measure(root, hour, size)


def _measure(root: str, hour: str, size: int) -> dict[str, Any]:
    import pandas as pd

    from conversion_platform import events
    from conversion_platform.defs.resources import resources_from_settings
    from conversion_platform.destinations.delivery import HourDeliverer
    from conversion_platform.destinations.http_client import new_session
    from conversion_platform.destinations.registry import destination_for
    from conversion_platform.settings import Settings
    from conversion_platform.store.database import engine_for
    from conversion_platform.store.landing import read_landing_events
    from conversion_platform.transform.hourly_dedupe import deduplicate_hours
    from conversion_platform.transform.identity import resolve_hours
    from conversion_platform.transform.validate import validate_conversions

    home = Home(Path(root))
    home.activate()
    settings = Settings.from_env()
    # The settings the assets get (dedupe tolerance, identity rules, destinations).
    platform: Any = resources_from_settings(settings)["platform"]
    engine = engine_for(settings.db_url)
    start = datetime.fromisoformat(hour)
    max_age = timedelta(hours=platform.max_event_age_hours)
    baseline_mb = peak_rss_mb()
    stages = Stages()
    sub = Stages()

    with stages.time("read landing"):
        frame = read_landing_events(engine, start, start + timedelta(hours=1))
        frame.insert(0, events.HOUR_COLUMN, pd.Timestamp(start))
        frame = events.conform(frame)
    stages.rows["read landing"] = len(frame)
    with stages.time("dedupe"):
        deduped = deduplicate_hours(
            engine,
            frame,
            [start],
            window=timedelta(hours=platform.dedupe_window_hours),
            tolerance=timedelta(seconds=platform.dedupe_tolerance_seconds),
            max_event_age=max_age,
        ).frame
    stages.rows["dedupe"] = len(deduped)
    del frame
    with stages.time("validate"):
        validation = validate_conversions(deduped, max_age)
    stages.rows["validate"] = len(validation.valid)
    invalid = len(validation.invalid)
    del deduped
    with stages.time("identity"):
        resolved = resolve_hours(
            engine,
            validation.valid,
            [start],
            platform.identity_rules(),
            consent_required=platform.consent_required,
        ).frame
    stages.rows["identity"] = len(resolved)
    del validation

    destinations: dict[str, dict[str, Any]] = {}
    session = new_session()
    key = start.strftime("%Y-%m-%d-%H:%M")
    for config in platform.destinations():
        name = f"deliver {config.name}"
        destination = _TimedDestination(destination_for(config.platform), sub, config.name)
        deliverer = HourDeliverer(
            engine,
            destination,  # type: ignore[arg-type]
            config,
            session,
            settings.outbox_dir,
            consent_required=platform.consent_required,
            run_id="benchmark",
        )
        with stages.time(name):
            report = deliverer.deliver_hour(resolved, start, key)
        stages.rows[name] = report.sent
        destinations[config.name] = {
            "mode": report.mode,
            "eligible": report.eligible,
            "sent": report.sent,
            "requests": report.requests,
            "rejected": report.rejected_total,
            "filtered": report.filtered,
            "expired": report.expired,
            "encode_events_s": round(sub.seconds.get(f"{config.name}: encode events", 0.0), 3),
            "build_bodies_s": round(sub.seconds.get(f"{config.name}: build bodies", 0.0), 3),
            "total_s": round(stages.seconds[name], 3),
        }
    total = stages.total()
    return {
        "size": size,
        "stages_s": {k: round(v, 3) for k, v in stages.seconds.items()},
        "stages_cpu_s": {k: round(v, 3) for k, v in stages.cpu_seconds.items()},
        "stages_peak_mb_after": dict(stages.peak_mb_after),
        "cpu_total_s": round(stages.cpu_total(), 3),
        "load_average": load_average(),
        "rows": stages.rows,
        "invalid": invalid,
        "destinations": destinations,
        "total_s": round(total, 3),
        "events_per_s": rate(size, total),
        "cpu_events_per_s": rate(size, stages.cpu_total()),
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline_mb,
    }


def run(
    sizes: tuple[int, ...] | list[int] = DEFAULT_SIZES,
    seed: int = 7,
    work_dir: str | None = None,
    profile_dir: str | None = None,
) -> dict[str, Any]:
    """Each size in its own fresh home and its own measuring process.

    With `profile_dir`, each size's measuring process is profiled (pyinstrument, a dev
    dependency) to `profile_dir/pipeline-<size>.txt`; the times then include its overhead.
    """
    hour = recent_hours(1)[0]
    results = []
    for size in sizes:
        home = fresh_home(f"pipeline-{size}", Path(work_dir) if work_dir else None)
        env = home.env()
        setup = run_child(
            "benchmarks.pipeline",
            "prepare",
            {"size": size, "seed": seed, "root": str(home.root), "hour": hour.isoformat()},
            env,
        )
        measured = run_child(
            "benchmarks.pipeline",
            "measure",
            {
                "root": str(home.root),
                "hour": hour.isoformat(),
                "size": size,
                "profile": str(Path(profile_dir) / f"pipeline-{size}.txt") if profile_dir else None,
            },
            env,
        )
        results.append({**measured, "setup": setup})
        print(
            f"  pipeline {size:>9,}: {measured['total_s']:.1f} s, "
            f"{measured['events_per_s']:,.0f} events/s, peak {measured['peak_rss_mb']:,.0f} MiB",
            flush=True,
        )
    return {
        "name": NAME,
        "description": "one hour from the landing table through dedupe, validation, identity "
        "and dry-run delivery to every enabled destination, one process",
        "targets": {"events_per_s_at_1m": TARGET_EVENTS_PER_SECOND, "peak_rss_mb": TARGET_PEAK_MB},
        "hour": hour.isoformat(),
        "seed": seed,
        "results": results,
        "table": table(results),
    }


def table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage and size: seconds and events/s (stage rows in, total at the end)."""
    rows: list[dict[str, Any]] = []
    for result in results:
        size = result["size"]
        for stage, seconds in result["stages_s"].items():
            rows.append(
                {
                    "size": size,
                    "stage": stage,
                    "rows out": result["rows"].get(stage),
                    "seconds": seconds,
                    "cpu s": result["stages_cpu_s"][stage],
                    "peak MiB after": result.get("stages_peak_mb_after", {}).get(stage),
                    "events/s": rate(size, seconds),
                    "share %": round(100 * seconds / result["total_s"], 1)
                    if result["total_s"]
                    else 0.0,
                }
            )
        rows.append(
            {
                "size": size,
                "stage": f"TOTAL (peak {result['peak_rss_mb']:,.0f} MiB)",
                "rows out": None,
                "seconds": result["total_s"],
                "cpu s": result["cpu_total_s"],
                "peak MiB after": result["peak_rss_mb"],
                "events/s": result["events_per_s"],
                "share %": 100.0,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import format_table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the JSON result")
    parser.add_argument(
        "--profile-dir", help="profile each size with pyinstrument into this folder"
    )
    args = parser.parse_args(argv)
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    result = run(
        [int(s) for s in args.sizes.split(",")], seed=args.seed, profile_dir=args.profile_dir
    )
    print(format_table(result["table"]))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
