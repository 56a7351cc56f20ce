"""Collector throughput and latency, on loopback, from a second process.

The collector runs as a child process (`conversion-platform collector`); this process is
the load generator: asyncio connections with keep-alive sending pre-built HTTP/1.1
requests (so the client costs little of the machine's two cores). Scenarios:

* `batched`: server events from a site's backend, 100 per `POST /v1/events`, write key,
  8 connections each sending its next batch when the last was answered;
* `pixel`: single browser hits, `POST /v1/pixel` with a user agent, `_mpid` and `_fbp`
  cookies and an `X-Forwarded-For` from a trusted proxy (many client addresses, as behind
  a load balancer; the per-address rate limit stays on), 32 connections, closed loop:
  the most the collector answers;
* `pixel_paced`: the same hits offered at a fixed rate (2,000/s) over 64 connections,
  latency counted from each hit's scheduled time: the latency at the target load.

Events are synthetic (`synthetic.TrafficGenerator`): realistic emails, phones, names and
addresses, hashed by the collector before they are written. Reported per database and
scenario: events acknowledged per second (200 answers only, which come after the commit),
requests per second, p50/p99/max latency, and a check that every acknowledged event is in
the landing table afterwards.

    python -m benchmarks.collector [--databases sqlite,postgresql] [--seconds 10]
        [--workers 1,2] [--pixel-rate 2000] [--output benchmarks/results/collector.json]
    python -m benchmarks collector          # with the other benchmarks' harness

PostgreSQL is measured when `CONVERSION_PLATFORM_TEST_PG_URL` (or `--pg-url`) names a
server; each run gets a fresh database on it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import orjson
import sqlalchemy as sa

from conversion_platform.collector.server import collector_process
from conversion_platform.synthetic import TrafficGenerator, last_complete_hours

PG_URL_VARIABLE = "CONVERSION_PLATFORM_TEST_PG_URL"
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "collector.json"
WRITE_KEY = "cpk_benchmark_" + uuid.uuid4().hex
BATCH_SIZE = 100

TARGETS = {
    "batched_events_per_second": 10_000,
    "pixel_hits_per_second": 2_000,
    "pixel_p99_ms": 50,
}


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    events_acknowledged: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0


# --- request building ----------------------------------------------------------------


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if value is None or key == "received_at":
            continue
        out[key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _traffic(conversions_per_hour: int, hours: int, seed: int, people: int = 50_000) -> Any:
    generator = TrafficGenerator(seed=seed, people=people)
    return generator.generate(last_complete_hours(hours), conversions_per_hour=conversions_per_hour)


def batched_requests(count: int, seed: int = 11) -> list[tuple[bytes, int]]:
    """`count` requests of 100 server events each, with fresh event ids, drawn from twice
    as many synthetic people as events (few identities repeat within the requests)."""
    traffic = _traffic(
        conversions_per_hour=max(1_000, count * BATCH_SIZE // 4),
        hours=6,
        seed=seed,
        people=max(50_000, 2 * count * BATCH_SIZE),
    )
    events = [_jsonable(e) for e in traffic.server_events]
    now = datetime.now(UTC).isoformat()
    requests_: list[tuple[bytes, int]] = []
    for i in range(count):
        batch = []
        for j in range(BATCH_SIZE):
            event = dict(events[(i * BATCH_SIZE + j) % len(events)])
            event["event_id"] = uuid.uuid4().hex
            event["event_time"] = now
            batch.append(event)
        body = orjson.dumps({"events": batch})
        headers = {"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"}
        requests_.append((_http_request("/v1/events", body, headers), BATCH_SIZE))
    return requests_


def pixel_requests(count: int, seed: int = 13) -> list[tuple[bytes, int]]:
    """`count` single pixel hits with browser headers and cookies."""
    traffic = _traffic(conversions_per_hour=max(1_000, count // 3), hours=6, seed=seed)
    hits = traffic.pixel_events
    requests_ = []
    for i in range(count):
        hit = hits[i % len(hits)]
        page = {
            k: v
            for k, v in _jsonable(hit).items()
            if k not in ("client_ip", "user_agent", "mpid", "fbp", "event_time", "email")
            and k not in ("gclid", "fbclid", "ttclid", "sccid")
        }
        page["event_id"] = uuid.uuid4().hex
        headers = {
            "Content-Type": "text/plain;charset=UTF-8",
            "User-Agent": hit["user_agent"],
            "X-Forwarded-For": hit["client_ip"],
            "Cookie": f"_mpid={hit['mpid']}; _fbp={hit['fbp']}",
            "Origin": "https://shop.example",
            "Referer": "https://shop.example/",
        }
        requests_.append((_http_request("/v1/pixel", orjson.dumps(page), headers), 1))
    return requests_


# --- the load generator -----------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    host: str,
    port: int,
    requests_: Sequence[tuple[bytes, int]],
    start: int,
    step: int,
    warmup_until: float,
    stop_at: float,
    result: LoadResult,
    parse_accepted: bool,
    interval: float | None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = start
    # Paced: each connection sends on a fixed schedule; latency counts from the scheduled
    # time, so a stalled server is charged for the requests it delayed (no coordinated
    # omission).
    scheduled = time.perf_counter() + (interval or 0.0) * start / max(1, step)
    try:
        while True:
            now = time.perf_counter()
            if interval is not None:
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                now = scheduled
                scheduled += interval
            if now >= stop_at:
                break
            payload, size = requests_[i % len(requests_)]
            i += step
            writer.write(payload)
            status, body = await _read_response(reader)
            done = time.perf_counter()
            if now < warmup_until:
                continue
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.latencies_ms.append((done - now) * 1000)
            if status == 200:
                result.ok += 1
                result.events_acknowledged += (
                    orjson.loads(body)["accepted"] if parse_accepted else size
                )
    finally:
        writer.close()


async def generate_load(
    url: str,
    requests_: Sequence[tuple[bytes, int]],
    *,
    connections: int,
    seconds: float,
    warmup: float = 1.0,
    parse_accepted: bool = True,
    rate: float | None = None,
) -> LoadResult:
    """Closed loop (each connection sends its next request when answered) or, with `rate`
    requests/s, paced across the connections."""
    host, port = url.removeprefix("http://").split(":")
    result = LoadResult()
    begin = time.perf_counter()
    warmup_until = begin + warmup
    stop_at = warmup_until + seconds
    await asyncio.gather(
        *(
            _connection(
                host,
                int(port),
                requests_,
                c,
                connections,
                warmup_until,
                stop_at,
                result,
                parse_accepted,
                connections / rate if rate else None,
            )
            for c in range(connections)
        )
    )
    result.seconds = time.perf_counter() - warmup_until
    return result


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(result: LoadResult) -> dict[str, Any]:
    return {
        "seconds": round(result.seconds, 2),
        "requests": result.requests,
        "requests_per_second": round(result.requests / result.seconds, 1),
        "events_acknowledged": result.events_acknowledged,
        "events_per_second": round(result.events_acknowledged / result.seconds, 1),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "latency_ms": {
            "p50": round(_percentile(result.latencies_ms, 0.50), 2),
            "p99": round(_percentile(result.latencies_ms, 0.99), 2),
            "max": round(max(result.latencies_ms, default=float("nan")), 2),
            "mean": round(statistics.fmean(result.latencies_ms), 2)
            if result.latencies_ms
            else None,
        },
    }


# --- one measured configuration ---------------------------------------------------------


def _run_async(coroutine: Any) -> Any:
    """Run on uvloop when installed (the load generator should cost as little as it can)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _commit_stats(url: str, workers: int) -> dict[str, Any] | None:
    """The writer's counters (one worker's, when there are several)."""
    if workers != 1:
        return None
    stats = orjson.loads(urlopen(f"{url}/healthz", timeout=5).read())["commits"]
    groups = max(1, stats["groups"])
    return {
        **stats,
        "requests_per_group": round(stats["requests"] / groups, 1),
        "write_ms_per_group": round(stats["write_seconds"] * 1000 / groups, 2),
    }


def _process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its children (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _fresh_postgres(base_url: str) -> tuple[str, str]:
    name = f"cp_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base_url.rsplit("/", 1)[0] + "/" + name, name


def _drop_postgres(base_url: str, name: str) -> None:
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _landing_count(db_url: str) -> int:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM landing_events")).scalar_one())
    finally:
        engine.dispose()


def measure(
    database: str,
    db_url: str,
    scenario: str,
    requests_: Sequence[tuple[bytes, int]],
    *,
    workers: int,
    connections: int,
    seconds: float,
    rate: float | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as home:
        env = {
            "CONVERSION_PLATFORM_HOME": home,
            "CONVERSION_PLATFORM_DB_URL": db_url or f"sqlite:///{home}/platform.db",
            "CONVERSION_PLATFORM_COLLECTOR_CONFIG": os.devnull,
            "CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS": "bench="
            + hashlib.sha256(WRITE_KEY.encode()).hexdigest(),
            "CONVERSION_PLATFORM_COLLECTOR_TRUSTED_PROXIES": "127.0.0.1/32",
            "CONVERSION_PLATFORM_COLLECTOR_ALLOWED_ORIGINS": "https://shop.example",
        }
        load_average = os.getloadavg()[0]
        with collector_process(env, workers=workers) as collector:
            server_cpu = _process_tree_cpu(collector.process.pid)
            client_cpu = time.process_time()
            load = _run_async(
                generate_load(
                    collector.url,
                    requests_,
                    connections=connections,
                    seconds=seconds,
                    parse_accepted=scenario.startswith("batched"),
                    rate=rate,
                )
            )
            client_cpu = time.process_time() - client_cpu
            server_cpu = _process_tree_cpu(collector.process.pid) - server_cpu
            commits = _commit_stats(collector.url, workers)
        stored = _landing_count(env["CONVERSION_PLATFORM_DB_URL"])
    summary = _summary(load)
    summary.update({"load_average_1m_after": round(os.getloadavg()[0], 2)})
    summary.update(
        {
            "database": database,
            "scenario": scenario,
            "workers": workers,
            "connections": connections,
            "offered_requests_per_second": rate,
            # CPU seconds per second of load (2.0 = both cores busy), warm-up included.
            "server_cpu_cores": round(server_cpu / (load.seconds + 1.0), 2),
            "client_cpu_cores": round(client_cpu / (load.seconds + 1.0), 2),
            # Server CPU per acknowledged event: the cost that contention on a shared
            # machine changes least.
            "server_cpu_us_per_event": round(
                server_cpu / (load.seconds + 1.0) / max(1e-9, summary["events_per_second"]) * 1e6,
                1,
            ),
            "load_average_1m": round(load_average, 2),
            "group_commits": commits,
            "events_in_landing_table": stored,
            # The prepared requests are sent in turn: after the first pass, the identities
            # are ones the collector's normaliser caches have seen (returning customers).
            "distinct_requests": len(requests_),
            "passes_over_requests": round(load.requests / max(1, len(requests_)), 2),
            # Warm-up requests are stored but not counted as acknowledged: stored >= counted.
            "every_acknowledged_event_stored": stored >= load.events_acknowledged,
        }
    )
    return summary


SCENARIOS = ("batched", "pixel", "pixel_paced")
#: Worker processes measured per database. SQLite has one writer at a time (a second
#: process's commits queue on its lock), but a second worker checks and hashes events on
#: the other core; PostgreSQL takes concurrent writers.
DEFAULT_WORKERS = {"sqlite": (1, 2), "postgresql": (1, 2)}


def run(
    databases: Sequence[str] = ("sqlite", "postgresql"),
    *,
    seconds: float = 10.0,
    workers: Sequence[int] | None = None,
    batched_connections: int = 8,
    pixel_connections: int = 32,
    pixel_rate: float = 2_000.0,
    pg_url: str | None = None,
    output: Path | None = None,
    quick: bool = False,
    scenarios: Sequence[str] = SCENARIOS,
    batches: int = 400,
) -> dict[str, Any]:
    """Measure every (database, workers, scenario); return the results (and write them to
    `output` when given). `quick`: two seconds a run, one worker (does it all run?)."""
    if quick:
        seconds, workers = 2.0, (1,)
    pg_url = pg_url or os.environ.get(PG_URL_VARIABLE)
    batched = batched_requests(100 if quick else batches) if "batched" in scenarios else []
    pixel = pixel_requests(5_000 if quick else 40_000) if set(scenarios) - {"batched"} else []
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    for database in databases:
        if database == "postgresql" and not pg_url:
            skipped.append(f"postgresql: {PG_URL_VARIABLE} is not set")
            continue
        for count in workers or DEFAULT_WORKERS.get(database, (1,)):
            for scenario, requests_, connections, rate in (
                ("batched", batched, batched_connections, None),
                ("pixel", pixel, pixel_connections, None),
                ("pixel_paced", pixel, 64, pixel_rate),
            ):
                if scenario not in scenarios:
                    continue
                name = None
                db_url = ""
                if database == "postgresql":
                    assert pg_url is not None
                    db_url, name = _fresh_postgres(pg_url)
                try:
                    summary = measure(
                        database,
                        db_url,
                        scenario,
                        requests_,
                        workers=count,
                        connections=connections,
                        seconds=seconds,
                        rate=rate,
                    )
                finally:
                    if name is not None:
                        assert pg_url is not None
                        _drop_postgres(pg_url, name)
                runs.append(summary)
                print(_line(summary), flush=True)
    results = {
        "benchmark": "collector",
        "description": "collector on loopback from a second process: events/s acknowledged "
        "(after the commit) and latency; batched = 100 server events a request, pixel = one "
        "hit a request (closed loop), pixel_paced = hits offered at a fixed rate",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "batch_size": BATCH_SIZE,
        "seconds_per_run": seconds,
        "targets": TARGETS,
        "table": [_row(r) for r in runs],
        "runs": runs,
        "skipped": skipped,
        "notes": [
            f"targets: batched >= {TARGETS['batched_events_per_second']:,} events/s; pixel >= "
            f"{TARGETS['pixel_hits_per_second']:,} hits/s with p99 < {TARGETS['pixel_p99_ms']} ms",
            "load_avg is the machine's 1-minute load before the run: above 2 on two cores, "
            "other processes took CPU from the collector and the load generator",
            *skipped,
        ],
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return results


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "database": summary["database"],
        "scenario": summary["scenario"],
        "workers": summary["workers"],
        "connections": summary["connections"],
        "events_per_s": summary["events_per_second"],
        "requests_per_s": summary["requests_per_second"],
        "p50_ms": summary["latency_ms"]["p50"],
        "p99_ms": summary["latency_ms"]["p99"],
        "server_cpu_us_per_event": summary["server_cpu_us_per_event"],
        "load_avg": summary["load_average_1m"],
        "acked_all_stored": summary["every_acknowledged_event_stored"],
    }


def _line(summary: dict[str, Any]) -> str:
    latency = summary["latency_ms"]
    return (
        f"{summary['database']:<10} {summary['scenario']:<11} workers={summary['workers']} "
        f"conns={summary['connections']:<3} {summary['events_per_second']:>9,.0f} events/s "
        f"{summary['requests_per_second']:>8,.0f} req/s  p50 {latency['p50']:6.2f} ms  "
        f"p99 {latency['p99']:6.2f} ms  cpu: server {summary['server_cpu_cores']:.2f} "
        f"({summary['server_cpu_us_per_event']:.0f} us/event) client {summary['client_cpu_cores']:.2f}  "
        f"load {summary['load_average_1m']:.1f}  statuses {summary['statuses']}  "
        f"stored_ok={summary['every_acknowledged_event_stored']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", default=None, help="e.g. 1,2 (default: per database)")
    parser.add_argument("--batched-connections", type=int, default=8)
    parser.add_argument("--pixel-connections", type=int, default=32)
    parser.add_argument("--pixel-rate", type=float, default=2_000.0)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--quick", action="store_true", help="two seconds a run")
    parser.add_argument(
        "--batches",
        type=int,
        default=400,
        help="distinct batched requests, sent in turn (default 400: 40,000 events; a run "
        "sending more reuses them, so the normalisers' caches know their identities)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="e.g. batched,pixel_paced (default: all)"
    )
    args = parser.parse_args(argv)
    run(
        [d.strip() for d in args.databases.split(",") if d.strip()],
        seconds=args.seconds,
        workers=[int(w) for w in args.workers.split(",")] if args.workers else None,
        batched_connections=args.batched_connections,
        pixel_connections=args.pixel_connections,
        pixel_rate=args.pixel_rate,
        pg_url=args.pg_url,
        output=args.output,
        quick=args.quick,
        scenarios=[s.strip() for s in args.scenarios.split(",") if s.strip()],
        batches=args.batches,
    )
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
