"""Live video-to-video on streamgw's orchestrator, driven as go-livepeer's gateway drives it
(WIRE.md §10.2-10.4) over HTTP/2: GetOrchestrator with Default caps + 35, the start POST, input
segments published to the input channel, output read from ``-out``, control and events.

The input is scikit-image's astronaut on its coffee photo, made into MPEG-TS by ffmpeg; the
face region of the output is measured against the input (blurred: low PSNR) and the rest
(intact: high PSNR).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest
from skimage import data

from streamgw.errors import TrickleClosed
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities, Capability, ai_job_capabilities
from streamgw.livepeer.client import OrchestratorClient
from streamgw.livepeer.segdata import AuthToken, SegMetadata, build_segdata, encode_segdata_header
from streamgw.livepeer.signing import Signer, keccak256
from streamgw.livepeer.tls import CertificatePins
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from streamgw.trickle.client import TricklePublisher, TrickleSubscriber
from tests.conftest import FFMPEG

GATEWAY_KEY = b"\x22" * 32
FACE = (480 + 110, 200 + 41, 59, 59)  # the astronaut's face in the scene (x, y, w, h), see _scene_png
LIVE = int(Capability.LIVE_VIDEO_TO_VIDEO)


def _scene_png(tmp: Path) -> Path:
    """The astronaut (320 px) at (480, 200) on the coffee photo, 1280x720."""
    scene = cv2.resize(data.coffee(), (1280, 720), interpolation=cv2.INTER_AREA)
    scene[200:520, 480:800] = cv2.resize(data.astronaut(), (320, 320), interpolation=cv2.INTER_AREA)
    path = tmp / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    return path


def _segments(tmp: Path, count: int) -> list[bytes]:
    """``count`` standalone one-second MPEG-TS segments (H.264 + AAC), continuous timestamps."""
    out = []
    png = _scene_png(tmp)
    for i in range(count):
        path = tmp / f"in{i}.ts"
        subprocess.run(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-loop", "1", "-framerate", "30",
             "-i", str(png), "-f", "lavfi", "-i", "sine=frequency=440", "-t", "1", "-c:v", "libx264",
             "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "30", "-c:a", "aac",
             "-output_ts_offset", str(i), "-f", "mpegts", str(path)],
            check=True, capture_output=True, timeout=60)
        out.append(path.read_bytes())
    return out


def _pictures(segment: bytes) -> list[np.ndarray[Any, Any]]:
    with av.open(io.BytesIO(segment), format="mpegts") as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def psnr(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def _face_and_rest(out: np.ndarray[Any, Any], ref: np.ndarray[Any, Any]) -> tuple[float, float]:
    x, y, w, h = FACE
    mask = np.ones(ref.shape[:2], bool)
    mask[y - 40:y + h + 40, x - 40:x + w + 40] = False
    return psnr(out[y:y + h, x:x + w], ref[y:y + h, x:x + w]), psnr(out[mask], ref[mask])


class Gateway:
    """What go-livepeer's gateway does for one live stream, from WIRE.md §10."""

    def __init__(self, node: OrchestratorNode, http: httpx.AsyncClient) -> None:
        self.node, self.http = node, http
        self.client = OrchestratorClient(node.url, Signer(GATEWAY_KEY), CertificatePins())

    async def info(self, model: str) -> pb.OrchestratorInfo:
        return await self.client.get_orchestrator(
            ai_job_capabilities(LIVE, model, version="0.8.5", discovery=True))

    async def start(self, model: str, params: Any, info: pb.OrchestratorInfo) -> httpx.Response:
        meta = SegMetadata(manifest_id=f"35_{model}".encode(), seq=0, seg_hash=keccak256(b""),
                           capabilities=ai_job_capabilities(LIVE, model, version="0.8.5", discovery=True),
                           auth_token=AuthToken.from_proto(info.auth_token))
        body = {"gateway_request_id": "0a1b2c3d", "model_id": model, "params": params, "publish_url": "",
                "stream_id": "stream-1", "subscribe_url": ""}
        return await self.http.post(f"{info.transcoder}/live-video-to-video", content=json.dumps(body), headers={
            "Content-Type": "application/json", "Authorization": "Livepeer-AI-Worker-1.0",
            "Livepeer-Segment": encode_segdata_header(build_segdata(meta, Signer(GATEWAY_KEY))),
            "Livepeer-Payment": base64.b64encode(pb.Payment().SerializeToString()).decode()}, timeout=5)

    async def close(self) -> None:
        await self.client.close()


@pytest.fixture
def node_settings(tmp_path: Path) -> OrchestratorNodeSettings:
    return OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path / "o", transcode_workers=1,
                                    live_pipelines=("noop", "face-blur"), live_capacity=1, live_status_interval=0.5)


@contextlib.asynccontextmanager
async def _running(settings: OrchestratorNodeSettings) -> AsyncIterator[Gateway]:
    node = OrchestratorNode(settings)
    await node.start()
    async with httpx.AsyncClient(http2=True, verify=False, timeout=20) as http:
        gateway = Gateway(node, http)
        try:
            yield gateway
        finally:
            await gateway.close()
            await node.close()


def _constraint(info: pb.OrchestratorInfo, model: str) -> Any:
    return Capabilities.from_proto(info.capabilities).per_capability[LIVE][model]


def test_face_blur_stream_end_to_end(node_settings: OrchestratorNodeSettings, tmp_path: Path) -> None:
    inputs = _segments(tmp_path, 4)
    reference = _pictures(inputs[0])[0]

    async def test() -> None:
        async with _running(node_settings) as gw:
            info = await gw.info("face-blur")
            assert Capabilities.from_proto(info.capabilities).has(LIVE)
            c = _constraint(info, "face-blur")
            assert c.warm and (c.capacity, c.capacity_in_use) == (1, 0) and c.runner_version
            assert {(p.capability, p.constraint) for p in info.capabilities_prices} >= {(LIVE, "face-blur")}

            started = await gw.start("face-blur", {"strength": 1.0, "detect_every": 1}, info)
            assert started.status_code == 200 and started.http_version == "HTTP/2", started.text
            assert started.headers["content-type"] == "application/json"
            urls = started.json()
            mid = urls["manifest_id"]
            assert urls["publish_url"].endswith(f"/ai/trickle/{mid}")
            assert urls["subscribe_url"].endswith(f"/ai/trickle/{mid}-out")
            assert urls["control_url"].endswith("-control") and urls["events_url"].endswith("-events")

            busy = await gw.start("face-blur", None, await gw.info("noop"))
            assert busy.status_code == 503 and "insufficient capacity" in busy.text
            assert _constraint(await gw.info("noop"), "face-blur").capacity_in_use == 1

            events = TrickleSubscriber(gw.http, urls["events_url"], start=0)
            first = json.loads(await (await asyncio.wait_for(events.next(), 10)).read())
            assert first["event"]["type"] == "status" and first["event"]["pipeline"] == "face-blur"

            output = TrickleSubscriber(gw.http, urls["subscribe_url"], start=-1)
            publisher = TricklePublisher(gw.http, urls["publish_url"])
            control = TricklePublisher(gw.http, urls["control_url"], mime="application/json")
            results = []
            for i, segment in enumerate(inputs):
                if i == 2:
                    await control.publish(b'{"keep":"alive"}')
                    await control.publish(json.dumps({"strength": 0}).encode())
                await publisher.publish(segment)
                results.append(await (await asyncio.wait_for(output.next(), 30)).read())
            blurred = _pictures(results[0])
            assert len(blurred) == 30, "one picture out for each picture in"
            face, rest = _face_and_rest(blurred[15], reference)
            assert face < 22, f"face PSNR {face:.1f} dB: not blurred"
            assert rest > 30, f"PSNR {rest:.1f} dB away from the face: the rest changed"
            face_after, _ = _face_and_rest(_pictures(results[3])[15], reference)
            assert face_after > 30, f"strength 0 sent on control: face PSNR {face_after:.1f} dB two segments later"

            # Status events come every 0.5 s here: read on to one that shows the update and both rates.
            status: dict[str, Any] = {}
            while not (status.get("inference_status", {}).get("last_params", {}).get("strength") == 0
                       and status["inference_status"]["fps"] and status["input_status"]["fps"]):
                event = json.loads(await (await asyncio.wait_for(events.next(), 10)).read())["event"]
                if event["type"] == "status":
                    status = event
            assert status["state"] == "ONLINE" and status["inference_status"]["inference_ms_per_frame"] > 0

            await publisher.aclose()  # as go-livepeer's gateway ends a stream: DELETE the input
            with pytest.raises(TrickleClosed):
                await asyncio.wait_for(output.next(), 10)
            for _ in range(50):
                if _constraint(await gw.info("noop"), "face-blur").capacity_in_use == 0:
                    break
                await asyncio.sleep(0.1)
            assert _constraint(await gw.info("noop"), "face-blur").capacity == 1, "capacity freed"
            await output.aclose()
            await events.aclose()
            await control.aclose()

    asyncio.run(asyncio.wait_for(test(), 120))


@pytest.mark.parametrize("body, status, text", [
    ({"model_id": "nope"}, 400, "not served"),
    ({"model_id": "noop", "params": {"strength": 1}}, 400, "strength"),
    ({"model_id": "noop", "params": [1]}, 400, "JSON object"),
    ({"gateway_request_id": "x"}, 400, "missing model_id"),
])
def test_bad_start_requests_are_refused_before_anything_starts(
        node_settings: OrchestratorNodeSettings, body: dict[str, Any], status: int, text: str) -> None:
    async def test() -> None:
        async with _running(node_settings) as gw:
            info = await gw.info("noop")
            meta = SegMetadata(manifest_id=b"35_noop", seq=0, seg_hash=keccak256(b""),
                               capabilities=ai_job_capabilities(LIVE, "noop", version="0.8.5", discovery=True),
                               auth_token=AuthToken.from_proto(info.auth_token))
            answer = await gw.http.post(f"{info.transcoder}/live-video-to-video", content=json.dumps(body), headers={
                "Content-Type": "application/json",
                "Livepeer-Segment": encode_segdata_header(build_segdata(meta, Signer(GATEWAY_KEY)))})
            assert answer.status_code == status and text in answer.text, answer.text
            assert len(gw.node.service.trickle_channels) == 0  # type: ignore[union-attr]
            bad_json = await gw.http.post(f"{info.transcoder}/live-video-to-video", content=b"{not json")
            assert bad_json.status_code == 400
    asyncio.run(asyncio.wait_for(test(), 60))


def test_the_live_pipelines_setting() -> None:
    from streamgw.cli import live_pipelines
    from streamgw.errors import ConfigError

    assert live_pipelines("") == ()
    assert live_pipelines(" face-blur, noop ") == ("face-blur", "noop")
    assert set(live_pipelines("all")) >= {"noop", "face-blur", "face-boxes", "cartoon", "sketch"}
    with pytest.raises(ConfigError, match="nope"):
        live_pipelines("noop,nope")


def test_bad_control_messages_are_reported_and_the_stream_goes_on(
        node_settings: OrchestratorNodeSettings, tmp_path: Path) -> None:
    inputs = _segments(tmp_path, 2)

    async def test() -> None:
        async with _running(node_settings) as gw:
            info = await gw.info("noop")
            urls = (await gw.start("noop", None, info)).json()
            events = TrickleSubscriber(gw.http, urls["events_url"], start=0)
            output = TrickleSubscriber(gw.http, urls["subscribe_url"], start=-1)
            control = TricklePublisher(gw.http, urls["control_url"], mime="application/json")
            publisher = TricklePublisher(gw.http, urls["publish_url"])
            await control.publish(b"{not json")
            await control.publish(b'{"x": ' + b"1" * (65 * 1024) + b"}")  # over max_control_bytes
            await control.publish(b'{"blur": 3}')  # noop takes no parameters
            await publisher.publish(inputs[0])
            assert len(_pictures(await (await asyncio.wait_for(output.next(), 30)).read())) == 30
            errors: list[str] = []
            last_error = None
            while len(errors) < 2 or last_error is None:
                event = json.loads(await (await asyncio.wait_for(events.next(), 10)).read())["event"]
                if event["type"] == "error":
                    errors.append(event["message"])
                elif event["type"] == "status":
                    last_error = event["inference_status"]["last_error"] if errors else None
                    if last_error and "blur" not in last_error:
                        last_error = None
            assert any("not JSON" in e for e in errors) and any("bytes" in e for e in errors), errors
            assert "blur" in last_error  # the unknown parameter, applied at the next picture
            await publisher.publish(inputs[1])  # the stream goes on
            assert len(_pictures(await (await asyncio.wait_for(output.next(), 30)).read())) == 30
            await publisher.aclose()
            await control.aclose()
            await output.aclose()
            await events.aclose()

    asyncio.run(asyncio.wait_for(test(), 90))
