"""Meta Conversions API: `POST /meta/{version}/{pixel_id}/events?access_token=...`.

What each check rests on (Meta's Conversions API and Graph API docs, and PLATFORMS.md):

* Body: JSON `{"data": [...], "test_event_code"?}`; the Graph API also takes the same
  fields form-encoded (`data=<json>`), which is accepted too. `access_token` may be in
  the query or the form body.
* At most 1,000 events a request; the batch is all-or-nothing: one bad event fails the
  whole request with HTTP 400, `OAuthException` code 100, naming the event's index.
* Every event needs `event_name`, `event_time` (Unix seconds) and `action_source` (one of
  Meta's documented values); `action_source: website` also needs `event_source_url` and
  `user_data.client_user_agent`.
* `event_time` more than 7 days old fails the request (code 100, subcode 2804003, "Event
  Timestamp Too Old"); more than a minute in the future fails too (subcode 2804004 is
  assumed for it). A millisecond-sized time is a future time, reported as such.
* `user_data` em, ph, fn, ln, ge, db, ct, st, zp, country, external_id: SHA-256, 64
  lowercase hex, a string or an array of them. Meta only *recommends* hashing
  external_id; this emulator requires it because the platform never sends it in clear.
  `client_ip_address`, `client_user_agent`, `fbc`, `fbp` must not be hashed; `fbc` must
  look like `fb.<subdomain index>.<creation time>.<fbclid>`.
* Missing token: the brief's choice, HTTP 400 `OAuthException` code 190 (the Graph API
  itself answers code 104 "An access token is required" for a wholly missing token; a
  destination should treat 104 and 190 alike).
* Success: `{"events_received": n, "messages": [], "fbtrace_id": "..."}`.
* Errors: `{"error": {"message", "type", "code", "error_subcode"?, "is_transient",
  "error_user_title"?, "error_user_msg"?, "fbtrace_id"}}` (Graph API error handling docs).
"""

from __future__ import annotations

import re
import time
from typing import Any, Final
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conversion_platform.emulator.checks import (
    DAY,
    Problem,
    hashed_error,
    non_empty_string,
    plaintext_error,
    unix_seconds_problem,
)
from conversion_platform.emulator.respond import json_response, new_id, retry_after_headers
from conversion_platform.emulator.scripting import apply_script
from conversion_platform.emulator.state import EmulatorState, ScriptedResponse

PLATFORM: Final = "meta"
MAX_EVENTS: Final = 1000
MAX_AGE_SECONDS: Final = 7 * DAY
MAX_FUTURE_SECONDS: Final = 60

ACTION_SOURCES: Final = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
HASHED_FIELDS: Final = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
PLAIN_FIELDS: Final = ("client_ip_address", "client_user_agent", "fbp")
_FBC: Final = re.compile(r"fb\.[0-2]\.\d+\..+")
_VERSION: Final = re.compile(r"v\d+\.\d+")
#: Graph API error codes Meta documents as temporary (retry later).
TRANSIENT_CODES: Final = frozenset({1, 2, 4, 17, 341})

SUBCODE_TOO_OLD: Final = 2804003
SUBCODE_IN_FUTURE: Final = 2804004  # assumed; Meta's docs list the old-event subcode only


def error_body(
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    user_title: str | None = None,
    user_msg: str | None = None,
    error_type: str = "OAuthException",
) -> dict[str, Any]:
    """A Graph API error object."""
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["is_transient"] = code in TRANSIENT_CODES
    if user_title is not None:
        error["error_user_title"] = user_title
    if user_msg is not None:
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = new_id(8)
    return {"error": error}


def scripted_error(entry: ScriptedResponse) -> Response:
    """A scripted failure in Graph API form, with Meta's usual code for the status."""
    status = entry.status or 500
    if status in (401, 403):
        code, message = 190, "Error validating access token: the session is invalid."
    elif status == 429:
        code, message = 4, "Application request limit reached"
    elif status >= 500:
        code, message = 2, "An unexpected error has occurred. Please retry your request later."
    else:
        code, message = 100, "Invalid parameter"
    if type(entry.error_code) is int:
        code = entry.error_code
    body = error_body(code, entry.message or message, subcode=entry.error_subcode)
    return json_response(body, status, retry_after_headers(entry.retry_after))


def check_event(index: int, event: object, now: float) -> Problem | None:
    """The first problem of one event, or None."""
    if not isinstance(event, dict):
        return Problem("type", f"data[{index}]", "must be an object", index)
    if not non_empty_string(event.get("event_name")):
        return Problem("required", f"data[{index}].event_name", "is required", index)
    time_problem = unix_seconds_problem(
        event.get("event_time"), now, max_age=MAX_AGE_SECONDS, max_future=MAX_FUTURE_SECONDS
    )
    if time_problem is not None:
        kind, message = time_problem
        if event.get("event_time") is None:
            kind, message = "required", "is required"
        return Problem(kind, f"data[{index}].event_time", message, index)
    action_source = event.get("action_source")
    if action_source is None:
        return Problem("required", f"data[{index}].action_source", "is required", index)
    if action_source not in ACTION_SOURCES:
        return Problem("invalid", f"data[{index}].action_source", "is not a valid value", index)
    user_data = event.get("user_data")
    if not isinstance(user_data, dict):
        return Problem("required", f"data[{index}].user_data", "is required", index)
    if action_source == "website":
        if not non_empty_string(event.get("event_source_url")):
            field = f"data[{index}].event_source_url"
            return Problem("required", field, "is required for website events", index)
        if "client_user_agent" not in user_data:
            field = f"data[{index}].user_data.client_user_agent"
            return Problem("required", field, "is required for website events", index)
    return check_user_data(index, user_data)


def check_user_data(index: int, user_data: dict[str, Any]) -> Problem | None:
    """Hashed fields hashed, plaintext fields in clear, fbc well-formed."""
    for name in HASHED_FIELDS:
        value = user_data.get(name)
        if value is not None:
            reason = hashed_error(value, allow_list=True)
            if reason is not None:
                field = f"data[{index}].user_data.{name}"
                return Problem("not_hashed", field, reason, index)
    external_id = user_data.get("external_id")
    if external_id is not None:
        reason = hashed_error(external_id, allow_list=True)
        if reason is not None:
            field = f"data[{index}].user_data.external_id"
            return Problem("not_hashed", field, reason, index)
    for name in PLAIN_FIELDS:
        value = user_data.get(name)
        if value is not None:
            reason = plaintext_error(value)
            if reason is not None:
                field = f"data[{index}].user_data.{name}"
                return Problem("hashed_plaintext", field, reason, index)
    fbc = user_data.get("fbc")
    if fbc is not None and (type(fbc) is not str or _FBC.fullmatch(fbc) is None):
        field = f"data[{index}].user_data.fbc"
        message = "must look like fb.1.<creation time>.<fbclid>, unhashed"
        return Problem("invalid", field, message, index)
    return None


def problem_response(problem: Problem) -> Response:
    """HTTP 400 in Meta's words for a refused request."""
    where = "" if problem.index is None else f" (event at index {problem.index})"
    user_msg = f"{problem.field} {problem.message}{where}."
    if problem.kind == "too_old":
        body = error_body(
            100,
            "Invalid parameter",
            subcode=SUBCODE_TOO_OLD,
            user_title="Event Timestamp Too Old",
            user_msg=f"The timestamp for this event is too far in the past. {user_msg}",
        )
    elif problem.kind in ("in_future", "milliseconds"):
        body = error_body(
            100,
            "Invalid parameter",
            subcode=SUBCODE_IN_FUTURE,
            user_title="Event Timestamp Too Far In The Future",
            user_msg=f"The timestamp for this event is in the future. {user_msg}",
        )
    else:
        body = error_body(
            100, "Invalid parameter", user_title="Invalid Parameter", user_msg=user_msg
        )
    return json_response(body, 400)


def read_body(request: Request, body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The request's fields (JSON or form-encoded) and the access token, if any."""
    token = request.query_params.get("access_token")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        form = parse_qs(body.decode("utf-8", errors="replace"))
        fields: dict[str, Any] = {key: values[-1] for key, values in form.items()}
        token = token or fields.pop("access_token", None)
        if "data" in fields:
            try:
                fields["data"] = orjson.loads(fields["data"])
            except orjson.JSONDecodeError:
                return None, token
        return fields, token
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, token
    if not isinstance(parsed, dict):
        return None, token
    return parsed, token or parsed.get("access_token")


def routes(state: EmulatorState) -> list[Route]:
    """Meta's route, bound to one emulator state."""

    async def events(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        scripted = await apply_script(
            state, PLATFORM, path=path, body=body, formatter=scripted_error
        )
        if scripted is not None:
            return scripted
        response, accepted_ids = handle(request, body, state)
        state.record(
            PLATFORM,
            path=path,
            status=response.status_code,
            body=body,
            accepted=accepted_ids is not None,
            accepted_ids=accepted_ids,
        )
        return response

    return [Route("/meta/{version}/{pixel_id}/events", events, methods=["POST"])]


def handle(
    request: Request, body: bytes, state: EmulatorState
) -> tuple[Response, list[str | None] | None]:
    """Check one request; the response and the ids of the events taken (None if refused)."""
    version = request.path_params["version"]
    pixel_id = request.path_params["pixel_id"]
    if _VERSION.fullmatch(version) is None:
        message = f"Unknown path components: /{version}/{pixel_id}/events"
        return json_response(error_body(2500, message), 400), None
    if not pixel_id.isdigit():
        message = (
            f"Unsupported post request. Object with ID '{pixel_id}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation."
        )
        body_out = error_body(100, message, subcode=33, error_type="GraphMethodException")
        return json_response(body_out, 400), None
    fields, token = read_body(request, body)
    if not token:
        body_out = error_body(190, "Invalid OAuth access token - Cannot parse access token")
        return json_response(body_out, 400), None
    if fields is None:
        problem = Problem("invalid", "data", "must be a JSON object with a data array")
        return problem_response(problem), None
    data = fields.get("data")
    if not isinstance(data, list) or not data:
        return problem_response(Problem("required", "data", "must be a non-empty array")), None
    if len(data) > MAX_EVENTS:
        message = f"holds {len(data)} events; at most {MAX_EVENTS} are allowed a request"
        return problem_response(Problem("too_many", "data", message)), None
    now = time.time()
    fail_ids, fail_reason = state.failing_ids(PLATFORM)
    ids: list[str | None] = []
    for index, event in enumerate(data):
        problem = check_event(index, event, now)
        if problem is not None:
            return problem_response(problem), None
        event_id = event.get("event_id")
        event_id = None if event_id is None else str(event_id)
        if event_id is not None and event_id in fail_ids:
            message = fail_reason or "was rejected by the emulator's failure script"
            field = f"data[{index}]"
            return problem_response(Problem("scripted", field, message, index)), None
        ids.append(event_id)
    payload = {"events_received": len(data), "messages": [], "fbtrace_id": new_id(8)}
    return json_response(payload), ids
