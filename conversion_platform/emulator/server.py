"""Serving the emulator: in the foreground (`serve`) or in a background thread for tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from conversion_platform.emulator.app import create_app

#: How long `running_emulator` waits for the server to start or to stop.
STARTUP_TIMEOUT_SECONDS = 10.0
#: Requests still in flight at shutdown (a scripted delay, say) are cut after this.
GRACEFUL_SHUTDOWN_SECONDS = 1


def serve(host: str, port: int) -> None:
    """Serve the emulator until interrupted (what `conversion-platform emulator` runs)."""
    uvicorn.run(
        create_app(),
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


@contextmanager
def running_emulator(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run a fresh emulator in a background thread; yield its base URL.

    `port=0` picks a free port. The server is stopped, and its thread joined, on exit.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(),
        host=host,
        port=bound_port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"emulator-{bound_port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {host}:{bound_port}")
            time.sleep(0.01)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT_SECONDS)
        sock.close()
