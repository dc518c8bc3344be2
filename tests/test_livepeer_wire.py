"""The Livepeer wire layer beyond the vectors: schema facts, round trips, the compatibility rules, errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from streamgw.errors import (
    CapabilityMismatch,
    LivepeerError,
    PaymentError,
    ProfileError,
    ProtocolError,
    SegDataError,
    SignatureError,
    TranscodeResultError,
)
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import (
    DEFAULT_CAPABILITIES,
    LEGACY_CAPABILITIES,
    Capabilities,
    Capability,
    Incompatibility,
    ModelConstraint,
    PixelFormat,
    ai_job_capabilities,
    bitstring,
    bitstring_ids,
    check_compatible,
    compatible_with,
    discovery_compatible,
    incompatibility,
    is_subset,
    job_capabilities,
    parse_loose_semver,
)
from streamgw.livepeer.profiles import (
    GOP_INTRA_ONLY,
    PRESETS,
    ChromaFormat,
    EncoderProfile,
    VideoCodec,
    VideoFormat,
    VideoProfile,
    parse_preset_names,
    parse_profiles_json,
)
from streamgw.livepeer.segdata import (
    DEFAULT_DURATION_MS,
    EMPTY_SEGMENT_HASH,
    AuthToken,
    Rendition,
    SegMetadata,
    build_segdata,
    decode_segdata_header,
    duration_ms,
    encode_segdata_header,
    make_auth_token,
    orchestrator_request,
    parse_segdata,
    parse_transcode_result,
    ping_response,
    result_renditions,
    result_signer_address,
    sign_renditions,
    transcode_result,
    verify_orchestrator_request,
    verify_rendition_hashes,
    verify_renditions,
    verify_segment_credentials,
)
from streamgw.livepeer.signing import (
    ZERO_ADDRESS,
    MessageSigner,
    OffchainSigner,
    Signer,
    bytes_to_address,
    keccak256,
    recover_address,
    verify_message,
    verify_sig,
)
from streamgw.livepeer.tickets import (
    Ticket,
    TicketParams,
    decode_payment_header,
    float_string,
    int_to_bytes,
    price_from_proto,
    uint256,
)

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = Signer(bytes.fromhex("11" * 32))
ORCH = Signer(bytes.fromhex("22" * 32))
SECRET = b"o-secret"
NOW = 1_767_225_000


# ---- schema: generated code and field numbers ----------------------------------------------------------


def test_regenerating_the_protobuf_modules_is_byte_identical(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, env=env, timeout=120)
    for name in ("lp_rpc_pb2.py", "lp_rpc_pb2.pyi", "lp_rpc_pb2_grpc.py"):
        fresh = (tmp_path / "streamgw" / "livepeer" / name).read_bytes()
        assert fresh == (ROOT / "streamgw" / "livepeer" / name).read_bytes(), f"{name} is stale: run gen_proto.sh"


def test_grpc_module_imports_the_package_module_and_names_the_methods() -> None:
    from streamgw.livepeer import lp_rpc_pb2_grpc

    source = (ROOT / "streamgw" / "livepeer" / "lp_rpc_pb2_grpc.py").read_text()
    assert "from streamgw.livepeer import lp_rpc_pb2" in source
    assert hasattr(lp_rpc_pb2_grpc, "OrchestratorStub") and hasattr(lp_rpc_pb2_grpc, "OrchestratorServicer")
    service = pb.DESCRIPTOR.services_by_name["Orchestrator"]
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "GetOrchestrator": ("net.OrchestratorRequest", "net.OrchestratorInfo"),
        "EndTranscodingSession": ("net.EndTranscodingSessionRequest", "net.EndTranscodingSessionResponse"),
        "Ping": ("net.PingPong", "net.PingPong"),
    }
    assert pb.DESCRIPTOR.package == "net"


B, S, I64, U64, I32, U32, BOOL, MSG, ENUM = (
    FD.TYPE_BYTES,
    FD.TYPE_STRING,
    FD.TYPE_INT64,
    FD.TYPE_UINT64,
    FD.TYPE_INT32,
    FD.TYPE_UINT32,
    FD.TYPE_BOOL,
    FD.TYPE_MESSAGE,
    FD.TYPE_ENUM,
)
R = True  # repeated

# WIRE.md section 2, row by row: message -> {field: (number, type, repeated)}.
SCHEMA: dict[str, dict[str, tuple[int, int, bool]]] = {
    "OrchestratorRequest": {
        "address": (1, B, False),
        "sig": (2, B, False),
        "capabilities": (3, MSG, False),
        "ignoreCapacityCheck": (4, BOOL, False),
    },
    "OrchestratorInfo": {
        "transcoder": (1, S, False),
        "ticket_params": (2, MSG, False),
        "price_info": (3, MSG, False),
        "address": (4, B, False),
        "capabilities": (5, MSG, False),
        "auth_token": (6, MSG, False),
        "hardware": (7, MSG, R),
        "storage": (32, MSG, R),
        "capabilities_prices": (33, MSG, R),
        "nodes": (34, S, R),
    },
    "PriceInfo": {
        "pricePerUnit": (1, I64, False),
        "pixelsPerUnit": (2, I64, False),
        "capability": (3, U32, False),
        "constraint": (4, S, False),
    },
    "AuthToken": {"token": (1, B, False), "session_id": (2, S, False), "expiration": (3, I64, False)},
    "Capabilities": {
        "bitstring": (1, U64, R),
        "mandatories": (2, U64, R),
        "capacities": (3, MSG, R),
        "version": (4, S, False),
        "constraints": (5, MSG, False),
    },
    "Capabilities.Constraints": {"minVersion": (1, S, False), "PerCapability": (2, MSG, R)},
    "Capabilities.CapabilityConstraints": {"models": (1, MSG, R)},
    "Capabilities.CapabilityConstraints.ModelConstraint": {
        "warm": (1, BOOL, False),
        "capacity": (2, U32, False),
        "runnerVersion": (3, S, False),
        "capacityInUse": (4, U32, False),
    },
    "TicketParams": {
        "recipient": (1, B, False),
        "face_value": (2, B, False),
        "win_prob": (3, B, False),
        "recipient_rand_hash": (4, B, False),
        "seed": (5, B, False),
        "expiration_block": (6, B, False),
        "expiration_params": (7, MSG, False),
    },
    "TicketExpirationParams": {"creation_round": (1, I64, False), "creation_round_block_hash": (2, B, False)},
    "TicketSenderParams": {"sender_nonce": (1, U32, False), "sig": (2, B, False)},
    "Payment": {
        "ticket_params": (1, MSG, False),
        "sender": (2, B, False),
        "expiration_params": (3, MSG, False),
        "ticket_sender_params": (4, MSG, R),
        "expected_price": (5, MSG, False),
    },
    "SegData": {
        "manifestId": (1, B, False),
        "seq": (2, I64, False),
        "hash": (3, B, False),
        "profiles": (4, B, False),
        "sig": (5, B, False),
        "duration": (6, I32, False),
        "capabilities": (7, MSG, False),
        "auth_token": (8, MSG, False),
        "calc_perceptual_hash": (10, BOOL, False),
        "storage": (32, MSG, R),
        "fullProfiles": (33, MSG, R),
        "fullProfiles2": (34, MSG, R),
        "fullProfiles3": (35, MSG, R),
        "segment_parameters": (37, MSG, False),
        "ForceSessionReinit": (38, BOOL, False),
    },
    "SegParameters": {"from": (1, U64, False), "to": (2, U64, False)},
    "VideoProfile": {
        "name": (16, S, False),
        "width": (17, I32, False),
        "height": (18, I32, False),
        "bitrate": (19, I32, False),
        "fps": (20, U32, False),
        "format": (21, ENUM, False),
        "fpsDen": (22, U32, False),
        "profile": (23, ENUM, False),
        "gop": (24, I32, False),
        "encoder": (25, ENUM, False),
        "colorDepth": (26, I32, False),
        "chromaFormat": (27, ENUM, False),
        "quality": (28, U32, False),
    },
    "OSInfo": {"storageType": (1, ENUM, False), "s3info": (16, MSG, False)},
    "S3OSInfo": {
        "host": (1, S, False),
        "key": (2, S, False),
        "policy": (3, S, False),
        "signature": (4, S, False),
        "credential": (5, S, False),
        "xAmzDate": (6, S, False),
    },
    "TranscodeResult": {
        "seq": (1, I64, False),
        "error": (2, S, False),
        "data": (3, MSG, False),
        "info": (16, MSG, False),
    },
    "TranscodeData": {"segments": (1, MSG, R), "sig": (2, B, False)},
    "TranscodedSegmentData": {"url": (1, S, False), "pixels": (2, I64, False), "perceptual_hash_url": (3, S, False)},
    "PaymentResult": {"info": (16, MSG, False)},
    "HardwareInformation": {"pipeline": (1, S, False), "model_id": (2, S, False), "gpu_info": (3, MSG, R)},
    "GPUComputeInfo": {
        "id": (1, S, False),
        "name": (2, S, False),
        "major": (4, U32, False),
        "minor": (5, U32, False),
        "memory_free": (6, I64, False),
        "memory_total": (7, I64, False),
    },
    "PingPong": {"value": (1, B, False)},
    "EndTranscodingSessionRequest": {"auth_token": (1, MSG, False)},
    "EndTranscodingSessionResponse": {},
}

ENUMS = {
    "VideoProfile.Format": {"MPEGTS": 0, "MP4": 1},
    "VideoProfile.Profile": {
        "ENCODER_DEFAULT": 0,
        "H264_BASELINE": 1,
        "H264_MAIN": 2,
        "H264_HIGH": 3,
        "H264_CONSTRAINED_HIGH": 4,
    },
    "VideoProfile.VideoCodec": {"H264": 0, "H265": 1, "VP8": 2, "VP9": 3},
    "VideoProfile.ChromaSubsampling": {"CHROMA_420": 0, "CHROMA_422": 1, "CHROMA_444": 2},
    "OSInfo.StorageType": {"DIRECT": 0, "S3": 1, "GOOGLE": 2},
}


@pytest.mark.parametrize("message", sorted(SCHEMA))
def test_schema_matches_wire_md(message: str) -> None:
    desc = pb.DESCRIPTOR.message_types_by_name[message.split(".")[0]]
    for part in message.split(".")[1:]:
        desc = desc.nested_types_by_name[part]
    got = {f.name: (f.number, f.type, f.is_repeated) for f in desc.fields}
    assert got == SCHEMA[message]


def test_enums_match_wire_md() -> None:
    for path, values in ENUMS.items():
        msg, enum = path.split(".")
        desc = pb.DESCRIPTOR.message_types_by_name[msg].enum_types_by_name[enum]
        assert {v.name: v.number for v in desc.values} == values
    assert {e.name: e.value for e in VideoFormat} == ENUMS["VideoProfile.Format"]
    assert {e.name: e.value for e in EncoderProfile} == ENUMS["VideoProfile.Profile"]
    assert {e.name: e.value for e in VideoCodec} == ENUMS["VideoProfile.VideoCodec"]
    assert {e.name: e.value for e in ChromaFormat} == ENUMS["VideoProfile.ChromaSubsampling"]


def test_maps_and_oneof() -> None:
    caps = pb.Capabilities.DESCRIPTOR
    assert caps.fields_by_name["capacities"].message_type.GetOptions().map_entry
    assert pb.TranscodeResult.DESCRIPTOR.oneofs_by_name["result"].fields[0].name == "error"


def test_go_style_empty_constraints_serialize_as_2a00() -> None:
    assert Capabilities().to_proto().SerializeToString() == b"\x2a\x00"


def test_errors_are_one_tree() -> None:
    for cls in (SignatureError, ProfileError, CapabilityMismatch, SegDataError, TranscodeResultError, PaymentError):
        assert issubclass(cls, LivepeerError) and issubclass(cls, ProtocolError)


# ---- capabilities --------------------------------------------------------------------------------------


def test_bitstring_upstream_examples() -> None:
    assert bitstring(range(6)) == (63,)
    assert bitstring([192, 193]) == (0, 0, 0, 3)
    assert bitstring([193, 54, 192, 79]) == (1 << 54, 1 << 15, 0, 3)
    assert bitstring([-1, -2]) == ()
    assert bitstring(LEGACY_CAPABILITIES) == (0xFFF,)
    assert bitstring(DEFAULT_CAPABILITIES) == (0x4005FFF,)
    for ids in ([0], [63], [64], [1, 127, 500], list(range(200))):
        assert bitstring_ids(bitstring(ids)) == set(ids)


def test_subset_is_not_symmetric_and_counts_words() -> None:
    assert is_subset((), ())
    assert is_subset((), (2,))
    assert not is_subset((2,), ())
    assert is_subset((0b10,), (0b110,))
    assert not is_subset((0b110,), (0b10,))
    assert not is_subset((1, 0), (1,))  # an extra zero word on B still fails
    assert is_subset((1,), (1, 0, 5))


def test_capabilities_round_trip_and_has() -> None:
    caps = Capabilities.from_ids(
        [0, 1, 35, 200],
        mandatory_ids=[12],
        capacities={35: 2},
        version="0.9.1",
        min_version="0.8.0",
        per_capability={35: {"noop": ModelConstraint(warm=True, capacity=2, runner_version="0.1.2")}, 27: {}},
    )
    assert Capabilities.from_proto(pb.Capabilities.FromString(caps.to_proto().SerializeToString())) == caps
    assert caps.has(35) and caps.has(200) and not caps.has(2) and not caps.has(-1) and not caps.has(5000)
    assert caps.mandatory_ids == {12}
    with pytest.raises(TypeError):
        caps.capacities[1] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.4.1", (0, 4, 1)),
        ("v1.2.3", (1, 2, 3)),
        ("1", (1, 0, 0)),
        ("1.2", (1, 2, 0)),
        ("0.4.1-b3278dce-dirty", (0, 4, 1)),
        ("0.9.1+meta.1", (0, 9, 1)),
        ("1.2.3-rc.1+build", (1, 2, 3)),
        ("nonparsablesemversion", None),
        ("", None),
        ("1.2.3.4", None),
        ("1.2.3-01", None),  # numeric pre-release with a leading zero
        ("1.2.3-", None),
        (" 1.2.3", None),
    ],
)
def test_loose_semver(text: str, parsed: tuple[int, int, int] | None) -> None:
    assert parse_loose_semver(text) == parsed


def _b(min_version: str = "", ids: tuple[int, ...] = (), **kw: object) -> Capabilities:
    return Capabilities.from_ids(ids, min_version=min_version, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("min_version", "version", "ok"),
    [
        ("", "", True),
        ("0.4.1", "0.4.1", True),
        ("0.4.1", "0.4.2", True),
        ("0.4.2", "0.4.1", False),
        ("0.4.1", "", False),
        ("0.4.1", "undefined", False),
        ("0.4.1", "garbage", False),
        ("garbage", "0.0.1", True),  # an unparsable minimum is ignored
        ("garbage", "", False),  # ... but an O without a version still fails
        ("0.4.1", "0.4.1-dirty", True),
        ("0.4.1-rc9", "0.4.1", True),
        ("v0.5", "0.5.0", True),
        ("1.0.0", "0.99.99", False),
    ],
)
def test_version_rule(min_version: str, version: str, ok: bool) -> None:
    o = Capabilities(version=version)
    assert (incompatibility(_b(min_version), o) is None) == ok
    if not ok:
        assert incompatibility(_b(min_version), o) is Incompatibility.VERSION


def test_rules_apply_in_order() -> None:
    # Version fails before the bitstring would.
    o = Capabilities.from_ids([0], version="0.1.0", mandatory_ids=[12])
    assert incompatibility(_b("0.2.0", (0, 1)), o) is Incompatibility.VERSION
    # Then O's mandatories must be within B's bitstring; B's own mandatories play no role.
    assert incompatibility(_b("", (0,)), o) is Incompatibility.MANDATORIES
    assert incompatibility(_b("", (0, 12)), o) is Incompatibility.BITSTRING
    assert (
        incompatibility(
            _b(
                "",
                (0,),
            ),
            Capabilities.from_ids([0]),
        )
        is None
    )
    assert compatible_with(Capabilities.from_ids([0], mandatory_ids=[5]), Capabilities.from_ids([0]))
    # O's minVersion is never consulted.
    assert compatible_with(_b(), Capabilities(min_version="99.0.0"))


def test_per_capability_models() -> None:
    o = Capabilities.from_ids(
        [35],
        version="0.9.1",
        per_capability={
            35: {
                "warm-one": ModelConstraint(warm=True, runner_version="0.1.3"),
                "cold-one": ModelConstraint(warm=False, runner_version=""),
            }
        },
    )

    def b(model: str, warm: bool = False, runner: str = "", cap: int = 35) -> Capabilities:
        return Capabilities.from_ids([cap], per_capability={cap: {model: ModelConstraint(warm, 0, runner)}})

    assert incompatibility(b("warm-one", warm=True, runner="0.1.3"), o) is None
    assert incompatibility(b("warm-one", runner="0.1.2-rc1"), o) is None
    assert incompatibility(b("warm-one", runner="0.1.4"), o) is Incompatibility.RUNNER_VERSION
    assert incompatibility(b("cold-one"), o) is None
    assert incompatibility(b("cold-one", warm=True), o) is Incompatibility.MODEL_NOT_WARM
    assert incompatibility(b("cold-one", runner="0.1.0"), o) is Incompatibility.RUNNER_VERSION  # O has none
    assert incompatibility(b("missing"), o) is Incompatibility.MODEL_MISSING
    # A cap O has no PerCapability entry for is skipped, then the bitstring decides.
    assert incompatibility(b("anything", cap=27), o) is Incompatibility.BITSTRING
    o27 = Capabilities.from_ids([27, 35])
    assert incompatibility(b("anything", cap=27), o27) is None
    with pytest.raises(CapabilityMismatch, match="model missing"):
        check_compatible(b("missing"), o)


def test_discovery_rules() -> None:
    info = pb.OrchestratorInfo(transcoder="https://o:8935")
    legacy_job = Capabilities.from_ids(range(12))
    assert discovery_compatible(legacy_job, info)  # no capabilities: legacy-only rule
    assert not discovery_compatible(job_capabilities([PRESETS["P240p30fps16x9"]]), info)  # AuthToken is not legacy
    assert incompatibility(Capabilities.from_ids([0, 64]), None) is Incompatibility.LEGACY_ONLY
    info.capabilities.CopyFrom(Capabilities.from_ids(DEFAULT_CAPABILITIES).to_proto())
    assert discovery_compatible(job_capabilities([PRESETS["P240p30fps16x9"]]), info)
    info.transcoder = ""
    assert not discovery_compatible(legacy_job, info)


def test_job_capabilities() -> None:
    p = PRESETS["P360p30fps16x9"]
    assert job_capabilities([p]).ids == {0, 1, 12}
    assert job_capabilities([p], verification=True, clip=True).ids == {0, 1, 12, 14, 26}
    assert job_capabilities([], input_codec=VideoCodec.VP8).ids == {12, 17}
    assert job_capabilities([], pixel_format=PixelFormat(420, 10)).ids == {0, 12, 25}
    assert job_capabilities([], pixel_format=PixelFormat(422, 10)).ids == {0, 12, 24}
    assert job_capabilities([], pixel_format=PixelFormat(444, 10)).ids == {0, 12, 23}
    assert job_capabilities([], input_codec=VideoCodec.H265, pixel_format=PixelFormat(444, 12)).ids == {12, 15}
    with pytest.raises(CapabilityMismatch):
        job_capabilities([], pixel_format=PixelFormat(420, 12))
    hevc = VideoProfile(
        "h", 640, 360, 1, 30, encoder=VideoCodec.H265, gop=GOP_INTRA_ONLY, profile=EncoderProfile.H264_CONSTRAINED_HIGH
    )
    assert job_capabilities([hevc], min_version="0.9.0").ids == {0, 1, 10, 11, 12, 16}
    assert job_capabilities([hevc], min_version="0.9.0").min_version == "0.9.0"
    assert Capability.BYOC == 37 and Capability.SCENE_CLASSIFICATION == 13


def test_ai_job_capabilities_match_go_shapes() -> None:
    caps = ai_job_capabilities(
        35, "streamdiffusion", version="0.9.1", runner_version="0.1.2", min_version="0.8.0", discovery=True
    )
    assert caps.ids == DEFAULT_CAPABILITIES | {35}
    assert dict(caps.capacities) == {i: 1 for i in caps.ids}
    assert caps.per_capability[35]["streamdiffusion"] == ModelConstraint(runner_version="0.1.2")
    one = ai_job_capabilities(27, "m", version="0.9.1")
    assert one.ids == {27} and dict(one.capacities) == {27: 1}


# ---- signatures ----------------------------------------------------------------------------------------


def test_eth_account_signs_with_coincurve() -> None:
    from eth_keys.backends import get_backend
    from eth_keys.backends.coincurve import CoinCurveECCBackend

    assert isinstance(get_backend(), CoinCurveECCBackend)


def test_sign_verify_round_trip() -> None:
    msg = b"hello livepeer"
    sig = GATEWAY.sign(msg)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert int.from_bytes(sig[32:64], "big") <= 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
    verify_message(GATEWAY.address, msg, sig)
    verify_message(GATEWAY.checksum_address.lower(), msg, sig)
    assert GATEWAY.sign(msg) == sig  # deterministic (RFC 6979)
    assert recover_address(keccak256(msg), sig) == GATEWAY.address
    with pytest.raises(SignatureError, match="is not from"):
        verify_message(ORCH.address, msg, sig)
    with pytest.raises(SignatureError, match="is not from"):
        verify_message(GATEWAY.address, msg + b"!", sig)
    assert "11" * 8 not in repr(GATEWAY)


def test_verify_rejection_order_and_texts() -> None:
    h = keccak256(b"x")
    sig = bytearray(GATEWAY.sign_hash(h))
    with pytest.raises(SignatureError, match="^invalid signature length$"):
        verify_sig(GATEWAY.address, h, bytes(sig[:64]))
    bad_v = bytes(sig[:64]) + b"\x01"
    with pytest.raises(SignatureError, match="^signature v value must be 27 or 28$"):
        verify_sig(GATEWAY.address, h, bad_v)
    high_s = bytes(sig[:32]) + b"\xff" * 32 + b"\x05"  # both wrong: the s check comes first
    with pytest.raises(SignatureError, match="^signature s value too high$"):
        verify_sig(GATEWAY.address, h, high_s)
    with pytest.raises(SignatureError, match="^invalid signature$"):
        verify_sig(GATEWAY.address, h, bytes(64) + b"\x1b")


def test_offchain_signer() -> None:
    off: MessageSigner = OffchainSigner()
    assert off.address == ZERO_ADDRESS and off.sign(b"x") == b"" and off.sign_hash(bytes(32)) == b""
    off.verify(GATEWAY.address, b"anything", b"")
    off.verify_hash(GATEWAY.address, bytes(32), b"junk")
    assert bytes_to_address(b"\x01") == bytes(19) + b"\x01"
    assert bytes_to_address(bytes(range(24))) == bytes(range(4, 24))


# ---- profiles ------------------------------------------------------------------------------------------


def test_presets_are_lpms_numbers() -> None:
    assert PRESETS["P144p30fps16x9"] == VideoProfile("P144p30fps16x9", 256, 144, 400_000, 30)
    assert PRESETS["P240p30fps16x9"] == VideoProfile("P240p30fps16x9", 426, 240, 600_000, 30)
    assert PRESETS["P360p30fps16x9"] == VideoProfile("P360p30fps16x9", 640, 360, 1_200_000, 30)
    assert PRESETS["P576p30fps16x9"] == VideoProfile("P576p30fps16x9", 1024, 576, 1_500_000, 30)
    assert PRESETS["P720p30fps16x9"] == VideoProfile("P720p30fps16x9", 1280, 720, 4_000_000, 30)
    assert PRESETS["P720p60fps16x9"] == VideoProfile("P720p60fps16x9", 1280, 720, 6_000_000, 60)
    assert PRESETS["P720p30fps4x3"] == VideoProfile("P720p30fps4x3", 960, 720, 3_500_000, 30)
    assert PRESETS["P240p25fps16x9"].fps == 25
    assert {"P1080p30fps16x9", "P1080p60fps16x9"} <= set(PRESETS)
    # go-livepeer's legacy 4-byte profile ids are keccak256(name)[:4].
    assert keccak256(b"P720p30fps16x9")[:4].hex() == "49d54ea9"
    assert keccak256(b"P144p25fps16x9")[:4].hex() == "03f01d1f"
    for p in PRESETS.values():
        assert VideoProfile.from_proto(pb.VideoProfile.FromString(p.to_proto().SerializeToString())) == p


def test_parse_preset_names() -> None:
    assert parse_preset_names("P240p30fps16x9, P360p30fps16x9") == [
        PRESETS["P240p30fps16x9"],
        PRESETS["P360p30fps16x9"],
    ]
    with pytest.raises(ProfileError, match="P999p"):
        parse_preset_names("P240p30fps16x9,P999p")
    with pytest.raises(ProfileError):
        parse_preset_names(" , ")


def test_parse_profiles_json_go_forms() -> None:
    doc = """[
      {"name": "720p", "width": 1280, "height": 720, "bitrate": 3000000, "fps": 30, "fpsDen": 1,
       "profile": "H264ConstrainedHigh", "gop": "2.5", "encoder": "H.264", "colorDepth": 10, "chromaFormat": 1,
       "quality": 23, "unknownKey": true},
      {"Width": 640, "HEIGHT": 360, "Bitrate": 1000000, "FPS": 0, "gop": "intra", "encoder": "HEVC"},
      {"name": "vp9", "width": 1, "height": 1, "bitrate": 1, "fps": 30, "encoder": "VP9", "profile": "none"}
    ]"""
    a, b, c = parse_profiles_json(doc)
    assert a == VideoProfile(
        "720p",
        1280,
        720,
        3_000_000,
        30,
        fps_den=1,
        profile=EncoderProfile.H264_CONSTRAINED_HIGH,
        gop=2500,
        encoder=VideoCodec.H264,
        color_depth=2,
        chroma_format=ChromaFormat.CHROMA_422,
        quality=23,
    )
    assert b.name == "custom_640x360_1000000" and b.gop == GOP_INTRA_ONLY and b.encoder is VideoCodec.H265
    assert c.encoder is VideoCodec.VP9 and c.profile is EncoderProfile.ENCODER_DEFAULT and c.color_depth == 0
    assert parse_profiles_json('{"profiles": [{"name": "x", "width": 2, "height": 2, "bitrate": 1}]}')[0].name == "x"
    assert parse_profiles_json(b"[]") == []


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        '{"nope": []}',
        '[{"gop": 2}]',  # Go's JsonProfile.GOP is a string
        '[{"gop": "-1"}]',
        '[{"gop": "abc"}]',
        '[{"profile": "h265main"}]',
        '[{"encoder": "h264"}]',  # lpms matches codec names exactly
        '[{"width": -1}]',
        '[{"width": 1.5}]',
        '[{"chromaFormat": 3}]',
        '[{"colorDepth": 4}]',
        "[1]",
    ],
)
def test_parse_profiles_json_rejects(doc: str) -> None:
    with pytest.raises(ProfileError):
        parse_profiles_json(doc)


def test_profile_from_proto_as_the_o() -> None:
    assert VideoProfile.from_proto(pb.VideoProfile(width=640, height=360, bitrate=900)).name == "net_640x360_900"
    for field, text in (
        ("format", "unrecognized profile output format"),
        ("profile", "unrecognized encoder profile"),
        ("encoder", "unrecognized video codec"),
    ):
        msg = pb.VideoProfile(name="x")
        setattr(msg, field, 9)
        with pytest.raises(ProfileError, match=f"^{text}$"):
            VideoProfile.from_proto(msg)
    assert VideoProfile("x", 1, 1, 1, 1, format=1).format is VideoFormat.MP4  # type: ignore[arg-type]
    assert VideoProfile("x", 1, 1, 1, 1, format=VideoFormat.MP4).extension == ".mp4"
    with pytest.raises(ProfileError):
        VideoProfile("x", 1, 1, 1, 1, encoder=7)  # type: ignore[arg-type]


# ---- SegData -------------------------------------------------------------------------------------------


def _meta(**kw: object) -> SegMetadata:
    base: dict[str, object] = dict(
        manifest_id=b"stream-1",
        seq=5,
        seg_hash=keccak256(b"segment bytes"),
        profiles=(PRESETS["P240p30fps16x9"], PRESETS["P360p30fps16x9"]),
        duration_ms=2000,
        capabilities=job_capabilities([PRESETS["P240p30fps16x9"]]),
        auth_token=make_auth_token(SECRET, "sess", NOW + 1800),
    )
    base.update(kw)
    return SegMetadata(**base)  # type: ignore[arg-type]


O_CAPS = Capabilities.from_ids(DEFAULT_CAPABILITIES, version="0.9.1")


def _verify(
    header: str,
    *,
    sender: bytes = GATEWAY.address,
    verifier: MessageSigner = ORCH,
    caps: Capabilities = O_CAPS,
    now: float = NOW,
) -> SegMetadata:
    return verify_segment_credentials(
        header, verifier=verifier, sender=sender, orchestrator_caps=caps, auth_secret=SECRET, now=now
    )


def test_segdata_round_trip_through_the_o() -> None:
    meta = _meta()
    header = encode_segdata_header(build_segdata(meta, GATEWAY))
    assert _verify(header) == meta
    # An offchain O accepts an unsigned segment from anyone.
    assert (
        _verify(
            encode_segdata_header(build_segdata(meta, OffchainSigner())), verifier=OffchainSigner(), sender=ZERO_ADDRESS
        )
        == meta
    )


def test_segdata_fields_as_go_fills_them() -> None:
    msg = build_segdata(_meta(), GATEWAY)
    assert msg.profiles == b"invalid" and len(msg.fullProfiles) == 2
    assert not msg.fullProfiles2 and not msg.fullProfiles3
    assert msg.capabilities.HasField("constraints")
    ai = build_segdata(_meta(profiles=(), seg_hash=EMPTY_SEGMENT_HASH, duration_ms=0), GATEWAY)
    assert not (ai.fullProfiles or ai.fullProfiles2 or ai.fullProfiles3) and ai.profiles == b"invalid"
    assert parse_segdata(ai).profiles == () and parse_segdata(ai).duration_ms == DEFAULT_DURATION_MS
    with pytest.raises(SegDataError, match="non-empty name"):
        build_segdata(_meta(profiles=(VideoProfile("", 1, 1, 1, 1),)), GATEWAY)
    with pytest.raises(SegDataError):
        build_segdata(_meta(duration_ms=300_001), GATEWAY)


def test_o_takes_the_first_non_empty_profile_list() -> None:
    msg = build_segdata(_meta(), GATEWAY)
    msg.fullProfiles2.add(name="", width=100, height=50, bitrate=7)
    msg.fullProfiles3.add(name="winner", width=2, height=2, bitrate=1, fps=30)
    got = parse_segdata(msg).profiles
    assert [p.name for p in got] == ["winner"]
    del msg.fullProfiles3[:]
    assert [p.name for p in parse_segdata(msg).profiles] == ["net_100x50_7"]


def test_duration_rules() -> None:
    assert duration_ms(180_180, Fraction(1, 90_000)) == 2002
    assert duration_ms(2999, Fraction(1, 1000)) == 2999
    assert duration_ms(59_999, Fraction(1, 30_000)) == 1999  # truncated, not rounded
    msg = build_segdata(_meta(), GATEWAY)
    for bad in (-1, 300_001):
        msg.duration = bad
        with pytest.raises(SegDataError, match="^invalid duration$"):
            parse_segdata(msg)
    msg.duration = 300_000
    assert parse_segdata(msg).duration_ms == 300_000


def test_header_decoding_is_strict() -> None:
    good = encode_segdata_header(build_segdata(_meta(), GATEWAY))
    for bad in (good + "!", "QQ", "****", good[:-4] + " " + good[-4:]):  # "QQ": padding missing
        with pytest.raises(SegDataError, match="^ErrorSegEncoding$"):
            decode_segdata_header(bad)
    with pytest.raises(SegDataError, match="^proto"):
        decode_segdata_header(base64.b64encode(b"\xff\xff\xff").decode())
    assert decode_segdata_header("") == pb.SegData()


def test_o_checks_in_order() -> None:
    meta = _meta()
    header = encode_segdata_header(build_segdata(meta, GATEWAY))
    with pytest.raises(SegDataError, match="^ErrSegSig$"):
        _verify(header, sender=ORCH.address)
    with pytest.raises(SegDataError, match="^ErrSegSig$"):
        _verify(header, sender=ZERO_ADDRESS)  # a signed segment with no Payment sender
    with pytest.raises(SegDataError, match="^incompatible capabilities$"):
        _verify(header, caps=Capabilities.from_ids(LEGACY_CAPABILITIES))
    no_token = encode_segdata_header(build_segdata(_meta(auth_token=None), GATEWAY))
    with pytest.raises(SegDataError, match="^missing auth token$"):
        _verify(no_token)
    forged = AuthToken(b"\x00" * 32, "sess", NOW + 1800)
    with pytest.raises(SegDataError, match="^invalid auth token$"):
        _verify(encode_segdata_header(build_segdata(_meta(auth_token=forged), GATEWAY)))
    with pytest.raises(SegDataError, match="^expired auth token$"):
        _verify(header, now=NOW + 1801)
    # Profile and duration errors outrank the signature check (here the sender is wrong too).
    msg = build_segdata(meta, GATEWAY)
    msg.fullProfiles[0].encoder = 9  # type: ignore[assignment]
    with pytest.raises(SegDataError, match="^unrecognized video codec$"):
        _verify(encode_segdata_header(msg), sender=ORCH.address)
    msg = build_segdata(meta, GATEWAY)
    msg.duration = -5
    with pytest.raises(SegDataError, match="^invalid duration$"):
        _verify(encode_segdata_header(msg), sender=ORCH.address)


# ---- results, requests, ping, payments -----------------------------------------------------------------


def test_result_signature_and_zero_segments() -> None:
    bodies = [b"a" * 25, b"b" * 100]
    sig = sign_renditions(ORCH, bodies)
    verify_renditions(ORCH.address, bodies, sig)
    with pytest.raises(SignatureError):
        verify_renditions(ORCH.address, list(reversed(bodies)), sig)
    with pytest.raises(TranscodeResultError, match="^ZeroSegments$"):
        sign_renditions(ORCH, [b"a" * 24])
    result = transcode_result(3, renditions=[Rendition("u1", 10), Rendition("u2", 20, "ph")], sig=sig)
    back = parse_transcode_result(result.SerializeToString())
    assert result_renditions(back) == (Rendition("u1", 10), Rendition("u2", 20, "ph"))
    assert result_renditions(transcode_result(3)) == ()
    with pytest.raises(TranscodeResultError, match="neither"):
        result_renditions(pb.TranscodeResult(seq=3))
    with pytest.raises(TranscodeResultError, match="malformed"):
        parse_transcode_result(b"\x0a\xff")


def test_result_signer_falls_back_to_ticket_recipient() -> None:
    info = pb.OrchestratorInfo(address=ORCH.address)
    info.ticket_params.recipient = GATEWAY.address
    assert result_signer_address(info) == ORCH.address
    info.address = b""
    assert result_signer_address(info) == GATEWAY.address


def test_result_signatures_are_checked_only_for_onchain_orchestrators() -> None:
    """Who must sign a result, from the OrchestratorInfo vectors; the signed result vector checks by hashes."""
    vectors = Path(__file__).resolve().parent / "vectors" / "livepeer"
    infos = {v["name"]: pb.OrchestratorInfo.FromString(base64.b64decode(v["expected"]["message_b64"]))
             for v in json.loads((vectors / "orchinfo.json").read_text()) if v["kind"] == "orchestrator_info"}
    assert result_signer_address(infos["info_offchain"]) == ZERO_ADDRESS, "offchain: results unsigned"
    assert result_signer_address(infos["info_onchain_transcoder"]) != ZERO_ADDRESS
    case = next(v for v in json.loads((vectors / "transcoderesult.json").read_text())
                if v["name"] == "data_3_renditions_with_info")
    wire = pb.TranscodeResult.FromString(base64.b64decode(case["expected"]["message_b64"]))
    bodies = [bytes.fromhex(r["body_hex"]) for r in case["inputs"]["renditions"]]
    signer = result_signer_address(wire.info)
    assert signer == Signer(bytes.fromhex(case["inputs"]["signer_private_key_hex"])).address
    verify_rendition_hashes(signer, [keccak256(b) for b in bodies], wire.data.sig)
    with pytest.raises(SignatureError):
        verify_rendition_hashes(signer, [keccak256(b) for b in bodies[:2]], wire.data.sig)
    with pytest.raises(SignatureError):  # signed, but not by the orchestrator the info names
        verify_rendition_hashes(GATEWAY.address, [keccak256(b) for b in bodies], wire.data.sig)
    with pytest.raises(SignatureError, match="length"):
        verify_rendition_hashes(signer, [keccak256(b) for b in bodies], b"")


def test_orchestrator_request_onchain_and_offchain() -> None:
    req = orchestrator_request(GATEWAY, job_capabilities([]))
    assert verify_orchestrator_request(req, ORCH) == GATEWAY.address
    req.address = ORCH.address
    with pytest.raises(SignatureError, match="^orchestrator req sig check failed$"):
        verify_orchestrator_request(req, ORCH)
    off = orchestrator_request(OffchainSigner())
    assert off.address == bytes(20) and off.sig == b"" and not off.HasField("capabilities")
    assert verify_orchestrator_request(off, OffchainSigner()) == ZERO_ADDRESS
    with pytest.raises(SignatureError):
        verify_orchestrator_request(off, ORCH)


def test_ping_is_signed() -> None:
    reply = ping_response(ORCH, pb.PingPong(value=b"nonce"))
    verify_message(ORCH.address, b"nonce", reply.value)


def test_ticket_and_payment_edges() -> None:
    assert int_to_bytes(0) == b"" and int_to_bytes(256) == b"\x01\x00"
    with pytest.raises(PaymentError):
        uint256(2**256)
    with pytest.raises(PaymentError):
        Ticket(bytes(20), bytes(20), 0, 0, 2**32, bytes(32)).flatten()
    params = TicketParams(ORCH.address, 10, 2**255, keccak256(b"r"), 7, 100)
    assert TicketParams.from_proto(params.to_proto()) == params
    assert not params.to_proto(with_expiration_params=False).HasField("expiration_params")
    assert params.ev() == Fraction(10 * 2**255, 2**256 - 1)
    assert price_from_proto(pb.PriceInfo(pricePerUnit=10, pixelsPerUnit=4)) == Fraction(5, 2)
    with pytest.raises(PaymentError, match="^pixels per unit is 0$"):
        price_from_proto(pb.PriceInfo(pricePerUnit=1))
    with pytest.raises(PaymentError, match="^base64 decode error"):
        decode_payment_header("abc")
    with pytest.raises(PaymentError, match="^protobuf unmarshal error"):
        decode_payment_header(base64.b64encode(b"\x0a\x05ab").decode())
    assert float_string(Fraction(-5, 2), 0) == "-3" and float_string(Fraction(1, 3), 3) == "0.333"


def test_keccak256_off_loop_matches_in_place() -> None:
    import asyncio

    from streamgw.livepeer.signing import OFF_LOOP_BYTES, keccak256, keccak256_off_loop

    for size in (0, 1000, OFF_LOOP_BYTES, 3 * OFF_LOOP_BYTES + 7):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        assert asyncio.run(keccak256_off_loop(data)) == keccak256(data)
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
