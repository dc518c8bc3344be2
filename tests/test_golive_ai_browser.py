"""The Go-live page with live AI in headless Chromium: the camera (a y4m of the astronaut moving
over the coffee photo, Chromium's fake capture) is published over WHIP through ``face-blur`` on
an orchestrator process; the page plays the AI output beside the input, its slider changes the
blur live, and the network panel shows the orchestrator's live pipelines."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browsers import chromium
from tests.conftest import FFMPEG, RunningGateway, wait_until
from tests.test_golive_browser import CHROMIUM_FLAGS
from tests.test_live_gateway import _ai_segments, _frames, _scene_inputs, _status, face_and_rest


def _camera(tmp: Path) -> Path:
    """Three seconds of the moving astronaut, 960x540 at 10 fps, as y4m (Chromium loops it)."""
    bg, fg, _ = _scene_inputs(tmp)
    path = tmp / "camera.y4m"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-loop", "1", "-framerate", "10", "-i", str(bg), "-loop", "1", "-framerate", "10", "-i", str(fg),
                    "-filter_complex", "[0][1]overlay=x='420+200*sin(t*2)':y=200,scale=960:540,format=yuv420p",
                    "-t", "3", "-f", "yuv4mpegpipe", str(path)], check=True, capture_output=True, timeout=120)
    return path


@pytest.fixture
def ai_browser(tmp_path: Path) -> Iterator[Any]:
    flags = [*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={_camera(tmp_path)}"]
    with chromium(flags) as driver:
        yield driver


@pytest.mark.slow
def test_golive_page_runs_a_pipeline_and_changes_it_live(
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., Any], ai_browser: Any,
        tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    browser = ai_browser
    orch = orchestrators("--live-pipelines", "face-blur,cartoon")
    gw = gateway_factory(orch_addr=orch.url, transcoding_options="P240p30fps16x9")
    browser.get(gw.http + "/web/golive.html?stream=aicam")

    def state() -> dict[str, Any]:
        return dict(browser.execute_script("return JSON.parse(JSON.stringify(window.streamgwGoLive));"))

    def describe() -> str:
        logs = [e.get("message", "") for e in browser.get_log("browser")][-20:]
        return json.dumps(state(), indent=1)[:4000] + "\nconsole:\n" + "\n".join(logs)

    wait_until(lambda: len(state()["pipelines"]) == 2, 15, describe)
    Select(browser.find_element("css selector", "#resolution")).select_by_value("960x540")
    Select(browser.find_element("css selector", "#pipeline")).select_by_value("face-blur")
    slider = browser.find_element("css selector", '#ai-controls input[data-param="strength"]')
    assert browser.find_element("css selector", "#ai-panel").is_displayed()
    browser.find_element("css selector", "#start").click()
    wait_until(lambda: state()["state"] in ("live", "error"), 20, describe)
    assert state()["state"] == "live", describe()
    # The AI output plays in the page beside the input.
    wait_until(lambda: state()["ai"]["framesDecoded"] >= 20 and state()["ai"]["currentTime"] > 1, 60, describe)
    status = _status(gw, "aicam")
    assert status["pipeline_id"] == "face-blur" and status["orchestrator_info"]["url"] == orch.url
    # The face the page sent is blurred, the rest intact (measured on what the gateway serves).
    wait_until(lambda: _ai_segments(gw, "aicam") >= 3, 60, describe)
    _, _, face = _scene_inputs(tmp_path)
    source, ai = _frames(gw, "aicam", "source"), _frames(gw, "aicam", "ai")
    common = sorted(set(source) & set(ai))
    assert len(common) >= 10, (len(source), len(ai))
    inside = sorted(face_and_rest(ai[p], source[p], face)[0] for p in common[::3])
    assert inside[len(inside) // 2] < 22, inside
    # The slider changes the pipeline's parameters live.
    browser.execute_script("arguments[0].value = 0.25; arguments[0].dispatchEvent(new Event('change'));", slider)
    wait_until(lambda: state()["ai"]["updates"] == 1 and state()["ai"]["lastUpdate"] == 200, 10, describe)
    wait_until(lambda: (_status(gw, "aicam").get("inference_status") or {}).get("last_params", {}).get("strength")
               == 0.25, 30, lambda: json.dumps(_status(gw, "aicam"))[:3000])
    assert not state()["errors"], describe()
    # The network panel (the index page, in another tab: this one stays live) shows the
    # orchestrator's live pipelines and their use.
    browser.switch_to.new_window("tab")
    browser.get(gw.http + "/")
    wait_until(lambda: "face-blur (warm) 1/1" in " ".join(
        e.text for e in browser.find_elements("css selector", '#orchestrators td[data-field="live-models"]')),
        15, lambda: browser.find_element("css selector", "#orchestrators").text)
