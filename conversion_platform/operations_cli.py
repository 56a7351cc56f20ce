"""Operator commands of `conversion-platform`: replay dead letters, circuits, the retry schedule.

    conversion-platform replay --destination D --from H1 --to H2 [--kind K]
    conversion-platform dead-letters [--destination D]
    conversion-platform retries [--destination D]
    conversion-platform circuit status
    conversion-platform circuit reset --destination D

Hours are partition keys (`2026-11-29-10:00`) or ISO times (`2026-11-29T10:00Z`), UTC;
`--to` is the last hour included.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pandas as pd

from conversion_platform.settings import Settings


class HourError(ValueError):
    """An hour argument that can't be read."""


def parse_hour(text: str) -> datetime:
    """The UTC hour of a partition key (`2026-11-29-10:00`) or an ISO time."""
    text = text.strip()
    try:
        moment = datetime.strptime(text, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise HourError(
                f"not an hour: {text!r} (use a partition key like 2026-11-29-10:00)"
            ) from None
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment.minute or moment.second or moment.microsecond:
        raise HourError(f"{text!r} is not on the hour")
    return moment


def _engine():  # type: ignore[no-untyped-def]
    from conversion_platform.store.database import engine_for

    return engine_for(Settings.from_env().db_url)


def _configured_destinations() -> list[str]:
    from conversion_platform.destinations.config import load_destination_configs

    return [c.name for c in load_destination_configs(Settings.from_env().destinations_file)]


def run_replay(args: argparse.Namespace) -> int:
    from conversion_platform.operations.dead_letters import replay_dead_letters

    try:
        start, last = parse_hour(args.start), parse_hour(args.end)
    except HourError as error:
        print(f"error: {error}")
        return 2
    if last < start:
        print("error: --to is before --from")
        return 2
    if args.destination not in _configured_destinations():
        print(
            f"note: {args.destination} is not an enabled destination; its events wait until it is"
        )
    result = replay_dead_letters(
        _engine(), args.destination, start, last + timedelta(hours=1), kind=args.kind
    )
    if result.events == 0:
        print(f"no dead letters of {args.destination} between {args.start} and {args.end}")
        return 0
    print(
        f"{result.events} dead-lettered events of {args.destination} in {result.hours} hour(s) "
        "are back in the queue (status retryable)."
    )
    print(
        "The delivery_retry_sensor requests their delivery on its next tick (within a minute "
        "while the daemon runs); without the daemon, run:\n"
        f"  dagster asset materialize -m conversion_platform.definitions "
        f"--select 'delivery/{args.destination},delivery_report' "
        f"--partition-range {start:%Y-%m-%d-%H:%M}...{last:%Y-%m-%d-%H:%M}"
    )
    return 0


def _print_frame(frame: pd.DataFrame, empty: str) -> None:
    if frame.empty:
        print(empty)
        return
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(frame.to_string(index=False))


def _hour_key(micros: object) -> str:
    return pd.Timestamp(int(micros), unit="us", tz="UTC").strftime("%Y-%m-%d-%H:%M")  # type: ignore[arg-type]


def show_dead_letters(args: argparse.Namespace) -> int:
    from conversion_platform.operations.dead_letters import dead_letter_summary

    frame = dead_letter_summary(_engine(), args.destination)
    if not frame.empty:
        frame.insert(1, "hour", frame.pop("hour_us").map(_hour_key))
    _print_frame(frame, "no dead letters")
    return 0


def show_retries(args: argparse.Namespace) -> int:
    from conversion_platform.operations.retry_planner import (
        pending_destination_hours,
        retry_schedule,
    )

    engine = _engine()
    rows = [r for r in retry_schedule(engine, args.destination) if r["state"] != "resolved"]
    known = {(r["destination"], r["hour_us"]) for r in rows}
    for (destination, hour_us), count in sorted(pending_destination_hours(engine).items()):
        if (destination, hour_us) not in known and args.destination in (None, destination):
            # Failed, but the sensor has not looked yet (or the daemon is not running).
            rows.append(
                {
                    "destination": destination,
                    "hour_us": hour_us,
                    "state": "not yet seen by the sensor",
                    "retries_requested": 0,
                    "pending_events": count,
                    "next_attempt_at_us": None,
                    "last_error": None,
                }
            )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["hour"] = frame["hour_us"].map(_hour_key)
        frame["next_attempt"] = frame["next_attempt_at_us"].map(
            lambda v: (
                "-"
                if pd.isna(v)
                else f"{pd.Timestamp(int(v), unit='us', tz='UTC'):%Y-%m-%d %H:%M:%S}"
            )
        )
        frame = frame[
            [
                "destination",
                "hour",
                "state",
                "retries_requested",
                "pending_events",
                "next_attempt",
                "last_error",
            ]
        ].sort_values(["destination", "hour"])
    _print_frame(frame, "nothing waits for a retry")
    return 0


def run_circuit(args: argparse.Namespace) -> int:
    from conversion_platform.operations.circuits import read_circuits, reset_circuit

    engine = _engine()
    if args.action == "status":
        circuits = read_circuits(engine)
        for name in dict.fromkeys([*_configured_destinations(), *circuits]):
            circuit = circuits.get(name)
            print(f"{name}: {circuit.describe() if circuit else 'circuit closed (never opened)'}")
        return 0
    if not args.destination:
        print("error: circuit reset needs --destination")
        return 2
    circuit = reset_circuit(engine, args.destination)
    if circuit is None:
        print(f"{args.destination}: its circuit never opened; nothing to reset")
        return 0
    print(
        f"{args.destination}: {circuit.describe()}. The retry sensor retries its held hours on "
        "its next tick; if the credentials are still refused, the next auth failure opens it again."
    )
    return 0


def add_operations_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the operator subcommands on the `conversion-platform` parser."""
    replay = commands.add_parser(
        "replay", help="put dead-lettered events of a destination back in the delivery queue"
    )
    replay.add_argument("--destination", required=True)
    replay.add_argument(
        "--from", dest="start", required=True, help="first hour, e.g. 2026-11-29-10:00"
    )
    replay.add_argument("--to", dest="end", required=True, help="last hour (included)")
    replay.add_argument(
        "--kind",
        choices=("rejected", "retries_exhausted"),
        help="only dead letters of this kind (default: both)",
    )
    replay.set_defaults(handler=run_replay)

    dead = commands.add_parser(
        "dead-letters", help="list dead letters by destination, hour and reason"
    )
    dead.add_argument("--destination")
    dead.set_defaults(handler=show_dead_letters)

    retries = commands.add_parser(
        "retries", help="the retry sensor's schedule per destination-hour"
    )
    retries.add_argument("--destination")
    retries.set_defaults(handler=show_retries)

    circuit = commands.add_parser("circuit", help="destination circuits opened by auth failures")
    circuit.add_argument("action", choices=("status", "reset"))
    circuit.add_argument("--destination")
    circuit.set_defaults(handler=run_circuit)
