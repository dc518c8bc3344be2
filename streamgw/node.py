"""The composition root of a gateway process: builds every part from the settings and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import uvicorn

from streamgw.api.app import create_app
from streamgw.api.hls import FrontCounts, HlsServing, hls_front
from streamgw.api.live_ai import live_ai_router
from streamgw.api.webrtc import webrtc_router
from streamgw.config import Settings, split_addr
from streamgw.errors import ConfigError, LiveAiRefused, ProfileError, StreamBusy, StreamgwError
from streamgw.gateway.discovery import OrchestratorPool
from streamgw.gateway.dispatcher import Dispatcher, DispatchSettings
from streamgw.gateway.hub import Hub
from streamgw.gateway.live_ai import AI_RENDITION, LiveAi, LiveAiSettings
from streamgw.gateway.live_request import parse_defaults, parse_query
from streamgw.gateway.publishers import Publisher, Publishers, PublisherSettings
from streamgw.gateway.selection import SelectionPolicy
from streamgw.gateway.streams import StreamState
from streamgw.ingest.rtmp.server import RtmpLimits, RtmpServer
from streamgw.ingest.whip import WhipServer, WhipSettings
from streamgw.livepeer.client import OrchestratorClient
from streamgw.livepeer.profiles import VideoProfile, parse_preset_names, parse_profiles_json
from streamgw.livepeer.signing import MessageSigner, Signer
from streamgw.livepeer.tls import CertificatePins
from streamgw.media.segmenter import SegmenterSettings
from streamgw.metrics import Metrics
from streamgw.net import tcp_listener
from streamgw.output.hls import HlsOutput, Recorder
from streamgw.output.whep import WhepOutput, WhepSettings
from streamgw.payments.chain import Chain, ChainSettings
from streamgw.payments.keystore import load_signer, read_password
from streamgw.payments.remote_signer import RemoteIdentity, RemoteSignerClient
from streamgw.payments.sender import SenderLimits, TicketSender
from streamgw.payments.sender_service import SenderService
from streamgw.supervise import Supervisor
from streamgw.webrtc import IceSettings, parse_ice_addresses, parse_ice_servers

log = logging.getLogger(__name__)

BUNDLED_WEB = Path(__file__).resolve().parent.parent / "web"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def load_profiles(spec: str) -> list[VideoProfile]:
    """The ladder from preset names or a go-livepeer JSON profiles file ("none": no ladder, for a
    gateway that only runs live AI); raises ConfigError."""
    if spec.strip() == "none":
        return []
    try:
        if spec.strip().endswith(".json") or Path(spec).is_file():
            try:
                return parse_profiles_json(Path(spec).read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read transcoding options {spec}: {exc}") from exc
        return parse_preset_names(spec)
    except ProfileError as exc:
        raise ConfigError(f"transcoding_options: {exc}") from exc


def chain_settings(settings: Settings) -> ChainSettings:
    """Where the chain and its contracts are; raises ConfigError when a contract is missing."""
    missing = [n for n in ("ticket_broker_addr", "rounds_manager_addr") if not getattr(settings, n)]
    if missing:
        raise ConfigError(f"eth_url needs {' and '.join(missing)}")
    return ChainSettings(rpc_url=settings.eth_url, chain_id=settings.eth_chain_id,
                         ticket_broker=settings.ticket_broker_addr, rounds_manager=settings.rounds_manager_addr)


def gateway_signer(settings: Settings) -> Signer:
    """The on-chain account from the keystore (ConfigError without one)."""
    if not settings.eth_keystore_path:
        raise ConfigError("eth_url needs eth_keystore_path (the account that pays)")
    return load_signer(settings.eth_keystore_path, read_password(settings.eth_password_file))


def _url_set(text: str) -> frozenset[str]:
    return frozenset(u.strip().rstrip("/") for u in text.split(",") if u.strip())


def selection_policy(settings: Settings) -> SelectionPolicy:
    """The operator's selection constraints from the settings; raises ConfigError."""
    per_cap: dict[int, Fraction] = {}
    for item in filter(None, (i.strip() for i in settings.max_price_per_capability.split(","))):
        cap, sep, price = item.partition("=")
        if not sep or not cap.strip().isdigit():
            raise ConfigError(f"max_price_per_capability: {item!r} is not CAP=PRICE")
        try:
            per_cap[int(cap)] = Fraction(price.strip())
        except ValueError as exc:
            raise ConfigError(f"max_price_per_capability: {item!r}: {exc}") from exc
    max_price = (Fraction(settings.max_price_per_unit, settings.pixels_per_unit)
                 if settings.max_price_per_unit else None)
    return SelectionPolicy(max_price=max_price, max_price_per_capability=per_cap,
                           include=_url_set(settings.orch_include), exclude=_url_set(settings.orch_exclude))


class _LiveIngest:
    """The WebRTC endpoints the /live/video-to-video routes use."""

    def __init__(self, node: GatewayNode) -> None:
        self.node = node

    async def whip(self, stream: str, offer: str, remote: str, query: str) -> tuple[str, str]:
        self.node._check_live_query(stream, query)  # before any WebRTC
        return await self.node.whip.publish(stream, offer, remote, query)

    async def whep(self, stream: str, rendition: str, offer: str, remote: str) -> tuple[str, str]:
        return await self.node.whep.play(stream, rendition, offer, remote)

    def is_live(self, stream: str) -> bool:
        live = self.node.publishers.streams.get(stream)
        return live is not None and live.state is StreamState.LIVE


class GatewayNode:
    """RTMP ingest, segmenter, HLS output, transcoding dispatch and HTTP API wired together.

    ``orchestrators`` overrides ``settings.orch_addr`` (``streamgw up`` passes its embedded one);
    ``metrics`` and ``orchestrator_client`` (url, signer, pins -> client) replace the default ones
    (benchmarks pass timed ones).
    """

    def __init__(self, settings: Settings, orchestrators: list[str] | None = None, *,
                 metrics: Metrics | None = None,
                 orchestrator_client: Callable[[str, MessageSigner, CertificatePins],
                                               OrchestratorClient] = OrchestratorClient,
                 ) -> None:
        self.settings = settings
        urls = orchestrators if orchestrators is not None else [
            u.strip() for u in settings.orch_addr.split(",") if u.strip()
        ]
        transcoding = bool(urls or settings.orch_webhook_url)
        self.profiles = load_profiles(settings.transcoding_options) if transcoding else []
        self.payments: SenderService | None = None
        self.remote_signer: RemoteSignerClient | None = None
        self.signer: MessageSigner
        if settings.remote_signer_url:  # the signer holds the key and pays live AI (go-livepeer's remote signer)
            self.remote_signer = RemoteSignerClient(settings.remote_signer_url)
            self.signer = RemoteIdentity()
        elif settings.eth_url:  # on-chain: the keystore's account signs and pays
            self.signer = gateway_signer(settings)
            chain = Chain(chain_settings(settings), self.signer.account)
            limits = SenderLimits(max_ticket_ev=settings.max_ticket_ev, max_total_ev=settings.max_total_ev,
                                  deposit_multiplier=settings.deposit_multiplier,
                                  max_price=selection_policy(settings).max_price)
            self.payments = SenderService(TicketSender(self.signer, limits), chain)
        else:
            self.signer = Signer(settings.gateway_key) if settings.gateway_key else Signer(os.urandom(32))
        self.hub = Hub()
        self.metrics = metrics or Metrics()
        self.publishers = Publishers(
            self.hub,
            PublisherSettings(
                segmenter=SegmenterSettings(
                    target_duration=Fraction(settings.segment_duration).limit_denominator(1000),
                    keyframe_timeout=Fraction(settings.keyframe_timeout).limit_denominator(1000),
                    max_segment_bytes=settings.max_segment_bytes,
                    probe_duration=Fraction(settings.probe_duration).limit_denominator(1000),
                ),
                reconnect_grace=settings.reconnect_grace,
                ended_retention=settings.ended_retention,
                max_streams=settings.max_streams,
                segmenter_threads=settings.segmenter_threads,
            ),
            observer=self.metrics,
        )
        recorder = Recorder(Path(settings.record_dir)) if settings.record_dir else None
        self.hls = HlsOutput(
            window=settings.playlist_window, target_duration=settings.segment_duration, recorder=recorder
        )
        self.publishers.on_removed(lambda stream: self.hls.forget(stream.name))
        self.rtmp = RtmpServer(
            self._open_publisher,
            RtmpLimits(
                handshake_timeout=settings.rtmp_handshake_timeout,
                idle_timeout=settings.rtmp_idle_timeout,
                read_coalesce=settings.rtmp_read_coalesce,
                max_message_size=settings.max_message_size,
            ),
        )
        self.front_counts = FrontCounts()
        self.metrics.bind(
            lambda: len(self.publishers.live_streams()),
            lambda: self.rtmp.active_connections,
            lambda: self.rtmp.protocol_errors,
            lambda: {"bytes_in": {"": self.publishers.bytes_in}, "hub_dropped": self.hub.dropped,
                     "segmenter": self.publishers.segmenter_counts(), "http_front": self.front_counts.as_dict()},
        )
        pins = CertificatePins()
        self.pool: OrchestratorPool | None = None
        self.dispatcher: Dispatcher | None = None
        self.live_ai: LiveAi | None = None
        defaults = parse_defaults(settings.live_default_pipelines)
        if transcoding:
            self.pool = OrchestratorPool(
                lambda url: orchestrator_client(url, self.signer, pins),
                static=urls, webhook_url=settings.orch_webhook_url,
                refresh_interval=settings.orch_refresh_interval,
            )
        if self.pool is not None and self.profiles:
            self.dispatcher = Dispatcher(
                self.hub, self.pool, self.profiles,
                DispatchSettings(max_in_flight=settings.max_in_flight, max_backlog=2 * settings.max_in_flight),
                selection_policy(settings), observer=self.metrics, has_video=self._has_video,
                input_rendition=self._ladder_input, payments=self.payments,
            )
        if self.pool is not None:
            self.live_ai = LiveAi(
                self.hub, self.pool,
                LiveAiSettings(events_timeout=settings.live_events_timeout,
                               output_timeout=settings.live_output_timeout),
                selection_policy(settings), defaults, stream_parts=self._stream_parts,
                open_output=lambda stream: self.whep.open_live_segments(stream, AI_RENDITION),
                payments=self.payments, signer=self.remote_signer)
            self.publishers.on_removed(lambda stream: self.live_ai.forget(stream.name) if self.live_ai else None)
        elif defaults:
            raise ConfigError("live_default_pipelines needs orchestrators (orch_addr or orch_webhook_url)")
        ice = IceSettings(
            addresses=parse_ice_addresses(settings.webrtc_addrs),
            servers=parse_ice_servers(settings.webrtc_ice_servers),
            username=settings.webrtc_turn_username, credential=settings.webrtc_turn_password,
        )
        self.whep = WhepOutput(WhepSettings(max_sessions=settings.whep_max_sessions), ice, self._whep_available)
        self.whip = WhipServer(
            self._open_publisher,
            WhipSettings(
                target_duration=Fraction(settings.segment_duration).limit_denominator(1000),
                video_bitrate=settings.whip_video_bitrate, max_sessions=settings.whip_max_sessions,
                copy_h264=settings.whip_video == "copy",
            ),
            ice, open_tee=self.whep.open_tee,
        )
        web_dir = Path(settings.web_dir) if settings.web_dir else BUNDLED_WEB
        self.supervisor = Supervisor("gateway")
        routers = [webrtc_router(self.whip, self.whep, settings.whip_token, self._check_live_query)]
        if self.live_ai is not None:
            routers.append(live_ai_router(self.live_ai, _LiveIngest(self)))
        self.app = create_app(self.publishers, self.hls, self.metrics, web_dir, self.profiles, self.dispatcher,
                              pool=self.pool,
                              routers=routers, health=self.supervisor, rtmp_address=self._rtmp_address,
                              whip_video=self.whip.video_mode, pipeline=self._pipeline,
                              payments=self.payments.snapshot if self.payments is not None else None)
        if self.payments is not None:
            self.metrics.bind_payments(self.payments.snapshot)
        self._http: _Uvicorn | None = None
        self.http_port = 0

    async def _open_publisher(self, name: str, remote: str, query: str = "") -> Publisher:
        """Open a publisher (RTMP and WHIP), first starting the live AI its query (or /start, or
        the settings) asks for: a refused pipeline refuses the publish before anything starts."""
        live = self.live_ai
        if live is None:
            if parse_query(query) is not None:
                raise LiveAiRefused("live AI needs orchestrators (orch_addr or orch_webhook_url)", "pipeline")
            return await self.publishers.open_publisher(name, remote)
        current = self.publishers.streams.get(name)
        if current is not None and current.state is StreamState.LIVE:
            raise StreamBusy(f"stream {name!r} is already being published")
        request = live.request_for(name, query)
        running = live.session(name)
        started = False
        if request is not None and (running is None or running.request.pipeline != request.pipeline):
            await live.start(name, request)  # a reconnect within the grace keeps its session
            started = True
        try:
            publisher = await self.publishers.open_publisher(name, remote)
        except BaseException:
            if started:
                await live.stop(name)
            raise
        live.connect_parts(name)  # segments streamed to the orchestrator while they are cut
        return publisher

    def _stream_parts(self, name: str, on_part: Callable[[int, bytes, bool], None] | None) -> None:
        publisher = self.publishers.publisher(name)
        if publisher is not None:
            publisher.stream_parts(on_part)

    def _check_live_query(self, name: str, query: str) -> None:
        """Refuse a bad live AI request at once (before WebRTC): bad syntax, or a pipeline none of
        the orchestrators known so far offers. The start itself comes with the publisher."""
        request = parse_query(query)
        if request is None:
            return
        if self.live_ai is None:
            raise LiveAiRefused("live AI needs orchestrators (orch_addr or orch_webhook_url)", "pipeline")
        self.live_ai.check(request)

    def _ladder_input(self, stream: str) -> str:
        """What a stream's ladder is made from: its AI output when it goes through a pipeline."""
        return AI_RENDITION if self.live_ai is not None and self.live_ai.session(stream) is not None else "source"

    def _pipeline(self, stream: str) -> str | None:
        session = self.live_ai.session(stream) if self.live_ai is not None else None
        return session.request.pipeline if session is not None else None

    def _has_video(self, stream: str) -> bool | None:
        """Whether a stream carries video (the dispatcher sends none that does not); None before probing."""
        live = self.publishers.streams.get(stream)
        if live is None or live.info is None:
            return None
        return live.info.video_codec is not None

    def _whep_available(self, stream: str, rendition: str) -> bool:
        live = self.publishers.streams.get(stream)
        if live is None or live.state is StreamState.ENDED:
            return False
        return rendition == "source" or rendition in self.hls.renditions(stream) or any(
            p.name == rendition for p in self.profiles) or (
            rendition == AI_RENDITION and self._pipeline(stream) is not None)

    def _rtmp_address(self) -> tuple[str, int]:
        """The RTMP host as configured and the port bound (the web page's publish instructions)."""
        return split_addr(self.settings.rtmp_addr)[0], self.rtmp.port

    async def start(self) -> None:
        """Bind both ports and start serving; every loop runs under ``self.supervisor``.

        A loop that fails is logged and restarted with a fresh hub subscription (the events
        published while it was down are lost); the HTTP server cannot be restarted, so its failure
        sets ``supervisor.fatal`` and the process stops.
        """
        hub, sup = self.hub, self.supervisor
        sup.spawn("hls", lambda: self.hls.run(hub.subscribe(maxsize=1024, name="hls")))
        sup.spawn("whep", lambda: self.whep.run(hub.subscribe(maxsize=1024, name="whep")))
        dispatcher, pool = self.dispatcher, self.pool
        if dispatcher is not None:
            sup.spawn("dispatcher", lambda: dispatcher.run(hub.subscribe(maxsize=1024, name="dispatcher")))
        if self.remote_signer is not None:  # GetOrchestrator is signed with the signer's credentials
            assert isinstance(self.signer, RemoteIdentity)
            self.signer.set_credentials(*await self.remote_signer.credentials())
        payments = self.payments
        if payments is not None:
            sup.spawn("payments", payments.watch)
            try:  # the first chain read before the first payment (bounded: a chain down does not block)
                await asyncio.wait_for(payments.ready.wait(), 10.0)
            except TimeoutError:
                log.warning("chain not answering yet: payments wait for it (%s)", payments.last_error)
        if pool is not None:
            sup.spawn("discovery", pool.run)
        live = self.live_ai
        if live is not None:
            sup.spawn("live-ai", lambda: live.run(hub.subscribe(maxsize=1024, name="live-ai")))
        host, port = split_addr(self.settings.rtmp_addr)
        await self.rtmp.start(host, port)
        host, port = split_addr(self.settings.http_addr)
        sock = tcp_listener(host, port, what="HTTP")
        sock.setblocking(False)
        self.http_port = sock.getsockname()[1]
        # Media playlists and segments are answered in front of FastAPI (api/hls.py): players repeat them.
        config = uvicorn.Config(HlsServing(self.app, self.hls), http=hls_front(self.hls, self.front_counts),  # type: ignore[arg-type]
                                log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        http = self._http = _Uvicorn(config)
        sup.spawn("http", lambda: http.serve(sockets=[sock]), restart=False)
        while not http.started:
            await asyncio.sleep(0.01)
            if sup.fatal.is_set():
                raise StreamgwError(f"the gateway did not start: {sup.fatal_error}")  # streamgw prints it, exits 1
        log.info("RTMP on rtmp://%s:%d/live/STREAM, HTTP on http://%s:%d/",
                 host if host else "0.0.0.0", self.rtmp.port, host, self.http_port)

    async def close(self) -> None:
        """End publishers (flushing their last segments), then stop serving."""
        if self.live_ai is not None:
            await self.live_ai.close()
        await self.whip.close()
        await self.whep.close()
        await self.rtmp.close()
        await self.publishers.close()
        await asyncio.sleep(0)  # let the HLS task apply the final events
        await self.hls.flush()
        if self._http is not None:
            self._http.should_exit = True
        await self.supervisor.close(wait=("http",), timeout=5.0)
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.remote_signer is not None:
            await self.remote_signer.close()
        if self.payments is not None:
            await self.payments.chain.close()
