"""While a stream is published, the RTMP server lets the kernel gather about ``read_coalesce``
seconds of media per read (SO_RCVLOWAT from the stream's rate) instead of waking per message,
and what a publisher sends just before it stalls still arrives within a fraction of a second."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from streamgw.ingest.rtmp import chunk
from streamgw.ingest.rtmp.server import RtmpLimits, RtmpServer
from tests.rtmpclient import open_client


@dataclass
class _Sink:
    """A publish target that records each hand-over: (time.monotonic(), tags in it)."""

    calls: list[tuple[float, list[tuple[int, int, bytes]]]] = field(default_factory=list)
    started: bool = False
    closed: bool = False

    def flv_start(self, data: bytes, first_arrival: float) -> None:
        self.started = True

    def flv_tags(self, tags: list[tuple[int, int, bytes]], *, size: int, urgent: bool) -> None:
        self.calls.append((time.monotonic(), list(tags)))

    def close(self, *, clean: bool) -> None:
        self.closed = True


@dataclass
class _Served:
    port: int
    sink: _Sink


def _serve(coalesce: float) -> Iterator[_Served]:
    sink = _Sink()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        async def open_publisher(name: str, remote: str, query: str) -> _Sink:
            return sink

        server = RtmpServer(open_publisher, RtmpLimits(read_coalesce=coalesce))
        await server.start("127.0.0.1", 0)
        stop = asyncio.Event()
        state["port"], state["loop"], state["stop"] = server.port, asyncio.get_running_loop(), stop
        ready.set()
        await stop.wait()
        await server.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield _Served(int(state["port"]), sink)  # type: ignore[call-overload]
    finally:
        loop, stop = state["loop"], state["stop"]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(10)


@pytest.fixture
def coalescing() -> Iterator[_Served]:
    yield from _serve(0.05)


@pytest.fixture
def per_message() -> Iterator[_Served]:
    yield from _serve(0.0)


_VIDEO_KEY = bytes([0x17, 0x01, 0, 0, 0]) + b"\x00\x00\x00\x05\x65" + bytes(4000)  # AVC NALU, IDR
_VIDEO = bytes([0x27, 0x01, 0, 0, 0]) + b"\x00\x00\x00\x05\x41" + bytes(4000)  # AVC NALU, non-IDR
_AUDIO = bytes([0xAF, 0x01]) + bytes(300)  # AAC raw frame


def _publish_paced(port: int, seconds: float) -> tuple[object, int]:
    """Publish video at 30 fps and audio at ~43 frames/s (~1 Mbit/s) in real time, each message
    its own send as an encoder's; returns the open client and the messages sent."""
    client = open_client(port)
    client.publish("coalesce")
    client.send_media(chunk.VIDEO, 0, bytes([0x17, 0x00, 0, 0, 0]) + bytes(8))  # sequence header
    client.send_media(chunk.AUDIO, 0, bytes([0xAF, 0x00, 0x12, 0x10]))
    sent = 0
    start = time.monotonic()
    audio_next = video_next = 0.0
    while (now := time.monotonic() - start) < seconds:
        if video_next <= now:
            client.send_media(chunk.VIDEO, int(video_next * 1000), _VIDEO_KEY if sent == 0 else _VIDEO)
            video_next += 1 / 30
            sent += 1
        if audio_next <= now:
            client.send_media(chunk.AUDIO, int(audio_next * 1000), _AUDIO)
            audio_next += 1024 / 44100
            sent += 1
        time.sleep(max(0.0, min(video_next, audio_next) - (time.monotonic() - start)))
    return client, sent


def _messages_per_handover(served: _Served) -> float:
    client, _ = _publish_paced(served.port, 2.0)
    deadline = time.monotonic() + 5
    while not served.sink.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()  # type: ignore[attr-defined]
    steady = served.sink.calls[len(served.sink.calls) // 4:]
    return sum(len(tags) for _, tags in steady) / max(1, len(steady))


def test_reads_gather_several_messages_while_publishing(coalescing: _Served) -> None:
    assert _messages_per_handover(coalescing) >= 1.8


def test_without_coalescing_each_message_is_its_own_read(per_message: _Served) -> None:
    assert _messages_per_handover(per_message) < 1.3


def test_what_a_stalling_publisher_sent_last_still_arrives(coalescing: _Served) -> None:
    client, _ = _publish_paced(coalescing.port, 1.5)  # then nothing: the low-water mark is up
    before = sum(len(tags) for _, tags in coalescing.sink.calls)
    marker = bytes([0xAF, 0x01]) + b"last-words"
    sent_at = time.monotonic()
    client.send_media(chunk.AUDIO, 5000, marker)  # type: ignore[attr-defined]
    deadline = sent_at + 3
    arrived: float | None = None
    while arrived is None and time.monotonic() < deadline:
        for at, tags in coalescing.sink.calls:
            if any(body == marker for _, _, body in tags):
                arrived = at
        time.sleep(0.02)
    client.close()  # type: ignore[attr-defined]
    assert sum(len(tags) for _, tags in coalescing.sink.calls) > before
    assert arrived is not None, "the last message before the stall never reached the sink"
    assert arrived - sent_at < 1.0, arrived - sent_at
