"""The RTMP publishing server: one asyncio task per connection, many publishers on one port.

The session layer is the sans-I/O :class:`~streamgw.ingest.rtmp.chunk.ChunkReader` plus the
AMF0 command exchange that OBS and ffmpeg perform (connect, releaseStream, FCPublish,
createStream, publish, FCUnpublish, deleteStream). Media leaves as FLV bytes through a
:class:`PublishSink` that the gateway provides; media parsing stays in FFmpeg.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from streamgw.errors import ProtocolError, RtmpError, StreamError, StreamgwError
from streamgw.ingest.rtmp import amf0, chunk, flv
from streamgw.ingest.rtmp.handshake import HANDSHAKE_SIZE, server_s0_s1_s2

log = logging.getLogger(__name__)

APP = "live"
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_CSID_CONTROL = 2
_CSID_COMMAND = 3
_CSID_STATUS = 5
_WINDOW = 2_500_000
_OUT_CHUNK_SIZE = 4096
_STREAM_ID = 1

_U32 = struct.Struct(">I")


class PublishSink(Protocol):
    """Where a publishing session's FLV bytes go."""

    def write(self, data: bytes) -> None:
        """Take FLV bytes; raises :class:`StreamgwError` when the stream has failed."""

    def close(self, *, clean: bool) -> None:
        """The publisher is gone: ``clean`` when it unpublished, false when it dropped."""


OpenPublisher = Callable[[str, str], Awaitable[PublishSink]]
"""``open_publisher(stream_name, remote_addr)``; raises :class:`StreamError` to refuse."""


@dataclass(frozen=True, slots=True)
class RtmpLimits:
    """Bounds on what one RTMP connection may make the server hold or wait for."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_message_size: int = 8 * 1024 * 1024
    max_connections: int = 1000


class RtmpServer:
    """Accepts RTMP publishers at ``rtmp://HOST:PORT/live/STREAM``."""

    def __init__(self, open_publisher: OpenPublisher, limits: RtmpLimits | None = None) -> None:
        self._open_publisher = open_publisher
        self.limits = limits or RtmpLimits()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._epoch = time.monotonic()
        self.bytes_received = 0
        self.connections_total = 0
        self.protocol_errors = 0

    @property
    def active_connections(self) -> int:
        """Connections currently open."""
        return len(self._tasks)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting."""
        self._server = await asyncio.start_server(self._accept, host, port, limit=2**16)

    async def close(self) -> None:
        """Stop accepting and end every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self._tasks) >= self.limits.max_connections:
            log.warning("refusing RTMP connection from %s: %d connections open", remote, len(self._tasks))
            writer.close()
            return
        self._tasks.add(task)
        self.connections_total += 1
        session = _Session(self, reader, writer, remote)
        try:
            await session.run()
        except asyncio.CancelledError:
            pass
        except (RtmpError, ProtocolError) as exc:
            self.protocol_errors += 1
            log.warning("RTMP %s: protocol error: %s", remote, exc)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("RTMP %s: connection ended: %s", remote, exc.__class__.__name__)
        except StreamgwError as exc:
            log.warning("RTMP %s: %s", remote, exc)
        except Exception:
            log.exception("RTMP %s: unexpected error", remote)
        finally:
            session.finish()
            writer.close()
            try:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
            finally:
                # close() waits to flush what is buffered: a peer that reads nothing would keep
                # the socket open for good.
                writer.transport.abort()
                self._tasks.discard(task)


class _Session:
    """One RTMP connection's state: what it connected to, what it publishes."""

    def __init__(
        self,
        server: RtmpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        remote: str,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.remote = remote
        self.chunks = chunk.ChunkReader(max_message_size=server.limits.max_message_size)
        self.out = chunk.ChunkWriter()
        self.app: str | None = None
        self.sink: PublishSink | None = None
        self.stream_name: str | None = None
        self.header_sent = False
        self.unpublished = False
        self.closing = False
        self.pending_publish: str | None = None
        self._out = bytearray()  # FLV bytes of the current read, for the sink
        self.ack_window = 0
        self.acked = 0

    async def run(self) -> None:
        limits = self.server.limits
        c0c1 = await asyncio.wait_for(
            self.reader.readexactly(1 + HANDSHAKE_SIZE), limits.handshake_timeout
        )
        self.writer.write(server_s0_s1_s2(c0c1, self.server._epoch))
        await asyncio.wait_for(self.reader.readexactly(HANDSHAKE_SIZE), limits.handshake_timeout)
        loop = asyncio.get_running_loop()
        # One idle deadline per connection, pushed forward after each read: cheaper than a
        # wait_for (a Task and a timer) per read. It also bounds drain(), so a peer that stops
        # reading its replies cannot hold the connection for good.
        async with asyncio.timeout(limits.idle_timeout) as idle:
            while not self.closing:
                data = await self.reader.read(65536)
                if not data:
                    return
                idle.reschedule(loop.time() + limits.idle_timeout)
                self.server.bytes_received += len(data)
                for msg in self.chunks.feed(data):
                    self._on_message(msg)
                    if self.pending_publish is not None:
                        self._flush_media()
                        name, self.pending_publish = self.pending_publish, None
                        await self._open(name)
                    if self.closing:
                        break
                self._flush_media()
                self._maybe_ack()
                await self.writer.drain()
            await self.writer.drain()

    def finish(self) -> None:
        """End publishing: hand over the media already read, then close the sink."""
        if self.sink is not None:
            try:
                self._flush_media()
            except StreamgwError:
                pass  # the stream already failed; closing is all that is left
            self.sink.close(clean=self.unpublished)
            self.sink = None

    # --- outgoing ---

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self.writer.write(self.out.encode(csid, type_id, stream_id, 0, payload))

    def _command(self, *values: amf0.Value, stream_id: int = 0) -> None:
        csid = _CSID_STATUS if stream_id else _CSID_COMMAND
        self._send(csid, chunk.COMMAND_AMF0, stream_id, amf0.encode(*values))

    def _status(self, level: str, code: str, description: str) -> None:
        info: dict[str, amf0.Value] = {"level": level, "code": code, "description": description}
        self._command("onStatus", 0.0, None, info, stream_id=_STREAM_ID)

    def _maybe_ack(self) -> None:
        if self.ack_window and self.chunks.bytes_received - self.acked >= self.ack_window:
            self.acked = self.chunks.bytes_received
            self._send(_CSID_CONTROL, chunk.ACKNOWLEDGEMENT, 0, _U32.pack(self.acked & 0xFFFFFFFF))

    # --- incoming ---

    def _on_message(self, msg: chunk.Message) -> None:
        t = msg.type_id
        if t == chunk.VIDEO or t == chunk.AUDIO:
            if self.sink is not None:
                self._media(flv.TAG_VIDEO if t == chunk.VIDEO else flv.TAG_AUDIO, msg.timestamp, msg.payload)
        elif t == chunk.COMMAND_AMF0:
            self._on_command(amf0.decode_all(msg.payload))
        elif t == chunk.COMMAND_AMF3:
            # An AMF3 command message starts with a format byte, then AMF0 values.
            self._on_command(amf0.decode_all(msg.payload[1:]))
        elif t == chunk.DATA_AMF0 or t == chunk.DATA_AMF3:
            payload = msg.payload[1:] if t == chunk.DATA_AMF3 else msg.payload
            self._on_data(amf0.decode_all(payload), msg.timestamp)
        elif t == chunk.WINDOW_ACK_SIZE:
            if len(msg.payload) >= 4:
                self.ack_window = _U32.unpack_from(msg.payload)[0]
        elif t == chunk.AGGREGATE:
            self._on_aggregate(msg)
        # Acknowledgement, user control and peer bandwidth from a publisher need no answer.

    def _media(self, tag_type: int, timestamp: int, payload: bytes) -> None:
        if not self.header_sent:
            self._out += flv.header(audio=True, video=True)
            self.header_sent = True
        self._out += flv.tag(tag_type, timestamp, payload)

    def _flush_media(self) -> None:
        """Hand the FLV bytes of one read to the sink at once (one wake-up of its thread)."""
        if self._out and self.sink is not None:
            self.sink.write(bytes(self._out))
        self._out.clear()

    def _on_aggregate(self, msg: chunk.Message) -> None:
        # An aggregate message is a run of FLV tags (RTMP spec 7.1.6); timestamps are offset so
        # the first sub-message has the aggregate's timestamp.
        data = msg.payload
        pos = 0
        base: int | None = None
        while pos + 11 <= len(data):
            tag_type = data[pos]
            size = int.from_bytes(data[pos + 1 : pos + 4], "big")
            ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
            body = data[pos + 11 : pos + 11 + size]
            if len(body) < size:
                raise RtmpError("truncated aggregate message")
            if base is None:
                base = ts
            if tag_type in (flv.TAG_AUDIO, flv.TAG_VIDEO) and self.sink is not None:
                self._media(tag_type, (msg.timestamp + ts - base) & 0xFFFFFFFF, body)
            pos += 11 + size + 4

    def _on_data(self, values: list[amf0.Value], timestamp: int) -> None:
        if not values or self.sink is None:
            return
        if values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and not self.header_sent:
            meta = values[1]
            items = meta.items if isinstance(meta, amf0.EcmaArray) else meta
            keys = items if isinstance(items, dict) else {}
            has_video = "videocodecid" in keys or not keys
            has_audio = "audiocodecid" in keys or not keys
            self._out += flv.header(audio=has_audio, video=has_video)
            self.header_sent = True
            self._out += flv.tag(flv.TAG_SCRIPT, 0, amf0.encode("onMetaData", meta))

    def _on_command(self, values: list[amf0.Value]) -> None:
        if len(values) < 2 or not isinstance(values[0], str):
            raise RtmpError("command message without a name and transaction id")
        name = values[0]
        txn = values[1] if isinstance(values[1], float) else 0.0
        args = values[2:]
        if name == "connect":
            self._on_connect(txn, args)
        elif self.app is None:
            raise RtmpError(f"command {name!r} before connect")
        elif name == "createStream":
            self._command("_result", txn, None, float(_STREAM_ID))
        elif name in ("releaseStream", "FCPublish"):
            self._command("_result", txn, None, amf0.UNDEFINED_VALUE)
        elif name == "publish":
            self._on_publish(txn, args)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.sink is not None:
                self.unpublished = True
                log.info("RTMP %s: %s unpublished %s", self.remote, name, self.stream_name)
                self.finish()
            if name == "FCUnpublish" and txn:
                self._command("_result", txn, None, amf0.UNDEFINED_VALUE)
        elif name == "play":
            self._status("error", "NetStream.Play.Failed", "this server accepts publishers only")
            self.closing = True
        elif txn:
            self._command("_error", txn, None, {"level": "error", "code": "NetConnection.Call.Failed",
                                                "description": f"unknown command {name}"})

    def _on_connect(self, txn: float, args: list[amf0.Value]) -> None:
        props = args[0] if args and isinstance(args[0], dict) else {}
        app = props.get("app")
        app = app.split("?", 1)[0].strip("/") if isinstance(app, str) else ""
        if app != APP:
            self._command("_error", txn, None, {
                "level": "error", "code": "NetConnection.Connect.Rejected",
                "description": f"unknown application {app!r}: publish to rtmp://HOST/{APP}/STREAM",
            })
            self.closing = True
            return
        self.app = app
        self._send(_CSID_CONTROL, chunk.WINDOW_ACK_SIZE, 0, _U32.pack(_WINDOW))
        self._send(_CSID_CONTROL, chunk.SET_PEER_BANDWIDTH, 0, _U32.pack(_WINDOW) + b"\x02")
        self._send(_CSID_CONTROL, chunk.SET_CHUNK_SIZE, 0, _U32.pack(_OUT_CHUNK_SIZE))
        self.out.chunk_size = _OUT_CHUNK_SIZE
        self._command(
            "_result", txn,
            {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
            {"level": "status", "code": "NetConnection.Connect.Success",
             "description": "Connection succeeded.", "objectEncoding": 0.0},
        )

    def _on_publish(self, txn: float, args: list[amf0.Value]) -> None:
        raw = args[1] if len(args) >= 2 and isinstance(args[1], str) else ""
        name = raw.split("?", 1)[0]
        if self.sink is not None:
            self._status("error", "NetStream.Publish.BadName", "already publishing on this connection")
            self.closing = True
            return
        if not _STREAM_NAME.match(name):
            self._status("error", "NetStream.Publish.BadName", f"invalid stream name {name!r}")
            self.closing = True
            return
        self.pending_publish = name  # opened by the read loop, before the next message

    async def _open(self, name: str) -> None:
        try:
            self.sink = await self.server._open_publisher(name, self.remote)
        except StreamError as exc:
            self._status("error", "NetStream.Publish.BadName", str(exc))
            log.warning("RTMP %s: publish %s refused: %s", self.remote, name, exc)
            self.closing = True
            return
        self.stream_name = name
        # User Control StreamBegin (RTMP spec 7.1.7), then NetStream.Publish.Start.
        self._send(_CSID_CONTROL, chunk.USER_CONTROL, 0, struct.pack(">HI", 0, _STREAM_ID))
        self._status("status", "NetStream.Publish.Start", f"{name} is now published")
        log.info("RTMP %s: publishing %s", self.remote, name)
