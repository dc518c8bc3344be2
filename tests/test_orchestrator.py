"""The orchestrator over real TLS sockets: GetOrchestrator, /segment and its refusals, pinning."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from streamgw.errors import OrchestratorError
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities, Capability, job_capabilities
from streamgw.livepeer.client import OrchestratorClient
from streamgw.livepeer.profiles import PRESETS
from streamgw.livepeer.segdata import (
    AuthToken,
    SegMetadata,
    build_segdata,
    duration_ms,
    encode_segdata_header,
    parse_transcode_result,
    result_renditions,
)
from streamgw.livepeer.signing import Signer, keccak256
from streamgw.livepeer.tls import CertificatePins
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from streamgw.segment import Segment
from tests.conftest import FFMPEG
from tests.media import cut_bytes, probe_segment

LADDER = tuple(PRESETS[n] for n in ("P144p30fps16x9", "P240p30fps16x9", "P360p30fps16x9"))
GATEWAY_KEY = b"\x11" * 32


@pytest.fixture(scope="module")
def source_segments(tmp_path_factory: pytest.TempPathFactory) -> list[Segment]:
    """Three 2 s source segments of 720p30 testsrc2 + AAC, cut by the gateway's segmenter."""
    flv = tmp_path_factory.mktemp("media") / "src.flv"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                    "-t", "6", "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-f", "flv", str(flv)], check=True, timeout=60)
    segments, _ = cut_bytes(flv.read_bytes())
    assert len(segments) == 3
    return segments


def run(coro_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return asyncio.run(coro_fn(*args))


class Harness:
    """An orchestrator node and a gateway-side client in one event loop."""

    def __init__(self, node: OrchestratorNode, client: OrchestratorClient) -> None:
        self.node = node
        self.client = client


async def _harness(tmp: Path, **kw: Any) -> AsyncIterator[Harness]:
    node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp, **kw))
    await node.start()
    client = OrchestratorClient(node.url, Signer(GATEWAY_KEY), CertificatePins())
    try:
        yield Harness(node, client)
    finally:
        await client.close()
        await node.close()


def _meta(seg: Segment, info: pb.OrchestratorInfo, **kw: Any) -> SegMetadata:
    base = SegMetadata(manifest_id=b"cam", seq=seg.seq, seg_hash=keccak256(seg.data), profiles=LADDER,
                       duration_ms=duration_ms(seg.duration, seg.time_base), capabilities=job_capabilities(LADDER),
                       auth_token=AuthToken.from_proto(info.auth_token))
    return replace(base, **kw)


async def _post(h: Harness, info: pb.OrchestratorInfo, segdata_header: str, body: bytes,
                payment: str = "") -> httpx.Response:
    pin = await h.client.pins.pin(h.client.host, h.client.port)
    async with httpx.AsyncClient(verify=pin.ssl_context()) as http:
        return await http.post(info.transcoder + "/segment", content=body, headers={
            "Livepeer-Segment": segdata_header, "Livepeer-Payment": payment, "Content-Type": "video/MP2T"})


def test_transcodes_a_ladder_over_tls(tmp_path: Path, source_segments: list[Segment]) -> None:
    async def main() -> None:
        async for h in _harness(tmp_path):
            info = await h.client.get_orchestrator(job_capabilities(LADDER))
            assert info.transcoder == h.node.url
            assert info.auth_token.session_id and len(info.auth_token.token) == 32
            caps = Capabilities.from_proto(info.capabilities).ids
            assert {Capability.H264, Capability.MPEGTS, Capability.AUTH_TOKEN} <= caps
            assert info.price_info.pixelsPerUnit > 0
            assert [(h.pipeline, h.model_id) for h in info.hardware] == [("transcode", "libx264-cpu")]
            src = source_segments[1]
            answer = await h.client.submit(info, _meta(src, info), src.data, src.duration_seconds)
            assert answer.result.seq == src.seq
            assert answer.result.info.auth_token.session_id == info.auth_token.session_id
            renditions = result_renditions(answer.result)
            assert [r.url.rsplit("/", 2)[1] for r in renditions] == [p.name for p in LADDER]
            source = probe_segment(src.data)
            for profile, r in zip(LADDER, renditions, strict=True):
                assert r.url.startswith(info.transcoder + "/stream/") and r.url.endswith(f"/{src.seq}.ts")
                data = await h.client.download(r.url, 5)
                p = probe_segment(data)
                assert (p.width, p.height) == (profile.width, profile.height)
                assert p.first_ts_pid == 0 and p.first_frame_key and p.audio_frames == source.audio_frames
                assert abs(p.video_start - source.video_start) < 0.001, "same timestamps as the source"
                assert p.video_frames == source.video_frames
                assert r.pixels > 0

    run(main)


def test_forged_signature_is_refused(tmp_path: Path, source_segments: list[Segment]) -> None:
    async def main() -> None:
        async for h in _harness(tmp_path):
            info = await h.client.get_orchestrator(job_capabilities(LADDER))
            src = source_segments[0]
            forger = Signer(b"\x33" * 32)  # not the key that opened the session
            header = encode_segdata_header(build_segdata(_meta(src, info), forger))
            r = await _post(h, info, header, src.data)
            assert r.status_code == 403 and r.text == "ErrSegSig\n"
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            # The genuine signature over the same segment is accepted.
            good = encode_segdata_header(build_segdata(_meta(src, info), Signer(GATEWAY_KEY)))
            assert (await _post(h, info, good, src.data)).status_code == 200

    run(main)


def test_body_hash_mismatch_is_refused(tmp_path: Path, source_segments: list[Segment]) -> None:
    async def main() -> None:
        async for h in _harness(tmp_path):
            info = await h.client.get_orchestrator(job_capabilities(LADDER))
            src = source_segments[0]
            header = encode_segdata_header(build_segdata(_meta(src, info), Signer(GATEWAY_KEY)))
            r = await _post(h, info, header, src.data[:-188])
            assert r.status_code == 403 and r.text == "Forbidden\n"

    run(main)


def test_credential_refusals(tmp_path: Path, source_segments: list[Segment]) -> None:
    async def main() -> None:
        async for h in _harness(tmp_path):
            info = await h.client.get_orchestrator(job_capabilities(LADDER))
            src = source_segments[0]
            signer = Signer(GATEWAY_KEY)

            def header(src: Segment = src, info: Any = info, signer: Signer = signer, **kw: Any) -> str:
                return encode_segdata_header(build_segdata(_meta(src, info, **kw), signer))

            hevc = Capabilities.from_ids({*job_capabilities(LADDER).ids, Capability.HEVC_ENCODE})
            r = await _post(h, info, header(capabilities=hevc), src.data)
            assert (r.status_code, r.text) == (403, "incompatible capabilities\n")
            # No token, no session: the signature is checked against the Payment's sender, which an
            # on-chain gateway always sends (WIRE.md section 9); an anonymous sender signs nothing.
            sender = base64.b64encode(pb.Payment(sender=signer.address).SerializeToString()).decode()
            r = await _post(h, info, header(auth_token=None), src.data, payment=sender)
            assert (r.status_code, r.text) == (403, "missing auth token\n")
            r = await _post(h, info, header(auth_token=None), src.data)
            assert (r.status_code, r.text) == (403, "ErrSegSig\n")
            bad = AuthToken(b"\x00" * 32, info.auth_token.session_id, info.auth_token.expiration)
            r = await _post(h, info, header(auth_token=bad), src.data)
            assert (r.status_code, r.text) == (403, "invalid auth token\n")
            r = await _post(h, info, "!!not base64!!", src.data)
            assert (r.status_code, r.text) == (403, "ErrorSegEncoding\n")
            r = await _post(h, info, header(), src.data, payment="%%%")
            assert r.status_code == 402 and r.text.startswith("base64 decode error")
            r = await _post(h, info, "", src.data)
            assert (r.status_code, r.text) == (403, "empty seg data\n")

    run(main)


def test_capacity_and_sessions(tmp_path: Path) -> None:
    async def main() -> None:
        async for h in _harness(tmp_path, max_sessions=1):
            info = await h.client.get_orchestrator()
            with pytest.raises(OrchestratorError, match="OrchestratorCapped"):
                await h.client.get_orchestrator()
            stub_channel = grpc.aio.secure_channel(
                f"127.0.0.1:{h.node.port}",
                grpc.ssl_channel_credentials((await h.client.pins.pin("127.0.0.1", h.node.port)).pem),
                options=[("grpc.ssl_target_name_override", "127.0.0.1")])
            async with stub_channel as channel:
                end = channel.unary_unary("/net.Orchestrator/EndTranscodingSession",
                                          request_serializer=pb.EndTranscodingSessionRequest.SerializeToString,
                                          response_deserializer=pb.EndTranscodingSessionResponse.FromString)
                forged = pb.EndTranscodingSessionRequest()
                forged.auth_token.CopyFrom(info.auth_token)
                forged.auth_token.token = b"\x01" * 32
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await end(forged, timeout=5)
                assert err.value.code() == grpc.StatusCode.UNKNOWN
                assert err.value.details() == "Invalid auth token"
                await end(pb.EndTranscodingSessionRequest(auth_token=info.auth_token), timeout=5)
                ping = channel.unary_unary("/net.Orchestrator/Ping",
                                           request_serializer=pb.PingPong.SerializeToString,
                                           response_deserializer=pb.PingPong.FromString)
                assert isinstance(await ping(pb.PingPong(value=b"x"), timeout=5), pb.PingPong)
            # The session ended, so there is room again.
            assert (await h.client.get_orchestrator()).auth_token.session_id != info.auth_token.session_id

    run(main)


def test_certificate_kept_across_restarts_and_repinned_when_it_changes(tmp_path: Path) -> None:
    async def main() -> None:
        pins = CertificatePins()
        client_signer = Signer(GATEWAY_KEY)
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path / "a"))
        await node.start()
        port = node.port
        client = OrchestratorClient(node.url, client_signer, pins)
        await client.get_orchestrator()
        first = pins.get("127.0.0.1", port)
        await node.close()
        cert_a = (tmp_path / "a" / "cert.pem").read_bytes()
        assert first is not None and first.pem == cert_a

        # Restart on the same port with the same directory: same certificate.
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr=f"127.0.0.1:{port}", data_dir=tmp_path / "a"))
        await node.start()
        await client.get_orchestrator()
        assert (tmp_path / "a" / "cert.pem").read_bytes() == cert_a
        await node.close()

        # Restart with a new certificate: the client re-pins and goes on.
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr=f"127.0.0.1:{port}", data_dir=tmp_path / "b"))
        await node.start()
        info = await client.get_orchestrator()
        assert info.transcoder == node.url
        second = pins.get("127.0.0.1", port)
        assert second is not None and second.pem != first.pem
        await client.close()
        await node.close()

    run(main)


def test_busy_orchestrator_answers_orchestrator_busy(tmp_path: Path, source_segments: list[Segment]) -> None:
    async def main() -> None:
        # One worker, two in flight at most, each held for a second: the third is refused.
        async for h in _harness(tmp_path, transcode_workers=1, delay=1.0):
            info = await h.client.get_orchestrator(job_capabilities(LADDER[:1]))
            signer = Signer(GATEWAY_KEY)
            src = source_segments[0]
            header = encode_segdata_header(build_segdata(_meta(src, info, profiles=LADDER[:1],
                                                               capabilities=job_capabilities(LADDER[:1])), signer))
            responses = await asyncio.gather(*(_post(h, info, header, src.data) for _ in range(3)))
            results = [parse_transcode_result(r.content) for r in responses]
            errors = [r.error for r in results if r.WhichOneof("result") == "error"]
            assert errors == ["OrchestratorBusy"]
            assert all(r.status_code == 200 for r in responses)

    run(main)


def test_payment_header_is_standard_base64(tmp_path: Path, source_segments: list[Segment]) -> None:
    async def main() -> None:
        async for h in _harness(tmp_path):
            info = await h.client.get_orchestrator(job_capabilities(LADDER[:1]))
            src = source_segments[0]
            meta = _meta(src, info, profiles=LADDER[:1], capabilities=job_capabilities(LADDER[:1]))
            header = encode_segdata_header(build_segdata(meta, Signer(GATEWAY_KEY)))
            payment = pb.Payment(sender=Signer(GATEWAY_KEY).address)
            r = await _post(h, info, header, src.data, payment=base64.b64encode(payment.SerializeToString()).decode())
            assert r.status_code == 200
            assert result_renditions(parse_transcode_result(r.content))

    run(main)
