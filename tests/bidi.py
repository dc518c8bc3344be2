"""A tiny WebDriver BiDi client for headless Firefox (no geckodriver: Firefox speaks BiDi itself).

Firefox started with ``--remote-debugging-port`` prints ``WebDriver BiDi listening on ws://...``
on stderr; commands are JSON over a websocket to ``/session`` (https://w3c.github.io/webdriver-bidi/).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import websocket

FIREFOX = Path("/usr/bin/firefox-esr")

# A fake camera and microphone with no prompt, autoplay allowed, and no network noise. Host
# candidates carry their IP addresses (no mDNS names: aiortc cannot resolve them); loopback and
# link-local remote candidates are allowed (Firefox still gathers none on 127.0.0.1 itself).
PREFS: dict[str, object] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.link_local": True,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.ping-centre.telemetry": False,
    "remote.prefs.recommended": True,
}


class BidiError(AssertionError):
    """A BiDi command failed, timed out, or Firefox did not start."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pref(value: object) -> str:
    return json.dumps(value)


class Firefox:
    """Headless Firefox with a fresh profile, driven over WebDriver BiDi."""

    def __init__(self, prefs: dict[str, object] | None = None, *, start_timeout: float = 30.0,
                 binary: Path = FIREFOX) -> None:
        if not binary.exists():
            raise BidiError(f"{binary} is missing (apt-get install firefox-esr)")
        self.profile = tempfile.mkdtemp(prefix="streamgw-firefox-")
        all_prefs = {**PREFS, **(prefs or {})}
        Path(self.profile, "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {_pref(v)});\n" for k, v in all_prefs.items()))
        self.port = _free_port()
        self.stderr: list[str] = []
        self._next_id = 0
        self._ws: Any = None
        self._drain: threading.Thread | None = None
        # The profile is also its HOME: nothing lands in the test's own HOME.
        env = {**os.environ, "HOME": self.profile, "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_HEADLESS": "1"}
        self.proc = subprocess.Popen(
            [str(binary), "--headless", "--no-remote", "--profile", self.profile,
             "--remote-debugging-port", str(self.port), "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            url = self._wait_listening(start_timeout)
            self._ws = websocket.create_connection(url.rstrip("/") + "/session", timeout=start_timeout,
                                                   suppress_origin=True)
            self.call("session.new", {"capabilities": {}})
            tree = self.call("browsingContext.getTree", {})
            self.context: str = tree["contexts"][0]["context"]
        except BaseException:
            self.quit()
            raise

    def _wait_listening(self, timeout: float) -> str:
        """Read stderr until Firefox says where BiDi listens (a thread keeps draining it after)."""
        lines: queue.Queue[str | None] = queue.Queue()
        stderr = self.proc.stderr
        assert stderr is not None

        def drain() -> None:
            for line in stderr:
                self.stderr.append(line.rstrip())
                del self.stderr[:-200]
                lines.put(line)
            lines.put(None)

        self._drain = threading.Thread(target=drain, name="firefox-stderr", daemon=True)
        self._drain.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BidiError(f"Firefox did not listen in {timeout:.0f} s:\n" + self.log()) from None
            if line is None:
                raise BidiError(f"Firefox exited ({self.proc.wait()}):\n" + self.log())
            if "WebDriver BiDi listening on " in line:
                return line.split("listening on ", 1)[1].strip()

    def log(self, lines: int = 40) -> str:
        """The last lines Firefox wrote on stderr."""
        return "\n".join(self.stderr[-lines:])

    def call(self, method: str, params: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and return its result; BidiError on an error reply or after ``timeout``."""
        self._next_id += 1
        msg_id = self._next_id
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BidiError(f"{method}: no reply in {timeout:.0f} s")
            self._ws.settimeout(left)
            try:
                reply = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                raise BidiError(f"{method}: no reply in {timeout:.0f} s") from None
            if reply.get("id") != msg_id:
                continue  # an event
            if reply.get("type") == "error":
                raise BidiError(f"{method}: {reply.get('error')}: {reply.get('message')}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Load ``url`` in the first tab and wait until it is complete."""
        self.call("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"},
                  timeout)

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` in the page (awaiting a promise) and return its value as JSON.

        Return JSON text from the page (``JSON.stringify(...)``) for anything but a primitive.
        """
        result = self.call("script.evaluate", {"expression": expression, "target": {"context": self.context},
                                               "awaitPromise": True}, timeout)
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BidiError(f"script error: {details.get('text')}")
        value = result.get("result", {})
        if value.get("type") in ("undefined", "null"):
            return None
        return value.get("value")

    def quit(self) -> None:
        """End the session, stop Firefox, and remove its profile."""
        if self._ws is not None:
            try:
                self._ws.settimeout(5)
                self._ws.send(json.dumps({"id": self._next_id + 1, "method": "session.end", "params": {}}))
            except (OSError, websocket.WebSocketException):
                pass
            try:
                self._ws.close()
            except (OSError, websocket.WebSocketException):
                pass
            self._ws = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._drain is not None:
            self._drain.join(5)  # it ends at EOF, now that Firefox has exited
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)
