"""The collector's HTTP plumbing: JSON error answers, bounded request bodies, JSON parsing.

Every refusal is `{"error": code, "message": text}` (plus `errors` where there are
several reasons), with the status and headers the refusal calls for.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success: status, machine-readable code, human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.errors = errors


def json_response(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> Response:
    payload: dict[str, Any] = {"error": error.code, "message": error.message}
    if error.errors is not None:
        payload["errors"] = error.errors
    return json_response(error.status, payload, {**(headers or {}), **error.headers})


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="collector"'}
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if length > limit:
            raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


#: Content-Encoding values `decode_body` undoes (besides none and `identity`).
GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its `Content-Encoding` undone: gzip (one or more members) or none.

    The decompressed size is held to `limit` too (413), decompressing no more than one byte
    past it, so a small bomb can't take memory; a stream that is not gzip, is cut short or
    has trailing bytes is 400 `bad_encoding`; another encoding is 415.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in GZIP_ENCODINGS:
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding[:40]!r} is not supported; send gzip or none",
        )
    parts: list[bytes] = []
    total = 0
    rest = body
    try:
        while True:
            stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            parts.append(stream.decompress(rest, limit + 1 - total))
            total += len(parts[-1])
            if total > limit or stream.unconsumed_tail:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"the body is larger than {limit} bytes once decompressed",
                )
            if not stream.eof:
                raise ApiError(400, "bad_encoding", "the gzip stream is cut short")
            rest = stream.unused_data
            if not rest.strip(b"\x00"):  # gzip(1) tolerates zero padding after the members
                break
    except zlib.error as exc:
        raise ApiError(400, "bad_encoding", f"the body is not a valid gzip stream: {exc}") from None
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    messages = {
        404: "no such endpoint",
        405: f"{request.method} is not allowed here",
    }
    return json_response(
        exc.status_code,
        {
            "error": codes.get(exc.status_code, "http_error"),
            "message": messages.get(exc.status_code, str(exc.detail)),
        },
        exc.headers,
    )


async def server_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s: %s", request.scope.get("path"), type(exc).__name__)
    return json_response(500, {"error": "internal_error", "message": "unexpected error"})
