"""The trickle server (streamgw/trickle) against requests written from WIRE.md §7, over real
HTTP/1.1 on 127.0.0.1 (uvicorn), with httpx as the client: no streamgw client code involved."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import uvicorn

from streamgw.trickle.channels import TrickleChannels, TrickleLimits
from streamgw.trickle.server import TrickleServer

MIME = "video/MP2T"


@contextlib.asynccontextmanager
async def serving(limits: TrickleLimits | None = None) -> AsyncIterator[tuple[TrickleChannels, httpx.AsyncClient]]:
    channels = TrickleChannels(limits)
    app = TrickleServer(channels, "/ai/trickle/")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/ai/trickle/"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        try:
            yield channels, client
        finally:
            channels.close_all()
            server.should_exit = True
            await asyncio.wait_for(task, 10)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


class Body:
    """A request body the test writes piece by piece (chunked transfer: streamed to the server)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (piece := await self.queue.get()) is not None:
            yield piece

    def put(self, data: bytes | None) -> None:
        self.queue.put_nowait(data)


async def _post(client: httpx.AsyncClient, path: str, data: bytes, **headers: str) -> httpx.Response:
    return await client.post(path, content=data, headers=headers)


def test_a_subscriber_gets_bytes_as_the_publisher_writes_them() -> None:
    async def test() -> None:
        async with serving() as (channels, client):
            channels.create("s", MIME)
            # Preconnect: the GET of the next write waits for its first byte.
            request = client.build_request("GET", "s/0")
            sub_task = asyncio.create_task(client.send(request, stream=True))
            await asyncio.sleep(0.1)
            assert not sub_task.done(), "a GET must send nothing before the segment's first byte"
            body = Body()
            post = asyncio.create_task(client.post("s/-1", content=body.__aiter__()))
            body.put(b"first chunk ")
            response = await sub_task
            assert response.status_code == 200
            assert response.headers["content-type"] == MIME and response.headers["lp-trickle-seq"] == "0"
            chunks = response.aiter_raw()
            got = await asyncio.wait_for(chunks.__anext__(), 5)
            assert got == b"first chunk ", "the first bytes arrive before the publisher finished"
            assert not post.done()
            body.put(b"and the rest")
            body.put(None)
            rest = b"".join([c async for c in chunks])
            assert got + rest == b"first chunk and the rest"
            answer = await post
            assert answer.status_code == 200 and answer.headers["lp-trickle-seq"] == "0"
            next_seq = await client.get("s/next")
            assert next_seq.text.strip() == "1" and next_seq.headers["lp-trickle-latest"] == "1"
    run(test)


def test_live_edge_current_and_missing_seqs() -> None:
    async def test() -> None:
        async with serving() as (channels, client):
            channels.create("s", MIME)
            for i in range(3):
                assert (await _post(client, f"s/{i}", b"seg%d" % i)).status_code == 200
            current = await client.get("s/-2")
            assert current.status_code == 200 and current.content == b"seg2"
            assert current.headers["lp-trickle-seq"] == "2" and current.headers["lp-trickle-latest"] == "3"
            old = await client.get("s/0")
            assert old.content == b"seg0" and old.headers["lp-trickle-latest"] == "3"
            ahead = await client.get("s/9")
            assert ahead.status_code == 470 and ahead.text.strip() == "Entry not found"
            assert ahead.headers["lp-trickle-seq"] == "9" and ahead.headers["lp-trickle-latest"] == "3"
            # -1 is the next write: it waits for seq 3.
            edge = asyncio.create_task(client.get("s/-1"))
            await asyncio.sleep(0.1)
            assert not edge.done()
            await _post(client, "s/-1", b"seg3")
            got = await edge
            assert got.content == b"seg3" and got.headers["lp-trickle-seq"] == "3"
            for i in range(4, 9):
                await _post(client, f"s/{i}", b"x")
            kept = await client.get("s/4")  # the ring keeps five: 4-8
            assert kept.status_code == 200 and kept.content == b"x"
            gone = await client.get("s/3")
            assert gone.status_code == 470 and gone.headers["lp-trickle-latest"] == "9"
    run(test)


def test_unknown_closed_and_bad_requests() -> None:
    async def test() -> None:
        async with serving() as (channels, client):
            unknown = await client.get("nope/0")
            assert unknown.status_code == 404 and unknown.text.strip() == "Stream not found"
            assert (await client.post("nope")).status_code == 404
            assert (await client.post("nope/0", content=b"x")).status_code == 404
            assert (await client.get("nope/next")).status_code == 404
            assert (await client.delete("nope")).status_code == 400
            channels.create("s", MIME)
            assert (await client.post("s")).status_code == 200
            for path, method in (("s/abc", "GET"), ("s/-3", "GET"), ("s/-2", "POST"), ("s/x", "DELETE")):
                bad = await client.request(method, path, content=b"" if method == "POST" else None)
                assert bad.status_code == 400 and bad.text.strip() == "Invalid idx", (path, method)
            assert (await client.delete("s/4")).status_code == 400  # nonexistent segment
            waiting = asyncio.create_task(client.get("s/0"))
            await asyncio.sleep(0.1)
            assert (await client.delete("s")).status_code == 200
            ended = await waiting
            assert ended.status_code == 200 and ended.headers["lp-trickle-closed"] == "terminated"
            assert (await client.get("s/0")).status_code == 404
    run(test)


def test_empty_post_advances_and_reset_closes_older_segments() -> None:
    async def test() -> None:
        async with serving() as (channels, client):
            channels.create("s", MIME)
            empty = await _post(client, "s/-1", b"")
            assert empty.status_code == 200 and empty.headers["connection"] == "close"
            assert (await client.get("s/next")).text.strip() == "1"
            # An open segment (its publisher still writing), then the publisher restarts.
            body = Body()
            open_post = asyncio.create_task(client.post("s/1", content=body.__aiter__()))
            body.put(b"partial")
            await asyncio.sleep(0.1)
            reader = await client.send(client.build_request("GET", "s/1"), stream=True)
            restarted = await _post(client, "s/2", b"fresh", **{"Lp-Trickle-Reset": "1"})
            assert restarted.status_code == 200
            assert b"".join([c async for c in reader.aiter_raw()]) == b"partial", "the reset closed seq 1"
            body.put(None)
            await open_post
    run(test)


def test_slow_subscriber_never_stalls_the_publisher_and_segments_are_bounded() -> None:
    async def test() -> None:
        async with serving(TrickleLimits(max_segment_bytes=4 * 1024 * 1024)) as (channels, client):
            channels.create("s", MIME)
            slow = asyncio.create_task(client.send(client.build_request("GET", "s/0"), stream=True))
            payload = bytes(3 * 1024 * 1024)
            done = await asyncio.wait_for(_post(client, "s/0", payload), 10)  # the reader reads nothing
            assert done.status_code == 200
            response = await slow
            assert len(b"".join([c async for c in response.aiter_raw()])) == len(payload)
            too_big = await _post(client, "s/1", bytes(5 * 1024 * 1024))
            assert too_big.status_code == 413
            cut = await client.get("s/1")
            assert len(cut.content) <= 4 * 1024 * 1024
    run(test)


def test_idle_channels_are_swept() -> None:
    async def test() -> None:
        async with serving(TrickleLimits(idle_timeout=0.2)) as (channels, client):
            channels.create("idle", MIME)
            channels.create("busy", MIME)
            await asyncio.sleep(0.3)
            await _post(client, "busy/0", b"x")
            assert channels.sweep() == ["idle"]
            assert (await client.get("idle/0")).status_code == 404
            assert (await client.get("busy/0")).status_code == 200
    run(test)
