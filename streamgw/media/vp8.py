"""VP8 for WebRTC viewers without H.264: one relay's H.264 decoded once and encoded once (libvpx, realtime).

One :class:`Vp8Encoder` per WHEP relay serves all its VP8 viewers (Firefox before it has its
OpenH264 plugin); its worker thread owns the decoder and the encoder, the event loop only queues
H.264 packets in and hands VP8 packets on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.error

from streamgw.media.rtc import VIDEO_TB

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Vp8Settings:
    """Bounds and speed of a relay's VP8 encoder."""

    backlog: int = 30  # H.264 packets waiting for the encoder; past that it drops to the next keyframe
    keyframe_interval: float = 0.5  # at most one keyframe on request this often, seconds
    max_bitrate: int = 2_500_000  # bit/s
    cpu_used: int = 10  # libvpx realtime speed, 0-16: higher is faster and looks worse


class Backlog:
    """H.264 packets (data, pts, keyframe) waiting for a VP8 encoder thread; bounded.

    Past ``maxsize`` what is queued is stale: it is dropped, and so is everything up to the next
    keyframe (a decoder can only restart at one). Thread-safe: ``put`` on the event loop,
    ``take`` in the worker.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.dropped = 0
        self.closed = False
        self._items: list[tuple[bytes, int, bool]] = []
        self._cond = threading.Condition()
        self._waiting_keyframe = True  # a decoder can only start at an IDR

    def put(self, data: bytes, pts: int, keyframe: bool) -> bool:
        """Queue a packet without blocking; True when it overflowed and a keyframe is needed."""
        with self._cond:
            if self.closed:
                return False
            overflow = not self._waiting_keyframe and len(self._items) >= self.maxsize
            if overflow:
                self.dropped += len(self._items)
                self._items.clear()
                self._waiting_keyframe = True
            if self._waiting_keyframe:
                if not keyframe:
                    self.dropped += 1
                    return overflow
                self._waiting_keyframe = False
            self._items.append((data, pts, keyframe))
            self._cond.notify()
            return False

    def take(self) -> list[tuple[bytes, int, bool]] | None:
        """Everything queued, once there is something; None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self.closed)
            if self.closed:
                return None
            items, self._items = self._items, []
            return items

    def close(self) -> None:
        """Drop what is queued and wake the worker (``take`` returns None from now on)."""
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()


class Vp8Encoder:
    """A relay's VP8 for viewers without H.264: its H.264 decoded once and encoded once, in a thread.

    The event loop only queues H.264 packets in (``feed``) and hands VP8 packets on (``deliver``).
    The input is bounded: when pictures wait, only the newest is encoded (the others are counted
    in ``skipped``); past ``backlog`` packets the queue is dropped up to the next H.264
    keyframe, which the source is asked for. A VP8 keyframe comes with each H.264 keyframe (so
    VP8 viewers recover from loss as often as H.264 ones) and on request, at most once per
    ``keyframe_interval``.
    """

    def __init__(self, name: str, settings: Vp8Settings, deliver: Callable[[bytes, int, bool], None],
                 source_keyframe: Callable[[], None]) -> None:
        self.settings = settings
        self.frames_in = 0  # H.264 pictures decoded
        self.frames_out = 0  # VP8 pictures encoded
        self.skipped = 0  # decoded pictures not encoded because a newer one was waiting
        self.keyframes = 0  # VP8 keyframes made
        self.keyframe_requested = False  # set on the loop, read in the thread
        self.backlog = Backlog(settings.backlog)
        self._deliver = deliver
        self._source_keyframe = source_keyframe
        self._loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        source_keyframe()

    def request_keyframe(self) -> None:
        """Make the next picture a keyframe (or the first one ``keyframe_interval`` after the last)."""
        self.keyframe_requested = True

    @property
    def dropped(self) -> int:
        """H.264 packets dropped: the backlog was full, or a keyframe was awaited."""
        return self.backlog.dropped

    def feed(self, data: bytes, pts: int, keyframe: bool) -> None:
        """Queue one H.264 packet (``pts`` on the viewers' clock); never blocks."""
        if self.backlog.put(data, pts, keyframe):
            self._source_keyframe()

    def close(self) -> None:
        """Stop the thread (it ends at its next wake-up, dropping what is queued)."""
        self.backlog.close()

    def _run(self) -> None:
        decoder = av.CodecContext.create("h264", "r")
        decoder.thread_count = 1  # at most one core per relay (decoding is ~3% of it at 720p30)
        decoder.flags |= av.codec.context.Flags.low_delay
        encoder: Any = None
        last_pts = -1
        last_requested = -1e9  # when a keyframe was last made on request (time.monotonic)
        while (batch := self.backlog.take()) is not None:
            newest: Any = None
            source_keyframe = False
            for data, pts, keyframe in batch:
                packet = av.Packet(data)
                packet.pts = pts
                packet.time_base = VIDEO_TB
                try:
                    frames = decoder.decode(packet)
                except (av.error.FFmpegError, ValueError) as exc:
                    log.debug("WHEP VP8: undecodable H.264 packet: %s", exc)
                    continue
                source_keyframe = source_keyframe or keyframe
                for frame in frames:
                    self.frames_in += 1
                    if newest is not None:
                        self.skipped += 1
                    newest = frame
                    if frame.pts is None:
                        frame.pts = pts
            if newest is None:
                continue
            size = (newest.width, newest.height)
            force = source_keyframe
            if encoder is None or (encoder.width, encoder.height) != size:
                encoder = self._new_encoder(*size)
                force = True
            now = time.monotonic()
            if self.keyframe_requested and (force or now - last_requested >= self.settings.keyframe_interval):
                self.keyframe_requested = False
                if not force:
                    last_requested = now
                force = True
            pts = max(int(newest.pts), last_pts + 1)
            last_pts = pts
            frame = newest if newest.format.name == "yuv420p" else newest.reformat(format="yuv420p")
            frame.pts = pts
            frame.time_base = VIDEO_TB
            # A decoded frame keeps the H.264 picture type; libvpx must choose its own.
            frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
            try:
                packets = encoder.encode(frame)
            except (av.error.FFmpegError, ValueError) as exc:
                log.warning("WHEP VP8: encoder failed (%s); starting a new one", exc)
                encoder = None
                continue
            self.frames_out += 1
            for q in packets:
                self.keyframes += bool(q.is_keyframe)
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to deliver to
                    self._loop.call_soon_threadsafe(self._hand_on, bytes(q), int(q.pts), bool(q.is_keyframe))

    def _hand_on(self, data: bytes, pts: int, keyframe: bool) -> None:
        if not self.backlog.closed:  # once stopped, nothing more reaches the viewers
            self._deliver(data, pts, keyframe)

    def _new_encoder(self, width: int, height: int) -> Any:
        enc = av.CodecContext.create("libvpx", "w")
        enc.width, enc.height = width, height
        enc.pix_fmt = "yuv420p"
        enc.time_base = VIDEO_TB
        enc.framerate = Fraction(30)
        # About 3 bits per pixel and second (720p: 2.8 Mbit/s), within video_bitrate.
        rate = max(200_000, min(self.settings.max_bitrate, width * height * 3))
        enc.bit_rate = rate
        enc.gop_size = 1 << 30  # keyframes only when forced (above)
        enc.qmin, enc.qmax = 4, 56
        enc.thread_count = 1
        # WebRTC-style realtime VP8, as aiortc's own encoder sets it: CBR over a 1 s buffer, no
        # lookahead (lag-in-frames 0: each picture comes out as it goes in), one token partition.
        enc.options = {
            "deadline": "realtime", "cpu-used": str(self.settings.cpu_used), "lag-in-frames": "0",
            "minrate": str(rate), "maxrate": str(rate), "bufsize": str(rate),
            "overshoot-pct": "15", "undershoot-pct": "100", "static-thresh": "1", "partitions": "0",
        }
        log.info("WHEP VP8: encoding %dx%d at %d kbit/s", width, height, rate // 1000)
        return enc
