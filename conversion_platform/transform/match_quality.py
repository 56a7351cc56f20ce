"""Match quality: how well an ad platform can tie a conversion to a person, 0 to 10.

Strong keys (hashed email, hashed phone, a click id) count most; medium keys (IP with
user agent, a platform cookie, an external id) less; weak keys (names, postal code)
least. The score is capped at 10.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STRONG_CLICK_IDS: tuple[str, ...] = (
    "gclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "fbc",
    "ttclid",
    "sccid",
)
PLATFORM_COOKIES: tuple[str, ...] = ("fbp", "ttp")

STRONG_WEIGHT = 3.0
MEDIUM_WEIGHT = 1.5
WEAK_WEIGHT = 0.5
MAX_SCORE = 10.0


def _has(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    present = [frame[c].notna().to_numpy() for c in columns if c in frame.columns]
    if not present:
        return np.zeros(len(frame), dtype=bool)
    return np.logical_or.reduce(present)


def strong_key_counts(frame: pd.DataFrame) -> np.ndarray:
    """How many strong keys each row has (email, phone, any click id)."""
    return (
        _has(frame, ("email_sha256",)).astype(int)
        + _has(frame, ("phone_sha256",)).astype(int)
        + _has(frame, STRONG_CLICK_IDS).astype(int)
    )


def match_quality_scores(frame: pd.DataFrame) -> np.ndarray:
    """The 0-10 score of each row."""
    ip_and_agent = _has(frame, ("client_ip",)) & _has(frame, ("user_agent",))
    score = (
        STRONG_WEIGHT * strong_key_counts(frame)
        + MEDIUM_WEIGHT
        * (
            ip_and_agent.astype(int)
            + _has(frame, PLATFORM_COOKIES)
            + _has(frame, ("external_id_sha256",))
        )
        + WEAK_WEIGHT
        * (
            _has(frame, ("first_name_sha256",)).astype(int)
            + _has(frame, ("last_name_sha256",))
            + _has(frame, ("postal_code",))
        )
    )
    return np.minimum(score.astype(float), MAX_SCORE)
