"""Turns publishers into segment streams: each publisher's input cut on a shared pool of segmenter threads.

    RTMP session (event loop) ──FLV tags──▶ Publisher ─┐ batches, in order per publisher
    WHIP muxer thread ──────────packets───▶ Publisher ─┴▶ segmenter pool (a few threads for all
                                                          streams): SegmentCutter ──▶ hub (loop)

A publisher's input is a series of jobs run on its :class:`SegmentCutter` in order, one at a time,
on whichever pool thread is free. Jobs are handed over in batches: at once when one may close a
segment (a keyframe), otherwise when ``batch_bytes`` or ``batch_interval`` are reached, so that
a stream wakes a pool thread about once per keyframe interval instead of on every read (each
hand-over costs a thread wake-up and a cold cache: at 1 s the pool spent ~25 % more per packet).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamgw.errors import BadStreamName, CapacityError, MediaError, StreamBusy, StreamgwError
from streamgw.gateway.hub import Hub, StreamEnded
from streamgw.gateway.streams import LiveStream, StreamState
from streamgw.media.flv_packets import FlvPackets, FlvTag
from streamgw.media.segmenter import MediaInfo, SegmentCutter, SegmenterSettings
from streamgw.segment import Segment

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    """Limits and timings of publishing."""

    segmenter: SegmenterSettings = SegmenterSettings()
    reconnect_grace: float = 10.0
    ended_retention: float = 60.0
    max_streams: int = 100
    max_backlog_bytes: int = 64 * 1024 * 1024  # handed over and not yet cut, per publisher
    segmenter_threads: int = 1  # the pool every publisher's cut runs on (more contend for the GIL)
    batch_bytes: int = 4 * 1024 * 1024  # handed over at once past this, or past batch_interval s
    batch_interval: float = 3.0


class SegmentObserver:
    """Hooks for metrics: called on the event loop for each segment."""

    def on_segment(self, segment: Segment, latency: float) -> None:
        """A source segment was cut ``latency`` seconds after its closing bytes arrived."""


SEGMENTER_COUNTS = ("retimed_packets", "dropped_packets", "timestamp_resets", "recovery_cuts")
"""What segmenters count of what publishers send (see :class:`SegmentCutter`); :meth:`Publishers.segmenter_counts`."""

CutterJob = Callable[[SegmentCutter], None]
"""Work on a publisher's cutter, run on a pool thread (PyAV allowed)."""


class Publisher:
    """One publisher's input: jobs on its segment cutter, batched, run in order on the shared pool.

    :meth:`feed` may be called from any one thread (the event loop for RTMP, the muxer thread for
    WHIP); :meth:`close` from the event loop once feeding is over.
    """

    def __init__(self, registry: Publishers, stream: LiveStream, cutter: SegmentCutter) -> None:
        self.registry = registry
        self.stream = stream
        self.cutter = cutter
        self.error: StreamgwError | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.clean = False
        self._loop = asyncio.get_running_loop()
        self._settings = registry.settings
        self._pending: list[CutterJob] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._lock = threading.Lock()  # the lane: jobs handed over, whether a pool thread runs them
        self._lane: collections.deque[tuple[list[CutterJob], int]] = collections.deque()
        self._running = False
        self._backlog = 0  # bytes handed over and not yet cut
        self._flv: FlvPackets | None = None
        self._flv_tags: list[FlvTag] = []  # RTMP messages not yet made a job (one job per hand-over)
        self._flv_arrival = 0.0
        self._told = False  # the registry knows the cut is over
        self.low_latency = False  # every feed handed over at once (a stream streamed while cut)

    def stream_parts(self, on_part: Callable[[int, bytes, bool], None] | None) -> None:
        """Have each next segment streamed while it is cut: ``on_part(seq, data, first)`` on the
        event loop for every write of its muxer (None: stop). Input is then handed over as it
        comes, not batched."""
        loop = self._loop
        if on_part is None:
            self.cutter.on_part = None
            self.low_latency = False
            return

        def threadsafe(seq: int, data: bytes, first: bool) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(on_part, seq, data, first)

        self.low_latency = True
        self.cutter.on_part = threadsafe

    # -- input

    def feed(self, job: CutterJob, *, size: int, urgent: bool) -> None:
        """Run ``job`` on the cutter after those before it; ``size`` bytes of media; ``urgent``
        when it may close a segment. Raises the :class:`StreamgwError` the stream failed with."""
        if self.error is not None:
            raise self.error
        self._take_flv_tags()
        self._pending.append(job)
        self._added(size, urgent, time.monotonic())

    def _added(self, size: int, urgent: bool, now: float) -> None:
        self.stream.bytes_in += size  # read by /metrics when scraped: no metric call per read
        if not self._pending_bytes:
            self._pending_since = now
        self._pending_bytes += size
        if (urgent or self.low_latency or self._pending_bytes >= self._settings.batch_bytes
                or now - self._pending_since >= self._settings.batch_interval):
            self._hand_over()

    def flv_start(self, data: bytes, first_arrival: float) -> None:
        """RTMP: the held start of the stream as FLV bytes (header, metadata, first tags)."""
        flv = FlvPackets(self._settings.segmenter, self.stream.name)
        self._flv = flv
        self.feed(lambda _cutter: flv.start(data, first_arrival), size=len(data), urgent=True)

    def flv_tags(self, tags: list[FlvTag], *, size: int, urgent: bool) -> None:
        """RTMP: audio and video messages after the start (``size`` bytes of bodies); ``urgent``
        when one is a keyframe. Messages of several reads go to the cutter as one job."""
        if self.error is not None:
            raise self.error
        if self._flv is None:
            raise MediaError("FLV tags before the start of the stream")
        self._flv_tags += tags
        self._flv_arrival = now = time.monotonic()
        self._added(size, urgent, now)

    def _take_flv_tags(self) -> None:
        """Make the RTMP messages held so far one job, in order with the others."""
        if self._flv_tags:
            flv, tags, arrival = self._flv, self._flv_tags, self._flv_arrival
            self._flv_tags = []
            assert flv is not None
            self._pending.append(lambda cutter: flv.push(cutter, tags, arrival))

    def _hand_over(self) -> None:
        self._take_flv_tags()
        jobs, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        if not jobs or self.error is not None:
            return
        with self._lock:
            if self._backlog + size > self._settings.max_backlog_bytes:
                self.error = MediaError(f"segmenter input backlog exceeds {self._settings.max_backlog_bytes} bytes")
                raise self.error
            self._backlog += size
            self._lane.append((jobs, size))
            if self._running:
                return
            self._running = True
        self.registry.pool.submit(self._drain)

    def close(self, *, clean: bool) -> None:
        """The publisher is gone (``clean``: it unpublished); the cut ends after what was fed."""
        if self.closed:
            return
        self.closed = True
        self.clean = clean
        flv = self._flv
        arrival = time.monotonic()

        def end(cutter: SegmentCutter) -> None:
            if flv is not None:
                try:
                    flv.end(cutter, arrival)
                finally:
                    flv.close()
            else:
                cutter.end(arrival)
            self._finished(None)

        self._take_flv_tags()
        self._pending.append(end)
        try:
            self._hand_over()
        except StreamgwError:
            self._finished(self.error)

    # -- on a pool thread

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._lane:
                    self._running = False
                    return
                jobs, size = self._lane.popleft()
            error: StreamgwError | None = None
            try:
                for job in jobs:
                    job(self.cutter)
            except StreamgwError as exc:
                error = exc
            except Exception as exc:  # a bug must still end the stream, never hang it
                log.exception("stream %s: segmenter crashed", self.stream.name)
                error = MediaError(f"segmenter crashed: {exc}")
            with self._lock:
                self._backlog -= size
                if error is not None:
                    self._lane.clear()
                    self._running = False
            if error is not None:
                if self._flv is not None:
                    self._flv.close()
                self.error = error
                self._finished(error)
                return

    def _finished(self, error: StreamgwError | None) -> None:
        """Tell the registry, once, that the cut is over (any thread)."""
        with self._lock:
            if self._told:
                return
            self._told = True
        try:
            self._loop.call_soon_threadsafe(self.registry._on_segmenter_done, self, error)
        except RuntimeError:
            pass  # the loop is gone: nobody is left to tell


class Publishers:
    """Accepts publishers by stream name and runs their segmenters; publishes to the hub."""

    def __init__(self, hub: Hub, settings: PublisherSettings, observer: SegmentObserver | None = None) -> None:
        self.hub = hub
        self.settings = settings
        self.observer = observer or SegmentObserver()
        self.streams: dict[str, LiveStream] = {}
        self._publishers: dict[str, Publisher] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ended_listeners: list[Callable[[LiveStream], None]] = []
        self._closing = False
        self._forgotten_bytes = 0  # media bytes of the streams no longer listed
        self._finished_counts = dict.fromkeys(SEGMENTER_COUNTS, 0)
        # Every publisher's cut, in order per publisher (PyAV releases the GIL while it muxes).
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=settings.segmenter_threads,
                                                          thread_name_prefix="segmenter")

    @property
    def bytes_in(self) -> int:
        """Media bytes from every publisher since start (each stream counts its own: one writer each)."""
        return self._forgotten_bytes + sum(s.bytes_in for s in self.streams.values())

    def publisher(self, name: str) -> Publisher | None:
        """The current publisher of ``name`` (None between publishers)."""
        return self._publishers.get(name)

    def live_streams(self) -> list[LiveStream]:
        """Streams that are live or waiting for their publisher to come back."""
        return [s for s in self.streams.values() if s.state is not StreamState.ENDED]

    def cutting(self) -> list[str]:
        """The streams whose cut is running (a publisher is on, or its last segment is being cut)."""
        return sorted(self._publishers)

    def on_removed(self, listener: Callable[[LiveStream], None]) -> None:
        """Call ``listener`` when an ended stream is forgotten after its retention time."""
        self._ended_listeners.append(listener)

    async def open_publisher(self, name: str, remote: str) -> Publisher:
        """Start (or resume, within the grace period) publishing ``name``."""
        if self._closing:
            raise CapacityError("the gateway is shutting down")
        if not name or "/" in name:
            raise BadStreamName(f"invalid stream name {name!r}")
        stream = self.streams.get(name)
        discontinuity = False
        if stream is not None and stream.state is StreamState.LIVE:
            raise StreamBusy(f"stream {name!r} is already being published")
        if stream is not None and stream.state is StreamState.RECONNECTING:
            timer = self._timers.pop(name, None)
            if timer:
                timer.cancel()
            previous = self._publishers.get(name)
            if previous is not None:
                await asyncio.shield(previous.done)
            stream.state = StreamState.LIVE
            stream.publisher = remote
            stream.reconnects += 1
            discontinuity = stream.next_seq > 0
            log.info("stream %s: publisher %s resumed it (seq %d)", name, remote, stream.next_seq)
        else:
            if len(self.live_streams()) >= self.settings.max_streams:
                raise CapacityError(f"at capacity ({self.settings.max_streams} streams)")
            stream = LiveStream(name=name, publisher=remote,
                                target_duration=float(self.settings.segmenter.target_duration))
            self.streams[name] = stream
            log.info("stream %s: published by %s", name, remote)
        cutter = SegmentCutter(
            name,
            self.settings.segmenter,
            first_seq=stream.next_seq,
            discontinuity=discontinuity,
            on_info=self._threadsafe(self._on_info, stream),
            on_segment=self._threadsafe(self._on_segment, stream),
        )
        publisher = Publisher(self, stream, cutter)
        self._publishers[name] = publisher
        return publisher

    def _threadsafe(self, fn: Callable[..., None], stream: LiveStream) -> Callable[..., None]:
        loop = asyncio.get_running_loop()

        def call(*args: object) -> None:
            loop.call_soon_threadsafe(fn, stream, *args)

        return call

    def _on_info(self, stream: LiveStream, info: MediaInfo) -> None:
        stream.set_info(info)
        log.info("stream %s: %s", stream.name, info)

    def _on_segment(self, stream: LiveStream, segment: Segment, latency: float) -> None:
        stream.next_seq = segment.seq + 1
        stream.segments += 1
        stream.segment_bytes += len(segment.data)
        stream.media_seconds += segment.duration_seconds
        self.observer.on_segment(segment, latency)
        self.hub.publish(segment)

    def segmenter_counts(self) -> dict[str, int]:
        """:data:`SEGMENTER_COUNTS` over every publisher since start (finished and running)."""
        counts = dict(self._finished_counts)
        for pub in self._publishers.values():
            for key in SEGMENTER_COUNTS:
                counts[key] += getattr(pub.cutter, key)
        return counts

    def _on_segmenter_done(self, pub: Publisher, error: StreamgwError | None) -> None:
        stream = pub.stream
        for key in SEGMENTER_COUNTS:
            self._finished_counts[key] += getattr(pub.cutter, key)
        if not pub.done.done():
            pub.done.set_result(None)
        if self._publishers.get(stream.name) is pub:
            del self._publishers[stream.name]
        if error is not None:
            pub.error = error
            stream.last_error = str(error)
            log.error("stream %s: dropped: %s", stream.name, error)
            self._end(stream)
        elif pub.clean or self._closing or self.settings.reconnect_grace <= 0:
            self._end(stream)
        elif stream.state is StreamState.LIVE and self.streams.get(stream.name) is stream:
            stream.state = StreamState.RECONNECTING
            log.info("stream %s: publisher dropped; waiting %.1f s for it", stream.name,
                     self.settings.reconnect_grace)
            self._timers[stream.name] = asyncio.get_running_loop().call_later(
                self.settings.reconnect_grace, self._end, stream
            )

    def _end(self, stream: LiveStream) -> None:
        self._timers.pop(stream.name, None)
        if stream.state is StreamState.ENDED:
            return
        stream.state = StreamState.ENDED
        stream.ended_at = time.monotonic()
        log.info("stream %s: ended after %d segments", stream.name, stream.segments)
        self.hub.publish(StreamEnded(stream.name))
        self._timers[stream.name] = asyncio.get_running_loop().call_later(
            self.settings.ended_retention, self._forget, stream
        )

    def _forget(self, stream: LiveStream) -> None:
        if self.streams.get(stream.name) is stream and stream.state is StreamState.ENDED:
            del self.streams[stream.name]
            self._forgotten_bytes += stream.bytes_in
            self._timers.pop(stream.name, None)
            for listener in self._ended_listeners:
                listener(stream)

    async def close(self) -> None:
        """End every publisher and wait for the segmenters to flush (bounded)."""
        self._closing = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        pubs = list(self._publishers.values())
        for pub in pubs:
            pub.close(clean=True)
        if pubs:
            await asyncio.wait([asyncio.ensure_future(asyncio.shield(p.done)) for p in pubs], timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        for stream in list(self.streams.values()):
            if stream.state is not StreamState.ENDED:
                stream.state = StreamState.ENDED
                stream.ended_at = time.monotonic()
                self.hub.publish(StreamEnded(stream.name))
