"""Ingest-to-playlist latency per segment: streamgw vs nginx-rtmp, measured the same way.

One publisher process (``benchmarks.publisher``) sends the 720p30 test FLV, paced in real time,
to both servers at once (same schedule, one connection each) and records the monotonic time each
video keyframe was handed to the kernel. Pollers in their own processes record when each new
segment is first listed:

* nginx-rtmp (file): stat + read of the playlist file on disk every ``--file-interval`` (1 ms);
* nginx-rtmp (http): GET of the same playlist from nginx's HTTP server, as for streamgw;
* streamgw (http): GET of ``/stream/NAME/source.m3u8`` on a keep-alive connection.

HTTP polling runs in two ways: by default every ``--http-interval`` (3 ms) from 5 ms before each
scheduled keyframe for 0.3 s and every 100 ms otherwise (fine resolution where it matters without
loading the server with 300+ requests/s for the whole run); then, as a second run, at a fixed
``--fixed-interval`` (5 ms) for the whole run, which is what an aggressive keep-alive client does.

latency(segment) = first sighting - send time of the keyframe that closes the segment
(the next segment's first keyframe). The HTTP numbers include the polling quantisation
(on average about half the interval plus one request), the file numbers about half a millisecond.

Variant ffmpeg: ``ffmpeg -re -i test.flv -c copy -f tee`` to both servers; latency =
first sighting - (ffmpeg start + segment end pts); includes ffmpeg's start-up and connect time,
identical for both servers (the tee muxer sends each packet to both).

    python benchmarks/latency.py [--duration 32] [--fixed-duration 20] [--ffmpeg-duration 14]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    FFMPEG,
    OUT_DIR,
    NginxRtmpServer,
    Observed,
    Poller,
    PublisherProcess,
    StreamgwServer,
    ensure_media,
    log,
    machine_cpu_seconds,
    machine_info,
    new_workdir,
    print_table,
    segment_latencies,
    summary_ms,
    use_streamgw_rev,
)
from benchmarks.publisher import Media, read_flv  # noqa: E402


def _histogram(metrics: str, name: str) -> dict[str, float]:
    """Bucket counts, sum and count of a Prometheus histogram from its text exposition."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        m = re.match(rf'{name}_bucket\{{le="([^"]+)"\}} ([0-9.e+]+)', line)
        if m:
            out[f"le_{m.group(1)}"] = float(m.group(2))
        m = re.match(rf"{name}_(sum|count) ([0-9.e+-]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _measure(
    observations: dict[str, Observed], keyframes: dict[str, list[tuple[int, float]]], until: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, obs in observations.items():
        kf = keyframes[label]
        lat, unmatched = segment_latencies(obs, kf)
        lat = [(s, v) for s, v in lat if obs.first_seen[s] <= until]
        results[label] = {
            "per_segment": lat,
            "unmatched": unmatched,
            "summary": summary_ms([v for _, v in lat]),
            "polls": obs.polls,
            "poll_rtt_ms": summary_ms(obs.rtts) if obs.rtts else None,
            "durations": sorted(set(round(d, 3) for d in obs.durations.values())),
        }
    return results


def _report(title: str, results: dict[str, Any], baseline: str, candidate: str) -> dict[str, Any]:
    print(f"\n{title}")
    rows = [["server (measure)", "segments", "p50 ms", "p95 ms", "max ms", "mean ms", "poll RTT p50 ms"]]
    for label, r in results.items():
        s = r["summary"]
        rtt = r["poll_rtt_ms"]
        rows.append([label, str(s["n"]), f"{s['p50']:.1f}", f"{s['p95']:.1f}", f"{s['max']:.1f}",
                     f"{s['mean']:.1f}", f"{rtt['p50']:.2f}" if rtt else "-"])
    print_table(rows)
    base, cand = results[baseline]["summary"], results[candidate]["summary"]
    diff = {k: cand[k] - base[k] for k in ("p50", "p95", "max", "mean")}
    # Paired: the same segment (same closing keyframe) on both servers.
    b = dict(results[baseline]["per_segment"])
    c = dict(results[candidate]["per_segment"])
    paired = [c[s] - b[s] for s in sorted(set(b) & set(c))]
    paired_s = summary_ms(paired)
    print(f"{candidate} - {baseline}: p50 {diff['p50']:+.1f} ms, p95 {diff['p95']:+.1f} ms, "
          f"max {diff['max']:+.1f} ms; paired per segment: median {paired_s['p50']:+.1f} ms, "
          f"p95 {paired_s['p95']:+.1f} ms (n={paired_s['n']})")
    ratio = cand["p50"] / base["p50"] if base["p50"] > 0 else float("nan")
    print(f"ratio {candidate}/{baseline} (p50): {ratio:.2f}")
    verdict = "PASS" if diff["p50"] <= 30 and diff["p95"] <= 30 else "FAIL"
    print(f"goal: {candidate} within 30 ms of {baseline} (p50 and p95): {verdict}")
    return {"diff_ms": diff, "paired_ms": paired_s, "ratio_p50": ratio, "within_30ms": verdict == "PASS"}


def _keyframe_due(media: Path, start: float, duration: float) -> list[float]:
    """Monotonic times the publisher is scheduled to send keyframes (loops included)."""
    m = Media(read_flv(media))
    kf = [t.ts for t in m.body if t.keyframe]
    due: list[float] = []
    n = 0
    while n * m.period / 1000 < duration + 1:
        due += [start + (ts + n * m.period) / 1000 for ts in kf]
        n += 1
    return due


def run_publisher_variant(
    duration: float, http_interval: float, file_interval: float, fixed_rate: bool = False,
    mode: str = "gateway",
) -> dict[str, Any]:
    media = ensure_media()
    wd = new_workdir("latency")
    name = "lat"
    with NginxRtmpServer(wd) as ng, StreamgwServer(wd, mode) as sg:
        sgl = f"{sg.label} (http)"
        file_poller = Poller("file", {name: str(ng.playlist_file(name))}, file_interval).start()
        pub = PublisherProcess(
            ["--flv", str(media), "--target", f"127.0.0.1:{ng.rtmp_port}", "--target",
             f"127.0.0.1:{sg.rtmp_port}", "--prefix", name, "--duration", str(duration)], wd, "latency",
        )
        t0 = pub.wait_started()
        m0 = machine_cpu_seconds()
        # HTTP pollers: every http_interval around each scheduled keyframe, every 100 ms otherwise.
        bursts = None if fixed_rate else [t - 0.005 for t in _keyframe_due(media, t0, duration)]
        pollers = {
            "nginx-rtmp (file)": file_poller,
            "nginx-rtmp (http)": Poller("http", {name: ng.playlist_http_path(name)}, http_interval,
                                        ng.http_port, bursts).start(),
            sgl: Poller("http", {name: sg.playlist_http_path(name)}, http_interval, sg.http_port, bursts).start(),
        }
        log(f"latency: publishing {duration:.0f} s to both servers...")
        pub.proc.wait(duration + 30)
        stopped = time.monotonic()
        busy = (machine_cpu_seconds() - m0) / (stopped - t0) * 100
        published = pub.stop()
        time.sleep(0.3)
        obs = {label: p.stop()[name] for label, p in pollers.items()}
        hist = _histogram(sg.metrics(), "streamgw_segmenter_latency_seconds")
    kf_ng = published[f"127.0.0.1:{ng.rtmp_port}"][name]["keyframes"]
    kf_sg = published[f"127.0.0.1:{sg.rtmp_port}"][name]["keyframes"]
    keyframes = {"nginx-rtmp (file)": kf_ng, "nginx-rtmp (http)": kf_ng, sgl: kf_sg}
    results = _measure(obs, keyframes, stopped)
    for label in results:
        results[label]["durations"] = results[label]["durations"][:8]
    how = (f"HTTP polled every {http_interval * 1000:.0f} ms for the whole run" if fixed_rate else
           f"HTTP polled every {http_interval * 1000:.0f} ms from 5 ms before each keyframe for 0.3 s, "
           "else every 100 ms")
    print(f"\n== latency: streamgw {mode} vs nginx-rtmp; Python RTMP publisher, 720p30 + AAC, GOP 2 s, "
          f"{duration:.0f} s; {how}; "
          f"nginx file polled every {file_interval * 1000:.0f} ms ==")
    summary = _report("ingest-to-playlist latency per segment (first sighting - closing keyframe sent)",
                      results, "nginx-rtmp (file)", sgl)
    same = _report("same measure on both (HTTP polling):", {k: results[k] for k in
                   ("nginx-rtmp (http)", sgl)}, "nginx-rtmp (http)", sgl)
    if hist.get("count"):
        print(f"streamgw's own streamgw_segmenter_latency_seconds: {int(hist['count'])} segments, "
              f"mean {hist['sum'] / hist['count'] * 1000:.1f} ms, "
              f"<=5 ms: {int(hist.get('le_0.005', 0))}, <=10 ms: {int(hist.get('le_0.01', 0))}, "
              f"<=25 ms: {int(hist.get('le_0.025', 0))}")
    late = {k: v[name]["late_max"] for k, v in published.items()}
    print(f"publisher: worst send lateness vs schedule {max(late.values()) * 1000:.1f} ms; machine CPU busy "
          f"{busy:.0f}% of one core (all processes, {os.cpu_count()} cores); workdir {wd}")
    return {"variant": "python-publisher-fixed-rate" if fixed_rate else "python-publisher", "server": sgl,
            "duration": duration, "results": results, "vs_file": summary,
            "vs_http": same, "streamgw_histogram": hist, "machine_busy_pct": busy}


def run_ffmpeg_variant(
    duration: float, http_interval: float, file_interval: float, mode: str = "gateway"
) -> dict[str, Any]:
    media = ensure_media()
    tags = read_flv(media)
    kf_ts = [t.ts for t in tags if t.keyframe]
    wd = new_workdir("latency-ffmpeg")
    name = "ff"
    with NginxRtmpServer(wd) as ng, StreamgwServer(wd, mode) as sg:
        start = time.monotonic() + 0.3
        # ffmpeg's start-up adds an unknown ~0.2 s: poll finely for 0.8 s from each keyframe's pts.
        bursts = [start + ts / 1000 - 0.005 for ts in kf_ts]
        pollers = {
            "nginx-rtmp (file)": Poller("file", {name: str(ng.playlist_file(name))}, file_interval).start(),
            "streamgw (http)": Poller("http", {name: sg.playlist_http_path(name)}, http_interval,
                                      sg.http_port, bursts, burst_len=0.8).start(),
        }
        time.sleep(max(0.0, start - time.monotonic()))
        tee = "|".join(f"[f=flv:onfail=abort]rtmp://127.0.0.1:{p}/live/{name}" for p in (ng.rtmp_port, sg.rtmp_port))
        cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-t", str(duration), "-i", str(media),
               "-map", "0", "-c", "copy", "-f", "tee", tee]
        log(f"latency: ffmpeg -re for {duration:.0f} s to both servers (tee)...")
        start = time.monotonic()  # the time ffmpeg is started (the bursts assumed +0..1 ms)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
        stopped = time.monotonic()
        if proc.returncode != 0:
            log(f"ffmpeg failed ({proc.returncode}): {proc.stderr[-2000:]}")
        time.sleep(0.3)
        obs = {label: p.stop()[name] for label, p in pollers.items()}
    synthetic = [(ts, start + ts / 1000) for ts in kf_ts if ts / 1000 < duration]
    results = _measure(obs, {k: synthetic for k in obs}, stopped - 0.5)
    print(f"\n== latency: streamgw {mode} vs nginx-rtmp; ffmpeg -re -c copy (tee to both), {duration:.0f} s ==")
    summary = _report("ingest-to-playlist latency (first sighting - (ffmpeg start + segment end pts)),"
                      " includes ffmpeg start-up", results, "nginx-rtmp (file)", "streamgw (http)")
    return {"variant": "ffmpeg-re", "duration": duration, "results": results, "vs_file": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ingest-to-playlist latency, streamgw vs nginx-rtmp")
    ap.add_argument("--duration", type=float, default=32.0,
                    help="seconds of publishing, HTTP polled around keyframes (default 32)")
    ap.add_argument("--http-interval", type=float, default=0.003,
                    help="HTTP poll interval inside a burst, s (default 0.003)")
    ap.add_argument("--file-interval", type=float, default=0.001, help="file poll interval, s (default 0.001)")
    ap.add_argument("--fixed-duration", type=float, default=20.0,
                    help="seconds of the fixed-rate HTTP polling variant; 0 skips it (default 20)")
    ap.add_argument("--fixed-interval", type=float, default=0.005,
                    help="HTTP poll interval of the fixed-rate variant, s (default 0.005)")
    ap.add_argument("--ffmpeg-duration", type=float, default=14.0,
                    help="seconds of the ffmpeg -re variant; 0 skips it (default 14)")
    ap.add_argument("--streamgw-mode", choices=["gateway", "up"], default="gateway",
                    help="'streamgw gateway' (passthrough, default) or 'streamgw up' (+ embedded transcoding)")
    ap.add_argument("--streamgw-rev", metavar="REV",
                    help="benchmark streamgw as of this commit (git archive to benchmarks/out/src-SHA) instead "
                         "of the working tree")
    ap.add_argument("--json", default=str(OUT_DIR / "latency.json"), help="where to write the results")
    args = ap.parse_args(argv)
    use_streamgw_rev(args.streamgw_rev)
    out: dict[str, Any] = {
        "machine": machine_info(),
        "publisher": run_publisher_variant(args.duration, args.http_interval, args.file_interval,
                                           mode=args.streamgw_mode),
    }
    if args.fixed_duration > 0:
        out["fixed"] = run_publisher_variant(args.fixed_duration, args.fixed_interval, args.file_interval,
                                             fixed_rate=True, mode=args.streamgw_mode)
    if args.ffmpeg_duration > 0:
        out["ffmpeg"] = run_ffmpeg_variant(args.ffmpeg_duration, args.http_interval, args.file_interval,
                                           args.streamgw_mode)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
