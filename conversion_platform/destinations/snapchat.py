"""Snapchat Conversions API v3 (`POST {base}/v3/{pixel_id}/events?access_token=`).

Facts from `PLATFORMS.md` and Snap's Conversions API v3 pages ("Using the API",
"Parameters"): at most 2,000 events a request; `event_time` in Unix seconds, at most 37
days old; `event_id` dedupes against the pixel's `client_dedup_id`. `user_data` `em`, `ph`
(E.164 digits only, no `+`), `fn`, `ln`, `ct`, `st`, `zp`, `country`, `external_id`
SHA-256 hashed; `client_ip_address`, `client_user_agent`, `sc_click_id` in clear. Each event
needs `event_name`, `event_time`, `action_source` (`WEB`, `MOBILE_APP`, `OFFLINE`),
`event_source_url` for web events (`settings.default_event_source_url` stands in where a
backend event has none), and a key to match a Snapchatter on (em, ph,
external_id, sc_click_id, or IP with user agent); PURCHASE needs value and currency.
`POST /v3/{pixel_id}/events/validate` checks a payload without recording it.

Snap has standard names in capitals and five custom slots (`CUSTOM_EVENT_1`..`_5`):
lead, contact and submit_application, which Snap has no standard event for, take slots 1
to 3, and any other custom name takes `settings.custom_event_name` (slot 5 by default),
unless `event_names` maps it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar

import orjson
import pandas as pd
import pyarrow as pa

from conversion_platform import events
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

DEFAULT_BASE_URL = "https://tr.snapchat.com"
DEFAULT_CUSTOM_EVENT = "CUSTOM_EVENT_5"
#: Our action sources -> Snap's (anything not on the web or in an app is offline).
ACTION_SOURCES = {"website": "WEB", "app": "MOBILE_APP"}
REFUSED_WORDS = frozenset({"INVALID", "FAILED", "ERROR"})


class SnapchatConversionsApi(Destination):
    platform = "snapchat"
    max_batch_size = 2_000
    max_event_age = timedelta(days=37)
    max_future_skew = timedelta(minutes=5)
    # Assumed: one invalid event refuses the request, as on Meta whose shape v3 follows.
    all_or_nothing = True
    columns_read: ClassVar[frozenset[str] | None] = EVENT_COLUMNS | {
        "action_source",
        "city",
        "client_ip",
        "country",
        "email_sha256",
        "external_id_sha256",
        "first_name_sha256",
        "items",
        "last_name_sha256",
        "page_url",
        "phone_digits_sha256",
        "postal_code",
        "region",
        "sccid",
        "user_agent",
    }
    # Without consent an event has no key to match a Snapchatter on, and Snap refuses it.
    accepts_consent_denied_events = False
    standard_event_names: ClassVar[dict[str, str]] = {
        "purchase": "PURCHASE",
        "sign_up": "SIGN_UP",
        "complete_registration": "SIGN_UP",
        "start_trial": "START_TRIAL",
        "subscribe": "SUBSCRIBE",
        "add_to_cart": "ADD_CART",
        "initiate_checkout": "START_CHECKOUT",
        "add_payment_info": "ADD_BILLING",
        "page_view": "PAGE_VIEW",
        # No Snap standard event for these: fixed custom slots, so reports stay stable.
        "lead": "CUSTOM_EVENT_1",
        "contact": "CUSTOM_EVENT_2",
        "submit_application": "CUSTOM_EVENT_3",
    }

    def custom_event_name(self, event_name: str, config: DestinationConfig) -> str | None:
        return str(config.settings.get("custom_event_name", DEFAULT_CUSTOM_EVENT))

    def encode_events(
        self, frame: pd.DataFrame, config: DestinationConfig, now: datetime
    ) -> EncodedEvents:
        n = len(frame)
        text = lambda column: jc.text_column(frame, column)  # noqa: E731
        seconds = jc.unix_seconds(frame)
        names = self.platform_event_names(frame, config)
        action_source = jc.map_text(
            text("action_source").fill_null(jc.lit("website")),
            {s: ACTION_SOURCES.get(s, "OFFLINE") for s in events.ACTION_SOURCES},
        ).fill_null(jc.lit("OFFLINE"))
        page_url = jc.with_default(
            text("page_url"), config.settings.get("default_event_source_url")
        )
        ip, user_agent, click_id = text("client_ip"), text("user_agent"), text("sccid")
        email = jc.hex_digests(text("email_sha256"))
        phone = jc.hex_digests(text("phone_digits_sha256"))
        external_id = jc.hex_digests(text("external_id_sha256"))
        user = (
            jc.JsonObject(n)
            .digest_list("em", email)
            .digest_list("ph", phone)
            .digest_list("fn", jc.hex_digests(text("first_name_sha256")))
            .digest_list("ln", jc.hex_digests(text("last_name_sha256")))
            .digest_list("ct", jc.sha256_of(text("city")))
            .digest_list("st", jc.sha256_of(text("region")))
            .digest_list("zp", jc.sha256_of(text("postal_code")))
            .digest_list("country", jc.sha256_of(text("country")))
            .digest_list("external_id", external_id)
            .string("client_ip_address", ip)
            .string("client_user_agent", user_agent)
            .string("sc_click_id", click_id)
        )
        value = jc.float_values(frame, "value")
        currency = text("currency")
        custom = (
            jc.JsonObject(n)
            .number("value", value)
            .string("currency", currency)
            .string("order_id", text("order_id"))
            .raw("contents", jc.items_json(jc.parse_items(frame), ("id", "quantity", "item_price")))
        )
        event = (
            jc.JsonObject(n)
            .string("event_name", names.fill_null(jc.EMPTY))
            .number("event_time", pa.array(seconds))
            .string("event_id", text("event_id").fill_null(jc.EMPTY))
            .plain_string("action_source", action_source)
            .string("event_source_url", page_url)
            .object("user_data", user, always=True)
            .object("custom_data", custom)
        )
        present = jc.is_present
        web = action_source.to_numpy(zero_copy_only=False) == "WEB"
        purchase = names.fill_null(jc.EMPTY).to_numpy(zero_copy_only=False) == "PURCHASE"
        can_match = (
            present(email)
            | present(phone)
            | present(external_id)
            | present(click_id)
            | (present(ip) & present(user_agent))
        )
        problems = first_problem(
            n,
            [
                (~present(names), "no Snapchat event name for this event"),
                (web & ~present(page_url), "web event without event_source_url"),
                (
                    ~can_match,
                    "no key to match a Snapchatter (email, phone, external id, click id, "
                    "or IP with user agent)",
                ),
                (
                    purchase & ~(present(value) & present(currency)),
                    "PURCHASE without value and currency",
                ),
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
        suffix = "/validate" if mode == MODE_VALIDATE else ""
        return HttpRequest(
            method="POST",
            url=f"{config.base_url or DEFAULT_BASE_URL}/v3/{pixel_id}/events{suffix}",
            body=b'{"data":' + batch.json_array() + b"}",
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
        word = str(document.get("status", "")).upper()
        detail = document.get("reason") or document.get("message")
        reason = (
            f"Snapchat {word or 'HTTP ' + str(status_code)}: {detail}"
            if detail
            else f"HTTP {status_code}"
        )
        if 200 <= status_code < 300 and word not in REFUSED_WORDS:
            return BatchOutcome(STATUS_DELIVERED, status_code, text)
        if status_code in (401, 403):
            return BatchOutcome(STATUS_AUTH, status_code, text, reason=reason)
        if status_code in RETRYABLE_HTTP_STATUSES or status_code >= 500:
            return BatchOutcome(STATUS_RETRYABLE, status_code, text, retry_after, reason=reason)
        whole = status_code == 404
        return BatchOutcome(STATUS_PERMANENT, status_code, text, reason=reason, whole_request=whole)
