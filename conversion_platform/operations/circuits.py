"""Destination circuits: after an auth failure, stop sending until the credentials change.

Retrying with credentials the platform refused only hammers it (and may get the account
flagged), so an auth failure (`auth` in the delivery log) opens the destination's circuit.
While it is open nothing is sent: the hourly runs record the hour's events as pending with
the reason, and the retry sensor requests no runs. It closes when the credential values
in the environment change (compared through a short fingerprint, never stored in clear)
or when an operator runs `conversion-platform circuit reset --destination D`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from conversion_platform.destinations.base import STATUS_AUTH
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.store.operations_tables import destination_circuits
from conversion_platform.store.tables import delivery_batches, delivery_events
from conversion_platform.store.timecodes import from_micros, now_micros

CIRCUIT_OPEN = "open"
CIRCUIT_CLOSED = "closed"
CLOSED_BY_CREDENTIALS = "credentials_changed"
CLOSED_BY_OPERATOR = "operator"

_FINGERPRINT_DOMAIN = b"conversion-platform/credential-fingerprint/v1\0"


def credential_fingerprint(config: DestinationConfig) -> str:
    """16 hex digits of SHA-256 over the destination's credential values (missing ones empty).

    Enough to notice a change; too short, and salted with the variable names, to say
    anything useful about the secret itself.
    """
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN)
    for key, variable in sorted(config.credentials.items()):
        for part in (key, variable, os.environ.get(variable, "")):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def redact_credentials(text: str, config: DestinationConfig) -> str:
    """`text` with any credential value of `config` replaced (some platforms echo a bad token)."""
    for variable in config.credentials.values():
        value = os.environ.get(variable)
        if value and len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text


@dataclass(frozen=True)
class Circuit:
    destination: str
    state: str
    reason: str | None
    credential_fingerprint: str | None
    last_auth_batch_id: int
    opened_at: datetime | None
    closed_at: datetime | None
    closed_by: str | None

    @property
    def is_open(self) -> bool:
        return self.state == CIRCUIT_OPEN

    def describe(self) -> str:
        if self.is_open:
            since = self.opened_at.strftime("%Y-%m-%d %H:%M UTC") if self.opened_at else "?"
            return f"circuit open since {since}: {self.reason}"
        return f"circuit closed ({self.closed_by or 'never opened'})"


@dataclass(frozen=True)
class CircuitChange:
    destination: str
    opened: bool
    reason: str


def _circuit(row: sa.RowMapping) -> Circuit:
    return Circuit(
        destination=row["destination"],
        state=row["state"],
        reason=row["reason"],
        credential_fingerprint=row["credential_fingerprint"],
        last_auth_batch_id=int(row["last_auth_batch_id"] or 0),
        opened_at=from_micros(row["opened_at_us"]) if row["opened_at_us"] else None,
        closed_at=from_micros(row["closed_at_us"]) if row["closed_at_us"] else None,
        closed_by=row["closed_by"],
    )


def read_circuit(conn: Connection, destination: str) -> Circuit | None:
    row = (
        conn.execute(
            sa.select(destination_circuits).where(destination_circuits.c.destination == destination)
        )
        .mappings()
        .first()
    )
    return _circuit(row) if row else None


def read_circuits(engine: Engine) -> dict[str, Circuit]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(destination_circuits)).mappings().all()
    return {r["destination"]: _circuit(r) for r in rows}


def _latest_auth_failure(conn: Connection, destination: str) -> tuple[int, str] | None:
    row = conn.execute(
        sa.select(delivery_batches.c.id, delivery_batches.c.http_status)
        .where(
            delivery_batches.c.destination == destination,
            delivery_batches.c.status == STATUS_AUTH,
        )
        .order_by(delivery_batches.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    batch_id, http_status = int(row[0]), row[1]
    reason = conn.execute(
        sa.select(delivery_events.c.reason)
        .where(delivery_events.c.destination == destination, delivery_events.c.batch_id == batch_id)
        .limit(1)
    ).scalar()
    return batch_id, str(reason or f"HTTP {http_status}")


def _upsert(conn: Connection, destination: str, values: dict[str, object]) -> None:
    values = {**values, "updated_at_us": now_micros()}
    updated = conn.execute(
        destination_circuits.update()
        .where(destination_circuits.c.destination == destination)
        .values(**values)
    )
    if updated.rowcount == 0:
        conn.execute(destination_circuits.insert().values(destination=destination, **values))


def sync_circuit(engine: Engine, config: DestinationConfig) -> CircuitChange | None:
    """Open the circuit on an auth failure not yet acted on; close it when credentials changed.

    Idempotent: called by every delivery run and every retry-sensor tick.
    """
    fingerprint = credential_fingerprint(config)
    with engine.begin() as conn:
        circuit = read_circuit(conn, config.name)
        if circuit is not None and circuit.is_open:
            if circuit.credential_fingerprint != fingerprint:
                _upsert(
                    conn,
                    config.name,
                    {
                        "state": CIRCUIT_CLOSED,
                        "closed_at_us": now_micros(),
                        "closed_by": CLOSED_BY_CREDENTIALS,
                    },
                )
                return CircuitChange(config.name, False, "credentials changed")
            return None
        failure = _latest_auth_failure(conn, config.name)
        already_seen = circuit.last_auth_batch_id if circuit else 0
        if failure is None or failure[0] <= already_seen:
            return None
        batch_id, reason = failure
        reason = redact_credentials(f"auth failed: {reason}", config)[:500]
        _upsert(
            conn,
            config.name,
            {
                "state": CIRCUIT_OPEN,
                "reason": reason,
                "credential_fingerprint": fingerprint,
                "last_auth_batch_id": batch_id,
                "opened_at_us": now_micros(),
                "closed_at_us": None,
                "closed_by": None,
            },
        )
        return CircuitChange(config.name, True, reason)


def reset_circuit(engine: Engine, destination: str) -> Circuit | None:
    """Close the destination's circuit (an operator fixed the cause); None if it never opened."""
    with engine.begin() as conn:
        circuit = read_circuit(conn, destination)
        if circuit is None:
            return None
        if circuit.is_open:
            _upsert(
                conn,
                destination,
                {
                    "state": CIRCUIT_CLOSED,
                    "closed_at_us": now_micros(),
                    "closed_by": CLOSED_BY_OPERATOR,
                },
            )
        return read_circuit(conn, destination)


def hold_reason(engine: Engine, config: DestinationConfig) -> str | None:
    """Why nothing may be sent to this destination now, or None when its circuit is closed."""
    sync_circuit(engine, config)
    with engine.connect() as conn:
        circuit = read_circuit(conn, config.name)
    if circuit is None or not circuit.is_open:
        return None
    return (
        f"not sent: {config.name} {circuit.describe()}; fix the credentials or run "
        f"`conversion-platform circuit reset --destination {config.name}`"
    )
