"""The identity graph's guard rails and click-id windows (`seeds/identity.yaml`).

Guard rails keep the graph from collapsing into one giant "person" (the classic failure:
a placeholder address or a shared computer joining thousands of people):

* an exact blocklist of junk values, compared after normalisation, and for hashed kinds
  as the digests of those values (the platform stores only digests);
* phones of one repeated digit, as digests of every country code and length;
* a cap per identifier kind per person.

Whole email domains are never blocked: a digest does not show its domain, and a shared
company domain is not junk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import phonenumbers
import yaml

from conversion_platform.transform.normalise import (
    as_digest,
    google_email_variant,
    normalise_email,
    normalise_phone,
    sha256_hex,
)
from conversion_platform.transform.text_checks import digest_prefixes, digests_in, normalised_in

#: Identifier kinds, in the order a row's person is taken from (the most personal first).
KINDS: tuple[str, ...] = ("external_id", "email", "phone", "mpid")
#: The frame column holding each kind (digests, except the mpid cookie).
KIND_COLUMNS: dict[str, str] = {
    "external_id": "external_id_sha256",
    "email": "email_sha256",
    "phone": "phone_sha256",
    "mpid": "mpid",
}
#: The second hashed form stored with an identifier.
VARIANT_COLUMNS: dict[str, str] = {"email": "email_google_sha256", "phone": "phone_digits_sha256"}

DEFAULT_BLOCKED_VALUES: tuple[str, ...] = ("", "null", "undefined", "none", "0", "n/a")
DEFAULT_BLOCKED_EMAILS: tuple[str, ...] = ("test@test.com", "email@example.com")
DEFAULT_CAPS: dict[str, int] = {"email": 5, "phone": 5, "external_id": 5, "mpid": 10}
#: Days a click id can still be credited: each platform's default click-through window.
DEFAULT_CLICK_WINDOWS_DAYS: dict[str, float] = {
    "fbclid": 7,
    "fbc": 7,
    "gclid": 90,
    "gbraid": 90,
    "wbraid": 90,
    "ttclid": 7,
    "sccid": 28,
    "msclkid": 90,
    "epik": 30,
    "li_fat_id": 30,
    "rdt_cid": 28,
}


class IdentityRulesError(ValueError):
    """The identity rules file is malformed."""


def _case_forms(value: str) -> set[str]:
    """A value as sites send it: as written, lower, upper and capitalised."""
    return {value, value.lower(), value.upper(), value.capitalize()}


@lru_cache(maxsize=1)
def repeated_digit_phone_digests() -> frozenset[str]:
    """Digests (with and without `+`) of every number of one repeated digit, all countries."""
    digests: set[str] = set()
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        for digit in "0123456789":
            for length in range(4, 15):
                e164 = f"+{code}{digit * length}"
                digests.add(sha256_hex(e164))
                digests.add(sha256_hex(e164[1:]))
    return frozenset(digests)


@dataclass(frozen=True)
class IdentityRules:
    """Blocked values, caps per kind per person, and click-id windows."""

    blocked_values: tuple[str, ...] = DEFAULT_BLOCKED_VALUES
    blocked_emails: tuple[str, ...] = DEFAULT_BLOCKED_EMAILS
    blocked_phones: tuple[str, ...] = ()
    blocked_digests: tuple[str, ...] = ()
    block_repeated_digit_phones: bool = True
    caps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    click_windows: Mapping[str, timedelta] = field(
        default_factory=lambda: {
            k: timedelta(days=v) for k, v in DEFAULT_CLICK_WINDOWS_DAYS.items()
        }
    )

    def cap(self, kind: str) -> int:
        return int(self.caps.get(kind, DEFAULT_CAPS.get(kind, 5)))

    @property
    def blocked_mpids(self) -> frozenset[str]:
        """Cookie values compared trimmed and lower-cased."""
        return frozenset(v.strip().lower() for v in self.blocked_values)

    @property
    def blocked_hashes(self) -> frozenset[str]:
        """Digests that never link and are removed from rows (email, phone, external id)."""
        return _blocked_hashes(
            self.blocked_values,
            self.blocked_emails,
            self.blocked_phones,
            self.blocked_digests,
            self.block_repeated_digit_phones,
        )

    def blocked_mask(self, kind: str, values: pd.Series) -> pd.Series:
        """True where a value of `kind` is junk (missing values are not)."""
        if kind == "mpid":
            # trimmed and lower-cased as `str` does, in Python only for the few values
            # short enough (or with spaces around) to be a blocked value
            return pd.Series(normalised_in(values, self.blocked_mpids), index=values.index)
        blocked = self.blocked_hashes
        # looked up by 64-bit prefix: no Python hash of each 64-character digest
        mask = digests_in(values, blocked, _blocked_prefixes(blocked))
        return pd.Series(mask, index=values.index)


@lru_cache(maxsize=16)
def _blocked_prefixes(blocked: frozenset[str]) -> pd.Index:
    """The blocked digests' sorted 64-bit prefixes, computed once per blocklist."""
    return digest_prefixes(blocked)


@lru_cache(maxsize=16)
def _blocked_hashes(
    values: tuple[str, ...],
    emails: tuple[str, ...],
    phones: tuple[str, ...],
    digests: tuple[str, ...],
    repeated_digits: bool,
) -> frozenset[str]:
    blocked: set[str] = set()
    for value in values:
        for form in _case_forms(value.strip()):
            blocked.add(sha256_hex(form))
    for raw in emails:
        email = normalise_email(raw)
        if email is None:
            raise IdentityRulesError(f"blocked email {raw!r} is not an email address")
        blocked.update({sha256_hex(email), sha256_hex(google_email_variant(email))})
    for raw in phones:
        e164 = normalise_phone(raw) if raw.strip().startswith("+") else None
        if e164 is None:
            raise IdentityRulesError(f"blocked phone {raw!r} must be a valid E.164 number")
        blocked.update({sha256_hex(e164), sha256_hex(e164[1:])})
    for raw in digests:
        digest = as_digest(raw)
        if digest is None:
            raise IdentityRulesError(f"blocked digest {raw!r} is not a SHA-256 hex digest")
        blocked.add(digest)
    if repeated_digits:
        blocked |= repeated_digit_phone_digests()
    return frozenset(blocked)


def _strings(document: Mapping[str, Any], key: str, default: Iterable[str]) -> tuple[str, ...]:
    raw = document.get(key, list(default))
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(v, str | int) for v in raw):
        raise IdentityRulesError(f"{key} must be a list of strings")
    return tuple(str(v) for v in raw)


def load_identity_rules(path: Path | None) -> IdentityRules:
    """Rules from the YAML file; the defaults when `path` is None."""
    if path is None:
        return IdentityRules()
    if not Path(path).exists():
        raise IdentityRulesError(f"identity rules file not found: {path}")
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise IdentityRulesError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise IdentityRulesError(f"{path} must hold a mapping")
    caps = dict(DEFAULT_CAPS)
    for kind, value in (document.get("max_identifiers_per_person") or {}).items():
        if kind not in KIND_COLUMNS or not isinstance(value, int) or value < 1:
            raise IdentityRulesError(
                f"max_identifiers_per_person.{kind} must be a positive integer for one of {KINDS}"
            )
        caps[kind] = value
    windows = {k: timedelta(days=v) for k, v in DEFAULT_CLICK_WINDOWS_DAYS.items()}
    for click_type, days in (document.get("click_id_windows_days") or {}).items():
        if click_type not in DEFAULT_CLICK_WINDOWS_DAYS or not isinstance(days, int | float):
            raise IdentityRulesError(
                f"click_id_windows_days.{click_type}: unknown click id or not a number of days"
            )
        windows[click_type] = timedelta(days=float(days))
    rules = IdentityRules(
        blocked_values=_strings(document, "blocked_values", DEFAULT_BLOCKED_VALUES),
        blocked_emails=_strings(document, "blocked_emails", DEFAULT_BLOCKED_EMAILS),
        blocked_phones=_strings(document, "blocked_phones", ()),
        blocked_digests=_strings(document, "blocked_digests", ()),
        block_repeated_digit_phones=bool(document.get("block_repeated_digit_phones", True)),
        caps=caps,
        click_windows=windows,
    )
    rules.blocked_hashes  # noqa: B018 - check the lists now, not in the middle of an hour
    return rules
