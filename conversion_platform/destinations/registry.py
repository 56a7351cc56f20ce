"""Every destination the platform can deliver to: adding a platform is one entry here."""

from __future__ import annotations

from conversion_platform.destinations.base import Destination
from conversion_platform.destinations.meta import MetaConversionsApi

DESTINATIONS: dict[str, type[Destination]] = {
    MetaConversionsApi.platform: MetaConversionsApi,
}


def destination_for(platform: str) -> Destination:
    """An instance of the platform's destination; unknown platforms are a config error."""
    try:
        return DESTINATIONS[platform]()
    except KeyError:
        known = ", ".join(sorted(DESTINATIONS))
        raise ValueError(f"unknown platform {platform!r}; known: {known}") from None
