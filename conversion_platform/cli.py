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
from typing import TYPE_CHECKING

from conversion_platform.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from conversion_platform.collector.replay import ReplayTotals
    from conversion_platform.synthetic import Traffic

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


def replay_through_collector(
    settings: Settings, traffic: Traffic
) -> tuple[ReplayTotals, ReplayTotals]:
    """Send the demo's pixel hits and backend events through a collector child process.

    The demo replays a past day, so it uses an import source (its key made up for this
    run) whose `received_at` the collector honours, and the collector trusts loopback as
    the proxy that reports each hit's client address.
    """
    from conversion_platform.collector.replay import post_server_events, send_pixel_hits
    from conversion_platform.collector.server import collector_process
    from conversion_platform.collector.write_keys import generate_write_key, hash_write_key
    from conversion_platform.synthetic import SITE

    key = generate_write_key()
    env = {
        "CONVERSION_PLATFORM_HOME": str(settings.home),
        "CONVERSION_PLATFORM_DB_URL": settings.db_url,
        "CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS": f"demo-import={hash_write_key(key)}:import",
        "CONVERSION_PLATFORM_COLLECTOR_TRUSTED_PROXIES": "127.0.0.1/32",
        "CONVERSION_PLATFORM_COLLECTOR_ALLOWED_ORIGINS": SITE,
    }
    with collector_process(env) as collector:
        server = post_server_events(collector.url, key, traffic.server_events)
        pixel = send_pixel_hits(collector.url, key, traffic.pixel_events, site_origin=SITE)
    return pixel, server


def run_demo(args: argparse.Namespace) -> int:
    """Generate a day of traffic, run every hour through Dagster, print the summary."""
    from dagster import DagsterInstance

    from conversion_platform.definitions import build_definitions
    from conversion_platform.demo_delivery import start_demo_emulator
    from conversion_platform.report import hourly_summary, match_summary
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
    print(
        f"  {len(traffic.pixel_events):,} pixel hits, {len(traffic.server_events):,} backend events, "
        f"{len(traffic.log_lines) + len(traffic.access_log_lines):,} log lines "
        f"({traffic.conversions:,} distinct conversions) in {time.monotonic() - started:.1f}s"
    )
    t0 = time.monotonic()
    pixel, server = replay_through_collector(settings, traffic)
    print(
        f"  sent through the collector over HTTP in {time.monotonic() - t0:.1f}s: "
        f"pixel {pixel.accepted:,} accepted, {pixel.rejected:,} quarantined; "
        f"backend {server.accepted:,} accepted, {server.rejected:,} quarantined"
    )
    if pixel.failed or server.failed:
        print(f"  {pixel.failed + server.failed:,} events were not stored", file=sys.stderr)
        return 1
    write_server_logs(traffic, settings.logs_dir, hours[0])

    # The demo delivers live to the local ad-platform emulator, never to the real platforms.
    # With --dry-run, every destination writes its request bodies to the outbox instead.
    demo_platforms = None if args.dry_run else start_demo_emulator(settings.destinations_file)
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
    if demo_platforms is not None:
        print("\n" + demo_platforms.summary())
    else:
        print(f"\nDry run: request bodies are in {settings.outbox_dir}")
    configs = definitions.resources["platform"].destinations()  # type: ignore[union-attr]
    _print_match_summary(
        match_summary(settings.partitions_dir, keys, [(c.name, c.platform) for c in configs])
    )
    print(
        f"\nDone in {time.monotonic() - started:.0f}s. State: {settings.home} (Dagster: {dagster_home})."
    )
    print("Browse it with `make ui` at http://localhost:3000.")
    if failed:
        print(f"Hours whose run failed: {failed}", file=sys.stderr)
        return 1
    return 0


def partition_hour(text: str) -> datetime:
    """An hour's partition key (`2026-11-29-10:00`, UTC) as the hour's start."""
    try:
        return datetime.strptime(text, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an hour's partition key, like 2026-11-29-10:00 (UTC)"
        ) from exc


def _print_match_summary(summary: dict) -> None:  # type: ignore[type-arg]
    """The identity figures: conversions a platform can match, before and after enrichment."""
    total = summary["conversions"] or 1
    before, after = summary["with_strong_key_before"], summary["with_strong_key_after"]
    print(
        f"\nIdentity: {before:,} of {summary['conversions']:,} conversions ({before / total:.1%}) "
        f"arrived with a strong key (email, phone or click id); {after:,} ({after / total:.1%}) "
        f"after enrichment from the identity graph: {summary['uplift_pct']:+.1f}% matched conversions."
    )
    scores = ", ".join(
        f"{name} {score:.2f}" for name, score in summary["mean_match_quality"].items()
    )
    print(f"Mean match quality (0-10) per destination: {scores}")


def show_quarantine(args: argparse.Namespace) -> int:
    """Print the quarantined records of one hour, then their counts by reason."""
    from conversion_platform.store.database import engine_for
    from conversion_platform.store.quarantine import read_quarantined, reason_counts

    settings = Settings.from_env()
    hour: datetime = args.hour
    key = hour.strftime("%Y-%m-%d-%H:%M")
    frame = read_quarantined(engine_for(settings.db_url), hour, hour + timedelta(hours=1))
    if args.stage:
        frame = frame.loc[frame["stage"] == args.stage].reset_index(drop=True)
    if frame.empty:
        print(f"nothing quarantined in hour {key}")
        return 0
    columns = ["stage", "source", "event_id", "origin", "reason", "raw_redacted"]
    shown = frame[columns].copy()
    for column, width in (("event_id", 40), ("origin", 60), ("raw_redacted", 80)):
        shown[column] = shown[column].str.slice(0, width)
    print(shown.fillna("").to_string(index=False))
    print(f"\n{len(frame)} records in hour {key}; by reason:")
    print(reason_counts(frame).to_string(index=False))
    return 0


def run_emulator(args: argparse.Namespace) -> int:
    """Serve the local ad-platform emulator (for tests, the demo and trying things out)."""
    from conversion_platform.emulator.server import serve

    serve(args.host, args.port)
    return 0


def run_collector(args: argparse.Namespace) -> int:
    """Serve the collection endpoint (configuration: seeds/collector.yaml and env vars)."""
    from conversion_platform.collector.server import serve

    serve(args.host, args.port, workers=args.workers, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conversion-platform", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate a day of traffic and run it end to end")
    demo.add_argument("--hours", type=int, default=24)
    demo.add_argument("--conversions-per-hour", type=int, default=2_000)
    demo.add_argument("--people", type=int, default=15_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--dry-run",
        action="store_true",
        help="write each destination's request bodies to the outbox instead of delivering "
        "them to the local ad-platform emulator",
    )
    demo.set_defaults(handler=run_demo)

    quarantine = commands.add_parser("quarantine", help="list the quarantined records of an hour")
    quarantine.add_argument(
        "--hour", required=True, type=partition_hour, help="partition key, e.g. 2026-11-29-10:00"
    )
    quarantine.add_argument(
        "--stage", choices=("parse", "collector", "validation"), help="only records of this stage"
    )
    quarantine.set_defaults(handler=show_quarantine)

    emulator = commands.add_parser("emulator", help="serve the local ad-platform API emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8799)
    emulator.set_defaults(handler=run_emulator)

    collector = commands.add_parser("collector", help="serve the collection endpoint")
    collector.add_argument("--host", default="127.0.0.1")
    collector.add_argument("--port", type=int, default=8787)
    collector.add_argument("--workers", type=int, default=1, help="worker processes")
    collector.add_argument("--log-level", default="info")
    collector.set_defaults(handler=run_collector)

    from conversion_platform.operations_cli import add_operations_commands

    add_operations_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster marks some APIs we rely on (single-run backfills, pandera types) as beta;
    # the command's output is for people, so those notices stay out of it.
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
