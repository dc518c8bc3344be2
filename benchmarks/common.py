"""Shared parts of the benchmarks: test media, the two servers, playlist pollers, CPU sampling, stats.

Both servers are started by the benchmark itself on free 127.0.0.1 ports:

* streamgw: ``streamgw gateway --rtmp-addr ... --http-addr ... --segment-duration 2`` (its own
  process; no ``--orch-addr``, so passthrough only; ``--streamgw-mode up`` runs ``streamgw up``,
  which since c89beb9 also transcodes every stream in an embedded orchestrator);
* nginx-rtmp: Debian's nginx with ``libnginx-mod-rtmp``, one non-daemon process
  (``daemon off; master_process off;``) with a generated config in a temp dir: RTMP app ``live``
  with ``hls on; hls_fragment 2s; hls_playlist_length 12s;`` and an HTTP server for the HLS dir.
"""

from __future__ import annotations

import bisect
import http.client
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

# The harness the tests use (tests/harness.py); ``X as X``: re-exported for the other benchmarks.
from tests.harness import FFMPEG as FFMPEG
from tests.harness import free_port as free_port
from tests.harness import percentile, streamgw_command, testsrc, tone
from tests.harness import proc_cpu_seconds as proc_cpu_seconds
from tests.harness import proc_minor_faults as proc_minor_faults
from tests.harness import summary as summary
from tests.harness import wait_port as wait_port

pct = percentile  # the name the benchmarks use
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "out"  # git-ignored
MEDIA_DIR = OUT_DIR / "media"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
RTMP_MODULE_CANDIDATES = (
    "/usr/lib/nginx/modules/ngx_rtmp_module.so",
    "/usr/lib64/nginx/modules/ngx_rtmp_module.so",
    "/usr/share/nginx/modules/ngx_rtmp_module.so",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc/stat counts in these

# ---------------------------------------------------------------------------------------------
# Test media


@dataclass(frozen=True)
class MediaSpec:
    """The pre-generated publisher input: 720p30 H.264 (ultrafast, zerolatency, GOP 60) + AAC."""

    seconds: int = 64
    width: int = 1280
    height: int = 720
    fps: int = 30
    gop: int = 60
    video_kbps: int = 3000
    audio_kbps: int = 128

    @property
    def path(self) -> Path:
        return MEDIA_DIR / (
            f"testsrc2_{self.width}x{self.height}p{self.fps}_g{self.gop}_{self.video_kbps}k_{self.seconds}s.flv"
        )

    def ffmpeg_args(self, out: Path) -> list[str]:
        return [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
            *testsrc(f"{self.width}x{self.height}", self.fps), *tone(44100),
            "-t", str(self.seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-g", str(self.gop), "-keyint_min", str(self.gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
            "-b:v", f"{self.video_kbps}k", "-maxrate", f"{self.video_kbps}k", "-bufsize", f"{self.video_kbps}k",
            "-c:a", "aac", "-b:a", f"{self.audio_kbps}k", "-ar", "44100", "-ac", "2",
            "-f", "flv", str(out),
        ]


def ensure_media(spec: MediaSpec | None = None) -> Path:
    """The FLV test file, generated with ffmpeg once and cached under benchmarks/out/media."""
    spec = spec or MediaSpec()
    path = spec.path
    if path.exists() and path.stat().st_size > 0:
        return path
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.flv")
    log(f"generating {path.name} with ffmpeg (once; cached)...")
    t = time.monotonic()
    subprocess.run(spec.ffmpeg_args(tmp), check=True)
    os.replace(tmp, path)
    log(f"  done in {time.monotonic() - t:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
    return path


# ---------------------------------------------------------------------------------------------
# Small helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (nan for fewer than 2 points)."""
    if len(xs) < 2:
        return float("nan")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50/p95/max/mean of seconds, in milliseconds."""
    return summary(values, scale=1000)


def machine_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# The streamgw under test: None = the working tree (the installed package); else a source tree
# exported from a commit by use_streamgw_rev(), so that a run is not disturbed by edits in progress.
_STREAMGW_SRC: Path | None = None
_STREAMGW_REV: str | None = None


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def use_streamgw_rev(rev: str | None) -> None:
    """Benchmark streamgw as of commit ``rev`` (exported with ``git archive``; the repo is untouched)."""
    global _STREAMGW_SRC, _STREAMGW_REV
    if not rev:
        _STREAMGW_SRC = _STREAMGW_REV = None
        return
    sha = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    dest = OUT_DIR / f"src-{sha}"
    if not (dest / "streamgw" / "__init__.py").exists():
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"src-{sha}-", dir=OUT_DIR))
        archive = subprocess.run(["git", "archive", sha, "streamgw", "web"], cwd=REPO, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    _STREAMGW_SRC, _STREAMGW_REV = dest, sha


def streamgw_revision() -> str:
    """The streamgw under test: a commit, or HEAD with '+dirty' when streamgw/ has uncommitted changes."""
    if _STREAMGW_REV:
        return _STREAMGW_REV
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "streamgw")
        return head + ("+dirty" if dirty else "") if head else "?"
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine_info() -> dict[str, str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    return {
        "streamgw": streamgw_revision(),
        "nproc": str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else "?",
        "python": sys.version.split()[0],
        "nginx": (subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
                  if os.access(NGINX, os.X_OK) else "not installed"),
        "ffmpeg": subprocess.run([FFMPEG, "-version"], capture_output=True, text=True).stdout.split("\n")[0],
    }


# ---------------------------------------------------------------------------------------------
# Servers


class Server:
    """A server under test: one OS process, an RTMP port, and a way to get its media playlists."""

    label = "?"
    proc: subprocess.Popen[bytes] | None = None
    rtmp_port = 0
    http_port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rtmp_target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.rtmp_port)

    def playlist_http_path(self, name: str) -> str:
        raise NotImplementedError

    def playlist_file(self, name: str) -> Path | None:
        return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError


class StreamgwServer(Server):
    label = "streamgw"

    def __init__(
        self, workdir: Path, mode: str = "gateway", extra_args: list[str] | None = None, cpus: str | None = None
    ) -> None:
        """``mode``: ``gateway`` (no orchestrator: passthrough only, what these benchmarks compare
        with nginx-rtmp) or ``up`` (also an embedded transcoding orchestrator, since c89beb9).
        ``cpus``: run the process on these CPUs only (``taskset -c``), e.g. "1"."""
        self.workdir = workdir
        self.mode = mode
        self.extra_args = extra_args or []
        self.cpus = cpus

    def start(self) -> None:
        self.rtmp_port, self.http_port = free_port(), free_port()
        env = dict(os.environ)
        if _STREAMGW_SRC is not None:
            env["PYTHONPATH"] = str(_STREAMGW_SRC) + os.pathsep + env.get("PYTHONPATH", "")
            cmd = [sys.executable, "-m", "streamgw"]
        else:
            cmd = streamgw_command()
        cmd += [
            self.mode, "--rtmp-addr", f"127.0.0.1:{self.rtmp_port}", "--http-addr", f"127.0.0.1:{self.http_port}",
            "--segment-duration", "2", *self.extra_args,
        ]
        if self.mode == "up":  # its embedded orchestrator: a free port and a private data dir
            cmd += ["--serve-addr", f"127.0.0.1:{free_port()}", "--orch-data-dir", str(self.workdir / "orch")]
        if self.cpus:
            cmd = ["taskset", "-c", self.cpus, *cmd]  # taskset execs: same PID
        self.logfile = open(self.workdir / "streamgw.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        wait_port(self.rtmp_port, 20, self.proc)
        wait_port(self.http_port, 20, self.proc)

    def stop(self) -> None:
        super().stop()
        if getattr(self, "logfile", None):
            self.logfile.close()

    def playlist_http_path(self, name: str) -> str:
        return f"/stream/{name}/source.m3u8"

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text


def nginx_module_path() -> str:
    try:
        out = subprocess.run(["dpkg", "-L", "libnginx-mod-rtmp"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.endswith("ngx_rtmp_module.so"):
                return line.strip()
    except OSError:
        pass
    for cand in RTMP_MODULE_CANDIDATES:
        if os.path.exists(cand):
            return cand
    raise RuntimeError("ngx_rtmp_module.so not found: apt-get install libnginx-mod-rtmp")


NGINX_CONF = """\
load_module {module};
daemon off;
master_process off;
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
            hls on;
            hls_path {tmp}/hls;
            hls_fragment 2s;
            hls_playlist_length 12s;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
    server {{
        listen 127.0.0.1:{http_port};
        location /hls/ {{
            alias {tmp}/hls/;
            add_header Cache-Control no-cache;
        }}
    }}
}}
"""


class NginxRtmpServer(Server):
    label = "nginx-rtmp"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / "nginx"
        self.workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.rtmp_port, self.http_port = free_port(), free_port()
        tmp = self.workdir
        (tmp / "hls").mkdir(exist_ok=True)
        conf = NGINX_CONF.format(
            module=nginx_module_path(), tmp=tmp, rtmp_port=self.rtmp_port, http_port=self.http_port,
            user="user root;" if os.geteuid() == 0 else "",
        )
        (tmp / "nginx.conf").write_text(conf)
        self.logfile = open(tmp / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
            stdout=self.logfile, stderr=subprocess.STDOUT,
        )
        wait_port(self.rtmp_port, 10, self.proc)
        wait_port(self.http_port, 10, self.proc)

    def stop(self) -> None:
        # SIGQUIT: graceful; nginx-rtmp finishes its fragments.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "logfile", None):
            self.logfile.close()
        # The fragments nginx leaves behind (~0.8 MB each, up to ~300 MB a run); keep the playlists.
        for ts in (self.workdir / "hls").glob("*.ts"):
            ts.unlink(missing_ok=True)

    def playlist_http_path(self, name: str) -> str:
        return f"/hls/{name}.m3u8"

    def playlist_file(self, name: str) -> Path:
        return self.workdir / "hls" / f"{name}.m3u8"


# ---------------------------------------------------------------------------------------------
# Playlists and pollers

_EXTINF = re.compile(r"#EXTINF:([0-9.]+)")


def parse_media_playlist(text: str) -> list[tuple[int, float]]:
    """(media sequence number, duration) of each segment listed."""
    seq = 0
    out: list[tuple[int, float]] = []
    dur: float | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            m = _EXTINF.match(line)
            dur = float(m.group(1)) if m else 0.0
        elif line and not line.startswith("#") and dur is not None:
            out.append((seq, dur))
            seq += 1
            dur = None
    return out


@dataclass
class Observed:
    """When each segment (by media sequence number) was first seen listed, and its duration."""

    first_seen: dict[int, float] = field(default_factory=dict)
    durations: dict[int, float] = field(default_factory=dict)
    polls: int = 0
    errors: int = 0
    rtts: list[float] = field(default_factory=list)  # HTTP request round trips, s

    def update(self, text: str, now: float) -> None:
        for seq, dur in parse_media_playlist(text):
            if seq not in self.first_seen:
                self.first_seen[seq] = now
                self.durations[seq] = dur

    def to_json(self) -> dict[str, Any]:
        return {"first_seen": self.first_seen, "durations": self.durations, "polls": self.polls,
                "errors": self.errors, "rtts": self.rtts}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Observed":
        return cls({int(k): v for k, v in d["first_seen"].items()},
                   {int(k): v for k, v in d["durations"].items()}, d["polls"], d["errors"], d["rtts"])


def _file_poll_loop(paths: dict[str, str], interval: float, stop: Any, out: Any) -> None:
    obs = {name: Observed() for name in paths}
    sig: dict[str, tuple[int, int, int] | None] = {name: None for name in paths}
    while not stop.is_set():
        for name, path in paths.items():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key == sig[name]:
                continue
            try:
                with open(path) as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            now = time.monotonic()
            sig[name] = key
            obs[name].polls += 1
            obs[name].update(text, now)
        time.sleep(interval)
    out.put({name: o.to_json() for name, o in obs.items()})


def _next_poll(now: float, interval: float, bursts: list[float] | None, burst_len: float, slow: float) -> float:
    """When to poll next: every ``interval`` inside a burst window, else every ``slow`` seconds."""
    if not bursts:
        return now + interval
    i = bisect.bisect_right(bursts, now) - 1
    if i >= 0 and now < bursts[i] + burst_len:
        return now + interval  # inside [start, start + burst_len)
    nxt = bursts[i + 1] if i + 1 < len(bursts) else float("inf")
    return min(now + slow, nxt)


def _http_poll_one(
    port: int, path: str, interval: float, stop: Any, obs: Observed,
    bursts: list[float] | None = None, burst_len: float = 0.3, slow: float = 0.1,
) -> None:
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        sent = time.monotonic()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            now = time.monotonic()
            obs.polls += 1
            obs.rtts.append(now - sent)
            if resp.status == 200:
                obs.update(body.decode(), now)
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            obs.errors += 1
            if conn is not None:
                conn.close()
            conn = None
        delay = _next_poll(sent, interval, bursts, burst_len, slow) - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _http_poll_loop(
    port: int, paths: dict[str, str], interval: float, stop: Any, out: Any, bursts: list[float] | None,
    burst_len: float,
) -> None:
    """One thread and one keep-alive connection per playlist."""
    import threading

    obs = {name: Observed() for name in paths}
    threads = [
        threading.Thread(target=_http_poll_one, args=(port, path, interval, stop, obs[name], bursts, burst_len),
                         daemon=True)
        for name, path in paths.items()
    ]
    for t in threads:
        t.start()
        time.sleep(interval / len(threads))  # spread the requests over the interval
    for t in threads:
        t.join()
    out.put({name: o.to_json() for name, o in obs.items()})


class Poller:
    """Watches media playlists in a separate process, recording when each segment first appears.

    ``mode="file"`` stats (and on change reads) playlist files every ``interval`` seconds;
    ``mode="http"`` GETs each one every ``interval`` seconds over its own keep-alive connection
    (one thread per playlist), recording each request's round trip. With ``bursts`` (sorted
    monotonic times when segments are expected to close), it polls every ``interval`` only for
    ``burst_len`` (0.3 s) from each of those times and every 0.1 s otherwise, so that fine-grained polling does
    not itself load the server for the whole run.
    """

    def __init__(
        self, mode: str, targets: dict[str, str], interval: float, port: int = 0,
        bursts: list[float] | None = None, burst_len: float = 0.3,
    ) -> None:
        self._ctx = mp.get_context("fork")
        self._stop = self._ctx.Event()
        self._out = self._ctx.Queue()
        if mode == "file":
            args: tuple[Any, ...] = (targets, interval, self._stop, self._out)
            target: Any = _file_poll_loop
        else:
            args = (port, targets, interval, self._stop, self._out, bursts, burst_len)
            target = _http_poll_loop
        self._proc = self._ctx.Process(target=target, args=args, daemon=True)

    def start(self) -> "Poller":
        self._proc.start()
        return self

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def stop(self) -> dict[str, Observed]:
        self._stop.set()
        result = self._out.get(timeout=30)
        self._proc.join(10)
        return {name: Observed.from_json(d) for name, d in result.items()}


# ---------------------------------------------------------------------------------------------
# The publisher subprocess


class PublisherProcess:
    """``python -m benchmarks.publisher`` in its own process (so its CPU is not the server's)."""

    def __init__(self, args: list[str], workdir: Path, tag: str) -> None:
        self.out = workdir / f"publisher-{tag}.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        if _STREAMGW_SRC is not None:
            env["STREAMGW_BENCH_SRC"] = str(_STREAMGW_SRC)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.publisher", *args, "--out", str(self.out)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
        )
        self.t0: float | None = None

    def wait_started(self, timeout: float = 30.0) -> float:
        """Block until every connection published; returns the monotonic time media starts."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"publisher exited ({self.proc.wait()}) before starting")
            if line.startswith("STARTED "):
                self.t0 = float(line.split()[1])
                return self.t0
        raise RuntimeError("publisher did not start in time")

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.out.exists():
            raise RuntimeError(f"publisher wrote no results (exit {self.proc.returncode})")
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result


def segment_latencies(
    obs: Observed, keyframes: list[tuple[int, float]], tolerance_ms: float = 60.0
) -> tuple[list[tuple[int, float]], list[int]]:
    """Per segment: seconds from the send of the keyframe that closes it to its first sighting.

    Segment ends are computed from the listed durations (the first segment starts at the first
    keyframe); the closing keyframe is the sent keyframe nearest that end. Returns
    ``[(seq, latency)]`` and the seqs that matched no keyframe (e.g. the last one, closed by the
    end of publishing).
    """
    if not obs.first_seen or not keyframes:
        return [], []
    kf_ts = [ts for ts, _ in keyframes]
    kf_time = dict(keyframes)
    seqs = sorted(obs.first_seen)
    end = float(kf_ts[0])
    out: list[tuple[int, float]] = []
    unmatched: list[int] = []
    for seq in seqs:
        end += obs.durations[seq] * 1000
        nearest = min(kf_ts, key=lambda t: abs(t - end))
        if abs(nearest - end) > tolerance_ms:
            unmatched.append(seq)
            continue
        end = float(nearest)  # re-anchor: no drift from rounded durations
        out.append((seq, obs.first_seen[seq] - kf_time[nearest]))
    return out, unmatched


def new_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"streamgw-bench-{prefix}-"))


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
