"""Google Ads through the Data Manager API (`POST {base}/v1/events:ingest`, OAuth Bearer).

Facts from `PLATFORMS.md` and the Data Manager API reference (events.ingest,
requestStatus.retrieve, "Understand API errors", formatting guidelines):

* At most 2,000 events and 10 destinations a request, 10 user identifiers an event.
  Each destination is the operating account plus a conversion action
  (`productDestinationId`); an event points at its conversion action by
  `destinationReferences`, so one request carries several conversion actions.
* `eventTimestamp` is an RFC 3339 string; `transactionId` (the order id, else our event
  id) dedupes against the tag.
* `userData.userIdentifiers`: `emailAddress` SHA-256 of the Google variant (every `.`
  removed before `@gmail.com` / `@googlemail.com`), `phoneNumber` SHA-256 of E.164 **with**
  `+`, `address` with `givenName` / `familyName` hashed and `regionCode` / `postalCode`
  in clear (all four or none); `encoding: HEX`. Click ids (`gclid`, `gbraid`, `wbraid`),
  IP and user agent in clear.
* Consent (`adUserData`, `adPersonalization`: `CONSENT_GRANTED` / `CONSENT_DENIED`) goes
  with each event; `validateOnly: true` checks a request without executing it.
* Fast fail: one invalid event fails the request (HTTP 400 INVALID_ARGUMENT, the field
  path naming `events[i]`), so events are checked one by one before batching, and when the
  API still refuses a batch the event it names is set aside and the rest sent again.
* Success answers only a `requestId`; each event's outcome is known later from
  `requestStatus:retrieve`, which reports per destination SUCCESS, PARTIAL_SUCCESS,
  FAILED or PROCESSING with error counts per reason (not which event failed).
"""

from __future__ import annotations

import re
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
    STATUS_PENDING_STATUS,
    STATUS_PERMANENT,
    STATUS_RETRYABLE,
    BatchOutcome,
    Destination,
    EncodedEvents,
    EventBatch,
    HttpRequest,
    RequestStatus,
    first_problem,
    response_text,
    retry_after_seconds,
)
from conversion_platform.destinations.config import MODE_VALIDATE, DestinationConfig

DEFAULT_BASE_URL = "https://datamanager.googleapis.com"
MAX_IDENTIFIERS = 10
EVENT_SOURCES = {
    "website": "WEB",
    "app": "APP",
    "physical_store": "IN_STORE",
    "phone_call": "PHONE",
    "chat": "MESSAGE",
}
CONSENT = {events.CONSENT_GRANTED: "CONSENT_GRANTED", events.CONSENT_DENIED: "CONSENT_DENIED"}
RETRYABLE_RPC_STATUSES = frozenset(
    {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED"}
)
AUTH_RPC_STATUSES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_EVENT_FIELD = re.compile(r"^events\[(\d+)\]")


def rpc_error(body: bytes) -> tuple[dict[str, Any], str | None, str, list[dict[str, Any]]]:
    """(error object, canonical status, message, details) of a google.rpc.Status answer."""
    try:
        document = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        document = {}
    error = document.get("error") if isinstance(document, dict) else None
    error = error if isinstance(error, dict) else {}
    details = error.get("details")
    details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    return error, error.get("status"), str(error.get("message") or ""), details


def error_reasons(details: list[dict[str, Any]]) -> list[str]:
    """The ErrorInfo reasons of an error's details."""
    return [str(d["reason"]) for d in details if d.get("reason")]


class GoogleAdsDataManager(Destination):
    platform = "google_ads"
    max_batch_size = 2_000
    # A conversion must fall inside its action's click-through window: 90 days at most.
    max_event_age = timedelta(days=90)
    max_future_skew = timedelta(minutes=5)
    all_or_nothing = True
    columns_read: ClassVar[frozenset[str] | None] = EVENT_COLUMNS | {
        "action_source",
        "client_ip",
        "consent_ad_personalization",
        "consent_ad_user_data",
        "country",
        "email_google_sha256",
        "first_name_sha256",
        "gbraid",
        "gclid",
        "items",
        "last_name_sha256",
        "phone_sha256",
        "postal_code",
        "user_agent",
        "wbraid",
    }
    max_groups_per_request = 10  # destinations a request
    accepts_consent_denied_events = True
    reports_status_later = True

    def platform_event_name(self, event_name: str, config: DestinationConfig) -> str | None:
        """The conversion action (`productDestinationId`) an event is recorded under."""
        if event_name in config.event_names:
            return config.event_names[event_name]
        default = config.settings.get("conversion_action_id")
        return str(default) if default else None

    def encode_events(
        self, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        n = len(frame)
        text = lambda column: jc.text_column(frame, column)  # noqa: E731
        actions = self.platform_event_names(frame, config)
        seconds = jc.unix_seconds(frame)
        given = jc.hex_digests(text("first_name_sha256"))
        family = jc.hex_digests(text("last_name_sha256"))
        country = jc.apply_text(text("country"), str.upper)
        postal = text("postal_code")
        address = (
            jc.JsonObject(n)
            .plain_string("givenName", given)
            .plain_string("familyName", family)
            .string("regionCode", country)
            .string("postalCode", postal)
        )
        # Google takes an address only whole: both names, region and postal code.
        full_address = (
            jc.is_present(given)
            & jc.is_present(family)
            & jc.is_present(country)
            & jc.is_present(postal)
        )
        email = jc.hex_digests(text("email_google_sha256"))
        phone = jc.hex_digests(text("phone_sha256"))
        identifiers = jc.list_of_present(
            [
                jc.concat(jc.lit('{"emailAddress":"'), email, jc.lit('"}')),
                jc.concat(jc.lit('{"phoneNumber":"'), phone, jc.lit('"}')),
                jc.mask_where(
                    jc.concat(jc.lit('{"address":'), address.build(), jc.lit("}")), full_address
                ),
            ][:MAX_IDENTIFIERS]
        )
        gclid, gbraid, wbraid = text("gclid"), text("gbraid"), text("wbraid")
        has_gclid, has_gbraid = jc.is_present(gclid), jc.is_present(gbraid)
        # One click id an event: gclid, else the iOS app-to-web / web-to-app variants.
        ad_identifiers = (
            jc.JsonObject(n)
            .string("gclid", gclid)
            .string("gbraid", jc.mask_where(gbraid, ~has_gclid))
            .string("wbraid", jc.mask_where(wbraid, ~(has_gclid | has_gbraid)))
        )
        device = (
            jc.JsonObject(n)
            .string("userAgent", text("user_agent"))
            .string("ipAddress", text("client_ip"))
        )
        consent = (
            jc.JsonObject(n)
            .plain_string("adUserData", jc.map_text(text("consent_ad_user_data"), CONSENT))
            .plain_string(
                "adPersonalization", jc.map_text(text("consent_ad_personalization"), CONSENT)
            )
        )
        source = jc.map_text(
            text("action_source").fill_null(jc.lit("website")),
            {s: EVENT_SOURCES.get(s, "OTHER") for s in events.ACTION_SOURCES},
        ).fill_null(jc.lit("OTHER"))
        event = (
            jc.JsonObject(n)
            .string_list("destinationReferences", actions.fill_null(jc.EMPTY))
            .string("transactionId", jc.coalesce(text("order_id"), text("event_id")))
            .plain_string("eventTimestamp", jc.formatted_times(seconds, "%Y-%m-%dT%H:%M:%SZ"))
            .plain_string("eventSource", source)
            .raw("userData", jc.concat(jc.lit('{"userIdentifiers":'), identifiers, jc.lit("}")))
            .object("adIdentifiers", ad_identifiers)
            .object("eventDeviceInfo", device)
            .object("consent", consent)
            .number("conversionValue", jc.float_values(frame, "value"))
            .string("currency", text("currency"))
        )
        merchant_id = config.settings.get("merchant_id")
        if merchant_id:
            items = jc.items_json(
                jc.parse_items(frame), ("merchantProductId", "quantity", "unitPrice")
            )
            opening = '{"merchantId":' + orjson.dumps(str(merchant_id)).decode() + ',"items":'
            event.raw("cartData", jc.concat(jc.lit(opening), items, jc.lit("}")))
        problems = first_problem(
            n, [(~jc.is_present(actions), "no conversion action configured for this event")]
        )
        groups = actions.fill_null(jc.EMPTY).to_pylist()
        return EncodedEvents(event.build(after=","), problems, groups, comma_after=True)

    def build_request(
        self,
        batch: EventBatch,
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        settings = config.settings
        operating = {
            "accountType": str(settings.get("account_type", "GOOGLE_ADS")),
            "accountId": str(settings.get("customer_id", "")).replace("-", ""),
        }
        login = settings.get("login_customer_id")
        destinations = []
        for action in batch.groups:
            destination: dict[str, Any] = {"reference": action, "operatingAccount": operating}
            if login:
                destination["loginAccount"] = {
                    "accountType": "GOOGLE_ADS",
                    "accountId": str(login).replace("-", ""),
                }
            destination["productDestinationId"] = action
            destinations.append(destination)
        head: dict[str, Any] = {"destinations": destinations, "encoding": "HEX"}
        if mode == MODE_VALIDATE:
            head["validateOnly"] = True
        body = orjson.dumps(head)[:-1] + b',"events":' + batch.json_array() + b"}"
        return HttpRequest(
            method="POST",
            url=f"{config.base_url or DEFAULT_BASE_URL}/v1/events:ingest",
            body=body,
            headers={"Content-Type": "application/json"},
            secret_headers=_auth(credentials),
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
            request_id = document.get("requestId") if isinstance(document, dict) else None
            if request_id:
                return BatchOutcome(
                    STATUS_PENDING_STATUS, status_code, text, platform_request_id=str(request_id)
                )
            # validateOnly answers `{}`: checked, nothing ingested.
            return BatchOutcome(STATUS_DELIVERED, status_code, text)
        _, rpc_status, message, details = rpc_error(body)
        reasons = error_reasons(details)
        reason = f"Google {rpc_status or status_code}: {', '.join(reasons) + ': ' if reasons else ''}{message}"
        if rpc_status in AUTH_RPC_STATUSES or status_code in (401, 403):
            return BatchOutcome(STATUS_AUTH, status_code, text, reason=reason)
        if (
            rpc_status in RETRYABLE_RPC_STATUSES
            or status_code in RETRYABLE_HTTP_STATUSES
            or status_code >= 500
        ):
            return BatchOutcome(STATUS_RETRYABLE, status_code, text, retry_after, reason=reason)
        rejected: dict[int, str] = {}
        request_level = False
        for detail in details:
            for violation in detail.get("fieldViolations") or []:
                field = str(violation.get("field", ""))
                match = _EVENT_FIELD.match(field)
                if match and int(match.group(1)) < len(batch):
                    description = violation.get("description") or message
                    rejected[int(match.group(1))] = (
                        f"Google {', '.join(reasons) or rpc_status}: {field} {description}"
                    )
                elif field:
                    request_level = True
        return BatchOutcome(
            STATUS_PERMANENT,
            status_code,
            text,
            reason=reason,
            rejected=rejected,
            whole_request=request_level and not rejected,
        )

    def request_status(
        self, request_id: str, config: DestinationConfig, credentials: dict[str, str]
    ) -> HttpRequest:
        return HttpRequest(
            method="GET",
            url=f"{config.base_url or DEFAULT_BASE_URL}/v1/requestStatus:retrieve",
            body=b"",
            params={"requestId": request_id},
            secret_headers=_auth(credentials),
        )

    def classify_status(self, status_code: int, body: bytes) -> RequestStatus:
        text = response_text(body)
        if status_code == 404:
            return RequestStatus("unconfirmed", "Google does not know the request id", text)
        if not 200 <= status_code < 300:
            _, rpc_status, message, _ = rpc_error(body)
            outcome = (
                "auth"
                if rpc_status in AUTH_RPC_STATUSES or status_code in (401, 403)
                else "processing"
            )
            return RequestStatus(outcome, f"Google {rpc_status or status_code}: {message}", text)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return RequestStatus("processing", "unreadable status answer", text)
        per_destination = (
            document.get("requestStatusPerDestination") if isinstance(document, dict) else None
        )
        if not isinstance(per_destination, list) or not per_destination:
            return RequestStatus("processing", "no status yet", text)
        statuses = [str(d.get("requestStatus", "")) for d in per_destination if isinstance(d, dict)]
        if any(s not in ("SUCCESS", "PARTIAL_SUCCESS", "FAILED") for s in statuses):
            return RequestStatus("processing", None, text)
        counts: dict[str, int] = {}
        records = 0
        for item in per_destination:
            records += int((item.get("eventsIngestionStatus") or {}).get("recordCount") or 0)
            for error in (item.get("errorInfo") or {}).get("errorCounts") or []:
                name = str(error.get("reason"))
                counts[name] = counts.get(name, 0) + int(error.get("recordCount") or 0)
        summary = ", ".join(f"{name} x{count}" for name, count in counts.items())
        if all(s == "SUCCESS" for s in statuses):
            return RequestStatus("delivered", None, text)
        if all(s == "FAILED" for s in statuses):
            return RequestStatus("permanent", f"Google FAILED: {summary}", text)
        failed = sum(counts.values())
        return RequestStatus(
            "unconfirmed",
            f"Google PARTIAL_SUCCESS: {failed} of {records} events failed ({summary}); "
            "Google does not say which",
            text,
        )


def _auth(credentials: dict[str, str] | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {credentials['access_token']}"} if credentials else {}
