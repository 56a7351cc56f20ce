"""Meta Conversions API (`POST {base}/{version}/{pixel_id}/events?access_token=`).

Facts from `PLATFORMS.md` and Meta's Conversions API docs: at most 1,000 events a
request, all-or-nothing (one bad event fails the request, so events are checked one by
one before batching, and a rejected batch is split to find the event at fault);
`event_time` in Unix seconds, at most 7 days old and at most a minute ahead; `em`, `ph`
(E.164 digits only, no `+`), `fn`, `ln`, `ct`, `st`, `zp`, `country`, `external_id`
SHA-256 hashed; IP, user agent, `fbc` and `fbp` as received (`fbc` derived as
`fb.1.<ms>.<fbclid>` from a click id when the cookie is missing); website events need
`event_source_url` (`settings.default_event_source_url`, the site's URL, stands in for
backend events that have no page URL) and `client_user_agent`. Graph API error codes 102, 104, 190, 10 and
200-299 are auth or permission failures; 1, 2, 4, 17, 341, 368, 80003 (and any error
flagged `is_transient`) are worth retrying; 100 is a bad request.
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

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v24.0"
RETRYABLE_ERROR_CODES = frozenset({1, 2, 4, 17, 341, 368, 80003})
#: 190 invalid or expired token, 102 session, 104 no token, 10 and 200-299 permissions.
AUTH_ERROR_CODES = frozenset({10, 102, 104, 190, *range(200, 300)})
#: Errors about the request, not an event: a missing pixel (subcode 33), an unknown path.
WHOLE_REQUEST_SUBCODES = frozenset({33})
WHOLE_REQUEST_CODES = frozenset({803, 2500})
#: The default `test_event_code` of validate mode when none is configured.
VALIDATE_TEST_EVENT_CODE = "TEST_VALIDATE"


class MetaConversionsApi(Destination):
    platform = "meta_capi"
    max_batch_size = 1_000
    max_event_age = timedelta(days=7)
    max_future_skew = timedelta(minutes=1)
    all_or_nothing = True
    columns_read: ClassVar[frozenset[str] | None] = EVENT_COLUMNS | {
        "action_source",
        "city",
        "client_ip",
        "country",
        "email_sha256",
        "external_id_sha256",
        "fbc",
        "fbclid",
        "fbp",
        "first_name_sha256",
        "items",
        "last_name_sha256",
        "page_url",
        "phone_digits_sha256",
        "postal_code",
        "region",
        "user_agent",
    }
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

    def custom_event_name(self, event_name: str, config: DestinationConfig) -> str | None:
        # Custom events keep our name: Meta takes any name up to 50 characters.
        return event_name[:50]

    def encode_events(
        self, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        n = len(frame)
        text = lambda column: jc.text_column(frame, column)  # noqa: E731
        seconds = jc.unix_seconds(frame)
        names = self.platform_event_names(frame, config)
        action_source = text("action_source").fill_null(jc.lit("website"))
        page_url = jc.with_default(
            text("page_url"), config.settings.get("default_event_source_url")
        )
        user_agent = text("user_agent")
        fbclid = text("fbclid")
        # Meta's documented form when only the click id is known: fb.1.<ms>.<fbclid>
        derived_fbc = jc.concat(
            jc.lit("fb.1."), jc.integer_text(seconds * 1000), jc.lit("."), fbclid
        )
        user = (
            jc.JsonObject(n)
            .digest_list("em", jc.hex_digests(text("email_sha256")))
            .digest_list("ph", jc.hex_digests(text("phone_digits_sha256")))
            .digest_list("fn", jc.hex_digests(text("first_name_sha256")))
            .digest_list("ln", jc.hex_digests(text("last_name_sha256")))
            .digest_list("ct", jc.sha256_of(text("city")))
            .digest_list("st", jc.sha256_of(text("region")))
            .digest_list("zp", jc.sha256_of(text("postal_code")))
            .digest_list("country", jc.sha256_of(text("country")))
            .digest_list("external_id", jc.hex_digests(text("external_id_sha256")))
            .string("client_ip_address", text("client_ip"))
            .string("client_user_agent", user_agent)
            .string("fbc", jc.coalesce(text("fbc"), derived_fbc))
            .string("fbp", text("fbp"))
        )
        custom = (
            jc.JsonObject(n)
            .number("value", jc.float_values(frame, "value"))
            .string("currency", text("currency"))
            .string("order_id", text("order_id"))
            .raw("contents", jc.items_json(jc.parse_items(frame), ("id", "quantity", "item_price")))
        )
        event = (
            jc.JsonObject(n)
            .string("event_name", names.fill_null(jc.EMPTY))
            .number("event_time", pa.array(seconds))
            .string("event_id", text("event_id").fill_null(jc.EMPTY))
            .string("action_source", action_source)
            .string("event_source_url", page_url)
            .object("user_data", user, always=True)
            .object("custom_data", custom)
        )
        if config.settings.get("limited_data_use"):
            # Limited Data Use with country and state 0: Meta geolocates each event and
            # applies LDU where a US state's law requires it.
            event.constant("data_processing_options", '["LDU"]')
            event.constant("data_processing_options_country", "0")
            event.constant("data_processing_options_state", "0")
        website = action_source.to_numpy(zero_copy_only=False) == "website"
        problems = first_problem(
            n,
            [
                (~jc.is_present(names), "no Meta event name for this event"),
                (website & ~jc.is_present(page_url), "website event without event_source_url"),
                (
                    website & ~jc.is_present(user_agent),
                    "website event without client_user_agent",
                ),
                (~user.present, "no customer information parameters"),
            ],
        )
        return EncodedEvents(event.build(after=","), problems, comma_after=True)

    def build_request(
        self,
        batch: EventBatch,
        config: DestinationConfig,
        credentials: dict[str, str] | None,
        mode: str,
    ) -> HttpRequest:
        pixel_id = str(config.settings.get("pixel_id", ""))
        version = str(config.settings.get("api_version", DEFAULT_API_VERSION))
        test_code = config.test_event_code
        if mode == MODE_VALIDATE and not test_code:
            test_code = str(
                config.settings.get("validate_test_event_code", VALIDATE_TEST_EVENT_CODE)
            )
        body = b'{"data":' + batch.json_array()
        if test_code:
            body += b',"test_event_code":' + orjson.dumps(str(test_code))
        body += b"}"
        return HttpRequest(
            method="POST",
            url=f"{config.base_url or DEFAULT_BASE_URL}/{version}/{pixel_id}/events",
            body=body,
            headers={"Content-Type": "application/json"},
            secret_params={"access_token": credentials["access_token"]} if credentials else {},
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
        if not isinstance(document, dict):
            document = {}
        if 200 <= status_code < 300 and "error" not in document:
            received = document.get("events_received")
            if isinstance(received, int) and received != len(batch):
                return BatchOutcome(
                    STATUS_RETRYABLE,
                    status_code,
                    text,
                    retry_after,
                    reason=f"Meta received {received} of {len(batch)} events",
                )
            return BatchOutcome(STATUS_DELIVERED, status_code, text)
        error = document.get("error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        subcode = error.get("error_subcode")
        detail = error.get("error_user_msg") or error.get("message")
        reason = f"Meta error {code}: {detail}" if code is not None else f"HTTP {status_code}"
        if code in AUTH_ERROR_CODES or (status_code in (401, 403) and code is None):
            return BatchOutcome(STATUS_AUTH, status_code, text, reason=reason)
        if (
            code in RETRYABLE_ERROR_CODES
            or error.get("is_transient") is True
            or status_code in RETRYABLE_HTTP_STATUSES
            or status_code >= 500
        ):
            return BatchOutcome(STATUS_RETRYABLE, status_code, text, retry_after, reason=reason)
        whole = subcode in WHOLE_REQUEST_SUBCODES or code in WHOLE_REQUEST_CODES
        return BatchOutcome(STATUS_PERMANENT, status_code, text, reason=reason, whole_request=whole)
