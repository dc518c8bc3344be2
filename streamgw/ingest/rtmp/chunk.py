"""The RTMP chunk stream (Adobe RTMP specification 1.0, section 5.3), without I/O.

:class:`ChunkReader` turns received bytes into whole :class:`Message` values; it applies
Set Chunk Size and Abort itself because they change how later bytes parse. :class:`ChunkWriter`
does the reverse. Every bound (message size, chunk size, chunk streams in progress, buffered
bytes) is enforced and reported as :class:`~streamgw.errors.ChunkError`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from streamgw.errors import ChunkError

# Message type ids (section 5.4 and 7.1).
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
COMMAND_AMF3 = 17
DATA_AMF0 = 18
COMMAND_AMF0 = 20
AGGREGATE = 22

DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 0x7FFFFFFF
EXTENDED = 0xFFFFFF
_TS_MASK = 0xFFFFFFFF

_U32BE = struct.Struct(">I")
_U32LE = struct.Struct("<I")


class Message(NamedTuple):
    """One whole RTMP message: its chunk stream, type, message stream, timestamp (ms) and body.

    A NamedTuple: one is made per message, and a frozen dataclass costs several times more to build.
    """

    csid: int
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes


class _ChunkStreamState:
    __slots__ = ("buf", "delta", "extended", "length", "stream_id", "timestamp", "type_id")

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.buf: bytearray | None = None  # the message in progress, if any


class ChunkReader:
    """Incremental parser of the chunk stream a peer sends."""

    def __init__(
        self,
        *,
        max_message_size: int = 8 * 1024 * 1024,
        max_chunk_size: int = 16 * 1024 * 1024,
        max_chunk_streams: int = 64,
    ) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_chunk_size = max_chunk_size
        self.max_chunk_streams = max_chunk_streams
        self.bytes_received = 0
        self._streams: dict[int, _ChunkStreamState] = {}
        self._buf = bytearray()
        self._pos = 0
        self._partial_bytes = 0

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data`` and return the messages it completes, in order."""
        self.bytes_received += len(data)
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data
        out: list[Message] = []
        while self._parse_chunk(out):
            pass
        if self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        if len(self._buf) - self._pos > self.chunk_size + 18:
            # Only a partial header plus one chunk can ever be pending.
            raise ChunkError("chunk stream parser holds more bytes than one chunk")
        return out

    def _parse_chunk(self, out: list[Message]) -> bool:
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 1:
            return False
        b0 = buf[pos]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        hlen = 1
        if csid == 0:
            if avail < 2:
                return False
            csid = 64 + buf[pos + 1]
            hlen = 2
        elif csid == 1:
            if avail < 3:
                return False
            csid = 64 + buf[pos + 1] + (buf[pos + 2] << 8)
            hlen = 3
        mlen = (11, 7, 3, 0)[fmt]
        if avail < hlen + mlen:
            return False
        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise ChunkError(f"chunk stream {csid} starts with a type-{fmt} header, not type 0")
            if len(self._streams) >= self.max_chunk_streams:
                raise ChunkError(f"more than {self.max_chunk_streams} chunk streams")
            state = _ChunkStreamState()
            self._streams[csid] = state
        h = pos + hlen
        if fmt < 3:
            ts_field = (buf[h] << 16) | (buf[h + 1] << 8) | buf[h + 2]
            extended = ts_field == EXTENDED
        else:
            ts_field = 0
            extended = state.extended
        off = h + mlen
        if extended:
            if avail < hlen + mlen + 4:
                return False
            ext_value = _U32BE.unpack_from(buf, off)[0]
            off += 4
        else:
            ext_value = 0
        new_message = state.buf is None
        if fmt < 3 and not new_message:
            raise ChunkError(f"type-{fmt} header on chunk stream {csid} interrupts a message")
        if fmt == 0 or fmt == 1:
            length = (buf[h + 3] << 16) | (buf[h + 4] << 8) | buf[h + 5]
        else:
            length = state.length
        if new_message:
            if length > self.max_message_size:
                raise ChunkError(f"message of {length} bytes exceeds {self.max_message_size}")
            remaining = length
        else:
            assert state.buf is not None
            remaining = state.length - len(state.buf)
        take = min(remaining, self.chunk_size)
        if len(buf) - off < take:
            return False

        # The whole chunk is here: commit.
        if fmt == 0:
            state.timestamp = ext_value if extended else ts_field
            state.delta = state.timestamp  # spec 5.3.1.2.4: a type 3 after type 0 reuses it
            state.length = length
            state.type_id = buf[h + 6]
            state.stream_id = _U32LE.unpack_from(buf, h + 7)[0]
        elif fmt == 1 or fmt == 2:
            state.delta = ext_value if extended else ts_field
            if fmt == 1:
                state.length = length
                state.type_id = buf[h + 6]
            state.timestamp = (state.timestamp + state.delta) & _TS_MASK
        elif new_message:
            # A type-3 chunk that starts a new message adds the previous delta (5.3.1.2.4).
            state.timestamp = (state.timestamp + state.delta) & _TS_MASK
        state.extended = extended
        self._pos = off + take
        if new_message and take >= state.length:
            # A message in one chunk (audio, commands): no reassembly buffer.
            self._deliver(Message(csid, state.type_id, state.stream_id, state.timestamp,
                                  bytes(buf[off : off + take])), out)
            return True
        if new_message:
            state.buf = bytearray()
        assert state.buf is not None
        if take:
            with memoryview(buf) as view:  # one copy, into the message, not two
                state.buf += view[off : off + take]
        self._partial_bytes += take
        if len(state.buf) >= state.length:
            payload = bytes(state.buf)
            self._partial_bytes -= len(payload)
            state.buf = None
            self._deliver(Message(csid, state.type_id, state.stream_id, state.timestamp, payload), out)
        elif self._partial_bytes > 2 * self.max_message_size:
            raise ChunkError("too many bytes held in unfinished messages")
        return True

    def _deliver(self, msg: Message, out: list[Message]) -> None:
        if msg.stream_id == 0 and msg.type_id == SET_CHUNK_SIZE:
            if len(msg.payload) < 4:
                raise ChunkError("short Set Chunk Size message")
            size = _U32BE.unpack_from(msg.payload)[0]
            if size & 0x80000000 or size < 1:
                raise ChunkError(f"invalid chunk size {size}")
            if size > self.max_chunk_size:
                raise ChunkError(f"chunk size {size} exceeds {self.max_chunk_size}")
            self.chunk_size = size
            return
        if msg.stream_id == 0 and msg.type_id == ABORT:
            if len(msg.payload) < 4:
                raise ChunkError("short Abort message")
            target = self._streams.get(_U32BE.unpack_from(msg.payload)[0])
            if target is not None and target.buf is not None:
                self._partial_bytes -= len(target.buf)
                target.buf = None
            return
        out.append(msg)


class ChunkWriter:
    """Serialises messages into chunks of the current outgoing chunk size."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size

    def encode(self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> bytes:
        """Return the chunks of one message: a type-0 header, then type-3 continuations."""
        if not 2 <= csid <= 65599:
            raise ChunkError(f"chunk stream id {csid} out of range")
        if len(payload) > 0xFFFFFF:
            raise ChunkError("message longer than 16 MiB")
        timestamp &= _TS_MASK
        extended = timestamp >= EXTENDED
        basic0 = _basic_header(0, csid)
        basic3 = _basic_header(3, csid)
        ts_field = EXTENDED if extended else timestamp
        ext = _U32BE.pack(timestamp) if extended else b""
        out = bytearray(basic0)
        out += ts_field.to_bytes(3, "big")
        out += len(payload).to_bytes(3, "big")
        out.append(type_id)
        out += _U32LE.pack(stream_id)
        out += ext
        view = memoryview(payload)
        size = self.chunk_size
        out += view[:size]
        for start in range(size, len(payload), size):
            out += basic3
            out += ext
            out += view[start : start + size]
        return bytes(out)


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes(((fmt << 6) | 1, rest & 0xFF, rest >> 8))
