"""MPEG-TS details shared by the segmenter and the transcoder (ISO/IEC 13818-1)."""

from __future__ import annotations

TS_PACKET = 188
PAT_PID = 0x00
SDT_PID = 0x11


def muxer_options() -> dict[str, str]:
    """Options for FFmpeg's mpegts muxer: one SDT only, at the start, for strip_leading_sdt()."""
    # sdt_period is in seconds (FFmpeg >= 4.4): no second SDT within any segment.
    return {"sdt_period": "100000"}


def first_pid(data: bytes) -> int | None:
    """The PID of the first TS packet, or None if ``data`` does not start with a TS packet."""
    if len(data) < TS_PACKET or data[0] != 0x47:
        return None
    return (data[1] & 0x1F) << 8 | data[2]


def strip_leading_sdt(data: bytes) -> bytes:
    """Drop the SDT packet FFmpeg writes before the PAT, so a segment starts with PAT/PMT.

    Players need only PAT/PMT (13818-1 2.4.4); the SDT is DVB service information (EN 300 468).
    """
    if first_pid(data) == SDT_PID:
        return data[TS_PACKET:]
    return data
