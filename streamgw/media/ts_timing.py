"""Where an MPEG-TS segment made elsewhere (a live AI orchestrator's output) lies in time: its
first timestamp and its duration, read by demuxing only (no decoding). Blocking: call it off the
event loop."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av

from streamgw.errors import MediaError

TS_TIME_BASE = Fraction(1, 90000)


@dataclass(frozen=True, slots=True)
class SegmentTiming:
    """The segment's start and duration in ``time_base`` units, and whether it has video."""

    start_pts: int
    duration: int
    time_base: Fraction
    has_video: bool


def segment_timing(data: bytes) -> SegmentTiming:
    """The span of ``data``'s packets on the 90 kHz clock (video's when it has video, else
    every stream's); raises :class:`MediaError` when nothing in it can be demuxed."""
    start: int | None = None
    end: int | None = None
    has_video = False
    try:
        with av.open(io.BytesIO(data), "r", format="mpegts") as container:
            has_video = bool(container.streams.video)
            streams = container.streams.video[:1] if has_video else list(container.streams)
            for packet in container.demux(*streams):
                if packet.pts is None or packet.time_base is None:
                    continue
                tb = Fraction(packet.time_base)
                pts = int(packet.pts * tb / TS_TIME_BASE)
                length = int((packet.duration or 0) * tb / TS_TIME_BASE)
                start = pts if start is None else min(start, pts)
                end = pts + length if end is None else max(end, pts + length)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"the segment cannot be demuxed: {exc}") from exc
    if start is None or end is None:
        raise MediaError("the segment has no timed packets")
    return SegmentTiming(start, max(1, end - start), TS_TIME_BASE, has_video)
