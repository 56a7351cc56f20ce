"""Shared fixtures: a fresh platform home per test, its database, and PostgreSQL when configured."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conversion_platform.settings import Settings
from conversion_platform.store.database import create_database_engine

warnings.filterwarnings("ignore", module="dagster")

PG_URL_VARIABLE = "CONVERSION_PLATFORM_TEST_PG_URL"


@pytest.fixture
def platform_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CONVERSION_PLATFORM_HOME (and DAGSTER_HOME) for one test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CONVERSION_PLATFORM_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.delenv("CONVERSION_PLATFORM_DB_URL", raising=False)
    monkeypatch.delenv("CONVERSION_PLATFORM_LOGS_DIR", raising=False)
    for variable in list(os.environ):
        if variable.endswith(("_ACCESS_TOKEN", "_API_TOKEN")) or (
            variable.startswith("CONVERSION_PLATFORM_") and variable.endswith("_BASE_URL")
        ):
            monkeypatch.delenv(variable, raising=False)
    return home


@pytest.fixture
def settings(platform_home: Path) -> Settings:
    return Settings.from_env()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_database_engine(settings.db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema-isolated database URL, or a skip when none is configured."""
    base = os.environ.get(PG_URL_VARIABLE)
    if not base:
        pytest.skip(f"{PG_URL_VARIABLE} is not set: PostgreSQL tests need a server (CI sets it)")
    name = f"cp_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def either_database(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Engine]:
    """The platform's database: SQLite, and PostgreSQL when the test server is configured."""
    url = settings.db_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_database_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def no_dagster_state_storage_left_over() -> None:
    """Each test starts with no "current" Dagster defs-state storage.

    A `DagsterInstance` makes its storage current on `__enter__` (a ContextVar) and
    restores the one before on `__exit__`; instances exited out of order leave an
    earlier test's storage current. Once, in CI, `build_definitions()` in a later test
    then read that storage from a temporary folder already deleted ("unable to open
    database file"). The cause was not found; this keeps tests independent of it.
    """
    try:
        from dagster._core.storage.defs_state.base import _current_storage
    except ImportError:  # a Dagster without it has nothing to leave over
        return
    _current_storage.set(None)
