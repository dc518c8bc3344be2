"""FLV framing (Adobe FLV specification 10.1, annex E): the file header and tags. Pure, no PyAV."""

from __future__ import annotations

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18


def header(*, audio: bool, video: bool) -> bytes:
    """The 9-byte FLV header and PreviousTagSize0."""
    flags = (0x04 if audio else 0) | (0x01 if video else 0)
    return b"FLV\x01" + bytes((flags,)) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def tag(tag_type: int, timestamp: int, body: bytes) -> bytes:
    """One FLV tag and its PreviousTagSize (``timestamp`` in ms, 32-bit)."""
    size = len(body)
    head = bytes((tag_type, (size >> 16) & 0xFF, (size >> 8) & 0xFF, size & 0xFF, (timestamp >> 16) & 0xFF,
                  (timestamp >> 8) & 0xFF, timestamp & 0xFF, (timestamp >> 24) & 0xFF, 0, 0, 0))
    return head + body + (size + 11).to_bytes(4, "big")
