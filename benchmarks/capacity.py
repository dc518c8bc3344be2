"""How many 720p30 streams one machine transcodes in real time with ``streamgw up`` (issue 9, point 6).

Everything runs on 127.0.0.1 and is started by this script:

* ``streamgw up`` as its own process, exactly as a user runs it: the gateway and its embedded
  orchestrator in one process, the default ladder (P144p30fps16x9, P240p30fps16x9,
  P360p30fps16x9), the default transcode workers (one per CPU) and capacity (2 x workers),
  2 s segments, ``--playlist-window 100``; ``--cpus`` pins it with ``taskset`` (e.g. to measure a
  2-core share of a bigger machine);
* N publishers in one ``benchmarks/publisher.py`` process (its CPU is not the server's), each
  the pre-generated 720p30 testsrc2 file (x264 ultrafast zerolatency, GOP 60, 3 Mbit/s, AAC),
  paced in real time, started ``--stagger`` s apart;
* a poller thread in this process that lists every stream's four media playlists every
  ``--poll`` s and records when each segment of each rendition is first seen.

Per stream and source segment: ``lag`` = the last of its three renditions first seen - the source
segment first seen. A stream **keeps up** when every source segment got all three renditions
(none lost, no gap), the lag never passes the segment deadline (max(8 s, 4 x D) = 8 s) and does
not grow: its least-squares slope over the run stays under 50 ms per s. The sweep goes up one
stream at a time from ``--from`` until a run where some stream does not keep up (``--all``: every
count in ``--streams``). Also shown: busy refusals and failures from ``/api/orchestrators``, the
server's CPU (cores) and the CPU other processes used meanwhile (a busy machine skews the count).

    python benchmarks/capacity.py [--streams 1,2,3,4] [--seconds 40] [--cpus 0,1] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    OUT_DIR,
    PublisherProcess,
    StreamgwServer,
    ensure_media,
    log,
    machine_cpu_seconds,
    new_workdir,
    pct,
    print_table,
    proc_cpu_seconds,
    slope,
    streamgw_revision,
)

LADDER = ("P144p30fps16x9", "P240p30fps16x9", "P360p30fps16x9")  # `streamgw up`'s default
SEGMENT = 2.0
DEADLINE = max(8.0, 4 * SEGMENT)  # streamgw/livepeer/client.py segment_deadlines
MAX_SLOPE = 0.050  # s of lag per s of stream: 2 s of growth over a 40 s run


@dataclass
class Sightings:
    """When each (stream, rendition, seq) was first listed."""

    first: dict[tuple[str, str, int], float] = field(default_factory=dict)
    errors: int = 0


def _seqs(text: str) -> list[int]:
    """Sequence numbers of a streamgw media playlist (segment URIs end in -SEQ.ts)."""
    return [int(line.rsplit("-", 1)[1].split(".")[0]) for line in text.splitlines()
            if line and not line.startswith("#")]


def poll(port: int, names: list[str], interval: float, stop: threading.Event, out: Sightings) -> None:
    """List every stream's playlists every ``interval`` s until ``stop``; record first sightings."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not stop.is_set():
        started = time.monotonic()
        for name in names:
            for rendition in ("source", *LADDER):
                try:
                    conn.request("GET", f"/stream/{name}/{rendition}.m3u8")
                    resp = conn.getresponse()
                    body = resp.read().decode()
                except (OSError, http.client.HTTPException):
                    out.errors += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    continue
                if resp.status != 200:
                    continue
                now = time.monotonic()
                for seq in _seqs(body):
                    out.first.setdefault((name, rendition, seq), now)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    conn.close()


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def run(n: int, args: argparse.Namespace, media: Path) -> dict[str, Any]:
    """One run with ``n`` publishers; returns its per-stream results and totals."""
    workdir = new_workdir(f"capacity{n}")
    server = StreamgwServer(workdir, mode="up", cpus=args.cpus,
                            extra_args=["--playlist-window", "100", "--log-level", "warning"])
    server.start()
    names = [f"cap{i}" for i in range(n)] if n > 1 else ["cap"]
    sightings = Sightings()
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(server.http_port, names, args.poll, stop, sightings), daemon=True)
    try:
        time.sleep(1.0)  # the gateway's first discovery of its embedded orchestrator
        cpu0, machine0, t0 = proc_cpu_seconds(server.pid), machine_cpu_seconds(), time.monotonic()
        pub = PublisherProcess(["--target", f"127.0.0.1:{server.rtmp_port}", "--flv", str(media), "--streams",
                                str(n), "--prefix", "cap", "--duration", str(args.seconds),
                                "--stagger", str(args.stagger)], workdir, f"n{n}")
        pub.wait_started()
        poller.start()
        pub_cpu = 0.0
        try:
            pub_cpu = proc_cpu_seconds(pub.proc.pid)
        except OSError:
            pass
        deadline = time.monotonic() + args.seconds + args.stagger * n + 5
        while pub.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                pub_cpu = proc_cpu_seconds(pub.proc.pid)
            except OSError:
                break
        pub.stop()
        wall = time.monotonic() - t0
        cpu = proc_cpu_seconds(server.pid) - cpu0
        other = machine_cpu_seconds() - machine0 - cpu - pub_cpu
        time.sleep(DEADLINE + 2)  # the last segments' renditions, within their deadline
        stop.set()
        poller.join(10)
        orchestrators = get_json(server.http_port, "/api/orchestrators")
    finally:
        stop.set()
        server.stop()
    streams = []
    for name in names:
        source = sorted(seq for (s, r, seq) in sightings.first if s == name and r == "source")
        lags: list[tuple[float, float]] = []
        missing = 0
        for seq in source:
            seen = [sightings.first.get((name, r, seq)) for r in LADDER]
            if None in seen:
                missing += 1
                continue
            cut = sightings.first[(name, "source", seq)]
            lags.append((cut - t0, max(t for t in seen if t is not None) - cut))
        values = [lag for _, lag in lags]
        s = slope([t for t, _ in lags], values)
        keeps_up = (bool(source) and missing == 0 and max(values, default=DEADLINE) < DEADLINE
                    and not math.isnan(s) and s < MAX_SLOPE)
        streams.append({"name": name, "segments": len(source), "missing": missing, "keeps_up": keeps_up,
                        "lag_p50": pct(values, 50), "lag_p95": pct(values, 95),
                        "lag_max": max(values, default=float("nan")), "slope": s})
    return {
        "n": n, "streams": streams, "keep_up": sum(s["keeps_up"] for s in streams),
        "busy_refusals": sum(o.get("busy_refusals", 0) for o in orchestrators),
        "failures": sum(o["failures"] for o in orchestrators),
        "cores": cpu / wall, "other_cores": other / wall, "poll_errors": sightings.errors,
    }


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"streamgw": streamgw_revision(), "cpus": str(cpus), "cpu": model, "python": sys.version.split()[0]}


def report(rows: list[dict[str, Any]]) -> None:
    table = [["N", "keep up", "segments with all 3", "lag p50 s", "lag p95 s", "lag max s", "slope ms/s",
              "busy refusals", "failures", "server cores", "per stream", "other cores"]]
    for r in rows:
        ss = r["streams"]
        table.append([
            str(r["n"]), f"{r['keep_up']}/{r['n']}",
            f"{sum(s['segments'] - s['missing'] for s in ss)}/{sum(s['segments'] for s in ss)}",
            f"{max(s['lag_p50'] for s in ss):.2f}", f"{max(s['lag_p95'] for s in ss):.2f}",
            f"{max(s['lag_max'] for s in ss):.2f}", f"{1000 * max(s['slope'] for s in ss):.0f}",
            str(r["busy_refusals"]), str(r["failures"]), f"{r['cores']:.2f}", f"{r['cores'] / r['n']:.2f}",
            f"{r['other_cores']:.2f}",
        ])
    print_table(table)
    kept = [r["n"] for r in rows if r["keep_up"] == r["n"]]
    print(f"\nmost streams that all kept every rendition in real time: {max(kept) if kept else 0}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,2,3,4,5,6", help="publisher counts to try, in order")
    ap.add_argument("--seconds", type=float, default=40.0, help="seconds each publisher sends")
    ap.add_argument("--stagger", type=float, default=0.5, help="seconds between publisher starts")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between playlist listings")
    ap.add_argument("--cpus", default=None, help="taskset CPU list for streamgw up (default: all)")
    ap.add_argument("--all", action="store_true", help="run every count, not only up to the first miss")
    ap.add_argument("--json", type=Path, default=OUT_DIR / "capacity.json")
    args = ap.parse_args()
    media = ensure_media()
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + f", load {os.getloadavg()}", flush=True)
    rows = []
    for n in (int(x) for x in args.streams.split(",")):
        log(f"{n} publisher(s), {args.seconds:.0f} s each...")
        row = run(n, args, media)
        rows.append(row)
        log(f"  {row['keep_up']}/{n} kept up; server {row['cores']:.2f} cores, others {row['other_cores']:.2f}")
        if row["keep_up"] < n and not args.all:
            break
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                     "runs": rows}, indent=1))
    report(rows)
    print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
