"""Platform settings, read from environment variables with defaults that work on a laptop.

| variable | default | meaning |
|---|---|---|
| `CONVERSION_PLATFORM_HOME` | `./.conversion_platform` | all local state: SQLite database, Parquet partitions, outbox |
| `CONVERSION_PLATFORM_DB_URL` | SQLite file in HOME (WAL) | SQLAlchemy URL of the operational database |
| `CONVERSION_PLATFORM_LOGS_DIR` | `HOME/server_logs` | server logs to ingest (plain or .gz) |
| `CONVERSION_PLATFORM_DESTINATIONS` | `seeds/destinations.yaml` | enabled destinations and their settings |
| `CONVERSION_PLATFORM_ACCESS_LOG_RULES` | `seeds/access_log_rules.yaml` | URL rules turning access-log lines into conversions |
| `CONVERSION_PLATFORM_CONSENT_REQUIRED` | `false` | `true`: unknown consent counts as denied |
| `CONVERSION_PLATFORM_IDENTITY_RULES` | `seeds/identity.yaml` | identity graph blocklist, caps per person, click-id windows |
| `CONVERSION_PLATFORM_DEDUPE_WINDOW_HOURS` | `168` | how long a dedupe key is remembered |
| `CONVERSION_PLATFORM_DEDUPE_TOLERANCE_SECONDS` | `120` | event times of fingerprint copies this close are one conversion |
| `CONVERSION_PLATFORM_DUPLICATE_RATE_RANGE` | `0,0.75` | usual duplicate rate until 12 hours of history exist |
| `CONVERSION_PLATFORM_MAX_EVENT_AGE_HOURS` | `168` | events older than this (vs. received) are invalid |
| `CONVERSION_PLATFORM_MAX_INVALID_RATE` | `0.10` | blocking check: an hour above this is not delivered |
| `CONVERSION_PLATFORM_SCHEDULE_DELAY_MINUTES` | `10` | the hourly schedule runs hour H at H+1h plus this |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The repository's `seeds/` folder (the package is installed in editable mode from it).
REPO_ROOT = Path(__file__).resolve().parent.parent
SEEDS_DIR = REPO_ROOT / "seeds"


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _env_range(name: str, default: tuple[float, float]) -> tuple[float, float]:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        low, high = (float(part) for part in raw.split(","))
    except ValueError as exc:
        raise ValueError(f"{name} must be two numbers, low,high (got {raw!r})") from exc
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1 (got {raw!r})")
    return (low, high)


def _seed_path(variable: str, filename: str) -> Path:
    raw = os.environ.get(variable)
    if raw:
        return Path(raw).expanduser().resolve()
    local = Path.cwd() / "seeds" / filename
    return local if local.exists() else SEEDS_DIR / filename


def _identity_rules_path() -> Path | None:
    """The identity rules file; None (built-in defaults) when the seed file isn't there."""
    path = _seed_path("CONVERSION_PLATFORM_IDENTITY_RULES", "identity.yaml")
    return path if os.environ.get("CONVERSION_PLATFORM_IDENTITY_RULES") or path.exists() else None


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build with `Settings.from_env()`."""

    home: Path
    db_url: str
    logs_dir: Path
    destinations_file: Path
    access_log_rules_file: Path
    identity_rules_file: Path | None = None
    consent_required: bool = False
    dedupe_window_hours: float = 168.0
    dedupe_tolerance_seconds: float = 120.0
    duplicate_rate_range: tuple[float, float] = (0.0, 0.75)
    max_event_age_hours: float = 168.0
    max_invalid_rate: float = 0.10
    schedule_delay_minutes: int = 10

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("CONVERSION_PLATFORM_HOME") or "./.conversion_platform")
        home = home.expanduser().resolve()
        db_url = os.environ.get("CONVERSION_PLATFORM_DB_URL") or f"sqlite:///{home / 'platform.db'}"
        logs_dir = Path(os.environ.get("CONVERSION_PLATFORM_LOGS_DIR") or home / "server_logs")
        return cls(
            home=home,
            db_url=db_url,
            logs_dir=logs_dir.expanduser().resolve(),
            destinations_file=_seed_path("CONVERSION_PLATFORM_DESTINATIONS", "destinations.yaml"),
            access_log_rules_file=_seed_path(
                "CONVERSION_PLATFORM_ACCESS_LOG_RULES", "access_log_rules.yaml"
            ),
            identity_rules_file=_identity_rules_path(),
            consent_required=_env_bool("CONVERSION_PLATFORM_CONSENT_REQUIRED", False),
            dedupe_window_hours=_env_float("CONVERSION_PLATFORM_DEDUPE_WINDOW_HOURS", 168.0),
            dedupe_tolerance_seconds=_env_float(
                "CONVERSION_PLATFORM_DEDUPE_TOLERANCE_SECONDS", 120.0
            ),
            duplicate_rate_range=_env_range(
                "CONVERSION_PLATFORM_DUPLICATE_RATE_RANGE", (0.0, 0.75)
            ),
            max_event_age_hours=_env_float("CONVERSION_PLATFORM_MAX_EVENT_AGE_HOURS", 168.0),
            max_invalid_rate=_env_float("CONVERSION_PLATFORM_MAX_INVALID_RATE", 0.10),
            schedule_delay_minutes=int(
                _env_float("CONVERSION_PLATFORM_SCHEDULE_DELAY_MINUTES", 10)
            ),
        )

    @property
    def partitions_dir(self) -> Path:
        """Parquet files of each asset's hourly partitions."""
        return self.home / "partitions"

    @property
    def outbox_dir(self) -> Path:
        """Request bodies written by destinations in dry-run mode."""
        return self.home / "outbox"
