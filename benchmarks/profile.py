"""Where streamgw's CPU goes with N passthrough publishers (evidence for docs/benchmarks.md).

    python benchmarks/profile.py [--publishers 10] [--window 20] [--py-spy] [--breakdown]

1. Per-thread CPU of a ``streamgw gateway`` process under N real-time 720p30 publishers (no
   playlist polling): utime/stime of each thread from /proc/PID/task/TID/stat, thread names from
   ``py-spy dump`` (event loop = MainThread, ``segmenter_N``: the segmenter pool shared by every stream).
2. ``--py-spy``: ``py-spy record --gil`` (only samples holding the GIL, i.e. running Python) for the
   window; prints the main thread's top self-time lines and writes the collapsed stacks to
   benchmarks/out/.
3. ``--breakdown``: the same publishers against streamgw's ``RtmpServer`` alone (in a harness
   process, given a stand-in publisher sink that drops the media, streamgw unchanged); and the cut
   alone over the whole test file (RTMP messages made into packets and muxed, as the ingest does;
   and, for comparison, FFmpeg demuxing the same FLV).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    CLK_TCK,
    OUT_DIR,
    Poller,
    PublisherProcess,
    StreamgwServer,
    ensure_media,
    free_port,
    log,
    new_workdir,
    proc_cpu_seconds,
    proc_minor_faults,
    streamgw_revision,
    use_streamgw_rev,
    wait_port,
)


def _thread_ticks(pid: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def _thread_names(pid: int) -> dict[int, str]:
    if not shutil.which("py-spy"):
        return {}
    dump = subprocess.run(["py-spy", "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    names = {}
    for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump):
        name = re.sub(r"^segmenter-.*", "segmenter-* (one per stream)", m.group(2))
        names[int(m.group(1))] = re.sub(r"^AnyIO worker thread.*", "AnyIO worker threads", name)
    return names


def per_thread(n: int, window: float, py_spy: bool, poll: float) -> None:
    media = ensure_media()
    wd = new_workdir("profile")
    with StreamgwServer(wd) as sg:
        names = [f"p{i}" for i in range(n)] if n > 1 else ["p"]
        poller = Poller("http", {nm: sg.playlist_http_path(nm) for nm in names}, poll, sg.http_port).start() \
            if poll > 0 else None
        pub = PublisherProcess(["--flv", str(media), "--target", f"127.0.0.1:{sg.rtmp_port}", "--streams", str(n),
                                "--prefix", "p", "--stagger", f"{2 / n:.4f}", "--duration", str(window + 8)],
                               wd, "profile")
        pub.wait_started()
        time.sleep(5)
        tnames = _thread_names(sg.pid)
        spy = None
        collapsed = OUT_DIR / f"py-spy-gil-{n}.txt"
        if py_spy and shutil.which("py-spy"):
            spy = subprocess.Popen(["py-spy", "record", "-p", str(sg.pid), "-d", str(int(window)), "-r", "200",
                                    "--gil", "--threads", "-f", "raw", "-o", str(collapsed)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        a, c0, t0 = _thread_ticks(sg.pid), proc_cpu_seconds(sg.pid), time.monotonic()
        f0 = proc_minor_faults(sg.pid)
        time.sleep(window)
        b, c1, dt = _thread_ticks(sg.pid), proc_cpu_seconds(sg.pid), time.monotonic() - t0
        faults = proc_minor_faults(sg.pid) - f0
        if spy is not None:
            spy.wait(60)
        pub.proc.wait(60)
        pub.stop()
        if poller is not None:
            poller.stop()
    agg: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for tid, ticks in b.items():
        name = tnames.get(tid, "other threads")
        agg[name][0] += (ticks - a.get(tid, 0)) / CLK_TCK / dt * 100
        agg[name][1] += 1
    total = (c1 - c0) / dt * 100
    print(f"\n== streamgw {streamgw_revision()} gateway, {n} x 720p30 publishers"
          f"{f', playlist polled every {poll * 1000:.0f} ms per stream' if poll > 0 else ', no HTTP clients'}, "
          f"{dt:.0f} s ==")
    print(f"process: {total:.1f}% of one core = {total / n:.2f}% per stream; {faults / dt:.0f} minor page faults/s")
    for name, (pct_, count) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
        print(f"  {name:34s} x{int(count):3d}  {pct_:5.1f}% of a core  ({pct_ / n:.2f}% per stream)")
    if spy is not None and collapsed.exists():
        _top_lines(collapsed)


def _top_lines(collapsed: Path, top: int = 25) -> None:
    total = 0
    by_thread: collections.Counter[str] = collections.Counter()
    self_main: collections.Counter[str] = collections.Counter()
    incl_main: collections.Counter[str] = collections.Counter()
    main_total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        k = int(count)
        total += k
        thread = re.sub(r"segmenter-\S+", "segmenter-*", re.sub(r"\s*\(\d+\)", "", frames[0]))
        by_thread[thread] += k
        if "MainThread" in frames[0]:
            main_total += k
            self_main[frames[-1]] += k
            for fr in {re.sub(r":\d+\)", ")", f) for f in frames[1:]}:
                incl_main[fr] += k
    print(f"py-spy --gil: {total} samples holding the GIL; by thread: "
          + ", ".join(f"{t.strip()} {v / total * 100:.0f}%" for t, v in by_thread.most_common(4)))
    print(f"main thread (event loop), top self lines ({main_total} samples):")
    for fr, k in self_main.most_common(top):
        print(f"  {k / main_total * 100:5.1f}%  {fr}")
    print("main thread, inclusive, selected:")
    for fr, k in incl_main.most_common():
        if any(s in fr for s in ("_Connection.run", "_Connection._media", "ChunkReader.feed", "ByteQueue.write",
                                 "wait_for", "Condition.notify", "run_asgi", "_Publisher.write", "flv.py")):
            print(f"  {k / main_total * 100:5.1f}%  {fr}")
    print(f"collapsed stacks: {collapsed}")


# --- breakdown: RtmpServer alone in a harness process ---------------------------------------


def _harness(sink: str, port: int) -> None:
    """Run streamgw's RtmpServer with a stand-in sink that drops the media (this process is measured)."""
    if os.environ.get("STREAMGW_BENCH_SRC"):
        sys.path.insert(0, os.environ["STREAMGW_BENCH_SRC"])
    import streamgw.ingest.rtmp.server as srv

    class Drop:
        def flv_start(self, data: bytes, first_arrival: float) -> None:
            pass

        def flv_tags(self, tags: list[tuple[int, int, bytes]], *, size: int, urgent: bool) -> None:
            pass

        def close(self, *, clean: bool) -> None:
            pass

    async def open_publisher(name: str, remote: str, query: str = "") -> Any:
        return Drop()

    async def main() -> None:
        server = srv.RtmpServer(open_publisher)
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def breakdown(n: int, window: float) -> None:
    from benchmarks import common

    media = ensure_media()
    wd = new_workdir("breakdown")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(common.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if common._STREAMGW_SRC is not None:
        env["STREAMGW_BENCH_SRC"] = str(common._STREAMGW_SRC)
    print(f"\n== RtmpServer alone ({streamgw_revision()}), {n} x 720p30 publishers, {window:.0f} s ==")
    for sink, what in (("drop", "RTMP read + chunk parse + the FLV start, messages dropped"),):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.profile", "--harness", sink, str(port)],
                                cwd=common.REPO, env=env)
        wait_port(port, 20, proc)
        pub = PublisherProcess(["--flv", str(media), "--target", f"127.0.0.1:{port}", "--streams", str(n),
                                "--prefix", "p", "--stagger", f"{2 / n:.4f}", "--duration", str(window + 6)],
                               wd, f"breakdown-{sink}")
        pub.wait_started()
        time.sleep(4)
        c0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        cpu = (proc_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0) * 100
        pub.proc.wait(60)
        pub.stop()
        proc.kill()
        proc.wait()
        print(f"  {sink:17s} {cpu:5.1f}% of a core = {cpu / n:.2f}% per stream   ({what})")
    # The cut alone over the whole file: RTMP messages made into packets (the ingest's path) and,
    # for comparison, the same FLV demuxed by FFmpeg.
    import io

    from benchmarks.publisher import read_flv
    from streamgw.ingest.rtmp import flv
    from streamgw.media.flv_packets import FlvPackets
    from streamgw.media.segmenter import SegmentCutter, Segmenter, SegmenterSettings

    tags = read_flv(media)
    media_s = tags[-1].ts / 1000
    settings = SegmenterSettings()
    writer = flv.FlvWriter()
    packets = FlvPackets(settings, "x")
    cutter = SegmentCutter("x", settings, first_seq=0, discontinuity=False, on_info=lambda i: None,
                           on_segment=lambda s, lat: None)
    c = time.thread_time()
    batch: list[tuple[int, int, bytes]] = []
    for t in tags:
        if t.type not in (flv.TAG_AUDIO, flv.TAG_VIDEO):
            continue
        if not writer.started:
            if start := writer.media(t.type, t.ts, t.payload):
                packets.start(start, time.monotonic())
            continue
        batch.append((t.type, t.ts, t.payload))
        if len(batch) >= 20:  # about what one 0.25 s hand-over holds
            packets.push(cutter, batch, time.monotonic())
            batch = []
    packets.push(cutter, batch, time.monotonic())
    packets.end(cutter, time.monotonic())
    packets.close()
    spent = time.thread_time() - c
    print(f"  cut alone (RTMP messages -> packets -> mpegts mux): {spent:.2f} s CPU for {media_s:.0f} s of media "
          f"= {spent / media_s * 100:.2f}% of a core per real-time stream")
    blob = flv.header(audio=True, video=True) + b"".join(flv.tag(t.type, t.ts, t.payload) for t in tags)
    seg = Segmenter("x", settings, first_seq=0, discontinuity=False, on_info=lambda i: None,
                    on_segment=lambda s, lat: None)
    c = time.thread_time()
    seg.run(io.BytesIO(blob))
    spent = time.thread_time() - c
    print(f"  for comparison, FFmpeg demux + mpegts mux of the same FLV: {spent:.2f} s CPU "
          f"= {spent / media_s * 100:.2f}% of a core per real-time stream")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--harness":
        _harness(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description="where streamgw's CPU goes with N passthrough publishers")
    ap.add_argument("--publishers", type=int, default=10)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--poll-interval", type=float, default=0.0,
                    help="also poll each playlist every this many s (default 0: no HTTP clients)")
    ap.add_argument("--py-spy", action="store_true", help="py-spy record --gil the window")
    ap.add_argument("--breakdown", action="store_true", help="also the RtmpServer-alone and segmenter-alone runs")
    ap.add_argument("--streamgw-rev", metavar="REV", help="profile streamgw as of this commit")
    args = ap.parse_args(argv)
    use_streamgw_rev(args.streamgw_rev)
    if args.streamgw_rev:
        from benchmarks import common

        sys.path.insert(0, str(common._STREAMGW_SRC))  # the segmenter-alone run imports streamgw here
        for mod in [m for m in sys.modules if m == "streamgw" or m.startswith("streamgw.")]:
            del sys.modules[mod]
    log(f"profile: streamgw {streamgw_revision()}, {args.publishers} publishers...")
    per_thread(args.publishers, args.window, args.py_spy, args.poll_interval)
    if args.breakdown:
        breakdown(args.publishers, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
