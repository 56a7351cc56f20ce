"""The emulator's ASGI app: the four platforms under their own prefixes, plus `/_emulator`.

| platform | path (POST unless noted) |
|---|---|
| Meta | `/meta/{version}/{pixel_id}/events?access_token=` |
| Google Data Manager | `/google/v1/events:ingest`, GET `/google/v1/requestStatus:retrieve?requestId=` |
| Google Ads (legacy) | `/google/{version}/customers/{customer_id}:uploadClickConversions` |
| TikTok | `/tiktok/open_api/v1.3/event/track/` |
| Snapchat | `/snapchat/v3/{pixel_id}/events?access_token=`, `.../events/validate` |

So a destination's base URL is the emulator's URL plus the platform prefix, for example
`http://127.0.0.1:8799/meta` in place of `https://graph.facebook.com`.
"""

from __future__ import annotations

from starlette.applications import Starlette

from conversion_platform.emulator import control, google, google_legacy, meta, snapchat, tiktok
from conversion_platform.emulator.state import DEFAULT_RECENT_LIMIT, EmulatorState


def create_app(recent_limit: int = DEFAULT_RECENT_LIMIT) -> Starlette:
    """A new emulator with its own state (exposed as `app.state.emulator`).

    `recent_limit` bounds how many request bodies each platform keeps for the control API.
    """
    state = EmulatorState(recent_limit=recent_limit)
    routes = [
        *control.routes(state),
        *meta.routes(state),
        *google.routes(state),
        *google_legacy.routes(state),
        *tiktok.routes(state),
        *snapchat.routes(state),
    ]
    app = Starlette(routes=routes)
    app.state.emulator = state
    return app
