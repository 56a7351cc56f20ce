"""The emulator's own control API, under `/_emulator`: stats, recent requests, scripts, reset.

* `GET  /_emulator/health` -> `{"ok": true}`
* `GET  /_emulator/stats` -> `{platform: {"requests", "rejected_requests",
  "validate_requests", "events_accepted", "accepted_by_event_id"}}`
* `GET  /_emulator/requests/{platform}?limit=N` -> `{"platform", "requests": [{"received_at",
  "path", "status", "accepted", "body"}]}` (oldest first; `limit` defaults to 10)
* `POST /_emulator/reset` (optionally `?platform=`) -> `{"reset": [platforms]}`
* `GET  /_emulator/{platform}/script` -> the script left
* `POST /_emulator/{platform}/script` with `{"responses"?: [...], "fail_event_ids"?: [...],
  "fail_reason"?: str, "status_processing_polls"?: int (google)}`: each key given replaces
  that part of the script; answers the script now in force.
* `GET  /_emulator/google/request_status/{request_id}` -> which transactionIds of a Data
  Manager request were reported failed, and why (the real API only gives counts).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conversion_platform.emulator.respond import (
    decode_for_display,
    json_response,
    parse_json_object,
)
from conversion_platform.emulator.state import (
    PLATFORMS,
    EmulatorState,
    ScriptedResponse,
    ScriptError,
)

DEFAULT_REQUEST_LIMIT = 10


def _unknown_platform(platform: str) -> Response:
    return json_response({"error": f"unknown platform {platform!r}; one of {list(PLATFORMS)}"}, 404)


def parse_script(payload: dict[str, Any]) -> dict[str, Any]:
    """Validate a script body into `EmulatorState.set_script` arguments."""
    known = {"responses", "fail_event_ids", "fail_reason", "status_processing_polls"}
    unknown = set(payload) - known
    if unknown:
        raise ScriptError(f"unknown keys: {sorted(unknown)}; expected some of {sorted(known)}")
    responses = payload.get("responses")
    if responses is not None:
        if not isinstance(responses, list):
            raise ScriptError("responses must be a list")
        responses = [ScriptedResponse.parse(item) for item in responses]
    fail_ids = payload.get("fail_event_ids")
    if fail_ids is not None:
        if not isinstance(fail_ids, list) or not all(type(i) in (str, int) for i in fail_ids):
            raise ScriptError("fail_event_ids must be a list of ids")
        fail_ids = [str(i) for i in fail_ids]
    fail_reason = payload.get("fail_reason")
    if fail_reason is not None and type(fail_reason) is not str:
        raise ScriptError("fail_reason must be a string")
    polls = payload.get("status_processing_polls")
    if polls is not None and (type(polls) is not int or polls < 0):
        raise ScriptError("status_processing_polls must be a non-negative integer")
    return {
        "responses": responses,
        "fail_event_ids": fail_ids,
        "fail_reason": fail_reason,
        "google_processing_polls": polls,
    }


def routes(state: EmulatorState) -> list[Route]:
    """The control routes, bound to one emulator state."""

    async def health(request: Request) -> Response:
        return json_response({"ok": True})

    async def stats(request: Request) -> Response:
        return json_response(state.stats())

    async def recent(request: Request) -> Response:
        platform = request.path_params["platform"]
        if platform not in PLATFORMS:
            return _unknown_platform(platform)
        raw_limit = request.query_params.get("limit", str(DEFAULT_REQUEST_LIMIT))
        if not raw_limit.isdigit():
            return json_response({"error": "limit must be a non-negative integer"}, 400)
        items = state.recent(platform, int(raw_limit))
        shown = [{**item, "body": decode_for_display(item["body"])} for item in items]
        return json_response({"platform": platform, "requests": shown})

    async def reset(request: Request) -> Response:
        platform = request.query_params.get("platform")
        if platform is not None and platform not in PLATFORMS:
            return _unknown_platform(platform)
        state.reset(platform)
        return json_response({"reset": list(PLATFORMS) if platform is None else [platform]})

    async def script(request: Request) -> Response:
        platform = request.path_params["platform"]
        if platform not in PLATFORMS:
            return _unknown_platform(platform)
        if request.method == "GET":
            return json_response(state.script_view(platform))
        payload = parse_json_object(await request.body())
        if payload is None:
            return json_response({"error": "the script must be a JSON object"}, 400)
        try:
            arguments = parse_script(payload)
        except ScriptError as error:
            return json_response({"error": str(error)}, 400)
        if arguments["google_processing_polls"] is not None and platform != "google":
            return json_response({"error": "status_processing_polls is for google only"}, 400)
        return json_response(state.set_script(platform, **arguments))

    async def google_request_status(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        status = state.peek_google_status(request_id)
        if status is None:
            return json_response({"error": f"no Data Manager request {request_id!r}"}, 404)
        return json_response(
            {"request_id": request_id, "record_count": status.record_count, "failed": status.failed}
        )

    return [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/requests/{platform}", recent, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/{platform}/script", script, methods=["GET", "POST"]),
        Route(
            "/_emulator/google/request_status/{request_id}", google_request_status, methods=["GET"]
        ),
    ]
