"""Inspecting HLS output with PyAV (what a player would decode), and cutting test media as the gateway does."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

import av

from streamgw.ingest.rtmp.flv import TAG_AUDIO, TAG_VIDEO, FlvWriter
from streamgw.media.flv_packets import FlvPackets
from streamgw.media.segmenter import MediaInfo, SegmentCutter, Segmenter, SegmenterSettings
from streamgw.segment import Segment


def cut_bytes(data: bytes, settings: SegmenterSettings | None = None, *,
              into: list[Segment] | None = None) -> tuple[list[Segment], list[MediaInfo]]:
    """Segment a whole published byte stream with streamgw's segmenter (FFmpeg demuxes it): the
    segments (also appended to ``into`` as they come) and every info update."""
    segments: list[Segment] = [] if into is None else into
    infos: list[MediaInfo] = []
    Segmenter("t", settings or SegmenterSettings(), first_seq=0, discontinuity=False, on_info=infos.append,
              on_segment=lambda s, _latency: segments.append(s)).run(io.BytesIO(data))
    return segments, infos


def cut_flv_tags(tags: list[tuple[int, int, bytes]], settings: SegmenterSettings | None = None, *,
                 into: list[Segment] | None = None) -> tuple[list[Segment], list[MediaInfo]]:
    """Segment FLV tags (RTMP messages) as the RTMP ingest does: its FlvWriter holds the start,
    FlvPackets makes the packets (FFmpeg demuxes only the start). Script tags are left out."""
    settings = settings or SegmenterSettings()
    segments: list[Segment] = [] if into is None else into
    infos: list[MediaInfo] = []
    cutter = SegmentCutter("t", settings, first_seq=0, discontinuity=False, on_info=infos.append,
                           on_segment=lambda s, _latency: segments.append(s))
    writer = FlvWriter()
    packets = FlvPackets(settings, "t")
    now = time.monotonic()
    try:
        for tag_type, ts, body in tags:
            if tag_type not in (TAG_AUDIO, TAG_VIDEO):
                continue
            if not writer.started:
                if start := writer.media(tag_type, ts, body):
                    packets.start(start, now)
            elif writer.admit(tag_type):
                packets.push(cutter, [(tag_type, ts, body)], now)
        if start := writer.flush():
            packets.start(start, now)
        packets.end(cutter, now)
    finally:
        packets.close()
    return segments, infos


@dataclass
class SegmentProbe:
    """What one MPEG-TS segment holds, decoded on its own."""

    first_ts_pid: int
    video_start: float
    video_end: float
    audio_start: float | None
    video_frames: int
    audio_frames: int
    first_frame_key: bool
    width: int
    height: int


def probe_segment(data: bytes) -> SegmentProbe:
    """Decode a segment alone (no state from earlier segments) and summarise it."""
    assert data[0] == 0x47, "not MPEG-TS"
    pid = ((data[1] & 0x1F) << 8) | data[2]
    with av.open(io.BytesIO(data), format="mpegts") as c:
        assert c.streams.video, "no video stream"
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        vts: list[float] = []
        ats: list[float] = []
        first_key = None
        width = height = 0
        for frame in c.decode(*(s for s in (v, a) if s is not None)):
            if isinstance(frame, av.VideoFrame):
                if first_key is None:
                    first_key = frame.key_frame
                vts.append(float(frame.pts * frame.time_base))
                width, height = frame.width, frame.height
            else:
                ats.append(float(frame.pts * frame.time_base))
    assert vts, "no decodable video frame"
    step = (vts[-1] - vts[0]) / max(1, len(vts) - 1)
    return SegmentProbe(pid, min(vts), max(vts) + step, min(ats) if ats else None, len(vts), len(ats),
                        bool(first_key), width, height)


def decode_errors(data: bytes) -> str:
    """What ffmpeg reports decoding a segment alone, every frame as it comes ('' when clean).

    A segment that starts without its parameter sets or away from an IDR gives
    ``non-existing PPS 0 referenced``; PyAV's decoder hides those and returns fewer frames.
    """
    # Decoded pictures are renumbered (setpts=N) before the null output, which would otherwise
    # report the publisher's own timestamps (two a millisecond apart; B-frames stamped out of
    # order by a late live source) as its errors: only decoding is checked here.
    proc = subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-v", "error", "-nostdin",
                           "-i", "pipe:0", "-vf", "setpts=N", "-fps_mode", "passthrough", "-f", "null", "-"],
                          input=data, capture_output=True, timeout=60)
    errors = proc.stderr.decode(errors="replace").strip()
    return errors or ("" if proc.returncode == 0 else f"ffmpeg exited {proc.returncode}")


@dataclass
class Playlist:
    """A parsed media playlist."""

    target_duration: int
    media_sequence: int
    discontinuity_sequence: int
    entries: list[tuple[float, str, bool, str | None]]  # (duration, uri, discontinuity, pdt)
    ended: bool


def parse_playlist(text: str) -> Playlist:
    """Parse the subset of RFC 8216 the gateway writes."""
    lines = text.strip().splitlines()
    assert lines[0] == "#EXTM3U"
    target = msn = dsn = 0
    entries: list[tuple[float, str, bool, str | None]] = []
    disc = False
    pdt: str | None = None
    dur = 0.0
    for line in lines[1:]:
        if m := re.match(r"#EXT-X-TARGETDURATION:(\d+)$", line):
            target = int(m.group(1))
        elif m := re.match(r"#EXT-X-MEDIA-SEQUENCE:(\d+)$", line):
            msn = int(m.group(1))
        elif m := re.match(r"#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)$", line):
            dsn = int(m.group(1))
        elif line == "#EXT-X-DISCONTINUITY":
            disc = True
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = line.split(":", 1)[1]
        elif m := re.match(r"#EXTINF:([\d.]+),", line):
            dur = float(m.group(1))
        elif not line.startswith("#"):
            entries.append((dur, line, disc, pdt))
            disc, pdt = False, None
    return Playlist(target, msn, dsn, entries, "#EXT-X-ENDLIST" in lines)


def seq_of(uri: str) -> int:
    """The sequence number in a segment URI 'RENDITION/SESSION-SEQ.ts'."""
    return int(uri.rsplit("-", 1)[1].split(".")[0])
