"""WHIP H.264 copy mode: what the copy path does with awkward publishers, and its frame queue."""

from __future__ import annotations

import asyncio
import fractions
import io
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamgw.media.whip_muxer import AccessUnit, FrameQueue, QueuedFrame
from tests.conftest import RunningGateway
from tests.test_whip_whep import Tone, _delete, _post, connect, hls_segments, publisher_offer, run

VIDEO_TB = fractions.Fraction(1, 90000)


def encoded(frames: int, **options: str) -> list[tuple[bytes, int]]:
    """(Annex B packet, pts in 1/90000) in decode order, from libx264 at 320x240, 30 fps."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuv420p"
    enc.time_base = fractions.Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "g": "60", **options}
    out: list[tuple[bytes, int]] = []
    for i in range(frames):
        img = np.full((240, 320, 3), 80, np.uint8)
        img[:, (i * 5) % 300:(i * 5) % 300 + 20] = 250
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), int(p.pts) * 3000) for p in enc.encode(frame)]
    out += [(bytes(p), int(p.pts) * 3000) for p in enc.encode(None)]
    return out


class Packets(MediaStreamTrack):
    """Pre-encoded video sent in real time by its decode order (aiortc packetizes, no encode)."""

    kind = "video"

    def __init__(self, packets: list[tuple[bytes, int]]) -> None:
        super().__init__()
        self.packets = packets
        self.i = 0
        self.start = 0.0

    async def recv(self) -> av.Packet:
        if self.readyState != "live" or self.i >= len(self.packets):
            raise MediaStreamError
        if self.i == 0:
            self.start = time.time()
        await asyncio.sleep(max(0.0, self.start + self.i / 30 - time.time()))
        data, pts = self.packets[self.i]
        self.i += 1
        packet = av.Packet(data)
        packet.pts = pts + 90000  # B-frames make the first pts negative-ish otherwise
        packet.time_base = VIDEO_TB
        return packet


def publish_packets(gw: RunningGateway, name: str, packets: list[tuple[bytes, int]], seconds: float
                    ) -> tuple[Any, list[str]]:
    """Publish ``packets`` (+ a tone) over WHIP for ``seconds``, then DELETE and wait for the
    stream to end; returns the session's encoder, whose counters are then final, and the video
    modes ``/api/streams`` showed meanwhile (in order, each once)."""
    seen: list[Any] = []
    modes: list[str] = []

    async def scenario() -> None:
        pc = await publisher_offer(Packets(packets), Tone())
        r = await _post(gw.http + f"/whip/{name}", pc.localDescription.sdp)
        await connect(pc, r)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            mode = (await asyncio.to_thread(gw.get, f"/api/streams/{name}")).json()["whip_video"]
            if not modes or modes[-1] != mode:
                modes.append(mode)
            await asyncio.sleep(0.05)
        seen.append(await asyncio.to_thread(gw.call, lambda: next(iter(gw.node.whip.sessions.values())).encoder))
        assert (await _delete(gw.http + r.headers["location"])).status_code == 200
        await pc.close()

    run(scenario())
    gw.wait_for(lambda: gw.get(f"/api/streams/{name}").json()["state"] == "ended", 10, "the stream to end")
    assert gw.get(f"/api/streams/{name}").json()["whip_video"] is None  # no WHIP session any more
    return seen[0], modes


def test_b_frames_switch_the_publisher_to_decoding(gateway_factory: Callable[..., RunningGateway]) -> None:
    """OBS with B-frames: timestamps go back, so the gateway decodes and re-encodes from then on."""
    gw = gateway_factory(whip_video="copy")
    packets = encoded(150, bf="2", profile="main")
    assert any(b[1] < a[1] for a, b in zip(packets, packets[1:], strict=False)), "the clip has no B-frames"
    enc, modes = publish_packets(gw, "bframes", packets, 5.5)
    assert modes in (["copy", "transcode"], ["transcode"]), modes
    assert enc.copied < 5 and enc.frames > 60, vars(enc)
    segments = hls_segments(gw, "bframes")
    assert segments
    pts: list[int] = []
    for data in segments:
        with av.open(io.BytesIO(data), format="mpegts") as c:
            first = next(p for p in c.demux(video=0) if p.size)
            assert first.is_keyframe
        with av.open(io.BytesIO(data), format="mpegts") as c:
            pts += [int(f.pts) for f in c.decode(video=0)]
    # Re-encoded without B-frames and in order: presentation order is decode order.
    assert len(pts) > 60 and pts == sorted(pts) and len(set(pts)) == len(pts)


def test_frame_queue_drops_copied_video_until_the_next_idr() -> None:
    gaps: list[int] = []
    q = FrameQueue(2, on_video_gap=lambda: gaps.append(1))

    def au(n: int, key: bool = False) -> QueuedFrame:
        return QueuedFrame("h264", AccessUnit(b"\x00\x00\x01" + bytes([0x65 if key else 0x41, n]), n * 3000, key), 0.0)

    q.put(au(0, key=True))
    q.put(au(1))
    q.put(au(2))  # full: dropped, and everything up to the next IDR with it
    q.put(QueuedFrame("audio", object(), 0.0))  # full: dropped, no gap for audio
    assert q.get() == au(0, key=True)
    q.put(au(3))  # room again, but 2 is gone: 3 cannot decode
    q.put(QueuedFrame("audio", "a", 0.0))  # audio still flows
    assert q.get() == au(1)
    q.put(au(4, key=True))  # the next IDR: video flows again
    assert q.get() == QueuedFrame("audio", "a", 0.0)
    q.put(au(5))
    assert [q.get(), q.get()] == [au(4, key=True), au(5)]
    assert gaps == [1] and q.dropped == 3
    q.close()
    assert q.get() is None


def test_a_publisher_that_ignores_keyframe_requests_is_re_encoded_from_its_next_idr(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    """A sender with a 5 s GOP that ignores PLI: copied until its next IDR, then re-encoded at 2 s."""
    gw = gateway_factory(whip_video="copy")
    packets = encoded(270, g="150", keyint_min="150", sc_threshold="0", bf="0")  # 9 s, IDRs at 0 and 5 s
    enc, modes = publish_packets(gw, "longgop", packets, 8.5)
    # Copied up to the IDR at 5 s (150 pictures), encoded after it.
    assert modes == ["copy", "copy-until-idr", "transcode"], modes
    assert 140 <= enc.copied <= 150 and enc.frames > enc.copied + 60, vars(enc)
    playlist = gw.get("/stream/longgop/source.m3u8").text
    durations = [float(x.split(":")[1].rstrip(",")) for x in playlist.splitlines() if x.startswith("#EXTINF")]
    # The publisher's own 5 s GOP, then at most 2 s: the gateway's GOP.
    assert abs(durations[0] - 5.0) < 0.2 and durations[1:] and all(d <= 2.1 for d in durations[1:]), playlist
    for data in hls_segments(gw, "longgop"):
        with av.open(io.BytesIO(data), format="mpegts") as c:
            assert next(p for p in c.demux(video=0) if p.size).is_keyframe
        with av.open(io.BytesIO(data), format="mpegts") as c:
            assert sum(1 for _ in c.decode(video=0)) > 0
