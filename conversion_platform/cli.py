"""The `conversion-platform` command."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conversion_platform.settings import REPO_ROOT, Settings

HOME_MARKER = ".conversion_platform_home"
#: Dagster's console logger at WARNING: the demo prints its own progress.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _prepare_home(settings: Settings, reset: bool) -> None:
    """Create HOME (and reset it for the demo, only if it is ours or empty)."""
    home = settings.home
    if reset and home.exists():
        ours = (home / HOME_MARKER).exists() or not any(home.iterdir())
        if not ours:
            raise SystemExit(
                f"{home} exists and is not a conversion platform home; refusing to reset it"
            )
        for child in home.iterdir():
            if child.name == HOME_MARKER:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    home.mkdir(parents=True, exist_ok=True)
    (home / HOME_MARKER).touch()


def _dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME (default HOME/dagster_home) with the project's dagster.yaml in it."""
    path = Path(os.environ.get("DAGSTER_HOME") or settings.home / "dagster_home").resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists() and (REPO_ROOT / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", config)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def run_demo(args: argparse.Namespace) -> int:
    """Generate a day of traffic, run every hour through Dagster, print the summary."""
    from dagster import DagsterInstance

    from conversion_platform import events
    from conversion_platform.definitions import build_definitions
    from conversion_platform.ingest.landing_writer import land_events
    from conversion_platform.report import hourly_summary
    from conversion_platform.store.database import engine_for
    from conversion_platform.synthetic import (
        TrafficGenerator,
        last_complete_hours,
        write_server_logs,
    )

    settings = Settings.from_env()
    _prepare_home(settings, reset=True)
    dagster_home = _dagster_home(settings)
    started = time.monotonic()
    hours = last_complete_hours(args.hours)
    print(
        f"Generating {args.hours} hours of traffic ({args.conversions_per_hour} conversions an hour) ..."
    )
    generator = TrafficGenerator(seed=args.seed, people=args.people)
    traffic = generator.generate(hours, conversions_per_hour=args.conversions_per_hour)
    engine = engine_for(settings.db_url)
    for source, records in (
        (events.SOURCE_PIXEL, traffic.pixel_events),
        (events.SOURCE_SERVER, traffic.server_events),
    ):
        received = [r["received_at"] for r in records]
        land_events(engine, records, source, received, origin=f"demo-{source}")
    write_server_logs(traffic, settings.logs_dir, hours[0])
    print(
        f"  {len(traffic.pixel_events):,} pixel events, {len(traffic.server_events):,} backend events, "
        f"{len(traffic.log_lines) + len(traffic.access_log_lines):,} log lines "
        f"({traffic.conversions:,} distinct conversions) in {time.monotonic() - started:.1f}s"
    )

    definitions = build_definitions(settings)
    job = definitions.resolve_job_def("hourly_conversions_job")
    instance = DagsterInstance.get()
    partitions_def = job.partitions_def
    keys = [partitions_def.get_partition_key_for_timestamp(h.timestamp()) for h in hours]
    failed = []
    for key in keys:
        t0 = time.monotonic()
        result = job.execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False, run_config=QUIET_RUN_CONFIG
        )
        status = "ok" if result.success else "FAILED"
        if not result.success:
            failed.append(key)
        print(f"  hour {key}: run {result.run_id[:8]} {status} in {time.monotonic() - t0:.1f}s")
    destinations = [c.name for c in (definitions.resources["platform"].destinations())]  # type: ignore[union-attr]
    summary = hourly_summary(
        engine, settings.partitions_dir, list(zip(keys, hours, strict=True)), destinations
    )
    print()
    print(summary.to_string(index=False))
    totals = summary.drop(columns=["hour"]).sum()
    print("\nTotals: " + ", ".join(f"{k} {int(v):,}" for k, v in totals.items()))
    print(
        f"\nDone in {time.monotonic() - started:.0f}s. State: {settings.home} (Dagster: {dagster_home})."
    )
    print("Browse it with `make ui` at http://localhost:3000.")
    if failed:
        print(f"Hours whose run failed: {failed}", file=sys.stderr)
        return 1
    return 0


def show_quarantine(args: argparse.Namespace) -> int:
    """Print the quarantined records of one hour."""
    from conversion_platform.store.database import engine_for
    from conversion_platform.store.quarantine import read_quarantined

    settings = Settings.from_env()
    hour = datetime.strptime(args.hour, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    frame = read_quarantined(engine_for(settings.db_url), hour, hour + timedelta(hours=1))
    if frame.empty:
        print(f"nothing quarantined in hour {args.hour}")
        return 0
    columns = ["stage", "source", "origin", "reason", "raw_redacted"]
    with_width = frame[columns].copy()
    with_width["raw_redacted"] = with_width["raw_redacted"].str.slice(0, 80)
    print(with_width.to_string(index=False))
    print(f"\n{len(frame)} records")
    return 0


def run_emulator(args: argparse.Namespace) -> int:
    """Serve the local ad-platform emulator (for tests, the demo and trying things out)."""
    from conversion_platform.emulator.server import serve

    serve(args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conversion-platform", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate a day of traffic and run it end to end")
    demo.add_argument("--hours", type=int, default=24)
    demo.add_argument("--conversions-per-hour", type=int, default=2_000)
    demo.add_argument("--people", type=int, default=15_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=run_demo)

    quarantine = commands.add_parser("quarantine", help="list the quarantined records of an hour")
    quarantine.add_argument("--hour", required=True, help="partition key, e.g. 2026-11-29-10:00")
    quarantine.set_defaults(handler=show_quarantine)

    emulator = commands.add_parser("emulator", help="serve the local ad-platform API emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8799)
    emulator.set_defaults(handler=run_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster marks some APIs we rely on (single-run backfills, pandera types) as beta;
    # the command's output is for people, so those notices stay out of it.
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
