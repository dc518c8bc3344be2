"""What a new user sees in Chromium: /docs offline, the real publish address, the only live stream
playing by itself, the API's warnings, a rendition when the source cannot play, busy refusals."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.browsers import chromium
from tests.conftest import OrchestratorProcess, RunningGateway, start_publish, wait_until
from tests.test_web_player import CHROMIUM_FLAGS

PLAYER_STATE = (
    "const p = window.streamgwPlayer || {}; const v = document.getElementById('video');"
    "return Object.assign({}, p, {videoTime: v ? v.currentTime : null});"
)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (a missing one fails the test)."""
    with chromium(CHROMIUM_FLAGS) as driver:
        yield driver


def _state(browser: Any) -> dict[str, Any]:
    return dict(browser.execute_script(PLAYER_STATE))


def _describe(browser: Any) -> Callable[[], str]:
    def describe() -> str:
        logs = [entry.get("message", "") for entry in browser.get_log("browser")][-20:]
        return json.dumps(_state(browser), indent=1, default=str) + "\nbrowser console:\n" + "\n".join(logs)

    return describe


def test_docs_render_offline(gateway: RunningGateway, browser: Any) -> None:
    """Swagger UI comes from the gateway (this machine has no route to a CDN anyway)."""
    browser.get(gateway.http + "/docs")

    def rendered() -> bool:
        return bool(browser.execute_script(
            "const t = document.querySelector('.swagger-ui .info .title');"
            "return t && t.textContent.includes('streamgw') && document.querySelectorAll('.opblock').length > 5"))

    wait_until(rendered, 20, lambda: browser.execute_script("return document.body.innerText")[:500])
    text = browser.execute_script("return document.body.innerText")
    assert "/api/streams" in text and "/healthz" in text


@pytest.mark.slow
def test_page_shows_the_publish_address_and_plays_the_only_live_stream(gateway: RunningGateway,
                                                                       browser: Any) -> None:
    gw = gateway
    browser.get(gw.http + "/")  # no ?stream=
    expected = f"rtmp://127.0.0.1:{gw.rtmp_port}/live"
    wait_until(lambda: _state(browser).get("rtmp") == expected, 10, _describe(browser))
    shown = [el.text for el in browser.find_elements("css selector", ".rtmp-url")]
    assert shown == [expected + "/", expected], shown
    assert _state(browser)["stream"] is None

    proc = start_publish(gw.rtmp_url("solo"), seconds=25, size="320x180")
    try:
        wait_until(lambda: _state(browser).get("stream") == "solo", 20, _describe(browser))
        assert _state(browser)["autoSelected"] is True
        wait_until(lambda: _state(browser).get("startTime") is not None, 25, _describe(browser))
        start = _state(browser)
        wait_until(lambda: _state(browser)["videoTime"] >= start["startTime"] + 1.5, 20, _describe(browser))
        assert browser.find_element("css selector", "#player-title").text == "solo"
        assert "stream=" not in browser.current_url  # picked by the page, not asked for
        assert not [e for e in _state(browser)["errors"] if e["fatal"]], _describe(browser)()
    finally:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.slow
def test_page_shows_warnings_plays_a_rendition_and_busy_refusals(
        gateway_factory: Callable[..., RunningGateway], browser: Any,
        orchestrators: Callable[..., OrchestratorProcess]) -> None:
    """A 4:2:2 source with a 2 s GOP on a 1 s segment target: two warnings, and the page plays the
    4:2:0 rendition; the network panel has the busy refusals column (0 here)."""
    orch = orchestrators()
    gw = gateway_factory(orch_addr=orch.url, transcoding_options="P240p30fps16x9", segment_duration=1.0)
    proc = start_publish(gw.rtmp_url("pro"), seconds=30, size="640x360", extra=["-pix_fmt", "yuv422p"])
    try:
        browser.get(gw.http + "/?stream=pro")
        describe = _describe(browser)
        wait_until(lambda: len(browser.find_elements("css selector", "#warnings li")) == 2, 20, describe)
        warnings = [el.text for el in browser.find_elements("css selector", "#warnings li")]
        api = gw.get("/api/streams/pro").json()
        assert warnings == api["warnings"] and api["browser_playable"] is False
        badge = browser.find_element("css selector", '#streams li[data-stream="pro"] .badge.warn')
        assert badge.text == "⚠ 2"

        wait_until(lambda: str(_state(browser).get("url")).endswith("/stream/pro/P240p30fps16x9.m3u8"), 40,
                   describe)
        note = browser.find_element("css selector", "#source-note")
        assert note.is_displayed() and "cannot play in browsers" in note.text and "P240p30fps16x9" in note.text
        wait_until(lambda: _state(browser).get("startTime") is not None and _state(browser)["fragsLoaded"] >= 1,
                   30, describe)

        wait_until(lambda: bool(browser.execute_script(
            "return !document.getElementById('busy-column').hidden")), 10, describe)
        refused = browser.find_elements("css selector", '#orchestrators td[data-field="busy-refusals"]')
        assert [td.text for td in refused] == ["0"]
    finally:
        proc.kill()
        proc.communicate(timeout=10)
