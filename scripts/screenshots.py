"""Re-take the README's screenshots from a real `dagster dev` on the demo's state.

    python scripts/screenshots.py [--out docs/screenshots] [--hours 6] [--conversions-per-hour 150]

In a fresh temporary home it starts the local ad-platform emulator, runs the demo with
every configured destination aimed at the emulator (demo credentials, so requests are
really sent), starts `dagster dev` on a free loopback port over the same DAGSTER_HOME,
and photographs, in headless Chromium:

* `asset-graph.png`: the global asset lineage, every group expanded;
* `delivery-report.png`: one hour's `delivery_report` (the second-last hour of the demo).

Needs Debian's `chromium` (`apt-get install -y chromium`). Everything it starts is
stopped at the end; `--keep` leaves the home folder for a look.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from headless_chromium import BrowserError, HeadlessChromium  # noqa: E402

#: Each platform's path prefix on the emulator.
EMULATOR_PREFIXES = {
    "meta_capi": "meta",
    "google_ads": "google",
    "tiktok": "tiktok",
    "snapchat": "snapchat",
}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def background(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A process in its own session, interrupted (then killed) with its children at the end."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
                if process.poll() is not None:
                    break
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # children the parent left behind


def wait_until(check, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def emulator_environment(emulator_url: str) -> dict[str, str]:
    """Base URLs and demo credentials for every destination of the seeds file."""
    document = yaml.safe_load((REPO_ROOT / "seeds" / "destinations.yaml").read_text()) or {}
    env: dict[str, str] = {}
    for name, entry in (document.get("destinations") or {}).items():
        prefix = EMULATOR_PREFIXES.get(str(entry.get("platform", name)))
        if prefix is None or not entry.get("base_url_env"):
            continue  # no emulator for it: it runs in dry-run mode
        env[str(entry["base_url_env"])] = f"{emulator_url}/{prefix}"
        for variable in (entry.get("credentials") or {}).values():
            env[str(variable)] = f"demo-{name}-credential"
    return env


def graphql(url: str, query: str) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]


def location_loaded(url: str) -> bool:
    data = graphql(
        url, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    )
    entries = data["workspaceOrError"].get("locationEntries") or []
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def shoot_asset_graph(url: str, path: Path) -> None:
    with HeadlessChromium(width=2400, height=1100, scale=1.0) as browser:
        browser.navigate(f"{url}/asset-groups")
        browser.wait_for_text("delivery")
        browser.click(
            "Array.from(document.querySelectorAll('button')).filter(b => "
            "b.querySelector('[aria-label=\"settings\"]') && b.getBoundingClientRect().x > 600)[0]",
            "the graph's settings button",
        )
        browser.wait_for_text("Expand all groups")
        browser.click_text("Expand all groups")
        browser.wait_for_text("delivery_report")
        browser.press_escape()  # close the settings menu
        browser.wait_for(
            "!document.body.innerText.includes('Expand all groups') && "
            "!document.body.innerText.includes('Collapse all groups')",
            timeout=10,
            what="the settings menu to close",
        )
        # Each node's status (latest event, checks, partitions) loads after the layout.
        browser.wait_for(
            "document.querySelectorAll('foreignObject').length > 0 && "
            "!document.body.innerText.includes('Loading...')",
            timeout=120,
            what="the asset nodes' status",
        )
        time.sleep(1)
        box = browser.evaluate(
            "(() => { const r = Array.from(document.querySelectorAll('foreignObject'))"
            ".map(e => e.getBoundingClientRect()).filter(r => r.width > 0);"
            "return [Math.min(...r.map(b => b.x)), Math.min(...r.map(b => b.y)),"
            " Math.max(...r.map(b => b.right)), Math.max(...r.map(b => b.bottom))]; })()"
        )
        left, top = max(0, box[0] - 30), max(0, box[1] - 30)
        right, bottom = min(browser.width, box[2] + 30), min(browser.height, box[3] + 30)
        browser.screenshot(path, clip=(left, top, right - left, bottom - top))


def shoot_delivery_report(url: str, partition: str, path: Path) -> None:
    with HeadlessChromium(width=2000, height=1250, scale=0.8) as browser:
        browser.navigate(f"{url}/assets/delivery_report?view=events&partition={partition}")
        browser.wait_for_text("rejected_by_reason")
        browser.click_text("Hide navigation")
        time.sleep(2)
        browser.screenshot(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--conversions-per-hour", type=int, default=150)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="cp-screenshots-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONVERSION_PLATFORM_") and not k.endswith(("_ACCESS_TOKEN", "_TOKEN"))
    }
    env.update(
        CONVERSION_PLATFORM_HOME=str(home / "platform"),
        DAGSTER_HOME=str(home / "dagster_home"),
        PYTHONPATH=str(REPO_ROOT),
    )
    emulator_port, ui_port = free_port(), free_port()
    emulator_url, ui_url = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{ui_port}"
    try:
        with background(
            [
                sys.executable,
                "-m",
                "conversion_platform.cli",
                "emulator",
                "--port",
                str(emulator_port),
            ],
            env,
            home / "emulator.log",
        ):
            wait_until(
                lambda: requests.get(f"{emulator_url}/_emulator/health", timeout=2).ok,
                "the emulator",
            )
            env.update(emulator_environment(emulator_url))
            print(f"demo: {args.hours} hours against the emulator at {emulator_url} ...")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "conversion_platform.cli",
                    "demo",
                    "--hours",
                    str(args.hours),
                    "--conversions-per-hour",
                    str(args.conversions_per_hour),
                    "--people",
                    "3000",
                ],
                cwd=REPO_ROOT,
                env=env,
                check=True,
            )
            with background(
                [
                    str(BIN / "dagster"),
                    "dev",
                    "-w",
                    "workspace.yaml",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(ui_port),
                ],
                env,
                home / "dagster_dev.log",
            ):
                wait_until(lambda: location_loaded(ui_url), "dagster dev to load the code location")
                graphql(ui_url, "mutation { setNuxSeen }")  # no community pop-up on the pictures
                now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
                partition = (now - timedelta(hours=2)).strftime("%Y-%m-%d-%H:%M")
                args.out.mkdir(parents=True, exist_ok=True)
                shoot_asset_graph(ui_url, args.out / "asset-graph.png")
                shoot_delivery_report(ui_url, partition, args.out / "delivery-report.png")
        print(f"wrote {args.out / 'asset-graph.png'} and {args.out / 'delivery-report.png'}")
        return 0
    except BrowserError as error:
        print(f"screenshots failed: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"state kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
