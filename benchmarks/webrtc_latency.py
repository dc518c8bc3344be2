"""WebRTC benchmarks: glass-to-glass latency WHIP -> WHEP and WHIP -> HLS, and CPU per 720p publisher.

The gateway under test is ``streamgw gateway`` in its own process on free 127.0.0.1 ports
(passthrough: no orchestrator), started by the benchmark once per ``--modes`` entry: ``copy``
(WHIP H.264 copied, an IDR asked for every segment) and ``transcode`` (decoded and re-encoded
with libx264 at a fixed GOP), the baseline the last printed line compares copy against.

Latency: an aiortc publisher sends 1280x720 at 30 fps (plus a tone) whose every frame carries its
send time, a clock stamp of black and white blocks across the top 1/18 of the picture (the layout
``web/golive.js`` uses: 32 cells = start bits 1,0, 24 bits of wall-clock ms mod 2^24, a 4-bit
popcount check, end bits 0,1). The stamp is the time aiortc takes the frame to encode it.

* WHIP -> WHEP: an aiortc viewer (in the same process, same clock) reads the stamp from every
  decoded frame as aiortc hands it over: latency = now - stamp.
* WHIP -> HLS: a poller reads the media playlist every 100 ms and fetches each new segment at
  once; for every frame of it, latency = the time the segment had been downloaded - stamp. The
  first frame of a segment is the oldest (~ one segment duration); that is what an HLS player
  that starts a segment the moment it is listed would show at best (real players add buffer).

CPU: N publishers in one separate process send pre-encoded 720p30 H.264 (x264 baseline, 2.5 Mbit/s,
GOP 2 s) + Opus packets as aiortc packets (no encoding on the sending side), looping a 20 s clip in
real time. After a warm-up, the gateway process's CPU time (utime+stime of all its threads,
/proc/PID/stat) is read over a window: per publisher = that / N. Every stream must keep producing
segments.

    python benchmarks/webrtc_latency.py [--seconds 30] [--publishers 1 2 4] [--window 20] [--modes copy transcode]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import MEDIA_DIR, OUT_DIR, log  # noqa: E402
from tests.harness import (  # noqa: E402
    CLK_TCK,
    FFMPEG,
    StreamgwProcess,
    Tone,
    free_port,
    proc_cpu_seconds,
    spawn_streamgw,
    summary,
    testsrc,
    tone,
    whep_view,
    whip_publish,
)

CELLS = 32
VALUE_BITS = 24
MASK = (1 << VALUE_BITS) - 1


# ---------------------------------------------------------------------------------------------
# The clock stamp (same layout as web/golive.js)


def now_ms() -> int:
    return int(time.time() * 1000) & MASK


def stamp_bits(ms: int) -> list[int]:
    value = ms & MASK
    bits = [1, 0] + [(value >> i) & 1 for i in range(VALUE_BITS - 1, -1, -1)]
    check = bin(value).count("1") & 15
    return bits + [(check >> i) & 1 for i in range(3, -1, -1)] + [0, 1]


def draw_stamp(y: np.ndarray, ms: int) -> None:
    """Draw the stamp into a luma plane (h x w, uint8) in place."""
    h, w = y.shape
    band = max(2, round(h / 18))
    for i, bit in enumerate(stamp_bits(ms)):
        y[:band, round(i * w / CELLS):round((i + 1) * w / CELLS)] = 255 if bit else 0


def read_stamp(frame: av.VideoFrame) -> int | None:
    """The stamp in a decoded frame, or None."""
    plane = frame.planes[0]
    y = np.frombuffer(memoryview(plane), np.uint8).reshape(frame.height, plane.line_size)[:, :frame.width]
    h, w = y.shape
    band = max(2, round(h / 18))
    row = band // 2
    bits = []
    for i in range(CELLS):
        cx = int((i + 0.5) * w / CELLS)
        bits.append(1 if y[max(0, row - 1):row + 2, max(0, cx - 2):cx + 3].mean() > 128 else 0)
    if bits[:2] != [1, 0] or bits[30:] != [0, 1]:
        return None
    value = int("".join(map(str, bits[2:26])), 2)
    check = int("".join(map(str, bits[26:30])), 2)
    return value if check == bin(value).count("1") & 15 else None


def age_ms(stamp: int, at: float | None = None) -> int:
    now = int((at if at is not None else time.time()) * 1000) & MASK
    return (now - stamp) % (1 << VALUE_BITS)


# ---------------------------------------------------------------------------------------------
# Tracks


class StampedVideo(MediaStreamTrack):
    """1280x720 at 30 fps: a moving texture with the send time stamped in."""

    kind = "video"

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        yy, xx = np.mgrid[0:height, 0:width]
        self.texture = ((xx // 16 + yy // 16) % 2 * 60 + (xx * 100 // width) + 40).astype(np.uint8)
        self.n = 0
        self.start = 0.0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.n == 0:
            self.start = time.time()
        else:
            await asyncio.sleep(max(0.0, self.start + self.n / self.fps - time.time()))
        h, w = self.height, self.width
        yuv = np.empty((h * 3 // 2, w), np.uint8)
        yuv[:h] = np.roll(self.texture, self.n * 4, axis=1)
        yuv[h:] = 128
        draw_stamp(yuv[:h], now_ms())
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.n * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        return frame


class PacketLoop(MediaStreamTrack):
    """Pre-encoded packets, looped in real time (aiortc packetizes them without encoding)."""

    def __init__(self, kind: str, packets: list[tuple[bytes, int]], time_base: fractions.Fraction,
                 duration: int, offset: float) -> None:
        super().__init__()
        self.kind = kind
        self.packets, self.time_base, self.duration = packets, time_base, duration
        self.i = 0
        self.start = time.time() + offset

    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        if self.readyState != "live":
            raise MediaStreamError
        loop, idx = divmod(self.i, len(self.packets))
        data, pts = self.packets[idx]
        pts += loop * self.duration
        await asyncio.sleep(max(0.0, self.start + float(pts * self.time_base) - time.time()))
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = self.time_base
        self.i += 1
        return packet


# ---------------------------------------------------------------------------------------------
# The gateway and the peers


class Gateway:
    """``streamgw gateway`` in its own process (``tests/harness.py``)."""

    def __init__(self, segment_duration: float = 2.0, whip_video: str = "copy") -> None:
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: StreamgwProcess = spawn_streamgw(
            "gateway", "--rtmp-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{self.http_port}",
            "--segment-duration", str(segment_duration), "--whip-max-sessions", "64", "--whip-video", whip_video,
            "--log-level", "warning", ports=[self.http_port], cwd=REPO).wait_ready(20)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.process.pid)

    def close(self) -> str:
        return self.process.stop(20)


# ---------------------------------------------------------------------------------------------
# Latency


async def latency_run(gw: Gateway, seconds: float, warmup: float) -> dict[str, Any]:
    whep_ms: list[float] = []
    hls_first: list[float] = []
    hls_all: list[float] = []
    unreadable = {"whep": 0, "hls": 0}
    async with httpx.AsyncClient(timeout=20) as client:
        pub, pub_session = await whip_publish(client, gw.url + "/whip/lat", [StampedVideo(), Tone(amplitude=6000)])
        await asyncio.sleep(0.5)
        view, view_session = await whep_view(client, gw.url + "/whep/lat")
        t0 = time.monotonic()
        end = t0 + warmup + seconds

        async def read_whep() -> None:
            track = next(t.receiver.track for t in view.getTransceivers() if t.kind == "video")
            while time.monotonic() < end:
                try:
                    frame = await asyncio.wait_for(track.recv(), 2)
                except (asyncio.TimeoutError, MediaStreamError):
                    continue
                stamp = read_stamp(frame) if isinstance(frame, av.VideoFrame) else None
                if stamp is None:
                    unreadable["whep"] += 1
                elif time.monotonic() > t0 + warmup:
                    whep_ms.append(age_ms(stamp))

        async def read_hls() -> None:
            seen: set[str] = set()
            playlist = gw.url + "/stream/lat/source.m3u8"
            while time.monotonic() < end:
                await asyncio.sleep(0.1)
                r = await client.get(playlist)
                if r.status_code != 200:
                    continue
                for uri in [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]:
                    if uri in seen:
                        continue
                    seen.add(uri)
                    seg = await client.get(gw.url + "/stream/lat/" + uri)
                    arrived = time.time()
                    if time.monotonic() < t0 + warmup or len(seen) == 1:
                        continue  # the first listed segment may be old when polling starts
                    stamps = await asyncio.to_thread(_segment_stamps, seg.content)
                    unreadable["hls"] += stamps.count(None)
                    ages = [age_ms(s, arrived) for s in stamps if s is not None]
                    if ages:
                        hls_first.append(ages[0])
                        hls_all.extend(ages)

        await asyncio.gather(read_whep(), read_hls())
        await client.delete(view_session)
        await client.delete(pub_session)
        await view.close()
        await pub.close()
    return {
        "whip_to_whep_ms": summary(whep_ms, ndigits=1),
        "whip_to_hls_first_frame_ms": summary(hls_first, ndigits=1),
        "whip_to_hls_all_frames_ms": summary(hls_all, ndigits=1),
        "unreadable_frames": unreadable,
    }


def _segment_stamps(data: bytes) -> list[int | None]:
    with av.open(io.BytesIO(data), mode="r", format="mpegts") as c:
        return [read_stamp(f) for f in c.decode(video=0)]


# ---------------------------------------------------------------------------------------------
# CPU per publisher


def ensure_clip(seconds: int = 20) -> tuple[Path, Path]:
    """A 720p30 H.264 (Annex B) clip and an Opus clip, made once with ffmpeg and cached."""
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    video = MEDIA_DIR / f"webrtc_1280x720p30_baseline_2500k_g60_{seconds}s.h264"
    audio = MEDIA_DIR / f"webrtc_opus_48k_{seconds}s.ogg"
    if not video.exists():
        log(f"generating {video.name} (once)...")
        subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
                        *testsrc("1280x720", 30), "-t", str(seconds), "-c:v", "libx264",
                        "-preset", "veryfast", "-tune", "zerolatency", "-profile:v", "baseline", "-g", "60",
                        "-keyint_min", "60", "-sc_threshold", "0", "-b:v", "2500k", "-maxrate", "2500k",
                        "-bufsize", "2500k", "-pix_fmt", "yuv420p", "-f", "h264", str(video) + ".tmp"], check=True)
        os.replace(str(video) + ".tmp", video)
    if not audio.exists():
        subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
                        *tone(48000), "-t", str(seconds), "-ac", "2",
                        "-c:a", "libopus", "-b:a", "64k", "-f", "ogg", str(audio) + ".tmp"], check=True)
        os.replace(str(audio) + ".tmp", audio)
    return video, audio


Clip = tuple[list[tuple[bytes, int]], fractions.Fraction, int]  # (data, pts) of each packet, time base, duration


def load_packets(video: Path, audio: Path) -> dict[str, Clip]:
    with av.open(str(video), format="h264") as c:
        vpk = [(bytes(p), i * 3000) for i, p in enumerate(p for p in c.demux(video=0) if p.size)]
    with av.open(str(audio)) as c:
        s = c.streams.audio[0]
        assert s.time_base is not None
        tb = s.time_base
        apk = [(bytes(p), int(p.pts * tb * 48000)) for p in c.demux(s) if p.size and p.pts is not None]
    return {"video": (vpk, fractions.Fraction(1, 90000), len(vpk) * 3000),
            "audio": (apk, fractions.Fraction(1, 48000), apk[-1][1] + 960)}


async def publishers_main(url: str, count: int, seconds: float) -> None:
    """Run ``count`` packet publishers for ``seconds`` (the child process of the CPU run)."""
    video, audio = ensure_clip()
    packets = load_packets(video, audio)
    async with httpx.AsyncClient(timeout=30) as client:
        peers = []
        for i in range(count):
            offset = i * 2.0 / count  # spread the keyframes as independent publishers would
            tracks: list[MediaStreamTrack] = [PacketLoop(kind, *packets[kind], offset=offset)
                                              for kind in ("video", "audio")]
            peers.append(await whip_publish(client, f"{url}/whip/cpu{i}", tracks,
                                            {"video": "video/H264", "audio": "audio/opus"}))
        print("ready", flush=True)
        await asyncio.sleep(seconds)
        for pc, session in peers:
            await client.delete(session)
            await pc.close()


def cpu_run(gw: Gateway, count: int, warmup: float, window: float) -> dict[str, Any]:
    child = subprocess.Popen([sys.executable, __file__, "_publish", gw.url, str(count), str(warmup + window + 5)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"publishers failed: {line} {child.stderr.read() if child.stderr else ''}")
        time.sleep(warmup)
        segs0 = {s["name"]: s["segments"] for s in httpx.get(gw.url + "/api/streams").json()}
        c0, t0 = gw.cpu_seconds(), time.monotonic()
        with open(f"/proc/{child.pid}/stat") as f:
            p0 = int(f.read().rsplit(")", 1)[1].split()[11])
        time.sleep(window)
        c1, t1 = gw.cpu_seconds(), time.monotonic()
        with open(f"/proc/{child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        segs1 = {s["name"]: s["segments"] for s in httpx.get(gw.url + "/api/streams").json()}
        load1 = os.getloadavg()[0]
        child.wait(timeout=warmup + window + 60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    gw_cores = (c1 - c0) / (t1 - t0)
    produced = {n: segs1.get(n, 0) - segs0.get(n, 0) for n in (f"cpu{i}" for i in range(count))}
    return {
        "publishers": count,
        "gateway_cores": round(gw_cores, 3),
        "per_publisher_core": round(gw_cores / count, 3),
        "publishers_per_core": round(count / gw_cores, 2) if gw_cores else None,
        "publisher_process_cores_user": round((int(fields[11]) - p0) / CLK_TCK / (t1 - t0), 3),
        "segments_in_window": produced,
        "every_stream_segmenting": all(v >= int(window / 2.0) - 1 for v in produced.values()),
        "loadavg_1m": round(load1, 2),
    }


# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "pyav": av.__version__, "aiortc": __import__("aiortc").__version__, "kernel": platform.release()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_publish":
        asyncio.run(publishers_main(argv[1], int(argv[2]), float(argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30, help="latency measurement window")
    ap.add_argument("--warmup", type=float, default=4)
    ap.add_argument("--publishers", type=int, nargs="*", default=[1, 2, 4], help="CPU run publisher counts")
    ap.add_argument("--window", type=float, default=20, help="CPU measurement window, seconds")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--modes", nargs="*", default=["copy", "transcode"], choices=["copy", "transcode"],
                    help="gateway whip_video settings to run (transcode is the baseline)")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "command": "python benchmarks/webrtc_latency.py " + " ".join(argv),
                               "latency": {}, "cpu": {}}
    for mode in args.modes:
        if args.skip_latency:
            break
        gw = Gateway(whip_video=mode)
        try:
            log(f"latency ({mode}): 720p30 WHIP publisher, WHEP viewer and HLS poller for {args.seconds:.0f} s...")
            results["latency"][mode] = asyncio.run(latency_run(gw, args.seconds, args.warmup))
        finally:
            gw.close()
        log(json.dumps(results["latency"][mode], indent=1))
    for mode in args.modes:
        results["cpu"][mode] = []
        for n in args.publishers:
            gw = Gateway(whip_video=mode)
            try:
                log(f"cpu ({mode}): {n} x 720p30 WHIP publishers (pre-encoded), {args.window:.0f} s window...")
                r = cpu_run(gw, n, 8.0, args.window)
            finally:
                gw.close()
            log(json.dumps(r))
            results["cpu"][mode].append(r)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "webrtc_latency.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(summary_table(results))
    return 0


def summary_table(results: dict[str, Any]) -> str:
    """The headline numbers, with copy against the transcode baseline of the same run."""
    lines = ["", "mode       | WHEP p50/p95 ms | HLS first-frame p50/p95 s | core per publisher (1, 2, 4...) "
             "| per core"]
    for mode in results["cpu"] or results["latency"]:
        lat = results["latency"].get(mode)
        w, h = (lat or {}).get("whip_to_whep_ms"), (lat or {}).get("whip_to_hls_first_frame_ms")
        whep = f"{w['p50']:.0f}/{w['p95']:.0f}" if w and w.get("n") else "-"
        hls = f"{h['p50'] / 1000:.2f}/{h['p95'] / 1000:.2f}" if h and h.get("n") else "-"
        runs = results["cpu"].get(mode, [])
        per = ", ".join(f"{r['per_publisher_core']:.3f}" for r in runs) or "-"
        worst = max((r["per_publisher_core"] for r in runs), default=0)
        lines.append(f"{mode:10} | {whep:15} | {hls:25} | {per:31} | {1 / worst:.1f}" if worst else
                     f"{mode:10} | {whep:15} | {hls:25} | {per:31} | -")
    cpu = results["cpu"]
    if "copy" in cpu and "transcode" in cpu and cpu["copy"] and cpu["transcode"]:
        pairs = zip(cpu["copy"], cpu["transcode"], strict=False)  # the same publisher counts, in order
        ratios = [c["per_publisher_core"] / t["per_publisher_core"] for c, t in pairs]
        lines.append("copy / transcode CPU per publisher: " + ", ".join(f"{r:.2f}" for r in ratios))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
