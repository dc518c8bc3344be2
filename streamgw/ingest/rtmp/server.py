"""The RTMP publishing server: one asyncio task per connection, many publishers on one port.

The session layer is the sans-I/O :class:`~streamgw.ingest.rtmp.chunk.ChunkReader` plus the
AMF0 command exchange that OBS and ffmpeg perform (connect, releaseStream, FCPublish,
createStream, publish, FCUnpublish, deleteStream). Media leaves through a :class:`PublishSink`
that the gateway provides: the start of the stream as FLV bytes (held until every announced
stream has begun, for probing), then the audio and video messages as they are, one batch per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

from streamgw.errors import ProtocolError, RtmpError, StreamError, StreamgwError
from streamgw.ingest.rtmp import amf0, chunk, flv
from streamgw.ingest.rtmp.handshake import HANDSHAKE_SIZE, server_s0_s1_s2
from streamgw.net import listen_error

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
_RATE_WINDOW = 0.25  # s: how often a publishing connection's read low-water mark follows its rate
_MAX_LOW_WATER = 64 * 1024


class PublishSink(Protocol):
    """Where a publishing connection's media goes. Both calls raise :class:`StreamgwError` once the
    stream has failed."""

    def flv_start(self, data: bytes, first_arrival: float) -> None:
        """The held start as FLV bytes; ``first_arrival``: time.monotonic() of its first message."""

    def flv_tags(self, tags: list[tuple[int, int, bytes]], *, size: int, urgent: bool) -> None:
        """Audio and video messages after the start, as ``(FLV tag type, timestamp ms, body)``;
        ``size``: the bodies' bytes.

        ``urgent`` is false when none is a keyframe (or the stream has no video): the consumer may batch them.
        """

    def close(self, *, clean: bool) -> None:
        """The publisher is gone: ``clean`` when it unpublished, false when it dropped."""


OpenPublisher = Callable[[str, str, str], Awaitable[PublishSink]]
"""``open_publisher(stream_name, remote_addr, query)``: ``query`` is what followed ``?`` in the
publish name (``pipeline=face-blur``); raises :class:`StreamError` to refuse."""


@dataclass(frozen=True, slots=True)
class RtmpLimits:
    """Bounds on what one RTMP connection may make the server hold or wait for."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_message_size: int = 8 * 1024 * 1024
    max_connections: int = 1000
    # While publishing, the kernel wakes the server once about this much media has arrived
    # (SO_RCVLOWAT set from the stream's rate), not per message: fewer reads, each larger. An
    # audio frame then waits for the next video frame; 0 reads every message as it comes.
    read_coalesce: float = 0.02


class RtmpServer:
    """Accepts RTMP publishers at ``rtmp://HOST:PORT/live/STREAM``."""

    def __init__(self, open_publisher: OpenPublisher, limits: RtmpLimits | None = None) -> None:
        self._open_publisher = open_publisher
        self.limits = limits or RtmpLimits()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # publishes being opened
        self._epoch = time.monotonic()
        self.bytes_received = 0
        self.connections_total = 0
        self.protocol_errors = 0

    @property
    def active_connections(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=512)
        except OSError as exc:
            raise listen_error("RTMP", host, port, exc) from exc

    async def close(self) -> None:
        """Stop accepting and end every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        if connections:
            await asyncio.gather(*(asyncio.shield(c.closed) for c in connections), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class _Connection(asyncio.Protocol):
    """One RTMP connection: handshake, then chunk stream; what it connected to and publishes.

    An ``asyncio.Protocol`` rather than a stream reader: bytes go from ``data_received`` straight
    into the sans-I/O chunk parser, with no task wake-up per read (the per-stream CPU cost).
    """

    def __init__(self, server: RtmpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.remote = "?"
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.chunks = chunk.ChunkReader(max_message_size=server.limits.max_message_size)
        self.out = chunk.ChunkWriter()
        self.app: str | None = None
        self.sink: PublishSink | None = None
        self.stream_name: str | None = None
        self.flv = flv.FlvWriter()
        self.unpublished = False
        self.closing = False
        self.pending_publish: tuple[str, str] | None = None
        self._start: bytes | None = None  # the FLV start, released in this read, for the sink
        self._first_media = 0.0  # time.monotonic() of the first media message held
        self._tags: list[tuple[int, int, bytes]] = []  # media messages of the current read, for the sink
        self._tags_bytes = 0
        self._urgent = False  # _tags holds a keyframe
        self.ack_window = 0
        self.acked = 0
        self._handshake: bytearray | None = bytearray()  # None once the handshake is done
        self._opening = False  # a publish is being opened: input waits in _backlog
        self._backlog: list[bytes] = []
        self._last_read = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._low_water = 1  # SO_RCVLOWAT in force
        self._rate_since = 0.0  # when the stream's current rate window started
        self._rate_bytes = 0  # chunk-stream bytes received when it started

    # --- connection lifecycle ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.server._connections) >= self.server.limits.max_connections:
            log.warning("refusing RTMP connection from %s: %d connections open", self.remote,
                        len(self.server._connections))
            self.transport.abort()
            return
        self.server._connections.add(self)
        self.server.connections_total += 1
        self._timer = self.loop.call_later(self.server.limits.handshake_timeout, self._check_timeouts)

    def _check_timeouts(self) -> None:
        limits = self.server.limits
        now = self.loop.time()
        if self._handshake is not None:
            log.info("RTMP %s: connection ended: handshake not finished in %.0f s", self.remote,
                     limits.handshake_timeout)
            self.abort()
            return
        idle = now - self._last_read
        if idle >= limits.idle_timeout:
            log.info("RTMP %s: connection ended: nothing received for %.0f s", self.remote, idle)
            self.abort()
            return
        # A peer that stops reading our replies must not hold the connection for good.
        assert self.transport is not None
        if self.transport.get_write_buffer_size() > 1024 * 1024:
            log.info("RTMP %s: connection ended: peer does not read", self.remote)
            self.abort()
            return
        wait = limits.idle_timeout - idle
        if self.sink is not None and limits.read_coalesce > 0:
            self._adjust_low_water(now)
            wait = min(wait, _RATE_WINDOW)
        self._timer = self.loop.call_later(wait, self._check_timeouts)

    def _adjust_low_water(self, now: float) -> None:
        """Set SO_RCVLOWAT to ``read_coalesce`` seconds of the stream at its rate over the last
        window. A publisher that stalls has a rate of ~0 in the next window: back to 1 byte, so
        what it sent last waits at most about two windows (the timer runs every window while
        publishing)."""
        elapsed = now - self._rate_since
        if elapsed < _RATE_WINDOW / 2:
            return
        received = self.chunks.bytes_received
        rate = (received - self._rate_bytes) / elapsed
        self._rate_since, self._rate_bytes = now, received
        low = max(1, min(_MAX_LOW_WATER, int(rate * self.server.limits.read_coalesce)))
        self._set_low_water(low)

    def _set_low_water(self, low: int) -> None:
        if low != self._low_water and self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)
                    self._low_water = low

    def abort(self) -> None:
        """Drop the connection now, with a TCP reset: unsent replies are discarded, not flushed."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    def _close(self) -> None:
        """Close after what is written is sent (bounded: aborted after a second)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            self.loop.call_later(1.0, self.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        try:
            self.finish()
        except Exception:  # noqa: BLE001 - a sink bug must not leak the connection
            log.exception("RTMP %s: error while closing", self.remote)
        self.server._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # --- input ---

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._last_read = self.loop.time()
        self.server.bytes_received += len(data)
        try:
            if self._handshake is not None:
                data = self._handshake_step(data)
                if not data:
                    return
            if self._opening:
                self._backlog.append(data)
                return
            self._process(self.chunks.feed(data))
        except (RtmpError, ProtocolError) as exc:
            self.server.protocol_errors += 1
            log.warning("RTMP %s: protocol error: %s", self.remote, exc)
            self.abort()
        except StreamgwError as exc:
            log.warning("RTMP %s: %s", self.remote, exc)
            self.abort()
        except Exception:
            log.exception("RTMP %s: unexpected error", self.remote)
            self.abort()

    def _handshake_step(self, data: bytes) -> bytes:
        """Consume handshake bytes; returns what follows the handshake."""
        assert self._handshake is not None and self.transport is not None
        before = len(self._handshake)
        self._handshake += data
        c0c1 = 1 + HANDSHAKE_SIZE
        if before < c0c1 <= len(self._handshake):
            self.transport.write(server_s0_s1_s2(bytes(self._handshake[:c0c1]), self.server._epoch))
        if len(self._handshake) < c0c1 + HANDSHAKE_SIZE:
            return b""
        rest = bytes(self._handshake[c0c1 + HANDSHAKE_SIZE :])
        self._handshake = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.server.limits.idle_timeout, self._check_timeouts)
        return rest

    def _process(self, messages: list[chunk.Message]) -> None:
        for i, msg in enumerate(messages):
            self._on_message(msg)
            if self.pending_publish is not None:
                self._flush_media()
                (name, query), self.pending_publish = self.pending_publish, None
                self._opening = True
                assert self.transport is not None
                self.transport.pause_reading()
                task = self.loop.create_task(self._open_then(name, query, messages[i + 1 :]))
                self.server._tasks.add(task)
                task.add_done_callback(self.server._tasks.discard)
                return
            if self.closing:
                break
        self._flush_media()
        self._maybe_ack()
        if self.closing:
            self._close()

    async def _open_then(self, name: str, query: str, rest: list[chunk.Message]) -> None:
        """Open the publish target, then go on with the input that arrived meanwhile."""
        try:
            await self._open(name, query)
        finally:
            self._opening = False
        if self.transport is None or self.transport.is_closing():
            return
        if self.closing:  # the publish was refused: the status is written, now close
            self._close()
            return
        backlog, self._backlog = self._backlog, []
        try:
            self._process(rest)
            for data in backlog:
                if self.closing or self._opening:
                    if self._opening:
                        self._backlog.append(data)
                    continue
                self._process(self.chunks.feed(data))
        except (RtmpError, ProtocolError) as exc:
            self.server.protocol_errors += 1
            log.warning("RTMP %s: protocol error: %s", self.remote, exc)
            self.abort()
            return
        except StreamgwError as exc:
            log.warning("RTMP %s: %s", self.remote, exc)
            self.abort()
            return
        if not self._opening and not self.transport.is_closing():
            self.transport.resume_reading()

    def finish(self) -> None:
        """End publishing: hand over the media already read, then close the sink."""
        if self.sink is not None:
            try:
                self._start = self.flv.flush() or self._start  # a start still held: all there is
                self._flush_media()
            except StreamgwError:
                pass  # the stream already failed; closing is all that is left
            self.sink.close(clean=self.unpublished)
            self.sink = None
            self._set_low_water(1)  # commands again: each read as it comes
            self.flv = flv.FlvWriter()  # a new publish on this connection starts a new FLV stream
            self._first_media = 0.0

    # --- outgoing ---

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.out.encode(csid, type_id, stream_id, 0, payload))

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
        streams = self.flv.streams
        if streams is None:
            if not self._first_media:
                self._first_media = time.monotonic()
            self._start = self.flv.media(tag_type, timestamp, payload) or None
            return
        if not self.flv.admit(tag_type):
            if self.flv.late_tags == 1:
                kind = "video" if tag_type == flv.TAG_VIDEO else "audio"
                log.warning("RTMP %s: %s started after the stream's start (%d ms held): its tags are dropped; "
                            "the publisher should send every stream's first tag at once", self.remote, kind,
                            self.flv.hold_ms)
            return
        if (tag_type == flv.TAG_VIDEO and flv.is_video_keyframe(payload)) or flv.TAG_VIDEO not in streams:
            self._urgent = True  # it may close a segment: the segmenter should see it now
        self._tags.append((tag_type, timestamp, payload))
        self._tags_bytes += len(payload)

    def _flush_media(self) -> None:
        """Hand the media of one read to the sink at once."""
        if self.sink is not None:
            if self._start is not None:
                start, self._start = self._start, None
                self.sink.flv_start(start, self._first_media)
            if self._tags:
                self.sink.flv_tags(self._tags, size=self._tags_bytes, urgent=self._urgent)
        self._tags = []
        self._tags_bytes = 0
        self._urgent = False

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
        if len(values) >= 2 and values[0] == "onMetaData" and not self.flv.started:
            meta = values[1]
            items = meta.items if isinstance(meta, amf0.EcmaArray) else meta
            keys = items if isinstance(items, dict) else {}
            self.flv.metadata(amf0.encode("onMetaData", meta), audio="audiocodecid" in keys or not keys,
                              video="videocodecid" in keys or not keys)

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
        name, _, query = raw.partition("?")
        if self.sink is not None:
            self._status("error", "NetStream.Publish.BadName", "already publishing on this connection")
            self.closing = True
            return
        if not _STREAM_NAME.match(name):
            self._status("error", "NetStream.Publish.BadName", f"invalid stream name {name!r}")
            self.closing = True
            return
        self.pending_publish = (name, query)  # opened by the read loop, before the next message

    async def _open(self, name: str, query: str) -> None:
        try:
            self.sink = await self.server._open_publisher(name, self.remote, query)
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
        if self.server.limits.read_coalesce > 0:
            self._rate_since, self._rate_bytes = self.loop.time(), self.chunks.bytes_received
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(_RATE_WINDOW, self._check_timeouts)
