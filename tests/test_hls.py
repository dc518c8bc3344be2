"""Playlist rules (RFC 8216) and the hub, without sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
from fractions import Fraction
from pathlib import Path

from streamgw.gateway.hub import Hub, StreamEnded
from streamgw.output.hls import HlsOutput, RenditionPlaylist, Variant, master_playlist
from streamgw.segment import Segment
from tests.media import parse_playlist, seq_of

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def seg(seq: int, dur_ms: int = 2000, disc: bool = False, start: int | None = None) -> Segment:
    return Segment("s", seq, "source", seq * 2000 if start is None else start, dur_ms, Fraction(1, 1000),
                   b"x" * 100, disc)


def test_sliding_window_and_media_sequence() -> None:
    rp = RenditionPlaylist("source", "abcd", window=3, keep_extra=2)
    for i in range(7):
        rp.add(seg(i), T0)
    pl = parse_playlist(rp.render(2.0))
    assert pl.media_sequence == 4
    assert [seq_of(e[1]) for e in pl.entries] == [4, 5, 6]
    assert rp.segment("abcd-2.ts") is not None, "recently slid out: still downloadable"
    assert rp.segment("abcd-1.ts") is None, "older than window + extras: gone"
    assert not pl.ended


def test_target_duration_covers_longest_segment() -> None:
    rp = RenditionPlaylist("source", "a", window=6)
    rp.add(seg(0, 2000), T0)
    assert parse_playlist(rp.render(2.0)).target_duration == 2
    rp.add(seg(1, 3400), T0)
    assert parse_playlist(rp.render(2.0)).target_duration == 4


def test_discontinuity_and_its_sequence() -> None:
    rp = RenditionPlaylist("source", "a", window=2, keep_extra=0)
    rp.add(seg(0, disc=True), T0)  # the first segment is never marked
    rp.add(seg(1), T0)
    rp.add(seg(2, disc=True, start=0), T0)
    pl = parse_playlist(rp.render(2.0))
    assert [e[2] for e in pl.entries] == [False, True]
    assert pl.discontinuity_sequence == 0
    rp.add(seg(3), T0)
    rp.add(seg(4), T0)
    pl = parse_playlist(rp.render(2.0))
    assert pl.discontinuity_sequence == 1 and not any(e[2] for e in pl.entries)


def test_endlist_and_program_date_time() -> None:
    clock = iter([1000.0, 1001.0])
    out = HlsOutput(window=6, wall_clock=lambda: next(clock))
    out.handle(seg(0))
    out.handle(seg(1))
    out.handle(StreamEnded("s"))
    pl = parse_playlist(out.media_playlist("s", "source") or "")
    assert pl.ended
    pdts = [dt.datetime.fromisoformat(e[3] or "") for e in pl.entries]
    # Anchored once (the first segment closed at t=1000 after 2 s), then continuous in media time.
    assert pdts[0].timestamp() == 998.0 and pdts[1].timestamp() == 1000.0
    # A new publication of an ended name starts fresh playlists with a new session.
    out.handle(seg(0))
    fresh = parse_playlist(out.media_playlist("s", "source") or "")
    assert not fresh.ended and len(fresh.entries) == 1
    assert fresh.entries[0][1] != pl.entries[0][1]


def test_master_playlist() -> None:
    text = master_playlist("cam", [Variant("source", 3_000_000, "avc1.64001f,mp4a.40.2", 1280, 720, 30.0),
                            Variant("360p", 800_000, "avc1.4d401e", 640, 360, 30.0)])
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert lines[3] == ('#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1280x720,'
                        'CODECS="avc1.64001f,mp4a.40.2",FRAME-RATE=30.000')
    assert lines[4] == "cam/source.m3u8" and lines[6] == "cam/360p.m3u8"


def test_hub_drops_oldest_for_a_slow_subscriber() -> None:
    async def main() -> None:
        hub = Hub()
        slow = hub.subscribe(maxsize=2, name="whep")
        fast = hub.subscribe(maxsize=10, name="hls")
        for i in range(5):
            hub.publish(seg(i))
        assert slow.dropped == 3 and fast.dropped == 0
        assert hub.dropped == {"whep": 3, "hls": 0}  # what /metrics shows per subscriber
        got = [await slow.get(), await slow.get()]
        assert [s.seq for s in got if isinstance(s, Segment)] == [3, 4]
        assert [(await fast.get()).seq for _ in range(5)] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
        slow.close()
        hub.publish(seg(9))
        assert slow.dropped == 3 and hub.dropped["whep"] == 3

    asyncio.run(main())


def test_playlist_text_is_rendered_again_only_when_it_changes() -> None:
    out = HlsOutput(window=6, wall_clock=lambda: 1000.0)
    out.handle(seg(0))
    first = out.media_playlist_bytes("s", "source")
    assert first is not None and first is out.media_playlist_bytes("s", "source")  # cached
    out.handle(seg(1))
    second = out.media_playlist_bytes("s", "source")
    assert second is not None and second != first and second.decode() == out.media_playlist("s", "source")
    out.handle(StreamEnded("s"))
    ended = out.media_playlist_bytes("s", "source")
    assert ended is not None and parse_playlist(ended.decode()).ended


def test_hls_serving_answers_as_the_routes_do() -> None:
    """The layer in front of FastAPI gives players the same answers the API's routes give: body,
    status and headers (CORS included, as the app's middleware adds it), for GET and HEAD; what
    it does not know goes on to the app (a 404 with its JSON detail)."""
    import httpx

    from streamgw.api.app import create_app
    from streamgw.api.hls import HlsServing
    from streamgw.gateway.publishers import Publishers, PublisherSettings
    from streamgw.metrics import Metrics

    async def scenario() -> None:
        hub = Hub()
        out = HlsOutput(window=6, wall_clock=lambda: 1000.0)
        out.handle(seg(0))
        out.handle(seg(1))
        app = create_app(Publishers(hub, PublisherSettings()), out, Metrics(), web_dir=Path("web"))
        name = parse_playlist(out.media_playlist("s", "source") or "").entries[0][1]
        paths = ["/stream/s/source.m3u8", f"/stream/s/{name}", "/stream/s/nope.m3u8", "/stream/s/source/x.ts",
                 "/stream/s/source/", "/stream/x/y/z/w"]
        fast_app = HlsServing(app, out)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fast_app), base_url="http://t") as fast, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as routes:
            for path in paths:
                for method in ("GET", "HEAD"):
                    for headers in ({}, {"Origin": "http://player.example"}):
                        a = await fast.request(method, path, headers=headers)
                        b = await routes.request(method, path, headers=headers)
                        assert (a.status_code, a.content) == (b.status_code, b.content), (method, path)
                        keep = ("content-type", "content-length", "cache-control", "access-control-allow-origin",
                                "access-control-expose-headers")
                        assert {k: a.headers.get(k) for k in keep} == {k: b.headers.get(k) for k in keep}, path

    asyncio.run(scenario())
