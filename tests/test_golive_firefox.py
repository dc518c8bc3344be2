"""The Go-live page in headless Firefox: publish over WHIP (VP8), play back over WHEP (VP8) and HLS.

Firefox here has no H.264 for WebRTC (it downloads its OpenH264 plugin at run time, which a test
machine cannot), so it publishes VP8, which the WHIP ingest re-encodes anyway, and is served VP8
by the WHEP relay's shared encoder. HLS is H.264 through MSE, which Firefox decodes with the
system's FFmpeg libraries.

Firefox is driven over WebDriver BiDi (tests/bidi.py): no geckodriver is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.bidi import FIREFOX, Firefox
from tests.browsers import require
from tests.conftest import RunningGateway, wait_until


@pytest.fixture
def firefox() -> Iterator[Firefox]:
    """Headless Firefox with a fake camera and microphone; fails (not skips) when it is missing."""
    require((FIREFOX, "firefox-esr"))
    browser = Firefox()
    try:
        yield browser
    finally:
        browser.quit()




@pytest.mark.slow
def test_golive_in_firefox_publishes_and_plays_itself_back(gateway: RunningGateway, firefox: Firefox) -> None:
    # Firefox 153 offers no 127.0.0.1 candidate, even with media.peerconnection.ice.loopback
    # (and force_interface=lo), and a socket on the machine's own address cannot reach the
    # gateway's 127.0.0.1 one: the default webrtc_addrs ("127.0.0.1,*") also offers candidates on
    # the machine's other interfaces, which is what makes this work (it needs one, as any LAN has).
    gw = gateway
    firefox.navigate(gw.http + "/web/golive.html?stream=golivefx")
    codecs = firefox.evaluate("RTCRtpReceiver.getCapabilities('video').codecs.map((c) => c.mimeType).join(' ')")
    print("Firefox WebRTC video codecs:", codecs)

    def state() -> dict[str, Any]:
        text = firefox.evaluate(
            "(() => { const w = document.getElementById('whep-video');"
            " const h = document.getElementById('hls-video');"
            " return JSON.stringify(Object.assign({}, window.streamgwGoLive, {whepTime: w.currentTime,"
            " whepReady: w.readyState, whepWidth: w.videoWidth, hlsTime: h.currentTime})); })()")
        result: dict[str, Any] = json.loads(text)
        return result

    def describe() -> str:
        streams = gw.get("/api/streams").json()
        return json.dumps(state(), indent=1) + "\nstreams: " + json.dumps(streams) + "\nfirefox:\n" + firefox.log()

    firefox.evaluate("document.getElementById('resolution').value = '640x360';"  # light on 2 cores
                     " document.getElementById('start').click()")
    wait_until(lambda: state()["state"] in ("live", "error"), 20, describe)
    assert state()["state"] == "live", describe()
    assert state()["whip"]["status"] == 201 and state()["whip"]["location"].startswith("/whip/session/")

    # The gateway has the stream from a WHIP publisher (Firefox sends VP8), segments coming in H.264.
    wait_until(lambda: gw.get("/api/streams/golivefx").json().get("segments", 0) >= 1, 20, describe)
    info = gw.get("/api/streams/golivefx").json()
    assert info["publisher"].startswith("whip:") and info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["whip_video"] == "transcode", info  # Firefox publishes VP8: decoded and re-encoded
    assert state()["sent"]["codec"] == "video/VP8", describe()

    # WHEP: the page plays itself back in VP8 from the relay's one VP8 encoder.
    wait_until(lambda: state()["whepReady"] >= 2 and state()["whepTime"] > 0, 20, describe)
    start = state()
    wait_until(lambda: state()["whepTime"] >= start["whepTime"] + 2 and state()["whep"]["framesDecoded"] >= 30,
          20, describe)
    assert state()["whepWidth"] > 0 and state()["whep"]["codec"] == "video/VP8", describe()
    relay = gw.call(lambda: gw.node.whep.relays[("golivefx", "source")])
    assert relay.vp8 is not None and relay.vp8_encoders_started == 1 and len(relay.vp8_viewers) == 1
    # The clock stamp is read back from the WHEP picture: glass-to-glass latency measured.
    wait_until(lambda: state()["latency"]["whepSamples"] >= 5, 15, describe)
    whep_ms = state()["latency"]["whep"]
    assert 0 <= whep_ms < 3000, describe()

    # HLS plays too (hls.js, H.264 through MSE).
    wait_until(lambda: state()["hls"]["fragsLoaded"] >= 1 and state()["hlsTime"] > 0.5, 30, describe)
    final = state()
    assert not final["errors"], describe()
    print("Firefox: WHEP latency", whep_ms, "ms; HLS latency", final["latency"]["hls"], "ms")

    # Stop: the page DELETEs its WHIP session, the stream ends, the VP8 encoder stops with its viewer.
    firefox.evaluate("document.getElementById('stop').click()")
    wait_until(lambda: gw.get("/api/streams/golivefx").json().get("state") == "ended", 15, describe)
    wait_until(lambda: not gw.call(lambda: list(gw.node.whep.viewers)), 10, describe)
    assert relay.vp8 is None
