"""The RTMP chunk stream (RTMP specification 1.0, section 5.3): ChunkReader against hand-made
chunks (headers built by tests/rtmpclient.chunk_header from the specification), ChunkWriter
round trips, and every bound."""

from __future__ import annotations

import struct

import pytest

from streamgw.errors import ChunkError, RtmpError
from streamgw.ingest.rtmp import chunk
from streamgw.ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message
from tests.rtmpclient import basic_header, chunk_header

AUDIO, VIDEO, CMD = chunk.AUDIO, chunk.VIDEO, chunk.COMMAND_AMF0


def set_chunk_size(size: int, csid: int = 2) -> bytes:
    return chunk_header(0, csid, length=4, type_id=chunk.SET_CHUNK_SIZE) + struct.pack(">I", size)


def abort(target_csid: int) -> bytes:
    return chunk_header(0, 2, length=4, type_id=chunk.ABORT) + struct.pack(">I", target_csid)


def body(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def split(payload: bytes, size: int) -> list[bytes]:
    return [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]


def feed_all(data: bytes, **kw: int) -> list[Message]:
    return ChunkReader(**kw).feed(data)


def feed_bytewise(data: bytes, **kw: int) -> list[Message]:
    reader = ChunkReader(**kw)
    out: list[Message] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    return out


# --- headers ---


def test_type0_header_gives_every_field() -> None:
    data = chunk_header(0, 3, timestamp=1234, length=5, type_id=CMD, stream_id=0x01020304) + b"hello"
    assert feed_all(data) == [Message(3, CMD, 0x01020304, 1234, b"hello")]


def test_message_stream_id_is_little_endian() -> None:
    data = chunk_header(0, 3, length=1, type_id=VIDEO)[:-4] + b"\x01\x00\x00\x00" + b"x"
    assert feed_all(data)[0].stream_id == 1


@pytest.mark.parametrize(
    ("csid", "encoded"),
    [
        (2, "02"), (3, "03"), (63, "3f"),  # one byte: 2..63
        (64, "0000"), (65, "0001"), (319, "00ff"),  # two bytes: 64..319
        (320, "010001"), (1000, "01a803"), (65599, "01ffff"),  # three bytes: 64..65599
    ],
)
def test_basic_header_sizes(csid: int, encoded: str) -> None:
    assert basic_header(0, csid) == bytes.fromhex(encoded)
    head = bytes.fromhex(encoded)
    data = head + b"\x00\x00\x07" + b"\x00\x00\x02" + bytes([AUDIO]) + b"\x01\x00\x00\x00" + b"ab"
    assert feed_all(data) == [Message(csid, AUDIO, 1, 7, b"ab")]
    # The writer picks the same, shortest, form.
    assert ChunkWriter().encode(csid, AUDIO, 1, 7, b"ab") == data


def test_three_byte_basic_header_may_name_a_small_csid() -> None:
    # csid = third byte * 256 + second byte + 64, whichever form carries it.
    data = b"\x01\x00\x00" + bytes(6) + bytes([AUDIO]) + bytes(4)
    assert feed_all(data) == [Message(64, AUDIO, 0, 0, b"")]


def test_basic_header_split_across_feeds() -> None:
    data = basic_header(0, 1000) + chunk_header(0, 1000, length=1, type_id=AUDIO)[3:] + b"z"
    assert feed_bytewise(data) == [Message(1000, AUDIO, 0, 0, b"z")]


def test_type1_header_changes_length_and_type_and_adds_a_delta() -> None:
    data = (
        chunk_header(0, 4, timestamp=100, length=2, type_id=AUDIO, stream_id=9) + b"aa"
        + chunk_header(1, 4, timestamp=40, length=3, type_id=VIDEO) + b"vvv"
    )
    assert feed_all(data) == [Message(4, AUDIO, 9, 100, b"aa"), Message(4, VIDEO, 9, 140, b"vvv")]


def test_type2_header_keeps_length_and_type() -> None:
    data = (
        chunk_header(0, 4, timestamp=100, length=2, type_id=AUDIO, stream_id=9) + b"a1"
        + chunk_header(2, 4, timestamp=33) + b"a2"
        + chunk_header(2, 4, timestamp=0) + b"a3"
    )
    assert feed_all(data) == [
        Message(4, AUDIO, 9, 100, b"a1"), Message(4, AUDIO, 9, 133, b"a2"), Message(4, AUDIO, 9, 133, b"a3"),
    ]


def test_spec_example_1_audio_messages() -> None:
    # Section 5.3.2.1: four 32-byte audio messages on one chunk stream, headers 0, 2, 3, 3.
    data = (
        chunk_header(0, 3, timestamp=1000, length=32, type_id=AUDIO, stream_id=12345) + body(32, 1)
        + chunk_header(2, 3, timestamp=33) + body(32, 2)
        + chunk_header(3, 3) + body(32, 3)
        + chunk_header(3, 3) + body(32, 4)
    )
    assert feed_all(data) == [Message(3, AUDIO, 12345, 1000 + 33 * i, body(32, i + 1)) for i in range(4)]


def test_spec_example_2_message_split_into_chunks() -> None:
    # Section 5.3.2.2: a 307-byte video message in chunks of 128: type 0, then two type 3.
    payload = body(307)
    parts = split(payload, 128)
    data = chunk_header(0, 4, timestamp=1000, length=307, type_id=VIDEO, stream_id=12346) + parts[0]
    data += b"".join(chunk_header(3, 4) + p for p in parts[1:])
    assert [len(p) for p in parts] == [128, 128, 51]
    assert feed_all(data) == [Message(4, VIDEO, 12346, 1000, payload)]
    assert ChunkWriter().encode(4, VIDEO, 12346, 1000, payload) == data


def test_type3_new_message_after_type0_adds_the_type0_timestamp() -> None:
    # 5.3.1.2.4: "If a Type 3 chunk follows a Type 0 chunk, then the timestamp delta for this
    # Type 3 chunk is the same as the timestamp of the Type 0 chunk."
    data = (
        chunk_header(0, 5, timestamp=40, length=1, type_id=AUDIO, stream_id=1) + b"1"
        + chunk_header(3, 5) + b"2"
        + chunk_header(3, 5) + b"3"
    )
    assert [m.timestamp for m in feed_all(data)] == [40, 80, 120]


def test_type3_new_message_after_type1_adds_its_delta() -> None:
    data = (
        chunk_header(0, 5, timestamp=1000, length=1, type_id=AUDIO, stream_id=1) + b"1"
        + chunk_header(1, 5, timestamp=21, length=2, type_id=VIDEO) + b"22"
        + chunk_header(3, 5) + b"33"
    )
    msgs = feed_all(data)
    assert [(m.timestamp, m.type_id, m.payload) for m in msgs] == [
        (1000, AUDIO, b"1"), (1021, VIDEO, b"22"), (1042, VIDEO, b"33"),
    ]


def test_type3_continuation_does_not_change_the_timestamp() -> None:
    data = (
        chunk_header(0, 5, timestamp=10, length=6, type_id=AUDIO) + b"ab"
        + chunk_header(3, 5) + b"cd"
        + chunk_header(3, 5) + b"ef"
        + chunk_header(3, 5) + b"gh"  # a new message: timestamp 10 + 10
        + chunk_header(3, 5) + b"ij"
        + chunk_header(3, 5) + b"kl"
    )
    assert feed_all(set_chunk_size(2) + data) == [
        Message(5, AUDIO, 0, 10, b"abcdef"), Message(5, AUDIO, 0, 20, b"ghijkl"),
    ]


def test_timestamps_wrap_at_32_bits() -> None:
    data = (
        chunk_header(0, 5, timestamp=0xFFFFFFF0, length=1, type_id=AUDIO) + b"1"
        + chunk_header(2, 5, timestamp=0x20) + b"2"
    )
    assert [m.timestamp for m in feed_all(data)] == [0xFFFFFFF0, 0x10]


def test_zero_length_message() -> None:
    data = chunk_header(0, 3, length=0, type_id=CMD) + chunk_header(0, 3, timestamp=1, length=1, type_id=CMD) + b"x"
    assert feed_all(data) == [Message(3, CMD, 0, 0, b""), Message(3, CMD, 0, 1, b"x")]


# --- chunk size ---


@pytest.mark.parametrize("size", [1, 128, 4096, 65536])
def test_set_chunk_size_mid_stream(size: int) -> None:
    before = body(300, 1)  # in 128-byte chunks
    after = body(3 * size + 5, 2)
    data = chunk_header(0, 6, timestamp=1, length=len(before), type_id=VIDEO, stream_id=1)
    data += b"".join(p if i == 0 else chunk_header(3, 6) + p for i, p in enumerate(split(before, 128)))
    data += set_chunk_size(size)
    data += chunk_header(0, 6, timestamp=2, length=len(after), type_id=VIDEO, stream_id=1)
    data += b"".join(p if i == 0 else chunk_header(3, 6) + p for i, p in enumerate(split(after, size)))
    expected = [Message(6, VIDEO, 1, 1, before), Message(6, VIDEO, 1, 2, after)]
    reader = ChunkReader()
    assert reader.feed(data) == expected
    assert reader.chunk_size == size
    assert feed_bytewise(data) == expected


@pytest.mark.parametrize("size", [1, 128, 4096, 65536])
def test_writer_to_reader_at_chunk_size(size: int) -> None:
    writer = ChunkWriter()
    data = writer.encode(2, chunk.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size))
    writer.chunk_size = size
    msgs = [Message(4, AUDIO, 1, 0, body(size * 2 + 1)), Message(6, VIDEO, 1, 33, b""),
            Message(65599, CMD, 0, 0xFFFFFFFF, body(size + 1, 9)), Message(3, CMD, 0, 5, body(size))]
    for m in msgs:
        data += writer.encode(m.csid, m.type_id, m.stream_id, m.timestamp, m.payload)
    assert feed_all(data) == msgs


def test_chunk_size_applies_from_the_next_chunk_across_chunk_streams() -> None:
    # A message in progress on csid 6 continues in chunks of the new size.
    payload = body(200)
    data = chunk_header(0, 6, length=200, type_id=VIDEO) + payload[:128]
    data += set_chunk_size(50)
    data += chunk_header(3, 6) + payload[128:178] + chunk_header(3, 6) + payload[178:]
    assert feed_all(data) == [Message(6, VIDEO, 0, 0, payload)]


@pytest.mark.parametrize("size", [0, 0x80000000, 0xFFFFFFFF, 16 * 1024 * 1024 + 1])
def test_invalid_chunk_size_raises(size: int) -> None:
    with pytest.raises(ChunkError, match="chunk size"):
        feed_all(set_chunk_size(size))


def test_largest_allowed_chunk_size() -> None:
    reader = ChunkReader(max_chunk_size=1 << 20)
    reader.feed(set_chunk_size(1 << 20))
    assert reader.chunk_size == 1 << 20
    with pytest.raises(ChunkError):
        ChunkReader(max_chunk_size=1 << 20).feed(set_chunk_size((1 << 20) + 1))


def test_short_set_chunk_size_raises() -> None:
    with pytest.raises(ChunkError, match="short"):
        feed_all(chunk_header(0, 2, length=3, type_id=chunk.SET_CHUNK_SIZE) + b"\x00\x00\x10")


# --- extended timestamps ---


def test_timestamp_below_the_sentinel_is_not_extended() -> None:
    data = ChunkWriter().encode(3, CMD, 0, 0xFFFFFE, b"x")
    assert len(data) == 12 + 1
    assert feed_all(data)[0].timestamp == 0xFFFFFE


@pytest.mark.parametrize("ts", [0xFFFFFF, 0x1000000, 0xFFFFFFFF])
def test_extended_timestamp_on_type0_and_its_type3_continuations(ts: int) -> None:
    payload = body(300)
    parts = split(payload, 128)
    data = chunk_header(0, 6, timestamp=ts, length=300, type_id=VIDEO, stream_id=1) + parts[0]
    data += b"".join(chunk_header(3, 6, extended=ts) + p for p in parts[1:])
    assert data[1:4] == b"\xff\xff\xff" and data[12:16] == struct.pack(">I", ts)
    assert feed_all(data) == [Message(6, VIDEO, 1, ts, payload)]
    assert feed_bytewise(data) == [Message(6, VIDEO, 1, ts, payload)]
    assert ChunkWriter().encode(6, VIDEO, 1, ts, payload) == data


def test_extended_delta_on_type1_and_type2() -> None:
    data = (
        chunk_header(0, 6, timestamp=5, length=1, type_id=VIDEO) + b"a"
        + chunk_header(1, 6, timestamp=0x1000000, length=2, type_id=AUDIO) + b"bb"
        + chunk_header(2, 6, timestamp=0xFFFFFF) + b"cc"
        + chunk_header(2, 6, timestamp=1) + b"dd"  # back to a 24-bit delta: no extended field
    )
    assert [m.timestamp for m in feed_all(data)] == [5, 0x1000005, 0x1000005 + 0xFFFFFF, 0x1000005 + 0x1000000]


def test_type3_new_message_after_extended_type0() -> None:
    ts = 0x1234567
    data = (
        chunk_header(0, 6, timestamp=ts, length=1, type_id=VIDEO) + b"a"
        + chunk_header(3, 6, extended=ts) + b"b"
    )
    assert [m.timestamp for m in feed_all(data)] == [ts, (2 * ts) & 0xFFFFFFFF]


def test_extended_timestamp_split_across_feeds() -> None:
    data = chunk_header(0, 6, timestamp=0x2000000, length=3, type_id=VIDEO) + b"abc"
    for cut in range(1, len(data)):
        reader = ChunkReader()
        assert reader.feed(data[:cut]) == []
        assert reader.feed(data[cut:]) == [Message(6, VIDEO, 0, 0x2000000, b"abc")]


# --- interleaving, feeding, abort ---


def _interleaved() -> tuple[bytes, list[Message]]:
    video, audio = body(300, 1), body(150, 2)
    v, a = split(video, 128), split(audio, 128)
    data = (
        chunk_header(0, 6, timestamp=0, length=300, type_id=VIDEO, stream_id=1) + v[0]
        + chunk_header(0, 4, timestamp=0, length=150, type_id=AUDIO, stream_id=1) + a[0]
        + chunk_header(3, 6) + v[1]
        + chunk_header(0, 3, timestamp=7, length=4, type_id=CMD) + b"cmd!"  # a whole message between
        + chunk_header(3, 4) + a[1]
        + chunk_header(3, 6) + v[2]
        + chunk_header(2, 4, timestamp=21) + a[0]
        + chunk_header(3, 4) + a[1]
    )
    expected = [
        Message(3, CMD, 0, 7, b"cmd!"), Message(4, AUDIO, 1, 0, audio), Message(6, VIDEO, 1, 0, video),
        Message(4, AUDIO, 1, 21, audio),
    ]
    return data, expected


def test_interleaved_messages_on_different_chunk_streams() -> None:
    data, expected = _interleaved()
    assert feed_all(data) == expected


def test_bytes_fed_one_at_a_time_give_the_same_messages() -> None:
    data, expected = _interleaved()
    data = set_chunk_size(64) + set_chunk_size(128) + data
    assert feed_bytewise(data) == expected
    for n in (2, 3, 7, 64, 129, 1000):
        reader = ChunkReader()
        out: list[Message] = []
        for i in range(0, len(data), n):
            out += reader.feed(data[i : i + n])
        assert out == expected, n


def test_abort_drops_the_partial_message() -> None:
    payload = body(300)
    data = (
        chunk_header(0, 6, timestamp=10, length=300, type_id=VIDEO, stream_id=1) + payload[:128]
        + abort(6)
        # With the message dropped, a compressed header may start the next one on csid 6.
        + chunk_header(1, 6, timestamp=5, length=2, type_id=AUDIO) + b"ok"
    )
    assert feed_all(data) == [Message(6, AUDIO, 1, 15, b"ok")]


def test_abort_of_an_idle_or_unknown_chunk_stream_is_harmless() -> None:
    data = abort(6) + abort(65599) + chunk_header(0, 3, length=1, type_id=CMD) + b"x" + abort(3)
    assert feed_all(data) == [Message(3, CMD, 0, 0, b"x")]


def test_short_abort_raises() -> None:
    with pytest.raises(ChunkError, match="Abort"):
        feed_all(chunk_header(0, 2, length=2, type_id=chunk.ABORT) + b"\x00\x06")


def test_control_message_on_another_message_stream_is_delivered() -> None:
    # Set Chunk Size and Abort are protocol control messages only on message stream 0.
    data = chunk_header(0, 2, length=4, type_id=chunk.SET_CHUNK_SIZE, stream_id=1) + struct.pack(">I", 1)
    reader = ChunkReader()
    assert reader.feed(data) == [Message(2, chunk.SET_CHUNK_SIZE, 1, 0, struct.pack(">I", 1))]
    assert reader.chunk_size == 128


def test_bytes_received_counts_every_byte() -> None:
    reader = ChunkReader()
    reader.feed(b"\x03")
    reader.feed(bytes(11))
    assert reader.bytes_received == 12


# --- protocol errors and bounds ---


def test_oversize_message_raises_at_its_header() -> None:
    reader = ChunkReader(max_message_size=1000)
    assert reader.feed(chunk_header(0, 6, length=1000, type_id=VIDEO)) == []
    with pytest.raises(ChunkError, match="exceeds"):
        ChunkReader(max_message_size=1000).feed(chunk_header(0, 6, length=1001, type_id=VIDEO))
    with pytest.raises(ChunkError, match="exceeds"):
        ChunkReader().feed(chunk_header(0, 6, length=0xFFFFFF, type_id=VIDEO))


def test_oversize_message_on_type1_header_raises() -> None:
    data = chunk_header(0, 6, length=1, type_id=VIDEO) + b"v" + chunk_header(1, 6, length=1001, type_id=VIDEO)
    with pytest.raises(ChunkError, match="exceeds"):
        ChunkReader(max_message_size=1000).feed(data)


@pytest.mark.parametrize("fmt", [1, 2, 3])
@pytest.mark.parametrize("csid", [3, 100, 1000])
def test_compressed_header_on_a_new_chunk_stream_raises(fmt: int, csid: int) -> None:
    data = chunk_header(fmt, csid, length=1, type_id=AUDIO) + b"x"
    with pytest.raises(ChunkError, match="not type 0"):
        feed_all(data)


@pytest.mark.parametrize("fmt", [0, 1, 2])
def test_full_header_interrupting_a_message_raises(fmt: int) -> None:
    data = chunk_header(0, 6, length=200, type_id=VIDEO) + body(128) + chunk_header(fmt, 6, length=72, type_id=VIDEO)
    with pytest.raises(ChunkError, match="interrupts"):
        feed_all(data + body(72))


def test_too_many_chunk_streams_raises() -> None:
    reader = ChunkReader(max_chunk_streams=4)
    for csid in range(2, 6):
        reader.feed(chunk_header(0, csid, length=1, type_id=AUDIO) + b"x")
    reader.feed(chunk_header(0, 5, length=1, type_id=AUDIO) + b"x")  # a known one is fine
    with pytest.raises(ChunkError, match="chunk streams"):
        reader.feed(chunk_header(0, 6, length=1, type_id=AUDIO))


def test_default_bound_on_chunk_streams() -> None:
    # 64 chunk streams, each in the middle of a message: the 65th is refused.
    reader = ChunkReader()
    for csid in range(100, 164):
        reader.feed(chunk_header(0, csid, length=200, type_id=AUDIO) + body(128))
    with pytest.raises(ChunkError, match="more than 64"):
        reader.feed(chunk_header(0, 200, length=10, type_id=AUDIO))


def test_unfinished_messages_are_bounded_in_total() -> None:
    # Many chunk streams each holding most of a big message: the total is capped.
    reader = ChunkReader(max_message_size=1000, max_chunk_streams=64)
    reader.feed(set_chunk_size(999))
    with pytest.raises(ChunkError, match="unfinished"):
        for csid in range(3, 40):
            reader.feed(chunk_header(0, csid, length=1000, type_id=VIDEO) + body(999))


def test_protocol_errors_are_rtmp_errors() -> None:
    assert issubclass(ChunkError, RtmpError)


# --- writer ---


def test_writer_rejects_what_the_chunk_stream_cannot_carry() -> None:
    writer = ChunkWriter()
    for csid in (0, 1, 65600):
        with pytest.raises(ChunkError):
            writer.encode(csid, AUDIO, 0, 0, b"")
    with pytest.raises(ChunkError):
        writer.encode(3, AUDIO, 0, 0, bytes(0x1000000))


def test_writer_masks_timestamps_to_32_bits() -> None:
    data = ChunkWriter().encode(3, AUDIO, 0, 0x1_0000_0005, b"x")
    assert feed_all(data) == [Message(3, AUDIO, 0, 5, b"x")]
