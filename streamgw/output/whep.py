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
    video_bitrate: int = 2_500_000


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

    def __init__(self, output: WhepOutput, relay: _Relay, remote: str, pc: RTCPeerConnection) -> None:
        self.output = output
        self.relay = relay
        self.remote = remote
        self.pc = pc
        self.id = secrets.token_urlsafe(12)
        self.started = time.monotonic()
        self.queues = {kind: _ViewerQueue(kind, output.settings.viewer_queue, relay.request_keyframe)
                       for kind in ("video", "audio")}
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
        log.info("WHEP viewer %s of %s/%s left after %.1f s (%d packets sent, %d dropped)", self.remote,
                 *self.relay.key, time.monotonic() - self.started,
                 sum(q.sent for q in self.queues.values()), self.dropped)


# ---------------------------------------------------------------------------------------------
# Relays


class _Relay:
    """The fan-out point of one (stream, rendition): every viewer gets the same packets."""

    def __init__(self, output: WhepOutput, key: tuple[str, str]) -> None:
        self.output = output
        self.key = key
        self.viewers: set[_Viewer] = set()
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
        for viewer in self.viewers:
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


# ---------------------------------------------------------------------------------------------
# The output


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

        Raises ProtocolError (a bad offer, or one without H.264 or that receives nothing) and
        CapacityError.
        """
        if self._closing or len(self.viewers) + self._pending >= self.settings.max_sessions:
            raise CapacityError(f"at WHEP capacity ({self.settings.max_sessions} viewers)")
        self._pending += 1
        pc = new_peer_connection(self.ice)
        relay = self._relay((stream, rendition))
        try:
            viewer = _Viewer(self, relay, remote, pc)
            media = offered_media(offer)
            if not any(direction in ("recvonly", "sendrecv") for _, direction in media):
                raise ProtocolError("the SDP offer receives neither audio nor video")
            mimes = {"video": "video/H264", "audio": "audio/opus"}
            for kind in dict.fromkeys(kind for kind, _ in media):  # our one track of each kind
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
        relay.viewers.add(viewer)
        self.viewers[viewer.id] = viewer
        viewer.start()
        log.info("WHEP viewer %s of %s/%s (session %s; %d watching)", remote, stream, rendition, viewer.id,
                 len(relay.viewers))
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
        viewer.relay.viewers.discard(viewer)
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
