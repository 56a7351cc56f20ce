"""TikTok Events API 2.0: `POST /tiktok/open_api/v1.3/event/track/` with header `Access-Token`.

What each check rests on (TikTok's Events API 2.0 docs and request samples, TikTok
Business API return codes, public forwarders' issue threads):

* TikTok answers HTTP 200 with a `code` in the body: 0 success (`{"code": 0, "message":
  "OK", "request_id", "data": {}}`), 40002 invalid parameters (seen in public threads as
  `{"code": 40002, "message": "Invalid value for event_id: ...", "request_id"}`), 40100
  too many requests, 40105 access token missing or incorrect, 40001 no permission.
* Body: `event_source` (web, app, offline, crm) and `event_source_id` (pixel code) at the
  top, `data` with at most 1,000 events, `test_event_code` optional.
* An event: `event` (name) and `event_time` (Unix seconds, an integer) required;
  `event_id` a string when given. `user.email`, `user.phone`, `user.external_id`: SHA-256
  (64 lowercase hex), a string or a list of them; `ttclid`, `ttp`, `ip`, `user_agent` in
  clear. No event-age limit is documented for the endpoint, so none is enforced.
* Assumed (not documented): one invalid event refuses the whole request with code 40002
  whose message names the event index (`data[3].event_time ...`); scripted 5xx answers
  keep their HTTP status with body code 50000; events scripted to fail are refused the
  same way as invalid ones.
"""

from __future__ import annotations

import time
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conversion_platform.emulator.checks import (
    Problem,
    hashed_error,
    non_empty_string,
    plaintext_error,
    unix_seconds_problem,
)
from conversion_platform.emulator.respond import (
    json_response,
    new_id,
    parse_json_object,
    retry_after_headers,
)
from conversion_platform.emulator.scripting import apply_script
from conversion_platform.emulator.state import EmulatorState, ScriptedResponse

PLATFORM: Final = "tiktok"
MAX_EVENTS: Final = 1000
EVENT_SOURCES: Final = frozenset({"web", "app", "offline", "crm"})
HASHED_FIELDS: Final = ("email", "phone", "external_id")
PLAIN_FIELDS: Final = ("ttclid", "ttp", "ip", "user_agent")

CODE_OK: Final = 0
CODE_NO_PERMISSION: Final = 40001
CODE_INVALID_PARAMS: Final = 40002
CODE_RATE_LIMITED: Final = 40100
CODE_ACCESS_TOKEN: Final = 40105
CODE_SYSTEM_ERROR: Final = 50000


def answer(
    code: int, message: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A TikTok Business API envelope."""
    payload: dict[str, Any] = {"code": code, "message": message, "request_id": new_id(16)}
    payload["data"] = {}
    return json_response(payload, status, headers)


def scripted_error(entry: ScriptedResponse) -> Response:
    """A scripted failure as TikTok sends it: HTTP 200 and a body code, except 5xx."""
    status = entry.status or 500
    if status >= 500:
        code, message, http = CODE_SYSTEM_ERROR, "System error", status
    elif status == 429:
        code, message, http = CODE_RATE_LIMITED, "Too many requests. Please retry later.", 200
    elif status == 401:
        code, message, http = CODE_ACCESS_TOKEN, "Access token is missing or incorrect.", 200
    elif status == 403:
        code, message, http = CODE_NO_PERMISSION, "No permission to operate this pixel.", 200
    else:
        code, message, http = CODE_INVALID_PARAMS, "Invalid parameters.", 200
    if type(entry.error_code) is int:
        code = entry.error_code
    if entry.literal:
        http = status
    return answer(code, entry.message or message, http, retry_after_headers(entry.retry_after))


def check_event(index: int, event: object, now: float) -> Problem | None:
    """The first problem of one event, or None."""
    where = f"data[{index}]"
    if not isinstance(event, dict):
        return Problem("invalid", where, "must be an object", index)
    if not non_empty_string(event.get("event")):
        return Problem("required", f"{where}.event", "is required", index)
    event_time = event.get("event_time")
    if event_time is None:
        return Problem("required", f"{where}.event_time", "is required", index)
    time_problem = unix_seconds_problem(event_time, now, max_age=None, max_future=None)
    if time_problem is not None:
        return Problem(time_problem[0], f"{where}.event_time", time_problem[1], index)
    event_id = event.get("event_id")
    if event_id is not None and type(event_id) is not str:
        return Problem("type", f"{where}.event_id", "not a valid string", index)
    user = event.get("user")
    if user is None:
        return None
    if not isinstance(user, dict):
        return Problem("invalid", f"{where}.user", "must be an object", index)
    for name in HASHED_FIELDS:
        value = user.get(name)
        if value is not None:
            reason = hashed_error(value, allow_list=True)
            if reason is not None:
                return Problem("not_hashed", f"{where}.user.{name}", reason, index)
    for name in PLAIN_FIELDS:
        value = user.get(name)
        if value is not None:
            reason = plaintext_error(value)
            if reason is not None:
                return Problem("hashed_plaintext", f"{where}.user.{name}", reason, index)
    return None


def invalid(problem: Problem) -> Response:
    return answer(CODE_INVALID_PARAMS, f"Invalid value for {problem.field}: {problem.message}.")


def handle(
    request: Request, body: bytes, state: EmulatorState
) -> tuple[Response, list[str | None] | None]:
    """Check and answer one request; the response and the taken event ids (None if refused)."""
    if not request.headers.get("access-token", "").strip():
        return answer(CODE_ACCESS_TOKEN, "Access token is missing or incorrect."), None
    payload = parse_json_object(body)
    if payload is None:
        return invalid(Problem("invalid", "body", "must be a JSON object")), None
    if payload.get("event_source") not in EVENT_SOURCES:
        message = "must be one of web, app, offline, crm"
        return invalid(Problem("enum", "event_source", message)), None
    if not non_empty_string(payload.get("event_source_id")):
        return invalid(Problem("required", "event_source_id", "is required")), None
    data = payload.get("data")
    if not isinstance(data, list) or not data:
        return invalid(Problem("required", "data", "must be a non-empty list")), None
    if len(data) > MAX_EVENTS:
        message = f"holds {len(data)} events; at most {MAX_EVENTS} are allowed a request"
        return invalid(Problem("too_many", "data", message)), None
    now = time.time()
    fail_ids, fail_reason = state.failing_ids(PLATFORM)
    ids: list[str | None] = []
    for index, event in enumerate(data):
        problem = check_event(index, event, now)
        if problem is not None:
            return invalid(problem), None
        event_id = event.get("event_id")
        if event_id is not None and event_id in fail_ids:
            reason = fail_reason or "rejected by the emulator's failure script"
            return invalid(Problem("scripted", f"data[{index}]", reason, index)), None
        ids.append(event_id)
    return answer(CODE_OK, "OK"), ids


def routes(state: EmulatorState) -> list[Route]:
    """TikTok's route, bound to one emulator state."""

    async def track(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        scripted = await apply_script(
            state, PLATFORM, path=path, body=body, formatter=scripted_error
        )
        if scripted is not None:
            return scripted
        response, ids = handle(request, body, state)
        state.record(
            PLATFORM,
            path=path,
            status=response.status_code,
            body=body,
            accepted=ids is not None,
            accepted_ids=ids,
        )
        return response

    return [Route("/tiktok/open_api/v1.3/event/track/", track, methods=["POST"])]
