"""A bounded, thread-safe byte pipe from the event loop to a PyAV worker thread."""

from __future__ import annotations

import collections
import threading
import time

from streamgw.errors import MediaError


class ByteQueue:
    """Bytes written on the event loop, read as a file by a demuxer in another thread.

    ``write`` never blocks: past ``max_bytes`` unread it raises :class:`MediaError`, because a
    passthrough segmenter cannot drop bytes without corrupting the stream. ``read`` blocks until
    data, end of input, or ``read_timeout`` seconds pass (then it reports end of input).

    Waking the reader thread costs the writer a GIL hand-off, so once the reader calls
    :meth:`batch` (after probing) writes wake it only when they are ``urgent`` (a keyframe that
    may close a segment) or when ``wake_bytes`` are pending; otherwise the reader picks data up
    within ``batch_interval`` seconds on its own.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, read_timeout: float = 60.0,
                 wake_bytes: int = 256 * 1024, batch_interval: float = 0.25) -> None:
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.wake_bytes = wake_bytes
        self.batch_interval = batch_interval
        self.last_arrival = 0.0  # time.monotonic() when the last consumed bytes were written
        self.first_arrival = 0.0  # time.monotonic() when the first bytes were written
        self._chunks: collections.deque[tuple[bytes | memoryview, float]] = collections.deque()
        self._size = 0
        self._closed = False
        self._batching = False
        self._waiting = False  # the reader is blocked in read()
        self._cond = threading.Condition()

    def batch(self) -> None:
        """From now on, wake the reader only for urgent writes or a full batch."""
        self._batching = True

    def write(self, data: bytes, *, urgent: bool = True) -> None:
        """Queue ``data`` for the reader."""
        if not data:
            return
        with self._cond:
            if self._closed:
                return
            if self._size + len(data) > self.max_bytes:
                raise MediaError(f"segmenter input backlog exceeds {self.max_bytes} bytes")
            now = time.monotonic()
            if not self.first_arrival:
                self.first_arrival = now
            self._chunks.append((data, now))
            self._size += len(data)
            if self._waiting and (urgent or not self._batching or self._size >= self.wake_bytes):
                self._cond.notify()

    def close(self) -> None:
        """Signal end of input; the reader drains what is queued, then sees EOF."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Bytes written but not yet read."""
        return self._size

    def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` bytes (at least one unless at end of input)."""
        with self._cond:
            deadline = time.monotonic() + self.read_timeout
            while not self._chunks and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._waiting = True
                try:
                    self._cond.wait(min(left, self.batch_interval) if self._batching else left)
                finally:
                    self._waiting = False
            if not self._chunks:
                return b""
            if n < 0 or n >= self._size:
                # Hand over everything queued at once: fewer, larger reads for the demuxer.
                parts = list(self._chunks)
                self._chunks.clear()
                whole = b"".join(p[0] for p in parts) if len(parts) > 1 else bytes(parts[0][0])
                self.last_arrival = parts[-1][1]
                self._size = 0
                return whole
            data, arrival = self._chunks.popleft()
            if len(data) > n:
                # The rest goes back as a view: one large write read in small pieces is not
                # copied again for each piece.
                self._chunks.appendleft((memoryview(data)[n:], arrival))
                data = data[:n]
            self._size -= len(data)
            self.last_arrival = arrival
            return bytes(data)
