"""Which events may carry personal identifiers: the `ad_user_data` consent rule.

Denied never may. Unknown may, unless the site must ask first
(`CONVERSION_PLATFORM_CONSENT_REQUIRED=true`), in which case only granted may. Identity
resolution uses this to decide which events link identities and get enriched; delivery
uses the same rule (`destinations.base.identifiers_allowed`) to strip identifiers.
"""

from __future__ import annotations

import pandas as pd

from conversion_platform import events


def personal_data_allowed(frame: pd.DataFrame, consent_required: bool = False) -> pd.Series:
    """True where the event's identifiers may be used (linked, enriched, sent)."""
    consent = frame["consent_ad_user_data"].astype("string").fillna(events.CONSENT_UNKNOWN)
    if consent_required:
        return (consent == events.CONSENT_GRANTED).astype(bool)
    return (consent != events.CONSENT_DENIED).astype(bool)
