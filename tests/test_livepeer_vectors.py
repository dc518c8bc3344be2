"""Every public known-answer vector in tests/vectors/livepeer/ (copied verbatim from shared/livepeer/vectors).

One test per case; the case's ``name`` is its test id. Messages that contain maps are compared decoded
(Go writes maps in random order), and also as ``SerializeToString(deterministic=True)`` where the vector was
made that way.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from streamgw.errors import SignatureError, TranscodeResultError
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
    AuthToken,
    Rendition,
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


def load(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    assert len(cases) == MANIFEST["files"][name], f"{name}: MANIFEST count differs"
    assert len({c["name"] for c in cases}) == len(cases), f"{name}: duplicate case names"
    return cases


def cases(name: str) -> Any:
    return pytest.mark.parametrize("case", load(name), ids=lambda c: str(c["name"]))


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def as_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(msg, preserving_proto_field_name=True)
    return out


def parsed(cls: Callable[[], Any], text: str) -> Any:
    msg = cls()
    msg.ParseFromString(b64(text))
    return msg


# ---- builders from the vectors' JSON forms -------------------------------------------------------------


def profile_from_json(d: dict[str, Any]) -> VideoProfile:
    return VideoProfile(
        name=d["name"],
        width=d["width"],
        height=d["height"],
        bitrate=d["bitrate"],
        fps=d["fps"],
        fps_den=d["fps_den"],
        format=VideoFormat[d["format"]],
        profile=EncoderProfile[d["profile"]],
        gop=d["gop"],
        encoder=VideoCodec[d["encoder"]],
        color_depth=d["color_depth"],
        chroma_format=ChromaFormat[d["chroma_format"]],
        quality=d["quality"],
    )


def models_from_json(d: dict[str, Any] | None) -> dict[int, dict[str, ModelConstraint]]:
    return {
        int(cap): {
            model: ModelConstraint(
                warm=m.get("warm", False),
                capacity=m.get("capacity", 0),
                runner_version=m.get("runner_version", ""),
                capacity_in_use=m.get("capacity_in_use", 0),
            )
            for model, m in models.items()
        }
        for cap, models in (d or {}).items()
    }


def caps_from_json(d: dict[str, Any]) -> Capabilities:
    """Capabilities from a vector's ``{"ids": [...]}`` or ``{"bitstring": [words]}`` form."""
    common: dict[str, Any] = dict(
        capacities={int(k): v for k, v in d.get("capacities", {}).items()},
        version=d.get("version", ""),
        min_version=d.get("min_version", ""),
        per_capability=models_from_json(d.get("per_capability")),
    )
    if "ids" in d:
        return Capabilities.from_ids(d["ids"], mandatory_ids=d.get("mandatory_ids", ()), **common)
    return Capabilities(bitstring=tuple(d["bitstring"]), mandatories=tuple(d.get("mandatories", ())), **common)


def ticket_params_from_json(d: dict[str, Any]) -> TicketParams:
    return TicketParams(
        recipient=parse_address(d["recipient"]),
        face_value=int(d["face_value"]),
        win_prob=int(d["win_prob"]),
        recipient_rand_hash=bytes.fromhex(d["recipient_rand_hash_hex"]),
        seed=int(d["seed"]),
        expiration_block=int(d["expiration_block"]),
        creation_round=d["creation_round"],
        creation_round_block_hash=bytes.fromhex(d["creation_round_block_hash_hex"]),
    )


def auth_token_from_json(d: dict[str, Any]) -> AuthToken:
    return AuthToken(bytes.fromhex(d["token_hex"]), d["session_id"], d["expiration"])


def orch_info_from_json(d: dict[str, Any]) -> pb.OrchestratorInfo:
    info = pb.OrchestratorInfo(transcoder=d["transcoder"], address=parse_address(d["address"]))
    if d.get("ticket_params") is not None:
        info.ticket_params.CopyFrom(ticket_params_from_json(d["ticket_params"]).to_proto())
    if d.get("price_info") is not None:
        num, den = d["price_info"]
        info.price_info.CopyFrom(pb.PriceInfo(pricePerUnit=num, pixelsPerUnit=den))
    info.capabilities.CopyFrom(caps_from_json(d["capabilities"]).to_proto())
    info.auth_token.CopyFrom(auth_token_from_json(d["auth_token"]).to_proto())
    for num, den, cap, constraint in d.get("capabilities_prices", []):
        info.capabilities_prices.add(pricePerUnit=num, pixelsPerUnit=den, capability=cap, constraint=constraint)
    for hw in d.get("hardware", []):
        entry = info.hardware.add(pipeline=hw["pipeline"], model_id=hw["model_id"])
        for key, gpu in hw["gpu_info"].items():
            entry.gpu_info[key].CopyFrom(pb.GPUComputeInfo(**gpu))
    info.nodes.extend(d.get("nodes", []))
    return info


def check_o_internal(tp: dict[str, Any], sender: str) -> None:
    """The O-only derivations behind a TicketParams set: winProb, recipientRand and its hash."""
    o = tp["o_internal"]
    params = ticket_params_from_json(tp)
    assert o_win_prob(params.face_value, int(o["ticket_ev"])) == params.win_prob
    rand = recipient_rand(
        bytes.fromhex(o["orchestrator_secret_hex"]),
        seed=params.seed,
        sender=parse_address(sender),
        face_value=params.face_value,
        win_prob=params.win_prob,
        expiration_block=params.expiration_block,
        price=Fraction(*o["price"]),
        aux_data=params.ticket(parse_address(sender), 0).aux_data(),
    )
    assert rand == int(o["recipient_rand"])
    assert recipient_rand_hash(rand) == params.recipient_rand_hash


# ---- segdata.json --------------------------------------------------------------------------------------


@cases("segdata.json")
def test_segdata(case: dict[str, Any]) -> None:
    inp, exp = case["inputs"], case["expected"]
    signer = Signer(bytes.fromhex(inp["signer_private_key_hex"]))
    assert signer.checksum_address == exp["signer_address"]
    if "segment_body_hex" in inp:
        seg_hash = keccak256(bytes.fromhex(inp["segment_body_hex"]))
    else:
        seg_hash = bytes.fromhex(inp["segment_hash_hex"])
    assert seg_hash.hex() == exp["segment_hash_hex"]
    profiles = tuple(profile_from_json(p) for p in inp["profiles"])
    mid = inp["manifest_id"].encode()

    # B: Flatten, its hash, the EIP-191 digest and the signature.
    assert profiles_hex(profiles).decode("ascii") == exp["profiles_hash_ascii"]
    flat = flatten(mid, inp["seq"], seg_hash, profiles)
    assert flat.hex() == exp["flatten_hex"]
    assert keccak256(flat).hex() == exp["flatten_keccak_hex"]
    assert personal_digest(keccak256(flat)).hex() == exp["eip191_digest_hex"]
    assert signer.sign(flat).hex() == exp["sig_hex"]
    assert profiles_field(profiles) == exp["profiles_field"]

    # B: the whole SegData, compared decoded and as deterministic bytes.
    clip = inp.get("segment_parameters")
    meta = SegMetadata(
        manifest_id=mid,
        seq=inp["seq"],
        seg_hash=seg_hash,
        profiles=profiles,
        duration_ms=inp["duration_ms"],
        capabilities=caps_from_json(inp["capabilities"]),
        auth_token=auth_token_from_json(inp["auth_token"]),
        segment_parameters=SegmentParameters(clip["from_ms"], clip["to_ms"]) if clip else None,
        force_session_reinit=inp.get("force_session_reinit", False),
    )
    built = build_segdata(meta, signer)
    expected_msg = decode_segdata_header(exp["segdata_b64"])
    assert built == expected_msg
    assert as_dict(built) == exp["segdata_decoded"]
    assert base64.b64encode(built.SerializeToString(deterministic=True)).decode() == exp["segdata_b64"]
    assert decode_segdata_header(encode_segdata_header(built)) == built

    # O: rebuild Flatten from what arrived and check B's signature.
    got = parse_segdata(expected_msg)
    assert got.flatten().hex() == exp["flatten_hex"]
    assert got.profiles == profiles
    assert got.duration_ms == (inp["duration_ms"] or 2000)
    verify_message(GATEWAY_ADDRESS, got.flatten(), expected_msg.sig)


# ---- orchinfo.json -------------------------------------------------------------------------------------


@cases("orchinfo.json")
def test_orchinfo(case: dict[str, Any]) -> None:
    inp, exp = case["inputs"], case["expected"]
    if case["kind"] == "orchestrator_request":
        signer = Signer(bytes.fromhex(inp["signer_private_key_hex"]))
        assert signer.checksum_address == exp["address_checksummed"]
        message = exp["signed_message_ascii"].encode("ascii")
        assert message == signer.checksum_address.encode("ascii")
        assert keccak256(message).hex() == exp["signed_message_keccak_hex"]
        assert personal_digest(keccak256(message)).hex() == exp["eip191_digest_hex"]
        assert signer.sign(message).hex() == exp["sig_hex"]
        req = orchestrator_request(
            signer, caps_from_json(inp["capabilities"]), ignore_capacity_check=inp["ignoreCapacityCheck"]
        )
        wire = parsed(pb.OrchestratorRequest, exp["message_b64"])
        assert req == wire
        assert as_dict(req) == exp["decoded"]
        assert verify_orchestrator_request(wire, Signer(ORCH_KEY)) == parse_address(GATEWAY_ADDRESS)
        assert verify_orchestrator_request(wire, OffchainSigner()) == parse_address(GATEWAY_ADDRESS)
    elif case["kind"] == "orchestrator_info":
        info = orch_info_from_json(inp)
        wire = parsed(pb.OrchestratorInfo, exp["message_b64"])
        assert info == wire
        assert as_dict(info) == exp["decoded"]
        assert Capabilities.from_proto(wire.capabilities) == caps_from_json(inp["capabilities"])
        if inp.get("ticket_params") is not None:
            assert TicketParams.from_proto(wire.ticket_params) == ticket_params_from_json(inp["ticket_params"])
            check_o_internal(inp["ticket_params"], GATEWAY_ADDRESS)
    elif case["kind"] == "auth_token_hmac":
        secret = inp["secret_ascii"].encode()
        msg = inp["session_id"].encode() + int_to_bytes(inp["expiration"])
        assert msg.hex() == exp["hmac_message_hex"]
        token = make_auth_token(secret, inp["session_id"], inp["expiration"])
        assert token.token.hex() == exp["token_hex"]
    else:
        pytest.fail(f"unknown kind {case['kind']}")


# ---- transcoderesult.json ------------------------------------------------------------------------------


@cases("transcoderesult.json")
def test_transcoderesult(case: dict[str, Any]) -> None:
    inp, exp = case["inputs"], case["expected"]
    info = orch_info_from_json(inp["info"]) if inp.get("info") else None
    if case["kind"] == "payment_result":
        assert info is not None
        wire = parsed(pb.PaymentResult, exp["message_b64"])
        assert pb.PaymentResult(info=info) == wire
        assert as_dict(wire) == exp["decoded"]
        check_o_internal(inp["info"]["ticket_params"], GATEWAY_ADDRESS)
        return
    assert case["kind"] == "transcode_result"
    wire = parsed(pb.TranscodeResult, exp["message_b64"])
    if "error" in inp:
        msg = transcode_result(inp["seq"], error=inp["error"], info=info)
        assert msg == wire
        assert as_dict(msg) == exp["decoded"]
        with pytest.raises(TranscodeResultError, match=f"^{inp['error']}$"):
            result_renditions(wire)
        return
    bodies = [bytes.fromhex(r["body_hex"]) for r in inp["renditions"]]
    signer = Signer(bytes.fromhex(inp["signer_private_key_hex"]))
    assert signer.checksum_address == exp["signer_address"]
    assert [keccak256(b).hex() for b in bodies] == exp["rendition_hashes_hex"]
    concat = rendition_hashes(bodies)
    assert keccak256(concat).hex() == exp["concat_keccak_hex"]
    assert personal_digest(keccak256(concat)).hex() == exp["eip191_digest_hex"]
    sig = sign_renditions(signer, bodies)
    assert sig.hex() == exp["sig_hex"]
    renditions = [Rendition(r["url"], r["pixels"]) for r in inp["renditions"]]
    msg = transcode_result(inp["seq"], renditions=renditions, sig=sig, info=info)
    assert msg == wire
    assert as_dict(msg) == exp["decoded"]
    assert list(result_renditions(wire)) == renditions
    verify_renditions(parse_address(exp["signer_address"]), bodies, wire.data.sig)
    if info is not None:
        check_o_internal(inp["info"]["ticket_params"], GATEWAY_ADDRESS)


# ---- capabilities.json ---------------------------------------------------------------------------------


@cases("capabilities.json")
def test_capabilities(case: dict[str, Any]) -> None:
    inp, exp = case["inputs"], case["expected"]
    if case["kind"] == "bitstring":
        words = bitstring(inp["ids"])
        assert list(words) == exp["bitstring"]
        assert [f"0x{w:016x}" for w in words] == exp["bitstring_hex"]
        caps = caps_from_json(inp)
        assert list(caps.mandatories) == exp["mandatories"]
        wire = parsed(pb.Capabilities, exp["capabilities_b64"])
        assert caps.to_proto() == wire
        assert as_dict(wire) == exp["decoded"]
        assert (
            base64.b64encode(caps.to_proto().SerializeToString(deterministic=True)).decode() == exp["capabilities_b64"]
        )
        assert Capabilities.from_proto(wire) == caps
        assert caps.ids == {i for i in inp["ids"] if i >= 0}
    elif case["kind"] == "compatibility":
        b = Capabilities.from_proto(parsed(pb.Capabilities, inp["gateway_caps_b64"]))
        assert b == caps_from_json(inp["gateway"])
        o = None
        if inp["orchestrator"] is not None:
            o = Capabilities.from_proto(parsed(pb.Capabilities, inp["orchestrator_caps_b64"]))
            assert o == caps_from_json(inp["orchestrator"])
        reason = incompatibility(b, o)
        assert (reason is None) == exp["compatible"]
        if o is None:  # the vector names the legacy rule whether it passes or not
            assert exp["deciding_rule"] == Incompatibility.LEGACY_ONLY.value
        else:
            assert (reason.value if reason is not None else "ok") == exp["deciding_rule"]
    elif case["kind"] == "job_capabilities":
        fmt = inp["pixel_format"]
        storage = {None: None, "S3": StorageKind.S3, "DIRECT": StorageKind.DIRECT, "GOOGLE": StorageKind.GOOGLE}
        caps = job_capabilities(
            [profile_from_json(p) for p in inp["profiles"]],
            input_codec=VideoCodec[inp["input_codec"]],
            pixel_format=PixelFormat(int(fmt[0]), fmt[1]) if fmt else None,
            storage=storage[inp.get("storage")],
            clip=inp.get("segment_parameters", False),
        )
        assert sorted(caps.ids) == exp["capability_ids"]
        assert list(caps.bitstring) == exp["bitstring"]
        assert caps.version == "" and not caps.capacities and not caps.per_capability
    else:
        pytest.fail(f"unknown kind {case['kind']}")


# ---- signatures.json -----------------------------------------------------------------------------------


@cases("signatures.json")
def test_signatures(case: dict[str, Any]) -> None:
    inp, exp = case["inputs"], case["expected"]
    if case["kind"] == "verify":
        msg, sig = bytes.fromhex(inp["msg_hex"]), bytes.fromhex(inp["sig_hex"])
        if exp["valid"]:
            assert personal_digest(msg).hex() == exp["eip191_digest_hex"]
            assert checksum_address(recover_address(msg, sig)) == exp["recovered"]
            verify_sig(inp["address"], msg, sig)
            Signer(GATEWAY_KEY).verify_hash(inp["address"], msg, sig)
        else:
            with pytest.raises(SignatureError) as err:
                verify_sig(inp["address"], msg, sig)
            assert str(err.value) == exp["error"]
            OffchainSigner().verify_hash(inp["address"], msg, sig)  # offchain nodes accept anything
    elif case["kind"] == "sign":
        signer = Signer(bytes.fromhex(inp["private_key_hex"]))
        msg = bytes.fromhex(inp["msg_hex"])
        assert signer.checksum_address == exp["address"]
        assert personal_digest(msg).hex() == exp["eip191_digest_hex"]
        sig = signer.sign_hash(msg)
        assert sig.hex() == exp["sig_hex"]
        verify_sig(exp["address"], msg, sig)
        assert exp["valid"] is True
    elif case["kind"] == "addresses":
        assert Signer(bytes.fromhex(inp["gateway_private_key_hex"])).checksum_address == exp["gateway_address"]
        orch = Signer(bytes.fromhex(inp["orchestrator_private_key_hex"]))
        assert orch.checksum_address == exp["orchestrator_address"]
        assert exp["gateway_address"] == GATEWAY_ADDRESS and exp["orchestrator_address"] == ORCH_ADDRESS
    else:
        pytest.fail(f"unknown kind {case['kind']}")


# ---- tickets.json --------------------------------------------------------------------------------------


def ticket_from_json(d: dict[str, Any]) -> Ticket:
    return Ticket(
        recipient=parse_address(d["recipient"]),
        sender=parse_address(d["sender"]),
        face_value=int(d["face_value"]),
        win_prob=int(d["win_prob"]),
        sender_nonce=d["sender_nonce"],
        recipient_rand_hash=bytes.fromhex(d["recipient_rand_hash_hex"]),
        creation_round=d["creation_round"],
        creation_round_block_hash=bytes.fromhex(d["creation_round_block_hash_hex"]),
    )


@cases("tickets.json")
def test_tickets(case: dict[str, Any]) -> None:
    inp, exp, kind = case["inputs"], case["expected"], case["kind"]
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
        o = inp["o_side"]
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
        params = ticket_params_from_json(inp["ticket_params"])
        signer = Signer(bytes.fromhex(inp["sender_private_key_hex"]))
        assert signer.checksum_address == inp["sender"]
        price = price_to_proto(Fraction(*inp["expected_price"]))
        payment = build_payment(params, signer=signer, nonces=inp["sender_nonces"], expected_price=price)
        tickets = [params.ticket(signer.address, n) for n in inp["sender_nonces"]]
        assert [t.hash().hex() for t in tickets] == exp["ticket_hashes_hex"]
        assert [p.sig.hex() for p in payment.ticket_sender_params] == exp["sigs_hex"]
        assert encode_payment_header(payment) == exp["payment_b64"]  # no maps: the bytes are Go's too
        assert decode_payment_header(exp["payment_b64"]) == payment
        assert as_dict(payment) == exp["decoded"]
        check_o_internal(inp["ticket_params"], inp["sender"])
    elif kind == "payment_header_empty":
        assert decode_payment_header("") == pb.Payment()
        assert encode_payment_header(pb.Payment()) == exp["payment_b64"]
        assert as_dict(pb.Payment()) == exp["decoded"]
    else:
        pytest.fail(f"unknown kind {kind}")
