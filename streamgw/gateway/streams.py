"""Live streams: who publishes, what they carry, and their lifecycle across reconnects.

Also what the gateway tells a publisher about its stream (``warnings``, logged once each): video
that browsers cannot play as published, and keyframes further apart than the segment target.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

from streamgw.media.segmenter import MediaInfo

log = logging.getLogger(__name__)

# What browsers decode (hls.js over MSE, Safari, WHEP): H.264 Baseline, Main and High, which are
# 8-bit 4:2:0 by definition (ITU-T H.264 A.2). High 10, High 4:2:2 and High 4:4:4 (FFmpeg's
# profile names) are not decoded by the hardware decoders browsers rely on.
BROWSER_H264_PROFILES = frozenset({"Baseline", "Constrained Baseline", "Main", "High"})
BROWSER_PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})
# Keyframes may come this much later than the segment target before the gateway says so (the
# WHIP copy path asks for an IDR every target duration; the answer takes a round trip).
KEYFRAME_TOLERANCE = 1.25


class StreamState(enum.Enum):
    """Where a stream is in its life."""

    LIVE = "live"  # a publisher is connected
    RECONNECTING = "reconnecting"  # the publisher dropped; waiting out the grace period
    ENDED = "ended"  # finished; playlists carry EXT-X-ENDLIST


def browser_playable(info: MediaInfo) -> bool:
    """Whether browsers can play the stream ``info`` describes as published (its video, if any)."""
    if info.video_codec is None:
        return True  # audio only: AAC plays everywhere
    if info.video_profile is not None and info.video_profile not in BROWSER_H264_PROFILES:
        return False
    return info.pix_fmt is None or info.pix_fmt in BROWSER_PIX_FMTS


def media_warnings(info: MediaInfo, target_duration: float) -> dict[str, str]:
    """What is wrong with a published stream for its viewers, by kind, in words for the API and the page."""
    warnings: dict[str, str] = {}
    if not browser_playable(info):
        what = " ".join(x for x in ("H.264", info.video_profile, f"({info.pix_fmt})" if info.pix_fmt else "") if x)
        warnings["browser"] = (
            f"the video is {what}, which browsers do not play: they need a transcoded 8-bit 4:2:0 "
            "rendition; publish 8-bit 4:2:0 (ffmpeg -pix_fmt yuv420p, OBS color format NV12) to play the source"
        )
    interval = info.keyframe_interval
    if interval is not None and interval > target_duration * KEYFRAME_TOLERANCE:
        frames = f"ffmpeg -g {round(target_duration * info.fps)}, " if info.fps else "ffmpeg -g, "
        warnings["keyframes"] = (
            f"keyframes come every {interval:.1f} s, more than the {target_duration:g} s segment target: "
            f"segments last {interval:.1f} s and viewers wait longer for video; set the encoder's keyframe "
            f"interval to {target_duration:g} s ({frames}OBS keyframe interval)"
        )
    return warnings


@dataclass(slots=True)
class LiveStream:
    """One stream name's current publication (a new one starts when an ended name is reused)."""

    name: str
    publisher: str
    state: StreamState = StreamState.LIVE
    info: MediaInfo | None = None
    next_seq: int = 0
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    bytes_in: int = 0
    segment_bytes: int = 0
    media_seconds: float = 0.0
    segments: int = 0
    reconnects: int = 0
    last_error: str | None = None
    target_duration: float = 2.0  # the segmenter's target, seconds
    logged: set[str] = field(default_factory=set)  # kinds of warning already logged

    def set_info(self, info: MediaInfo) -> None:
        """Take what the segmenter found; log each kind of warning once per publication."""
        self.info = info
        for kind, text in media_warnings(info, self.target_duration).items():
            if kind not in self.logged:
                self.logged.add(kind)
                log.warning("stream %s: %s", self.name, text)

    @property
    def browser_playable(self) -> bool:
        """Whether browsers can play the source rendition (True while nothing is known yet)."""
        return self.info is None or browser_playable(self.info)

    @property
    def warnings(self) -> list[str]:
        """What is wrong with the published stream for its viewers, in words."""
        return list(media_warnings(self.info, self.target_duration).values()) if self.info else []

    @property
    def uptime(self) -> float:
        """Seconds since the stream started (until it ended)."""
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return end - self.started

    @property
    def bitrate(self) -> float:
        """Mean published bitrate in bits per second, over the media cut so far."""
        return self.segment_bytes * 8 / self.media_seconds if self.media_seconds > 0 else 0.0
