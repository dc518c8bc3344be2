"""The gateway's side of the wire to one orchestrator: gRPC over pinned TLS and HTTPS ``/segment``.

Timeouts follow go-livepeer: gRPC dial 3 s and call 8 s; a segment's early 200 within
max(2 s, 0.5 x duration) after its upload, the whole call within max(8 s, 4 x duration).
Errors surface as :class:`~streamgw.errors.OrchestratorError` subclasses, classified by type,
or as :class:`~streamgw.errors.SegmentRejected` when the orchestrator blames the segment itself.
go-livepeer reports transcode failures only as text in ``TranscodeResult.error`` (WIRE.md §6), so
this module is where those texts become types (:func:`result_error`), in one table.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import grpc.aio
import httpcore  # noqa: F401 - httpx imports it (and trio) on first use: ~0.2 s that must not stall the loop
import httpx

from streamgw.errors import (
    OrchestratorBusy,
    OrchestratorError,
    OrchestratorUnavailable,
    SegmentRejected,
    StreamgwError,
    TranscodeResultError,
)
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer import lp_rpc_pb2_grpc as pb_grpc
from streamgw.livepeer.capabilities import Capabilities
from streamgw.livepeer.segdata import (
    PAYMENT_HEADER,
    SEGMENT_HEADER,
    SegMetadata,
    build_segdata,
    encode_segdata_header,
    orchestrator_request,
    parse_transcode_result,
)
from streamgw.livepeer.signing import MessageSigner
from streamgw.livepeer.tls import CertificatePins, PinnedCertificate

log = logging.getLogger(__name__)

GRPC_CONNECT_TIMEOUT = 3.0
GRPC_CALL_TIMEOUT = 8.0

INVALID_INPUT = "TranscoderInvalidInput"
"""lpms's text for input it cannot transcode; streamgw's orchestrator sends ``INVALID_INPUT: detail``."""

# TranscodeResult.error texts, by what they mean. Only the text before the first ":" is compared.
# "Full, not broken": go-livepeer swaps orchestrator on these (server/broadcast.go sessionErrStrings).
BUSY_ERRORS = frozenset({"OrchestratorBusy", "OrchestratorCapped"})
# "The segment, not the orchestrator": lpms's non-retryable errors that describe the input
# (lpms ffmpeg/ffmpeg.go ErrTranscoder*, ffmpeg/errors.go lpmsErrors and NonRetryableErrs). Not
# FFmpeg's generic "Invalid argument", which an orchestrator's own bug gives as well. Every other
# text (MediaStats Failure, ZeroSegments, ...) is the orchestrator's failure.
SEGMENT_ERRORS = frozenset({
    INVALID_INPUT, "TranscoderInvalidVideo", "TranscoderInvalidPixelformat", "EmptyData",
    "Unsupported input pixel format", "Unsupported input codec", "No keyframes in input",
    "Decoder not found", "Demuxer not found",
})


def result_error(url: str, result: pb.TranscodeResult) -> StreamgwError | None:
    """The error a ``TranscodeResult`` reports, as its type: busy, the segment's fault, or the orchestrator's."""
    if result.WhichOneof("result") != "error":
        return None
    text = result.error.strip()
    head = text.split(":", 1)[0].strip()
    if head in BUSY_ERRORS:
        return OrchestratorBusy(f"{url}: {text}")
    if head in SEGMENT_ERRORS:
        return SegmentRejected(f"{url}: {text}")
    return OrchestratorError(f"{url}: transcode failed: {text}")


def segment_deadlines(duration_s: float) -> tuple[float, float]:
    """(early-200 deadline after upload, whole-call deadline) for a segment of ``duration_s``."""
    return max(2.0, 0.5 * duration_s), max(8.0, 4.0 * duration_s)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "https://" + url)
    if not parts.hostname:
        raise OrchestratorError(f"invalid orchestrator address {url!r}")
    return parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)


@dataclass(frozen=True, slots=True)
class SegmentAnswer:
    """An orchestrator's answer to one segment and how long each phase took."""

    result: pb.TranscodeResult
    upload_seconds: float  # until the early 200
    total_seconds: float


class OrchestratorClient:
    """Talks to one orchestrator, given as its URL (``https://HOST:PORT``)."""

    def __init__(self, url: str, signer: MessageSigner, pins: CertificatePins) -> None:
        self.url = url.rstrip("/") if "://" in url else "https://" + url.rstrip("/")
        self.host, self.port = _host_port(self.url)
        self.signer = signer
        self.pins = pins
        self._channel: grpc.aio.Channel | None = None
        self._channel_pin: PinnedCertificate | None = None
        self._http: dict[str, tuple[PinnedCertificate, httpx.AsyncClient]] = {}

    async def _grpc(self, refresh: bool) -> pb_grpc.OrchestratorStub:
        pin = await self.pins.pin(self.host, self.port, refresh=refresh)
        if self._channel is None or pin != self._channel_pin:
            if self._channel is not None:
                await self._channel.close()
            creds = grpc.ssl_channel_credentials(root_certificates=pin.pem)
            self._channel = grpc.aio.secure_channel(
                f"{self.host}:{self.port}", creds,
                options=[("grpc.ssl_target_name_override", pin.server_name),
                         ("grpc.max_receive_message_length", 4 * 1024 * 1024)],
            )
            self._channel_pin = pin
        return pb_grpc.OrchestratorStub(self._channel)  # type: ignore[no-untyped-call]

    async def get_orchestrator(self, capabilities: Capabilities | None = None) -> pb.OrchestratorInfo:
        """``GetOrchestrator``: session, price, capabilities and where to send segments."""
        request = orchestrator_request(self.signer, capabilities)
        for attempt in range(2):
            try:
                stub = await self._grpc(refresh=attempt > 0)
                info: pb.OrchestratorInfo = await stub.GetOrchestrator(request, timeout=GRPC_CALL_TIMEOUT)
                return info
            except grpc.aio.AioRpcError as exc:
                # An orchestrator restarted with a new certificate fails the handshake: re-pin once.
                if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt == 0:
                    continue
                details = exc.details() or ""
                # go-livepeer: "Invalid orchestrator request: OrchestratorCapped" (no session free).
                if details.rsplit(":", 1)[-1].strip() in BUSY_ERRORS:
                    raise OrchestratorBusy(f"{self.url}: GetOrchestrator: {details}") from exc
                raise OrchestratorUnavailable(f"{self.url}: GetOrchestrator: {details}") from exc
            except OrchestratorError:
                raise
            except Exception as exc:  # ProtocolError from pinning, OSError
                raise OrchestratorUnavailable(f"{self.url}: {exc}") from exc
        raise OrchestratorUnavailable(f"{self.url}: unreachable")  # pragma: no cover

    async def _http_client(self, url: str, refresh: bool) -> httpx.AsyncClient:
        host, port = _host_port(url)
        key = f"{host}:{port}"
        pin = await self.pins.pin(host, port, refresh=refresh)
        current = self._http.get(key)
        if current is not None and current[0] == pin:
            return current[1]
        if current is not None:
            await current[1].aclose()
        client = httpx.AsyncClient(verify=pin.ssl_context(), timeout=httpx.Timeout(10.0))
        self._http[key] = (pin, client)
        return client

    async def submit(self, info: pb.OrchestratorInfo, meta: SegMetadata, data: bytes,
                     duration_s: float) -> SegmentAnswer:
        """POST one segment to ``info.transcoder``/segment and read its successful ``TranscodeResult``.

        A result that reports an error raises it as its type (:func:`result_error`):
        :class:`OrchestratorBusy`, :class:`SegmentRejected`, or :class:`OrchestratorError`.
        """
        segdata = build_segdata(meta, self.signer)
        headers = {
            SEGMENT_HEADER: encode_segdata_header(segdata),
            PAYMENT_HEADER: "",  # offchain: an empty Payment
            "Content-Type": "video/MP2T",
        }
        url = info.transcoder.rstrip("/") + "/segment"
        early, total = segment_deadlines(duration_s)
        # Allow the upload itself at a conservative 1 MB/s on top of the early-200 deadline.
        early += len(data) / 1_000_000
        started = time.monotonic()
        for attempt in range(2):
            try:
                client = await self._http_client(url, refresh=attempt > 0)
                request = client.build_request("POST", url, content=data, headers=headers)
                response = await asyncio.wait_for(client.send(request, stream=True), early)
                break
            except ssl.SSLError as exc:
                if attempt == 0:
                    continue
                raise OrchestratorUnavailable(f"{url}: TLS: {exc}") from exc
            except httpx.ConnectError as exc:
                if attempt == 0 and "CERTIFICATE" in str(exc).upper():
                    continue
                raise OrchestratorUnavailable(f"{url}: dial tcp: {exc}") from exc
            except TimeoutError as exc:
                raise OrchestratorUnavailable(f"{url}: no answer within {early:.1f} s of the upload") from exc
            except httpx.HTTPError as exc:
                raise OrchestratorUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
        upload = time.monotonic() - started
        try:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace").strip()
                raise OrchestratorError(f"{url}: HTTP {response.status_code}: {text}")
            remaining = max(0.1, total - upload)
            body = await asyncio.wait_for(response.aread(), remaining)
        except TimeoutError as exc:
            raise OrchestratorUnavailable(f"{url}: no result within {total:.1f} s") from exc
        except httpx.HTTPError as exc:
            raise OrchestratorUnavailable(f"{url}: unexpected EOF: {exc}") from exc
        finally:
            await response.aclose()
        try:
            result = parse_transcode_result(body)
        except TranscodeResultError as exc:
            raise OrchestratorError(f"{url}: {exc}") from exc
        error = result_error(self.url, result)
        if error is not None:
            raise error
        return SegmentAnswer(result, upload, time.monotonic() - started)

    async def download(self, url: str, timeout: float) -> bytes:
        """GET a rendition the orchestrator stored."""
        try:
            client = await self._http_client(url, refresh=False)
            response = await asyncio.wait_for(client.get(url), timeout)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            raise OrchestratorUnavailable(f"{url}: download failed: {exc!r}") from exc
        if response.status_code != 200:
            raise OrchestratorError(f"{url}: download: HTTP {response.status_code}")
        return response.content

    async def close(self) -> None:
        """Close the channel and HTTP clients."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        for _, client in self._http.values():
            await client.aclose()
        self._http.clear()
