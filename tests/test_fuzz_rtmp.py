"""Property and fuzz tests of the RTMP parsers a hostile peer reaches first: ChunkReader and
amf0.decode_all. Whatever bytes arrive, they raise only streamgw's protocol errors and never hold
more than their bounds; whatever valid chunk stream arrives, in whatever pieces, it parses back
exactly. Example budgets keep the file well under 20 s."""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgw.errors import AmfError, ChunkError, RtmpError
from streamgw.ingest.rtmp import amf0, chunk
from streamgw.ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message
from tests.rtmpclient import chunk_header

# Example budgets: the whole file takes about 10-15 s.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_STRATEGY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAX_MESSAGE = 4096
MAX_STREAMS = 8
MAX_CHUNK = 1 << 16
HEADER_MAX = 18  # 3-byte basic header + 11-byte message header + 4-byte extended timestamp

# Message types the reader delivers (Set Chunk Size and Abort on stream 0 it consumes itself).
DELIVERED_TYPES = st.sampled_from([chunk.AUDIO, chunk.VIDEO, chunk.COMMAND_AMF0, chunk.DATA_AMF0, 3, 4, 5, 6, 22])
CSIDS = st.one_of(st.integers(3, 8), st.sampled_from([63, 64, 319, 320, 1000, 65599]))
TIMESTAMPS = st.one_of(st.integers(0, 100_000), st.integers(0xFFFFF0, 0x1000010), st.integers(0, 0xFFFFFFFF))
CHUNK_SIZES = st.one_of(st.sampled_from([1, 2, 127, 128, 129, 4096, 65536]), st.integers(1, 70_000))


def _check_bounds(reader: ChunkReader) -> None:
    """What a reader holds, after any feed that did not raise."""
    assert len(reader._streams) <= reader.max_chunk_streams
    assert 1 <= reader.chunk_size <= reader.max_chunk_size
    assert len(reader._buf) - reader._pos <= reader.chunk_size + HEADER_MAX
    held = 0
    for state in reader._streams.values():
        if state.buf is not None:
            assert len(state.buf) < state.length <= reader.max_message_size
            held += len(state.buf)
    assert held <= 2 * reader.max_message_size


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the offsets ``cuts`` (taken modulo its length)."""
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _feed_hostile(data: bytes, cuts: list[int]) -> list[Message]:
    """Feed ``data`` in pieces split at ``cuts``; only ChunkError may escape."""
    reader = ChunkReader(max_message_size=MAX_MESSAGE, max_chunk_size=MAX_CHUNK, max_chunk_streams=MAX_STREAMS)
    out: list[Message] = []
    try:
        for piece in _pieces(data, cuts):
            msgs = reader.feed(piece)
            assert all(len(m.payload) <= MAX_MESSAGE for m in msgs)
            out += msgs
            _check_bounds(reader)
    except ChunkError:
        pass
    return out


# --- an independent encoder: header compression (types 1, 2, 3) and interleaving ---


@dataclass
class _CsState:
    timestamp: int = 0
    delta: int = 0
    length: int = -1
    type_id: int = -1
    stream_id: int = -1
    extended: bool = False


def spec_encode(
    messages: list[Message], rng: random.Random, *, chunk_size: int = 128, resize_every: int = 0
) -> tuple[bytes, list[Message]]:
    """Chunk ``messages`` the way RTMP section 5.3 allows a sender to: the most compressed
    header type that reproduces each message's fields, chunks of different chunk streams
    interleaved at random, and (with ``resize_every``) Set Chunk Size to random sizes in between.
    Messages of one chunk stream keep their order. Returns the bytes and the messages in the
    order a reader completes them."""
    queues: dict[int, list[Message]] = {}
    for m in messages:
        queues.setdefault(m.csid, []).append(m)
    states: dict[int, _CsState] = {}
    progress: dict[int, int] = {}  # bytes of the head message of each csid already sent
    out = bytearray()
    done: list[Message] = []
    steps = 0
    while any(queues.values()):
        steps += 1
        if resize_every and steps % resize_every == 0:
            # Sent whole on csid 2 (which no test message uses), in chunks of the old size; the
            # new size applies to every chunk after it, those of messages in progress included.
            new_size = rng.choice([1, 3, 128, 500, 4096, 65536])
            body = struct.pack(">I", new_size)
            out += chunk_header(0, 2, length=4, type_id=chunk.SET_CHUNK_SIZE) + body[:chunk_size]
            for i in range(chunk_size, 4, chunk_size):
                out += chunk_header(3, 2) + body[i : i + chunk_size]
            chunk_size = new_size
        csid = rng.choice([c for c, q in queues.items() if q])
        m = queues[csid][0]
        sent = progress.get(csid, 0)
        s = states.get(csid)
        if sent == 0:
            if s is None or m.stream_id != s.stream_id or m.timestamp < s.timestamp:
                fmt, field = 0, m.timestamp
            else:
                delta = m.timestamp - s.timestamp
                if len(m.payload) != s.length or m.type_id != s.type_id:
                    fmt, field = 1, delta
                elif delta != s.delta:
                    fmt, field = 2, delta
                else:
                    fmt, field = 3, delta
            if fmt == 3:
                head = chunk_header(3, csid, extended=field if s and s.extended else None)
            else:
                head = chunk_header(fmt, csid, timestamp=field, length=len(m.payload), type_id=m.type_id,
                                    stream_id=m.stream_id)
                s = states[csid] = _CsState(
                    timestamp=m.timestamp, delta=field, length=len(m.payload), type_id=m.type_id,
                    stream_id=m.stream_id, extended=field >= 0xFFFFFF,
                )
            assert s is not None
            s.timestamp, s.delta = m.timestamp, field
        else:
            assert s is not None
            head = chunk_header(3, csid, extended=s.delta if s.extended else None)
        take = min(chunk_size, len(m.payload) - sent)
        out += head + m.payload[sent : sent + take]
        sent += take
        if sent >= len(m.payload):
            queues[csid].pop(0)
            progress[csid] = 0
            done.append(m)
        else:
            progress[csid] = sent
    return bytes(out), done


messages_st = st.lists(
    st.builds(Message, CSIDS, DELIVERED_TYPES, st.integers(0, 3), TIMESTAMPS, st.binary(max_size=600)),
    max_size=12,
)


def _monotonic_per_csid(messages: list[Message]) -> list[Message]:
    """Timestamps that only grow per chunk stream (so compressed headers apply), as live media has."""
    last: dict[int, int] = {}
    out = []
    for m in messages:
        ts = min(0xFFFFFFFF, max(m.timestamp, last.get(m.csid, 0)))
        last[m.csid] = ts
        out.append(Message(m.csid, m.type_id, m.stream_id, ts, m.payload))
    return out


# --- round trips ---


@ROUND_TRIP
@given(messages=messages_st, chunk_size=CHUNK_SIZES, cuts=st.lists(st.integers(0, 1 << 20), max_size=30))
def test_chunk_writer_output_parses_back_identically(
    messages: list[Message], chunk_size: int, cuts: list[int]
) -> None:
    writer = ChunkWriter()
    data = writer.encode(2, chunk.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", chunk_size))
    writer.chunk_size = chunk_size
    for m in messages:
        data += writer.encode(m.csid, m.type_id, m.stream_id, m.timestamp, m.payload)
    reader = ChunkReader()
    out: list[Message] = []
    for piece in _pieces(data, cuts):
        out += reader.feed(piece)
    assert out == messages


@ROUND_TRIP
@given(messages=messages_st, seed=st.integers(0, 2**32), resize=st.sampled_from([0, 2, 5]),
       cuts=st.lists(st.integers(0, 1 << 20), max_size=30))
def test_compressed_interleaved_chunks_parse_back_identically(
    messages: list[Message], seed: int, resize: int, cuts: list[int]
) -> None:
    messages = _monotonic_per_csid(messages)
    data, expected = spec_encode(messages, random.Random(seed), resize_every=resize)
    reader = ChunkReader()
    out: list[Message] = []
    for piece in _pieces(data, cuts):
        out += reader.feed(piece)
        _check_bounds(reader)
    assert out == expected


@ROUND_TRIP
@given(messages=messages_st, seed=st.integers(0, 2**32))
def test_bytewise_and_whole_feeds_agree(messages: list[Message], seed: int) -> None:
    data, _ = spec_encode(_monotonic_per_csid(messages), random.Random(seed), resize_every=3)
    data = data[:3000]  # a prefix: may end anywhere, and must still agree
    whole = ChunkReader().feed(data)
    reader = ChunkReader()
    bytewise: list[Message] = []
    for i in range(len(data)):
        bytewise += reader.feed(data[i : i + 1])
    assert bytewise == whole


# --- hostile input ---


@FUZZ
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 1 << 16), max_size=20))
def test_random_bytes_into_chunk_reader(data: bytes, cuts: list[int]) -> None:
    _feed_hostile(data, cuts)


# Headers that parse further than random bytes do: type 0 first, then any type, on few csids.
_chunkish = st.lists(
    st.tuples(
        st.integers(0, 3), st.sampled_from([2, 3, 4, 5, 64, 320, 65599]),
        st.sampled_from([0, 1, 0xFFFFFE, 0xFFFFFF, 0x1000000]), st.sampled_from([0, 1, 5, 200, MAX_MESSAGE, 0xFFFFFF]),
        st.sampled_from([1, 2, 3, 8, 9, 20]), st.binary(max_size=300),
    ),
    max_size=25,
)


@FUZZ
@given(parts=_chunkish, cuts=st.lists(st.integers(0, 1 << 16), max_size=20))
def test_random_chunk_headers_into_chunk_reader(
    parts: list[tuple[int, int, int, int, int, bytes]], cuts: list[int]
) -> None:
    data = b"".join(
        chunk_header(fmt, csid, timestamp=ts, length=length, type_id=t) + tail
        for fmt, csid, ts, length, t, tail in parts
    )
    _feed_hostile(data, cuts)


@ROUND_TRIP
@given(
    messages=messages_st, seed=st.integers(0, 2**32),
    mutations=st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                                 st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=10),
)
def test_mutated_valid_chunk_streams_into_chunk_reader(
    messages: list[Message], seed: int, mutations: list[tuple[str, int, int]], cuts: list[int]
) -> None:
    data = bytearray(spec_encode(_monotonic_per_csid(messages), random.Random(seed), resize_every=4)[0])
    for op, where, value in mutations:
        i = where % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= 1 << (value % 8)
        elif op == "set" and i < len(data):
            data[i] = value
        elif op == "insert":
            data[i:i] = bytes([value]) * (1 + value % 5)
        elif op == "delete":
            del data[i : i + 1 + value % 5]
        elif op == "truncate":
            del data[i:]
    _feed_hostile(bytes(data), cuts)


# --- AMF0 ---

_leaf = st.one_of(
    st.floats(allow_nan=False), st.booleans(), st.text(max_size=40), st.none(), st.just(amf0.UNDEFINED_VALUE),
    st.builds(amf0.Date, st.floats(allow_nan=False), st.integers(-32768, 32767)),
)
_key = st.text(min_size=1, max_size=12)  # an empty key is the object-end marker
amf_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(_key, inner, max_size=5),
        st.builds(amf0.EcmaArray, st.dictionaries(_key, inner, max_size=5)),
    ),
    max_leaves=12,
)


@SLOW_STRATEGY
@given(values=st.lists(amf_values, max_size=6))
def test_amf0_values_round_trip(values: list[amf0.Value]) -> None:
    assert amf0.decode_all(amf0.encode(*values)) == values


def _decode_hostile(data: bytes) -> None:
    try:
        values = amf0.decode_all(data)
    except AmfError:
        return
    assert len(values) <= amf0.MAX_ELEMENTS
    # What decoded can be written out again (the server re-encodes onMetaData), at a bounded
    # size, and reads back as the same thing (compared as bytes: NaN != NaN).
    again = amf0.encode(*values)
    assert len(again) <= len(data) + amf0.MAX_REFERENCE_BYTES
    assert amf0.encode(*amf0.decode_all(again)) == again


@FUZZ
@given(data=st.binary(max_size=500))
def test_random_bytes_into_amf0(data: bytes) -> None:
    _decode_hostile(data)


# Valid AMF0 structure from a grammar, with references to low object indices among the members:
# these reach the reference handling (forward, backward, and to a container from inside itself),
# which random or mutated bytes hardly ever do.
_amf_leaf_bytes = st.one_of(
    st.sampled_from([b"\x05", b"\x06", b"\x01\x01", b"\x02\x00\x01a", b"\x00" + bytes(8)]),
    st.integers(0, 3).map(lambda i: b"\x07" + struct.pack(">H", i)),
)
_amf_key = st.sampled_from([b"\x00\x01k", b"\x00\x01j", b"\x00\x01i"])


def _amf_containers(members: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    props = st.lists(st.tuples(_amf_key, members), max_size=3).map(
        lambda ps: b"".join(k + v for k, v in ps) + b"\x00\x00\x09"
    )
    return st.one_of(
        props.map(lambda p: b"\x03" + p),
        props.map(lambda p: b"\x08\x00\x00\x00\x02" + p),
        props.map(lambda p: b"\x10\x00\x01T" + p),
        st.lists(members, max_size=3).map(lambda vs: b"\x0a" + struct.pack(">I", len(vs)) + b"".join(vs)),
    )


amf_grammar = st.recursive(_amf_leaf_bytes, _amf_containers, max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(amf_grammar, max_size=6))
def test_nearly_valid_amf0(parts: list[bytes]) -> None:
    _decode_hostile(b"".join(parts))


@SLOW_STRATEGY
@given(values=st.lists(amf_values, min_size=1, max_size=4),
       mutations=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(0, 1 << 20))
def test_mutated_amf0_values(values: list[amf0.Value], mutations: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(amf0.encode(*values))
    for where, value in mutations:
        if data:
            data[where % len(data)] = value
    _decode_hostile(bytes(data[: cut % (len(data) + 2)]))


@settings(max_examples=100, deadline=None)
@given(levels=st.integers(1, 40), fanout=st.integers(1, 40), nesting=st.integers(0, amf0.MAX_DEPTH))
def test_amf0_reference_chains_are_bounded(levels: int, fanout: int, nesting: int) -> None:
    # Regression (found here): each level is ``nesting`` nested objects whose innermost one
    # refers ``fanout`` times to the level before. Whatever the shape, it decodes to something
    # of bounded size and depth that re-encodes and decodes again, or raises AmfError.
    out = bytearray(b"\x03\x00\x01x\x02\x00\x10" + b"0123456789abcdef" + b"\x00\x00\x09")
    first, count = 0, 1  # reference index of the previous level's outer object; objects so far
    for _ in range(levels):
        out += b"\x03" + b"\x00\x01k\x03" * nesting
        for k in range(fanout):
            out += struct.pack(">HH", 2, k) + b"\x07" + struct.pack(">H", first)
        out += b"\x00\x00\x09" * (nesting + 1)
        first, count = count, count + nesting + 1
    _decode_hostile(bytes(out))


def test_hostile_errors_are_rtmp_errors() -> None:
    assert issubclass(ChunkError, RtmpError) and issubclass(AmfError, RtmpError)
