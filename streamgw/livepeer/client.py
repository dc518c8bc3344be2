"""The gateway's side of the wire to one orchestrator: gRPC over pinned TLS and HTTPS ``/segment``.

Timeouts follow go-livepeer: a dial (TCP and TLS, gRPC or HTTPS) within 3 s, a gRPC call within
8 s; a segment's early 200 within max(2 s, 0.5 x duration) after its upload, the whole call within
max(8 s, 4 x duration).
Errors surface as :class:`~streamgw.errors.OrchestratorError` subclasses, classified by type,
or as :class:`~streamgw.errors.SegmentRejected` when the orchestrator blames the segment itself:
nothing past this module reads an error's text. go-livepeer reports transcode failures and a full
orchestrator only as text (``TranscodeResult.error``, a gRPC status's details, an HTTP body; WIRE.md
§2, §6), so this module is where those texts become types (:func:`result_error`, :func:`http_error`,
:func:`grpc_error`), in one table. A TLS failure is recognised by its type (:func:`tls_failure`)
and re-pins the orchestrator's certificate once: it may have restarted with a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio
import httpcore  # noqa: F401 - httpx imports it (and trio) on first use: ~0.2 s that must not stall the loop
import httpx
from google.protobuf.message import DecodeError

from streamgw.errors import (
    LiveAiRefused,
    OrchestratorBusy,
    OrchestratorError,
    OrchestratorUnavailable,
    ProtocolError,
    SegmentRejected,
    StreamgwError,
    TranscodeResultError,
)
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer import lp_rpc_pb2_grpc as pb_grpc
from streamgw.livepeer.capabilities import Capabilities, Capability, ai_job_capabilities
from streamgw.livepeer.segdata import (
    PAYMENT_HEADER,
    SEGMENT_HEADER,
    AuthToken,
    SegMetadata,
    build_segdata,
    encode_segdata_header,
    orchestrator_request,
    parse_transcode_result,
)
from streamgw.livepeer.signing import MessageSigner, keccak256
from streamgw.livepeer.tls import CertificatePins, PinnedCertificate

log = logging.getLogger(__name__)

DIAL_TIMEOUT = 3.0
"""Seconds to connect (TCP and the TLS handshake), gRPC or HTTPS: go-livepeer's gRPC dial timeout."""
GRPC_CALL_TIMEOUT = 8.0
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=DIAL_TIMEOUT)
MAX_ERROR_CHAIN = 16  # exceptions walked down __cause__ / __context__
MAX_ERROR_BODY = 4096  # bytes of an HTTP error's body read

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


def http_error(url: str, status: int, body: str) -> OrchestratorError:
    """A ``/segment`` answer other than 200, as its type: 403 ``OrchestratorCapped`` is busy, the rest a failure."""
    text = body.strip()
    if status == 403 and text.split(":", 1)[0].strip() in BUSY_ERRORS:
        return OrchestratorBusy(f"{url}: HTTP {status}: {text}")
    return OrchestratorError(f"{url}: HTTP {status}: {text}")


LIVE_START_TIMEOUT = 5.0  # go-livepeer's gateway gives the start call 5 s
PAYMENT_TIMEOUT = 60.0  # and a live payment 60 s
AI_WORKER_AUTH = "Livepeer-AI-Worker-1.0"  # the Authorization go-livepeer's gateway sends (the O never checks it)


@dataclass(frozen=True, slots=True)
class LiveChannels:
    """The trickle channels of a live stream on an orchestrator, as URLs from the gateway's view."""

    publish_url: str  # the input: one MPEG-TS segment per seq
    subscribe_url: str  # the output
    control_url: str  # one JSON message per seq
    events_url: str
    manifest_id: str  # the O's id for the stream (its balance key)


def live_channels(transcoder: str, reply: Any) -> LiveChannels:
    """The start reply's channels, as go-livepeer's gateway reads them: a host-less URL gets the
    O's transcoder in front; a missing ``control_url`` or ``events_url`` is an error."""
    if not isinstance(reply, dict):
        raise OrchestratorError(f"{transcoder}: live start: the reply is not a JSON object")

    def url(key: str, what: str) -> str:
        value = reply.get(key)
        if not isinstance(value, str) or not value:
            raise OrchestratorError(f"{transcoder}: live start: {what} URL is missing")
        return value if "://" in value else transcoder.rstrip("/") + "/" + value.lstrip("/")

    return LiveChannels(url("publish_url", "publish"), url("subscribe_url", "subscribe"),
                        url("control_url", "control"), url("events_url", "events"),
                        str(reply.get("manifest_id") or ""))


def grpc_error(url: str, call: str, exc: grpc.aio.AioRpcError) -> OrchestratorError:
    """A failed gRPC call, as its type: no session free is busy, anything else unavailable."""
    details = exc.details() or ""
    # go-livepeer: "Invalid orchestrator request: OrchestratorCapped" (no session free).
    if details.rsplit(":", 1)[-1].strip() in BUSY_ERRORS:
        return OrchestratorBusy(f"{url}: {call}: {details}")
    return OrchestratorUnavailable(f"{url}: {call}: {exc.code().name}: {details}")


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc``, if any: httpx wraps it (ConnectError from httpcore's from ssl's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < MAX_ERROR_CHAIN:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def segment_deadlines(duration_s: float) -> tuple[float, float]:
    """(early-200 deadline after upload, whole-call deadline) for a segment of ``duration_s``."""
    return max(2.0, 0.5 * duration_s), max(8.0, 4.0 * duration_s)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "https://" + url)
    if not parts.hostname:
        raise OrchestratorError(f"invalid orchestrator address {url!r}")
    return parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)


async def _read_text(response: httpx.Response, limit: int) -> str:
    """At most ``limit`` bytes of a response's body, as text."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit].decode("utf-8", "replace")


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

    async def _pin(self, host: str, port: int, refresh: bool) -> PinnedCertificate:
        try:
            return await self.pins.pin(host, port, refresh=refresh)
        except ProtocolError as exc:  # no TLS answer (refused, silent, no certificate) within the dial timeout
            raise OrchestratorUnavailable(f"{self.url}: {exc}") from exc

    async def _grpc(self, refresh: bool) -> pb_grpc.OrchestratorStub | None:
        """A stub on a channel with the pinned certificate, connected within :data:`DIAL_TIMEOUT`.

        None when the connection attempt failed (refused, or the TLS handshake failed);
        :class:`OrchestratorUnavailable` when it did not finish in time.
        """
        pin = await self._pin(self.host, self.port, refresh)
        # After a failure, a fresh channel even with the same certificate: a failed one waits out
        # its reconnect backoff (up to minutes) before it tries again.
        if self._channel is None or refresh or pin != self._channel_pin:
            if self._channel is not None:
                await self._channel.close()
            creds = grpc.ssl_channel_credentials(root_certificates=pin.pem)
            self._channel = grpc.aio.secure_channel(
                f"{self.host}:{self.port}", creds,
                options=[("grpc.ssl_target_name_override", pin.server_name),
                         ("grpc.max_receive_message_length", 4 * 1024 * 1024)],
            )
            self._channel_pin = pin
        if not await self._dial(self._channel):
            return None
        return pb_grpc.OrchestratorStub(self._channel)  # type: ignore[no-untyped-call]

    async def _dial(self, channel: grpc.aio.Channel) -> bool:
        """Wait until ``channel`` is connected; False when the attempt failed (refused, TLS handshake).

        Raises :class:`OrchestratorUnavailable` when it is still connecting after :data:`DIAL_TIMEOUT`.
        """
        ready, failed = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                state = channel.get_state(try_to_connect=True)
                while state is not ready:
                    if state in (failed, grpc.ChannelConnectivity.SHUTDOWN):
                        return False
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError as exc:
            raise OrchestratorUnavailable(f"{self.url}: gRPC dial: no connection within {DIAL_TIMEOUT:.0f} s") from exc
        return True

    async def get_orchestrator(self, capabilities: Capabilities | None = None, *,
                               timeout: float = GRPC_CALL_TIMEOUT) -> pb.OrchestratorInfo:
        """``GetOrchestrator``: session, price, capabilities and where to send segments.

        Within ``timeout`` seconds all in (pinning, dial, call), else :class:`OrchestratorUnavailable`;
        no session free is :class:`OrchestratorBusy`.
        """
        request = orchestrator_request(self.signer, capabilities)
        try:
            async with asyncio.timeout(timeout):
                return await self._get_orchestrator(request)
        except TimeoutError as exc:
            raise OrchestratorUnavailable(f"{self.url}: no GetOrchestrator answer within {timeout:.1f} s") from exc

    async def _get_orchestrator(self, request: pb.OrchestratorRequest) -> pb.OrchestratorInfo:
        for attempt in range(2):
            stub = await self._grpc(refresh=attempt > 0)
            if stub is None:
                # Refused, or the handshake failed: an orchestrator restarted with a new
                # certificate fails it. Fetch the certificate again, once.
                if attempt == 0:
                    continue
                raise OrchestratorUnavailable(f"{self.url}: gRPC dial failed (refused, or TLS handshake)")
            try:
                info: pb.OrchestratorInfo = await stub.GetOrchestrator(request, timeout=GRPC_CALL_TIMEOUT)
                return info
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt == 0:
                    continue  # the connection broke under the call: dial again, re-pinning if need be
                raise grpc_error(self.url, "GetOrchestrator", exc) from exc
        raise OrchestratorUnavailable(f"{self.url}: unreachable")  # pragma: no cover

    async def _http_client(self, url: str, refresh: bool) -> httpx.AsyncClient:
        host, port = _host_port(url)
        key = f"{host}:{port}"
        pin = await self._pin(host, port, refresh)
        current = self._http.get(key)
        if current is not None and current[0] == pin:
            return current[1]
        if current is not None:
            await current[1].aclose()
        client = httpx.AsyncClient(verify=pin.ssl_context(), timeout=HTTP_TIMEOUT)
        self._http[key] = (pin, client)
        return client

    async def submit(self, info: pb.OrchestratorInfo, meta: SegMetadata, data: bytes,
                     duration_s: float, *, payment: str = "") -> SegmentAnswer:
        """POST one segment to ``info.transcoder``/segment and read its successful ``TranscodeResult``.

        ``payment`` is the ``Livepeer-Payment`` value (empty offchain: an empty Payment).

        A result that reports an error raises it as its type (:func:`result_error`):
        :class:`OrchestratorBusy`, :class:`SegmentRejected`, or :class:`OrchestratorError`.
        """
        segdata = build_segdata(meta, self.signer)
        headers = {
            SEGMENT_HEADER: encode_segdata_header(segdata),
            PAYMENT_HEADER: payment,
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
            except TimeoutError as exc:
                raise OrchestratorUnavailable(f"{url}: no answer within {early:.1f} s of the upload") from exc
            except httpx.ConnectTimeout as exc:
                raise OrchestratorUnavailable(f"{url}: dial tcp: no connection within {DIAL_TIMEOUT:.0f} s") from exc
            except (httpx.HTTPError, ssl.SSLError) as exc:
                tls = tls_failure(exc)
                if tls is not None and attempt == 0:
                    continue  # perhaps a new certificate: re-pin once
                if tls is not None:
                    raise OrchestratorUnavailable(f"{url}: TLS: {tls}") from exc
                if isinstance(exc, httpx.ConnectError):
                    raise OrchestratorUnavailable(f"{url}: dial tcp: {exc}") from exc
                raise OrchestratorUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
        upload = time.monotonic() - started
        try:
            if response.status_code != 200:
                text = await asyncio.wait_for(_read_text(response, MAX_ERROR_BODY), max(0.1, total - upload))
                raise http_error(url, response.status_code, text)
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

    async def http(self, url: str) -> httpx.AsyncClient:
        """The HTTP client pinned to ``url``'s orchestrator (for its trickle channels)."""
        return await self._http_client(url, refresh=False)

    async def pay(self, info: pb.OrchestratorInfo, manifest_id: str, payment: str, *, model_id: str,
                  version: str, segment: str | None = None, timeout: float = PAYMENT_TIMEOUT) -> pb.PaymentResult:
        """``POST {transcoder}/payment`` as go-livepeer's live payment processor sends it (WIRE.md §10.5):
        SegData for ``manifest_id`` (the O's mid) at seq 0 with the empty-segment hash, no body (``segment``:
        a remote signer's credentials instead). Raises :class:`OrchestratorError` (its text) unless 200 with a
        ``PaymentResult``."""
        if segment is None:
            caps = ai_job_capabilities(Capability.LIVE_VIDEO_TO_VIDEO, model_id, version=version, discovery=True)
            meta = SegMetadata(manifest_id=manifest_id.encode(), seq=0, seg_hash=keccak256(b""), capabilities=caps,
                               auth_token=AuthToken.from_proto(info.auth_token))
            segment = encode_segdata_header(build_segdata(meta, self.signer))
        headers = {SEGMENT_HEADER: segment, PAYMENT_HEADER: payment}
        url = info.transcoder.rstrip("/") + "/payment"
        try:
            client = await self._http_client(url, refresh=False)
            response = await client.post(url, content=b"", headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise OrchestratorUnavailable(f"{url}: no answer within {timeout:.0f} s") from exc
        except (httpx.HTTPError, ssl.SSLError) as exc:
            raise OrchestratorUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise http_error(url, response.status_code, response.text[:MAX_ERROR_BODY])
        result = pb.PaymentResult()
        try:
            result.ParseFromString(response.content)
        except DecodeError as exc:
            raise OrchestratorError(f"{url}: the PaymentResult does not decode: {exc}") from exc
        return result

    async def start_live_video(self, info: pb.OrchestratorInfo, model_id: str, params: dict[str, Any] | None, *,
                               request_id: str, stream_id: str, version: str, payment: str = "",
                               segment: str | None = None) -> LiveChannels:
        """``POST {transcoder}/live-video-to-video`` as go-livepeer's gateway sends it (WIRE.md
        §10.2): SegData for ``35_{model}`` at seq 0 with the discovery capabilities and the O's auth
        token, ``payment`` (empty offchain), the JSON body with its empty URL keys. 503 (no free
        runner) is :class:`OrchestratorBusy`, 400 (a bad request: unknown model, bad params)
        :class:`LiveAiRefused`; any other refusal an :class:`OrchestratorError`."""
        if segment is None:  # else a remote signer's credentials
            caps = ai_job_capabilities(Capability.LIVE_VIDEO_TO_VIDEO, model_id, version=version, discovery=True)
            meta = SegMetadata(manifest_id=f"35_{model_id}".encode(), seq=0, seg_hash=keccak256(b""),
                               capabilities=caps, auth_token=AuthToken.from_proto(info.auth_token))
            segment = encode_segdata_header(build_segdata(meta, self.signer))
        headers = {"Content-Type": "application/json", "Authorization": AI_WORKER_AUTH,
                   SEGMENT_HEADER: segment, PAYMENT_HEADER: payment}
        body = json.dumps({"gateway_request_id": request_id, "model_id": model_id, "params": params,
                           "publish_url": "", "stream_id": stream_id, "subscribe_url": ""})
        url = info.transcoder.rstrip("/") + "/live-video-to-video"
        try:
            client = await self._http_client(url, refresh=False)
            response = await client.post(url, content=body, headers=headers, timeout=LIVE_START_TIMEOUT)
        except httpx.TimeoutException as exc:
            raise OrchestratorUnavailable(f"{url}: no answer within {LIVE_START_TIMEOUT:.0f} s") from exc
        except (httpx.HTTPError, ssl.SSLError) as exc:
            raise OrchestratorUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
        text = response.text[:MAX_ERROR_BODY].strip()
        if response.status_code == 503:
            raise OrchestratorBusy(f"{url}: HTTP 503: {text}")
        if response.status_code == 400:  # the request's fault (go-livepeer's gateway stops selecting)
            raise LiveAiRefused(f"{url}: HTTP 400: {text}")
        if response.status_code != 200:
            raise OrchestratorError(f"{url}: HTTP {response.status_code}: {text}")
        if not response.headers.get("content-type", "").startswith("application/json"):
            raise OrchestratorError(f"{url}: the reply is not JSON ({response.headers.get('content-type')})")
        try:
            reply = response.json()
        except ValueError as exc:
            raise OrchestratorError(f"{url}: the reply is not JSON: {exc}") from exc
        return live_channels(info.transcoder, reply)

    async def download(self, url: str, timeout: float) -> bytes:
        """GET a rendition the orchestrator stored."""
        try:
            client = await self._http_client(url, refresh=False)
            response = await asyncio.wait_for(client.get(url), timeout)
        except httpx.ConnectTimeout as exc:
            raise OrchestratorUnavailable(f"{url}: download: no connection within {DIAL_TIMEOUT:.0f} s") from exc
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
