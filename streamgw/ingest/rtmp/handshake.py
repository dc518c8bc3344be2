"""The RTMP handshake (RTMP specification 1.0, section 5.2), server side, simple form.

The server answers with zeros in S1's version field, which tells clients (ffmpeg, librtmp/OBS)
not to expect the digest ("complex") handshake.
"""

from __future__ import annotations

import os
import struct
import time

from streamgw.errors import HandshakeError

RTMP_VERSION = 3
HANDSHAKE_SIZE = 1536


def server_s0_s1_s2(c0c1: bytes, epoch: float) -> bytes:
    """Given C0+C1 (1537 bytes), return S0+S1+S2."""
    if len(c0c1) != 1 + HANDSHAKE_SIZE:
        raise HandshakeError("short C0/C1")
    if c0c1[0] != RTMP_VERSION:
        raise HandshakeError(f"unsupported RTMP version {c0c1[0]}")
    now = int((time.monotonic() - epoch) * 1000) & 0xFFFFFFFF
    s1 = struct.pack(">II", now, 0) + os.urandom(HANDSHAKE_SIZE - 8)
    c1 = c0c1[1:]
    s2 = c1[:4] + struct.pack(">I", now) + c1[8:]
    return bytes((RTMP_VERSION,)) + s1 + s2
