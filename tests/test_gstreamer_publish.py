"""GStreamer as a second, independent RTMP publisher: its own client (rtmp2sink) and librtmp (rtmpsink).

GStreamer's x264enc and flvmux send what ffmpeg does not: parameter sets in-band after an AUD,
I pictures flagged as keyframes in front of IDRs, a third (data) stream, pictures stamped in the
same millisecond when the machine is loaded, and, depending on timing, audio's first tag behind a
big 4:4:4 keyframe. Each publisher here is a real gst-launch-1.0 pipeline. A missing GStreamer is a
failure, never a skip: scripts/test.sh installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import OrchestratorProcess, RunningGateway
from tests.media import decode_errors, parse_playlist, probe_segment, seq_of

pytestmark = pytest.mark.slow

GST_LAUNCH = shutil.which("gst-launch-1.0")
RENDITION = "P240p30fps16x9"
AUDIO_BUFFER = 1024 / 44100  # audiotestsrc's default buffer, seconds


@dataclass(frozen=True)
class Publisher:
    """One GStreamer publishing pipeline."""

    sink: str  # rtmp2sink (GStreamer's own RTMP client) or rtmpsink (librtmp)
    fmt: str  # videotestsrc's raw format: I420 (4:2:0), Y42B (4:2:2), Y444 (4:4:4)
    bframes: int
    size: str = "640x360"
    seconds: int = 3
    label: str = ""  # the stream name, when the same pipeline is published more than once

    @property
    def name(self) -> str:
        return self.label or f"{self.sink}-{self.fmt}-b{self.bframes}".lower()

    def command(self, url: str) -> list[str]:
        width, height = self.size.split("x")
        frames = self.seconds * 30
        return [
            _gst(), "-q",
            "videotestsrc", "is-live=true", f"num-buffers={frames}", "!",
            f"video/x-raw,format={self.fmt},width={width},height={height},framerate=30/1", "!",
            "x264enc", "tune=zerolatency", "speed-preset=veryfast", "key-int-max=30", "bitrate=1500",
            f"bframes={self.bframes}", "!", "h264parse", "!", "queue", "!",
            "flvmux", "name=m", "streamable=true", "!", self.sink, f"location={url}",
            "audiotestsrc", "is-live=true", f"num-buffers={int(self.seconds / AUDIO_BUFFER) + 1}", "!",
            "audioconvert", "!", "avenc_aac", "!", "aacparse", "!", "queue", "!", "m.",
        ]


def _gst() -> str:
    if GST_LAUNCH is None:
        raise AssertionError("gst-launch-1.0 is missing (apt-get install gstreamer1.0-tools "
                             "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly "
                             "gstreamer1.0-libav; scripts/test.sh does)")
    return GST_LAUNCH


@pytest.fixture(scope="module")
def gst_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """GStreamer's environment: its plugin registry and caches in a temporary directory, not $HOME."""
    d = tmp_path_factory.mktemp("gst")
    return {**os.environ, "XDG_CACHE_HOME": str(d / "cache"), "XDG_CONFIG_HOME": str(d / "config"),
            "GST_REGISTRY_1_0": str(d / "registry.bin"), "GSETTINGS_BACKEND": "memory"}


def _publish_all(gw: RunningGateway, publishers: list[Publisher], env: dict[str, str]) -> None:
    """Run the pipelines at once; each must end by itself (EOS) without an error."""
    procs = [(p, subprocess.Popen(p.command(gw.rtmp_url(p.name)), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=env)) for p in publishers]
    for p, proc in procs:
        try:
            _, err = proc.communicate(timeout=p.seconds * 10 + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        assert proc.returncode == 0, f"{p.name}: gst-launch-1.0 failed: {err[-500:]}"


def _ended(gw: RunningGateway, name: str) -> bool:
    r = gw.get(f"/api/streams/{name}")
    return r.status_code == 200 and r.json()["state"] == "ended"


def _source_segments(gw: RunningGateway, name: str) -> Iterator[tuple[int, bytes]]:
    pl = parse_playlist(gw.get(f"/stream/{name}/source.m3u8").text)
    for _, uri, _, _ in pl.entries:
        yield seq_of(uri), gw.get(f"/stream/{name}/{uri}").content


def _check_source(gw: RunningGateway, p: Publisher) -> list[int]:
    """Every source segment decodes alone, starts with a keyframe and has audio; no picture is
    lost. Returns the segments' sequence numbers."""
    stream = gw.get(f"/api/streams/{p.name}").json()
    assert stream["last_error"] is None, f"{p.name}: {stream['last_error']}"
    seqs, pictures = [], 0
    for seq, data in _source_segments(gw, p.name):
        errors = decode_errors(data)
        assert not errors, f"{p.name} segment {seq} does not decode on its own: {errors[:300]}"
        probe = probe_segment(data)
        assert probe.first_frame_key and probe.audio_frames > 0, f"{p.name} segment {seq}: {probe}"
        seqs.append(seq)
        pictures += probe.video_frames
    assert seqs, f"{p.name}: no segment"
    assert pictures == p.seconds * 30, f"{p.name}: {pictures} pictures of {p.seconds * 30}"
    return seqs


@pytest.mark.parametrize("sink", ["rtmp2sink", "rtmpsink"])
def test_every_chroma_format_with_and_without_b_frames_gets_renditions(
        sink: str, gateway_factory: Callable[..., RunningGateway],
        orchestrators: Callable[..., OrchestratorProcess], gst_env: dict[str, str]) -> None:
    orch = orchestrators()
    gw = gateway_factory(orch_addr=orch.url, transcoding_options=RENDITION, playlist_window=10)
    publishers = [Publisher(sink, fmt, b) for fmt in ("I420", "Y42B", "Y444") for b in (0, 2)]
    _publish_all(gw, publishers, gst_env)

    def renditions_done(p: Publisher) -> bool:
        r = gw.get(f"/stream/{p.name}/{RENDITION}.m3u8")
        return _ended(gw, p.name) and r.status_code == 200 and parse_playlist(r.text).ended

    gw.wait_for(lambda: all(renditions_done(p) for p in publishers), timeout=90, what="renditions")
    for p in publishers:
        seqs = _check_source(gw, p)
        pl = parse_playlist(gw.get(f"/stream/{p.name}/{RENDITION}.m3u8").text)
        assert [seq_of(uri) for _, uri, _, _ in pl.entries] == seqs, f"{p.name}: a rendition is missing"
        for _, uri, _, _ in pl.entries:
            probe = probe_segment(gw.get(f"/stream/{p.name}/{uri}").content)
            assert (probe.width, probe.height) == (426, 240) and probe.first_frame_key


def test_the_start_never_fails_on_timing(gateway: RunningGateway, gst_env: dict[str, str]) -> None:
    """720p 4:4:4 makes the first keyframe bigger than probing reads, and four at once on two cores
    make GStreamer late: audio's first tag lands behind it, pictures share a millisecond. Twelve
    starts, both sinks, each must keep every picture and its audio."""
    for i in range(3):
        publishers = [Publisher(sink, "Y444", 0, size="1280x720", seconds=1, label=f"r{i}p{j}{sink}")
                      for j in range(2) for sink in ("rtmp2sink", "rtmpsink")]
        _publish_all(gateway, publishers, gst_env)
        gateway.wait_for(lambda names=[p.name for p in publishers]: all(_ended(gateway, n) for n in names),
                         what="streams to end")
        for p in publishers:
            _check_source(gateway, p)
