"""The web page: served by the gateway, lists streams, and plays one with the vendored hls.js in Chromium."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browsers import chromium
from tests.conftest import RunningGateway, start_publish, wait_until

WEB = Path(__file__).resolve().parent.parent / "web"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--window-size=1280,900",
]


def test_index_serves_vendored_hls_js(gateway: RunningGateway) -> None:
    r = gateway.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<script src="/web/vendor/hls.min.js"></script>' in html
    assert '<video id="video"' in html
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        if src.startswith("/web/"):
            assert gateway.get(src).status_code == 200, src

    js = gateway.get("/web/vendor/hls.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.content == (WEB / "vendor" / "hls.min.js").read_bytes()

    # Nothing is fetched from elsewhere at run time: no absolute http(s) URLs in our own files.
    own = [p for p in WEB.rglob("*") if p.suffix in (".html", ".js", ".css") and p.parent.name != "vendor"]
    assert {p.name for p in own} >= {"index.html", "app.js"}
    for p in own:
        assert not re.search(r"https?://", p.read_text()), f"{p} refers to a remote URL"
    # What the player page loads stays small; Swagger UI (only /docs loads it) is bounded on its own.
    vendored = {p.name: p.stat().st_size for p in (WEB / "vendor").rglob("*") if p.is_file()}
    page = sum(size for name, size in vendored.items() if not name.startswith("swagger-ui"))
    docs = sum(size for name, size in vendored.items() if name.startswith("swagger-ui"))
    assert page < 1024 * 1024, f"web/vendor is {page} bytes (without Swagger UI)"
    assert docs < 3 * 1024 * 1024, f"web/vendor's Swagger UI is {docs} bytes"
    assert (WEB / "vendor" / "hls.js.LICENSE").is_file() and (WEB / "vendor" / "swagger-ui.LICENSE").is_file()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by selenium over Debian's chromedriver; fails when either is missing."""
    with chromium(CHROMIUM_FLAGS) as driver:
        yield driver




@pytest.mark.slow
def test_page_lists_and_plays_stream(gateway: RunningGateway, browser: Any) -> None:
    gw = gateway
    proc = start_publish(gw.rtmp_url("web1"), seconds=20)
    try:
        def segments() -> int:
            streams = {s["name"]: s for s in gw.get("/api/streams").json()}
            return int(streams["web1"]["segments"]) if "web1" in streams else 0

        wait_until(lambda: segments() >= 2 or proc.poll() is not None, 20,
              lambda: f"web1 has {segments()} segments")
        assert proc.poll() is None, f"ffmpeg exited early: {proc.stderr.read() if proc.stderr else ''}"
        assert segments() >= 2

        browser.get(gw.http + "/?stream=web1")

        def state() -> dict[str, Any]:
            return dict(browser.execute_script(
                "const p = window.streamgwPlayer || {};"
                "const v = document.getElementById('video');"
                "return Object.assign({}, p, {videoTime: v ? v.currentTime : null,"
                " readyState: v ? v.readyState : null, paused: v ? v.paused : null,"
                " hls: typeof Hls !== 'undefined' ? Hls.version : null,"
                " mse: !!(window.MediaSource && MediaSource.isTypeSupported("
                "'video/mp4; codecs=\"avc1.42E01E,mp4a.40.2\"'))});"
            ))

        def describe() -> str:
            logs = [entry.get("message", "") for entry in browser.get_log("browser")][-20:]
            return json.dumps(state(), indent=1) + "\nbrowser console:\n" + "\n".join(logs)

        # The page polled the API and listed the stream, with its details.
        wait_until(lambda: "web1" in state().get("streams", []), 15, describe)
        items = browser.find_elements("css selector", '#streams li[data-stream="web1"]')
        assert len(items) == 1 and "web1" in items[0].text
        assert "640×360" in browser.find_element("css selector", '#info [data-field="resolution"]').text
        assert browser.find_element("css selector", "#player-title").text == "web1"

        # hls.js loaded the vendored build, fetched fragments and the video actually advanced.
        wait_until(lambda: state().get("startTime") is not None, 20, describe)
        start = state()
        assert start["hls"], "hls.js did not load"
        wait_until(lambda: state()["videoTime"] >= start["startTime"] + 2.5 and state()["fragsLoaded"] >= 2,
              20, describe)
        final = state()
        assert final["framesDecoded"] > 30, describe()
        assert final["state"] in ("playing", "buffering"), describe()
        fatal = [e for e in final["errors"] if e["fatal"]]
        assert not fatal, describe()
    finally:
        proc.kill()
        proc.communicate(timeout=10)



@pytest.mark.slow
def test_network_panel_lists_orchestrators(gateway_factory: Callable[..., RunningGateway], browser: Any,
                                           orchestrators: Callable[..., Any]) -> None:
    orch = orchestrators()
    dead = "https://127.0.0.1:9"  # nothing listens on the discard port
    gw = gateway_factory(orch_addr=f"{orch.url},{dead}", transcoding_options="P144p30fps16x9")
    gw.wait_for(lambda: any(o["transcoder"] for o in gw.get("/api/orchestrators").json()), timeout=20)
    browser.get(gw.http + "/")

    def rows() -> list[str]:
        return [str(r) for r in browser.execute_script(
            "return Array.from(document.querySelectorAll('#orchestrators tbody tr')).map(r => r.innerText)")]

    wait_until(lambda: len(rows()) == 2 and any(orch.url in r and "ok" in r for r in rows()), 15,
          lambda: f"network rows: {rows()}")
    assert not browser.execute_script("return document.getElementById('orchestrators').hidden")
    assert any(dead in r and "ok" not in r.split("\t")[-1] for r in rows()), rows()


@pytest.mark.slow
def test_player_plays_through_a_resolution_change(gateway: RunningGateway, browser: Any) -> None:
    """A WHIP publisher (H.264 copied) goes from 320x240 to 480x360: hls.js plays on through it.

    The segmenter starts a segment at the new size and marks it as a discontinuity; hls.js then
    makes a new init segment, so the picture changes size and playback continues.
    """
    import asyncio
    import threading

    from tests.test_whip_whep import Pattern, Tone, _delete, _post, connect, publisher_offer, run

    gw = gateway
    stop = threading.Event()
    failure: list[BaseException] = []

    def publish() -> None:
        async def scenario() -> None:
            pc = await publisher_offer(Pattern(size=(320, 240), switch_after=180, size2=(480, 360)), Tone())
            r = await _post(gw.http + "/whip/resize", pc.localDescription.sdp)
            await connect(pc, r)
            while not stop.is_set():
                await asyncio.sleep(0.1)
            await _delete(gw.http + r.headers["location"])
            await pc.close()

        try:
            run(scenario())
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        def segments() -> int:
            return int(gw.get("/api/streams/resize").json().get("segments", 0))

        wait_until(lambda: segments() >= 1 or bool(failure), 20, lambda: f"{segments()} segments; {failure}")
        browser.get(gw.http + "/?stream=resize")
        widths: list[int] = []

        def state() -> dict[str, Any]:
            s = dict(browser.execute_script(
                "const p = window.streamgwPlayer || {}; const v = document.getElementById('video');"
                "return Object.assign({}, p, {videoTime: v.currentTime, width: v.videoWidth});"))
            if s["width"] and (not widths or widths[-1] != s["width"]):
                widths.append(int(s["width"]))
            return s

        def describe() -> str:
            logs = [e.get("message", "") for e in browser.get_log("browser")][-20:]
            playlist = gw.get("/stream/resize/source.m3u8").text
            return (json.dumps(state(), indent=1) + f"\nwidths {widths}; publisher {failure}\n{playlist}\n"
                    + "\n".join(logs))

        wait_until(lambda: state()["width"] == 320, 20, describe)
        wait_until(lambda: state()["width"] == 480, 30, describe)
        at_switch = state()["videoTime"]
        wait_until(lambda: state()["videoTime"] >= at_switch + 2, 15, describe)
        assert widths == [320, 480], describe()
        assert "#EXT-X-DISCONTINUITY" in gw.get("/stream/resize/source.m3u8").text
        assert not [e for e in state()["errors"] if e["fatal"]], describe()
    finally:
        stop.set()
        thread.join(30)
    assert not failure, failure
