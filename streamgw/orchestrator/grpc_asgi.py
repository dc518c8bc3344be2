"""Unary gRPC over HTTP/2 as an ASGI app, so gRPC and HTTPS share one TLS port like go-livepeer.

A request goes to gRPC when it is HTTP/2 and its Content-Type starts with ``application/grpc``
(go-livepeer ``server/rpc.go:ServeHTTP``); everything else goes to the HTTP app. Framing follows
the gRPC over HTTP/2 spec (PROTOCOL-HTTP2.md): a 5-byte prefix (compressed flag, big-endian
length) per message, status in trailers.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# gRPC status codes (grpc/doc/statuscodes.md).
OK = 0
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13

MAX_MESSAGE = 4 * 1024 * 1024  # grpc's default receive limit


class GrpcStatusError(Exception):
    """Ends a call with a non-OK gRPC status and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtoMessage(Protocol):
    """The protobuf message methods the router needs."""

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...  # noqa: N802

    def ParseFromString(self, data: bytes) -> int: ...  # noqa: N802


Req = TypeVar("Req", bound=ProtoMessage)


@dataclass(frozen=True, slots=True)
class _Method(Generic[Req]):
    request_type: Callable[[], Req]
    handler: Callable[[Req, Scope], Awaitable[ProtoMessage]]


class GrpcRouter:
    """Dispatches unary gRPC calls by full method name (``/package.Service/Method``)."""

    def __init__(self) -> None:
        self._methods: dict[str, _Method[Any]] = {}

    def unary(
        self, path: str, request_type: Callable[[], Req], handler: Callable[[Req, Scope], Awaitable[ProtoMessage]]
    ) -> None:
        """Register ``handler(request, scope)`` for ``path``."""
        self._methods[path] = _Method(request_type, handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one call; a handler's unexpected exception is logged with the method and answered INTERNAL."""
        path = str(scope.get("path", "?"))
        try:
            body = await _read_body(receive, MAX_MESSAGE + 5)
            method = self._methods.get(path)
            if method is None:
                raise GrpcStatusError(UNIMPLEMENTED, f"unknown method {path}")
            request = method.request_type()
            try:
                request.ParseFromString(_unframe(body))
            except DecodeError as exc:
                raise GrpcStatusError(INVALID_ARGUMENT, f"cannot parse the request: {exc}") from exc
            timeout = _timeout(scope)
            response = await asyncio.wait_for(method.handler(request, scope), timeout)
            payload = response.SerializeToString()
        except GrpcStatusError as exc:
            await _respond(send, None, exc.code, exc.message)
            return
        except TimeoutError:
            await _respond(send, None, DEADLINE_EXCEEDED, "deadline exceeded")
            return
        except Exception as exc:
            # A bug, not the caller's fault: the caller gets INTERNAL, the operator the traceback.
            log.exception("gRPC %s from %s failed", path, _client(scope))
            await _respond(send, None, INTERNAL, f"internal error: {type(exc).__name__}")
            return
        await _respond(send, payload, OK, "")


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GrpcStatusError(UNKNOWN, "client disconnected")
        body += message.get("body", b"")
        if len(body) > limit:
            raise GrpcStatusError(RESOURCE_EXHAUSTED, f"message larger than {limit - 5} bytes")
        if not message.get("more_body", False):
            return bytes(body)


def _unframe(body: bytes) -> bytes:
    if len(body) < 5:
        raise GrpcStatusError(INVALID_ARGUMENT, "truncated gRPC message")
    compressed, length = struct.unpack_from(">BI", body)
    if compressed:
        raise GrpcStatusError(UNIMPLEMENTED, "compressed messages are not supported")
    if length != len(body) - 5:
        raise GrpcStatusError(INVALID_ARGUMENT, "gRPC message length mismatch")
    return body[5:]


_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def _timeout(scope: Scope) -> float | None:
    for name, value in scope.get("headers", []):
        if name == b"grpc-timeout" and len(value) >= 2 and value[:-1].isdigit():
            unit = _UNITS.get(value[-1:])
            if unit is not None:
                return int(value[:-1]) * unit
    return None


async def _respond(send: Send, payload: bytes | None, code: int, message: str) -> None:
    headers = [(b"content-type", b"application/grpc+proto")]
    trailers = [(b"grpc-status", str(code).encode()),
                (b"grpc-message", urllib.parse.quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
    body = b"" if payload is None else struct.pack(">BI", 0, len(payload)) + payload
    await send({"type": "http.response.body", "body": body, "more_body": False})
    await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


def multiplex(grpc: AsgiApp, http: AsgiApp) -> AsgiApp:
    """One ASGI app: HTTP/2 gRPC requests to ``grpc``, everything else to ``http``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("http_version") == "2":
            for name, value in scope.get("headers", []):
                if name == b"content-type" and value.startswith(b"application/grpc"):
                    await grpc(scope, receive, send)
                    return
        await http(scope, receive, send)

    return app
