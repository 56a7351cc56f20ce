"""Small helpers to answer requests: orjson bodies, request ids, body parsing."""

from __future__ import annotations

import os
from typing import Any

import orjson
from starlette.responses import Response

_NO_BODY: Any = object()


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson."""
    return Response(
        orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


def retry_after_headers(retry_after: int | None) -> dict[str, str] | None:
    """A `Retry-After` header when a delay is given."""
    return None if retry_after is None else {"Retry-After": str(retry_after)}


def new_id(n_bytes: int = 12) -> str:
    """A random hex id, for trace and request ids."""
    return os.urandom(n_bytes).hex()


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def decode_for_display(body: bytes) -> Any:
    """A recorded body as JSON when it parses, else as text (for the control API)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace")
