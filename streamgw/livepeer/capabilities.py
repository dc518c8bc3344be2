"""Capabilities: the bitstring, the known capability ids, and go-livepeer's compatibility rules (WIRE.md section 3).

Sources (facts, not code): go-livepeer ``core/capabilities.go`` (``NewCapabilityString``, ``CompatibleWith``,
``LivepeerVersionCompatibleWith``, ``JobCapabilities``, ``LegacyOnly``), ``discovery/discovery.go``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from types import MappingProxyType

from streamgw.errors import CapabilityMismatch
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.profiles import EncoderProfile, VideoCodec, VideoFormat, VideoProfile

__all__ = [
    "Capabilities",
    "Capability",
    "DEFAULT_CAPABILITIES",
    "Incompatibility",
    "LEGACY_CAPABILITIES",
    "MANDATORY_O_CAPABILITIES",
    "ModelConstraint",
    "PixelFormat",
    "StorageKind",
    "ai_job_capabilities",
    "bitstring",
    "bitstring_ids",
    "check_compatible",
    "compatible_with",
    "discovery_compatible",
    "incompatibility",
    "is_subset",
    "job_capabilities",
    "parse_loose_semver",
]

_UINT64_MASK = (1 << 64) - 1


class Capability(IntEnum):
    """Capability ids; capability N is bit ``N % 64`` of bitstring word ``N // 64``."""

    H264 = 0
    MPEGTS = 1
    MP4 = 2
    FRACTIONAL_FRAMERATES = 3
    STORAGE_DIRECT = 4
    STORAGE_S3 = 5
    STORAGE_GCS = 6
    PROFILE_H264_BASELINE = 7
    PROFILE_H264_MAIN = 8
    PROFILE_H264_HIGH = 9
    PROFILE_H264_CONSTRAINED_HIGH = 10
    GOP = 11
    AUTH_TOKEN = 12
    SCENE_CLASSIFICATION = 13  # deprecated upstream, kept so later ids keep their numbers
    MPEG7_VIDEO_SIGNATURE = 14
    HEVC_DECODE = 15
    HEVC_ENCODE = 16
    VP8_DECODE = 17
    VP9_DECODE = 18
    VP8_ENCODE = 19
    VP9_ENCODE = 20
    H264_DECODE_444_8BIT = 21
    H264_DECODE_422_8BIT = 22
    H264_DECODE_444_10BIT = 23
    H264_DECODE_422_10BIT = 24
    H264_DECODE_420_10BIT = 25
    SEGMENT_SLICING = 26
    TEXT_TO_IMAGE = 27
    IMAGE_TO_IMAGE = 28
    IMAGE_TO_VIDEO = 29
    UPSCALE = 30
    AUDIO_TO_TEXT = 31
    SEGMENT_ANYTHING_2 = 32
    LLM = 33
    IMAGE_TO_TEXT = 34
    LIVE_VIDEO_TO_VIDEO = 35
    TEXT_TO_SPEECH = 36
    BYOC = 37


DEFAULT_CAPABILITIES: frozenset[int] = frozenset({*range(0, 13), 14, 26})
"""``core.DefaultCapabilities()``: {0-12, 14, 26}."""

LEGACY_CAPABILITIES: frozenset[int] = frozenset(range(0, 12))
"""Capabilities every pre-capabilities O had: {0-11}, bitstring word ``0xfff``."""

MANDATORY_O_CAPABILITIES: frozenset[int] = frozenset({Capability.AUTH_TOKEN})
"""``MandatoryOCapabilities()``; production Os do not send it (their ``mandatories`` is empty)."""


def bitstring(ids: Iterable[int]) -> tuple[int, ...]:
    """The uint64 words for a set of capability ids; negative ids are skipped (``NewCapabilityString``)."""
    words: list[int] = []
    for cap in ids:
        if cap < 0:
            continue
        word, bit = divmod(int(cap), 64)
        if word >= len(words):
            words.extend([0] * (word + 1 - len(words)))
        words[word] |= 1 << bit
    return tuple(words)


def bitstring_ids(words: Iterable[int]) -> frozenset[int]:
    """The capability ids set in ``words``."""
    ids = set()
    for i, word in enumerate(words):
        for bit in range(64):
            if word >> bit & 1:
                ids.add(i * 64 + bit)
    return frozenset(ids)


def is_subset(a: Sequence[int], b: Sequence[int]) -> bool:
    """Go's ``CapabilityString.CompatibleWith``: ``a`` fits in ``b``; extra words in ``a`` fail even if zero."""
    if len(a) > len(b):
        return False
    return all(x & y == x for x, y in zip(a, b, strict=False))


@dataclass(frozen=True, slots=True)
class ModelConstraint:
    """What one model offers (O) or needs (B) under a capability."""

    warm: bool = False
    capacity: int = 0
    runner_version: str = ""
    capacity_in_use: int = 0


@dataclass(frozen=True, slots=True)
class Capabilities:
    """``net.Capabilities`` as a value; the mappings are read-only (so instances are not hashable).

    ``bitstring`` and ``mandatories`` are kept word for word: trailing zero words matter to the subset rule.
    """

    bitstring: tuple[int, ...] = ()
    mandatories: tuple[int, ...] = ()
    capacities: Mapping[int, int] = field(default_factory=dict)
    version: str = ""
    min_version: str = ""
    per_capability: Mapping[int, Mapping[str, ModelConstraint]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bitstring", tuple(int(w) for w in self.bitstring))
        object.__setattr__(self, "mandatories", tuple(int(w) for w in self.mandatories))
        object.__setattr__(self, "capacities", MappingProxyType({int(k): int(v) for k, v in self.capacities.items()}))
        object.__setattr__(
            self,
            "per_capability",
            MappingProxyType({int(c): MappingProxyType(dict(models)) for c, models in self.per_capability.items()}),
        )

    @classmethod
    def from_ids(
        cls,
        ids: Iterable[int],
        *,
        mandatory_ids: Iterable[int] = (),
        capacities: Mapping[int, int] | None = None,
        version: str = "",
        min_version: str = "",
        per_capability: Mapping[int, Mapping[str, ModelConstraint]] | None = None,
    ) -> Capabilities:
        """Capabilities with the bitstring of ``ids`` and mandatories of ``mandatory_ids``."""
        return cls(
            bitstring=bitstring(ids),
            mandatories=bitstring(mandatory_ids),
            capacities=capacities or {},
            version=version,
            min_version=min_version,
            per_capability=per_capability or {},
        )

    @property
    def ids(self) -> frozenset[int]:
        """The capability ids in the bitstring."""
        return bitstring_ids(self.bitstring)

    @property
    def mandatory_ids(self) -> frozenset[int]:
        """The capability ids in ``mandatories``."""
        return bitstring_ids(self.mandatories)

    def has(self, cap: int) -> bool:
        """Whether capability ``cap`` is in the bitstring."""
        word, bit = divmod(cap, 64)
        return 0 <= cap and word < len(self.bitstring) and bool(self.bitstring[word] >> bit & 1)

    def to_proto(self) -> pb.Capabilities:
        """The wire message; like Go's ``ToNetCapabilities`` it always sets ``constraints``."""
        msg = pb.Capabilities(
            bitstring=self.bitstring,
            mandatories=self.mandatories,
            capacities=dict(self.capacities),
            version=self.version,
        )
        msg.constraints.SetInParent()
        msg.constraints.minVersion = self.min_version
        for cap, models in self.per_capability.items():
            entry = msg.constraints.PerCapability[cap]  # a map lookup creates the entry, even with no models
            for model_id, m in models.items():
                mc = entry.models[model_id]
                mc.warm = m.warm
                mc.capacity = m.capacity
                mc.runnerVersion = m.runner_version
                mc.capacityInUse = m.capacity_in_use
        return msg

    @classmethod
    def from_proto(cls, msg: pb.Capabilities) -> Capabilities:
        """Decode the wire message."""
        per_cap: dict[int, dict[str, ModelConstraint]] = {}
        for cap, entry in msg.constraints.PerCapability.items():
            per_cap[cap] = {
                model_id: ModelConstraint(
                    warm=m.warm, capacity=m.capacity, runner_version=m.runnerVersion, capacity_in_use=m.capacityInUse
                )
                for model_id, m in entry.models.items()
            }
        return cls(
            bitstring=tuple(msg.bitstring),
            mandatories=tuple(msg.mandatories),
            capacities=dict(msg.capacities),
            version=msg.version,
            min_version=msg.constraints.minVersion,
            per_capability=per_cap,
        )


# Masterminds/semver v3 NewVersion (loose): optional "v", one to three numeric parts, then -pre and +meta.
_SEMVER = re.compile(
    r"^v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?$"
)


def parse_loose_semver(text: str) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of a loose semver, pre-release and metadata dropped; ``None`` if unparsable."""
    m = _SEMVER.match(text)
    if m is None:
        return None
    parts = [int(m.group(1)), int((m.group(2) or ".0")[1:]), int((m.group(3) or ".0")[1:])]
    if any(p > _UINT64_MASK for p in parts):
        return None  # strconv.ParseUint overflow
    pre = m.group(5)
    if pre:
        # Masterminds rejects numeric pre-release identifiers with a leading zero.
        for ident in pre.split("."):
            if ident.isdigit() and len(ident) > 1 and ident[0] == "0":
                return None
    return parts[0], parts[1], parts[2]


def _version_ok(min_version: str, version: str) -> bool:
    """WIRE.md section 3 rule 1 (``LivepeerVersionCompatibleWith``)."""
    if not min_version:
        return True
    if version in ("", "undefined"):
        return False
    want = parse_loose_semver(min_version)
    if want is None:
        return True  # an unparsable minimum is logged and ignored upstream
    have = parse_loose_semver(version)
    if have is None:
        return False
    return have >= want


class Incompatibility(str, Enum):
    """Which compatibility rule rejected an orchestrator."""

    VERSION = "version"
    MANDATORIES = "mandatories"
    MODEL_MISSING = "model missing"
    MODEL_NOT_WARM = "model not warm"
    RUNNER_VERSION = "runner version"
    BITSTRING = "bitstring"
    LEGACY_ONLY = "orchestrator sent no capabilities: legacy-only rule"


def incompatibility(b: Capabilities, o: Capabilities | None) -> Incompatibility | None:
    """The first rule of ``CompatibleWith`` that job caps ``b`` fail against O caps ``o``; ``None`` if they fit.

    Rules in order: B's minVersion against O's version, O's mandatories within B's bitstring, B's
    per-capability models on O (a cap O has no entry for is skipped), B's bitstring within O's. O's own
    minVersion is never consulted. ``o is None`` (an O that sent no capabilities) applies discovery's
    legacy-only rule instead: B must need nothing beyond {0-11}.
    """
    if o is None:
        return None if is_subset(b.bitstring, bitstring(LEGACY_CAPABILITIES)) else Incompatibility.LEGACY_ONLY
    if not _version_ok(b.min_version, o.version):
        return Incompatibility.VERSION
    if not is_subset(o.mandatories, b.bitstring):
        return Incompatibility.MANDATORIES
    for cap, models in b.per_capability.items():
        offered = o.per_capability.get(cap)
        if offered is None:
            continue
        for model_id, need in models.items():
            have = offered.get(model_id)
            if have is None:
                return Incompatibility.MODEL_MISSING
            if need.warm and not have.warm:
                return Incompatibility.MODEL_NOT_WARM
            if not _version_ok(need.runner_version, have.runner_version):
                return Incompatibility.RUNNER_VERSION
    if not is_subset(b.bitstring, o.bitstring):
        return Incompatibility.BITSTRING
    return None


def compatible_with(b: Capabilities, o: Capabilities | None) -> bool:
    """Whether job caps ``b`` are compatible with O caps ``o`` (see ``incompatibility``)."""
    return incompatibility(b, o) is None


def check_compatible(b: Capabilities, o: Capabilities | None) -> None:
    """Raise ``CapabilityMismatch`` (text ``incompatible capabilities: <rule>``) unless ``b`` fits ``o``."""
    reason = incompatibility(b, o)
    if reason is not None:
        raise CapabilityMismatch(f"incompatible capabilities: {reason.value}")


def discovery_compatible(b: Capabilities, info: pb.OrchestratorInfo) -> bool:
    """Discovery's filter on one ``OrchestratorInfo``: a non-empty ``transcoder`` and compatible caps."""
    if not info.transcoder:
        return False
    o = Capabilities.from_proto(info.capabilities) if info.HasField("capabilities") else None
    return compatible_with(b, o)


class StorageKind(IntEnum):
    """B's object storage (``OSInfo.StorageType``)."""

    DIRECT = 0
    S3 = 1
    GOOGLE = 2


@dataclass(frozen=True, slots=True)
class PixelFormat:
    """The input's pixel format: chroma subsampling (420, 422 or 444) and bits per component."""

    chroma: int = 420
    bit_depth: int = 8


_DECODE_CAP_BY_CODEC: Mapping[VideoCodec, Capability] = MappingProxyType(
    {
        VideoCodec.H264: Capability.H264,
        VideoCodec.H265: Capability.HEVC_DECODE,
        VideoCodec.VP8: Capability.VP8_DECODE,
        VideoCodec.VP9: Capability.VP9_DECODE,
    }
)
_ENCODE_CAP_BY_CODEC: Mapping[VideoCodec, Capability] = MappingProxyType(
    {
        VideoCodec.H264: Capability.H264,
        VideoCodec.H265: Capability.HEVC_ENCODE,
        VideoCodec.VP8: Capability.VP8_ENCODE,
        VideoCodec.VP9: Capability.VP9_ENCODE,
    }
)
_PROFILE_CAP: Mapping[EncoderProfile, Capability] = MappingProxyType(
    {
        EncoderProfile.H264_BASELINE: Capability.PROFILE_H264_BASELINE,
        EncoderProfile.H264_MAIN: Capability.PROFILE_H264_MAIN,
        EncoderProfile.H264_HIGH: Capability.PROFILE_H264_HIGH,
        EncoderProfile.H264_CONSTRAINED_HIGH: Capability.PROFILE_H264_CONSTRAINED_HIGH,
    }
)
_PIXEL_CAP: Mapping[tuple[int, int], Capability | None] = MappingProxyType(
    {
        (420, 8): None,
        (422, 8): Capability.H264_DECODE_422_8BIT,
        (444, 8): Capability.H264_DECODE_444_8BIT,
        (420, 10): Capability.H264_DECODE_420_10BIT,
        (422, 10): Capability.H264_DECODE_422_10BIT,
        (444, 10): Capability.H264_DECODE_444_10BIT,
    }
)
_STORAGE_CAP: Mapping[StorageKind, Capability] = MappingProxyType(
    {
        StorageKind.DIRECT: Capability.STORAGE_DIRECT,
        StorageKind.S3: Capability.STORAGE_S3,
        StorageKind.GOOGLE: Capability.STORAGE_GCS,
    }
)


def job_capabilities(
    profiles: Sequence[VideoProfile],
    *,
    input_codec: VideoCodec = VideoCodec.H264,
    pixel_format: PixelFormat | None = None,
    storage: StorageKind | None = None,
    verification: bool = False,
    clip: bool = False,
    min_version: str = "",
) -> Capabilities:
    """The capabilities a transcoding B sends (``JobCapabilities``): the bitstring and ``min_version`` only.

    Always AuthToken (12); 14 with verification; 26 for a clip. The input codec adds its decode cap and an
    H.264 input's pixel format its decode cap (12- and 16-bit raise ``CapabilityMismatch``). Each profile
    adds its format (1 or 2), encoder (0, 16, 19, 20), 3 when ``fps_den > 0``, its H.264 profile (7-10)
    and 11 when ``gop != 0``. Storage adds 4, 5 or 6.
    """
    caps: set[int] = {Capability.AUTH_TOKEN}
    if verification:
        caps.add(Capability.MPEG7_VIDEO_SIGNATURE)
    caps.add(_DECODE_CAP_BY_CODEC[VideoCodec(input_codec)])
    if input_codec == VideoCodec.H264 and pixel_format is not None:
        key = (pixel_format.chroma, pixel_format.bit_depth)
        if key not in _PIXEL_CAP:
            raise CapabilityMismatch(
                f"unsupported input pixel format {pixel_format.chroma} {pixel_format.bit_depth}-bit"
            )
        extra = _PIXEL_CAP[key]
        if extra is not None:
            caps.add(extra)
    for p in profiles:
        caps.add(Capability.MP4 if p.format is VideoFormat.MP4 else Capability.MPEGTS)
        caps.add(_ENCODE_CAP_BY_CODEC[p.encoder])
        if p.fps_den > 0:
            caps.add(Capability.FRACTIONAL_FRAMERATES)
        if p.profile in _PROFILE_CAP:
            caps.add(_PROFILE_CAP[p.profile])
        if p.gop != 0:
            caps.add(Capability.GOP)
    if storage is not None:
        caps.add(_STORAGE_CAP[StorageKind(storage)])
    if clip:
        caps.add(Capability.SEGMENT_SLICING)
    return Capabilities.from_ids(caps, min_version=min_version)


def ai_job_capabilities(
    cap: int,
    model_id: str,
    *,
    version: str,
    warm: bool = False,
    runner_version: str = "",
    min_version: str = "",
    discovery: bool = False,
) -> Capabilities:
    """The capabilities an AI B sends: ``{cap}`` (or the defaults plus ``cap`` during discovery).

    Every id gets capacity 1 (the O prices B's ``capacities`` keys), ``version`` is B's own, and
    ``per_capability`` asks for ``model_id`` (warm, runner version).
    """
    ids = {cap, *DEFAULT_CAPABILITIES} if discovery else {cap}
    return Capabilities.from_ids(
        ids,
        capacities={i: 1 for i in ids},
        version=version,
        min_version=min_version,
        per_capability={cap: {model_id: ModelConstraint(warm=warm, runner_version=runner_version)}},
    )
