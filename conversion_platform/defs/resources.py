"""Resources: one per external system (the operational database, server logs, destinations)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from sqlalchemy.engine import Engine

from conversion_platform.destinations.config import DestinationConfig, load_destination_configs
from conversion_platform.ingest.access_log import AccessLogRule, load_access_log_rules
from conversion_platform.settings import Settings
from conversion_platform.store.database import engine_for
from conversion_platform.transform.identity_rules import IdentityRules, load_identity_rules


class OperationalDatabase(dg.ConfigurableResource):
    """The relational database holding landing events, ledger, identity graph, quarantine
    and delivery log. The URL may hold a password: it is never logged."""

    url: str

    def engine(self) -> Engine:
        return engine_for(self.url)


class ServerLogSource(dg.ConfigurableResource):
    """The folder of server logs (plain or gzip) and the access-log URL rules."""

    logs_dir: str
    access_log_rules_file: str

    def rules(self) -> list[AccessLogRule]:
        return load_access_log_rules(Path(self.access_log_rules_file))


class PlatformSettings(dg.ConfigurableResource):
    """Settings shared by the stages: home folder, windows, thresholds, consent policy."""

    home: str
    destinations_file: str
    identity_rules_file: str = ""
    consent_required: bool = False
    dedupe_window_hours: float = 168.0
    dedupe_tolerance_seconds: float = 120.0
    duplicate_rate_low: float = 0.0
    duplicate_rate_high: float = 0.75
    max_event_age_hours: float = 168.0
    max_invalid_rate: float = 0.10

    @property
    def outbox_dir(self) -> Path:
        return Path(self.home) / "outbox"

    def destinations(self) -> list[DestinationConfig]:
        return load_destination_configs(Path(self.destinations_file))

    def identity_rules(self) -> IdentityRules:
        return load_identity_rules(
            Path(self.identity_rules_file) if self.identity_rules_file else None
        )


def resources_from_settings(settings: Settings) -> dict[str, object]:
    """The resources (and IO manager) for the given settings."""
    from conversion_platform.defs.io_manager import HourlyParquetIOManager

    return {
        "database": OperationalDatabase(url=settings.db_url),
        "server_logs": ServerLogSource(
            logs_dir=str(settings.logs_dir),
            access_log_rules_file=str(settings.access_log_rules_file),
        ),
        "platform": PlatformSettings(
            home=str(settings.home),
            destinations_file=str(settings.destinations_file),
            identity_rules_file=str(settings.identity_rules_file or ""),
            consent_required=settings.consent_required,
            dedupe_window_hours=settings.dedupe_window_hours,
            dedupe_tolerance_seconds=settings.dedupe_tolerance_seconds,
            duplicate_rate_low=settings.duplicate_rate_range[0],
            duplicate_rate_high=settings.duplicate_rate_range[1],
            max_event_age_hours=settings.max_event_age_hours,
            max_invalid_rate=settings.max_invalid_rate,
        ),
        "io_manager": HourlyParquetIOManager(base_dir=str(settings.partitions_dir)),
    }
