"""HLS media playlists and segments served in front of the FastAPI app: the requests players repeat.

A player asks for its media playlist every second or so and for each segment once; a gateway
with many viewers answers little else. FastAPI's routing, parameter validation and response
classes cost ~0.5 ms of CPU per request, several times what the answer itself does. This ASGI
layer answers ``GET``/``HEAD /stream/NAME/RENDITION.m3u8`` and ``/stream/NAME/RENDITION/SEGMENT``
straight from :class:`~streamgw.output.hls.HlsOutput` (playlist text rendered once per change)
with the same headers the routes give, CORS included; everything else, 404s among them, goes on
to the app, whose routes stay the documented API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from streamgw.output.hls import HlsOutput

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
            answer = self._answer(scope["path"][8:])
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

    def _answer(self, rest: str) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        parts = rest.split("/")
        if len(parts) == 2 and parts[1].endswith(".m3u8"):
            text = self.hls.media_playlist_bytes(parts[0], parts[1][:-5])
            return (text, _PLAYLIST_HEADERS) if text is not None else None
        if len(parts) == 3 and parts[2]:
            data = self.hls.segment(parts[0], parts[1], parts[2])
            return (data, _SEGMENT_HEADERS) if data is not None else None
        return None
