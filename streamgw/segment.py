"""The core value of streamgw: a keyframe-aligned, self-contained MPEG-TS chunk."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, slots=True)
class Segment:
    """A keyframe-aligned, self-contained MPEG-TS chunk of one rendition of one stream.

    ``start_pts`` and ``duration`` are integers in ``time_base`` units; time is never a float
    inside the pipeline. ``seq`` is gap-free per stream from 0 and renditions keep the source seq.
    ``discontinuity`` is true on the first segment after the stream really broke (a publisher
    reconnect): timestamps may jump there.
    """

    stream_id: str
    seq: int
    rendition: str
    start_pts: int
    duration: int
    time_base: Fraction
    data: bytes
    discontinuity: bool = False

    @property
    def duration_seconds(self) -> float:
        """The duration in seconds, for playlists and logs only."""
        return float(self.duration * self.time_base)

    @property
    def start_seconds(self) -> float:
        """The start time in seconds, for playlists and logs only."""
        return float(self.start_pts * self.time_base)
