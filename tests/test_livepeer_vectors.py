"""Every public known-answer vector in tests/vectors/livepeer/ (copied verbatim from shared/livepeer/vectors).

One test per case; the case's ``name`` is its test id. Cases are read strictly (``Strict``): every key of a
case's ``inputs`` and ``expected``, and of every object inside them, is fed to the code under test or checked
against it, and a key the harness does not understand fails the case by name instead of being ignored. Optional
inputs of the format (WIRE.md section 8: SegData ``storage`` and ``calc_perceptual_hash``, JobCapabilities
``verification``, ``perceptual_hash_url``, unsigned offchain results and requests, a request without
capabilities, ...) are fed when present, so a new vector of a documented kind runs without a code change:
``test_synthetic_vectors_of_every_documented_kind`` writes such cases to a temp file and runs them.

Messages that contain maps are compared decoded (Go writes maps in random order), and also as
``SerializeToString(deterministic=True)`` where the vector was made that way.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from google.protobuf.json_format import MessageToDict

from streamgw.errors import CapabilityMismatch, SignatureError, TranscodeResultError
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import (
    Capabilities,
    Incompatibility,
    ModelConstraint,
    PixelFormat,
    StorageKind,
    bitstring,
    incompatibility,
    job_capabilities,
)
from streamgw.livepeer.profiles import ChromaFormat, EncoderProfile, VideoCodec, VideoFormat, VideoProfile
from streamgw.livepeer.segdata import (
    DEFAULT_DURATION_MS,
    AuthToken,
    OSInfo,
    Rendition,
    S3Info,
    SegmentParameters,
    SegMetadata,
    build_segdata,
    decode_segdata_header,
    encode_segdata_header,
    flatten,
    make_auth_token,
    orchestrator_request,
    parse_segdata,
    profiles_field,
    profiles_hex,
    rendition_hashes,
    result_renditions,
    sign_renditions,
    transcode_result,
    verify_orchestrator_request,
    verify_renditions,
)
from streamgw.livepeer.signing import (
    ZERO_ADDRESS,
    MessageSigner,
    OffchainSigner,
    Signer,
    checksum_address,
    keccak256,
    parse_address,
    personal_digest,
    recover_address,
    verify_message,
    verify_sig,
)
from streamgw.livepeer.tickets import (
    MAX_WIN_PROB,
    Ticket,
    TicketParams,
    build_payment,
    decode_payment_header,
    encode_payment_header,
    float_string,
    int_to_bytes,
    is_winning_ticket,
    o_win_prob,
    price_to_proto,
    recipient_rand,
    recipient_rand_hash,
    ticket_ev,
    win_check_value,
)

VECTORS = Path(__file__).parent / "vectors" / "livepeer"
MANIFEST = json.loads((VECTORS / "MANIFEST.json").read_text())
GATEWAY_KEY = bytes.fromhex(MANIFEST["keys"]["gateway_private_key_hex"])
GATEWAY_ADDRESS = MANIFEST["keys"]["gateway_address"]
ORCH_KEY = bytes.fromhex(MANIFEST["keys"]["orchestrator_private_key_hex"])
ORCH_ADDRESS = MANIFEST["keys"]["orchestrator_address"]

E = TypeVar("E", bound=Enum)


# ---- reading cases strictly ----------------------------------------------------------------------------


class Strict:
    """One JSON object of a vector, read strictly: a key never read fails the case when it is ``done``."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            pytest.fail(f"{where}: expected a JSON object, got {data!r}")
        self.data: dict[str, Any] = data
        self.where = where
        self._read: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __getitem__(self, key: str) -> Any:
        """A key the case must have."""
        if key not in self.data:
            pytest.fail(f"{self.where}: {key!r} is missing")
        self._read.add(key)
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """An optional key: ``default`` when it is absent or null."""
        self._read.add(key)
        value = self.data.get(key)
        return default if value is None else value

    def either(self, *spellings: str, default: Any = None) -> Any:
        """An optional key the format may spell as in the proto or in snake case."""
        present = [k for k in spellings if k in self.data]
        if len(present) > 1:
            pytest.fail(f"{self.where}: both {present} given")
        return self.get(present[0], default) if present else default

    def sub(self, key: str) -> Strict | None:
        """An optional nested object, read strictly too."""
        value = self.get(key)
        return None if value is None else Strict(value, f"{self.where}.{key}")

    def ignore(self, *keys: str) -> None:
        """Keys that document a case (its name, notes) and feed nothing."""
        self._read.update(keys)

    def items(self) -> list[tuple[str, Any]]:
        """Every entry of a map (its keys are data, not field names)."""
        self._read.update(self.data)
        return list(self.data.items())

    def done(self) -> None:
        """Fail on the keys nothing read."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            pytest.fail(f"{self.where}: keys the harness does not understand: {unknown}")

    def __enter__(self) -> Strict:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.done()


@contextmanager
def open_case(case: dict[str, Any]) -> Iterator[tuple[Strict, Strict]]:
    """A case's ``inputs`` and ``expected``; every key of the case must be read by the end."""
    with Strict(case, str(case.get("name", "case"))) as top:
        top.ignore("name", "kind", "note", "upstream_test")
        inputs = Strict(top["inputs"], f"{top.where}.inputs")
        expected = Strict(top["expected"], f"{top.where}.expected")
        with inputs, expected:
            yield inputs, expected


def strict_list(value: Any, where: str) -> list[Strict]:
    if not isinstance(value, list):
        pytest.fail(f"{where}: expected a list, got {value!r}")
    return [Strict(v, f"{where}[{i}]") for i, v in enumerate(value)]


def enum_value(enum: type[E], value: Any) -> E:
    """An enum member from its name (as the vectors write them) or its wire number."""
    return enum[value] if isinstance(value, str) else enum(value)


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def as_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(msg, preserving_proto_field_name=True)
    return out


def parsed(cls: Callable[[], Any], text: str) -> Any:
    msg = cls()
    msg.ParseFromString(b64(text))
    return msg


def signer_for(key_hex: str | None) -> MessageSigner:
    """The signer a case names, or an offchain node (empty signatures) when it names no key."""
    return Signer(bytes.fromhex(key_hex)) if key_hex else OffchainSigner()


# ---- builders from the vectors' JSON forms -------------------------------------------------------------


def profile_from_json(f: Strict) -> VideoProfile:
    with f:
        return VideoProfile(
            name=f["name"],
            width=f["width"],
            height=f["height"],
            bitrate=f["bitrate"],
            fps=f.get("fps", 0),
            fps_den=f.get("fps_den", 0),
            format=enum_value(VideoFormat, f.get("format", "MPEGTS")),
            profile=enum_value(EncoderProfile, f.get("profile", "ENCODER_DEFAULT")),
            gop=f.get("gop", 0),
            encoder=enum_value(VideoCodec, f.get("encoder", "H264")),
            color_depth=f.get("color_depth", 0),
            chroma_format=enum_value(ChromaFormat, f.get("chroma_format", "CHROMA_420")),
            quality=f.get("quality", 0),
        )


def profiles_from_json(value: Any, where: str) -> tuple[VideoProfile, ...]:
    return tuple(profile_from_json(p) for p in strict_list(value or [], where))


def models_from_json(f: Strict | None) -> dict[int, dict[str, ModelConstraint]]:
    out: dict[int, dict[str, ModelConstraint]] = {}
    for cap, models in (f.items() if f is not None else []):
        out[int(cap)] = {}
        for model, m in Strict(models, f"per_capability.{cap}").items():
            with Strict(m, f"per_capability.{cap}.{model}") as mf:
                out[int(cap)][model] = ModelConstraint(
                    warm=mf.get("warm", False),
                    capacity=mf.get("capacity", 0),
                    runner_version=mf.get("runner_version", ""),
                    capacity_in_use=mf.get("capacity_in_use", 0),
                )
    return out


def caps_from_json(f: Strict) -> Capabilities:
    """Capabilities from a vector's ``{"ids": [...]}`` or ``{"bitstring": [words]}`` form."""
    with f:
        capacities = f.sub("capacities")
        common: dict[str, Any] = dict(
            capacities={int(k): v for k, v in (capacities.items() if capacities else [])},
            version=f.get("version", ""),
            min_version=f.get("min_version", ""),
            per_capability=models_from_json(f.sub("per_capability")),
        )
        if "ids" in f:
            return Capabilities.from_ids(f["ids"], mandatory_ids=f.get("mandatory_ids", ()), **common)
        return Capabilities(bitstring=tuple(f["bitstring"]), mandatories=tuple(f.get("mandatories", ())), **common)


def storage_kind(value: Any) -> StorageKind:
    return enum_value(StorageKind, value)


def os_info_from_json(value: Any, where: str) -> OSInfo:
    """An ``OSInfo``: a storage type name alone, or ``{storage_type, s3info: {host, key, ...}}``."""
    if not isinstance(value, dict):
        return OSInfo(storage_kind(value))
    with Strict(value, where) as f:
        s3 = None
        raw = f.either("s3info", "s3_info")
        if raw is not None:
            with Strict(raw, f"{where}.s3info") as s3f:
                s3 = S3Info(host=s3f.get("host", ""), key=s3f.get("key", ""), policy=s3f.get("policy", ""),
                            signature=s3f.get("signature", ""), credential=s3f.get("credential", ""),
                            x_amz_date=s3f.either("x_amz_date", "xAmzDate", default=""))
        return OSInfo(storage_kind(f.either("storage_type", "storageType", default="DIRECT")), s3)


def storage_list(value: Any, where: str) -> list[OSInfo]:
    """A repeated ``storage`` field: a list, or one entry written alone."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [os_info_from_json(v, f"{where}[{i}]") for i, v in enumerate(items)]


def check_o_internal(f: Strict, params: TicketParams, sender: str) -> None:
    """The O-only derivations behind a TicketParams set: winProb, recipientRand and its hash."""
    with f:
        assert o_win_prob(params.face_value, int(f["ticket_ev"])) == params.win_prob
        rand = recipient_rand(
            bytes.fromhex(f["orchestrator_secret_hex"]),
            seed=params.seed,
            sender=parse_address(sender),
            face_value=params.face_value,
            win_prob=params.win_prob,
            expiration_block=params.expiration_block,
            price=Fraction(*f["price"]),
            aux_data=params.ticket(parse_address(sender), 0).aux_data(),
        )
        assert rand == int(f["recipient_rand"])
        assert recipient_rand_hash(rand) == params.recipient_rand_hash


def ticket_params_from_json(f: Strict, sender: str) -> TicketParams:
    """TicketParams, with the O-internal derivations checked when the case gives them (for ``sender``)."""
    with f:
        params = TicketParams(
            recipient=parse_address(f["recipient"]),
            face_value=int(f["face_value"]),
            win_prob=int(f["win_prob"]),
            recipient_rand_hash=bytes.fromhex(f["recipient_rand_hash_hex"]),
            seed=int(f["seed"]),
            expiration_block=int(f["expiration_block"]),
            creation_round=f.get("creation_round", 0),
            creation_round_block_hash=bytes.fromhex(f.get("creation_round_block_hash_hex", "00" * 32)),
        )
        o = f.sub("o_internal")
        if o is not None:
            check_o_internal(o, params, sender)
        return params


def auth_token_from_json(f: Strict | None) -> AuthToken | None:
    if f is None:
        return None
    with f:
        return AuthToken(bytes.fromhex(f["token_hex"]), f["session_id"], f["expiration"])


@dataclass
class InfoJson:
    """An OrchestratorInfo built from a case, and the values it was built from."""

    msg: pb.OrchestratorInfo
    capabilities: Capabilities | None
    ticket_params: TicketParams | None
    storage: list[OSInfo]


def orch_info_from_json(f: Strict) -> InfoJson:
    with f:
        info = pb.OrchestratorInfo(transcoder=f.get("transcoder", ""), address=parse_address(f["address"]))
        tp = f.sub("ticket_params")
        params = ticket_params_from_json(tp, GATEWAY_ADDRESS) if tp is not None else None
        if params is not None:
            info.ticket_params.CopyFrom(params.to_proto())
        if f.get("price_info") is not None:
            num, den = f["price_info"]
            info.price_info.CopyFrom(pb.PriceInfo(pricePerUnit=num, pixelsPerUnit=den))
        cf = f.sub("capabilities")
        caps = caps_from_json(cf) if cf is not None else None
        if caps is not None:
            info.capabilities.CopyFrom(caps.to_proto())
        token = auth_token_from_json(f.sub("auth_token"))
        if token is not None:
            info.auth_token.CopyFrom(token.to_proto())
        for num, den, cap, constraint in f.get("capabilities_prices", []):
            info.capabilities_prices.add(pricePerUnit=num, pixelsPerUnit=den, capability=cap, constraint=constraint)
        for hw in strict_list(f.get("hardware", []), f"{f.where}.hardware"):
            with hw:
                entry = info.hardware.add(pipeline=hw.get("pipeline", ""), model_id=hw.get("model_id", ""))
                gpus = hw.sub("gpu_info")
                for key, gpu in gpus.items() if gpus is not None else []:
                    with Strict(gpu, f"{hw.where}.gpu_info.{key}") as g:
                        entry.gpu_info[key].CopyFrom(pb.GPUComputeInfo(
                            id=g.get("id", ""), name=g.get("name", ""), major=g.get("major", 0),
                            minor=g.get("minor", 0), memory_free=g.get("memory_free", 0),
                            memory_total=g.get("memory_total", 0)))
        info.nodes.extend(f.get("nodes", []))
        storage = storage_list(f.get("storage"), f"{f.where}.storage")
        info.storage.extend(s.to_proto() for s in storage)
        return InfoJson(info, caps, params, storage)


def check_info(info: InfoJson) -> None:
    """The O's message read back by the decoders under test."""
    if info.capabilities is not None:
        assert Capabilities.from_proto(info.msg.capabilities) == info.capabilities
    if info.ticket_params is not None:
        assert TicketParams.from_proto(info.msg.ticket_params) == info.ticket_params
    assert [OSInfo.from_proto(s) for s in info.msg.storage] == info.storage


# ---- segdata.json --------------------------------------------------------------------------------------


def check_segdata(case: dict[str, Any]) -> None:
    """B's SegData, Flatten and signature; the O's reading of it."""
    with open_case(case) as (inp, exp):
        signer = signer_for(inp.get("signer_private_key_hex"))
        if "signer_address" in exp:
            assert signer.checksum_address == exp["signer_address"]
        body, given_hash = inp.get("segment_body_hex"), inp.get("segment_hash_hex")
        if (body is None) == (given_hash is None):
            pytest.fail(f"{inp.where}: give exactly one of segment_body_hex and segment_hash_hex")
        seg_hash = keccak256(bytes.fromhex(body)) if body is not None else bytes.fromhex(given_hash)
        assert seg_hash.hex() == exp["segment_hash_hex"]
        profiles = profiles_from_json(inp.get("profiles"), f"{inp.where}.profiles")
        mid = inp["manifest_id"].encode()

        # B: Flatten, its hash, the EIP-191 digest and the signature (empty offchain).
        assert profiles_hex(profiles).decode("ascii") == exp["profiles_hash_ascii"]
        flat = flatten(mid, inp["seq"], seg_hash, profiles)
        assert flat.hex() == exp["flatten_hex"]
        assert keccak256(flat).hex() == exp["flatten_keccak_hex"]
        assert personal_digest(keccak256(flat)).hex() == exp["eip191_digest_hex"]
        assert signer.sign(flat).hex() == exp["sig_hex"]
        assert profiles_field(profiles) == exp["profiles_field"]

        # B: the whole SegData, compared decoded and as deterministic bytes.
        clip = inp.sub("segment_parameters")
        caps = inp.sub("capabilities")
        stores = storage_list(inp.get("storage"), f"{inp.where}.storage")
        if len(stores) > 1:
            pytest.fail(f"{inp.where}.storage: go-livepeer's B sends at most one object store")
        meta = SegMetadata(
            manifest_id=mid,
            seq=inp["seq"],
            seg_hash=seg_hash,
            profiles=profiles,
            duration_ms=inp.get("duration_ms", 0),
            capabilities=caps_from_json(caps) if caps is not None else Capabilities(),
            auth_token=auth_token_from_json(inp.sub("auth_token")),
            segment_parameters=SegmentParameters(clip["from_ms"], clip["to_ms"]) if clip else None,
            force_session_reinit=inp.get("force_session_reinit", False),
            calc_perceptual_hash=inp.get("calc_perceptual_hash", False),
            storage=stores[0] if stores else None,
        )
        if clip is not None:
            clip.done()
        built = build_segdata(meta, signer)
        expected_msg = decode_segdata_header(exp["segdata_b64"])
        assert built == expected_msg
        assert as_dict(built) == exp["segdata_decoded"]
        assert base64.b64encode(built.SerializeToString(deterministic=True)).decode() == exp["segdata_b64"]
        assert decode_segdata_header(encode_segdata_header(built)) == built

        # O: everything B sent read back, and B's signature checked over the Flatten it rebuilds.
        got = parse_segdata(expected_msg)
        assert got == replace(meta, duration_ms=meta.duration_ms or DEFAULT_DURATION_MS)
        assert got.flatten().hex() == exp["flatten_hex"]
        if isinstance(signer, Signer):
            verify_message(signer.address, got.flatten(), expected_msg.sig)
        else:
            assert expected_msg.sig == b""


# ---- orchinfo.json -------------------------------------------------------------------------------------


def check_orchinfo(case: dict[str, Any]) -> None:
    """OrchestratorRequest (B, and the O's check of it), OrchestratorInfo, the O's auth token."""
    kind = case.get("kind")
    with open_case(case) as (inp, exp):
        if kind == "orchestrator_request":
            key = inp.get("signer_private_key_hex")
            signer = signer_for(key)
            message = signer.checksum_address.encode("ascii")
            if "address_checksummed" in exp:
                assert signer.checksum_address == exp["address_checksummed"]
            if "signed_message_ascii" in exp:
                assert message == exp["signed_message_ascii"].encode("ascii")
            if "signed_message_keccak_hex" in exp:
                assert keccak256(message).hex() == exp["signed_message_keccak_hex"]
            if "eip191_digest_hex" in exp:
                assert personal_digest(keccak256(message)).hex() == exp["eip191_digest_hex"]
            assert signer.sign(message).hex() == exp["sig_hex"]
            cf = inp.sub("capabilities")
            req = orchestrator_request(
                signer, caps_from_json(cf) if cf is not None else None,
                ignore_capacity_check=inp.get("ignoreCapacityCheck", False),
            )
            wire = parsed(pb.OrchestratorRequest, exp["message_b64"])
            assert req == wire
            assert as_dict(req) == exp["decoded"]
            # O: an offchain O serves both shapes; an on-chain one only a signed request.
            assert verify_orchestrator_request(wire, OffchainSigner()) == (signer.address if key else ZERO_ADDRESS)
            if key:
                assert verify_orchestrator_request(wire, Signer(ORCH_KEY)) == signer.address
            else:
                with pytest.raises(SignatureError, match="^orchestrator req sig check failed$"):
                    verify_orchestrator_request(wire, Signer(ORCH_KEY))
        elif kind == "orchestrator_info":
            info = orch_info_from_json(inp)
            wire = parsed(pb.OrchestratorInfo, exp["message_b64"])
            assert info.msg == wire
            assert as_dict(info.msg) == exp["decoded"]
            check_info(replace(info, msg=wire))
        elif kind == "auth_token_hmac":
            secret = inp["secret_ascii"].encode()
            msg = inp["session_id"].encode() + int_to_bytes(inp["expiration"])
            assert msg.hex() == exp["hmac_message_hex"]
            token = make_auth_token(secret, inp["session_id"], inp["expiration"])
            assert token.token.hex() == exp["token_hex"]
        else:
            pytest.fail(f"unknown kind {kind}")


# ---- transcoderesult.json ------------------------------------------------------------------------------


def check_transcoderesult(case: dict[str, Any]) -> None:
    """TranscodeResult (data with the O's signature, or an error) and PaymentResult, with their info."""
    kind = case.get("kind")
    with open_case(case) as (inp, exp):
        infof = inp.sub("info")
        info = orch_info_from_json(infof) if infof is not None else None
        wire_info = None
        if kind == "payment_result":
            if info is None:
                pytest.fail(f"{inp.where}: a PaymentResult carries info")
            wire = parsed(pb.PaymentResult, exp["message_b64"])
            assert pb.PaymentResult(info=info.msg) == wire
            assert as_dict(wire) == exp["decoded"]
            check_info(replace(info, msg=wire.info))
            return
        if kind != "transcode_result":
            pytest.fail(f"unknown kind {kind}")
        wire = parsed(pb.TranscodeResult, exp["message_b64"])
        if info is not None:
            wire_info = info.msg
            check_info(replace(info, msg=wire.info))
        if "error" in inp:
            msg = transcode_result(inp["seq"], error=inp["error"], info=wire_info)
            assert msg == wire
            assert as_dict(msg) == exp["decoded"]
            with pytest.raises(TranscodeResultError) as err:
                result_renditions(wire)
            assert str(err.value) == inp["error"]
            return
        key = inp.get("signer_private_key_hex")
        signer = signer_for(key)
        if "signer_address" in exp:
            assert signer.checksum_address == exp["signer_address"]
        renditions, bodies = [], []
        for r in strict_list(inp["renditions"], f"{inp.where}.renditions"):
            with r:
                renditions.append(Rendition(r["url"], r["pixels"], r.get("perceptual_hash_url", "")))
                if "body_hex" in r or key:
                    bodies.append(bytes.fromhex(r["body_hex"]))
        if bodies:
            assert [keccak256(b).hex() for b in bodies] == exp["rendition_hashes_hex"]
            concat = rendition_hashes(bodies)
            assert keccak256(concat).hex() == exp["concat_keccak_hex"]
            if "eip191_digest_hex" in exp:
                assert personal_digest(keccak256(concat)).hex() == exp["eip191_digest_hex"]
            sig = sign_renditions(signer, bodies)
        else:
            sig = signer.sign(b"")  # offchain, no bodies: an offchain O signs nothing
        if key or "sig_hex" in exp:
            assert sig.hex() == exp["sig_hex"]
        msg = transcode_result(inp["seq"], renditions=renditions, sig=sig, info=wire_info)
        assert msg == wire
        assert as_dict(msg) == exp["decoded"]
        assert list(result_renditions(wire)) == renditions
        if key:
            verify_renditions(signer.address, bodies, wire.data.sig)
        else:
            assert wire.data.sig == b""


# ---- capabilities.json ---------------------------------------------------------------------------------


def check_capabilities(case: dict[str, Any]) -> None:
    """Bitstrings and Capabilities, the compatibility rules, JobCapabilities."""
    kind = case.get("kind")
    with open_case(case) as (inp, exp):
        if kind == "bitstring":
            caps = caps_from_json(inp)
            words = bitstring(inp["ids"])
            assert list(words) == exp["bitstring"]
            assert [f"0x{w:016x}" for w in words] == exp["bitstring_hex"]
            assert list(caps.mandatories) == exp["mandatories"]
            wire = parsed(pb.Capabilities, exp["capabilities_b64"])
            assert caps.to_proto() == wire
            assert as_dict(wire) == exp["decoded"]
            encoded = base64.b64encode(caps.to_proto().SerializeToString(deterministic=True)).decode()
            assert encoded == exp["capabilities_b64"]
            assert Capabilities.from_proto(wire) == caps
            assert caps.ids == {i for i in inp["ids"] if i >= 0}
        elif kind == "compatibility":
            b = Capabilities.from_proto(parsed(pb.Capabilities, inp["gateway_caps_b64"]))
            gf = inp.sub("gateway")
            assert b == (caps_from_json(gf) if gf is not None else Capabilities())
            o = None
            of = inp.sub("orchestrator")
            if of is not None:
                o = Capabilities.from_proto(parsed(pb.Capabilities, inp["orchestrator_caps_b64"]))
                assert o == caps_from_json(of)
            else:
                assert inp.get("orchestrator_caps_b64") is None
            reason = incompatibility(b, o)
            assert (reason is None) == exp["compatible"]
            if o is None:  # the vector names the legacy rule whether it passes or not
                assert exp["deciding_rule"] == Incompatibility.LEGACY_ONLY.value
            else:
                assert (reason.value if reason is not None else "ok") == exp["deciding_rule"]
        elif kind == "job_capabilities":
            fmt = inp.get("pixel_format")
            storage = inp.get("storage")

            def build() -> Capabilities:
                return job_capabilities(
                    profiles_from_json(inp.get("profiles"), f"{inp.where}.profiles"),
                    input_codec=enum_value(VideoCodec, inp.get("input_codec", "H264")),
                    pixel_format=PixelFormat(int(fmt[0]), int(fmt[1])) if fmt else None,
                    storage=os_info_from_json(storage, f"{inp.where}.storage").storage_type if storage else None,
                    verification=inp.get("verification", False),
                    clip=inp.get("segment_parameters", False),
                    min_version=inp.get("min_version", ""),
                )

            if "error" in exp:  # 12- and 16-bit inputs; Go's text is not comparable, the refusal is
                exp.ignore("error")
                with pytest.raises(CapabilityMismatch):
                    build()
                return
            caps = build()
            assert sorted(caps.ids) == exp["capability_ids"]
            assert list(caps.bitstring) == exp["bitstring"]
            assert caps.version == "" and not caps.capacities and not caps.per_capability
            assert caps.min_version == inp.get("min_version", "")
            if "capabilities_b64" in exp:
                assert caps.to_proto() == parsed(pb.Capabilities, exp["capabilities_b64"])
            if "decoded" in exp:
                assert as_dict(caps.to_proto()) == exp["decoded"]
        else:
            pytest.fail(f"unknown kind {kind}")


# ---- signatures.json -----------------------------------------------------------------------------------


def check_signatures(case: dict[str, Any]) -> None:
    """ecrecover as crypto/verify.go, signing, the test keys."""
    kind = case.get("kind")
    with open_case(case) as (inp, exp):
        if kind == "verify":
            msg, sig = bytes.fromhex(inp["msg_hex"]), bytes.fromhex(inp["sig_hex"])
            if "eip191_digest_hex" in exp:
                assert personal_digest(msg).hex() == exp["eip191_digest_hex"]
            if exp["valid"]:
                assert checksum_address(recover_address(msg, sig)) == exp["recovered"]
                verify_sig(inp["address"], msg, sig)
                Signer(GATEWAY_KEY).verify_hash(inp["address"], msg, sig)
            else:
                with pytest.raises(SignatureError) as err:
                    verify_sig(inp["address"], msg, sig)
                if "error" in exp:  # else Go's VerifySig answers false with no error: someone else signed
                    assert str(err.value) == exp["error"]
                if "recovered" in exp:
                    recovered = checksum_address(recover_address(msg, sig))
                    assert recovered == exp["recovered"] != checksum_address(inp["address"])
                OffchainSigner().verify_hash(inp["address"], msg, sig)  # offchain nodes accept anything
        elif kind == "sign":
            signer = Signer(bytes.fromhex(inp["private_key_hex"]))
            msg = bytes.fromhex(inp["msg_hex"])
            assert signer.checksum_address == exp["address"]
            assert personal_digest(msg).hex() == exp["eip191_digest_hex"]
            sig = signer.sign_hash(msg)
            assert sig.hex() == exp["sig_hex"]
            verify_sig(exp["address"], msg, sig)
            assert exp["valid"] is True
        elif kind == "addresses":
            assert Signer(bytes.fromhex(inp["gateway_private_key_hex"])).checksum_address == exp["gateway_address"]
            orch = Signer(bytes.fromhex(inp["orchestrator_private_key_hex"]))
            assert orch.checksum_address == exp["orchestrator_address"]
            assert exp["gateway_address"] == GATEWAY_ADDRESS and exp["orchestrator_address"] == ORCH_ADDRESS
        else:
            pytest.fail(f"unknown kind {kind}")


# ---- tickets.json --------------------------------------------------------------------------------------


def ticket_from_json(f: Strict) -> Ticket:
    return Ticket(
        recipient=parse_address(f["recipient"]),
        sender=parse_address(f["sender"]),
        face_value=int(f["face_value"]),
        win_prob=int(f["win_prob"]),
        sender_nonce=f["sender_nonce"],
        recipient_rand_hash=bytes.fromhex(f["recipient_rand_hash_hex"]),
        creation_round=f.get("creation_round", 0),
        creation_round_block_hash=bytes.fromhex(f.get("creation_round_block_hash_hex", "00" * 32)),
    )


def check_tickets(case: dict[str, Any]) -> None:
    """Ticket hashes, signatures, recipientRand, the win test, EV, the O's winProb, Payments."""
    kind = case.get("kind")
    with open_case(case) as (inp, exp):
        if kind == "ticket_hash_only":
            ticket = ticket_from_json(inp)
            assert ticket.flatten().hex() == exp["flatten_hex"]
            assert ticket.hash().hex() == exp["ticket_hash_hex"]
        elif kind == "aux_data":
            ticket = Ticket(
                recipient=bytes(20),
                sender=bytes(20),
                face_value=0,
                win_prob=0,
                sender_nonce=0,
                recipient_rand_hash=bytes(32),
                creation_round=inp["creation_round"],
                creation_round_block_hash=bytes.fromhex(inp["creation_round_block_hash_hex"]),
            )
            assert ticket.aux_data().hex() == exp["aux_data_hex"]
        elif kind == "ev":
            fv, wp = int(inp["face_value"]), int(inp["win_prob"])
            ev = ticket_ev(fv, wp)
            assert ev == Fraction(int(exp["ev_numerator"]), int(exp["ev_denominator"]))
            assert int(exp["ev_denominator"]) == MAX_WIN_PROB
            assert float_string(ev, 0) == exp["ev_rounded_FloatString0"]
            if "win_prob_rat_rounded" in exp:  # some cases give no rounded form of winProb
                rounded = exp["win_prob_rat_rounded"]
                decimals = len(rounded.split(".")[1]) if "." in rounded else 0
                assert float_string(Fraction(wp, MAX_WIN_PROB), decimals) == rounded
        elif kind == "o_win_prob":
            wp = o_win_prob(int(inp["face_value"]), int(inp["ticket_ev"]))
            assert wp == int(exp["win_prob"])
            assert int_to_bytes(wp).hex() == exp["win_prob_hex"]
        elif kind == "ticket":
            ticket = ticket_from_json(inp)
            signer = Signer(bytes.fromhex(inp["sender_private_key_hex"]))
            assert signer.address == ticket.sender
            assert ticket.aux_data().hex() == exp["aux_data_hex"]
            assert ticket.flatten().hex() == exp["flatten_hex"]
            assert ticket.hash().hex() == exp["ticket_hash_hex"]
            assert personal_digest(ticket.hash()).hex() == exp["eip191_digest_hex"]
            sig = ticket.sign(signer)
            assert sig.hex() == exp["sig_hex"]
            verify_sig(ticket.sender, ticket.hash(), sig)
            with Strict(inp["o_side"], f"{inp.where}.o_side") as o:
                rand = recipient_rand(
                    bytes.fromhex(o["orchestrator_secret_hex"]),
                    seed=int(o["seed"]),
                    sender=ticket.sender,
                    face_value=ticket.face_value,
                    win_prob=ticket.win_prob,
                    expiration_block=o["expiration_block"],
                    price=Fraction(*o["price"]),
                    aux_data=ticket.aux_data(),
                )
            assert rand == int(exp["o_recipient_rand"]) == int(inp["recipient_rand"])
            assert recipient_rand_hash(rand).hex() == exp["recipient_rand_hash_hex"] == inp["recipient_rand_hash_hex"]
            assert f"{win_check_value(sig, rand):064x}" == exp["win_check_value_hex"]
            assert is_winning_ticket(sig, rand, ticket.win_prob) is exp["is_winning"]
            assert ticket.ev() == Fraction(*(int(x) for x in exp["ev_fraction"]))
        elif kind == "payment":
            signer = Signer(bytes.fromhex(inp["sender_private_key_hex"]))
            assert signer.checksum_address == inp["sender"]
            params = ticket_params_from_json(Strict(inp["ticket_params"], f"{inp.where}.ticket_params"), inp["sender"])
            price = price_to_proto(Fraction(*inp["expected_price"]))
            payment = build_payment(params, signer=signer, nonces=inp["sender_nonces"], expected_price=price)
            tickets = [params.ticket(signer.address, n) for n in inp["sender_nonces"]]
            assert [t.hash().hex() for t in tickets] == exp["ticket_hashes_hex"]
            assert [p.sig.hex() for p in payment.ticket_sender_params] == exp["sigs_hex"]
            assert encode_payment_header(payment) == exp["payment_b64"]  # no maps: the bytes are Go's too
            assert decode_payment_header(exp["payment_b64"]) == payment
            assert as_dict(payment) == exp["decoded"]
        elif kind == "payment_header_empty":
            assert decode_payment_header("") == pb.Payment()
            assert encode_payment_header(pb.Payment()) == exp["payment_b64"]
            assert as_dict(pb.Payment()) == exp["decoded"]
        else:
            pytest.fail(f"unknown kind {kind}")


# ---- the files -----------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "segdata.json": check_segdata,
    "orchinfo.json": check_orchinfo,
    "transcoderesult.json": check_transcoderesult,
    "capabilities.json": check_capabilities,
    "signatures.json": check_signatures,
    "tickets.json": check_tickets,
}


def load(path: Path, count: int | None = None) -> list[dict[str, Any]]:
    """The cases of one vector file (``count`` of them, when the MANIFEST says how many)."""
    cases: list[dict[str, Any]] = json.loads(path.read_text())
    if count is not None:
        assert len(cases) == count, f"{path.name}: MANIFEST count differs"
    assert len({c["name"] for c in cases}) == len(cases), f"{path.name}: duplicate case names"
    return cases


def check_file(path: Path) -> int:
    """Run every case of a vector file through its checks; returns how many ran."""
    cases = load(path)
    for case in cases:
        CHECKS[path.name](case)
    return len(cases)


def cases(name: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", load(VECTORS / name, MANIFEST["files"][name]), ids=lambda c: str(c["name"]))


def test_every_vector_file_has_checks() -> None:
    on_disk = {p.name for p in VECTORS.glob("*.json")} - {"MANIFEST.json"}
    assert on_disk == set(MANIFEST["files"]) == set(CHECKS)


@cases("segdata.json")
def test_segdata(case: dict[str, Any]) -> None:
    check_segdata(case)


@cases("orchinfo.json")
def test_orchinfo(case: dict[str, Any]) -> None:
    check_orchinfo(case)


@cases("transcoderesult.json")
def test_transcoderesult(case: dict[str, Any]) -> None:
    check_transcoderesult(case)


@cases("capabilities.json")
def test_capabilities(case: dict[str, Any]) -> None:
    check_capabilities(case)


@cases("signatures.json")
def test_signatures(case: dict[str, Any]) -> None:
    check_signatures(case)


@cases("tickets.json")
def test_tickets(case: dict[str, Any]) -> None:
    check_tickets(case)


# ---- kinds the public files lack -----------------------------------------------------------------------
# Each synthetic case starts from a public one and changes what its kind adds; the new expected values are
# computed here from WIRE.md with the generated messages and eth-account, not with the code under test.

S3 = pb.S3OSInfo(host="https://bucket.s3.example.com", key="stream/${filename}", policy="eyJwb2xpY3kiOjF9",
                 signature="c2lnbmF0dXJl", credential="AKIA/20260101/us-east-1/s3/aws4_request",
                 xAmzDate="20260101T000000Z")
S3_SNAKE = {"host": S3.host, "key": S3.key, "policy": S3.policy, "signature": S3.signature,
            "credential": S3.credential, "x_amz_date": S3.xAmzDate}


def public(file: str, name: str, new_name: str) -> dict[str, Any]:
    """A copy of a public case, renamed."""
    case = next(c for c in load(VECTORS / file) if c["name"] == name)
    out: dict[str, Any] = copy.deepcopy(case)
    out["name"] = new_name
    return out


def set_message(exp: dict[str, Any], cls: Any, key: str, decoded: str, change: Callable[[Any], None]) -> None:
    msg = cls.FromString(b64(exp[key]))
    change(msg)
    exp[key] = base64.b64encode(msg.SerializeToString(deterministic=True)).decode()
    exp[decoded] = as_dict(msg)


def eip191_sign(key: bytes, msg: bytes) -> str:
    """go-livepeer ``Sign(msg)`` by eth-account: personal_sign over keccak256(msg)."""
    return bytes(Account.sign_message(encode_defunct(primitive=keccak256(msg)), private_key=key).signature).hex()


@dataclass
class Synthetic:
    """A case of a documented kind, and what taking away its new part must do: fail the case."""

    file: str
    case: dict[str, Any]
    without: Callable[[dict[str, Any]], None] | None = None


def synthetic_cases() -> list[Synthetic]:
    out: list[Synthetic] = []

    # SegData with B's S3 object store and perceptual hashes asked for (neither is part of Flatten).
    c = public("segdata.json", "fullProfiles33_two_ts_presets_seq0", "storage_s3_and_perceptual_hash")
    c["inputs"]["storage"] = [{"storage_type": "S3", "s3info": S3_SNAKE}]
    c["inputs"]["calc_perceptual_hash"] = True

    def add_store(m: pb.SegData) -> None:
        m.calc_perceptual_hash = True
        m.storage.add(storageType=pb.OSInfo.S3, s3info=S3)

    set_message(c["expected"], pb.SegData, "segdata_b64", "segdata_decoded", add_store)
    out.append(Synthetic("segdata.json", c, lambda c: c["inputs"].pop("storage")))
    c = copy.deepcopy(c)
    c["name"] += "_hash_only"
    del c["inputs"]["storage"]
    set_message(c["expected"], pb.SegData, "segdata_b64", "segdata_decoded", lambda m: m.ClearField("storage"))
    out.append(Synthetic("segdata.json", c, lambda c: c["inputs"].pop("calc_perceptual_hash")))

    # An offchain B's SegData: no key, an empty signature.
    c = public("segdata.json", "fullProfiles3_35_fractional_fps", "offchain_unsigned")
    del c["inputs"]["signer_private_key_hex"]
    del c["expected"]["signer_address"]
    c["expected"]["sig_hex"] = ""
    set_message(c["expected"], pb.SegData, "segdata_b64", "segdata_decoded", lambda m: m.ClearField("sig"))
    out.append(Synthetic("segdata.json", c,
                         lambda c: c["inputs"].__setitem__("signer_private_key_hex", GATEWAY_KEY.hex())))

    # An O with S3 storage and mandatory capabilities (12: AuthToken, word 1 << 12).
    c = public("orchinfo.json", "info_offchain", "info_s3_and_mandatories")
    camel = {k: v for k, v in S3_SNAKE.items() if k != "x_amz_date"} | {"xAmzDate": S3.xAmzDate}
    c["inputs"]["storage"] = [{"storageType": "S3", "s3info": camel}]  # the proto's spelling
    c["inputs"]["capabilities"]["mandatory_ids"] = [12]

    def s3_and_mandatories(m: pb.OrchestratorInfo) -> None:
        m.storage.add(storageType=pb.OSInfo.S3, s3info=S3)
        m.capabilities.mandatories[:] = [1 << 12]

    set_message(c["expected"], pb.OrchestratorInfo, "message_b64", "decoded", s3_and_mandatories)
    out.append(Synthetic("orchinfo.json", c, lambda c: c["inputs"]["capabilities"].pop("mandatory_ids")))

    # GetOrchestrator with no capabilities (discovery asking for everything: capabilities_prices, hardware).
    c = public("orchinfo.json", "request_transcoding_caps", "request_no_capabilities")
    del c["inputs"]["capabilities"]
    set_message(c["expected"], pb.OrchestratorRequest, "message_b64", "decoded",
                lambda m: m.ClearField("capabilities"))
    out.append(Synthetic("orchinfo.json", c,
                         lambda c: c["inputs"].__setitem__("capabilities", {"ids": [0, 1, 12]})))

    # An offchain B's GetOrchestrator: 20 zero bytes and no signature.
    c = public("orchinfo.json", "request_transcoding_caps", "request_offchain")
    del c["inputs"]["signer_private_key_hex"]
    zero = "0x" + "0" * 40
    c["expected"].update(address_checksummed=zero, signed_message_ascii=zero, sig_hex="",
                         signed_message_keccak_hex=keccak256(zero.encode()).hex(),
                         eip191_digest_hex=personal_digest(keccak256(zero.encode())).hex())

    def offchain_request(m: pb.OrchestratorRequest) -> None:
        m.address, m.sig = bytes(20), b""

    set_message(c["expected"], pb.OrchestratorRequest, "message_b64", "decoded", offchain_request)
    out.append(Synthetic("orchinfo.json", c,
                         lambda c: c["inputs"].__setitem__("signer_private_key_hex", GATEWAY_KEY.hex())))

    # Renditions with perceptual hashes (not signed: the signature covers the renditions only).
    c = public("transcoderesult.json", "data_3_renditions_with_info", "perceptual_hash_urls")
    for r in c["inputs"]["renditions"]:
        r["perceptual_hash_url"] = r["url"].replace(".ts", ".phash")

    def phash(m: pb.TranscodeResult) -> None:
        for seg in m.data.segments:
            seg.perceptual_hash_url = seg.url.replace(".ts", ".phash")

    set_message(c["expected"], pb.TranscodeResult, "message_b64", "decoded", phash)
    out.append(Synthetic("transcoderesult.json", c, lambda c: c["inputs"]["renditions"][1].pop("perceptual_hash_url")))

    # An offchain O's result: no key, an empty signature over the same renditions.
    c = public("transcoderesult.json", "data_3_renditions_signed", "offchain_unsigned")
    del c["inputs"]["signer_private_key_hex"]
    for k in ("signer_address", "eip191_digest_hex"):
        del c["expected"][k]
    c["expected"]["sig_hex"] = ""
    set_message(c["expected"], pb.TranscodeResult, "message_b64", "decoded", lambda m: m.data.ClearField("sig"))
    out.append(Synthetic("transcoderesult.json", c,
                         lambda c: c["inputs"].__setitem__("signer_private_key_hex", ORCH_KEY.hex())))
    # ... and one that lists no rendition bodies at all.
    c = copy.deepcopy(c)
    c["name"] += "_urls_only"
    for r in c["inputs"]["renditions"]:
        del r["body_hex"]
    for k in ("rendition_hashes_hex", "concat_keccak_hex"):
        del c["expected"][k]
    out.append(Synthetic("transcoderesult.json", c,  # a signed result needs the bodies
                         lambda c: c["inputs"].__setitem__("signer_private_key_hex", ORCH_KEY.hex())))

    # The third error text WIRE.md lists.
    c = public("transcoderesult.json", "error_mediastats_failure", "error_orchestrator_capped")
    c["inputs"].update(seq=20, error="OrchestratorCapped")

    def capped(m: pb.TranscodeResult) -> None:
        m.seq, m.error = 20, "OrchestratorCapped"

    set_message(c["expected"], pb.TranscodeResult, "message_b64", "decoded", capped)
    out.append(Synthetic("transcoderesult.json", c, lambda c: c["inputs"].__setitem__("error", "OrchestratorBusy")))

    # JobCapabilities with verification on: + 14 (MPEG7VideoSignature).
    c = public("capabilities.json", "upstream_empty_params", "job_verification")
    c["inputs"]["verification"] = True
    c["expected"] = {"capability_ids": [0, 12, 14], "bitstring": [1 << 0 | 1 << 12 | 1 << 14]}
    out.append(Synthetic("capabilities.json", c, lambda c: c["inputs"].pop("verification")))
    # ... with an S3 object store given as B's OSInfo, and a minimum O version.
    c = public("capabilities.json", "upstream_empty_params", "job_s3_min_version")
    c["inputs"].update(storage={"storage_type": "S3", "s3info": S3_SNAKE}, min_version="0.8.0")
    c["expected"] = {"capability_ids": [0, 5, 12], "bitstring": [1 << 0 | 1 << 5 | 1 << 12]}
    caps = pb.Capabilities(bitstring=c["expected"]["bitstring"])
    caps.constraints.minVersion = "0.8.0"
    c["expected"]["capabilities_b64"] = base64.b64encode(caps.SerializeToString()).decode()
    out.append(Synthetic("capabilities.json", c, lambda c: c["inputs"].pop("min_version")))
    # ... and a 12-bit input, which B refuses.
    c = public("capabilities.json", "upstream_pixfmt_YUV422P", "job_12bit_refused")
    c["inputs"]["pixel_format"] = ["420", 12]
    c["expected"] = {"error": "capability: unsupported pixel format"}
    out.append(Synthetic("capabilities.json", c, lambda c: c["inputs"].__setitem__("pixel_format", ["420", 10])))

    # A valid signature by someone else: Go's VerifySig answers false, with no error text.
    c = public("signatures.json", "upstream_valid_sig", "someone_else_no_error_text")
    recovered = c["inputs"]["address"]
    c["inputs"]["address"] = GATEWAY_ADDRESS
    c["expected"] = {"valid": False, "recovered": recovered}
    out.append(Synthetic("signatures.json", c, lambda c: c["inputs"].__setitem__("address", recovered)))
    # ... and a bad v.
    c = public("signatures.json", "upstream_valid_sig", "bad_v")
    c["inputs"]["sig_hex"] = c["inputs"]["sig_hex"][:-2] + "1d"
    c["expected"] = {"valid": False, "error": "signature v value must be 27 or 28"}
    out.append(Synthetic("signatures.json", c, lambda c: c["expected"].__setitem__("error", "invalid signature")))
    # ... and a gateway key signing a Flatten, checked against eth-account.
    c = public("signatures.json", "gateway_key_sign_upstream_msg", "sign_other_message")
    digest = keccak256(b"any message")
    c["inputs"]["msg_hex"] = digest.hex()
    c["expected"]["eip191_digest_hex"] = personal_digest(digest).hex()
    c["expected"]["sig_hex"] = eip191_sign(GATEWAY_KEY, b"any message")
    out.append(Synthetic("signatures.json", c, lambda c: c["inputs"].__setitem__("msg_hex", "00" * 32)))

    # An EV case with no rounded form of winProb.
    c = public("tickets.json", "upstream_TestEV_fv1000_half", "ev_no_rounded_win_prob")
    del c["expected"]["win_prob_rat_rounded"]
    out.append(Synthetic("tickets.json", c, lambda c: c["expected"].__setitem__("ev_rounded_FloatString0", "499")))
    return out


def test_synthetic_vectors_of_every_documented_kind(tmp_path: Path) -> None:
    """New cases of documented kinds run through the harness from a vector file, with no code change."""
    synthetic = synthetic_cases()
    by_file: dict[str, list[dict[str, Any]]] = {}
    for s in synthetic:
        by_file.setdefault(s.file, []).append(s.case)
    assert set(by_file) == set(CHECKS)
    ran = 0
    for file, file_cases in by_file.items():
        path = tmp_path / file
        path.write_text(json.dumps(file_cases))
        ran += check_file(path)
    assert ran == len(synthetic)

    # Each case's new part is fed to the code under test: without it the same case fails.
    for s in synthetic:
        assert s.without is not None
        broken = copy.deepcopy(s.case)
        s.without(broken)
        with pytest.raises((AssertionError, pytest.fail.Exception, CapabilityMismatch)):
            CHECKS[s.file](broken)


@pytest.mark.parametrize("where", ["top", "inputs", "expected", "nested"])
def test_a_key_the_harness_does_not_understand_fails_the_case(where: str) -> None:
    case = public("segdata.json", "fullProfiles3_35_h264high_gop_clip", "unknown_key")
    target = {"top": case, "inputs": case["inputs"], "expected": case["expected"],
              "nested": case["inputs"]["profiles"][0]}[where]
    target["colour"] = "blue"
    with pytest.raises(pytest.fail.Exception, match="does not understand: \\['colour'\\]"):
        check_segdata(case)
    del target["colour"]
    check_segdata(case)
