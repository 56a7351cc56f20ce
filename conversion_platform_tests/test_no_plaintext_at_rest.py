"""No plaintext email, phone or customer id anywhere the platform stores data.

Scope: a demo-sized run (`conversion-platform demo`, through the real Dagster job, on a
fresh home) and then every stored artefact: every table of the operational database
read through SQL, the database and WAL files byte by byte (deleted rows linger there),
every Parquet partition cell by cell, the outbox, the quarantine, the log-file index,
Dagster's own storage and logs. The needles are every generated person's email, phone
and customer id in each format the generator writes them and each normalised form. The
server logs the generator writes are the site's input, not the platform's store: the
scanner must find the needles there, which shows it is not blind. Also checks that the
resolved_conversions materialisation carries the identity figures the UI plots.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_plus

import phonenumbers
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance

from conversion_platform import cli
from conversion_platform.settings import Settings
from conversion_platform.synthetic import TrafficGenerator
from conversion_platform.transform.normalise import google_email_variant, normalise_email

SEED = 11
PEOPLE = 1_500
_EMAIL = re.compile(r"[\w.%+\-]+(?:@|%40)[\w\-]+(?:\.[\w\-]+)+", re.UNICODE)
_DIGIT_RUN = re.compile(r"\+?\d[\d\s()\-]{6,}\d")
_CUSTOMER_ID = re.compile(r"cust-\d{7}")


class Needles:
    """Every generated person's personal values, in every form they could leak in."""

    def __init__(self, seed: int, people: int) -> None:
        self.emails: set[str] = set()
        self.phone_digits: set[str] = set()
        for person in TrafficGenerator(seed=seed, people=people).people:
            email = normalise_email(person.email)
            assert email is not None
            self.emails |= {email, google_email_variant(email), person.email.strip().lower()}
            raw_digits = re.sub(r"\D", "", person.phone)
            self.phone_digits.add(raw_digits)
            try:
                parsed = phonenumbers.parse(person.phone, person.country)
            except phonenumbers.NumberParseException:
                continue
            national = str(parsed.national_number)
            self.phone_digits |= {national, f"{parsed.country_code}{national}", "0" + national}

    def found_in(self, text: str) -> list[str]:
        """The needles in `text` (also after URL-decoding), by kind."""
        found = []
        for candidate in (text, unquote_plus(text)):
            for match in _EMAIL.finditer(candidate):
                if unquote_plus(match.group(0)).lower() in self.emails:
                    found.append(f"email {match.group(0)}")
            for match in _DIGIT_RUN.finditer(candidate):
                if re.sub(r"\D", "", match.group(0)) in self.phone_digits:
                    found.append(f"phone {match.group(0)}")
            found.extend(f"customer id {m}" for m in _CUSTOMER_ID.findall(candidate))
        return found


def _database_texts(url: str) -> Iterator[tuple[str, str]]:
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    assert {"landing_events", "quarantine", "identity_identifiers", "delivery_events"} <= set(
        metadata.tables
    )
    with engine.connect() as conn:
        for table in metadata.tables.values():
            for row in conn.execute(sa.select(table)):
                yield f"table {table.name}", "\x1f".join(str(v) for v in row)
    engine.dispose()


def _file_texts(root: Path, skip: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if skip in path.parents:
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column in table.column_names:
                values = table.column(column).to_pylist()
                yield f"{path} [{column}]", "\x1f".join(str(v) for v in values)
        else:
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            yield str(path), data.decode("latin-1")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One demo run on a fresh home (and Dagster home), shared by this module's tests."""
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVERSION_PLATFORM_HOME", str(root / "home"))
        patch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
        for variable in ("CONVERSION_PLATFORM_DB_URL", "CONVERSION_PLATFORM_LOGS_DIR"):
            patch.delenv(variable, raising=False)
        for variable in list(os.environ):
            if variable.endswith(("_ACCESS_TOKEN", "_API_TOKEN")) or (
                variable.startswith("CONVERSION_PLATFORM_") and variable.endswith("_BASE_URL")
            ):
                patch.delenv(variable, raising=False)
        # Dry run: the request bodies land in the outbox, which the scan then covers too.
        arguments = ["--hours", "2", "--conversions-per-hour", "300", "--dry-run"]
        arguments += ["--people", str(PEOPLE), "--seed", str(SEED)]
        assert cli.main(["demo", *arguments]) == 0
        yield Settings.from_env()


def test_nothing_stored_holds_plaintext_personal_data(demo_run: Settings) -> None:
    settings = demo_run
    needles = Needles(SEED, PEOPLE)

    # The scanner sees plaintext where it is: the site's own logs, which are input.
    input_hits = [
        hit
        for _, text in _file_texts(settings.logs_dir, Path("/nonexistent"))
        for hit in needles.found_in(text)
    ]
    assert {hit.split()[0] for hit in input_hits} >= {"email", "phone", "customer"}

    leaks: list[str] = []
    scanned: set[str] = set()
    for where, text in _database_texts(settings.db_url):
        scanned.add(where.split()[0])
        leaks.extend(f"{where}: {hit}" for hit in needles.found_in(text))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    roots = [settings.home] + ([dagster_home] if settings.home not in dagster_home.parents else [])
    files = 0
    for root in roots:
        for where, text in _file_texts(root, settings.logs_dir):
            files += 1
            leaks.extend(f"{where}: {hit}" for hit in needles.found_in(text))
    assert not leaks, leaks[:20]

    # It really looked at everything: database files, partitions, the outbox, Dagster's store.
    stored = [p for root in roots for p in root.rglob("*") if p.is_file()]
    suffixes = {p.suffix for p in stored}
    assert {".parquet", ".db", ".jsonl"} <= suffixes
    assert any(p.name.endswith("-wal") or p.suffix == ".db" for p in stored)
    assert files >= len([p for p in stored if settings.logs_dir not in p.parents])
    assert scanned == {"table"}
    # The newsletter links really carried emails in, and were scrubbed on the way.
    assert any(
        "utm_source=newsletter" in text
        for _, text in _file_texts(settings.partitions_dir, settings.logs_dir)
    )


def test_the_ui_gets_the_identity_figures(demo_run: Settings) -> None:
    instance = DagsterInstance.get()
    event = instance.get_latest_materialization_event(AssetKey("resolved_conversions"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    for name in (
        "conversions",
        "strong_key_share_before",
        "strong_key_share_after",
        "matched_uplift_pct",
        "mean_match_quality",
        "mean_match_quality_meta",
        "mean_match_quality_google",
        "persons_new",
        "persons_merged",
        "links_refused_by_cap",
        "junk_identifiers_removed",
    ):
        assert name in metadata, name
    before = metadata["strong_key_share_before"].value
    after = metadata["strong_key_share_after"].value
    assert 0 < before <= after <= 1
    assert metadata["conversions"].value > 200
