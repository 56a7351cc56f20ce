"""Match quality: how well an ad platform can tie a conversion to a person, 0 to 10.

Each key present counts by strength: strong keys (hashed email, hashed phone, the
platform's click id) 3 points, medium keys (IP address with user agent, the platform's
cookie, external id) 1.5, weak keys (first name, last name, postal code) 0.5; the
score is capped at 10. Which keys count depends on the destination (`KEY_RELEVANCE`):
Meta can't use a gclid and Google has no use for the fbp cookie. The general score
(`match_quality`) counts every platform's keys.

Scores are of what will actually leave: an event without `ad_user_data` consent has its
identifiers stripped before delivery, so it scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from conversion_platform import events

STRONG_WEIGHT = 3.0
MEDIUM_WEIGHT = 1.5
WEAK_WEIGHT = 0.5
MAX_SCORE = 10.0

#: Row features (keys) and the columns any of which makes the key present.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "email": ("email_sha256",),
    "phone": ("phone_sha256",),
    "external_id": ("external_id_sha256",),
    "first_name": ("first_name_sha256",),
    "last_name": ("last_name_sha256",),
    "postal_code": ("postal_code",),
    "meta_click": ("fbclid", "fbc"),
    "google_click": ("gclid", "gbraid", "wbraid"),
    "tiktok_click": ("ttclid",),
    "snapchat_click": ("sccid",),
    "any_click": (*events.CLICK_ID_COLUMNS, "fbc"),
    "fbp": ("fbp",),
    "ttp": ("ttp",),
    "any_cookie": ("fbp", "ttp"),  # fbc is a click id in cookie form: counted as a click
}
#: IP address and user agent count only together.
IP_AND_USER_AGENT = "ip_user_agent"
#: Every column a key is read from.
PRESENCE_COLUMNS: tuple[str, ...] = (
    *dict.fromkeys(c for columns in KEY_COLUMNS.values() for c in columns),
    "client_ip",
    "user_agent",
)

_WEAK = ("first_name", "last_name", "postal_code")

#: Which keys each destination uses, by strength (from PLATFORMS.md). `general` is every
#: platform's keys at once.
KEY_RELEVANCE: dict[str, dict[str, tuple[str, ...]]] = {
    "general": {
        "strong": ("email", "phone", "any_click"),
        "medium": (IP_AND_USER_AGENT, "any_cookie", "external_id"),
        "weak": _WEAK,
    },
    "meta": {
        "strong": ("email", "phone", "meta_click"),
        "medium": (IP_AND_USER_AGENT, "fbp", "external_id"),
        "weak": _WEAK,
    },
    "google": {
        # Google takes no cookie or external id; the address match uses names and postcode.
        "strong": ("email", "phone", "google_click"),
        "medium": (IP_AND_USER_AGENT,),
        "weak": _WEAK,
    },
    "tiktok": {
        "strong": ("email", "phone", "tiktok_click"),
        "medium": (IP_AND_USER_AGENT, "ttp", "external_id"),
        "weak": _WEAK,
    },
    "snapchat": {
        "strong": ("email", "phone", "snapchat_click"),
        "medium": (IP_AND_USER_AGENT, "external_id"),
        "weak": _WEAK,
    },
}

#: Registry platform names (and prefixes) -> the score they use.
_PLATFORM_PREFIXES: tuple[tuple[str, str], ...] = (
    ("meta", "meta"),
    ("facebook", "meta"),
    ("google", "google"),
    ("tiktok", "tiktok"),
    ("snap", "snapchat"),
)


def score_key_for(platform: str) -> str | None:
    """The scored platform of a destination's platform name (`meta_capi` -> `meta`)."""
    name = platform.lower()
    return next((score for prefix, score in _PLATFORM_PREFIXES if name.startswith(prefix)), None)


def match_quality_column(platform: str) -> str:
    """The score column a destination's events use (the general one if none is specific)."""
    key = score_key_for(platform)
    return f"match_quality_{key}" if key in events.MATCH_QUALITY_PLATFORMS else "match_quality"


def key_presence(frame: pd.DataFrame, allowed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per key, whether each row has it (rows not `allowed` to carry identifiers have none)."""
    notna = {c: frame[c].notna().to_numpy() for c in PRESENCE_COLUMNS if c in frame.columns}
    return presence_from_notna(notna, len(frame), allowed)


def presence_from_notna(
    notna: Mapping[str, np.ndarray], size: int, allowed: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """`key_presence` from per-column not-null masks already computed."""
    nothing = np.zeros(size, dtype=bool)
    present: dict[str, np.ndarray] = {}
    for key, columns in KEY_COLUMNS.items():
        found = [notna[c] for c in columns if c in notna]
        present[key] = np.logical_or.reduce(found) if found else nothing
    present[IP_AND_USER_AGENT] = notna.get("client_ip", nothing) & notna.get("user_agent", nothing)
    if allowed is not None:
        present = {k: v & allowed for k, v in present.items()}
    return present


def strong_key_counts(presence: Mapping[str, np.ndarray], platform: str = "general") -> np.ndarray:
    """How many of the platform's strong keys each row has."""
    strong = KEY_RELEVANCE[platform]["strong"]
    return np.sum([presence[k] for k in strong], axis=0).astype(np.int64)


def match_quality_scores(
    presence: Mapping[str, np.ndarray], platform: str = "general"
) -> np.ndarray:
    """The 0-10 score of each row for one platform (or `general`)."""
    relevance = KEY_RELEVANCE[platform]
    score = (
        STRONG_WEIGHT * np.sum([presence[k] for k in relevance["strong"]], axis=0)
        + MEDIUM_WEIGHT * np.sum([presence[k] for k in relevance["medium"]], axis=0)
        + WEAK_WEIGHT * np.sum([presence[k] for k in relevance["weak"]], axis=0)
    )
    return np.round(np.minimum(np.asarray(score, dtype=float), MAX_SCORE), 2)


def score_columns(presence: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`match_quality` and `match_quality_<platform>` for every scored platform."""
    columns = {"match_quality": match_quality_scores(presence)}
    for platform in events.MATCH_QUALITY_PLATFORMS:
        columns[f"match_quality_{platform}"] = match_quality_scores(presence, platform)
    return columns
