"""Live streams: who publishes, what they carry, and their lifecycle across reconnects."""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field

from streamgw.media.segmenter import MediaInfo


class StreamState(enum.Enum):
    """Where a stream is in its life."""

    LIVE = "live"  # a publisher is connected
    RECONNECTING = "reconnecting"  # the publisher dropped; waiting out the grace period
    ENDED = "ended"  # finished; playlists carry EXT-X-ENDLIST


@dataclass(slots=True)
class LiveStream:
    """One stream name's current publication (a new one starts when an ended name is reused)."""

    name: str
    publisher: str
    session: str = field(default_factory=lambda: secrets.token_hex(4))
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

    @property
    def uptime(self) -> float:
        """Seconds since the stream started (until it ended)."""
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return end - self.started

    @property
    def bitrate(self) -> float:
        """Mean published bitrate in bits per second, over the media cut so far."""
        return self.segment_bytes * 8 / self.media_seconds if self.media_seconds > 0 else 0.0
