"""ffmpeg publishes over RTMP; PyAV checks the HLS output as a player would see it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import FFPROBE, RunningGateway, finish, free_port, publish, start_publish
from tests.media import parse_playlist, probe_segment, seq_of

pytestmark = pytest.mark.slow

FRAME = 1 / 30


def _segments(gw: RunningGateway, name: str) -> list[tuple[int, float, bytes, bool]]:
    pl = parse_playlist(gw.get(f"/stream/{name}/source.m3u8").text)
    out = []
    for dur, uri, disc, _ in pl.entries:
        r = gw.get(f"/stream/{name}/{uri}")  # relative to the media playlist
        assert r.status_code == 200, uri
        out.append((seq_of(uri), dur, r.content, disc))
    return out


def _segment_count(gw: RunningGateway, name: str) -> int:
    r = gw.get(f"/api/streams/{name}")
    return int(r.json()["segments"]) if r.status_code == 200 else 0


def test_publish_and_watch(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(playlist_window=10)
    proc = publish(gw.rtmp_url("cam1"), seconds=7)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/api/streams/cam1").json()["state"] == "ended", what="stream end")

    text = gw.get("/stream/cam1/source.m3u8").text
    pl = parse_playlist(text)
    assert pl.ended and pl.media_sequence == 0
    assert pl.target_duration == 2
    assert all(e[3] for e in pl.entries), "every segment has a PROGRAM-DATE-TIME"
    segs = _segments(gw, "cam1")
    assert [s[0] for s in segs] == list(range(len(segs)))
    total = sum(s[1] for s in segs)
    assert abs(total - 7.0) <= 0.1, total

    prev_end = None
    for seq, dur, data, _ in segs:
        p = probe_segment(data)
        assert p.first_ts_pid == 0, "segment starts with the PAT"
        assert p.first_frame_key, f"segment {seq} starts with a keyframe"
        assert (p.width, p.height) == (640, 360)
        assert p.audio_frames > 0 and p.audio_start is not None, "audio kept"
        assert abs((p.video_end - p.video_start) - dur) < 2 * FRAME
        if prev_end is not None:
            assert abs(p.video_start - prev_end) < FRAME / 2, "timestamps continue across segments"
        prev_end = p.video_end

    info = gw.get("/api/streams/cam1").json()
    assert info["width"] == 640 and info["height"] == 360 and info["fps"] == 30
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["codecs"].startswith("avc1.") and "mp4a.40.2" in info["codecs"]
    assert info["segments"] == len(segs) and info["bitrate"] > 0
    assert info["publisher"].startswith("127.0.0.1:")

    master = gw.get("/stream/cam1.m3u8").text
    assert "RESOLUTION=640x360" in master and "\ncam1/source.m3u8" in master and 'CODECS="avc1.' in master

    # A real player follows the master's relative links to every frame of both tracks.
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_packets", "-show_entries", "stream=codec_type,nb_read_packets",
         "-of", "csv=p=0", f"{gw.http}/stream/cam1.m3u8"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    counts = dict(line.split(",") for line in out.stdout.split())
    assert int(counts["video"]) == 7 * 30
    assert abs(int(counts["audio"]) - 7 * 48000 / 1024) <= 3


def test_http_headers_and_errors(gateway: RunningGateway) -> None:
    gw = gateway
    proc = start_publish(gw.rtmp_url("hdr"), seconds=6)
    try:
        gw.wait_for(lambda: _segment_count(gw, "hdr") >= 1, what="first segment")
        origin = {"Origin": "http://player.example"}
        m = gw.get("/stream/hdr.m3u8", headers=origin)
        assert m.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert m.headers["access-control-allow-origin"] == "*"
        assert m.headers["cache-control"] == "max-age=1"
        media = gw.get("/stream/hdr/source.m3u8", headers=origin)
        assert media.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert not parse_playlist(media.text).ended
        uri = parse_playlist(media.text).entries[0][1]
        seg = gw.get(f"/stream/hdr/{uri}", headers=origin)
        assert seg.headers["content-type"] == "video/mp2t"
        assert "max-age=86400" in seg.headers["cache-control"]
        assert seg.headers["access-control-allow-origin"] == "*"
        listed = gw.get("/api/streams").json()
        assert [s["name"] for s in listed] == ["hdr"] and listed[0]["state"] == "live"
    finally:
        finish(proc)
    assert gw.get("/stream/nope.m3u8").status_code == 404
    assert gw.get("/stream/hdr/720p.m3u8").status_code == 404
    assert gw.get("/stream/hdr/source/ffff-0.ts").status_code == 404
    assert gw.get("/api/streams/nope").status_code == 404


def test_many_publishers_at_once(gateway: RunningGateway) -> None:
    gw = gateway
    names = [f"multi{i}" for i in range(4)]
    procs = [start_publish(gw.rtmp_url(n), seconds=5) for n in names]
    for p in procs:
        err = finish(p)
        assert p.returncode == 0, err
    for n in names:
        gw.wait_for(lambda n=n: gw.get(f"/api/streams/{n}").json()["state"] == "ended", what=n)
        segs = _segments(gw, n)
        assert abs(sum(s[1] for s in segs) - 5.0) <= 0.1
        assert [s[0] for s in segs] == list(range(len(segs)))
    assert gw.node.rtmp.active_connections == 0


def test_second_publisher_is_refused(gateway: RunningGateway) -> None:
    gw = gateway
    first = start_publish(gw.rtmp_url("dup"), seconds=6)
    try:
        gw.wait_for(lambda: _segment_count(gw, "dup") >= 1, what="first publisher")
        second = publish(gw.rtmp_url("dup"), seconds=3)
        assert second.returncode != 0
        assert "BadName" in second.stderr or "already" in second.stderr, second.stderr
        assert first.poll() is None, "first publisher still going"
    finally:
        err = finish(first)
    assert first.returncode == 0, err
    gw.wait_for(lambda: gw.get("/api/streams/dup").json()["state"] == "ended")
    assert abs(sum(s[1] for s in _segments(gw, "dup")) - 6.0) <= 0.1


def test_reconnect_within_grace_continues_stream(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(reconnect_grace=8.0, playlist_window=20)
    first = start_publish(gw.rtmp_url("flaky"), seconds=30)
    gw.wait_for(lambda: _segment_count(gw, "flaky") >= 2, what="two segments")
    finish(first, kill=True)  # the network drops: no FCUnpublish
    gw.wait_for(lambda: gw.get("/api/streams/flaky").json()["state"] == "reconnecting", what="reconnecting")
    assert not parse_playlist(gw.get("/stream/flaky/source.m3u8").text).ended
    before = _segment_count(gw, "flaky")
    second = publish(gw.rtmp_url("flaky"), seconds=4)
    assert second.returncode == 0, second.stderr
    gw.wait_for(lambda: gw.get("/api/streams/flaky").json()["state"] == "ended", what="end")
    info = gw.get("/api/streams/flaky").json()
    assert info["reconnects"] == 1
    pl = parse_playlist(gw.get("/stream/flaky/source.m3u8").text)
    assert pl.ended
    seqs = [seq_of(e[1]) for e in pl.entries]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "one gap-free sequence across the reconnect"
    discs = [seq_of(e[1]) for e in pl.entries if e[2]]
    assert discs == [before], "a discontinuity exactly where the publisher came back"
    for _, _, data, _ in _segments(gw, "flaky"):
        assert probe_segment(data).first_frame_key


def test_dropped_publisher_ends_after_grace(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(reconnect_grace=1.0)
    proc = start_publish(gw.rtmp_url("gone"), seconds=30)
    gw.wait_for(lambda: _segment_count(gw, "gone") >= 1)
    finish(proc, kill=True)
    gw.wait_for(lambda: gw.get("/api/streams/gone").json()["state"] == "ended", timeout=10)
    assert parse_playlist(gw.get("/stream/gone/source.m3u8").text).ended
    assert gw.get("/api/streams").json() == []


def test_long_gop_gives_longer_segments(gateway: RunningGateway) -> None:
    gw = gateway
    proc = publish(gw.rtmp_url("longgop"), seconds=9, realtime=False, gop=90)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/api/streams/longgop").json()["state"] == "ended")
    pl = parse_playlist(gw.get("/stream/longgop/source.m3u8").text)
    assert [round(e[0], 3) for e in pl.entries] == [3.0, 3.0, 3.0]
    assert pl.target_duration == 3


def test_short_segments(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(segment_duration=0.5, playlist_window=20)
    proc = publish(gw.rtmp_url("short"), seconds=4, realtime=False, gop=15)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/api/streams/short").json()["state"] == "ended")
    pl = parse_playlist(gw.get("/stream/short/source.m3u8").text)
    assert len(pl.entries) == 8 and all(abs(e[0] - 0.5) < 0.01 for e in pl.entries)
    assert pl.target_duration == 1


def test_stream_without_keyframes_is_dropped(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(keyframe_timeout=1.5)
    proc = start_publish(gw.rtmp_url("nokey"), seconds=20, gop=100000)
    try:
        gw.wait_for(lambda: gw.get("/api/streams/nokey").status_code == 200
                    and gw.get("/api/streams/nokey").json()["state"] == "ended", timeout=20)
    finally:
        finish(proc, timeout=15)
    info = gw.get("/api/streams/nokey").json()
    assert "keyframe" in info["last_error"]
    assert proc.returncode != 0, "the publisher was disconnected"
    assert not [t for t in threading.enumerate() if t.name == "segmenter-nokey"]


def test_recording(gateway_factory: Callable[..., RunningGateway], tmp_path: Path) -> None:
    gw = gateway_factory(record_dir=str(tmp_path), playlist_window=2)
    proc = publish(gw.rtmp_url("rec"), seconds=6, realtime=False)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/api/streams/rec").json()["state"] == "ended")
    gw.wait_for(lambda: len(list(tmp_path.glob("rec/*/source/*.ts"))) == 3, what="3 recorded files")
    files = sorted(tmp_path.glob("rec/*/source/*.ts"))
    assert [f.name for f in files] == ["00000000.ts", "00000001.ts", "00000002.ts"]
    for f in files:
        assert probe_segment(f.read_bytes()).first_frame_key


def test_metrics_and_health(gateway: RunningGateway) -> None:
    gw = gateway
    proc = publish(gw.rtmp_url("met"), seconds=4, realtime=False)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/api/streams/met").json()["state"] == "ended")
    text = gw.get("/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['streamgw_segments_total{rendition="source"}'] == 2
    assert values["streamgw_ingest_bytes_total"] > 100_000
    assert values["streamgw_ingest_bytes_total"] == gw.get("/api/streams/met").json()["bytes_in"]
    assert values['streamgw_hub_dropped_events_total{subscriber="hls"}'] == 0
    assert values['streamgw_segmenter_events_total{what="retimed_packets"}'] == 0
    assert values["streamgw_segmenter_latency_seconds_count"] == 2
    assert values["streamgw_streams"] == 0
    health = gw.get("/healthz").json()
    assert health["status"] == "ok"
    assert gw.get("/docs").status_code == 200
    assert "/api/streams" in gw.get("/openapi.json").json()["paths"]


def test_cli_up_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    # Free ports for all three listeners and a private data dir for the embedded orchestrator's
    # certificate: never the defaults (1935, 9935, 8935, ~/.streamgw), which conftest holds.
    rtmp, http, orch = free_port(), free_port(), free_port()
    data_dir = tmp_path / "orch"
    env = {**os.environ, "STREAMGW_HTTP_ADDR": f"127.0.0.1:{http}"}
    proc = subprocess.Popen(["streamgw", "up", "--rtmp-addr", f"127.0.0.1:{rtmp}",
                             "--serve-addr", f"127.0.0.1:{orch}", "--orch-data-dir", str(data_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        import httpx
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        pub = publish(f"rtmp://127.0.0.1:{rtmp}/live/cli", seconds=3, realtime=False)
        assert pub.returncode == 0, pub.stderr
        assert httpx.get(f"http://127.0.0.1:{http}/stream/cli/source.m3u8").status_code == 200
        # Zero config: the embedded orchestrator serves every installed live AI pipeline.
        from streamgw.pipelines import registry

        offered = httpx.get(f"http://127.0.0.1:{http}/api/live").json()["pipelines"]
        assert {p["name"] for p in offered} == set(registry.installed()) >= {"face-blur", "background-blur"}
        pub = publish(f"rtmp://127.0.0.1:{rtmp}/live/ai?pipeline=background-blur", seconds=6)
        assert pub.returncode == 0, pub.stderr
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{http}/stream/ai/ai.m3u8").status_code != 200:
            assert time.monotonic() < deadline, "no AI output from streamgw up"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "shutting down" in err
    assert f"orchestrator at https://127.0.0.1:{orch}" in out, out
    assert (data_dir / "cert.pem").is_file(), "the certificate is kept in --orch-data-dir"


def test_obs_encoder_settings_with_b_frames(gateway_factory: Callable[..., RunningGateway]) -> None:
    """OBS's defaults: x264 high profile with B-frames, CBR, 2 s keyframes, 48 kHz stereo AAC."""
    gw = gateway_factory(playlist_window=10)
    obs = ["-profile:v", "high", "-bf", "2", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "2500k",
           "-x264-params", "nal-hrd=cbr", "-ac", "2", "-ar", "48000"]
    # Replace the zero-latency preset with OBS's "veryfast" (lookahead and B-frames on).
    args_extra = ["-preset", "veryfast", "-tune", "film", *obs]
    proc = publish(gw.rtmp_url("obs"), seconds=6, realtime=False, size="1280x720", extra=args_extra)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/api/streams/obs").json()["state"] == "ended")
    info = gw.get("/api/streams/obs").json()
    assert info["codecs"].startswith("avc1.64"), "high profile advertised in CODECS"
    segs = _segments(gw, "obs")
    assert abs(sum(s[1] for s in segs) - 6.0) <= 0.1
    prev_end = None
    for _, dur, data, _ in segs:
        p = probe_segment(data)
        assert p.first_frame_key and p.audio_frames > 0 and (p.width, p.height) == (1280, 720)
        assert abs(p.video_frames - round(dur * 30)) <= 1, "every frame of the segment decodes on its own"
        if prev_end is not None:
            assert abs(p.video_start - prev_end) < FRAME / 2
        prev_end = p.video_end
