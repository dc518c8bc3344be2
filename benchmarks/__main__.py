"""``python -m benchmarks``: every benchmark, streamgw vs nginx-rtmp, then one summary (~4-5 min).

    python -m benchmarks            # latency (publisher + fixed-rate + ffmpeg), cpu at 10 and 20
    python -m benchmarks --quick    # shorter runs (~2 min), for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cpu, latency  # noqa: E402
from benchmarks.common import OUT_DIR, ensure_media, machine_info, use_streamgw_rev  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run every streamgw vs nginx-rtmp benchmark")
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    ap.add_argument("--publishers", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--streamgw-mode", choices=["gateway", "up"], default="gateway",
                    help="'streamgw gateway' (passthrough, default) or 'streamgw up' (+ embedded transcoding)")
    ap.add_argument("--streamgw-rev", metavar="REV",
                    help="benchmark streamgw as of this commit instead of the working tree")
    args = ap.parse_args(argv)
    use_streamgw_rev(args.streamgw_rev)
    t = time.monotonic()
    info = machine_info()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ensure_media()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    lat_json, cpu_json = OUT_DIR / "latency.json", OUT_DIR / "cpu.json"
    mode = ["--streamgw-mode", args.streamgw_mode]
    if args.streamgw_rev:
        mode += ["--streamgw-rev", args.streamgw_rev]
    if args.quick:
        latency.main(["--duration", "14", "--fixed-duration", "10", "--ffmpeg-duration", "10", *mode,
                      "--json", str(lat_json)])
        cpu.main(["--publishers", *map(str, args.publishers), "--window", "10", "--warmup", "4", *mode,
                  "--json", str(cpu_json)])
    else:
        latency.main([*mode, "--json", str(lat_json)])
        cpu.main(["--publishers", *map(str, args.publishers), *mode, "--json", str(cpu_json)])
    lat = json.loads(lat_json.read_text())
    cp = json.loads(cpu_json.read_text())

    print("\n" + "=" * 100)
    print(f"SUMMARY (streamgw vs nginx-rtmp), {time.monotonic() - t:.0f} s, "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for key, title in (("publisher", "latency, Python publisher, HTTP polled around keyframes"),
                       ("fixed", "latency, Python publisher, HTTP polled at a fixed rate"),
                       ("ffmpeg", "latency, ffmpeg -re")):
        if key not in lat:
            continue
        v = lat[key]
        res = v["results"]
        sg_label = next(k for k in res if k.startswith("streamgw"))
        sg, ng = res[sg_label]["summary"], res["nginx-rtmp (file)"]["summary"]
        d = v["vs_file"]["diff_ms"]
        print(f"  {title}: nginx-rtmp p50/p95/max {ng['p50']:.1f}/{ng['p95']:.1f}/{ng['max']:.1f} ms, "
              f"streamgw {sg['p50']:.1f}/{sg['p95']:.1f}/{sg['max']:.1f} ms; "
              f"difference p50 {d['p50']:+.1f} ms, p95 {d['p95']:+.1f} ms -> goal (<= 30 ms): "
              f"{'PASS' if v['vs_file']['within_30ms'] else 'FAIL'}")
    by = {(r["server"], r["publishers"]): r for r in cp["results"]}
    for s in cp["summary"]:
        if "floor_publishers" in s:
            fl = cp["floor"]
            print(f"  cpu floor: streamgw pinned to one CPU with {fl['publishers']} publishers: "
                  f"{fl['cpu_pct']:.0f}% of it, segments {fl['segments_seen']}/{fl['segments_expected']}, "
                  f"late>1s {fl['late_count']}, "
                  f"lateness max {fl['lateness_ms']['max']:.0f} ms -> floor 20/core on time: "
                  f"{'PASS' if s['floor_pass'] else 'FAIL'}")
            continue
        n = s["publishers"]
        ng, sg = by.get(("nginx-rtmp", n)), by.get(("streamgw", n))
        if ng and sg:
            print(f"  cpu, {n} x 720p30: nginx-rtmp {ng['cpu_pct_per_stream']:.2f}% of a core per stream, "
                  f"streamgw {sg['cpu_pct_per_stream']:.2f}% ({sg['streams_per_core']:.0f} streams/core); "
                  f"ratio {s['ratio']:.1f}x -> goal (<= 2x): {'PASS' if s['within_2x'] else 'FAIL'}; "
                  f"streamgw segments {sg['segments_seen']}/{sg['segments_expected']}, "
                  f"late>1s {sg['late_count']} -> extrapolated floor 20/core on time: "
                  f"{'PASS' if s['floor_20_per_core'] else 'FAIL'}")
    print(f"  raw results: {lat_json}, {cpu_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
