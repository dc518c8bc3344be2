"""Failures charged to whoever caused them: a bad segment to its stream, busy to nobody (issue 9, 4 and 6).

In-process: a real orchestrator node on a TLS port, the gateway's real client, pool and
dispatcher on one event loop, segments cut by the real segmenter from ffmpeg-generated media.
End to end (slow): a real gateway, orchestrator processes, ffmpeg RTMP publishers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import av
import pytest

from streamgw.cli import orchestrator_node
from streamgw.config import load_settings
from streamgw.errors import BadRenditionSignature, OrchestratorBusy, OrchestratorError, SegmentRejected
from streamgw.gateway.discovery import OrchestratorPool
from streamgw.gateway.dispatcher import NO_VIDEO, Dispatcher, DispatchSettings
from streamgw.gateway.hub import Hub, StreamEnded, Subscription
from streamgw.gateway.selection import SelectionPolicy
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.client import OrchestratorClient, result_error
from streamgw.livepeer.profiles import PRESETS
from streamgw.livepeer.segdata import transcode_result
from streamgw.livepeer.signing import MessageSigner, Signer
from streamgw.livepeer.tls import CertificatePins
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings
from streamgw.segment import Segment
from tests.conftest import FFMPEG, OrchestratorProcess, RunningGateway, start_publish
from tests.media import cut_bytes, parse_playlist, seq_of

LADDER = "P144p30fps16x9"
PROFILES = (PRESETS[LADDER],)
VECTORS = Path(__file__).resolve().parent / "vectors" / "livepeer"  # a copy of ../shared/livepeer/vectors


def _cut(flv: Path) -> list[Segment]:
    return cut_bytes(flv.read_bytes())[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Segment]]:
    """2 s source segments: 'video' (320x180p30 H.264 + AAC, 4 s) and 'audio' (AAC only, 4 s)."""
    tmp = tmp_path_factory.mktemp("media")
    sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    common = ["-t", "4", "-c:a", "aac", "-f", "flv"]
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
                    *sine, "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-pix_fmt", "yuv420p", *common,
                    str(tmp / "video.flv")], check=True, timeout=60)
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", *sine, *common, str(tmp / "audio.flv")],
                   check=True, timeout=60)
    cut = {name: _cut(tmp / f"{name}.flv") for name in ("video", "audio")}
    assert len(cut["video"]) == 2 and len(cut["audio"]) >= 1
    with av.open(io.BytesIO(cut["audio"][0].data), format="mpegts") as container:
        assert not container.streams.video and container.streams.audio
    return cut


@dataclasses.dataclass
class Gateway:
    """The gateway's side: its own pool (client, health records), hub and dispatcher."""

    pool: OrchestratorPool
    dispatcher: Dispatcher
    hub: Hub
    outputs: dict[tuple[str, int], Segment]


@dataclasses.dataclass
class Harness:
    node: OrchestratorNode
    gateways: list[Gateway]

    # The first gateway's parts, for tests with one gateway.
    pool = property(lambda self: self.gateways[0].pool)
    dispatcher = property(lambda self: self.gateways[0].dispatcher)
    hub = property(lambda self: self.gateways[0].hub)
    outputs = property(lambda self: self.gateways[0].outputs)


def _client(url: str, *, signer: Signer, pins: CertificatePins) -> OrchestratorClient:
    return OrchestratorClient(url, signer, pins)


@contextlib.asynccontextmanager
async def _harness(tmp: Path, *, gateways: int = 1, max_concurrent: int = 0,
                   delay: float = 0.0, signer: MessageSigner | None = None) -> AsyncIterator[Harness]:
    node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp, transcode_workers=1,
                                                     max_concurrent=max_concurrent, delay=delay), signer=signer)
    await node.start()
    made: list[Gateway] = []
    tasks: list[asyncio.Task[None]] = []

    async def collect(sub: Subscription, outputs: dict[tuple[str, int], Segment]) -> None:
        while True:
            event = await sub.get()
            if isinstance(event, Segment) and event.rendition != "source":
                outputs[(event.stream_id, event.seq)] = event

    for i in range(gateways):
        pool = OrchestratorPool(functools.partial(_client, signer=Signer(bytes([0x22 + i]) * 32),
                                                  pins=CertificatePins()), static=[node.url])
        await pool.refresh()  # as the gateway's discovery does at start: info, capacity, session
        hub = Hub()
        gw = Gateway(pool, Dispatcher(hub, pool, PROFILES, DispatchSettings(), SelectionPolicy(explore=0.0)), hub, {})
        tasks.append(asyncio.create_task(collect(hub.subscribe(maxsize=1024), gw.outputs)))
        tasks.append(asyncio.create_task(gw.dispatcher.run(hub.subscribe(maxsize=1024))))
        made.append(gw)
    try:
        yield Harness(node, made)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for gw in made:
            await gw.dispatcher.close()
        await node.close()


async def _drain(gw: Gateway | Harness, streams: set[str], timeout: float = 20.0) -> None:
    """End ``streams`` and wait until the dispatcher has finished every segment of them."""
    gw = gw.gateways[0] if isinstance(gw, Harness) else gw
    for name in streams:
        gw.hub.publish(StreamEnded(name))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(timeout):
        while any(t for n in streams if (s := gw.dispatcher.streams.get(n)) for t in s.tasks):
            await asyncio.sleep(0.02)


def _as(segment: Segment, stream: str) -> Segment:
    return dataclasses.replace(segment, stream_id=stream)


# --- the text-to-type table at the client's boundary -----------------------------------------


def test_result_errors_become_types() -> None:
    url = "https://o:1"
    assert result_error(url, transcode_result(3, renditions=[])) is None
    cases = {
        "OrchestratorBusy": OrchestratorBusy, "OrchestratorCapped": OrchestratorBusy,
        # lpms texts for input it cannot transcode, as go-livepeer orchestrators send them
        "Unsupported input pixel format": SegmentRejected, "Unsupported input codec": SegmentRejected,
        "No keyframes in input": SegmentRejected, "TranscoderInvalidVideo": SegmentRejected,
        # streamgw's orchestrator: lpms's invalid-input text, then its own detail
        "TranscoderInvalidInput: segment has no video stream": SegmentRejected,
        # the orchestrator's own failures
        "MediaStats Failure": OrchestratorError, "ZeroSegments": OrchestratorError,
        "Invalid argument": OrchestratorError, "transcoder failure: RuntimeError: boom": OrchestratorError,
        "Unrecoverable state, restart process": OrchestratorError,
    }
    for text, kind in cases.items():
        error = result_error(url, transcode_result(3, error=text))
        assert type(error) is kind, (text, error)
        assert error is not None and text in str(error)
    # The errors of the shared TranscodeResult vectors land where their meaning says.
    vectors = json.loads((VECTORS / "transcoderesult.json").read_text())
    wire = {v["inputs"]["error"]: pb.TranscodeResult.FromString(base64.b64decode(v["expected"]["message_b64"]))
            for v in vectors if v["kind"] == "transcode_result" and "error" in v["inputs"]}
    assert {"OrchestratorBusy", "MediaStats Failure"} <= set(wire)
    for text, result in wire.items():
        error = result_error(url, result)
        assert isinstance(error, OrchestratorBusy if text.startswith("Orchestrator") else OrchestratorError), text
        assert not isinstance(error, SegmentRejected)


def test_no_session_free_is_busy_not_broken(tmp_path: Path) -> None:
    async def main() -> None:
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path, max_sessions=1))
        await node.start()
        client = OrchestratorClient(node.url, Signer(b"\x22" * 32), CertificatePins())
        try:
            await client.get_orchestrator()
            with pytest.raises(OrchestratorBusy, match="OrchestratorCapped"):
                await client.get_orchestrator()
        finally:
            await client.close()
            await node.close()

    asyncio.run(main())


# --- point 4: a segment's fault is its stream's, never the orchestrator's --------------------


def test_segment_that_cannot_be_transcoded_does_not_suspend_the_orchestrator(
        tmp_path: Path, media: dict[str, list[Segment]]) -> None:
    async def main() -> None:
        async with _harness(tmp_path) as h:
            # No video, and nothing told the dispatcher so: it is sent, and rejected for what it is.
            for seg in media["audio"]:
                h.hub.publish(_as(seg, "radio"))
            await _drain(h, {"radio"})
            record = h.pool.records[h.node.url]
            assert record.failures == 0 and record.consecutive_failures == 0
            assert not record.suspended(time.monotonic()), "the orchestrator did its job"
            assert record.segments_rejected == len(media["audio"]) and record.last_error is None
            assert h.dispatcher.rejected == len(media["audio"])
            error = h.dispatcher.stream_error("radio") or ""
            assert "cannot be transcoded" in error and "segment has no video stream" in error, error
            assert h.node.service is not None and h.node.service.state.failures == len(media["audio"])
            # A good stream right after it is transcoded at once, on the same orchestrator.
            for seg in media["video"]:
                h.hub.publish(_as(seg, "cam"))
            await _drain(h, {"cam"})
            assert sorted(seq for name, seq in h.outputs if name == "cam") == [0, 1]
            assert h.dispatcher.stream_error("cam") is None and record.segments == 2

    asyncio.run(main())


def test_stream_without_video_is_not_sent(tmp_path: Path, media: dict[str, list[Segment]]) -> None:
    async def main() -> None:
        async with _harness(tmp_path) as h:
            h.dispatcher.has_video = lambda name: {"radio": False, "cam": True}.get(name)
            for seg in media["audio"]:
                h.hub.publish(_as(seg, "radio"))
            await _drain(h, {"radio"})
            assert h.dispatcher.stream_error("radio") == NO_VIDEO
            record = h.pool.records[h.node.url]
            assert record.segments + record.segments_rejected + record.failures == 0, "nothing was sent"
            assert h.node.service is not None and h.node.service.state.segments == 0
            assert h.dispatcher.lost == 0 and not h.outputs
            # A publisher that comes back without video: a gap in the renditions, then they go on.
            video = {"cam": True}
            h.dispatcher.has_video = video.get
            h.hub.publish(_as(media["video"][0], "cam"))
            await asyncio.sleep(0.05)
            video["cam"] = False
            h.hub.publish(dataclasses.replace(_as(media["audio"][0], "cam"), seq=1))
            await asyncio.sleep(0.05)
            video["cam"] = True
            h.hub.publish(dataclasses.replace(_as(media["video"][1], "cam"), seq=2))
            await _drain(h, {"cam"})
            assert sorted(seq for _, seq in h.outputs) == [0, 2]
            assert h.outputs[("cam", 2)].discontinuity and not h.outputs[("cam", 0)].discontinuity
            assert h.dispatcher.lost == 0 and record.failures == 0

    asyncio.run(main())


# --- issue 10: an on-chain orchestrator's results carry its signature -------------------------


class Impostor:
    """An orchestrator identity that advertises ``claimed``'s address and signs with ``actual``'s key."""

    def __init__(self, claimed: Signer, actual: Signer) -> None:
        self.claimed = claimed
        self.actual = actual

    @property
    def address(self) -> bytes:
        """The address it advertises."""
        return self.claimed.address

    @property
    def checksum_address(self) -> str:
        """The EIP-55 form of the address it advertises."""
        return self.claimed.checksum_address

    def sign(self, msg: bytes) -> bytes:
        """Signed with the other key."""
        return self.actual.sign(msg)

    def sign_hash(self, payload: bytes) -> bytes:
        """Signed with the other key."""
        return self.actual.sign_hash(payload)

    def verify(self, address: str | bytes, msg: bytes, sig: bytes) -> None:
        """As any node checks others."""
        self.claimed.verify(address, msg, sig)

    def verify_hash(self, address: str | bytes, payload: bytes, sig: bytes) -> None:
        """As any node checks others."""
        self.claimed.verify_hash(address, payload, sig)


def test_onchain_orchestrator_results_are_checked_against_its_signature(
        tmp_path: Path, media: dict[str, list[Segment]]) -> None:
    async def main() -> None:
        orchestrator = Signer(b"\x44" * 32)
        # On-chain and honest: its signature covers the renditions fetched, they are published.
        async with _harness(tmp_path / "honest", signer=orchestrator) as h:
            info = h.pool.records[h.node.url].info
            assert info is not None and info.address == orchestrator.address
            for seg in media["video"]:
                h.hub.publish(_as(seg, "cam"))
            await _drain(h, {"cam"})
            assert sorted(h.outputs) == [("cam", 0), ("cam", 1)]
            assert h.pool.records[h.node.url].failures == 0
        # It advertises one address and signs with another key: its renditions are not accepted,
        # and that is its failure (suspended), not the stream's.
        async with _harness(tmp_path / "impostor", signer=Impostor(orchestrator, Signer(b"\x55" * 32))) as h:
            h.hub.publish(_as(media["video"][0], "cam"))
            await _drain(h, {"cam"})
            assert not h.outputs and h.dispatcher.lost == 1 and h.dispatcher.rejected == 0
            record = h.pool.records[h.node.url]
            assert record.failures == 1 and record.suspended(time.monotonic())
            assert h.node.service is not None and h.node.service.state.segments == 1, "it did transcode"
            error = h.dispatcher.stream_error("cam") or ""
            assert f"renditions not signed by {orchestrator.checksum_address}" in error, error
            assert record.last_error == error
            assert issubclass(BadRenditionSignature, OrchestratorError), "charged like any failure of its own"

    asyncio.run(main())


# --- point 6: busy waits for capacity within the deadline ------------------------------------


def test_busy_orchestrator_is_waited_for_not_dropped(tmp_path: Path, media: dict[str, list[Segment]]) -> None:
    async def main() -> None:
        # Two gateways, one stream each, on an orchestrator that takes one segment at a time
        # (held 0.5 s): their segments, arriving together, collide.
        async with _harness(tmp_path, gateways=2, max_concurrent=1, delay=0.5) as h:
            a, b = h.gateways
            for seg in media["video"]:
                a.hub.publish(_as(seg, "a"))
                b.hub.publish(_as(seg, "b"))
                await asyncio.sleep(0.2)
            await asyncio.gather(_drain(a, {"a"}), _drain(b, {"b"}))
            for gw, name in ((a, "a"), (b, "b")):
                assert sorted(gw.outputs) == [(name, 0), (name, 1)], f"{name}: nothing lost to busy"
                assert not any(o.discontinuity for o in gw.outputs.values())
                assert gw.dispatcher.lost == 0 and gw.pool.records[h.node.url].failures == 0
            refusals = [gw.pool.records[h.node.url].busy_refusals for gw in h.gateways]
            assert sum(refusals) > 0, "the orchestrator did refuse, and was waited for"
            assert [gw.dispatcher.busy_refusals for gw in h.gateways] == refusals
            assert h.node.service is not None and h.node.service.state.busy_refusals == sum(refusals)

    asyncio.run(main())


def test_gateway_waits_for_advertised_capacity(tmp_path: Path, media: dict[str, list[Segment]]) -> None:
    async def main() -> None:
        # One gateway, two streams, capacity 1: the gateway holds its second segment until the
        # first is done rather than upload it to be refused.
        async with _harness(tmp_path, max_concurrent=1, delay=0.5) as h:
            for seg in media["video"]:
                for name in ("a", "b"):
                    h.hub.publish(_as(seg, name))
                await asyncio.sleep(0.2)
            await _drain(h, {"a", "b"})
            assert sorted(h.outputs) == [(n, s) for n in ("a", "b") for s in (0, 1)], "nothing lost"
            record = h.pool.records[h.node.url]
            assert record.busy_refusals == 0 and record.failures == 0 and record.segments == 4
            assert h.node.service is not None and h.node.service.state.busy_refusals == 0

    asyncio.run(main())


# --- end to end -------------------------------------------------------------------------------


def _orchestrator(gw: RunningGateway) -> dict[str, object]:
    views: list[dict[str, object]] = gw.get("/api/orchestrators").json()
    assert len(views) == 1
    return views[0]


def _ended(gw: RunningGateway, name: str, renditions: tuple[str, ...]) -> bool:
    for r in renditions:
        resp = gw.get(f"/stream/{name}/{r}.m3u8")
        if resp.status_code != 200 or not parse_playlist(resp.text).ended:
            return False
    return True


def _dispatched(gw: RunningGateway, name: str) -> bool:
    """The dispatcher is done with ``name`` (call on the gateway's loop)."""
    state = gw.node.dispatcher.streams.get(name) if gw.node.dispatcher else None
    return state is not None and state.ended and not state.tasks


def _discovered(gw: RunningGateway) -> bool:
    return _orchestrator(gw)["transcoder"] is not None


def _finished(gw: RunningGateway, name: str) -> bool:
    """The source ended and the dispatcher is done with every segment of ``name``."""
    return _ended(gw, name, ("source",)) and bool(gw.call(lambda: _dispatched(gw, name)))


def _seqs(gw: RunningGateway, name: str, rendition: str) -> list[tuple[int, bool]]:
    resp = gw.get(f"/stream/{name}/{rendition}.m3u8")
    if resp.status_code == 404:
        return []
    return [(seq_of(uri), disc) for _, uri, disc, _ in parse_playlist(resp.text).entries]


@pytest.mark.slow
def test_audio_only_publisher_beside_a_normal_one(gateway_factory: Callable[..., RunningGateway],
                                                  orchestrators: Callable[..., OrchestratorProcess]) -> None:
    orch = orchestrators()
    gw = gateway_factory(orch_addr=orch.url, transcoding_options=LADDER, playlist_window=20)
    radio = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i",
                              "sine=frequency=440:sample_rate=48000", "-t", "6", "-c:a", "aac", "-b:a", "96k",
                              "-f", "flv", gw.rtmp_url("radio")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    cam = start_publish(gw.rtmp_url("cam"), seconds=6, size="320x180")
    try:
        gw.wait_for(lambda: gw.get("/api/streams/radio").status_code == 200
                    and gw.get("/api/streams/radio").json()["transcode_error"] is not None,
                    timeout=30, what="the audio-only stream's transcode_error")
        view = gw.get("/api/streams/radio").json()
        assert view["transcode_error"] == NO_VIDEO and view["video_codec"] is None and view["state"] == "live"
        assert _orchestrator(gw)["suspended_until"] is None
    finally:
        for proc in (radio, cam):
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    gw.wait_for(lambda: _ended(gw, "cam", ("source", LADDER)) and _ended(gw, "radio", ("source",)), timeout=60,
                what="both streams ended")
    source = _seqs(gw, "cam", "source")
    assert [s for s, _ in source] == [0, 1, 2]
    assert _seqs(gw, "cam", LADDER) == [(s, False) for s, _ in source], "every segment of the normal stream"
    assert len(_seqs(gw, "radio", "source")) >= 2, "the audio-only stream plays as source"
    assert gw.get(f"/stream/radio/{LADDER}.m3u8").status_code == 404
    o = _orchestrator(gw)
    assert o["failures"] == 0 and o["suspended_until"] is None and o["segments"] == 3, o
    assert gw.get("/api/streams/cam").json()["transcode_error"] is None


@pytest.mark.slow
def test_two_streams_on_an_orchestrator_of_capacity_one(gateway_factory: Callable[..., RunningGateway],
                                                        orchestrators: Callable[..., OrchestratorProcess]) -> None:
    # Two gateways (one cannot see the other's load), one stream each, on one orchestrator that
    # takes one segment at a time and holds each 0.5 s: their segments collide every time.
    orch = orchestrators("--transcode-capacity", "1", "--orch-delay", "0.5")
    gws = {name: gateway_factory(orch_addr=orch.url, transcoding_options=LADDER, playlist_window=20)
           for name in ("a", "b")}
    for gw in gws.values():
        gw.wait_for(functools.partial(_discovered, gw), timeout=15, what="discovery")
    procs = [start_publish(gw.rtmp_url(name), seconds=6, size="320x180") for name, gw in gws.items()]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    for name, gw in gws.items():
        gw.wait_for(functools.partial(_finished, gw, name), timeout=60, what=f"{name} ended and dispatched")
    refusals = 0
    for name, gw in gws.items():
        source = _seqs(gw, name, "source")
        assert len(source) == 3
        assert _seqs(gw, name, LADDER) == [(s, False) for s, _ in source], f"{name}: every segment, no gap"
        o = _orchestrator(gw)
        assert isinstance(o["busy_refusals"], int) and o["failures"] == 0 and o["segments"] == 3, o
        assert o["suspended_until"] is None
        metrics = gw.get("/metrics").text
        counted = sum(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
                      if x.startswith("streamgw_orchestrator_busy_refusals_total{"))
        assert counted == o["busy_refusals"]
        assert gw.node.dispatcher is not None and gw.node.dispatcher.lost == 0
        refusals += o["busy_refusals"]
    assert refusals > 0, "the orchestrator refused segments as busy, and they were waited for"


def test_orchestrator_sizes_its_concurrency_to_the_machine() -> None:
    """One transcode thread per CPU the process may use, capacity twice that; both configurable."""
    script = ("from streamgw.cli import orchestrator_node; from streamgw.config import load_settings; "
              "n = orchestrator_node(load_settings(None, {}, environ={})); print(n.workers, n.max_concurrent)")
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert (int(out[0]), int(out[1])) == (1, 2), "a process on one CPU: one thread"
    cpus = len(os.sched_getaffinity(0))
    node = orchestrator_node(load_settings(None, {}, environ={}))
    assert (node.workers, node.max_concurrent) == (cpus, 2 * cpus)
    node = orchestrator_node(load_settings(None, {"transcode_workers": 3, "transcode_capacity": 1}, environ={}))
    assert (node.workers, node.max_concurrent) == (3, 1)
