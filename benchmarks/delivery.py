"""Delivery benchmark: request bodies built per second, and events delivered per second to
the local emulator over HTTP, per destination.

`python -m benchmarks.delivery [--build-events N] [--deliver-events M]` prints a table and
writes `benchmarks/results/delivery.json`.

Two figures per destination:

* **build**: an hour of N conversions (a canonical, resolved frame) encoded into the
  platform's request bodies, batched at the platform's limit, exactly as dry-run mode
  writes them (no database, no network): what building bodies costs.
* **deliver**: M conversions delivered in `live` mode through `HourDeliverer` to the
  emulator over HTTP on loopback (one keep-alive session, batches at the limit), with every
  attempt and event outcome written to a SQLite delivery log, as the delivery asset does.
  The emulator runs in its own process (`python -m conversion_platform.emulator`) so it
  does not share this process's interpreter lock; its own checking of every event is part
  of what is measured.

The frame is generated here, vectorised and seeded (a million rows through the per-record
synthetic generator would take minutes): people seen several times, 45% purchases with
items, click ids and cookies on a share of events, 3% without ad_user_data consent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import requests

from benchmarks.common import machine
from conversion_platform import events
from conversion_platform.destinations.config import MODE_DRY_RUN, DestinationConfig
from conversion_platform.destinations.delivery import EventRun, HourDeliverer, plan_batches
from conversion_platform.destinations.http_client import new_session
from conversion_platform.destinations.registry import destination_for
from conversion_platform.store.database import create_database_engine

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EMULATOR_PREFIX = {
    "meta_capi": "meta",
    "google_ads": "google",
    "tiktok": "tiktok",
    "snapchat": "snapchat",
}

#: One configuration per platform, with demo ids (credentials are set for this process).
CONFIGS: dict[str, dict[str, Any]] = {
    "meta_capi": {"settings": {"pixel_id": "123456789012345", "api_version": "v24.0"}},
    "google_ads": {
        "settings": {"customer_id": "1234567890", "conversion_action_id": "700000001"},
        "event_names": {"purchase": "700000002", "lead": "700000003"},
    },
    "tiktok": {"settings": {"pixel_code": "CBENCH0PIXEL0CODE001"}},
    "snapchat": {"settings": {"pixel_id": "3f1c2a9e-0d4b-4c8e-9a51-6b7d2e0f4a10"}},
}
NAMES = np.array(
    [events.PURCHASE, events.LEAD, events.SIGN_UP, events.ADD_TO_CART, events.INITIATE_CHECKOUT,
     events.START_TRIAL, events.SUBSCRIBE],
    dtype=object,
)  # fmt: skip
NAME_WEIGHTS = np.array([0.45, 0.15, 0.12, 0.12, 0.08, 0.04, 0.04])
PLACES = [
    ("sanfrancisco", "ca", "94103", "us"),
    ("newyork", "ny", "10001", "us"),
    ("austin", "tx", "73301", "us"),
    ("london", None, "sw1a1aa", "gb"),
    ("berlin", None, "10115", "de"),
    ("paris", None, "75001", "fr"),
]
USER_AGENTS = np.array(
    [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
    ],
    dtype=object,
)


def _sha(values: list[str]) -> np.ndarray:
    return np.array([hashlib.sha256(v.encode()).hexdigest() for v in values], dtype=object)


def _maybe(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    out = values.copy()
    out[rng.random(len(values)) >= share] = None
    return out


def synthetic_frame(n: int, hour: datetime, seed: int = 7) -> pd.DataFrame:
    """`n` resolved conversions of one hour, in the canonical model (hashed identities)."""
    rng = np.random.default_rng(seed)
    people = max(1, n // 4)
    person = rng.integers(0, people, n)
    keys = [str(i) for i in range(people)]
    email = _sha([f"person{k}@example.com" for k in keys])[person]
    phone_e164 = [f"+1415{int(k):07d}" for k in keys]
    place = rng.integers(0, len(PLACES), n)
    names = rng.choice(NAMES, n, p=NAME_WEIGHTS)
    purchase = names == events.PURCHASE
    value = np.where(purchase, np.round(rng.uniform(5, 300, n), 2), np.nan)
    sku = rng.integers(1, 500, n)
    quantity = rng.integers(1, 4, n)
    items = np.array(
        [
            f'[{{"id":"sku-{s}","quantity":{q},"price":{v}}}]' if p else None
            for s, q, v, p in zip(sku, quantity, value, purchase, strict=True)
        ],
        dtype=object,
    )
    consent = rng.choice(
        np.array(
            [events.CONSENT_GRANTED, events.CONSENT_DENIED, events.CONSENT_UNKNOWN], dtype=object
        ),
        n,
        p=[0.95, 0.03, 0.02],
    )
    ids = np.array([f"ev-{seed}-{i:09d}" for i in range(n)], dtype=object)
    frame = pd.DataFrame(
        {
            events.HOUR_COLUMN: pd.Timestamp(hour),
            "event_id": ids,
            "event_name": names,
            "event_time": pd.Timestamp(hour)
            + pd.to_timedelta(rng.integers(0, 3_600_000, n), unit="ms"),
            "received_at": pd.Timestamp(hour) + pd.Timedelta(minutes=59),
            "source": "server",
            "action_source": "website",
            "page_url": np.array([f"https://shop.example/p/{s}" for s in sku], dtype=object),
            "email_sha256": email,
            "email_google_sha256": email,
            "phone_sha256": _maybe(rng, _sha(phone_e164)[person], 0.6),
            "phone_digits_sha256": _maybe(rng, _sha([p[1:] for p in phone_e164])[person], 0.6),
            "first_name_sha256": _maybe(
                rng, _sha([f"first{int(k) % 300}" for k in keys])[person], 0.5
            ),
            "last_name_sha256": _maybe(
                rng, _sha([f"last{int(k) % 900}" for k in keys])[person], 0.5
            ),
            "external_id_sha256": _maybe(rng, _sha([f"cust-{k}" for k in keys])[person], 0.4),
            "city": np.array([PLACES[i][0] for i in place], dtype=object),
            "region": np.array([PLACES[i][1] for i in place], dtype=object),
            "postal_code": np.array([PLACES[i][2] for i in place], dtype=object),
            "country": np.array([PLACES[i][3] for i in place], dtype=object),
            "client_ip": np.array([f"203.0.{i % 250}.{i % 199}" for i in person], dtype=object),
            "user_agent": rng.choice(USER_AGENTS, n),
            "gclid": _maybe(
                rng, np.array([f"Cj0KCQ{i:012d}" for i in range(n)], dtype=object), 0.2
            ),
            "fbclid": _maybe(rng, np.array([f"IwAR{i:012d}" for i in range(n)], dtype=object), 0.2),
            "ttclid": _maybe(rng, np.array([f"tt{i:012d}" for i in range(n)], dtype=object), 0.1),
            "sccid": _maybe(rng, np.array([f"sc{i:012d}" for i in range(n)], dtype=object), 0.1),
            "fbp": _maybe(
                rng, np.array([f"fb.1.1700000000000.{i}" for i in person], dtype=object), 0.5
            ),
            "value": value,
            "currency": np.where(purchase, "USD", None),
            "order_id": np.array(
                [f"o-{i}" if p else None for i, p in enumerate(purchase)], dtype=object
            ),
            "items": items,
            "consent_ad_user_data": consent,
            "consent_ad_personalization": consent,
        }
    )
    frame = events.conform(frame, events.CANONICAL_COLUMNS)
    frame["match_quality"] = rng.uniform(2, 9, n).round(2)
    return frame


def config_for(name: str, mode: str, base_url: str | None = None) -> DestinationConfig:
    raw = CONFIGS[name]
    return DestinationConfig(
        name=name,
        platform=name,
        mode=mode,
        base_url=base_url,
        settings=dict(raw.get("settings", {})),
        credentials={"access_token": "BENCH_DELIVERY_ACCESS_TOKEN"},
        event_names=dict(raw.get("event_names", {})),
        timeout_seconds=30.0,
    )


def build_bodies(frame: pd.DataFrame, name: str, chunk_rows: int = 100_000) -> dict[str, Any]:
    """Encode the hour and build every request body as dry-run mode does (a chunk of
    events at a time, the last partial batch of a chunk carried into the next); timed."""
    destination = destination_for(name, CONFIGS[name].get("settings"))
    config = config_for(name, MODE_DRY_RUN)
    size = destination.batch_size(config)
    now = datetime.now(UTC)
    started, cpu_started = time.perf_counter(), time.process_time()
    encode_seconds = 0.0
    requests_built = body_bytes = sendable = 0
    carry = None
    for start in range(0, len(frame), chunk_rows):
        chunk = frame.iloc[start : start + chunk_rows].reset_index(drop=True)
        t0 = time.perf_counter()
        encoded = destination.encode_events(chunk, config, now)
        encode_seconds += time.perf_counter() - t0
        keep = np.array([p is None for p in encoded.problems], dtype=bool)
        ids = chunk["event_id"].to_numpy(dtype=object)[keep].tolist()
        groups = None
        if encoded.groups is not None:
            groups = [g for g, k in zip(encoded.groups, keep, strict=True) if k]
        run = EventRun(
            ids,
            encoded.json.filter(pa.array(keep)),
            groups,
            carry,
            comma_after=encoded.comma_after,
        )
        sendable += len(ids)
        ranges = plan_batches(len(run), size, run.groups, destination.max_groups_per_request)
        carry = None
        if start + chunk_rows < len(frame) and ranges and len(ranges[-1]) < size:
            carry = run.carry(ranges.pop())
        for number, positions in enumerate(ranges):
            body = destination.build_request(
                run.batch(number, positions), config, None, MODE_DRY_RUN
            ).body
            requests_built += 1
            body_bytes += len(body)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    return {
        "events": len(frame),
        "sendable": sendable,
        "cpu_seconds": round(cpu_seconds, 3),
        "events_per_cpu_second": round(len(frame) / cpu_seconds),
        "requests": requests_built,
        "seconds": round(seconds, 3),
        "encode_seconds": round(encode_seconds, 3),
        "events_per_second": round(len(frame) / seconds),
        "body_megabytes": round(body_bytes / 1e6, 1),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time a process has used (Linux `/proc`), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def emulator_process() -> Iterator[tuple[str, int]]:
    """The emulator in its own process (its own core), on a free loopback port."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "conversion_platform.emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{url}/_emulator/health", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(10)


def deliver(
    frame: pd.DataFrame, name: str, emulator_url: str, work_dir: Path, emulator_pid: int
) -> dict[str, Any]:
    """Deliver the hour live to the emulator through `HourDeliverer`; timed."""
    destination = destination_for(name, CONFIGS[name].get("settings"))
    config = config_for(name, "live", f"{emulator_url}/{EMULATOR_PREFIX[name]}")
    engine = create_database_engine(f"sqlite:///{work_dir / (name + '.db')}")
    session = new_session()
    requests.post(f"{emulator_url}/_emulator/reset", timeout=10)
    hour = frame[events.HOUR_COLUMN].iloc[0].to_pydatetime()
    deliverer = HourDeliverer(engine, destination, config, session, work_dir / "outbox")
    started, cpu_started = time.perf_counter(), time.process_time()
    emulator_cpu_started = cpu_seconds_of(emulator_pid)
    report = deliverer.deliver_hour(frame, hour, "bench")
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    emulator_cpu = cpu_seconds_of(emulator_pid) - emulator_cpu_started
    stats = requests.get(f"{emulator_url}/_emulator/stats", timeout=10).json()[
        EMULATOR_PREFIX[name]
    ]
    session.close()
    engine.dispose()
    return {
        "events": len(frame),
        "sent": report.sent,
        "accepted": report.delivered + report.awaiting_status,
        "emulator_accepted": stats["events_accepted"],
        "requests": report.requests,
        "seconds": round(seconds, 3),
        "events_per_second": round(len(frame) / seconds),
        # CPU time on each side: what the figures would be without other work on the machine.
        "client_cpu_seconds": round(cpu_seconds, 3),
        "emulator_cpu_seconds": round(emulator_cpu, 3),
        "client_events_per_cpu_second": round(len(frame) / cpu_seconds),
        "emulator_events_per_cpu_second": round(len(frame) / emulator_cpu)
        if emulator_cpu
        else None,
    }


def run(
    build_events: int = 1_000_000,
    deliver_events: int = 200_000,
    destinations: tuple[str, ...] = tuple(CONFIGS),
    seed: int = 7,
    quick: bool = False,
) -> dict[str, Any]:
    """Both figures for each destination; the dict written as JSON (`quick`: tiny sizes)."""
    if quick:
        build_events, deliver_events = 5_000, 2_500
    hour = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    t0 = time.perf_counter()
    frame = synthetic_frame(build_events, hour, seed)
    generated = time.perf_counter() - t0
    result: dict[str, Any] = {
        "benchmark": "delivery",
        "description": (
            f"request bodies built for {build_events:,} events an hour (dry run, no I/O), and "
            f"{deliver_events:,} events delivered live to the emulator over HTTP, per destination"
        ),
        "machine": machine(),
        "load_average_before": list(os.getloadavg()),
        "build_events": build_events,
        "deliver_events": deliver_events,
        "generate_seconds": round(generated, 1),
        "build": {},
        "deliver": {},
    }
    for name in destinations:
        result["build"][name] = build_bodies(frame, name)
    os.environ["BENCH_DELIVERY_ACCESS_TOKEN"] = "bench-token"
    part = frame.iloc[:deliver_events].reset_index(drop=True)
    with (
        emulator_process() as (url, pid),
        tempfile.TemporaryDirectory(prefix="bench-delivery-") as work,
    ):
        for name in destinations:
            result["deliver"][name] = deliver(part, name, url, Path(work), pid)
    result["load_average_after"] = list(os.getloadavg())
    result["table"] = [
        {
            "destination": name,
            "build_events_per_s": result["build"][name]["events_per_second"],
            "build_events_per_cpu_s": result["build"][name]["events_per_cpu_second"],
            "deliver_events_per_s": result["deliver"][name]["events_per_second"],
            "deliver_client_events_per_cpu_s": result["deliver"][name][
                "client_events_per_cpu_second"
            ],
            "emulator_events_per_cpu_s": result["deliver"][name]["emulator_events_per_cpu_second"],
            "deliver_requests": result["deliver"][name]["requests"],
            "emulator_accepted": result["deliver"][name]["emulator_accepted"],
        }
        for name in destinations
    ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-events", type=int, default=1_000_000)
    parser.add_argument("--deliver-events", type=int, default=200_000)
    parser.add_argument("--destination", action="append", choices=sorted(CONFIGS))
    args = parser.parse_args(argv)
    result = run(args.build_events, args.deliver_events, tuple(args.destination or CONFIGS))
    print(
        f"Delivery benchmark ({result['machine']['nproc']} CPUs, Python "
        f"{result['machine']['python']}, load average {result['load_average_before'][0]:.1f})"
    )
    print(f"\nBuilding request bodies, {args.build_events:,} events an hour:")
    print(
        f"{'destination':<12} {'seconds':>8} {'events/s':>10} {'CPU s':>7} "
        f"{'events/CPU s':>13} {'requests':>9} {'MB':>7}"
    )
    for name, figures in result["build"].items():
        print(
            f"{name:<12} {figures['seconds']:>8.2f} {figures['events_per_second']:>10,} "
            f"{figures['cpu_seconds']:>7.2f} {figures['events_per_cpu_second']:>13,} "
            f"{figures['requests']:>9,} {figures['body_megabytes']:>7.1f}"
        )
    print(f"\nDelivering to the emulator over HTTP, {args.deliver_events:,} events:")
    print(
        f"{'destination':<12} {'seconds':>8} {'events/s':>10} {'client CPU s':>13} "
        f"{'emulator CPU s':>15} {'requests':>9} {'accepted':>9}"
    )
    for name, figures in result["deliver"].items():
        print(
            f"{name:<12} {figures['seconds']:>8.2f} {figures['events_per_second']:>10,} "
            f"{figures['client_cpu_seconds']:>13.2f} {figures['emulator_cpu_seconds']:>15.2f} "
            f"{figures['requests']:>9,} {figures['emulator_accepted']:>9,}"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "delivery.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nWritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
