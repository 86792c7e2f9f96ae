"""A minimal W3C WebDriver client for headless Chromium, standard library only.

Why not selenium: the end-to-end test needs six WebDriver commands.  Talking
to Debian's ``chromedriver`` directly keeps the test extra free of selenium's
dependency stack, and of Selenium Manager, which tries to download drivers
(no network but the package registries here).

Needs the Debian packages ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness import free_port

APT_PACKAGES = ("chromium", "chromium-driver")

#: The flags CI runs Chromium with (root in a container: no sandbox; no
#: background traffic to Google services, no first-run UI).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
    "--window-size=1500,460",
]

# Never route the loopback WebDriver calls through an environment proxy.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def find_chromium() -> tuple[str, str] | None:
    """``(chromium binary, chromedriver)`` or None when either is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        binary = shutil.which(name)
        if binary:
            break
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


def wait_until(
    condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition"
) -> Any:
    """Poll *condition* until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One chromedriver process and one headless Chromium session."""

    def __init__(self, binary: str, driver: str, profile_dir: Path) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [driver, f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(self._ready, 20, "chromedriver to start")
            capabilities = {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": binary,
                    "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"],
                },
            }
            answer = self._call(
                "POST", "/session", {"capabilities": {"alwaysMatch": capabilities}}
            )
            self.session = answer["sessionId"]
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status").get("ready"))
        except (OSError, WebDriverError):
            return False

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with _opener.open(request, timeout=60) as response:
                return json.loads(response.read() or b"{}").get("value")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise WebDriverError(f"{method} {path}: {error.code} {detail}") from None

    def _session_call(self, method: str, path: str, payload: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", payload)

    def get(self, url: str) -> None:
        self._session_call("POST", "/url", {"url": url})

    def add_cookie(self, name: str, value: str) -> None:
        self._session_call(
            "POST", "/cookie", {"cookie": {"name": name, "value": value, "path": "/"}}
        )

    def execute(self, script: str, *args: Any) -> Any:
        return self._session_call(
            "POST", "/execute/sync", {"script": script, "args": list(args)}
        )

    def set_window_size(self, width: int, height: int) -> None:
        self._session_call("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self._session_call("GET", "/screenshot"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def quit(self) -> None:
        try:
            self._session_call("DELETE", "")
        except (OSError, WebDriverError):
            pass
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
