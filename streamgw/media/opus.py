"""Opus for WebRTC peers: 20 ms packets at 48 kHz stereo, low delay, timed by a sample count."""

from __future__ import annotations

from typing import Any

import av

from streamgw.media.rtc import AUDIO_RATE, AUDIO_TB, OPUS_FRAME


def opus_codec() -> Any:
    """A low-delay 48 kHz stereo Opus encoder (s16 frames of OPUS_FRAME samples)."""
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate = AUDIO_RATE
    opus.layout = "stereo"
    opus.format = "s16"
    opus.bit_rate = 64000
    opus.time_base = AUDIO_TB
    opus.options = {"application": "lowdelay"}
    return opus


class OpusEncoder:
    """Decoded audio (any format and rate) -> Opus packets, each stamped in 1/48000 s.

    Packets are timed by counting samples from ``start``; :meth:`restart` counts from a new
    start (a gap in the input) with the same encoder. Blocking: call it from a worker thread.
    """

    def __init__(self, start: int = 0) -> None:
        self.next = start  # pts of the next 20 ms frame, 1/48000 s
        self._codec = opus_codec()
        self._resampler = self._new_resampler()

    @staticmethod
    def _new_resampler() -> Any:
        return av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=OPUS_FRAME)

    def restart(self, start: int) -> None:
        """Count from ``start`` again, dropping what the resampler holds."""
        self._resampler = self._new_resampler()
        self.next = start

    def encode(self, frame: Any) -> list[tuple[bytes, int]]:
        """(Opus packet, pts) for the 20 ms frames ``frame`` (an av.AudioFrame, pts ignored) completes."""
        out: list[tuple[bytes, int]] = []
        frame.pts = None  # our count, not the resampler's, times the output
        for chunk in self._resampler.resample(frame):
            pts = self.next
            self.next = pts + chunk.samples
            chunk.pts = pts
            chunk.time_base = AUDIO_TB
            out += [(bytes(packet), pts) for packet in self._codec.encode(chunk)]
        return out
