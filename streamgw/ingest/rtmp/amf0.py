"""AMF0 encoding and decoding (Adobe "Action Message Format -- AMF 0", 2006).

Decoding is bounded: nesting depth, element counts and string sizes are capped, so a hostile
peer cannot make the parser allocate or recurse without limit. Every malformed input raises
:class:`~streamgw.errors.AmfError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from streamgw.errors import AmfError

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
MOVIECLIP = 0x04
NULL = 0x05
UNDEFINED = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED = 0x0D
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS = 0x11

MAX_DEPTH = 16
MAX_ELEMENTS = 4096
# Bytes that references may add to a decoded value if it were written out again with the
# referenced objects inlined (as :func:`encode` does): without this, a few hundred bytes of
# nested references decode to a value whose encoding never ends. MAX_DEPTH, too, holds for the
# value with its references inlined.
MAX_REFERENCE_BYTES = 65536

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class Undefined:
    """The AMF0 ``undefined`` marker (distinct from ``null``, which is ``None``)."""

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED_VALUE = Undefined()


@dataclass(frozen=True, slots=True)
class EcmaArray:
    """An AMF0 ECMA array: an associative array encoded with a count hint."""

    items: dict[str, Value]


@dataclass(frozen=True, slots=True)
class Date:
    """An AMF0 date: milliseconds since the epoch and a time-zone offset in minutes."""

    millis: float
    timezone: int = 0


Value = Union[
    float, bool, str, None, Undefined, dict[str, "Value"], EcmaArray, list["Value"], Date
]


class _Reader:
    __slots__ = ("data", "extra", "heights", "objects", "pos", "reached", "sizes")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.objects: list[Value] = []
        # Of each complex value, once complete: its size in bytes and the levels nested in it,
        # with references inlined. A size of -1 marks a value still being decoded.
        self.sizes: list[int] = []
        self.heights: list[int] = []
        self.extra = 0  # bytes the references decoded so far would add when inlined
        self.reached = 0  # deepest level reached (references inlined) in the innermost open value

    def register(self, obj: Value, depth: int) -> tuple[int, int]:
        """Number a complex value whose members follow; returns what :meth:`complete` needs."""
        self.objects.append(obj)
        self.sizes.append(-1)
        self.heights.append(0)
        outer, self.reached = self.reached, depth
        return len(self.objects) - 1, outer

    def complete(self, mark: tuple[int, int], depth: int, start_pos: int, start_extra: int) -> None:
        slot, outer = mark
        self.sizes[slot] = (self.pos - start_pos) + (self.extra - start_extra)
        self.heights[slot] = self.reached - depth
        self.reached = max(outer, self.reached)

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise AmfError(f"truncated AMF0 value: need {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise AmfError(f"truncated AMF0 value at offset {self.pos}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def utf8(self, n: int) -> str:
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AmfError("AMF0 string is not valid UTF-8") from exc

    def short_string(self) -> str:
        (n,) = _U16.unpack(self.take(2))
        return self.utf8(n)

    def properties(self, depth: int) -> dict[str, Value]:
        result: dict[str, Value] = {}
        for _ in range(MAX_ELEMENTS + 1):
            key = self.short_string()
            if key == "":
                if self.u8() != OBJECT_END:
                    raise AmfError("AMF0 empty key not followed by object-end marker")
                return result
            result[key] = self.value(depth + 1)
        raise AmfError(f"AMF0 object has more than {MAX_ELEMENTS} properties")

    def value(self, depth: int = 0) -> Value:
        if depth > MAX_DEPTH:
            raise AmfError(f"AMF0 nesting deeper than {MAX_DEPTH}")
        self.reached = max(self.reached, depth)
        start_pos, start_extra = self.pos, self.extra
        marker = self.u8()
        if marker == NUMBER:
            return float(_DOUBLE.unpack(self.take(8))[0])
        if marker == BOOLEAN:
            return self.u8() != 0
        if marker == STRING:
            return self.short_string()
        if marker == OBJECT:
            obj: dict[str, Value] = {}
            mark = self.register(obj, depth)
            obj.update(self.properties(depth))
            self.complete(mark, depth, start_pos, start_extra)
            return obj
        if marker == NULL:
            return None
        if marker == UNDEFINED:
            return UNDEFINED_VALUE
        if marker == REFERENCE:
            (index,) = _U16.unpack(self.take(2))
            if index >= len(self.objects):
                raise AmfError(f"AMF0 reference {index} to an unknown object")
            if self.sizes[index] < 0:
                raise AmfError(f"AMF0 reference {index} to an object that contains it")
            self.extra += self.sizes[index]
            if self.extra > MAX_REFERENCE_BYTES:
                raise AmfError(f"AMF0 references expand to more than {MAX_REFERENCE_BYTES} bytes")
            if depth + self.heights[index] > MAX_DEPTH:
                raise AmfError(f"AMF0 reference {index} nests deeper than {MAX_DEPTH}")
            self.reached = max(self.reached, depth + self.heights[index])
            return self.objects[index]  # type: ignore[no-any-return]
        if marker == ECMA_ARRAY:
            self.take(4)  # count hint; the terminator is authoritative
            arr = EcmaArray({})
            mark = self.register(arr, depth)
            arr.items.update(self.properties(depth))
            self.complete(mark, depth, start_pos, start_extra)
            return arr
        if marker == STRICT_ARRAY:
            (count,) = _U32.unpack(self.take(4))
            if count > MAX_ELEMENTS:
                raise AmfError(f"AMF0 strict array of {count} elements exceeds {MAX_ELEMENTS}")
            items: list[Value] = []
            mark = self.register(items, depth)
            for _ in range(count):
                items.append(self.value(depth + 1))
            self.complete(mark, depth, start_pos, start_extra)
            return items
        if marker == DATE:
            millis = _DOUBLE.unpack(self.take(8))[0]
            tz = struct.unpack(">h", self.take(2))[0]
            return Date(float(millis), int(tz))
        if marker in (LONG_STRING, XML_DOCUMENT):
            (n,) = _U32.unpack(self.take(4))
            return self.utf8(n)
        if marker == UNSUPPORTED:
            return UNDEFINED_VALUE
        if marker == TYPED_OBJECT:
            self.short_string()  # class name, not needed
            typed: dict[str, Value] = {}
            mark = self.register(typed, depth)
            typed.update(self.properties(depth))
            self.complete(mark, depth, start_pos, start_extra)
            return typed
        if marker == AVMPLUS:
            raise AmfError("AMF3 values are not supported inside AMF0")
        raise AmfError(f"unknown AMF0 type marker 0x{marker:02x}")


def decode_all(data: bytes | bytearray | memoryview) -> list[Value]:
    """Decode every AMF0 value in ``data``, in order."""
    reader = _Reader(data)
    values: list[Value] = []
    while reader.pos < len(reader.data):
        if len(values) >= MAX_ELEMENTS:
            raise AmfError(f"more than {MAX_ELEMENTS} top-level AMF0 values")
        values.append(reader.value())
    return values


def _encode_string_body(out: bytearray, s: str) -> None:
    raw = s.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise AmfError("AMF0 property name longer than 65535 bytes")
    out += _U16.pack(len(raw))
    out += raw


def _encode_properties(out: bytearray, items: dict[str, Value]) -> None:
    for key, item in items.items():
        _encode_string_body(out, key)
        _encode_value(out, item)
    out += b"\x00\x00\x09"


def _encode_value(out: bytearray, value: Value) -> None:
    if value is None:
        out.append(NULL)
    elif isinstance(value, Undefined):
        out.append(UNDEFINED)
    elif isinstance(value, bool):
        out += bytes((BOOLEAN, 1 if value else 0))
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += _U16.pack(len(raw))
        else:
            out.append(LONG_STRING)
            out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, dict):
        out.append(OBJECT)
        _encode_properties(out, value)
    elif isinstance(value, EcmaArray):
        out.append(ECMA_ARRAY)
        out += _U32.pack(len(value.items))
        _encode_properties(out, value.items)
    elif isinstance(value, list):
        out.append(STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            _encode_value(out, item)
    elif isinstance(value, Date):
        out.append(DATE)
        out += _DOUBLE.pack(value.millis)
        out += struct.pack(">h", value.timezone)
    else:
        raise AmfError(f"cannot encode {type(value).__name__} as AMF0")


def encode(*values: Value) -> bytes:
    """Encode ``values`` as consecutive AMF0 values."""
    out = bytearray()
    for value in values:
        _encode_value(out, value)
    return bytes(out)
