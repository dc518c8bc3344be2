"""The WHEP segment reader: MPEG-TS segments -> WebRTC packets (H.264 as is or re-encoded, AAC -> Opus).

:class:`SegmentReader` does one segment at a time (blocking, PyAV); :class:`SegmentReaderThread`
runs it in a worker thread for one relay, fed from the event loop with a bounded backlog, and
hands each segment's packets back to the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import av.error

from streamgw.media.mpegts import live_demuxer_options, stamp_audio
from streamgw.media.opus import OpusEncoder
from streamgw.media.pipe import BytesPipe
from streamgw.media.rtc import AUDIO_RATE, AUDIO_TB, VIDEO_TB, RtcPacket
from streamgw.media.x264 import realtime_x264_options
from streamgw.segment import Segment

log = logging.getLogger(__name__)


class SegmentReader:
    """Turns MPEG-TS segments into WebRTC packets: H.264 passed through (or re-encoded), Opus."""

    def __init__(self, x264_preset: str, max_bitrate: int, keyframe_requested: Callable[[], bool]) -> None:
        self.x264_preset = x264_preset  # only for segments with B-frames (re-encoded)
        self.max_bitrate = max_bitrate  # the most a re-encode may use, bit/s
        self._keyframe_requested = keyframe_requested
        self.reencode = False
        self._decoder: Any = None
        self._encoder: Any = None
        self._aac: Any = None
        self._opus: OpusEncoder | None = None
        self._ain: int | None = None

    def process(self, data: bytes) -> list[RtcPacket]:
        """The packets of one segment, in time order."""
        out: list[RtcPacket] = []
        with av.open(io.BytesIO(data), "r", format="mpegts") as container:
            video = next((s for s in container.streams.video if s.codec_context.name == "h264"), None)
            audio = container.streams.audio[0] if container.streams.audio else None
            packets = [p for p in container.demux([s for s in (video, audio) if s is not None])
                       if p.size and p.pts is not None]
            if video is not None and not self.reencode and any(
                    p.stream is video and p.dts is not None and p.pts != p.dts for p in packets):
                log.info("WHEP: the segments have B-frames: re-encoding once for WebRTC")
                self.reencode = True
            for p in packets:
                if p.stream is video:
                    out += self._video(p)
                elif p.stream is audio:
                    out += self._audio(p)
        out.sort(key=lambda o: o.t)
        return out

    def stream(self, reader: Any, emit: Callable[[list[RtcPacket]], None]) -> None:
        """One segment read while it arrives (``reader``: blocking reads, e.g. a
        :class:`~streamgw.media.pipe.BytesPipe`): ``emit`` gets each packet's WebRTC packets at
        once, in arrival order (a live AI orchestrator's output, for the lowest latency)."""
        with av.open(reader, "r", format="mpegts", options=live_demuxer_options()) as container:
            video = next((s for s in container.streams.video if s.codec_context.name == "h264"), None)
            audio = container.streams.audio[0] if container.streams.audio else None
            if audio is not None and not audio.codec_context.sample_rate:
                audio = None
            audio_next: int | None = None
            for p in container.demux([s for s in (video, audio) if s is not None]):
                if not p.size:
                    continue
                if p.stream is audio:
                    audio_next = stamp_audio(p, audio, audio_next)
                if p.pts is None:
                    continue
                if p.stream is video:
                    if not self.reencode and p.dts is not None and p.pts != p.dts:
                        log.info("WHEP: the live output has B-frames: re-encoding once for WebRTC")
                        self.reencode = True
                    items = self._video(p)
                else:
                    items = self._audio(p)
                if items:
                    emit(items)

    def _video(self, p: Any) -> list[RtcPacket]:
        t = p.pts * Fraction(p.time_base)
        if not self.reencode:
            return [RtcPacket("video", bytes(p), int(t / VIDEO_TB), bool(p.is_keyframe), t)]
        if self._decoder is None:
            self._decoder = av.CodecContext.create("h264", "r")
        out: list[RtcPacket] = []
        for frame in self._decoder.decode(p):
            out += self._encode(frame)
        return out

    def _encode(self, frame: Any) -> list[RtcPacket]:
        size = (frame.width - frame.width % 2, frame.height - frame.height % 2)
        if self._encoder is None or (self._encoder.width, self._encoder.height) != size:
            enc = av.CodecContext.create("libx264", "w")
            enc.width, enc.height = size
            enc.pix_fmt = "yuv420p"
            enc.time_base = VIDEO_TB
            enc.options = realtime_x264_options(self.x264_preset, self.max_bitrate)
            self._encoder = enc
        force = frame.key_frame or self._keyframe_requested()
        t = frame.pts * Fraction(frame.time_base)
        if frame.format.name != "yuv420p" or (frame.width, frame.height) != size:
            frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
        frame.pts = int(t / VIDEO_TB)
        frame.time_base = VIDEO_TB
        frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        return [RtcPacket("video", bytes(q), int(q.pts), bool(q.is_keyframe), q.pts * VIDEO_TB)
                for q in self._encoder.encode(frame)]

    def _audio(self, p: Any) -> list[RtcPacket]:
        if self._aac is None:
            self._aac = av.CodecContext.create(p.stream.codec_context.name, "r")
            self._aac.extradata = p.stream.codec_context.extradata
        out: list[RtcPacket] = []
        for frame in self._aac.decode(p):
            start = int(frame.pts * Fraction(frame.time_base) * AUDIO_RATE) if frame.pts is not None else None
            if start is not None and (self._ain is None or abs(start - self._ain) > AUDIO_RATE // 10):
                # A gap or the start: count from here.
                if self._opus is None:
                    self._opus = OpusEncoder(start)
                else:
                    self._opus.restart(start)
                self._ain = start
            self._ain = (self._ain or 0) + frame.samples * AUDIO_RATE // (frame.sample_rate or AUDIO_RATE)
            if self._opus is None:
                self._opus = OpusEncoder(0)
            out += [RtcPacket("audio", data, pts, True, pts * AUDIO_TB) for data, pts in self._opus.encode(frame)]
        return out


class LiveSegmentsThread:
    """Segments that arrive piece by piece (a live AI orchestrator's output) turned into WebRTC
    packets as their bytes come, on one worker thread: :meth:`begin`, :meth:`feed` each piece,
    :meth:`end`, from the event loop; ``deliver(packets)`` on the loop."""

    def __init__(self, name: str, reader: SegmentReader, deliver: Callable[[list[RtcPacket]], None]) -> None:
        self.reader = reader
        self._name = name
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._segments: collections.deque[BytesPipe] = collections.deque()
        self._current: BytesPipe | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def begin(self) -> None:
        self.end()
        pipe = self._current = BytesPipe()
        with self._cond:
            self._segments.append(pipe)
            self._cond.notify()

    def feed(self, data: bytes) -> None:
        if self._current is not None:
            self._current.feed(data)

    def end(self) -> None:
        if self._current is not None:
            self._current.end()
            self._current = None

    def close(self) -> None:
        self.end()
        with self._cond:
            self._closed = True
            for pipe in self._segments:
                pipe.end()
            self._cond.notify_all()

    def _emit(self, items: list[RtcPacket]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone
            self._loop.call_soon_threadsafe(self._deliver, items)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._segments) or self._closed)
                if self._closed:
                    return
                pipe = self._segments.popleft()
            try:
                self.reader.stream(pipe, self._emit)
            except (av.error.FFmpegError, ValueError, OSError) as exc:
                log.warning("%s: a live segment is unusable: %s", self._name, exc)
            # Whatever is left of it is not wanted (the reader stopped early).
            while pipe.readinto(bytearray(65536)):
                pass


class SegmentReaderThread:
    """One relay's :class:`SegmentReader` in a worker thread.

    ``feed`` (on the loop) queues a segment, dropping the oldest past ``backlog``; ``deliver(packets,
    discontinuity)`` gets each segment's packets on the loop. A segment that does not demux or
    decode is logged and skipped.
    """

    def __init__(self, name: str, reader: SegmentReader, backlog: int,
                 deliver: Callable[[list[RtcPacket], bool], None]) -> None:
        self.reader = reader
        self.backlog = backlog
        self.dropped = 0  # segments dropped before the reader got to them
        self._name = name
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._in: collections.deque[Segment] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def feed(self, segment: Segment) -> None:
        """Queue a segment for the worker (drop the oldest past the backlog)."""
        with self._cond:
            if len(self._in) >= self.backlog:
                self._in.popleft()
                self.dropped += 1
            self._in.append(segment)
            self._cond.notify()

    def close(self) -> None:
        """Stop the worker (it ends at its next wake-up, dropping what is queued)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._in) or self._closed)
                if self._closed:
                    return
                segment = self._in.popleft()
            try:
                items = self.reader.process(segment.data)
            except (av.error.FFmpegError, ValueError) as exc:
                log.warning("%s: segment %d unusable: %s", self._name, segment.seq, exc)
                continue
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to deliver to
                self._loop.call_soon_threadsafe(self._deliver, items, segment.discontinuity)
