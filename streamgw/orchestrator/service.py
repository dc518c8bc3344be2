"""The orchestrator's protocol handlers: GetOrchestrator, Ping, EndTranscodingSession, /segment.

Answers as go-livepeer does (WIRE.md §1, §6): gRPC errors are UNKNOWN with go-livepeer's texts,
``/segment`` answers 402/403/400 with a ``text/plain`` body of the error and a newline, and a
200 is sent early, once the upload is read and hashed; its body, a ``TranscodeResult``, follows
when transcoding ends (transcode failures travel inside it as ``error``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction

from streamgw.errors import (
    LivepeerError,
    MediaError,
    PaymentError,
    SegDataError,
    SignatureError,
)
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import DEFAULT_CAPABILITIES, Capabilities, Capability
from streamgw.livepeer.client import INVALID_INPUT
from streamgw.livepeer.segdata import (
    AUTH_TOKEN_VALIDITY_S,
    PAYMENT_HEADER,
    SEGMENT_HEADER,
    GatewayPolicy,
    Rendition,
    SegMetadata,
    decode_segdata_header,
    make_auth_token,
    ping_response,
    sign_renditions,
    transcode_result,
    verify_orchestrator_request,
    verify_segment_credentials,
)
from streamgw.livepeer.signing import (
    ZERO_ADDRESS,
    MessageSigner,
    OffchainSigner,
    keccak256_off_loop,
    verify_message,
    verify_sig,
)
from streamgw.livepeer.tickets import TicketParams, decode_payment_header, price_to_proto
from streamgw.orchestrator.grpc_asgi import UNKNOWN, GrpcRouter, GrpcStatusError, Receive, Scope, Send
from streamgw.orchestrator.live import LiveRunners, LiveSettings, StartError
from streamgw.orchestrator.store import RenditionStore, Sessions
from streamgw.payments.recipient import LiveMeter
from streamgw.payments.recipient_service import RecipientService
from streamgw.trickle.channels import TrickleChannels
from streamgw.trickle.server import TrickleServer

log = logging.getLogger(__name__)

Transcode = Callable[[SegMetadata, bytes], Awaitable[list[bytes]]]
"""Transcodes one verified source segment into one rendition per profile of its metadata (off the event loop)."""

# What this orchestrator can do (WIRE.md §3): H.264 in and out as MPEG-TS, fractional frame rates,
# direct storage, every H.264 profile, GOP, auth tokens.
TRANSCODE_CAPABILITIES = frozenset({
    Capability.H264, Capability.MPEGTS, Capability.FRACTIONAL_FRAMERATES, Capability.STORAGE_DIRECT,
    Capability.PROFILE_H264_BASELINE, Capability.PROFILE_H264_MAIN, Capability.PROFILE_H264_HIGH,
    Capability.PROFILE_H264_CONSTRAINED_HIGH, Capability.GOP, Capability.AUTH_TOKEN,
})

LIVE_START_MAX_BYTES = 1024 * 1024  # the start request's JSON (params included)
_RENDITION_PATH = re.compile(r"^/stream/([0-9a-f]{1,64})/([A-Za-z0-9_.\-]{1,128})/(\d{1,19})\.ts$")


@dataclass(slots=True)
class OrchestratorState:
    """Counters the operator sees."""

    segments: int = 0
    failures: int = 0
    busy_refusals: int = 0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class OrchestratorSettings:
    """How this orchestrator presents itself and what it accepts."""

    service_url: str  # OrchestratorInfo.transcoder, e.g. https://127.0.0.1:8935
    max_sessions: int = 10
    max_concurrent: int = 4  # transcodes at once; more answer OrchestratorBusy
    max_segment_bytes: int = 64 * 1024 * 1024
    price_per_unit: int = 0
    pixels_per_unit: int = 1
    delay: float = 0.0  # added per segment, to simulate a slow node in tests
    # Offchain (no key) the O serves unsigned gateways, as go-livepeer's offchain O does, unless
    # signed requests are required; a non-empty allow-list serves only those signed gateways.
    require_signed: bool = False
    allowed_gateways: frozenset[bytes] = frozenset()  # 20-byte addresses


class OrchestratorService:
    """go-livepeer's orchestrator behaviour for transcoding and live AI, offchain or paid with tickets.

    With ``payments`` (an on-chain O) every info carries fresh ticket params for its gateway, every request's
    ``Livepeer-Payment`` is checked and credited before the work (400 with go-livepeer's text otherwise,
    ``Insufficient balance`` when the session's price is not covered) and the work is debited after it.
    """

    def __init__(self, settings: OrchestratorSettings, transcode: Transcode,
                 signer: MessageSigner | None = None, store: RenditionStore | None = None,
                 live: LiveSettings | None = None, payments: RecipientService | None = None) -> None:
        self.settings = settings
        self.payments = payments
        self.price = Fraction(settings.price_per_unit, settings.pixels_per_unit)
        self.signer: MessageSigner = signer or OffchainSigner()
        self.transcode = transcode
        self.store = store or RenditionStore()
        self.capabilities = Capabilities.from_ids(TRANSCODE_CAPABILITIES)
        self.state = OrchestratorState()
        self.sessions = Sessions(settings.max_sessions)
        self._auth_secret = secrets.token_bytes(32)
        # An O with a key is on-chain: like go-livepeer's, it verifies every request.
        offchain = self.signer.address == ZERO_ADDRESS
        self.gateway_policy = GatewayPolicy(unsigned=offchain and not settings.require_signed,
                                            allowed=settings.allowed_gateways)
        # Trickle channels (WIRE.md §7) at /ai/trickle/: created by the O itself (no auto-create).
        self.trickle_channels = TrickleChannels()
        self.trickle = TrickleServer(self.trickle_channels, "/ai/trickle/")
        # Live video-to-video (capability 35): go-livepeer's gateways ask for Default caps + 35 and a
        # model constraint per pipeline, so an O that runs live pipelines advertises all of them.
        self.live = LiveRunners(self.trickle_channels, live, lambda: self.settings.service_url + "/ai/trickle/") \
            if live is not None and live.pipelines else None
        if self.live is not None:
            self.capabilities = Capabilities.from_ids(
                {*TRANSCODE_CAPABILITIES, *DEFAULT_CAPABILITIES, Capability.LIVE_VIDEO_TO_VIDEO},
                per_capability={Capability.LIVE_VIDEO_TO_VIDEO: self.live.constraints()})

    # --- gRPC ---

    def grpc_router(self) -> GrpcRouter:
        """The net.Orchestrator service."""
        router = GrpcRouter()
        router.unary("/net.Orchestrator/GetOrchestrator", pb.OrchestratorRequest, self._get_orchestrator)
        router.unary("/net.Orchestrator/Ping", pb.PingPong, self._ping)
        router.unary("/net.Orchestrator/EndTranscodingSession", pb.EndTranscodingSessionRequest, self._end)
        return router

    async def _get_orchestrator(self, req: pb.OrchestratorRequest, scope: Scope) -> pb.OrchestratorInfo:
        try:
            gateway = verify_orchestrator_request(req, _Verifier(), self.gateway_policy)
        except SignatureError as exc:
            log.info("GetOrchestrator from %s refused: %s", _hex(req.address), exc.__cause__ or exc)
            raise GrpcStatusError(UNKNOWN, f"Invalid orchestrator request: {exc}") from exc
        params = None
        if self.payments is not None and gateway != ZERO_ADDRESS:
            try:  # a sender whose funds cannot pay one ticket gets no session
                params = await self.payments.quote(gateway, self.price)
            except PaymentError as exc:
                log.info("GetOrchestrator from %s refused: %s", _hex(req.address), exc)
                raise GrpcStatusError(UNKNOWN, str(exc)) from exc
        session_id = self.sessions.open(gateway, ignore_capacity=req.ignoreCapacityCheck)
        if session_id is None:
            raise GrpcStatusError(UNKNOWN, "Invalid orchestrator request: OrchestratorCapped")
        return self.orchestrator_info(session_id, params=params)

    def session_price(self, sender: bytes, key: str) -> Fraction:
        """A session's price: fixed by its first payment, else this O's quote now."""
        if self.payments is not None:
            fixed = self.payments.recipient.balances.fixed_price(sender, key)
            if fixed is not None:
                return fixed
        return self.price

    def orchestrator_info(self, session_id: str, *, params: TicketParams | None = None,
                          key: str | None = None) -> pb.OrchestratorInfo:
        """OrchestratorInfo for a session: where to send segments, price, capabilities, auth token, and
        on-chain fresh ticket params for its gateway (``key``: the balance key, default the session)."""
        expiration = int(time.time()) + AUTH_TOKEN_VALIDITY_S
        token = make_auth_token(self._auth_secret, session_id, expiration)
        info = pb.OrchestratorInfo(transcoder=self.settings.service_url, address=self.signer.address)
        session = self.sessions.use(session_id) if self.payments is not None else None
        gateway = session.gateway_address if session is not None else ZERO_ADDRESS
        price = self.session_price(gateway, key or session_id)
        info.price_info.CopyFrom(price_to_proto(price))
        if self.payments is not None and gateway != ZERO_ADDRESS:
            if params is None and self.payments.recipient.knows(gateway):
                try:
                    params = self.payments.recipient.ticket_params(gateway, price)
                except PaymentError as exc:  # its float ran out: no params, its next payment fails
                    log.info("no ticket params for %s: %s", _hex(gateway), exc)
            if params is not None:
                info.ticket_params.CopyFrom(params.to_proto())
        live = self.live.constraints() if self.live is not None else None  # capacity as it is now
        caps = self.capabilities
        if live is not None:
            caps = dataclasses.replace(caps, per_capability={Capability.LIVE_VIDEO_TO_VIDEO: live})
        info.capabilities.CopyFrom(caps.to_proto())
        info.capabilities.capacities[int(Capability.H264)] = self.settings.max_concurrent
        if live is not None:
            free = sum(m.capacity for m in live.values())
            info.capabilities.capacities[int(Capability.LIVE_VIDEO_TO_VIDEO)] = free
            for model_id in live:  # per-pipeline prices: this O's one price (offchain: free)
                info.capabilities_prices.add(pricePerUnit=price.numerator, pixelsPerUnit=price.denominator,
                                             capability=int(Capability.LIVE_VIDEO_TO_VIDEO), constraint=model_id)
        info.auth_token.CopyFrom(token.to_proto())
        # What does the work: CPU transcoding with libx264 (no GPUs, so no gpu_info entries).
        info.hardware.add(pipeline="transcode", model_id="libx264-cpu")
        return info

    async def _ping(self, req: pb.PingPong, scope: Scope) -> pb.PingPong:
        return ping_response(self.signer, req)

    async def _end(self, req: pb.EndTranscodingSessionRequest, scope: Scope) -> pb.EndTranscodingSessionResponse:
        token = req.auth_token
        expected = make_auth_token(self._auth_secret, token.session_id, token.expiration)
        if token.token != expected.token or not self.sessions.end(token.session_id):
            raise GrpcStatusError(UNKNOWN, "Invalid auth token")
        return pb.EndTranscodingSessionResponse()

    # --- HTTP ---

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/segment`` and rendition downloads ``/stream/SESSION/PROFILE/SEQ.ts``."""
        if scope["type"] != "http":
            return
        path = scope["path"]
        if self.trickle.handles(path):
            await self.trickle(scope, receive, send)
            return
        if path == "/segment":
            await self._segment(scope, receive, send)
            return
        if path == "/payment":
            await self._payment(scope, receive, send)
            return
        if path == "/live-video-to-video" and scope["method"] == "POST" and self.live is not None:
            await self._live_start(scope, receive, send)
            return
        match = _RENDITION_PATH.match(path)
        data = self.store.get(path) if match and scope["method"] in ("GET", "HEAD") else None
        if data is None:
            await _plain(send, 404, "404 page not found")
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"video/mp2t"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data if scope["method"] == "GET" else b""})

    async def _live_start(self, scope: Scope, receive: Receive, send: Send) -> None:
        """go-livepeer's ``StartLiveVideoToVideo`` (WIRE.md §10.4): JSON, capacity, credentials, start."""
        assert self.live is not None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await _read_body(receive, LIVE_START_MAX_BYTES)
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("the body is not a JSON object")
        except (ValueError, LivepeerError) as exc:
            await _plain(send, 400, str(exc))
            return
        except ConnectionError:
            return
        try:
            self.live.check(request)
        except StartError as exc:
            await _plain(send, exc.status, str(exc))
            return
        try:
            payment = decode_payment_header(headers.get(PAYMENT_HEADER.lower(), ""))
        except PaymentError as exc:
            await _plain(send, 402, str(exc))
            return
        try:
            self._verify(headers.get(SEGMENT_HEADER.lower(), ""), payment)
        except SegDataError as exc:
            await _plain(send, 403, str(exc))
            return
        mid = secrets.token_hex(4)  # the stream's manifest id: its channels' names and its balance key
        meter: LiveMeter | None = None
        if self.payments is not None:
            try:
                await self._pay(payment, mid)
            except PaymentError as exc:
                await _plain(send, 400, str(exc))
                return
            sender = payment.sender or ZERO_ADDRESS
            if self.payments.recipient.balances.fixed_price(sender, mid):
                meter = LiveMeter(self.payments.recipient, sender, mid)  # charged as it runs
        try:
            reply = self.live.start(request, mid=mid, meter=meter.charge if meter is not None else None)
        except StartError as exc:
            await _plain(send, exc.status, str(exc))
            return
        data = json.dumps(reply).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _segment(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            payment = decode_payment_header(headers.get(PAYMENT_HEADER.lower(), ""))
        except PaymentError as exc:  # base64 decode error: ... / protobuf unmarshal error: ...
            await _plain(send, 402, str(exc))
            return
        seg_header = headers.get(SEGMENT_HEADER.lower(), "")
        try:
            meta = self._verify(seg_header, payment)
        except SegDataError as exc:
            await _plain(send, 403, str(exc))
            return
        assert meta.auth_token is not None
        key = meta.auth_token.session_id  # /segment balances are per auth-token session
        try:
            await self._pay(payment, key)
        except PaymentError as exc:
            await _plain(send, 400, str(exc))
            return
        try:
            body = await _read_body(receive, self.settings.max_segment_bytes)
        except LivepeerError as exc:
            await _plain(send, 413, str(exc))
            return
        except ConnectionError:
            await _plain(send, 500, "Internal Server Error")
            return
        if await keccak256_off_loop(body) != meta.seg_hash:
            await _plain(send, 403, "Forbidden")
            return
        # The early 200: the upload is complete and verified (go-livepeer ServeSegment).
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        result = await self._transcode(meta, body)
        if self.payments is not None and result.HasField("data"):
            # The work is debited once done, at the session's fixed price (a balance may go negative).
            self.payments.charge(payment.sender, key, sum(r.pixels for r in result.data.segments))
        await send({"type": "http.response.body", "body": result.SerializeToString(), "more_body": False})

    async def _pay(self, payment: pb.Payment, key: str) -> None:
        """go-livepeer's ``ProcessPayment`` then ``SufficientBalance`` for balance ``key``; raises
        ``PaymentError`` (``TicketRejected``, ``InsufficientBalance``) with its text. Offchain: free."""
        if self.payments is None:
            return
        sender = payment.sender or ZERO_ADDRESS
        await self.payments.accept(payment, key, quote=self.session_price(sender, key))
        self.payments.recipient.check_balance(sender, key)

    async def _payment(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/payment`` (WIRE.md §6): credit the balance of ``SegData.manifestId``; 200 ``PaymentResult``."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            payment = decode_payment_header(headers.get(PAYMENT_HEADER.lower(), ""))
        except PaymentError as exc:
            await _plain(send, 402, str(exc))
            return
        try:
            meta = self._verify(headers.get(SEGMENT_HEADER.lower(), ""), payment)
        except SegDataError as exc:
            await _plain(send, 403, str(exc))
            return
        assert meta.auth_token is not None
        key = meta.manifest_id.decode("utf-8", "replace")
        if self.payments is not None:
            try:
                await self.payments.accept(payment, key, quote=self.session_price(payment.sender, key))
            except PaymentError as exc:
                await _plain(send, 400, str(exc))
                return
        info = self.orchestrator_info(meta.auth_token.session_id, key=key)
        data = pb.PaymentResult(info=info).SerializeToString()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/x-protobuf"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    def _verify(self, header: str, payment: pb.Payment) -> SegMetadata:
        if not header:
            raise SegDataError("empty seg data")
        msg = decode_segdata_header(header)
        session = self.sessions.use(msg.auth_token.session_id)
        gateway = session.gateway_address if session is not None else ZERO_ADDRESS
        sender = payment.sender or gateway
        # A session opened by a signed gateway is bound to it: its segments must carry its
        # signature. An anonymous (offchain) session's segments are unsigned, and served only as
        # the gateway policy says; a signature that is present is always checked.
        try:
            meta = verify_segment_credentials(header, verifier=_Verifier(), sender=sender,
                                              orchestrator_caps=self.capabilities,
                                              auth_secret=self._auth_secret, now=time.time(),
                                              policy=self.gateway_policy)
        except SegDataError as exc:
            if isinstance(exc.__cause__, SignatureError):
                log.info("segment from %s refused: %s", _hex(sender), exc.__cause__)
            raise
        assert meta.auth_token is not None
        if session is None:
            raise SegDataError("invalid auth token")
        return meta

    async def _transcode(self, meta: SegMetadata, body: bytes) -> pb.TranscodeResult:
        assert meta.auth_token is not None
        session_id = meta.auth_token.session_id
        info = self.orchestrator_info(session_id)
        if self.state.in_flight >= self.settings.max_concurrent:
            self.state.busy_refusals += 1
            return transcode_result(meta.seq, error="OrchestratorBusy", info=info)
        self.state.in_flight += 1
        try:
            if self.settings.delay:
                await asyncio.sleep(self.settings.delay)
            outputs = await self.transcode(meta, body)
            sig = sign_renditions(self.signer, outputs)
        except MediaError as exc:
            # The segment's fault (does not decode, no video, unsupported input): lpms's text for
            # invalid input first, so gateways charge it to the stream, not to this node.
            self.state.failures += 1
            log.warning("transcode of %s seq %d failed (the segment): %s", session_id, meta.seq, exc)
            return transcode_result(meta.seq, error=f"{INVALID_INPUT}: {exc}", info=info)
        except Exception as exc:  # this node's own fault (a bug, an executor shut down), reported as one
            self.state.failures += 1
            log.exception("transcode of %s seq %d failed (this orchestrator)", session_id, meta.seq)
            return transcode_result(meta.seq, error=f"transcoder failure: {type(exc).__name__}: {exc}", info=info)
        finally:
            self.state.in_flight -= 1
        renditions = []
        seconds = meta.duration_ms / 1000
        for profile, data in zip(meta.profiles, outputs, strict=True):
            path = f"/stream/{session_id}/{profile.name}/{meta.seq}{profile.extension}"
            self.store.put(path, data)
            fps = profile.fps / (profile.fps_den or 1) if profile.fps else 30
            renditions.append(Rendition(self.settings.service_url + path,
                                        int(profile.width * profile.height * round(seconds * fps))))
        self.state.segments += 1
        return transcode_result(meta.seq, renditions=renditions, sig=sig, info=info)


class _Verifier:
    """Checks other nodes' signatures by recovering their address; holds no key, signs nothing."""

    __slots__ = ()

    @property
    def address(self) -> bytes:
        return ZERO_ADDRESS

    @property
    def checksum_address(self) -> str:
        return "0x" + "0" * 40

    def sign(self, msg: bytes) -> bytes:
        raise SignatureError("a verifier cannot sign")

    def sign_hash(self, payload: bytes) -> bytes:
        raise SignatureError("a verifier cannot sign")

    def verify(self, address: str | bytes, msg: bytes, sig: bytes) -> None:
        verify_message(address, msg, sig)

    def verify_hash(self, address: str | bytes, payload: bytes, sig: bytes) -> None:
        verify_sig(address, payload, sig)


def _hex(address: bytes) -> str:
    """An address as it arrived, for logs (it may be empty or malformed)."""
    return "0x" + address.hex() if address else "(none)"


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        body += message.get("body", b"")
        if len(body) > limit:
            raise SegDataError(f"segment larger than {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def _plain(send: Send, status: int, text: str) -> None:
    """Go's ``http.Error``: text/plain, nosniff, the message and a newline."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": (text + "\n").encode()})
