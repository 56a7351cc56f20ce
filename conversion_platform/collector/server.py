"""Serving the collector: in the foreground (`serve`), in a background thread, or as a
child process (what the demo, the durability test and the benchmark use).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import requests
import uvicorn
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp

from conversion_platform.collector.app import create_app
from conversion_platform.collector.config import CollectorConfig, load_collector_config
from conversion_platform.settings import REPO_ROOT, Settings
from conversion_platform.store.database import create_database_engine

STARTUP_TIMEOUT_SECONDS = 30.0
#: In-flight requests get this long to be committed and answered at shutdown.
GRACEFUL_SHUTDOWN_SECONDS = 5

_UVICORN_OPTIONS = {
    "access_log": False,
    # X-Forwarded-For and -Proto are read by the app, from configured proxies only.
    "proxy_headers": False,
    "server_header": False,
    "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
}


def serve(host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Serve until interrupted (what `conversion-platform collector` runs)."""
    load_collector_config()  # a configuration error stops us here, not in each worker
    # The schema is created once, before workers start, so they don't race to create it.
    create_database_engine(Settings.from_env().db_url).dispose()
    uvicorn.run(
        "conversion_platform.collector.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        **_UVICORN_OPTIONS,  # type: ignore[arg-type]
    )


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    with _bound_socket(host, 0) as sock:
        return int(sock.getsockname()[1])


@contextmanager
def serving_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app in a background thread of this process; yield its base URL."""
    sock = _bound_socket(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=bound_port,
            log_level="warning",
            **_UVICORN_OPTIONS,  # type: ignore[arg-type]
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"collector-{bound_port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{bound_port}")
            time.sleep(0.01)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT_SECONDS + GRACEFUL_SHUTDOWN_SECONDS)
        sock.close()


@contextmanager
def running_collector(
    config: CollectorConfig, engine: Engine, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Run a collector in a background thread of this process; yield its base URL."""
    with serving_in_thread(create_app(config, engine), host, port) as url:
        yield url


@dataclass
class CollectorProcess:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def collector_process(
    env: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int = 1,
    quiet: bool = True,
) -> Iterator[CollectorProcess]:
    """Run `conversion-platform collector` as a child process with `env` (added to this
    process's environment); yield its URL once `/healthz` answers. Stopped on exit."""
    port = port or free_port(host)
    child_env = {**os.environ, **env}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable,
        "-m",
        "conversion_platform.cli",
        "collector",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning" if quiet else "info",
    ]
    process = subprocess.Popen(command, env=child_env, cwd=str(REPO_ROOT))
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the collector exited with {process.returncode} at start")
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not answer on {url}")
            time.sleep(0.05)
        yield CollectorProcess(url=url, process=process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STARTUP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
