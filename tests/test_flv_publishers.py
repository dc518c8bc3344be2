"""FLV as publishers other than ffmpeg send it: what GStreamer's flvmux and librtmp-based clients do.

Each case is an ffmpeg-made FLV rewritten tag by tag into what such a publisher sends (written
from the FLV and H.264 specifications here, not with streamgw's own writer): a keyframe flag on a
picture that is not an IDR, parameter sets only in the sequence header or in-band with an AUD and
SEI first, a sequence header that changes mid-stream, two pictures stamped in the same
millisecond, audio whose first tag comes after probing, and video that stops while audio goes on.
Every segment must decode on its own, and nothing the publisher sent may be lost.
"""

from __future__ import annotations

import logging
import struct
import subprocess
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from streamgw.errors import KeyframeTimeout
from streamgw.ingest.rtmp import chunk
from streamgw.ingest.rtmp.flv import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, FlvWriter
from streamgw.media.segmenter import MediaInfo, SegmenterSettings
from streamgw.segment import Segment
from tests.conftest import FFMPEG, RunningGateway
from tests.media import cut_bytes, cut_flv_tags, decode_errors, parse_playlist, probe_segment
from tests.rtmpclient import open_client, read_flv_tags

Tag = tuple[int, int, bytes]
AUD = b"\x09\xf0"


def _flv(path: Path, *, size: str = "320x180", seconds: float = 5, start: float = 0, profile: str = "high",
         video: str = "", x264: list[str] | None = None) -> list[Tag]:
    """The tags of an ffmpeg-made FLV: testsrc2 (then the ``video`` filters) in H.264 (an IDR every
    second, parameter sets only in the sequence header) and a 48 kHz AAC tone."""
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30{video}", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=48000", "-t", str(seconds), "-c:v", "libx264",
                    *(x264 or ["-preset", "ultrafast"]), "-profile:v", profile, "-g", "30", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-output_ts_offset", str(start), "-f", "flv", str(path)], check=True, timeout=60)
    return read_flv_tags(path.read_bytes())


def _file(tags: list[Tag]) -> bytes:
    """An FLV file (Adobe FLV 10.1 annex E) of ``tags``."""
    out = bytearray(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00")
    for tag_type, ts, body in tags:
        out += bytes([tag_type]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
        out += bytes([(ts >> 24) & 0xFF, 0, 0, 0]) + body + struct.pack(">I", len(body) + 11)
    return bytes(out)


def _nals(body: bytes) -> list[bytes]:
    """The NAL units of an FLV AVC NALU tag (4-byte lengths, as ffmpeg writes them)."""
    units, pos = [], 5
    while pos + 4 <= len(body):
        n = int.from_bytes(body[pos:pos + 4], "big")
        units.append(body[pos + 4:pos + 4 + n])
        pos += 4 + n
    return units


def _avc(body: bytes, units: list[bytes], *, key: bool | None = None) -> bytes:
    """``body`` with its NAL units replaced (and its FrameType set when ``key`` is given)."""
    head = body[:5]
    if key is not None:
        head = bytes([(0x10 if key else 0x20) | (head[0] & 0x0F)]) + head[1:]
    return head + b"".join(len(u).to_bytes(4, "big") + u for u in units)


def _is_picture(tag: Tag) -> bool:
    return tag[0] == TAG_VIDEO and tag[2][1] == 1


def _is_idr(tag: Tag) -> bool:
    return _is_picture(tag) and any(u[0] & 0x1F == 5 for u in _nals(tag[2]))


def _parameter_sets(tags: list[Tag]) -> list[bytes]:
    """SPS and PPS of the (first) AVC sequence header, as NAL units."""
    rec = next(body for t, _, body in tags if t == TAG_VIDEO and body[1] == 0)[5:]
    sps_len = int.from_bytes(rec[6:8], "big")
    sps = rec[8:8 + sps_len]
    pps_at = 8 + sps_len + 1
    pps = rec[pps_at + 2:pps_at + 2 + int.from_bytes(rec[pps_at:pps_at + 2], "big")]
    return [sps, pps]


def _pictures(tags: list[Tag]) -> int:
    return sum(_is_picture(t) for t in tags)


def _check_each_decodes(segments: list[Segment]) -> None:
    for s in segments:
        errors = decode_errors(s.data)
        assert not errors, f"segment {s.seq} does not decode on its own: {errors[:300]}"
        assert probe_segment(s.data).first_frame_key, f"segment {s.seq} does not start with a keyframe"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Tag]:
    return _flv(tmp_path_factory.mktemp("flv") / "src.flv")


Cut = Callable[..., tuple[list[Segment], list[MediaInfo]]]


def _demuxed(tags: list[Tag], settings: SegmenterSettings | None = None, *,
             into: list[Segment] | None = None) -> tuple[list[Segment], list[MediaInfo]]:
    return cut_bytes(_file(tags), settings, into=into)


@pytest.fixture(params=[_demuxed, cut_flv_tags], ids=["ffmpeg-demuxed", "rtmp-packets"])
def cut(request: pytest.FixtureRequest) -> Cut:
    """Each case is cut both ways: an FLV byte stream demuxed by FFmpeg (files, tests), and RTMP
    messages made into packets directly (the RTMP ingest)."""
    return request.param  # type: ignore[no-any-return]


def _aud_sei_first(tags: list[Tag]) -> list[Tag]:
    """An AUD and an SEI in front of every picture's slices (many hardware encoders)."""
    sei = next(u for t in tags if _is_idr(t) for u in _nals(t[2]) if u[0] & 0x1F == 6)
    return [(t, ts, _avc(b, [AUD, sei, *[u for u in _nals(b) if u[0] & 0x1F != 6]]))
            if _is_picture((t, ts, b)) else (t, ts, b) for t, ts, b in tags]


def _in_band(tags: list[Tag]) -> list[Tag]:
    """SPS and PPS repeated in-band in front of each IDR, after an AUD (GStreamer's x264enc)."""
    sets = _parameter_sets(tags)
    return [(t, ts, _avc(b, [AUD, *sets, *_nals(b)])) if _is_idr((t, ts, b)) else (t, ts, b)
            for t, ts, b in tags]


@pytest.mark.parametrize("variant", [lambda tags: tags, _aud_sei_first, _in_band],
                         ids=["sequence-header-only", "aud-sei-first", "in-band-parameter-sets"])
def test_every_segment_starts_at_an_idr_with_its_parameter_sets(source: list[Tag], cut: Cut,
                                                                variant: Callable[[list[Tag]], list[Tag]]) -> None:
    tags = variant(source)
    segments, _ = cut(tags)
    assert len(segments) == 3  # 5 s, IDR every second, 2 s segments
    _check_each_decodes(segments)
    assert sum(probe_segment(s.data).video_frames for s in segments) == _pictures(tags)


def test_keyframes_that_are_not_idrs_start_no_segment(tmp_path: Path, cut: Cut) -> None:
    """x264 with scene cuts (GStreamer's x264enc does the same in front of its IDRs) sends I
    pictures that are not IDRs, and FFmpeg's demuxer flags them as keyframes. A segment cut there
    has no parameter sets (the muxer adds them in front of IDRs only) and does not decode alone:
    ``non-existing PPS 0 referenced``. With 2.1 s segments the first keyframe past the target is
    such a picture (2.000 s; the IDR is at 1.967 s)."""
    scene_cut = ",drawbox=w=iw:h=ih:color=white:t=fill:enable='eq(mod(n\\,30)\\,29)'"
    tags = _flv(tmp_path / "scenes.flv", seconds=5.5, video=scene_cut, x264=["-preset", "veryfast", "-bf", "0"])
    base = next(ts for t, ts, b in tags if _is_picture((t, ts, b)))  # past the AAC priming
    idrs = [ts - base for t, ts, b in tags if _is_idr((t, ts, b))]
    assert idrs[1:3] == [967, 1967]  # the white picture: an IDR, and the I picture after it
    segments, _ = cut(tags, SegmenterSettings(target_duration=Fraction(21, 10)))
    _check_each_decodes(segments)
    assert [s.start_pts - base for s in segments] == [0, 2967, 4967]
    assert sum(probe_segment(s.data).video_frames for s in segments) == _pictures(tags)


def test_an_open_gop_stream_is_cut_at_its_i_pictures(tmp_path: Path, cut: Cut,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """x264's open GOP sends no IDR after the first: after twice the target a segment starts at an
    I picture, with the parameter sets put in front of it."""
    tags = _flv(tmp_path / "open.flv", x264=["-preset", "veryfast", "-bf", "2", "-x264-params", "open-gop=1"])
    assert sum(_is_idr(t) for t in tags) == 1
    with caplog.at_level(logging.WARNING, logger="streamgw.media.segmenter"):
        segments, _ = cut(tags)
    assert len(segments) == 2 and segments[0].duration_seconds == pytest.approx(4.0)
    assert "non-existing PPS" not in decode_errors(segments[1].data)
    assert probe_segment(segments[1].data).first_frame_key
    assert any("no IDR picture for 3.8 s" in r.getMessage() for r in caplog.records)


def test_a_sequence_header_that_changes_mid_stream(tmp_path: Path, cut: Cut) -> None:
    """2 s of 320x180 High, then (new AVC sequence header, new SPS/PPS) 4 s of 640x360 Main: each
    segment carries the parameter sets in force, and the new size starts a discontinuity."""
    first = _flv(tmp_path / "a.flv", seconds=2)
    second = _flv(tmp_path / "b.flv", size="640x360", seconds=4, start=2, profile="main")
    joined = first + [t for t in second if t[0] == TAG_VIDEO]  # one audio track: the first's
    segments, infos = cut(joined)
    _check_each_decodes(segments)
    sizes = [(probe_segment(s.data).width, probe_segment(s.data).height) for s in segments]
    assert sizes == [(320, 180), (640, 360), (640, 360)]
    assert [s.discontinuity for s in segments] == [False, True, False]
    assert (infos[-1].width, infos[-1].height) == (640, 360)


def test_pictures_stamped_in_the_same_millisecond_are_all_kept(source: list[Tag], cut: Cut,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A live GStreamer source on a loaded machine stamps two pictures alike; both are kept."""
    tags = list(source)
    pictures = [i for i, t in enumerate(tags) if _is_picture(t)]
    for i in pictures[10:60:7]:  # inside segments, never an IDR's own stamp
        prev = max(j for j in pictures if j < i)
        t, _, body = tags[i]
        tags[i] = (t, tags[prev][1], body)
    with caplog.at_level(logging.WARNING, logger="streamgw.media.segmenter"):
        segments, _ = cut(tags)
    _check_each_decodes(segments)
    assert sum(probe_segment(s.data).video_frames for s in segments) == _pictures(tags)
    assert any("kept one tick later" in r.getMessage() for r in caplog.records)


def test_the_tail_of_a_stream_whose_video_stops_is_kept(tmp_path: Path, cut: Cut) -> None:
    """Video stops at 2.5 s, audio goes on: the stream ends at the keyframe timeout, and what came
    since the last cut is written as its last segment first."""
    tags = _flv(tmp_path / "long.flv", seconds=8)
    cut_at = 2500
    tags = [t for t in tags if t[0] != TAG_VIDEO or t[2][1] == 0 or t[1] < cut_at]
    segments: list[Segment] = []
    with pytest.raises(KeyframeTimeout):
        cut(tags, SegmenterSettings(keyframe_timeout=Fraction(3)), into=segments)
    assert len(segments) == 2
    _check_each_decodes(segments)
    assert sum(probe_segment(s.data).video_frames for s in segments) == _pictures(tags) == 75
    tail = probe_segment(segments[-1].data)
    assert tail.audio_frames > (5.0 - 2.0) * 48000 / 1024 - 2  # audio on to the timeout (2 s + 3 s)
    assert segments[-1].duration_seconds == pytest.approx(3.0, abs=0.05)


def test_rtmp_packets_are_those_ffmpeg_demuxes(tmp_path: Path, source: list[Tag]) -> None:
    """The RTMP ingest makes packets from the messages itself (FFmpeg demuxes only the start): the
    segments are byte for byte those of FFmpeg's FLV demuxer, over B-frames, in-band parameter
    sets, a 44.1 kHz tone and a new sequence header mid-stream."""
    bframes = _flv(tmp_path / "b.flv", seconds=4, x264=["-preset", "veryfast", "-bf", "3"])
    first = _flv(tmp_path / "c.flv", seconds=2)
    resized = first + [t for t in _flv(tmp_path / "d.flv", size="640x360", seconds=3, start=2)
                       if t[0] == TAG_VIDEO]
    for tags in (source, _in_band(source), bframes, resized):
        direct, direct_infos = cut_flv_tags(tags)
        demuxed, demuxed_infos = _demuxed(tags)
        assert [s.data for s in direct] == [s.data for s in demuxed]
        assert [(s.start_pts, s.duration, s.discontinuity) for s in direct] == \
            [(s.start_pts, s.duration, s.discontinuity) for s in demuxed]
        assert (direct_infos[-1].width, direct_infos[-1].height, direct_infos[-1].sample_rate) == \
            (demuxed_infos[-1].width, demuxed_infos[-1].height, demuxed_infos[-1].sample_rate)


# ---- the FLV the RTMP ingest writes -----------------------------------------------------------


def _writer_out(writer: FlvWriter, tags: list[Tag]) -> list[Tag]:
    data = b"".join(writer.media(t, ts, body) for t, ts, body in tags) + writer.flush()
    return read_flv_tags(data) if data else []


def test_writer_puts_every_streams_first_tag_ahead_of_held_media() -> None:
    video_config = (TAG_VIDEO, 0, b"\x17\x00\x00\x00\x00config")
    key = (TAG_VIDEO, 0, b"\x17\x01\x00\x00\x00" + bytes(40_000))
    pictures = [(TAG_VIDEO, ms, b"\x27\x01\x00\x00\x00pic") for ms in range(33, 500, 33)]
    audio_config = (TAG_AUDIO, 480, b"\xaf\x00\x11\x90")
    audio = (TAG_AUDIO, 480, b"\xaf\x01frame")
    writer = FlvWriter()
    assert not writer.media(*video_config) and not writer.media(*key)
    out = _writer_out(writer, [*pictures, audio_config, audio, (TAG_VIDEO, 520, b"\x27\x01\x00\x00\x00x")])
    assert out[:2] == [video_config, audio_config]
    assert out[2:] == [key, *pictures, audio, (TAG_VIDEO, 520, b"\x27\x01\x00\x00\x00x")]
    assert writer.streams == {TAG_AUDIO, TAG_VIDEO} and writer.late_tags == 0


def test_writer_waits_only_for_announced_streams_and_bounds_the_wait() -> None:
    video_only = FlvWriter()
    video_only.metadata(b"\x02\x00\x0aonMetaData\x05", audio=False, video=True)
    first = video_only.media(TAG_VIDEO, 0, b"\x17\x00\x00\x00\x00c")
    assert first.startswith(b"FLV\x01\x01")  # the header names video only; nothing is held
    assert [t for t, _, _ in read_flv_tags(first)] == [TAG_SCRIPT, TAG_VIDEO]
    assert video_only.media(TAG_AUDIO, 10, b"\xaf\x00\x11\x90") == b"" and video_only.late_tags == 1

    waiting = FlvWriter(hold_ms=1000)
    held = [waiting.media(TAG_VIDEO, ms, b"\x27\x01\x00\x00\x00p") for ms in range(0, 1000, 100)]
    assert not any(held)
    released = waiting.media(TAG_VIDEO, 1000, b"\x27\x01\x00\x00\x00p")  # 1 s of media, no audio
    assert released.startswith(b"FLV\x01\x01") and len(read_flv_tags(released)) == 11
    assert waiting.media(TAG_AUDIO, 1010, b"\xaf\x00\x11\x90") == b"" and waiting.late_tags == 1

    by_size = FlvWriter(hold_bytes=100_000)
    assert by_size.media(TAG_VIDEO, 0, bytes(60_000)) == b""
    assert by_size.media(TAG_VIDEO, 33, bytes(60_000))


def _publish_tags(gw: RunningGateway, name: str, tags: list[Tag], *, dropped: bool = False) -> None:
    """Publish ``tags`` as fast as the socket takes them; ``dropped``: the gateway may hang up
    before the last ones (the stream fails on the way)."""
    with open_client(gw.rtmp_port) as client:
        assert client.publish(name) == "NetStream.Publish.Start"
        client.set_chunk_size(65536)
        try:
            for t, ts, body in tags:
                client.send_media(chunk.AUDIO if t == TAG_AUDIO else chunk.VIDEO, ts, body)
            client.delete_stream()
        except ConnectionError:
            if not dropped:
                raise
        time.sleep(0.2)


def _segments_of(gw: RunningGateway, name: str) -> list[bytes]:
    gw.wait_for(lambda: gw.get(f"/api/streams/{name}").json()["state"] == "ended", what="stream end")
    pl = parse_playlist(gw.get(f"/stream/{name}/source.m3u8").text)
    return [gw.get(f"/stream/{name}/{uri}").content for _, uri, _, _ in pl.entries]


@pytest.mark.parametrize("audio_from", [500, 3000], ids=["audio-after-probing", "audio-after-the-hold"])
def test_audio_whose_first_tag_comes_late_over_rtmp(gateway: RunningGateway, source: list[Tag], audio_from: int,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Audio's first tag (its sequence header) arrives after 0.5 s of video, past the point where
    probing ends: it used to be missed, and the end of input then crashed the segmenter (the last
    segment lost). Now the ingest holds the start for it; audio later than the hold (2 s) is left
    out, with a warning, and the video plays whole."""
    audio_config = next(t for t in source if t[0] == TAG_AUDIO and t[2][1] == 0)
    tags = [t for t in source if t[0] != TAG_AUDIO or t[1] >= audio_from]
    first_audio = next(i for i, t in enumerate(tags) if t[0] == TAG_AUDIO)
    tags.insert(first_audio, (TAG_AUDIO, tags[first_audio][1], audio_config[2]))
    with caplog.at_level(logging.WARNING):
        _publish_tags(gateway, "late", tags)
        segments = _segments_of(gateway, "late")
    assert gateway.get("/api/streams/late").json()["last_error"] is None
    assert len(segments) == 3
    probes = [probe_segment(s) for s in segments]
    assert sum(p.video_frames for p in probes) == _pictures(tags)
    if audio_from < 2000:
        assert all(p.audio_frames > 0 for p in probes)
        assert probes[0].audio_start == pytest.approx(audio_from / 1000, abs=0.05)
    else:
        assert not any(p.audio_frames for p in probes)
        assert any("audio started after the stream's start" in r.getMessage() for r in caplog.records)


def test_the_tail_of_a_dropped_rtmp_stream_reaches_the_playlist(gateway_factory: Callable[..., RunningGateway],
                                                                tmp_path: Path) -> None:
    gw = gateway_factory(keyframe_timeout=3)
    tags = [t for t in _flv(tmp_path / "long.flv", seconds=8)
            if t[0] != TAG_VIDEO or t[2][1] == 0 or t[1] < 2500]
    _publish_tags(gw, "cam", tags, dropped=True)
    segments = _segments_of(gw, "cam")
    assert "no keyframe for 3.0 s" in (gw.get("/api/streams/cam").json()["last_error"] or "")
    assert sum(probe_segment(s).video_frames for s in segments) == _pictures(tags)


def test_what_the_segmenter_fixed_is_counted_in_metrics(gateway: RunningGateway, source: list[Tag]) -> None:
    tags = list(source)
    pictures = [i for i, t in enumerate(tags) if _is_picture(t)]
    for i in pictures[10:40:10]:
        prev = max(j for j in pictures if j < i)
        tags[i] = (tags[i][0], tags[prev][1], tags[i][2])
    _publish_tags(gateway, "dup", tags)
    _segments_of(gateway, "dup")
    line = next(x for x in gateway.get("/metrics").text.splitlines()
                if x.startswith('streamgw_segmenter_events_total{what="retimed_packets"}'))
    assert float(line.split()[1]) == 3
