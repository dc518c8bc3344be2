"""The WHIP muxer: one publisher's frames or access units -> H.264 + AAC packets, in a worker thread.

    aiortc (event loop) ──▶ FrameQueue (bounded, drops) ──▶ WhipMuxer thread: H.264 copied, or
        libx264 (keyframe every target segment duration, on the RTP clock) + AAC ──▶ packets, in
        batches, straight to the publisher's segment cutter (no MPEG-TS in between, no event loop)
                                                          └─▶ the same H.264 packets + Opus (WHEP)

The session (``ingest/whip.py``) puts what aiortc hands it in the :class:`FrameQueue`; this
thread owns every PyAV object, feeds the cutter through :class:`CutFeed` and hands WHEP's
packets back through callbacks that the session makes thread-safe. The event loop never encodes.

The cutter's muxers copy their streams from templates (:class:`StreamTemplates`): the first
packets muxed once into an MPEG-TS in memory and probed, so that they describe exactly what
follows. Every later packet goes to the cutter as it is.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import av
import av.error

from streamgw.errors import MediaError, StreamgwError
from streamgw.media.h264 import first_sps, sps_resolution
from streamgw.media.opus import OpusEncoder
from streamgw.media.rtc import AUDIO_RATE, AUDIO_TB, VIDEO_TB
from streamgw.media.segmenter import SegmentCutter
from streamgw.media.x264 import idle_x264_options, realtime_x264_options

log = logging.getLogger(__name__)


class CutFeed(Protocol):
    """Where the packets go: the publisher's segment cutter, run elsewhere in order (thread-safe)."""

    def feed(self, job: Callable[[SegmentCutter], None], *, size: int, urgent: bool) -> None:
        """Run ``job`` on the cutter; raises :class:`StreamgwError` once the stream has failed."""


_TEMPLATE_PACKETS = 64  # packets held at most while the templates wait for the other stream's first


class StreamTemplates:
    """Input streams that describe a WHIP publisher's H.264 (Annex B) and AAC packets.

    The cutter's muxers copy their streams from input streams (``add_stream_from_template``); the
    first video and audio packets are muxed once into an MPEG-TS in memory and probed for them.
    The AAC packets stay raw: ``audio_config`` (the encoder's AudioSpecificConfig) lets the
    cutter's muxers frame them.
    """

    def __init__(self, video: Any, width: int, height: int, audio: Any, audio_encoder: Any) -> None:
        buf = io.BytesIO()
        out: Any = av.open(buf, "w", format="mpegts")
        vstream: Any = None
        astream: Any = None
        if video is not None:
            vstream = out.add_stream("h264", rate=30)
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = "yuv420p"
            vstream.time_base = VIDEO_TB
            vstream.codec_context.options = idle_x264_options()  # opened by the muxer, never used
        if audio is not None:
            astream = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        for packet, stream, tb in ((video, vstream, VIDEO_TB), (audio, astream, AUDIO_TB)):
            if packet is not None:
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, tb
                copy.stream = stream
                out.mux(copy)
        out.close()
        self._input: Any = av.open(io.BytesIO(buf.getvalue()), "r", format="mpegts")
        streams = self._input.streams
        self.video = streams.video[0] if video is not None and streams.video else None
        self.audio = streams.audio[0] if audio is not None and streams.audio else None
        self.audio_config = bytes(audio_encoder.extradata) if audio_encoder is not None else None
        if (video is not None and self.video is None) or (audio is not None and self.audio is None):
            raise MediaError("WHIP: the first packets could not be probed")

@dataclass(frozen=True, slots=True)
class WhipEncoding:
    """How the WHIP muxer encodes what it does not copy."""

    target_duration: Fraction = Fraction(2)  # the GOP: one keyframe per target segment
    video_bitrate: int = 2_500_000  # cap (x264 VBV), bits/s; quality is CRF 23 below it
    audio_bitrate: int = 128_000  # AAC
    x264_preset: str = "ultrafast"


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """An H.264 access unit as aiortc's jitter buffer assembled it (Annex B), not decoded."""

    data: bytes
    pts: int  # the track's RTP clock (1/90000 s) from 0
    keyframe: bool  # holds an IDR


@dataclass(frozen=True, slots=True)
class QueuedFrame:
    """What the muxer thread is handed: a decoded frame or a copied access unit."""

    kind: str  # "video" | "audio" (decoded) | "h264" (copied)
    frame: Any  # av.VideoFrame | av.AudioFrame | AccessUnit, pts on the track's RTP clock from 0
    arrival: float  # time.monotonic() when aiortc handed it over


class FrameQueue:
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
        self._items: collections.deque[QueuedFrame] = collections.deque()
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: QueuedFrame) -> None:
        """Queue ``item``, or drop it (counted) when full; never blocks."""
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
        """No more frames: ``get`` drains what is queued, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self) -> QueuedFrame | None:
        """The next frame, or None once closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._closed)
            return self._items.popleft() if self._items else None


class TrackClock:
    """Maps one track's RTP-clock pts onto the session clock (seconds since the first frame).

    The two tracks have unrelated RTP origins (RFC 3550 5.1); each is anchored at the arrival
    time of its first frame, then follows its RTP clock. A jump of more than a second against the
    arrival times (a sender that paused) re-anchors it.
    """

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.base: tuple[float, Fraction] | None = None  # (arrival, rtp seconds) of the anchor

    def seconds(self, pts: int, time_base: Fraction, arrival: float) -> Fraction:
        """Where ``pts`` (in ``time_base``, received at ``arrival``) lies on the session clock."""
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


class WhipMuxer:
    """Muxes one publisher's media to MPEG-TS (H.264 + AAC) in a worker thread.

    Copied H.264 access units are muxed as they are; ``request_keyframe`` asks the publisher for
    an IDR when one is due (every target duration on the RTP clock), when a WHEP viewer needs one,
    and while waiting for the first. Decoded frames are encoded with libx264: the output
    resolution changes only at a scheduled keyframe, so every segment has one resolution; in
    between, frames are scaled to the current one.

    ``cut`` gets the packets (in this thread, batched per picture); ``tee_video``/``tee_audio``
    the packets for WHEP, and ``request_keyframe`` and the mode changes are called in this thread
    too (the caller hands them to its loop).
    """

    # While an asked-for IDR has not come, ask again this often (a lost PLI), in 1/90000 s.
    PLI_RETRY = 27000

    def __init__(self, settings: WhipEncoding, has_video: bool, has_audio: bool,
                 cut: CutFeed,
                 tee_video: Callable[[bytes, int, bool], None],
                 tee_audio: Callable[[bytes, int], None],
                 tee_active: Callable[[], bool],
                 request_keyframe: Callable[[], None] = lambda: None,
                 stop_copying: Callable[[], None] = lambda: None,
                 decode_from_next_idr: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.has_video = has_video
        self.has_audio = has_audio
        self._cut = cut
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
        self.size: tuple[int, int] | None = None
        self._origin: float | None = None
        self._clocks: dict[str, TrackClock] = {}
        self._opened = False
        self._aenc: Any = None  # the AAC encoder
        self._templates: StreamTemplates | None = None
        self._early: list[tuple[Any, bool]] = []  # (packet, is video) held until the templates exist
        self._venc: Any = None
        self._pending_size: tuple[int, int] | None = None
        self._gop = int(settings.target_duration / VIDEO_TB)
        self._next_kf = 0
        self._last_vpts = -1
        self._aac_resampler: Any = None
        self._aac_next: int | None = None  # pts of the next AAC frame, 1/48000
        self._ain: int | None = None  # where the next input audio frame is expected, 1/48000
        self._opus: OpusEncoder | None = None  # while the tee is active
        self._sps: bytes | None = None  # of the copied stream
        self._copy_resync = True  # a copied stream (re)starts at an IDR
        self._pli_pts: int | None = None  # when an IDR was last asked for, until it comes
        self._asked_since: int | None = None  # when an IDR was first asked for, until it comes
        self._decode_asked = False  # the publisher ignores keyframe requests: decoded from its next IDR
        self._drop_copied = False  # the publisher's H.264 has B-frames: queued access units are left over
        self._last_rtp: int | None = None

    # -- the thread body

    def run(self, frames: FrameQueue) -> None:
        """Encode until ``frames`` closes, then flush. Raises MediaError on encoder failure."""
        try:
            while (item := frames.get()) is not None:
                if self._origin is None:
                    # The session clock starts at 1 s, so that audio primed ahead of the first
                    # picture (_prime_audio) still has a positive timestamp.
                    self._origin = item.arrival - 1.0
                kind = "audio" if item.kind == "audio" else "video"  # copied or decoded: one clock
                clock = self._clocks.setdefault(kind, TrackClock(self._origin))
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

    def start(self, frames: FrameQueue, stream: str, done: Callable[[StreamgwError | None], None]) -> threading.Thread:
        """Run :meth:`run` in a thread of its own; ``done(error or None)`` is called in it at the end."""
        def body() -> None:
            error: StreamgwError | None = None
            try:
                self.run(frames)
            except StreamgwError as exc:
                error = exc
            except Exception as exc:  # a bug must still end the stream, never hang it
                log.exception("stream %s: WHIP encoder crashed", stream)
                error = MediaError(f"WHIP encoder crashed: {exc}")
            done(error)

        thread = threading.Thread(target=body, name=f"whip-{stream}", daemon=True)
        thread.start()
        return thread

    def _open(self) -> None:
        self._opened = True
        if self.has_audio:
            enc = av.CodecContext.create("aac", "w")
            enc.sample_rate = AUDIO_RATE
            enc.layout = "stereo"
            enc.format = "fltp"
            enc.time_base = AUDIO_TB
            enc.bit_rate = self.settings.audio_bitrate
            enc.open()
            self._aenc = enc
            self._aac_resampler = self._new_aac_resampler()

    def _new_video_encoder(self, width: int, height: int) -> Any:
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height = width, height
        enc.pix_fmt = "yuv420p"
        enc.time_base = VIDEO_TB
        enc.framerate = Fraction(30)
        # Keyframes come only when asked for (every target duration on the clock).
        enc.options = realtime_x264_options(self.settings.x264_preset, self.settings.video_bitrate)
        self.size = (width, height)
        return enc

    def _video_pts(self, t: Fraction) -> int:
        pts = int(t / VIDEO_TB)
        if pts <= self._last_vpts:
            pts = self._last_vpts + 1  # strictly increasing, whatever the sender did
        self._last_vpts = pts
        return pts

    def _copy(self, au: AccessUnit, t: Fraction) -> None:
        if self._drop_copied:
            return  # left over from before the switch to decoding
        if self._last_rtp is not None and not 0 <= au.pts - self._last_rtp < 1 << 31:
            # Timestamps out of order: B-frames (OBS with bframes > 0), which WebRTC viewers
            # cannot play and this path cannot reorder. Decode and re-encode from here on.
            # (aiortc's timestamp mapper takes any step back for a wrap: it shows as + ~2^32.)
            log.warning("WHIP: the publisher's H.264 has B-frames; decoding and re-encoding it")
            self._drop_copied = True
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
                    log.info("WHIP: resolution now %dx%d", *size)
                self._sps, self.size = sps, size
        if self._copy_resync:
            if not au.keyframe or self.size is None:
                self._ask_keyframe(pts)  # nothing decodes before an IDR with its SPS
                return
            self._copy_resync = False
        if not self._opened:
            assert self.size is not None
            self._open()
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
        if self._asked_since is not None and pts - self._asked_since > self._gop and not self._decode_asked:
            # A segment duration and no IDR: the publisher ignores PLI and has a long GOP of
            # its own. From its next IDR on, aiortc decodes and this thread makes the GOP.
            log.warning("WHIP: the publisher does not answer keyframe requests; re-encoding it from its next IDR")
            self._decode_asked = True
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
        if not self._opened:
            self._open()
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
        self._to_cut([(p, True) for p in packets])

    def _to_cut(self, packets: list[tuple[Any, bool]]) -> None:
        """Hand packets (each with whether it is video) to the cutter: a keyframe at once."""
        if not packets:
            return
        if self._templates is None:
            self._early.extend(packets)
            packets = self._make_templates()
            if not packets:
                return
        templates = self._templates
        assert templates is not None
        batch: list[Any] = []
        urgent = templates.video is None
        size = 0
        for packet, is_video in packets:
            stream = templates.video if is_video else templates.audio
            if stream is None:
                continue
            if not is_video:  # 1/48000 -> the template's 1/90000 (exact for whole AAC frames)
                packet.pts = packet.dts = packet.pts * 90000 // AUDIO_RATE
                packet.duration = (packet.duration or 0) * 90000 // AUDIO_RATE
            packet.time_base = VIDEO_TB
            packet.stream = stream
            urgent = urgent or (is_video and bool(packet.is_keyframe))
            size += packet.size
            batch.append(packet)
        if batch:
            arrival = time.monotonic()

            def job(cutter: SegmentCutter) -> None:
                for packet in batch:
                    cutter.push(packet, arrival)

            self._cut.feed(job, size=size, urgent=urgent)

    def _make_templates(self, *, force: bool = False) -> list[tuple[Any, bool]]:
        """Make the templates once the first packet of each stream is here; returns what was held."""
        video = next((p for p, v in self._early if v), None)
        audio = next((p for p, v in self._early if not v), None)
        complete = (video is not None or not self.has_video) and (audio is not None or not self.has_audio)
        if not complete and len(self._early) < _TEMPLATE_PACKETS and not force:
            return []
        width, height = self.size or (0, 0)
        self._templates = templates = StreamTemplates(video, width, height, audio, self._aenc if audio else None)
        config = templates.audio_config
        self._cut.feed(lambda cutter: cutter.open(templates.video, templates.audio, audio_config=config),
                       size=0, urgent=False)
        held, self._early = self._early, []
        return held

    def _audio(self, frame: Any, t: Fraction) -> None:
        if not self._opened:
            if self.has_video:
                return  # nothing before the first picture: segments start with video
            self._open()
        start = int(t * AUDIO_RATE)
        if self._ain is None or abs(start - self._ain) > AUDIO_RATE // 10:
            # The first frame, or a gap of over 0.1 s (lost packets, a paused sender): the
            # sample count restarts here; small jitter is ignored (the count stays continuous).
            if self._ain is not None:
                self._mux_audio(self._aac_resampler.resample(None))
                self._aac_resampler = self._new_aac_resampler()
                self._opus = None
            self._aac_next = max(start, self._aac_next or 0)
            self._ain = self._aac_next
        self._ain += frame.samples * AUDIO_RATE // (frame.sample_rate or AUDIO_RATE)
        frame.pts = None  # our count, not the resampler's, times the output
        tee = self._tee_active()
        if tee and self._opus is None:
            self._opus = OpusEncoder(self._ain - frame.samples * AUDIO_RATE // (frame.sample_rate or AUDIO_RATE))
        self._mux_audio(self._aac_resampler.resample(frame))
        if self._opus is not None and tee:
            for data, pts in self._opus.encode(frame):
                self._tee_audio(data, pts)
        elif self._opus is not None:
            self._opus = None

    def _prime_audio(self, video_pts: int) -> None:
        """Encode a few AAC frames of silence ahead of the first picture.

        The first segment then has audio from its start, and the templates (made when the first
        picture comes) have an AAC packet to probe.
        """
        frame_size = self._aenc.frame_size or 1024
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
                                 frame_size=self._aenc.frame_size or 1024)

    def _mux_audio(self, frames: list[Any]) -> None:
        packets: list[tuple[Any, bool]] = []
        for out in frames:
            out.pts = self._aac_next
            out.time_base = AUDIO_TB
            self._aac_next = (self._aac_next or 0) + out.samples
            packets.extend((p, False) for p in self._aenc.encode(out))
        self._to_cut(packets)

    def _flush(self) -> None:
        if not self._opened:
            return
        if self._venc is not None:
            self._mux_video(self._venc.encode(None))
        if self._aenc is not None and self._aac_next is not None:
            self._mux_audio(self._aac_resampler.resample(None))
            self._to_cut([(p, False) for p in self._aenc.encode(None)])
        if self._early:  # the stream ended before the other stream's first packet: no more waiting
            self._to_cut(self._early_release())

    def _early_release(self) -> list[tuple[Any, bool]]:
        held, self._early = self._early, []
        if self._templates is None and held:
            self._early = held
            held = self._make_templates(force=True)
        return held
