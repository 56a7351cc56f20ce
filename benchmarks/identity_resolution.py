"""Identity resolution of one large hour: graph update, enrichment and scoring, timed.

    python -m benchmarks.identity_resolution [--rows 1000000] [--db-url URL]

Builds hours of deduplicated rows with numpy (people with one to three devices; page
views with click ids; conversions with email, phone and customer id at the rates the
synthetic generator uses), resolves a first hour on an empty graph and a second hour on
the graph the first one left (the steady state), and writes the timings to
`benchmarks/results/identity_resolution.json`. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd

from conversion_platform import events
from conversion_platform.store.database import create_database_engine
from conversion_platform.transform.identity import DEDUPED_COLUMNS, resolve_hours
from conversion_platform.transform.identity_rules import IdentityRules

RESULTS = Path(__file__).resolve().parent / "results" / "identity_resolution.json"


def _digests(prefix: str, ids: np.ndarray) -> np.ndarray:
    """Stand-ins for SHA-256 digests: 64 hex characters, distinct per id."""
    return np.char.add(prefix, np.char.zfill(ids.astype(str), 64 - len(prefix))).astype(object)


def build_hour(hour: datetime, rows: int, people: int, seed: int) -> pd.DataFrame:
    """One hour of rows: 40% page views, 60% conversions."""
    rng = np.random.default_rng(seed)
    person = rng.integers(0, people, rows)
    device = person * 3 + rng.integers(0, 3, rows) * (rng.random(rows) < 0.3)
    page_view = rng.random(rows) < 0.4
    seconds = rng.integers(0, 3_600_000_000, rows)
    times = pd.Timestamp(hour) + pd.to_timedelta(seconds, unit="us")
    frame = pd.DataFrame(
        {
            events.HOUR_COLUMN: pd.Timestamp(hour),
            "event_id": np.char.add(f"{seed}-", np.arange(rows).astype(str)).astype(object),
            "event_name": np.where(page_view, events.PAGE_VIEW, events.PURCHASE).astype(object),
            "event_time": times,
            "received_at": times,
            "source": "pixel",
            "mpid": np.char.add("mpid-", device.astype(str)).astype(object),
            "client_ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0",
            "consent_ad_user_data": np.where(rng.random(rows) < 0.04, "denied", "granted"),
        }
    )
    with_email = ~page_view & (rng.random(rows) < 0.5)
    with_phone = with_email & (rng.random(rows) < 0.7)
    with_customer = with_email & (rng.random(rows) < 0.8)
    frame["email_sha256"] = np.where(with_email, _digests("e", person), None)
    frame["email_google_sha256"] = frame["email_sha256"]
    frame["phone_sha256"] = np.where(with_phone, _digests("p", person), None)
    frame["phone_digits_sha256"] = np.where(with_phone, _digests("d", person), None)
    frame["external_id_sha256"] = np.where(with_customer, _digests("x", person), None)
    click = page_view & (rng.random(rows) < 0.65)
    kind = rng.integers(0, 3, rows)
    click_ids = np.char.add("c", rng.integers(0, 10**12, rows).astype(str)).astype(object)
    for k, column in enumerate(("fbclid", "gclid", "ttclid")):
        frame[column] = np.where(click & (kind == k), click_ids, None)
    return events.conform(frame, DEDUPED_COLUMNS)


def run(rows: int, db_url: str | None) -> dict[str, object]:
    hour = datetime(2026, 3, 2, 10, tzinfo=UTC)
    people = max(rows // 3, 1)
    frames = [build_hour(hour + timedelta(hours=i), rows, people, seed=i) for i in range(2)]
    with TemporaryDirectory() as folder:
        engine = create_database_engine(db_url or f"sqlite:///{folder}/bench.db")
        rules = IdentityRules()
        figures: dict[str, object] = {"rows_per_hour": rows}
        for label, frame, when in (
            ("empty_graph", frames[0], hour),
            ("steady_state", frames[1], hour + timedelta(hours=1)),
        ):
            started, cpu_started = time.perf_counter(), time.process_time()
            result = resolve_hours(engine, frame, [when], rules)
            seconds = time.perf_counter() - started
            # CPU time too: on a shared machine the wall clock also measures the neighbours.
            cpu_seconds = time.process_time() - cpu_started
            hour_figures = result.per_hour[when]
            figures[label] = {
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu_seconds, 2),
                "rows_per_second": round(rows / seconds),
                "identifiers_new": hour_figures["identifiers_new"],
                "persons_new": hour_figures["persons_new"],
                "persons_merged": hour_figures["persons_merged"],
                "strong_key_share_before": hour_figures["strong_key_share_before"],
                "strong_key_share_after": hour_figures["strong_key_share_after"],
            }
        engine.dispose()
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    figures["database"] = (db_url or "sqlite").split(":", 1)[0]
    figures["machine"] = (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    figures = run(args.rows, args.db_url)
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
