"""WHIP ingest and WHEP playback: real aiortc peers on 127.0.0.1 against an in-process gateway."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import io
import time
from collections.abc import Callable
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamgw.config import load_settings
from streamgw.errors import ConfigError
from streamgw.media.rtc import RtcPacket
from streamgw.media.vp8 import Backlog, Vp8Encoder, Vp8Settings
from streamgw.output.whep import WhepOutput, WhepSettings, _Relay, _ViewerQueue
from streamgw.segment import Segment
from streamgw.webrtc import IceSettings, gather_candidates, new_peer_connection, offered_media, parse_ice_addresses
from tests.conftest import RunningGateway, start_publish
from tests.harness import Tone
from tests.media import probe_segment

LOOPBACK = IceSettings()  # host candidates on 127.0.0.1 only, no STUN


# ---------------------------------------------------------------------------------------------
# Generated media


class Pattern(MediaStreamTrack):
    """30 fps video: a white bar moving over grey; the size changes after ``switch_after`` frames."""

    kind = "video"

    def __init__(self, size: tuple[int, int] = (320, 240), switch_after: int | None = None,
                 size2: tuple[int, int] = (480, 360)) -> None:
        super().__init__()
        self.size, self.size2, self.switch_after = size, size2, switch_after
        self.n = 0
        self._start = 0.0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.n == 0:
            self._start = time.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self.n / 30 - time.time()))
        w, h = self.size2 if self.switch_after is not None and self.n >= self.switch_after else self.size
        img = np.full((h, w, 3), 96, np.uint8)
        x = (self.n * 6) % (w - 16)
        img[:, x:x + 16] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self.n * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        return frame


# ---------------------------------------------------------------------------------------------
# Clients


async def _post(url: str, sdp: str, *, token: str | None = None, content_type: str = "application/sdp"
                ) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.post(url, content=sdp, headers=headers)


async def _delete(url: str, *, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.delete(url, headers=headers)


async def publisher_offer(video: MediaStreamTrack | None = None, audio: MediaStreamTrack | None = None
                          ) -> RTCPeerConnection:
    """A publishing peer with its offer set as local description (candidates on 127.0.0.1)."""
    pc = new_peer_connection(LOOPBACK)
    for track in (video, audio):
        if track is not None:
            pc.addTransceiver(track, direction="sendonly")
    await gather_candidates(pc, LOOPBACK.addresses)
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def viewer_offer(video_codecs: list[str] | None = None) -> RTCPeerConnection:
    """A receiving peer (recvonly video + audio) with its offer set as local description."""
    pc = new_peer_connection(LOOPBACK)
    tv = pc.addTransceiver("video", direction="recvonly")
    if video_codecs is not None:
        caps = RTCRtpSender.getCapabilities("video")
        assert caps is not None
        tv.setCodecPreferences([c for c in caps.codecs if c.mimeType in video_codecs])
    pc.addTransceiver("audio", direction="recvonly")
    await gather_candidates(pc, LOOPBACK.addresses)
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def connect(pc: RTCPeerConnection, response: httpx.Response) -> None:
    """Apply the 201 answer and wait (bounded) for the connection."""
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/sdp")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
    deadline = time.monotonic() + 10
    while pc.connectionState != "connected":
        assert time.monotonic() < deadline, f"peer is {pc.connectionState}"
        await asyncio.sleep(0.05)


async def receive(pc: RTCPeerConnection, seconds: float) -> dict[str, list[Any]]:
    """Frames received on every track for ``seconds``."""
    got: dict[str, list[Any]] = {"video": [], "audio": []}

    async def pump(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                got[track.kind].append(await track.recv())

    tasks = [asyncio.create_task(pump(t.receiver.track)) for t in pc.getTransceivers() if t.receiver.track]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


def run(coro: Any) -> Any:
    """Run one client scenario on its own event loop (the gateway has its own, in a thread)."""
    return asyncio.run(asyncio.wait_for(coro, 90))


# ---------------------------------------------------------------------------------------------
# HLS checks


def hls_segments(gw: RunningGateway, name: str) -> list[bytes]:
    playlist = gw.get(f"/stream/{name}/source.m3u8")
    assert playlist.status_code == 200, playlist.text
    uris = [line for line in playlist.text.splitlines() if line and not line.startswith("#")]
    return [gw.get(f"/stream/{name}/{uri}").content for uri in uris]


def probe(segment: bytes) -> dict[str, Any]:
    """What a segment holds: the first video packet's keyframe flag, decoded sizes, audio level."""
    with av.open(io.BytesIO(segment), format="mpegts") as c:
        kinds = sorted(s.type for s in c.streams)
        first = next(p for p in c.demux(video=0) if p.size)
    sizes: set[tuple[int, int]] = set()
    frames = 0
    with av.open(io.BytesIO(segment), format="mpegts") as c:
        for frame in c.decode(video=0):
            sizes.add((frame.width, frame.height))
            frames += 1
    with av.open(io.BytesIO(segment), format="mpegts") as c:
        codec = c.streams.audio[0].codec_context.name if c.streams.audio else None
        pcm = [f.to_ndarray() for f in c.decode(audio=0)] if c.streams.audio else []
    rms = float(np.sqrt(np.mean(np.concatenate([p.ravel() for p in pcm]) ** 2))) if pcm else 0.0
    return {"kinds": kinds, "keyframe_first": first.is_keyframe, "sizes": sizes, "frames": frames,
            "audio_codec": codec, "audio_rms": rms}


# ---------------------------------------------------------------------------------------------
# WHIP -> HLS


@pytest.mark.parametrize("mode", ["copy", "transcode"])
def test_whip_publish_becomes_hls_with_video_and_audio(gateway_factory: Callable[..., RunningGateway],
                                                       mode: str) -> None:
    gw = gateway_factory(whip_video=mode)
    seen: dict[str, int] = {}

    def encoder_counts() -> dict[str, int]:
        enc = next(iter(gw.node.whip.sessions.values())).encoder
        return {"pictures": enc.frames, "copied": enc.copied, "asked": enc.keyframe_requests}

    async def scenario() -> None:
        # aiortc's libx264 sender makes an IDR only when asked (PLI) or when the size changes.
        pc = await publisher_offer(Pattern(switch_after=75), Tone())
        r = await _post(gw.http + "/whip/cam1", pc.localDescription.sdp)
        assert r.status_code == 201, r.text
        location = r.headers["location"]
        assert location.startswith("/whip/session/")
        answer_candidates = [ln for ln in r.text.splitlines() if ln.startswith("a=candidate:")]
        # The default webrtc_addrs: loopback and the machine's other interfaces, host candidates only.
        assert any(" 127.0.0.1 " in c for c in answer_candidates), answer_candidates
        assert all("typ host" in c for c in answer_candidates), answer_candidates
        assert "a=end-of-candidates" in r.text  # not trickle: everything is in the answer
        assert "H264/90000" in r.text.split("m=video", 1)[1].split("a=rtpmap:", 2)[1]  # H.264 first
        await connect(pc, r)
        await asyncio.sleep(5.5)
        stream = (await asyncio.to_thread(gw.get, "/api/streams/cam1")).json()
        assert stream["state"] == "live" and stream["publisher"].startswith("whip:")
        assert stream["video_codec"] == "h264" and stream["audio_codec"] == "aac"
        assert (stream["width"], stream["height"]) == (480, 360), stream  # the size now
        assert abs(stream["fps"] - 30) < 1.5, stream  # counted, not FFmpeg's guess from TS (60)
        assert stream["whip_video"] == mode, stream  # H.264 copied, or re-encoded as configured
        seen.update(await asyncio.to_thread(gw.call, encoder_counts))
        assert (await _delete(gw.http + location)).status_code == 200
        assert (await _delete(gw.http + location)).status_code == 404
        await pc.close()

    run(scenario())
    if mode == "copy":  # nothing re-encoded; the publisher was asked for its IDRs
        assert seen["copied"] == seen["pictures"] > 100 and seen["asked"] >= 2, seen
    else:
        assert seen["copied"] == 0 and seen["pictures"] > 100, seen
    gw.wait_for(lambda: gw.get("/api/streams/cam1").json()["state"] == "ended", 10, "the stream to end")
    playlist = gw.get("/stream/cam1/source.m3u8").text
    assert "#EXT-X-ENDLIST" in playlist
    segments = hls_segments(gw, "cam1")
    assert len(segments) >= 2, playlist
    probes = [probe(s) for s in segments]
    for p in probes:
        assert p["kinds"] == ["audio", "video"], p
        assert p["keyframe_first"], p
        assert p["frames"] > 0 and len(p["sizes"]) == 1, p  # one resolution per segment
        assert p["audio_codec"] == "aac" and p["audio_rms"] > 0.01, p
    # The publisher went from 320x240 to 480x360 at 2.5 s.
    sizes = [next(iter(p["sizes"])) for p in probes]
    assert sizes[0] == (320, 240) and sizes[-1] == (480, 360), sizes
    durations = [float(x.split(":")[1].rstrip(",")) for x in playlist.splitlines() if x.startswith("#EXTINF")]
    # The segment with the new size is marked as a discontinuity (new encoding parameters).
    switch = sizes.index((480, 360))
    entries = playlist.split("#EXTINF")[1:]
    assert [i for i, e in enumerate(entries) if "#EXT-X-DISCONTINUITY" in e] == [switch - 1], playlist
    if mode == "transcode":
        # A keyframe every 2 s on the clock; the switch waits for one, the last segment is shorter.
        assert all(abs(d - 2.0) < 0.25 for d in durations[:-1]), durations
    else:
        # The publisher's own IDR at the switch starts a segment at once; every other one came
        # when asked for, every 2 s.
        assert 0 < switch and durations[switch - 1] < 1.9, durations
        others = durations[:switch - 1] + durations[switch:-1]
        assert others and all(abs(d - 2.0) < 0.25 for d in others), durations


# ---------------------------------------------------------------------------------------------
# WHEP


def test_whep_viewers_of_a_whip_stream_get_frames(gateway: RunningGateway) -> None:
    gw = gateway

    async def scenario() -> None:
        pub = await publisher_offer(Pattern(), Tone())
        r = await _post(gw.http + "/whip/live1", pub.localDescription.sdp)
        await connect(pub, r)
        viewers = []
        for _ in range(2):
            v = await viewer_offer()
            vr = await _post(gw.http + "/whep/live1", v.localDescription.sdp)
            assert vr.headers["location"].startswith("/whep/session/")
            assert "H264" in vr.text and "opus" in vr.text.lower()
            await connect(v, vr)
            viewers.append((v, vr.headers["location"]))
        results = await asyncio.gather(*(receive(v, 3.0) for v, _ in viewers))
        for got in results:
            # Frames start at the IDR the new viewer asked for, well before the next 2 s keyframe.
            assert len(got["video"]) >= 45, len(got["video"])
            assert {(f.width, f.height) for f in got["video"]} == {(320, 240)}
            assert len(got["audio"]) >= 100, len(got["audio"])
            level = np.abs(got["audio"][-1].to_ndarray()).max()
            assert level > 1000, level
        for v, location in viewers:
            assert (await _delete(gw.http + location)).status_code == 200
            await v.close()
        assert (await _delete(gw.http + r.headers["location"])).status_code == 200
        await pub.close()

    run(scenario())


@pytest.mark.parametrize(("b_frames", "vp8"), [(False, False), (True, False), (False, True)],
                         ids=["passthrough", "bframes-reencoded", "vp8"])
def test_whep_viewer_of_an_rtmp_stream(gateway: RunningGateway, b_frames: bool, vp8: bool) -> None:
    gw = gateway
    extra = ["-x264-params", "bframes=2:b-adapt=0"] if b_frames else None
    proc = start_publish(gw.rtmp_url("rtmp1"), seconds=20, extra=extra)
    try:
        gw.wait_for(lambda: gw.get("/api/streams/rtmp1").status_code == 200, 10, "the RTMP stream")

        async def scenario() -> None:
            v = await viewer_offer(["video/VP8"] if vp8 else None)
            vr = await _post(gw.http + "/whep/rtmp1/source", v.localDescription.sdp)
            await connect(v, vr)
            assert answer_video_codecs(vr.text) == ({"vp8"} if vp8 else {"h264"}), vr.text
            got = await receive(v, 6.0)  # up to one segment until the first, then real time
            assert len(got["video"]) >= 60, len(got["video"])
            assert {(f.width, f.height) for f in got["video"]} == {(640, 360)}
            assert len(got["audio"]) >= 50, len(got["audio"])
            # One relay for the stream, fed from segments; it re-encodes only for B-frames.
            relays = await asyncio.to_thread(gw.call, lambda: dict(gw.node.whep.relays))
            relay = relays[("rtmp1", "source")]
            assert relay.feeder is not None and relay.feeder.reencoding == b_frames
            assert (relay.vp8 is not None) == vp8
            await v.close()

        run(scenario())
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def answer_video_codecs(sdp: str) -> set[str]:
    """The video codecs an answer settled on, lower case, without rtx."""
    return {c for m in offered_media(sdp) if m.kind == "video" for c in m.codecs} - {"rtx"}


def test_whep_vp8_viewers_share_one_encoder(gateway: RunningGateway) -> None:
    """Viewers without H.264 get VP8 from one encoder per relay; it stops when the last one leaves."""
    gw = gateway

    def relay() -> Any:
        return gw.call(lambda: gw.node.whep.relays.get(("vp8cam", "source")))

    async def scenario() -> None:
        pub = await publisher_offer(Pattern(), Tone())
        await connect(pub, await _post(gw.http + "/whip/vp8cam", pub.localDescription.sdp))
        h264 = await viewer_offer()  # offers VP8 and H.264: gets H.264, the relay's own packets
        hr = await _post(gw.http + "/whep/vp8cam", h264.localDescription.sdp)
        await connect(h264, hr)
        assert answer_video_codecs(hr.text) == {"h264"}, hr.text
        assert (await asyncio.to_thread(relay)).vp8 is None  # no VP8 viewer, no encoder
        viewers = []
        for _ in range(2):
            v = await viewer_offer(["video/VP8"])
            vr = await _post(gw.http + "/whep/vp8cam", v.localDescription.sdp)
            assert vr.status_code == 201, vr.text
            assert answer_video_codecs(vr.text) == {"vp8"} and "opus" in vr.text.lower(), vr.text
            await connect(v, vr)
            viewers.append((v, vr.headers["location"]))
        results = await asyncio.gather(*(receive(pc, 3.0) for pc in [h264] + [v for v, _ in viewers]))
        for got in results:
            assert len(got["video"]) >= 45, len(got["video"])
            assert {(f.width, f.height) for f in got["video"]} == {(320, 240)}
            assert len(got["audio"]) >= 100, len(got["audio"])
            # The picture survives H.264 -> VP8: grey background, one white bar.
            luma = got["video"][-1].to_ndarray(format="gray")
            assert abs(float(np.median(luma)) - 96) < 12 and luma.max() > 200, (np.median(luma), luma.max())
        r = await asyncio.to_thread(relay)
        encoder = r.vp8
        assert encoder is not None and r.vp8_encoders_started == 1  # one encoder for both viewers
        assert encoder.frames_out >= 45 and encoder.keyframes >= 1
        assert (await _delete(gw.http + viewers[0][1])).status_code == 200
        assert (await asyncio.to_thread(relay)).vp8 is encoder  # one VP8 viewer left: still encoding
        assert (await _delete(gw.http + viewers[1][1])).status_code == 200
        r = await asyncio.to_thread(relay)
        assert r.vp8 is None and r.vp8_encoders_started == 1 and r.viewers  # the H.264 viewer stays
        encoder.thread.join(5)
        assert not encoder.thread.is_alive()
        got = await receive(h264, 1.0)
        assert len(got["video"]) >= 15, len(got["video"])
        for pc in [h264, pub] + [v for v, _ in viewers]:
            await pc.close()

    run(scenario())


def test_vp8_encoder_keyframes_backlog_and_stop() -> None:
    """The shared VP8 encoder: keyframes with the source's and on request, drops to a keyframe, stops."""
    x264 = av.CodecContext.create("libx264", "w")
    x264.width, x264.height, x264.pix_fmt = 160, 120, "yuv420p"
    x264.time_base = fractions.Fraction(1, 90000)
    x264.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "keyint=30:scenecut=0"}
    h264: list[tuple[bytes, int, bool]] = []
    for i in range(90):
        img = np.full((120, 160, 3), 96, np.uint8)
        img[:, (i * 4) % 144:(i * 4) % 144 + 16] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        h264 += [(bytes(p), int(p.pts or 0), bool(p.is_keyframe)) for p in x264.encode(frame)]
    assert [k for _, _, k in h264].count(True) == 3

    async def scenario() -> None:
        out: list[tuple[bytes, int, bool]] = []
        source_requests: list[int] = []
        encoder = Vp8Encoder("test-vp8", Vp8Settings(backlog=10, keyframe_interval=0.2),
                              lambda *a: out.append(a), lambda: source_requests.append(1))
        assert source_requests  # it starts by asking the source for an IDR
        encoder.feed(*h264[1])  # not a keyframe: dropped, it waits for one
        assert encoder.dropped == 1
        for item in h264[:60]:
            encoder.feed(*item)
            await asyncio.sleep(0.005)
        deadline = time.monotonic() + 5
        while encoder.frames_out + encoder.skipped < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert encoder.frames_in == 60 and encoder.frames_out + encoder.skipped == 60
        await asyncio.sleep(0.1)
        keyframes = [pts // 3000 for _, pts, key in out if key]
        # With the source's keyframes (or the newest picture of a batch holding one), none between.
        assert len(keyframes) == 2 and keyframes[0] == 0 and 30 <= keyframes[1] < 36, keyframes
        vpx = av.CodecContext.create("libvpx", "r")
        decoded = [f for data, _, _ in out for f in vpx.decode(av.Packet(data))]
        assert len(decoded) == len(out) and (decoded[0].width, decoded[0].height) == (160, 120)
        # A viewer asks: the next picture is a keyframe, though the source's is 30 frames away.
        before = len(out)
        encoder.feed(*h264[60])  # the source's keyframe
        while len(out) == before and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.02)
        out.clear()
        encoder.request_keyframe()
        for n, item in enumerate(h264[61:63], 1):
            assert not item[2]
            encoder.feed(*item)
            while len(out) < n and time.monotonic() < deadline + 5:
                await asyncio.sleep(0.02)
        assert [key for _, _, key in out] == [True, False]
        encoder.close()
        encoder.thread.join(5)
        assert not encoder.thread.is_alive()

    asyncio.run(scenario())


def test_vp8_backlog_drops_to_the_next_keyframe() -> None:
    backlog = Backlog(maxsize=4)
    assert not backlog.put(b"p", 0, False) and backlog.dropped == 1  # waits for a keyframe first
    assert not backlog.put(b"k", 1, True)
    assert not any(backlog.put(b"p", pts, False) for pts in range(2, 5))
    assert backlog.put(b"p", 5, False)  # full: the 4 queued and this one go; the source is asked
    assert backlog.dropped == 6
    assert not backlog.put(b"p", 6, False) and backlog.dropped == 7  # still waiting, asked once
    assert not backlog.put(b"k", 7, True)
    assert backlog.take() == [(b"k", 7, True)]
    backlog.close()
    assert backlog.take() is None and not backlog.put(b"k", 8, True)


def test_slow_viewer_drops_and_never_slows_the_others() -> None:
    async def scenario() -> None:
        output = WhepOutput(WhepSettings(viewer_queue=10), LOOPBACK, lambda s, r: True)
        relay = _Relay(output, ("s", "source"))
        requests: list[int] = []
        relay.keyframe_source = lambda: requests.append(1)

        class Viewer:
            def __init__(self) -> None:
                self.queues = {k: _ViewerQueue(k, 10, relay.request_keyframe) for k in ("video", "audio")}

            def push(self, out: Any, packet: Any) -> None:
                self.queues[out.kind].push(packet, out.keyframe)

        fast, slow = Viewer(), Viewer()
        relay.viewers.update({fast, slow})  # type: ignore[arg-type]
        for v in (fast, slow):
            for q in v.queues.values():
                q.started = True
        received = []
        for i in range(300):
            relay.publish(RtcPacket("video", b"\x00\x00\x00\x01\x65", i * 3000, i % 60 == 0,
                               fractions.Fraction(i, 30)))
            relay.publish(RtcPacket("audio", b"\xfc", i * 960, True, fractions.Fraction(i, 50)))
            received.append(await fast.queues["video"].get())  # the fast one keeps up
            await fast.queues["audio"].get()
        assert len(received) == 300 and fast.queues["video"].dropped == 0
        sq = slow.queues
        assert len(sq["video"]._items) <= 10 and len(sq["audio"]._items) <= 10
        assert sq["video"].dropped > 250 and sq["audio"].dropped == 290
        assert requests  # the lagging viewer asked for a keyframe to resume at
        # Video resumes only at a keyframe: whatever is queued starts with one.
        first = sq["video"]._items[0] if sq["video"]._items else None
        assert first is None or first.pts % (60 * 3000) == 0

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# Errors


def test_whip_errors(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(whip_max_sessions=2)
    url = gw.http + "/whip/"

    async def scenario() -> None:
        # 415: not application/sdp.
        r = await _post(url + "e1", "v=0\r\n", content_type="text/plain")
        assert r.status_code == 415
        # 400: not SDP, and SDP that is not a usable offer.
        assert (await _post(url + "e1", "hello")).status_code == 400
        bad = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        r = await _post(url + "e1", bad)
        assert r.status_code == 400, r.text
        viewer = await viewer_offer()  # recvonly: it would publish nothing
        r = await _post(url + "e1", viewer.localDescription.sdp)
        assert r.status_code == 400 and "neither audio nor video" in r.text, r.text
        await viewer.close()
        # 201, then 409 for the same name while it is live.
        a = await publisher_offer(Pattern())
        r1 = await _post(url + "busy", a.localDescription.sdp)
        assert r1.status_code == 201
        b = await publisher_offer(Pattern())
        r = await _post(url + "busy", b.localDescription.sdp)
        assert r.status_code == 409, r.text
        # 503 at capacity (whip_max_sessions=2).
        c = await publisher_offer(Pattern())
        r2 = await _post(url + "other", c.localDescription.sdp)
        assert r2.status_code == 201
        r = await _post(url + "third", b.localDescription.sdp)
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        # 405 for trickle ICE, 404 for an unknown session.
        async with httpx.AsyncClient(timeout=10) as client:
            p = await client.patch(gw.http + r1.headers["location"], content="a=end-of-candidates\r\n",
                                   headers={"Content-Type": "application/trickle-ice-sdpfrag"})
            assert p.status_code == 405
        assert (await _delete(gw.http + "/whip/session/nope")).status_code == 404
        for resp in (r1, r2):
            assert (await _delete(gw.http + resp.headers["location"])).status_code == 200
        for pc in (a, b, c):
            await pc.close()

    run(scenario())


def test_whip_bearer_token(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(whip_token="s3cret")

    async def scenario() -> None:
        pc = await publisher_offer(Pattern())
        offer = pc.localDescription.sdp
        r = await _post(gw.http + "/whip/tok", offer)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = await _post(gw.http + "/whip/tok", offer, token="wrong")
        assert r.status_code == 403
        r = await _post(gw.http + "/whip/tok", offer, token="s3cret")
        assert r.status_code == 201, r.text
        location = gw.http + r.headers["location"]
        assert (await _delete(location)).status_code == 401  # the session needs the token too
        assert (await _delete(location, token="s3cret")).status_code == 200
        await pc.close()

    run(scenario())


def test_whep_errors(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(whep_max_sessions=1)

    async def scenario() -> None:
        viewer = await viewer_offer()
        offer = viewer.localDescription.sdp
        # 404: no such stream.
        r = await _post(gw.http + "/whep/nothing", offer)
        assert r.status_code == 404, r.text
        pub = await publisher_offer(Pattern(), Tone())
        pr = await _post(gw.http + "/whip/w1", pub.localDescription.sdp)
        await connect(pub, pr)
        # 404: a rendition the stream does not have; 415; 400.
        assert (await _post(gw.http + "/whep/w1/720p", offer)).status_code == 404
        assert (await _post(gw.http + "/whep/w1", offer, content_type="text/plain")).status_code == 415
        assert (await _post(gw.http + "/whep/w1", "garbage")).status_code == 400
        vp8_only = await viewer_offer(["video/VP8"])
        vp9_only = vp8_only.localDescription.sdp.replace("VP8/90000", "VP9/90000")
        r = await _post(gw.http + "/whep/w1", vp9_only)
        assert r.status_code == 400 and "neither H.264 nor VP8" in r.text, r.text
        r = await _post(gw.http + "/whep/w1", pub.localDescription.sdp)  # a sendonly offer
        assert r.status_code == 400 and "neither" in r.text, r.text
        # 201, then 503 at capacity (whep_max_sessions=1).
        r = await _post(gw.http + "/whep/w1", offer)
        assert r.status_code == 201
        other = await viewer_offer()
        r2 = await _post(gw.http + "/whep/w1", other.localDescription.sdp)
        assert r2.status_code == 503
        assert (await _delete(gw.http + r.headers["location"])).status_code == 200
        assert (await _delete(gw.http + "/whep/session/nope")).status_code == 404
        assert (await _delete(gw.http + pr.headers["location"])).status_code == 200
        for pc in (viewer, pub, vp8_only, other):
            await pc.close()

    run(scenario())


# ---------------------------------------------------------------------------------------------
# ICE settings


def test_advertised_address_and_no_stun(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(webrtc_addrs="203.0.113.7=127.0.0.1")

    async def scenario() -> None:
        pc = await publisher_offer(Pattern())
        r = await _post(gw.http + "/whip/nat", pc.localDescription.sdp)
        assert r.status_code == 201
        candidates = [ln for ln in r.text.splitlines() if ln.startswith("a=candidate:")]
        # One host candidate, naming the public address; no srflx/relay: no STUN was asked.
        assert len(candidates) == 1 and " 203.0.113.7 " in candidates[0] and "typ host" in candidates[0]
        assert (await _delete(gw.http + r.headers["location"])).status_code == 200
        await pc.close()

    run(scenario())


@pytest.mark.parametrize("spec", ["", "localhost", "1.2.3.4=nope", "300.1.1.1"])
def test_bad_webrtc_addrs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="webrtc_addrs"):
        load_settings(None, {"webrtc_addrs": spec}, environ={})
    with pytest.raises(ConfigError):
        parse_ice_addresses(spec)


def test_ice_servers_setting() -> None:
    with pytest.raises(ConfigError, match="webrtc_ice_servers"):
        load_settings(None, {"webrtc_ice_servers": "http://example.org"}, environ={})
    s = load_settings(None, {"webrtc_ice_servers": "stun:127.0.0.1:3478"}, environ={})
    assert s.webrtc_ice_servers == "stun:127.0.0.1:3478"
    assert parse_ice_addresses("127.0.0.1,*,203.0.113.7=10.0.0.5")[2].advertise == "203.0.113.7"


def test_whip_packets_go_to_the_cutter_with_both_streams_described() -> None:
    """No MPEG-TS between the WHIP muxer and the cut: its packets reach a segment cutter directly,
    and the templates they are muxed from describe both streams even when the first picture is a
    large IDR (far over FFmpeg's 32 KiB probe) and the audio arrives 0.3 s after it."""
    from streamgw.media.segmenter import SegmentCutter, SegmenterSettings
    from streamgw.media.whip_muxer import FrameQueue, QueuedFrame, WhipEncoding, WhipMuxer

    segments: list[Segment] = []
    cutter = SegmentCutter("t", SegmenterSettings(), first_seq=0, discontinuity=False, on_info=lambda _i: None,
                           on_segment=lambda s, _latency: segments.append(s))
    batches: list[tuple[int, bool]] = []

    class Feed:
        def feed(self, job: Callable[[SegmentCutter], None], *, size: int, urgent: bool) -> None:
            batches.append((size, urgent))
            job(cutter)

    encoder = WhipMuxer(WhipEncoding(), True, True, cut=Feed(), tee_video=lambda *a: None,
                        tee_audio=lambda *a: None, tee_active=lambda: False)
    frames = FrameQueue(1000)
    t0 = time.monotonic()
    rng = np.random.default_rng(1)
    for i in range(75):  # noise: the IDR is far over 32 KiB; the audio arrives 0.3 s late
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (720, 1280, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        frames.put(QueuedFrame("video", frame, t0 + i / 30))
        if i >= 9:
            audio = av.AudioFrame.from_ndarray(np.zeros((1, 1920), np.int16), format="s16", layout="stereo")
            audio.sample_rate, audio.pts, audio.time_base = 48000, (i - 9) * 1600, fractions.Fraction(1, 48000)
            frames.put(QueuedFrame("audio", audio, t0 + i / 30))
    frames.close()
    encoder.run(frames)
    cutter.end(time.monotonic())
    assert len(segments) == 2  # 2.5 s of pictures, a keyframe every 2 s
    for segment in segments:
        probe = probe_segment(segment.data)
        assert (probe.width, probe.height) == (1280, 720) and probe.audio_frames > 0
    with av.open(io.BytesIO(segments[0].data), format="mpegts") as c:
        assert c.streams.audio[0].codec_context.sample_rate == 48000
    assert sum(probe_segment(s.data).video_frames for s in segments) == 75
    assert batches[0] == (0, False)  # the cutter is opened with the templates first
    assert any(urgent for _, urgent in batches)  # keyframes go at once


@pytest.mark.slow
def test_whep_viewer_of_a_transcoded_rendition(gateway_factory: Callable[..., RunningGateway],
                                               orchestrators: Callable[..., Any]) -> None:
    """WHEP on /whep/STREAM/RENDITION plays what an orchestrator transcoded."""
    orch = orchestrators()
    gw = gateway_factory(orch_addr=orch.url, transcoding_options="P240p30fps16x9")
    proc = start_publish(gw.rtmp_url("abrwhep"), seconds=20)
    try:
        gw.wait_for(lambda: gw.get("/stream/abrwhep/P240p30fps16x9.m3u8").status_code == 200, 20,
                    "the first transcoded segment")

        async def scenario() -> None:
            v = await viewer_offer()
            vr = await _post(gw.http + "/whep/abrwhep/P240p30fps16x9", v.localDescription.sdp)
            assert vr.status_code == 201, vr.text
            await connect(v, vr)
            got = await receive(v, 6.0)
            assert len(got["video"]) >= 60, len(got["video"])
            assert {(f.width, f.height) for f in got["video"]} == {(426, 240)}
            assert len(got["audio"]) >= 50, len(got["audio"])
            await v.close()

        run(scenario())
    finally:
        proc.kill()
        proc.communicate(timeout=10)
