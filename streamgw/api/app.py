"""The gateway's HTTP surface: HLS, the control API, metrics, and the web pages.

Every handler is ``async def``: it runs on the event loop, between the loop's own changes to the
state it reads (live streams, playlist deques, the orchestrator pool, metrics callbacks). A sync
handler would run in Starlette's thread pool and iterate that state while the loop mutates it.
None of them blocks (FileResponse and StaticFiles read files in threads of their own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, HTTPException, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from streamgw import __version__
from streamgw.api.hls import PLAYLIST_CACHE, PLAYLIST_TYPE, SEGMENT_CACHE, SEGMENT_TYPE
from streamgw.gateway.discovery import OrchestratorPool
from streamgw.gateway.dispatcher import Dispatcher
from streamgw.gateway.publishers import Publishers
from streamgw.gateway.streams import LiveStream
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capability, bitstring_ids
from streamgw.livepeer.profiles import VideoProfile
from streamgw.media.segmenter import avc_codec_string
from streamgw.media.transcoder import fit_size
from streamgw.metrics import Metrics
from streamgw.output.hls import HlsOutput, RenditionPlaylist, Variant, master_playlist
from streamgw.supervise import TaskStatus

RTMP_APP = "live"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class StreamView(BaseModel):
    """A stream as the control API shows it."""

    name: str
    state: str
    publisher: str
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    sample_rate: int | None
    codecs: str | None
    probe_seconds: float | None
    bitrate: int
    bytes_in: int
    segments: int
    media_seconds: float
    uptime: float
    started_at: float
    reconnects: int
    renditions: list[str]
    playlist: str
    last_error: str | None
    transcode_error: str | None  # why the latest segment got no renditions
    keyframe_interval: float | None  # seconds: the longest of the last 8 intervals between keyframes
    browser_playable: bool  # browsers can play the source as published (else: a rendition)
    warnings: list[str]  # what is wrong with the published stream for its viewers, in words
    whip_video: str | None  # a WHIP publisher's video: copy, copy-until-idr or transcode (None: not WHIP)
    pipeline: str | None = None  # the live AI pipeline it goes through (its output: rendition "ai")


class LiveModelView(BaseModel):
    """One live AI pipeline an orchestrator offers."""

    warm: bool
    capacity: int
    capacity_in_use: int
    runner_version: str
    price_per_unit: int | None = None
    pixels_per_unit: int | None = None


class OrchestratorView(BaseModel):
    """An orchestrator as the gateway sees it."""

    address: str
    transcoder: str | None
    capabilities: list[int]
    price_per_unit: int | None
    pixels_per_unit: int | None
    latency_score: float | None  # moving average of round-trip seconds per media second
    success_rate: float | None  # of recent attempts
    segments: int
    failures: int
    busy_refusals: int  # segments it refused for lack of capacity (no failure, no suspension)
    in_flight: int
    suspended_until: float | None  # Unix time
    last_seconds: float
    last_error: str | None
    live_models: dict[str, LiveModelView] = {}  # live AI pipelines it offers (capability 35)


class TaskView(BaseModel):
    """A supervised background task of the gateway."""

    name: str
    state: str  # running | restarting | failed | stopped
    restarts: int
    failures: int
    last_error: str | None
    last_failure_ago: float | None  # seconds


class Health(BaseModel):
    """Liveness answer: ``degraded`` while a background task is down or failed in the last minutes."""

    status: str  # ok | degraded
    version: str
    streams: int
    uptime: float
    tasks: list[TaskView]


class Info(BaseModel):
    """What a client needs to publish to this gateway."""

    version: str
    rtmp_host: str | None  # None: every interface (use the host the page was loaded from)
    rtmp_port: int | None
    rtmp_app: str  # rtmp://HOST:PORT/APP/STREAM


class HealthSource(Protocol):
    """What ``/healthz`` reads: streamgw.supervise.Supervisor."""

    def statuses(self) -> list[TaskStatus]: ...


def _view(stream: LiveStream, hls: HlsOutput, dispatcher: Dispatcher | None = None,
          whip_video: Callable[[str], str | None] | None = None,
          pipeline: Callable[[str], str | None] | None = None) -> StreamView:
    info = stream.info
    return StreamView(
        name=stream.name,
        state=stream.state.value,
        publisher=stream.publisher,
        video_codec=info.video_codec if info else None,
        audio_codec=info.audio_codec if info else None,
        width=info.width if info else None,
        height=info.height if info else None,
        fps=info.fps if info else None,
        sample_rate=info.sample_rate if info else None,
        codecs=info.codecs if info else None,
        probe_seconds=info.probe_seconds if info else None,
        bitrate=int(stream.bitrate),
        bytes_in=stream.bytes_in,
        segments=stream.segments,
        media_seconds=round(stream.media_seconds, 3),
        uptime=round(stream.uptime, 3),
        started_at=stream.started_wall,
        reconnects=stream.reconnects,
        renditions=sorted(hls.renditions(stream.name)),
        playlist=f"/stream/{stream.name}.m3u8",
        last_error=stream.last_error,
        transcode_error=dispatcher.stream_error(stream.name) if dispatcher else None,
        keyframe_interval=info.keyframe_interval if info else None,
        browser_playable=stream.browser_playable,
        warnings=stream.warnings,
        whip_video=whip_video(stream.name) if whip_video else None,
        pipeline=pipeline(stream.name) if pipeline else None,
    )


LIVE_VIDEO_TO_VIDEO = int(Capability.LIVE_VIDEO_TO_VIDEO)


def _live_models(info: pb.OrchestratorInfo) -> dict[str, LiveModelView]:
    """The live AI pipelines (capability 35 model constraints) of an OrchestratorInfo, with their prices."""
    per_capability = info.capabilities.constraints.PerCapability
    if LIVE_VIDEO_TO_VIDEO not in per_capability:  # (indexing a missing key would add it)
        return {}
    models = per_capability[LIVE_VIDEO_TO_VIDEO]
    prices = {p.constraint: p for p in info.capabilities_prices if p.capability == LIVE_VIDEO_TO_VIDEO}
    out = {}
    for model_id, c in models.models.items():
        price = prices.get(model_id)
        out[model_id] = LiveModelView(warm=c.warm, capacity=c.capacity, capacity_in_use=c.capacityInUse,
                                      runner_version=c.runnerVersion,
                                      price_per_unit=price.pricePerUnit if price else None,
                                      pixels_per_unit=price.pixelsPerUnit if price else None)
    return out


def _rendition_variant(profile: VideoProfile, rp: RenditionPlaylist, stream: LiveStream) -> Variant:
    info = stream.info
    width, height = profile.width, profile.height
    if info and info.width and info.height:
        width, height = fit_size(info.width, info.height, profile.width, profile.height)
    fps = profile.fps / (profile.fps_den or 1) if profile.fps else (info.fps if info else None)
    return Variant(profile.name, rp.bandwidth or profile.bitrate, _encoded_codecs(rp, stream), width, height, fps)


def _encoded_codecs(rp: RenditionPlaylist, stream: LiveStream) -> str:
    """CODECS of a rendition encoded away from the source (a ladder rung, the AI output): its own
    H.264 profile and level, the source's audio (copied)."""
    info = stream.info
    codecs = [avc_codec_string(rp.first_data()) or "avc1.640028"]
    if info and info.audio_codec:
        codecs.append(info.codecs.split(",")[-1])
    return ",".join(codecs)


def create_app(publishers: Publishers, hls: HlsOutput, metrics: Metrics, web_dir: Path,
               profiles: list[VideoProfile] | None = None,
               dispatcher: Dispatcher | None = None,
               routers: Sequence[APIRouter] = (),
               health: HealthSource | None = None,
               rtmp_address: Callable[[], tuple[str, int]] | None = None,
               whip_video: Callable[[str], str | None] | None = None,
               pipeline: Callable[[str], str | None] | None = None,
               pool: OrchestratorPool | None = None,
               payments: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """Build the FastAPI application over the running gateway parts (plus ``routers``: WHIP/WHEP).

    ``health`` gives the background tasks ``/healthz`` reports; ``rtmp_address`` the RTMP host as
    configured and the port bound, for the page's publish instructions (``/api/info``);
    ``whip_video`` what a stream's WHIP session does with its video (``WhipServer.video_mode``);
    ``pipeline`` the live AI pipeline a stream goes through; ``pool`` the orchestrators (by
    default the dispatcher's); ``payments`` the payments view (on-chain gateways).
    """
    if pool is None and dispatcher is not None:
        pool = dispatcher.pool
    by_name = {p.name: p for p in profiles or []}
    started = time.monotonic()
    # /docs is ours, not FastAPI's: its default loads Swagger UI from a CDN (blank offline). ReDoc
    # has no vendored copy, so it is off.
    app = FastAPI(title="streamgw", version=__version__, description="Live video gateway for Livepeer",
                  docs_url=None, redoc_url=None)
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "HEAD", "OPTIONS", "POST", "PATCH", "DELETE"],
        allow_headers=["*"], expose_headers=["Location"],  # WHIP/WHEP clients on other origins read Location
    )
    for router in routers:
        app.include_router(router)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Liveness, a one-line summary, and the background tasks (``degraded`` if one is failing)."""
        statuses = health.statuses() if health is not None else []
        tasks = [TaskView(name=t.name, state=t.state.value, restarts=t.restarts, failures=t.failures,
                          last_error=t.last_error, last_failure_ago=t.last_failure_ago) for t in statuses]
        return Health(status="ok" if all(t.healthy for t in statuses) else "degraded", version=__version__,
                      streams=len(publishers.live_streams()), uptime=round(time.monotonic() - started, 3),
                      tasks=tasks)

    @app.get("/api/info", response_model=Info, tags=["ops"])
    async def info() -> Info:
        """Where to publish: the RTMP address as configured (the port as bound)."""
        host, port = rtmp_address() if rtmp_address is not None else ("", None)
        return Info(version=__version__, rtmp_host=None if host in WILDCARD_HOSTS else host,
                    rtmp_port=port or None, rtmp_app=RTMP_APP)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/streams", response_model=list[StreamView], tags=["streams"])
    async def list_streams() -> list[StreamView]:
        """Every live (or reconnecting) stream."""
        return [_view(s, hls, dispatcher, whip_video, pipeline)
                for s in sorted(publishers.live_streams(), key=lambda s: s.name)]

    @app.get("/api/streams/{name}", response_model=StreamView, tags=["streams"])
    async def get_stream(name: str) -> StreamView:
        """One stream, including a recently ended one."""
        stream = publishers.streams.get(name)
        if stream is None:
            raise HTTPException(404, f"no stream {name!r}")
        return _view(stream, hls, dispatcher, whip_video, pipeline)

    @app.get("/api/payments", tags=["payments"])
    async def get_payments() -> dict[str, Any]:
        """Deposit and reserve, credit per orchestrator, tickets sent, spend per stream (offchain: mode only)."""
        if payments is None:
            return {"mode": "offchain"}
        return payments()

    @app.get("/api/orchestrators", response_model=list[OrchestratorView], tags=["orchestrators"])
    async def list_orchestrators() -> list[OrchestratorView]:
        """Every configured orchestrator: what it offers and how it has done."""
        views = []
        now, wall = time.monotonic(), time.time()
        for r in (pool.records.values() if pool else []):
            info = r.info
            views.append(OrchestratorView(
                address=r.url,
                transcoder=info.transcoder if info else None,
                capabilities=sorted(bitstring_ids(info.capabilities.bitstring)) if info else [],
                price_per_unit=info.price_info.pricePerUnit if info else None,
                pixels_per_unit=info.price_info.pixelsPerUnit if info else None,
                latency_score=round(r.latency, 4) if r.latency is not None else None,
                success_rate=round(rate, 3) if (rate := r.success_rate(now)) is not None else None,
                segments=r.segments, failures=r.failures, busy_refusals=r.busy_refusals, in_flight=r.in_flight,
                suspended_until=round(wall + r.suspended_until - now, 3) if r.suspended(now) else None,
                last_seconds=round(r.last_seconds, 3), last_error=r.last_error,
                live_models=_live_models(info) if info else {},
            ))
        return views

    # HEAD (RFC 9110 9.3.2) on playlists and segments: players and CDNs probe with it. A route of
    # its own, out of the schema: one route with both methods gives a duplicate operation id.
    @app.get("/stream/{name}.m3u8", tags=["hls"], response_class=Response)
    @app.head("/stream/{name}.m3u8", include_in_schema=False)
    async def master(name: str) -> Response:
        """The master playlist of a stream: one variant per rendition."""
        stream = publishers.streams.get(name)
        renditions = hls.renditions(name)
        if stream is None or not renditions:
            raise HTTPException(404, f"no stream {name!r}")
        info = stream.info
        variants = []
        ai = "ai" in renditions  # a live AI stream: its output and the ladder made from it, not the source
        for rendition, rp in renditions.items():
            if rendition == "ai":
                variants.append(Variant(
                    rendition, rp.bandwidth or int(stream.bitrate), _encoded_codecs(rp, stream),
                    info.width if info else None, info.height if info else None,
                    info.fps if info and info.fps and math.isfinite(info.fps) else None))
            elif rendition == "source" and not ai:
                variants.append(Variant(
                    rendition, rp.bandwidth or int(stream.bitrate), info.codecs if info else "",
                    info.width if info else None, info.height if info else None,
                    info.fps if info and info.fps and math.isfinite(info.fps) else None,
                    playable=stream.browser_playable,
                ))
            elif rendition in by_name:
                variants.append(_rendition_variant(by_name[rendition], rp, stream))
        return Response(master_playlist(name, variants), media_type=PLAYLIST_TYPE,
                        headers={"Cache-Control": PLAYLIST_CACHE})

    @app.get("/stream/{name}/{rendition}.m3u8", tags=["hls"], response_class=Response)
    @app.head("/stream/{name}/{rendition}.m3u8", include_in_schema=False)
    async def media(name: str, rendition: str) -> Response:
        """A rendition's live media playlist."""
        text = hls.media_playlist(name, rendition)
        if text is None:
            raise HTTPException(404, f"no rendition {rendition!r} of stream {name!r}")
        return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": PLAYLIST_CACHE})

    @app.get("/stream/{name}/{rendition}/{segment}", tags=["hls"], response_class=Response)
    @app.head("/stream/{name}/{rendition}/{segment}", include_in_schema=False)
    async def segment(name: str, rendition: str, segment: str) -> Response:
        """A segment's MPEG-TS bytes, while it is retained."""
        data = hls.segment(name, rendition, segment)
        if data is None:
            raise HTTPException(404, f"no segment {segment!r}")
        return Response(data, media_type=SEGMENT_TYPE, headers={"Cache-Control": SEGMENT_CACHE})

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(web_dir / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI from web/vendor (served under /web), never from a CDN."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            swagger_js_url="/web/vendor/swagger-ui-bundle.js", swagger_css_url="/web/vendor/swagger-ui.css",
            swagger_favicon_url="/web/vendor/swagger-ui-favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # the online validator badge: a remote request
        )

    app.mount("/web", StaticFiles(directory=web_dir), name="web")
    return app
