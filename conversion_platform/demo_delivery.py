"""The demo's ad platforms: the local emulator, so `make demo` shows real deliveries over HTTP.

Only the demo uses this (the emulator is imported when the demo starts, never by the
pipeline). It starts the emulator in this process, points every enabled destination's
`base_url_env` at it and sets clearly fake credentials for this process only, so every
destination runs in `live` mode against the emulator; afterwards it reads what the
emulator received per destination.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from pathlib import Path

import requests

from conversion_platform.destinations.config import load_destination_configs

#: A credential value that is obviously not one (the emulator only checks one is present).
DEMO_CREDENTIAL = "demo-token-not-a-secret"
#: Destination platform -> the emulator's path prefix for it.
EMULATOR_PREFIXES = {
    "meta_capi": "meta",
    "google_ads": "google",
    "tiktok": "tiktok",
    "snapchat": "snapchat",
}


@dataclass
class DemoEmulator:
    """The running emulator and which emulated platform each destination talks to."""

    url: str
    prefixes: dict[str, str]

    def deliveries(self) -> dict[str, dict[str, int]]:
        """Per destination: requests the emulator took and refused, and events it accepted."""
        stats = requests.get(f"{self.url}/_emulator/stats", timeout=10).json()
        return {
            name: {
                "requests": int(stats[prefix]["requests"]),
                "refused": int(stats[prefix]["rejected_requests"]),
                "events_accepted": int(stats[prefix]["events_accepted"]),
            }
            for name, prefix in self.prefixes.items()
        }

    def summary(self) -> str:
        lines = [f"Deliveries received by the local ad-platform emulator ({self.url}):"]
        for name, figures in self.deliveries().items():
            lines.append(
                f"  {name:<12} {figures['events_accepted']:>8,} events accepted in "
                f"{figures['requests']:,} requests ({figures['refused']:,} refused)"
            )
        return "\n".join(lines)


def start_demo_emulator(destinations_file: Path) -> DemoEmulator:
    """Start the emulator for the rest of this process and point the destinations at it."""
    from conversion_platform.emulator.server import running_emulator

    server = running_emulator()
    url = server.__enter__()
    atexit.register(server.__exit__, None, None, None)
    prefixes: dict[str, str] = {}
    for config in load_destination_configs(destinations_file):
        prefix = EMULATOR_PREFIXES.get(config.platform)
        if prefix is None or config.base_url_env is None:
            continue
        os.environ[config.base_url_env] = f"{url}/{prefix}"
        for variable in config.credentials.values():
            os.environ[variable] = DEMO_CREDENTIAL
        prefixes[config.name] = prefix
    return DemoEmulator(url, prefixes)
