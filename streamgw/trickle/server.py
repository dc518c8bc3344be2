"""The trickle server as ASGI (WIRE.md §7), for any server under it: HTTP/1.1 (uvicorn) and
HTTP/2 (the orchestrator's hypercorn).

Routes under ``base`` (``/ai/trickle/`` on an orchestrator)::

    POST   {ch}          200 if the channel exists, 404 otherwise (no auto-create)
    POST   {ch}/{seq}    publish seq (-1: the next write), the body relayed as it arrives
    GET    {ch}/{seq}    subscribe (-1: the next write, -2: the current one), streamed as written
    GET    {ch}/next     the next seq, as text
    DELETE {ch}          close the channel
    DELETE {ch}/{seq}    close one segment

A GET sends no headers until the segment's first byte exists. A POST that waits for its first
byte gets go-livepeer's ``100 Continue`` keep-alive every ``keepalive`` seconds where the server
under it offers a way to send one (ASGI has no interim responses: the orchestrator's hypercorn
sets the scope extension ``streamgw.interim_response`` over HTTP/1.1; over HTTP/2 and under other
servers a preconnected POST simply waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from streamgw.trickle.channels import TrickleChannel, TrickleChannels

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SEQ = "Lp-Trickle-Seq"
LATEST = "Lp-Trickle-Latest"
CLOSED = "Lp-Trickle-Closed"
RESET = "Lp-Trickle-Reset"


# The scope extension a server sets to let the app send 100 Continue (streamgw's hypercorn does,
# over HTTP/1.1: orchestrator/h2server.INTERIM_EXTENSION; the trickle server imports no server).
INTERIM_EXTENSION = "streamgw.interim_response"


def _headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in pairs]


async def _answer(send: Send, status: int, text: str = "", *extra: tuple[str, str]) -> None:
    body = (text + "\n").encode() if text else b""
    headers = _headers(*extra)
    if text:
        headers += _headers(("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _seq(text: str, lowest: int) -> int | None:
    try:
        seq = int(text)
    except ValueError:
        return None
    return seq if seq >= lowest else None


async def _first_message(receive: Receive, channel: TrickleChannel, interim: Callable[[], Awaitable[None]] | None,
                         keepalive: float) -> MutableMapping[str, Any] | None:
    """The request's first message, or None if the channel closes first; meanwhile ``100
    Continue`` every ``keepalive`` seconds where the server can send it (``interim``)."""
    message = asyncio.ensure_future(receive())
    closed = asyncio.ensure_future(channel.closed_event.wait())
    while True:
        done, _ = await asyncio.wait({message, closed}, return_when=asyncio.FIRST_COMPLETED,
                                     timeout=keepalive if interim is not None else None)
        if done or interim is None:
            break
        try:
            await interim()
        except Exception:  # noqa: BLE001 - a keep-alive that cannot go out changes nothing
            interim = None
    closed.cancel()
    if message.done():
        return message.result()
    message.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await message
    return None


class TrickleServer:
    """ASGI app for the channels of ``channels`` under the path prefix ``base``."""

    def __init__(self, channels: TrickleChannels, base: str = "/ai/trickle/", keepalive: float = 10.0) -> None:
        self.channels = channels
        self.keepalive = keepalive  # seconds between 100 Continue keep-alives of a POST waiting for its body
        self.base = base if base.endswith("/") else base + "/"

    def handles(self, path: str) -> bool:
        return path.startswith(self.base)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"][len(self.base):].split("/")
        method = scope["method"]
        if not parts[0] or len(parts) > 2:
            await _answer(send, 404, "404 page not found")
            return
        name = parts[0]
        channel = self.channels.get(name)
        if len(parts) == 1:
            if method == "POST":
                await (_answer(send, 200) if channel is not None else _answer(send, 404, "Stream not found"))
            elif method == "DELETE":
                await (_answer(send, 200) if self.channels.close(name) else _answer(send, 400, "Invalid stream"))
            else:
                await _answer(send, 405, "Method Not Allowed")
            return
        if method == "GET" and parts[1] == "next":
            if channel is None:
                await _answer(send, 404, "Stream not found")
                return
            extra = [(LATEST, str(channel.next_write))] + ([(CLOSED, "terminated")] if channel.closed else [])
            await _answer(send, 200, str(channel.next_write), *extra)
            return
        if channel is None:
            await _answer(send, 404, "Stream not found", *([("Connection", "close")] if method == "POST" else []))
            return
        if method == "POST":
            seq = _seq(parts[1], -1)
            if seq is None:
                await _answer(send, 400, "Invalid idx")
                return
            await self._publish(channel, seq, scope, receive, send)
        elif method == "GET":
            seq = _seq(parts[1], -2)
            if seq is None:
                await _answer(send, 400, "Invalid idx")
                return
            await self._subscribe(channel, seq, parts[1], send)
        elif method == "DELETE":
            seq = _seq(parts[1], 0)
            if seq is None:
                await _answer(send, 400, "Invalid idx")
            elif not channel.close_seq(seq):
                await _answer(send, 400, "Nonexistent segment")
            else:
                await _answer(send, 200)
        else:
            await _answer(send, 405, "Method Not Allowed")

    async def _publish(self, channel: TrickleChannel, seq: int, scope: Scope, receive: Receive, send: Send) -> None:
        reset = any(k.lower() == RESET.lower().encode() and v.strip() == b"1" for k, v in scope["headers"])
        segment, seq = channel.for_write(seq, reset=reset)
        limit = self.channels.limits.max_segment_bytes
        total = 0
        extension = scope.get("extensions", {}).get(INTERIM_EXTENSION)
        interim = extension if callable(extension) else None
        message = await _first_message(receive, channel, interim, self.keepalive)
        while True:
            if message is None:  # the channel closed while this (preconnected) POST waited for its body
                await _answer(send, 200, "", (SEQ, str(seq)), (CLOSED, "terminated"))
                return
            if message["type"] == "http.disconnect":
                # The publisher went away mid-body: the segment stays open, as go-livepeer's does.
                return
            body = message.get("body", b"")
            if body:
                if total == 0:
                    channel.started(seq)
                total += len(body)
                if total > limit:
                    segment.close()
                    await _answer(send, 413, f"segment exceeds {limit} bytes", (SEQ, str(seq)))
                    return
                segment.write(body)
            if not message.get("more_body", False):
                break
            # Until the first byte (servers may hand over an empty first message): keep-alives, and
            # the channel's close ends the wait.
            message = await (_first_message(receive, channel, interim, self.keepalive) if total == 0 else receive())
        segment.close()
        if total == 0:
            channel.started(seq)  # an empty POST still advances the next write
            await _answer(send, 200, "", (SEQ, str(seq)), ("Connection", "close"))
        else:
            await _answer(send, 200, "", (SEQ, str(seq)))

    async def _subscribe(self, channel: TrickleChannel, seq: int, asked: str, send: Send) -> None:
        segment, latest = channel.for_read(seq)
        if segment is None:
            await _answer(send, 470, "Entry not found", (SEQ, asked), (LATEST, str(latest)))
            return
        offset = 0
        while True:
            data, ended = await segment.read(offset)
            if data:
                if offset == 0:
                    extra = [(LATEST, str(latest))] if segment.seq != latest else []
                    await send({"type": "http.response.start", "status": 200, "headers": _headers(
                        ("Content-Type", channel.mime), (SEQ, str(segment.seq)), *extra)})
                offset += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": not ended})
                if ended:
                    return
                continue
            if offset:  # the segment ended after its bytes
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            # Ended with nothing written: the channel closed (end of stream), or the segment was
            # dropped (a publisher cancelled it, or it fell out of the ring): resync to the latest.
            if channel.closed:
                await _answer(send, 200, "", (SEQ, str(segment.seq)), (CLOSED, "terminated"))
            else:
                await _answer(send, 470, "Entry not found", (SEQ, str(segment.seq)),
                              (LATEST, str(channel.next_write)))
            return
