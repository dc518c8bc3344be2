"""The trickle relay's own latency and CPU per stream, against a bare TCP relay in the same run.

N streams, each published at ~3.1 Mbit/s as one 390 KB segment per second written in 30 pieces
(one per 33 ms, as an encoder writes frames) and read by one subscriber. Each piece starts with
its send time, so the subscriber measures piece latency (sent → read). The relay runs in its own
process, whose CPU is read from /proc over the run:

* trickle: streamgw's ``TrickleServer`` under uvicorn (HTTP/1.1), streamgw's publisher and
  subscriber (httpx), one POST and one GET per segment, the next preconnected;
* baseline: an asyncio TCP relay copying one socket to another (what any relay must do at least).

    python benchmarks/trickle.py [--streams 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PIECE = 13_000  # bytes; 30 per segment: 390 KB/s per stream
PIECES = 30
_STAMP = struct.Struct(">Q")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _piece() -> bytes:
    return _STAMP.pack(time.monotonic_ns()) + bytes(PIECE - _STAMP.size)


def _latencies(buffer: bytearray, now_ns: int, out: list[float]) -> None:
    while len(buffer) >= PIECE:
        sent = _STAMP.unpack_from(buffer)[0]
        out.append((now_ns - sent) / 1e6)
        del buffer[:PIECE]


# --- the relay processes ---


def serve_trickle(port: int, streams: int) -> None:
    import uvicorn

    from streamgw.trickle.channels import TrickleChannels
    from streamgw.trickle.server import TrickleServer

    channels = TrickleChannels()
    for i in range(streams):
        channels.create(f"s{i}", "video/MP2T")
    uvicorn.run(TrickleServer(channels, "/"), host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def serve_tcp(port: int) -> None:
    async def main() -> None:
        waiting: dict[bytes, asyncio.StreamWriter] = {}
        pending: dict[bytes, asyncio.Future[asyncio.StreamWriter]] = {}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            words = (await reader.readline()).split()  # b"SUB name\n" or b"PUB name\n"
            if len(words) != 2:  # the readiness probe
                writer.close()
                return
            role, name = words
            if role == b"SUB":
                waiting[name] = writer
                pending.setdefault(name, asyncio.get_running_loop().create_future()).set_result(writer)
                return
            target = await pending.setdefault(name, asyncio.get_running_loop().create_future())
            while data := await reader.read(65536):
                target.write(data)
                await target.drain()
            target.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- the clients, in this process ---


async def _pace(write, seconds: float) -> None:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    for i in range(int(seconds * PIECES)):
        await asyncio.sleep(max(0.0, start + i / PIECES - time.monotonic()))
        await write(i, _piece())


async def run_trickle(port: int, streams: int, seconds: float) -> list[float]:
    import httpx

    from streamgw.errors import TrickleClosed
    from streamgw.trickle.client import TricklePublisher, TrickleSubscriber

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=4 * streams + 8)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/", timeout=30, limits=limits) as client:
        async def stream(i: int) -> None:
            publisher = TricklePublisher(client, f"s{i}")
            subscriber = TrickleSubscriber(client, f"s{i}", start=0)
            segment = None

            async def write(n: int, piece: bytes) -> None:
                nonlocal segment
                if n % PIECES == 0:
                    if segment is not None:
                        await segment.close()
                    segment = publisher.segment()
                segment.write(piece)

            async def read() -> None:
                try:
                    while True:
                        got = await subscriber.next()
                        buffer = bytearray()
                        async for chunk in got.chunks():
                            buffer += chunk
                            _latencies(buffer, time.monotonic_ns(), latencies)
                except TrickleClosed:
                    pass

            reader = asyncio.create_task(read())
            await _pace(write, seconds)
            if segment is not None:
                await segment.close()
            await publisher.aclose()
            await asyncio.wait_for(reader, 10)
            await subscriber.aclose()

        await asyncio.gather(*(stream(i) for i in range(streams)))
    return latencies


async def run_tcp(port: int, streams: int, seconds: float) -> list[float]:
    latencies: list[float] = []

    async def stream(i: int) -> None:
        sub_r, sub_w = await asyncio.open_connection("127.0.0.1", port)
        sub_w.write(b"SUB s%d\n" % i)
        await sub_w.drain()
        await asyncio.sleep(0.05)
        _, pub_w = await asyncio.open_connection("127.0.0.1", port)
        pub_w.write(b"PUB s%d\n" % i)

        async def write(n: int, piece: bytes) -> None:
            pub_w.write(piece)
            await pub_w.drain()

        async def read() -> None:
            buffer = bytearray()
            while data := await sub_r.read(65536):
                buffer += data
                _latencies(buffer, time.monotonic_ns(), latencies)

        reader = asyncio.create_task(read())
        await _pace(write, seconds)
        pub_w.close()
        await asyncio.wait_for(reader, 10)

    await asyncio.gather(*(stream(i) for i in range(streams)))
    return latencies


def measure(kind: str, streams: int, seconds: float) -> tuple[float, list[float]]:
    port = _free_port()
    args = ["--serve-trickle", str(port), str(streams)] if kind == "trickle" else ["--serve-tcp", str(port)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        c0, t0 = _cpu(proc.pid), time.monotonic()
        runner = run_trickle if kind == "trickle" else run_tcp
        latencies = asyncio.run(runner(port, streams, seconds))
        cpu = (_cpu(proc.pid) - c0) / (time.monotonic() - t0) * 100
    finally:
        proc.kill()
        proc.wait()
    return cpu, latencies


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-trickle":
        serve_trickle(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-tcp":
        serve_tcp(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    print(f"trickle relay: {args.streams} streams x 390 KB/s (30 pieces of 13 KB per second), {args.seconds:.0f} s")
    print(f"{'relay':10s} {'pieces':>7s} {'CPU % core':>10s} {'% per stream':>12s} {'p50 ms':>7s} {'p95 ms':>7s} "
          f"{'max ms':>7s}")
    results = {}
    for kind in ("baseline", "trickle"):
        cpu, lat = measure("tcp" if kind == "baseline" else "trickle", args.streams, args.seconds)
        lat.sort()
        results[kind] = (cpu, lat)
        print(f"{kind:10s} {len(lat):7d} {cpu:10.1f} {cpu / args.streams:12.2f} {statistics.median(lat):7.2f} "
              f"{lat[int(len(lat) * 0.95) - 1]:7.2f} {lat[-1]:7.2f}")
    (bc, bl), (tc, tl) = results["baseline"], results["trickle"]
    added = statistics.median(tl) - statistics.median(bl)
    print(f"trickle / baseline: CPU {tc / max(bc, 1e-9):.1f}x, p50 latency +{added:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
