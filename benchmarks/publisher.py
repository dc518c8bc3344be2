"""A minimal RTMP publisher for the benchmarks: sends the tags of an FLV file, paced in real time.

It speaks the same client side of RTMP as ffmpeg (simple handshake, connect, releaseStream,
FCPublish, createStream, publish, ``@setDataFrame`` + media messages) and reuses streamgw's
:class:`~streamgw.ingest.rtmp.chunk.ChunkWriter`/:class:`~streamgw.ingest.rtmp.chunk.ChunkReader`
and :mod:`~streamgw.ingest.rtmp.amf0`. Every stream of every target is paced on one clock: a tag
with FLV timestamp ``ts`` ms is sent at ``t0 + stagger_i + ts/1000``. For each video keyframe it
records the monotonic time the whole message had been handed to the kernel (after ``drain``):
``CLOCK_MONOTONIC`` is system-wide, so other processes can compare their own times against it.

Messages are chunked once and the bytes shared by every stream (timestamps are relative to each
stream's start, so the bytes are identical), which keeps the publisher cheap.

    python -m benchmarks.publisher --target 127.0.0.1:1935 --streams 10 --duration 30 --out pub.json

Prints ``STARTED <t0>`` once every connection is publishing; stops after ``--duration`` seconds
or on SIGINT/SIGTERM, unpublishes, and writes the keyframe send times as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if os.environ.get("STREAMGW_BENCH_SRC"):  # a streamgw exported from a commit (common.use_streamgw_rev)
    sys.path.insert(0, os.environ["STREAMGW_BENCH_SRC"])

from streamgw.ingest.rtmp import amf0, chunk  # noqa: E402

CHUNK_SIZE = 4096
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_DATA = 4  # @setDataFrame and audio, as librtmp/ffmpeg do
CSID_VIDEO = 6
CSID_STREAM_CMD = 8


@dataclass(frozen=True, slots=True)
class FlvTag:
    type: int  # 8 audio, 9 video, 18 script
    ts: int  # ms
    payload: bytes
    keyframe: bool
    config: bool  # AVC sequence header / AAC AudioSpecificConfig


def read_flv(path: str | Path) -> list[FlvTag]:
    """Every tag of an FLV file, in file order."""
    data = Path(path).read_bytes()
    if data[:3] != b"FLV":
        raise ValueError(f"{path} is not FLV")
    pos = struct.unpack(">I", data[5:9])[0] + 4
    tags: list[FlvTag] = []
    while pos + 11 <= len(data):
        ttype = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        payload = data[pos + 11 : pos + 11 + size]
        if len(payload) < size:
            break
        pos += 11 + size + 4
        keyframe = ttype == 9 and (payload[0] >> 4) == 1
        config = (ttype == 9 and (payload[0] & 0x0F) == 7 and len(payload) > 1 and payload[1] == 0) or (
            ttype == 8 and (payload[0] >> 4) == 10 and len(payload) > 1 and payload[1] == 0
        )
        tags.append(FlvTag(ttype, ts, payload, keyframe and not config, config))
    return tags


class Media:
    """The tags to send, looped with a timestamp offset, pre-chunked and shared by all streams."""

    def __init__(self, tags: list[FlvTag]) -> None:
        self.head = [t for t in tags if t.type == 18 or t.config]
        self.body = [t for t in tags if not (t.type == 18 or t.config)]
        vts = [t.ts for t in self.body if t.type == 9]
        step = round((vts[-1] - vts[0]) / max(1, len(vts) - 1))
        self.period = vts[-1] - vts[0] + step  # loop length, ms (keeps the GOP cadence across loops)
        self._cache: dict[tuple[int, int], list[tuple[int, bytes, bool]]] = {}
        self._writer = chunk.ChunkWriter(CHUNK_SIZE)

    def _encode(self, t: FlvTag, ts: int, sid: int) -> bytes:
        if t.type == 18:
            body = amf0.encode("@setDataFrame") + t.payload
            return self._writer.encode(CSID_DATA, chunk.DATA_AMF0, sid, ts, body)
        csid = CSID_VIDEO if t.type == 9 else CSID_DATA
        return self._writer.encode(csid, t.type, sid, ts, t.payload)

    def header(self, sid: int) -> list[bytes]:
        return [self._encode(t, 0, sid) for t in self.head]

    def loop(self, sid: int, n: int) -> list[tuple[int, bytes, bool]]:
        """(ts ms, chunked message, is keyframe) of loop ``n``, cached (the last four kept)."""
        key = (sid, n)
        if key not in self._cache:
            off = n * self.period
            self._cache[key] = [(t.ts + off, self._encode(t, t.ts + off, sid), t.keyframe) for t in self.body]
            for old in [k for k in self._cache if k[0] == sid and k[1] < n - 3]:
                del self._cache[old]
        return self._cache[key]


class RtmpPublisher:
    """One publishing RTMP connection."""

    def __init__(self, host: str, port: int, app: str, name: str) -> None:
        self.host, self.port, self.app, self.name = host, port, app, name
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.chunks = chunk.ChunkReader()
        self.out = chunk.ChunkWriter(chunk.DEFAULT_CHUNK_SIZE)
        self.stream_id = 0
        self.keyframes: list[tuple[int, float]] = []  # (ts ms, monotonic send time)
        self.bytes_sent = 0
        self.late_max = 0.0  # worst lateness of a send vs its schedule, s
        self.error: str | None = None
        self._pending: list[chunk.Message] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def _recv(self) -> chunk.Message:
        assert self.reader is not None
        while not self._pending:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self._pending.extend(self.chunks.feed(data))
        return self._pending.pop(0)

    async def _expect(self, pred: Any, what: str, timeout: float = 10.0) -> list[amf0.Value]:
        async def wait() -> list[amf0.Value]:
            while True:
                msg = await self._recv()
                if msg.type_id == chunk.COMMAND_AMF0:
                    values = amf0.decode_all(msg.payload)
                    if values and values[0] == "_error":
                        raise ConnectionError(f"{what}: server answered {values}")
                    if values and values[0] == "onStatus" and len(values) > 3 and isinstance(values[3], dict):
                        if values[3].get("level") == "error":
                            raise ConnectionError(f"{what}: {values[3]}")
                    if pred(values):
                        return values
        return await asyncio.wait_for(wait(), timeout)

    def _send(self, csid: int, type_id: int, sid: int, payload: bytes) -> None:
        assert self.writer is not None
        self.writer.write(self.out.encode(csid, type_id, sid, 0, payload))

    def _cmd(self, *values: amf0.Value, sid: int = 0) -> None:
        self._send(CSID_STREAM_CMD if sid else CSID_COMMAND, chunk.COMMAND_AMF0, sid, amf0.encode(*values))

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c1 = struct.pack(">II", 0, 0) + os.urandom(1528)
        self.writer.write(b"\x03" + c1)
        s0s1s2 = await asyncio.wait_for(self.reader.readexactly(1 + 1536 * 2), 10)
        self.writer.write(s0s1s2[1 : 1 + 1536])  # C2 echoes S1
        self._send(CSID_CONTROL, chunk.SET_CHUNK_SIZE, 0, struct.pack(">I", CHUNK_SIZE))
        self.out.chunk_size = CHUNK_SIZE
        tc_url = f"rtmp://{self.host}:{self.port}/{self.app}"
        self._cmd("connect", 1.0, {"app": self.app, "type": "nonprivate",
                                   "flashVer": "FMLE/3.0 (compatible; streamgw-bench)", "tcUrl": tc_url})
        await self._expect(lambda v: v[0] == "_result" and v[1] == 1.0, "connect")
        self._cmd("releaseStream", 2.0, None, self.name)
        self._cmd("FCPublish", 3.0, None, self.name)
        self._cmd("createStream", 4.0, None)
        res = await self._expect(lambda v: v[0] == "_result" and v[1] == 4.0, "createStream")
        self.stream_id = int(res[3]) if len(res) > 3 and isinstance(res[3], float) else 1
        self._cmd("publish", 5.0, None, self.name, "live", sid=self.stream_id)
        await self._expect(
            lambda v: v[0] == "onStatus" and len(v) > 3 and isinstance(v[3], dict)
            and v[3].get("code") == "NetStream.Publish.Start", "publish",
        )
        self._drain_task = asyncio.create_task(self._drain_incoming())

    async def _drain_incoming(self) -> None:
        """Read (and ignore) what the server sends while publishing: acks, pings."""
        assert self.reader is not None
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    self.error = self.error or "server closed the connection"
                    return
                self.chunks.feed(data)
        except (OSError, asyncio.CancelledError):
            return
        except Exception as exc:  # noqa: BLE001
            self.error = self.error or f"{type(exc).__name__}: {exc}"

    async def run(self, media: Media, t0: float, stop_at: float) -> None:
        assert self.writer is not None
        w = self.writer
        for data in media.header(self.stream_id):
            w.write(data)
        await w.drain()
        n = 0
        try:
            while True:
                for ts, data, key in media.loop(self.stream_id, n):
                    due = t0 + ts / 1000
                    if due >= stop_at:
                        return
                    now = time.monotonic()
                    if due > now:
                        await asyncio.sleep(due - now)
                    elif now - due > self.late_max:
                        self.late_max = now - due
                    w.write(data)
                    await w.drain()
                    self.bytes_sent += len(data)
                    if key:
                        self.keyframes.append((ts, time.monotonic()))
                    if self.error:
                        return
                n += 1
        except (OSError, asyncio.CancelledError) as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.error = self.error or f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self.writer is None:
            return
        try:
            self._cmd("FCUnpublish", 6.0, None, self.name)
            self._cmd("deleteStream", 7.0, None, float(self.stream_id))
            await asyncio.wait_for(self.writer.drain(), 2)
        except (OSError, asyncio.TimeoutError):
            pass
        if self._drain_task is not None:
            self._drain_task.cancel()
        self.writer.close()


async def publish(
    targets: list[tuple[str, int]], names: list[str], media: Media, duration: float,
    stagger: float, start_delay: float = 0.5,
) -> dict[str, dict[str, Any]]:
    pubs: list[tuple[int, RtmpPublisher]] = []
    for i, name in enumerate(names):
        for host, port in targets:
            pubs.append((i, RtmpPublisher(host, port, "live", name)))
    await asyncio.gather(*(p.connect() for _, p in pubs))
    # Chunk the loops this run needs now, not while pacing (it takes tens of ms per loop).
    loops = int((duration + stagger * len(names)) * 1000 // media.period) + 1 if duration > 0 else 1
    for sid in {p.stream_id for _, p in pubs}:
        for n in range(min(loops, 4)):
            media.loop(sid, n)
    t0 = time.monotonic() + start_delay
    stop_at = t0 + duration if duration > 0 else float("inf")
    print(f"STARTED {t0:.6f}", flush=True)
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(p.run(media, t0 + i * stagger, stop_at)) for i, p in pubs]
    done = asyncio.gather(*tasks)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.cancel)
    try:
        await done
    except asyncio.CancelledError:
        pass
    await asyncio.gather(*(p.close() for _, p in pubs), return_exceptions=True)
    result: dict[str, dict[str, Any]] = {}
    for i, p in pubs:
        result.setdefault(f"{p.host}:{p.port}", {})[p.name] = {
            "t0": t0 + i * stagger,
            "keyframes": p.keyframes,
            "bytes_sent": p.bytes_sent,
            "late_max": p.late_max,
            "error": p.error,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", action="append", required=True, help="HOST:PORT (repeat to publish to several)")
    ap.add_argument("--flv", help="FLV file to send (default: the generated 720p30 test file)")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--duration", type=float, default=0, help="seconds; 0: until SIGINT")
    ap.add_argument("--stagger", type=float, default=0.0, help="start offset between streams, s")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.flv is None:
        from benchmarks.common import ensure_media

        args.flv = str(ensure_media())
    media = Media(read_flv(args.flv))
    targets = []
    for t in args.target:
        host, _, port = t.rpartition(":")
        targets.append((host, int(port)))
    names = [f"{args.prefix}{i}" for i in range(args.streams)] if args.streams > 1 else [args.prefix]
    result = asyncio.run(publish(targets, names, media, args.duration, args.stagger))
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
