"""WHIP ingest (RFC 9725): a browser or OBS publishes over WebRTC and its media becomes segments.

    offer ──▶ aiortc peer ──┬─ H.264 access units (copied) ───────────┐
                            └─ decoded frames (a thread per track) ───┴▶ _FrameQueue (bounded, drops)
          ──▶ _TsEncoder thread: H.264 copied, or libx264 (keyframe every target segment duration,
              on the RTP clock) + AAC ──▶ MPEG-TS bytes ──▶ the ingest's publisher sink (the RTMP
              path from here on)
                    └─▶ the same H.264 packets + Opus ──▶ a LiveTee (the WHEP output, while watched)

H.264 video (Chromium, Safari, OBS) is copied by default (``WhipSettings.copy_h264``): the access
units aiortc's jitter buffer assembles are taken before its decoder (a stand-in for the receiver's
decoder queue, see :class:`_CopyTap`) and muxed as they are. The GOP comes from the publisher,
asked for an IDR (RTCP PLI, RFC 4585 6.3.1) every target segment duration on the RTP clock, so
segments keep their duration without an encode; a publisher that changes resolution does so at an
IDR, where the segmenter cuts. Other codecs (VP8 from Firefox), and every publisher when copying
is off, are decoded and re-encoded with libx264 at a fixed GOP, one resolution per segment; so
is a copied publisher from the moment it shows B-frames (timestamps going back) or from its
first IDR after it let a whole segment duration pass without answering a PLI. Audio is always
decoded (Opus) and encoded to AAC. The event loop never encodes.

This module also holds the ICE helpers that ``output/whep.py`` shares: aioice never offers
127.0.0.1 and binds every interface it finds, so host candidates are gathered here on the
configured addresses only (``IceSettings.addresses``) and nothing reaches a STUN or TURN server
that is not configured (aiortc's default would ask a public STUN server).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import queue
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple, Protocol

import av
import av.error
from aioice.candidate import Candidate, candidate_foundation
from aioice.ice import get_host_addresses
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcicetransport import RTCIceGatherer, parse_stun_turn_uri

from streamgw.errors import CapacityError, ConfigError, MediaError, ProtocolError, StreamgwError
from streamgw.media.h264 import first_sps, is_idr, sps_resolution

log = logging.getLogger(__name__)

VIDEO_TB = Fraction(1, 90000)  # RTP video clock (RFC 6184 5.1) and MPEG-TS
AUDIO_RATE = 48000
AUDIO_TB = Fraction(1, AUDIO_RATE)  # Opus RTP clock (RFC 7587 4.1)
OPUS_FRAME = 960  # 20 ms


def opus_encoder() -> Any:
    """A low-delay 48 kHz stereo Opus encoder for WebRTC peers (s16 frames of OPUS_FRAME samples)."""
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate = AUDIO_RATE
    opus.layout = "stereo"
    opus.format = "s16"
    opus.bit_rate = 64000
    opus.time_base = AUDIO_TB
    opus.options = {"application": "lowdelay"}
    return opus
MAX_OFFER_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------------------
# ICE


@dataclass(frozen=True, slots=True)
class HostAddress:
    """A local address to gather a host candidate on, and the address the candidate advertises.

    ``bind`` is an IP address or ``*`` (every non-loopback interface address); ``advertise``
    differs from ``bind`` only behind a 1:1 NAT (the public address of a cloud VM).
    """

    bind: str
    advertise: str


@dataclass(frozen=True, slots=True)
class IceSettings:
    """ICE for the gateway's peers: host addresses, and STUN/TURN servers (none by default)."""

    addresses: tuple[HostAddress, ...] = (HostAddress("127.0.0.1", "127.0.0.1"),)
    servers: tuple[str, ...] = ()  # stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], turns:...
    username: str = ""  # TURN credentials
    credential: str = ""


def parse_ice_addresses(spec: str) -> tuple[HostAddress, ...]:
    """Parse ``"IP,*,PUBLIC=LOCAL"``; raises ConfigError."""
    out: list[HostAddress] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        advertise, _, bind = item.rpartition("=")
        bind = bind.strip()
        advertise = advertise.strip() or bind
        try:
            if bind != "*":
                ipaddress.ip_address(bind)
            if advertise != bind or bind != "*":
                ipaddress.ip_address(advertise)
        except ValueError as exc:
            raise ConfigError(f"webrtc_addrs: {item!r} is not IP, * or PUBLIC_IP=LOCAL_IP") from exc
        out.append(HostAddress(bind, advertise))
    if not out:
        raise ConfigError("webrtc_addrs: at least one address is needed")
    return tuple(out)


def parse_ice_servers(spec: str) -> tuple[str, ...]:
    """Parse comma-separated STUN/TURN URLs (RFC 7064, RFC 7065); raises ConfigError."""
    urls = tuple(u.strip() for u in spec.split(",") if u.strip())
    for url in urls:
        try:
            parse_stun_turn_uri(url)
        except ValueError as exc:
            raise ConfigError(f"webrtc_ice_servers: {url!r}: {exc}") from exc
    return urls


def new_peer_connection(ice: IceSettings) -> RTCPeerConnection:
    """A peer connection that asks only the configured STUN/TURN servers, one bundled transport."""
    servers = [
        RTCIceServer(urls=url, username=ice.username or None, credential=ice.credential or None)
        if url.startswith("turn") else RTCIceServer(urls=url)
        for url in ice.servers
    ]
    # iceServers=[] matters: None makes aiortc use a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


async def gather_candidates(pc: RTCPeerConnection, addresses: tuple[HostAddress, ...]) -> None:
    """Gather host candidates on ``addresses`` only, before aiortc's own gathering would.

    Call after the transceivers exist and before ``setLocalDescription``. aioice has no option for
    this (it skips 127.0.0.1 and binds every interface), so this fills its candidate list itself
    through the aioice Connection that aiortc keeps in ``RTCIceGatherer._connection``; aiortc's
    gathering then finds it done. STUN/TURN candidates are still gathered for the configured servers.
    """
    gatherers: list[RTCIceGatherer] = []
    for t in pc.getTransceivers():
        gatherer = t.receiver.transport.transport.iceGatherer
        if gatherer not in gatherers:
            gatherers.append(gatherer)
    await asyncio.gather(*(_gather(g, addresses) for g in gatherers))


async def _gather(gatherer: RTCIceGatherer, addresses: tuple[HostAddress, ...]) -> None:
    conn: Any = gatherer._connection  # aioice.Connection (private in aiortc 1.16)
    if conn._local_candidates_start:
        return
    conn._local_candidates_start = True
    advertised: dict[str, str] = {}
    binds: list[str] = []
    for addr in addresses:
        if addr.bind == "*":
            found = get_host_addresses(use_ipv4=True, use_ipv6=True)
            binds += [a for a in found if a not in binds]
        elif addr.bind not in binds:
            binds.append(addr.bind)
            advertised[addr.bind] = addr.advertise
    candidates: list[Candidate] = []
    for component in sorted(conn._components):
        got: list[Candidate] = await conn.get_component_candidates(component=component, addresses=binds)
        for protocol in conn._protocols:
            cand = getattr(protocol, "local_candidate", None)
            if cand is None or cand not in got or cand.type != "host":
                continue
            public = advertised.get(cand.host)
            if public and public != cand.host:
                # 1:1 NAT: the socket stays on the local address, the candidate names the public one.
                new = Candidate(
                    foundation=candidate_foundation("host", "udp", public), component=cand.component,
                    transport=cand.transport, priority=cand.priority, host=public, port=cand.port, type="host",
                )
                protocol.local_candidate = new
                got[got.index(cand)] = new
        candidates += got
    conn._local_candidates += candidates
    conn._local_candidates_end = True
    if not any(c.type == "host" for c in candidates):
        log.warning("ICE: no host candidate could be bound on %s", ", ".join(binds) or "(no address)")


def prefer_codecs(transceiver: RTCRtpTransceiver, mime_types: list[str], *, only: bool = False) -> None:
    """Put ``mime_types`` first in ``transceiver``'s codec preferences (or use only them)."""
    capabilities = RTCRtpReceiver.getCapabilities(transceiver.kind)
    caps = capabilities.codecs if capabilities is not None else []
    first = [c for m in mime_types for c in caps if c.mimeType.lower() == m.lower()]
    rtx = [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    rest = [] if only else [c for c in caps if c not in first and c not in rtx]
    transceiver.setCodecPreferences(first + rest + rtx)


class OfferedMedia(NamedTuple):
    """One audio/video m-section of an SDP offer."""

    kind: str  # "audio" | "video"
    direction: str  # sendrecv (the default), sendonly, recvonly or inactive
    codecs: frozenset[str]  # encoding names of its a=rtpmap lines, lower case (rtx included)


def offered_media(sdp: str) -> list[OfferedMedia]:
    """The audio/video m-sections of an SDP offer, in order (RFC 8866 5.14, 6.6, 6.7)."""
    out: list[OfferedMedia] = []
    kind = ""
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            if kind in ("audio", "video"):
                out.append(OfferedMedia(kind, "sendrecv", frozenset()))
        elif kind not in ("audio", "video"):
            continue
        elif line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            out[-1] = out[-1]._replace(direction=line[2:])
        elif line.startswith("a=rtpmap:"):
            name = line.partition(" ")[2].split("/", 1)[0].strip().lower()
            if name:
                out[-1] = out[-1]._replace(codecs=out[-1].codecs | {name})
    return out


async def answer_offer(pc: RTCPeerConnection, offer: str, ice: IceSettings,
                       prepare: Callable[[], None] | None = None) -> str:
    """Apply ``offer`` and return the answer SDP, with every candidate in it (no trickle ICE).

    ``prepare`` runs between the remote and local descriptions (to check what was offered).
    Raises ProtocolError for an offer that is not SDP or shares no codec with us.
    """
    if len(offer) > MAX_OFFER_BYTES:
        raise ProtocolError(f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    except (ValueError, LookupError, TypeError, InvalidAccessError, InvalidStateError, OperationError) as exc:
        raise ProtocolError(f"bad SDP offer: {exc or type(exc).__name__}") from exc
    if prepare is not None:
        prepare()
    await gather_candidates(pc, ice.addresses)
    try:
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except (ValueError, InvalidAccessError, InvalidStateError, OperationError) as exc:
        raise ProtocolError(f"cannot answer the SDP offer: {exc or type(exc).__name__}") from exc
    return str(pc.localDescription.sdp)


# ---------------------------------------------------------------------------------------------
# What a WHIP session talks to


class PublishSink(Protocol):
    """Where the MPEG-TS bytes go: the ingest's publisher (called on the event loop)."""

    def write(self, data: bytes) -> None: ...

    def close(self, *, clean: bool) -> None: ...


OpenPublisher = Callable[[str, str, str], Awaitable[PublishSink]]
"""``(stream, remote, input_format)`` -> a sink; raises StreamBusy, BadStreamName, CapacityError."""


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


# ---------------------------------------------------------------------------------------------
# The encoder thread


@dataclass(frozen=True, slots=True)
class _AccessUnit:
    """An H.264 access unit as aiortc's jitter buffer assembled it (Annex B), not decoded."""

    data: bytes
    pts: int  # the track's RTP clock (1/90000 s) from 0
    keyframe: bool  # holds an IDR


@dataclass(frozen=True, slots=True)
class _Item:
    kind: str  # "video" | "audio" (decoded) | "h264" (copied)
    frame: Any  # av.VideoFrame | av.AudioFrame | _AccessUnit, pts on the track's RTP clock from 0
    arrival: float  # time.monotonic() when aiortc handed it over


class _FrameQueue:
    """Frames from the event loop to the encoder thread; full means drop (never block).

    A decoded frame can go (the encoder makes its own GOP); once a copied access unit went, the
    ones after it cannot be decoded, so they go too until the next IDR, which ``on_video_gap``
    (called on the putting thread) is there to ask the publisher for.
    """

    def __init__(self, maxsize: int, on_video_gap: Callable[[], None] | None = None) -> None:
        self.maxsize = maxsize
        self.dropped = 0
        self._on_video_gap = on_video_gap
        self._gap = False
        self._items: collections.deque[_Item] = collections.deque()
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: _Item) -> None:
        gap = False
        with self._cond:
            if self._closed:
                return
            copied = item.kind == "h264"
            if copied and self._gap and not item.frame.keyframe:
                self.dropped += 1
                return
            if len(self._items) >= self.maxsize:
                self.dropped += 1
                gap = copied and not self._gap
                self._gap = self._gap or copied
            else:
                if copied:
                    self._gap = False
                self._items.append(item)
                self._cond.notify()
        if gap and self._on_video_gap is not None:
            self._on_video_gap()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self) -> _Item | None:
        """The next frame, or None once closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._closed)
            return self._items.popleft() if self._items else None


class _TrackClock:
    """Maps one track's RTP-clock pts onto the session clock (seconds since the first frame).

    The two tracks have unrelated RTP origins (RFC 3550 5.1); each is anchored at the arrival
    time of its first frame, then follows its RTP clock. A jump of more than a second against the
    arrival times (a sender that paused) re-anchors it.
    """

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.base: tuple[float, Fraction] | None = None  # (arrival, rtp seconds) of the anchor

    def seconds(self, pts: int, time_base: Fraction, arrival: float) -> Fraction:
        rtp = pts * time_base
        if self.base is not None:
            t = Fraction(self.base[0] - self.origin) + rtp - self.base[1]
            if abs(float(t) - (arrival - self.origin)) <= 1.0:
                return t
            log.info("WHIP: RTP clock jumped by %.2f s; re-anchoring", float(t) - (arrival - self.origin))
        self.base = (arrival, rtp)
        return Fraction(arrival - self.origin)


def _even(n: int) -> int:
    return max(2, n - n % 2)


class _TsEncoder:
    """Muxes one publisher's media to MPEG-TS (H.264 + AAC) in a worker thread.

    Copied H.264 access units are muxed as they are; ``request_keyframe`` asks the publisher for
    an IDR when one is due (every target duration on the RTP clock), when a WHEP viewer needs one,
    and while waiting for the first. Decoded frames are encoded with libx264: the output
    resolution changes only at a scheduled keyframe, so every segment has one resolution; in
    between, frames are scaled to the current one.

    ``write`` gets the TS bytes and ``tee_video``/``tee_audio`` the packets for WHEP; these and
    ``request_keyframe`` are called in this thread (the caller hands them to its loop).
    """

    # While an asked-for IDR has not come, ask again this often (a lost PLI), in 1/90000 s.
    PLI_RETRY = 27000

    def __init__(self, settings: WhipSettings, has_video: bool, has_audio: bool,
                 write: Callable[[bytes], None],
                 tee_video: Callable[[bytes, int, bool], None],
                 tee_audio: Callable[[bytes, int], None],
                 tee_active: Callable[[], bool],
                 request_keyframe: Callable[[], None] = lambda: None,
                 stop_copying: Callable[[], None] = lambda: None,
                 decode_from_next_idr: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.has_video = has_video
        self.has_audio = has_audio
        self._write = write
        self._tee_video = tee_video
        self._tee_audio = tee_audio
        self._tee_active = tee_active
        self._request_keyframe = request_keyframe
        self._stop_copying = stop_copying
        self._decode_from_next_idr = decode_from_next_idr
        self.keyframe_requested = False  # set from the event loop; read here
        self.frames = 0
        self.copied = 0  # access units muxed without re-encoding
        self.keyframe_requests = 0  # IDRs asked of the publisher
        self.resolution_changes = 0
        self.size: tuple[int, int] | None = None
        self._origin: float | None = None
        self._clocks: dict[str, _TrackClock] = {}
        self._container: Any = None
        self._vstream: Any = None
        self._astream: Any = None
        self._venc: Any = None
        self._pending_size: tuple[int, int] | None = None
        self._gop = int(settings.target_duration / VIDEO_TB)
        self._next_kf = 0
        self._last_vpts = -1
        self._aac_resampler: Any = None
        self._aac_next: int | None = None  # pts of the next AAC frame, 1/48000
        self._ain: int | None = None  # where the next input audio frame is expected, 1/48000
        self._opus: Any = None
        self._opus_resampler: Any = None
        self._opus_next = 0
        self._sps: bytes | None = None  # of the copied stream
        self._copy_resync = True  # a copied stream (re)starts at an IDR
        self._pli_pts: int | None = None  # when an IDR was last asked for, until it comes
        self._asked_since: int | None = None  # when an IDR was first asked for, until it comes
        self.decoding_asked = False  # the publisher ignores keyframe requests: decode from its next IDR
        self._copy_off = False  # the publisher's H.264 has B-frames: decoded from now on
        self._last_rtp: int | None = None

    # -- the thread body

    def run(self, frames: _FrameQueue) -> None:
        """Encode until ``frames`` closes, then flush. Raises MediaError on encoder failure."""
        try:
            while (item := frames.get()) is not None:
                if self._origin is None:
                    # The session clock starts at 1 s, so that audio primed ahead of the first
                    # picture (_prime_audio) still has a positive timestamp.
                    self._origin = item.arrival - 1.0
                kind = "audio" if item.kind == "audio" else "video"  # copied or decoded: one clock
                clock = self._clocks.setdefault(kind, _TrackClock(self._origin))
                if item.kind == "h264":
                    self._copy(item.frame, clock.seconds(item.frame.pts, VIDEO_TB, item.arrival))
                    continue
                default_tb = VIDEO_TB if item.kind == "video" else Fraction(1, item.frame.sample_rate or AUDIO_RATE)
                t = clock.seconds(item.frame.pts or 0, Fraction(item.frame.time_base or default_tb), item.arrival)
                if item.kind == "video":
                    self._video(item.frame, t)
                else:
                    self._audio(item.frame, t)
            self._flush()
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"WHIP encoder failed: {exc}") from exc
        finally:
            if self._container is not None:
                with contextlib.suppress(av.error.FFmpegError, ValueError):
                    self._container.close()

    def _open(self, width: int, height: int) -> None:
        # flush_packets: each packet leaves at once (the segmenter and WHEP wait for it);
        # max_interleave_delta: do not hold video longer than 0.2 s waiting for audio.
        self._container = av.open(_Writer(self._write), "w", format="mpegts",
                                  options={"flush_packets": "1", "max_interleave_delta": "200000"})
        if self.has_video:
            # Packets come from our own encoders (restarted on resolution changes); this
            # stream's codec context only describes them.
            self._vstream = self._container.add_stream("h264", rate=30)
            self._vstream.width, self._vstream.height = width, height
            self._vstream.pix_fmt = "yuv420p"
            self._vstream.time_base = VIDEO_TB
            # The muxer opens this (idle) encoder too: keep it as small as possible.
            self._vstream.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency"}
        if self.has_audio:
            self._astream = self._container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            self._astream.codec_context.bit_rate = self.settings.audio_bitrate
            self._aac_resampler = self._new_aac_resampler()

    def _new_video_encoder(self, width: int, height: int) -> Any:
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height = width, height
        enc.pix_fmt = "yuv420p"
        enc.time_base = VIDEO_TB
        enc.framerate = Fraction(30)
        vbv = str(self.settings.video_bitrate // 1000)
        enc.options = {
            "preset": self.settings.x264_preset,
            "tune": "zerolatency",  # no lookahead, no B-frames: WebRTC viewers need none
            "profile": "baseline",  # constrained baseline: what every WebRTC H.264 decoder takes
            "crf": "23", "maxrate": vbv + "k", "bufsize": vbv + "k",
            "forced-idr": "1",
            # Keyframes come only when asked for (every target duration on the clock).
            "x264-params": "scenecut=0:keyint=infinite:threads=1",
        }
        self.size = (width, height)
        return enc

    def _video_pts(self, t: Fraction) -> int:
        pts = int(t / VIDEO_TB)
        if pts <= self._last_vpts:
            pts = self._last_vpts + 1  # strictly increasing, whatever the sender did
        self._last_vpts = pts
        return pts

    def _copy(self, au: _AccessUnit, t: Fraction) -> None:
        if self._copy_off:
            return  # left over from before the switch to decoding
        if self._last_rtp is not None and not 0 <= au.pts - self._last_rtp < 1 << 31:
            # Timestamps out of order: B-frames (OBS with bframes > 0), which WebRTC viewers
            # cannot play and this path cannot reorder. Decode and re-encode from here on.
            # (aiortc's timestamp mapper takes any step back for a wrap: it shows as + ~2^32.)
            log.warning("WHIP: the publisher's H.264 has B-frames; decoding and re-encoding it")
            self._copy_off = True
            self._stop_copying()
            return
        self._last_rtp = au.pts
        pts = self._video_pts(t)
        if self._venc is not None:  # the publisher went from another codec to H.264
            self._mux_video(self._venc.encode(None))
            self._venc = None
            self._copy_resync = True
        if au.keyframe:
            self._pli_pts = self._asked_since = None
            sps = first_sps(au.data)
            if sps is not None and sps != self._sps:
                size = sps_resolution(sps)
                if self._sps is not None and size != self.size:
                    self.resolution_changes += 1
                    log.info("WHIP: resolution now %dx%d", *size)
                self._sps, self.size = sps, size
        if self._copy_resync:
            if not au.keyframe or self.size is None:
                self._ask_keyframe(pts)  # nothing decodes before an IDR with its SPS
                return
            self._copy_resync = False
        if self._container is None:
            assert self.size is not None
            self._open(*self.size)
            self._next_kf = pts
            if self.has_audio:
                self._prime_audio(pts)
        # Ask for the scheduled IDR as its time comes; one a little early (5 %) is taken as it.
        if pts >= self._next_kf - self._gop // 20:
            if au.keyframe:
                while self._next_kf <= pts:
                    self._next_kf += self._gop
            else:
                self._ask_keyframe(pts)
        elif self.keyframe_requested and not au.keyframe:
            self._ask_keyframe(pts)
        self.keyframe_requested = False
        if self._asked_since is not None and pts - self._asked_since > self._gop and not self.decoding_asked:
            # A segment duration and no IDR: the publisher ignores PLI and has a long GOP of
            # its own. From its next IDR on, aiortc decodes and this thread makes the GOP.
            log.warning("WHIP: the publisher does not answer keyframe requests; re-encoding it from its next IDR")
            self.decoding_asked = True
            self._decode_from_next_idr()
        packet = av.Packet(au.data)
        packet.pts = packet.dts = pts
        packet.time_base = VIDEO_TB
        packet.is_keyframe = au.keyframe
        self._mux_video([packet])
        self.frames += 1
        self.copied += 1

    def _ask_keyframe(self, pts: int) -> None:
        if self._asked_since is None:
            self._asked_since = pts
        if self._pli_pts is None or pts - self._pli_pts >= self.PLI_RETRY:
            self._pli_pts = pts
            self.keyframe_requests += 1
            self._request_keyframe()

    def _video(self, frame: Any, t: Fraction) -> None:
        pts = self._video_pts(t)
        size = (_even(frame.width), _even(frame.height))
        if self._container is None:
            self._open(*size)
            self._next_kf = pts
            if self.has_audio:
                self._prime_audio(pts)
        if self._venc is None:  # the first picture, or the first after copying: the GOP starts here
            self._venc = self._new_video_encoder(*size)
            self._next_kf = pts
        elif size != self.size:
            self._pending_size = size
        elif self._pending_size is not None:
            self._pending_size = None  # it went back before the next keyframe
        force = self.keyframe_requested
        if pts >= self._next_kf:
            force = True
            while self._next_kf <= pts:
                self._next_kf += self._gop
            if self._pending_size is not None:
                self._mux_video(self._venc.encode(None))
                self._venc = self._new_video_encoder(*self._pending_size)
                self._pending_size = None
                self.resolution_changes += 1
                log.info("WHIP: resolution now %dx%d", self._venc.width, self._venc.height)
        self.keyframe_requested = False
        w, h = self._venc.width, self._venc.height
        if frame.width != w or frame.height != h or frame.format.name != "yuv420p":
            frame = frame.reformat(width=w, height=h, format="yuv420p", interpolation="BILINEAR")
        frame.pts = pts
        frame.time_base = VIDEO_TB
        # A decoded frame keeps the sender's picture type; x264 must choose its own.
        frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        self._mux_video(self._venc.encode(frame))
        self.frames += 1

    def _mux_video(self, packets: list[Any]) -> None:
        tee = self._tee_active()
        for packet in packets:
            if tee:
                self._tee_video(bytes(packet), int(packet.pts), bool(packet.is_keyframe))
            packet.stream = self._vstream
            self._container.mux(packet)

    def _audio(self, frame: Any, t: Fraction) -> None:
        if self._container is None:
            if self.has_video:
                return  # nothing before the first picture: segments start with video
            self._open(0, 0)
        start = int(t * AUDIO_RATE)
        if self._ain is None or abs(start - self._ain) > AUDIO_RATE // 10:
            # The first frame, or a gap of over 0.1 s (lost packets, a paused sender): the
            # sample count restarts here; small jitter is ignored (the count stays continuous).
            if self._ain is not None:
                self._mux_audio(self._aac_resampler.resample(None))
                self._aac_resampler = self._new_aac_resampler()
                self._opus = self._opus_resampler = None
            self._aac_next = max(start, self._aac_next or 0)
            self._ain = self._aac_next
        self._ain += frame.samples * AUDIO_RATE // (frame.sample_rate or AUDIO_RATE)
        frame.pts = None  # our count, not the resampler's, times the output
        tee = self._tee_active()
        if tee and self._opus is None:
            self._opus_next = self._ain - frame.samples * AUDIO_RATE // (frame.sample_rate or AUDIO_RATE)
        self._mux_audio(self._aac_resampler.resample(frame))
        if tee:
            self._opus_encode(frame)
        elif self._opus is not None:
            self._opus = self._opus_resampler = None

    def _prime_audio(self, video_pts: int) -> None:
        """Mux a few AAC frames of silence ahead of the first picture.

        The segmenter probes the first 32 KiB of the TS, which a 720p IDR fills on its own: unless
        an AAC packet (whose ADTS header carries the sample rate) comes first, the audio stream is
        probed without parameters and cannot be muxed.
        """
        frame_size = self._astream.codec_context.frame_size or 1024
        self._aac_next = video_pts * AUDIO_RATE // 90000 - 3 * frame_size
        for _ in range(3):
            silence = av.AudioFrame(format="fltp", layout="stereo", samples=frame_size)
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            silence.sample_rate = AUDIO_RATE
            self._mux_audio([silence])
        self._ain = self._aac_next

    def _new_aac_resampler(self) -> Any:
        return av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE,
                                 frame_size=self._astream.codec_context.frame_size or 1024)

    def _mux_audio(self, frames: list[Any]) -> None:
        for out in frames:
            out.pts = self._aac_next
            out.time_base = AUDIO_TB
            self._aac_next = (self._aac_next or 0) + out.samples
            for packet in self._astream.encode(out):
                self._container.mux(packet)

    def _opus_encode(self, frame: Any) -> None:
        if self._opus is None:
            self._opus = opus_encoder()
            self._opus_resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE,
                                                     frame_size=OPUS_FRAME)
        for out in self._opus_resampler.resample(frame):
            out.pts = self._opus_next
            out.time_base = AUDIO_TB
            self._opus_next += out.samples
            for packet in self._opus.encode(out):
                self._tee_audio(bytes(packet), self._opus_next - OPUS_FRAME)

    def _flush(self) -> None:
        if self._container is None:
            return
        if self._venc is not None:
            self._mux_video(self._venc.encode(None))
        if self._astream is not None and self._aac_next is not None:
            self._mux_audio(self._aac_resampler.resample(None))
            for packet in self._astream.encode(None):
                self._container.mux(packet)


class _CopyTap(queue.Queue[Any]):
    """Stands in for an aiortc receiver's decoder queue: H.264 frames are taken, not decoded.

    aiortc's receiver puts each frame its jitter buffer completes, ``(codec, JitterFrame)``, in
    this queue for its decoder thread (``aiortc.rtcrtpreceiver.decoder_worker``); H.264 ones go to
    ``on_h264(data, timestamp)`` instead (on the event loop) unless it returns False, the rest
    (another codec, and the ``None`` that stops the thread and ends the track) go on to the
    decoder as before.
    """

    def __init__(self, on_h264: Callable[[bytes, int], bool]) -> None:
        super().__init__()
        self._on_h264 = on_h264
        self.copying = True  # False: H.264 goes to the decoder too

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None and self.copying:
            codec, frame = item
            if str(codec.mimeType).lower() == "video/h264" and self._on_h264(bytes(frame.data), int(frame.timestamp)):
                return
        super().put(item, block, timeout)


# aiortc 1.16 internals (pinned in pyproject): the receiver's decoder queue, read by its decoder
# thread, which receive() starts once the connection is up.
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_STARTED = "_RTCRtpReceiver__started"


def tap_h264(receiver: RTCRtpReceiver, on_h264: Callable[[bytes, int], bool]) -> _CopyTap | None:
    """Take ``receiver``'s H.264 frames before its decoder; None if aiortc has changed."""
    if not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue) or getattr(receiver, _STARTED, True):
        log.warning("WHIP: cannot take H.264 from this aiortc's receiver; decoding and re-encoding it")
        return None
    tap = _CopyTap(on_h264)
    setattr(receiver, _DECODER_QUEUE, tap)
    return tap


class _Writer:
    """The file object the TS muxer writes to."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def write(self, data: bytes) -> int:
        self._write(bytes(data))
        return len(data)


# ---------------------------------------------------------------------------------------------
# Sessions


class WhipSession:
    """One WHIP publisher: its peer connection, frame pumps, encoder thread and sink."""

    def __init__(self, server: WhipServer, stream: str, remote: str, pc: RTCPeerConnection) -> None:
        self.server = server
        self.id = secrets.token_urlsafe(12)
        self.stream = stream
        self.remote = remote
        self.pc = pc
        self.started = time.monotonic()
        self.frames = _FrameQueue(server.settings.queue_frames, on_video_gap=self.send_pli)
        self.tracks: list[MediaStreamTrack] = []
        self._taps: list[_CopyTap] = []
        self._switch_at_idr = False  # the next H.264 IDR goes to aiortc's decoder, and all after it
        self.sink: PublishSink | None = None
        self.tee: LiveTee | None = None
        self.encoder: _TsEncoder | None = None
        self.closed = False
        self._clean = False
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._error: StreamgwError | None = None

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

    def start(self, sink: PublishSink, tee: LiveTee | None) -> None:
        """Start the encoder thread and the frame pumps."""
        self.sink = sink
        self.tee = tee
        kinds = {t.kind for t in self.tracks}
        self.encoder = _TsEncoder(
            self.server.settings, "video" in kinds, "audio" in kinds,
            write=self._threadsafe(self._deliver),
            tee_video=self._threadsafe(self._tee_video),
            tee_audio=self._threadsafe(self._tee_audio),
            tee_active=lambda: tee is not None and tee.active,
            request_keyframe=self._threadsafe(self.send_pli),
            stop_copying=self._threadsafe(self._stop_copying),
            decode_from_next_idr=self._threadsafe(self._decode_from_next_idr),
        )
        self._thread = threading.Thread(target=self._run_encoder, name=f"whip-{self.stream}", daemon=True)
        self._thread.start()
        self._tasks.append(asyncio.create_task(self._pump_all()))
        self._tasks.append(asyncio.create_task(self._watch_connect()))

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed") and not self.closed:
                log.info("stream %s: WHIP peer %s %s", self.stream, self.remote, self.pc.connectionState)
                self.server.spawn(self.close(clean=False))

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
                    self.server.spawn(receiver._send_rtcp_pli(source.source))

    def _hand_to_decoder(self) -> None:
        """From now on H.264 goes to aiortc's decoder (and the encoder thread re-encodes it)."""
        for tap in self._taps:
            tap.copying = False

    def _stop_copying(self) -> None:
        self._hand_to_decoder()
        self.send_pli()  # aiortc's decoder starts at the next IDR

    def _decode_from_next_idr(self) -> None:
        self._switch_at_idr = True

    def _on_access_unit(self, data: bytes, timestamp: int) -> bool:
        """Take an H.264 access unit to copy; False: aiortc is to decode it (and all after it)."""
        keyframe = is_idr(data)
        if keyframe and self._switch_at_idr:
            self._hand_to_decoder()
            return False
        self.frames.put(_Item("h264", _AccessUnit(data, timestamp, keyframe), time.monotonic()))
        return True

    def _threadsafe(self, fn: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to deliver to
                self._loop.call_soon_threadsafe(fn, *args)
        return call

    def _deliver(self, data: bytes) -> None:
        if self.sink is None or self._error is not None:
            return
        try:
            self.sink.write(data)
        except StreamgwError as exc:
            self._error = exc
            log.warning("stream %s: WHIP publisher dropped: %s", self.stream, exc)
            self.server.spawn(self.close(clean=False))

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
            self.frames.put(_Item(track.kind, frame, time.monotonic()))

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self.server.settings.connect_timeout)
        if self.pc.connectionState != "connected" and not self.closed:
            log.info("stream %s: WHIP peer %s did not connect in %.0f s", self.stream, self.remote,
                     self.server.settings.connect_timeout)
            await self.close(clean=False)

    def _run_encoder(self) -> None:
        assert self.encoder is not None
        error: StreamgwError | None = None
        try:
            self.encoder.run(self.frames)
        except StreamgwError as exc:
            error = exc
        except Exception as exc:  # a bug must still end the stream, never hang it
            log.exception("stream %s: WHIP encoder crashed", self.stream)
            error = MediaError(f"WHIP encoder crashed: {exc}")
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._encoder_done, error)

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
            self.server.spawn(self.close(clean=False))

    async def close(self, *, clean: bool) -> None:
        """End the session: ``clean`` (a DELETE) ends the stream, otherwise it may reconnect."""
        if self.closed:
            return
        self.closed = True
        self._clean = clean
        self.server._forget(self)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self.frames.close()
        if self._thread is not None:
            await asyncio.wait([self._done], timeout=10)
        elif self.sink is not None:
            self.sink.close(clean=clean)
        await self.pc.close()
        enc = self.encoder
        log.info("stream %s: WHIP session %s closed (%s; %d pictures, %d of them copied, %d dropped, "
                 "%d IDRs asked for)", self.stream, self.id, "clean" if clean else "dropped",
                 enc.frames if enc else 0, enc.copied if enc else 0, self.frames.dropped,
                 enc.keyframe_requests if enc else 0)


class WhipServer:
    """WHIP sessions by id: ``publish`` answers an offer, ``stop`` ends a session (a DELETE)."""

    def __init__(self, open_publisher: OpenPublisher, settings: WhipSettings, ice: IceSettings,
                 open_tee: OpenTee | None = None) -> None:
        self.open_publisher = open_publisher
        self.settings = settings
        self.ice = ice
        self.open_tee = open_tee
        self.sessions: dict[str, WhipSession] = {}
        self._pending = 0
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the server keeps a reference to (a session closing itself)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def publish(self, stream: str, offer: str, remote: str) -> tuple[str, str]:
        """Start publishing ``stream`` from ``offer``; returns (session id, answer SDP).

        Raises ProtocolError (bad offer), StreamBusy, BadStreamName, CapacityError.
        """
        if self._closing or len(self.sessions) + self._pending >= self.settings.max_sessions:
            raise CapacityError(f"at WHIP capacity ({self.settings.max_sessions} publishers)")
        self._pending += 1
        pc = new_peer_connection(self.ice)
        sink: PublishSink | None = None
        try:
            session = WhipSession(self, stream, remote, pc)
            # Our codec preferences must be on transceivers before the offer is applied, and
            # aiortc cannot answer with a transceiver the offer has no m-section for.
            for media in offered_media(offer):
                transceiver = pc.addTransceiver(media.kind, direction="recvonly")
                if media.kind == "video":
                    prefer_codecs(transceiver, ["video/H264"])  # copied as it is (or cheaper to decode than VP8)
            answer = await asyncio.wait_for(answer_offer(pc, offer, self.ice, session.take_tracks),
                                            self.settings.negotiate_timeout)
            # The stream exists from here on (this also refuses a name already live).
            sink = await self.open_publisher(stream, f"whip:{remote}", "mpegts")
            if self._closing:
                raise CapacityError("the gateway is shutting down")
        except asyncio.TimeoutError as exc:
            await pc.close()
            raise CapacityError(f"WHIP negotiation took over {self.settings.negotiate_timeout:.0f} s") from exc
        except BaseException:
            if sink is not None:
                sink.close(clean=True)
            await pc.close()
            raise
        finally:
            self._pending -= 1
        tee = self.open_tee(stream, session.request_keyframe) if self.open_tee else None
        self.sessions[session.id] = session
        session.start(sink, tee)
        log.info("stream %s: WHIP publisher %s (session %s, %s)", stream, remote, session.id,
                 "+".join(sorted(t.kind for t in session.tracks)))
        return session.id, answer

    async def stop(self, session_id: str) -> bool:
        """End a session cleanly (the stream ends); False if there is no such session."""
        session = self.sessions.get(session_id)
        if session is None:
            return False
        await session.close(clean=True)
        return True

    def _forget(self, session: WhipSession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    async def close(self) -> None:
        """End every session (flushing their last segments)."""
        self._closing = True
        await asyncio.gather(*(s.close(clean=True) for s in list(self.sessions.values())),
                             return_exceptions=True)
        if self._background:
            await asyncio.wait(list(self._background), timeout=10)
