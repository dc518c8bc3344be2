"""Misbehaving RTMP clients against a real gateway while a good ffmpeg publisher streams.

Every bad client must be disconnected (and counted as a protocol error where it broke the
protocol), leave no connection or running cut behind, and the good stream must go on
producing consecutive segments on time. One gateway and one good publisher serve the whole
module: starting them per test would cost more than the tests themselves.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamgw.gateway.streams import StreamState
from streamgw.ingest.rtmp import amf0, chunk
from tests.conftest import FFMPEG, RunningGateway, start_gateway, start_publish, stop_gateway
from tests.rtmpclient import (
    CSID_COMMAND,
    CSID_DATA,
    HANDSHAKE_SIZE,
    RtmpClient,
    chunk_header,
    open_client,
    read_flv_tags,
)

pytestmark = pytest.mark.slow

GOOD = "good"
SEGMENT = 0.5  # seconds; the good publisher sends a keyframe every 15 frames at 30 fps
HANDSHAKE_TIMEOUT = 1.0
IDLE_TIMEOUT = 3.0
TCP_ESTABLISHED = 1


@dataclass
class Live:
    """The shared gateway and its good publisher."""

    gw: RunningGateway
    proc: subprocess.Popen[str]

    @property
    def port(self) -> int:
        return self.gw.rtmp_port

    def segments(self) -> int:
        stream = self.gw.node.publishers.streams.get(GOOD)
        return stream.segments if stream is not None else 0

    def protocol_errors(self) -> int:
        return self.gw.node.rtmp.protocol_errors


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    gw = start_gateway(
        rtmp_handshake_timeout=HANDSHAKE_TIMEOUT, rtmp_idle_timeout=IDLE_TIMEOUT, segment_duration=SEGMENT,
        playlist_window=10,
    )
    proc = start_publish(gw.rtmp_url(GOOD), seconds=900, size="320x240", fps=30, gop=15)
    try:
        lv = Live(gw, proc)
        gw.wait_for(lambda: lv.segments() >= 2 or proc.poll() is not None, 40, "the good stream's first segments")
        assert proc.poll() is None, f"the good publisher exited: {proc.communicate()[1]}"
        yield lv
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        stop_gateway(gw)


@pytest.fixture
def good(live: Live) -> Iterator[Live]:
    """The shared gateway; afterwards, checks that the bad client did no harm."""
    live.gw.wait_for(lambda: live.gw.node.rtmp.active_connections == 1, 10, "only the good publisher connected")
    before = live.segments()
    started = time.monotonic()
    yield live
    assert_no_harm(live, before, started)


def segmenters(live: Live) -> list[str]:
    """The streams whose cut is running on the shared gateway's segmenter pool."""
    return live.gw.node.publishers.cutting()


def _playlist_seqs(text: str) -> list[int]:
    """The sequence numbers of a media playlist's segment URIs (``...SESSION-SEQ.ts``)."""
    uris = [line for line in text.splitlines() if line and not line.startswith("#")]
    return [int(m.group(1)) for m in (re.search(r"-(\d+)\.ts$", uri) for uri in uris) if m]


def assert_no_harm(live: Live, before: int, started: float) -> None:
    gw = live.gw
    gw.wait_for(lambda: gw.node.rtmp.active_connections == 1, 10,
                f"connections back to the good publisher (now {gw.node.rtmp.active_connections})")
    gw.wait_for(lambda: segmenters(live) == [GOOD], 10,
                f"only the good stream's cut (now {segmenters(live)})")
    # Segments kept coming at the publisher's pace (real time): however long the test took, at
    # least half of them are there (slack for a loaded machine), and two more arrive promptly.
    elapsed = time.monotonic() - started
    gw.wait_for(lambda: live.segments() >= before + 2, 10, "two more segments of the good stream")
    assert live.segments() >= before + int(elapsed / SEGMENT / 2) - 2, (live.segments(), before, elapsed)
    assert live.proc.poll() is None, f"the good publisher exited: {live.proc.communicate()[1]}"
    stream = gw.node.publishers.streams[GOOD]
    assert stream.state is StreamState.LIVE and stream.reconnects == 0 and stream.last_error is None
    text = gw.get(f"/stream/{GOOD}/source.m3u8").text
    seqs = _playlist_seqs(text)
    assert len(seqs) >= 2 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), text
    assert before <= seqs[-1] < stream.next_seq, (seqs, before, stream.next_seq)
    assert "#EXT-X-DISCONTINUITY" not in text


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_by_server(sock: socket.socket, timeout: float) -> float | None:
    """Read until the server closes; seconds it took, or None if it did not within ``timeout``."""
    start = time.monotonic()
    while (left := timeout - (time.monotonic() - start)) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except ConnectionResetError:
            return time.monotonic() - start
        except TimeoutError:
            return None
    return None


def _handshaken(port: int) -> RtmpClient:
    client = RtmpClient("127.0.0.1", port)
    client.handshake()
    return client


def _published(port: int, name: str) -> RtmpClient:
    client = open_client(port)
    code = client.publish(name)
    assert code == "NetStream.Publish.Start", code
    return client


def _ended(gw: RunningGateway, name: str) -> bool:
    stream = gw.node.publishers.streams.get(name)
    return stream is not None and stream.state is StreamState.ENDED


# --- the handshake ---


@pytest.mark.parametrize(
    "garbage",
    [
        os.urandom(2000).replace(b"\x03", b"\x04"),
        b"GET /live/cam HTTP/1.1\r\nHost: gateway\r\n\r\n".ljust(1 + HANDSHAKE_SIZE, b"\n"),
        bytes.fromhex("160301020001") + bytes(1600),  # a TLS ClientHello: rtmps to a plain port
        b"\x06" + bytes(HANDSHAKE_SIZE),  # RTMPE (encrypted) handshake
    ],
    ids=["random", "http", "tls", "rtmpe"],
)
def test_garbage_instead_of_a_handshake(good: Live, garbage: bytes) -> None:
    errors = good.protocol_errors()
    with _raw(good.port) as sock:
        sock.sendall(garbage)
        assert _closed_by_server(sock, 5) is not None
    good.gw.wait_for(lambda: good.protocol_errors() == errors + 1, 5, "the protocol error counted")


@pytest.mark.parametrize("sent", ["nothing", "half of C0C1", "C0C1 without C2", "C0C1 and half of C2"])
def test_stalling_in_the_handshake_times_out(good: Live, sent: str) -> None:
    c0c1 = b"\x03" + bytes(HANDSHAKE_SIZE)
    data = {"nothing": b"", "half of C0C1": c0c1[:700], "C0C1 without C2": c0c1,
            "C0C1 and half of C2": c0c1 + bytes(HANDSHAKE_SIZE // 2)}[sent]
    with _raw(good.port) as sock:
        sock.sendall(data)
        took = _closed_by_server(sock, HANDSHAKE_TIMEOUT + 5)
    assert took is not None, "the stalled client was not dropped"
    assert HANDSHAKE_TIMEOUT - 0.2 <= took <= HANDSHAKE_TIMEOUT + 3, took


def test_many_bad_clients_at_once(good: Live) -> None:
    errors = good.protocol_errors()
    socks = [_raw(good.port) for _ in range(30)]
    try:
        for i, sock in enumerate(socks):
            if i % 2:
                sock.sendall(b"\xff" * (1 + HANDSHAKE_SIZE))  # garbage; the others stall
        assert all(_closed_by_server(sock, HANDSHAKE_TIMEOUT + 5) is not None for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    good.gw.wait_for(lambda: good.protocol_errors() == errors + 15, 5, "15 protocol errors counted")


# --- disconnecting mid-chunk ---


def test_disconnect_mid_chunk_header(good: Live) -> None:
    errors = good.protocol_errors()
    client = _handshaken(good.port)
    client.send_raw(chunk_header(0, CSID_COMMAND, length=100, type_id=chunk.COMMAND_AMF0)[:5])
    client.close()
    good.gw.wait_for(lambda: good.gw.node.rtmp.active_connections == 1, 5, "the connection dropped")
    assert good.protocol_errors() == errors  # hanging up is not a protocol error


def test_disconnect_mid_command_message(good: Live) -> None:
    errors = good.protocol_errors()
    client = open_client(good.port)
    payload = amf0.encode("createStream", 2.0, None)
    data = client.writer.encode(CSID_COMMAND, chunk.COMMAND_AMF0, 0, 0, payload + bytes(300))
    client.send_raw(data[: len(data) // 2])
    client.close()
    good.gw.wait_for(lambda: good.gw.node.rtmp.active_connections == 1, 5, "the connection dropped")
    assert good.protocol_errors() == errors


def test_publisher_disconnects_mid_video_message(good: Live) -> None:
    name = "bad-midchunk"
    errors = good.protocol_errors()
    client = _published(good.port, name)
    good.gw.wait_for(lambda: name in segmenters(good), 5, "its cut started")
    client.set_chunk_size(4096)
    data = client.writer.encode(6, chunk.VIDEO, client.stream_id, 0, b"\x17\x00" + os.urandom(20000))
    client.send_raw(data[:10000])  # mid-chunk: the third chunk is cut
    client.close()
    good.gw.wait_for(lambda: _ended(good.gw, name), 10, "the bad stream ended")
    assert good.protocol_errors() == errors


# --- protocol violations after the handshake ---


def _nested_reference_levels(levels: int) -> bytes:
    """An AMF0 value: each level 15 nested objects, the innermost referring to the level before."""
    data = bytearray(b"\x03\x00\x00\x09")
    first, count = 0, 1
    for _ in range(levels):
        data += b"\x03" + b"\x00\x01k\x03" * 14 + b"\x00\x01r\x07" + struct.pack(">H", first) + b"\x00\x00\x09" * 15
        first, count = count, count + 15
    return bytes(data)


def _reference_bomb() -> bytes:
    """800 bytes of AMF0 that are 8**15 objects once its references are inlined."""
    out = bytearray(b"\x03\x00\x01x\x05\x00\x00\x09")
    for i in range(1, 16):
        out += b"\x03" + b"".join(b"\x00\x01" + bytes([0x61 + k]) + b"\x07" + struct.pack(">H", i - 1)
                                  for k in range(8)) + b"\x00\x00\x09"
    return bytes(out)


def _command(payload: bytes) -> bytes:
    return chunk_header(0, CSID_COMMAND, length=len(payload), type_id=chunk.COMMAND_AMF0) + payload


VIOLATIONS: dict[str, Callable[[], bytes]] = {
    "amf0 truncated string": lambda: _command(b"\x02\x00\x10conn"),
    "amf0 unknown marker": lambda: _command(b"\x02\x00\x07connect\xee"),
    "amf0 amf3 value": lambda: _command(b"\x02\x00\x07connect\x00" + bytes(8) + b"\x11\x0a"),
    "amf0 invalid utf-8": lambda: _command(b"\x02\x00\x02\xc3\x28\x00" + bytes(8)),
    "amf0 object without end": lambda: _command(amf0.encode("connect", 1.0) + b"\x03\x00\x03app\x05"),
    "amf0 self reference": lambda: _command(amf0.encode("connect", 1.0) + b"\x03\x00\x01a\x07\x00\x00\x00\x00\x09"),
    "amf0 reference bomb": lambda: _command(amf0.encode("connect", 1.0) + _reference_bomb()),
    "command without a name": lambda: _command(amf0.encode(1.0, 2.0)),
    "command before connect": lambda: _command(amf0.encode("publish", 5.0, None, "x", "live")),
    "oversized message length": lambda: chunk_header(0, 6, length=0xFFFFFF, type_id=chunk.VIDEO, stream_id=1),
    "message 1 byte over the limit": lambda: chunk_header(0, 6, length=8 * 1024 * 1024 + 1, type_id=chunk.VIDEO),
    "chunk size zero": lambda: chunk_header(0, 2, length=4, type_id=chunk.SET_CHUNK_SIZE) + bytes(4),
    "chunk size negative": lambda: chunk_header(0, 2, length=4, type_id=chunk.SET_CHUNK_SIZE) + b"\xff" * 4,
    "type 3 on a new chunk stream": lambda: b"\xc7" + bytes(200),
    "too many chunk streams": lambda: b"".join(
        chunk_header(0, 64 + i, length=200, type_id=chunk.AUDIO) + bytes(128) for i in range(65)
    ),
}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
def test_protocol_violation_is_dropped_and_counted(good: Live, violation: str) -> None:
    errors = good.protocol_errors()
    client = _handshaken(good.port)
    try:
        client.send_raw(VIOLATIONS[violation]())
    except (BrokenPipeError, ConnectionResetError):
        pass  # already dropped while sending
    assert client.wait_closed(5), "the client was not disconnected"
    client.close()
    good.gw.wait_for(lambda: good.protocol_errors() == errors + 1, 5, "the protocol error counted")


@pytest.mark.parametrize("metadata", ["reference bomb", "deep references"])
def test_hostile_metadata_from_a_publisher(good: Live, metadata: str) -> None:
    # The server re-encodes onMetaData: before the AMF0 decoder bounded references, the bomb
    # froze the event loop (every stream stalled) and deep references raised RecursionError.
    name = "bad-metadata"
    errors = good.protocol_errors()
    client = _published(good.port, name)
    value = _reference_bomb() if metadata == "reference bomb" else _nested_reference_levels(34)
    client.send_media(chunk.DATA_AMF0, 0, amf0.encode("@setDataFrame", "onMetaData") + value)
    assert client.wait_closed(5)
    client.close()
    good.gw.wait_for(lambda: good.protocol_errors() == errors + 1, 5, "the protocol error counted")
    good.gw.wait_for(lambda: _ended(good.gw, name), 10, "the bad stream ended")


def test_garbage_after_publishing_ends_that_stream_only(good: Live) -> None:
    name = "bad-garbage"
    errors = good.protocol_errors()
    client = _published(good.port, name)
    client.send_raw(b"\xc9" + os.urandom(5000))  # type 3 on chunk stream 9, never opened
    assert client.wait_closed(5)
    client.close()
    good.gw.wait_for(lambda: _ended(good.gw, name), 10, "the bad stream ended")
    assert good.protocol_errors() == errors + 1


def test_client_that_never_reads_is_dropped(good: Live) -> None:
    # Commands whose answers (an _error naming the unknown command) the client never reads: the
    # server's send buffer fills. Before the fix the session waited on it for ever.
    client = RtmpClient("127.0.0.1", good.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.handshake()
    assert client.connect() == "NetConnection.Connect.Success"
    name = "x" * 60_000
    message = client.writer.encode(CSID_COMMAND, chunk.COMMAND_AMF0, 0, 0, amf0.encode(name, 2.0, None))
    client.sock.settimeout(2)
    try:
        for _ in range(400):  # 24 MB of answers at most; the buffers fill well before
            client.sock.sendall(message)
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    try:
        good.gw.wait_for(lambda: _tcp_state(client.sock) != TCP_ESTABLISHED, IDLE_TIMEOUT + 5,
                         "the server to drop a client that does not read")
    finally:
        client.close()


# --- refusals through the command exchange ---


def test_connect_to_the_wrong_app_is_rejected(good: Live) -> None:
    for app in ("nope", "", "live2", "live/extra"):
        client = _handshaken(good.port)
        assert client.connect(app) == "NetConnection.Connect.Rejected", app
        assert client.wait_closed(5)
        client.close()


def test_app_with_a_query_string_is_accepted(good: Live) -> None:
    client = _handshaken(good.port)
    assert client.connect("live?token=abc") == "NetConnection.Connect.Success"
    client.close()


@pytest.mark.parametrize("name", ["has space", "a/b", "", "x" * 129, "ünicode", "?query-only"])
def test_invalid_stream_name_gets_bad_name(good: Live, name: str) -> None:
    client = open_client(good.port)
    assert client.publish(name) == "NetStream.Publish.BadName"
    assert client.wait_closed(5)
    client.close()
    assert name not in good.gw.node.publishers.streams


def test_second_publisher_to_a_live_name_gets_bad_name(good: Live) -> None:
    stream = good.gw.node.publishers.streams[GOOD]
    first, bytes_in = stream.publisher, stream.bytes_in
    client = open_client(good.port)
    assert client.publish(GOOD) == "NetStream.Publish.BadName"
    assert client.wait_closed(5)
    client.close()
    assert good.gw.node.publishers.streams[GOOD] is stream and stream.publisher == first
    good.gw.wait_for(lambda: stream.bytes_in > bytes_in + 10_000, 5, "the first publisher goes on")


def test_publishing_twice_on_one_connection_gets_bad_name(good: Live) -> None:
    client = _published(good.port, "bad-twice")
    client.command("publish", None, "bad-twice-2", "live", stream_id=client.stream_id, csid=CSID_DATA)
    values = client.wait_command(("onStatus",))
    assert isinstance(values[-1], dict) and values[-1]["code"] == "NetStream.Publish.BadName"
    assert client.wait_closed(5)
    client.close()
    good.gw.wait_for(lambda: _ended(good.gw, "bad-twice"), 10, "the stream ended")


# --- a well-behaved publisher at any chunk size ---


@pytest.fixture(scope="module")
def flv_tags(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, int, bytes]]:
    """Three seconds of H.264 + AAC, keyframe every second, as FLV tags."""
    path: Path = tmp_path_factory.mktemp("flv") / "three-seconds.flv"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
         "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-f", "flv", str(path)],
        check=True, capture_output=True, timeout=60,
    )
    return read_flv_tags(path.read_bytes())


@pytest.mark.parametrize("chunk_size", [1, 128, 4096, 65536, 1 << 20])
def test_rtmpclient_publishes_at_any_chunk_size(
    good: Live, flv_tags: list[tuple[int, int, bytes]], chunk_size: int
) -> None:
    name = f"chunks-{chunk_size}"
    client = _published(good.port, name)
    client.set_chunk_size(chunk_size)
    for tag_type, ts, body in flv_tags:
        client.send_media(tag_type, ts, body)
    client.delete_stream()
    good.gw.wait_for(lambda: _ended(good.gw, name), 20, f"{name} ended")
    client.close()
    stream = good.gw.node.publishers.streams[name]
    assert stream.last_error is None
    assert stream.segments == 3 and abs(stream.media_seconds - 3.0) < 0.05, (stream.segments, stream.media_seconds)
    assert stream.info is not None and (stream.info.width, stream.info.height) == (320, 180)
