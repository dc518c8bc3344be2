"""streamgw's trickle publisher and subscriber: preconnect, live edge, resync after falling
behind, end of stream; over HTTP/1.1 (uvicorn) and over HTTP/2 on the orchestrator's TLS port
(hypercorn), where the trickle server lives at /ai/trickle/."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from streamgw.errors import TrickleClosed
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from streamgw.trickle.channels import TrickleChannels
from streamgw.trickle.client import TricklePublisher, TrickleSubscriber
from tests.test_trickle_server import MIME, run, serving


async def _stream_three(channels: TrickleChannels, client: httpx.AsyncClient, url: str) -> None:
    channels.create("lv", MIME)
    publisher = TricklePublisher(client, f"{url}lv")
    subscriber = TrickleSubscriber(client, f"{url}lv", start=-1)
    reading = asyncio.create_task(subscriber.next())
    await asyncio.sleep(0.05)
    for seq in range(3):
        segment = publisher.segment()
        segment.write(b"seg%d-a " % seq)
        if seq == 0:
            first = await asyncio.wait_for(reading, 5)
            chunks = first.chunks()
            assert await chunks.__anext__() == b"seg0-a ", "bytes reach the subscriber while written"
            # The publisher's POST for seq 1 is already open at the server (preconnect).
            pre = channels.get("lv").segments[1]  # type: ignore[union-attr]
            assert pre is not None and pre.seq == 1 and pre.fresh
        segment.write(b"seg%d-b" % seq)
        await segment.close()
        if seq == 0:
            assert b"".join([c async for c in chunks]) == b"seg0-b"
        else:
            got = await subscriber.next()
            assert got.seq == seq and await got.read() == b"seg%d-a seg%d-b" % (seq, seq)
    await publisher.aclose()  # closes the channel
    with pytest.raises(TrickleClosed):
        await subscriber.next()
    await subscriber.aclose()


def test_publish_and_subscribe_over_http1() -> None:
    async def test() -> None:
        async with serving() as (channels, client):
            await _stream_three(channels, client, "")
    run(test)


def test_a_late_subscriber_resyncs_to_the_live_edge() -> None:
    async def test() -> None:
        async with serving() as (channels, client):
            channels.create("late", MIME)
            publisher = TricklePublisher(client, "late")
            for i in range(8):
                await publisher.publish(b"old%d" % i)
            subscriber = TrickleSubscriber(client, "late", start=0)  # fell out of the ring: 470
            reading = asyncio.create_task(subscriber.next())
            await asyncio.sleep(0.1)
            assert not reading.done(), "resynced to the next write, waiting for it"
            await publisher.publish(b"live")
            got = await asyncio.wait_for(reading, 5)
            assert got.seq == 8 and await got.read() == b"live"
            await subscriber.aclose()
            await publisher.aclose()
    run(test)


def test_publish_and_subscribe_over_http2_on_the_orchestrator(tmp_path: Path) -> None:
    async def test() -> None:
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path,
                                                         transcode_workers=1))
        await node.start()
        try:
            assert node.service is not None
            async with httpx.AsyncClient(http2=True, verify=False, timeout=10) as client:
                probe = await client.get(f"{node.url}/ai/trickle/none/next")
                assert probe.http_version == "HTTP/2" and probe.status_code == 404
                await _stream_three(node.service.trickle_channels, client, f"{node.url}/ai/trickle/")
        finally:
            await node.close()
    run(test)


def test_a_preconnected_post_gets_100_continue_keepalives_over_http1(tmp_path: Path) -> None:
    """go-livepeer's trickle server sends ``100 Continue`` while a POST waits for its first body
    byte; so does the orchestrator's, over HTTP/1.1 (a raw TLS client, as Go's would see it)."""
    import ssl

    async def test() -> None:
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path,
                                                         transcode_workers=1))
        await node.start()
        try:
            node.service.trickle.keepalive = 0.3
            node.service.trickle_channels.create("idle", MIME)
            host, port = node.url.removeprefix("https://").rsplit(":", 1)
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
            writer.write(b"POST /ai/trickle/idle/0 HTTP/1.1\r\nHost: o\r\nContent-Type: video/MP2T\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            seen = b""
            async with asyncio.timeout(5):
                while seen.count(b"HTTP/1.1 100 ") < 3:  # (hypercorn sends no reason phrase)
                    seen += await reader.read(4096)
            assert b"HTTP/1.1 200" not in seen
            writer.write(b"5\r\nhello\r\n0\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(5):
                while b"HTTP/1.1 200" not in seen:
                    seen += await reader.read(4096)
            assert b"lp-trickle-seq: 0" in seen.lower()
            writer.close()
            segment, _ = node.service.trickle_channels.get("idle").for_read(0)  # type: ignore[union-attr]
            assert segment is not None and (await segment.read(0))[0] == b"hello"
        finally:
            await node.close()

    asyncio.run(test())
