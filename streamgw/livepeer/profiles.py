"""Transcoding profiles as go-livepeer sends them: ``VideoProfile``, the lpms presets, the options file.

Sources (facts, not code): lpms ``ffmpeg/videoprofile.go`` (presets, ``JsonProfile``, ``ParseProfiles``),
go-livepeer ``common/util.go:FFmpegProfiletoNetProfile`` (B's mapping to the wire) and
``server/segment_rpc.go:makeFfmpegVideoProfiles`` (the O's mapping back), WIRE.md section 4.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from streamgw.errors import ProfileError
from streamgw.livepeer import lp_rpc_pb2 as pb

__all__ = [
    "ChromaFormat",
    "EncoderProfile",
    "GOP_INTRA_ONLY",
    "PRESETS",
    "VideoCodec",
    "VideoFormat",
    "VideoProfile",
    "parse_preset_names",
    "parse_profiles_json",
]

GOP_INTRA_ONLY = -1
"""``VideoProfile.gop`` value for intra-only output (lpms ``GOPIntraOnly``)."""


class VideoFormat(IntEnum):
    """Output container (``VideoProfile.Format``)."""

    MPEGTS = 0
    MP4 = 1


class EncoderProfile(IntEnum):
    """H.264 encoder profile (``VideoProfile.Profile``)."""

    ENCODER_DEFAULT = 0
    H264_BASELINE = 1
    H264_MAIN = 2
    H264_HIGH = 3
    H264_CONSTRAINED_HIGH = 4


class VideoCodec(IntEnum):
    """Video codec (``VideoProfile.VideoCodec``), also used for a job's input codec."""

    H264 = 0
    H265 = 1
    VP8 = 2
    VP9 = 3


class ChromaFormat(IntEnum):
    """Chroma subsampling (``VideoProfile.ChromaSubsampling``)."""

    CHROMA_420 = 0
    CHROMA_422 = 1
    CHROMA_444 = 2


@dataclass(frozen=True, slots=True)
class VideoProfile:
    """One requested rendition, in wire units.

    ``bitrate`` is bit/s; ``fps``/``fps_den`` is the frame rate (``fps_den`` 0 means an integer rate);
    ``gop`` is milliseconds when >= 0 and ``GOP_INTRA_ONLY`` (-1) for intra-only, 0 for the encoder default;
    ``color_depth`` is the wire value, bits above 8 (0 = 8-bit, 2 = 10-bit).
    """

    name: str
    width: int
    height: int
    bitrate: int
    fps: int
    fps_den: int = 0
    format: VideoFormat = VideoFormat.MPEGTS
    profile: EncoderProfile = EncoderProfile.ENCODER_DEFAULT
    gop: int = 0
    encoder: VideoCodec = VideoCodec.H264
    color_depth: int = 0
    chroma_format: ChromaFormat = ChromaFormat.CHROMA_420
    quality: int = 0

    def __post_init__(self) -> None:
        # Accept plain ints for the enum fields (e.g. from a decoded message) and refuse unknown values.
        for attr, enum in (
            ("format", VideoFormat),
            ("profile", EncoderProfile),
            ("encoder", VideoCodec),
            ("chroma_format", ChromaFormat),
        ):
            try:
                object.__setattr__(self, attr, enum(getattr(self, attr)))
            except ValueError:
                raise ProfileError(f"invalid {attr} {getattr(self, attr)!r} for profile {self.name!r}") from None

    @property
    def extension(self) -> str:
        """The rendition file extension (``.ts`` or ``.mp4``, lpms ``FormatExtensions``)."""
        return ".mp4" if self.format is VideoFormat.MP4 else ".ts"

    def to_proto(self) -> pb.VideoProfile:
        """The wire message, as Go B's ``FFmpegProfiletoNetProfile`` fills it."""
        return pb.VideoProfile(
            name=self.name,
            width=self.width,
            height=self.height,
            bitrate=self.bitrate,
            fps=self.fps,
            format=self.format.name,
            fpsDen=self.fps_den,
            profile=self.profile.name,
            gop=self.gop,
            encoder=self.encoder.name,
            colorDepth=self.color_depth,
            chromaFormat=self.chroma_format.name,
            quality=self.quality,
        )

    @classmethod
    def from_proto(cls, msg: pb.VideoProfile) -> VideoProfile:
        """Decode as the O does (``makeFfmpegVideoProfiles``); raises ``ProfileError`` with the O's 403 texts.

        An empty name becomes ``net_WxH_bitrate``. Unknown chroma formats fall back to 4:2:0 because the O
        ignores ``colorDepth`` and ``chromaFormat``.
        """
        name = msg.name or f"net_{msg.width}x{msg.height}_{msg.bitrate}"
        try:
            fmt = VideoFormat(msg.format)
        except ValueError:
            raise ProfileError("unrecognized profile output format") from None
        try:
            prof = EncoderProfile(msg.profile)
        except ValueError:
            raise ProfileError("unrecognized encoder profile") from None
        try:
            codec = VideoCodec(msg.encoder)
        except ValueError:
            raise ProfileError("unrecognized video codec") from None
        try:
            chroma = ChromaFormat(msg.chromaFormat)
        except ValueError:
            chroma = ChromaFormat.CHROMA_420
        return cls(
            name=name,
            width=msg.width,
            height=msg.height,
            bitrate=msg.bitrate,
            fps=msg.fps,
            fps_den=msg.fpsDen,
            format=fmt,
            profile=prof,
            gop=msg.gop,
            encoder=codec,
            color_depth=msg.colorDepth,
            chroma_format=chroma,
            quality=msg.quality,
        )


def _preset(name: str, width: int, height: int, kbps: int, fps: int) -> VideoProfile:
    return VideoProfile(name=name, width=width, height=height, bitrate=kbps * 1000, fps=fps)


PRESETS: Mapping[str, VideoProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            # lpms ffmpeg/videoprofile.go, the named sample profiles.
            _preset("P720p60fps16x9", 1280, 720, 6000, 60),
            _preset("P720p30fps16x9", 1280, 720, 4000, 30),
            _preset("P720p25fps16x9", 1280, 720, 3500, 25),
            _preset("P720p30fps4x3", 960, 720, 3500, 30),
            _preset("P576p30fps16x9", 1024, 576, 1500, 30),
            _preset("P576p25fps16x9", 1024, 576, 1500, 25),
            _preset("P360p30fps16x9", 640, 360, 1200, 30),
            _preset("P360p25fps16x9", 640, 360, 1000, 25),
            _preset("P360p30fps4x3", 480, 360, 1000, 30),
            _preset("P240p30fps16x9", 426, 240, 600, 30),
            _preset("P240p25fps16x9", 426, 240, 600, 25),
            _preset("P240p30fps4x3", 320, 240, 600, 30),
            _preset("P144p30fps16x9", 256, 144, 400, 30),
            _preset("P144p25fps16x9", 256, 144, 400, 25),
            # Not lpms presets: lpms only lists these rates in its "Standard Profiles" comment. The O hashes
            # whatever name B sends, so any name interoperates.
            _preset("P1080p30fps16x9", 1920, 1080, 6000, 30),
            _preset("P1080p60fps16x9", 1920, 1080, 9000, 60),
        )
    }
)
"""Named presets by name; ``-transcodingOptions P240p30fps16x9,P360p30fps16x9`` picks from these."""


def parse_preset_names(spec: str) -> list[VideoProfile]:
    """Profiles for a comma-separated list of preset names; unknown or no names raise ``ProfileError``.

    go-livepeer silently skips unknown names; refusing them here catches typos at start-up.
    """
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ProfileError(f"unknown transcoding presets: {', '.join(unknown)}")
    if not names:
        raise ProfileError("No transcoding profiles found")
    return [PRESETS[n] for n in names]


# lpms EncoderProfileLookup (matched after lower-casing) and VideoCodecName (matched exactly).
_JSON_PROFILES: Mapping[str, EncoderProfile] = MappingProxyType(
    {
        "": EncoderProfile.ENCODER_DEFAULT,
        "none": EncoderProfile.ENCODER_DEFAULT,
        "h264baseline": EncoderProfile.H264_BASELINE,
        "h264main": EncoderProfile.H264_MAIN,
        "h264high": EncoderProfile.H264_HIGH,
        "h264constrainedhigh": EncoderProfile.H264_CONSTRAINED_HIGH,
    }
)
_JSON_ENCODERS: Mapping[str, VideoCodec] = MappingProxyType(
    {
        "": VideoCodec.H264,
        "H.264": VideoCodec.H264,
        "HEVC": VideoCodec.H265,
        "VP8": VideoCodec.VP8,
        "VP9": VideoCodec.VP9,
    }
)
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1


def parse_profiles_json(data: str | bytes) -> list[VideoProfile]:
    """Parse go-livepeer's transcoding-options JSON; raises ``ProfileError``.

    The document is an array of profiles (what ``-transcodingOptions file.json`` reads, lpms ``ParseProfiles``)
    or an object ``{"profiles": [...]}`` (the auth webhook's form). Each profile has ``name``, ``width``,
    ``height``, ``bitrate`` (bit/s), ``fps``, ``fpsDen``, ``profile`` (``H264Baseline``, ``H264Main``,
    ``H264High``, ``H264ConstrainedHigh``, case-insensitive), ``gop`` (a *string*: seconds, or ``"intra"``),
    ``encoder`` (``H.264``, ``HEVC``, ``VP8``, ``VP9``), ``colorDepth`` (bits), ``chromaFormat`` (0/1/2)
    and ``quality``. Keys match case-insensitively and unknown keys are ignored, as Go's ``encoding/json``
    does. An unnamed profile is called ``custom_WxH_bitrate``.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"unable to unmarshal the passed transcoding option: {exc}") from exc
    if isinstance(doc, dict):
        doc = _fold_keys(doc).get("profiles")
    if not isinstance(doc, list):
        raise ProfileError('transcoding options must be a JSON array of profiles or {"profiles": [...]}')
    return [_json_profile(i, item) for i, item in enumerate(doc)]


def _fold_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    # Go's encoding/json matches keys case-insensitively; the last duplicate wins.
    return {str(k).lower(): v for k, v in obj.items()}


def _json_int(fields: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = fields.get(key.lower(), 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProfileError(f"{where}: {key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _json_str(fields: Mapping[str, Any], key: str, where: str) -> str:
    value = fields.get(key.lower(), "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProfileError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _json_profile(index: int, item: object) -> VideoProfile:
    where = f"profile {index}"
    if not isinstance(item, dict):
        raise ProfileError(f"{where}: must be a JSON object")
    fields = _fold_keys(item)
    width = _json_int(fields, "width", where, 0, _INT32_MAX)
    height = _json_int(fields, "height", where, 0, _INT32_MAX)
    bitrate = _json_int(fields, "bitrate", where, 0, _INT32_MAX)
    name = _json_str(fields, "name", where) or f"custom_{width}x{height}_{bitrate}"
    gop_text = _json_str(fields, "gop", where)
    gop = 0
    if gop_text == "intra":
        gop = GOP_INTRA_ONLY
    elif gop_text:
        try:
            seconds = float(gop_text)
        except ValueError:
            raise ProfileError(f"{where}: cannot parse the GOP value {gop_text!r} in the transcoding options") from None
        if not math.isfinite(seconds) or seconds <= 0.0:
            raise ProfileError(f"{where}: invalid gop value {gop_text!r}. Please set it to a positive value")
        # Go: time.Duration(seconds * 1e9) ns, sent as whole milliseconds (Duration.Milliseconds truncates).
        gop = int(seconds * 1e9) // 1_000_000
        if gop > _INT32_MAX:
            raise ProfileError(f"{where}: gop {gop_text!r} is too long")
    profile_text = _json_str(fields, "profile", where)
    try:
        profile = _JSON_PROFILES[profile_text.lower()]
    except KeyError:
        raise ProfileError(f"{where}: unable to parse the H264 encoder profile: {profile_text!r}") from None
    encoder_text = _json_str(fields, "encoder", where)
    try:
        encoder = _JSON_ENCODERS[encoder_text]
    except KeyError:
        raise ProfileError(f"{where}: Unable to parse encoder profile, unknown encoder: {encoder_text!r}") from None
    bits = _json_int(fields, "colorDepth", where, 0, 16) or 8
    if bits < 8:
        raise ProfileError(f"{where}: colorDepth must be 8 or more bits, got {bits}")
    chroma_value = _json_int(fields, "chromaFormat", where, 0, 2)
    return VideoProfile(
        name=name,
        width=width,
        height=height,
        bitrate=bitrate,
        fps=_json_int(fields, "fps", where, 0, _UINT32_MAX),
        fps_den=_json_int(fields, "fpsDen", where, 0, _UINT32_MAX),
        profile=profile,
        gop=gop,
        encoder=encoder,
        color_depth=bits - 8,
        chroma_format=ChromaFormat(chroma_value),
        quality=_json_int(fields, "quality", where, 0, _UINT32_MAX),
    )
