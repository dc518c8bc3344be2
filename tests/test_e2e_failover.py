"""Many orchestrator processes: parallel dispatch, kill -9, slow nodes, restarts, all down, webhook."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import OrchestratorProcess, RunningGateway, finish, publish, start_publish
from tests.media import parse_playlist, seq_of

pytestmark = pytest.mark.slow

LADDER = "P144p30fps16x9,P240p30fps16x9"
RENDITIONS = ("P144p30fps16x9", "P240p30fps16x9")


def _segments_by(gw: RunningGateway) -> dict[str, int]:
    return {o["address"]: o["segments"] for o in gw.get("/api/orchestrators").json()}


def _ended(gw: RunningGateway, name: str) -> bool:
    for r in ("source", *RENDITIONS):
        resp = gw.get(f"/stream/{name}/{r}.m3u8")
        if resp.status_code != 200 or not parse_playlist(resp.text).ended:
            return False
    return True


def _seqs(gw: RunningGateway, name: str, rendition: str) -> tuple[list[int], list[bool]]:
    pl = parse_playlist(gw.get(f"/stream/{name}/{rendition}.m3u8").text)
    return [seq_of(e[1]) for e in pl.entries], [e[2] for e in pl.entries]


def test_kill_one_mid_stream_loses_nothing(gateway_factory: Callable[..., RunningGateway],
                                           orchestrators: Callable[..., OrchestratorProcess]) -> None:
    # The victim takes 1 s longer per segment, so it is killed in the middle of an attempt (it
    # is tried early, as every unmeasured orchestrator is): that attempt fails and is counted,
    # and its segment is retried on another.
    victim = orchestrators("--orch-delay", "1.0")
    orchs = [victim, orchestrators(), orchestrators()]
    gw = gateway_factory(orch_addr=",".join(o.url for o in orchs), transcoding_options=LADDER,
                         playlist_window=20)

    def victim_busy() -> bool:
        return any(o["address"] == victim.url and o["in_flight"] >= 1 for o in gw.get("/api/orchestrators").json())

    proc = start_publish(gw.rtmp_url("k9"), seconds=16)
    gw.wait_for(victim_busy, timeout=30, what="a segment in flight on the victim")
    victim.kill()  # SIGKILL: no goodbye, connections just break
    served = _segments_by(gw)[victim.url]
    err = finish(proc)
    assert proc.returncode == 0, f"the publisher failed: {err}"
    gw.wait_for(lambda: _ended(gw, "k9"), timeout=60, what="all renditions ended")
    source, _ = _seqs(gw, "k9", "source")
    assert source == list(range(8))
    for r in RENDITIONS:
        seqs, discs = _seqs(gw, "k9", r)
        assert seqs == source, f"{r} has every seq"
        assert not any(discs), "no gaps"
    assert gw.node.dispatcher is not None and gw.node.dispatcher.lost == 0
    view = {o["address"]: o for o in gw.get("/api/orchestrators").json()}
    assert set(view) == {o.url for o in orchs}, "the operator sees all three"
    killed = view[victim.url]
    # What it was given after the kill failed: counted, and why; it served nothing more.
    assert killed["failures"] >= 1 and killed["last_error"], json.dumps(view, indent=1)
    assert killed["segments"] <= served + 1, "nothing credited to it after it died (but an answer on its way)"


def test_slow_orchestrator_gets_less_traffic(gateway_factory: Callable[..., RunningGateway],
                                             orchestrators: Callable[..., OrchestratorProcess]) -> None:
    fast = [orchestrators() for _ in range(2)]
    slow = orchestrators("--orch-delay", "2.5")  # slower than real time: T > D
    gw = gateway_factory(orch_addr=",".join(o.url for o in [slow, *fast]), transcoding_options=LADDER,
                         playlist_window=20)
    proc = publish(gw.rtmp_url("slow"), seconds=24)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: _ended(gw, "slow"), timeout=60)
    counts = _segments_by(gw)
    assert sum(counts.values()) == 12
    # Latency-greedy with some exploration: the slow one is measured, then mostly avoided.
    assert counts[slow.url] <= 3 and counts[slow.url] < max(counts[f.url] for f in fast), counts
    scores = {o["address"]: o["latency_score"] for o in gw.get("/api/orchestrators").json()}
    assert scores[slow.url] is not None and scores[slow.url] > max(scores[f.url] or 0 for f in fast)
    for r in RENDITIONS:
        assert _seqs(gw, "slow", r)[0] == list(range(12))


def test_restarted_orchestrator_is_used_again(gateway_factory: Callable[..., RunningGateway],
                                              orchestrators: Callable[..., OrchestratorProcess],
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    data_a = str(tmp_path_factory.mktemp("a"))
    a = orchestrators(data_dir=data_a)
    b = orchestrators()
    gw = gateway_factory(orch_addr=f"{a.url},{b.url}", transcoding_options=LADDER, playlist_window=30)
    proc = start_publish(gw.rtmp_url("again"), seconds=30)
    gw.wait_for(lambda: _segments_by(gw)[a.url] >= 1 or sum(_segments_by(gw).values()) >= 3, timeout=30)
    a.kill()
    gw.wait_for(lambda: sum(_segments_by(gw).values()) >= 5, timeout=30, what="segments on B")
    before = _segments_by(gw)[a.url]
    restarted = orchestrators(port=a.port, data_dir=data_a)  # same address, same certificate
    time.sleep(1)
    b.kill()  # now only the restarted A can serve
    err = finish(proc)
    assert proc.returncode == 0, f"the publisher failed: {err}"
    gw.wait_for(lambda: _ended(gw, "again"), timeout=60)
    assert _segments_by(gw)[restarted.url] > before, "the restarted orchestrator took segments again"
    source, _ = _seqs(gw, "again", "source")
    seqs, _ = _seqs(gw, "again", RENDITIONS[0])
    assert len(seqs) >= len(source) - 2, "at most the segments caught in the switch-over are lost"


def test_all_down_source_keeps_playing_and_api_says_why(
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., OrchestratorProcess]) -> None:
    orchs = [orchestrators() for _ in range(2)]
    gw = gateway_factory(orch_addr=",".join(o.url for o in orchs), transcoding_options=LADDER,
                         playlist_window=20)
    proc = start_publish(gw.rtmp_url("down"), seconds=14)
    gw.wait_for(lambda: sum(_segments_by(gw).values()) >= 1, timeout=30)
    for o in orchs:
        o.kill()
    gw.wait_for(lambda: (gw.get("/api/streams/down").json().get("transcode_error") or "") != "", timeout=30,
                what="the API to report the failure")
    info = gw.get("/api/streams/down").json()
    assert info["state"] == "live"
    orch_view = gw.get("/api/orchestrators").json()
    assert all(o["last_error"] for o in orch_view)
    assert any(o["suspended_until"] for o in orch_view) or "no orchestrator" in info["transcode_error"]
    err = finish(proc)
    assert proc.returncode == 0, f"the publisher failed: {err}"
    gw.wait_for(lambda: _ended(gw, "down"), timeout=60)
    source, _ = _seqs(gw, "down", "source")
    assert source == list(range(7)), "the source never stopped"
    seqs, discs = _seqs(gw, "down", RENDITIONS[0])
    assert len(seqs) < len(source)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, object]]]]:
    listing: list[dict[str, object]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(listing).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/orchestrators", listing
    server.shutdown()
    server.server_close()


def test_webhook_discovery(gateway_factory: Callable[..., RunningGateway],
                           orchestrators: Callable[..., OrchestratorProcess],
                           webhook: tuple[str, list[dict[str, object]]]) -> None:
    url, listing = webhook
    orch = orchestrators()
    listing.append({"address": orch.url, "score": 0.5})
    gw = gateway_factory(orch_webhook_url=url, transcoding_options=LADDER, orch_refresh_interval=1.0)
    gw.wait_for(lambda: any(o["transcoder"] for o in gw.get("/api/orchestrators").json()), timeout=15,
                what="discovery through the webhook")
    proc = publish(gw.rtmp_url("hook"), seconds=4, realtime=False)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: _ended(gw, "hook"), timeout=60)
    assert _seqs(gw, "hook", RENDITIONS[1])[0] == [0, 1]
    # A second orchestrator appears in the listing: the next refresh picks it up.
    second = orchestrators()
    listing.append({"address": second.url, "score": 0.9})
    gw.wait_for(lambda: len(gw.get("/api/orchestrators").json()) == 2, timeout=15)
