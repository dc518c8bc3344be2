"""Media values WebRTC peers use: the RTP clocks, a packet as relays hand it on, and PyAV packets.

The WHIP and WHEP modules hold packets as :data:`AvPacket` objects (aiortc packetizes them
without encoding) and make them with :func:`av_packet`, so they never import PyAV themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeAlias

import av

VIDEO_TB = Fraction(1, 90000)  # RTP video clock (RFC 6184 5.1) and MPEG-TS
AUDIO_RATE = 48000
AUDIO_TB = Fraction(1, AUDIO_RATE)  # Opus RTP clock (RFC 7587 4.1)
OPUS_FRAME = 960  # 20 ms

AvPacket: TypeAlias = "av.Packet[Any]"
"""An encoded PyAV packet, which aiortc sends without encoding."""


@dataclass(frozen=True, slots=True)
class RtcPacket:
    """An encoded packet as a relay hands it on: ``t`` in seconds on the source clock, for pacing."""

    kind: str  # "video" (H.264 Annex B) | "audio" (Opus)
    data: bytes
    pts: int  # 1/90000 for video, 1/48000 for audio
    keyframe: bool
    t: Fraction


def av_packet(data: bytes, pts: int, time_base: Fraction) -> AvPacket:
    """``data`` as a PyAV packet stamped ``pts`` in ``time_base``."""
    packet = av.Packet(data)
    packet.pts = pts
    packet.time_base = time_base
    return packet
