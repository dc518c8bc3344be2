"""Bytes handed from the event loop to a worker thread's blocking reads (PyAV reading a segment
while it arrives)."""

from __future__ import annotations

import io
import threading
from typing import Any


class BytesPipe(io.RawIOBase):
    """A readable file whose reads block until :meth:`feed` gives bytes; :meth:`end` is EOF.
    ``feed`` and ``end`` may be called from any thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: list[bytes] = []
        self._ended = False

    def readable(self) -> bool:
        return True

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._chunks.append(data)
            self._cond.notify()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify()

    def readinto(self, buffer: Any) -> int:
        with self._cond:
            while not self._chunks and not self._ended:
                self._cond.wait()
            if not self._chunks:
                return 0
            chunk = self._chunks[0]
            n = min(len(chunk), len(buffer))
            buffer[:n] = chunk[:n]
            if n < len(chunk):
                self._chunks[0] = chunk[n:]
            else:
                self._chunks.pop(0)
            return n
