"""MPEG-TS details shared by the segmenter and the transcoder (ISO/IEC 13818-1)."""

from __future__ import annotations

TS_PACKET = 188
PAT_PID = 0x00
SDT_PID = 0x11


def muxer_options() -> dict[str, str]:
    """Options for FFmpeg's mpegts muxer: one SDT only, at the start, for SegmentBytes to drop."""
    # sdt_period is in seconds (FFmpeg >= 4.4): no second SDT within any segment.
    return {"sdt_period": "100000"}


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

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        if not self._parts and first_pid(data) == SDT_PID:
            self._parts.append(data[TS_PACKET:])
        else:
            self._parts.append(data)
        return len(data)

    def getvalue(self) -> bytes:
        """The segment so far (the muxer closed: the whole segment)."""
        if len(self._parts) > 1:
            self._parts = [b"".join(self._parts)]
        return self._parts[0] if self._parts else b""
