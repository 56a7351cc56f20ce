"""The pixel script in real headless Chromium (Debian's `chromium`): a page served on one
loopback port includes `/pixel.js` from the collector on another, fires a page view and a
purchase; the test finds both in the landing table with the `_mpid` cookie the browser
stored (read through the DevTools protocol: the cookie is HttpOnly, the page can't see it).
Skips with the reason when Chromium is not installed."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from conversion_platform.collector.server import free_port, serving_in_thread
from conversion_platform_tests.collector.conftest import RunningCollector, StartCollector

websockets_sync = pytest.importorskip("websockets.sync.client", reason="websockets is needed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        self.socket = websockets_sync.connect(url, max_size=None)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.socket.send(orjson.dumps({"id": call_id, "method": method, "params": params}).decode())
        while True:
            message = orjson.loads(self.socket.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), "DevTools to start")
        port = int(port_file.read_text().split()[0])
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield devtools
        finally:
            devtools.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def shop_page(collector_url: str) -> Starlette:
    html = f"""<!doctype html>
<html><head><title>shop</title>
<script src="{collector_url}/pixel.js" data-site="shop"></script>
</head><body><h1>Thank you</h1>
<script>window.pageViewId = cp('track', 'page_view');</script>
</body></html>"""

    async def thank_you(request):  # type: ignore[no-untyped-def]
        return HTMLResponse(html)

    return Starlette(routes=[Route("/checkout/thank-you", thank_you)])


def test_pixel_js_in_chromium_lands_events_with_the_mpid_cookie(
    start_collector: StartCollector, browser: DevTools
):
    page_port = free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    collector: RunningCollector = start_collector(allowed_origins=frozenset({page_origin}))
    with serving_in_thread(shop_page(collector.url), port=page_port) as page_url:
        url = f"{page_url}/checkout/thank-you?fbclid=IwAR-browser-test&utm_source=ads"
        browser.call("Page.navigate", url=url)

        # The page view: the first hit, which had no cookie; the collector set one.
        view = wait_for(
            lambda: [r for r in collector.landing() if r["event_name"] == "page_view"],
            "the page view to land",
        )[0]
        cookies = browser.call("Network.getCookies", urls=[collector.url])["cookies"]
        [mpid] = [c for c in cookies if c["name"] == "_mpid"]
        assert mpid["httpOnly"] is True
        assert mpid["sameSite"] == "Lax"
        assert mpid["expires"] - time.time() > 399 * 24 * 3600
        assert view["mpid"] == mpid["value"]

        # The purchase: `cp` returns the event_id it sent; the browser now sends the cookie.
        evaluated = browser.call(
            "Runtime.evaluate",
            expression="cp('track', 'purchase', {value: 42.5, currency: 'EUR', "
            "order_id: 'A-1001', email: ' Jane.Doe@Example.com '})",
            returnByValue=True,
        )
        event_id = evaluated["result"]["value"]
        assert isinstance(event_id, str) and len(event_id) == 36
        purchase = wait_for(
            lambda: [r for r in collector.landing() if r["event_id"] == event_id],
            "the purchase to land",
        )[0]

    assert purchase["mpid"] == mpid["value"]
    assert purchase["event_name"] == "purchase"
    assert purchase["source"] == "pixel" and purchase["site"] == "shop"
    assert purchase["value"] == 42.5 and purchase["currency"] == "EUR"
    assert purchase["value_verified"] is False
    assert purchase["order_id"] == "A-1001"
    assert purchase["email_sha256"] == hashlib.sha256(b"jane.doe@example.com").hexdigest()
    assert purchase["page_url"] == url
    assert purchase["fbclid"] == "IwAR-browser-test"
    assert purchase["fbc"].startswith("fb.1.") and purchase["fbc"].endswith(".IwAR-browser-test")
    assert "Chrome" in purchase["user_agent"]
    assert purchase["client_ip"] == "127.0.0.1"
    page_view_id = browser.call(
        "Runtime.evaluate", expression="window.pageViewId", returnByValue=True
    )["result"]["value"]
    assert view["event_id"] == page_view_id
