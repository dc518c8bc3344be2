"""The segmenter's input pipe: bytes come out as they went in, whatever the read sizes."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgw.errors import MediaError
from streamgw.media.bytequeue import ByteQueue


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.lists(st.integers(-1, 400), min_size=1))
def test_reads_of_any_size_give_back_the_written_bytes(writes: list[bytes], sizes: list[int]) -> None:
    q = ByteQueue(read_timeout=0.01)
    for w in writes:
        q.write(w)
    q.close()
    out, i = bytearray(), 0
    while chunk := q.read(sizes[i % len(sizes)] or 1):
        assert isinstance(chunk, bytes)
        out += chunk
        i += 1
    assert bytes(out) == b"".join(writes) and q.pending == 0


def test_backlog_is_bounded_and_a_reader_is_woken() -> None:
    q = ByteQueue(max_bytes=10)
    with pytest.raises(MediaError):
        q.write(bytes(11))
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(q.read()))
    reader.start()
    time.sleep(0.05)
    q.write(b"abc")
    reader.join(2)
    assert got == [b"abc"]
