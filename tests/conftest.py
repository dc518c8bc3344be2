"""Shared fixtures: a real gateway on 127.0.0.1 ports, real ffmpeg publishers, generated media."""

from __future__ import annotations

import asyncio
import os
import shutil
import site
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis  # noqa: F401 - imported before any test runs: see below
import pytest

from streamgw.config import Settings, load_settings, split_addr
from streamgw.node import GatewayNode

# hypothesis's pytest plugin imports hypothesis at the end of the session if no test did; by then
# a C extension has left CPython 3.11's AST recursion counter off and the assertion rewriter's
# parse fails ("AST constructor recursion depth mismatch"). Importing it up front avoids that.

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"
# The ports a node listens on when nobody says otherwise: tests never use them (see below).
DEFAULT_PORTS = tuple(split_addr(str(Settings.model_fields[name].default))[1]
                      for name in ("rtmp_addr", "http_addr", "serve_addr"))


class DefaultPorts:
    """Listening sockets on the default ports, so that a node started on one fails at bind time."""

    def __init__(self) -> None:
        self.held: dict[int, socket.socket] = {}

    def hold(self) -> None:
        """Take each default port not held yet; one another process holds is left to it (binding
        there fails just the same) and tried again before the next test."""
        for port in DEFAULT_PORTS:
            if port in self.held:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen(1)
            except OSError:
                sock.close()
                continue
            self.held[port] = sock

    def close(self) -> None:
        """Release them."""
        for sock in self.held.values():
            sock.close()
        self.held.clear()


@pytest.fixture(scope="session")
def default_ports() -> Iterator[DefaultPorts]:
    """The default ports, held for the whole run (tests use free ports only)."""
    ports = DefaultPorts()
    yield ports
    ports.close()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, default_ports: DefaultPorts) -> Iterator[Path]:
    """Each test (and every process it starts) gets an empty ``HOME``, no ``STREAMGW_*`` variables and
    the default ports taken; it fails if anything was written under ``HOME`` (the orchestrator's
    default data directory is there: tests pass a temporary one)."""
    default_ports.hold()
    home = tmp_path_factory.mktemp("home")
    names = ["HOME", "PYTHONUSERBASE", *(k for k in os.environ if k.startswith("STREAMGW_"))]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.setdefault("PYTHONUSERBASE", site.getuserbase())  # a `pip install --user` still imports
    for k in names:
        if k.startswith("STREAMGW_"):
            del os.environ[k]
    os.environ["HOME"] = str(home)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert not written, f"written under $HOME ({home}): {written}"


@dataclass
class RunningGateway:
    """A gateway node running on its own event loop in a thread."""

    node: GatewayNode
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def rtmp_port(self) -> int:
        return self.node.rtmp.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}"

    def rtmp_url(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the gateway's loop and return its result."""
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # pragma: no cover - surfaced to the test
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(10)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.http + path, timeout=10, **kw)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or predicate}")


def start_gateway(**overrides: Any) -> RunningGateway:
    """Start a gateway with test-friendly settings plus ``overrides``."""
    base: dict[str, Any] = {"rtmp_addr": "127.0.0.1:0", "http_addr": "127.0.0.1:0", "reconnect_grace": 0.0}
    base.update(overrides)
    settings = load_settings(None, base, environ={})
    loop = asyncio.new_event_loop()
    node = GatewayNode(settings)
    started: Future[None] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                await node.start()
                started.set_result(None)
            except BaseException as exc:
                started.set_exception(exc)

        loop.run_until_complete(boot())
        loop.run_forever()

    thread = threading.Thread(target=run, name="gateway-loop", daemon=True)
    thread.start()
    started.result(20)
    return RunningGateway(node, loop, thread)


def stop_gateway(gw: RunningGateway) -> None:
    """Close the node and its loop."""
    asyncio.run_coroutine_threadsafe(gw.node.close(), gw.loop).result(30)
    gw.loop.call_soon_threadsafe(gw.loop.stop)
    gw.thread.join(10)
    gw.loop.close()


def wait_until(predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds with ``describe()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s: {describe()}")


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways with custom settings; all are stopped at the end of the test."""
    running: list[RunningGateway] = []

    def make(**overrides: Any) -> RunningGateway:
        gw = start_gateway(**overrides)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        stop_gateway(gw)


@pytest.fixture
def gateway(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    """A gateway with default test settings."""
    return gateway_factory()


def ffmpeg_publish_args(
    url: str,
    *,
    seconds: float,
    realtime: bool = True,
    size: str = "640x360",
    fps: int = 30,
    gop: int | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """An ffmpeg command that publishes generated testsrc2 video and a sine tone over RTMP."""
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin"]
    if realtime:
        args.append("-re")
    args += [
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-g", str(gop if gop is not None else fps * 2), "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "96k",
    ]
    args += extra or []
    args += ["-f", "flv", url]
    return args


def publish(url: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Publish with ffmpeg and wait for it to finish."""
    seconds = kw.get("seconds", 4)
    return subprocess.run(ffmpeg_publish_args(url, **kw), capture_output=True, text=True,
                          timeout=seconds * 3 + 30)


def start_publish(url: str, **kw: Any) -> subprocess.Popen[str]:
    """Start publishing with ffmpeg in the background."""
    return subprocess.Popen(ffmpeg_publish_args(url, **kw), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], *, kill: bool = False, timeout: float = 60) -> str:
    """Wait for (or first SIGKILL) a background publisher; returns its stderr."""
    if kill:
        proc.kill()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrchestratorProcess:
    """A ``streamgw orchestrator`` running as its own process."""

    proc: subprocess.Popen[str]
    url: str
    port: int

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)


def start_orchestrator(data_dir: str, port: int | None = None, *extra: str) -> OrchestratorProcess:
    """Start ``streamgw orchestrator`` on 127.0.0.1 and wait until its TLS port accepts."""
    port = port or free_port()
    proc = subprocess.Popen(
        ["streamgw", "orchestrator", "--serve-addr", f"127.0.0.1:{port}", "--orch-data-dir", data_dir,
         "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _, err = proc.communicate(timeout=5)
                raise AssertionError(f"orchestrator did not start: {err}") from None
            time.sleep(0.1)
    return OrchestratorProcess(proc, f"https://127.0.0.1:{port}", port)


@pytest.fixture
def orchestrators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OrchestratorProcess]]:
    """Start orchestrator processes; all are stopped at the end of the test."""
    started: list[OrchestratorProcess] = []

    def make(*extra: str, port: int | None = None, data_dir: str | None = None) -> OrchestratorProcess:
        orch = start_orchestrator(data_dir or str(tmp_path_factory.mktemp("orch")), port, *extra)
        started.append(orch)
        return orch

    yield make
    for orch in started:
        if orch.proc.poll() is None:
            orch.proc.terminate()
            try:
                orch.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                orch.kill()
