"""Live AI through the gateway (WIRE.md §10.1-10.3): publish with ``?pipeline=``, or go-livepeer's
``/live/video-to-video/{stream}/start``, and the AI output comes back as the rendition ``ai``
(HLS, WHEP, and the ladder transcoded from it), from streamgw orchestrator processes.

The source is scikit-image's astronaut moving over its coffee photo (ffmpeg's overlay), published
over RTMP by ffmpeg; the face is found in each source picture by template matching, and the AI
output at the same timestamp is measured there (blurred: low PSNR) and elsewhere (intact).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import subprocess
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest
from skimage import data

from streamgw.errors import ConfigError, LiveAiRefused
from streamgw.gateway.live_ai import LiveAi, LiveAiSession, LiveAiSettings
from streamgw.gateway.live_request import LiveRequest, parse_defaults, parse_query
from streamgw.gateway.selection import Candidate, SelectionPolicy, select_live
from streamgw.livepeer.capabilities import Capabilities, ModelConstraint
from streamgw.media.ts_timing import segment_timing
from tests.conftest import FFMPEG
from tests.harness import RunningGateway, finish
from tests.test_whip_whep import Pattern, _post, connect, publisher_offer, receive, viewer_offer

LIVE = 35
FACE_IN_ASTRONAUT = (110, 41, 59, 59)  # x, y, w, h in the 320 px astronaut
SIZE = (1280, 720)
FPS = 10


# --- pure parts ---


def test_the_ingest_query_is_read_and_checked() -> None:
    assert parse_query("") is None
    assert parse_query("foo=1") is None
    r = parse_query('pipeline=face-blur&params={"strength":0.5}&streamId=abc')
    assert r == LiveRequest("face-blur", {"strength": 0.5}, "abc")
    assert parse_query("pipeline=").pipeline == "noop"  # type: ignore[union-attr]  # go-livepeer's default
    with pytest.raises(LiveAiRefused, match="^params: not JSON"):
        parse_query("pipeline=noop&params={nope")
    with pytest.raises(LiveAiRefused, match="^params: must be a JSON object"):
        parse_query("pipeline=noop&params=[1]")
    with pytest.raises(LiveAiRefused, match="^pipeline: "):
        parse_query("pipeline=../x")
    with pytest.raises(LiveAiRefused, match="^query: longer"):
        parse_query("pipeline=noop&x=" + "a" * 9000)
    assert parse_defaults("cam=face-blur, *=noop") == {"cam": "face-blur", "*": "noop"}
    with pytest.raises(ConfigError):
        parse_defaults("cam")


def _candidate(url: str, models: dict[str, bool], rtt: float | None, price: int = 0,
               suspended: bool = False) -> Candidate:
    caps = Capabilities.from_ids([LIVE], per_capability={
        LIVE: {m: ModelConstraint(warm=w, capacity=1) for m, w in models.items()}})
    return Candidate(url, caps, capability_prices={LIVE: Fraction(price)}, suspended=suspended, discovery_rtt=rtt)


def test_live_selection_warm_first_then_round_trip_then_price() -> None:
    cands = [
        _candidate("https://cold-fast", {"face-blur": False}, 0.001),
        _candidate("https://warm-slow", {"face-blur": True}, 0.5),
        _candidate("https://warm-fast", {"face-blur": True}, 0.01),
        _candidate("https://warm-fast-dear", {"face-blur": True}, 0.01, price=5),
        _candidate("https://other-model", {"cartoon": True}, 0.001),
        _candidate("https://suspended", {"face-blur": True}, 0.001, suspended=True),
        Candidate("https://no-info", None),
    ]
    ranked = [c.url for c in select_live(cands, "face-blur", SelectionPolicy())]
    assert ranked == ["https://warm-fast", "https://warm-fast-dear", "https://warm-slow", "https://cold-fast"]
    capped = SelectionPolicy(max_price_per_capability={LIVE: Fraction(1)}, exclude=frozenset({"https://warm-slow"}))
    assert [c.url for c in select_live(cands, "face-blur", capped)] == ["https://warm-fast", "https://cold-fast"]
    assert [c.url for c in select_live(cands, "face-blur", SelectionPolicy(), "slow")] == ["https://warm-slow"]


def test_swaps_are_capped_as_go_livepeer_caps_them() -> None:
    class _Pool:
        pass

    live = LiveAi(None, _Pool(), LiveAiSettings(swap_window=180.0, max_swaps=2))  # type: ignore[arg-type]
    session = LiveAiSession(live, "s", LiveRequest("noop"))
    assert session._count_swap() and session._count_swap()  # 1, 2: allowed
    assert not session._count_swap()  # a third within 3 min: too many
    session._last_start -= 200  # the next one comes after the window: the count starts again
    assert session._count_swap() and session.swaps == 1


def test_segment_timing_reads_the_span_of_a_segment(tmp_path: Path) -> None:
    path = tmp_path / "a.ts"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25",
                    "-t", "2", "-c:v", "libx264", "-output_ts_offset", "10", "-f", "mpegts", str(path)],
                   check=True, timeout=60)
    timing = segment_timing(path.read_bytes())
    assert timing.has_video and timing.time_base == Fraction(1, 90000)
    assert abs(timing.duration / 90000 - 2.0) < 0.05, timing
    assert 9.9 < timing.start_pts / 90000 < 11.5, timing
    with pytest.raises(Exception, match="cannot be demuxed|no timed packets"):
        segment_timing(b"\x47" + b"\x00" * 500)


def test_segments_are_streamed_while_they_are_cut(tmp_path: Path) -> None:
    """With ``on_part`` set, every write of a segment's muxer comes out as it is made: the pieces of
    seq N, in order and all before segment N itself, join into exactly its bytes."""
    from streamgw.media.segmenter import Segmenter, SegmenterSettings

    path = tmp_path / "in.flv"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
                    "-f", "lavfi", "-i", "sine", "-t", "6", "-c:v", "libx264", "-preset", "ultrafast", "-g", "60",
                    "-c:a", "aac", "-f", "flv", str(path)], check=True, timeout=60)
    events: list[Any] = []
    segmenter = Segmenter("t", SegmenterSettings(), first_seq=0, discontinuity=False, on_info=lambda _i: None,
                          on_segment=lambda seg, _latency: events.append(seg))
    segmenter.cutter.on_part = lambda seq, data, first: events.append((seq, data, first))
    segmenter.run(io.BytesIO(path.read_bytes()))
    segments = [e for e in events if not isinstance(e, tuple)]
    assert len(segments) >= 3
    for segment in segments:
        before = events[:events.index(segment)]
        parts = [e for e in before if isinstance(e, tuple) and e[0] == segment.seq]
        assert len(parts) > 5 and parts[0][2] and not any(p[2] for p in parts[1:])
        assert b"".join(p[1] for p in parts) == segment.data
        assert not [e for e in events[events.index(segment):] if isinstance(e, tuple) and e[0] == segment.seq]


# --- through orchestrator processes ---


def _scene_inputs(tmp: Path) -> tuple[Path, Path, np.ndarray[Any, Any]]:
    """The background, the astronaut (320 px), and the face crop to find it by."""
    background = cv2.resize(data.coffee(), SIZE, interpolation=cv2.INTER_AREA)
    astronaut = cv2.resize(data.astronaut(), (320, 320), interpolation=cv2.INTER_AREA)
    bg, fg = tmp / "coffee.png", tmp / "astronaut.png"
    cv2.imwrite(str(bg), cv2.cvtColor(background, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(fg), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    x, y, w, h = FACE_IN_ASTRONAUT
    return bg, fg, astronaut[y:y + h, x:x + w]


def publish_scene(tmp: Path, url: str, seconds: float) -> subprocess.Popen[str]:
    """ffmpeg publishing the astronaut moving left and right over the coffee, 1280x720 at 10 fps, with a tone."""
    bg, fg, _ = _scene_inputs(tmp)
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
            "-loop", "1", "-framerate", str(FPS), "-i", str(bg), "-loop", "1", "-framerate", str(FPS), "-i", str(fg),
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-filter_complex", "[0][1]overlay=x='420+200*sin(t)':y=200,format=yuv420p[v]", "-map", "[v]", "-map", "2",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-g", str(2 * FPS), "-c:a", "aac", "-b:a", "64k", "-f", "flv", url]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _pictures(segment: bytes) -> dict[int, np.ndarray[Any, Any]]:
    with av.open(io.BytesIO(segment), format="mpegts") as c:
        return {int(f.pts): f.to_ndarray(format="rgb24") for f in c.decode(video=0) if f.pts is not None}


def psnr(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def face_and_rest(out: np.ndarray[Any, Any], ref: np.ndarray[Any, Any], face: np.ndarray[Any, Any]
                  ) -> tuple[float, float]:
    """PSNR of ``out`` against ``ref`` inside the face (found in ``ref``) and away from it; the
    pictures are the 1280x720 scene at any size (the face crop is scaled to match)."""
    scale = ref.shape[1] / SIZE[0]
    if abs(scale - 1) > 0.01:
        face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    scores = cv2.matchTemplate(ref, face, cv2.TM_CCOEFF_NORMED)
    _, best, _, (x, y) = cv2.minMaxLoc(scores)
    assert best > 0.8, best
    h, w = face.shape[:2]
    mask = np.ones(ref.shape[:2], bool)
    margin = round(60 * scale)
    mask[max(0, y - margin):y + h + margin, max(0, x - margin):x + w + margin] = False
    return psnr(out[y:y + h, x:x + w], ref[y:y + h, x:x + w]), psnr(out[mask], ref[mask])


def _segments(gw: RunningGateway, stream: str, rendition: str) -> list[tuple[str, bool]]:
    """(URI, discontinuity before it) of a media playlist."""
    text = gw.get(f"/stream/{stream}/{rendition}.m3u8").text
    out, disc = [], False
    for line in text.splitlines():
        if line == "#EXT-X-DISCONTINUITY":
            disc = True
        elif line and not line.startswith("#"):
            out.append((line, disc))
            disc = False
    return out


def _frames(gw: RunningGateway, stream: str, rendition: str) -> dict[int, np.ndarray[Any, Any]]:
    frames: dict[int, np.ndarray[Any, Any]] = {}
    for uri, _ in _segments(gw, stream, rendition):
        r = gw.get(f"/stream/{stream}/{uri}")
        if r.status_code == 200:
            frames.update(_pictures(r.content))
    return frames


def _status(gw: RunningGateway, stream_id: str) -> dict[str, Any]:
    r = gw.get(f"/live/video-to-video/{stream_id}/status")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _ai_segments(gw: RunningGateway, stream: str) -> int:
    st = gw.get(f"/live/video-to-video/{stream}/status")
    return int(st.json()["streamgw"]["segments_out"]) if st.status_code == 200 else 0


@pytest.mark.slow
def test_rtmp_publish_with_a_pipeline_blurs_the_moving_face(
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., Any], tmp_path: Path) -> None:
    orch = orchestrators("--live-pipelines", "all")
    gw = gateway_factory(orch_addr=orch.url, transcoding_options="P240p30fps16x9")
    params = json.dumps({"strength": 1.0, "detect_every": 1}, separators=(",", ":"))  # no spaces in an RTMP URL
    proc = publish_scene(tmp_path, gw.rtmp_url("astro") + f"?pipeline=face-blur&params={params}", seconds=40)
    try:
        gw.wait_for(lambda: _ai_segments(gw, "astro") >= 4, 60, "four AI output segments")
        status = _status(gw, "astro")  # the stream name is the stream_id when none is given
        assert status["pipeline_id"] == "face-blur" and re.fullmatch(r"[0-9a-f]{8}", status["request_id"])
        assert status["orchestrator_info"]["url"] == orch.url
        stream = gw.get("/api/streams/astro").json()
        assert stream["pipeline"] == "face-blur" and "ai" in stream["renditions"]
        # The master playlist offers the AI output and the ladder made from it, not the source.
        gw.wait_for(lambda: "P240p30fps16x9.m3u8" in gw.get("/stream/astro.m3u8").text, 30, "the AI ladder")
        master = gw.get("/stream/astro.m3u8").text
        assert "astro/ai.m3u8" in master and "astro/source.m3u8" not in master, master
        ladder = gw.get("/stream/astro/" + _segments(gw, "astro", "P240p30fps16x9")[0][0])
        assert ladder.status_code == 200 and max(_pictures(ladder.content)) > 0
        # The face is blurred wherever it moves; the rest is intact; audio comes through.
        source, ai = _frames(gw, "astro", "source"), _frames(gw, "astro", "ai")
        common = sorted(set(source) & set(ai))
        assert len(common) >= 30, (len(source), len(ai), len(common))
        _, _, face = _scene_inputs(tmp_path)
        scores = [face_and_rest(ai[pts], source[pts], face) for pts in common[::5]]
        inside = sorted(s[0] for s in scores)
        outside = sorted(s[1] for s in scores)
        assert inside[len(inside) // 2] < 22, inside
        assert outside[0] > 30, outside
        ai_uri = _segments(gw, "astro", "ai")[0][0]
        with av.open(io.BytesIO(gw.get(f"/stream/astro/{ai_uri}").content), format="mpegts") as c:
            assert c.streams.audio and c.streams.video[0].codec_context.width == SIZE[0]
    finally:
        finish(proc, kill=True)


@pytest.mark.slow
def test_go_livepeer_api_start_update_status_and_whep(
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., Any], tmp_path: Path) -> None:
    orch = orchestrators("--live-pipelines", "face-blur,noop")
    gw = gateway_factory(orch_addr=orch.url)
    proc = publish_scene(tmp_path, gw.rtmp_url("cam"), seconds=60)
    try:
        gw.wait_for(lambda: gw.get("/api/streams/cam").status_code == 200, 20, "the stream")
        assert gw.get("/live/video-to-video/cam/status").status_code == 404
        assert gw.get("/api/streams/cam").json()["pipeline"] is None
        # go-livepeer's form: the ingest query in `query`; the face starts untouched (strength 0).
        query = "pipeline=face-blur&streamId=cam-id&params=" + json.dumps({"strength": 0.0, "detect_every": 1})
        r = httpx.post(gw.http + "/live/video-to-video/cam/start", timeout=30,
                       data={"source_id": "x", "source_type": "rtmpconn", "query": query})
        assert r.status_code == 200, r.text
        assert gw.get("/live/video-to-video/cam/status").status_code == 404  # keyed by stream_id
        gw.wait_for(lambda: _ai_segments(gw, "cam-id") >= 2, 60, "AI output")
        _, _, face = _scene_inputs(tmp_path)

        def face_psnr(first_seq: int) -> list[float]:
            source = _frames(gw, "cam", "source")
            out = []
            for uri, _ in _segments(gw, "cam", "ai"):
                if int(uri.rsplit("-", 1)[1].split(".")[0]) < first_seq:
                    continue
                for pts, pic in _pictures(gw.get(f"/stream/cam/{uri}").content).items():
                    if pts in source:
                        out.append(face_and_rest(pic, source[pts], face)[0])
            return out

        before = face_psnr(0)
        assert before and min(before) > 27, before  # strength 0: the face is as it was
        # An update takes effect within two segments.
        at = _ai_segments(gw, "cam-id")
        assert httpx.post(gw.http + "/live/video-to-video/cam/update", content=b'{"strength": 1.0}').status_code == 200
        gw.wait_for(lambda: _ai_segments(gw, "cam-id") >= at + 4, 60, "segments after the update")
        after = sorted(face_psnr(at + 2))
        # Blurred from two segments on (Haar misses the moving face in a few pictures; at strength
        # 0 none was under 27).
        blurred = sum(p < 22 for p in after)
        assert len(after) >= 10 and after[len(after) // 2] < 20 and blurred >= 0.8 * len(after), after
        status = _status(gw, "cam-id")
        assert status["stream_id"] == "cam-id" and status["pipeline_id"] == "face-blur"
        assert status["type"] == "status" and status["inference_status"]["last_params"]["strength"] == 1.0
        assert status["gateway_status"]["whep_url"] == "/whep/cam/ai" and status["gateway_status"]["error"] is None
        # The AI output over WHEP, at both the streamgw and the go-livepeer paths.
        request_id = status["request_id"]

        async def watch(path: str) -> None:
            v = await viewer_offer()
            vr = await _post(gw.http + path, v.localDescription.sdp)
            await connect(v, vr)
            got = await receive(v, 5.0)
            assert len(got["video"]) >= 20, len(got["video"])
            assert {(f.width, f.height) for f in got["video"]} == {SIZE}
            await v.close()

        # The lowest-latency paths are in use: the source is streamed to the orchestrator while it
        # is cut, and the AI output reaches WHEP as it arrives, not segment by segment.
        publisher = gw.call(lambda: gw.node.publishers.publisher("cam"))
        assert publisher is not None and publisher.low_latency and publisher.cutter.on_part is not None
        asyncio.run(watch("/whep/cam/ai"))
        assert gw.call(lambda: gw.node.whep.relays[("cam", "ai")].live)
        asyncio.run(watch(f"/live/video-to-video/cam-{request_id}-out/whep"))
        assert httpx.post(gw.http + "/live/video-to-video/cam-ffffffff-out/whep", content=b"v=0",
                          headers={"Content-Type": "application/sdp"}).status_code == 404
        overview = gw.get("/api/live").json()
        assert {p["name"] for p in overview["pipelines"]} == {"face-blur", "noop"}
        blur = next(p for p in overview["pipelines"] if p["name"] == "face-blur")
        assert blur["params"]["strength"] == {"default": 0.8, "low": 0.0, "high": 1.0, "kind": "number"}
        orchs = gw.get("/api/orchestrators").json()
        assert orchs[0]["live_models"]["face-blur"]["capacity_in_use"] in (0, 1)
    finally:
        finish(proc, kill=True)


@pytest.mark.slow
def test_bad_live_requests_are_refused_before_anything_starts(
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., Any], tmp_path: Path) -> None:
    orch = orchestrators("--live-pipelines", "noop")
    gw = gateway_factory(orch_addr=orch.url)
    # RTMP: an unknown pipeline refuses the publish (ffmpeg fails), and no stream exists.
    proc = publish_scene(tmp_path, gw.rtmp_url("bad") + "?pipeline=nope", seconds=5)
    err = finish(proc, timeout=30)
    assert proc.returncode != 0, err
    assert gw.get("/api/streams/bad").status_code == 404
    # WHIP: the same in words.
    offer = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    r = httpx.post(gw.http + "/whip/bad?pipeline=nope", content=offer, headers={"Content-Type": "application/sdp"})
    detail = r.json()["detail"]
    assert r.status_code == 400 and detail.startswith("pipeline: no orchestrator offers pipeline 'nope'"), detail
    assert "noop" in detail  # what is offered
    r = httpx.post(gw.http + "/whip/bad?pipeline=noop&params={x", content=offer,
                   headers={"Content-Type": "application/sdp"})
    assert r.status_code == 400 and r.json()["detail"].startswith("params: not JSON"), r.text
    r = httpx.post(gw.http + "/live/video-to-video/bad/whip?pipeline=nope", content=offer,
                   headers={"Content-Type": "application/sdp"})
    assert r.status_code == 400 and r.text.startswith("pipeline: no orchestrator offers"), r.text
    # A parameter the pipeline does not take: the orchestrator's 400, naming the field.
    r = httpx.post(gw.http + "/live/video-to-video/bad/start", json={"pipeline": "noop", "params": {"zoom": 2}})
    assert r.status_code == 200  # the stream is not live: kept for when it is published
    proc = publish_scene(tmp_path, gw.rtmp_url("bad"), seconds=5)
    err = finish(proc, timeout=30)
    assert proc.returncode != 0, err
    # /update and /status of a stream without live AI; oversized and non-JSON updates.
    assert httpx.post(gw.http + "/live/video-to-video/none/update", content=b"{}").status_code == 404
    r = httpx.post(gw.http + "/live/video-to-video/none/update", content=b"[1, 2]")
    assert r.status_code == 400 and r.text.startswith("params:"), r.text
    assert httpx.post(gw.http + "/live/video-to-video/none/update", content=b" " * 70_000).status_code == 413
    assert gw.get("/live/video-to-video/none/status").status_code == 404
    assert httpx.post(gw.http + "/live/video-to-video/x-out/start").status_code == 200  # ignored, as go-livepeer
    # The gateway goes on: a good stream still runs through its pipeline.
    proc = publish_scene(tmp_path, gw.rtmp_url("good") + "?pipeline=noop", seconds=20)
    try:
        gw.wait_for(lambda: _ai_segments(gw, "good") >= 1, 40, "AI output of the good stream")
    finally:
        finish(proc, kill=True)


@pytest.mark.slow
def test_kill_9_of_the_orchestrator_swaps_and_the_output_goes_on(
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., Any], tmp_path: Path) -> None:
    first = orchestrators("--live-pipelines", "noop")
    second = orchestrators("--live-pipelines", "noop")
    gw = gateway_factory(orch_addr=f"{first.url},{second.url}")
    proc = publish_scene(tmp_path, gw.rtmp_url("swap") + "?pipeline=noop", seconds=60)
    try:
        gw.wait_for(lambda: _ai_segments(gw, "swap") >= 2, 60, "AI output")
        running = _status(gw, "swap")["orchestrator_info"]["url"]
        victim, other = (first, second) if running == first.url else (second, first)
        before = _ai_segments(gw, "swap")
        killed_at = time.monotonic()
        victim.kill()
        gw.wait_for(lambda: _ai_segments(gw, "swap") >= before + 3, 40, "AI output after the swap")
        status = _status(gw, "swap")
        assert status["orchestrator_info"]["url"] == other.url
        assert status["streamgw"]["swaps"] == 1 and status["streamgw"]["orchestrators"] == [victim.url, other.url]
        assert status["gateway_status"]["error"]["error_message"].startswith(victim.url)
        # The output went on, with a discontinuity where the orchestrator changed.
        segments = _segments(gw, "swap", "ai")
        assert any(disc for _, disc in segments), segments
        assert time.monotonic() - killed_at < 40
        assert gw.get("/api/streams/swap").json()["state"] == "live"
    finally:
        finish(proc, kill=True)


@pytest.mark.slow
def test_whip_publish_through_a_pipeline(gateway_factory: Callable[..., RunningGateway],
                                         orchestrators: Callable[..., Any]) -> None:
    """WHIP at go-livepeer's path (the pipeline from the query) and at streamgw's ``/whip/STREAM?pipeline=``."""
    orch = orchestrators("--live-pipelines", "noop,sketch")
    gw = gateway_factory(orch_addr=orch.url)

    async def scenario() -> None:
        pubs = []
        for path in ("/live/video-to-video/wlive/whip?pipeline=sketch", "/whip/wown?pipeline=noop"):
            pub = await publisher_offer(Pattern(), None)
            r = await _post(gw.http + path, pub.localDescription.sdp)
            await connect(pub, r)
            pubs.append((pub, r))
        assert pubs[0][1].headers["livepeer-playback-url"] == "/live/video-to-video/wlive-out/whep"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (_ai_segments(gw, "wlive") < 2 or _ai_segments(gw, "wown") < 2):
            await asyncio.sleep(0.2)
        assert _ai_segments(gw, "wlive") >= 2 and _ai_segments(gw, "wown") >= 2
        assert _status(gw, "wlive")["pipeline_id"] == "sketch" and _status(gw, "wown")["pipeline_id"] == "noop"
        for pub, _ in pubs:
            await pub.close()

    asyncio.run(scenario())
