"""Every destination the platform can deliver to: adding a platform is one entry here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from conversion_platform.destinations.base import Destination
from conversion_platform.destinations.google_ads import GoogleAdsDataManager
from conversion_platform.destinations.google_ads_legacy import GoogleAdsClickConversions
from conversion_platform.destinations.meta import MetaConversionsApi
from conversion_platform.destinations.snapchat import SnapchatConversionsApi
from conversion_platform.destinations.tiktok import TikTokEventsApi


def _google_ads(settings: Mapping[str, Any]) -> Destination:
    # The Data Manager API is the default; `api: legacy` keeps uploadClickConversions for
    # accounts that still have it.
    if str(settings.get("api", "data_manager")) == "legacy":
        return GoogleAdsClickConversions()
    return GoogleAdsDataManager()


DESTINATIONS: dict[str, Callable[[Mapping[str, Any]], Destination]] = {
    MetaConversionsApi.platform: lambda settings: MetaConversionsApi(),
    GoogleAdsDataManager.platform: _google_ads,
    TikTokEventsApi.platform: lambda settings: TikTokEventsApi(),
    SnapchatConversionsApi.platform: lambda settings: SnapchatConversionsApi(),
}


def destination_for(platform: str, settings: Mapping[str, Any] | None = None) -> Destination:
    """The destination for a platform (and its settings); unknown platforms are a config error."""
    try:
        factory = DESTINATIONS[platform]
    except KeyError:
        known = ", ".join(sorted(DESTINATIONS))
        raise ValueError(f"unknown platform {platform!r}; known: {known}") from None
    return factory(settings or {})
