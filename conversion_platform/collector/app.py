"""The collector's ASGI app (Starlette): the server API, the pixel, health and OpenAPI.

| route | what |
|---|---|
| `POST /v1/events` | a backend's batch: `{"events": [...]}`, at most 1,000 events and 1 MB (decompressed, when sent with `Content-Encoding: gzip`), `Authorization: Bearer <write key>` |
| `POST /v1/pixel` | one browser event as JSON (sendBeacon or fetch); sets `_mpid` |
| `GET /v1/pixel.gif` | one browser event from the query string; answers a 1x1 GIF; sets `_mpid` |
| `GET /pixel.js` | the pixel script |
| `GET /healthz` | 200 while the database answers |
| `GET /openapi.json` | the API description |

Every answer to a request that stores something is sent after the commit that made it
durable (`group_commit`). Errors are JSON: `{"error": code, "message": text}`.

Replaying recorded traffic: a source configured as an import source may set each event's
`received_at` on the server API, and a pixel hit's with the `X-Received-At` header (its
write key as a bearer token on the pixel routes too). That is how the demo lands a past
day honestly through this API; live senders can't move their events in time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from conversion_platform import events
from conversion_platform.collector.browser import (
    BrowserRequest,
    browser_event,
    mpid_cookie,
    mpid_of,
    new_mpid,
)
from conversion_platform.collector.client_ip import is_trusted, resolve_client_ip
from conversion_platform.collector.config import (
    SITE_KEY,
    CollectorConfig,
    WriteKeySource,
    load_collector_config,
)
from conversion_platform.collector.database import collector_engine
from conversion_platform.collector.event_checks import event_errors
from conversion_platform.collector.group_commit import (
    GroupCommitter,
    LandingRequest,
    Overloaded,
    StorageUnavailable,
)
from conversion_platform.collector.http import (
    ApiError,
    decode_body,
    error_response,
    http_error,
    json_response,
    parse_json,
    read_body,
    server_error,
    unauthorized,
)
from conversion_platform.collector.openapi import openapi_document
from conversion_platform.collector.rate_limit import RateLimiter, retry_after_header
from conversion_platform.collector.write_keys import authenticate, bearer_token
from conversion_platform.ingest.landing_writer import (
    EventCheck,
    LandingResult,
    PreparedLanding,
    merge_prepared,
    prepare_landing,
    quarantined_payload,
)
from conversion_platform.ingest.records import RecordError, parse_timestamp
from conversion_platform.settings import Settings

logger = logging.getLogger(__name__)

#: A transparent 1x1 GIF.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
#: How far ahead of the collector's clock an imported `received_at` may be.
CLOCK_SKEW = timedelta(minutes=5)
RECEIVED_AT_HEADER = "x-received-at"
#: Events checked and hashed between two yields to the event loop (about 5 ms of work).
PREPARE_SLICE = 100


class Collector:
    """The endpoints over one configuration, one database engine and one writer."""

    def __init__(self, config: CollectorConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.committer = GroupCommitter(engine, max_queued=config.max_queued_events)
        self.limiter = RateLimiter(config.rate_per_second, config.rate_burst)
        self.pixel_script = (
            resources.files("conversion_platform.collector")
            .joinpath("static/pixel.js")
            .read_bytes()
        )
        self.openapi = orjson.dumps(openapi_document())

    # --- shared steps -------------------------------------------------------------------

    def _peer(self, request: Request) -> str | None:
        return request.client.host if request.client else None

    def client_ip(self, request: Request) -> str | None:
        return resolve_client_ip(
            self._peer(request), request.headers.get("x-forwarded-for"), self.config.trusted_proxies
        )

    def is_https(self, request: Request) -> bool:
        proto = request.headers.get("x-forwarded-proto")
        if proto and is_trusted(self._peer(request), self.config.trusted_proxies):
            return proto.split(",")[0].strip().lower() == "https"
        return request.scope.get("scheme") == "https"

    def cookie_secure(self, request: Request) -> bool:
        mode = self.config.cookie_secure
        return mode == "always" or (mode == "auto" and self.is_https(request))

    def source_of(self, request: Request, *, required: bool) -> WriteKeySource | None:
        header = request.headers.get("authorization")
        if header is None and not required:
            return None
        source = authenticate(bearer_token(header), self.config.sources)
        if source is None:
            if header is None:
                raise unauthorized("a write key is required: Authorization: Bearer <key>")
            raise unauthorized("the write key is not valid")
        return source

    async def land(self, prepared: PreparedLanding) -> LandingResult:
        """Commit prepared events (with the request's other writers) and return the result."""
        try:
            return await self.committer.land(LandingRequest(prepared))
        except Overloaded:
            raise ApiError(
                503,
                "overloaded",
                "too many events wait for a commit; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        except StorageUnavailable as exc:
            raise ApiError(
                503,
                "storage_unavailable",
                f"nothing was stored: {exc}",
                headers={"Retry-After": "5"},
            ) from None

    async def land_events(
        self,
        records: list[Any],
        source: str,
        received_at: datetime | list[datetime],
        *,
        origin: str,
        site: str | None,
        check: EventCheck,
    ) -> LandingResult:
        """Check and hash `records` on the event loop, a slice at a time (so a large batch
        doesn't hold up the hits behind it), then commit them."""
        per_record = not isinstance(received_at, datetime)
        parts = []
        for start in range(0, len(records), PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            parts.append(
                prepare_landing(
                    records[start : start + PREPARE_SLICE],
                    source,
                    received_at[start : start + PREPARE_SLICE] if per_record else received_at,  # type: ignore[index]
                    origin=origin,
                    site=site,
                    check=check,
                    first_index=start,
                )
            )
        return await self.land(parts[0] if len(parts) == 1 else merge_prepared(parts))

    async def quarantine_payload(
        self, body: bytes | Any, source: str, received_at: datetime, origin: str, reason: str
    ) -> None:
        """Keep an unusable payload (redacted) with its reason before refusing it."""
        entry = quarantined_payload(body, source, received_at, origin, reason)
        await self.land(
            PreparedLanding(result=LandingResult(), rows=[], quarantined=[entry], source=source)
        )

    def imported_received_at(self, value: Any, now: datetime) -> datetime:
        """An import source's `received_at`, checked against the collector's clock."""
        moment = parse_timestamp(value, "received_at")
        if moment > now + CLOCK_SKEW:
            raise RecordError("received_at is in the future")
        if now - moment > timedelta(hours=self.config.import_max_age_hours):
            raise RecordError(
                f"received_at is more than {self.config.import_max_age_hours:g} hours in the past"
            )
        return moment

    # --- POST /v1/events ----------------------------------------------------------------

    async def post_events(self, request: Request) -> Response:
        request_id = secrets.token_hex(6)
        headers = {"X-Request-Id": request_id}
        try:
            source = self.source_of(request, required=True)
            assert source is not None
            limit = self.config.max_body_bytes
            body = await read_body(request, limit)
            body = decode_body(body, request.headers.get("content-encoding"), limit)
            now = datetime.now(UTC)
            origin = f"collector:/v1/events:{source.name}:{request_id}"
            try:
                payload = parse_json(body)
                batch = payload.get("events") if isinstance(payload, dict) else None
                if not isinstance(batch, list):
                    raise ApiError(
                        400, "invalid_request", 'the body must be a JSON object {"events": [...]}'
                    )
            except ApiError as exc:
                await self.quarantine_payload(
                    body, events.SOURCE_SERVER, now, origin, f"{exc.code}: {exc.message}"
                )
                raise
            if not batch:
                raise ApiError(400, "invalid_request", "events is empty")
            if len(batch) > self.config.max_events_per_request:
                raise ApiError(
                    413,
                    "too_many_events",
                    f"{len(batch)} events; at most {self.config.max_events_per_request} a request",
                )
            received: datetime | list[datetime] = now
            check = event_errors
            if source.import_source:
                received, check = self._imported_times(batch, now)
            result = await self.land_events(
                batch,
                events.SOURCE_SERVER,
                received,
                origin=origin,
                site=source.site,
                check=check,
            )
        except ApiError as exc:
            return error_response(exc, headers)
        return json_response(200, _landing_payload(result), headers)

    def _imported_times(
        self, batch: list[Any], now: datetime
    ) -> tuple[list[datetime], Callable[[Mapping[str, Any]], list[str]]]:
        times: list[datetime] = []
        time_errors: dict[int, str] = {}
        for record in batch:
            value = record.get("received_at") if isinstance(record, Mapping) else None
            if value is None:
                times.append(now)
                continue
            try:
                times.append(self.imported_received_at(value, now))
            except RecordError as exc:
                times.append(now)
                time_errors[id(record)] = str(exc)

        def check(record: Mapping[str, Any]) -> list[str]:
            errors = event_errors(record)
            if id(record) in time_errors:
                errors.append(time_errors[id(record)])
            return errors

        return times, check

    # --- the pixel -------------------------------------------------------------------

    def cors_headers(self, request: Request) -> dict[str, str]:
        """CORS headers for an allowed Origin; 403 for a browser page not allowed."""
        origin = request.headers.get("origin")
        if origin is None:
            return {}
        if not self.config.origin_allowed(origin.rstrip("/")):
            raise ApiError(403, "origin_not_allowed", f"origin {origin[:200]!r} is not allowed")
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    async def preflight(self, request: Request) -> Response:
        if request.headers.get("access-control-request-method") is None:
            return error_response(ApiError(400, "bad_request", "not a CORS preflight request"))
        try:
            headers = self.cors_headers(request)
        except ApiError as exc:
            return error_response(exc)
        if not headers:
            return error_response(ApiError(400, "bad_request", "a preflight needs an Origin"))
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
            }
        )
        return Response(status_code=204, headers=headers)

    async def pixel_post(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return await self.preflight(request)
        return await self._pixel(request, from_query=False)

    async def pixel_gif(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return await self.preflight(request)
        if request.method == "HEAD":  # a link checker or prefetcher, not a page's hit
            return Response(
                PIXEL_GIF, media_type="image/gif", headers={"Cache-Control": "no-store"}
            )
        return await self._pixel(request, from_query=True)

    async def _pixel(self, request: Request, *, from_query: bool) -> Response:
        request_id = secrets.token_hex(6)
        headers = {"X-Request-Id": request_id, "Cache-Control": "no-store"}
        try:
            headers.update(self.cors_headers(request))
            source = self.source_of(request, required=False)
            now = datetime.now(UTC)
            received_at = now
            replayed = request.headers.get(RECEIVED_AT_HEADER)
            if replayed is not None:
                if source is None or not source.import_source:
                    raise ApiError(
                        403, "forbidden", "X-Received-At is honoured only from an import source"
                    )
                try:
                    received_at = self.imported_received_at(_header_time(replayed), now)
                except RecordError as exc:
                    raise ApiError(400, "bad_request", f"X-Received-At: {exc}") from None
            client_ip = self.client_ip(request)
            if source is None:
                wait = self.limiter.acquire(client_ip or "unknown")
                if wait > 0:
                    raise ApiError(
                        429,
                        "rate_limited",
                        "too many hits from this address",
                        headers={"Retry-After": retry_after_header(wait)},
                    )
            cookies = request.cookies
            mpid = mpid_of(cookies) or new_mpid()
            cookie_headers = {
                "Set-Cookie": mpid_cookie(
                    mpid, secure=self.cookie_secure(request), domain=self.config.cookie_domain
                )
            }
            origin = f"collector:{request.scope['path']}:{request_id}"
            payload: Any
            if from_query:
                payload = dict(request.query_params)
            else:
                body = await read_body(request, self.config.max_pixel_body_bytes)
                try:
                    payload = parse_json(body)
                    if not isinstance(payload, dict):
                        raise ApiError(400, "invalid_request", "the body must be a JSON object")
                except ApiError as exc:
                    await self.quarantine_payload(
                        body, events.SOURCE_PIXEL, received_at, origin, f"{exc.code}: {exc.message}"
                    )
                    raise
            site = payload.get("site")
            if site is None and source is not None:
                site = source.site
            if site is not None and not self._site_allowed(site):
                raise ApiError(400, "unknown_site", "site is not a configured site key")
            browser = BrowserRequest(
                received_at=received_at,
                client_ip=client_ip,
                user_agent=request.headers.get("user-agent"),
                cookies=cookies,
                referer=request.headers.get("referer"),
            )
            record = browser_event(payload, browser, mpid)
            result = await self.land_events(
                [record],
                events.SOURCE_PIXEL,
                received_at,
                origin=origin,
                site=site,
                check=event_errors,
            )
        except ApiError as exc:
            return error_response(exc, headers)
        headers.update(cookie_headers)
        if result.rejected:
            errors = result.errors.get(0) or [result.rejected[0][1]]
            return error_response(
                ApiError(
                    400, "invalid_event", "the event was refused (quarantined)", errors=errors
                ),
                headers,
            )
        if from_query:
            return Response(PIXEL_GIF, media_type="image/gif", headers=headers)
        answer = _landing_payload(result)
        if isinstance(record.get("event_id"), str):
            answer["event_id"] = record["event_id"]
        return json_response(200, answer, headers)

    def _site_allowed(self, site: Any) -> bool:
        if not isinstance(site, str) or not SITE_KEY.match(site):
            return False
        return not self.config.sites or site in self.config.sites

    # --- the rest ---------------------------------------------------------------------

    async def script(self, request: Request) -> Response:
        return Response(
            self.pixel_script,
            media_type="application/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.openapi, media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        def ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except Exception as exc:
            logger.warning("health check: database unreachable (%s)", type(exc).__name__)
            return json_response(503, {"status": "unavailable", "database": "unreachable"})
        stats = self.committer.stats
        return json_response(
            200,
            {
                "status": "ok",
                "database": "reachable",
                "commits": {
                    "groups": stats.groups,
                    "requests": stats.requests,
                    "events": stats.events,
                    "largest_group": stats.largest_group,
                    "failed_groups": stats.failed_groups,
                    "write_seconds": round(stats.write_seconds, 3),
                },
            },
        )


def _header_time(value: str) -> Any:
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        return text


def _landing_payload(result: LandingResult) -> dict[str, Any]:
    return {
        "accepted": result.accepted,
        "rejected": [
            {"index": index, "errors": result.errors.get(index) or [reason]}
            for index, reason in result.rejected
        ],
    }


class CollectorApp:
    """The ASGI app: the three hot routes are dispatched directly, the rest by Starlette.

    A pixel hit is small, and Starlette's middleware and router cost about a fifth of
    its handling; the hot routes skip them (with their own last-resort error answer).
    Everything else (preflights, 404, 405, the script, health, OpenAPI, lifespan) goes
    through the Starlette app, which also declares every route.
    """

    def __init__(self, collector: Collector, starlette: Starlette) -> None:
        self.collector = collector
        self.starlette = starlette
        self.state = starlette.state
        self._direct: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("POST", "/v1/events"): collector.post_events,
            ("POST", "/v1/pixel"): collector.pixel_post,
            ("GET", "/v1/pixel.gif"): collector.pixel_gif,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self._direct.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.starlette(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            response = await server_error(request, exc)
        await response(scope, receive, send)


#: How long a thread may hold the interpreter's lock while another waits (Python's
#: default is 5 ms).
SWITCH_INTERVAL_SECONDS = 0.0005


def tune_interpreter() -> None:
    """Settings for a process that serves the collector, made once it has started.

    * The startup heap (modules, phone metadata, the app) is moved out of the garbage
      collector's sight (`gc.freeze`): a full collection otherwise walks it all, about 70 ms
      during which nothing is answered, the largest part of the pixel's p99 at a steady
      rate. Objects made while serving are collected as usual.
    * The switch interval is cut to 0.5 ms: the writer thread needs the interpreter's lock
      a few times per commit (to bind the rows, between statements, to hand back the
      result) and, while the event loop is busy, waited up to 5 ms each time: a busy
      loop's commits took 16 ms instead of 5 (p99 of a hit's wait for its commit 230 ms
      against 70 in the same conditions).
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def create_app(
    config: CollectorConfig, engine: Engine, *, own_process: bool = False
) -> CollectorApp:
    """The collector over `engine` (whose schema exists) with `config`. `own_process`: the
    app has its process to itself (a served worker), so it may tune the interpreter
    (`tune_interpreter`) once started."""
    collector = Collector(config, engine)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await collector.committer.start()
        if own_process:
            tune_interpreter()
        try:
            yield
        finally:
            await collector.committer.stop()

    routes = [
        Route("/v1/events", collector.post_events, methods=["POST"]),
        Route("/v1/pixel", collector.pixel_post, methods=["POST", "OPTIONS"]),
        Route("/v1/pixel.gif", collector.pixel_gif, methods=["GET", "OPTIONS"]),
        Route("/pixel.js", collector.script, methods=["GET"]),
        Route("/healthz", collector.healthz, methods=["GET"]),
        Route("/openapi.json", collector.openapi_json, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.collector = collector
    return CollectorApp(collector, app)


def app_from_env() -> CollectorApp:
    """The app for `uvicorn --factory` (each worker process): config and database from the
    environment (`CONVERSION_PLATFORM_DB_URL`, `CONVERSION_PLATFORM_COLLECTOR_*`)."""
    config = load_collector_config()
    engine = collector_engine(Settings.from_env().db_url, config)
    return create_app(config, engine, own_process=True)
