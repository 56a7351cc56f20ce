"""Snapchat Conversions API v3: `POST /snapchat/v3/{pixel_id}/events` and `.../events/validate`.

What each check rests on (Snap's Conversions API v3 pages "Using the API" and "Verify Set
Up", PLATFORMS.md, and responses seen in public integrations):

* Token: `?access_token=` (or `Authorization: Bearer`). Without one: HTTP 401
  `{"status": "INVALID", "reason": ...}` (the status word is assumed).
* Body `{"data": [...]}`, at most 2,000 events.
* Required per event (Verify Set Up): `event_name`, `event_time`, `action_source`, and
  `event_source_url` for WEB events. `event_time` is Unix seconds (Snap's examples), at
  most 37 days old ("Timestamp invalid or out of range").
* `user_data` em, ph, fn, ln, ge, db, ct, st, zp, country, external_id: SHA-256 (64
  lowercase hex), a string or a list ("Unhashed PII"); `client_ip_address`,
  `client_user_agent`, `sc_click_id`, `sc_cookie1` in clear. At least one matching key
  must be present: em, ph, external_id, madid, sc_click_id, sc_cookie1, or
  client_ip_address with client_user_agent ("Insufficient PII"; the exact list is the
  emulator's reading of Snap's "at least one of" list).
* PURCHASE events need `custom_data.value` and `custom_data.currency` ("Missing price
  and/or currency in Purchase events").
* Every failure above is HTTP 400 `{"status": "INVALID", "reason": ...}`; the reason names
  the event index. Success is HTTP 200 `{"status": "VALID", "reason": ...}` (the response
  public integrations log). `/events/validate` answers the same but records nothing.
* Assumed: one invalid event refuses the whole request; events scripted to fail are
  refused the same way.
"""

from __future__ import annotations

import time
from typing import Final

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
from conversion_platform.emulator.respond import (
    json_response,
    parse_json_object,
    retry_after_headers,
)
from conversion_platform.emulator.scripting import apply_script
from conversion_platform.emulator.state import EmulatorState, ScriptedResponse

PLATFORM: Final = "snapchat"
MAX_EVENTS: Final = 2000
MAX_AGE_SECONDS: Final = 37 * DAY
MAX_FUTURE_SECONDS: Final = 300  # assumed tolerance for clock skew
ACTION_SOURCES: Final = frozenset({"WEB", "MOBILE_APP", "OFFLINE"})
HASHED_FIELDS: Final = (
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
)
PLAIN_FIELDS: Final = ("client_ip_address", "client_user_agent", "sc_click_id", "sc_cookie1")
MATCH_KEYS: Final = ("em", "ph", "external_id", "madid", "sc_click_id", "sc_cookie1")
SUCCESS_REASON: Final = "Events have been processed successfully."


def answer(
    status_word: str, reason: str, http: int, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"status": status_word, "reason": reason}, http, headers)


def scripted_error(entry: ScriptedResponse) -> Response:
    """A scripted failure in Snap's `{"status", "reason"}` form."""
    status = entry.status or 500
    if status in (401, 403):
        default = "Unauthorized: the access token is invalid for this pixel."
    elif status == 429:
        default = "Too many requests."
    elif status >= 500:
        default = "Internal server error."
    else:
        default = "Invalid request."
    reason = entry.message or (str(entry.error_code) if entry.error_code is not None else default)
    word = "INVALID" if status < 500 else "ERROR"
    return answer(word, reason, status, retry_after_headers(entry.retry_after))


def check_event(index: int, event: object, now: float) -> Problem | None:
    """The first problem of one event, or None."""
    where = f"data[{index}]"
    if not isinstance(event, dict):
        return Problem("invalid", where, "must be an object", index)
    if not non_empty_string(event.get("event_name")):
        return Problem("required", f"{where}.event_name", "is required", index)
    event_time = event.get("event_time")
    if event_time is None:
        return Problem("required", f"{where}.event_time", "is required", index)
    time_problem = unix_seconds_problem(
        event_time, now, max_age=MAX_AGE_SECONDS, max_future=MAX_FUTURE_SECONDS
    )
    if time_problem is not None:
        message = f"Timestamp invalid or out of range: {time_problem[1]}"
        return Problem(time_problem[0], f"{where}.event_time", message, index)
    action_source = event.get("action_source")
    if action_source is None:
        return Problem("required", f"{where}.action_source", "is required", index)
    source = action_source.upper() if type(action_source) is str else None
    if source not in ACTION_SOURCES:
        message = "must be WEB, MOBILE_APP or OFFLINE"
        return Problem("enum", f"{where}.action_source", message, index)
    if source == "WEB" and not non_empty_string(event.get("event_source_url")):
        message = "is required for WEB events"
        return Problem("required", f"{where}.event_source_url", message, index)
    problem = check_user_data(where, event.get("user_data"))
    if problem is None and str(event.get("event_name")).upper() == "PURCHASE":
        custom = event.get("custom_data")
        if (
            not isinstance(custom, dict)
            or custom.get("value") is None
            or not custom.get("currency")
        ):
            message = "Missing price and/or currency in Purchase events"
            problem = Problem("required", f"{where}.custom_data", message)
    if problem is not None:
        return Problem(problem.kind, problem.field, problem.message, index)
    return None


def check_user_data(where: str, user_data: object) -> Problem | None:
    if not isinstance(user_data, dict):
        return Problem("required", f"{where}.user_data", "Insufficient PII: user_data is required")
    for name in HASHED_FIELDS:
        value = user_data.get(name)
        if value is not None:
            reason = hashed_error(value, allow_list=True)
            if reason is not None:
                return Problem("not_hashed", f"{where}.user_data.{name}", f"Unhashed PII: {reason}")
    for name in PLAIN_FIELDS:
        value = user_data.get(name)
        if value is not None:
            reason = plaintext_error(value)
            if reason is not None:
                return Problem("hashed_plaintext", f"{where}.user_data.{name}", reason)
    if not any(user_data.get(key) for key in MATCH_KEYS) and not (
        user_data.get("client_ip_address") and user_data.get("client_user_agent")
    ):
        message = "Insufficient PII: no key to match the event to a Snapchatter"
        return Problem("insufficient", f"{where}.user_data", message)
    return None


def invalid(problem: Problem) -> Response:
    return answer("INVALID", f"{problem.field}: {problem.message}", 400)


def access_token(request: Request) -> str | None:
    token = request.query_params.get("access_token")
    if token:
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def handle(
    request: Request, body: bytes, state: EmulatorState
) -> tuple[Response, list[str | None] | None]:
    """Check and answer one request; the response and the taken event ids (None if refused)."""
    if access_token(request) is None:
        return answer("INVALID", "Unauthorized: an access token is required.", 401), None
    payload = parse_json_object(body)
    if payload is None:
        return invalid(Problem("invalid", "body", "must be a JSON object")), None
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
        event_id = None if event_id is None else str(event_id)
        if event_id is not None and event_id in fail_ids:
            reason = fail_reason or "rejected by the emulator's failure script"
            return invalid(Problem("scripted", f"data[{index}]", reason, index)), None
        ids.append(event_id)
    return answer("VALID", SUCCESS_REASON, 200), ids


def routes(state: EmulatorState) -> list[Route]:
    """Snap's routes, bound to one emulator state."""

    async def events(request: Request) -> Response:
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

    async def validate(request: Request) -> Response:
        body = await request.body()
        response, _ = handle(request, body, state)
        ok = response.status_code == 200
        path = request.url.path
        state.record(
            PLATFORM,
            path=path,
            status=response.status_code,
            body=body,
            accepted=ok,
            validate_only=True,
        )
        return response

    return [
        Route("/snapchat/v3/{pixel_id}/events", events, methods=["POST"]),
        Route("/snapchat/v3/{pixel_id}/events/validate", validate, methods=["POST"]),
    ]
