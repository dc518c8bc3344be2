"""The gateway's HTTP surface: handlers on the event loop, HEAD, offline /docs, /api/info, listen errors."""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from streamgw.api.app import create_app
from streamgw.config import load_settings
from streamgw.errors import ListenError
from streamgw.gateway.hub import Hub
from streamgw.gateway.publishers import Publishers, PublisherSettings
from streamgw.metrics import Metrics
from streamgw.node import GatewayNode
from streamgw.output.hls import HlsOutput
from streamgw.segment import Segment
from tests.conftest import RunningGateway, publish

WEB = Path(__file__).resolve().parent.parent / "web"
TS_PACKET = b"\x47" + bytes(187)


def _settings(**overrides: object) -> object:
    base: dict[str, object] = {"rtmp_addr": "127.0.0.1:0", "http_addr": "127.0.0.1:0"}
    base.update(overrides)
    return load_settings(None, base, environ={})


# ---- point 9: every handler is a coroutine, run on the loop ----------------------------------


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, including those of included routers (FastAPI wraps those)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        router = getattr(route, "original_router", None)
        if router is not None:
            yield from _api_routes(router.routes)


def test_every_route_is_async() -> None:
    """Sync handlers run in Starlette's thread pool, iterating state the loop mutates."""
    node = GatewayNode(_settings(orch_addr="https://127.0.0.1:9", transcoding_options="P144p30fps16x9"))  # type: ignore[arg-type]
    routes = list(_api_routes(node.app.routes))
    paths = {r.path for r in routes}
    assert {"/healthz", "/api/streams", "/api/orchestrators", "/stream/{name}/{rendition}.m3u8",
            "/whip/{stream}", "/whep/{stream}"} <= paths
    sync = [r.path for r in routes if not inspect.iscoroutinefunction(r.endpoint)]
    assert not sync, f"sync handlers: {sync}"


def test_handlers_run_on_the_event_loop_thread() -> None:
    """The metrics callbacks read live objects: /metrics must call them from the loop's own thread."""
    metrics = Metrics()
    threads: list[int] = []

    def count() -> int:
        threads.append(threading.get_ident())
        return 0

    metrics.bind(count, count, count)
    app = create_app(Publishers(Hub(), PublisherSettings()), HlsOutput(), metrics, WEB)

    async def scrape() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
            assert (await client.get("/metrics")).status_code == 200
            assert (await client.get("/api/streams")).status_code == 200
        return threading.get_ident()

    loop_thread = asyncio.run(scrape())
    assert threads and set(threads) == {loop_thread}


def _segment(stream: str, seq: int, rendition: str = "source") -> Segment:
    return Segment(stream_id=stream, seq=seq, rendition=rendition, start_pts=seq * 180000, duration=180000,
                   time_base=Fraction(1, 90000), data=TS_PACKET * 8)


def test_api_and_playlists_under_load_while_the_loop_publishes(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    """Readers hammer the API and playlists while the loop adds segments as fast as it can.

    Before the handlers were coroutines this answered 500s (``deque mutated during iteration``
    from a master playlist's bandwidth, summed in a worker thread). A 1 us thread switch interval
    makes the interleaving that production load makes now and then happen within seconds.
    """
    gw = gateway_factory(playlist_window=100)
    streams = [f"load{i}" for i in range(4)]
    publishers = [asyncio.run_coroutine_threadsafe(gw.node.publishers.open_publisher(name, "test"), gw.loop).result(10)
                  for name in streams]
    stop = threading.Event()
    published = [0]

    async def feed() -> None:
        seq = 0
        while not stop.is_set():
            for name in streams:
                gw.node.hub.publish(_segment(name, seq))
            published[0] += len(streams)
            seq += 1
            await asyncio.sleep(0)

    feeder = asyncio.run_coroutine_threadsafe(feed(), gw.loop)
    paths = ["/api/streams", "/api/orchestrators", "/metrics", "/healthz"] + [
        f"/stream/{name}.m3u8" for name in streams] + [f"/stream/{name}/source.m3u8" for name in streams]
    statuses: dict[int, int] = {}
    failures: list[str] = []

    def reader(i: int) -> None:
        with httpx.Client(base_url=gw.http, timeout=10) as client:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                path = paths[i % len(paths)]
                i += 1
                try:
                    r = client.get(path)
                except httpx.HTTPError as exc:  # the server dropped the connection
                    failures.append(f"{path}: {exc!r}")
                    continue
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code != 200:
                    failures.append(f"{path}: {r.status_code} {r.text[:200]}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(reader, range(8)))
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        feeder.result(10)
        for pub in publishers:
            gw.loop.call_soon_threadsafe(functools.partial(pub.close, clean=True))
    assert published[0] > 1000, published
    assert statuses.get(200, 0) > 100, statuses
    assert not failures, failures[:5]
    assert "#EXTINF" in gw.get(f"/stream/{streams[0]}/source.m3u8").text


# ---- point 12: HEAD, /docs offline, publish address, listen errors ---------------------------


def test_head_answers_for_playlists_and_segments(gateway: RunningGateway) -> None:
    gw = gateway
    result = publish(gw.rtmp_url("headed"), seconds=3, realtime=False, size="320x180")
    assert result.returncode == 0, result.stderr
    gw.wait_for(lambda: gw.get("/stream/headed/source.m3u8").status_code == 200, what="a playlist")
    media = gw.get("/stream/headed/source.m3u8").text
    segment = next(line for line in media.splitlines() if line and not line.startswith("#"))
    # Segment URIs are relative to the playlist's directory, /stream/headed/.
    paths = ["/stream/headed.m3u8", "/stream/headed/source.m3u8", f"/stream/headed/{segment}", "/"]
    with httpx.Client(base_url=gw.http, timeout=10) as client:
        for path in paths:
            got = client.get(path)
            head = client.head(path)
            assert head.status_code == 200, (path, head.status_code)
            assert head.content == b"", path
            assert head.headers["content-length"] == str(len(got.content)), path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert head.headers.get("cache-control") == got.headers.get("cache-control"), path
        assert client.head("/stream/headed/source/nope.ts").status_code == 404
        assert client.head("/stream/nope/source.m3u8").status_code == 404


def test_docs_load_swagger_ui_from_the_gateway(gateway: RunningGateway) -> None:
    r = gateway.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", r.text), "the docs page refers to a remote URL"
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert "/web/vendor/swagger-ui-bundle.js" in urls and "/web/vendor/swagger-ui.css" in urls
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/"), url
        fetched = gateway.get(url)
        assert fetched.status_code == 200, url
    bundle = gateway.get("/web/vendor/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text[:2000] or "SwaggerUIBundle" in bundle.text
    assert gateway.get("/openapi.json").json()["info"]["title"] == "streamgw"
    assert gateway.get("/redoc").status_code == 404  # ReDoc would come from a CDN: off


def test_info_gives_the_configured_rtmp_address(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory()
    info = gw.get("/api/info").json()
    assert info["rtmp_host"] == "127.0.0.1" and info["rtmp_port"] == gw.rtmp_port != 1935
    assert info["rtmp_app"] == "live"

    app = create_app(Publishers(Hub(), PublisherSettings()), HlsOutput(), Metrics(), WEB,
                     rtmp_address=lambda: ("0.0.0.0", 1936))

    async def wildcard() -> dict[str, object]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
            return dict((await client.get("/api/info")).json())

    info = asyncio.run(wildcard())
    assert info["rtmp_host"] is None and info["rtmp_port"] == 1936  # every interface: the page's host


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("which", ["http_addr", "rtmp_addr"])
def test_address_in_use_names_the_address(busy_port: int, which: str) -> None:
    node = GatewayNode(_settings(**{which: f"127.0.0.1:{busy_port}"}))  # type: ignore[arg-type]

    async def start() -> None:
        try:
            await node.start()
        finally:
            await node.close()

    with pytest.raises(ListenError) as caught:
        asyncio.run(start())
    what = "HTTP" if which == "http_addr" else "RTMP"
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{busy_port} ({what}): address already in use"
    assert isinstance(caught.value, OSError) and caught.value.errno == 98


def test_cli_says_which_address_is_in_use(busy_port: int, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamgw", "gateway", "--rtmp-addr", "127.0.0.1:0",
         "--http-addr", f"127.0.0.1:{busy_port}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"streamgw: cannot listen on 127.0.0.1:{busy_port} (HTTP): address already in use" in proc.stderr


AIOICE_PROBE = """
import logging, aioice.ice, aioice.turn
from streamgw.log import configure
configure({level!r})
assert aioice.ice.logger.name == "aioice.ice" and aioice.turn.logger.name == "aioice.turn"
aioice.ice.logger.info("Connection(0) Check CandidatePair(...) State.FROZEN -> State.WAITING")
aioice.turn.logger.info("TURN allocation created")
aioice.ice.logger.warning("ICE warning stays")
logging.getLogger("streamgw.node").info("gateway info stays")
"""


@pytest.mark.parametrize("level", ["info", "debug"])
def test_aioice_info_lines_are_debug(level: str) -> None:
    proc = subprocess.run([sys.executable, "-c", AIOICE_PROBE.format(level=level)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any("WARNING aioice.ice: ICE warning stays" in line for line in lines), lines
    assert any("INFO    streamgw.node: gateway info stays" in line for line in lines), lines
    checks = [line for line in lines if "State.FROZEN" in line or "TURN allocation" in line]
    if level == "info":
        assert checks == [], checks
    else:
        assert len(checks) == 2 and all("DEBUG   aioice." in line for line in checks), checks
