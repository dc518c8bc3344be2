"""The gateway's live start call (OrchestratorClient.start_live_video): the request checked by a
TLS server written from WIRE.md §10.2 (headers, SegData, body with its empty URL keys), the reply
rules (host-less URLs, missing control URL, 503, non-JSON), then a stream through streamgw's
orchestrator with the pinned client and the trickle channels it returns."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from streamgw.errors import LiveAiRefused, OrchestratorBusy, OrchestratorError
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities, Capability, ai_job_capabilities
from streamgw.livepeer.client import OrchestratorClient
from streamgw.livepeer.signing import Signer, keccak256
from streamgw.livepeer.tls import CertificatePins
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from streamgw.trickle.client import TricklePublisher, TrickleSubscriber
from tests.test_live_orchestrator import _pictures, _segments
from tests.test_orchestrator_http2 import Server

KEY = b"\x33" * 32


def _info(url: str) -> pb.OrchestratorInfo:
    info = pb.OrchestratorInfo(transcoder=url)
    info.auth_token.token = b"tok"
    info.auth_token.session_id = "sess"
    info.auth_token.expiration = int(time.time()) + 600
    return info


class Stub:
    """An O's /live-video-to-video that records the request and answers as told."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answer: tuple[int, str, bytes] = (200, "application/json", b"{}")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(({"path": scope["path"], "method": scope["method"], **headers}, body))
        status, ctype, data = self.answer
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode())]})
        await send({"type": "http.response.body", "body": data})


def test_the_start_request_is_shaped_as_go_livepeer_sends_it(tmp_path: Path) -> None:
    async def test() -> None:
        stub = Stub()
        async with Server(tmp_path, stub) as server:
            url = f"https://127.0.0.1:{server.port}"
            client = OrchestratorClient(url, Signer(KEY), CertificatePins())
            try:
                stub.answer = (200, "application/json", json.dumps({
                    "publish_url": "/ai/trickle/m1", "subscribe_url": f"{url}/ai/trickle/m1-out",
                    "control_url": "ai/trickle/m1-control", "events_url": "/ai/trickle/m1-events",
                    "manifest_id": "m1"}).encode())
                channels = await client.start_live_video(_info(url), "face-blur", None, request_id="0a1b2c3d",
                                                         stream_id="st", version="0.8.5")
                assert channels.publish_url == f"{url}/ai/trickle/m1"
                assert channels.control_url == f"{url}/ai/trickle/m1-control" and channels.manifest_id == "m1"
                headers, body = stub.requests[-1]
                assert (headers["path"], headers["method"]) == ("/live-video-to-video", "POST")
                assert headers["content-type"] == "application/json"
                assert headers["authorization"] == "Livepeer-AI-Worker-1.0"
                assert headers["livepeer-payment"] == ""
                assert json.loads(body) == {"gateway_request_id": "0a1b2c3d", "model_id": "face-blur", "params": None,
                                            "publish_url": "", "stream_id": "st", "subscribe_url": ""}
                segdata = pb.SegData()
                segdata.ParseFromString(base64.b64decode(headers["livepeer-segment"]))
                assert segdata.manifestId == b"35_face-blur" and segdata.seq == 0
                assert segdata.hash == keccak256(b"") and segdata.auth_token.token == b"tok"
                caps = Capabilities.from_proto(segdata.capabilities)
                assert caps.has(Capability.LIVE_VIDEO_TO_VIDEO) and caps.has(Capability.H264)
                assert "face-blur" in caps.per_capability[Capability.LIVE_VIDEO_TO_VIDEO]
                assert segdata.sig, "signed by the gateway's key"

                no_control = b'{"publish_url": "a", "subscribe_url": "b", "events_url": "c"}'
                stub.answer = (200, "application/json", no_control)
                with pytest.raises(OrchestratorError, match="control URL is missing"):
                    await client.start_live_video(_info(url), "noop", {}, request_id="r", stream_id="", version="1")
                stub.answer = (503, "text/plain", b"insufficient capacity\n")
                with pytest.raises(OrchestratorBusy, match="insufficient capacity"):
                    await client.start_live_video(_info(url), "noop", {}, request_id="r", stream_id="", version="1")
                stub.answer = (200, "text/plain", b"{}")
                with pytest.raises(OrchestratorError, match="not JSON"):
                    await client.start_live_video(_info(url), "noop", {}, request_id="r", stream_id="", version="1")
                stub.answer = (400, "text/plain", b"missing model_id\n")
                with pytest.raises(LiveAiRefused, match="400: missing model_id"):
                    await client.start_live_video(_info(url), "noop", {}, request_id="r", stream_id="", version="1")
            finally:
                await client.close()
    asyncio.run(asyncio.wait_for(test(), 60))


def test_a_stream_through_streamgws_orchestrator(tmp_path: Path) -> None:
    inputs = _segments(tmp_path, 1)

    async def test() -> None:
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path / "o",
                                                         transcode_workers=1, live_pipelines=("cartoon",)))
        await node.start()
        client = OrchestratorClient(node.url, Signer(KEY), CertificatePins())
        try:
            info = await client.get_orchestrator(ai_job_capabilities(
                int(Capability.LIVE_VIDEO_TO_VIDEO), "cartoon", version="0.8.5", discovery=True))
            channels = await client.start_live_video(info, "cartoon", {"strength": 1}, request_id="0a1b2c3d",
                                                     stream_id="st", version="0.8.5")
            http = await client.http(channels.publish_url)
            output = TrickleSubscriber(http, channels.subscribe_url)
            publisher = TricklePublisher(http, channels.publish_url)
            await publisher.publish(inputs[0])
            out = _pictures(await (await asyncio.wait_for(output.next(), 30)).read())
            source = _pictures(inputs[0])
            assert len(out) == len(source) == 30
            assert float(abs(out[10].astype(int) - source[10].astype(int)).mean()) > 5, "the cartoon look applied"
            await publisher.aclose()
            await output.aclose()
        finally:
            await client.close()
            await node.close()
    asyncio.run(asyncio.wait_for(test(), 90))
