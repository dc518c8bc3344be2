"""RTMP's audio and video messages as the packets FFmpeg's FLV demuxer makes of them, without it.

An RTMP message body is an FLV tag body (Adobe FLV specification 10.1, annex E.4.2 and E.4.3;
enhanced RTMP's ``avc1`` video header). Only the start of a stream goes through FFmpeg: the
held start (header, metadata, each stream's sequence header, the first media) is demuxed once,
which probes the streams and gives the cutter its templates. Every later message becomes a
packet of those streams here: the body past its header, referenced (not copied), with the
timestamps, duration and keyframe flag FFmpeg's demuxer would give it. No FLV framing, no
demuxer, no reader thread per stream.
"""

from __future__ import annotations

import io
import logging
import time
from fractions import Fraction
from typing import Any, cast

import av
import av.error

from streamgw.errors import MediaError
from streamgw.media.flv import TAG_VIDEO
from streamgw.media.flv import tag as flv_tag
from streamgw.media.segmenter import (
    PROBE_BYTES,
    SegmentCutter,
    SegmenterSettings,
    demux_packets,
    pick_streams,
    probe_options,
)

log = logging.getLogger(__name__)

FlvTag = tuple[int, int, bytes]
"""``(tag type, timestamp in ms, body)``: one RTMP audio or video message."""

_AVC = 7  # CodecID of H.264 in a legacy video tag header
_AAC = 10  # SoundFormat of AAC
_MP3 = (2, 14)
_KEYFRAME = 1  # FrameType
_COMMAND_FRAME = 5  # FrameType of a video info / command frame: no picture
_EX_HEADER = 0x80  # enhanced RTMP: IsExHeader
_EX_SEQUENCE_START, _EX_CODED_FRAMES, _EX_CODED_FRAMES_X = 0, 1, 3


def _cts(body: bytes, pos: int) -> int:
    """The signed 24-bit composition time offset at ``pos``."""
    value = (body[pos] << 16) | (body[pos + 1] << 8) | body[pos + 2]
    return value - 0x1000000 if value & 0x800000 else value


class FlvPackets:
    """One RTMP publisher's messages as packets of the streams its start was probed to hold.

    :meth:`start` takes the held start as FLV bytes; the messages after it are framed onto it
    until probing has what FFmpeg's own probing of the byte stream would read (``probe_duration``
    of media or 32 KiB), then the whole is demuxed once and everything after is made directly.
    """

    def __init__(self, settings: SegmenterSettings, stream_id: str) -> None:
        self.settings = settings
        self.stream_id = stream_id
        self.video: Any = None
        self.audio: Any = None
        self.config_changes = 0  # AAC sequence headers after the start (not taken)
        self._container: Any = None
        self._probe: bytearray | None = bytearray()  # None once probed
        self._probe_first: int | None = None
        self._probe_span = int(settings.probe_duration * 1000)
        self._first_arrival = 0.0

    def start(self, data: bytes, first_arrival: float) -> None:
        """The held start: FLV header, metadata and each stream's first tags (``first_arrival``: when
        the first of them came)."""
        if self._probe is not None:
            self._probe += data
            self._first_arrival = first_arrival

    def _open(self, cutter: SegmentCutter, arrival: float) -> None:
        assert self._probe is not None
        data, self._probe = bytes(self._probe), None
        try:
            self._container = av.open(io.BytesIO(data), "r", format="flv", options=probe_options(self.settings))
        except (av.error.FFmpegError, EOFError) as exc:
            raise MediaError(f"cannot open published stream: {exc}") from exc
        try:
            self.video, self.audio = pick_streams(self._container)
            streams = [s for s in (self.video, self.audio) if s is not None]
            start = list(demux_packets(self._container, streams, self.stream_id))
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot open published stream: {exc}") from exc
        self._video_tb = Fraction(self.video.time_base) if self.video is not None else Fraction(1, 1000)
        self._audio_tb = Fraction(self.audio.time_base) if self.audio is not None else Fraction(1, 1000)
        self._audio_codec = self.audio.codec_context.name if self.audio is not None else None
        self._video_duration = self._duration(start, self.video, 0)
        self._audio_duration = self._duration(start, self.audio, 1152 if self._audio_codec == "mp3" else 1024)
        cutter.open(self.video, self.audio, probe_seconds=max(0.0, time.monotonic() - self._first_arrival))
        for packet in start:
            cutter.push(packet, arrival)

    @staticmethod
    def _duration(start: list[Any], stream: Any, frame_samples: int) -> int:
        """What FFmpeg gives each packet of ``stream`` as duration (ms): as in the start, else computed."""
        if stream is None:
            return 0
        seen = [p.duration for p in start if p.stream is stream and p.duration]
        if seen:
            return int(seen[-1])
        if stream.type == "video":
            rate = stream.average_rate or stream.guessed_rate
            return round(1000 / float(rate)) if rate else 0
        rate = stream.codec_context.sample_rate
        return round(frame_samples * 1000 / rate) if rate else 0

    def push(self, cutter: SegmentCutter, tags: list[FlvTag], arrival: float) -> None:
        """Cut the packets of ``tags`` (messages the start holds no stream for are left out)."""
        if self._probe is not None:
            tags = self._probing(cutter, tags, arrival)
        for tag_type, timestamp, body in tags:
            if tag_type == TAG_VIDEO:
                if self.video is not None and len(body) > 5:
                    self._video_tag(cutter, timestamp, body, arrival)
            elif self.audio is not None and len(body) > 1:
                self._audio_tag(cutter, timestamp, body, arrival)

    def _probing(self, cutter: SegmentCutter, tags: list[FlvTag], arrival: float) -> list[FlvTag]:
        """Frame ``tags`` onto the start until it is enough to probe; then probe. Returns the rest."""
        assert self._probe is not None
        for i, (tag_type, timestamp, body) in enumerate(tags):
            self._probe += flv_tag(tag_type, timestamp, body)
            first = self._probe_first = timestamp if self._probe_first is None else self._probe_first
            if timestamp - first >= self._probe_span or len(self._probe) >= PROBE_BYTES:
                self._open(cutter, arrival)
                return tags[i + 1:]
        return []

    def end(self, cutter: SegmentCutter, arrival: float) -> None:
        """The publisher is gone: probe what came if nothing was probed yet, then end the cut."""
        if self._probe is not None and self._probe:
            self._open(cutter, arrival)
        if self._container is not None:
            cutter.end(arrival)

    def _video_tag(self, cutter: SegmentCutter, timestamp: int, body: bytes, arrival: float) -> None:
        b0 = body[0]
        if b0 & _EX_HEADER:
            frame_type = (b0 >> 4) & 0x07
            kind = b0 & 0x0F
            if body[1:5] != b"avc1":
                return
            if kind == _EX_SEQUENCE_START:
                cutter.video_config(body[5:])
                return
            if kind == _EX_CODED_FRAMES and len(body) > 8:
                cts, offset = _cts(body, 5), 8
            elif kind == _EX_CODED_FRAMES_X:
                cts, offset = 0, 5
            else:
                return
        else:
            frame_type = b0 >> 4
            if b0 & 0x0F != _AVC or frame_type == _COMMAND_FRAME:
                return
            if body[1] == 0:  # AVCPacketType 0: a new sequence header
                cutter.video_config(body[5:])
                return
            if body[1] != 1:  # 2: end of sequence
                return
            cts, offset = _cts(body, 2), 5
        packet = av.Packet(cast(bytes, memoryview(body)[offset:]))  # a view: the body is not copied
        packet.stream = self.video
        packet.time_base = self._video_tb
        packet.dts = timestamp
        packet.pts = timestamp + cts
        packet.duration = self._video_duration
        packet.is_keyframe = frame_type == _KEYFRAME
        cutter.push(packet, arrival)

    def _audio_tag(self, cutter: SegmentCutter, timestamp: int, body: bytes, arrival: float) -> None:
        sound_format = body[0] >> 4
        if sound_format == _AAC and self._audio_codec == "aac":
            if body[1] == 0:  # a new AudioSpecificConfig: each segment keeps the first
                self.config_changes += 1
                if self.config_changes == 1:
                    log.info("stream %s: a new AAC sequence header mid-stream was not taken", self.stream_id)
                return
            if len(body) < 3:
                return
            offset = 2
        elif sound_format in _MP3 and self._audio_codec == "mp3":
            offset = 1
        else:
            return
        packet = av.Packet(cast(bytes, memoryview(body)[offset:]))  # a view: the body is not copied
        packet.stream = self.audio
        packet.time_base = self._audio_tb
        packet.dts = packet.pts = timestamp
        packet.duration = self._audio_duration
        packet.is_keyframe = True
        cutter.push(packet, arrival)

    def close(self) -> None:
        """Release the probed input (the templates' streams)."""
        if self._container is not None:
            self._container.close()
            self._container = None
