"""A small driver for headless Chromium over the DevTools protocol (for scripts/screenshots.py).

Chromium's own `--screenshot` flag cannot wait for the Dagster UI's data or click a
button, so this starts Debian's `chromium` with a remote-debugging port and speaks the
DevTools protocol over a WebSocket (the `websockets` package, already installed with
uvicorn): navigate, evaluate JavaScript, wait for a condition, take a PNG.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: The flags the project uses for every headless Chromium (see the brief / CI).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


class BrowserError(RuntimeError):
    """Chromium did not start, or a page did not do what was waited for."""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessChromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, width: int = 1600, height: int = 1000, scale: float = 1.0) -> None:
        executable = find_chromium()
        if executable is None:
            raise BrowserError("chromium is not installed (apt-get install -y chromium)")
        #: CSS pixels of the page; the PNG is `scale` times that (a wide page, legible image)
        self.width, self.height, self.scale = width, height, scale
        self._profile = Path(tempfile.mkdtemp(prefix="cp-chromium-"))
        self._process = subprocess.Popen(
            [
                executable,
                *CHROMIUM_FLAGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self._socket: ClientConnection | None = None

    def __enter__(self) -> HeadlessChromium:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.close()
                raise BrowserError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.load(answer)
        page = next(t for t in targets if t.get("type") == "page")
        self._socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=self.scale,
            mobile=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; returns its result (events in between are skipped)."""
        assert self._socket is not None
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "") -> None:
        """Poll a JavaScript condition until it is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(expression):
                    return
            except BrowserError:
                pass
            time.sleep(0.25)
        raise BrowserError(f"timed out waiting for {what or expression}")

    def wait_for_text(self, text: str, timeout: float = 60.0) -> None:
        self.wait_for(
            f"document.body && document.body.innerText.includes({json.dumps(text)})",
            timeout,
            what=f"text {text!r}",
        )

    def click_at(self, x: float, y: float) -> None:
        """A real mouse click (React listens to the whole press-release sequence)."""
        for event in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=event, x=x, y=y, button="left", clickCount=1)

    def press_escape(self) -> None:
        for event in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=event,
                key="Escape",
                code="Escape",
                windowsVirtualKeyCode=27,
            )

    def click(self, selector_script: str, what: str) -> None:
        """Click the centre of the element a script returns (an expression yielding an Element)."""
        box = self.evaluate(
            f"(() => {{ const e = {selector_script}; if (!e) return null; "
            "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if not box:
            raise BrowserError(f"nothing to click: {what}")
        self.click_at(*box)

    def click_text(self, text: str) -> None:
        """Click the innermost visible element whose text is `text` (or starts with it)."""
        script = (
            "Array.from(document.querySelectorAll('body *'))"
            f".filter(e => e.offsetParent !== null && e.innerText && e.innerText.trim().startsWith({json.dumps(text)}))"
            ".sort((a, b) => a.innerText.length - b.innerText.length)[0]"
        )
        self.click(script, f"text {text!r}")

    def screenshot(self, path: Path, clip: tuple[float, float, float, float] | None = None) -> Path:
        """A PNG of the viewport, or of `clip` (x, y, width, height in CSS pixels)."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": False}
        if clip is not None:
            x, y, width, height = clip
            params["clip"] = {"x": x, "y": y, "width": width, "height": height, "scale": 1}
        data = self.send("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path
