"""A small blocking RTMP publisher for tests, on streamgw's sans-I/O chunk layer and AMF0.

It speaks just enough RTMP to publish (handshake, connect, releaseStream/FCPublish/createStream,
publish, media, deleteStream), and lets a test misbehave on purpose: send raw bytes, hand-made
chunk headers (:func:`chunk_header`, written from the specification, not from streamgw), odd chunk
sizes, or hang up half-way.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import deque
from types import TracebackType

from streamgw.ingest.rtmp import amf0, chunk

HANDSHAKE_SIZE = 1536

# Chunk stream ids as ffmpeg uses them.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_VIDEO = 6
CSID_DATA = 8


class RtmpClientError(Exception):
    """The server answered something the client did not expect."""


class ServerClosed(RtmpClientError):
    """The server closed the connection."""


def basic_header(fmt: int, csid: int) -> bytes:
    """The chunk basic header (RTMP spec 5.3.1.1): 1, 2 or 3 bytes depending on ``csid``."""
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([(fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def chunk_header(
    fmt: int,
    csid: int,
    *,
    timestamp: int = 0,
    length: int = 0,
    type_id: int = 0,
    stream_id: int = 0,
    extended: int | None = None,
) -> bytes:
    """A whole chunk header (RTMP spec 5.3.1): basic header, message header of type ``fmt``
    (``timestamp`` is the absolute timestamp for type 0 and the delta for types 1 and 2) and
    the extended timestamp field. That field is written when the 24-bit field overflows, or for
    any type (3 included) when ``extended`` gives its value."""
    out = bytearray(basic_header(fmt, csid))
    if fmt < 3:
        if timestamp >= 0xFFFFFF:
            extended = timestamp if extended is None else extended
            out += b"\xff\xff\xff"
        else:
            out += timestamp.to_bytes(3, "big")
    if fmt < 2:
        out += length.to_bytes(3, "big") + bytes([type_id])
    if fmt == 0:
        out += struct.pack("<I", stream_id)
    if extended is not None:
        out += struct.pack(">I", extended & 0xFFFFFFFF)
    return bytes(out)


def read_flv_tags(data: bytes) -> list[tuple[int, int, bytes]]:
    """The (tag type, timestamp ms, body) of every tag of an FLV file."""
    if data[:3] != b"FLV":
        raise ValueError("not an FLV file")
    pos = int.from_bytes(data[5:9], "big") + 4  # header, then PreviousTagSize0
    tags: list[tuple[int, int, bytes]] = []
    while pos + 11 <= len(data):
        tag_type = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        body = data[pos + 11 : pos + 11 + size]
        if len(body) < size:
            break
        tags.append((tag_type, ts, body))
        pos += 11 + size + 4
    return tags


class RtmpClient:
    """One blocking RTMP connection. Every wait is bounded by ``timeout`` seconds."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = chunk.ChunkReader()
        self.writer = chunk.ChunkWriter()
        self.stream_id = 0
        self.received: list[chunk.Message] = []  # every message read so far
        self._pending: deque[chunk.Message] = deque()
        self._txn = 1.0
        self._closed_by_server = False

    def __enter__(self) -> RtmpClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- bytes ---

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout as exc:
            raise TimeoutError("timed out waiting for the server") from exc
        except ConnectionResetError:
            data = b""
        if not data:
            self._closed_by_server = True
            raise ServerClosed("the server closed the connection")
        return data

    def _recv_exactly(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = self.sock.recv(n - len(buf))
            except socket.timeout as exc:
                raise TimeoutError(f"timed out after {len(buf)} of {n} bytes") from exc
            if not data:
                raise ServerClosed(f"the server closed the connection after {len(buf)} of {n} bytes")
            buf += data
        return bytes(buf)

    # --- handshake and messages ---

    def handshake(self) -> None:
        """The simple RTMP handshake (spec 5.2): C0+C1, read S0+S1+S2, C2 echoes S1."""
        c1 = struct.pack(">II", 0, 0) + os.urandom(HANDSHAKE_SIZE - 8)
        self.send_raw(b"\x03" + c1)
        deadline = time.monotonic() + self.timeout
        s0s1s2 = self._recv_exactly(1 + 2 * HANDSHAKE_SIZE, deadline)
        if s0s1s2[0] != 3:
            raise RtmpClientError(f"server answered RTMP version {s0s1s2[0]}")
        s1, s2 = s0s1s2[1 : 1 + HANDSHAKE_SIZE], s0s1s2[1 + HANDSHAKE_SIZE :]
        if s2[8:] != c1[8:]:
            raise RtmpClientError("S2 does not echo C1")
        self.send_raw(s1)

    def send_message(self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> None:
        """Send one message in chunks of the current outgoing chunk size."""
        self.send_raw(self.writer.encode(csid, type_id, stream_id, timestamp, payload))

    def read_message(self, timeout: float | None = None) -> chunk.Message:
        """The next message from the server; :class:`ServerClosed` at end of stream."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._pending:
            self._pending.extend(self.reader.feed(self._recv(deadline)))
        msg = self._pending.popleft()
        self.received.append(msg)
        return msg

    def command(self, name: str, *args: amf0.Value, stream_id: int = 0, csid: int = CSID_COMMAND) -> float:
        """Send an AMF0 command with a fresh transaction id and return that id."""
        txn = self._txn
        self._txn += 1
        self.send_message(csid, chunk.COMMAND_AMF0, stream_id, 0, amf0.encode(name, txn, *args))
        return txn

    def wait_command(
        self, names: tuple[str, ...], txn: float | None = None, timeout: float | None = None
    ) -> list[amf0.Value]:
        """Read until an AMF0 command named one of ``names`` (answering ``txn`` if given) arrives
        and return its values; other messages are skipped (they stay in :attr:`received`)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.read_message(max(0.0, deadline - time.monotonic()))
            if msg.type_id != chunk.COMMAND_AMF0:
                continue
            values = amf0.decode_all(msg.payload)
            if values and values[0] in names and (txn is None or (len(values) > 1 and values[1] == txn)):
                return values

    @staticmethod
    def _code(values: list[amf0.Value]) -> str:
        for value in reversed(values):
            if isinstance(value, dict) and isinstance(value.get("code"), str):
                code = value["code"]
                assert isinstance(code, str)
                return code
        raise RtmpClientError(f"no status code in {values!r}")

    # --- the publishing sequence ---

    def connect(self, app: str = "live", *, tc_url: str | None = None) -> str:
        """Send ``connect`` and return the status code of the answer (``_result`` or ``_error``)."""
        host, port = self.sock.getpeername()[:2]
        props: dict[str, amf0.Value] = {
            "app": app,
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; streamgw-tests)",
            "tcUrl": tc_url or f"rtmp://{host}:{port}/{app}",
        }
        txn = self.command("connect", props)
        return self._code(self.wait_command(("_result", "_error"), txn))

    def create_stream(self, name: str) -> int:
        """releaseStream, FCPublish and createStream, as ffmpeg sends them; returns the stream id."""
        self.command("releaseStream", None, name)
        self.command("FCPublish", None, name)
        txn = self.command("createStream", None)
        reply = self.wait_command(("_result", "_error"), txn)
        if reply[0] != "_result" or len(reply) < 4 or not isinstance(reply[3], float):
            raise RtmpClientError(f"createStream failed: {reply!r}")
        self.stream_id = int(reply[3])
        return self.stream_id

    def publish(self, name: str, *, kind: str = "live") -> str:
        """Create a stream, publish ``name`` on it and return the onStatus code."""
        self.create_stream(name)
        self.command("publish", None, name, kind, stream_id=self.stream_id, csid=CSID_DATA)
        return self._code(self.wait_command(("onStatus",)))

    def send_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        """Send an audio (8), video (9) or data (18) message on the published stream."""
        csid = {chunk.AUDIO: CSID_AUDIO, chunk.VIDEO: CSID_VIDEO}.get(type_id, CSID_DATA)
        self.send_message(csid, type_id, self.stream_id, timestamp, payload)

    def set_chunk_size(self, size: int) -> None:
        """Tell the server the new chunk size, then use it."""
        self.send_message(CSID_CONTROL, chunk.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size))
        self.writer.chunk_size = size

    def delete_stream(self) -> None:
        """Unpublish: FCUnpublish and deleteStream, as ffmpeg does on a clean end."""
        self.command("FCUnpublish", None, "")
        self.command("deleteStream", None, float(self.stream_id))

    # --- ending ---

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Read (and drop) whatever the server sends until it closes the connection; True when
        it did within ``timeout`` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if self._closed_by_server:
            return True
        while True:
            try:
                self._recv(deadline)
            except ServerClosed:
                return True
            except TimeoutError:
                return False

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()


def open_client(port: int, *, host: str = "127.0.0.1", timeout: float = 5.0, app: str = "live") -> RtmpClient:
    """A client that has done the handshake and connected to ``app`` successfully."""
    client = RtmpClient(host, port, timeout=timeout)
    try:
        client.handshake()
        code = client.connect(app)
        if code != "NetConnection.Connect.Success":
            raise RtmpClientError(f"connect answered {code}")
    except BaseException:
        client.close()
        raise
    return client
