"""The orchestrator's gRPC router: a handler's unexpected error is logged with the method, answered INTERNAL."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import pytest

from streamgw.livepeer import lp_rpc_pb2
from streamgw.orchestrator.grpc_asgi import INTERNAL, INVALID_ARGUMENT, OK, GrpcRouter, Message, Scope

METHOD = "/net.Orchestrator/GetOrchestrator"


def _call(router: GrpcRouter, body: bytes) -> list[Message]:
    """One unary call through the router's ASGI interface, as hypercorn makes it; returns what it sent."""
    scope: Scope = {"type": "http", "http_version": "2", "method": "POST", "path": METHOD,
                    "headers": [(b"content-type", b"application/grpc")], "client": ("127.0.0.1", 40000)}
    sent: list[Message] = []
    chunks = [body]

    async def receive() -> Message:
        return {"type": "http.request", "body": chunks.pop(0) if chunks else b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(router(scope, receive, send))
    return sent


def _status(sent: list[Message]) -> tuple[int, str]:
    trailers = dict(next(m for m in sent if m["type"] == "http.response.trailers")["headers"])
    return int(trailers[b"grpc-status"]), trailers[b"grpc-message"].decode()


def _framed(message: Any) -> bytes:
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def test_a_failing_handler_is_logged_with_its_method(caplog: pytest.LogCaptureFixture) -> None:
    router = GrpcRouter()

    async def broken(request: lp_rpc_pb2.OrchestratorRequest, scope: Scope) -> lp_rpc_pb2.OrchestratorInfo:
        raise KeyError("price table")

    router.unary(METHOD, lp_rpc_pb2.OrchestratorRequest, broken)
    with caplog.at_level(logging.ERROR, logger="streamgw.orchestrator.grpc_asgi"):
        sent = _call(router, _framed(lp_rpc_pb2.OrchestratorRequest(address=bytes(20))))
    code, message = _status(sent)
    assert code == INTERNAL and message == "internal error: KeyError"  # no internals for the caller
    (record,) = caplog.records
    assert METHOD in record.getMessage() and "127.0.0.1:40000" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_a_malformed_request_is_the_callers_fault(caplog: pytest.LogCaptureFixture) -> None:
    router = GrpcRouter()
    calls: list[object] = []

    async def handler(request: lp_rpc_pb2.OrchestratorRequest, scope: Scope) -> lp_rpc_pb2.OrchestratorInfo:
        calls.append(request)
        return lp_rpc_pb2.OrchestratorInfo(transcoder="https://127.0.0.1:1")

    router.unary(METHOD, lp_rpc_pb2.OrchestratorRequest, handler)
    with caplog.at_level(logging.WARNING):
        garbage = b"\xff\xff\xff\xff"
        code, message = _status(_call(router, struct.pack(">BI", 0, len(garbage)) + garbage))
    assert code == INVALID_ARGUMENT and "cannot parse" in message
    assert not calls and not caplog.records

    code, _ = _status(_call(router, _framed(lp_rpc_pb2.OrchestratorRequest())))
    assert code == OK and len(calls) == 1
