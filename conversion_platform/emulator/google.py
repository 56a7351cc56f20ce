"""Google Data Manager API: `POST /google/v1/events:ingest`, `GET /google/v1/requestStatus:retrieve`.

What each check rests on: the Data Manager API v1 discovery document (datamanager.v1,
revision 2026-08) for field names and enums (IngestEventsRequest, Destination,
ProductAccount, Event, AdIdentifiers, UserData, UserIdentifier, AddressInfo, Consent,
IngestEventsResponse, RetrieveRequestStatusResponse, RequestStatusPerDestination,
ErrorInfo/ErrorCount), its "Limits and quotas" page, its ErrorReason enum and its
"Understand API errors" guide:

* Auth: `Authorization: Bearer <token>`; without it HTTP 401 `UNAUTHENTICATED`.
* `destinations`: required, 1 to 10 (TOO_MANY_DESTINATIONS); each needs an
  `operatingAccount` with `accountType` (ProductAccount enum) and `accountId`;
  `productDestinationId` (the conversion action) is required for a GOOGLE_ADS account.
* `events`: required, at most 2,000. Each needs `eventTimestamp` as an RFC 3339 string
  (a Unix number is refused). `eventSource` and `consent` values must be in their enums.
* `userData.userIdentifiers`: at most 10 an event; each holds exactly one of
  `emailAddress`, `phoneNumber` (SHA-256) or `address`. In an `address`, `givenName` and
  `familyName` are SHA-256 while `regionCode` (ISO 3166-1 alpha-2) and `postalCode` are
  plaintext; all four are required. Hashes must match `encoding` (HEX: 64 lowercase hex
  characters, as the brief asks; BASE64: 32 bytes), and `encoding` is required with
  user data.
* Ad identifiers (`gclid`, `gbraid`, `wbraid`) are plaintext.
* Fast fail: one invalid event fails the whole request, HTTP 400, google.rpc.Status
  `{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT", "details": [ErrorInfo
  with an ErrorReason such as INVALID_SHA256_FORMAT, BadRequest fieldViolations]}}`; the
  message and the field path name the event index (`events[3]...`).
* `validateOnly: true`: validated, not executed; success answers `{}`.
* Success: `{"requestId": "<uuid>"}`. The outcome per event is asynchronous:
  `requestStatus:retrieve?requestId=` answers `{"requestStatusPerDestination": [{
  "destination", "requestStatus": SUCCESS | PARTIAL_SUCCESS | FAILED | PROCESSING,
  "eventsIngestionStatus": {"recordCount"}, "errorInfo": {"errorCounts": [{"reason",
  "recordCount"}]}}]}` (int64 counts are strings in JSON). Like the real API it reports
  counts per reason, not which event failed; the emulator's control API
  (`GET /_emulator/google/request_status/{id}`) tells which transactionIds failed.

Asynchronous failures the emulator produces: events whose `transactionId` is scripted to
fail (reason PROCESSING_ERROR_REASON_INVALID_EVENT unless scripted otherwise), events
older than 90 days (PROCESSING_ERROR_REASON_EVENT_TOO_OLD; Google Ads' longest click
window), and events that carry user identifiers while `adUserData` consent is
CONSENT_DENIED (PROCESSING_ERROR_REASON_DENIED_CONSENT).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conversion_platform.emulator.checks import (
    DAY,
    Problem,
    is_number,
    is_sha256_base64,
    is_sha256_hex,
    non_empty_string,
    parse_rfc3339,
    plaintext_error,
)
from conversion_platform.emulator.respond import (
    json_response,
    parse_json_object,
    retry_after_headers,
)
from conversion_platform.emulator.scripting import apply_script
from conversion_platform.emulator.state import EmulatorState, GoogleRequestStatus, ScriptedResponse

PLATFORM: Final = "google"
MAX_EVENTS: Final = 2000
MAX_IDENTIFIERS: Final = 10
MAX_DESTINATIONS: Final = 10
MAX_AGE_SECONDS: Final = 90 * DAY
DOMAIN: Final = "datamanager.googleapis.com"

ACCOUNT_TYPES: Final = frozenset(
    {
        "GOOGLE_ADS",
        "DISPLAY_VIDEO_PARTNER",
        "DISPLAY_VIDEO_ADVERTISER",
        "DATA_PARTNER",
        "GOOGLE_ANALYTICS_PROPERTY",
        "GOOGLE_AD_MANAGER_AUDIENCE_LINK",
        "FLOODLIGHT_CONFIG",
    }
)
EVENT_SOURCES: Final = frozenset({"WEB", "APP", "IN_STORE", "PHONE", "MESSAGE", "OTHER"})
CONSENT_VALUES: Final = frozenset(
    {"CONSENT_STATUS_UNSPECIFIED", "CONSENT_GRANTED", "CONSENT_DENIED"}
)
ENCODINGS: Final = frozenset({"HEX", "BASE64"})

#: google.rpc.Code names by HTTP status, as Google's REST mapping pairs them.
CANONICAL_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
UNAUTHENTICATED_MESSAGE: Final = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential."
)

# Problem kinds -> Data Manager ErrorReason.
_REASONS: Final = {
    "required": "REQUIRED_FIELD_MISSING",
    "not_hashed": "INVALID_SHA256_FORMAT",
    "hashed_plaintext": "INVALID_FORMAT",
    "invalid": "INVALID_FORMAT",
    "type": "INVALID_FORMAT",
    "enum": "INVALID_ENUM_VALUE",
    "too_many_identifiers": "TOO_MANY_USER_IDENTIFIERS",
    "too_many_destinations": "TOO_MANY_DESTINATIONS",
    "destination": "INVALID_DESTINATION",
    "too_many": "INVALID_ARGUMENT",
    "country": "INVALID_COUNTRY_CODE",
    "postal": "INVALID_POSTAL_CODE",
}


def canonical_status(http_status: int) -> str:
    """The google.rpc.Code name for an HTTP status."""
    if http_status in CANONICAL_STATUS:
        return CANONICAL_STATUS[http_status]
    return "INTERNAL" if http_status >= 500 else "FAILED_PRECONDITION"


def rpc_error(
    http_status: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A google.rpc.Status error response, as Google's REST APIs send it."""
    error: dict[str, Any] = {
        "code": http_status,
        "message": message,
        "status": canonical_status(http_status),
    }
    if details:
        error["details"] = details
    return json_response({"error": error}, http_status, headers)


def error_info(reason: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": DOMAIN}


def scripted_error(entry: ScriptedResponse) -> Response:
    """A scripted failure as a google.rpc.Status, with an ErrorInfo reason."""
    status = entry.status or 500
    if status == 401:
        message = UNAUTHENTICATED_MESSAGE
    elif status == 429:
        message = "Resource has been exhausted (e.g. check quota)."
    elif status >= 500:
        message = "The service is currently unavailable."
    else:
        message = "Request contains an invalid argument."
    reason = str(entry.error_code) if entry.error_code is not None else canonical_status(status)
    return rpc_error(
        status,
        entry.message or message,
        [error_info(reason)],
        retry_after_headers(entry.retry_after),
    )


def bearer_token(request: Request) -> str | None:
    """The OAuth token of `Authorization: Bearer ...`, if present and non-empty."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def problem_response(problem: Problem) -> Response:
    """HTTP 400 INVALID_ARGUMENT naming the field (and the event index)."""
    reason = _REASONS.get(problem.kind, "INVALID_ARGUMENT")
    message = f"Invalid value at '{problem.field}': {problem.message}."
    violation = {"field": problem.field, "description": problem.message}
    details = [
        error_info(reason),
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]},
    ]
    return rpc_error(400, message, details)


# --- request checks ---------------------------------------------------------------------


def check_destinations(destinations: object) -> Problem | None:
    if not isinstance(destinations, list) or not destinations:
        return Problem("required", "destinations", "at least one destination is required")
    if len(destinations) > MAX_DESTINATIONS:
        message = f"at most {MAX_DESTINATIONS} destinations are allowed a request"
        return Problem("too_many_destinations", "destinations", message)
    for i, destination in enumerate(destinations):
        where = f"destinations[{i}]"
        if not isinstance(destination, dict):
            return Problem("destination", where, "must be an object")
        account = destination.get("operatingAccount")
        if not isinstance(account, dict):
            return Problem("required", f"{where}.operating_account", "is required")
        account_type = account.get("accountType")
        if account_type not in ACCOUNT_TYPES:
            return Problem("enum", f"{where}.operating_account.account_type", "is not valid")
        if not non_empty_string(account.get("accountId")):
            return Problem("required", f"{where}.operating_account.account_id", "is required")
        if account_type == "GOOGLE_ADS" and not non_empty_string(
            destination.get("productDestinationId")
        ):
            field = f"{where}.product_destination_id"
            return Problem("required", field, "is required for a Google Ads conversion action")
    return None


def check_hash(value: object, encoding: object) -> bool:
    if encoding == "BASE64":
        return is_sha256_base64(value)
    return is_sha256_hex(value)


def check_identifier(where: str, identifier: object, encoding: object) -> Problem | None:
    if not isinstance(identifier, dict):
        return Problem("invalid", where, "must be an object")
    present = [key for key in ("emailAddress", "phoneNumber", "address") if key in identifier]
    if len(present) != 1:
        message = "must hold exactly one of email_address, phone_number or address"
        return Problem("invalid", where, message)
    kind = present[0]
    if kind != "address":
        field = f"{where}.{'email_address' if kind == 'emailAddress' else 'phone_number'}"
        if not check_hash(identifier[kind], encoding):
            return Problem("not_hashed", field, f"must be a SHA-256 hash in {encoding} encoding")
        return None
    address = identifier["address"]
    if not isinstance(address, dict):
        return Problem("invalid", f"{where}.address", "must be an object")
    for key, name in (("givenName", "given_name"), ("familyName", "family_name")):
        if key not in address:
            return Problem("required", f"{where}.address.{name}", "is required")
        if not check_hash(address[key], encoding):
            message = f"must be a SHA-256 hash in {encoding} encoding"
            return Problem("not_hashed", f"{where}.address.{name}", message)
    region = address.get("regionCode")
    if region is None:
        return Problem("required", f"{where}.address.region_code", "is required")
    if type(region) is not str or len(region) != 2 or not region.isalpha():
        message = "must be a plaintext ISO 3166-1 alpha-2 code, not hashed"
        return Problem("country", f"{where}.address.region_code", message)
    postal = address.get("postalCode")
    if postal is None:
        return Problem("required", f"{where}.address.postal_code", "is required")
    reason = plaintext_error(postal)
    if reason is not None:
        return Problem("postal", f"{where}.address.postal_code", reason)
    return None


def check_consent(where: str, consent: object) -> Problem | None:
    if consent is None:
        return None
    if not isinstance(consent, dict):
        return Problem("invalid", where, "must be an object")
    for key, name in (("adUserData", "ad_user_data"), ("adPersonalization", "ad_personalization")):
        value = consent.get(key)
        if value is not None and value not in CONSENT_VALUES:
            return Problem("enum", f"{where}.{name}", "must be CONSENT_GRANTED or CONSENT_DENIED")
    return None


def check_event(index: int, event: object, encoding: object) -> tuple[Problem | None, float]:
    """The first problem of one event (or None) and its time in epoch seconds."""
    where = f"events[{index}]"
    if not isinstance(event, dict):
        return Problem("invalid", where, "must be an object", index), 0.0
    raw_time = event.get("eventTimestamp")
    if raw_time is None:
        return Problem("required", f"{where}.event_timestamp", "is required", index), 0.0
    timestamp = parse_rfc3339(raw_time)
    if timestamp is None:
        message = "must be an RFC 3339 timestamp string such as 2026-01-02T03:04:05Z"
        return Problem("type", f"{where}.event_timestamp", message, index), 0.0
    transaction_id = event.get("transactionId")
    if transaction_id is not None and not non_empty_string(transaction_id):
        return Problem("invalid", f"{where}.transaction_id", "must be a string", index), 0.0
    source = event.get("eventSource")
    if source is not None and source not in EVENT_SOURCES:
        return Problem("enum", f"{where}.event_source", "is not a valid EventSource", index), 0.0
    value = event.get("conversionValue")
    if value is not None and not is_number(value):
        return Problem("type", f"{where}.conversion_value", "must be a number", index), 0.0
    currency = event.get("currency")
    if currency is not None and (type(currency) is not str or len(currency) != 3):
        message = "must be an ISO 4217 currency code"
        return Problem("invalid", f"{where}.currency", message, index), 0.0
    problem = check_ad_identifiers(where, event.get("adIdentifiers"))
    if problem is None:
        problem = check_consent(f"{where}.consent", event.get("consent"))
    if problem is None:
        problem = check_user_data(where, event.get("userData"), encoding)
    if problem is not None:
        return Problem(problem.kind, problem.field, problem.message, index), timestamp
    return None, timestamp


def check_ad_identifiers(where: str, identifiers: object) -> Problem | None:
    if identifiers is None:
        return None
    if not isinstance(identifiers, dict):
        return Problem("invalid", f"{where}.ad_identifiers", "must be an object")
    for key in ("gclid", "gbraid", "wbraid"):
        value = identifiers.get(key)
        if value is not None:
            reason = plaintext_error(value)
            if reason is not None:
                return Problem("hashed_plaintext", f"{where}.ad_identifiers.{key}", reason)
    return None


def check_user_data(where: str, user_data: object, encoding: object) -> Problem | None:
    if user_data is None:
        return None
    if not isinstance(user_data, dict):
        return Problem("invalid", f"{where}.user_data", "must be an object")
    identifiers = user_data.get("userIdentifiers")
    field = f"{where}.user_data.user_identifiers"
    if not isinstance(identifiers, list) or not identifiers:
        return Problem("required", field, "at least one user identifier is required")
    if len(identifiers) > MAX_IDENTIFIERS:
        message = f"holds {len(identifiers)}; at most {MAX_IDENTIFIERS} are allowed an event"
        return Problem("too_many_identifiers", field, message)
    if encoding not in ENCODINGS:
        return Problem("required", "encoding", "HEX or BASE64 is required with user data")
    for i, identifier in enumerate(identifiers):
        problem = check_identifier(f"{field}[{i}]", identifier, encoding)
        if problem is not None:
            return problem
    return None


def async_failure(
    event: dict[str, Any],
    timestamp: float,
    now: float,
    fail_ids: frozenset[str],
    fail_reason: str | None,
    request_consent: object,
) -> str | None:
    """The processing error Google would report later for an accepted event, if any."""
    transaction_id = event.get("transactionId")
    if transaction_id is not None and transaction_id in fail_ids:
        return fail_reason or "PROCESSING_ERROR_REASON_INVALID_EVENT"
    if timestamp < now - MAX_AGE_SECONDS:
        return "PROCESSING_ERROR_REASON_EVENT_TOO_OLD"
    consent = event.get("consent", request_consent)
    if (
        isinstance(consent, dict)
        and consent.get("adUserData") == "CONSENT_DENIED"
        and event.get("userData") is not None
    ):
        return "PROCESSING_ERROR_REASON_DENIED_CONSENT"
    return None


def check_request(payload: dict[str, Any]) -> tuple[Problem | None, list[float]]:
    """Fast fail: the first problem of the request, and each event's time."""
    problem = check_destinations(payload.get("destinations"))
    if problem is not None:
        return problem, []
    events = payload.get("events")
    if not isinstance(events, list) or not events:
        return Problem("required", "events", "at least one event is required"), []
    if len(events) > MAX_EVENTS:
        message = f"holds {len(events)} events; at most {MAX_EVENTS} are allowed a request"
        return Problem("too_many", "events", message), []
    encoding = payload.get("encoding")
    if encoding is not None and encoding not in ENCODINGS:
        return Problem("enum", "encoding", "must be HEX or BASE64"), []
    problem = check_consent("consent", payload.get("consent"))
    if problem is not None:
        return problem, []
    times: list[float] = []
    for index, event in enumerate(events):
        problem, timestamp = check_event(index, event, encoding)
        if problem is not None:
            return problem, []
        times.append(timestamp)
    return None, times


# --- handlers ---------------------------------------------------------------------------


def ingest(
    payload: dict[str, Any], times: list[float], state: EmulatorState
) -> tuple[str, list[str | None]]:
    """Take a valid request: store its asynchronous status; the request id and taken ids."""
    now = time.time()
    fail_ids, fail_reason = state.failing_ids(PLATFORM)
    request_consent = payload.get("consent")
    failed: dict[str, str] = {}
    taken: list[str | None] = []
    for index, event in enumerate(payload["events"]):
        reason = async_failure(event, times[index], now, fail_ids, fail_reason, request_consent)
        transaction_id = event.get("transactionId")
        if reason is None:
            taken.append(transaction_id)
        else:
            failed[transaction_id if transaction_id is not None else f"#{index}"] = reason
    request_id = str(uuid.uuid4())
    status = GoogleRequestStatus(
        destinations=payload["destinations"], record_count=len(payload["events"]), failed=failed
    )
    state.add_google_status(request_id, status)
    return request_id, taken


def status_payload(status: GoogleRequestStatus, processing: bool) -> dict[str, Any]:
    """RetrieveRequestStatusResponse for one stored request."""
    per_destination: list[dict[str, Any]] = []
    for destination in status.destinations:
        item: dict[str, Any] = {
            "destination": destination,
            "eventsIngestionStatus": {"recordCount": str(status.record_count)},
        }
        if processing:
            item["requestStatus"] = "PROCESSING"
        elif not status.failed:
            item["requestStatus"] = "SUCCESS"
        else:
            n_failed = len(status.failed)
            item["requestStatus"] = (
                "FAILED" if n_failed >= status.record_count else "PARTIAL_SUCCESS"
            )
            counts: dict[str, int] = {}
            for reason in status.failed.values():
                counts[reason] = counts.get(reason, 0) + 1
            item["errorInfo"] = {
                "errorCounts": [
                    {"reason": reason, "recordCount": str(n)} for reason, n in counts.items()
                ]
            }
        per_destination.append(item)
    return {"requestStatusPerDestination": per_destination}


def routes(state: EmulatorState) -> list[Route]:
    """Data Manager routes, bound to one emulator state."""

    async def events_ingest(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        scripted = await apply_script(
            state, PLATFORM, path=path, body=body, formatter=scripted_error
        )
        if scripted is not None:
            return scripted
        if bearer_token(request) is None:
            response = rpc_error(401, UNAUTHENTICATED_MESSAGE)
            state.record(PLATFORM, path=path, status=401, body=body, accepted=False)
            return response
        payload = parse_json_object(body)
        if payload is None:
            problem = Problem("invalid", "body", "must be a JSON IngestEventsRequest object")
            state.record(PLATFORM, path=path, status=400, body=body, accepted=False)
            return problem_response(problem)
        problem, times = check_request(payload)
        validate_only = payload.get("validateOnly") is True
        if problem is not None:
            state.record(
                PLATFORM,
                path=path,
                status=400,
                body=body,
                accepted=False,
                validate_only=validate_only,
            )
            return problem_response(problem)
        if validate_only:
            state.record(
                PLATFORM, path=path, status=200, body=body, accepted=True, validate_only=True
            )
            return json_response({})
        request_id, taken = ingest(payload, times, state)
        state.record(PLATFORM, path=path, status=200, body=body, accepted=True, accepted_ids=taken)
        return json_response({"requestId": request_id})

    async def request_status(request: Request) -> Response:
        if bearer_token(request) is None:
            return rpc_error(401, UNAUTHENTICATED_MESSAGE)
        request_id = request.query_params.get("requestId")
        if not request_id:
            return rpc_error(400, "Invalid value at 'request_id': is required.")
        found = state.poll_google_status(request_id)
        if found is None:
            return rpc_error(404, f"Request '{request_id}' was not found.")
        status, processing = found
        return json_response(status_payload(status, processing))

    return [
        Route("/google/v1/events:ingest", events_ingest, methods=["POST"]),
        Route("/google/v1/requestStatus:retrieve", request_status, methods=["GET"]),
    ]
