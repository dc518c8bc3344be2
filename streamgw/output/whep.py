"""WHEP output (draft-ietf-wish-whep): watch any rendition of a stream over WebRTC.

One relay per (stream, rendition) is shared by every viewer of it; nothing is encoded per viewer:

* a WHIP stream's source: the H.264 and Opus packets its encoder makes anyway arrive through a
  :class:`LiveTee` as they are made (the lowest latency; a new viewer asks that encoder for an IDR);
* anything else (an RTMP source, a transcoded rendition, the AI output): the relay takes the
  rendition's segments from the hub, demuxes them in one worker thread, passes the H.264 through
  (re-encoding once per relay only when the segments carry B-frames, which WebRTC cannot play),
  turns AAC into Opus once, and paces the packets out on their timestamps.

Each viewer gets PyAV packets (``media/rtc.AvPacket``), which aiortc packetizes without encoding. Its queue is
bounded: a viewer that falls behind drops audio oldest-first and video up to the next keyframe,
counted, and never slows the relay or the other viewers. What aiortc still does per viewer is
RTP packetization and SRTP; it cannot forward a viewer's picture-loss request (PLI) for packets
it did not encode, so loss recovers at the next keyframe, which a new or lagging viewer asks for.

A viewer whose offer has no H.264 but VP8 (Firefox without its OpenH264 plugin) gets VP8 from
one :class:`~streamgw.media.vp8.Vp8Encoder` per relay, shared by all its VP8 viewers: a worker thread decodes the
relay's H.264 once and encodes it once with libvpx (realtime), started with the relay's first
VP8 viewer and stopped with its last. Its keyframes follow the source's and come on request
(a new or lagging VP8 viewer); when it falls behind it encodes only the newest picture, and past
its backlog it drops to the next H.264 keyframe. An offer with neither codec is refused.

This module holds only sessions and relays: the peers come from ``streamgw/webrtc``, the PyAV
work (segment reader, VP8 encoder, Opus) from ``streamgw/media``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamgw.errors import CapacityError, ProtocolError
from streamgw.gateway.hub import Event, StreamEnded, Subscription
from streamgw.media.rtc import AUDIO_TB, VIDEO_TB, AvPacket, RtcPacket, av_packet
from streamgw.media.segment_reader import LiveSegmentsThread, SegmentReader, SegmentReaderThread
from streamgw.media.vp8 import Vp8Encoder, Vp8Settings
from streamgw.segment import Segment
from streamgw.webrtc import IceSettings, PeerSessions, answer_offer, new_peer_connection, offered_media, prefer_codecs

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
        self._items: collections.deque[AvPacket] = collections.deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.started = False  # aiortc asked for the first packet: the connection is up

    def push(self, packet: AvPacket, keyframe: bool) -> None:
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

    async def get(self) -> AvPacket:
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

    async def recv(self) -> AvPacket:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.queue.get()

    def stop(self) -> None:
        self.queue.close()
        super().stop()


class _Viewer:
    """One WHEP viewer (its "WHEP session", the resource a DELETE ends): a peer connection and its two queues."""

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

    def push(self, out: RtcPacket, packet: AvPacket) -> None:
        self.queues[out.kind].push(packet, out.keyframe)

    @property
    def dropped(self) -> int:
        """Packets this viewer lost because it fell behind."""
        return sum(q.dropped for q in self.queues.values())

    def start(self) -> None:
        """Watch the connection: the session ends when it fails, closes or does not come up."""
        self._watch = self.output.peers.watch(self, self.pc, self._lost)

    async def _lost(self, why: str) -> None:
        if why.startswith("did not connect"):
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
        self.vp8: Vp8Encoder | None = None  # while there are VP8 viewers
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
            settings = self.output.settings
            vp8 = Vp8Settings(backlog=settings.vp8_backlog, keyframe_interval=settings.keyframe_interval,
                              max_bitrate=settings.video_bitrate, cpu_used=settings.vp8_cpu_used)
            self.vp8 = Vp8Encoder(f"whep-vp8-{self.key[0]}-{self.key[1]}", vp8, self.publish_vp8,
                                  self.request_keyframe)
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

    def publish(self, out: RtcPacket) -> None:
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
        pts = int(t / tb)
        packet = av_packet(out.data, pts, tb)
        vp8 = self.vp8_viewers
        for viewer in self.viewers:
            if out.kind == "audio" or viewer not in vp8:
                viewer.push(out, packet)
        if out.kind == "video" and self.vp8 is not None:
            self.vp8.feed(out.data, pts, out.keyframe)

    def publish_vp8(self, data: bytes, pts: int, keyframe: bool) -> None:
        """Hand one packet of the VP8 encoder (pts on the viewers' clock, 1/90000) to the VP8 viewers."""
        packet = av_packet(data, pts, VIDEO_TB)
        out = RtcPacket("video", data, pts, keyframe, pts * VIDEO_TB)
        for viewer in self.vp8_viewers:
            viewer.push(out, packet)

    def idle(self) -> bool:
        return not self.viewers and not self.live


class _Tee:
    """The :class:`~streamgw.ingest.whip.LiveTee` a WHIP session feeds its relay through."""

    def __init__(self, output: WhepOutput, relay: _Relay) -> None:
        self.output = output
        self.relay = relay
        self.closed = False

    @property
    def active(self) -> bool:
        return bool(self.relay.viewers)

    def send_video(self, data: bytes, pts: int, keyframe: bool) -> None:
        if not self.closed:
            self.relay.publish(RtcPacket("video", data, pts, keyframe, pts * VIDEO_TB))

    def send_audio(self, data: bytes, pts: int) -> None:
        if not self.closed:
            self.relay.publish(RtcPacket("audio", data, pts, True, pts * AUDIO_TB))

    def send(self, items: list[RtcPacket]) -> None:
        if not self.closed:
            for item in items:
                self.relay.publish(item)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.relay.live:
            self.relay.live = False
            self.relay.keyframe_source = None
            self.output._maybe_drop(self.relay)


class LiveSegmentFeed:
    """A relay fed from segments piece by piece: :meth:`begin` each segment, :meth:`feed` its
    bytes as they arrive, :meth:`end` it; :meth:`close` when the feed is over."""

    def __init__(self, tee: _Tee, thread: LiveSegmentsThread) -> None:
        self.tee = tee
        self.thread = thread

    def begin(self) -> None:
        self.thread.begin()

    def feed(self, data: bytes) -> None:
        self.thread.feed(data)

    def end(self) -> None:
        self.thread.end()

    def close(self) -> None:
        self.thread.close()
        self.tee.close()


@dataclass(slots=True)
class _Batch:
    items: list[RtcPacket]
    discontinuity: bool
    dropped_before: bool = False
    arrived: float = field(default_factory=time.monotonic)


class _SegmentFeeder:
    """Feeds a relay from hub segments: a reader thread demuxes (media/segment_reader), a task paces
    the packets out on their timestamps."""

    def __init__(self, relay: _Relay, settings: WhepSettings) -> None:
        self.relay = relay
        self.settings = settings
        self.keyframe_requested = False
        self._dropped = 0  # batches dropped waiting for the pacer
        self._batches: collections.deque[_Batch] = collections.deque()
        self._ready = asyncio.Event()
        reader = SegmentReader(settings.x264_preset, settings.video_bitrate, self._take_keyframe_request)
        self.reader = SegmentReaderThread(f"whep-{relay.key[0]}-{relay.key[1]}", reader, settings.segment_backlog,
                                          self._deliver)
        self._pacer = asyncio.create_task(self._pace())

    @property
    def reencoding(self) -> bool:
        """Whether the segments' H.264 is re-encoded (it has B-frames, which WebRTC cannot play)."""
        return self.reader.reader.reencode

    @property
    def segments_dropped(self) -> int:
        """Segments dropped because the reader or the pacer was behind."""
        return self.reader.dropped + self._dropped

    def _take_keyframe_request(self) -> bool:
        requested, self.keyframe_requested = self.keyframe_requested, False
        return requested

    def feed(self, segment: Segment) -> None:
        """Queue a segment for the reader (drop the oldest past the backlog)."""
        self.reader.feed(segment)

    def _deliver(self, items: list[RtcPacket], discontinuity: bool) -> None:
        batch = _Batch(items, discontinuity)
        if len(self._batches) >= self.settings.segment_backlog:
            self._batches.popleft()
            self._dropped += 1
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
        """Stop the reader and the pacer."""
        self.reader.close()
        self._pacer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pacer


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
        self.peers: PeerSessions[_Viewer] = PeerSessions(
            "WHEP", "viewers", settings.max_sessions, settings.negotiate_timeout, settings.connect_timeout)

    @property
    def viewers(self) -> dict[str, _Viewer]:
        """The viewers by session id."""
        return self.peers.active

    def available(self, stream: str, rendition: str) -> bool:
        """Whether ``stream`` is live and has (or will have) ``rendition``."""
        return self._available(stream, rendition)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task this output keeps a reference to."""
        self.peers.spawn(coro)

    def open_live_segments(self, stream: str, rendition: str) -> LiveSegmentFeed:
        """Feed ``stream``'s ``rendition`` relay from segments read while they arrive (a live AI
        orchestrator's output), not from the hub's whole segments: the lowest latency."""
        tee = self.open_tee(stream, lambda: None, rendition)
        reader = SegmentReader(self.settings.x264_preset, self.settings.video_bitrate, lambda: False)
        return LiveSegmentFeed(tee, LiveSegmentsThread(f"whep-live-{stream}-{rendition}", reader, tee.send))

    def open_tee(self, stream: str, request_keyframe: Callable[[], None], rendition: str = "source") -> _Tee:
        """Feed ``stream``'s ``rendition`` relay from a WHIP encoder (the ``OpenTee`` of ingest/whip)."""
        relay = self._relay((stream, rendition))
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

        Video is H.264 when the offer has it, else VP8 (see :class:`~streamgw.media.vp8.Vp8Encoder`). Raises
        ProtocolError (a bad offer, one with neither H.264 nor VP8 video, or one that receives
        nothing) and CapacityError.
        """
        with self.peers.admit():
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
                    prefer_codecs(pc.addTransceiver(viewer.tracks[kind], direction="sendonly"), [mimes[kind]],
                                  only=True)
                answer = await self.peers.negotiate(answer_offer(pc, offer, self.ice))
                self.peers.check_open()
            except BaseException:
                await pc.close()
                self._maybe_drop(relay)
                raise
        if self.relays.get(relay.key) is not relay:  # the stream ended while negotiating
            await pc.close()
            raise CapacityError(f"stream {stream!r} ended")
        relay.add(viewer)
        self.peers.add(viewer)
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
        self.peers.forget(viewer)
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
        await self.peers.close(_Viewer.close)
        for relay in list(self.relays.values()):
            if relay.feeder is not None:
                await relay.feeder.close()
                relay.feeder = None
        self.relays.clear()
        await self.peers.drain()
