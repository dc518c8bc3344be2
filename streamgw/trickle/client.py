"""Trickle clients (WIRE.md §7) over httpx, HTTP/1.1 or HTTP/2: a publisher that streams each
segment's bytes as they are produced, and a subscriber that reads them as they are written.

Both preconnect, as go-livepeer's do: while seq N is in flight the request for N+1 is already
open at the server (a POST whose body has not started; a GET that waits for the first byte), so
a segment boundary costs no round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from streamgw.errors import TrickleClosed, TrickleError
from streamgw.trickle.server import CLOSED, LATEST, RESET, SEQ

log = logging.getLogger(__name__)

MAX_RESYNCS = 8  # 470s in a row before the subscriber gives up


def _seq(response: httpx.Response, header: str) -> int:
    try:
        return int(response.headers[header])
    except (KeyError, ValueError) as exc:
        raise TrickleError(f"trickle {response.request.url}: {response.status_code} without a valid {header}") from exc


# --- publisher ---


SUBSCRIBE_TIMEOUT = httpx.Timeout(60.0, connect=5.0)  # seconds a GET may wait for its segment


class _Body:
    """A request body fed piece by piece; None ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (piece := await self.queue.get()) is not None:
            yield piece


class PublishedSegment:
    """One seq being published: :meth:`write` its bytes (sent at once), then :meth:`close`."""

    def __init__(self, seq: int, body: _Body, response: asyncio.Task[httpx.Response]) -> None:
        self.seq = seq  # as asked (-1 is not used: the publisher counts)
        self._body = body
        self._response = response
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise TrickleError(f"segment {self.seq} is already closed")
        if data:
            self._body.queue.put_nowait(data)

    async def close(self) -> None:
        """End the segment and wait for the server's answer."""
        if not self._closed:
            self._closed = True
            self._body.queue.put_nowait(None)
        response = await self._response
        if response.headers.get(CLOSED):
            raise TrickleClosed(f"trickle channel {response.request.url} is closed")
        if response.status_code == 404:
            raise TrickleClosed(f"trickle channel {response.request.url} is gone")
        if response.status_code != 200:
            raise TrickleError(f"trickle POST {response.request.url}: {response.status_code} {response.text.strip()}")


class TricklePublisher:
    """Publishes seq 0, 1, 2, ... to the channel at ``url`` (``.../ai/trickle/NAME``).

    The first POST carries ``Lp-Trickle-Reset: 1`` (a restarted publisher: the server closes older
    segments); each next POST is opened when the one before starts.
    """

    def __init__(self, client: httpx.AsyncClient, url: str, *, mime: str = "video/MP2T", start: int = 0) -> None:
        self.client = client
        self.url = url.rstrip("/")
        self.mime = mime
        self.seq = start
        self._next: tuple[_Body, asyncio.Task[httpx.Response]] | None = None
        self._reset = True
        self._open_posts: set[asyncio.Task[httpx.Response]] = set()  # every POST not answered yet

    def _open(self, seq: int) -> tuple[_Body, asyncio.Task[httpx.Response]]:
        body = _Body()
        headers = {"Content-Type": self.mime}
        if self._reset:
            headers[RESET] = "1"
            self._reset = False
        request = self.client.build_request("POST", f"{self.url}/{seq}", content=body.__aiter__(), headers=headers)
        task = asyncio.ensure_future(self.client.send(request))
        self._open_posts.add(task)
        task.add_done_callback(self._open_posts.discard)
        return body, task

    def segment(self) -> PublishedSegment:
        """The next segment (its POST already open when preconnected); the one after is opened."""
        body, response = self._next if self._next is not None else self._open(self.seq)
        segment = PublishedSegment(self.seq, body, response)
        self.seq += 1
        self._next = self._open(self.seq)
        return segment

    async def publish(self, data: bytes) -> None:
        """Publish ``data`` as one whole segment."""
        segment = self.segment()
        segment.write(data)
        await segment.close()

    async def aclose(self, *, delete: bool = True) -> None:
        """Drop the preconnected POST (nothing was written to it) and any segment still being
        written, then close the channel (unless not ``delete``)."""
        self._next = None
        pending = list(self._open_posts)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
        if delete:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.delete(self.url)


# --- subscriber ---


@dataclass
class SubscribedSegment:
    """One seq as it arrives: iterate :meth:`chunks` for its bytes (streamed while written)."""

    seq: int
    latest: int | None
    response: httpx.Response
    max_bytes: int

    async def chunks(self) -> AsyncIterator[bytes]:
        total = 0
        try:
            async for chunk in self.response.aiter_raw():
                total += len(chunk)
                if total > self.max_bytes:
                    raise TrickleError(f"trickle segment {self.seq} exceeds {self.max_bytes} bytes")
                yield chunk
        except httpx.HTTPError as exc:
            raise TrickleError(f"trickle segment {self.seq} broke off: {exc}") from exc
        finally:
            await self.response.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


class TrickleSubscriber:
    """Reads the channel at ``url`` from ``start`` (-1: the live edge) on, one segment at a time,
    resyncing to the server's latest seq on 470; ends with :class:`TrickleClosed`."""

    def __init__(self, client: httpx.AsyncClient, url: str, *, start: int = -1,
                 max_segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.client = client
        self.url = url.rstrip("/")
        self.seq = start
        self.max_segment_bytes = max_segment_bytes
        self._next: tuple[int, asyncio.Task[httpx.Response]] | None = None

    def _get(self, seq: int) -> asyncio.Task[httpx.Response]:
        # A GET waits for its seq to be written (a status event every 10 s, a control message
        # when the user moves a slider): the client's usual read timeout would cut it off.
        request = self.client.build_request("GET", f"{self.url}/{seq}", timeout=SUBSCRIBE_TIMEOUT)
        return asyncio.ensure_future(self.client.send(request, stream=True))

    async def next(self) -> SubscribedSegment:
        """The next segment, once its first byte exists; raises :class:`TrickleClosed` at the end."""
        for _ in range(MAX_RESYNCS):
            if self._next is not None and self._next[0] == self.seq:
                task = self._next[1]
            else:
                if self._next is not None:
                    self._cancel_next()
                task = self._get(self.seq)
            self._next = None
            try:
                response = await task
            except httpx.HTTPError as exc:
                raise TrickleError(f"trickle GET {self.url}/{self.seq}: {exc}") from exc
            if response.status_code == 470:
                await response.aclose()
                self.seq = _seq(response, LATEST)  # fell behind (or asked ahead): the live edge
                continue
            if response.status_code == 404:
                await response.aclose()
                raise TrickleClosed(f"trickle channel {self.url} is gone")
            if response.status_code != 200:
                await response.aread()
                await response.aclose()
                raise TrickleError(f"trickle GET {self.url}/{self.seq}: {response.status_code} "
                                   f"{response.text.strip()}")
            if response.headers.get(CLOSED):
                await response.aclose()
                raise TrickleClosed(f"trickle channel {self.url} is closed")
            seq = _seq(response, SEQ)
            latest = int(response.headers[LATEST]) if LATEST.lower() in response.headers else None
            self.seq = seq + 1
            self._next = (self.seq, self._get(self.seq))  # preconnect
            return SubscribedSegment(seq, latest, response, self.max_segment_bytes)
        raise TrickleError(f"trickle {self.url}: {MAX_RESYNCS} resyncs in a row")

    def _cancel_next(self) -> None:
        if self._next is not None:
            self._next[1].cancel()
            self._next = None

    async def aclose(self) -> None:
        if self._next is not None:
            task = self._next[1]
            self._cancel_next()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                response = await task
                await response.aclose()
