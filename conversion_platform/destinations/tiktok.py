"""TikTok Events API 2.0 (`POST {base}/open_api/v1.3/event/track/`, header `Access-Token`).

Facts from `PLATFORMS.md` and TikTok's Events API 2.0 docs: at most 1,000 events a
request; `event_source` (`web`, `app`, `offline`, `crm`) and `event_source_id` (the pixel
code) at the top level, one source a request; `event_time` in Unix seconds; `event` +
`event_id` dedupe against the pixel for 48 h. `user.email`, `user.phone` (E.164 **with**
`+`), `user.external_id`, `first_name`, `last_name` and `zip_code` SHA-256 hashed;
`city`, `state`, `country`, `ttclid`, `ttp`, `ip`, `user_agent` in clear. TikTok answers
HTTP 200 with a `code` in the body: 0 is success, 40100 is throttling (retry later),
40001 / 40102 / 40104 / 40105 are permission and access-token failures, 5xxxx codes are
TikTok's own errors (retry); any other code refuses the request.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar

import orjson
import pandas as pd
import pyarrow as pa

from conversion_platform.destinations import json_columns as jc
from conversion_platform.destinations.base import (
    EVENT_COLUMNS,
    RETRYABLE_HTTP_STATUSES,
    STATUS_AUTH,
    STATUS_DELIVERED,
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

DEFAULT_BASE_URL = "https://business-api.tiktok.com"
TRACK_PATH = "/open_api/v1.3/event/track/"
CODE_OK = 0
CODE_THROTTLED = 40100
AUTH_CODES = frozenset({40001, 40102, 40104, 40105})
EVENT_SOURCES = frozenset({"web", "app", "offline", "crm"})
VALIDATE_TEST_EVENT_CODE = "TEST_VALIDATE"


class TikTokEventsApi(Destination):
    platform = "tiktok"
    max_batch_size = 1_000
    # TikTok documents no age limit for the endpoint; attribution windows end at 28 days.
    max_event_age = timedelta(days=28)
    max_future_skew = timedelta(minutes=5)
    # Assumed from forwarders' experience: an invalid event refuses the whole request.
    all_or_nothing = True
    columns_read: ClassVar[frozenset[str] | None] = EVENT_COLUMNS | {
        "city",
        "client_ip",
        "country",
        "email_sha256",
        "external_id_sha256",
        "first_name_sha256",
        "items",
        "last_name_sha256",
        "page_url",
        "phone_sha256",
        "postal_code",
        "referrer",
        "region",
        "ttclid",
        "ttp",
        "user_agent",
    }
    accepts_consent_denied_events = True
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
        "page_view": "Pageview",
    }

    def custom_event_name(self, event_name: str, config: DestinationConfig) -> str | None:
        # TikTok takes custom event names as given (no casing rule).
        return event_name

    def encode_events(
        self, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        n = len(frame)
        text = lambda column: jc.text_column(frame, column)  # noqa: E731
        seconds = jc.unix_seconds(frame)
        names = self.platform_event_names(frame, config)
        user = (
            jc.JsonObject(n)
            .plain_string("email", jc.hex_digests(text("email_sha256")))
            .plain_string("phone", jc.hex_digests(text("phone_sha256")))
            .plain_string("external_id", jc.hex_digests(text("external_id_sha256")))
            .plain_string("first_name", jc.hex_digests(text("first_name_sha256")))
            .plain_string("last_name", jc.hex_digests(text("last_name_sha256")))
            .string("city", text("city"))
            .string("state", text("region"))
            .string("country", text("country"))
            .plain_string("zip_code", jc.sha256_of(text("postal_code")))
            .string("ttclid", text("ttclid"))
            .string("ttp", text("ttp"))
            .string("ip", text("client_ip"))
            .string("user_agent", text("user_agent"))
        )
        contents = jc.items_json(jc.parse_items(frame), ("content_id", "quantity", "price"))
        properties = (
            jc.JsonObject(n)
            .number("value", jc.float_values(frame, "value"))
            .string("currency", text("currency"))
            .string("order_id", text("order_id"))
            .constant("content_type", '"product"', where=jc.is_present(contents))
            .raw("contents", contents)
        )
        page = jc.JsonObject(n).string("url", text("page_url")).string("referrer", text("referrer"))
        event = (
            jc.JsonObject(n)
            .string("event", names.fill_null(jc.EMPTY))
            .number("event_time", pa.array(seconds))
            .string("event_id", text("event_id").fill_null(jc.EMPTY))
            .object("user", user)
            .object("properties", properties)
            .object("page", page)
        )
        if config.settings.get("limited_data_use"):
            event.constant("limited_data_use", "true")
        problems = first_problem(
            n, [(~jc.is_present(names), "no TikTok event name for this event")]
        )
        return EncodedEvents(event.build(after=","), problems, comma_after=True)

    def build_request(
        self,
        batch: EventBatch,
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        source = str(config.settings.get("event_source", "web"))
        if source not in EVENT_SOURCES:
            raise ValueError(f"{config.name}: event_source must be one of {sorted(EVENT_SOURCES)}")
        head: dict[str, str] = {
            "event_source": source,
            "event_source_id": str(config.settings.get("pixel_code", "")),
        }
        test_code = config.test_event_code
        if mode == MODE_VALIDATE and not test_code:
            test_code = str(
                config.settings.get("validate_test_event_code", VALIDATE_TEST_EVENT_CODE)
            )
        if test_code:
            head["test_event_code"] = str(test_code)
        body = orjson.dumps(head)[:-1] + b',"data":' + batch.json_array() + b"}"
        return HttpRequest(
            method="POST",
            url=f"{config.base_url or DEFAULT_BASE_URL}{TRACK_PATH}",
            body=body,
            headers={"Content-Type": "application/json"},
            secret_headers={"Access-Token": credentials["access_token"]} if credentials else {},
        )

    def classify_response(
        self, status_code: int, body: bytes, headers: dict[str, str], batch: EventBatch
    ) -> BatchOutcome:
        text = response_text(body)
        retry_after = retry_after_seconds(headers)
        try:
            document = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            document = {}
        code = document.get("code") if isinstance(document, dict) else None
        message = document.get("message") if isinstance(document, dict) else None
        reason = f"TikTok code {code}: {message}" if code is not None else f"HTTP {status_code}"
        if status_code in RETRYABLE_HTTP_STATUSES or status_code >= 500:
            return BatchOutcome(STATUS_RETRYABLE, status_code, text, retry_after, reason=reason)
        if status_code in (401, 403) or code in AUTH_CODES:
            return BatchOutcome(STATUS_AUTH, status_code, text, reason=reason)
        if 200 <= status_code < 300 and code == CODE_OK:
            return BatchOutcome(STATUS_DELIVERED, status_code, text)
        if code == CODE_THROTTLED or (isinstance(code, int) and code >= 50000):
            return BatchOutcome(STATUS_RETRYABLE, status_code, text, retry_after, reason=reason)
        whole = isinstance(message, str) and (
            "event_source" in message or "pixel" in message.lower()
        )
        return BatchOutcome(STATUS_PERMANENT, status_code, text, reason=reason, whole_request=whole)
