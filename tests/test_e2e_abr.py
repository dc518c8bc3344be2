"""RTMP in -> orchestrator processes transcode over TLS -> HLS master with every rendition."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import FFPROBE, OrchestratorProcess, RunningGateway, finish, publish, start_publish
from tests.media import parse_playlist, probe_segment, seq_of

pytestmark = pytest.mark.slow

LADDER = "P144p30fps16x9,P240p30fps16x9,P360p30fps16x9"
SIZES = {"P144p30fps16x9": (256, 144), "P240p30fps16x9": (426, 240), "P360p30fps16x9": (640, 360)}


def _playlist_segments(gw: RunningGateway, name: str, rendition: str) -> list[tuple[int, float, bytes]]:
    pl = parse_playlist(gw.get(f"/stream/{name}/{rendition}.m3u8").text)
    return [(seq_of(uri), dur, gw.get(f"/stream/{name}/{uri}").content) for dur, uri, _, _ in pl.entries]


def test_source_plus_three_renditions(gateway_factory: Callable[..., RunningGateway],
                                      orchestrators: Callable[..., OrchestratorProcess]) -> None:
    orch = orchestrators()
    gw = gateway_factory(orch_addr=orch.url, transcoding_options=LADDER, playlist_window=10)
    proc = publish(gw.rtmp_url("abr"), seconds=6, size="1280x720")
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: all(parse_playlist(gw.get(f"/stream/abr/{r}.m3u8").text).ended
                            for r in SIZES if gw.get(f"/stream/abr/{r}.m3u8").status_code == 200)
                and len(gw.get("/api/streams/abr").json()["renditions"]) == 4, timeout=60, what="renditions")

    master = gw.get("/stream/abr.m3u8").text
    for name, (w, h) in SIZES.items():
        assert f"RESOLUTION={w}x{h}" in master and f"\nabr/{name}.m3u8" in master
    assert master.count("#EXT-X-STREAM-INF:") == 4 and master.count('CODECS="avc1.') == 4
    assert master.count("FRAME-RATE=30.000") == 4

    source = {seq: (dur, probe_segment(data)) for seq, dur, data in _playlist_segments(gw, "abr", "source")}
    assert len(source) == 3
    for name, (w, h) in SIZES.items():
        segs = _playlist_segments(gw, "abr", name)
        assert [s[0] for s in segs] == sorted(source), f"{name} has every seq"
        for seq, dur, data in segs:
            src_dur, src = source[seq]
            p = probe_segment(data)
            assert (p.width, p.height) == (w, h)
            assert p.first_frame_key and p.audio_frames > 0
            # Same timestamps and duration as the source: a player can switch at any boundary.
            assert dur == src_dur and abs(p.video_start - src.video_start) < 0.001
            assert p.video_frames == src.video_frames

    out = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0",
                          f"{gw.http}/stream/abr/P240p30fps16x9.m3u8"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "426,240" in out.stdout, out.stderr
    orchs = gw.get("/api/orchestrators").json()
    assert orchs[0]["segments"] == 3 and orchs[0]["last_error"] is None


def test_source_keeps_playing_when_no_orchestrator_answers(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    from tests.conftest import free_port

    dead = f"https://127.0.0.1:{free_port()}"
    gw = gateway_factory(orch_addr=dead, transcoding_options=LADDER)
    proc = start_publish(gw.rtmp_url("lonely"), seconds=5)
    err = finish(proc)
    assert proc.returncode == 0, f"the publisher failed: {err}"
    gw.wait_for(lambda: gw.get("/api/streams/lonely").json()["state"] == "ended")
    pl = parse_playlist(gw.get("/stream/lonely/source.m3u8").text)
    assert pl.ended and abs(sum(e[0] for e in pl.entries) - 5.0) < 0.1
    master = gw.get("/stream/lonely.m3u8").text
    assert master.count("#EXT-X-STREAM-INF:") == 1
    gw.wait_for(lambda: gw.get("/api/orchestrators").json()[0]["failures"] >= 1)
    status = gw.get("/api/orchestrators").json()[0]
    assert status["address"] == dead and "cannot reach" in status["last_error"]


def test_cli_gateway_and_orchestrator_processes(orchestrators: Callable[..., OrchestratorProcess]) -> None:
    """`streamgw orchestrator` and `streamgw gateway --orch-addr` as two real processes."""
    import os
    import signal
    import time

    import httpx

    from tests.conftest import free_port

    orch = orchestrators()
    rtmp, http = free_port(), free_port()
    gw = subprocess.Popen(["streamgw", "gateway", "--rtmp-addr", f"127.0.0.1:{rtmp}", "--http-addr",
                           f"127.0.0.1:{http}", "--orch-addr", orch.url, "--transcoding-options", "P144p30fps16x9"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and gw.poll() is None
                time.sleep(0.1)
        assert publish(f"rtmp://127.0.0.1:{rtmp}/live/two", seconds=4, realtime=False).returncode == 0
        url = f"http://127.0.0.1:{http}/stream/two/P144p30fps16x9.m3u8"
        deadline = time.monotonic() + 30
        while not (r := httpx.get(url)).status_code == 200 or not parse_playlist(r.text).ended:
            assert time.monotonic() < deadline, "rendition playlist never ended"
            time.sleep(0.2)
        assert len(parse_playlist(r.text).entries) == 2
    finally:
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=20)
    assert gw.returncode == 0, err
