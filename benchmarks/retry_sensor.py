"""Retry sensor: how long one tick's planning takes on a large delivery log (SQLite).

The worst case the schedule allows: every destination failing for 72 hours, each of its
hours with thousands of events waiting, on top of a long history of delivered events.
Times `plan_retries` (what `delivery_retry_sensor` does each minute, minus Dagster's own
tick overhead) for the first tick (every destination-hour new), a steady tick (all
waiting) and a tick where every hour is due (a request per destination-hour).

    python -m benchmarks retry_sensor [--hours 72] [--destinations 4] [--events-per-hour 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import machine
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.operations.retry_planner import plan_retries
from conversion_platform.operations.retry_policy import RetryPolicy
from conversion_platform.store.database import create_database_engine
from conversion_platform.store.tables import delivery_batches, delivery_events
from conversion_platform.store.timecodes import to_micros


def _key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:%M")


def run(
    hours: int = 72,
    destinations: int = 4,
    events_per_hour: int = 2_000,
    settled_events: int = 500_000,
    quick: bool = False,
) -> dict[str, Any]:
    if quick:
        hours, destinations, events_per_hour, settled_events = 6, 2, 200, 5_000
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    names = [f"destination_{i}" for i in range(destinations)]
    configs = [DestinationConfig(name=n, platform="meta_capi") for n in names]
    with tempfile.TemporaryDirectory(prefix="bench-retry-") as work:
        engine = create_database_engine(f"sqlite:///{Path(work) / 'platform.db'}")
        t0 = time.perf_counter()
        failed_us = to_micros(now - timedelta(minutes=30))
        with engine.begin() as conn:
            history = [
                {
                    "destination": names[i % destinations],
                    "event_id": f"old-{i}",
                    "event_name": "purchase",
                    "hour_us": to_micros(now - timedelta(days=10 + i % 20)),
                    "status": "delivered",
                    "attempts": 1,
                    "updated_at_us": failed_us,
                }
                for i in range(settled_events)
            ]
            for start in range(0, len(history), 50_000):
                conn.execute(delivery_events.insert(), history[start : start + 50_000])
            for d, name in enumerate(names):
                for h in range(hours):
                    hour = now - timedelta(hours=h + 1)
                    ids = [f"{d}-{h}-{i}" for i in range(events_per_hour)]
                    batch = conn.execute(
                        delivery_batches.insert().values(
                            destination=name,
                            hour_us=to_micros(hour),
                            run_id="bench",
                            batch_number=0,
                            attempt=1,
                            mode="live",
                            status="retryable",
                            http_status=503,
                            event_count=len(ids),
                            event_ids=orjson.dumps(ids).decode(),
                            response="unavailable",
                            started_at_us=failed_us,
                            finished_at_us=failed_us,
                        )
                    ).inserted_primary_key[0]
                    conn.execute(
                        delivery_events.insert(),
                        [
                            {
                                "destination": name,
                                "event_id": eid,
                                "event_name": "purchase",
                                "hour_us": to_micros(hour),
                                "status": "retryable",
                                "reason": "HTTP 503",
                                "batch_id": batch,
                                "attempts": 1,
                                "updated_at_us": failed_us,
                            }
                            for eid in ids
                        ],
                    )
        built = time.perf_counter() - t0
        policy = RetryPolicy()
        rows = []
        for label, at in (
            ("first tick (all new)", now - timedelta(minutes=29, seconds=30)),
            ("steady tick (all waiting)", now - timedelta(minutes=29)),
            ("every hour due", now),
        ):
            t1 = time.perf_counter()
            plan = plan_retries(engine, configs, policy, at, partition_key_for=_key)
            rows.append(
                {
                    "tick": label,
                    "seconds": round(time.perf_counter() - t1, 3),
                    "requests": len(plan.requests),
                    "waiting": len(plan.waiting),
                }
            )
        engine.dispose()
    pending = hours * destinations * events_per_hour
    return {
        "benchmark": "retry_sensor",
        "description": (
            f"plan_retries over {destinations} destinations x {hours} failed hours "
            f"({pending:,} events pending) and {settled_events:,} delivered events, SQLite"
        ),
        "machine": machine(),
        "built_seconds": round(built, 1),
        "table": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=72)
    parser.add_argument("--destinations", type=int, default=4)
    parser.add_argument("--events-per-hour", type=int, default=2_000)
    parser.add_argument("--settled-events", type=int, default=500_000)
    args = parser.parse_args(argv)
    result = run(args.hours, args.destinations, args.events_per_hour, args.settled_events)
    print(result["description"])
    for row in result["table"]:
        print(f"  {row['tick']:<28} {row['seconds']:>7.3f} s  {row['requests']} requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
