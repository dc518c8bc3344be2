"""Load: HLS players and API readers on live streams, streamgw vs nginx serving the same files.

Each server in turn (never both at once):

* **streamgw**: ``streamgw gateway`` (passthrough) with ``--streams`` (10) live RTMP streams from
  ``benchmarks.publisher`` in its own process (a 320x180 30 fps H.264 + AAC test file, ~0.45 Mbit/s,
  GOP 2 s, looped, streams staggered over one segment).
* **nginx** (the baseline): nginx 1.x, one worker, serving the same playlists and segments as static
  files: the segments streamgw served at the end of its run (downloaded), re-published by a writer
  thread on streamgw's schedule (a new segment per stream every 2 s, the same sliding window, the
  playlist rewritten with an atomic rename, the same names and layout), and the API answers as
  snapshot files at the same paths. Without nginx (``--nginx``) Python's ``http.server`` stands in,
  and the table says so.

Load, from ``--client-procs`` (2) processes with one asyncio loop each, so that the clients are not
the bottleneck: ``--players`` (200) players, each on its own keep-alive connection, spread over the
streams, that poll their stream's media playlist every ``--poll-interval`` (1 s: hls.js polls every
target duration, every half of it while the playlist has not changed) and fetch every segment that
appears (three from the live edge at start, as a player joins), plus ``--api-readers`` (10) readers
that cycle through ``/api/streams``, ``/api/orchestrators``, ``/healthz`` and ``/metrics`` every
``--api-interval`` (0.5 s). Every request has a 10 s timeout. Errors (connection, timeout,
status other than 200, a short body, a playlist without segments) must be 0.

Printed per server: requests, errors, playlist/segment/API response times (p50/p99/max, from the
request written to the whole body read), the server's CPU, and the streamgw/nginx ratio of the
playlist p99.

    python -m benchmarks.load [--players 200] [--streams 10] [--duration 60] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    NGINX,
    OUT_DIR,
    MediaSpec,
    PublisherProcess,
    StreamgwServer,
    ensure_media,
    free_port,
    log,
    machine_cpu_seconds,
    machine_info,
    new_workdir,
    print_table,
    proc_cpu_seconds,
    summary,
    use_streamgw_rev,
    wait_port,
)

# Long enough never to loop: benchmarks.publisher's loop makes audio timestamps go back (its period
# follows the video), and streamgw's segmenter drops a stream whose timestamps go back.
MEDIA = MediaSpec(seconds=200, width=320, height=180, fps=30, gop=60, video_kbps=400, audio_kbps=64)
WARMUP_MAX = 60.0  # seconds the streams get to list 3 segments each
SEGMENT_SECONDS = 2.0
WINDOW = 6  # streamgw's default playlist_window
API_PATHS = ("/api/streams", "/api/orchestrators", "/healthz", "/metrics")
REQUEST_TIMEOUT = 10.0
MAX_BODY = 16 * 1024 * 1024

# ---------------------------------------------------------------------------------------------
# The client: a minimal HTTP/1.1 keep-alive GET over asyncio streams (cheap enough for 100s of
# players per core; no dependency).


class HttpError(Exception):
    """A request that failed: its kind is the class name of the cause or the status."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind} {detail}".strip())
        self.kind = kind


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port, reopened after a close or an error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> bytes:
        """The body of a 200 answer to GET ``path``; raises HttpError."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await self._get(path)
        except HttpError:
            self.close()
            raise
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            self.close()
            raise HttpError(type(exc).__name__, str(exc)) from exc

    async def _get(self, path: str) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                          "User-Agent: streamgw-load\r\n\r\n".encode())
        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("closed", "before the status line")
        parts = status_line.split(b" ", 2)
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            if length > MAX_BODY:
                raise HttpError("too-large", str(length))
            body = await self.reader.readexactly(length)
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = await self._chunked()
        else:  # HTTP/1.0 style: the body runs to the close
            body = await self.reader.read(MAX_BODY)
            self.close()
        if headers.get(b"connection", b"").lower() == b"close" or parts[0] == b"HTTP/1.0":
            self.close()
        if status != 200:
            raise HttpError(f"http-{status}", path)
        return body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        body = bytearray()
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return bytes(body)
            body += await self.reader.readexactly(size)
            await self.reader.readline()
            if len(body) > MAX_BODY:
                raise HttpError("too-large", "chunked")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Stats:
    """What one client process saw."""

    playlist_s: list[float] = field(default_factory=list)
    segment_s: list[float] = field(default_factory=list)
    api_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    segments: int = 0
    segment_bytes: int = 0

    def error(self, what: str, exc: Exception) -> None:
        kind = f"{what}: {exc.kind if isinstance(exc, HttpError) else type(exc).__name__}"
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(f"{what}: {exc}")


def _segment_uris(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


async def _player(port: int, stream: str, stop_at: float, poll: float, stats: Stats) -> None:
    """One HLS player: poll the media playlist, fetch each new segment once."""
    conn = Connection(port)
    playlist = f"/stream/{stream}/source.m3u8"
    seen: list[str] = []
    await asyncio.sleep(random.uniform(0, poll))
    while True:
        started = time.monotonic()
        if started >= stop_at:
            break
        try:
            text = (await conn.get(playlist)).decode()
            stats.playlist_s.append(time.monotonic() - started)
            uris = _segment_uris(text)
            if not uris:
                raise HttpError("no-segments", playlist)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the player
            stats.error("playlist", exc)
            uris = []
        new = [u for u in uris if u not in seen]
        if not seen and new:  # joining: start three segments from the live edge, skip the rest
            seen += new[:-3]
            new = new[-3:]
        for uri in new:
            t = time.monotonic()
            try:
                data = await conn.get(f"/stream/{stream}/{uri}")
                if len(data) < 188:
                    raise HttpError("short-segment", f"{uri}: {len(data)} bytes")
                stats.segment_s.append(time.monotonic() - t)
                stats.segments += 1
                stats.segment_bytes += len(data)
            except Exception as exc:  # noqa: BLE001
                stats.error("segment", exc)
            seen.append(uri)
        del seen[:-4 * WINDOW]
        await asyncio.sleep(max(0.0, started + poll - time.monotonic()))
    conn.close()


async def _api_reader(port: int, stop_at: float, interval: float, stats: Stats) -> None:
    conn = Connection(port)
    await asyncio.sleep(random.uniform(0, interval))
    i = random.randrange(len(API_PATHS))
    while time.monotonic() < stop_at:
        started = time.monotonic()
        path = API_PATHS[i % len(API_PATHS)]
        i += 1
        try:
            await conn.get(path)
            stats.api_s.append(time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001
            stats.error("api", exc)
        await asyncio.sleep(max(0.0, started + interval - time.monotonic()))
    conn.close()


def _client_process(port: int, streams: list[str], players: list[int], readers: int, start_at: float,
                    duration: float, poll: float, api_interval: float, out: Any) -> None:
    async def run() -> Stats:
        stats = Stats()
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        stop_at = start_at + duration
        tasks = [_player(port, streams[i % len(streams)], stop_at, poll, stats) for i in players]
        tasks += [_api_reader(port, stop_at, api_interval, stats) for _ in range(readers)]
        await asyncio.gather(*tasks)
        return stats

    stats = asyncio.run(run())
    out.put(stats.__dict__)


class LoadClients:
    """``procs`` client processes sharing the players and API readers."""

    def __init__(self, port: int, streams: list[str], players: int, readers: int, procs: int, duration: float,
                 poll: float, api_interval: float) -> None:
        ctx = mp.get_context("fork")
        self.out = ctx.Queue()
        self.start_at = time.monotonic() + 1.0
        self.procs = [
            ctx.Process(target=_client_process, daemon=True, args=(
                port, streams, list(range(p, players, procs)), readers // procs + (p < readers % procs),
                self.start_at, duration, poll, api_interval, self.out))
            for p in range(procs)
        ]
        self.duration = duration

    def start(self) -> LoadClients:
        for p in self.procs:
            p.start()
        return self

    def pids(self) -> list[int]:
        return [int(p.pid or 0) for p in self.procs]

    def join(self) -> Stats:
        total = Stats()
        for _ in self.procs:
            part = self.out.get(timeout=self.duration + 60)
            total.playlist_s += part["playlist_s"]
            total.segment_s += part["segment_s"]
            total.api_s += part["api_s"]
            for k, v in part["errors"].items():
                total.errors[k] = total.errors.get(k, 0) + v
            total.examples += part["examples"]
            total.segments += part["segments"]
            total.segment_bytes += part["segment_bytes"]
        for p in self.procs:
            p.join(10)
        return total


# ---------------------------------------------------------------------------------------------
# The baseline origin: nginx (or http.server) over files a writer thread keeps live.

NGINX_CONF = """\
daemon off;
master_process off;
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        add_header Cache-Control max-age=1;
    }}
}}
"""


@dataclass
class Captured:
    """What streamgw served at the end of its run: per stream its segments (bytes) and durations."""

    segments: dict[str, list[bytes]]
    api: dict[str, bytes]


def capture(port: int, streams: list[str]) -> Captured:
    """Download every stream's listed segments and the API answers from a running streamgw."""
    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return bytes(r.read())

    segments = {}
    for name in streams:
        uris = _segment_uris(get(f"/stream/{name}/source.m3u8").decode())
        segments[name] = [get(f"/stream/{name}/{uri}") for uri in uris]
    return Captured(segments, {path: get(path) for path in API_PATHS})


class FileOrigin:
    """Keeps ``root/stream/NAME/source.m3u8`` and its segments live, on streamgw's schedule."""

    def __init__(self, root: Path, captured: Captured, stagger: float) -> None:
        self.root = root
        self.captured = captured
        self.stagger = stagger
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.listed: dict[str, list[tuple[int, float]]] = {name: [] for name in captured.segments}

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _publish(self, name: str, seq: int, wall: float) -> None:
        d = self.root / "stream" / name
        (d / "source").mkdir(parents=True, exist_ok=True)
        segs = self.captured.segments[name]
        self._write(d / "source" / f"bench-{seq}.ts", segs[seq % len(segs)])
        listed = self.listed[name]
        listed.append((seq, wall))
        while len(listed) > WINDOW + 3:  # streamgw keeps three more than it lists
            old, _ = listed.pop(0)
            (d / "source" / f"bench-{old}.ts").unlink(missing_ok=True)
        visible = listed[-WINDOW:]
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{int(SEGMENT_SECONDS)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{visible[0][0]}"]
        for s, w in visible:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(w)) + f".{int(w * 1000) % 1000:03d}Z"
            lines += [f"#EXT-X-PROGRAM-DATE-TIME:{stamp}", f"#EXTINF:{SEGMENT_SECONDS:.3f},", f"source/bench-{s}.ts"]
        self._write(d / "source.m3u8", ("\n".join(lines) + "\n").encode())

    def prime(self) -> None:
        """The API snapshots, and a full window for every stream."""
        for path, body in self.captured.api.items():
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write(target, body)
        now = time.time()
        for name in self.captured.segments:
            for seq in range(WINDOW):
                self._publish(name, seq, now - (WINDOW - seq) * SEGMENT_SECONDS)

    def _run(self) -> None:
        names = sorted(self.captured.segments)
        t0 = time.monotonic()
        seq = WINDOW
        while not self.stop.is_set():
            for i, name in enumerate(names):
                due = t0 + (seq - WINDOW + 1) * SEGMENT_SECONDS + i * self.stagger
                delay = due - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    return
                self._publish(name, seq, time.time())
            seq += 1

    def start(self) -> FileOrigin:
        self.prime()
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


class StaticServer:
    """nginx (one worker) or, without it, ``python -m http.server``, serving ``root``."""

    def __init__(self, root: Path, workdir: Path, nginx: str | None) -> None:
        self.root = root
        self.workdir = workdir
        self.nginx = nginx
        self.label = "nginx" if nginx else "http.server"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StaticServer:
        self.port = free_port()
        if self.nginx:
            tmp = self.workdir / "nginx"
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "nginx.conf").write_text(NGINX_CONF.format(
                tmp=tmp, port=self.port, root=self.root, user="user root;" if os.geteuid() == 0 else ""))
            cmd = [self.nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")]
        else:
            cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(self.root),
                   str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 10, self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---------------------------------------------------------------------------------------------
# One measured run


def measure(label: str, port: int, server_pid: int, streams: list[str], args: argparse.Namespace,
            extra_pids: list[int]) -> dict[str, Any]:
    """Run the clients against ``port`` for ``args.duration`` seconds; CPU of the server meanwhile."""
    clients = LoadClients(port, streams, args.players, args.api_readers, args.client_procs, args.duration,
                          args.poll_interval, args.api_interval).start()
    time.sleep(max(0.0, clients.start_at - time.monotonic()))
    pids = clients.pids()
    c0, m0, w0 = proc_cpu_seconds(server_pid), machine_cpu_seconds(), time.monotonic()
    k0 = sum(proc_cpu_seconds(p) for p in pids)
    e0 = sum(proc_cpu_seconds(p) for p in extra_pids)
    time.sleep(args.duration)
    c1, m1, w1 = proc_cpu_seconds(server_pid), machine_cpu_seconds(), time.monotonic()
    k1 = sum(proc_cpu_seconds(p) for p in pids)
    e1 = sum(proc_cpu_seconds(p) for p in extra_pids)
    stats = clients.join()
    wall = w1 - w0

    def summary_ms(values: list[float]) -> dict[str, float]:
        return summary(values, scale=1000, quantiles=(50, 95, 99))

    return {
        "server": label,
        "window_s": wall,
        "requests": len(stats.playlist_s) + len(stats.segment_s) + len(stats.api_s) + sum(stats.errors.values()),
        "errors": sum(stats.errors.values()),
        "errors_by_kind": stats.errors,
        "error_examples": stats.examples,
        "playlist_ms": summary_ms(stats.playlist_s),
        "segment_ms": summary_ms(stats.segment_s),
        "api_ms": summary_ms(stats.api_s),
        "segments": stats.segments,
        "segment_mbit_s": stats.segment_bytes * 8 / wall / 1e6,
        "server_cpu_pct": (c1 - c0) / wall * 100,
        "client_cpu_pct": (k1 - k0) / wall * 100,
        "other_cpu_pct": ((m1 - m0) - (c1 - c0) - (k1 - k0) - (e1 - e0)) / wall * 100,
    }


def _wait_streams(port: int, streams: list[str], segments: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing = list(streams)
    while time.monotonic() < deadline:
        missing = []
        for name in streams:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream/{name}/source.m3u8", timeout=5) as r:
                    if len(_segment_uris(r.read().decode())) < segments:
                        missing.append(name)
            except OSError:
                missing.append(name)
        if not missing:
            return
        time.sleep(0.5)
    raise RuntimeError(f"streams without {segments} segments after {timeout:.0f} s: {missing}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="HLS players and API readers on live streams: streamgw vs nginx")
    ap.add_argument("--players", type=int, default=200)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--api-readers", type=int, default=10)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds per server (default 60)")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="playlist poll per player, s (default 1)")
    ap.add_argument("--api-interval", type=float, default=0.5, help="request interval per API reader, s")
    ap.add_argument("--client-procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--nginx", default=NGINX, help=f"nginx binary for the baseline (default {NGINX}); "
                    "missing: python -m http.server instead")
    ap.add_argument("--baseline", choices=["auto", "none"], default="auto", help="'none': streamgw only")
    ap.add_argument("--quick", action="store_true", help="15 s per server (smoke test)")
    ap.add_argument("--streamgw-rev", metavar="REV", help="benchmark streamgw as of this commit")
    ap.add_argument("--json", default=str(OUT_DIR / "load.json"), help="where to write the results")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 15.0
    if args.duration + WARMUP_MAX + 10 > MEDIA.seconds:
        ap.error(f"--duration: at most {MEDIA.seconds - WARMUP_MAX - 10:.0f} s (the test file lasts {MEDIA.seconds} s)")
    use_streamgw_rev(args.streamgw_rev)
    info = machine_info()
    nginx = args.nginx if shutil.which(args.nginx) or os.access(args.nginx, os.X_OK) else None
    if nginx:
        info["nginx"] = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    media = ensure_media(MEDIA)
    names = [f"load{i}" for i in range(args.streams)] if args.streams > 1 else ["load"]
    stagger = SEGMENT_SECONDS / max(1, args.streams)
    wd = new_workdir("load")
    results: list[dict[str, Any]] = []

    log(f"load: streamgw, {args.streams} streams, {args.players} players + {args.api_readers} API readers, "
        f"{args.duration:.0f} s...")
    sg = StreamgwServer(wd)
    with sg:
        pub = PublisherProcess(
            ["--flv", str(media), "--target", f"127.0.0.1:{sg.rtmp_port}", "--streams", str(args.streams),
             "--prefix", "load", "--stagger", f"{stagger:.4f}", "--duration", str(MEDIA.seconds - 5)],
            wd, "load")
        try:
            pub.wait_started()
            _wait_streams(sg.http_port, names, 3, WARMUP_MAX)
            results.append(measure("streamgw", sg.http_port, sg.pid, names, args, [pub.proc.pid]))
            captured = capture(sg.http_port, names)
        finally:
            pub.stop()

    if args.baseline != "none":
        label = "nginx" if nginx else "http.server"
        log(f"load: {label} serving the same files, same load, {args.duration:.0f} s...")
        origin = FileOrigin(wd / "static", captured, stagger).start()
        static = StaticServer(wd / "static", wd, nginx).start()
        try:
            results.append(measure(static.label, static.port, static.pid, names, args, []))
        finally:
            static.stop()
            origin.close()

    print(f"\n== load: {args.players} HLS players (poll every {args.poll_interval:g} s, every new segment) "
          f"+ {args.api_readers} API readers (every {args.api_interval:g} s) on {args.streams} live streams "
          f"(320x180, ~0.45 Mbit/s, 2 s segments), {args.duration:.0f} s each, {args.client_procs} client processes")
    rows = [["server", "requests", "errors", "playlist p50/p99/max ms", "segment p50/p99/max ms",
             "API p50/p99/max ms", "segments", "Mbit/s out", "server CPU %", "client CPU %", "other CPU %"]]
    def three(v: dict[str, float]) -> str:
        return f"{v['p50']:.1f}/{v['p99']:.1f}/{v['max']:.1f}"

    for r in results:
        rows.append([r["server"], str(r["requests"]), str(r["errors"]), three(r["playlist_ms"]),
                     three(r["segment_ms"]), three(r["api_ms"]), str(r["segments"]), f"{r['segment_mbit_s']:.1f}",
                     f"{r['server_cpu_pct']:.0f}", f"{r['client_cpu_pct']:.0f}", f"{r['other_cpu_pct']:.0f}"])
    print_table(rows)
    sg_r = results[0]
    verdict = "PASS" if sg_r["errors"] == 0 else "FAIL"
    print(f"streamgw errors: {sg_r['errors']} -> goal (0): {verdict}")
    if sg_r["errors"]:
        print(f"  by kind: {sg_r['errors_by_kind']}; e.g. {sg_r['error_examples'][:3]}")
    if len(results) > 1:
        base = results[1]
        ratio = sg_r["playlist_ms"]["p99"] / base["playlist_ms"]["p99"] if base["playlist_ms"]["p99"] else float("nan")
        print(f"playlist p99: streamgw {sg_r['playlist_ms']['p99']:.1f} ms, {base['server']} "
              f"{base['playlist_ms']['p99']:.1f} ms: ratio {ratio:.1f}x; {base['server']} errors {base['errors']}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=1))
    print(f"raw results: {args.json}")
    return 0 if sg_r["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
