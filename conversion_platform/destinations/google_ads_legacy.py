"""Google Ads API `uploadClickConversions`, for accounts that still have it (`settings.api: legacy`).

Closed to new callers in mid-2026 (the Data Manager API in `google_ads.py` replaces it).
Facts from `PLATFORMS.md` and the Google Ads API reference (ConversionUploadService,
ClickConversion, partial failures):

* `POST {base}/{version}/customers/{customer_id}:uploadClickConversions` with
  `Authorization: Bearer`, `developer-token` and, for a manager account,
  `login-customer-id`; at most 2,000 conversions a request, sent with
  `partialFailure: true` so valid conversions are taken and each failed one is named by
  its index (`conversions[i]`).
* A conversion: at most one of `gclid`, `gbraid`, `wbraid`, or `userIdentifiers` (at most
  5, one identifier an object: `hashedEmail` of the Google email variant,
  `hashedPhoneNumber` of E.164 with `+`, `addressInfo` with hashed names and city, state,
  country and postal code in clear); `conversionAction`
  `customers/{cid}/conversionActions/{id}`; `conversionDateTime` `yyyy-mm-dd
  hh:mm:ss+00:00`; `orderId` dedupes; consent `GRANTED` / `DENIED`.
* Retry: 429 / RESOURCE_EXHAUSTED, 5xx, `CONCURRENT_MODIFICATION`; `TOO_RECENT_*` errors of
  single conversions are retried after 6 hours.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

import orjson
import pandas as pd

from conversion_platform import events
from conversion_platform.destinations import json_columns as jc
from conversion_platform.destinations.base import (
    EVENT_COLUMNS,
    RETRYABLE_HTTP_STATUSES,
    STATUS_AUTH,
    STATUS_DELIVERED,
    STATUS_PARTIAL,
    STATUS_PERMANENT,
    STATUS_RETRYABLE,
    BatchOutcome,
    Destination,
    EncodedEvents,
    EventBatch,
    HttpRequest,
    first_problem,
    response_text,
    retry_after_seconds,
)
from conversion_platform.destinations.config import MODE_VALIDATE, DestinationConfig
from conversion_platform.destinations.google_ads import AUTH_RPC_STATUSES, rpc_error

DEFAULT_BASE_URL = "https://googleads.googleapis.com"
DEFAULT_API_VERSION = "v22"
MAX_IDENTIFIERS = 5
CONSENT = {events.CONSENT_GRANTED: "GRANTED", events.CONSENT_DENIED: "DENIED"}
#: Per-conversion errors worth sending again (TOO_RECENT_*: the action or click is still
#: being processed, retry after 6 hours).
RETRY_LATER_ERRORS = frozenset(
    {"TOO_RECENT_CONVERSION_ACTION", "TOO_RECENT_EVENT", "CONCURRENT_MODIFICATION"}
)
TOO_RECENT_WAIT_SECONDS = 6 * 3600.0
RETRYABLE_CATEGORIES = frozenset({"internalError", "quotaError", "databaseError"})


class GoogleAdsClickConversions(Destination):
    platform = "google_ads"
    max_batch_size = 2_000
    max_event_age = timedelta(days=90)
    max_future_skew = timedelta(minutes=5)
    # partialFailure: valid conversions are taken; a refused one is named by its index.
    all_or_nothing = False
    columns_read: ClassVar[frozenset[str] | None] = EVENT_COLUMNS | {
        "city",
        "client_ip",
        "consent_ad_personalization",
        "consent_ad_user_data",
        "country",
        "email_google_sha256",
        "first_name_sha256",
        "gbraid",
        "gclid",
        "last_name_sha256",
        "phone_sha256",
        "postal_code",
        "region",
        "wbraid",
    }
    accepts_consent_denied_events = True

    def platform_event_name(self, event_name: str, config: DestinationConfig) -> str | None:
        """The conversion action id an event is recorded under."""
        if event_name in config.event_names:
            return config.event_names[event_name]
        default = config.settings.get("conversion_action_id")
        return str(default) if default else None

    def encode_events(
        self, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        n = len(frame)
        text = lambda column: jc.text_column(frame, column)  # noqa: E731
        customer_id = _customer_id(config)
        actions = self.platform_event_names(frame, config)
        action_names = jc.concat(jc.lit(f"customers/{customer_id}/conversionActions/"), actions)
        seconds = jc.unix_seconds(frame)
        address = (
            jc.JsonObject(n)
            .plain_string("hashedFirstName", jc.hex_digests(text("first_name_sha256")))
            .plain_string("hashedLastName", jc.hex_digests(text("last_name_sha256")))
            .string("city", text("city"))
            .string("state", text("region"))
            .string("countryCode", jc.apply_text(text("country"), str.upper))
            .string("postalCode", text("postal_code"))
        )
        identifiers = jc.list_of_present(
            [
                jc.concat(
                    jc.lit('{"hashedEmail":"'),
                    jc.hex_digests(text("email_google_sha256")),
                    jc.lit('"}'),
                ),
                jc.concat(
                    jc.lit('{"hashedPhoneNumber":"'),
                    jc.hex_digests(text("phone_sha256")),
                    jc.lit('"}'),
                ),
                jc.concat(jc.lit('{"addressInfo":'), address.build_or_null(), jc.lit("}")),
            ][:MAX_IDENTIFIERS]
        )
        gclid, gbraid, wbraid = text("gclid"), text("gbraid"), text("wbraid")
        has_gclid, has_gbraid = jc.is_present(gclid), jc.is_present(gbraid)
        consent = (
            jc.JsonObject(n)
            .plain_string("adUserData", jc.map_text(text("consent_ad_user_data"), CONSENT))
            .plain_string(
                "adPersonalization", jc.map_text(text("consent_ad_personalization"), CONSENT)
            )
        )
        conversion = (
            jc.JsonObject(n)
            .string("conversionAction", action_names.fill_null(jc.EMPTY))
            .plain_string(
                "conversionDateTime", jc.formatted_times(seconds, "%Y-%m-%d %H:%M:%S+00:00")
            )
            # At most one click id a conversion: gclid, else gbraid, else wbraid.
            .string("gclid", gclid)
            .string("gbraid", jc.mask_where(gbraid, ~has_gclid))
            .string("wbraid", jc.mask_where(wbraid, ~(has_gclid | has_gbraid)))
            .number("conversionValue", jc.float_values(frame, "value"))
            .string("currencyCode", text("currency"))
            .string("orderId", jc.coalesce(text("order_id"), text("event_id")))
            .raw("userIdentifiers", identifiers)
            .string("userIpAddress", text("client_ip"))
            .object("consent", consent)
        )
        has_click = has_gclid | has_gbraid | jc.is_present(wbraid)
        problems = first_problem(
            n,
            [
                (~jc.is_present(actions), "no conversion action configured for this event"),
                (
                    ~has_click & ~jc.is_present(identifiers),
                    "needs a gclid, gbraid, wbraid or user identifiers",
                ),
            ],
        )
        return EncodedEvents(conversion.build(after=","), problems, comma_after=True)

    def build_request(
        self,
        batch: EventBatch,
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        version = str(config.settings.get("api_version", DEFAULT_API_VERSION))
        body = b'{"conversions":' + batch.json_array() + b',"partialFailure":true'
        if mode == MODE_VALIDATE:
            body += b',"validateOnly":true'
        body += b"}"
        headers = {"Content-Type": "application/json"}
        login = config.settings.get("login_customer_id")
        if login:
            headers["login-customer-id"] = str(login).replace("-", "")
        secret_headers: dict[str, str] = {}
        if credentials:
            secret_headers["Authorization"] = f"Bearer {credentials['access_token']}"
            if credentials.get("developer_token"):
                secret_headers["developer-token"] = credentials["developer_token"]
        base = config.base_url or DEFAULT_BASE_URL
        return HttpRequest(
            method="POST",
            url=f"{base}/{version}/customers/{_customer_id(config)}:uploadClickConversions",
            body=body,
            headers=headers,
            secret_headers=secret_headers,
        )

    def classify_response(
        self, status_code: int, body: bytes, headers: dict[str, str], batch: EventBatch
    ) -> BatchOutcome:
        text = response_text(body)
        retry_after = retry_after_seconds(headers)
        if 200 <= status_code < 300:
            try:
                document = orjson.loads(body) if body else {}
            except orjson.JSONDecodeError:
                document = {}
            partial = document.get("partialFailureError") if isinstance(document, dict) else None
            if not partial:
                return BatchOutcome(STATUS_DELIVERED, status_code, text)
            rejected, retry = per_conversion_errors(partial.get("details") or [], len(batch))
            if not rejected and not retry:
                return BatchOutcome(
                    STATUS_PERMANENT,
                    status_code,
                    text,
                    reason=f"Google partial failure: {partial.get('message')}",
                    whole_request=True,
                )
            wait = (
                TOO_RECENT_WAIT_SECONDS if any("TOO_RECENT" in r for r in retry.values()) else None
            )
            return BatchOutcome(
                STATUS_PARTIAL, status_code, text, wait, rejected=rejected, retry=retry
            )
        _, rpc_status, message, details = rpc_error(body)
        codes = [code for _, code, _ in _errors(details)]
        reason = f"Google {rpc_status or status_code}: {', '.join(codes) + ': ' if codes else ''}{message}"
        if rpc_status in AUTH_RPC_STATUSES or status_code in (401, 403):
            return BatchOutcome(STATUS_AUTH, status_code, text, reason=reason)
        if (
            status_code in RETRYABLE_HTTP_STATUSES
            or status_code >= 500
            or rpc_status == "RESOURCE_EXHAUSTED"
            or any(c in RETRY_LATER_ERRORS for c in codes)
        ):
            return BatchOutcome(STATUS_RETRYABLE, status_code, text, retry_after, reason=reason)
        # With partialFailure on, a refused request is about the request, not one conversion.
        return BatchOutcome(STATUS_PERMANENT, status_code, text, reason=reason, whole_request=True)


def per_conversion_errors(
    details: list[Any], batch_size: int
) -> tuple[dict[int, str], dict[int, str]]:
    """(rejected, retry later) reasons by conversion index from a GoogleAdsFailure."""
    rejected: dict[int, str] = {}
    retry: dict[int, str] = {}
    for index, code, message in _errors(details):
        if index is None or not 0 <= index < batch_size:
            continue
        reason = f"Google {code}: {message}"
        if code in RETRY_LATER_ERRORS or code.split(".")[0] in RETRYABLE_CATEGORIES:
            retry.setdefault(index, reason)
        else:
            rejected.setdefault(index, reason)
    return rejected, retry


def _errors(details: list[Any]) -> list[tuple[int | None, str, str]]:
    """(conversion index, error code, message) of each GoogleAdsError in `details`."""
    found: list[tuple[int | None, str, str]] = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        for error in detail.get("errors") or []:
            if not isinstance(error, dict):
                continue
            code_object = error.get("errorCode") or {}
            code = next(iter(code_object.values()), "UNKNOWN") if code_object else "UNKNOWN"
            category = next(iter(code_object.keys()), "") if code_object else ""
            index = None
            for element in (error.get("location") or {}).get("fieldPathElements") or []:
                if element.get("fieldName") == "conversions" and "index" in element:
                    index = int(element["index"])
                    break
            label = str(code) if str(code) in RETRY_LATER_ERRORS else f"{category}.{code}"
            found.append((index, label if category else str(code), str(error.get("message") or "")))
    return found


def _customer_id(config: DestinationConfig) -> str:
    return str(config.settings.get("customer_id", "")).replace("-", "")
