"""media/live_video: a live pipeline's media path on one segment, with segments made by ffmpeg
and the output checked with PyAV."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from streamgw.errors import MediaError
from streamgw.media.live_video import run_segment
from tests.conftest import FFMPEG


def _segment(tmp: Path, *, size: str = "640x360", seconds: float = 3, pix_fmt: str = "yuv420p",
             profile: str | None = None) -> bytes:
    path = tmp / f"in-{size}-{pix_fmt}.ts"
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "90", "-pix_fmt", pix_fmt]
    if profile:
        args += ["-profile:v", profile]
    args += ["-c:a", "aac", "-f", "mpegts", str(path)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return path.read_bytes()


class Trickling(io.RawIOBase):
    """Serves ``data`` a piece at a time, as a trickle subscriber gets it; counts what was read."""

    def __init__(self, data: bytes, piece: int = 8192) -> None:
        self.data, self.piece, self.pos = data, piece, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.data[self.pos:self.pos + min(self.piece, len(buffer))]
        buffer[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def _probe(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data), format="mpegts") as c:
        video = [(f.pts, f.to_ndarray(format="rgb24").mean()) for f in c.decode(video=0)]
    with av.open(io.BytesIO(data), format="mpegts") as c:
        packets = [p for p in c.demux() if p.size]
        first_video = next(p for p in packets if p.stream.type == "video")
        audio = sum(p.stream.type == "audio" for p in packets)
        width, height = c.streams.video[0].width, c.streams.video[0].height
    return {"video": video, "keyframe_first": first_video.is_keyframe, "audio": audio, "size": (width, height)}


def test_noop_keeps_every_picture_and_timestamp_and_the_audio(tmp_path: Path) -> None:
    data = _segment(tmp_path)
    reader = Trickling(data)
    out: list[bytes] = []
    read_at_first_write: list[int] = []

    def write(chunk: bytes) -> None:
        if not out:
            read_at_first_write.append(reader.pos)
        out.append(chunk)

    stats = run_segment(reader, write, lambda frame: frame)
    source, result = _probe(data), _probe(b"".join(out))
    assert stats.frames_in == stats.frames_out == len(source["video"]) == 90
    assert [pts for pts, _ in result["video"]] == [pts for pts, _ in source["video"]]
    assert result["keyframe_first"] and result["audio"] == source["audio"] == stats.audio_packets > 0
    assert result["size"] == (640, 360)
    assert len(out) > 1 and read_at_first_write[0] < len(data), "output is written while the input still arrives"


def test_the_pipeline_sees_rgb_and_its_pictures_are_encoded(tmp_path: Path) -> None:
    data = _segment(tmp_path, seconds=1)
    out = io.BytesIO()
    run_segment(io.BytesIO(data), out.write, lambda frame: 255 - frame)
    source, result = _probe(data), _probe(out.getvalue())
    for (_, mean_in), (_, mean_out) in zip(source["video"], result["video"], strict=True):
        assert abs(mean_out - (255 - mean_in)) < 4


def test_odd_sizes_and_other_pixel_formats_are_converted(tmp_path: Path) -> None:
    data = _segment(tmp_path, size="321x241", seconds=1, pix_fmt="yuv444p", profile="high444")
    out = io.BytesIO()
    stats = run_segment(io.BytesIO(data), out.write, lambda frame: frame)
    assert stats.size == (320, 240) and _probe(out.getvalue())["size"] == (320, 240)


def test_bad_input_and_a_bad_pipeline_are_errors(tmp_path: Path) -> None:
    with pytest.raises(MediaError):
        run_segment(io.BytesIO(b"\x47" + bytes(187) + b"not a transport stream" * 1000), io.BytesIO().write,
                    lambda frame: frame)
    data = _segment(tmp_path, seconds=1)
    with pytest.raises(MediaError, match="pipeline returned"):
        run_segment(io.BytesIO(data), io.BytesIO().write, lambda frame: frame[:10])
    with pytest.raises(MediaError, match="pipeline returned"):
        run_segment(io.BytesIO(data), io.BytesIO().write, lambda frame: frame.astype(np.float32))


def test_audio_before_the_first_picture_waits_for_it(tmp_path: Path) -> None:
    """A segment whose audio packets come before its first video packet (the gateway's segmenter
    cuts RTMP input so): once, a stream added after the muxer's first packet killed the process."""
    source = _segment(tmp_path)
    with av.open(io.BytesIO(source), format="mpegts") as c:
        packets = [p for p in c.demux() if p.dts is not None]
        audio = [p for p in packets if p.stream.type == "audio"]
        video = [p for p in packets if p.stream.type == "video"]
        buf = io.BytesIO()
        with av.open(buf, "w", format="mpegts") as out:
            streams = {c.streams.video[0].index: out.add_stream_from_template(c.streams.video[0]),
                       c.streams.audio[0].index: out.add_stream_from_template(c.streams.audio[0])}
            for p in audio[:10] + video + audio[10:]:
                p.stream = streams[p.stream.index]
                out.mux(p)
    reordered = buf.getvalue()
    with av.open(io.BytesIO(reordered), format="mpegts") as c:
        assert next(p for p in c.demux() if p.dts is not None).stream.type == "audio"
    # In a child process: the old fault was SIGFPE, which would take the test run down with it.
    path = tmp_path / "audio-first.ts"
    path.write_bytes(reordered)
    script = ("import io, json, sys; from streamgw.media.live_video import run_segment; out = []; "
              "s = run_segment(open(sys.argv[1], 'rb'), out.append, lambda f: f); "
              "open(sys.argv[1] + '.out', 'wb').write(b''.join(out)); "
              "print(json.dumps([s.frames_in, s.frames_out, s.audio_packets]))")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    frames_in, frames_out, audio_packets = json.loads(done.stdout)
    assert frames_out == frames_in > 0
    assert audio_packets == len(audio)
    assert _probe((tmp_path / "audio-first.ts.out").read_bytes())["audio"]
