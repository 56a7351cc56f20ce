"""Applying a platform's failure script to the request in hand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.responses import Response

from conversion_platform.emulator.state import EmulatorState, ScriptedResponse

#: Turns a failing scripted entry into a response in the platform's own format.
ErrorFormatter = Callable[[ScriptedResponse], Response]


async def apply_script(
    state: EmulatorState,
    platform: str,
    *,
    path: str,
    body: bytes,
    formatter: ErrorFormatter,
) -> Response | None:
    """Consume the platform's next scripted response.

    Sleeps for its delay first (so a client timeout can be tested), then returns the
    scripted error response, already recorded, or None to let the request be handled
    normally (no script left, or a 2xx / delay-only entry).
    """
    entry = state.next_scripted(platform)
    if entry is None:
        return None
    if entry.delay_seconds > 0:
        await asyncio.sleep(entry.delay_seconds)
    if not entry.is_failure:
        return None
    response = formatter(entry)
    state.record(platform, path=path, status=response.status_code, body=body, accepted=False)
    return response
