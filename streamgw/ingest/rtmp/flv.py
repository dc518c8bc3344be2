"""The start of an RTMP publisher's stream as FLV: held until every announced stream has begun."""

from __future__ import annotations

from streamgw.media.flv import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, header, tag

__all__ = ["TAG_AUDIO", "TAG_SCRIPT", "TAG_VIDEO", "FlvWriter", "header", "is_video_keyframe", "tag"]


def is_video_keyframe(payload: bytes) -> bool:
    """True when an RTMP video message carries a keyframe (FrameType 1)."""
    return bool(payload) and (payload[0] >> 4) == 1


HOLD_MS = 2000  # media held, at most, waiting for every announced stream's first tag
HOLD_BYTES = 8 * 1024 * 1024


class FlvWriter:
    """Frames a publisher's RTMP audio and video as the FLV byte stream the segmenter demuxes.

    FFmpeg's FLV demuxer creates a stream when the stream's first tag arrives. Probing ends after a
    few tens of KB or 0.1 s of media, and a stream it creates after that is one the segmenter was
    never told about (PyAV's stream list is fixed when the input is opened). Publishers do send
    one stream's first tag late: GStreamer's flvmux, when its audio branch lags a big 4:4:4
    keyframe, or when the machine is loaded. So the writer holds the start of the stream until
    every announced stream (the onMetaData codec ids; audio and video when nothing was announced)
    has sent a tag, within ``hold_ms`` of media or ``hold_bytes``; then writes the header naming the
    streams that came, each stream's first tag (its sequence header) ahead of the held media, and
    the media in arrival order. A tag of a stream that was not there by then is dropped and
    counted in ``late_tags``: the demuxer would otherwise grow a stream mid-way.
    """

    def __init__(self, *, hold_ms: int = HOLD_MS, hold_bytes: int = HOLD_BYTES) -> None:
        self.hold_ms = hold_ms
        self.hold_bytes = hold_bytes
        self.expected = {TAG_AUDIO, TAG_VIDEO}
        self.streams: set[int] | None = None  # the header's streams, once written
        self.late_tags = 0
        self._metadata: bytes | None = None
        self._held: list[tuple[int, int, bytes]] = []
        self._held_types: set[int] = set()
        self._held_bytes = 0
        self._first_ts: int | None = None

    @property
    def started(self) -> bool:
        """Whether the header is written (the held start is out)."""
        return self.streams is not None

    def metadata(self, body: bytes, *, audio: bool, video: bool) -> None:
        """The publisher's onMetaData (an encoded script tag body) and the streams it announces."""
        if self.started or self._metadata is not None:
            return
        self._metadata = body
        self.expected = {t for t, on in ((TAG_AUDIO, audio), (TAG_VIDEO, video)) if on}

    def admit(self, tag_type: int) -> bool:
        """Once the start is out: whether a tag goes on (its stream is in the header); counts the rest."""
        if self.streams is not None and tag_type in self.streams:
            return True
        self.late_tags += 1
        return False

    def media(self, tag_type: int, timestamp: int, payload: bytes) -> bytes:
        """The FLV bytes to hand on for one audio or video message (b"" while the start is held)."""
        if self.streams is not None:
            return tag(tag_type, timestamp, payload) if self.admit(tag_type) else b""
        self._held.append((tag_type, timestamp, payload))
        self._held_types.add(tag_type)
        self._held_bytes += len(payload)
        first = self._first_ts = timestamp if self._first_ts is None else self._first_ts
        everyone = self.expected <= self._held_types
        if everyone or timestamp - first >= self.hold_ms or self._held_bytes >= self.hold_bytes:
            return self.flush()
        return b""

    def flush(self) -> bytes:
        """Write the held start now (at the end of the stream, or once every stream is there)."""
        if self.streams is not None or not self._held:
            return b""
        held, self._held = self._held, []
        self.streams = self._held_types
        out = bytearray(header(audio=TAG_AUDIO in self.streams, video=TAG_VIDEO in self.streams))
        if self._metadata is not None:
            out += tag(TAG_SCRIPT, 0, self._metadata)
        # Each stream's first tag first: the demuxer creates both streams before probing media.
        firsts = [next(i for i, (t, _, _) in enumerate(held) if t == kind)
                  for kind in (TAG_VIDEO, TAG_AUDIO) if kind in self.streams]
        for i in firsts:
            out += tag(*held[i])
        for i, item in enumerate(held):
            if i not in firsts:
                out += tag(*item)
        return bytes(out)
