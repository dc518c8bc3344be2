"""HTTP/2 as go-livepeer gateways use it: a refused upload keeps its connection; TLS closes log nothing.

hypercorn issue 329: a response sent before the request body is read left later DATA frames to a
``KeyError`` that closed the whole connection. The node tests use httpx with ``http2=True`` (it
sends the whole body before reading the answer); the raw-h2 tests send what Go's transport sends
(a few DATA frames in flight after the answer, then RST_STREAM).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol

from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities, Capability, job_capabilities
from streamgw.livepeer.client import OrchestratorClient
from streamgw.livepeer.profiles import PRESETS
from streamgw.livepeer.segdata import (
    AuthToken,
    SegMetadata,
    build_segdata,
    encode_segdata_header,
    parse_transcode_result,
    result_renditions,
)
from streamgw.livepeer.signing import Signer, keccak256
from streamgw.livepeer.tls import CertificatePins, ensure_certificate
from streamgw.net import tcp_listener
from streamgw.orchestrator.grpc_asgi import Receive, Scope, Send
from streamgw.orchestrator.h2server import serve_tls
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from tests.conftest import FFMPEG

PROFILES = (PRESETS["P144p30fps16x9"],)
GATEWAY_KEY = b"\x11" * 32
MB2 = 2 * 1024 * 1024
TS_NULL_PACKET = b"\x47\x1f\xff\x10" + b"\xff" * 184  # PID 0x1FFF: demuxers skip it (ISO 13818-1 2.4.3.3)


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One 1 s 320x180 H.264 MPEG-TS segment."""
    path = tmp_path_factory.mktemp("media") / "seg.ts"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=30", "-t", "1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", "30", "-pix_fmt", "yuv420p", "-f", "mpegts", str(path)], check=True, timeout=60)
    return path.read_bytes()


def _header(info: pb.OrchestratorInfo, body: bytes, signer: Signer, **kw: Any) -> str:
    meta = SegMetadata(manifest_id=b"h2", seq=kw.pop("seq", 0), seg_hash=keccak256(body), profiles=PROFILES,
                       duration_ms=1000, capabilities=kw.pop("capabilities", job_capabilities(PROFILES)),
                       auth_token=AuthToken.from_proto(info.auth_token))
    return encode_segdata_header(build_segdata(meta, signer))


def _headers(segdata: str) -> dict[str, str]:
    return {"Livepeer-Segment": segdata, "Livepeer-Payment": "", "Content-Type": "video/MP2T"}


@contextlib.asynccontextmanager
async def _node(tmp: Path) -> AsyncIterator[tuple[pb.OrchestratorInfo, httpx.AsyncClient]]:
    """A node, credentials from GetOrchestrator, and an HTTP/2 client holding at most one connection."""
    node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp, transcode_workers=1))
    await node.start()
    client = OrchestratorClient(node.url, Signer(GATEWAY_KEY), CertificatePins())
    try:
        info = await client.get_orchestrator(job_capabilities(PROFILES))
        pin = await client.pins.pin(client.host, client.port)
        async with httpx.AsyncClient(http2=True, verify=pin.ssl_context(), timeout=20,
                                     limits=httpx.Limits(max_connections=1)) as http:
            yield info, http
    finally:
        await client.close()
        await node.close()


def _assert_one_connection(*responses: httpx.Response) -> None:
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert len({id(r.extensions["network_stream"]) for r in responses}) == 1, "all on one connection"


def _assert_transcoded(r: httpx.Response, seq: int) -> None:
    assert r.status_code == 200, r.text
    result = parse_transcode_result(r.content)
    assert result.seq == seq and result.WhichOneof("result") == "data", result
    assert [x.url.rsplit("/", 2)[1] for x in result_renditions(result)] == [p.name for p in PROFILES]


def test_refused_upload_then_good_upload_on_one_connection(tmp_path: Path, segment: bytes) -> None:
    async def main() -> None:
        async with _node(tmp_path) as (info, http):
            url = info.transcoder + "/segment"
            big = os.urandom(MB2)
            forged = _header(info, big, Signer(b"\x33" * 32))  # not the key that opened the session
            refused = await http.post(url, content=big, headers=_headers(forged))
            assert (refused.status_code, refused.text) == (403, "ErrSegSig\n")
            good = await http.post(url, content=segment, headers=_headers(_header(info, segment,
                                                                                  Signer(GATEWAY_KEY), seq=1)))
            _assert_transcoded(good, 1)
            _assert_one_connection(refused, good)

    asyncio.run(main())


def test_refusal_mid_upload_leaves_the_other_stream_alone(tmp_path: Path, segment: bytes) -> None:
    async def main() -> None:
        async with _node(tmp_path) as (info, http):
            url = info.transcoder + "/segment"
            warm = await http.get(info.transcoder + "/stream/00/none/0.ts")  # opens the one connection
            assert warm.status_code == 404
            good = segment + TS_NULL_PACKET * ((MB2 - len(segment)) // 188)
            half_sent, go_on = asyncio.Event(), asyncio.Event()

            async def slow_body() -> AsyncIterator[bytes]:
                for i in range(0, len(good), 64 * 1024):
                    if i >= len(good) // 2 and not half_sent.is_set():
                        half_sent.set()
                        await go_on.wait()
                    yield good[i:i + 64 * 1024]

            pending = asyncio.create_task(http.post(url, content=slow_body(), headers=_headers(
                _header(info, good, Signer(GATEWAY_KEY), seq=2))))
            await asyncio.wait_for(half_sent.wait(), 10)
            hevc = Capabilities.from_ids({*job_capabilities(PROFILES).ids, Capability.HEVC_ENCODE})
            big = os.urandom(MB2)
            refused = await http.post(url, content=big, headers=_headers(
                _header(info, big, Signer(GATEWAY_KEY), seq=3, capabilities=hevc)))
            assert (refused.status_code, refused.text) == (403, "incompatible capabilities\n")
            go_on.set()
            completed = await pending
            _assert_transcoded(completed, 2)
            _assert_one_connection(warm, refused, completed)

    asyncio.run(main())


# --- serve_tls on its own: a small app, raw HTTP/2 clients ---


App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _answer(send: Send, status: int, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length",
                                                                              str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def refusing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/refuse``: 403 before reading (``-later``: after a while); ``/limit``: 413 after 256 KiB; else 200."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/limit":
        read = 0
        while read <= 256 * 1024:
            message = await receive()
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await _answer(send, 413, b"too large\n")
    elif scope["path"] == "/refuse":
        await _answer(send, 403, b"refused\n")
    elif scope["path"] == "/refuse-later":  # as a refusal that awaits a check would
        await asyncio.sleep(0.3)
        await _answer(send, 403, b"refused\n")
    elif scope["path"] == "/fail":
        raise RuntimeError("a bug in the app")
    else:
        await _answer(send, 200, b"ok\n")


class Server:
    """serve_tls on a free 127.0.0.1 port with a fresh certificate."""

    def __init__(self, tmp: Path, app: App, **kw: Any) -> None:
        self.cert, key = ensure_certificate(tmp, "127.0.0.1")
        self.config = Config()
        self.config.certfile, self.config.keyfile = str(self.cert), str(key)
        self.config.alpn_protocols = ["h2", "http/1.1"]
        self.config.accesslog = None
        self.config.errorlog = logging.getLogger("hypercorn.error")
        self.config.graceful_timeout = 1.0
        self.config.keep_alive_timeout = kw.pop("keep_alive_timeout", 30.0)
        self.app, self.kw = app, kw
        self.stop = asyncio.Event()
        self.port = 0
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Server:
        sock = tcp_listener("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.kw.setdefault("ssl_shutdown_timeout", 1.0)
        self.task = asyncio.create_task(serve_tls(self.app, self.config, sock, shutdown_trigger=self.stop.wait,
                                                  **self.kw))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["h2"])
        return ctx


class RawH2:
    """A bare HTTP/2 client over TLS that sends exactly the frames a test asks for."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.events: list[h2.events.Event] = []

    @classmethod
    async def connect(cls, server: Server) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=server.client_context())
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer)
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def request(self, method: str, path: str, *, end_stream: bool) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(b":method", method.encode()), (b":scheme", b"https"),
                                           (b":authority", b"127.0.0.1"), (b":path", path.encode())],
                               end_stream=end_stream)
        await self.flush()
        return stream_id

    def was_reset(self, stream_id: int) -> bool:
        return any(isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id for e in self.events)

    async def send(self, stream_id: int, size: int) -> None:
        """Send ``size`` body bytes as flow control allows, reading the server's frames meanwhile.

        Stops early if the server resets the stream.
        """
        while size > 0 and not self.was_reset(stream_id):
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                await self.read()
                continue
            chunk = min(window, size)
            self.conn.send_data(stream_id, b"\0" * chunk)
            size -= chunk
            await self.flush()

    async def read(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), 5)
        if not data:
            raise ConnectionError("server closed the connection")
        self.events += self.conn.receive_data(data)
        await self.flush()

    async def until(self, predicate: Callable[[h2.events.Event], bool]) -> h2.events.Event:
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            await self.read()

    async def response(self, stream_id: int) -> tuple[int, bytes]:
        """Status and body of a stream, once it has ended."""
        await self.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id)
        status, body = 0, b""
        for event in self.events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = int(dict(event.headers or [])[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                body += event.data or b""
        return status, body

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def test_go_style_refusal_data_in_flight_then_reset(tmp_path: Path) -> None:
    """Go stops uploading on a status above 299 and resets; DATA already in flight still arrives."""
    async def main() -> None:
        async with Server(tmp_path, refusing_app) as server:
            client = await RawH2.connect(server)
            refused = await client.request("POST", "/refuse", end_stream=False)
            await client.send(refused, 16 * 1024)
            assert await client.response(refused) == (403, b"refused\n")
            await client.send(refused, 32 * 1024)  # in flight when the answer came
            client.conn.reset_stream(refused, h2.errors.ErrorCodes.CANCEL)
            await client.flush()
            after = await client.request("GET", "/", end_stream=True)
            assert await client.response(after) == (200, b"ok\n")
            await client.close()

    asyncio.run(main())


def test_answer_after_a_prefix_while_the_client_keeps_sending(tmp_path: Path) -> None:
    """The 413 path: the app stops reading at its bound and answers; the upload goes on regardless."""
    async def main() -> None:
        async with Server(tmp_path, refusing_app) as server:
            ctx = server.client_context()
            async with httpx.AsyncClient(http2=True, verify=ctx, timeout=10) as http:
                base = f"https://127.0.0.1:{server.port}"
                too_large = await http.post(base + "/limit", content=os.urandom(MB2))
                assert (too_large.status_code, too_large.text) == (413, "too large\n")
                after = await http.get(base + "/")
                assert (after.status_code, after.text) == (200, "ok\n")
                _assert_one_connection(too_large, after)

    asyncio.run(main())


def test_refusal_that_waits_does_not_hang_the_connection(tmp_path: Path) -> None:
    """The upload fills the app's request queue before the answer; the answer still goes out."""
    async def main() -> None:
        async with Server(tmp_path, refusing_app) as server:
            async with httpx.AsyncClient(http2=True, verify=server.client_context(), timeout=5) as http:
                base = f"https://127.0.0.1:{server.port}"
                refused = await http.post(base + "/refuse-later", content=os.urandom(MB2))
                assert (refused.status_code, refused.text) == (403, "refused\n")
                after = await http.get(base + "/")
                assert (after.status_code, after.text) == (200, "ok\n")
                _assert_one_connection(refused, after)

    asyncio.run(main())


def test_discarding_is_bounded_then_the_stream_is_reset(tmp_path: Path) -> None:
    """Past discard_limit bytes after the answer the stream is reset with NO_ERROR; the connection lives."""
    async def main() -> None:
        async with Server(tmp_path, refusing_app, discard_limit=128 * 1024) as server:
            client = await RawH2.connect(server)
            refused = await client.request("POST", "/refuse", end_stream=False)
            await client.send(refused, 16 * 1024)
            assert await client.response(refused) == (403, b"refused\n")
            sent = 0
            while not client.was_reset(refused):
                assert sent < 4 * 1024 * 1024, "the server never reset the stream"
                await client.send(refused, 16 * 1024)
                sent += 16 * 1024
            reset = await client.until(lambda e: isinstance(e, h2.events.StreamReset))
            assert isinstance(reset, h2.events.StreamReset) and reset.stream_id == refused
            # Reset once the bound is passed; the client may have had its window's worth in flight.
            assert reset.error_code == h2.errors.ErrorCodes.NO_ERROR and 128 * 1024 < sent <= 256 * 1024
            after = await client.request("GET", "/", end_stream=True)
            assert await client.response(after) == (200, b"ok\n")
            await client.close()

    asyncio.run(main())


def test_unanswered_tls_close_logs_no_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An idle client that never reads (an idle pooled connection) does not answer our close_notify."""
    async def main() -> None:
        loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
        async with Server(tmp_path, refusing_app, keep_alive_timeout=0.2, ssl_shutdown_timeout=0.3) as server:
            ctx = server.client_context()
            async with httpx.AsyncClient(http2=True, verify=ctx, timeout=10) as http:
                assert (await http.get(f"https://127.0.0.1:{server.port}/")).status_code == 200
                # Idle now: the server closes at 0.2 s and waits 0.3 s for a close_notify that never comes.
                for _ in range(40):
                    if any("TLS close" in r.getMessage() for r in caplog.records):
                        break
                    await asyncio.sleep(0.1)
        assert [(c.get("message"), repr(c.get("exception"))) for c in loop_errors] == []
        assert any(r.levelno == logging.DEBUG and "TLS close" in r.getMessage() and "TimeoutError" in r.getMessage()
                   for r in caplog.records), "the server did not cut the silent peer off"

    with caplog.at_level(logging.DEBUG, logger="streamgw.orchestrator.h2server"):
        asyncio.run(main())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_app_errors_are_still_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Server(tmp_path, refusing_app) as server:
            async with httpx.AsyncClient(http2=True, verify=server.client_context(), timeout=10) as http:
                assert (await http.get(f"https://127.0.0.1:{server.port}/fail")).status_code == 500

    with caplog.at_level(logging.ERROR, logger="hypercorn.error"):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.name == "hypercorn.error" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


# What streamgw.orchestrator.h2server copies from or overrides in hypercorn 0.18.0. When an upgrade
# changes one, read the new code and carry its changes over (or drop the fix if upstream has it),
# then update the digest.
HYPERCORN_CODE = {
    TCPServer.run: "9437d01a916d887b",
    TCPServer._close: "ea76225e14315206",
    ProtocolWrapper.__init__: "df25e181b9e2e64d",
    ProtocolWrapper.handle: "b03e2962872c85e8",
    H2Protocol._handle_events: "3378aef0a2348f0d",
    TaskGroup.spawn_app: "6606faaadfc368e3",
    hypercorn_run.worker_serve: "ae30269c42b95442",
}


def test_hypercorn_code_we_build_on_is_unchanged() -> None:
    digests = {fn.__qualname__: hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
               for fn in HYPERCORN_CODE}
    assert digests == {fn.__qualname__: digest for fn, digest in HYPERCORN_CODE.items()}
