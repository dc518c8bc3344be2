"""The one harness of the tests and the benchmarks: nodes, processes, ports, generated media, percentiles.

It lives in ``tests/`` and not in the ``streamgw`` package because nothing in it is for operators: it starts
nodes on loopback ports and feeds them generated media. It is a plain module, not a pytest plugin, and
imports nothing from pytest, so that a benchmark imports it as it is: ``python benchmarks/X.py`` from the
repository root puts the root on ``sys.path`` (each benchmark does, before its imports) and ``tests`` is a
package; under pytest, ``tests/conftest.py`` imports it and builds its fixtures on it. Nothing here holds
state between calls: every node, process and port is the caller's, stopped by the caller.

What it provides:

* ports and waiting: :func:`free_port`, :func:`wait_port`, :func:`poll`, :func:`wait_until`;
* a gateway node on its own event loop in a thread of this process (:func:`start_gateway`,
  :class:`RunningGateway`); ``streamgw`` commands as processes (:func:`spawn_streamgw`,
  :func:`start_orchestrator`) and their CPU seconds (:func:`proc_cpu_seconds`);
* generated media: ffmpeg's lavfi test picture and tone (:func:`testsrc`, :func:`tone`), an ffmpeg RTMP
  publisher of them (:func:`ffmpeg_publish_args`, :func:`publish`, :func:`start_publish`, :func:`finish`),
  and the tone as an aiortc track (:class:`Tone`) with WHIP and WHEP peers (:func:`whip_publish`,
  :func:`whep_view`);
* statistics: :func:`percentile`, :func:`summary`.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamgw.config import Settings, load_settings
from streamgw.node import GatewayNode
from streamgw.webrtc import IceSettings, gather_candidates, new_peer_connection

REPO = Path(__file__).resolve().parent.parent
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = IceSettings()  # host candidates on 127.0.0.1 only, no STUN

T = TypeVar("T")

def proc_minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rindex(")") + 2:].split()[7])  # field 10 of stat(5)


# ---------------------------------------------------------------------------------------------
# Ports and waiting


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Until something accepts on 127.0.0.1:``port``; fails after ``timeout`` s or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call ``predicate`` every ``interval`` s until it is true (True) or ``timeout`` s have passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def wait_until(predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds with ``describe()``."""
    if not poll(predicate, timeout, 0.2):
        raise AssertionError(f"timed out after {timeout:.0f} s: {describe()}")


# ---------------------------------------------------------------------------------------------
# A gateway node in this process


@dataclass
class RunningGateway:
    """A gateway node running on its own event loop in a thread."""

    node: GatewayNode
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def rtmp_port(self) -> int:
        """The RTMP port bound."""
        return int(self.node.rtmp.port)

    @property
    def http(self) -> str:
        """The base URL of the HTTP port."""
        return f"http://127.0.0.1:{self.node.http_port}"

    def rtmp_url(self, name: str) -> str:
        """Where to publish stream ``name``."""
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the gateway's loop and return its result."""
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # pragma: no cover - surfaced to the caller
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(10)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        """GET ``path`` from the HTTP port."""
        return httpx.get(self.http + path, timeout=10, **kw)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        """Until ``predicate()``; fails after ``timeout`` s naming ``what``."""
        if not poll(predicate, timeout):
            raise AssertionError(f"timed out waiting for {what or predicate}")

    def stop(self) -> None:
        """Close the node and its loop."""
        try:
            self.run(self.node.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


def gateway_settings(**overrides: Any) -> Settings:
    """Gateway settings for a test or benchmark: free ports, no reconnect grace, no environment, ``overrides``."""
    base: dict[str, Any] = {"rtmp_addr": "127.0.0.1:0", "http_addr": "127.0.0.1:0", "reconnect_grace": 0.0}
    base.update(overrides)
    return load_settings(None, base, environ={})


def start_gateway(make_node: Callable[[Settings], GatewayNode] = GatewayNode, **overrides: Any) -> RunningGateway:
    """Start a gateway with :func:`gateway_settings` (``overrides``) in a thread; ``make_node`` builds the node."""
    loop = asyncio.new_event_loop()
    node = make_node(gateway_settings(**overrides))
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
    started.result(30)
    return RunningGateway(node, loop, thread)


def stop_gateway(gw: RunningGateway) -> None:
    """Close the node and its loop (:meth:`RunningGateway.stop`)."""
    gw.stop()


# ---------------------------------------------------------------------------------------------
# streamgw commands as processes


def streamgw_command() -> list[str]:
    """How to run the ``streamgw`` console script (its module where the script is not on PATH)."""
    exe = shutil.which("streamgw")
    return [exe] if exe else [sys.executable, "-m", "streamgw"]


@dataclass
class StreamgwProcess:
    """A ``streamgw`` command (gateway, orchestrator, up) running as its own process."""

    proc: subprocess.Popen[str]
    ports: tuple[int, ...]  # what it listens on, once ready

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> Self:
        """Until every port accepts; fails with what it wrote to stderr if it exits or times out."""
        deadline = time.monotonic() + timeout
        try:
            for port in self.ports:
                wait_port(port, max(0.1, deadline - time.monotonic()), self.proc)
        except AssertionError as exc:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            args = self.proc.args
            command = " ".join(map(str, args)) if isinstance(args, list) else str(args)
            raise AssertionError(f"{command} did not start ({exc}): {err}") from None
        return self

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM (after SIGCONT, should it be stopped), SIGKILL after ``timeout`` s; returns its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""

    def kill(self) -> None:
        """SIGKILL, and wait for it."""
        self.proc.kill()
        self.proc.communicate(timeout=10)


def spawn_streamgw(*args: str, ports: Sequence[int], stderr: int | None = subprocess.PIPE,
                   env: dict[str, str] | None = None, cwd: Path | None = None) -> StreamgwProcess:
    """Start ``streamgw ARGS...`` (not waiting: see :meth:`StreamgwProcess.wait_ready`)."""
    proc = subprocess.Popen([*streamgw_command(), *args], stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                            env=env, cwd=cwd)
    return StreamgwProcess(proc, tuple(ports))


@dataclass
class OrchestratorProcess(StreamgwProcess):
    """A ``streamgw orchestrator`` running as its own process."""

    url: str = ""

    @property
    def port(self) -> int:
        """Its TLS port (gRPC and HTTPS)."""
        return self.ports[0]


def start_orchestrator(data_dir: str | Path, port: int | None = None, *extra: str, wait: bool = True,
                       stderr: int | None = subprocess.PIPE) -> OrchestratorProcess:
    """Start ``streamgw orchestrator`` on 127.0.0.1 and (``wait``) until its TLS port accepts."""
    port = port or free_port()
    started = spawn_streamgw("orchestrator", "--serve-addr", f"127.0.0.1:{port}", "--orch-data-dir", str(data_dir),
                             "--log-level", "warning", *extra, ports=[port], stderr=stderr)
    orch = OrchestratorProcess(started.proc, started.ports, f"https://127.0.0.1:{port}")
    return orch.wait_ready() if wait else orch


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads), seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


# ---------------------------------------------------------------------------------------------
# Generated media: ffmpeg


def testsrc(size: str = "640x360", fps: int = 30) -> list[str]:
    """ffmpeg input arguments: lavfi's testsrc2 picture, ``size`` at ``fps``."""
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]


def tone(sample_rate: int = 48000, frequency: int = 440) -> list[str]:
    """ffmpeg input arguments: lavfi's sine tone."""
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate={sample_rate}"]


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
        *testsrc(size, fps), *tone(),
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


# ---------------------------------------------------------------------------------------------
# Generated media: WebRTC


class Tone(MediaStreamTrack):
    """A 440 Hz sine, 20 ms stereo frames at 48 kHz, paced in real time."""

    kind = "audio"

    def __init__(self, amplitude: int = 8000) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.n = 0
        self._start = 0.0

    async def recv(self) -> av.AudioFrame:
        """The next frame, when it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        if self.n == 0:
            self._start = time.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self.n * 0.02 - time.time()))
        t = (np.arange(960) + self.n * 960) / 48000
        wave = (np.sin(2 * math.pi * 440 * t) * self.amplitude).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(wave, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = self.n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.n += 1
        return frame


async def _negotiate(client: httpx.AsyncClient, url: str, pc: RTCPeerConnection) -> str:
    """Offer (candidates on 127.0.0.1), POST it to ``url``, apply the answer; returns the session URL."""
    await gather_candidates(pc, LOOPBACK.addresses)
    await pc.setLocalDescription(await pc.createOffer())
    r = await client.post(url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
    r.raise_for_status()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
    return str(httpx.URL(url).join(r.headers["location"]))


async def whip_publish(client: httpx.AsyncClient, url: str, tracks: Sequence[MediaStreamTrack],
                       codecs: dict[str, str] | None = None) -> tuple[RTCPeerConnection, str]:
    """Publish ``tracks`` to a WHIP endpoint (``codecs``: kind -> MIME type); returns (peer, session URL)."""
    pc = new_peer_connection(LOOPBACK)
    for track in tracks:
        t = pc.addTransceiver(track, direction="sendonly")
        if codecs and track.kind in codecs:
            caps = RTCRtpSender.getCapabilities(track.kind)
            assert caps is not None
            t.setCodecPreferences([c for c in caps.codecs if c.mimeType == codecs[track.kind]])
    return pc, await _negotiate(client, url, pc)


async def whep_view(client: httpx.AsyncClient, url: str) -> tuple[RTCPeerConnection, str]:
    """A WHEP viewer (recvonly video + audio); returns (peer, session URL)."""
    pc = new_peer_connection(LOOPBACK)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    return pc, await _negotiate(client, url, pc)


# ---------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between ranks (numpy's default); nan if empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: Sequence[float], *, scale: float = 1.0, quantiles: Sequence[int] = (50, 95),
            ndigits: int | None = None) -> dict[str, float]:
    """``n``, ``p50``, ``p95`` (``quantiles``), ``max`` and ``mean`` of ``values`` times ``scale`` (nan if empty)."""
    out: dict[str, float] = {"n": len(values)}
    scaled = [v * scale for v in values]
    for q in quantiles:
        out[f"p{q}"] = percentile(scaled, q)
    out["max"] = max(scaled, default=float("nan"))
    out["mean"] = statistics.fmean(scaled) if scaled else float("nan")
    if ndigits is not None:
        out = {k: v if k == "n" else round(v, ndigits) for k, v in out.items()}
    return out

