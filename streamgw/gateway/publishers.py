"""Turns publishers into segment streams: one segmenter thread per publisher, results to the hub."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamgw.errors import BadStreamName, CapacityError, MediaError, StreamBusy, StreamgwError
from streamgw.gateway.hub import Hub, StreamEnded
from streamgw.gateway.streams import LiveStream, StreamState
from streamgw.media.bytequeue import ByteQueue
from streamgw.media.segmenter import MediaInfo, Segmenter, SegmenterSettings
from streamgw.segment import Segment

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    """Limits and timings of publishing."""

    segmenter: SegmenterSettings = SegmenterSettings()
    reconnect_grace: float = 10.0
    ended_retention: float = 60.0
    max_streams: int = 100
    max_backlog_bytes: int = 64 * 1024 * 1024


class SegmentObserver:
    """Hooks for metrics: called on the event loop for each segment."""

    def on_segment(self, segment: Segment, latency: float) -> None:
        """A source segment was cut ``latency`` seconds after its closing bytes arrived."""


SEGMENTER_COUNTS = ("retimed_packets", "dropped_packets", "timestamp_resets", "recovery_cuts")
"""What segmenters count of what publishers send (see :class:`Segmenter`); :meth:`Publishers.segmenter_counts`."""


class _Publisher:
    """The sink one publisher's bytes go to; feeds its segmenter thread."""

    def __init__(self, registry: Publishers, stream: LiveStream, queue: ByteQueue, segmenter: Segmenter) -> None:
        self.registry = registry
        self.stream = stream
        self.queue = queue
        self.segmenter = segmenter
        self.error: StreamgwError | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.clean = False

    def write(self, data: bytes, *, urgent: bool = True) -> None:
        if self.error is not None:
            raise self.error
        self.stream.bytes_in += len(data)
        self.registry.bytes_in += len(data)  # read by /metrics when scraped: no metric call per read
        try:
            self.queue.write(data, urgent=urgent)
        except MediaError as exc:
            self.error = exc
            raise

    def close(self, *, clean: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.clean = clean
        self.queue.close()


class Publishers:
    """Accepts publishers by stream name and runs their segmenters; publishes to the hub."""

    def __init__(self, hub: Hub, settings: PublisherSettings, observer: SegmentObserver | None = None) -> None:
        self.hub = hub
        self.settings = settings
        self.observer = observer or SegmentObserver()
        self.streams: dict[str, LiveStream] = {}
        self._publishers: dict[str, _Publisher] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ended_listeners: list[Callable[[LiveStream], None]] = []
        self._closing = False
        self.bytes_in = 0  # media bytes from every publisher since start
        self._finished_counts = dict.fromkeys(SEGMENTER_COUNTS, 0)

    def live_streams(self) -> list[LiveStream]:
        """Streams that are live or waiting for their publisher to come back."""
        return [s for s in self.streams.values() if s.state is not StreamState.ENDED]

    def on_removed(self, listener: Callable[[LiveStream], None]) -> None:
        """Call ``listener`` when an ended stream is forgotten after its retention time."""
        self._ended_listeners.append(listener)

    async def open_publisher(self, name: str, remote: str, input_format: str = "flv") -> _Publisher:
        """Start (or resume, within the grace period) publishing ``name``; bytes in ``input_format``."""
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
        queue = ByteQueue(max_bytes=self.settings.max_backlog_bytes)
        segmenter = Segmenter(
            name,
            dataclasses.replace(self.settings.segmenter, input_format=input_format),
            first_seq=stream.next_seq,
            discontinuity=discontinuity,
            on_info=self._threadsafe(self._on_info, stream),
            on_segment=self._threadsafe(self._on_segment, stream),
        )
        publisher = _Publisher(self, stream, queue, segmenter)
        self._publishers[name] = publisher
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._run_segmenter, args=(loop, segmenter, queue, publisher),
            name=f"segmenter-{name}", daemon=True,
        )
        thread.start()
        return publisher

    def _threadsafe(self, fn: Callable[..., None], stream: LiveStream) -> Callable[..., None]:
        loop = asyncio.get_running_loop()

        def call(*args: object) -> None:
            loop.call_soon_threadsafe(fn, stream, *args)

        return call

    def _run_segmenter(
        self, loop: asyncio.AbstractEventLoop, segmenter: Segmenter, queue: ByteQueue, pub: _Publisher
    ) -> None:
        error: StreamgwError | None = None
        try:
            segmenter.run(queue)
        except StreamgwError as exc:
            error = exc
        except Exception as exc:  # a bug must still end the stream, never hang it
            log.exception("stream %s: segmenter crashed", segmenter.stream_id)
            error = MediaError(f"segmenter crashed: {exc}")
        finally:
            queue.close()
        loop.call_soon_threadsafe(self._on_segmenter_done, pub, error)

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
                counts[key] += getattr(pub.segmenter, key)
        return counts

    def _on_segmenter_done(self, pub: _Publisher, error: StreamgwError | None) -> None:
        stream = pub.stream
        for key in SEGMENTER_COUNTS:
            self._finished_counts[key] += getattr(pub.segmenter, key)
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
        for stream in list(self.streams.values()):
            if stream.state is not StreamState.ENDED:
                stream.state = StreamState.ENDED
                stream.ended_at = time.monotonic()
                self.hub.publish(StreamEnded(stream.name))
