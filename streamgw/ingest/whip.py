"""WHIP ingest (RFC 9725): a browser or OBS publishes over WebRTC and its media becomes segments.

    offer ──▶ aiortc peer ──┬─ H.264 access units (copied) ───────────┐
                            └─ decoded frames (aiortc's decoder) ─────┴▶ media/whip_muxer: FrameQueue
          ──▶ WhipMuxer thread: H.264 copied, or libx264 (keyframe every target segment duration,
              on the RTP clock) + AAC ──▶ MPEG-TS bytes ──▶ the ingest's publisher sink (the RTMP
              path from here on)
                    └─▶ the same H.264 packets + Opus ──▶ a LiveTee (the WHEP output, while watched)

H.264 video (Chromium, Safari, OBS) is copied by default (``WhipSettings.copy_h264``): the access
units aiortc's jitter buffer assembles are taken before its decoder (``webrtc/hooks.tap_h264``)
and muxed as they are. The GOP comes from the publisher, asked for an IDR (RTCP PLI, RFC 4585
6.3.1) every target segment duration on the RTP clock, so segments keep their duration without an
encode; a publisher that changes resolution does so at an IDR, where the segmenter cuts. Other
codecs (VP8 from Firefox), and every publisher when copying is off, are decoded and re-encoded
with libx264 at a fixed GOP, one resolution per segment; so is a copied publisher from the moment
it shows B-frames (timestamps going back) or from its first IDR after it let a whole segment
duration pass without answering a PLI. Which of these a session does is its
:class:`WhipVideoMode`, shown in ``/api/streams`` as ``whip_video``. Audio is always decoded
(Opus) and encoded to AAC.

This module holds only the sessions: peers, ICE and SDP come from ``streamgw/webrtc``, the muxer
thread (every PyAV object) from ``streamgw/media/whip_muxer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamgw.errors import ProtocolError, StreamgwError
from streamgw.media.h264 import is_idr
from streamgw.media.whip_muxer import AccessUnit, CutFeed, FrameQueue, QueuedFrame, WhipEncoding, WhipMuxer
from streamgw.webrtc import IceSettings, PeerSessions, answer_offer, new_peer_connection, offered_media, prefer_codecs
from streamgw.webrtc.hooks import HOOKS, CopyTap, send_pli, tap_h264

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# What a WHIP session talks to


class PublishSink(CutFeed, Protocol):
    """Where the packets go: the gateway's publisher. ``feed`` is called from the muxer thread,
    ``close`` on the event loop."""

    def close(self, *, clean: bool) -> None: ...


OpenPublisher = Callable[[str, str, str], Awaitable[PublishSink]]
"""``(stream, remote, query)`` -> a sink; raises StreamBusy, BadStreamName, CapacityError,
LiveAiRefused (the query's pipeline cannot run)."""


class LiveTee(Protocol):
    """Where a WHIP stream's encoded packets also go (the WHEP output); called on the event loop."""

    @property
    def active(self) -> bool:
        """Anyone watching (read from the encoder thread: Opus is encoded only while true)."""
        ...

    def send_video(self, data: bytes, pts: int, keyframe: bool) -> None:
        """An H.264 access unit, Annex B, ``pts`` in 1/90000 s."""

    def send_audio(self, data: bytes, pts: int) -> None:
        """An Opus packet of 20 ms, ``pts`` in 1/48000 s."""

    def close(self) -> None:
        """The publisher is gone."""


OpenTee = Callable[[str, Callable[[], None]], LiveTee]
"""``(stream, request_keyframe)`` -> a tee; ``request_keyframe`` may be called on the event loop."""


@dataclass(frozen=True, slots=True)
class WhipSettings:
    """How WHIP publishers are encoded, and the bounds on them."""

    target_duration: Fraction = Fraction(2)  # the GOP: one keyframe per target segment
    video_bitrate: int = 2_500_000  # cap (x264 VBV), bits/s; quality is CRF 23 below it
    audio_bitrate: int = 128_000  # AAC
    x264_preset: str = "ultrafast"
    copy_h264: bool = True  # H.264 publishers are copied (keyframes asked for), not re-encoded
    max_sessions: int = 16
    negotiate_timeout: float = 10.0  # seconds for the offer/answer, gathering included
    connect_timeout: float = 20.0  # seconds from the answer until ICE and DTLS are up
    queue_frames: int = 90  # frames or access units waiting for the muxer thread; more are dropped

    def encoding(self) -> WhipEncoding:
        """What the muxer thread needs of these settings."""
        return WhipEncoding(self.target_duration, self.video_bitrate, self.audio_bitrate, self.x264_preset)


class WhipVideoMode(enum.Enum):
    """What a WHIP session does with its publisher's video (``whip_video`` in ``/api/streams``)."""

    COPY = "copy"  # H.264 access units muxed as they are; IDRs asked for (PLI) every target duration
    COPY_UNTIL_IDR = "copy-until-idr"  # it ignores PLI: copied up to its next IDR, re-encoded from there
    TRANSCODE = "transcode"  # decoded by aiortc and re-encoded with libx264 at a fixed GOP


# ---------------------------------------------------------------------------------------------
# Sessions


class WhipPublisher:
    """One WHIP publisher (a "WHIP session", RFC 9725's resource): its peer connection, frame
    pumps, muxer thread and sink."""

    def __init__(self, server: WhipServer, stream: str, remote: str, pc: RTCPeerConnection) -> None:
        self.server = server
        self.id = secrets.token_urlsafe(12)
        self.stream = stream
        self.remote = remote
        self.pc = pc
        self.started = time.monotonic()
        self.frames = FrameQueue(server.settings.queue_frames, on_video_gap=self.send_pli)
        self.tracks: list[MediaStreamTrack] = []
        self.video_mode: WhipVideoMode | None = None  # None: no video
        self._taps: list[CopyTap] = []
        self.sink: PublishSink | None = None
        self.tee: LiveTee | None = None
        self.encoder: WhipMuxer | None = None
        self.closed = False
        self._clean = False
        self._tasks: list[asyncio.Task[None]] = []
        self._thread_started = False
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()

    def take_tracks(self) -> None:
        """Pick the offered tracks (after the remote description); ProtocolError if none."""
        for t in self.pc.getTransceivers():
            track = t.receiver.track
            if track is not None and t.kind in ("audio", "video") and track not in self.tracks:
                self.tracks.append(track)
                if t.kind == "video" and self.server.settings.copy_h264:
                    tap = tap_h264(t.receiver, self._on_access_unit)
                    if tap is not None:
                        self._taps.append(tap)
        if not self.tracks:
            raise ProtocolError("the SDP offer sends neither audio nor video")
        if any(t.kind == "video" for t in self.tracks):
            self.video_mode = WhipVideoMode.COPY if self._taps else WhipVideoMode.TRANSCODE

    def start(self, sink: PublishSink, tee: LiveTee | None) -> None:
        """Start the muxer thread, the frame pumps and the connection watch."""
        self.sink = sink
        self.tee = tee
        kinds = {t.kind for t in self.tracks}
        self.encoder = WhipMuxer(
            self.server.settings.encoding(), "video" in kinds, "audio" in kinds,
            cut=sink,
            tee_video=self._threadsafe(self._tee_video),
            tee_audio=self._threadsafe(self._tee_audio),
            tee_active=lambda: tee is not None and tee.active,
            request_keyframe=self._threadsafe(self.send_pli),
            stop_copying=self._threadsafe(self._stop_copying),
            decode_from_next_idr=self._threadsafe(self._decode_from_next_idr),
        )
        self.encoder.start(self.frames, self.stream, self._threadsafe(self._encoder_done))
        self._thread_started = True
        self._tasks.append(self.server.peers.spawn(self._pump_all()))
        self._tasks.append(self.server.peers.watch(self, self.pc, self._lost))

    async def _lost(self, why: str) -> None:
        log.info("stream %s: WHIP peer %s %s", self.stream, self.remote, why)
        await self.close(clean=False)

    def request_keyframe(self) -> None:
        """Ask the encoder for an IDR soon (a new WHEP viewer)."""
        if self.encoder is not None:
            self.encoder.keyframe_requested = True

    def send_pli(self) -> None:
        """Ask the publisher for an IDR: RTCP PLI (RFC 4585 6.3.1) on every video source."""
        if self.closed:
            return
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                receiver = transceiver.receiver
                for source in receiver.getSynchronizationSources():
                    if (pli := send_pli(receiver, source.source)) is not None:
                        self.server.peers.spawn(pli)

    def _set_mode(self, mode: WhipVideoMode) -> None:
        """Enter ``mode``; TRANSCODE hands H.264 to aiortc's decoder from now on (for good)."""
        if self.video_mode is mode or self.video_mode is WhipVideoMode.TRANSCODE:
            return
        log.info("stream %s: WHIP video %s -> %s", self.stream, self.video_mode and self.video_mode.value,
                 mode.value)
        self.video_mode = mode
        if mode is WhipVideoMode.TRANSCODE:
            for tap in self._taps:
                tap.copying = False

    def _stop_copying(self) -> None:
        """The publisher's H.264 has B-frames: decode it from now on."""
        self._set_mode(WhipVideoMode.TRANSCODE)
        self.send_pli()  # aiortc's decoder starts at the next IDR

    def _decode_from_next_idr(self) -> None:
        """The publisher ignores keyframe requests: its next IDR goes to aiortc's decoder, and all after it."""
        if self.video_mode is WhipVideoMode.COPY:
            self._set_mode(WhipVideoMode.COPY_UNTIL_IDR)

    def _on_access_unit(self, data: bytes, timestamp: int) -> bool:
        """Take an H.264 access unit to copy; False: aiortc is to decode it (and all after it)."""
        keyframe = is_idr(data)
        if keyframe and self.video_mode is WhipVideoMode.COPY_UNTIL_IDR:
            self._set_mode(WhipVideoMode.TRANSCODE)
            return False
        self.frames.put(QueuedFrame("h264", AccessUnit(data, timestamp, keyframe), time.monotonic()))
        return True

    def _threadsafe(self, fn: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to deliver to
                self._loop.call_soon_threadsafe(fn, *args)
        return call

    def _tee_video(self, data: bytes, pts: int, keyframe: bool) -> None:
        if self.tee is not None:
            self.tee.send_video(data, pts, keyframe)

    def _tee_audio(self, data: bytes, pts: int) -> None:
        if self.tee is not None:
            self.tee.send_audio(data, pts)

    async def _pump_all(self) -> None:
        await asyncio.gather(*(self._pump(track) for track in self.tracks))
        if not self.closed:  # every track ended (RTCP BYE): the publisher is gone
            log.info("stream %s: WHIP peer %s ended its tracks", self.stream, self.remote)
            await self.close(clean=False)

    async def _pump(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video" and self.video_mode is not WhipVideoMode.TRANSCODE:
                self._set_mode(WhipVideoMode.TRANSCODE)  # aiortc decoded it: another codec than H.264
            self.frames.put(QueuedFrame(track.kind, frame, time.monotonic()))

    def _encoder_done(self, error: StreamgwError | None) -> None:
        if error is not None:
            log.error("stream %s: %s", self.stream, error)
            self._clean = False
        if self.tee is not None:
            self.tee.close()
            self.tee = None
        if self.sink is not None:
            self.sink.close(clean=self._clean and error is None)
        if not self._done.done():
            self._done.set_result(None)
        if error is not None and not self.closed:
            self.server.peers.spawn(self.close(clean=False))

    async def close(self, *, clean: bool) -> None:
        """End the session: ``clean`` (a DELETE) ends the stream, otherwise it may reconnect."""
        if self.closed:
            return
        self.closed = True
        self._clean = clean
        self.server.peers.forget(self)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self.frames.close()
        if self._thread_started:
            await asyncio.wait([self._done], timeout=10)
        elif self.sink is not None:
            self.sink.close(clean=clean)
        await self.pc.close()
        enc = self.encoder
        log.info("stream %s: WHIP session %s closed (%s; video %s; %d pictures, %d of them copied, %d dropped, "
                 "%d IDRs asked for)", self.stream, self.id, "clean" if clean else "dropped",
                 self.video_mode.value if self.video_mode else "none", enc.frames if enc else 0,
                 enc.copied if enc else 0, self.frames.dropped, enc.keyframe_requests if enc else 0)


class WhipServer:
    """WHIP sessions by id: ``publish`` answers an offer, ``stop`` ends a session (a DELETE)."""

    def __init__(self, open_publisher: OpenPublisher, settings: WhipSettings, ice: IceSettings,
                 open_tee: OpenTee | None = None) -> None:
        self.open_publisher = open_publisher
        self.settings = settings
        self.ice = ice
        self.open_tee = open_tee
        self.peers: PeerSessions[WhipPublisher] = PeerSessions(
            "WHIP", "publishers", settings.max_sessions, settings.negotiate_timeout, settings.connect_timeout)
        if settings.copy_h264 and not HOOKS.copy_h264:
            log.warning("WHIP: H.264 will be decoded and re-encoded, not copied: %s",
                        HOOKS.tap_problem or HOOKS.pli_problem)

    @property
    def sessions(self) -> dict[str, WhipPublisher]:
        """The live sessions by id."""
        return self.peers.active

    def video_mode(self, stream: str) -> str | None:
        """What the live WHIP session publishing ``stream`` does with its video (None: no such session)."""
        for session in self.peers.active.values():
            if session.stream == stream and session.video_mode is not None:
                return session.video_mode.value
        return None

    async def publish(self, stream: str, offer: str, remote: str, query: str = "") -> tuple[str, str]:
        """Start publishing ``stream`` from ``offer``; returns (session id, answer SDP). ``query``
        (the WHIP URL's: ``pipeline=face-blur``) goes to ``open_publisher``.

        Raises ProtocolError (bad offer), StreamBusy, BadStreamName, CapacityError.
        """
        with self.peers.admit():
            pc = new_peer_connection(self.ice)
            sink: PublishSink | None = None
            try:
                session = WhipPublisher(self, stream, remote, pc)
                # Our codec preferences must be on transceivers before the offer is applied, and
                # aiortc cannot answer with a transceiver the offer has no m-section for.
                for media in offered_media(offer):
                    transceiver = pc.addTransceiver(media.kind, direction="recvonly")
                    if media.kind == "video":
                        prefer_codecs(transceiver, ["video/H264"])  # copied as it is (or cheaper to decode than VP8)
                answer = await self.peers.negotiate(answer_offer(pc, offer, self.ice, session.take_tracks))
                # The stream exists from here on (this also refuses a name already live).
                sink = await self.open_publisher(stream, f"whip:{remote}", query)
                self.peers.check_open()
            except BaseException:
                if sink is not None:
                    sink.close(clean=True)
                await pc.close()
                raise
        tee = self.open_tee(stream, session.request_keyframe) if self.open_tee else None
        self.peers.add(session)
        session.start(sink, tee)
        log.info("stream %s: WHIP publisher %s (session %s, %s)", stream, remote, session.id,
                 "+".join(sorted(t.kind for t in session.tracks)))
        return session.id, answer

    async def stop(self, session_id: str) -> bool:
        """End a session cleanly (the stream ends); False if there is no such session."""
        session = self.peers.get(session_id)
        if session is None:
            return False
        await session.close(clean=True)
        return True

    async def close(self) -> None:
        """End every session (flushing their last segments)."""
        await self.peers.close(lambda s: s.close(clean=True))
        await self.peers.drain()
