"""Orchestrator transcoding cost: streamgw.media.transcoder vs bare FFmpeg pipelines, same ladder.

The source is the benchmarks' 720p30 test FLV (testsrc2 + AAC, GOP 60, ~3 Mbit/s), cut by
streamgw's own segmenter into 2 s MPEG-TS segments exactly as the gateway sends them; segments
1..N are transcoded (segment 0 starts near t=0, where the transcoder leaves out B-frames).

Ladder: lpms presets P144p30fps16x9 (256x144, 400 kbit/s), P240p30fps16x9 (426x240, 600 kbit/s),
P360p30fps16x9 (640x360, 1.2 Mbit/s), at the source rate; x264 preset veryfast, VBV maxrate =
bitrate, bufsize = 1 s, AREA scaling, AAC copied, MPEG-TS out, the same thread count everywhere.
Segment by segment, each pipeline in turn (so they share whatever else the machine is doing):

* streamgw: ``transcode()`` in this process; CPU = RUSAGE_SELF delta.
* FFmpeg 8.1 libs: what ``ffmpeg -filter_complex split,scale`` does, built from PyAV's own FFmpeg
  libraries (same libx264 build as streamgw) in a worker process (:class:`LibsLadder`), per
  segment (all rebuilt for each segment) and continuous (one stream, IDR forced every 2 s: a lower
  bound for any per-segment transcoder); CPU = the worker's /proc/PID/stat delta per segment.
* Debian ffmpeg 5.1 CLI, one run per segment; CPU = RUSAGE_CHILDREN delta. Its process start-up
  (a one-frame nullsrc run) is measured too and subtracted in the "less start-up" row.

The ratio reported is streamgw CPU / pipeline CPU per round (median and range over rounds).
``--psnr`` also reports each rung's mean luma PSNR against a Lanczos downscale of the source
(needs numpy), to compare settings such as ``--tune zerolatency`` or ``--no-cascade``.

    python benchmarks/transcode.py [--segments 10] [--rounds 3] [--threads 1 2] [--tune zerolatency] [--psnr]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av  # noqa: E402

from benchmarks import common  # noqa: E402
from streamgw.media.segmenter import Segmenter, SegmenterSettings  # noqa: E402
from streamgw.media.transcoder import RenditionSpec, TranscodeOptions, transcode  # noqa: E402
from streamgw.segment import Segment  # noqa: E402

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
LADDER = (  # lpms presets (name, width, height, bit/s)
    ("P144p30fps16x9", 256, 144, 400_000),
    ("P240p30fps16x9", 426, 240, 600_000),
    ("P360p30fps16x9", 640, 360, 1_200_000),
)


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def source_segments(n: int) -> list[Segment]:
    """Segments 1..n of the test FLV, cut by streamgw's segmenter."""
    segments: list[Segment] = []
    source = io.BytesIO(common.ensure_media().read_bytes())
    Segmenter("bench", SegmenterSettings(), first_seq=0, discontinuity=False,
              on_info=lambda _info: None, on_segment=lambda s, _lat: segments.append(s)).run(source)
    if len(segments) < n + 1:
        raise SystemExit(f"only {len(segments)} segments in the test media")
    return segments[1:n + 1]


def ffmpeg_ladder_args(inp: str, outs: list[Path], threads: int, flags: str, preset: str, tune: str | None,
                       extra_out: list[str] | None = None) -> list[str]:
    """One ffmpeg command: decode once, split, scale per rung, x264 per rung, audio copied."""
    n = len(LADDER)
    graph = f"[0:v]split={n}" + "".join(f"[s{k}]" for k in range(n)) + ";" + ";".join(
        f"[s{k}]scale={w}:{h}:flags={flags}[o{k}]" for k, (_, w, h, _) in enumerate(LADDER))
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-threads", str(threads),
            "-i", inp, "-filter_complex", graph, "-filter_complex_threads", str(threads)]
    for k, ((_, _, _, bitrate), out) in enumerate(zip(LADDER, outs, strict=True)):
        args += ["-map", f"[o{k}]", "-map", "0:a?", "-c:v", "libx264", "-preset", preset,
                 "-b:v", str(bitrate), "-maxrate", str(bitrate), "-bufsize", str(bitrate),
                 "-threads", str(threads)]
        if tune:
            args += ["-tune", tune]
        args += (extra_out or []) + ["-c:a", "copy", "-f", "mpegts", str(out)]
    return args


def x264_options(bitrate: int, preset: str, tune: str | None) -> dict[str, str]:
    """The x264 settings both sides use (what ``-preset -b:v -maxrate -bufsize [-tune]`` set)."""
    opts = {"preset": preset, "maxrate": str(bitrate), "bufsize": str(bitrate), "forced-idr": "1"}
    if tune:
        opts["tune"] = tune
    return opts


class LibsLadder:
    """What the ffmpeg CLI does for this ladder, built from PyAV's own FFmpeg 8.1 libraries (same x264 build).

    A decoder (``-threads``), one libavfilter graph ``split`` -> ``scale`` per rung (``-filter_complex``,
    ``-filter_complex_threads``), one libx264 encoder and mpegts muxer per rung, audio packets copied to
    every output (``-c:a copy``). Per segment (``continuous`` False) all of it is built anew for each
    segment, as one ffmpeg run per segment would; ``continuous`` keeps it across segments (one stream,
    an IDR forced every 2 s like ``-force_key_frames``) until :meth:`close`.
    """

    def __init__(self, outdir: Path, threads: int, flags: str, preset: str, tune: str | None,
                 continuous: bool) -> None:
        self.outdir, self.threads, self.flags = outdir, threads, flags
        self.preset, self.tune, self.continuous = preset, tune, continuous
        self.decoder: Any = None
        self.graph: Any = None
        self.src: Any = None
        self.sinks: list[Any] = []
        self.outs: list[tuple[Any, Any, Any]] = []
        self.next_key = [0.0] * len(LADDER)
        self.count = 0

    def segment(self, data: bytes) -> None:
        """Transcode one segment (per segment: into its own files ``libs_RUNG_N.ts``)."""
        with av.open(io.BytesIO(data), mode="r", format="mpegts") as inp:
            v = inp.streams.video[0]
            a = inp.streams.audio[0] if inp.streams.audio else None
            if self.decoder is None:
                self.decoder = av.CodecContext.create("h264", "r")
                self.decoder.thread_count = self.threads
            if not self.outs:
                self._open_outputs(v, a)
            for packet in inp.demux(*(s for s in (v, a) if s is not None)):
                if packet.stream is v:
                    if packet.size:
                        self._frames(self.decoder.decode(packet))
                elif packet.size and packet.dts is not None:
                    for out, _, audio in self.outs:
                        copy = av.Packet(bytes(packet))
                        copy.pts, copy.dts, copy.duration = packet.pts, packet.dts, packet.duration
                        copy.time_base = packet.time_base
                        copy.stream = audio
                        out.mux(copy)
        self.count += 1
        if not self.continuous:
            self.close()

    def close(self) -> None:
        """Flush the decoder, graph and encoders and close the outputs."""
        if self.decoder is not None:
            self._frames(self.decoder.decode(None))
        if self.src is not None:
            self.src.push(None)
            self._drain(flush=True)
        for out, _, _ in self.outs:
            out.close()
        self.decoder, self.graph, self.src, self.sinks, self.outs = None, None, None, [], []
        self.next_key = [0.0] * len(LADDER)

    def _open_outputs(self, v: Any, a: Any) -> None:
        for name, w, h, bitrate in LADDER:
            out = av.open(str(self.outdir / f"libs_{name}_{self.count}.ts"), "w", format="mpegts")
            vs = out.add_stream("libx264", rate=30)
            vs.codec_context.width, vs.codec_context.height = w, h
            vs.codec_context.pix_fmt = "yuv420p"
            vs.codec_context.time_base = v.time_base
            vs.time_base = v.time_base
            vs.codec_context.bit_rate = bitrate
            vs.codec_context.thread_count = self.threads
            vs.codec_context.options = x264_options(bitrate, self.preset, self.tune)
            self.outs.append((out, vs, out.add_stream_from_template(a) if a is not None else None))

    def _frames(self, frames: list[Any]) -> None:
        for frame in frames:
            if self.src is None:
                self.graph = graph = av.filter.Graph()  # the contexts die with it
                graph.threads = self.threads
                self.src = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                                            time_base=frame.time_base)
                split = graph.add("split", str(len(LADDER)))
                self.src.link_to(split)
                for k, (_, w, h, _) in enumerate(LADDER):
                    scale = graph.add("scale", f"{w}:{h}:flags={self.flags}")
                    split.link_to(scale, k, 0)
                    sink = graph.add("buffersink")
                    scale.link_to(sink)
                    self.sinks.append(sink)
                graph.configure()
            self.src.push(frame)
            self._drain(flush=False)

    def _drain(self, flush: bool) -> None:
        for k, sink in enumerate(self.sinks):
            out, vs, _ = self.outs[k]
            while True:
                try:
                    frame = sink.pull()
                except (BlockingIOError, av.error.EOFError):
                    break
                frame.pict_type = av.video.frame.PictureType.NONE
                if self.continuous and float(frame.pts * frame.time_base) >= self.next_key[k]:
                    frame.pict_type = av.video.frame.PictureType.I  # the CLI's -force_key_frames
                    self.next_key[k] = float(frame.pts * frame.time_base) + 1.999
                out.mux(vs.encode(frame))
            if flush:
                out.mux(vs.encode(None))


def libs_worker(config: dict[str, Any]) -> None:
    """Serve ``LibsLadder`` commands from stdin, one per line: ``segment PATH``, ``close``; answer ``ok``."""
    ladder = LibsLadder(Path(config["outdir"]), config["threads"], config["flags"], config["preset"],
                        config["tune"], config["continuous"])
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "segment":
            ladder.segment(Path(arg).read_bytes())
        elif cmd == "close":
            ladder.close()
        print("ok", flush=True)


class Worker:
    """A ``libs_worker`` process; its CPU time is read from /proc around each command."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--libs-worker", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, command: str) -> float:
        """Run one command; returns the worker's CPU seconds for it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        c0 = common.proc_cpu_seconds(self.proc.pid)
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"libs worker failed on {command!r}")
        return common.proc_cpu_seconds(self.proc.pid) - c0

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def video_kbps(data: bytes) -> tuple[float, int]:
    """Mean video bitrate of a TS (kbit/s over its frame span) and its frame count."""
    with av.open(io.BytesIO(data), mode="r", format="mpegts") as c:
        v = c.streams.video[0]
        size = 0
        pts: list[int] = []
        for p in c.demux(v):
            if p.size and p.pts is not None:
                size += p.size
                pts.append(p.pts)
        tb = v.time_base
        assert tb is not None
    pts.sort()
    step = (pts[-1] - pts[0]) / max(1, len(pts) - 1)
    return size * 8 / (float((pts[-1] - pts[0] + step) * tb) * 1000), len(pts)


def luma_psnr(rungs: list[bytes], source: bytes) -> list[float]:
    """Mean luma PSNR of each rung against a Lanczos downscale of the source, frame by frame in order.

    Frames are paired by position: the ffmpeg CLI rewrites timestamps, and no rung drops frames here.
    """
    import numpy as np
    from av.video.reformatter import Interpolation

    def frames(data: bytes) -> list[Any]:
        with av.open(io.BytesIO(data), mode="r", format="mpegts") as c:
            return sorted(c.decode(video=0), key=lambda f: f.pts)

    src = frames(source)
    result = []
    for data in rungs:
        values = []
        for ref, f in zip(src, frames(data), strict=False):
            r = ref.reformat(f.width, f.height, "yuv420p", interpolation=Interpolation.LANCZOS)
            a = r.to_ndarray()[: f.height].astype(np.float64)
            b = f.to_ndarray()[: f.height].astype(np.float64)
            mse = float(((a - b) ** 2).mean())
            values.append(99.0 if mse == 0 else 10 * np.log10(255**2 / mse))
        result.append(float(np.mean(values)) if values else float("nan"))
    return result


def run(args: argparse.Namespace, threads: int, segments: list[Segment], workdir: Path) -> dict[str, Any]:
    """All pipelines over the same segments, interleaved segment by segment, ``args.rounds`` times."""
    specs = [RenditionSpec(name, w, h, b) for name, w, h, b in LADDER]
    options = TranscodeOptions(preset=args.preset, tune=args.tune, scaler=args.scaler, cascade=not args.no_cascade)
    files = []
    for i, seg in enumerate(segments):
        path = workdir / f"src{i:03d}.ts"
        path.write_bytes(seg.data)
        files.append(path)
    outs = [workdir / f"ff_{name}.ts" for name, *_ in LADDER]
    seconds = sum(float(s.duration * s.time_base) for s in segments)
    config = {"outdir": str(workdir), "threads": threads, "flags": args.scaler, "preset": args.preset,
              "tune": args.tune}
    per_segment = Worker({**config, "continuous": False})
    continuous = Worker({**config, "continuous": True})
    cli = ffmpeg_ladder_args("{}", outs, threads, args.scaler, args.preset, args.tune)
    startup = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i", "nullsrc=s=16x16",
               "-frames:v", "1", "-f", "null", "-"]

    def children(cmd: list[str]) -> float:
        c0 = cpu(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True)
        return cpu(resource.RUSAGE_CHILDREN) - c0

    # Warm-up (imports, library initialisation, page cache), not measured.
    transcode(segments[0].data, specs, threads=threads, options=options)
    per_segment.run(f"segment {files[0]}")
    continuous.run(f"segment {files[0]}")
    continuous.run("close")
    children([a.format(files[0]) for a in cli])

    keys = ("streamgw", "libs_segment", "libs_stream", "ffmpeg_segment", "ffmpeg_startup")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    walls: list[float] = []
    ff_walls: list[float] = []
    ours_out: list[list[bytes]] = []
    for rnd in range(args.rounds):
        common.log(f"  threads={threads} round {rnd + 1}/{args.rounds}...")
        spent = dict.fromkeys(keys, 0.0)
        ours_out = []
        # Segment by segment, every pipeline in turn: they share whatever else the machine is doing.
        for seg, path in zip(segments, files, strict=True):
            c0 = cpu(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            ours_out.append(transcode(seg.data, specs, threads=threads, options=options))
            walls.append(time.perf_counter() - t0)
            spent["streamgw"] += cpu(resource.RUSAGE_SELF) - c0
            spent["libs_segment"] += per_segment.run(f"segment {path}")
            spent["libs_stream"] += continuous.run(f"segment {path}")
            t0 = time.perf_counter()
            spent["ffmpeg_segment"] += children([a.format(path) for a in cli])
            ff_walls.append(time.perf_counter() - t0)
            spent["ffmpeg_startup"] += children(startup)
        spent["libs_stream"] += continuous.run("close")
        for k in keys:
            rows[k].append(spent[k])
    per_segment.stop()
    continuous.stop()

    for k in ("libs_segment", "libs_stream", "ffmpeg_segment"):
        rows[f"ratio_{k}"] = [a / b for a, b in zip(rows["streamgw"], rows[k], strict=True)]
    rows["ffmpeg_segment_net"] = [a - b for a, b in zip(rows["ffmpeg_segment"], rows["ffmpeg_startup"], strict=True)]
    rows["ratio_ffmpeg_segment_net"] = [a / b for a, b in zip(rows["streamgw"], rows["ffmpeg_segment_net"],
                                                                strict=True)]
    med = {k: statistics.median(v) for k, v in rows.items()}
    # Output check: the same work on every side (bitrate and frames per rung, last segment).
    last = len(segments) - 1
    libs_last = [(workdir / f"libs_{name}_{last + 1}.ts").read_bytes() for name, *_ in LADDER]
    check = []
    for rung, (name, *_rest) in enumerate(LADDER):
        ours = video_kbps(ours_out[-1][rung])
        libs = video_kbps(libs_last[rung])
        ff = video_kbps(outs[rung].read_bytes())
        check.append({"rung": name, "kbps": {"streamgw": ours[0], "libs": libs[0], "ffmpeg": ff[0]},
                      "frames": {"streamgw": ours[1], "libs": libs[1], "ffmpeg": ff[1]}})
    result: dict[str, Any] = {
        "threads": threads, "segments": len(segments), "seconds": seconds, "rounds": args.rounds,
        "cpu_s": rows, "median": med,
        "streamgw_wall_ms": {"p50": statistics.median(walls) * 1000, "max": max(walls) * 1000,
                             "mean": statistics.fmean(walls) * 1000},
        "ffmpeg_wall_ms": {"p50": statistics.median(ff_walls) * 1000, "max": max(ff_walls) * 1000},
        "output_check": check,
    }
    if args.psnr:
        result["psnr_db"] = {
            "streamgw": luma_psnr(ours_out[-1], segments[-1].data),
            "libs": luma_psnr(libs_last, segments[-1].data),
            "ffmpeg": luma_psnr([p.read_bytes() for p in outs], segments[-1].data),
        }
    return result


LABELS = {
    "streamgw": "streamgw transcode()",
    "libs_segment": "FFmpeg 8.1 libs, per segment",
    "libs_stream": "FFmpeg 8.1 libs, continuous",
    "ffmpeg_segment": "Debian ffmpeg 5.1 CLI, per segment",
    "ffmpeg_segment_net": "  same, less process start-up",
}


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n== transcode: {results[0]['segments']} x 2 s 720p30 segments -> "
          f"{'/'.join(n[1:5] for n, *_ in LADDER)} ladder, x264 {args.preset}"
          f"{' tune ' + args.tune if args.tune else ''}, scaler {args.scaler}"
          f"{' (streamgw without cascade)' if args.no_cascade else ''}, {args.rounds} rounds ==")
    rows = [["threads", "pipeline", "CPU s (median)", "CPU s / s of ladder", "streamgw / it: median", "range"]]
    for r in results:
        med, cpu_s = r["median"], r["cpu_s"]
        for key, label in LABELS.items():
            ratio = spread = ""
            if key != "streamgw":
                ratio = f"{med['ratio_' + key]:.2f}"
                spread = f"{min(cpu_s['ratio_' + key]):.2f}-{max(cpu_s['ratio_' + key]):.2f}"
            rows.append([str(r["threads"]), label, f"{med[key]:.2f}", f"{med[key] / r['seconds']:.3f}", ratio, spread])
    common.print_table(rows)
    print()
    rows = [["threads", "streamgw wall/segment p50 ms", "mean", "max", "ffmpeg CLI wall/segment p50 ms"]]
    for r in results:
        w = r["streamgw_wall_ms"]
        rows.append([str(r["threads"]), f"{w['p50']:.0f}", f"{w['mean']:.0f}", f"{w['max']:.0f}",
                     f"{r['ffmpeg_wall_ms']['p50']:.0f}"])
    common.print_table(rows)
    print()
    who = ["streamgw", "libs", "ffmpeg"]
    psnr = "psnr_db" in results[0]
    rows = [["rung", "kbit/s sg/libs/cli", "frames sg/libs/cli"] + (["PSNR-Y dB sg/libs/cli"] if psnr else [])]
    for k, c in enumerate(results[0]["output_check"]):
        row = [c["rung"], "/".join(f"{c['kbps'][w]:.0f}" for w in who), "/".join(str(c["frames"][w]) for w in who)]
        if psnr:
            row.append("/".join(f"{results[0]['psnr_db'][w][k]:.2f}" for w in who))
        rows.append(row)
    common.print_table(rows)
    for r in results:
        med = r["median"]
        print(f"\nthreads={r['threads']}: streamgw CPU / FFmpeg-libs CPU = {med['ratio_libs_segment']:.2f} "
              "per segment, "
              f"{med['ratio_libs_stream']:.2f} vs continuous (goal <= 1.15); "
              f"vs Debian's ffmpeg CLI {med['ratio_ffmpeg_segment']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="transcoder CPU vs a bare FFmpeg ladder")
    ap.add_argument("--segments", type=int, default=10, help="2 s segments per round (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts to run (default 1)")
    ap.add_argument("--preset", default="veryfast", choices=["ultrafast", "superfast", "veryfast"])
    ap.add_argument("--tune", default=None, help="x264 tune for every side, e.g. zerolatency")
    ap.add_argument("--scaler", default="area", choices=["area", "fast_bilinear", "bilinear", "bicubic"])
    ap.add_argument("--no-cascade", action="store_true", help="streamgw scales every rung from the source")
    ap.add_argument("--psnr", action="store_true", help="also measure luma PSNR per rung (needs numpy)")
    ap.add_argument("--json", default=str(common.OUT_DIR / "transcode.json"), help="where to write the results")
    ap.add_argument("--libs-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.libs_worker:
        libs_worker(json.loads(args.libs_worker))
        return 0
    common.log("transcode: segmenting the test media...")
    segments = source_segments(args.segments)
    results = []
    for threads in args.threads:
        results.append(run(args, threads, segments, common.new_workdir(f"transcode-t{threads}")))
    report(results, args)
    info = common.machine_info()
    info["pyav"] = f"{av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=2))
    print(f"\nmachine: {info['cpu']}, {info['nproc']} CPUs; {info['ffmpeg']}; PyAV {info['pyav']}")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
