"""The composition root of an orchestrator: TLS, gRPC and HTTPS on one port, transcode workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import hypercorn
from hypercorn.config import Config as HypercornConfig

from streamgw.config import split_addr
from streamgw.errors import ChainError, ConfigError, StreamgwError, TranscodeError
from streamgw.livepeer.profiles import EncoderProfile, VideoCodec, VideoFormat, VideoProfile
from streamgw.livepeer.segdata import SegMetadata
from streamgw.livepeer.signing import MessageSigner, Signer
from streamgw.livepeer.tls import ensure_certificate
from streamgw.media.transcoder import RenditionSpec, transcode
from streamgw.net import tcp_listener
from streamgw.orchestrator.grpc_asgi import multiplex
from streamgw.orchestrator.h2server import serve_tls
from streamgw.orchestrator.live import LiveSettings
from streamgw.orchestrator.service import OrchestratorService, OrchestratorSettings
from streamgw.payments.chain import Chain, ChainSettings
from streamgw.payments.recipient import RecipientSettings, TicketRecipient
from streamgw.payments.recipient_service import RecipientService
from streamgw.payments.ticket_store import WinningTicketStore
from streamgw.supervise import Supervisor

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """Where the certificate is kept when no data directory is set: ``~/.streamgw/orchestrator`` (read now)."""
    return Path.home() / ".streamgw" / "orchestrator"


_PROFILES = {
    EncoderProfile.ENCODER_DEFAULT: None,
    EncoderProfile.H264_BASELINE: "baseline",
    EncoderProfile.H264_MAIN: "main",
    EncoderProfile.H264_HIGH: "high",
    EncoderProfile.H264_CONSTRAINED_HIGH: "constrained_high",
}


def rendition_spec(profile: VideoProfile) -> RenditionSpec:
    """The transcoder's spec for a wire VideoProfile (gop in ms, -1 intra-only, 0 encoder default)."""
    if profile.format is not VideoFormat.MPEGTS or profile.encoder is not VideoCodec.H264:
        raise TranscodeError(f"profile {profile.name}: only H.264 in MPEG-TS is supported")
    fps = Fraction(profile.fps, profile.fps_den or 1) if profile.fps else None
    gop: Fraction | str | None
    if profile.gop < 0:
        gop = "intra-only"
    else:
        gop = Fraction(profile.gop, 1000) if profile.gop > 0 else None
    return RenditionSpec(name=profile.name, width=profile.width, height=profile.height, bitrate=profile.bitrate,
                         fps=fps, gop=gop, h264_profile=_PROFILES[profile.profile])  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TranscodeJob:
    """One verified source segment for a worker thread, and when it was queued for one (monotonic seconds)."""

    seq: int
    data: bytes
    specs: tuple[RenditionSpec, ...]  # one per rendition, in the order the gateway asked for them
    queued_at: float


class Transcoder(Protocol):
    """Transcodes a job into one MPEG-TS per spec, in order. Blocking: the node calls it on a worker thread."""

    def __call__(self, job: TranscodeJob) -> list[bytes]: ...


def transcode_job(job: TranscodeJob) -> list[bytes]:
    """The node's transcoder: :func:`streamgw.media.transcoder.transcode` (PyAV, libx264)."""
    return transcode(job.data, job.specs)


@dataclass(frozen=True, slots=True)
class PaymentSettings:
    """An on-chain orchestrator's payments: the chain, its price and go-livepeer's ticket flags."""

    chain: ChainSettings
    price_per_unit: int = 0  # wei per pixels_per_unit pixels
    pixels_per_unit: int = 1
    ticket_ev: int = 1_000_000_000_000
    max_face_value: int = 0
    initialize_round: bool = True
    poll_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class OrchestratorNodeSettings:
    """Where the node listens, what it advertises, and its capacity."""

    serve_addr: str = "127.0.0.1:8935"
    service_addr: str = ""  # public URL; empty: https://SERVE_HOST:PORT
    data_dir: Path = field(default_factory=default_data_dir)
    max_sessions: int = 10
    transcode_workers: int = 0  # threads; 0: one per CPU this process may use
    max_concurrent: int = 0  # segments accepted at once, more answer OrchestratorBusy; 0: 2 x workers
    delay: float = 0.0
    require_signed: bool = False  # refuse unsigned (offchain) gateways
    allowed_gateways: frozenset[bytes] = frozenset()  # non-empty: only these signed gateways
    live_pipelines: tuple[str, ...] = ()  # live video-to-video pipelines served (capability 35); none: off
    live_capacity: int = 1  # streams at once per live pipeline
    live_status_interval: float = 10.0  # seconds between a live stream's status events
    payments: PaymentSettings | None = None  # on-chain (needs the node's signer); None: offchain, free


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else ``os.cpu_count()``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


class OrchestratorNode:
    """An orchestrator serving gRPC and HTTPS on one TLS port, transcoding in worker threads."""

    GRACE = 3.0  # seconds open connections get to finish at shutdown
    TLS_CLOSE = 1.0  # seconds a peer gets to answer our TLS close_notify (asyncio's default: 30)

    def __init__(self, settings: OrchestratorNodeSettings, transcoder: Transcoder = transcode_job,
                 signer: MessageSigner | None = None) -> None:
        """``transcoder`` runs on the worker threads, one job per segment (benchmarks pass a timed one);
        ``signer``: the node's Ethereum key (on-chain: it signs its results), offchain when None."""
        self.settings = settings
        self.transcoder = transcoder
        self.signer = signer
        self.workers = settings.transcode_workers or usable_cpus()
        # Twice the workers: a segment that waits for a thread still beats a refusal, and the
        # gateway's deadline (4 x its duration) leaves room for one ahead of it.
        self.max_concurrent = settings.max_concurrent or 2 * self.workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="transcode"
        )
        self.service: OrchestratorService | None = None
        self.payments: RecipientService | None = None
        self.port = 0
        self._stop = asyncio.Event()
        self.supervisor = Supervisor("orchestrator")

    def _payments(self, paid: PaymentSettings) -> RecipientService:
        if self.signer is None:
            raise ConfigError("an on-chain orchestrator needs its account (eth_keystore_path)")
        account = self.signer.account if isinstance(self.signer, Signer) else None
        recipient = TicketRecipient(RecipientSettings(address=self.signer.address, ticket_ev=paid.ticket_ev,
                                                      max_face_value=paid.max_face_value))
        store = WinningTicketStore(self.settings.data_dir / "tickets.db")
        return RecipientService(recipient, Chain(paid.chain, account), store, poll_interval=paid.poll_interval,
                                initialize_rounds=paid.initialize_round)

    async def _transcode(self, segment: SegMetadata, data: bytes) -> list[bytes]:
        job = TranscodeJob(segment.seq, data, tuple(rendition_spec(p) for p in segment.profiles), time.monotonic())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.transcoder, job)

    @property
    def url(self) -> str:
        """The URL gateways dial (gRPC and HTTPS)."""
        host, _ = split_addr(self.settings.serve_addr)
        return f"https://{host}:{self.port}"

    async def start(self) -> None:
        """Bind, create or load the certificate, and serve."""
        host, port = split_addr(self.settings.serve_addr)
        sock = tcp_listener(host, port)
        self.port = sock.getsockname()[1]
        service_url = self.settings.service_addr or self.url
        if "://" not in service_url:
            service_url = "https://" + service_url
        cert, key = ensure_certificate(self.settings.data_dir, host)
        paid = self.settings.payments
        if paid is not None:
            self.payments = self._payments(paid)
        self.service = OrchestratorService(
            OrchestratorSettings(service_url=service_url.rstrip("/"), max_sessions=self.settings.max_sessions,
                                 max_concurrent=self.max_concurrent, delay=self.settings.delay,
                                 require_signed=self.settings.require_signed,
                                 allowed_gateways=self.settings.allowed_gateways,
                                 price_per_unit=paid.price_per_unit if paid else 0,
                                 pixels_per_unit=paid.pixels_per_unit if paid else 1),
            self._transcode,
            signer=self.signer,
            live=LiveSettings(pipelines=self.settings.live_pipelines, capacity=self.settings.live_capacity,
                              status_interval=self.settings.live_status_interval)
            if self.settings.live_pipelines else None,
            payments=self.payments,
        )
        if self.payments is not None:
            payments = self.payments
            self.supervisor.spawn("chain-watch", payments.watch)
            self.supervisor.spawn("redeem", payments.redeem)
            try:  # quote on a known block; a chain that is down does not stop the node starting
                await asyncio.wait_for(payments.refresh(), 10.0)
            except (ChainError, TimeoutError) as exc:
                log.warning("chain not answering yet: %s", exc)
        config = HypercornConfig()
        config.certfile = str(cert)
        config.keyfile = str(key)
        config.alpn_protocols = ["h2", "http/1.1"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 2.0
        config.keep_alive_timeout = 30.0
        app = multiplex(self.service.grpc_router(), self.service.http)
        # hypercorn, with its HTTP/2 refusal and TLS close faults fixed (h2server.py); a refused
        # upload may send as much after its answer as an accepted one may send in all.
        # The server owns its socket, so it cannot be restarted: its failure stops the process.
        discard_limit = self.service.settings.max_segment_bytes
        self.supervisor.spawn("trickle-sweep", self.service.trickle_channels.run)
        self.supervisor.spawn("tls", lambda: serve_tls(
            app, config, sock, shutdown_trigger=self._stop.wait, ssl_shutdown_timeout=self.TLS_CLOSE,
            discard_limit=discard_limit), restart=False)
        await asyncio.sleep(0.05)
        if self.supervisor.fatal.is_set():
            raise StreamgwError(f"orchestrator did not start: {self.supervisor.fatal_error}")
        log.info("orchestrator serving gRPC and HTTPS on %s (advertising %s); %d transcode threads, "
                 "%d segments at once; live pipelines: %s", self.url, service_url, self.workers, self.max_concurrent,
                 ", ".join(self.settings.live_pipelines) or "none")

    async def close(self) -> None:
        """Stop serving and the workers."""
        self._stop.set()
        if self.service is not None:
            if self.service.live is not None:
                await self.service.live.close()
            self.service.trickle_channels.close_all()  # waiting subscribers get the end of stream
        if self.supervisor.statuses():
            # serve_tls gives connections the graceful timeout, then TLS_CLOSE for their TLS
            # close; past that (it should not happen) they are cut off.
            # Connection tasks left behind end with the loop, each logging its CancelledError or
            # a TLS shutdown error. The node is shutting down: keep the handler quiet about those,
            # and only those (in `streamgw up` the gateway shares this loop).
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(QuietShutdown(self.port, loop.get_exception_handler()))
            await self.supervisor.close(wait=("tls",), timeout=self.GRACE + self.TLS_CLOSE)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.payments is not None:  # its tasks ended with the supervisor's
            self.payments.store.close()
            await self.payments.chain.close()


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]
# Where the coroutines of the orchestrator's connection tasks are defined: hypercorn, and this
# package (h2server's accept loop); the gateway runs none of them.
_SERVER_DIRS = tuple(str(Path(str(f)).resolve().parent) + os.sep for f in (hypercorn.__file__, __file__))


class QuietShutdown:
    """The loop's exception handler once an orchestrator closes: quiet about its own connections only.

    Its connection tasks (coroutines of hypercorn or of this package) and TLS transports (on its port) report
    cancellation and broken TLS closes as they end with the loop: expected, not logged. Everything
    else, such as the gateway's errors in ``streamgw up``, goes to the handler that was there before
    (asyncio's default if none).
    """

    QUIET = (asyncio.CancelledError, ssl.SSLError, ConnectionError, TimeoutError)

    def __init__(self, port: int, previous: ExceptionHandler | None) -> None:
        self.port = port
        self.previous = previous

    def ours(self, context: dict[str, Any]) -> bool:
        """Whether ``context`` is about one of the orchestrator's connections."""
        task = context.get("task", context.get("future"))
        if isinstance(task, asyncio.Task):
            code = getattr(task.get_coro(), "cr_code", None)
            if code is not None and str(Path(code.co_filename).resolve()).startswith(_SERVER_DIRS):
                return True
        transport = context.get("transport")
        if isinstance(transport, asyncio.BaseTransport):
            sockname = transport.get_extra_info("sockname")
            return isinstance(sockname, tuple) and len(sockname) >= 2 and sockname[1] == self.port
        return False

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), self.QUIET) and self.ours(context):
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)
