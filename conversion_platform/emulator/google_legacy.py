"""Google Ads API (legacy path): `POST /google/{version}/customers/{cid}:uploadClickConversions`.

What each check rests on: the Google Ads API reference for ConversionUploadService
(UploadClickConversionsRequest / Response, ClickConversion, ClickConversionResult), its
partial-failure guide, REST auth headers, and the error enums named below:

* Headers: `Authorization: Bearer <token>` (else HTTP 401 UNAUTHENTICATED);
  `developer-token` for API versions before v24 (else HTTP 400 with
  `requestError: DEVELOPER_TOKEN_PARAMETER_MISSING`; the v24 reference marks developer
  tokens as sunset, so from v24 on it is optional); `login-customer-id` optional.
* `{cid}` digits only (`authenticationError: CLIENT_CUSTOMER_ID_INVALID` otherwise).
* Body: `{"conversions": [...], "partialFailure": true, "validateOnly"?, "jobId"?}`.
  At most 2,000 conversions (`conversionUploadError: TOO_MANY_CONVERSIONS_IN_REQUEST`).
* A conversion: at most one of `gclid`, `gbraid`, `wbraid` (plaintext), or none with
  `userIdentifiers` (enhanced conversions for leads); `conversionAction`
  `customers/{cid}/conversionActions/{id}` of the same customer
  (`conversionUploadError: INVALID_CONVERSION_ACTION`); `conversionDateTime`
  `yyyy-mm-dd hh:mm:ss+|-hh:mm` (`dateError: INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET`)
  and at most 90 days old (`conversionUploadError: EXPIRED_CLICK`); `conversionValue` a
  number; `currencyCode` 3 letters; `userIdentifiers` at most 5
  (`collectionSizeError: TOO_MANY`), each with exactly one of `hashedEmail`,
  `hashedPhoneNumber` (SHA-256, 64 lowercase hex) or `addressInfo` (hashedFirstName,
  hashedLastName, hashedStreetAddress hashed; city, state, countryCode, postalCode in
  clear); `consent.adUserData` / `adPersonalization` in UNSPECIFIED, UNKNOWN, GRANTED,
  DENIED. Format problems not covered by a specific enum use `fieldError: REQUIRED` or
  `fieldError: INVALID_VALUE` (the mapping of each problem to an enum is the emulator's
  choice).
* `partialFailure: true`: valid conversions are taken; the answer is HTTP 200
  `{"results": [...], "partialFailureError": {"code": 3, "message", "details":
  [GoogleAdsFailure]}, "jobId"}` where a failed row's result is `{}` and every error's
  `location.fieldPathElements` starts with `{"fieldName": "conversions", "index": i}`.
  Without it the request is all-or-nothing: any error answers HTTP 400 with the same
  GoogleAdsFailure in `error.details`.
* `validateOnly: true`: no results are returned, nothing is recorded.
* Accepted conversions are counted by `orderId`.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conversion_platform.emulator.checks import (
    DAY,
    is_number,
    is_sha256_hex,
    parse_ads_datetime,
    plaintext_error,
)
from conversion_platform.emulator.google import (
    UNAUTHENTICATED_MESSAGE,
    bearer_token,
    canonical_status,
    rpc_error,
)
from conversion_platform.emulator.respond import (
    json_response,
    new_id,
    parse_json_object,
    retry_after_headers,
)
from conversion_platform.emulator.scripting import ErrorFormatter, apply_script
from conversion_platform.emulator.state import EmulatorState, ScriptedResponse

PLATFORM: Final = "google"
MAX_CONVERSIONS: Final = 2000
MAX_IDENTIFIERS: Final = 5
MAX_AGE_SECONDS: Final = 90 * DAY
FIRST_VERSION_WITHOUT_DEVELOPER_TOKEN: Final = 24
CONSENT_VALUES: Final = frozenset({"UNSPECIFIED", "UNKNOWN", "GRANTED", "DENIED"})
_VERSION: Final = re.compile(r"v(\d+)")
_CONVERSION_ACTION: Final = re.compile(r"customers/(\d+)/conversionActions/(\d+)")
_ADDRESS_HASHED: Final = ("hashedFirstName", "hashedLastName", "hashedStreetAddress")
_ADDRESS_PLAIN: Final = ("city", "state", "countryCode", "postalCode")

#: (error category, enum value, message, trailing field path)
AdsError = tuple[str, str, str, list[dict[str, Any]]]


def failure_detail(version: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A GoogleAdsFailure, as it appears in `details` of a google.rpc.Status."""
    return {
        "@type": f"type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure",
        "errors": errors,
        "requestId": new_id(11),
    }


def ads_error(
    category: str, value: str, message: str, path: list[dict[str, Any]]
) -> dict[str, Any]:
    error: dict[str, Any] = {"errorCode": {category: value}, "message": message}
    if path:
        error["location"] = {"fieldPathElements": path}
    return error


def scripted_error_for(version: str) -> ErrorFormatter:
    """A formatter answering scripted failures with a GoogleAdsFailure in the details."""

    def scripted_error(entry: ScriptedResponse) -> Response:
        status = entry.status or 500
        if type(entry.error_code) is str and "." in entry.error_code:
            category, _, value = entry.error_code.partition(".")
        elif status == 401:
            category, value = "authenticationError", str(entry.error_code or "AUTHENTICATION_ERROR")
        elif status == 403:
            category, value = (
                "authorizationError",
                str(entry.error_code or "USER_PERMISSION_DENIED"),
            )
        elif status == 429:
            category, value = "quotaError", str(entry.error_code or "RESOURCE_EXHAUSTED")
        elif status >= 500:
            category, value = "internalError", str(entry.error_code or "INTERNAL_ERROR")
        else:
            category, value = "requestError", str(entry.error_code or "UNKNOWN")
        message = entry.message or f"Scripted {canonical_status(status)} from the emulator."
        details = [failure_detail(version, [ads_error(category, value, message, [])])]
        return rpc_error(status, message, details, retry_after_headers(entry.retry_after))

    return scripted_error


def check_conversion(
    index: int, conversion: object, customer_id: str, now: float
) -> AdsError | None:
    """The first problem of one conversion, or None."""
    if not isinstance(conversion, dict):
        return "requestError", "UNKNOWN", "A conversion must be an object.", []
    click_ids = [key for key in ("gclid", "gbraid", "wbraid") if key in conversion]
    if len(click_ids) > 1:
        message = f"Only one of gclid, gbraid or wbraid may be set; got {', '.join(click_ids)}."
        return "fieldError", "VALUE_MUST_BE_UNSET", message, [{"fieldName": click_ids[1]}]
    for key in click_ids:
        reason = plaintext_error(conversion[key])
        if reason is not None:
            return "fieldError", "INVALID_VALUE", f"{key} {reason}.", [{"fieldName": key}]
    identifiers = conversion.get("userIdentifiers")
    if not click_ids and not identifiers:
        message = "A click id (gclid, gbraid or wbraid) or user identifiers are required."
        return "fieldError", "REQUIRED", message, [{"fieldName": "gclid"}]
    action = conversion.get("conversionAction")
    if action is None:
        path = [{"fieldName": "conversion_action"}]
        return "fieldError", "REQUIRED", "conversion_action is required.", path
    match = _CONVERSION_ACTION.fullmatch(action) if type(action) is str else None
    if match is None or match.group(1) != customer_id:
        message = f"conversion_action must be customers/{customer_id}/conversionActions/<id>."
        path = [{"fieldName": "conversion_action"}]
        return "conversionUploadError", "INVALID_CONVERSION_ACTION", message, path
    moment = parse_ads_datetime(conversion.get("conversionDateTime"))
    if moment is None:
        message = "conversion_date_time must look like 'yyyy-mm-dd hh:mm:ss+hh:mm'."
        path = [{"fieldName": "conversion_date_time"}]
        return "dateError", "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET", message, path
    if moment < now - MAX_AGE_SECONDS:
        message = "The conversion is older than the click-through window allows."
        return "conversionUploadError", "EXPIRED_CLICK", message, []
    value = conversion.get("conversionValue")
    if value is not None and not is_number(value):
        path = [{"fieldName": "conversion_value"}]
        return "fieldError", "INVALID_VALUE", "conversion_value must be a number.", path
    currency = conversion.get("currencyCode")
    if currency is not None and (type(currency) is not str or len(currency) != 3):
        path = [{"fieldName": "currency_code"}]
        return "fieldError", "INVALID_VALUE", "currency_code must be ISO 4217.", path
    problem = check_identifiers(identifiers)
    if problem is None:
        problem = check_consent(conversion.get("consent"))
    return problem


def check_identifiers(identifiers: object) -> AdsError | None:
    if identifiers is None:
        return None
    field = {"fieldName": "user_identifiers"}
    if not isinstance(identifiers, list):
        return "fieldError", "INVALID_VALUE", "user_identifiers must be a list.", [field]
    if len(identifiers) > MAX_IDENTIFIERS:
        message = f"At most {MAX_IDENTIFIERS} user identifiers are allowed a conversion."
        return "collectionSizeError", "TOO_MANY", message, [field]
    for i, identifier in enumerate(identifiers):
        at = {"fieldName": "user_identifiers", "index": i}
        if not isinstance(identifier, dict):
            return "fieldError", "INVALID_VALUE", "A user identifier must be an object.", [at]
        present = [
            key for key in ("hashedEmail", "hashedPhoneNumber", "addressInfo") if key in identifier
        ]
        if len(present) != 1:
            message = "Each user identifier holds exactly one of hashed_email, "
            message += "hashed_phone_number or address_info."
            return "fieldError", "INVALID_VALUE", message, [at]
        key = present[0]
        if key != "addressInfo":
            if not is_sha256_hex(identifier[key]):
                message = f"{key} must be a SHA-256 hash: 64 lowercase hex characters."
                return "fieldError", "INVALID_VALUE", message, [at, {"fieldName": key}]
            continue
        problem = check_address(identifier[key], at)
        if problem is not None:
            return problem
    return None


def check_address(address: object, at: dict[str, Any]) -> AdsError | None:
    if not isinstance(address, dict):
        return "fieldError", "INVALID_VALUE", "address_info must be an object.", [at]
    for key in _ADDRESS_HASHED:
        if key in address and not is_sha256_hex(address[key]):
            message = f"{key} must be a SHA-256 hash: 64 lowercase hex characters."
            path = [at, {"fieldName": "address_info"}, {"fieldName": key}]
            return "fieldError", "INVALID_VALUE", message, path
    for key in _ADDRESS_PLAIN:
        if key in address:
            reason = plaintext_error(address[key])
            if reason is not None:
                path = [at, {"fieldName": "address_info"}, {"fieldName": key}]
                return "fieldError", "INVALID_VALUE", f"{key} {reason}.", path
    return None


def check_consent(consent: object) -> AdsError | None:
    if consent is None:
        return None
    if not isinstance(consent, dict):
        return "fieldError", "INVALID_VALUE", "consent must be an object.", []
    for key in ("adUserData", "adPersonalization"):
        value = consent.get(key)
        if value is not None and value not in CONSENT_VALUES:
            path = [{"fieldName": "consent"}, {"fieldName": key}]
            return "fieldError", "INVALID_VALUE", f"{key} must be GRANTED or DENIED.", path
    return None


def conversion_result(conversion: dict[str, Any]) -> dict[str, Any]:
    """ClickConversionResult echoing the identifying fields of a taken conversion."""
    result = {
        key: conversion[key]
        for key in ("gclid", "gbraid", "wbraid", "conversionAction", "conversionDateTime")
        if key in conversion
    }
    if "userIdentifiers" in conversion:
        result["userIdentifiers"] = conversion["userIdentifiers"]
    return result


def routes(state: EmulatorState) -> list[Route]:
    """The legacy upload route, bound to one emulator state."""

    async def upload(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        version = request.path_params["version"]
        scripted = await apply_script(
            state, PLATFORM, path=path, body=body, formatter=scripted_error_for(version)
        )
        if scripted is not None:
            return scripted
        response, taken = handle(request, body, version, state)
        payload_validate_only = taken == "validate"
        state.record(
            PLATFORM,
            path=path,
            status=response.status_code,
            body=body,
            accepted=response.status_code == 200,
            accepted_ids=None if isinstance(taken, str) else taken,
            validate_only=payload_validate_only,
        )
        return response

    return [
        Route(
            "/google/{version}/customers/{customer_id}:uploadClickConversions",
            upload,
            methods=["POST"],
        )
    ]


def handle(
    request: Request, body: bytes, version: str, state: EmulatorState
) -> tuple[Response, list[str | None] | str | None]:
    """Check and answer one upload; the response and the order ids taken
    (`"validate"` for a validate-only request, None when nothing was taken)."""
    customer_id = request.path_params["customer_id"]
    version_match = _VERSION.fullmatch(version)
    if version_match is None:
        return rpc_error(404, f"Unknown API version '{version}'."), None
    if bearer_token(request) is None:
        return rpc_error(401, UNAUTHENTICATED_MESSAGE), None

    def request_error(category: str, value: str, message: str) -> Response:
        detail = failure_detail(version, [ads_error(category, value, message, [])])
        return rpc_error(400, "Request contains an invalid argument.", [detail])

    if int(version_match.group(1)) < FIRST_VERSION_WITHOUT_DEVELOPER_TOKEN and not (
        request.headers.get("developer-token", "").strip()
    ):
        message = "The developer-token header is required for all requests."
        return request_error("requestError", "DEVELOPER_TOKEN_PARAMETER_MISSING", message), None
    if not customer_id.isdigit():
        message = "The customer id must be digits only, without dashes."
        return request_error("authenticationError", "CLIENT_CUSTOMER_ID_INVALID", message), None
    payload = parse_json_object(body)
    if payload is None:
        return request_error("requestError", "UNKNOWN", "The body must be a JSON object."), None
    conversions = payload.get("conversions")
    if not isinstance(conversions, list) or not conversions:
        message = "conversions must be a non-empty list."
        return request_error("fieldError", "REQUIRED", message), None
    if len(conversions) > MAX_CONVERSIONS:
        message = f"At most {MAX_CONVERSIONS} conversions are allowed a request."
        value = "TOO_MANY_CONVERSIONS_IN_REQUEST"
        return request_error("conversionUploadError", value, message), None
    now = time.time()
    fail_ids, fail_reason = state.failing_ids(PLATFORM)
    errors: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    taken: list[str | None] = []
    for index, conversion in enumerate(conversions):
        problem = check_conversion(index, conversion, customer_id, now)
        order_id = conversion.get("orderId") if isinstance(conversion, dict) else None
        if problem is None and order_id is not None and order_id in fail_ids:
            value = fail_reason or "CLICK_NOT_FOUND"
            message = "Rejected by the emulator's failure script."
            problem = ("conversionUploadError", value, message, [])
        if problem is None:
            results.append(conversion_result(conversion))
            taken.append(None if order_id is None else str(order_id))
            continue
        category, value, message, tail = problem
        location = [{"fieldName": "conversions", "index": index}, *tail]
        errors.append(ads_error(category, value, message, location))
        results.append({})
    validate_only = payload.get("validateOnly") is True
    if payload.get("partialFailure") is not True and errors:
        detail = failure_detail(version, errors)
        return rpc_error(400, "Request contains an invalid argument.", [detail]), None
    response_body: dict[str, Any] = {}
    if errors:
        summary = "; ".join(
            f"{e['message']}, at conversions[{e['location']['fieldPathElements'][0]['index']}]"
            for e in errors[:10]
        )
        response_body["partialFailureError"] = {
            "code": 3,
            "message": summary,
            "details": [failure_detail(version, errors)],
        }
    if validate_only:
        return json_response(response_body), "validate"
    response_body["results"] = results
    response_body["jobId"] = str(payload.get("jobId") or int(now * 1000) % 2**31)
    return json_response(response_body), taken
