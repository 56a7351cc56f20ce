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
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache

import numpy as np
import pandas as pd
import phonenumbers

from conversion_platform import events
from conversion_platform.transform.second_core import SharedMap, map_on_two_cores

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

#: Values that mean "nothing" however a site spells them; never hashed, never linked.
PLACEHOLDER_VALUES: frozenset[str] = frozenset(
    {"", "null", "undefined", "none", "nan", "n/a", "na", "0", "-", "unknown", "[object object]"}
)

_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_BRACKETED_EMAIL = re.compile(r"<([^<>\s]+@[^<>\s]+)>\s*$")
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


def as_digest(value: str) -> str | None:
    """The lowercase digest when `value` (trimmed) is a 64-character hex digest in any case.

    Backends that hash themselves sometimes send upper-case hex; it is the same digest.
    """
    text = value.strip()
    if len(text) != 64:
        return None
    lowered = text.lower()
    return lowered if SHA256_HEX.match(lowered) else None


def is_placeholder(value: object) -> bool:
    """True for missing values and junk placeholders (`undefined`, `null`, `n/a`, ...)."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return str(value).strip().lower() in PLACEHOLDER_VALUES


# --- scalar normalisers: each returns None when the value can't be used ----------------------


def normalise_email(value: str) -> str | None:
    """Trim and lowercase; None unless it looks like an address (`a@b.c`).

    A `mailto:` prefix and a display form (`Name <a@b.c>`) are reduced to the address.
    """
    email = value.strip()
    bracketed = _BRACKETED_EMAIL.search(email)
    if bracketed:
        email = bracketed.group(1)
    email = email.strip().lower()
    if email.startswith("mailto:"):
        email = email[len("mailto:") :].strip()
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


@lru_cache(maxsize=65_536)
def normalise_city(value: str) -> str | None:
    """Lowercase city with spaces and punctuation removed (`sanfrancisco`)."""
    name = normalise_name(value)
    return name.replace(" ", "") if name else None


@lru_cache(maxsize=65_536)
def normalise_region(value: str) -> str | None:
    """Two-letter region code, lowercase (`California` -> `ca`); None when unknown."""
    text = value.strip().lower()
    if len(text) == 2 and text.isalpha():
        return text
    return _US_STATES.get(" ".join(text.replace(".", " ").split()))


@lru_cache(maxsize=65_536)
def normalise_country(value: str) -> str | None:
    """ISO 3166 alpha-2, lowercase; common English names are mapped."""
    text = value.strip().lower()
    if len(text) == 2 and text.isalpha():
        return text
    return _COUNTRY_NAMES.get(" ".join(text.replace(".", " ").split()))


@lru_cache(maxsize=65_536)
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
    """(sha256 of the normalised email, sha256 of Google's variant, drop reason).

    A digest passes through as both variants: Google's can't be derived from it.
    """
    text = value.strip()
    digest = as_digest(text)
    if digest is not None:
        return digest, digest, None
    if text.lower() in PLACEHOLDER_VALUES:
        return None, None, "email_placeholder"
    email = normalise_email(text)
    if email is None:
        return None, None, "email_invalid"
    return sha256_hex(email), sha256_hex(google_email_variant(email)), None


@lru_cache(maxsize=1_000_000)
def hash_phone(value: str, default_region: str | None) -> tuple[str | None, str | None, str | None]:
    """(sha256 of E.164 with +, sha256 of digits only, drop reason).

    A digest passes through as both variants (which form was hashed is unknown).
    """
    text = value.strip()
    digest = as_digest(text)
    if digest is not None:
        return digest, digest, None
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
    digest = as_digest(text)
    if digest is not None:
        return digest, None
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
    digest = as_digest(text)
    if digest is not None:
        return digest, None
    if text.lower() in PLACEHOLDER_VALUES:
        return None, "external_id_placeholder"
    return sha256_hex(text), None


def clear_hashing_caches() -> None:
    """Empty the memo of normalised and hashed values.

    The hashers remember up to a million values each, so a value seen again (a returning
    customer in the collector, the same person in several hours of a backfill) is hashed
    once. The memo holds plaintext (emails, phones, names) and about 0.3 GB after a
    million log lines, so a batch job empties it when its run is done."""
    for memoised in (
        hash_email,
        hash_phone,
        hash_name,
        hash_external_id,
        normalise_city,
        normalise_region,
        normalise_country,
        normalise_postal_code,
    ):
        memoised.cache_clear()


# --- frame-level entry point -----------------------------------------------------------------

#: Hashed column -> (plaintext field, hasher, position of the digest in the hasher's result).
#: A value in a hashed column that is not a digest is hashed as that field's plaintext, so
#: a backend that puts a plain address in `email_sha256` never gets it stored.
_HASHED_COLUMN_SOURCES: dict[str, tuple[str, int]] = {
    "email_sha256": ("email", 0),
    "email_google_sha256": ("email", 1),
    "phone_sha256": ("phone", 0),
    "phone_digits_sha256": ("phone", 1),
    "first_name_sha256": ("first_name", 0),
    "last_name_sha256": ("last_name", 0),
    "external_id_sha256": ("external_id", 0),
}
#: Hashed columns that are two forms of one identifier (a lone digest stands in for both).
VARIANT_PAIRS: tuple[tuple[str, str], ...] = (
    ("email_sha256", "email_google_sha256"),
    ("phone_sha256", "phone_digits_sha256"),
)
_HASHERS: dict[str, tuple[Callable[..., tuple[str | None, ...]], tuple[str, ...], bool]] = {
    # field -> (hasher, hashed columns it fills, takes the default region). Phone comes
    # last: `known_phones` may still be being computed by a worker while the rest is hashed.
    "email": (hash_email, ("email_sha256", "email_google_sha256"), False),
    "first_name": (hash_name, ("first_name_sha256",), False),
    "last_name": (hash_name, ("last_name_sha256",), False),
    "external_id": (hash_external_id, ("external_id_sha256",), False),
    "phone": (hash_phone, ("phone_sha256", "phone_digits_sha256"), True),
}


def _as_text(series: pd.Series) -> pd.Series:
    """Strings for present values, None for missing ones (numbers become their text).

    A column in the model's string dtype is text already and is returned as it is (its
    missing values are NA): converting it to Python objects cost more than the hashing."""
    if isinstance(series.dtype, pd.StringDtype):
        return series
    values = series.astype("object")
    present = values.notna()
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        values = values.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
    return values.where(present, None)


def _distinct_ready(values: pd.Series) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """What `pd.factorize` reads fastest: an Arrow-backed column as itself (Arrow finds
    its distinct values), any other as its numpy array."""
    return values.array if isinstance(values.dtype, pd.StringDtype) else values.to_numpy()


def _map_distinct(
    values: pd.Series,
    fn: Callable[..., tuple[str | None, ...]],
    region: pd.Series | None,
    width: int,
    known: Mapping[tuple[str, str | None], tuple[str | None, ...]] | None = None,
) -> tuple[list[np.ndarray], Counter[str]]:
    """Apply `fn` once per distinct value (or value and region) of the present rows.

    Returns one object array per element of `fn`'s result (None where the row has no value)
    and the count of rows by drop reason (the result's last element). `known` holds
    results of `fn` computed before, by (value, region).
    """
    present = values.notna().to_numpy()
    n = len(values)
    if not present.any():
        return [np.full(n, None, dtype=object) for _ in range(width)], Counter()
    if region is not None:
        value_codes, value_uniques = pd.factorize(_distinct_ready(values[present]))
        value_uniques = np.asarray(value_uniques, dtype=object)
        region_codes, region_uniques = pd.factorize(region[present].to_numpy())
        # one code per (value, region) pair; a missing region has code -1
        pair_codes = value_codes.astype(np.int64) * (len(region_uniques) + 1) + (region_codes + 1)
        codes, pairs = pd.factorize(pair_codes)
        regions = np.array([None, *region_uniques], dtype=object)
        width_r = len(region_uniques) + 1
        items = [(value_uniques[p // width_r], regions[p % width_r]) for p in pairs]
        known = known or {}
        missing = [a for a in items if a not in known] if known else items
        # Phone numbers cost ~70 µs each in pure Python: many are shared with a worker.
        computed = iter(
            map_on_two_cores(fn, missing) if fn is hash_phone else [fn(*a) for a in missing]
        )
        # `missing` keeps the order of `items`: its results are taken in turn.
        results = [known[a] if a in known else next(computed) for a in items]
    else:
        codes, uniques = pd.factorize(_distinct_ready(values[present]))
        results = [fn(v) for v in uniques]
    outputs: list[np.ndarray] = []
    for position in range(width):
        distinct = np.array([r[position] for r in results] + [None], dtype=object)
        column = np.full(n, None, dtype=object)
        column[present] = distinct[codes]
        outputs.append(column)
    dropped: Counter[str] = Counter()
    if results:
        rows_per_value = np.bincount(codes, minlength=len(results))
        for result, count in zip(results, rows_per_value, strict=True):
            if result[-1] is not None and count:
                dropped[result[-1]] += int(count)
    return outputs, dropped


def normalise_location_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalise city, region, postal code and country in place (unhashed) and return it."""
    for column, normaliser in (
        ("country", normalise_country),
        ("city", normalise_city),
        ("region", normalise_region),
    ):
        if column in frame.columns:
            (normalised, _reason), _ = _map_distinct(
                _as_text(frame[column]), lambda v, f=normaliser: (f(v), None), None, 2
            )
            frame[column] = pd.Series(events.string_array(normalised), index=frame.index)
    if "postal_code" in frame.columns:
        countries = (
            _as_text(frame["country"])
            if "country" in frame.columns
            else pd.Series(None, index=frame.index, dtype="object")
        )
        (normalised, _reason), _ = _map_distinct(
            _as_text(frame["postal_code"]),
            lambda v, c: (normalise_postal_code(v, c), None),
            countries,
            2,
        )
        frame["postal_code"] = pd.Series(events.string_array(normalised), index=frame.index)
    return frame


def _phone_regions(countries: pd.Series) -> pd.Series:
    """A phone number's default region from its row's normalised country: the upper-case
    two-letter code, None for anything else."""
    return _as_text(countries).str.upper().where(lambda s: s.str.len() == 2, None)


def phone_hash_arguments(
    phones: pd.Series, countries: pd.Series | None
) -> list[tuple[str, str | None]]:
    """The distinct (number, default region) pairs `hash_identity_columns` gives
    `hash_phone` for these rows, their countries as they arrive (normalised here as
    `normalise_location_columns` will): what a worker can hash ahead of time."""
    present = phones.notna().to_numpy()
    if not present.any():
        return []
    numbers = _as_text(phones[present]).to_numpy(dtype=object)
    if countries is None:
        regions = np.full(len(numbers), None, dtype=object)
    else:
        codes, uniques = pd.factorize(_as_text(countries[present]).to_numpy(dtype=object))
        distinct = pd.Series([normalise_country(c) for c in uniques], dtype=object)
        regions = np.append(_phone_regions(distinct).to_numpy(dtype=object), None)[codes]
    return list(dict.fromkeys(zip(numbers.tolist(), regions.tolist(), strict=True)))


class PhonesHashedAhead(Mapping[tuple[str, str | None], tuple[str | None, ...]]):
    """`hash_phone` of the rows' distinct (number, region) pairs, begun now and finished
    when first read: pass it to `hash_identity_columns` as `known_phones`.

    The worker starts on the pairs at once (`SharedMap`: pure Python at ~70 µs a number)
    while this process normalises and hashes the other columns; the first read has this
    process join in until every pair is done. `close()` frees the worker if it is never read.
    """

    def __init__(self, phones: pd.Series, countries: pd.Series | None) -> None:
        self._pairs = phone_hash_arguments(phones, countries)
        self._shared = SharedMap(hash_phone, self._pairs)
        self._known: dict[tuple[str, str | None], tuple[str | None, ...]] | None = None

    def _finished(self) -> dict[tuple[str, str | None], tuple[str | None, ...]]:
        if self._known is None:
            self._known = dict(zip(self._pairs, self._shared.results(), strict=True))
            self._pairs = []
        return self._known

    def __getitem__(self, pair: tuple[str, str | None]) -> tuple[str | None, ...]:
        return self._finished()[pair]

    def __contains__(self, pair: object) -> bool:
        return pair in self._finished()

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return iter(self._finished())

    def __len__(self) -> int:
        return len(self._finished())

    def close(self) -> None:
        self._shared.close()


def hash_identity_columns(
    frame: pd.DataFrame,
    known_phones: Mapping[tuple[str, str | None], tuple[str | None, ...]] | None = None,
) -> tuple[pd.DataFrame, Counter[str]]:
    """Replace plaintext personal columns with their hashed variants.

    Reads `email`, `phone`, `first_name`, `last_name`, `external_id` (and `country` as the
    phone's default region) where present, adds the `*_sha256` columns, drops the
    plaintext columns, and returns the frame with a count of dropped values by reason.
    Hashed values already present in `*_sha256` columns are kept unless a plaintext
    value provides one; such a value that is not a digest is hashed as plaintext (an
    upper-case digest is lower-cased), so nothing personal is stored in the clear. The
    ingest paths drop and count such values before they get here
    (`records.drop_malformed_prehashed`); hashing them is the safety net for any other
    caller.
    Each distinct value is normalised and hashed once; `known_phones` holds `hash_phone`
    results computed ahead (`phone_hash_arguments`), by its arguments. It is first read
    after every other column is hashed, so it can be a mapping whose values a worker is
    still computing (ingest's `PhonesHashedAhead`).
    """
    dropped: Counter[str] = Counter()
    index = frame.index
    region = (
        _phone_regions(frame["country"])
        if "country" in frame.columns
        else pd.Series(None, index=index, dtype="object")
    )
    # Values sent under the hashed names: digests pass through, anything else is hashed.
    for target, (field_name, position) in _HASHED_COLUMN_SOURCES.items():
        if target not in frame.columns:
            continue
        given = _as_text(frame[target])
        if not given.notna().any():
            continue
        hasher, targets, regional = _HASHERS[field_name]
        outputs, reasons = _map_distinct(
            given, hasher, region if regional else None, len(targets) + 1
        )
        frame[target] = pd.Series(outputs[position], index=index, dtype="object")
        dropped.update({f"{target}_{r.split('_', 1)[-1]}": n for r, n in reasons.items()})
    for field_name, (hasher, targets, regional) in _HASHERS.items():
        if field_name not in frame.columns:
            continue
        values = _as_text(frame.pop(field_name))  # `drop` would copy the other columns
        if not values.notna().any():
            continue
        outputs, reasons = _map_distinct(
            values,
            hasher,
            region if regional else None,
            len(targets) + 1,
            known_phones if hasher is hash_phone else None,
        )
        dropped.update(reasons)
        for target, column in zip(targets, outputs, strict=False):
            hashed = pd.Series(column, index=index, dtype="object")
            if target in frame.columns:
                hashed = hashed.where(hashed.notna(), frame[target].astype("object"))
            frame[target] = hashed
    # A digest given for one variant only stands in for the other, as a digest passed in
    # the plaintext field does (which form the sender hashed is unknown).
    for first, second in VARIANT_PAIRS:
        if first in frame.columns or second in frame.columns:
            for column in (first, second):
                if column not in frame.columns:
                    frame[column] = pd.Series(None, index=index, dtype="object")
            frame[first] = frame[first].where(frame[first].notna(), frame[second])
            frame[second] = frame[second].where(frame[second].notna(), frame[first])
    for target in _HASHED_COLUMN_SOURCES:
        if target in frame.columns:
            frame[target] = events.as_string(frame[target])
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
