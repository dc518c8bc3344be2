"""A go-livepeer gateway's requests, offchain and signed, against a real orchestrator on 127.0.0.1.

The client here is written from WIRE.md (sections 1, 2, 4, 6 and 9), not with streamgw's own
``livepeer/client.py`` or its SegData builders: the protobuf messages are filled field by field,
Flatten and the EIP-191 signatures are computed with eth-account, gRPC goes over grpcio and
``/segment`` over HTTP/2 with httpx, as Go's gateway sends them.

An offchain go-livepeer gateway (``Eth == nil``) sends GetOrchestrator with ``address`` = 20 zero
bytes and an empty ``sig``, and ``/segment`` with an empty SegData ``sig`` and an empty
``Livepeer-Payment`` (WIRE.md section 9); an on-chain one signs both and sends
``Payment{sender}``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak

from streamgw.cli import build_parser, orchestrator_node
from streamgw.config import Settings, load_settings
from streamgw.errors import ConfigError, SegDataError
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities
from streamgw.livepeer.segdata import GatewayPolicy, make_auth_token, verify_segment_credentials
from streamgw.livepeer.signing import OffchainSigner, Signer
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from tests.conftest import FFMPEG
from tests.media import probe_segment

KEY_A = "0x" + "11" * 32  # an allowed gateway (MANIFEST.json's gateway key)
KEY_B = "0x" + "33" * 32  # another gateway
ADDRESS_A = bytes.fromhex(Account.from_key(KEY_A).address[2:])
ADDRESS_B = bytes.fromhex(Account.from_key(KEY_B).address[2:])
SIG_FAILED = "Invalid orchestrator request: orchestrator req sig check failed"

# P144p30fps16x9 as go-livepeer defines it (common/videoprofile.go), sent in SegData field 33.
PROFILE = pb.VideoProfile(name="P144p30fps16x9", width=256, height=144, bitrate=400_000, fps=30)
# JobCapabilities for an H.264 MPEG-TS ladder (WIRE.md section 3): H264 (0), MPEGTS (1), AuthToken (12).
JOB_CAPS_WORD = 1 << 0 | 1 << 1 | 1 << 12


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One 2 s MPEG-TS segment, 320x180 H.264 (one GOP) and AAC, made by ffmpeg.

    ``-muxdelay 0`` interleaves the audio from the first packet: what this file tests is credentials,
    not how far into a segment the transcoder probes for its streams.
    """
    out = tmp_path_factory.mktemp("media") / "seg.ts"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "2", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-muxdelay", "0",
                    "-f", "mpegts", str(out)], check=True, timeout=60)
    return out.read_bytes()


# ---- the gateway side, from WIRE.md ---------------------------------------------------------------------


def sign(key: str, msg: bytes) -> bytes:
    """go-livepeer ``Sign(msg)``: personal_sign over the 32-byte keccak of ``msg`` (WIRE.md section 4)."""
    signed = Account.sign_message(encode_defunct(primitive=keccak(msg)), private_key=key)
    return bytes(signed.signature)


def _eip55(address: bytes) -> str:
    digits = address.hex()
    h = keccak(digits.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(h[i], 16) >= 8 else c for i, c in enumerate(digits))


def job_capabilities() -> pb.Capabilities:
    caps = pb.Capabilities(bitstring=[JOB_CAPS_WORD])
    caps.constraints.SetInParent()  # Go's ToNetCapabilities always sets it
    return caps


def orchestrator_request(key: str | None) -> pb.OrchestratorRequest:
    """GetOrchestrator: offchain (``key`` None) the zero address and no signature; else ``Sign(EIP-55 address)``."""
    if key is None:
        return pb.OrchestratorRequest(address=bytes(20), sig=b"", capabilities=job_capabilities())
    address = bytes.fromhex(Account.from_key(key).address[2:])
    return pb.OrchestratorRequest(address=address, sig=sign(key, _eip55(address).encode("ascii")),
                                  capabilities=job_capabilities())


def flatten(manifest_id: bytes, seq: int, seg_hash: bytes, names: list[str]) -> bytes:
    """SegData Flatten (WIRE.md section 4): mid, |seq| in 32 bytes, the hash, hex of keccak(name)[:4] each."""
    profiles = b"".join(keccak(n.encode()).hex()[:8].encode("ascii") for n in names)
    return manifest_id + abs(seq).to_bytes(32, "big") + seg_hash + profiles


def segdata(info: pb.OrchestratorInfo, body: bytes, key: str | None, seq: int = 0) -> str:
    """The ``Livepeer-Segment`` header: SegData signed by ``key``, or unsigned offchain (``key`` None)."""
    seg_hash = keccak(body)
    msg = pb.SegData(manifestId=b"offchain-test", seq=seq, hash=seg_hash, profiles=b"invalid", duration=2000,
                     capabilities=job_capabilities(), auth_token=info.auth_token)
    msg.fullProfiles.append(PROFILE)
    if key is not None:
        msg.sig = sign(key, flatten(b"offchain-test", seq, seg_hash, [PROFILE.name]))
    return base64.b64encode(msg.SerializeToString()).decode("ascii")


def payment(sender: bytes | None) -> str:
    """``Livepeer-Payment``: empty offchain; an on-chain gateway with no tickets sends ``Payment{sender}``."""
    if sender is None:
        return ""
    return base64.b64encode(pb.Payment(sender=sender).SerializeToString()).decode("ascii")


@dataclass
class Gateway:
    """A Go-like gateway's two transports to one orchestrator: gRPC and HTTP/2."""

    channel: grpc.aio.Channel
    http: httpx.AsyncClient  # HTTP/2, as Go's segment client
    http1: httpx.AsyncClient  # HTTP/1.1, for refusals (below)

    async def get_orchestrator(self, req: pb.OrchestratorRequest) -> pb.OrchestratorInfo:
        call = self.channel.unary_unary("/net.Orchestrator/GetOrchestrator",
                                        request_serializer=pb.OrchestratorRequest.SerializeToString,
                                        response_deserializer=pb.OrchestratorInfo.FromString)
        info: pb.OrchestratorInfo = await call(req, timeout=8)  # Go's GRPCTimeout
        return info

    async def refused_info(self, req: pb.OrchestratorRequest) -> str:
        """GetOrchestrator that must fail with gRPC UNKNOWN; returns its text."""
        # Not pytest.raises: an AioRpcError kept alive (with its traceback) keeps the call's
        # connection open past the channel's close, and the node's shutdown then waits for it.
        try:
            await self.get_orchestrator(req)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), str(exc.details())
        else:
            raise AssertionError("GetOrchestrator was not refused")
        assert code == grpc.StatusCode.UNKNOWN
        return details

    async def segment(self, info: pb.OrchestratorInfo, header: str, body: bytes, pay: str = "") -> httpx.Response:
        """POST /segment over HTTP/2."""
        return await self.http.post(info.transcoder + "/segment", content=body, headers={
            "Livepeer-Segment": header, "Livepeer-Payment": pay, "Content-Type": "video/MP2T"})

    async def refused(self, info: pb.OrchestratorInfo, header: str, body: bytes, pay: str = "") -> tuple[int, str]:
        """POST /segment that the O answers before reading the body; returns its status and text.

        Over HTTP/1.1: an early answer on HTTP/2 is another test's subject (hypercorn's h2 layer and
        the DATA frames that follow it); here only the credentials are.
        """
        r = await self.http1.post(info.transcoder + "/segment", content=body, headers={
            "Livepeer-Segment": header, "Livepeer-Payment": pay, "Content-Type": "video/MP2T"})
        return r.status_code, r.text


@asynccontextmanager
async def orchestrator(tmp: Path, **kw: Any) -> AsyncIterator[Gateway]:
    """A real orchestrator node on 127.0.0.1 and a gateway connected to it."""
    node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp, **kw))
    await node.start()
    try:
        # Go skips certificate checks; grpcio cannot, so trust what the server presents.
        pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", node.port))
        creds = grpc.ssl_channel_credentials(pem.encode())
        async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", creds,
                                           options=[("grpc.ssl_target_name_override", "127.0.0.1")]) as channel:
            async with httpx.AsyncClient(http2=True, verify=False, timeout=30) as http, \
                    httpx.AsyncClient(verify=False, timeout=30) as http1:
                yield Gateway(channel, http, http1)
    finally:
        await node.close()


def run(coro: Any) -> None:
    asyncio.run(coro)


# ---- offchain (the default) -----------------------------------------------------------------------------


def test_offchain_gateway_is_served(tmp_path: Path, segment: bytes) -> None:
    async def main() -> None:
        async with orchestrator(tmp_path) as gw:
            info = await gw.get_orchestrator(orchestrator_request(None))
            assert info.transcoder.startswith("https://127.0.0.1:")
            assert info.auth_token.session_id and info.auth_token.token
            r = await gw.segment(info, segdata(info, segment, None, seq=4), segment, payment(None))
            assert r.status_code == 200, r.text
            assert r.http_version == "HTTP/2"
            result = pb.TranscodeResult.FromString(r.content)
            assert result.seq == 4 and result.WhichOneof("result") == "data", result
            assert result.data.sig == b""  # an offchain O signs nothing
            (seg,) = result.data.segments
            rendition = await gw.http.get(seg.url)
            assert rendition.status_code == 200
            probe = probe_segment(rendition.content)
            assert probe.height == 144 and probe.video_frames == 60

    run(main())


def test_wrong_signatures_are_refused_offchain(tmp_path: Path, segment: bytes) -> None:
    async def main() -> None:
        async with orchestrator(tmp_path) as gw:
            # GetOrchestrator claiming A's address, signed by B.
            forged = orchestrator_request(KEY_B)
            forged.address = ADDRESS_A
            assert await gw.refused_info(forged) == SIG_FAILED
            # A signature that is no signature at all.
            garbled = orchestrator_request(None)
            garbled.sig = b"\x01" * 64
            assert await gw.refused_info(garbled) == SIG_FAILED

            # A's session: a segment signed by B, or unsigned, is not A's.
            info = await gw.get_orchestrator(orchestrator_request(KEY_A))
            for header in (segdata(info, segment, KEY_B), segdata(info, segment, None)):
                assert await gw.refused(info, header, segment) == (403, "ErrSegSig\n")
            r = await gw.segment(info, segdata(info, segment, KEY_A), segment, payment(ADDRESS_A))
            assert r.status_code == 200 and pb.TranscodeResult.FromString(r.content).WhichOneof("result") == "data"

            # An offchain session: a signature that is present is checked, and the zero address signs nothing.
            anon = await gw.get_orchestrator(orchestrator_request(None))
            assert await gw.refused(anon, segdata(anon, segment, KEY_B), segment) == (403, "ErrSegSig\n")
            # ... and a Payment naming B needs B's signature.
            refusal = await gw.refused(anon, segdata(anon, segment, KEY_A), segment, payment(ADDRESS_B))
            assert refusal == (403, "ErrSegSig\n")

    run(main())


# ---- operators who serve only known gateways ------------------------------------------------------------


def test_required_signatures_and_allow_list(tmp_path: Path, segment: bytes) -> None:
    async def main() -> None:
        async with orchestrator(tmp_path / "signed", require_signed=True) as gw:
            assert await gw.refused_info(orchestrator_request(None)) == SIG_FAILED
            assert (await gw.get_orchestrator(orchestrator_request(KEY_B))).auth_token.session_id

        async with orchestrator(tmp_path / "allow", require_signed=True,
                                allowed_gateways=frozenset({ADDRESS_A})) as gw:
            assert await gw.refused_info(orchestrator_request(None)) == SIG_FAILED
            assert await gw.refused_info(orchestrator_request(KEY_B)) == SIG_FAILED  # signed, not allowed
            info = await gw.get_orchestrator(orchestrator_request(KEY_A))
            # B reusing A's auth token, signing as itself: not allowed.
            refusal = await gw.refused(info, segdata(info, segment, KEY_B), segment, payment(ADDRESS_B))
            assert refusal == (403, "ErrSegSig\n")
            assert await gw.refused(info, segdata(info, segment, None), segment) == (403, "ErrSegSig\n")
            r = await gw.segment(info, segdata(info, segment, KEY_A, seq=9), segment, payment(ADDRESS_A))
            assert r.status_code == 200
            result = pb.TranscodeResult.FromString(r.content)
            assert result.seq == 9 and len(result.data.segments) == 1

    run(main())


def test_an_allow_list_alone_refuses_unsigned_gateways(tmp_path: Path) -> None:
    async def main() -> None:
        async with orchestrator(tmp_path, allowed_gateways=frozenset({ADDRESS_A})) as gw:
            assert await gw.refused_info(orchestrator_request(None)) == SIG_FAILED
            assert (await gw.get_orchestrator(orchestrator_request(KEY_A))).auth_token.token

    run(main())


def test_unsigned_segments_are_refused_when_signatures_are_required() -> None:
    """The segment check on its own (no unsigned session can be opened when signatures are required)."""
    secret, caps = b"s" * 32, Capabilities(bitstring=(JOB_CAPS_WORD,))
    info = pb.OrchestratorInfo(auth_token=make_auth_token(secret, "abc", 2_000_000_000).to_proto())
    header = segdata(info, b"x" * 188, None)

    def check(policy: GatewayPolicy) -> None:
        verify_segment_credentials(header, verifier=Signer(KEY_A), sender=bytes(20), orchestrator_caps=caps,
                                   auth_secret=secret, now=1_000_000_000, policy=policy)

    check(GatewayPolicy())
    for policy in (GatewayPolicy(unsigned=False), GatewayPolicy(allowed=frozenset({ADDRESS_A}))):
        with pytest.raises(SegDataError, match="^ErrSegSig$"):
            check(policy)
    # go-livepeer's default: an offchain O serves it, an on-chain O (one with a key) does not.
    verify_segment_credentials(header, verifier=OffchainSigner(), sender=bytes(20), orchestrator_caps=caps,
                               auth_secret=secret, now=1_000_000_000)
    with pytest.raises(SegDataError, match="^ErrSegSig$"):
        verify_segment_credentials(header, verifier=Signer(KEY_A), sender=bytes(20), orchestrator_caps=caps,
                                   auth_secret=secret, now=1_000_000_000)


def test_gateway_settings_are_validated_and_reach_the_node() -> None:
    good = f"{Account.from_key(KEY_A).address}, 0x{ADDRESS_B.hex()}"
    args = build_parser().parse_args(["orchestrator", "--orch-require-signed", "true", "--orch-allowed-gateways", good])
    settings = load_settings(None, {k: v for k, v in vars(args).items() if k in Settings.model_fields}, environ={})
    node = orchestrator_node(settings)
    assert node.settings.require_signed is True
    assert node.settings.allowed_gateways == {ADDRESS_A, ADDRESS_B}
    assert orchestrator_node(load_settings(None, None, environ={})).settings.allowed_gateways == frozenset()
    checksummed = Account.from_key(KEY_A).address  # 0x19E7E376...
    bad_checksum = checksummed[:4] + checksummed[4].lower() + checksummed[5:]
    for bad in ("0x1234", ADDRESS_A.hex(), "0x" + "00" * 20, bad_checksum, f"{checksummed},nonsense"):
        with pytest.raises(ConfigError, match="orch_allowed_gateways"):
            load_settings(None, {"orch_allowed_gateways": bad}, environ={})
    with pytest.raises(ConfigError, match="orch_require_signed"):
        load_settings(None, None, environ={"STREAMGW_ORCH_REQUIRE_SIGNED": "maybe"})
