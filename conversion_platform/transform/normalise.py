"""Normalisation and SHA-256 hashing of personal and location fields.

The rules follow `PLATFORMS.md`: email trimmed and lowercased (plus a Google variant
without dots in gmail.com / googlemail.com local parts), phone as E.164 (with `+` and
digits-only variants), names lowercased without punctuation (Unicode letters kept),
region a 2-letter code, US postal codes cut to 5 digits, country ISO alpha-2. Hashes are
lowercase hex SHA-256 of the UTF-8 normalised value; a value that already is a
64-character lowercase hex digest passes through unchanged.

`hash_identity_columns` is the one entry point that ingest and the collector call: it
takes a frame with plaintext personal columns and returns the hashed columns, hashing
each distinct value once, and counts what it had to drop (an email without `@`, a phone
that isn't a number, a placeholder such as `undefined`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from functools import lru_cache

import pandas as pd
import phonenumbers

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

#: Values that mean "nothing" however a site spells them; never hashed, never linked.
PLACEHOLDER_VALUES: frozenset[str] = frozenset(
    {"", "null", "undefined", "none", "nan", "n/a", "na", "0", "-", "unknown", "[object object]"}
)

_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PUNCTUATION_CATEGORIES = ("P", "S")  # Unicode punctuation and symbols
_US_STATES = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca",
    "colorado": "co", "connecticut": "ct", "delaware": "de", "florida": "fl", "georgia": "ga",
    "hawaii": "hi", "idaho": "id", "illinois": "il", "indiana": "in", "iowa": "ia",
    "kansas": "ks", "kentucky": "ky", "louisiana": "la", "maine": "me", "maryland": "md",
    "massachusetts": "ma", "michigan": "mi", "minnesota": "mn", "mississippi": "ms",
    "missouri": "mo", "montana": "mt", "nebraska": "ne", "nevada": "nv", "new hampshire": "nh",
    "new jersey": "nj", "new mexico": "nm", "new york": "ny", "north carolina": "nc",
    "north dakota": "nd", "ohio": "oh", "oklahoma": "ok", "oregon": "or", "pennsylvania": "pa",
    "rhode island": "ri", "south carolina": "sc", "south dakota": "sd", "tennessee": "tn",
    "texas": "tx", "utah": "ut", "vermont": "vt", "virginia": "va", "washington": "wa",
    "west virginia": "wv", "wisconsin": "wi", "wyoming": "wy", "district of columbia": "dc",
}  # fmt: skip
_COUNTRY_NAMES = {
    "united states": "us", "usa": "us", "united states of america": "us",
    "united kingdom": "gb", "uk": "gb", "great britain": "gb", "germany": "de",
    "deutschland": "de", "france": "fr", "canada": "ca", "australia": "au", "spain": "es",
    "italy": "it", "netherlands": "nl", "ireland": "ie", "brazil": "br", "mexico": "mx",
    "japan": "jp", "india": "in", "sweden": "se", "switzerland": "ch", "austria": "at",
}  # fmt: skip


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 value."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True when `value` already is a lowercase 64-character hex digest."""
    return len(value) == 64 and SHA256_HEX.match(value) is not None


def is_placeholder(value: object) -> bool:
    """True for missing values and junk placeholders (`undefined`, `null`, `n/a`, ...)."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return str(value).strip().lower() in PLACEHOLDER_VALUES


# --- scalar normalisers: each returns None when the value can't be used ----------------------


def normalise_email(value: str) -> str | None:
    """Trim and lowercase; None unless it looks like an address (`a@b.c`)."""
    email = value.strip().lower()
    if not _EMAIL.match(email):
        return None
    return email


def google_email_variant(email: str) -> str:
    """Google's form: every dot removed from gmail.com / googlemail.com local parts."""
    local, _, domain = email.partition("@")
    if domain in _GMAIL_DOMAINS:
        return local.replace(".", "") + "@" + domain
    return email


def normalise_phone(value: str, default_region: str | None = None) -> str | None:
    """E.164 with the leading `+` (extensions dropped); None when it isn't a valid number.

    A number without a country code is read in `default_region` (the event's country).
    """
    text = value.strip()
    if not text:
        return None
    region = default_region.upper() if default_region else None
    if not text.startswith("+") and text.startswith("00"):
        text = "+" + text[2:]
    try:
        parsed = phonenumbers.parse(text, region if not text.startswith("+") else None)
    except phonenumbers.NumberParseException:
        digits = re.sub(r"\D", "", text)
        if not digits or text.startswith("+") or region is not None:
            return None
        # No region known: a long digit string is read as international.
        try:
            parsed = phonenumbers.parse("+" + digits, None)
        except phonenumbers.NumberParseException:
            return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    national = e164.lstrip("+")[len(str(parsed.country_code)) :]
    if len(set(national)) == 1:  # one repeated digit: a placeholder, not a person
        return None
    return e164


def normalise_name(value: str) -> str | None:
    """Lowercase, punctuation and symbols removed, spaces collapsed; Unicode letters kept."""
    text = unicodedata.normalize("NFC", value).strip().lower()
    text = "".join(
        ch for ch in text if not unicodedata.category(ch).startswith(_PUNCTUATION_CATEGORIES)
    )
    text = " ".join(text.split())
    return text or None


def normalise_external_id(value: str) -> str | None:
    """Trimmed customer id; case is kept (ids are often case-sensitive)."""
    text = value.strip()
    return text or None


def normalise_city(value: str) -> str | None:
    """Lowercase city with spaces and punctuation removed (`sanfrancisco`)."""
    name = normalise_name(value)
    return name.replace(" ", "") if name else None


def normalise_region(value: str) -> str | None:
    """Two-letter region code, lowercase (`California` -> `ca`); None when unknown."""
    text = value.strip().lower()
    if len(text) == 2 and text.isalpha():
        return text
    return _US_STATES.get(" ".join(text.replace(".", " ").split()))


def normalise_country(value: str) -> str | None:
    """ISO 3166 alpha-2, lowercase; common English names are mapped."""
    text = value.strip().lower()
    if len(text) == 2 and text.isalpha():
        return text
    return _COUNTRY_NAMES.get(" ".join(text.replace(".", " ").split()))


def normalise_postal_code(value: str, country: str | None = None) -> str | None:
    """Postal code without spaces or dashes, lowercase; US codes cut to the first 5 digits."""
    text = re.sub(r"[\s\-]", "", value.strip().lower())
    if not text:
        return None
    if (country or "").lower() == "us":
        digits = re.sub(r"\D", "", text)
        return digits[:5] if len(digits) >= 5 else None
    return text


# --- hashing with pass-through ------------------------------------------------------------------


@lru_cache(maxsize=1_000_000)
def hash_email(value: str) -> tuple[str | None, str | None, str | None]:
    """(sha256 of the normalised email, sha256 of Google's variant, drop reason)."""
    text = value.strip()
    if is_sha256_hex(text):
        return text, text, None
    if text.lower() in PLACEHOLDER_VALUES:
        return None, None, "email_placeholder"
    email = normalise_email(text)
    if email is None:
        return None, None, "email_invalid"
    return sha256_hex(email), sha256_hex(google_email_variant(email)), None


@lru_cache(maxsize=1_000_000)
def hash_phone(value: str, default_region: str | None) -> tuple[str | None, str | None, str | None]:
    """(sha256 of E.164 with +, sha256 of digits only, drop reason)."""
    text = value.strip()
    if is_sha256_hex(text):
        return text, text, None
    if text.lower() in PLACEHOLDER_VALUES:
        return None, None, "phone_placeholder"
    e164 = normalise_phone(text, default_region)
    if e164 is None:
        return None, None, "phone_invalid"
    return sha256_hex(e164), sha256_hex(e164[1:]), None


@lru_cache(maxsize=1_000_000)
def hash_name(value: str) -> tuple[str | None, str | None]:
    """(sha256 of the normalised name, drop reason)."""
    text = value.strip()
    if is_sha256_hex(text):
        return text, None
    if text.lower() in PLACEHOLDER_VALUES:
        return None, "name_placeholder"
    name = normalise_name(text)
    if name is None:
        return None, "name_invalid"
    return sha256_hex(name), None


@lru_cache(maxsize=1_000_000)
def hash_external_id(value: str) -> tuple[str | None, str | None]:
    """(sha256 of the trimmed external id, drop reason)."""
    text = value.strip()
    if is_sha256_hex(text):
        return text, None
    if text.lower() in PLACEHOLDER_VALUES:
        return None, "external_id_placeholder"
    return sha256_hex(text), None


# --- frame-level entry point -----------------------------------------------------------------


def _as_text(series: pd.Series) -> pd.Series:
    """Strings for present values, None for missing ones (numbers become their text)."""
    return (
        series.astype("object")
        .where(series.notna(), None)
        .map(lambda v: v if isinstance(v, str) or v is None else str(v))
    )


def normalise_location_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalise city, region, postal code and country in place (unhashed) and return it."""
    for column, normaliser in (
        ("country", normalise_country),
        ("city", normalise_city),
        ("region", normalise_region),
    ):
        if column in frame.columns:
            values = _as_text(frame[column])
            mapping = {v: normaliser(v) for v in values.dropna().unique()}
            frame[column] = values.map(mapping).astype("string")
    if "postal_code" in frame.columns:
        values = _as_text(frame["postal_code"])
        countries = (
            frame["country"].astype("object").where(frame["country"].notna(), None)
            if "country" in frame.columns
            else pd.Series([None] * len(frame), index=frame.index)
        )
        pairs = list(zip(values, countries, strict=True))
        mapping = {p: normalise_postal_code(p[0], p[1]) for p in set(pairs) if p[0] is not None}
        frame["postal_code"] = pd.Series(
            [mapping.get(p) if p[0] is not None else None for p in pairs],
            index=frame.index,
            dtype="string",
        )
    return frame


def hash_identity_columns(frame: pd.DataFrame) -> tuple[pd.DataFrame, Counter[str]]:
    """Replace plaintext personal columns with their hashed variants.

    Reads `email`, `phone`, `first_name`, `last_name`, `external_id` (and `country` as the
    phone's default region) where present, adds the `*_sha256` columns, drops the
    plaintext columns, and returns the frame with a count of dropped values by reason.
    Hashed values already present in `*_sha256` columns are kept unless a plaintext
    value provides one.
    """
    dropped: Counter[str] = Counter()
    index = frame.index

    def _apply(column: str, fn, targets: tuple[str, ...], region: pd.Series | None = None) -> None:
        if column not in frame.columns:
            return
        values = _as_text(frame[column])
        present = values.notna()
        if not present.any():
            frame.drop(columns=[column], inplace=True)
            return
        if region is not None:
            keys = list(zip(values[present], region[present], strict=True))
            results = {k: fn(k[0], k[1]) for k in set(keys)}
            outcome = [results[k] for k in keys]
        else:
            uniques = values[present].unique()
            results = {v: fn(v) for v in uniques}
            outcome = [results[v] for v in values[present]]
        for i, target in enumerate(targets):
            column_values = pd.Series(
                [o[i] for o in outcome], index=values[present].index, dtype="object"
            )
            hashed = pd.Series(None, index=index, dtype="object")
            hashed[present] = column_values
            if target in frame.columns:
                hashed = hashed.where(hashed.notna(), frame[target].astype("object"))
            frame[target] = hashed.astype("string")
        for o in outcome:
            if o[-1] is not None:
                dropped[o[-1]] += 1
        frame.drop(columns=[column], inplace=True)

    if "phone" in frame.columns:
        region = (
            _as_text(frame["country"]).map(lambda c: c.upper() if c and len(c) == 2 else None)
            if "country" in frame.columns
            else pd.Series([None] * len(frame), index=index, dtype="object")
        )
    else:
        region = None
    _apply("email", hash_email, ("email_sha256", "email_google_sha256"))
    _apply("phone", hash_phone, ("phone_sha256", "phone_digits_sha256"), region=region)
    _apply("first_name", hash_name, ("first_name_sha256",))
    _apply("last_name", hash_name, ("last_name_sha256",))
    _apply("external_id", hash_external_id, ("external_id_sha256",))
    return frame, dropped


def redact(text: str, limit: int = 2_000) -> str:
    """A raw line or payload with anything that looks like personal data masked.

    Emails, phone-like digit runs and JSON values of personal keys are replaced, so a
    quarantined record shows its shape and its error without plaintext personal data.
    """
    text = text[:limit]
    text = re.sub(
        r'("(?:email|phone|first_name|last_name|external_id|em|ph|fn|ln)"\s*:\s*)"(?:[^"\\]|\\.)*"',
        r'\1"[redacted]"',
        text,
        flags=re.IGNORECASE,
    )
    text = re.sub(
        r"((?:email|phone|first_name|last_name|external_id)=)[^&\s\"]*",
        r"\1[redacted]",
        text,
        flags=re.I,
    )
    text = re.sub(r"[^\s\"'<>@,;:&=?/]+@[^\s\"'<>@,;:&=?/]+", "[email]", text)
    return _PHONE_LIKE.sub(_mask_phone_like, text)


_PHONE_LIKE = re.compile(r"\+?\d[\d\s().\-]{7,}\d")
_DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _mask_phone_like(match: re.Match[str]) -> str:
    """Mask digit runs long enough to be a phone number, but leave dates alone."""
    found = match.group(0)
    if _DATE_LIKE.match(found) or sum(ch.isdigit() for ch in found) < 9:
        return found
    return "[number]"
