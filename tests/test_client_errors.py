"""Errors by type at the client's boundary (issue 10, point 3): the dial timeout, TLS failures, busy texts.

Real sockets on 127.0.0.1: a listener that answers TLS with a certificate of our making and, once
silenced, accepts TCP and never answers (what a hung orchestrator looks like); real orchestrator
nodes for the certificate that changes under a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import httpx
import pytest

from streamgw.errors import OrchestratorBusy, OrchestratorError, OrchestratorUnavailable, StreamgwError
from streamgw.gateway.discovery import OrchestratorPool
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import job_capabilities
from streamgw.livepeer.client import (
    DIAL_TIMEOUT,
    GRPC_CALL_TIMEOUT,
    OrchestratorClient,
    http_error,
    tls_failure,
)
from streamgw.livepeer.profiles import PRESETS
from streamgw.livepeer.segdata import AuthToken, SegMetadata
from streamgw.livepeer.signing import Signer, keccak256
from streamgw.livepeer.tls import CertificatePins, PinnedCertificate, ensure_certificate
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from tests.conftest import FFMPEG
from tests.media import cut_bytes

SIGNER = Signer(b"\x33" * 32)
PROFILES = (PRESETS["P144p30fps16x9"],)
# A dial that ends at the 3 s timeout, not at a call's (8 s) or a segment's (here 5 s).
DIAL_BOUND = (DIAL_TIMEOUT - 0.5, DIAL_TIMEOUT + 1.5)


class TlsOrSilent:
    """A TCP listener on a free 127.0.0.1 port: answers the TLS handshake, or when ``silent``
    accepts the connection and never answers (reads nothing back, sends nothing)."""

    def __init__(self, cert_dir: Path) -> None:
        cert, key = ensure_certificate(cert_dir, "127.0.0.1")
        self.pem = cert.read_bytes()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.silent = False
        self.accepted = 0
        self._closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> TlsOrSilent:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            if not self.silent:
                await writer.start_tls(self.context)
                await reader.read(1)  # until the peer closes
            else:
                await self._closing.wait()
        except (ssl.SSLError, OSError):
            pass
        finally:
            writer.close()


def _meta() -> SegMetadata:
    return SegMetadata(manifest_id=b"s", seq=0, seg_hash=keccak256(b"x"), profiles=PROFILES, duration_ms=10_000,
                       capabilities=job_capabilities(PROFILES), auth_token=AuthToken(b"\x00" * 32, "s", 2**40))


async def _timed(call: Awaitable[object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await call
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_dial_to_a_silent_orchestrator_gives_up_at_3_s(tmp_path: Path) -> None:
    """gRPC, the segment upload and a download: OrchestratorUnavailable at the dial timeout, not later."""

    async def main() -> None:
        async with TlsOrSilent(tmp_path / "cert") as server:
            pins = CertificatePins()
            await pins.pin("127.0.0.1", server.port)  # it answered once: its certificate is pinned
            server.silent = True  # then hangs: every connection is accepted and left unanswered
            grpc_client = OrchestratorClient(server.url, SIGNER, pins)
            http_client = OrchestratorClient(server.url, SIGNER, pins)
            info = pb.OrchestratorInfo(transcoder=server.url)
            # A 10 s segment: its early-200 deadline (5 s) and whole deadline (40 s) come after the dial's.
            try:
                results = await asyncio.gather(
                    _timed(grpc_client.get_orchestrator()),
                    _timed(http_client.submit(info, _meta(), b"\x47" * 188, 10.0)),
                    _timed(http_client.download(server.url + "/stream/s/x/0.ts", 20.0)),
                )
            finally:
                await grpc_client.close()
                await http_client.close()
            for what, (error, seconds) in zip(("GetOrchestrator", "submit", "download"), results, strict=True):
                assert isinstance(error, OrchestratorUnavailable), (what, error)
                assert f"no connection within {DIAL_TIMEOUT:.0f} s" in str(error), (what, error)
                assert DIAL_BOUND[0] < seconds < DIAL_BOUND[1] < GRPC_CALL_TIMEOUT, (what, seconds)
            assert server.accepted >= 4, "TCP was accepted each time: the TLS handshake is what hung"

    asyncio.run(main())


def test_get_orchestrator_timeout_is_orchestrator_unavailable(tmp_path: Path) -> None:
    """The pool's discovery timeout ends GetOrchestrator inside the client, as OrchestratorUnavailable."""

    async def main() -> None:
        async with TlsOrSilent(tmp_path / "cert") as server:
            server.silent = True
            pool = OrchestratorPool(lambda url: OrchestratorClient(url, SIGNER, CertificatePins()),
                                    static=[server.url], discovery_timeout=1.0)
            try:
                error, seconds = await _timed(pool.orchestrator_info(server.url))
                assert isinstance(error, OrchestratorUnavailable), error
                assert "no GetOrchestrator answer within 1.0 s" in str(error)
                assert 0.8 < seconds < 2.0, seconds
                await pool.refresh()  # the background refresh records the same, as text for the API
                assert "no GetOrchestrator answer within 1.0 s" in (pool.records[server.url].last_error or "")
            finally:
                await pool.close()

    asyncio.run(main())


def test_tls_failure_is_found_by_type_through_httpx(tmp_path: Path) -> None:
    """httpx wraps the handshake's SSLCertVerificationError twice; a refused connection has none."""

    async def main() -> None:
        async with TlsOrSilent(tmp_path / "new") as server:
            other = PinnedCertificate(ensure_certificate(tmp_path / "old", "127.0.0.1")[0].read_bytes(), "127.0.0.1")
            async with httpx.AsyncClient(verify=other.ssl_context()) as http:
                with pytest.raises(httpx.ConnectError) as wrong_certificate:
                    await http.get(server.url + "/")
                port = server.port
        found = tls_failure(wrong_certificate.value)
        assert isinstance(found, ssl.SSLCertVerificationError), found
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError) as refused:
                await http.get(f"https://127.0.0.1:{port}/")  # closed now
        assert tls_failure(refused.value) is None
        # A loop in the chain ends the walk.
        a, b = ValueError("a"), ValueError("b")
        a.__context__, b.__context__ = b, a
        assert tls_failure(a) is None

    asyncio.run(main())


@contextlib.asynccontextmanager
async def _node(data_dir: Path, port: int = 0) -> AsyncIterator[OrchestratorNode]:
    node = OrchestratorNode(OrchestratorNodeSettings(serve_addr=f"127.0.0.1:{port}", data_dir=data_dir,
                                                     transcode_workers=1))
    await node.start()
    try:
        yield node
    finally:
        await node.close()


def test_segment_upload_repins_a_changed_certificate_once(tmp_path: Path) -> None:
    """An orchestrator back with a new certificate: the upload's TLS failure re-pins, and the segment goes."""
    flv = tmp_path / "src.flv"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x90:rate=30", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", "60", "-pix_fmt", "yuv420p", "-f", "flv", str(flv)], check=True, timeout=60)
    segment = cut_bytes(flv.read_bytes())[0][0]

    def meta(info: pb.OrchestratorInfo) -> SegMetadata:
        return SegMetadata(manifest_id=b"cam", seq=segment.seq, seg_hash=keccak256(segment.data),
                           profiles=PROFILES, duration_ms=2000, capabilities=job_capabilities(PROFILES),
                           auth_token=AuthToken.from_proto(info.auth_token))

    async def main() -> None:
        stale = CertificatePins()
        client = OrchestratorClient("https://127.0.0.1:1", SIGNER, stale)  # uploads only: the URL is info's
        try:
            async with _node(tmp_path / "a") as node:
                port = node.url.rsplit(":", 1)[1]
                first = OrchestratorClient(node.url, SIGNER, stale)
                info = await first.get_orchestrator(job_capabilities(PROFILES))
                await client.submit(info, meta(info), segment.data, 2.0)
                await first.close()
            old = stale.get("127.0.0.1", int(port))
            async with _node(tmp_path / "b", int(port)) as node:
                # A session from the restarted node, asked with pins of its own: only the upload
                # meets the new certificate with the old pin.
                fresh = OrchestratorClient(node.url, SIGNER, CertificatePins())
                info = await fresh.get_orchestrator(job_capabilities(PROFILES))
                await fresh.close()
                answer = await client.submit(info, meta(info), segment.data, 2.0)
                assert answer.result.WhichOneof("result") == "data"
                new = stale.get("127.0.0.1", int(port))
                assert old is not None and new is not None and new.pem != old.pem, "re-pinned"
        finally:
            await client.close()

    asyncio.run(main())


def test_busy_texts_become_types_at_the_client() -> None:
    """go-livepeer's 403 OrchestratorCapped (no session free) is busy; other refusals are failures."""
    url = "https://o:1/segment"
    assert type(http_error(url, 403, "OrchestratorCapped\n")) is OrchestratorBusy
    for status, body in ((403, "invalid auth token\n"), (403, "ErrSegSig"), (500, "Internal Server Error"),
                         (400, "OrchestratorCapped")):
        error = http_error(url, status, body)
        assert type(error) is OrchestratorError and body.strip() in str(error), (status, body)
    assert issubclass(OrchestratorBusy, StreamgwError)
