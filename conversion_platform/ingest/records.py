"""Turning incoming records (plaintext, as sent) into the stored canonical model.

Shared by server-log ingest and the collector, so both normalise and hash personal data
the same way before anything is stored.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pandas as pd

from conversion_platform import events
from conversion_platform.transform.normalise import (
    SHA256_HEX,
    VARIANT_PAIRS,
    hash_email,
    hash_external_id,
    hash_identity_columns,
    hash_name,
    hash_phone,
    normalise_city,
    normalise_country,
    normalise_location_columns,
    normalise_postal_code,
    normalise_region,
)
from conversion_platform.transform.page_urls import click_ids_from_url, scrub_url

#: Prefix of event ids the platform derived itself (the sender gave none); dedupe treats
#: them as absent and falls back to order ids and content fingerprints.
GENERATED_EVENT_ID_PREFIX = "cpgen_"

#: Fields that don't identify the event's content: left out of generated ids, so a
#: re-sent or re-logged event gets the same id.
_VOLATILE_FIELDS = frozenset({"received_at", "logged_at", "event_id"})

_MAX_FIELD_LENGTH = 4_096

#: What a coerced record holds: the incoming fields plus pre-hashed identity columns.
_RECORD_FIELDS: tuple[str, ...] = (*events.INCOMING_FIELDS, *events.HASHED_IDENTITY_COLUMNS)
#: Incoming fields coerced as plain text (the others have their own coercion).
_PLAIN_TEXT_FIELDS: tuple[str, ...] = tuple(
    f
    for f in events.INCOMING_FIELDS
    if f not in ("event_time", "received_at", "value", "items", "source")
    and not f.startswith("consent_")
)


class RecordError(ValueError):
    """An incoming record that can't be a conversion; the message is the reason."""


def parse_timestamp(value: Any, field: str) -> datetime:
    """An aware UTC datetime from ISO 8601 with offset, or Unix seconds / milliseconds."""
    if isinstance(value, bool) or value is None:
        raise RecordError(f"{field} is missing")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise RecordError(f"{field} is not a finite number")
        seconds = value / 1000 if value > 10_000_000_000 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise RecordError(f"{field} is out of range") from exc
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{field} is not a timestamp")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise RecordError(f"{field} is not ISO 8601: {value[:40]!r}") from exc
    if moment.tzinfo is None:
        raise RecordError(f"{field} has no UTC offset")
    return moment.astimezone(UTC)


def generated_event_id(source: str, record: Mapping[str, Any]) -> str:
    """A deterministic id from the record's source and content (volatile fields excluded)."""
    content = {k: v for k, v in record.items() if k not in _VOLATILE_FIELDS and v is not None}
    digest = hashlib.sha256(
        source.encode() + b"\x00" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS, default=str)
    ).hexdigest()
    return GENERATED_EVENT_ID_PREFIX + digest[:32]


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        raise RecordError(f"{field} must be a string")
    elif isinstance(value, int | float):
        text = str(value)
    else:
        raise RecordError(f"{field} must be a string")
    if len(text) > _MAX_FIELD_LENGTH:
        raise RecordError(f"{field} is longer than {_MAX_FIELD_LENGTH} characters")
    return text or None


def _value(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RecordError("value must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"value is not a number: {str(value)[:40]!r}") from exc
    if not math.isfinite(number):
        raise RecordError("value is not a finite number")
    return number


def _consent(value: Any, field: str) -> str:
    if value is None or value == "":
        return events.CONSENT_UNKNOWN
    if isinstance(value, bool):
        return events.CONSENT_GRANTED if value else events.CONSENT_DENIED
    text = str(value).strip().lower()
    if text in ("granted", "true", "yes", "1"):
        return events.CONSENT_GRANTED
    if text in ("denied", "false", "no", "0"):
        return events.CONSENT_DENIED
    if text == "unknown":
        return events.CONSENT_UNKNOWN
    raise RecordError(f"{field} must be granted, denied or unknown")


def _items(value: Any) -> str | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RecordError("items is not a JSON array") from exc
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise RecordError("items must be an array of objects")
    return orjson.dumps(value).decode()


def coerce_record(
    record: Mapping[str, Any],
    source: str,
    received_at: datetime,
    *,
    default_event_time: datetime | None = None,
) -> dict[str, Any]:
    """Check and coerce one incoming record to the model's plain types (still plaintext).

    Raises `RecordError` with the reason when what makes it a conversion is broken.
    """
    if not isinstance(record, Mapping):
        raise RecordError("event must be a JSON object")
    event_name = _text(record.get("event_name"), "event_name")
    if not event_name:
        raise RecordError("event_name is missing")
    raw_time = record.get("event_time")
    if raw_time is None and default_event_time is not None:
        event_time = default_event_time
    else:
        event_time = parse_timestamp(raw_time, "event_time")
    out: dict[str, Any] = dict.fromkeys(_RECORD_FIELDS)
    get = record.get
    for field in _PLAIN_TEXT_FIELDS:
        value = get(field)
        if value is not None:  # (a missing field stays None)
            out[field] = _text(value, field)
    out["event_name"] = event_name.lower()
    out["event_time"] = event_time
    out["received_at"] = received_at
    out["source"] = source
    out["value"] = _value(record.get("value"))
    out["items"] = _items(record.get("items"))
    out["consent_ad_user_data"] = _consent(
        record.get("consent_ad_user_data"), "consent_ad_user_data"
    )
    out["consent_ad_personalization"] = _consent(
        record.get("consent_ad_personalization"), "consent_ad_personalization"
    )
    if out["currency"]:
        out["currency"] = out["currency"].upper()
    out["action_source"] = (out["action_source"] or "website").lower()
    # Pre-hashed identifiers sent under the stored names are kept (they pass through).
    for column in events.HASHED_IDENTITY_COLUMNS:
        value = get(column)
        if value is not None:
            out[column] = _text(value, column)
    if not out["event_id"]:
        out["event_id"] = generated_event_id(source, record)
    # Click ids in the landing URL count as sent; then the URLs lose anything personal.
    for column, click_id in click_ids_from_url(out["page_url"]).items():
        out[column] = out[column] or click_id
    out["page_url"] = scrub_url(out["page_url"])
    out["referrer"] = scrub_url(out["referrer"])
    return out


def drop_malformed_prehashed(frame: pd.DataFrame) -> tuple[pd.DataFrame, Counter[str]]:
    """Pre-hashed identity values (sent under the stored names) that aren't SHA-256 digests
    are dropped and counted: kept, they could be plaintext personal data at rest.

    Both ways in apply it before hashing (`records_to_frame` for the collector,
    `record_columns.stored_frame` for server logs), so a plain address sent as
    `email_sha256` is counted as `email_sha256_malformed` whichever way it came."""
    dropped: Counter[str] = Counter()
    for column in events.HASHED_IDENTITY_COLUMNS:
        if column not in frame.columns or not frame[column].notna().any():
            continue  # a column nobody sent (the usual case) costs one null check
        values = frame[column].astype("string").str.strip().str.lower()
        bad = values.notna() & ~values.str.fullmatch(r"[0-9a-f]{64}").fillna(False)
        if bad.any():
            dropped[f"{column}_malformed"] += int(bad.sum())
        frame[column] = values.mask(bad)
    return frame, dropped


def records_to_frame(
    records: Sequence[Mapping[str, Any]],
    *,
    hour_of: Sequence[datetime] | None = None,
    value_verified: bool | Sequence[bool] = True,
) -> tuple[pd.DataFrame, Counter[str]]:
    """Coerced records to the stored model: location normalised, personal fields hashed.

    Returns the frame (with the `hour` column when `hour_of` is given) and the count of
    identity values dropped by reason (an email without `@`, a junk placeholder, ...).
    """
    columns = list(_RECORD_FIELDS)
    frame = (
        pd.DataFrame.from_records(list(records), columns=columns)
        if records
        else pd.DataFrame(columns=columns)
    )
    frame = normalise_location_columns(frame)
    frame, malformed = drop_malformed_prehashed(frame)
    frame, dropped = hash_identity_columns(frame)
    dropped.update(malformed)
    frame["value_verified"] = value_verified
    for column in events.TIMESTAMP_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    if hour_of is not None:
        frame[events.HOUR_COLUMN] = pd.to_datetime(
            pd.Series(list(hour_of), dtype="object"), utc=True
        )
        return events.conform(frame, events.CANONICAL_COLUMNS), dropped
    return events.conform(frame, events.STORED_COLUMNS), dropped


def _stored_text(value: Any) -> str | None:
    """Text of a present value (as `records_to_frame` reads it), None for a missing one."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


#: Stored columns copied from a coerced record as they are (everything not derived below).
_COPIED_COLUMNS: tuple[str, ...] = tuple(
    c
    for c in events.STORED_COLUMNS
    if c not in events.HASHED_IDENTITY_COLUMNS
    and c not in events.LOCATION_FIELDS
    and c != "value_verified"
)


def _prehashed(value: Any, column: str, dropped: Counter[str]) -> str | None:
    """A pre-hashed value as `drop_malformed_prehashed` keeps it (or drops and counts it)."""
    text = _stored_text(value)
    if text is None:
        return None
    text = text.strip().lower()
    if not SHA256_HEX.fullmatch(text):
        dropped[f"{column}_malformed"] += 1
        return None
    return text


def record_to_stored_row(
    record: Mapping[str, Any], *, value_verified: bool, dropped: Counter[str] | None = None
) -> dict[str, Any]:
    """One coerced record in the stored model, as a plain dict: the per-row twin of
    `records_to_frame`.

    Same normalisers, same hashing, same treatment of pre-hashed values, same counts of
    dropped identity values (added to `dropped`); a property test holds the two equal. It
    exists because building a DataFrame costs milliseconds, more than a whole small request
    is worth on the collector's hot path. Timestamps stay aware datetimes.
    """
    dropped = Counter() if dropped is None else dropped
    get = record.get
    row: dict[str, Any] = dict(zip(_COPIED_COLUMNS, map(get, _COPIED_COLUMNS), strict=True))
    country_text = _stored_text(record.get("country"))
    country = normalise_country(country_text) if country_text is not None else None
    city = _stored_text(record.get("city"))
    region = _stored_text(record.get("region"))
    postal = _stored_text(record.get("postal_code"))
    row["country"] = country
    row["city"] = normalise_city(city) if city is not None else None
    row["region"] = normalise_region(region) if region is not None else None
    row["postal_code"] = normalise_postal_code(postal, country) if postal is not None else None

    hashed: dict[str, Any] = dict.fromkeys(events.HASHED_IDENTITY_COLUMNS)
    for column in events.HASHED_IDENTITY_COLUMNS:
        value = get(column)
        if value is not None:
            hashed[column] = _prehashed(value, column, dropped)

    def plaintext(field: str) -> str | None:
        return _stored_text(record.get(field))

    email = plaintext("email")
    if email is not None:
        email_hash, google_hash, reason = hash_email(email)
        hashed["email_sha256"] = email_hash or hashed["email_sha256"]
        hashed["email_google_sha256"] = google_hash or hashed["email_google_sha256"]
        if reason:
            dropped[reason] += 1
    phone = plaintext("phone")
    if phone is not None:
        phone_region = country.upper() if country and len(country) == 2 else None
        phone_hash, digits_hash, reason = hash_phone(phone, phone_region)
        hashed["phone_sha256"] = phone_hash or hashed["phone_sha256"]
        hashed["phone_digits_sha256"] = digits_hash or hashed["phone_digits_sha256"]
        if reason:
            dropped[reason] += 1
    for field, column in (("first_name", "first_name_sha256"), ("last_name", "last_name_sha256")):
        name = plaintext(field)
        if name is not None:
            name_hash, reason = hash_name(name)
            hashed[column] = name_hash or hashed[column]
            if reason:
                dropped[reason] += 1
    external_id = plaintext("external_id")
    if external_id is not None:
        id_hash, reason = hash_external_id(external_id)
        hashed["external_id_sha256"] = id_hash or hashed["external_id_sha256"]
        if reason:
            dropped[reason] += 1
    # A digest given for one form only stands in for the other, as in `hash_identity_columns`.
    for first, second in VARIANT_PAIRS:
        hashed[first] = hashed[first] or hashed[second]
        hashed[second] = hashed[second] or hashed[first]
    row.update(hashed)
    row["value_verified"] = value_verified
    return row
