"""H.264 bitstream reading without decoding: NAL units, IDR detection, SPS resolution."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgw.errors import MediaError
from streamgw.media.h264 import (
    avcc_has_idr,
    avcc_record,
    first_sps,
    is_idr,
    nal_types,
    nal_units,
    sps_resolution,
)


def encode(width: int, height: int, profile: str, frames: int = 3, **extra: str) -> list[bytes]:
    """Annex B access units from libx264 (PyAV), one per frame."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": profile, **extra}
    out: list[bytes] = []
    for i in range(frames):
        img = np.full((height, width, 3), (i * 40) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return out


@pytest.mark.parametrize("width,height,profile,extra", [
    (1280, 720, "baseline", {}),
    (640, 360, "baseline", {}),  # 360 = 22.5 macroblocks: cropped
    (854, 480, "main", {}),
    (1920, 1080, "high", {}),  # 1080 = 67.5 macroblocks: cropped
    (322, 242, "high", {"x264-params": "cqm=jvt"}),  # scaling matrices present
    (176, 144, "high", {"x264-params": "interlaced=1"}),  # field coding: frame_mbs_only = 0
])
def test_sps_resolution_matches_the_encoder(width: int, height: int, profile: str, extra: dict[str, str]) -> None:
    units = encode(width, height, profile, **extra)
    assert is_idr(units[0]) and not any(is_idr(u) for u in units[1:])
    sps = first_sps(units[0])
    assert sps is not None and sps[0] & 0x1F == 7
    assert sps_resolution(sps) == (width, height)
    # What FFmpeg's own decoder says of the same stream.
    dec = av.CodecContext.create("h264", "r")
    frames = [f for u in units for f in dec.decode(av.Packet(u))]
    assert frames and (frames[0].width, frames[0].height) == (width, height)


def test_nal_units_split_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01\x67\xaa\xbb\x00\x00\x01\x68\xcc\x00\x00\x00\x01\x65\x11\x22"
    assert list(nal_units(data)) == [b"\x67\xaa\xbb", b"\x68\xcc", b"\x65\x11\x22"]
    assert nal_types(data) == [7, 8, 5]
    assert is_idr(data) and not is_idr(b"\x00\x00\x01\x41\x9a")
    assert first_sps(b"\x00\x00\x01\x41\x9a") is None
    assert list(nal_units(b"no start code")) == []


@pytest.mark.parametrize("bad", [b"", b"\x68\x00", b"\x67", b"\x67\x42\x00\x1f", b"\x67" + b"\x00" * 40,
                                 b"\x67" + b"\xff" * 2000])
def test_bad_sps_is_a_media_error(bad: bytes) -> None:
    with pytest.raises(MediaError):
        sps_resolution(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_sps_bytes_give_a_size_or_a_media_error(tail: bytes) -> None:
    try:
        w, h = sps_resolution(b"\x67" + tail)
    except MediaError:
        return
    assert 0 < w <= 16384 and 0 < h <= 16384


def _avcc(units: list[bytes], length_size: int = 4) -> bytes:
    return b"".join(len(u).to_bytes(length_size, "big") + u for u in units)


@pytest.mark.parametrize("length_size", [2, 4])
def test_avcc_idr_is_found_behind_aud_sps_pps_and_sei(length_size: int) -> None:
    """AVCC access units (FLV, MP4): NAL units behind 1-, 2- and 4-byte lengths."""
    au = encode(320, 240, "high")[0]
    units = list(nal_units(au))
    assert avcc_has_idr(memoryview(_avcc([b"\x09\xf0", *units], length_size)), length_size)
    p_slice = b"\x41\x9a" + bytes(300 if length_size > 1 else 100)
    assert not avcc_has_idr(memoryview(_avcc([b"\x09\xf0", b"\x06\x05\x01\x80", p_slice], length_size)),
                            length_size)
    assert avcc_has_idr(memoryview(_avcc([b"\x09\xf0", b"\x65\x88"], 1)), 1)
    # A length past the end stops the walk (bytes after it are not read as units); an empty unit
    # is stepped over.
    assert not avcc_has_idr(memoryview(b"\x00\x00\xff\xff\x41\x9a" + _avcc([b"\x65\x88"])), 4)
    assert avcc_has_idr(memoryview(b"\x00\x00\x00\x00" + _avcc([b"\x65\x88"])), 4)


def test_avcc_record_gives_length_size_and_parameter_sets() -> None:
    au = encode(640, 360, "main")[0]
    sps = next(u for u in nal_units(au) if u[0] & 0x1F == 7)
    pps = next(u for u in nal_units(au) if u[0] & 0x1F == 8)
    record = (bytes([1, sps[1], sps[2], sps[3], 0xFC | 3, 0xE0 | 1]) + len(sps).to_bytes(2, "big") + sps
              + b"\x01" + len(pps).to_bytes(2, "big") + pps)
    assert avcc_record(record) == (4, [sps], [pps])
    assert sps_resolution(avcc_record(record)[1][0]) == (640, 360)
    for bad in (b"", record[:6], b"\x02" + record[1:], record[:-2]):
        with pytest.raises(MediaError):
            avcc_record(bad)
