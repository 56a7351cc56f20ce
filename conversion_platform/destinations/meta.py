"""Meta Conversions API (`POST {base}/{version}/{pixel_id}/events?access_token=`).

Facts from `PLATFORMS.md`: at most 1,000 events a request, all-or-nothing (one bad event
fails the request, so events are checked one by one before batching); `event_time` in
Unix seconds, at most 7 days old and at most a minute ahead; `em`, `ph` (digits only, no
`+`), `fn`, `ln`, `ct`, `st`, `zp`, `country`, `external_id` SHA-256 hashed; IP, user
agent, `fbc` and `fbp` as received; website events need `event_source_url` and
`client_user_agent`. Error code 190 is an auth failure; 1, 2, 4, 17, 341, 368 and 80003
are worth retrying; 100 is a bad request.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import orjson
import pandas as pd

from conversion_platform.destinations.base import (
    RETRYABLE_HTTP_STATUSES,
    STATUS_AUTH,
    STATUS_DELIVERED,
    STATUS_PERMANENT,
    STATUS_RETRYABLE,
    BatchOutcome,
    Destination,
    HttpRequest,
    PreparedEvent,
    retry_after_seconds,
)
from conversion_platform.destinations.config import MODE_VALIDATE, DestinationConfig
from conversion_platform.destinations.fields import hashed, items_of, present, row_records

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v24.0"
RETRYABLE_ERROR_CODES = frozenset({1, 2, 4, 17, 341, 368, 80003})
AUTH_ERROR_CODES = frozenset({190})


class MetaConversionsApi(Destination):
    platform = "meta_capi"
    max_batch_size = 1_000
    max_event_age = timedelta(days=7)
    all_or_nothing = True
    # Meta requires the user agent on website events; without consent it can't be sent.
    accepts_consent_denied_events = False
    standard_event_names: ClassVar[dict[str, str]] = {
        "purchase": "Purchase",
        "lead": "Lead",
        "complete_registration": "CompleteRegistration",
        "sign_up": "CompleteRegistration",
        "start_trial": "StartTrial",
        "subscribe": "Subscribe",
        "add_to_cart": "AddToCart",
        "initiate_checkout": "InitiateCheckout",
        "add_payment_info": "AddPaymentInfo",
        "contact": "Contact",
        "submit_application": "SubmitApplication",
        "page_view": "PageView",
    }

    def prepare_events(self, frame: pd.DataFrame, config: DestinationConfig) -> list[PreparedEvent]:
        limited_data_use = bool(config.settings.get("limited_data_use", False))
        prepared: list[PreparedEvent] = []
        for row in row_records(frame):
            event_time = int(row["event_time"].timestamp())
            fbc = row.get("fbc")
            if not fbc and row.get("fbclid"):
                # Meta's documented form when only the click id is known: fb.1.<ms>.<fbclid>
                fbc = f"fb.1.{event_time * 1000}.{row['fbclid']}"
            user_data = present(
                {
                    "em": hashed(row.get("email_sha256")),
                    "ph": hashed(row.get("phone_digits_sha256")),
                    "fn": hashed(row.get("first_name_sha256")),
                    "ln": hashed(row.get("last_name_sha256")),
                    "ct": hashed(row.get("city"), hash_plain=True),
                    "st": hashed(row.get("region"), hash_plain=True),
                    "zp": hashed(row.get("postal_code"), hash_plain=True),
                    "country": hashed(row.get("country"), hash_plain=True),
                    "external_id": hashed(row.get("external_id_sha256")),
                    "client_ip_address": row.get("client_ip"),
                    "client_user_agent": row.get("user_agent"),
                    "fbc": fbc,
                    "fbp": row.get("fbp"),
                }
            )
            custom_data = present(
                {
                    "value": row.get("value"),
                    "currency": row.get("currency"),
                    "order_id": row.get("order_id"),
                    "contents": [
                        present(
                            {
                                "id": str(i.get("id")) if i.get("id") is not None else None,
                                "quantity": i.get("quantity"),
                                "item_price": i.get("price"),
                            }
                        )
                        for i in items_of(row.get("items"))
                    ]
                    or None,
                }
            )
            action_source = row.get("action_source") or "website"
            event: dict[str, Any] = {
                "event_name": self.platform_event_name(row["event_name"], config),
                "event_time": event_time,
                "event_id": row["event_id"],
                "action_source": action_source,
            }
            if row.get("page_url"):
                event["event_source_url"] = row["page_url"]
            event["user_data"] = user_data
            if custom_data:
                event["custom_data"] = custom_data
            if limited_data_use:
                # Let Meta geolocate the user to apply Limited Data Use where a state requires it.
                event["data_processing_options"] = ["LDU"]
                event["data_processing_options_country"] = 0
                event["data_processing_options_state"] = 0
            problem = None
            if action_source == "website":
                if not event.get("event_source_url"):
                    problem = "website event without event_source_url"
                elif not user_data.get("client_user_agent"):
                    problem = "website event without client_user_agent"
            if not user_data:
                problem = problem or "no customer information parameters"
            prepared.append(PreparedEvent(row["event_id"], None if problem else event, problem))
        return prepared

    def build_request(
        self,
        payloads: list[dict[str, Any]],
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        pixel_id = str(config.settings.get("pixel_id", ""))
        version = str(config.settings.get("api_version", DEFAULT_API_VERSION))
        body: dict[str, Any] = {"data": payloads}
        test_code = config.test_event_code
        if mode == MODE_VALIDATE and not test_code:
            test_code = str(config.settings.get("validate_test_event_code", "TEST_VALIDATE"))
        if test_code:
            body["test_event_code"] = test_code
        return HttpRequest(
            method="POST",
            url=f"{config.base_url or DEFAULT_BASE_URL}/{version}/{pixel_id}/events",
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            secret_params={"access_token": credentials["access_token"]} if credentials else {},
        )

    def classify_response(
        self, status_code: int, body: bytes, headers: dict[str, str], event_ids: list[str]
    ) -> BatchOutcome:
        text = body[:4_000].decode("utf-8", errors="replace")
        retry_after = retry_after_seconds(headers)
        try:
            document = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            document = {}
        if 200 <= status_code < 300 and isinstance(document, dict) and "error" not in document:
            received = document.get("events_received")
            if isinstance(received, int) and received != len(event_ids):
                return BatchOutcome(
                    STATUS_RETRYABLE,
                    status_code,
                    text,
                    retry_after,
                    reason=f"Meta received {received} of {len(event_ids)} events",
                )
            return BatchOutcome(STATUS_DELIVERED, status_code, text)
        error = document.get("error", {}) if isinstance(document, dict) else {}
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        reason = f"Meta error {code}: {message}" if code is not None else f"HTTP {status_code}"
        if code in AUTH_ERROR_CODES or (status_code in (401, 403) and code is None):
            return BatchOutcome(STATUS_AUTH, status_code, text, reason=reason)
        if (
            code in RETRYABLE_ERROR_CODES
            or status_code in RETRYABLE_HTTP_STATUSES
            or status_code >= 500
        ):
            return BatchOutcome(STATUS_RETRYABLE, status_code, text, retry_after, reason=reason)
        return BatchOutcome(STATUS_PERMANENT, status_code, text, reason=reason)
