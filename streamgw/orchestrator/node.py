"""The composition root of an orchestrator: TLS, gRPC and HTTPS on one port, transcode workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from streamgw.config import split_addr
from streamgw.errors import TranscodeError
from streamgw.livepeer.profiles import EncoderProfile, VideoCodec, VideoFormat, VideoProfile
from streamgw.livepeer.tls import ensure_certificate
from streamgw.media.transcoder import RenditionSpec, transcode
from streamgw.net import tcp_listener
from streamgw.orchestrator.grpc_asgi import multiplex
from streamgw.orchestrator.service import OrchestratorService, OrchestratorSettings

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path.home() / ".streamgw" / "orchestrator"

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
class OrchestratorNodeSettings:
    """Where the node listens, what it advertises, and its capacity."""

    serve_addr: str = "127.0.0.1:8935"
    service_addr: str = ""  # public URL; empty: https://SERVE_HOST:PORT
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR)
    max_sessions: int = 10
    transcode_workers: int = 2
    delay: float = 0.0


class OrchestratorNode:
    """An orchestrator serving gRPC and HTTPS on one TLS port, transcoding in worker threads."""

    GRACE = 3.0  # seconds open connections get to finish at shutdown

    def __init__(self, settings: OrchestratorNodeSettings) -> None:
        self.settings = settings
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.transcode_workers, thread_name_prefix="transcode"
        )
        self.service: OrchestratorService | None = None
        self.port = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _transcode(self, data: bytes, profiles: Sequence[VideoProfile]) -> list[bytes]:
        specs = [rendition_spec(p) for p in profiles]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: transcode(data, specs))

    @property
    def url(self) -> str:
        """The URL gateways dial (gRPC and HTTPS)."""
        host, _ = split_addr(self.settings.serve_addr)
        return f"https://{host}:{self.port}"

    async def start(self) -> None:
        """Bind, create or load the certificate, and serve."""
        host, port = split_addr(self.settings.serve_addr)
        sock = tcp_listener(host, port)
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        service_url = self.settings.service_addr or self.url
        if "://" not in service_url:
            service_url = "https://" + service_url
        cert, key = ensure_certificate(self.settings.data_dir, host)
        self.service = OrchestratorService(
            OrchestratorSettings(service_url=service_url.rstrip("/"), max_sessions=self.settings.max_sessions,
                                 max_concurrent=self.settings.transcode_workers * 2, delay=self.settings.delay),
            self._transcode,
        )
        config = HypercornConfig()
        # hypercorn adopts the descriptor: detach it so our socket object never closes it.
        config.bind = [f"fd://{sock.detach()}"]
        config.certfile = str(cert)
        config.keyfile = str(key)
        config.alpn_protocols = ["h2", "http/1.1"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 2.0
        config.keep_alive_timeout = 30.0
        app = multiplex(self.service.grpc_router(), self.service.http)
        self._task = asyncio.create_task(serve(app, config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        if self._task.done():
            self._task.result()
        log.info("orchestrator serving gRPC and HTTPS on %s (advertising %s)", self.url, service_url)

    async def close(self) -> None:
        """Stop serving and the workers."""
        self._stop.set()
        if self._task is not None:
            # hypercorn waits out asyncio's 30 s TLS shutdown for peers that keep their
            # connection open; give them the graceful timeout, then cut them off.
            # Connection tasks left behind end with the loop, each logging its CancelledError or
            # a TLS shutdown error. The node is shutting down: keep the handler quiet about those.
            asyncio.get_running_loop().set_exception_handler(_quiet_shutdown)
            done, _ = await asyncio.wait({self._task}, timeout=self.GRACE)
            if not done:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _quiet_shutdown(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """At shutdown, connection tasks report cancellation and broken TLS closes: expected, not logged."""
    if isinstance(context.get("exception"), (asyncio.CancelledError, ssl.SSLError, ConnectionError)):
        return
    loop.default_exception_handler(context)
