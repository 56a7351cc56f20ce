"""The Dagster UI for real: `dagster-webserver` on loopback, asked through its GraphQL API.

Scope: starts `dagster-webserver -w workspace.yaml` in a subprocess on a free loopback port
with a fresh CONVERSION_PLATFORM_HOME and DAGSTER_HOME, waits for the code location to
load, and asks whether it loaded without errors and what it shows: every hourly asset
(delivery and report included), the asset checks (blocking invalid rate, circuit,
freshness), the hourly schedule and the three sensors, running by default.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from conversion_platform.settings import REPO_ROOT

STARTUP_SECONDS = 180

QUERY = """
query {
  workspaceOrError {
    __typename
    ... on PythonError { message }
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation {
            repositories {
              name
              assetNodes {
                assetKey { path }
                groupName
                assetChecksOrError { __typename ... on AssetChecks { checks { name blocking } } }
              }
              schedules { name scheduleState { status } }
              sensors { name sensorState { status } }
              jobs { name }
            }
          }
        }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def webserver(tmp_path: Path) -> Iterator[str]:
    executable = Path(sys.executable).parent / "dagster-webserver"
    if not executable.exists():
        pytest.skip("dagster-webserver is not installed next to this Python")
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONVERSION_PLATFORM_") and not k.endswith("_ACCESS_TOKEN")
    }
    env.update(
        CONVERSION_PLATFORM_HOME=str(home),
        DAGSTER_HOME=str(dagster_home),
        PYTHONPATH=str(REPO_ROOT),
    )
    port = free_port()
    log = (tmp_path / "webserver.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def loaded_workspace(url: str) -> dict[str, Any]:
    """The workspace once the code location finished loading (or failed to)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            response = requests.post(f"{url}/graphql", json={"query": QUERY}, timeout=20)
            response.raise_for_status()
            workspace = response.json()["data"]["workspaceOrError"]
            entries = workspace.get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return workspace
        except (requests.RequestException, KeyError, TypeError, ValueError) as error:
            last_error = error
        time.sleep(1)
    raise AssertionError(f"the webserver did not load the code location: {last_error}")


def test_webserver_loads_the_code_location_and_shows_everything(webserver: str) -> None:
    workspace = loaded_workspace(webserver)
    assert workspace["__typename"] == "Workspace"
    [entry] = workspace["locationEntries"]
    assert entry["name"] == "conversion_platform"
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location.get("message")
    [repository] = location["repositories"]

    assets = {"/".join(node["assetKey"]["path"]): node for node in repository["assetNodes"]}
    assert {
        "server_log_conversions",
        "collected_conversions",
        "deduplicated_conversions",
        "validated_conversions",
        "quarantined_conversions",
        "resolved_conversions",
        "delivery/meta_capi",
        "delivery_report",
    } <= set(assets)
    assert assets["delivery_report"]["groupName"] == "report"
    checks = {
        name: {c["name"]: c["blocking"] for c in node["assetChecksOrError"]["checks"]}
        for name, node in assets.items()
        if node["assetChecksOrError"]["__typename"] == "AssetChecks"
    }
    assert checks["validated_conversions"]["invalid_rate_below_threshold"] is True
    assert "destination_circuit_closed" in checks["delivery/meta_capi"]
    for name in ("resolved_conversions", "delivery/meta_capi", "delivery_report"):
        assert "freshness_check" in checks[name], name

    schedules = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    assert schedules == {"hourly_conversions_schedule": "RUNNING"}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    assert sensors == {
        "delivery_retry_sensor": "RUNNING",
        "delivery_report_sensor": "RUNNING",
        "hourly_freshness_checks_sensor": "RUNNING",
    }
    jobs = {j["name"] for j in repository["jobs"]}
    assert {"hourly_conversions_job", "delivery_retry_job", "delivery_report_job"} <= jobs
