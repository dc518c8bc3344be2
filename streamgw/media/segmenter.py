"""Cut a publisher's packets into self-contained MPEG-TS segments with PyAV, without re-encoding.

:class:`SegmentCutter` takes packets one at a time (the RTMP ingest's, made from its messages by
:mod:`streamgw.media.flv_packets`; the WHIP muxer's own); :class:`Segmenter` demuxes a byte
stream (a file, FLV or MPEG-TS) with FFmpeg and hands its packets to one. Both run in a worker
thread (PyAV releases the GIL while it muxes); never on the event loop.
Every segment starts with PAT/PMT and an IDR frame (the mpegts muxer inserts
``h264_mp4toannexb``, which puts SPS/PPS in front of each IDR), keeps the input's timestamps so
that consecutive segments are continuous, and carries the audio.

It also measures what the publisher's encoder does that the cut depends on: the keyframe
interval (the longest of the last few; a segment can only end at a keyframe) and the picture
size of each keyframe.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Protocol

import av
import av.error

from streamgw.errors import KeyframeTimeout, MediaError, SegmentTooLarge
from streamgw.media.h264 import avcc_has_idr, avcc_record, first_sps, is_idr, sps_resolution
from streamgw.media.mpegts import SegmentBytes, muxer_options
from streamgw.segment import Segment

log = logging.getLogger(__name__)


class ByteSource(Protocol):
    """What the demuxer reads: ``read`` returning b"" at end of input (a file, a BytesIO)."""

    def read(self, n: int = -1) -> bytes: ...


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What probing found in a published stream."""

    video_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None
    codecs: str  # RFC 6381 codecs string for HLS, e.g. 'avc1.64001f,mp4a.40.2'
    probe_seconds: float = 0.0  # wall time from the first input byte to the end of probing
    pix_fmt: str | None = None  # FFmpeg's name of the decoded picture format, e.g. 'yuv420p', 'yuv422p10le'
    video_profile: str | None = None  # FFmpeg's name of the H.264 profile, e.g. 'High', 'High 4:2:2'
    keyframe_interval: float | None = None  # seconds: the longest of the last 8 intervals between keyframes


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Audio parameters read from a decoded frame, where probing ended before the first one."""

    sample_rate: int
    layout: str  # FFmpeg channel layout name, e.g. 'stereo'
    channels: int
    profile: str | None  # e.g. 'LC', 'HE-AAC'


@dataclass(frozen=True, slots=True)
class SegmenterSettings:
    """How to cut: target duration, bounds, and how long to probe."""

    target_duration: Fraction = Fraction(2)
    keyframe_timeout: Fraction = Fraction(10)
    max_segment_bytes: int = 64 * 1024 * 1024
    probe_duration: Fraction = Fraction(1, 10)
    input_format: str = "flv"


# Probing a live MPEG-TS input ends after probe_duration of media: at high bitrates the first AAC
# packet can come later (behind a 1 MB keyframe). The segmenter then reads on for an audio frame
# to take the parameters from, up to max(target_duration, AUDIO_WAIT) of media.
AUDIO_WAIT = Fraction(1)
_KEYFRAME_INTERVALS = 8  # keyframe_interval is the longest of this many


class _Cut:
    """The segment being written: one mpegts muxer into memory."""

    def __init__(self, streams: list[Any], start_pts: int, discontinuity: bool,
                 audio_format: AudioFormat | None = None, video_config: bytes | None = None,
                 audio_config: bytes | None = None, on_write: Callable[[bytes], None] | None = None) -> None:
        self.buf = SegmentBytes(on_write)
        # One SDT at most (it is written once at the start), which finish() removes.
        self.container = av.open(self.buf, "w", format="mpegts", options=muxer_options(flush=on_write is not None))
        self.map = {s.index: self.container.add_stream_from_template(s) for s in streams}
        for s in streams:
            # Copied into the stream's parameters when the header is written (first mux).
            out = self.map[s.index].codec_context
            if s.type == "audio" and audio_format is not None:
                out.sample_rate = audio_format.sample_rate
                out.layout = audio_format.layout
            if s.type == "audio" and audio_config is not None:
                # Raw AAC frames (an encoder's) with their AudioSpecificConfig: the muxer adds ADTS.
                out.extradata = audio_config
            elif s.type == "video" and video_config is not None:
                # The latest sequence header: the parameter sets the muxer puts in front of the
                # segment's first IDR when the publisher does not repeat them in-band.
                out.extradata = video_config
        self.start_pts = start_pts
        self.size = 0
        self.pictures = 0  # video packets (one picture each)
        self.discontinuity = discontinuity
        self.last_dts: dict[int, int] = {}  # per input stream index, in its time base

    def mux(self, packet: Any) -> Literal["written", "retimed", "dropped"]:
        """Write ``packet``: as it is, one tick later ("retimed"), or not ("dropped", when its dts
        goes back past its stream's last one).

        The muxer refuses a dts that does not pass the last ("non monotonically increasing dts",
        EINVAL), and that would end the stream. A packet that only collides with the one before
        (two pictures stamped in the same millisecond: GStreamer's live sources on a loaded
        machine) is kept one tick later, as ffmpeg's own muxing does. One that goes back further
        than its own duration repeats media already written (audio that overlaps after a loop or
        an encoder restart) and is dropped; the next segment's muxer starts afresh.
        """
        index = packet.stream.index
        last = self.last_dts.get(index)
        outcome: Literal["written", "retimed"] = "written"
        if last is not None and packet.dts <= last:
            if last - packet.dts > (packet.duration or 0):
                return "dropped"
            outcome = "retimed"
            pts = packet.pts
            packet.dts = last + 1
            if pts is not None and pts < packet.dts:
                packet.pts = packet.dts
        self.last_dts[index] = packet.dts
        self.size += packet.size
        self.pictures += packet.stream.type == "video"
        packet.stream = self.map[index]
        self.container.mux(packet)
        return outcome

    def finish(self) -> bytes:
        self.container.close()
        # A segment that starts with PAT/PMT is self-describing from its first packet.
        return self.buf.getvalue()


class _VideoConfig:
    """The video stream's latest sequence header (an AVC decoder configuration record, from FLV)
    and what it gives: the NAL length size to find IDRs with, and the picture size.

    A publisher may send a new sequence header mid-stream (a new size, new parameter sets); the
    demuxer hands it over as side data of the next packet. Annex B input (MPEG-TS) carries its
    parameter sets in-band and has no record.
    """

    def __init__(self, extradata: bytes | None) -> None:
        self.record: bytes | None = None
        self.length_size: int | None = None
        self.size: tuple[int, int] | None = None
        self._parameter_sets = b""  # SPS and PPS NAL units in the stream's AVCC framing
        self._changed = False
        self._take(extradata)

    def _take(self, data: bytes | None) -> None:
        if not data or data[0] != 1:
            return
        try:
            length_size, sps, pps = avcc_record(data)
            size = sps_resolution(sps[0]) if sps else None
        except MediaError as exc:
            log.debug("ignoring a bad AVC sequence header: %s", exc)
            return
        self.record, self.length_size, self.size = data, length_size, size
        self._parameter_sets = b"".join(len(u).to_bytes(length_size, "big") + u for u in (*sps, *pps))

    def update(self, packet: Any) -> None:
        """Take the new sequence header a video packet carries, if it carries one."""
        if packet.has_sidedata("new_extradata"):
            self._take(bytes(packet.get_sidedata("new_extradata")))

    def replace(self, record: bytes) -> None:
        """Take a new sequence header handed over apart from the packets (direct FLV packets).

        The muxer cannot be given it mid-segment, so a changed one starts the next segment: see
        :meth:`take_changed`.
        """
        if record != self.record:
            self._take(record)
            self._changed = self.record == record

    def take_changed(self) -> bool:
        """Whether :meth:`replace` changed the sequence header since the last call."""
        changed, self._changed = self._changed, False
        return changed

    def starts_idr(self, packet: Any) -> bool:
        """Whether a video packet holds an IDR picture (where a self-contained segment can start)."""
        if self.length_size is not None:
            return avcc_has_idr(memoryview(packet), self.length_size)
        # Annex B: the demuxer's parser flags IDRs and recovery points; only an IDR will do.
        return bool(packet.is_keyframe) and is_idr(bytes(packet))

    def with_parameter_sets(self, packet: Any) -> Any:
        """A non-IDR keyframe (an I picture) with the SPS and PPS in front, as a new packet.

        The muxer puts the parameter sets in front of IDRs only; a segment that has to start at
        another keyframe gets them this way. Annex B input carries its own in-band.
        """
        if not self._parameter_sets:
            return packet
        out = av.Packet(self._parameter_sets + bytes(packet))
        out.stream = packet.stream
        out.time_base = packet.time_base
        out.pts, out.dts, out.duration = packet.pts, packet.dts, packet.duration
        out.is_keyframe = True
        return out


def pick_streams(container: Any) -> tuple[Any, Any]:
    """The streams a segment carries: the first H.264 video and the first AAC or MP3 audio."""
    videos = [s for s in container.streams.video if s.codec_context.name == "h264"]
    audios = [s for s in container.streams.audio if s.codec_context.name in ("aac", "mp3")]
    if not videos and not audios:
        raise MediaError("published stream has neither H.264 video nor AAC audio")
    return (videos[0] if videos else None), (audios[0] if audios else None)


class SegmentCutter:
    """Cuts one publisher's packets, pushed one at a time, into :class:`Segment` values.

    The packets belong to ``video`` and ``audio``, a demuxer's streams (each segment's muxer copies
    its streams from them), or are made to look as if they did (:mod:`streamgw.media.flv_packets`
    builds them from RTMP messages without FFmpeg's demuxer). ``on_info`` is called once the
    streams are known and again when what is measured changes; ``on_segment`` for each finished
    segment with ``latency`` = seconds from ``arrival`` of the packet that closed it to its
    emission. Everything runs in the calling thread, which must not be the event loop's (PyAV).
    """

    def __init__(
        self,
        stream_id: str,
        settings: SegmenterSettings,
        *,
        first_seq: int,
        discontinuity: bool,
        on_info: Callable[[MediaInfo], None],
        on_segment: Callable[[Segment, float], None],
    ) -> None:
        self.stream_id = stream_id
        self.settings = settings
        self.next_seq = first_seq
        # Set (from any thread) to have each segment streamed while it is cut, from the next one
        # on: (seq, bytes, first piece of that seq) for every write of its muxer, on this thread.
        self.on_part: Callable[[int, bytes, bool], None] | None = None
        self._discontinuity = discontinuity
        self._on_info = on_info
        self._on_segment = on_segment
        self.dropped_packets = 0  # packets whose dts went back past the one before within a segment
        self.retimed_packets = 0  # packets whose dts only collided with the one before: kept one tick on
        self.recovery_cuts = 0  # segments started at a keyframe that is not an IDR (no IDR came)
        self.timestamp_resets = 0  # keyframes whose timestamp went back: new segment, discontinuity
        self._video: Any = None
        self._audio: Any = None
        self._clock: Any = None
        self._tb = Fraction(1)
        self._probe_seconds = 0.0
        self._learning: list[Any] | None = None  # packets held while the audio format is unknown
        self._learning_bytes = 0
        self._learning_first: int | None = None
        self._started = False
        self._audio_config: bytes | None = None

    # -- set-up

    def open(self, video: Any, audio: Any, *, probe_seconds: float = 0.0, audio_config: bytes | None = None) -> None:
        """Start with these streams (either may be None). Raises :class:`MediaError` with neither.

        ``audio_config``: the AudioSpecificConfig of raw AAC packets whose stream does not carry
        one (a template probed from ADTS).
        """
        self._audio_config = audio_config
        if video is None and audio is None:
            raise MediaError("published stream has neither H.264 video nor AAC audio")
        self._video, self._audio = video, audio
        self._clock = video if video is not None else audio
        self._tb = Fraction(self._clock.time_base)
        self._probe_seconds = probe_seconds
        if audio is not None and not (audio.codec_context.sample_rate > 0 and audio.codec_context.channels > 0):
            # Probing ended before the first audio frame: read on to one, holding what comes.
            self._learning = []
            return
        self._begin(None)

    def _begin(self, audio_format: AudioFormat | None) -> None:
        video, audio, tb = self._video, self._audio, self._tb
        self._streams = [s for s in (video, audio) if s is not None]
        self._wanted = {s.index for s in self._streams}
        info = _media_info(video, audio, audio_format)
        self._info = dataclasses.replace(info, probe_seconds=round(self._probe_seconds, 4))
        self._on_info(self._info)
        self._audio_format = audio_format
        self._target = int(self.settings.target_duration * Fraction(0.95) / tb)
        self._timeout = int(self.settings.keyframe_timeout / tb)
        self._config = _VideoConfig(video.codec_context.extradata if video is not None else None)
        self._cut: _Cut | None = None
        self._first_seen: int | None = None
        self._last_end = 0
        self._media_end = 0  # where the latest packet of any stream ends, in the clock's time base
        self._clock_last = 0  # the clock stream's latest timestamp in the current segment
        info = self._info
        self._size = (info.width, info.height) if info.width and info.height else None
        self._fps_measured = False
        self._last_key: int | None = None
        self._intervals: collections.deque[int] = collections.deque(maxlen=_KEYFRAME_INTERVALS)
        # Each stream's time base to the clock's, as integers: Fraction arithmetic per packet cost
        # as much CPU as demuxing and muxing together.
        self._scale = {s.index: _ratio(Fraction(s.time_base) / tb) for s in self._streams}
        self._started = True

    def _learn(self, packet: Any, arrival: float) -> None:
        """Hold ``packet`` while looking for the first decodable audio frame (its parameters)."""
        assert self._learning is not None
        self._learning.append(packet)
        self._learning_bytes += packet.size
        if self._learning_bytes > self.settings.max_segment_bytes:
            raise SegmentTooLarge(f"segment exceeds {self.settings.max_segment_bytes} bytes")
        if packet.stream is self._audio and packet.size:
            audio_format = decoded_audio_format(packet)
            if audio_format is not None:
                self._learned(audio_format, arrival)
                return
        if packet.stream is self._clock and packet.dts is not None:
            ts = int(Fraction(packet.dts) * Fraction(packet.time_base) / self._tb)
            first = self._learning_first = ts if self._learning_first is None else self._learning_first
            if ts - first > int(max(self.settings.target_duration, AUDIO_WAIT) / self._tb):
                self._learned(None, arrival)

    def _learned(self, audio_format: AudioFormat | None, arrival: float) -> None:
        """The audio format is known (or will not be): start, and cut what was held."""
        held, self._learning = self._learning or [], None
        if audio_format is None:
            wait = float(max(self.settings.target_duration, AUDIO_WAIT))
            if self._video is None:
                raise MediaError(f"no decodable audio frame in the first {wait:.1f} s")
            log.warning("stream %s: no decodable audio frame in the first %.1f s: video only",
                        self.stream_id, wait)
            self._audio = None
        self._begin(audio_format)
        for packet in held:
            self._push(packet, arrival)

    # -- the cut

    def push(self, packet: Any, arrival: float) -> None:
        """Cut one packet; ``arrival`` is when its bytes reached the gateway (time.monotonic()).

        Raises :class:`MediaError` on media that cannot be segmented (the stream ends);
        :class:`KeyframeTimeout` and :class:`SegmentTooLarge` after emitting what was cut.
        """
        try:
            if self._learning is not None:
                self._learn(packet, arrival)
            else:
                self._push(packet, arrival)
        except av.error.FFmpegError as exc:
            raise MediaError(f"segmenter failed: {exc}") from exc

    def end(self, arrival: float) -> None:
        """The input ended: emit what the current segment holds (nothing is lost)."""
        try:
            if self._learning is not None:
                self._learned(None, arrival)
            cut = self._cut if self._started else None
            if cut is not None and self._last_end > cut.start_pts:
                self._emit(cut, self._last_end - cut.start_pts, arrival)
            elif cut is not None:
                self._emit_tail(cut, self._media_end, arrival)
            self._cut = None
        except av.error.FFmpegError as exc:
            raise MediaError(f"segmenter failed: {exc}") from exc

    def _push(self, packet: Any, arrival: float) -> None:
        if packet.dts is None or packet.size == 0 or packet.stream.index not in self._wanted:
            return
        video, clock, tb, target, config = self._video, self._clock, self._tb, self._target, self._config
        pts = packet.pts if packet.pts is not None else packet.dts
        num, den = self._scale[packet.stream.index]
        ts = _rescale(pts, num, den)
        cut = self._cut
        idr = False
        if packet.stream is video:
            config.update(packet)
            # An IDR starts a segment that decodes on its own; the demuxer also flags other I
            # pictures (GStreamer's x264enc sends one in front of each IDR). A stream without
            # IDRs at the target (x264's open GOP) is cut at those after twice the target.
            idr = config.starts_idr(packet)
            is_cut_point = idr or (bool(packet.is_keyframe) and cut is not None
                                   and ts - cut.start_pts >= 2 * target)
        else:
            is_cut_point = video is None
        if packet.stream is clock and is_cut_point:
            cut = self._at_cut_point(packet, ts, arrival, config.take_changed())
        end = ts + _rescale(packet.duration or 0, num, den)
        if packet.stream is clock:
            self._last_end = max(self._last_end, end)
            self._clock_last = max(self._clock_last, ts)
        if cut is None:
            first = self._first_seen = ts if self._first_seen is None else self._first_seen
            if ts - first > self._timeout:
                raise KeyframeTimeout(f"no keyframe in the first {float(self.settings.keyframe_timeout):.1f} s")
            return
        if cut.size + packet.size > self.settings.max_segment_bytes:
            self._emit_tail(cut, max(self._last_end, self._media_end), arrival)
            raise SegmentTooLarge(f"segment exceeds {self.settings.max_segment_bytes} bytes")
        if packet.stream is video and not idr and cut.size == 0:
            if self.recovery_cuts == 0:
                log.warning("stream %s: no IDR picture for %.1f s: segments start at other keyframes, "
                            "with the parameter sets in front", self.stream_id, float(2 * target * tb))
            self.recovery_cuts += 1
            packet = config.with_parameter_sets(packet)
        self._mux(cut, packet)
        self._media_end = max(self._media_end, end)
        if ts - cut.start_pts > self._timeout:
            # Video stopped and audio goes on (a camera unplugged, the microphone live): what
            # came since the last cut is the stream's last segment, then the stream ends.
            self._emit_tail(cut, max(self._last_end, self._media_end), arrival)
            raise KeyframeTimeout(f"no keyframe for {float(self.settings.keyframe_timeout):.1f} s")

    def _at_cut_point(self, packet: Any, ts: int, arrival: float, new_config: bool) -> _Cut:
        """A keyframe of the clock stream at ``ts``: start, go on with, or close the segment."""
        video, tb, cut = self._video, self._tb, self._cut
        # A new picture size starts a new segment at once, marked as a discontinuity
        # (RFC 8216 6.2.1: encoding parameters changed): one size per segment. So do new
        # parameter sets handed over apart from the packets (direct FLV packets), unmarked.
        new_size = (picture_size(packet) or self._config.size) if video is not None else None
        resized = new_size is not None and new_size != self._size
        if new_size is not None and resized:
            self._size = new_size
            self._info = dataclasses.replace(self._info, width=new_size[0], height=new_size[1])
            self._on_info(self._info)
        if video is not None:
            if self._last_key is not None and ts > self._last_key:
                self._intervals.append(ts - self._last_key)
                self._info = self._measure_keyframes(self._info, float(max(self._intervals) * tb))
            self._last_key = ts
        if cut is not None and ts < self._clock_last:
            # The clock's timestamps restarted (a publisher looping a file, an encoder
            # reset): close the segment where it got to and start one marked as a
            # discontinuity (RFC 8216 6.2.1: timestamps are no longer continuous).
            if self._last_end > cut.start_pts:
                self._emit(cut, self._last_end - cut.start_pts, arrival)
            self.timestamp_resets += 1
            log.warning("stream %s: timestamps went back %.3f s at a keyframe: new segment, "
                        "marked as a discontinuity", self.stream_id, float((self._clock_last - ts) * tb))
            cut = self._new_cut(ts, True)
            self._last_end = self._clock_last = self._media_end = ts
        elif cut is None:
            cut = self._new_cut(ts, self._discontinuity)
        elif ts - cut.start_pts >= self._target or ((resized or new_config) and ts > cut.start_pts):
            if not self._fps_measured and ts - cut.start_pts >= self._target and video is not None:
                self._fps_measured = True
                self._info = self._measure_fps(self._info, cut.pictures / float((ts - cut.start_pts) * tb))
            self._emit(cut, ts - cut.start_pts, arrival)
            cut = self._new_cut(ts, resized)
        self._cut = cut
        return cut

    def video_config(self, record: bytes) -> None:
        """A new AVC sequence header that came apart from the packets: the next IDR starts a segment."""
        if self._started:
            self._config.replace(record)

    def _new_cut(self, start: int, discontinuity: bool) -> _Cut:
        on_part, on_write = self.on_part, None
        if on_part is not None:
            seq, first = self.next_seq, [True]

            def on_write(data: bytes) -> None:
                on_part(seq, data, first[0])
                first[0] = False

        return _Cut(self._streams, start, discontinuity, self._audio_format, self._config.record,
                    self._audio_config if self._audio is not None else None, on_write)

    def _mux(self, cut: _Cut, packet: Any) -> None:
        outcome = cut.mux(packet)
        if outcome == "dropped":
            self.dropped_packets += 1
            if self.dropped_packets == 1:
                log.warning("stream %s: %s packet whose timestamp went back past the one before was dropped "
                            "(it repeats media already written; counted in dropped_packets)",
                            self.stream_id, _a(packet.stream.type))
        elif outcome == "retimed":
            self.retimed_packets += 1
            if self.retimed_packets == 1:
                log.warning("stream %s: %s packet stamped no later than the one before was kept one tick "
                            "later (counted in retimed_packets)", self.stream_id, _a(packet.stream.type))

    def _emit_tail(self, cut: _Cut, end: int, arrival: float) -> None:
        """Emit what a segment holds when the stream ends before its next cut (nothing is lost)."""
        if cut.size and end > cut.start_pts:
            self._emit(cut, end - cut.start_pts, arrival)

    def _measure_keyframes(self, info: MediaInfo, interval: float) -> MediaInfo:
        """``info`` with the keyframe interval, reported when first measured or 10 % off."""
        if info.keyframe_interval is not None and abs(interval - info.keyframe_interval) <= 0.1 * interval:
            return info
        info = dataclasses.replace(info, keyframe_interval=round(interval, 3))
        self._on_info(info)
        return info

    def _measure_fps(self, info: MediaInfo, measured: float) -> MediaInfo:
        """``info`` with the frame rate counted in the first full segment, where the probe's is off.

        FFmpeg guesses MPEG-TS frame rates from a few timestamps (a WebRTC publisher's 30 fps
        comes out as 60); FLV carries its rate and is left as it is unless 10 % off.
        """
        if info.fps and abs(info.fps - measured) <= 0.1 * measured:
            return info
        info = dataclasses.replace(info, fps=round(measured, 3))
        self._on_info(info)
        return info

    def _emit(self, cut: _Cut, duration: int, arrival: float) -> None:
        data = cut.finish()
        segment = Segment(
            stream_id=self.stream_id,
            seq=self.next_seq,
            rendition="source",
            start_pts=cut.start_pts,
            duration=duration,
            time_base=self._tb,
            data=data,
            discontinuity=cut.discontinuity,
        )
        self.next_seq += 1
        self._on_segment(segment, max(0.0, time.monotonic() - arrival))


class Segmenter:
    """Demuxes one byte stream (FLV or MPEG-TS) with FFmpeg and cuts it with a :class:`SegmentCutter`.

    For a whole file, or any source that is only bytes; the RTMP ingest hands packets to a cutter
    without FFmpeg's demuxer (:mod:`streamgw.media.flv_packets`). ``on_info`` and ``on_segment``
    run in the calling thread, as :meth:`run` does.
    """

    def __init__(
        self,
        stream_id: str,
        settings: SegmenterSettings,
        *,
        first_seq: int,
        discontinuity: bool,
        on_info: Callable[[MediaInfo], None],
        on_segment: Callable[[Segment, float], None],
    ) -> None:
        self.stream_id = stream_id
        self.settings = settings
        self.cutter = SegmentCutter(stream_id, settings, first_seq=first_seq, discontinuity=discontinuity,
                                    on_info=on_info, on_segment=on_segment)

    def run(self, source: ByteSource) -> None:
        """Segment everything ``source`` delivers. Raises :class:`MediaError` on bad media."""
        started = time.monotonic()
        try:
            container = av.open(source, "r", format=self.settings.input_format, options=probe_options(self.settings))
        except (av.error.FFmpegError, EOFError) as exc:
            raise MediaError(f"cannot open published stream: {exc}") from exc
        try:
            video, audio = pick_streams(container)
            self.cutter.open(video, audio, probe_seconds=time.monotonic() - started)
            for packet in demux_packets(container, [s for s in (video, audio) if s is not None], self.stream_id):
                self.cutter.push(packet, time.monotonic())
            self.cutter.end(time.monotonic())
        except av.error.FFmpegError as exc:
            raise MediaError(f"segmenter failed: {exc}") from exc
        finally:
            container.close()


PROBE_BYTES = 32768  # FFmpeg probes a live input's first 32 KiB at most (or probe_duration of media)


def probe_options(settings: SegmenterSettings) -> dict[str, str]:
    """FFmpeg's probing bounds for a live input: ``probe_duration`` of media or :data:`PROBE_BYTES`."""
    return {"analyzeduration": str(int(settings.probe_duration * 1_000_000)), "probesize": str(PROBE_BYTES)}


def _ratio(value: Fraction) -> tuple[int, int]:
    return value.numerator, value.denominator


def _rescale(value: int, num: int, den: int) -> int:
    """``int(value * num / den)``, in integers (rounded toward zero, as ``int(Fraction)``)."""
    q = value * num
    return q // den if q >= 0 else -(-q // den)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def demux_packets(container: Any, streams: list[Any], stream_id: str) -> Iterator[Any]:
    """``container.demux(streams)``, ended quietly where PyAV's end-of-input flush fails.

    A stream the demuxer adds after probing (FLV creates one per tag type as it first appears;
    the RTMP ingest holds the start so that none does) is missing from PyAV's stream list, which
    is fixed when the input is opened: its packets are never delivered, and the flush PyAV runs at
    the end of input indexes that list and raises IndexError after every real packet is out.
    """
    packets = container.demux(streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except IndexError:
            log.warning("stream %s: a stream that started after probing was ignored", stream_id)
            return
        yield packet


def decoded_audio_format(packet: Any) -> AudioFormat | None:
    """The parameters of the audio frame one packet decodes to (a decoder of its own), or None."""
    try:
        decoder = av.CodecContext.create(packet.stream.codec_context.name, "r")
        frames = decoder.decode(packet)
    except av.error.FFmpegError:
        return None
    if not frames or not isinstance(frames[0], av.AudioFrame) or frames[0].sample_rate <= 0:
        return None
    frame = frames[0]
    return AudioFormat(frame.sample_rate, frame.layout.name, frame.layout.nb_channels, decoder.profile)


def _media_info(video: Any, audio: Any, audio_format: AudioFormat | None = None) -> MediaInfo:
    codecs: list[str] = []
    fps: float | None = None
    pix_fmt: str | None = None
    if video is not None:
        ctx = video.codec_context
        codecs.append(avc_codec_string(ctx.extradata) or "avc1.640028")
        rate = video.average_rate or video.guessed_rate
        fps = float(rate) if rate else None
        pix_fmt = ctx.format.name if ctx.format is not None else None
    sample_rate = channels = None
    if audio is not None:
        ctx = audio.codec_context
        profile = audio_format.profile if audio_format is not None else ctx.profile
        codecs.append("mp4a.40.5" if (profile or "").startswith("HE") else "mp4a.40.2")
        sample_rate = audio_format.sample_rate if audio_format is not None else ctx.sample_rate
        channels = audio_format.channels if audio_format is not None else ctx.channels
    return MediaInfo(
        video_codec=video.codec_context.name if video is not None else None,
        width=video.codec_context.width if video is not None else None,
        height=video.codec_context.height if video is not None else None,
        fps=fps,
        audio_codec=audio.codec_context.name if audio is not None else None,
        sample_rate=sample_rate,
        channels=channels,
        codecs=",".join(codecs),
        pix_fmt=pix_fmt,
        video_profile=video.codec_context.profile if video is not None else None,
    )


def picture_size(packet: Any) -> tuple[int, int] | None:
    """The picture size an H.264 keyframe's in-band SPS gives (Annex B packets: MPEG-TS input).

    None when the packet has no SPS of its own (FLV packets keep theirs in the stream's extradata).
    """
    head = bytes(memoryview(packet)[:4])  # FLV keyframes (the RTMP path) are not copied to find out
    if not (head.startswith(b"\x00\x00\x01") or head == b"\x00\x00\x00\x01"):
        return None
    sps = first_sps(bytes(packet))
    if sps is None:
        return None
    try:
        return sps_resolution(sps)
    except MediaError:
        return None  # the decoder will say what is wrong with it


def avc_codec_string(data: bytes | None) -> str | None:
    """RFC 6381 'avc1.PPCCLL' from an avcC record, or from the first SPS in Annex B or MPEG-TS bytes."""
    if not data:
        return None
    if len(data) >= 4 and data[0] == 1:
        return f"avc1.{data[1]:02x}{data[2]:02x}{data[3]:02x}"
    start = 0
    while (idx := data.find(b"\x00\x00\x01", start, 65536)) >= 0:
        if len(data) >= idx + 7 and data[idx + 3] & 0x1F == 7:
            return f"avc1.{data[idx + 4]:02x}{data[idx + 5]:02x}{data[idx + 6]:02x}"
        start = idx + 3
    return None
