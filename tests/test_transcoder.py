"""The orchestrator's transcoder on real segments: testsrc2 720p30 + AAC, cut by streamgw's segmenter."""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest

from streamgw.errors import MediaError, TranscodeError
from streamgw.media.mpegts import PAT_PID, first_pid
from streamgw.media.segmenter import avc_codec_string
from streamgw.media.transcoder import RenditionSpec, TranscodeOptions, fit_size, transcode
from streamgw.segment import Segment
from tests.conftest import FFMPEG
from tests.media import cut_bytes

SOURCE_FPS = 30
TICKS = 90000  # MPEG-TS timestamps
FRAME = TICKS // SOURCE_FPS

LADDER = (
    RenditionSpec("144p", 256, 144, 300_000, fps=Fraction(15), h264_profile="baseline"),
    RenditionSpec("240p", 426, 240, 500_000, gop=Fraction(1), h264_profile="main"),
    RenditionSpec("360p", 640, 360, 900_000, h264_profile="high"),
)


@dataclass
class Probe:
    """What a player finds in one MPEG-TS segment, decoded on its own."""

    first_pid: int | None
    width: int
    height: int
    profile: str | None
    video_pts: list[int]  # decoded frames, presentation order
    keyframes: list[int]  # pts of key packets
    first_key: bool  # the first decoded frame is a keyframe
    first_packet: bytes
    video_bytes: int
    audio: list[tuple[int | None, bytes]]

    @property
    def start(self) -> int:
        return self.video_pts[0]

    def end(self, step: int) -> int:
        return self.video_pts[-1] + step


def probe(data: bytes) -> Probe:
    """Demux and decode a segment alone, with no state from other segments."""
    with av.open(io.BytesIO(data), format="mpegts") as c:
        v = c.streams.video[0]
        assert v.time_base == Fraction(1, TICKS)
        audio: list[tuple[int | None, bytes]] = []
        keyframes: list[int] = []
        pts: list[int] = []
        first_packet = b""
        first_key = None
        size = 0
        for packet in c.demux():
            if packet.stream.type == "audio":
                if packet.size:
                    audio.append((packet.pts, bytes(packet)))
                continue
            if packet.size:
                size += packet.size
                first_packet = first_packet or bytes(packet)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
            for frame in v.codec_context.decode(packet if packet.size else None):
                if first_key is None:
                    first_key = frame.key_frame
                pts.append(frame.pts)
                width, height = frame.width, frame.height
        profile = v.codec_context.profile
    assert pts, "no decodable video"
    return Probe(first_pid(data), width, height, profile, pts, keyframes, bool(first_key), first_packet, size, audio)


def nal_types(annexb: bytes) -> list[int]:
    """H.264 NAL unit types in an Annex B access unit, in order."""
    types = []
    i = annexb.find(b"\x00\x00\x01")
    while i >= 0:
        types.append(annexb[i + 3] & 0x1F)
        i = annexb.find(b"\x00\x00\x01", i + 3)
    return types


def cut(flv: Path) -> list[Segment]:
    """Cut an FLV into segments with streamgw's segmenter, as the gateway does."""
    return cut_bytes(flv.read_bytes())[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated test media (720p30 testsrc2 + 48 kHz AAC sine, GOP 60) as FLV and audio-only TS."""
    d = tmp_path_factory.mktemp("transcode")
    subprocess.run([
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={SOURCE_FPS}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", "6.5", "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-keyint_min", "60",
        "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-b:v", "2500k", "-c:a", "aac", "-b:a", "96k",
        "-f", "flv", str(d / "src.flv"),
    ], check=True, timeout=120)
    subprocess.run([
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "2",
        "-c:a", "aac", "-f", "mpegts", str(d / "audio.ts"),
    ], check=True, timeout=60)
    return d


@pytest.fixture(scope="module")
def source(media: Path) -> list[Segment]:
    """Three 2 s source segments; the first starts near 0 (as a stream's first does), the next at ~2 s."""
    segments = cut(media / "src.flv")
    assert len(segments) >= 3
    return segments[:3]


@pytest.fixture(scope="module")
def ladder(source: list[Segment]) -> list[list[bytes]]:
    """``LADDER`` transcoded from each source segment: [segment][rung]."""
    return [transcode(s.data, LADDER) for s in source]


def test_fit_size() -> None:
    assert fit_size(1280, 720, 426, 240) == (426, 240)
    assert fit_size(1280, 720, 640, 640) == (640, 360)
    assert fit_size(720, 1280, 640, 360) == (202, 360)  # portrait: fit the height, even width
    assert fit_size(640, 480, 640, 360) == (480, 360)  # 4:3 into 16:9
    assert fit_size(720, 576, 640, 360, Fraction(16, 15)) == (480, 360)  # PAL 4:3 with non-square pixels
    assert fit_size(1280, 720, 255, 143) == (254, 142)  # even, inside the box
    assert fit_size(4000, 10, 100, 100) == (100, 2)


def test_each_rendition_is_self_contained(source: list[Segment], ladder: list[list[bytes]]) -> None:
    for seg, rungs in zip(source, ladder, strict=True):
        src = probe(seg.data)
        for spec, data in zip(LADDER, rungs, strict=True):
            p = probe(data)
            assert p.first_pid == PAT_PID, spec.name
            assert p.first_key and p.keyframes[0] == p.start, spec.name
            # SPS and PPS in band, before the IDR slice (no out-of-band extradata in MPEG-TS).
            types = nal_types(p.first_packet)
            assert 7 in types and 8 in types and 5 in types, (spec.name, types)
            assert types.index(7) < types.index(5) and types.index(8) < types.index(5)
            assert (p.width, p.height) == fit_size(1280, 720, spec.width, spec.height) == (spec.width, spec.height)
            assert p.profile == {"baseline": "Constrained Baseline", "main": "Main", "high": "High"}[
                str(spec.h264_profile)]
            assert len(p.audio) > 80  # ~94 AAC frames in 2 s at 48 kHz
            assert p.audio == src.audio, f"{spec.name}: audio packets differ from the source"


def test_timestamps_match_the_source(source: list[Segment], ladder: list[list[bytes]]) -> None:
    for seg, rungs in zip(source, ladder, strict=True):
        src = probe(seg.data)
        assert src.start == int(seg.start_pts * seg.time_base * TICKS)
        for spec, data in zip(LADDER, rungs, strict=True):
            p = probe(data)
            step = int(TICKS / spec.fps) if spec.fps else FRAME
            assert p.start == src.start, spec.name
            assert abs(p.end(step) - src.end(FRAME)) <= step, spec.name
            if spec.fps is None:
                assert p.video_pts == src.video_pts, spec.name
            else:
                assert len(p.video_pts) == round(seg.duration * seg.time_base * spec.fps), spec.name
                gaps = {b - a for a, b in zip(p.video_pts, p.video_pts[1:], strict=False)}
                assert gaps <= {step - 1, step, step + 1}, (spec.name, gaps)


def test_consecutive_renditions_are_continuous(ladder: list[list[bytes]]) -> None:
    for k, spec in enumerate(LADDER):
        joined = b"".join(rungs[k] for rungs in ladder)
        p = probe(joined)
        step = int(TICKS / spec.fps) if spec.fps else FRAME
        gaps = [b - a for a, b in zip(p.video_pts, p.video_pts[1:], strict=False)]
        assert min(gaps) > 0, spec.name
        assert max(gaps) <= step * 3 // 2, (spec.name, max(gaps))
        assert len(p.keyframes) >= len(ladder)


def test_bitrate_and_gop(source: list[Segment], ladder: list[list[bytes]]) -> None:
    for seg, rungs in zip(source, ladder, strict=True):
        seconds = float(seg.duration * seg.time_base)
        for spec, data in zip(LADDER, rungs, strict=True):
            p = probe(data)
            kbps = p.video_bytes * 8 / seconds
            assert 0.5 * spec.bitrate < kbps < 1.5 * spec.bitrate, (spec.name, kbps)
            if spec.gop == Fraction(1):
                assert [round((k - p.start) / TICKS, 1) for k in p.keyframes] == [0.0, 1.0], spec.name


def test_intra_only_constrained_high_and_threads(source: list[Segment]) -> None:
    specs = [
        RenditionSpec("intra", 256, 144, 2_000_000, gop="intra-only"),
        RenditionSpec("ch", 426, 240, 600_000, h264_profile="constrained_high", fps=Fraction(24)),
    ]
    intra, ch = transcode(source[1].data, specs, threads=2)
    p = probe(intra)
    assert len(p.keyframes) == len(p.video_pts) == 60
    p = probe(ch)
    assert p.profile == "High"
    assert len(p.video_pts) == 48
    with av.open(io.BytesIO(ch), format="mpegts") as c:  # no B-frames: decode order is presentation order
        packets = [pk for pk in c.demux(video=0) if pk.size]
    assert all(pk.pts == pk.dts for pk in packets)


def test_source_with_b_frames(media: Path) -> None:
    """An OBS-like source (High profile, B-frames): the rendition still starts at the source's first frame."""
    flv = media / "bframes.flv"
    subprocess.run([
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-t", "4.2",
        "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "60", "-keyint_min", "60",
        "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-f", "flv", str(flv),
    ], check=True, timeout=60)
    seg = cut(flv)[1]
    src = probe(seg.data)
    (out,) = transcode(seg.data, [RenditionSpec("180p", 320, 180, 300_000)])
    p = probe(out)
    assert p.video_pts == src.video_pts
    assert p.audio == []


def test_bad_input_raises_transcode_error(media: Path) -> None:
    spec = [LADDER[0]]
    with pytest.raises(TranscodeError, match="empty"):
        transcode(b"", spec)
    with pytest.raises(TranscodeError):
        transcode(os.urandom(100_000), spec)
    with pytest.raises(TranscodeError):
        transcode(bytes([0x47]) + os.urandom(187) * 100, spec)
    with pytest.raises(TranscodeError, match="no video"):
        transcode((media / "audio.ts").read_bytes(), spec)
    with pytest.raises(TranscodeError, match="exceeds"):
        transcode(b"\x47" * 2000, spec, options=TranscodeOptions(max_bytes=1000))
    with pytest.raises(TranscodeError, match="threads"):
        transcode(b"\x47" * 188, spec, threads=0)
    assert transcode(b"", []) == []
    assert issubclass(TranscodeError, MediaError)


def test_bounds_on_frames_and_pixels(source: list[Segment]) -> None:
    with pytest.raises(TranscodeError, match="frames"):
        transcode(source[1].data, [LADDER[2]], options=TranscodeOptions(max_frames=10))
    with pytest.raises(TranscodeError, match="pixels"):
        transcode(source[1].data, [LADDER[2]], options=TranscodeOptions(max_pixels=640 * 360))


@pytest.mark.parametrize("kwargs, match", [
    ({"width": 0}, "size"),
    ({"bitrate": 10}, "bitrate"),
    ({"fps": Fraction(0)}, "fps"),
    ({"gop": Fraction(-1)}, "gop"),
    ({"h264_profile": "extended"}, "profile"),
    ({"format": "mp4"}, "format"),
    ({"name": ""}, "name"),
])
def test_bad_spec(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"name": "x", "width": 640, "height": 360, "bitrate": 800_000}
    with pytest.raises(TranscodeError, match=match):
        RenditionSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_bad_options() -> None:
    with pytest.raises(TranscodeError, match="preset"):
        TranscodeOptions(preset="placebo")


@pytest.fixture(scope="module", params=["yuv422p", "yuv420p10le", "yuv444p"])
def pro_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(pix_fmt, directory with src.ts and src.flv): 1 s of 640x360 H.264 in a format browsers cannot play."""
    d = tmp_path_factory.mktemp(request.param)
    subprocess.run([
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=sample_rate=48000",
        "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", request.param,
        "-c:a", "aac", "-f", "mpegts", str(d / "src.ts"),
    ], check=True, timeout=60)
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(d / "src.ts"),
                    "-c", "copy", "-f", "flv", str(d / "src.flv")], check=True, timeout=60)
    return request.param, d


@pytest.mark.parametrize("muxer", ["segmenter", "ffmpeg"])
def test_renditions_are_8bit_420_whatever_the_source(pro_source: tuple[str, Path], muxer: str) -> None:
    """4:2:2, 4:4:4 and 10-bit sources give 8-bit 4:2:0 High/Main renditions, which browsers play.

    ``segmenter``: a segment as streamgw's gateway cuts it from RTMP; ``ffmpeg``: MPEG-TS muxed by
    ffmpeg, as a go-livepeer gateway uploads it (its first AAC packet comes ~80 KB in).
    """
    pix_fmt, d = pro_source
    data = cut(d / "src.flv")[0].data if muxer == "segmenter" else (d / "src.ts").read_bytes()
    with av.open(io.BytesIO(data), format="mpegts") as c:
        assert next(c.decode(video=0)).format.name == pix_fmt
    specs = [RenditionSpec("360p", 640, 360, 800_000), RenditionSpec("180p", 320, 180, 300_000, h264_profile="main")]
    for spec, out in zip(specs, transcode(data, specs), strict=True):
        with av.open(io.BytesIO(out), format="mpegts") as c:
            frames = list(c.decode(video=0))
            profile = c.streams.video[0].codec_context.profile
        assert {f.format.name for f in frames} == {"yuv420p"}, spec.name
        assert profile == ("Main" if spec.h264_profile == "main" else "High"), spec.name
        assert (avc_codec_string(out) or "").startswith("avc1.4d" if spec.h264_profile == "main" else "avc1.64")
        assert len(frames) == 30, spec.name  # the whole 1 s source, in one segment either way
