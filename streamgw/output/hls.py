"""HLS output (RFC 8216): sliding-window media playlists per rendition, held in memory.

Layout follows go-livepeer: master ``/stream/NAME.m3u8``, media playlists
``/stream/NAME/RENDITION.m3u8``, segments ``/stream/NAME/RENDITION/PUBLICATION-SEQ.ts``. The
publication token makes segment URLs unique per publication, so they can be cached for long.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streamgw.gateway.hub import Event, StreamEnded, Subscription
from streamgw.segment import Segment

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    duration: float
    pdt: dt.datetime
    discontinuity: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class Variant:
    """One rendition's line in a master playlist."""

    rendition: str
    bandwidth: int
    codecs: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    playable: bool = True  # browsers can decode it (a 4:2:2 or 10-bit source cannot)


class RenditionPlaylist:
    """The last ``window`` segments of one rendition, plus a few that recently slid out."""

    def __init__(self, rendition: str, publication: str, window: int, keep_extra: int = 3) -> None:
        self.rendition = rendition
        self.publication = publication
        self.window = window
        self.keep_extra = keep_extra
        self._entries: collections.deque[_Entry] = collections.deque()
        self._by_name: dict[str, _Entry] = {}
        self._dropped_discontinuities = 0  # discontinuities in entries no longer retained
        self.max_duration = 0.0
        self.ended = False
        self.segments_total = 0
        self._rendered: tuple[tuple[float, bool, int], bytes] | None = None  # (what it depends on, text)

    def name(self, seq: int) -> str:
        """The file name of segment ``seq``."""
        return f"{self.publication}-{seq}.ts"

    def add(self, segment: Segment, pdt: dt.datetime) -> None:
        """Append a segment; segments older than the window plus the extras are dropped."""
        entry = _Entry(segment.seq, segment.duration_seconds, pdt, segment.discontinuity and
                       self.segments_total > 0, segment.data)
        self._entries.append(entry)
        self._by_name[self.name(entry.seq)] = entry
        self.segments_total += 1
        self.max_duration = max(self.max_duration, entry.duration)
        while len(self._entries) > self.window + self.keep_extra:
            old = self._entries.popleft()
            del self._by_name[self.name(old.seq)]
            self._dropped_discontinuities += old.discontinuity

    def first_data(self) -> bytes | None:
        """The bytes of the oldest retained segment (to read codec parameters from)."""
        return self._entries[0].data if self._entries else None

    def segment(self, name: str) -> bytes | None:
        """The bytes of segment ``name`` while it is retained."""
        entry = self._by_name.get(name)
        return entry.data if entry else None

    def render_bytes(self, min_target: float) -> bytes:
        """:meth:`render` encoded, rendered again only when the playlist changed."""
        key = (min_target, self.ended, self.segments_total)
        if self._rendered is None or self._rendered[0] != key:
            self._rendered = (key, self.render(min_target).encode())
        return self._rendered[1]

    def render(self, min_target: float) -> str:
        """The media playlist text."""
        entries = list(self._entries)
        visible = entries[-self.window :]
        # Discontinuities before the first listed segment (RFC 8216 4.3.3.3).
        hidden = entries[: len(entries) - len(visible)]
        disc_seq = self._dropped_discontinuities + sum(e.discontinuity for e in hidden)
        target = max(1, math.ceil(max(self.max_duration, min_target) - 0.001))
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-MEDIA-SEQUENCE:{visible[0].seq if visible else 0}",
        ]
        if disc_seq:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{disc_seq}")
        for e in visible:
            if e.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append("#EXT-X-PROGRAM-DATE-TIME:" + e.pdt.isoformat(timespec="milliseconds"))
            lines.append(f"#EXTINF:{e.duration:.3f},")
            # URIs resolve against the playlist's URL, /stream/NAME/RENDITION.m3u8 (RFC 3986 5.2).
            lines.append(f"{self.rendition}/{self.name(e.seq)}")
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    @property
    def bandwidth(self) -> int:
        """Peak bits per second over the retained segments (EXT-X-STREAM-INF BANDWIDTH)."""
        peak = 0.0
        for e in self._entries:
            if e.duration > 0:
                peak = max(peak, len(e.data) * 8 / e.duration)
        return int(peak)


@dataclass(slots=True)
class _RenditionPlaylists:
    """One stream's playlists, a token naming its current publication in segment URLs."""

    publication: str
    renditions: dict[str, RenditionPlaylist] = field(default_factory=dict)
    anchor_wall: float = 0.0
    anchor_seconds: float = 0.0
    ended: bool = False


class Recorder:
    """Writes every segment to ``DIR/STREAM/SESSION/RENDITION/SEQ.ts`` (off the event loop)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, segment: Segment, publication: str) -> Path:
        """Where ``segment`` is recorded."""
        return self.directory / segment.stream_id / publication / segment.rendition / f"{segment.seq:08d}.ts"

    def write(self, segment: Segment, publication: str) -> None:
        """Write one segment file atomically (blocking)."""
        path = self.path(segment, publication)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(segment.data)
        os.replace(tmp, path)


class HlsOutput:
    """Keeps the playlists of every stream, fed by a hub subscription."""

    def __init__(
        self,
        *,
        window: int = 6,
        target_duration: float = 2.0,
        recorder: Recorder | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.target_duration = target_duration
        self.recorder = recorder
        self._clock = wall_clock
        self._streams: dict[str, _RenditionPlaylists] = {}
        self._record_tasks: set[asyncio.Task[None]] = set()

    def handle(self, event: Event) -> None:
        """Apply one hub event."""
        if isinstance(event, StreamEnded):
            pls = self._streams.get(event.stream_id)
            if pls is not None:
                if event.rendition == "source":
                    pls.ended = True
                rp = pls.renditions.get(event.rendition)
                if rp is not None:
                    rp.ended = True
            return
        self._add(event)

    async def run(self, subscription: Subscription) -> None:
        """Consume ``subscription`` until cancelled."""
        try:
            while True:
                self.handle(await subscription.get())
        finally:
            subscription.close()

    def _add(self, seg: Segment) -> None:
        pls = self._streams.get(seg.stream_id)
        if pls is None or (pls.ended and seg.rendition == "source"):
            # Only a source segment starts a new publication of the name; renditions follow it.
            pls = _RenditionPlaylists(publication=secrets.token_hex(4))
            self._streams[seg.stream_id] = pls
        if seg.rendition == "source" and (not pls.renditions or seg.discontinuity):
            # Anchor wall-clock time: the segment just closed, so it started `duration` ago.
            pls.anchor_wall = self._clock() - seg.duration_seconds
            pls.anchor_seconds = seg.start_seconds
        pdt = dt.datetime.fromtimestamp(
            pls.anchor_wall + seg.start_seconds - pls.anchor_seconds, tz=dt.UTC
        )
        rp = pls.renditions.get(seg.rendition)
        if rp is None:
            rp = RenditionPlaylist(seg.rendition, pls.publication, self.window)
            pls.renditions[seg.rendition] = rp
        rp.add(seg, pdt)
        if self.recorder is not None:
            task = asyncio.ensure_future(asyncio.to_thread(self.recorder.write, seg, pls.publication))
            self._record_tasks.add(task)
            task.add_done_callback(self._recorded)

    def _recorded(self, task: asyncio.Task[None]) -> None:
        self._record_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recording failed: %s", task.exception())

    def forget(self, stream_id: str) -> None:
        """Drop an ended stream's playlists."""
        pls = self._streams.get(stream_id)
        if pls is not None and pls.ended:
            del self._streams[stream_id]

    def media_playlist(self, stream_id: str, rendition: str) -> str | None:
        """The media playlist text, or None when unknown."""
        pls = self._streams.get(stream_id)
        rp = pls.renditions.get(rendition) if pls else None
        return rp.render(self.target_duration) if rp else None

    def media_playlist_bytes(self, stream_id: str, rendition: str) -> bytes | None:
        """The media playlist, encoded (rendered once per change), or None when unknown."""
        pls = self._streams.get(stream_id)
        rp = pls.renditions.get(rendition) if pls else None
        return rp.render_bytes(self.target_duration) if rp else None

    def segment(self, stream_id: str, rendition: str, name: str) -> bytes | None:
        """A segment's bytes while retained, or None."""
        pls = self._streams.get(stream_id)
        rp = pls.renditions.get(rendition) if pls else None
        return rp.segment(name) if rp else None

    def renditions(self, stream_id: str) -> dict[str, RenditionPlaylist]:
        """The renditions a stream has playlists for."""
        pls = self._streams.get(stream_id)
        return dict(pls.renditions) if pls else {}

    async def flush(self) -> None:
        """Wait for pending recordings."""
        if self._record_tasks:
            await asyncio.gather(*self._record_tasks, return_exceptions=True)


def master_playlist(stream_id: str, variants: list[Variant]) -> str:
    """The master playlist of ``stream_id`` (served at /stream/STREAM.m3u8), highest bandwidth first.

    Variants browsers cannot play come last: Safari starts with the first variant listed (Apple's
    HLS authoring spec) and hls.js with the first one whose CODECS its MediaSource accepts, so both
    start on a playable rendition; the variant keeps its true CODECS for players that filter by it.
    """
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: (not v.playable, -v.bandwidth)):
        attrs = [f"BANDWIDTH={max(1, v.bandwidth)}"]
        if v.width and v.height:
            attrs.append(f"RESOLUTION={v.width}x{v.height}")
        if v.codecs:
            attrs.append(f'CODECS="{v.codecs}"')
        if v.fps:
            attrs.append(f"FRAME-RATE={v.fps:.3f}")
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(f"{stream_id}/{v.rendition}.m3u8")
    return "\n".join(lines) + "\n"
