"""Sending a prepared request with `requests`: one keep-alive session, timeouts, no secrets leaked."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter

from conversion_platform.destinations.base import HttpRequest

CONNECT_TIMEOUT_SECONDS = 5.0


class TransportError(Exception):
    """The request got no HTTP answer (timeout, refused connection, ...).

    The message never includes the URL's query string, which may hold a token.
    """


def new_session(pool_size: int = 4) -> requests.Session:
    """A session that keeps connections alive across batches."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def send_request(
    session: requests.Session, request: HttpRequest, timeout_seconds: float
) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of the platform's answer; raises `TransportError` without one."""
    try:
        response = session.request(
            request.method,
            request.url,
            params={**request.params, **request.secret_params},
            headers={**request.headers, **request.secret_headers},
            data=request.body,
            timeout=(CONNECT_TIMEOUT_SECONDS, timeout_seconds),
        )
    except requests.Timeout as exc:
        raise TransportError(
            f"timed out after {timeout_seconds:g}s ({type(exc).__name__})"
        ) from None
    except requests.RequestException as exc:
        raise TransportError(f"no answer from {request.url}: {type(exc).__name__}") from None
    return response.status_code, response.content, dict(response.headers)
