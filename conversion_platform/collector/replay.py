"""Replaying recorded traffic through a running collector over HTTP, as an import source.

Backend events go to `POST /v1/events` in batches of up to 1,000; browser hits go one per
request to `POST /v1/pixel` with the headers the browser sent (user agent, cookies,
page) and the client address in `X-Forwarded-For`, as the site's reverse proxy would
(the collector must trust the replaying host as a proxy). The original time received
travels in the events' `received_at` and the hits' `X-Received-At` header, which the
collector honours only from an import source's write key.

The demo lands its synthetic day this way; the same path imports a recorded outage
buffer or a migration from another collector.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from conversion_platform import events
from conversion_platform.collector.browser import MPID_COOKIE

#: Statuses worth sending again: the collector stored nothing and said so.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 8

#: Fields of a recorded hit that the request carries in headers, or derives itself.
_HEADER_FIELDS = frozenset({"client_ip", "user_agent", "mpid", "received_at", "fbp", "fbc", "ttp"})
_DERIVED_FIELDS = frozenset(events.CLICK_ID_PARAMETERS.values())


@dataclass
class ReplayTotals:
    """What the collector answered: events accepted, refused (quarantined), failed."""

    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0


class CollectorClient:
    """A keep-alive HTTP/1.1 connection to one collector (one per thread)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            factory = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._connection = factory(self.host, self.port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """One POST; a broken connection is reopened and the request sent again once."""
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request("POST", path, body=body, headers=dict(headers))
                response = connection.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _jsonable(record: Mapping[str, Any], drop: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in record.items()
        if value is not None and key not in drop
    }


def _send(
    client: CollectorClient, path: str, body: bytes, headers: Mapping[str, str]
) -> tuple[int, bytes, int]:
    """POST with retries of what the collector refused for now; returns status, body,
    retries."""
    retries = 0
    while True:
        try:
            status, answer = client.post(path, body, headers)
        except (http.client.HTTPException, OSError):
            status, answer = 0, b""
        if status not in RETRYABLE_STATUSES and status != 0:
            return status, answer, retries
        if retries + 1 >= MAX_ATTEMPTS:
            return status, answer, retries
        retries += 1
        time.sleep(min(2.0, 0.05 * 2**retries))


def post_server_events(
    base_url: str,
    write_key: str,
    records: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 1_000,
) -> ReplayTotals:
    """Send backend events in batches; `received_at` is kept (an import source's right)."""
    totals = ReplayTotals()
    client = CollectorClient(base_url)
    headers = {"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"}
    try:
        for start in range(0, len(records), batch_size):
            batch = [_jsonable(r) for r in records[start : start + batch_size]]
            body = orjson.dumps({"events": batch})
            status, answer, retries = _send(client, "/v1/events", body, headers)
            totals.requests += 1
            totals.retries += retries
            if status == 200:
                result = orjson.loads(answer)
                totals.accepted += int(result["accepted"])
                totals.rejected += len(result["rejected"])
            else:
                totals.failed += len(batch)
    finally:
        client.close()
    return totals


def pixel_hit(
    record: Mapping[str, Any], write_key: str, site_origin: str
) -> tuple[bytes, dict[str, str]]:
    """The request a browser made for a recorded hit: the page's JSON and its headers."""
    body = orjson.dumps(_jsonable(record, _HEADER_FIELDS | _DERIVED_FIELDS))
    headers = {
        "Authorization": f"Bearer {write_key}",
        "Content-Type": "text/plain;charset=UTF-8",
        "Origin": site_origin,
    }
    if record.get("user_agent"):
        headers["User-Agent"] = str(record["user_agent"])
    if record.get("client_ip"):
        headers["X-Forwarded-For"] = str(record["client_ip"])
    cookies = [
        f"{name}={record[column]}"
        for name, column in (
            (MPID_COOKIE, "mpid"),
            ("_fbp", "fbp"),
            ("_fbc", "fbc"),
            ("_ttp", "ttp"),
        )
        if record.get(column)
    ]
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    received_at = record.get("received_at")
    if isinstance(received_at, datetime):
        headers["X-Received-At"] = received_at.isoformat()
    elif received_at is not None:
        headers["X-Received-At"] = str(received_at)
    return body, headers


def _http_request(host: str, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


async def _read_status(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length framed, as the collector answers); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _send_hits(
    host: str, port: int, hits: list[bytes], next_hit: Iterator[int], totals: ReplayTotals
) -> None:
    """One keep-alive connection sending hits until there are none left."""
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        for position in next_hit:
            retries = 0
            while True:
                status = 0
                try:
                    if connection is None:
                        connection = await asyncio.open_connection(host, port)
                    reader, writer = connection
                    writer.write(hits[position])
                    status = await _read_status(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    if connection is not None:
                        connection[1].close()
                    connection = None
                if status and status not in RETRYABLE_STATUSES:
                    break
                if retries + 1 >= MAX_ATTEMPTS:
                    break
                retries += 1
                await asyncio.sleep(min(2.0, 0.05 * 2**retries))
            totals.requests += 1
            totals.retries += retries
            if status == 200:
                totals.accepted += 1
            elif status == 400:
                totals.rejected += 1
            else:
                totals.failed += 1
    finally:
        if connection is not None:
            connection[1].close()


def send_pixel_hits(
    base_url: str,
    write_key: str,
    records: Iterable[Mapping[str, Any]],
    *,
    site_origin: str,
    connections: int = 16,
) -> ReplayTotals:
    """Send recorded hits one per request, as browsers do, over a few keep-alive
    connections at once (asyncio: the sender should cost the machine little)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    hits = [
        _http_request(f"{host}:{port}", "/v1/pixel", *pixel_hit(r, write_key, site_origin))
        for r in records
    ]
    totals = ReplayTotals()
    positions = iter(range(len(hits)))

    async def run() -> None:
        await asyncio.gather(
            *(_send_hits(host, port, hits, positions, totals) for _ in range(connections))
        )

    asyncio.run(run())
    return totals
