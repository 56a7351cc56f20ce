"""Destination settings from the YAML file named by `CONVERSION_PLATFORM_DESTINATIONS`.

Non-secret ids (pixel id, account id) are plain values. Credentials are the *names* of
environment variables, read only when sending; a missing one means `dry_run` for that
destination, never a failed run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODE_LIVE = "live"
MODE_VALIDATE = "validate"
MODE_DRY_RUN = "dry_run"
MODES = (MODE_LIVE, MODE_VALIDATE, MODE_DRY_RUN)


class DestinationConfigError(ValueError):
    """The destinations file is malformed."""


@dataclass(frozen=True)
class DestinationConfig:
    """One enabled destination: which platform, how to reach it, what to send."""

    name: str
    platform: str
    mode: str = MODE_LIVE
    base_url: str | None = None
    #: environment variable that overrides `base_url` when set (the demo's emulator)
    base_url_env: str | None = None
    #: platform settings (pixel id, API version, customer id, ...), never secrets
    settings: dict[str, Any] = field(default_factory=dict)
    #: credential name -> environment variable that holds it
    credentials: dict[str, str] = field(default_factory=dict)
    #: our event name -> the platform's event name (overrides the platform defaults)
    event_names: dict[str, str] = field(default_factory=dict)
    #: forward `page_view` events too (off by default: they are collected for identity)
    forward_page_view: bool = False
    #: event names never forwarded to this destination
    exclude_events: tuple[str, ...] = ()
    #: send events without ad_user_data consent (without identifiers, flags set)
    send_without_consent: bool = True
    test_event_code: str | None = None
    batch_size: int | None = None
    timeout_seconds: float = 10.0
    #: attempts per batch inside one run, for retryable failures
    in_run_attempts: int = 3
    #: longest wait between in-run attempts (a longer Retry-After is left to the sensor)
    max_in_run_wait_seconds: float = 5.0
    #: first wait between in-run attempts without a Retry-After (doubled each attempt)
    retry_backoff_seconds: float = 0.5

    def read_credentials(self) -> dict[str, str] | None:
        """Credential values from the environment, or None when any is missing."""
        values: dict[str, str] = {}
        for key, variable in self.credentials.items():
            value = os.environ.get(variable)
            if not value:
                return None
            values[key] = value
        return values

    def effective_mode(self) -> str:
        """`dry_run` whenever a credential is missing, else the configured mode."""
        if self.mode == MODE_DRY_RUN:
            return MODE_DRY_RUN
        return self.mode if self.read_credentials() is not None else MODE_DRY_RUN


def _entry(name: str, raw: dict[str, Any]) -> DestinationConfig:
    if not isinstance(raw, dict):
        raise DestinationConfigError(f"destination {name!r} must be a mapping")
    mode = str(raw.get("mode", MODE_LIVE))
    if mode not in MODES:
        raise DestinationConfigError(f"destination {name!r}: mode must be one of {MODES}")
    credentials = raw.get("credentials") or {}
    if not all(isinstance(v, str) and v.isupper() for v in credentials.values()):
        raise DestinationConfigError(
            f"destination {name!r}: credentials must name environment variables (UPPER_CASE), not hold values"
        )
    base_url = raw.get("base_url")
    base_url_env = raw.get("base_url_env")
    if base_url_env and os.environ.get(str(base_url_env)):
        base_url = os.environ[str(base_url_env)]
    return DestinationConfig(
        name=name,
        platform=str(raw.get("platform", name)),
        mode=mode,
        base_url=str(base_url).rstrip("/") if base_url else None,
        base_url_env=str(base_url_env) if base_url_env else None,
        settings=dict(raw.get("settings") or {}),
        credentials={str(k): str(v) for k, v in credentials.items()},
        event_names={str(k): str(v) for k, v in (raw.get("event_names") or {}).items()},
        forward_page_view=bool(raw.get("forward_page_view", False)),
        exclude_events=tuple(str(e) for e in raw.get("exclude_events") or ()),
        send_without_consent=bool(raw.get("send_without_consent", True)),
        test_event_code=raw.get("test_event_code"),
        batch_size=int(raw["batch_size"]) if raw.get("batch_size") else None,
        timeout_seconds=float(raw.get("timeout_seconds", 10.0)),
        in_run_attempts=int(raw.get("in_run_attempts", 3)),
        max_in_run_wait_seconds=float(raw.get("max_in_run_wait_seconds", 5.0)),
        retry_backoff_seconds=float(raw.get("retry_backoff_seconds", 0.5)),
    )


def load_destination_configs(path: Path) -> list[DestinationConfig]:
    """Enabled destinations from the YAML file (`destinations:` mapping name -> settings)."""
    if not path.exists():
        raise DestinationConfigError(f"destinations file not found: {path}")
    document = yaml.safe_load(path.read_text()) or {}
    entries = document.get("destinations") or {}
    if not isinstance(entries, dict):
        raise DestinationConfigError("`destinations` must map names to settings")
    configs = []
    for name, raw in entries.items():
        if not str(name).replace("_", "").isalnum():
            raise DestinationConfigError(f"destination name {name!r} must be snake_case")
        if isinstance(raw, dict) and raw.get("enabled", True) is False:
            continue
        configs.append(_entry(str(name), raw))
    return configs
