"""Live AI end to end: frames in vs frames out, and glass-to-glass latency WHIP -> pipeline -> WHEP.

One ``streamgw orchestrator --live-pipelines PIPELINE`` process pinned to one CPU (``taskset``),
one ``streamgw gateway`` process (no ladder: ``--transcoding-options none``), both on free
127.0.0.1 ports. An aiortc publisher sends scikit-image's astronaut (512x512 by default, panning
2 px per frame) at 30 fps with its send time stamped into the top strip of every frame (the
layout ``web/golive.js`` and ``benchmarks/webrtc_latency.py`` use).

* **Latency.** First the baseline: the same publisher without a pipeline, watched over WHEP at
  ``/whep/STREAM`` (the gateway's own path, segments included). Then through the pipeline, watched
  at ``/whep/STREAM/ai``. For every decoded frame: latency = now - stamp (one clock, one process).
* **Frames.** Over ``--seconds`` (60) through the pipeline, every source and ``ai`` segment the
  gateway lists is fetched; a source frame whose timestamp never appears in the AI output is
  dropped. The orchestrator's CPU (utime+stime / wall) shows it kept to its one core.

    python benchmarks/live_ai.py [--seconds 60] [--size 512] [--pipeline face-blur] [--cpu 1]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import log  # noqa: E402
from benchmarks.webrtc_latency import age_ms, draw_stamp, now_ms, read_stamp  # noqa: E402
from tests.harness import (  # noqa: E402
    StreamgwProcess,
    Tone,
    free_port,
    proc_cpu_seconds,
    spawn_streamgw,
    streamgw_command,
    summary,
    wait_port,
    whep_view,
    whip_publish,
)


class StampedAstronaut(MediaStreamTrack):
    """The astronaut panning 2 px per frame at ``fps``, the send time stamped in its top strip."""

    kind = "video"

    def __init__(self, side: int = 512, fps: int = 30) -> None:
        super().__init__()
        from skimage import data

        wide = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
        self.wide = np.concatenate([wide, wide[:, ::-1]], axis=1)  # mirrored: the pan never jumps
        self.side, self.fps = side, fps
        self.n = 0
        self.start = 0.0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.n == 0:
            self.start = time.time()
        else:
            await asyncio.sleep(max(0.0, self.start + self.n / self.fps - time.time()))
        x = (2 * self.n) % self.side
        rgb = np.ascontiguousarray(self.wide[:, x:x + self.side])
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        y = np.frombuffer(memoryview(frame.planes[0]), np.uint8).reshape(self.side, frame.planes[0].line_size)
        draw_stamp(y[:, :self.side], now_ms())
        frame.pts = self.n * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        return frame


def start_orchestrator(pipeline: str, cpu: int) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamgw-bench-live-{port}"
    command = [*streamgw_command(), "orchestrator", "--serve-addr", f"127.0.0.1:{port}", "--orch-data-dir",
               str(data_dir), "--live-pipelines", f"{pipeline},noop", "--live-capacity", "4",
               "--transcode-workers", "1", "--log-level", "warning"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    wait_port(port, 30, proc)
    return proc, f"https://127.0.0.1:{port}"


def start_gateway(orchestrator: str) -> tuple[StreamgwProcess, str]:
    http = free_port()
    gw = spawn_streamgw("gateway", "--rtmp-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{http}",
                        "--orch-addr", orchestrator, "--transcoding-options", "none", "--log-level", "warning",
                        ports=[http], cwd=REPO).wait_ready(30)
    return gw, f"http://127.0.0.1:{http}"


async def latency(url: str, stream: str, query: str, watch: str, seconds: float, side: int) -> dict[str, Any]:
    ages: list[float] = []
    unreadable = 0
    async with httpx.AsyncClient(timeout=30) as client:
        pub, pub_session = await whip_publish(client, f"{url}/whip/{stream}{query}",
                                              [StampedAstronaut(side), Tone(amplitude=6000)])
        # The AI output exists once the first segment went through: wait for it before watching.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = await client.get(f"{url}/api/streams/{stream}")
            if r.status_code == 200 and (watch.rsplit("/", 1)[-1] in r.json()["renditions"] or watch.endswith(stream)):
                break
            await asyncio.sleep(0.2)
        view, view_session = await whep_view(client, url + watch)
        track = next(t.receiver.track for t in view.getTransceivers() if t.kind == "video")
        warm = time.monotonic() + 5
        end = warm + seconds
        while time.monotonic() < end:
            try:
                frame = await asyncio.wait_for(track.recv(), 5)
            except (TimeoutError, MediaStreamError):
                continue
            stamp = read_stamp(frame) if isinstance(frame, av.VideoFrame) else None
            if stamp is None:
                unreadable += 1
            elif time.monotonic() > warm:
                ages.append(age_ms(stamp))
        await client.delete(view_session)
        await view.close()
        await client.delete(pub_session)
        await pub.close()
    return {"ms": summary(ages, ndigits=1), "frames": len(ages), "unreadable": unreadable}


def _pts(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data), format="mpegts") as c:
        return [int(p.pts) for p in c.demux(video=0) if p.pts is not None and p.size]


async def frames(url: str, stream: str, pipeline: str, seconds: float, side: int, orch_pid: int) -> dict[str, Any]:
    seen: dict[str, set[str]] = {"source": set(), "ai": set()}
    pts: dict[str, set[int]] = {"source": set(), "ai": set()}
    async with httpx.AsyncClient(timeout=30) as client:
        track = StampedAstronaut(side)
        pub, pub_session = await whip_publish(client, f"{url}/whip/{stream}?pipeline={pipeline}", [track])

        async def collect(rendition: str) -> None:
            r = await client.get(f"{url}/stream/{stream}/{rendition}.m3u8")
            if r.status_code != 200:
                return
            for uri in [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]:
                if uri not in seen[rendition]:
                    seen[rendition].add(uri)
                    seg = await client.get(f"{url}/stream/{stream}/{uri}")
                    pts[rendition].update(await asyncio.to_thread(_pts, seg.content))

        cpu0, t0 = proc_cpu_seconds(orch_pid), time.monotonic()
        while time.monotonic() < t0 + seconds:
            await asyncio.sleep(1.0)
            await collect("source")
            await collect("ai")
        cpu = (proc_cpu_seconds(orch_pid) - cpu0) / (time.monotonic() - t0)
        sent = track.n
        await client.delete(pub_session)
        await pub.close()
        await asyncio.sleep(6)  # the last segments through
        await collect("source")
        await collect("ai")
        status = (await client.get(f"{url}/live/video-to-video/{stream}/status")).json()
    # Compare over the source segments the AI output had time to cover (all but the last two).
    source = sorted(pts["source"])
    covered = [p for p in source if p <= (max(pts["ai"]) if pts["ai"] else -1)]
    dropped = [p for p in covered if p not in pts["ai"]]
    return {"sent": sent, "source_frames": len(source), "compared": len(covered), "ai_frames": len(pts["ai"]),
            "dropped": len(dropped), "orchestrator_cpu_cores": round(cpu, 3),
            "inference_fps": (status.get("inference_status") or {}).get("fps"),
            "segments_out": status["streamgw"]["segments_out"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pipeline", default="face-blur")
    parser.add_argument("--cpu", type=int, default=1, help="the CPU the orchestrator is pinned to")
    args = parser.parse_args(argv)
    orch, orch_url = start_orchestrator(args.pipeline, args.cpu)
    gw, url = start_gateway(orch_url)
    try:
        log("latency: baseline (no pipeline, /whep/STREAM)")
        base = asyncio.run(latency(url, "base", "", "/whep/base", args.latency_seconds, args.size))
        log(f"latency: {args.pipeline} (/whep/STREAM/ai)")
        ai = asyncio.run(latency(url, "lat", f"?pipeline={args.pipeline}", "/whep/lat/ai", args.latency_seconds,
                                 args.size))
        log(f"frames: {args.pipeline} for {args.seconds:.0f} s")
        counted = asyncio.run(frames(url, "frames", args.pipeline, args.seconds, args.size, orch.pid))
    finally:
        gw.stop(20)
        orch.terminate()
        orch.communicate(timeout=20)
    result = {"pipeline": args.pipeline, "size": args.size, "latency_baseline": base, "latency_ai": ai,
              "frames": counted}
    print(json.dumps(result, indent=1))
    b, a = base["ms"], ai["ms"]
    print(f"\nglass-to-glass p50: {a['p50']:.0f} ms through {args.pipeline} vs {b['p50']:.0f} ms without "
          f"({a['p50'] / max(1.0, b['p50']):.2f}x); p95 {a['p95']:.0f} vs {b['p95']:.0f} ms")
    print(f"frames: {counted['compared']} compared, {counted['dropped']} dropped "
          f"({counted['ai_frames']} out of {counted['source_frames']} in); orchestrator "
          f"{counted['orchestrator_cpu_cores']:.2f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
