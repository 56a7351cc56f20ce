"""Fixtures for the collector's tests: configurations, a collector on loopback (in a thread
of the test process, over a real SQLite or PostgreSQL database), and table readers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.collector.app import CollectorApp, create_app
from conversion_platform.collector.config import CollectorConfig, WriteKeySource
from conversion_platform.collector.database import collector_engine
from conversion_platform.collector.server import serving_in_thread
from conversion_platform.collector.write_keys import hash_write_key
from conversion_platform.settings import Settings
from conversion_platform.store.tables import landing_events, quarantine

BACKEND_KEY = "cpk_test_backend_key_0123456789"
IMPORT_KEY = "cpk_test_import_key_9876543210"
SITE_ORIGIN = "https://shop.example"
#: The proxy network the tests' collectors trust; loopback (the tests' own address) isn't
#: in it unless a test says so, so a test's X-Forwarded-For is ignored by default.
TRUSTED_PROXY = "10.9.0.0/16"


def make_config(**changes: Any) -> CollectorConfig:
    """The tests' configuration: a backend source, an import source, one allowed origin."""
    config = CollectorConfig(
        sources=(
            WriteKeySource("shop-backend", hash_write_key(BACKEND_KEY), site="shop"),
            WriteKeySource("importer", hash_write_key(IMPORT_KEY), import_source=True),
        ),
        allowed_origins=frozenset({SITE_ORIGIN}),
        trusted_proxies=(ipaddress.ip_network(TRUSTED_PROXY),),
        rate_per_second=1_000.0,
        rate_burst=1_000,
    )
    return replace(config, **changes)


@dataclass
class RunningCollector:
    url: str
    engine: Engine
    app: CollectorApp

    def landing(self) -> list[dict[str, Any]]:
        return landing_rows(self.engine)

    def quarantined(self) -> list[dict[str, Any]]:
        return quarantine_rows(self.engine)


def landing_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(landing_events).order_by("id")).mappings()]


def quarantine_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(quarantine).order_by("id")).mappings()]


def all_stored_text(engine: Engine) -> str:
    """Every value of the landing table and the quarantine, as one lowercase text."""
    rows = landing_rows(engine) + quarantine_rows(engine)
    return "\n".join(str(v) for row in rows for v in row.values() if v is not None).lower()


StartCollector = Callable[..., RunningCollector]


@pytest.fixture
def start_collector(settings: Settings) -> Iterator[StartCollector]:
    """Start collectors (SQLite under the test's home, or `db_url`) with `make_config`
    changes; all are stopped at the end of the test."""
    stack: list[Any] = []

    def start(db_url: str | None = None, **changes: Any) -> RunningCollector:
        config = make_config(**changes)
        engine = collector_engine(db_url or settings.db_url, config)
        app = create_app(config, engine)
        context = serving_in_thread(app)
        url = context.__enter__()
        stack.append((context, engine))
        return RunningCollector(url=url, engine=engine, app=app)

    yield start
    for context, engine in reversed(stack):
        context.__exit__(None, None, None)
        engine.dispose()


@pytest.fixture
def collector(start_collector: StartCollector) -> RunningCollector:
    """A collector on SQLite with the tests' configuration."""
    return start_collector()
