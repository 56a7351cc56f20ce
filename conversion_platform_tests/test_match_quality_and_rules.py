"""Match-quality scores per destination, and the identity rules file.

Scope: `transform/match_quality.py` (which keys count for which platform, weights, the
cap at 10, consent zeroing the score, destination-to-score mapping) and
`transform/identity_rules.py` (loading `seeds/identity.yaml`, its errors, the blocklist
as digests, repeated-digit phones of every country).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conversion_platform import events
from conversion_platform.settings import SEEDS_DIR
from conversion_platform.transform.identity_rules import (
    DEFAULT_BLOCKED_EMAILS,
    IdentityRules,
    IdentityRulesError,
    load_identity_rules,
    repeated_digit_phone_digests,
)
from conversion_platform.transform.match_quality import (
    key_presence,
    match_quality_column,
    score_columns,
    strong_key_counts,
)
from conversion_platform.transform.normalise import sha256_hex

DIGEST = "a" * 64


def _scores(**fields: object) -> dict[str, float]:
    frame = events.conform(pd.DataFrame([fields]), list(events.STORED_COLUMNS))
    return {k: float(v[0]) for k, v in score_columns(key_presence(frame)).items()}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # strong keys: 3 each
        (
            {"email_sha256": DIGEST},
            {"general": 3, "meta": 3, "google": 3, "tiktok": 3, "snapchat": 3},
        ),
        ({"gclid": "g"}, {"general": 3, "meta": 0, "google": 3, "tiktok": 0, "snapchat": 0}),
        ({"wbraid": "w"}, {"general": 3, "meta": 0, "google": 3, "tiktok": 0, "snapchat": 0}),
        ({"fbc": "fb.1.1.x"}, {"general": 3, "meta": 3, "google": 0, "tiktok": 0, "snapchat": 0}),
        ({"ttclid": "t"}, {"general": 3, "meta": 0, "google": 0, "tiktok": 3, "snapchat": 0}),
        ({"sccid": "s"}, {"general": 3, "meta": 0, "google": 0, "tiktok": 0, "snapchat": 3}),
        # medium keys: 1.5 each; IP counts only with the user agent
        (
            {"client_ip": "1.2.3.4"},
            {"general": 0, "meta": 0, "google": 0, "tiktok": 0, "snapchat": 0},
        ),
        (
            {"client_ip": "1.2.3.4", "user_agent": "UA", "fbp": "fb.1.2.3"},
            {"general": 3, "meta": 3, "google": 1.5, "tiktok": 1.5, "snapchat": 1.5},
        ),
        (
            {"external_id_sha256": DIGEST, "ttp": "t"},
            {"general": 3, "meta": 1.5, "google": 0, "tiktok": 3, "snapchat": 1.5},
        ),
        # weak keys: 0.5 each
        (
            {"first_name_sha256": DIGEST, "last_name_sha256": DIGEST, "postal_code": "94103"},
            {"general": 1.5, "meta": 1.5, "google": 1.5, "tiktok": 1.5, "snapchat": 1.5},
        ),
        # capped at 10
        (
            {
                "email_sha256": DIGEST,
                "phone_sha256": DIGEST,
                "fbclid": "f",
                "gclid": "g",
                "client_ip": "1.2.3.4",
                "user_agent": "UA",
                "fbp": "p",
                "external_id_sha256": DIGEST,
                "first_name_sha256": DIGEST,
            },
            {"general": 10, "meta": 10, "google": 10, "tiktok": 9.5, "snapchat": 9.5},
        ),
        ({}, {"general": 0, "meta": 0, "google": 0, "tiktok": 0, "snapchat": 0}),
    ],
)
def test_scores_count_the_keys_each_platform_uses(
    fields: dict[str, object], expected: dict[str, float]
) -> None:
    scores = _scores(**fields)
    assert scores["match_quality"] == expected["general"]
    for platform in events.MATCH_QUALITY_PLATFORMS:
        assert scores[f"match_quality_{platform}"] == expected[platform], platform


def test_rows_without_consent_score_nothing() -> None:
    frame = events.conform(
        pd.DataFrame([{"email_sha256": DIGEST, "gclid": "g"}] * 2), list(events.STORED_COLUMNS)
    )
    presence = key_presence(frame, allowed=np.array([True, False]))
    assert strong_key_counts(presence).tolist() == [2, 0]
    assert score_columns(presence)["match_quality"].tolist() == [6.0, 0.0]


@pytest.mark.parametrize(
    ("platform", "column"),
    [
        ("meta_capi", "match_quality_meta"),
        ("google_ads", "match_quality_google"),
        ("google_ads_legacy", "match_quality_google"),
        ("tiktok", "match_quality_tiktok"),
        ("snapchat", "match_quality_snapchat"),
        ("pinterest", "match_quality"),
    ],
)
def test_each_destination_reads_its_own_score(platform: str, column: str) -> None:
    assert match_quality_column(platform) == column


# --- rules ----------------------------------------------------------------------------------


def test_the_seed_file_holds_the_documented_defaults() -> None:
    rules = load_identity_rules(SEEDS_DIR / "identity.yaml")
    assert rules == IdentityRules()
    assert rules.cap("email") == 5 and rules.cap("mpid") == 10
    assert rules.click_windows["fbclid"] == timedelta(days=7)
    assert rules.click_windows["gclid"] == timedelta(days=90)
    assert rules.click_windows["ttclid"] == timedelta(days=7)
    assert rules.click_windows["sccid"] == timedelta(days=28)
    assert load_identity_rules(None) == IdentityRules()


def test_default_blocklist_as_digests() -> None:
    blocked = IdentityRules().blocked_hashes
    for value in ("", "null", "NULL", "Null", "undefined", "none", "0", "n/a", "N/A"):
        assert sha256_hex(value) in blocked, value
    for email in DEFAULT_BLOCKED_EMAILS:
        assert sha256_hex(email) in blocked
    assert sha256_hex("+15555555555") in blocked
    assert sha256_hex("4900000000") in blocked
    assert sha256_hex("+14155552671") not in blocked
    assert sha256_hex("ann@example.com") not in blocked
    # every country code, both hashed forms
    assert len(repeated_digit_phone_digests()) > 20_000
    mask = IdentityRules().blocked_mask("mpid", pd.Series([" Undefined ", "abc", None, "0"]))
    assert mask.tolist() == [True, False, False, True]


def test_rules_file_overrides(tmp_path: Path) -> None:
    path = tmp_path / "identity.yaml"
    path.write_text(
        "blocked_values: [guest]\n"
        "blocked_emails: [orders@shop.example]\n"
        "blocked_phones: ['+14155552671']\n"
        f"blocked_digests: ['{'B' * 64}']\n"
        "block_repeated_digit_phones: false\n"
        "max_identifiers_per_person: {email: 2}\n"
        "click_id_windows_days: {fbclid: 1.5}\n"
    )
    rules = load_identity_rules(path)
    blocked = rules.blocked_hashes
    assert sha256_hex("orders@shop.example") in blocked
    assert sha256_hex("+14155552671") in blocked and sha256_hex("14155552671") in blocked
    assert "b" * 64 in blocked
    assert sha256_hex("+15555555555") not in blocked
    assert sha256_hex("test@test.com") not in blocked
    assert rules.cap("email") == 2 and rules.cap("phone") == 5
    assert rules.click_windows["fbclid"] == timedelta(days=1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("blocked_emails: [not-an-email]\n", "not an email"),
        ("blocked_phones: ['555']\n", "E.164"),
        ("blocked_digests: [abc]\n", "SHA-256"),
        ("max_identifiers_per_person: {email: 0}\n", "positive integer"),
        ("max_identifiers_per_person: {cookie: 3}\n", "positive integer"),
        ("click_id_windows_days: {xclid: 3}\n", "unknown click id"),
        ("blocked_values: guest\n", "list of strings"),
        ("[1, 2\n", "not valid YAML"),
    ],
)
def test_bad_rules_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "identity.yaml"
    path.write_text(text)
    with pytest.raises(IdentityRulesError, match=message):
        load_identity_rules(path)


def test_a_missing_rules_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityRulesError, match="not found"):
        load_identity_rules(tmp_path / "nope.yaml")
