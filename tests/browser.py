"""Headless Chromium for the tests, driven over the DevTools protocol (a WebSocket; no browser download).

Chromium is Debian's `chromium` package: `chromium_path()` installs it with apt-get when it is missing and the
tests run as root (as in CI, where `.ci/run` installs it too), else the test skips (fails in CI).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.conftest import service_missing, stop

# Flags the machine's closed network needs (no background fetches, no component updates) and root needs.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True,
                       env=env, timeout=600)
        found = shutil.which("chromium")
        if found:
            return found
    service_missing("Chromium is not installed (Debian package `chromium`)")
    raise AssertionError("unreachable")


class Page:
    """One browser tab: send DevTools commands, evaluate JavaScript, press keys, take screenshots."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def press(self, key: str) -> None:
        """A key press as a person makes it (keydown with its text, keyup)."""
        self.send("Input.dispatchKeyEvent", type="keyDown", key=key, text=key, unmodifiedText=key)
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def terminal_text(self) -> str:
        """The text on the screen of the page's xterm.js terminal (textual-serve draws on a canvas, so it is read
        from the terminal's buffer: the one object of the page with a `terminal.buffer.active`)."""
        prototype = self.send("Runtime.evaluate", expression="Object.prototype")["result"]["objectId"]
        objects = self.send("Runtime.queryObjects", prototypeObjectId=prototype)["objects"]["objectId"]
        found = self.send("Runtime.callFunctionOn", objectId=objects, returnByValue=True, functionDeclaration="""
            function () {
                for (const o of this) {
                    const buffer = o && o.terminal && o.terminal.buffer && o.terminal.buffer.active;
                    if (buffer && typeof buffer.getLine === "function") {
                        const lines = [];
                        for (let y = 0; y < o.terminal.rows; y++) {
                            const line = buffer.getLine(buffer.viewportY + y);
                            lines.push(line ? line.translateToString(true) : "");
                        }
                        return lines.join("\\n");
                    }
                }
                return null;
            }""")
        self.send("Runtime.releaseObject", objectId=objects)
        return found["result"].get("value") or ""

    def wait_for_text(self, *needles: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.terminal_text()
            if all(needle in text for needle in needles):
                return text
            time.sleep(0.25)
        raise AssertionError(f"the page never showed {needles}; it showed:\n{text}")


@contextmanager
def chromium(tmp: Path, url: str = "about:blank", *, width: int = 1280, height: int = 800) -> Iterator[Page]:
    """A headless Chromium showing `url`, and its tab."""
    profile = tmp / "chromium-profile"
    log_path = tmp / "chromium.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([chromium_path(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                    f"--window-size={width},{height}", url], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", log_path.read_text(errors="replace"))
            if match:
                port = int(match.group(1))
            elif process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start:\n{log_path.read_text(errors='replace')}")
            else:
                time.sleep(0.1)
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page_target = next(t for t in targets if t["type"] == "page")
        with connect(page_target["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as socket:
            page = Page(socket)
            page.send("Page.enable")
            page.send("Runtime.enable")
            yield page
    finally:
        stop(process)
