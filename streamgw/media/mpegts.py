"""MPEG-TS details shared by the segmenter and the transcoder (ISO/IEC 13818-1)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

TS_PACKET = 188
PAT_PID = 0x00
SDT_PID = 0x11


def muxer_options(*, flush: bool = False) -> dict[str, str]:
    """Options for FFmpeg's mpegts muxer: one SDT only, at the start, for SegmentBytes to drop;
    ``flush``: each packet written out at once (a segment read while it is written), not per
    32 KiB of buffer."""
    # sdt_period is in seconds (FFmpeg >= 4.4): no second SDT within any segment.
    options = {"sdt_period": "100000"}
    if flush:
        options["flush_packets"] = "1"
    return options


def live_demuxer_options() -> dict[str, str]:
    """Options for FFmpeg's mpegts demuxer reading a segment while it arrives: the probe ends as
    soon as every stream's parameters are known (no frame-rate probe), within 1 s of media at
    most (the default probe read 1.5 s of a 2 s segment before the first packet came out)."""
    return {"probesize": "262144", "analyzeduration": "1000000", "fpsprobesize": "0"}


def stamp_audio(packet: Any, stream: Any, expected: int | None) -> int | None:
    """Stamp an audio packet (PyAV's) the demuxer left without timestamps right after the one
    before (the frames after the first of a PES packet, while the probe is cut short by
    :func:`live_demuxer_options`); returns where the next one starts, in the stream's time base."""
    ctx = stream.codec_context
    samples = ctx.frame_size or 1024  # AAC
    length = int(samples * (1 / Fraction(ctx.sample_rate)) / stream.time_base) if ctx.sample_rate else 0
    if packet.pts is None and expected is not None:
        packet.pts = packet.dts = expected
    return packet.pts + length if packet.pts is not None else expected


def first_pid(data: bytes) -> int | None:
    """The PID of the first TS packet, or None if ``data`` does not start with a TS packet."""
    if len(data) < TS_PACKET or data[0] != 0x47:
        return None
    return (data[1] & 0x1F) << 8 | data[2]


class SegmentBytes:
    """A write-only file for FFmpeg's mpegts muxer that keeps the segment as its writes, minus the
    SDT packet the muxer writes before the PAT, so a segment starts with PAT/PMT.

    Players need only PAT/PMT (13818-1 2.4.4); the SDT is DVB service information (EN 300 468).
    The writes are joined once at the end: no buffer grown by reallocation, and no second copy of
    the whole segment to drop the SDT.
    """

    def __init__(self, on_write: Callable[[bytes], None] | None = None) -> None:
        self._parts: list[bytes] = []
        self._on_write = on_write  # each piece as it is written (a segment streamed while it is cut)

    def write(self, data: bytes) -> int:
        piece = data[TS_PACKET:] if not self._parts and first_pid(data) == SDT_PID else data
        self._parts.append(piece)
        if self._on_write is not None and piece:
            self._on_write(piece)
        return len(data)

    def getvalue(self) -> bytes:
        """The segment so far (the muxer closed: the whole segment)."""
        if len(self._parts) > 1:
            self._parts = [b"".join(self._parts)]
        return self._parts[0] if self._parts else b""
