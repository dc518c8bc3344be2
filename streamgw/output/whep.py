"""WHEP output (draft-ietf-wish-whep): watch any rendition of a stream over WebRTC.

One relay per (stream, rendition) is shared by every viewer of it; nothing is encoded per viewer:

* a WHIP stream's source: the H.264 and Opus packets its encoder makes anyway arrive through a
  :class:`LiveTee` as they are made (the lowest latency; a new viewer asks that encoder for an IDR);
* anything else (an RTMP source, a transcoded rendition, the AI output): the relay takes the
  rendition's segments from the hub, demuxes them in one worker thread, passes the H.264 through
  (re-encoding once per relay only when the segments carry B-frames, which WebRTC cannot play),
  turns AAC into Opus once, and paces the packets out on their timestamps.

Each viewer gets ``av.Packet`` objects, which aiortc packetizes without encoding. Its queue is
bounded: a viewer that falls behind drops audio oldest-first and video up to the next keyframe,
counted, and never slows the relay or the other viewers. What aiortc still does per viewer is
RTP packetization and SRTP; it cannot forward a viewer's picture-loss request (PLI) for packets
it did not encode, so loss recovers at the next keyframe, which a new or lagging viewer asks for.

A viewer whose offer has no H.264 but VP8 (Firefox without its OpenH264 plugin) gets VP8 from
one :class:`_Vp8Encoder` per relay, shared by all its VP8 viewers: a worker thread decodes the
relay's H.264 once and encodes it once with libvpx (realtime), started with the relay's first
VP8 viewer and stopped with its last. Its keyframes follow the source's and come on request
(a new or lagging VP8 viewer); when it falls behind it encodes only the newest picture, and past
its backlog it drops to the next H.264 keyframe. An offer with neither codec is refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import av.error
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamgw.errors import CapacityError, ProtocolError
from streamgw.gateway.hub import Event, StreamEnded, Subscription
from streamgw.ingest.webrtc import (
    AUDIO_RATE,
    AUDIO_TB,
    OPUS_FRAME,
    VIDEO_TB,
    IceSettings,
    answer_offer,
    new_peer_connection,
    offered_media,
    opus_encoder,
    prefer_codecs,
)
from streamgw.segment import Segment

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WhepSettings:
    """Bounds and timings of WHEP viewers and relays."""

    max_sessions: int = 100  # viewers at once, every stream together
    negotiate_timeout: float = 10.0
    connect_timeout: float = 20.0
    viewer_queue: int = 60  # packets of one kind waiting for one viewer; then it drops
    keyframe_interval: float = 0.5  # at most one keyframe request per relay this often, seconds
    preroll: float = 0.3  # segment relays: delay added to the first segment's packets, seconds
    segment_backlog: int = 3  # segments waiting for a relay's worker; older ones are dropped
    x264_preset: str = "ultrafast"  # only for segments with B-frames (re-encoded once per relay)
    video_bitrate: int = 2_500_000  # the most a re-encode (x264 or VP8) may use, bit/s
    vp8_cpu_used: int = 10  # libvpx realtime speed, 0-16: higher is faster and looks worse
    vp8_backlog: int = 30  # H.264 packets waiting for a relay's VP8 encoder; past that it drops


@dataclass(frozen=True, slots=True)
class _Out:
    """A packet as the relay hands it on: ``t`` in seconds on the source clock, for pacing."""

    kind: str
    data: bytes
    pts: int  # 1/90000 for video, 1/48000 for audio
    keyframe: bool
    t: Fraction


# ---------------------------------------------------------------------------------------------
# Viewers


class _ViewerQueue:
    """One viewer's packets of one kind: bounded; video drops to the next keyframe."""

    def __init__(self, kind: str, maxsize: int, on_need_keyframe: Callable[[], None]) -> None:
        self.kind = kind
        self.maxsize = maxsize
        self.dropped = 0
        self.sent = 0
        self.waiting_keyframe = kind == "video"  # a decoder can only start at an IDR
        self._on_need_keyframe = on_need_keyframe
        self._items: collections.deque[av.Packet[Any]] = collections.deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.started = False  # aiortc asked for the first packet: the connection is up

    def push(self, packet: av.Packet[Any], keyframe: bool) -> None:
        """Queue ``packet`` without ever blocking; drop (and count) when this viewer is behind."""
        if self.closed or not self.started:
            return
        if self.waiting_keyframe:
            if not keyframe:
                self.dropped += 1
                return
            self.waiting_keyframe = False
        if len(self._items) >= self.maxsize:
            if self.kind == "video":
                # Dropping one H.264 frame breaks every frame up to the next IDR: drop them all.
                self.dropped += len(self._items)
                self._items.clear()
                if not keyframe:
                    self.dropped += 1
                    self.waiting_keyframe = True
                    self._on_need_keyframe()
                    return
            else:
                self._items.popleft()
                self.dropped += 1
        self._items.append(packet)
        self._ready.set()

    async def get(self) -> av.Packet[Any]:
        """The next packet; MediaStreamError once closed."""
        if not self.started:
            # Nothing is queued before the peer is connected (it would arrive stale).
            self.started = True
            if self.kind == "video":
                self._on_need_keyframe()
        while not self._items:
            if self.closed:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        self.sent += 1
        return self._items.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()


class _PacketTrack(MediaStreamTrack):
    """A track that hands aiortc encoded packets (so aiortc only packetizes them)."""

    def __init__(self, queue: _ViewerQueue) -> None:
        super().__init__()
        self.kind = queue.kind
        self.queue = queue

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.queue.get()

    def stop(self) -> None:
        self.queue.close()
        super().stop()


class _Viewer:
    """One WHEP session: a peer connection and its two queues."""

    def __init__(self, output: WhepOutput, relay: _Relay, remote: str, pc: RTCPeerConnection,
                 video_codec: str = "h264") -> None:
        self.output = output
        self.relay = relay
        self.remote = remote
        self.pc = pc
        self.video_codec = video_codec  # "h264" (the relay's packets) or "vp8" (its VP8 encoder's)
        self.id = secrets.token_urlsafe(12)
        self.started = time.monotonic()
        need_keyframe = relay.request_vp8_keyframe if video_codec == "vp8" else relay.request_keyframe
        self.queues = {"video": _ViewerQueue("video", output.settings.viewer_queue, need_keyframe),
                       "audio": _ViewerQueue("audio", output.settings.viewer_queue, relay.request_keyframe)}
        self.tracks = {kind: _PacketTrack(q) for kind, q in self.queues.items()}
        self.closed = False
        self._watch: asyncio.Task[None] | None = None

    def push(self, out: _Out, packet: av.Packet[Any]) -> None:
        self.queues[out.kind].push(packet, out.keyframe)

    @property
    def dropped(self) -> int:
        """Packets this viewer lost because it fell behind."""
        return sum(q.dropped for q in self.queues.values())

    def start(self) -> None:
        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed") and not self.closed:
                self.output.spawn(self.close())

        self._watch = asyncio.create_task(self._watch_connect())

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self.output.settings.connect_timeout)
        if self.pc.connectionState != "connected" and not self.closed:
            log.info("WHEP viewer %s of %s did not connect", self.remote, self.relay.key)
            await self.close()

    async def close(self) -> None:
        """End the session."""
        if self.closed:
            return
        self.closed = True
        self.output._forget(self)
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        for track in self.tracks.values():
            track.stop()
        await self.pc.close()
        log.info("WHEP viewer %s of %s/%s left after %.1f s (%s; %d packets sent, %d dropped)", self.remote,
                 *self.relay.key, time.monotonic() - self.started, self.video_codec,
                 sum(q.sent for q in self.queues.values()), self.dropped)


# ---------------------------------------------------------------------------------------------
# Relays


class _Relay:
    """The fan-out point of one (stream, rendition): every viewer gets the same packets."""

    def __init__(self, output: WhepOutput, key: tuple[str, str]) -> None:
        self.output = output
        self.key = key
        self.viewers: set[_Viewer] = set()
        self.vp8_viewers: set[_Viewer] = set()  # those of ``viewers`` that get VP8
        self.vp8: _Vp8Encoder | None = None  # while there are VP8 viewers
        self.vp8_encoders_started = 0
        self.live = False  # fed by a WHIP encoder through a tee
        self.feeder: _SegmentFeeder | None = None
        self.keyframe_source: Callable[[], None] | None = None
        self._last_keyframe_request = -1e9
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self._offset = Fraction(0)  # added to the source clock to keep the viewers' clock monotonic
        self._last: dict[str, Fraction] = {}

    def request_keyframe(self) -> None:
        """Ask the source for an IDR, at most once per ``keyframe_interval`` (later ones wait)."""
        if self.keyframe_source is None or self._keyframe_timer is not None:
            return
        wait = self._last_keyframe_request + self.output.settings.keyframe_interval - time.monotonic()
        if wait > 0:
            self._keyframe_timer = asyncio.get_running_loop().call_later(wait, self._send_keyframe_request)
        else:
            self._send_keyframe_request()

    def _send_keyframe_request(self) -> None:
        self._keyframe_timer = None
        self._last_keyframe_request = time.monotonic()
        if self.keyframe_source is not None:
            self.keyframe_source()

    def add(self, viewer: _Viewer) -> None:
        """A new viewer; the first VP8 one starts the relay's VP8 encoder."""
        self.viewers.add(viewer)
        if viewer.video_codec != "vp8":
            return
        self.vp8_viewers.add(viewer)
        if self.vp8 is None:
            self.vp8 = _Vp8Encoder(f"whep-vp8-{self.key[0]}-{self.key[1]}", self.output.settings,
                                   self.publish_vp8, self.request_keyframe)
            self.vp8_encoders_started += 1
            log.info("WHEP %s/%s: VP8 encoder started", *self.key)

    def remove(self, viewer: _Viewer) -> None:
        """A viewer left; the last VP8 one stops the VP8 encoder."""
        self.viewers.discard(viewer)
        self.vp8_viewers.discard(viewer)
        if not self.vp8_viewers and self.vp8 is not None:
            vp8, self.vp8 = self.vp8, None
            vp8.close()
            log.info("WHEP %s/%s: VP8 encoder stopped (%d pictures in, %d encoded, %d skipped, %d packets dropped)",
                     *self.key, vp8.frames_in, vp8.frames_out, vp8.skipped, vp8.dropped)

    def request_vp8_keyframe(self) -> None:
        """A VP8 viewer needs a keyframe (it is new, or it dropped frames)."""
        if self.vp8 is not None:
            self.vp8.request_keyframe()

    def publish(self, out: _Out) -> None:
        """Hand one packet to every viewer (on the event loop; never blocks)."""
        t = out.t + self._offset
        last = self._last.get(out.kind)
        if last is not None and (t <= last - Fraction(1, 2) or t > last + 3):
            # The source's clock jumped (a publisher came back, a discontinuity): keep ours going.
            newest = max(self._last.values())
            self._offset += newest + Fraction(1, 30) - t
            t = newest + Fraction(1, 30)
            self._last.clear()
        self._last[out.kind] = t
        tb = VIDEO_TB if out.kind == "video" else AUDIO_TB
        packet = av.Packet(out.data)
        packet.pts = int(t / tb)
        packet.time_base = tb
        vp8 = self.vp8_viewers
        for viewer in self.viewers:
            if out.kind == "audio" or viewer not in vp8:
                viewer.push(out, packet)
        if out.kind == "video" and self.vp8 is not None:
            self.vp8.feed(out.data, packet.pts, out.keyframe)

    def publish_vp8(self, data: bytes, pts: int, keyframe: bool) -> None:
        """Hand one packet of the VP8 encoder (pts on the viewers' clock, 1/90000) to the VP8 viewers."""
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = VIDEO_TB
        out = _Out("video", data, pts, keyframe, pts * VIDEO_TB)
        for viewer in self.vp8_viewers:
            viewer.push(out, packet)

    def idle(self) -> bool:
        return not self.viewers and not self.live


class _Tee:
    """The :class:`~streamgw.ingest.webrtc.LiveTee` a WHIP session feeds its relay through."""

    def __init__(self, output: WhepOutput, relay: _Relay) -> None:
        self.output = output
        self.relay = relay
        self.closed = False

    @property
    def active(self) -> bool:
        return bool(self.relay.viewers)

    def send_video(self, data: bytes, pts: int, keyframe: bool) -> None:
        if not self.closed:
            self.relay.publish(_Out("video", data, pts, keyframe, pts * VIDEO_TB))

    def send_audio(self, data: bytes, pts: int) -> None:
        if not self.closed:
            self.relay.publish(_Out("audio", data, pts, True, pts * AUDIO_TB))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.relay.live:
            self.relay.live = False
            self.relay.keyframe_source = None
            self.output._maybe_drop(self.relay)


@dataclass(slots=True)
class _Batch:
    items: list[_Out]
    discontinuity: bool
    dropped_before: bool = False
    arrived: float = field(default_factory=time.monotonic)


class _SegmentFeeder:
    """Feeds a relay from hub segments: a worker thread demuxes, a task paces on the timestamps."""

    def __init__(self, relay: _Relay, settings: WhepSettings) -> None:
        self.relay = relay
        self.settings = settings
        self.keyframe_requested = False
        self.segments_dropped = 0
        self._loop = asyncio.get_running_loop()
        self._in: collections.deque[Segment] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._batches: collections.deque[_Batch] = collections.deque()
        self._ready = asyncio.Event()
        self._worker = _SegmentWorker(settings, lambda: self._take_keyframe_request())
        self._thread = threading.Thread(target=self._run, name=f"whep-{relay.key[0]}-{relay.key[1]}", daemon=True)
        self._thread.start()
        self._pacer = asyncio.create_task(self._pace())

    def _take_keyframe_request(self) -> bool:
        requested, self.keyframe_requested = self.keyframe_requested, False
        return requested

    def feed(self, segment: Segment) -> None:
        """Queue a segment for the worker (drop the oldest past the backlog)."""
        with self._cond:
            if len(self._in) >= self.settings.segment_backlog:
                self._in.popleft()
                self.segments_dropped += 1
            self._in.append(segment)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._in) or self._closed)
                if self._closed:
                    return
                segment = self._in.popleft()
            try:
                items = self._worker.process(segment.data)
            except (av.error.FFmpegError, ValueError) as exc:
                log.warning("WHEP %s/%s: segment %d unusable: %s", *self.relay.key, segment.seq, exc)
                continue
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver, _Batch(items, segment.discontinuity))

    def _deliver(self, batch: _Batch) -> None:
        if len(self._batches) >= self.settings.segment_backlog:
            self._batches.popleft()
            self.segments_dropped += 1
            batch.dropped_before = True
        self._batches.append(batch)
        self._ready.set()

    async def _pace(self) -> None:
        anchor: float | None = None  # wall time (monotonic) of source time 0
        while True:
            while not self._batches:
                self._ready.clear()
                await self._ready.wait()
            batch = self._batches.popleft()
            for i, out in enumerate(batch.items):
                now = time.monotonic()
                due = anchor + float(out.t) if anchor is not None else None
                if due is None or (i == 0 and (batch.discontinuity or batch.dropped_before)) \
                        or due < now - 1.0 or due > now + 10.0:
                    # Start, a jump in the source clock, or over a second late: (re)anchor, so
                    # that this packet leaves ``preroll`` from now.
                    anchor = now + self.settings.preroll - float(out.t)
                    due = now + self.settings.preroll
                if due > now:
                    await asyncio.sleep(due - now)
                self.relay.publish(out)

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._pacer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pacer


class _SegmentWorker:
    """Turns MPEG-TS segments into WebRTC packets: H.264 passed through (or re-encoded), Opus."""

    def __init__(self, settings: WhepSettings, keyframe_requested: Callable[[], bool]) -> None:
        self.settings = settings
        self._keyframe_requested = keyframe_requested
        self.reencode = False
        self._decoder: Any = None
        self._encoder: Any = None
        self._aac: Any = None
        self._resampler: Any = None
        self._opus: Any = None
        self._opus_next: int | None = None
        self._ain: int | None = None

    def process(self, data: bytes) -> list[_Out]:
        """The packets of one segment, in time order."""
        out: list[_Out] = []
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

    def _video(self, p: Any) -> list[_Out]:
        t = p.pts * Fraction(p.time_base)
        if not self.reencode:
            return [_Out("video", bytes(p), int(t / VIDEO_TB), bool(p.is_keyframe), t)]
        if self._decoder is None:
            self._decoder = av.CodecContext.create("h264", "r")
        out: list[_Out] = []
        for frame in self._decoder.decode(p):
            out += self._encode(frame)
        return out

    def _encode(self, frame: Any) -> list[_Out]:
        size = (frame.width - frame.width % 2, frame.height - frame.height % 2)
        if self._encoder is None or (self._encoder.width, self._encoder.height) != size:
            enc = av.CodecContext.create("libx264", "w")
            enc.width, enc.height = size
            enc.pix_fmt = "yuv420p"
            enc.time_base = VIDEO_TB
            vbv = f"{self.settings.video_bitrate // 1000}k"
            enc.options = {"preset": self.settings.x264_preset, "tune": "zerolatency", "profile": "baseline",
                           "crf": "23", "maxrate": vbv, "bufsize": vbv, "forced-idr": "1",
                           "x264-params": "scenecut=0:keyint=infinite:threads=1"}
            self._encoder = enc
        force = frame.key_frame or self._keyframe_requested()
        t = frame.pts * Fraction(frame.time_base)
        if frame.format.name != "yuv420p" or (frame.width, frame.height) != size:
            frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
        frame.pts = int(t / VIDEO_TB)
        frame.time_base = VIDEO_TB
        frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        return [_Out("video", bytes(q), int(q.pts), bool(q.is_keyframe), q.pts * VIDEO_TB)
                for q in self._encoder.encode(frame)]

    def _audio(self, p: Any) -> list[_Out]:
        if self._aac is None:
            self._aac = av.CodecContext.create(p.stream.codec_context.name, "r")
            self._aac.extradata = p.stream.codec_context.extradata
        out: list[_Out] = []
        for frame in self._aac.decode(p):
            start = int(frame.pts * Fraction(frame.time_base) * AUDIO_RATE) if frame.pts is not None else None
            if start is not None and (self._ain is None or abs(start - self._ain) > AUDIO_RATE // 10):
                self._resampler = None  # a gap or the start: count from here
                self._opus_next = start
                self._ain = start
            self._ain = (self._ain or 0) + frame.samples * AUDIO_RATE // (frame.sample_rate or AUDIO_RATE)
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE,
                                                    frame_size=OPUS_FRAME)
            if self._opus is None:
                self._opus = opus_encoder()
            frame.pts = None
            for chunk in self._resampler.resample(frame):
                pts = self._opus_next or 0
                self._opus_next = pts + chunk.samples
                chunk.pts = pts
                chunk.time_base = AUDIO_TB
                for q in self._opus.encode(chunk):
                    out.append(_Out("audio", bytes(q), pts, True, pts * AUDIO_TB))
        return out


class _Backlog:
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
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()


class _Vp8Encoder:
    """A relay's VP8 for viewers without H.264: its H.264 decoded once and encoded once, in a thread.

    The event loop only queues H.264 packets in (``feed``) and hands VP8 packets on (``deliver``).
    The input is bounded: when pictures wait, only the newest is encoded (the others are counted
    in ``skipped``); past ``vp8_backlog`` packets the queue is dropped up to the next H.264
    keyframe, which the source is asked for. A VP8 keyframe comes with each H.264 keyframe (so
    VP8 viewers recover from loss as often as H.264 ones) and on request, at most once per
    ``keyframe_interval``.
    """

    def __init__(self, name: str, settings: WhepSettings, deliver: Callable[[bytes, int, bool], None],
                 source_keyframe: Callable[[], None]) -> None:
        self.settings = settings
        self.frames_in = 0  # H.264 pictures decoded
        self.frames_out = 0  # VP8 pictures encoded
        self.skipped = 0  # decoded pictures not encoded because a newer one was waiting
        self.keyframes = 0  # VP8 keyframes made
        self.keyframe_requested = False  # set on the loop, read in the thread
        self.backlog = _Backlog(settings.vp8_backlog)
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
        rate = max(200_000, min(self.settings.video_bitrate, width * height * 3))
        enc.bit_rate = rate
        enc.gop_size = 1 << 30  # keyframes only when forced (above)
        enc.qmin, enc.qmax = 4, 56
        enc.thread_count = 1
        # WebRTC-style realtime VP8, as aiortc's own encoder sets it: CBR over a 1 s buffer, no
        # lookahead (lag-in-frames 0: each picture comes out as it goes in), one token partition.
        enc.options = {
            "deadline": "realtime", "cpu-used": str(self.settings.vp8_cpu_used), "lag-in-frames": "0",
            "minrate": str(rate), "maxrate": str(rate), "bufsize": str(rate),
            "overshoot-pct": "15", "undershoot-pct": "100", "static-thresh": "1", "partitions": "0",
        }
        log.info("WHEP VP8: encoding %dx%d at %d kbit/s", width, height, rate // 1000)
        return enc


# ---------------------------------------------------------------------------------------------
# The output


# What a viewer's video can be, best first: the relay's H.264 as is, or the shared VP8 re-encode.
VIDEO_CODECS = {"h264": "video/H264", "vp8": "video/VP8"}


def choose_video_codec(offered: frozenset[str]) -> str | None:
    """The video codec to send for ``offered`` ones: ``h264``, else ``vp8``, else None (neither)."""
    return next((codec for codec in VIDEO_CODECS if codec in offered), None)


class WhepOutput:
    """WHEP sessions and the relays they watch; fed by the hub and by WHIP tees."""

    def __init__(self, settings: WhepSettings, ice: IceSettings,
                 available: Callable[[str, str], bool]) -> None:
        self.settings = settings
        self.ice = ice
        self._available = available
        self.relays: dict[tuple[str, str], _Relay] = {}
        self.viewers: dict[str, _Viewer] = {}
        self._pending = 0
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    def available(self, stream: str, rendition: str) -> bool:
        """Whether ``stream`` is live and has (or will have) ``rendition``."""
        return self._available(stream, rendition)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task this output keeps a reference to."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def open_tee(self, stream: str, request_keyframe: Callable[[], None]) -> _Tee:
        """Feed ``stream``'s source relay from a WHIP encoder (the ``OpenTee`` of ingest/webrtc)."""
        relay = self._relay((stream, "source"))
        relay.live = True
        relay.keyframe_source = request_keyframe
        if relay.feeder is not None:
            self.spawn(relay.feeder.close())
            relay.feeder = None
        if relay.viewers:
            relay.request_keyframe()
        return _Tee(self, relay)

    def _relay(self, key: tuple[str, str]) -> _Relay:
        relay = self.relays.get(key)
        if relay is None:
            relay = self.relays[key] = _Relay(self, key)
        return relay

    async def run(self, events: Subscription) -> None:
        """Route the hub's segments to the relays that have viewers; end relays with their streams."""
        while True:
            self.on_event(await events.get())

    def on_event(self, event: Event) -> None:
        """Handle one hub event."""
        relay = self.relays.get((event.stream_id, event.rendition))
        if relay is None:
            return
        if isinstance(event, StreamEnded):
            for viewer in list(relay.viewers):
                self.spawn(viewer.close())
            if relay.feeder is not None:
                self.spawn(relay.feeder.close())
                relay.feeder = None
            if not relay.live:
                self.relays.pop(relay.key, None)
        elif not relay.live and relay.viewers:
            if relay.feeder is None:
                relay.feeder = _SegmentFeeder(relay, self.settings)
                relay.keyframe_source = self._feeder_keyframe(relay)
            relay.feeder.feed(event)

    @staticmethod
    def _feeder_keyframe(relay: _Relay) -> Callable[[], None]:
        def request() -> None:
            if relay.feeder is not None:
                relay.feeder.keyframe_requested = True
        return request

    async def play(self, stream: str, rendition: str, offer: str, remote: str) -> tuple[str, str]:
        """Answer a viewer's offer for ``stream``/``rendition``; returns (session id, answer SDP).

        Video is H.264 when the offer has it, else VP8 (see :class:`_Vp8Encoder`). Raises
        ProtocolError (a bad offer, one with neither H.264 nor VP8 video, or one that receives
        nothing) and CapacityError.
        """
        if self._closing or len(self.viewers) + self._pending >= self.settings.max_sessions:
            raise CapacityError(f"at WHEP capacity ({self.settings.max_sessions} viewers)")
        self._pending += 1
        pc = new_peer_connection(self.ice)
        relay = self._relay((stream, rendition))
        try:
            offered = offered_media(offer)
            receiving = [m for m in offered if m.direction in ("recvonly", "sendrecv")]
            if not receiving:
                raise ProtocolError("the SDP offer receives neither audio nor video")
            video_codec = "h264"
            if video := [m for m in receiving if m.kind == "video"]:
                chosen = choose_video_codec(frozenset().union(*(m.codecs for m in video)))
                if chosen is None:
                    raise ProtocolError("the SDP offer has neither H.264 nor VP8 video (WHEP sends only those)")
                video_codec = chosen
            viewer = _Viewer(self, relay, remote, pc, video_codec)
            mimes = {"video": VIDEO_CODECS[video_codec], "audio": "audio/opus"}
            for kind in dict.fromkeys(m.kind for m in offered):  # our one track of each kind
                prefer_codecs(pc.addTransceiver(viewer.tracks[kind], direction="sendonly"), [mimes[kind]], only=True)
            answer = await asyncio.wait_for(answer_offer(pc, offer, self.ice), self.settings.negotiate_timeout)
            if self._closing:
                raise CapacityError("the gateway is shutting down")
        except asyncio.TimeoutError as exc:
            await pc.close()
            self._maybe_drop(relay)
            raise CapacityError(f"WHEP negotiation took over {self.settings.negotiate_timeout:.0f} s") from exc
        except BaseException:
            await pc.close()
            self._maybe_drop(relay)
            raise
        finally:
            self._pending -= 1
        if self.relays.get(relay.key) is not relay:  # the stream ended while negotiating
            await pc.close()
            raise CapacityError(f"stream {stream!r} ended")
        relay.add(viewer)
        self.viewers[viewer.id] = viewer
        viewer.start()
        log.info("WHEP viewer %s of %s/%s (session %s, %s; %d watching)", remote, stream, rendition, viewer.id,
                 video_codec, len(relay.viewers))
        return viewer.id, answer

    async def stop(self, session_id: str) -> bool:
        """End a viewer session (a DELETE); False if there is no such session."""
        viewer = self.viewers.get(session_id)
        if viewer is None:
            return False
        await viewer.close()
        return True

    def _forget(self, viewer: _Viewer) -> None:
        self.viewers.pop(viewer.id, None)
        viewer.relay.remove(viewer)
        self._maybe_drop(viewer.relay)

    def _maybe_drop(self, relay: _Relay) -> None:
        if relay.idle() and self.relays.get(relay.key) is relay:
            del self.relays[relay.key]
            if relay.feeder is not None:
                self.spawn(relay.feeder.close())
                relay.feeder = None

    async def close(self) -> None:
        """End every viewer and relay."""
        self._closing = True
        await asyncio.gather(*(v.close() for v in list(self.viewers.values())), return_exceptions=True)
        for relay in list(self.relays.values()):
            if relay.feeder is not None:
                await relay.feeder.close()
                relay.feeder = None
        self.relays.clear()
        if self._background:
            await asyncio.wait(list(self._background), timeout=10)
