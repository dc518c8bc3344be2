"""AMF0 (Adobe "Action Message Format -- AMF 0"): byte vectors from the specification, round
trips of every type, and the decoder's bounds."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from streamgw.errors import AmfError
from streamgw.ingest.rtmp import amf0
from streamgw.ingest.rtmp.amf0 import UNDEFINED_VALUE, Date, EcmaArray

ONE = "3ff0000000000000"  # IEEE 754 double 1.0


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# (value, its AMF0 bytes), from the specification's type definitions (section 2).
VECTORS: list[tuple[amf0.Value, str]] = [
    (1.0, "00" + ONE),
    (0.0, "00 0000000000000000"),
    (-2.5, "00 c004000000000000"),
    (1e300, "00" + struct.pack(">d", 1e300).hex()),
    (True, "01 01"),
    (False, "01 00"),
    ("a", "02 0001 61"),
    ("", "02 0000"),
    ("é", "02 0002 c3a9"),
    (None, "05"),
    (UNDEFINED_VALUE, "06"),
    ({}, "03 000009"),
    ({"a": 1.0}, "03 0001 61 00" + ONE + " 000009"),
    ({"a": "b", "c": None}, "03 0001 61 02 0001 62 0001 63 05 000009"),
    ({"o": {"n": True}}, "03 0001 6f 03 0001 6e 0101 000009 000009"),
    (EcmaArray({}), "08 00000000 000009"),
    (EcmaArray({"duration": 0.0}), "08 00000001 0008" + b"duration".hex() + "00 0000000000000000 000009"),
    ([], "0a 00000000"),
    ([1.0, "a", None], "0a 00000003 00" + ONE + " 02000161 05"),
    (Date(1.0, 0), "0b" + ONE + "0000"),
    (Date(0.0, -60), "0b 0000000000000000 ffc4"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS, ids=[v[1][:24] for v in VECTORS])
def test_known_vectors(value: amf0.Value, encoded: str) -> None:
    assert amf0.encode(value) == h(encoded)
    assert amf0.decode_all(h(encoded)) == [value]


def test_every_type_round_trips_in_one_message() -> None:
    values: list[amf0.Value] = [
        "connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "capabilities": 31.0, "fpad": False},
        None, UNDEFINED_VALUE, EcmaArray({"width": 640.0, "encoder": "Lavf"}), [[], [1.0], {"k": []}],
        Date(1_700_000_000_000.0, 120), "x" * 70000, -0.0, float("inf"),
    ]
    assert amf0.decode_all(amf0.encode(*values)) == values


def test_long_strings_use_the_long_string_marker() -> None:
    short, long = "s" * 0xFFFF, "s" * 0x10000
    assert amf0.encode(short)[:3] == h("02 ffff")
    assert amf0.encode(long)[:5] == h("0c 00010000")
    assert amf0.decode_all(amf0.encode(short, long)) == [short, long]


def test_undefined_is_a_singleton_distinct_from_null() -> None:
    assert amf0.Undefined() is UNDEFINED_VALUE
    assert amf0.decode_all(h("06 05")) == [UNDEFINED_VALUE, None]
    assert repr(UNDEFINED_VALUE) == "UNDEFINED"


def test_integers_and_bools_encode_as_their_types() -> None:
    assert amf0.encode(3) == amf0.encode(3.0)
    assert amf0.encode(True) == h("0101")  # bool is an int subclass; it must stay a boolean


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        ("01 07", [True]),  # any non-zero boolean byte is true
        ("0c 00000001 61", ["a"]),  # long string
        ("0f 00000003 3c612f", ["<a/"]),  # XML document: a long string
        ("0d", [UNDEFINED_VALUE]),  # unsupported
        ("10 0003 466f6f 0001 61 05 000009", [{"a": None}]),  # typed object "Foo": class name dropped
        ("08 000003e8 0001 61 05 000009", [EcmaArray({"a": None})]),  # the count is only a hint
        ("03 0001 61 05 000009 07 0000", [{"a": None}, {"a": None}]),  # reference to object 0
    ],
)
def test_decoding_of_types_the_encoder_does_not_write(encoded: str, expected: list[amf0.Value]) -> None:
    assert amf0.decode_all(h(encoded)) == expected


def test_reference_is_the_same_object_and_counts_every_complex_type() -> None:
    # Reference indices count objects, ECMA arrays, strict arrays and typed objects in order.
    data = h("0a 00000000  08 00000000 000009  03 000009  10 0001 54 000009  07 0001  07 0000")
    values = amf0.decode_all(data)
    assert values[4] is values[1] and values[5] is values[0]


def test_empty_input_decodes_to_no_values() -> None:
    assert amf0.decode_all(b"") == []


# --- malformed input ---


@pytest.mark.parametrize(
    "encoded",
    [
        "00 3ff0",  # short number
        "01",  # boolean without its byte
        "02 00",  # short length
        "02 0005 6162",  # string shorter than its length
        "0c 00000010 61",  # long string shorter than its length
        "03 0001 61",  # object property without a value
        "03 0001 61 05",  # object without its end marker
        "03 0000",  # empty key without the end marker byte
        "03 0000 05",  # empty key followed by something else than object-end
        "08 000000",  # short ECMA count
        "0a 00000002 05",  # strict array with fewer elements than its count
        "0b" + ONE,  # date without time zone
        "10 0005 4142",  # typed object with a short class name
        "07 00",  # short reference
        "07 0000",  # reference to no object
        "03 0001 61 07 0001 000009",  # reference to an object not yet decoded
        "04",  # movieclip: reserved
        "0e",  # recordset: reserved
        "11 00",  # AVM+ (AMF3) values are not supported
        "09",  # object-end marker outside of an object
        "12",
        "ff",
        "02 0002 c328",  # invalid UTF-8
        "03 0002 ff61 05 000009",  # invalid UTF-8 in a key
    ],
)
def test_malformed_values_raise_amf_error(encoded: str) -> None:
    with pytest.raises(AmfError):
        amf0.decode_all(h(encoded))


def test_every_truncation_of_a_valid_message_raises_amf_error_or_decodes_whole_values() -> None:
    values: list[amf0.Value] = [
        "@setDataFrame", "onMetaData",
        EcmaArray({"duration": 0.0, "width": 640.0, "encoder": "Lavf59", "stereo": True, "n": None}),
        {"list": [1.0, {"deep": [Date(5.0, 1)]}]}, "z" * 300,
    ]
    encoded = amf0.encode(*values)
    ends = {len(amf0.encode(*values[:i])): i for i in range(len(values) + 1)}
    for cut in range(len(encoded)):
        if cut in ends:
            assert amf0.decode_all(encoded[:cut]) == values[: ends[cut]]
        else:
            with pytest.raises(AmfError):
                amf0.decode_all(encoded[:cut])


# --- bounds ---


def _nested_objects(depth: int) -> bytes:
    """A top-level object with ``depth`` objects nested inside it."""
    return b"\x03" + b"\x00\x01k\x03" * depth + b"\x00\x00\x09" * (depth + 1)


def _nested_arrays(depth: int) -> bytes:
    """A top-level strict array with ``depth`` arrays nested inside it."""
    return b"\x0a\x00\x00\x00\x01" * depth + b"\x0a\x00\x00\x00\x00"


@pytest.mark.parametrize("nest", [_nested_objects, _nested_arrays], ids=["objects", "arrays"])
def test_nesting_depth_is_bounded(nest: Callable[[int], bytes]) -> None:
    assert len(amf0.decode_all(nest(amf0.MAX_DEPTH))) == 1
    with pytest.raises(AmfError, match="nesting"):
        amf0.decode_all(nest(amf0.MAX_DEPTH + 1))


def test_deeply_nested_input_raises_amf_error_not_recursion_error() -> None:
    with pytest.raises(AmfError):
        amf0.decode_all(b"\x0a\x00\x00\x00\x01" * 100_000)
    with pytest.raises(AmfError):
        amf0.decode_all(b"\x03\x00\x01k" * 100_000)


def _props(n: int) -> bytes:
    return b"".join(struct.pack(">H", len(k)) + k + b"\x05" for k in (b"k%d" % i for i in range(n)))


@pytest.mark.parametrize(
    "head", [b"\x03", b"\x08\x00\x00\x00\x00", b"\x10\x00\x01T"], ids=["object", "ecma-array", "typed-object"]
)
def test_property_count_is_bounded(head: bytes) -> None:
    ok = amf0.decode_all(head + _props(amf0.MAX_ELEMENTS) + b"\x00\x00\x09")[0]
    items = ok.items if isinstance(ok, EcmaArray) else ok
    assert isinstance(items, dict) and len(items) == amf0.MAX_ELEMENTS
    with pytest.raises(AmfError, match="more than"):
        amf0.decode_all(head + _props(amf0.MAX_ELEMENTS + 1) + b"\x00\x00\x09")


def test_strict_array_count_is_bounded_before_reading_elements() -> None:
    full = amf0.decode_all(b"\x0a" + struct.pack(">I", amf0.MAX_ELEMENTS) + b"\x05" * amf0.MAX_ELEMENTS)[0]
    assert isinstance(full, list) and len(full) == amf0.MAX_ELEMENTS
    with pytest.raises(AmfError, match="exceeds"):
        amf0.decode_all(b"\x0a\xff\xff\xff\xff")  # no 4 billion element list is allocated


def test_top_level_value_count_is_bounded() -> None:
    assert len(amf0.decode_all(b"\x05" * amf0.MAX_ELEMENTS)) == amf0.MAX_ELEMENTS
    with pytest.raises(AmfError, match="top-level"):
        amf0.decode_all(b"\x05" * (amf0.MAX_ELEMENTS + 1))


def test_huge_declared_string_lengths_do_not_allocate() -> None:
    with pytest.raises(AmfError, match="truncated"):
        amf0.decode_all(b"\x0c\xff\xff\xff\xff abc")


# --- regression: references (found by tests/test_fuzz_rtmp.py) ---


def test_reference_to_an_enclosing_object_is_refused() -> None:
    # {"a": <reference to itself>} decoded into a cyclic dict, which amf0.encode (used by the
    # server on onMetaData) recursed on without end.
    with pytest.raises(AmfError, match="contains it"):
        amf0.decode_all(h("03 0001 61 07 0000 000009"))
    with pytest.raises(AmfError, match="contains it"):
        amf0.decode_all(h("0a 00000001 07 0000"))
    with pytest.raises(AmfError, match="contains it"):
        amf0.decode_all(h("08 00000001 0001 61 03 0001 62 07 0000 000009 000009"))


def _reference_bomb(levels: int, fanout: int) -> bytes:
    """Object i has ``fanout`` properties that all refer to object i-1: ``fanout ** levels``
    copies of object 0 once inlined, in a few hundred bytes."""
    out = bytearray(b"\x03\x00\x01x\x05\x00\x00\x09")
    for i in range(1, levels + 1):
        out += b"\x03"
        for k in range(fanout):
            out += struct.pack(">H", 1) + bytes([0x61 + k]) + b"\x07" + struct.pack(">H", i - 1)
        out += b"\x00\x00\x09"
    return bytes(out)


def test_references_cannot_expand_without_bound() -> None:
    # 800 bytes that used to decode instantly into a value whose encoding never finishes
    # (8**15 copies), freezing the gateway's event loop when sent as onMetaData.
    bomb = _reference_bomb(15, 8)
    assert len(bomb) < 1000
    with pytest.raises(AmfError, match="references expand"):
        amf0.decode_all(bomb)


def test_references_cannot_nest_deeper_than_the_depth_bound() -> None:
    # Each level: 15 nested objects, the innermost refers to the level before. 34 levels (3.7 KB)
    # used to decode into a value 500 levels deep once inlined, and amf0.encode (used by the
    # server on onMetaData) raised RecursionError. Inlined, the value must obey MAX_DEPTH.
    data = bytearray(b"\x03\x00\x00\x09")
    first, count = 0, 1
    for _ in range(34):
        data += b"\x03" + b"\x00\x01k\x03" * 14 + b"\x00\x01r\x07" + struct.pack(">H", first) + b"\x00\x00\x09" * 15
        first, count = count, count + 15
    with pytest.raises(AmfError, match="nests deeper"):
        amf0.decode_all(bytes(data))


def test_reference_inlined_exactly_at_the_depth_bound_decodes() -> None:
    height7 = b"\x03" + b"\x00\x01k\x03" * 7 + b"\x00\x00\x09" * 8
    ref_at = {d: b"\x03" + b"\x00\x01k\x03" * (d - 1) + b"\x00\x01r\x07\x00\x00" + b"\x00\x00\x09" * d
              for d in (9, 10)}
    values = amf0.decode_all(height7 + ref_at[9])  # the reference sits at depth 9: 9 + 7 = 16
    assert amf0.decode_all(amf0.encode(*values)) == values
    with pytest.raises(AmfError, match="nests deeper"):
        amf0.decode_all(height7 + ref_at[10])


def test_modest_sharing_through_references_still_decodes() -> None:
    values = amf0.decode_all(_reference_bomb(3, 2))
    assert values[-1] == {"a": {"a": {"a": {"x": None}, "b": {"x": None}}, "b": {"a": {"x": None},
                                                                                "b": {"x": None}}},
                          "b": {"a": {"a": {"x": None}, "b": {"x": None}},
                                "b": {"a": {"x": None}, "b": {"x": None}}}}
    assert len(amf0.encode(*values)) <= len(_reference_bomb(3, 2)) + amf0.MAX_REFERENCE_BYTES


# --- encoder errors ---


def test_encoder_refuses_what_amf0_cannot_hold() -> None:
    with pytest.raises(AmfError):
        amf0.encode(object())  # type: ignore[arg-type]
    with pytest.raises(AmfError):
        amf0.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(AmfError, match="property name"):
        amf0.encode({"k" * 0x10000: None})
