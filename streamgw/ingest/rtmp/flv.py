"""FLV file framing (Adobe FLV specification 10.1, annex E) of RTMP audio, video and data."""

from __future__ import annotations

import struct

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

_PREV = struct.Struct(">I")


def header(*, audio: bool, video: bool) -> bytes:
    """The 9-byte FLV header and PreviousTagSize0."""
    flags = (0x04 if audio else 0) | (0x01 if video else 0)
    return b"FLV\x01" + bytes((flags,)) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def tag(tag_type: int, timestamp: int, payload: bytes) -> bytes:
    """One FLV tag and its PreviousTagSize; ``timestamp`` in ms, 32-bit."""
    size = len(payload)
    head = bytes(
        (
            tag_type,
            (size >> 16) & 0xFF,
            (size >> 8) & 0xFF,
            size & 0xFF,
            (timestamp >> 16) & 0xFF,
            (timestamp >> 8) & 0xFF,
            timestamp & 0xFF,
            (timestamp >> 24) & 0xFF,
            0,
            0,
            0,
        )
    )
    return head + payload + _PREV.pack(size + 11)


def is_video_keyframe(payload: bytes) -> bool:
    """True when an RTMP video message carries a keyframe (FrameType 1)."""
    return bool(payload) and (payload[0] >> 4) == 1
