"""HLS media playlists and segments served in front of the FastAPI app: the requests players repeat.

A player asks for its media playlist every second or so and for each segment once; a gateway
with many viewers answers little else. FastAPI's routing, parameter validation and response
classes cost ~0.5 ms of CPU per request, several times what the answer itself does. This ASGI
layer answers ``GET``/``HEAD /stream/NAME/RENDITION.m3u8`` and ``/stream/NAME/RENDITION/SEGMENT``
straight from :class:`~streamgw.output.hls.HlsOutput` (playlist text rendered once per change)
with the same headers the routes give, CORS included; everything else, 404s among them, goes on
to the app, whose routes stay the documented API.

:func:`hls_front` goes one step further for HTTP/1.1 keep-alive clients: the connection protocol
uvicorn runs (``uvicorn.Config(http=...)``) answers those GETs and HEADs itself, from the bytes,
with no ASGI scope, task or timer per request (uvicorn's httptools protocol spends ~4x the answer
on them), and hands the connection to uvicorn's own protocol, replaying what it holds, at the
first request it does not answer: anything but a plain GET/HEAD of a known playlist or segment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streamgw.output.hls import HlsOutput

log = logging.getLogger(__name__)

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp2t"
PLAYLIST_CACHE = "max-age=1"  # a live playlist changes every segment; players poll it
SEGMENT_CACHE = "public, max-age=86400, immutable"  # a segment name is never reused (publication token)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PLAYLIST_HEADERS = [(b"content-type", PLAYLIST_TYPE.encode()), (b"cache-control", PLAYLIST_CACHE.encode())]
_SEGMENT_HEADERS = [(b"content-type", SEGMENT_TYPE.encode()), (b"cache-control", SEGMENT_CACHE.encode())]
# What the app's CORS middleware adds to a simple request that names an Origin.
_CORS_HEADERS = [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"Location")]


class HlsServing:
    """ASGI: media playlists and segments from ``hls``; any other request to ``app``."""

    def __init__(self, app: AsgiApp, hls: HlsOutput) -> None:
        self.app = app
        self.hls = hls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"].startswith("/stream/"):
            answer = answer_hls(self.hls, scope["path"][8:])
            if answer is not None:
                body, headers = answer
                if any(name == b"origin" for name, _ in scope["headers"]):
                    headers = headers + _CORS_HEADERS
                await send({"type": "http.response.start", "status": 200,
                            "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                # HEAD (RFC 9110 9.3.2): the GET's headers, no content.
                await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
                return
        await self.app(scope, receive, send)



def answer_hls(hls: HlsOutput, rest: str) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """The body and headers for ``/stream/`` + ``rest``, when it names a live media playlist or
    segment; None for anything else (the app answers it, 404s among them)."""
    parts = rest.split("/")
    if len(parts) == 2 and parts[1].endswith(".m3u8"):
        text = hls.media_playlist_bytes(parts[0], parts[1][:-5])
        return (text, _PLAYLIST_HEADERS) if text is not None else None
    if len(parts) == 3 and parts[2]:
        data = hls.segment(parts[0], parts[1], parts[2])
        return (data, _SEGMENT_HEADERS) if data is not None else None
    return None


MAX_HEAD = 8 * 1024  # a request head this long without its end goes to uvicorn (which bounds it)
# Headers that make a request more than a plain GET: uvicorn answers those. (Connection:
# keep-alive, which browsers send, is HTTP/1.1's default and answered here; any other value not.)
_NOT_PLAIN = (b"content-length:", b"transfer-encoding:", b"upgrade:", b"expect:")


class FrontCounts:
    """What the protocol in front of uvicorn did, for /metrics (plain ints: no metric call per request)."""

    def __init__(self) -> None:
        self.answered = 0  # requests answered in front
        self.handed_over = 0  # connections handed to uvicorn

    def as_dict(self) -> dict[str, int]:
        return {"answered": self.answered, "handed_over": self.handed_over}


def hls_front(hls: HlsOutput, counts: FrontCounts) -> Callable[..., asyncio.Protocol]:
    """The connection protocol to give ``uvicorn.Config(http=...)``: media playlists and segments
    of ``hls`` answered in the protocol, every other request by uvicorn's httptools protocol."""

    def make(config: Any, server_state: Any, app_state: dict[str, Any],
             _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        return _HlsFront(hls, counts, config, server_state, app_state)

    return make


class _HlsFront(asyncio.Protocol):
    """One HTTP connection until its first request that is not a plain playlist or segment GET."""

    def __init__(self, hls: HlsOutput, counts: FrontCounts, config: Any, server_state: Any,
                 app_state: dict[str, Any]) -> None:
        self.hls = hls
        self.counts = counts
        self.config = config
        self.server_state = server_state  # uvicorn's: its connections (shut down on exit), headers
        self.app_state = app_state
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.active = 0.0  # loop time of the last request
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)
        self.active = self.loop.time()
        self.timer = self.loop.call_later(self.config.timeout_keep_alive, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def shutdown(self) -> None:
        """uvicorn is stopping: every answer is already written, so close."""
        if self.transport is not None:
            self.transport.close()

    def _idle(self) -> None:
        """Close a keep-alive connection idle for uvicorn's ``timeout_keep_alive``, as uvicorn does."""
        idle = self.loop.time() - self.active
        if idle >= self.config.timeout_keep_alive:
            self.shutdown()
        else:
            self.timer = self.loop.call_later(self.config.timeout_keep_alive - idle, self._idle)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        self.active = self.loop.time()
        try:
            while self.buf:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEAD:
                        self._hand_over()
                    return
                if not self._answer(self.buf[:end]):
                    self._hand_over()
                    return
                self.buf = self.buf[end + 4:]
        except Exception:  # noqa: BLE001 - uvicorn answers what this protocol could not
            log.exception("HLS front: handing the connection to uvicorn after an error")
            self._hand_over()

    def _answer(self, head: bytes) -> bool:
        """Write the answer to ``head`` (a request without a body) and return True, or False to
        leave the request to uvicorn."""
        lines = head.split(b"\r\n")
        request = lines[0].split(b" ")
        if len(request) != 3 or request[2] != b"HTTP/1.1" or request[0] not in (b"GET", b"HEAD"):
            return False
        path = request[1].split(b"?", 1)[0]
        if not path.startswith(b"/stream/") or b"%" in path or not path.isascii():
            return False
        cors = False
        for line in lines[1:]:
            name = line[:20].lower()
            if name.startswith(_NOT_PLAIN):
                return False
            if name.startswith(b"connection:") and line[11:].strip().lower() != b"keep-alive":
                return False
            cors = cors or name.startswith(b"origin:")
        answer = answer_hls(self.hls, path[8:].decode("ascii"))
        if answer is None:
            return False
        body, headers = answer
        out = [b"HTTP/1.1 200 OK\r\n"]
        for name, value in (*self.server_state.default_headers, *headers, *(_CORS_HEADERS if cors else ())):
            out += (name, b": ", value, b"\r\n")
        out.append(b"content-length: %d\r\n\r\n" % len(body))
        if request[0] == b"GET":
            out.append(body)  # HEAD (RFC 9110 9.3.2): the GET's headers, no content
        assert self.transport is not None
        self.transport.write(b"".join(out))
        self.counts.answered += 1
        return True

    def _hand_over(self) -> None:
        """uvicorn's protocol takes the connection from here, starting with the bytes held."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server_state.connections.discard(self)
        self.counts.handed_over += 1
        transport, held, self.buf = self.transport, self.buf, b""
        assert transport is not None
        inner = HttpToolsProtocol(config=self.config, server_state=self.server_state, app_state=self.app_state)
        transport.set_protocol(inner)
        inner.connection_made(transport)
        if held:
            inner.data_received(held)
