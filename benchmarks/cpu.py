"""CPU per 720p30 passthrough publisher with many publishers: streamgw vs nginx-rtmp.

For each publisher count N and each server in turn (never both at once), the benchmark starts the
server, N publishers in ONE separate process (``benchmarks.publisher``: the 720p30 + AAC test FLV,
~3.1 Mbit/s, in real time, stream i starting i*2/N s after stream 0 so keyframes are spread as with
independent publishers) and one HTTP poller process that GETs every stream's media playlist every
``--poll-interval`` seconds (like a player per stream; nginx serves its HLS dir over its own HTTP
server, so both servers pay for playlist requests). After ``--warmup`` seconds it reads the
server's CPU time (utime+stime of the process, all threads, /proc/PID/stat) over ``--window``
seconds.

Then the floor, directly: streamgw alone, pinned to one CPU (``taskset -c 1``), with
``--floor-publishers`` (20) publishers: it passes when every segment is on time.

Also checked, per stream: every media sequence number from 0 up appears (no missed seqs) and
every segment is listed at most ``--late-limit`` (1 s) after the keyframe that closes it was sent
(resolution: the poll interval plus one request).

    python benchmarks/cpu.py [--publishers 10 20] [--window 25] [--floor-publishers 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    OUT_DIR,
    NginxRtmpServer,
    Poller,
    PublisherProcess,
    Server,
    StreamgwServer,
    ensure_media,
    log,
    machine_cpu_seconds,
    machine_info,
    new_workdir,
    pct,
    print_table,
    proc_cpu_seconds,
    proc_rss_mb,
    segment_latencies,
    use_streamgw_rev,
)


def run_one(
    server: Server, n: int, window: float, warmup: float, poll_interval: float, late_limit: float,
    workdir: Path, media: Path,
) -> dict[str, Any]:
    names = [f"cpu{i}" for i in range(n)] if n > 1 else ["cpu"]  # as benchmarks.publisher names them
    with server:
        poller = Poller("http", {nm: server.playlist_http_path(nm) for nm in names}, poll_interval,
                        server.http_port).start()
        pub = PublisherProcess(
            ["--flv", str(media), "--target", f"127.0.0.1:{server.rtmp_port}", "--streams", str(n),
             "--prefix", "cpu", "--stagger", f"{2.0 / n:.4f}", "--duration", str(warmup + window + 1)],
            workdir, f"{server.label}-{n}",
        )
        t0 = pub.wait_started()
        time.sleep(max(0.0, t0 + warmup - time.monotonic()))
        c0 = proc_cpu_seconds(server.pid)
        p0 = proc_cpu_seconds(pub.proc.pid)
        q0 = proc_cpu_seconds(poller.pid)
        m0 = machine_cpu_seconds()
        w0 = time.monotonic()
        time.sleep(window)
        c1 = proc_cpu_seconds(server.pid)
        p1 = proc_cpu_seconds(pub.proc.pid)
        q1 = proc_cpu_seconds(poller.pid)
        m1 = machine_cpu_seconds()
        w1 = time.monotonic()
        rss = proc_rss_mb(server.pid)
        pub.proc.wait(60)
        published = pub.stop()
        # Keep watching long enough for a segment closed by the last keyframe to be late.
        time.sleep(late_limit + 2 * poll_interval)
        observed = poller.stop()
    wall = w1 - w0
    cpu = (c1 - c0) / wall * 100  # % of one core
    sent = published[f"127.0.0.1:{server.rtmp_port}"]
    lateness: list[float] = []
    missed: dict[str, list[int]] = {}
    late: list[tuple[str, int, float]] = []
    expected_total = 0
    seen_total = 0
    errors = [f"{nm}: {d['error']}" for nm, d in sent.items() if d["error"]]
    for nm in names:
        obs = observed[nm]
        kf = sent[nm]["keyframes"]
        # Segment k is closed by keyframe k+1; every keyframe sent was followed by more media (the
        # publisher stops between frames), so each one must close a segment within the limit.
        expected = max(0, len(kf) - 1)
        lat, _unmatched = segment_latencies(obs, kf)
        lat = [(sq, v) for sq, v in lat if sq < expected]
        lateness.extend(v for _, v in lat)
        late.extend((nm, sq, v) for sq, v in lat if v > late_limit)
        gaps = sorted(set(range(expected)) - set(obs.first_seen))
        if gaps:
            missed[nm] = gaps
        expected_total += expected
        seen_total += expected - len(gaps)
    late_max = max(d["late_max"] for d in sent.values())
    rtts = [r for o in observed.values() for r in o.rtts]
    return {
        "server": server.label,
        "publishers": n,
        "window_s": wall,
        "cpu_pct": cpu,
        "cpu_pct_per_stream": cpu / n,
        "streams_per_core": 100 / (cpu / n) if cpu > 0 else float("inf"),
        "rss_mb": rss,
        "publisher_cpu_pct": (p1 - p0) / wall * 100,
        "poller_cpu_pct": (q1 - q0) / wall * 100,
        # CPU used by everything else on the machine during the window (other work sharing it).
        "other_cpu_pct": ((m1 - m0) - (c1 - c0) - (p1 - p0) - (q1 - q0)) / wall * 100,
        "publisher_worst_lateness_ms": late_max * 1000,
        "publisher_errors": errors,
        "segments_expected": expected_total,
        "segments_seen": seen_total,
        "missed": missed,
        "late_over_limit": late[:20],
        "late_count": len(late),
        "lateness_ms": {"p50": pct(lateness, 50) * 1000, "p95": pct(lateness, 95) * 1000,
                        "max": max(lateness, default=float("nan")) * 1000},
        "poll_rtt_p50_ms": pct(rtts, 50) * 1000,
        "poll_errors": sum(o.errors for o in observed.values()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="CPU per 720p30 passthrough publisher, streamgw vs nginx-rtmp")
    ap.add_argument("--publishers", type=int, nargs="+", default=[10], help="publisher counts (default 10)")
    ap.add_argument("--window", type=float, default=25.0, help="CPU measurement window, s (default 25)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of publishing before it (default 5)")
    ap.add_argument("--poll-interval", type=float, default=0.25, help="playlist poll per stream, s")
    ap.add_argument("--late-limit", type=float, default=1.0, help="a segment later than this is late, s")
    ap.add_argument("--floor-publishers", type=int, default=20,
                    help="then streamgw alone, pinned to one CPU, with this many publishers; 0 skips (default 20)")
    ap.add_argument("--floor-cpu", default="1", help="the CPU for that run (taskset -c), default 1")
    ap.add_argument("--servers", nargs="+", default=["nginx-rtmp", "streamgw"],
                    choices=["nginx-rtmp", "streamgw"])
    ap.add_argument("--streamgw-mode", choices=["gateway", "up"], default="gateway",
                    help="'streamgw gateway' (passthrough, default) or 'streamgw up' (+ embedded transcoding)")
    ap.add_argument("--streamgw-rev", metavar="REV",
                    help="benchmark streamgw as of this commit (git archive to benchmarks/out/src-SHA) instead "
                         "of the working tree")
    ap.add_argument("--json", default=str(OUT_DIR / "cpu.json"), help="where to write the results")
    args = ap.parse_args(argv)
    use_streamgw_rev(args.streamgw_rev)
    media = ensure_media()
    results: list[dict[str, Any]] = []
    for n in args.publishers:
        for label in args.servers:
            wd = new_workdir(f"cpu-{label}-{n}")
            server: Server = NginxRtmpServer(wd) if label == "nginx-rtmp" else StreamgwServer(wd, args.streamgw_mode)
            log(f"cpu: {label}, {n} publishers, warmup {args.warmup:.0f} s + window {args.window:.0f} s...")
            r = run_one(server, n, args.window, args.warmup, args.poll_interval, args.late_limit, wd, media)
            r["workdir"] = str(wd)
            results.append(r)
    floor: dict[str, Any] | None = None
    if args.floor_publishers > 0 and "streamgw" in args.servers:
        # The floor, checked directly: streamgw confined to one CPU with that many publishers.
        n = args.floor_publishers
        wd = new_workdir(f"cpu-floor-{n}")
        log(f"cpu: streamgw on CPU {args.floor_cpu} only (taskset), {n} publishers...")
        floor = run_one(StreamgwServer(wd, args.streamgw_mode, cpus=args.floor_cpu), n, args.window, args.warmup,
                        args.poll_interval, args.late_limit, wd, media)
        floor["server"] = f"streamgw@cpu{args.floor_cpu}"
        floor["workdir"] = str(wd)
    print(f"\n== cpu: N x 720p30 passthrough publishers (~3.1 Mbit/s each), window {args.window:.0f} s, "
          f"playlist poll every {args.poll_interval * 1000:.0f} ms per stream; streamgw {args.streamgw_mode} ==")
    shown = results + ([floor] if floor else [])
    rows = [["server", "N", "CPU % core", "% per stream", "streams/core", "RSS MB", "segs seen/exp",
             "missed", "late>1s", "lateness p50/p95/max ms", "pub CPU %", "pub late ms", "other CPU %"]]
    for r in shown:
        lt = r["lateness_ms"]
        rows.append([
            r["server"], str(r["publishers"]), f"{r['cpu_pct']:.1f}", f"{r['cpu_pct_per_stream']:.2f}",
            f"{r['streams_per_core']:.0f}", f"{r['rss_mb']:.0f}", f"{r['segments_seen']}/{r['segments_expected']}",
            str(sum(len(v) for v in r["missed"].values())), str(r["late_count"]),
            f"{lt['p50']:.0f}/{lt['p95']:.0f}/{lt['max']:.0f}", f"{r['publisher_cpu_pct']:.0f}",
            f"{r['publisher_worst_lateness_ms']:.0f}", f"{r['other_cpu_pct']:.0f}",
        ])
    print_table(rows)
    summary = []
    for n in args.publishers:
        by = {r["server"]: r for r in results if r["publishers"] == n}
        entry: dict[str, Any] = {"publishers": n}
        if "nginx-rtmp" in by and "streamgw" in by:
            ng, sg = by["nginx-rtmp"], by["streamgw"]
            ratio = sg["cpu_pct_per_stream"] / ng["cpu_pct_per_stream"] if ng["cpu_pct_per_stream"] else float("inf")
            entry.update(ratio=ratio, within_2x=ratio <= 2.0)
            print(f"N={n}: CPU per stream streamgw/nginx-rtmp = {ratio:.1f}x "
                  f"({sg['cpu_pct_per_stream']:.2f}% vs {ng['cpu_pct_per_stream']:.2f}% of a core); "
                  f"goal <= 2x: {'PASS' if ratio <= 2.0 else 'FAIL'}")
        if "streamgw" in by:
            sg = by["streamgw"]
            on_time = not sg["missed"] and sg["late_count"] == 0 and sg["segments_seen"] == sg["segments_expected"]
            floor_ok = sg["streams_per_core"] >= 20 and on_time
            entry.update(streamgw_on_time=on_time, floor_20_per_core=floor_ok)
            print(f"N={n}: streamgw {sg['streams_per_core']:.0f} streams/core, every segment on time "
                  f"(<= {args.late_limit:g} s, no missed seqs): {'yes' if on_time else 'NO'}; floor 20 streams/core "
                  f"(extrapolated from CPU) with every segment on time: {'PASS' if floor_ok else 'FAIL'}")
        summary.append(entry)
    if floor is not None:
        on_time = not floor["missed"] and floor["late_count"] == 0 and \
            floor["segments_seen"] == floor["segments_expected"]
        ok = on_time
        print(f"floor: {floor['publishers']} publishers on one CPU (streamgw pinned to CPU {args.floor_cpu}): "
              f"{floor['cpu_pct']:.0f}% of that core, segments {floor['segments_seen']}/{floor['segments_expected']}, "
              f"late>{args.late_limit:g}s {floor['late_count']}, lateness max {floor['lateness_ms']['max']:.0f} ms "
              f"-> floor 20 streams/core with every segment on time: {'PASS' if ok else 'FAIL'}")
        summary.append({"floor_publishers": floor["publishers"], "floor_cpu_pct": floor["cpu_pct"],
                        "floor_on_time": on_time, "floor_pass": ok})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine_info(), "results": results, "floor": floor,
                                           "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
