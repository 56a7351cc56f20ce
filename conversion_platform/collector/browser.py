"""What a pixel hit means: the event its page sent, plus what only the request knows.

The page sends the event (name, id, value, order, page URL, ...). The request adds the
first-party id cookie `_mpid`, the ad platforms' cookies (`_fbp`, `_fbc`, `_ttp`,
`_epik`), the client's address and user agent, and the click ids in the page URL's query
string; `fbc` is derived from `fbclid` (`fb.1.<ms>.<fbclid>`, Meta's format) when the
`_fbc` cookie is absent.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conversion_platform import events

MPID_COOKIE = "_mpid"
#: 400 days: the longest lifetime Chrome (and the cookie RFC draft) allows.
MPID_MAX_AGE_SECONDS = 400 * 24 * 60 * 60
_MPID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

#: Platform cookies read from the request (cookie name -> column).
PLATFORM_COOKIES: dict[str, str] = {"_fbp": "fbp", "_fbc": "fbc", "_ttp": "ttp", "_epik": "epik"}

#: Fields only the request may set: a page can't claim another address, agent or id.
REQUEST_FIELDS = frozenset({"client_ip", "user_agent", "mpid", "received_at", "source"})
#: Fields a page may send.
PAGE_FIELDS: tuple[str, ...] = tuple(f for f in events.INCOMING_FIELDS if f not in REQUEST_FIELDS)

_MAX_USER_AGENT = 1_024


@dataclass(frozen=True)
class BrowserRequest:
    """What the collector knows about a hit besides its payload."""

    received_at: datetime
    client_ip: str | None
    user_agent: str | None
    cookies: Mapping[str, str]
    referer: str | None


def new_mpid() -> str:
    """A fresh first-party id: 128 random bits."""
    return secrets.token_hex(16)


def mpid_of(cookies: Mapping[str, str]) -> str | None:
    """The request's `_mpid`, when it holds an id this collector could have issued."""
    value = cookies.get(MPID_COOKIE)
    return value if value and _MPID.match(value) else None


def mpid_cookie(mpid: str, *, secure: bool, domain: str | None) -> str:
    """The `Set-Cookie` value that sets or refreshes `_mpid`."""
    parts = [
        f"{MPID_COOKIE}={mpid}",
        f"Max-Age={MPID_MAX_AGE_SECONDS}",
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
    ]
    if domain:
        parts.append(f"Domain={domain}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def click_ids_in(url: Any) -> dict[str, str]:
    """Click ids in a page URL's query string (column -> first value)."""
    if not isinstance(url, str) or "?" not in url:
        return {}
    try:
        query = parse_qs(urlsplit(url).query, keep_blank_values=False)
    except ValueError:
        return {}
    found: dict[str, str] = {}
    for parameter, column in events.CLICK_ID_PARAMETERS.items():
        values = query.get(parameter)
        if values and values[0].strip() and column not in found:
            found[column] = values[0].strip()
    return found


def derived_fbc(fbclid: str, received_at: datetime) -> str:
    """Meta's click cookie format, made from a click id at the time it was seen."""
    return f"fb.1.{int(received_at.timestamp() * 1000)}.{fbclid}"


def browser_event(payload: Mapping[str, Any], request: BrowserRequest, mpid: str) -> dict[str, Any]:
    """The incoming record of one pixel hit: the page's fields plus the request's."""
    record: dict[str, Any] = {f: payload[f] for f in PAGE_FIELDS if f in payload}
    if record.get("page_url") in (None, "") and request.referer:
        record["page_url"] = request.referer
    for column, value in click_ids_in(record.get("page_url")).items():
        if record.get(column) in (None, ""):
            record[column] = value
    for cookie, column in PLATFORM_COOKIES.items():
        value = request.cookies.get(cookie)
        if value and (column != "epik" or record.get("epik") in (None, "")):
            record[column] = value
    fbclid = record.get("fbclid")
    if record.get("fbc") in (None, "") and isinstance(fbclid, str) and fbclid.strip():
        record["fbc"] = derived_fbc(fbclid.strip(), request.received_at)
    record["client_ip"] = request.client_ip
    record["user_agent"] = request.user_agent[:_MAX_USER_AGENT] if request.user_agent else None
    record["mpid"] = mpid
    if record.get("event_time") in (None, ""):
        # The time received, made explicit so two identical hits without an event_id get
        # different generated ids.
        record["event_time"] = request.received_at.isoformat()
    return record
