"""Page URLs where data enters: click ids read from them, personal data scrubbed out.

Sites put personal data in URLs more often than they mean to: a newsletter link with
`?email=`, a form that submits by GET, an unsubscribe path with the address in it. The
page URL and the referrer are stored and sent to ad platforms (`event_source_url`), so
anything personal is removed from them before anything is stored: query parameters with
a personal name (`email`, `phone`, `name`, ...) or a secret name (`token`, `password`),
and any parameter, path segment or fragment whose value looks like an email address or
a phone number. Click-id parameters (`gclid`, `fbclid`, ...) are kept: they are what the
platforms match on, and they are read into their own columns here too.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit, urlunsplit

from conversion_platform import events

#: Query parameter names (lowercase, `-` read as `_`) that carry personal data or secrets.
PERSONAL_PARAMETERS: frozenset[str] = frozenset(
    {
        "email", "e_mail", "mail", "email_address", "emailaddress", "em", "user_email",
        "phone", "phone_number", "phonenumber", "tel", "telephone", "mobile", "cell", "ph",
        "first_name", "firstname", "fname", "fn", "given_name",
        "last_name", "lastname", "lname", "ln", "surname", "family_name",
        "name", "full_name", "fullname",
        "external_id", "customer_id", "customerid", "user_id", "userid",
        "address", "street", "dob", "birthday", "date_of_birth",
        "password", "pwd", "pass", "token", "access_token", "auth", "api_key", "apikey",
        "secret", "session", "sessionid", "session_id",
    }
)  # fmt: skip
_CLICK_ID_PARAMETERS = frozenset(p.lower() for p in events.CLICK_ID_PARAMETERS)
_EMAIL_LIKE = re.compile(r"[^\s@/?#&=]+@[^\s@/?#&=]+\.[a-z]{2,}", re.IGNORECASE)
_PHONE_LIKE = re.compile(r"^\+?[\d\s().\-]+$")
REDACTED = "redacted"


def _looks_personal(value: str) -> bool:
    """An email address anywhere in the value, or a value that is a phone-like number."""
    if _EMAIL_LIKE.search(value):
        return True
    text = value.strip()
    return bool(_PHONE_LIKE.match(text)) and sum(ch.isdigit() for ch in text) >= 9


def _personal_name(name: str) -> bool:
    return name.strip().lower().replace("-", "_") in PERSONAL_PARAMETERS


def _scrub_pairs(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool]:
    kept: list[tuple[str, str]] = []
    changed = False
    for name, value in pairs:
        if name.lower() in _CLICK_ID_PARAMETERS and not _EMAIL_LIKE.search(value):
            kept.append((name, value))
        elif _personal_name(name) or _looks_personal(value) or _looks_personal(name):
            changed = True
        else:
            kept.append((name, value))
    return kept, changed


def scrub_url(url: str | None) -> str | None:
    """`url` without personal data; unchanged (same text) when it held none."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not a URL we can take apart: keep it only when nothing in it looks personal.
        return None if _looks_personal(unquote_plus(url)) else url
    changed = False
    segments = parts.path.split("/")
    for i, segment in enumerate(segments):
        if segment and _looks_personal(unquote_plus(segment)):
            segments[i] = REDACTED
            changed = True
    query = parts.query
    if query:
        pairs, query_changed = _scrub_pairs(parse_qsl(query, keep_blank_values=True))
        if query_changed:
            query = urlencode(pairs, quote_via=quote)
            changed = True
    fragment = parts.fragment
    if fragment:
        decoded = unquote_plus(fragment)
        if "=" in fragment:
            pairs, fragment_changed = _scrub_pairs(
                parse_qsl(fragment.lstrip("!/?"), keep_blank_values=True)
            )
            if fragment_changed:
                fragment = urlencode(pairs, quote_via=quote)
                changed = True
        elif _looks_personal(decoded) or _EMAIL_LIKE.search(decoded):
            fragment = ""
            changed = True
    if not changed:
        return url
    return urlunsplit((parts.scheme, parts.netloc, "/".join(segments), query, fragment))


def click_ids_from_url(url: str | None) -> dict[str, str]:
    """Click ids in the URL's query string, by model column (`ScCid` -> `sccid`)."""
    if not url or "?" not in url:
        return {}
    try:
        query = urlsplit(url).query
    except ValueError:
        return {}
    found: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=False):
        column = events.CLICK_ID_PARAMETERS.get(name)
        if column and value.strip() and column not in found:
            found[column] = value.strip()
    return found
