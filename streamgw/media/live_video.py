"""A live pipeline's media work, for one input segment at a time, on a worker thread: decode the
MPEG-TS as its bytes arrive, hand each picture (RGB) to the pipeline, encode what it returns
with x264 (zerolatency; the segment starts with an IDR), copy the audio, and write the output
MPEG-TS as it is muxed.

Pictures of any pixel format are converted to RGB for the pipeline; an odd width or height is
cut to the even size H.264 4:2:0 needs. Timestamps are the input's, so output segments are
continuous and audio stays in sync.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import av
import numpy as np
import numpy.typing as npt
from av.video.frame import VideoFrame

from streamgw.errors import MediaError
from streamgw.media.mpegts import live_demuxer_options, muxer_options, stamp_audio
from streamgw.media.x264 import x264_options

FrameFn = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]]
MAX_HELD_AUDIO = 500  # audio packets held for the first picture (about 10 s of AAC)


@dataclass
class SegmentStats:
    """What one segment took: pictures in and out, time in the pipeline, the picture size."""

    frames_in: int = 0
    frames_out: int = 0
    inference_seconds: float = 0.0
    size: tuple[int, int] = (0, 0)
    audio_packets: int = 0


class _Writer:
    """The output muxer's file: each write goes straight on."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def write(self, data: bytes) -> int:
        self._write(bytes(data))
        return len(data)


def run_segment(reader: IO[bytes] | io.RawIOBase, write: Callable[[bytes], None], process: FrameFn, *,
                crf: int = 23, preset: str = "ultrafast") -> SegmentStats:
    """Process one MPEG-TS segment read from ``reader`` (blocking reads, as bytes arrive) and
    write the output segment's bytes to ``write`` as they are muxed. Raises :class:`MediaError`
    for input that cannot be decoded; an exception from ``process`` goes to the caller."""
    stats = SegmentStats()
    try:
        source = av.open(reader, "r", format="mpegts", options=live_demuxer_options())
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"input segment cannot be read: {exc}") from exc
    sink = av.open(_Writer(write), "w", format="mpegts", options=muxer_options(flush=True))
    try:
        video_in = next(iter(source.streams.video), None)
        if video_in is None:
            raise MediaError("input segment has no video")
        audio_in = next(iter(source.streams.audio), None)
        if audio_in is not None and not audio_in.codec_context.sample_rate:
            audio_in = None  # its parameters not found in the probe: the segment goes on without audio
        audio_out = sink.add_stream_from_template(audio_in) if audio_in is not None else None
        video_out: Any = None
        # Audio that comes before the first picture waits for it: the muxer's streams must all
        # exist before its first packet (a stream added after the header crashes FFmpeg).
        held: list[Any] = []
        audio_next: int | None = None  # where the next audio packet starts (time base ticks)
        for packet in source.demux(*(s for s in (video_in, audio_in) if s is not None)):
            if packet.stream is audio_in:
                if packet.size and audio_out is not None:
                    audio_next = stamp_audio(packet, audio_in, audio_next)
                if packet.dts is not None and packet.size and audio_out is not None:
                    packet.stream = audio_out
                    if video_out is None:
                        if len(held) >= MAX_HELD_AUDIO:
                            raise MediaError(f"no picture within {MAX_HELD_AUDIO} audio packets")
                        held.append(packet)
                        continue
                    sink.mux(packet)
                    stats.audio_packets += 1
                continue
            for frame in packet.decode():
                if not isinstance(frame, VideoFrame):
                    continue
                stats.frames_in += 1
                if video_out is None:
                    video_out = _open_encoder(sink, frame, video_in, crf, preset)
                    stats.size = (video_out.width, video_out.height)
                    for early in held:
                        sink.mux(early)
                    stats.audio_packets += len(held)
                    held.clear()
                sink.mux(video_out.encode(_through(frame, video_out, process, stats)))
                stats.frames_out += 1
        if video_out is not None:
            sink.mux(video_out.encode(None))
    except av.FFmpegError as exc:
        raise MediaError(f"input segment cannot be decoded: {exc}") from exc
    finally:
        source.close()
        sink.close()
    return stats


def _open_encoder(sink: Any, frame: VideoFrame, source: Any, crf: int, preset: str) -> Any:
    stream = sink.add_stream("libx264", options=x264_options(
        preset, tune="zerolatency", crf=crf, params=(("scenecut", "0"), ("keyint", "infinite"), ("threads", "1"))))
    stream.width = frame.width - frame.width % 2
    stream.height = frame.height - frame.height % 2
    stream.pix_fmt = "yuv420p"
    stream.time_base = source.time_base
    stream.codec_context.time_base = source.time_base
    if stream.width < 2 or stream.height < 2:
        raise MediaError(f"picture {frame.width}x{frame.height} is too small to encode")
    return stream


def _through(frame: VideoFrame, stream: Any, process: FrameFn, stats: SegmentStats) -> VideoFrame:
    rgb: npt.NDArray[np.uint8] = np.asarray(frame.to_ndarray(format="rgb24", width=stream.width,
                                                            height=stream.height), dtype=np.uint8)
    started = time.perf_counter()
    result = process(rgb)
    stats.inference_seconds += time.perf_counter() - started
    if result.shape != rgb.shape or result.dtype != np.uint8:
        raise MediaError(f"the pipeline returned a {result.dtype} {result.shape} picture for {rgb.shape}")
    out = VideoFrame.from_ndarray(np.ascontiguousarray(result), format="rgb24").reformat(format="yuv420p")
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out
