"""Segment credentials and results: SegData (``Livepeer-Segment``), TranscodeResult, OrchestratorRequest.

WIRE.md sections 2, 4 and 6. Sources (facts, not code): go-livepeer ``core/streamdata.go`` (``Flatten``),
``core/NetSegData``, ``server/rpc.go:coreSegMetadata`` and ``verifyOrchestratorReq``,
``server/segment_rpc.go:verifySegCreds``, ``core/orchestrator.go`` (auth tokens, result signatures).
Build functions are what a gateway (B) sends; parse/verify functions are what an orchestrator (O) checks,
raising errors whose text is the O's response body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from google.protobuf.message import DecodeError

from streamgw.errors import (
    CapabilityMismatch,
    ProfileError,
    SegDataError,
    SignatureError,
    TranscodeResultError,
)
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities, StorageKind, check_compatible
from streamgw.livepeer.profiles import EncoderProfile, VideoFormat, VideoProfile
from streamgw.livepeer.signing import (
    ZERO_ADDRESS,
    MessageSigner,
    bytes_to_address,
    checksum_address,
    keccak256,
    verify_message,
)
from streamgw.livepeer.tickets import int_to_bytes

__all__ = [
    "AUTH_TOKEN_VALIDITY_S",
    "AuthToken",
    "DEFAULT_DURATION_MS",
    "EMPTY_SEGMENT_HASH",
    "GatewayPolicy",
    "INVALID_PROFILES",
    "MAX_DURATION_MS",
    "MIN_RENDITION_BYTES",
    "OSInfo",
    "PAYMENT_HEADER",
    "ProfilesField",
    "Rendition",
    "S3Info",
    "SEGMENT_HEADER",
    "SegMetadata",
    "SegmentParameters",
    "build_segdata",
    "decode_segdata_header",
    "duration_ms",
    "encode_segdata_header",
    "flatten",
    "make_auth_token",
    "orchestrator_request",
    "parse_segdata",
    "parse_transcode_result",
    "ping_response",
    "profiles_field",
    "profiles_hex",
    "rendition_hashes",
    "result_renditions",
    "result_signer_address",
    "sign_renditions",
    "transcode_result",
    "verify_orchestrator_request",
    "verify_rendition_hashes",
    "verify_renditions",
    "verify_segment_credentials",
]

SEGMENT_HEADER = "Livepeer-Segment"
PAYMENT_HEADER = "Livepeer-Payment"

MAX_DURATION_MS = 5 * 60 * 1000
"""The longest segment an O accepts (``common.MaxDuration``)."""

DEFAULT_DURATION_MS = 2000
"""What the O assumes when ``SegData.duration`` is 0."""

AUTH_TOKEN_VALIDITY_S = 30 * 60
"""How long an O's auth token is valid after it issues it (``server/rpc.go``)."""

INVALID_PROFILES = b"invalid"
"""What a current B puts in the legacy ``SegData.profiles`` field so that pre-fullProfiles Os fail."""

EMPTY_SEGMENT_HASH = keccak256(b"")
"""``keccak256("")``: the segment hash of AI requests, which carry no segment."""

MIN_RENDITION_BYTES = 25
"""An O refuses to sign a rendition shorter than this (its ``ZeroSegments`` error)."""

ProfilesField = Literal["fullProfiles", "fullProfiles2", "fullProfiles3"]


@dataclass(frozen=True, slots=True)
class GatewayPolicy:
    """Which gateways an O serves (O-side; WIRE.md section 4 "Offchain nodes", section 9).

    ``unsigned``: accept an offchain gateway's shapes, a GetOrchestrator with an empty ``sig`` (its
    ``address`` is 20 zero bytes) and segments with an empty SegData ``sig`` and no Payment sender, as
    go-livepeer's offchain O does; such a gateway is anonymous (the zero address). ``allowed``: when
    non-empty, only signed requests from these 20-byte addresses, so unsigned ones are refused too.
    A signature that is present is always checked, offchain or not.
    """

    unsigned: bool = True
    allowed: frozenset[bytes] = frozenset()

    @property
    def accepts_unsigned(self) -> bool:
        """Whether an unsigned (offchain) gateway is served."""
        return self.unsigned and not self.allowed

    def allows(self, address: bytes) -> bool:
        """Whether a gateway that proved ``address`` by its signature is served."""
        return not self.allowed or bytes_to_address(address) in self.allowed

    @classmethod
    def for_verifier(cls, verifier: MessageSigner) -> GatewayPolicy:
        """go-livepeer's own rule: an offchain O (zero address) serves unsigned gateways, an on-chain O does not."""
        return cls(unsigned=verifier.address == ZERO_ADDRESS)


def _hash32(raw: bytes) -> bytes:
    # Go common.BytesToHash: left-pad, or keep the last 32 bytes.
    return raw[-32:].rjust(32, b"\x00")


def profiles_hex(profiles: Sequence[VideoProfile]) -> bytes:
    """ASCII lowercase hex of ``keccak256(name)[:4]`` per profile, in order (``common.ProfilesToHex``)."""
    return b"".join(keccak256(p.name.encode("utf-8"))[:4].hex().encode("ascii") for p in profiles)


def flatten(manifest_id: bytes | str, seq: int, seg_hash: bytes, profiles: Sequence[VideoProfile]) -> bytes:
    """The bytes B signs for a segment (``SegTranscodingMetadata.Flatten``).

    ``manifest_id`` raw, then ``|seq|`` as 32 big-endian bytes, the 32-byte segment hash (padded or cut
    like Go's ``BytesToHash``), then ``profiles_hex(profiles)``.
    """
    mid = manifest_id.encode("utf-8") if isinstance(manifest_id, str) else manifest_id
    return mid + int_to_bytes(seq).rjust(32, b"\x00") + _hash32(seg_hash) + profiles_hex(profiles)


def profiles_field(profiles: Sequence[VideoProfile]) -> ProfilesField | None:
    """Which SegData field Go B puts ``profiles`` in (``NetSegData``); ``None`` when there are none.

    ``fullProfiles`` (33) when every profile is MPEG-TS with ``fps_den == 0``, the default encoder profile
    and ``gop == 0``; ``fullProfiles2`` (34) when only the format differs; ``fullProfiles3`` (35) otherwise.
    """
    if not profiles:
        return None
    plain = all(p.fps_den == 0 and p.profile is EncoderProfile.ENCODER_DEFAULT and p.gop == 0 for p in profiles)
    if not plain:
        return "fullProfiles3"
    if all(p.format is VideoFormat.MPEGTS for p in profiles):
        return "fullProfiles"
    return "fullProfiles2"


def duration_ms(duration: int, time_base: Fraction) -> int:
    """A segment duration in whole milliseconds, truncated like Go's ``Duration / time.Millisecond``."""
    return int(duration * time_base * 1000)


@dataclass(frozen=True, slots=True)
class AuthToken:
    """An O's session token (opaque to B); ``expiration`` is Unix seconds."""

    token: bytes
    session_id: str
    expiration: int

    def to_proto(self) -> pb.AuthToken:
        """The wire message."""
        return pb.AuthToken(token=self.token, session_id=self.session_id, expiration=self.expiration)

    @classmethod
    def from_proto(cls, msg: pb.AuthToken) -> AuthToken:
        """Decode the wire message."""
        return cls(token=msg.token, session_id=msg.session_id, expiration=msg.expiration)


def make_auth_token(secret: bytes, session_id: str, expiration: int) -> AuthToken:
    """The token an O issues (O-internal): HMAC-SHA256(secret, session_id || minimal big-endian expiration)."""
    msg = session_id.encode("utf-8") + int_to_bytes(expiration)
    return AuthToken(hmac.new(secret, msg, hashlib.sha256).digest(), session_id, expiration)


@dataclass(frozen=True, slots=True)
class SegmentParameters:
    """A clip of the segment, in milliseconds from its start."""

    from_ms: int
    to_ms: int


@dataclass(frozen=True, slots=True)
class S3Info:
    """An S3 POST policy B hands the O to upload results with (``S3OSInfo``); opaque strings."""

    host: str = ""
    key: str = ""
    policy: str = ""
    signature: str = ""
    credential: str = ""
    x_amz_date: str = ""


@dataclass(frozen=True, slots=True)
class OSInfo:
    """B's object store for the O's results (``OSInfo``): its type and, for S3, its upload policy."""

    storage_type: StorageKind = StorageKind.DIRECT
    s3info: S3Info | None = None

    def to_proto(self) -> pb.OSInfo:
        """The wire message."""
        msg = pb.OSInfo(storageType=self.storage_type.name)  # StorageKind names are the proto enum names
        if self.s3info is not None:
            s3 = self.s3info
            msg.s3info.CopyFrom(pb.S3OSInfo(host=s3.host, key=s3.key, policy=s3.policy, signature=s3.signature,
                                            credential=s3.credential, xAmzDate=s3.x_amz_date))
        return msg

    @classmethod
    def from_proto(cls, msg: pb.OSInfo) -> OSInfo:
        """Decode the wire message; raises ``SegDataError`` for an unknown storage type."""
        try:
            kind = StorageKind(msg.storageType)
        except ValueError as exc:
            raise SegDataError(f"unknown storage type {msg.storageType}") from exc
        s3 = None
        if msg.HasField("s3info"):
            m = msg.s3info
            s3 = S3Info(host=m.host, key=m.key, policy=m.policy, signature=m.signature, credential=m.credential,
                        x_amz_date=m.xAmzDate)
        return cls(kind, s3)


@dataclass(frozen=True, slots=True)
class SegMetadata:
    """What a SegData says about one segment (Go's ``SegTranscodingMetadata``).

    ``seg_hash`` is ``keccak256`` of the segment bytes; ``duration_ms`` is whole ms. Parsed on the O,
    ``duration_ms`` 0 has already become ``DEFAULT_DURATION_MS``. ``storage`` is B's object store for
    the results (``None``: the O's own); ``calc_perceptual_hash`` asks for perceptual hashes of the
    renditions (verification). Neither is signed.
    """

    manifest_id: bytes
    seq: int
    seg_hash: bytes
    profiles: tuple[VideoProfile, ...] = ()
    duration_ms: int = 0
    capabilities: Capabilities = field(default_factory=Capabilities)
    auth_token: AuthToken | None = None
    segment_parameters: SegmentParameters | None = None
    force_session_reinit: bool = False
    calc_perceptual_hash: bool = False
    storage: OSInfo | None = None

    def flatten(self) -> bytes:
        """The signed bytes (``flatten``)."""
        return flatten(self.manifest_id, self.seq, self.seg_hash, self.profiles)


def build_segdata(meta: SegMetadata, signer: MessageSigner) -> pb.SegData:
    """The SegData Go B sends (``NetSegData`` + ``genSegCreds``), signed by ``signer``.

    Raises ``SegDataError`` for an unnamed profile (the O would hash ``net_...`` instead of what B signed)
    or a duration outside [0, 5 min].
    """
    if any(not p.name for p in meta.profiles):
        raise SegDataError("every profile needs a non-empty name: the O hashes the name it receives")
    if not 0 <= meta.duration_ms <= MAX_DURATION_MS:
        raise SegDataError(f"segment duration {meta.duration_ms} ms is outside [0, {MAX_DURATION_MS}]")
    msg = pb.SegData(
        manifestId=meta.manifest_id,
        seq=meta.seq,
        hash=_hash32(meta.seg_hash),
        profiles=INVALID_PROFILES,
        sig=signer.sign(meta.flatten()),
        duration=meta.duration_ms,
        calc_perceptual_hash=meta.calc_perceptual_hash,
        ForceSessionReinit=meta.force_session_reinit,
    )
    msg.capabilities.CopyFrom(meta.capabilities.to_proto())
    if meta.auth_token is not None:
        msg.auth_token.CopyFrom(meta.auth_token.to_proto())
    if meta.storage is not None:  # Go B sends its one object store, if it has one
        msg.storage.append(meta.storage.to_proto())
    target = profiles_field(meta.profiles)
    if target is not None:
        getattr(msg, target).extend(p.to_proto() for p in meta.profiles)
    if meta.segment_parameters is not None:
        setattr(msg.segment_parameters, "from", meta.segment_parameters.from_ms)  # `from` is a keyword
        msg.segment_parameters.to = meta.segment_parameters.to_ms
    return msg


def encode_segdata_header(msg: pb.SegData) -> str:
    """The ``Livepeer-Segment`` header value: standard base64 with padding."""
    return base64.b64encode(msg.SerializeToString()).decode("ascii")


def decode_segdata_header(value: str) -> pb.SegData:
    """Decode ``Livepeer-Segment`` strictly; raises ``SegDataError`` (``ErrorSegEncoding`` for bad base64)."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SegDataError("ErrorSegEncoding") from exc
    msg = pb.SegData()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        # Go's proto error text differs from Python's; only the status (403) is comparable.
        raise SegDataError(f"proto: cannot parse invalid wire-format data: {exc}") from exc
    return msg


def parse_segdata(msg: pb.SegData) -> SegMetadata:
    """What the O reads from a SegData (``coreSegMetadata``); raises ``SegDataError`` with its 403 texts.

    Profiles come from the first non-empty of fullProfiles3, fullProfiles2, fullProfiles (an unnamed one
    becomes ``net_WxH_bitrate``); the legacy ``profiles`` bytes are ignored. Duration 0 means 2 s; below 0
    or above 5 min is ``invalid duration``. Absent capabilities read as the empty set. Of ``storage``
    the O takes the first entry.
    """
    source = msg.fullProfiles3 or msg.fullProfiles2 or msg.fullProfiles
    try:
        profiles = tuple(VideoProfile.from_proto(p) for p in source)
    except ProfileError as exc:
        raise SegDataError(str(exc)) from exc
    if msg.duration < 0 or msg.duration > MAX_DURATION_MS:
        raise SegDataError("invalid duration")
    caps = Capabilities.from_proto(msg.capabilities) if msg.HasField("capabilities") else Capabilities()
    clip = None
    if msg.HasField("segment_parameters"):
        clip = SegmentParameters(getattr(msg.segment_parameters, "from"), msg.segment_parameters.to)
    return SegMetadata(
        manifest_id=msg.manifestId,
        seq=msg.seq,
        seg_hash=_hash32(msg.hash),
        profiles=profiles,
        duration_ms=msg.duration or DEFAULT_DURATION_MS,
        capabilities=caps,
        auth_token=AuthToken.from_proto(msg.auth_token) if msg.HasField("auth_token") else None,
        segment_parameters=clip,
        force_session_reinit=msg.ForceSessionReinit,
        calc_perceptual_hash=msg.calc_perceptual_hash,
        storage=OSInfo.from_proto(msg.storage[0]) if msg.storage else None,
    )


def verify_segment_credentials(
    header: str,
    *,
    verifier: MessageSigner,
    sender: bytes,
    orchestrator_caps: Capabilities,
    auth_secret: bytes,
    now: float,
    policy: GatewayPolicy | None = None,
) -> SegMetadata:
    """The O's ``verifySegCreds`` for a ``Livepeer-Segment`` header; raises ``SegDataError`` (a 403 body).

    In the O's order: base64 (``ErrorSegEncoding``), protobuf, ``parse_segdata``, B's signature over
    ``flatten`` by ``sender`` (``ErrSegSig``; the Payment's sender, or the zero address without one),
    capabilities (``incompatible capabilities``), then the auth token (``missing auth token``,
    ``invalid auth token``, ``expired auth token``). ``now`` is Unix seconds. Capacity is the caller's.

    An unsigned segment from the zero address is an offchain gateway's: it passes when ``policy``
    accepts unsigned gateways. Anything else is checked by ``verifier`` and must come from a gateway
    ``policy`` allows, else ``ErrSegSig``. ``policy`` defaults to ``GatewayPolicy.for_verifier``.
    """
    policy = policy if policy is not None else GatewayPolicy.for_verifier(verifier)
    sender = bytes_to_address(sender)
    msg = decode_segdata_header(header)
    meta = parse_segdata(msg)
    offchain = not msg.sig and sender == ZERO_ADDRESS
    if not (offchain and policy.accepts_unsigned):
        if not msg.sig and not policy.accepts_unsigned:
            raise SegDataError("ErrSegSig") from SignatureError("unsigned segments are not served")
        try:
            verifier.verify(sender, meta.flatten(), msg.sig)
        except SignatureError as exc:
            raise SegDataError("ErrSegSig") from exc
        if not policy.allows(sender):
            raise SegDataError("ErrSegSig") from SignatureError(f"gateway {checksum_address(sender)} is not allowed")
    try:
        check_compatible(meta.capabilities, orchestrator_caps)
    except CapabilityMismatch as exc:
        raise SegDataError("incompatible capabilities") from exc
    token = meta.auth_token
    if token is None:
        raise SegDataError("missing auth token")
    expected = make_auth_token(auth_secret, token.session_id, token.expiration)
    if not hmac.compare_digest(expected.token, token.token):
        raise SegDataError("invalid auth token")
    if now > token.expiration:
        raise SegDataError("expired auth token")
    return meta


@dataclass(frozen=True, slots=True)
class Rendition:
    """Where one transcoded rendition can be fetched, and its output pixel count."""

    url: str
    pixels: int
    perceptual_hash_url: str = ""


def rendition_hashes(renditions: Sequence[bytes]) -> bytes:
    """``keccak256(r1) || keccak256(r2) || ...`` in profile order: what a result signature signs."""
    return b"".join(keccak256(r) for r in renditions)


def sign_renditions(signer: MessageSigner, renditions: Sequence[bytes]) -> bytes:
    """The O's result signature, ``Sign(rendition_hashes(renditions))``.

    Raises ``TranscodeResultError("ZeroSegments")`` when a rendition is shorter than 25 bytes.
    """
    if any(len(r) < MIN_RENDITION_BYTES for r in renditions):
        raise TranscodeResultError("ZeroSegments")
    return signer.sign(rendition_hashes(renditions))


def verify_renditions(address: bytes, renditions: Sequence[bytes], sig: bytes) -> None:
    """Check that ``address`` signed the fetched ``renditions``; raises ``SignatureError``."""
    verify_rendition_hashes(address, [keccak256(r) for r in renditions], sig)


def verify_rendition_hashes(address: bytes, hashes: Sequence[bytes], sig: bytes) -> None:
    """:func:`verify_renditions` given each rendition's ``keccak256`` (hashed off the event loop)."""
    verify_message(address, b"".join(hashes), sig)


def result_signer_address(info: pb.OrchestratorInfo) -> bytes:
    """Whose signature a result must carry: ``info.address``, else the ticket recipient (``verification``).

    The zero address for an offchain orchestrator (20 zero bytes, no ticket params): its results are unsigned.
    """
    if info.address:
        return bytes_to_address(info.address)
    return bytes_to_address(info.ticket_params.recipient)


def transcode_result(
    seq: int,
    *,
    renditions: Sequence[Rendition] = (),
    sig: bytes = b"",
    error: str | None = None,
    info: pb.OrchestratorInfo | None = None,
) -> pb.TranscodeResult:
    """A ``TranscodeResult``: ``error`` when given, else ``data`` with ``renditions`` and ``sig``."""
    msg = pb.TranscodeResult(seq=seq)
    if error is not None:
        msg.error = error
    else:
        msg.data.SetInParent()
        for r in renditions:
            msg.data.segments.add(url=r.url, pixels=r.pixels, perceptual_hash_url=r.perceptual_hash_url)
        msg.data.sig = sig
    if info is not None:
        msg.info.CopyFrom(info)
    return msg


def parse_transcode_result(body: bytes) -> pb.TranscodeResult:
    """Decode a ``/segment`` 200 body; raises ``TranscodeResultError`` when it is not a TranscodeResult."""
    msg = pb.TranscodeResult()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise TranscodeResultError(f"malformed TranscodeResult: {exc}") from exc
    return msg


def result_renditions(msg: pb.TranscodeResult) -> tuple[Rendition, ...]:
    """The renditions of a successful result; raises ``TranscodeResultError`` with the O's error text."""
    kind = msg.WhichOneof("result")
    if kind == "error":
        raise TranscodeResultError(msg.error)
    if kind != "data":
        raise TranscodeResultError("TranscodeResult has neither error nor data")
    return tuple(Rendition(s.url, s.pixels, s.perceptual_hash_url) for s in msg.data.segments)


def orchestrator_request(
    signer: MessageSigner, capabilities: Capabilities | None = None, *, ignore_capacity_check: bool = False
) -> pb.OrchestratorRequest:
    """B's ``GetOrchestrator`` request: its address and ``Sign(EIP-55 address ASCII)``.

    Offchain that is 20 zero bytes and an empty signature.
    """
    msg = pb.OrchestratorRequest(
        address=signer.address,
        sig=signer.sign(signer.checksum_address.encode("ascii")),
        ignoreCapacityCheck=ignore_capacity_check,
    )
    if capabilities is not None:
        msg.capabilities.CopyFrom(capabilities.to_proto())
    return msg


def verify_orchestrator_request(
    msg: pb.OrchestratorRequest, verifier: MessageSigner, policy: GatewayPolicy | None = None
) -> bytes:
    """The O's check of a ``GetOrchestrator`` request; returns B's 20-byte address.

    An unsigned request (empty ``sig``: an offchain gateway) passes when ``policy`` accepts unsigned
    gateways and returns the zero address, whatever ``address`` claims. A signed one is checked by
    ``verifier`` against ``address`` and must come from a gateway ``policy`` allows. Raises
    ``SignatureError("orchestrator req sig check failed")`` (its cause says why); the O answers gRPC
    UNKNOWN with ``Invalid orchestrator request: `` and that text. ``policy`` defaults to
    ``GatewayPolicy.for_verifier``.
    """
    policy = policy if policy is not None else GatewayPolicy.for_verifier(verifier)
    failed = "orchestrator req sig check failed"
    if not msg.sig and policy.accepts_unsigned:
        return ZERO_ADDRESS
    if not msg.sig:
        raise SignatureError(failed) from SignatureError("unsigned requests are not served")
    address = bytes_to_address(msg.address)
    try:
        verifier.verify(address, checksum_address(address).encode("ascii"), msg.sig)
    except SignatureError as exc:
        raise SignatureError(failed) from exc
    if not policy.allows(address):
        raise SignatureError(failed) from SignatureError(f"gateway {checksum_address(address)} is not allowed")
    return address


def ping_response(signer: MessageSigner, msg: pb.PingPong) -> pb.PingPong:
    """The O's ``Ping`` answer: ``Sign(value)``."""
    return pb.PingPong(value=signer.sign(msg.value))
