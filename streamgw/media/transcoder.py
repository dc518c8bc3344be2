"""Transcode one source MPEG-TS segment into a ladder of H.264 renditions with PyAV.

Blocking: the orchestrator runs :func:`transcode` in a worker thread (PyAV releases the GIL in
decode, scale, encode and mux). The source video is decoded once; each rendition scales it with
its own libswscale context, encodes it with libx264 and muxes it, with the source's audio packets
copied unchanged, into its own in-memory MPEG-TS. Renditions keep the source's timestamps (first
video pts and duration), so a player can switch renditions at any segment boundary; each starts
with PAT/PMT and an IDR frame preceded by SPS/PPS. Renditions are 8-bit 4:2:0 whatever the source
(4:2:2, 4:4:4 and 10-bit sources included), which every browser decodes. An audio stream with no
frame in the segment is left out.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import Interpolation, VideoReformatter
from av.video.stream import VideoStream

from streamgw.errors import TranscodeError
from streamgw.media.mpegts import SegmentBytes, muxer_options
from streamgw.media.x264 import x264_options

H264Profile = Literal["baseline", "main", "high", "constrained_high"]
Gop = Fraction | Literal["intra-only"] | None
Scaler = Literal["area", "fast_bilinear", "bilinear", "bicubic"]

H264_PROFILES: tuple[str, ...] = ("baseline", "main", "high", "constrained_high")
X264_PRESETS: tuple[str, ...] = ("ultrafast", "superfast", "veryfast")
_SCALERS: Mapping[str, Interpolation] = MappingProxyType({
    "area": Interpolation.AREA,  # box filter: the cheapest that does not alias when downscaling
    "fast_bilinear": Interpolation.FAST_BILINEAR,  # cheaper still, but skips pixels: aliasing
    "bilinear": Interpolation.BILINEAR,
    "bicubic": Interpolation.BICUBIC,  # the ffmpeg CLI's default
})
# x264 never delays dts by more than its longest B-frame run (16) plus one frame: a segment
# that starts closer to 0 than that is encoded without B-frames, because a negative dts would
# make FFmpeg's muxer shift every timestamp of the rendition (avoid_negative_ts).
_MAX_REORDER_FRAMES = 17
_AUDIO_CODECS = ("aac", "mp3")
_TS_TIME_BASE = Fraction(1, 90000)
_PROBE_MICROSECONDS = 3600 * 1_000_000  # no time limit on probing: the segment's size bounds it


@dataclass(frozen=True, slots=True)
class RenditionSpec:
    """One rung of a transcoding ladder.

    ``width`` x ``height`` is a box: the output keeps the source's display aspect ratio and fits
    inside it, with even dimensions. ``bitrate`` is in bit/s: x264 with VBV maxrate = bitrate and
    bufsize = one second (x264 calls it rc=cbr; no filler). ``fps`` None keeps the source's
    frames and timestamps; otherwise frames are dropped or repeated onto a ``fps`` grid starting
    at the segment's first frame.
    ``gop`` is the keyframe interval in seconds, "intra-only", or None for one IDR at the
    segment start (x264 may still add IDRs at scene cuts). ``h264_profile`` None lets x264
    choose (High for 8-bit 4:2:0); "constrained_high" is High without B-frames.
    """

    name: str
    width: int
    height: int
    bitrate: int
    fps: Fraction | None = None
    gop: Gop = None
    h264_profile: H264Profile | None = None
    format: Literal["mpegts"] = "mpegts"

    def __post_init__(self) -> None:
        if not self.name:
            raise TranscodeError("rendition name is empty")
        if not (2 <= self.width <= 8192 and 2 <= self.height <= 8192):
            raise TranscodeError(f"rendition {self.name}: size {self.width}x{self.height} out of range")
        if not 1000 <= self.bitrate <= 200_000_000:
            raise TranscodeError(f"rendition {self.name}: bitrate {self.bitrate} out of range")
        if self.fps is not None and not Fraction(1, 1000) <= self.fps <= 240:
            raise TranscodeError(f"rendition {self.name}: fps {self.fps} out of range")
        if self.gop is not None and self.gop != "intra-only":
            if isinstance(self.gop, bool) or not isinstance(self.gop, int | Fraction) or self.gop <= 0:
                raise TranscodeError(f"rendition {self.name}: gop {self.gop!r} is not a positive duration")
        if self.h264_profile is not None and self.h264_profile not in H264_PROFILES:
            raise TranscodeError(f"rendition {self.name}: unknown H.264 profile {self.h264_profile!r}")
        if self.format != "mpegts":
            raise TranscodeError(f"rendition {self.name}: unsupported format {self.format!r}")


@dataclass(frozen=True, slots=True)
class TranscodeOptions:
    """Encoder choices and input bounds shared by every rendition of a call."""

    preset: str = "veryfast"
    tune: str | None = None  # e.g. "zerolatency": sliced threads, no lookahead, no B-frames
    scaler: Scaler = "area"
    cascade: bool = True  # scale small rungs from a larger rung rather than the source (see _Scaler)
    max_bytes: int = 64 * 1024 * 1024  # source segment size
    max_pixels: int = 4096 * 2304  # source frame area (4K DCI)
    max_frames: int = 3600  # decoded source frames, and frames encoded per rendition
    x264_params: tuple[tuple[str, str], ...] = ()  # extra x264 options, e.g. (("ref", "1"),)

    def __post_init__(self) -> None:
        if self.preset not in X264_PRESETS:
            raise TranscodeError(f"x264 preset {self.preset!r} not allowed (one of {', '.join(X264_PRESETS)})")
        if self.scaler not in _SCALERS:
            raise TranscodeError(f"unknown scaler {self.scaler!r}")


DEFAULT_OPTIONS = TranscodeOptions()  # frozen: safe as a shared default


def fit_size(src_width: int, src_height: int, box_width: int, box_height: int,
             sample_aspect: Fraction | None = None) -> tuple[int, int]:
    """The largest even size with the source's display aspect ratio inside the box."""
    display = Fraction(src_width, src_height) * (sample_aspect if sample_aspect else 1)
    if Fraction(box_width, box_height) > display:
        return _even(display * box_height, box_width), _even(box_height, box_height)
    return _even(box_width, box_width), _even(box_width / display, box_height)


def _even(value: Fraction | int, limit: int) -> int:
    """Round to the nearest even integer, at least 2 and at most ``limit`` rounded down to even."""
    rounded = 2 * math.floor(Fraction(value) / 2 + Fraction(1, 2))
    return max(2, min(rounded, limit - limit % 2))


def transcode(segment: bytes, specs: Sequence[RenditionSpec], *, threads: int = 1,
              options: TranscodeOptions = DEFAULT_OPTIONS) -> list[bytes]:
    """Transcode one self-contained MPEG-TS segment into one MPEG-TS per spec, in order.

    Blocking. ``threads`` is given to the decoder, each scaler and each x264 encoder. Raises
    :class:`TranscodeError` on an oversized, empty or undecodable segment or one without video.
    """
    if not 1 <= threads <= 64:
        raise TranscodeError(f"threads must be 1..64, not {threads}")
    if not specs:
        return []
    if not segment:
        raise TranscodeError("empty segment")
    if len(segment) > options.max_bytes:
        raise TranscodeError(f"segment of {len(segment)} bytes exceeds {options.max_bytes}")
    try:
        with contextlib.ExitStack() as stack:
            return _Job(segment, specs, threads, options, stack).run()
    except av.error.FFmpegError as exc:
        raise TranscodeError(f"transcode failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _AudioPacket:
    """A source audio packet kept as bytes, to be muxed into every rendition."""

    data: bytes
    pts: int | None
    dts: int
    duration: int
    order: int  # dts in the video time base, to interleave with video packets


class _Job:
    """One call of :func:`transcode`: demux, decode once, feed every rendition."""

    def __init__(self, segment: bytes, specs: Sequence[RenditionSpec], threads: int,
                 options: TranscodeOptions, stack: contextlib.ExitStack) -> None:
        self.specs = specs
        self.threads = threads
        self.options = options
        self.stack = stack
        try:
            # The whole segment is in memory, so probing may read all of it: a short probe misses
            # what comes late. At 28 Mb/s the first AAC packet can sit past 1 MB (behind two
            # keyframes), where a 64 KiB probe left it with no sample rate and the muxer refused
            # the rendition; it also guessed 120 fps for 60 (too few frames seen). FFmpeg stops
            # as soon as every stream is known (~20 frames, ~0.1 s of CPU for a 2 s 1080p60 one).
            self.source: InputContainer = av.open(
                io.BytesIO(segment), "r", format="mpegts",
                options={"analyzeduration": str(_PROBE_MICROSECONDS), "probesize": str(max(32, len(segment)))},
            )
        except av.error.FFmpegError as exc:
            raise TranscodeError(f"cannot read segment as MPEG-TS: {exc}") from exc
        stack.callback(self.source.close)
        self.renditions: list[_Rendition] = []
        self.audio_packets: list[_AudioPacket] = []
        self.frames = 0
        self.start: int | None = None
        self.last_pts: int | None = None
        self.last_step = 0
        self.scaler: _Scaler | None = None

    def run(self) -> list[bytes]:
        video = next(iter(self.source.streams.video), None)
        if video is None:
            raise TranscodeError("segment has no video stream")
        # An audio stream still without parameters after the whole segment was probed carries no
        # frame FFmpeg can parse: there is nothing to copy, and the muxer would refuse it.
        audio = next((s for s in self.source.streams.audio if s.codec_context.name in _AUDIO_CODECS
                      and s.codec_context.sample_rate > 0 and s.codec_context.channels > 0), None)
        decoder = video.codec_context
        decoder.thread_count = self.threads
        decoder.thread_type = "FRAME" if self.threads > 1 else "SLICE"
        streams: list[VideoStream | AudioStream] = [video] + ([audio] if audio is not None else [])
        video_tb = Fraction(video.time_base or _TS_TIME_BASE)
        audio_tb = Fraction(audio.time_base or _TS_TIME_BASE) if audio is not None else _TS_TIME_BASE
        for packet in self.source.demux(streams):
            if packet.stream is video:
                for frame in decoder.decode(packet if packet.size else None):
                    self._on_frame(frame, video, audio)
            elif packet.dts is not None and packet.size:
                order = int(packet.dts * Fraction(packet.time_base or audio_tb) / video_tb)
                self.audio_packets.append(
                    _AudioPacket(bytes(packet), packet.pts, packet.dts, packet.duration or 0, order))
        if self.start is None or self.last_pts is None:
            raise TranscodeError("segment has no decodable video frame")
        step = self.last_step or int(1 / (_source_rate(video) * video_tb))
        end = self.last_pts + step
        return [r.finish(end) for r in self.renditions]

    def _on_frame(self, frame: VideoFrame, video: VideoStream, audio: AudioStream | None) -> None:
        if frame.pts is None:
            raise TranscodeError("decoded video frame has no timestamp")
        if frame.width * frame.height > self.options.max_pixels:
            raise TranscodeError(f"frame size {frame.width}x{frame.height} exceeds {self.options.max_pixels} pixels")
        self.frames += 1
        if self.frames > self.options.max_frames:
            raise TranscodeError(f"segment has more than {self.options.max_frames} frames")
        if self.start is None:
            self.start = frame.pts
            time_base = Fraction(video.time_base or _TS_TIME_BASE)
            sizes = [fit_size(frame.width, frame.height, spec.width, spec.height, video.sample_aspect_ratio)
                     for spec in self.specs]
            self.scaler = _Scaler((frame.width, frame.height), sizes, _SCALERS[self.options.scaler], self.threads,
                                  cascade=self.options.cascade)
            for spec, size in zip(self.specs, sizes, strict=True):
                rendition = _Rendition(spec, size, frame.pts, time_base, _source_rate(video), audio,
                                       self.audio_packets, self.threads, self.options)
                self.stack.callback(rendition.close)
                self.renditions.append(rendition)
        elif self.last_pts is not None and frame.pts > self.last_pts:
            self.last_step = frame.pts - self.last_pts
        if frame.duration:
            self.last_step = frame.duration
        self.last_pts = frame.pts if self.last_pts is None else max(self.last_pts, frame.pts)
        assert self.scaler is not None
        picture = _Picture(frame, frame.pts, self.scaler)
        for rendition in self.renditions:
            rendition.push(picture)


def _source_rate(video: VideoStream) -> Fraction:
    rate = video.average_rate or video.guessed_rate or video.base_rate
    return Fraction(rate) if rate else Fraction(30)


class _Scaler:
    """Scales decoded frames to every rung's size, each rung from the cheapest good parent.

    A rung is scaled from the smallest other rung that is itself scaled from the source, is
    smaller than the source and at least 1.5 times the rung in both dimensions; otherwise from
    the source. For a 720p source and 144p/240p/360p this scales 720p->360p, then 360p->240p
    and 360p->144p: with AREA each stage is a box filter, the result differs from a direct
    720p->144p AREA scale by less than x264 changes it, and costs about 40% of it.
    """

    def __init__(self, source: tuple[int, int], sizes: Sequence[tuple[int, int]],
                 interpolation: Interpolation, threads: int, *, cascade: bool) -> None:
        self.source = source
        self.interpolation = interpolation
        self.threads = threads
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}
        self.contexts: dict[tuple[int, int], VideoReformatter] = {}
        area = source[0] * source[1]
        for size in sorted(set(sizes), key=lambda wh: wh[0] * wh[1], reverse=True):
            parents = [p for p, pp in self.parent.items()
                       if cascade and pp == source and p[0] * p[1] < area
                       and 2 * p[0] >= 3 * size[0] and 2 * p[1] >= 3 * size[1]]
            self.parent[size] = min(parents, key=lambda wh: wh[0] * wh[1], default=source)
            self.contexts[size] = VideoReformatter()

    def scale(self, frame: VideoFrame, size: tuple[int, int]) -> VideoFrame:
        """``frame`` (already at the parent's size of ``size``) scaled to ``size`` as yuv420p."""
        return self.contexts[size].reformat(frame, size[0], size[1], "yuv420p",
                                            interpolation=self.interpolation, threads=self.threads)


class _Picture:
    """One decoded source frame and its scaled versions, made on first use and shared by rungs."""

    __slots__ = ("frame", "pts", "scaler", "scaled")

    def __init__(self, frame: VideoFrame, pts: int, scaler: _Scaler) -> None:
        self.frame = frame
        self.pts = pts
        self.scaler = scaler
        self.scaled: dict[tuple[int, int], VideoFrame] = {}

    def at(self, size: tuple[int, int]) -> VideoFrame:
        """This picture as yuv420p at ``size``; the caller may set pts and pict_type on it."""
        if size == self.scaler.source and self.frame.format.name == "yuv420p":
            return self.frame
        scaled = self.scaled.get(size)
        if scaled is None:
            parent = self.scaler.parent[size]
            source = self.frame if parent == self.scaler.source else self.at(parent)
            scaled = self.scaled[size] = self.scaler.scale(source, size)
        return scaled


class _Rendition:
    """One rung being produced: scaler, x264 encoder and mpegts muxer into memory."""

    def __init__(self, spec: RenditionSpec, size: tuple[int, int], start: int, time_base: Fraction,
                 source_rate: Fraction, audio: AudioStream | None, audio_source: Sequence[_AudioPacket],
                 threads: int, options: TranscodeOptions) -> None:
        self.spec = spec
        self.width, self.height = size
        self.start = start
        self.time_base = time_base
        self.rate = spec.fps or source_rate
        self.threads = threads
        self.max_frames = options.max_frames
        self.buf = SegmentBytes()
        self.container: OutputContainer = av.open(self.buf, "w", format="mpegts", options=muxer_options())
        try:
            self.video = self.container.add_stream("libx264", rate=self.rate)
            self._configure(self.video, options)
            self.audio = self.container.add_stream_from_template(audio) if audio is not None else None
        except BaseException:
            self.close()
            raise
        self.audio_time_base = Fraction(audio.time_base or _TS_TIME_BASE) if audio is not None else _TS_TIME_BASE
        self.audio_source = audio_source  # grows while the job demuxes
        self.audio_next = 0
        self.encoded = 0
        self.held: _Picture | None = None
        self.held_slot = 0

    def _configure(self, stream: VideoStream, options: TranscodeOptions) -> None:
        spec = self.spec
        cc = stream.codec_context
        cc.width = self.width
        cc.height = self.height
        cc.pix_fmt = "yuv420p"
        cc.time_base = self.time_base
        stream.time_base = self.time_base
        cc.framerate = self.rate
        cc.bit_rate = spec.bitrate
        cc.thread_count = self.threads
        opts = x264_options(options.preset, tune=options.tune or None, maxrate=str(spec.bitrate),
                            bufsize=str(spec.bitrate), forced_idr=True, params=options.x264_params)
        if spec.h264_profile == "constrained_high":
            opts["profile"] = "high"
            opts["bf"] = "0"
        elif spec.h264_profile is not None:
            opts["profile"] = spec.h264_profile
        if spec.gop == "intra-only":
            opts["g"] = "1"
        elif spec.gop is not None:
            keyint = max(1, round(spec.gop * self.rate))
            opts.update(g=str(keyint), keyint_min=str(keyint), sc_threshold="0")
        if self.start * self.time_base < Fraction(_MAX_REORDER_FRAMES) / self.rate:
            opts["bf"] = "0"
        cc.options = opts

    def push(self, picture: _Picture) -> None:
        """Take the next decoded source picture (presentation order)."""
        if self.spec.fps is None:
            self._encode(picture, picture.pts)
            return
        # Nearest output slot (FFmpeg's fps filter, round=near); the last frame of a slot wins.
        slot = math.floor((picture.pts - self.start) * self.time_base * self.rate + Fraction(1, 2))
        if self.held is None or slot == self.held_slot:
            if slot >= 0:
                self.held, self.held_slot = picture, slot
            return
        if slot < self.held_slot:
            return
        self._emit(self.held, self.held_slot, slot)
        self.held, self.held_slot = picture, slot

    def _emit(self, picture: _Picture, first_slot: int, end_slot: int) -> None:
        """Encode ``picture`` once for each output slot in [first_slot, end_slot)."""
        for slot in range(first_slot, end_slot):
            self._encode(picture, self.start + math.floor(slot / (self.rate * self.time_base) + Fraction(1, 2)))

    def _encode(self, picture: _Picture, pts: int) -> None:
        self.encoded += 1
        if self.encoded > self.max_frames:
            raise TranscodeError(f"rendition {self.spec.name}: more than {self.max_frames} frames")
        frame = picture.at((self.width, self.height))
        frame.pts = pts
        frame.time_base = self.time_base
        # The first frame opens the GOP: an IDR with SPS/PPS in-band (no global header in TS).
        # Later frames must not carry the source's picture types: libx264 would obey them.
        frame.pict_type = PictureType.I if self.encoded == 1 else PictureType.NONE
        self._mux_video(self.video.encode(frame))

    def _mux_video(self, packets: list[Packet[VideoStream]]) -> None:
        for packet in packets:
            if packet.dts is not None:
                self._mux_audio_until(packet.dts)
            self.container.mux(packet)

    def _mux_audio_until(self, dts: int | None) -> None:
        """Mux the source audio packets up to video ``dts`` (all if None), in source order."""
        if self.audio is None:
            return
        source = self.audio_source
        while self.audio_next < len(source) and (dts is None or source[self.audio_next].order <= dts):
            item = source[self.audio_next]
            self.audio_next += 1
            packet = Packet(item.data)
            packet.pts = item.pts
            packet.dts = item.dts
            packet.duration = item.duration
            packet.time_base = self.audio_time_base
            packet.stream = self.audio
            self.container.mux(packet)

    def finish(self, end: int) -> bytes:
        """Flush at the segment's end pts (exclusive) and return the rendition's MPEG-TS bytes."""
        if self.spec.fps is not None and self.held is not None:
            # Nearest whole number of output frames: source timestamps jitter (FLV has whole
            # milliseconds), and a frame past the end would overlap the next segment's first.
            slots = max(1, math.floor((end - self.start) * self.time_base * self.rate + Fraction(1, 2)))
            if self.held_slot < slots:
                self._emit(self.held, self.held_slot, slots)
            self.held = None
        self._mux_video(self.video.encode(None))
        self._mux_audio_until(None)
        self.container.close()
        return self.buf.getvalue()

    def close(self) -> None:
        """Release the muxer and encoder; safe after :meth:`finish` and on error paths."""
        self.held = None
        # On an error path the muxer may fail again while flushing: the first error is the one to report.
        with contextlib.suppress(av.error.FFmpegError):
            self.container.close()
