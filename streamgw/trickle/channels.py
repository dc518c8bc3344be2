"""Trickle channels without I/O (WIRE.md §7): a ring of sequential segments per channel, each
readable while it is written.

A segment's bytes are appended by one publisher and read by any number of subscribers, each at
its own offset: a slow subscriber holds a reference to a segment, never the publisher. Every
channel keeps the last :data:`RING` segments; a segment and a channel are bounded in bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from streamgw.errors import CapacityError

RING = 5  # segments a channel keeps (go-livepeer's maxSegmentsPerStream)


@dataclass(frozen=True)
class TrickleLimits:
    """Bounds on what a trickle server holds and how long it keeps idle channels."""

    max_segment_bytes: int = 16 * 1024 * 1024
    max_channels: int = 1024
    idle_timeout: float = 300.0  # a channel with no write for this long is swept
    sweep_interval: float = 60.0


class TrickleSegment:
    """One seq of a channel: bytes appended until closed; readers wait for more."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.data = bytearray()
        self.closed = False
        self._changed = asyncio.Event()  # set on each write and on close, then replaced

    @property
    def fresh(self) -> bool:
        """Not written to and not closed (a preconnected reader or writer may be waiting on it)."""
        return not self.closed and not self.data

    def write(self, data: bytes) -> None:
        self.data += data
        self._wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake()

    def reset(self) -> None:
        """A second POST to the same seq starts it again (readers past the new end see its end)."""
        self.data = bytearray()
        self.closed = False
        self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def read(self, offset: int) -> tuple[bytes, bool]:
        """The bytes from ``offset`` on once there are any, and whether the segment has ended
        (closed, or reset below ``offset``)."""
        while True:
            if offset < len(self.data):
                return bytes(self.data[offset:]), self.closed
            if offset > len(self.data) or self.closed:
                return b"", True
            await self._changed.wait()


class TrickleChannel:
    """A named channel: its mime type, the ring of segments, the next seq to be written."""

    def __init__(self, name: str, mime: str) -> None:
        self.name = name
        self.mime = mime
        self.segments: list[TrickleSegment | None] = [None] * RING
        self.next_write = 0
        self.write_time = time.monotonic()
        self.closed = False
        self.closed_event = asyncio.Event()

    def _at(self, seq: int) -> TrickleSegment | None:
        segment = self.segments[seq % RING]
        return segment if segment is not None and segment.seq == seq else None

    def for_write(self, seq: int, *, reset: bool = False) -> tuple[TrickleSegment, int]:
        """The segment a POST to ``seq`` (-1: the next write) writes, and its effective seq.
        ``reset`` (``Lp-Trickle-Reset``: the publisher restarted): every older segment is closed."""
        if seq == -1:
            seq = self.next_write
        if reset:
            for other in self.segments:
                if other is not None and other.seq < seq:
                    other.close()
        segment = self._at(seq)
        if segment is not None:
            if not segment.fresh:
                segment.reset()  # a repeated POST overwrites, as go-livepeer does
            return segment, seq
        old = self.segments[seq % RING]
        if old is not None:
            old.close()
        segment = TrickleSegment(seq)
        self.segments[seq % RING] = segment
        return segment, seq

    def started(self, seq: int) -> None:
        """The first byte of ``seq`` arrived: it is the latest write."""
        self.next_write = max(self.next_write, seq + 1)
        self.write_time = time.monotonic()

    def for_read(self, seq: int) -> tuple[TrickleSegment | None, int]:
        """The segment a GET of ``seq`` reads (-1: the next write, -2: the current one), made
        ahead when it is the next write; None when the channel has no such seq (470)."""
        if seq == -1:
            seq = self.next_write
        elif seq == -2:
            seq = max(0, self.next_write - 1)
        segment = self._at(seq)
        if segment is None and (seq == self.next_write or (self.next_write == 0 and seq == 1)):
            old = self.segments[seq % RING]
            if old is not None:
                old.close()
            segment = TrickleSegment(seq)
            self.segments[seq % RING] = segment
        return segment, self.next_write

    def close_seq(self, seq: int) -> bool:
        segment = self._at(seq)
        if segment is None:
            return False
        segment.close()
        return True

    def close(self) -> None:
        self.closed = True
        for segment in self.segments:
            if segment is not None:
                segment.close()
        self.closed_event.set()


class TrickleChannels:
    """The channels a server holds (created by its owner: an orchestrator has no auto-create)."""

    def __init__(self, limits: TrickleLimits | None = None) -> None:
        self.limits = limits or TrickleLimits()
        self._channels: dict[str, TrickleChannel] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def create(self, name: str, mime: str) -> TrickleChannel:
        """Create ``name`` (or return it, if it exists)."""
        channel = self._channels.get(name)
        if channel is None:
            if len(self._channels) >= self.limits.max_channels:
                raise CapacityError(f"more than {self.limits.max_channels} trickle channels")
            channel = self._channels[name] = TrickleChannel(name, mime)
        return channel

    def get(self, name: str) -> TrickleChannel | None:
        return self._channels.get(name)

    def close(self, name: str) -> bool:
        """Close and forget ``name``; False if there is no such channel."""
        channel = self._channels.pop(name, None)
        if channel is None:
            return False
        channel.close()
        return True

    def sweep(self, now: float | None = None) -> list[str]:
        """Close the channels with no write for ``idle_timeout``; returns their names."""
        now = time.monotonic() if now is None else now
        idle = [name for name, c in self._channels.items() if now - c.write_time > self.limits.idle_timeout]
        for name in idle:
            self.close(name)
        return idle

    async def run(self) -> None:
        """Sweep idle channels every ``sweep_interval`` (a supervised background task)."""
        while True:
            await asyncio.sleep(self.limits.sweep_interval)
            self.sweep()

    def close_all(self) -> None:
        for name in list(self._channels):
            self.close(name)


async def local_segments(channel: TrickleChannel, start: int = -1) -> AsyncIterator[TrickleSegment]:
    """The segments of ``channel`` from ``start`` (-1: the next write) on, read in-process as a
    subscriber over HTTP would: behind the ring, jump to the live edge; ends when the channel closes."""
    seq = start
    while not channel.closed:
        segment, latest = channel.for_read(seq)
        if segment is None:
            seq = latest
            continue
        yield segment
        seq = segment.seq + 1
