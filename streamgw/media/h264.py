"""H.264 bitstream facts read without decoding: NAL units of Annex B data, IDR, SPS resolution.

Only what the gateway needs to handle H.264 it copies (WHIP publishers sending H.264, the
segmenter's cut on a resolution change): ITU-T H.264 7.3.1 (NAL unit), 7.3.2.1.1 (sequence
parameter set) and 7.4.2.1.1 (frame cropping), Annex B (byte stream). Bounded and pure.
"""

from __future__ import annotations

from collections.abc import Iterator

from streamgw.errors import MediaError

NAL_IDR = 5
NAL_SPS = 7
MAX_SPS_BYTES = 1024  # real ones are tens of bytes
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def nal_units(data: bytes) -> Iterator[bytes]:
    """The NAL units of Annex B ``data`` (start codes removed; trailing zero bytes kept)."""
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        end = data.find(b"\x00\x00\x01", begin)
        if end < 0:
            yield data[begin:]
            return
        # A 4-byte start code's leading zero belongs to it, not to the NAL unit before.
        yield data[begin:end - 1] if data[end - 1] == 0 else data[begin:end]
        start = end


def nal_types(data: bytes) -> list[int]:
    """The nal_unit_type of every NAL unit in Annex B ``data``, in order (cheap: headers only)."""
    types: list[int] = []
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0 and pos + 3 < len(data):
        types.append(data[pos + 3] & 0x1F)
        pos = data.find(b"\x00\x00\x01", pos + 4)
    return types


def is_idr(data: bytes) -> bool:
    """Whether the Annex B access unit ``data`` holds an IDR picture."""
    return NAL_IDR in nal_types(data)


def avcc_has_idr(data: memoryview, length_size: int = 4) -> bool:
    """Whether an access unit in AVCC framing (ISO/IEC 14496-15: length-prefixed NAL units, as FLV
    and MP4 carry them) holds an IDR slice. Reads only the NAL headers; stops at a bad length."""
    pos = 0
    end = len(data)
    while pos + length_size < end:
        size = int.from_bytes(data[pos:pos + length_size], "big")
        if size and data[pos + length_size] & 0x1F == NAL_IDR:
            return True
        pos += length_size + size
    return False


def avcc_record(data: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """(NAL length size, SPS NAL units, PPS NAL units) of an AVCDecoderConfigurationRecord
    (ISO/IEC 14496-15 5.3.3.1: FLV's AVC sequence header). Raises MediaError when malformed."""
    if len(data) < 7 or data[0] != 1:
        raise MediaError("not an AVC decoder configuration record")
    length_size = (data[4] & 0x03) + 1
    pos = 5
    sets: list[list[bytes]] = []
    for _ in range(2):
        if pos >= len(data):
            raise MediaError("truncated AVC decoder configuration record")
        count = data[pos] & (0x1F if not sets else 0xFF)
        pos += 1
        units: list[bytes] = []
        for _ in range(count):
            size = int.from_bytes(data[pos:pos + 2], "big")
            if pos + 2 + size > len(data):
                raise MediaError("truncated AVC decoder configuration record")
            units.append(data[pos + 2:pos + 2 + size])
            pos += 2 + size
        sets.append(units)
    return length_size, sets[0], sets[1]


def first_sps(data: bytes) -> bytes | None:
    """The first sequence parameter set NAL unit (header byte included) in Annex B ``data``."""
    for nal in nal_units(data):
        if nal and nal[0] & 0x1F == NAL_SPS:
            return nal
    return None


class _Bits:
    """An RBSP bit reader (emulation prevention bytes removed first)."""

    def __init__(self, nal: bytes) -> None:
        self.data = nal.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise MediaError("truncated H.264 sequence parameter set")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise MediaError("bad Exp-Golomb code in H.264 sequence parameter set")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last + bits.se()) % 256
        last = next_scale if next_scale != 0 else last


def sps_resolution(sps: bytes) -> tuple[int, int]:
    """(width, height) in pixels of a sequence parameter set NAL unit, cropping applied.

    Raises MediaError for something that is not a well-formed SPS.
    """
    if not sps or sps[0] & 0x1F != NAL_SPS or len(sps) > MAX_SPS_BYTES:
        raise MediaError("not an H.264 sequence parameter set")
    bits = _Bits(sps)
    bits.u(8)  # NAL header
    profile_idc = bits.u(8)
    bits.u(16)  # constraint flags, reserved bits, level_idc
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc > 3:
            raise MediaError("bad chroma_format_idc in H.264 sequence parameter set")
        if chroma_format_idc == 3:
            separate_colour_plane = bits.u(1)
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        cycle = bits.ue()
        if cycle > 255:
            raise MediaError("bad num_ref_frames_in_pic_order_cnt_cycle in H.264 sequence parameter set")
        for _ in range(cycle):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = height_map_units * 16 * (2 - frame_mbs_only)
    if bits.u(1):  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        array_type = 0 if separate_colour_plane else chroma_format_idc
        crop_x = 1 if array_type == 0 else (2 if array_type in (1, 2) else 1)
        crop_y = (1 if array_type == 0 else (2 if array_type == 1 else 1)) * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    if width <= 0 or height <= 0 or width > 16384 or height > 16384:
        raise MediaError(f"bad picture size {width}x{height} in H.264 sequence parameter set")
    return width, height
