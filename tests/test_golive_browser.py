"""The Go-live page in headless Chromium: publish the fake camera over WHIP, play it back over WHEP and HLS."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browsers import chromium
from tests.conftest import RunningGateway, wait_until

WEB = Path(__file__).resolve().parent.parent / "web"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",  # offer 127.0.0.1 candidates (the gateway's default)
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--window-size=1400,1000",
]


def test_golive_page_is_served_and_self_contained(gateway: RunningGateway) -> None:
    r = gateway.get("/web/golive.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for src in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        if src.startswith("/"):
            assert gateway.get(src).status_code == 200, src
    assert 'href="/web/golive.html"' in gateway.get("/").text  # linked from the index
    for name in ("golive.html", "golive.js"):
        assert not re.search(r"https?://", (WEB / name).read_text()), f"{name} refers to a remote URL"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium with a fake camera and microphone over chromedriver; fails when either is missing."""
    with chromium(CHROMIUM_FLAGS) as driver:
        yield driver




@pytest.mark.slow
def test_golive_publishes_and_plays_itself_back(gateway: RunningGateway, browser: Any,
                                                tmp_path: Path) -> None:
    gw = gateway
    browser.get(gw.http + "/web/golive.html?stream=golive1")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "#resolution")).select_by_value("640x360")  # light on 2 cores

    def state() -> dict[str, Any]:
        return dict(browser.execute_script(
            "const s = window.streamgwGoLive; const w = document.getElementById('whep-video');"
            "const h = document.getElementById('hls-video');"
            "return Object.assign({}, JSON.parse(JSON.stringify(s)), {whepTime: w.currentTime,"
            " whepReady: w.readyState, whepWidth: w.videoWidth, hlsTime: h.currentTime});"))

    def describe() -> str:
        logs = [e.get("message", "") for e in browser.get_log("browser")][-20:]
        streams = gw.get("/api/streams").json()
        return json.dumps(state(), indent=1) + "\nstreams: " + json.dumps(streams) + "\nconsole:\n" + "\n".join(logs)

    browser.find_element("css selector", "#start").click()
    wait_until(lambda: state()["state"] in ("live", "error"), 20, describe)
    assert state()["state"] == "live", describe()
    assert state()["whip"]["status"] == 201 and state()["whip"]["location"].startswith("/whip/session/")

    # The gateway has the stream from a WHIP publisher, segments coming.
    wait_until(lambda: gw.get("/api/streams/golive1").json().get("segments", 0) >= 1, 20, describe)
    info = gw.get("/api/streams/golive1").json()
    assert info["publisher"].startswith("whip:") and info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["whip_video"] == "copy", info  # Chromium publishes H.264: copied

    # WHEP: the page plays itself back; the video element advances and decodes frames.
    wait_until(lambda: state()["whepReady"] >= 2 and state()["whepTime"] > 0, 20, describe)
    start = state()
    wait_until(lambda: state()["whepTime"] >= start["whepTime"] + 2 and state()["whep"]["framesDecoded"] >= 30,
          20, describe)
    assert state()["whepWidth"] > 0
    # Chromium has H.264: it gets the relay's packets as they are, and no VP8 encoder runs.
    assert state()["whep"]["codec"] == "video/H264", describe()
    assert gw.call(lambda: gw.node.whep.relays[("golive1", "source")].vp8) is None
    # The clock stamp is read back from the WHEP picture: glass-to-glass latency measured.
    wait_until(lambda: state()["latency"]["whepSamples"] >= 5, 15, describe)
    whep_ms = state()["latency"]["whep"]
    assert 0 <= whep_ms < 3000, describe()

    # HLS plays too, side by side.
    wait_until(lambda: state()["hls"]["fragsLoaded"] >= 1 and state()["hlsTime"] > 0.5, 30, describe)
    final = state()
    # Chromium publishes H.264: copied, not re-encoded; its IDRs come when asked for (PLI), so
    # the segments have the target duration (2 s) without a fixed GOP of its own.
    wait_until(lambda: gw.get("/api/streams/golive1").json().get("segments", 0) >= 3, 20, describe)
    session = gw.call(lambda: next(iter(gw.node.whip.sessions.values())))
    assert session.encoder.copied == session.encoder.frames > 0 and session.encoder.keyframe_requests >= 2
    playlist = gw.get("/stream/golive1/source.m3u8").text
    durations = [float(x.split(":")[1].rstrip(",")) for x in playlist.splitlines() if x.startswith("#EXTINF")]
    assert all(abs(d - 2.0) < 0.3 for d in durations[1:]), playlist  # the first starts at the first IDR
    assert not final["errors"], describe()
    browser.save_screenshot(str(tmp_path / "golive.png"))
    print("WHEP latency", whep_ms, "ms; HLS latency", final["latency"]["hls"], "ms;", tmp_path / "golive.png")

    # Stop: the page DELETEs its WHIP session and the stream ends.
    browser.find_element("css selector", "#stop").click()
    wait_until(lambda: gw.get("/api/streams/golive1").json().get("state") == "ended", 15, describe)
    wait_until(lambda: not gw.call(lambda: list(gw.node.whep.viewers)), 10, describe)
