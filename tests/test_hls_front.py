"""The HTTP connection protocol in front of uvicorn (api/hls.py ``hls_front``), spoken to with raw
HTTP/1.1 (RFC 9112) on a socket: it answers media playlists and segments as uvicorn and the app
do, byte for byte apart from the Date header, keeps pipelined answers in order, and hands any
other request, with what follows it on the connection, to uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from tests.harness import RunningGateway, publish, start_gateway
from tests.media import parse_playlist


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """One keep-alive connection; reads responses by Content-Length (RFC 9112 6.3)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed by the server")
        self.buf += data

    def response(self, *, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value.strip()
        length = 0 if head else int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(int(status), headers, body)

    def close(self) -> None:
        self.sock.close()


def _get(path: str, *extra: str, method: str = "GET") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *extra, "", ""]).encode()


@pytest.fixture(scope="module")
def ended() -> Iterator[tuple[RunningGateway, str, str]]:
    """A gateway with one ended stream still listed: its playlist path and a segment's path."""
    gw = start_gateway()
    try:
        yield _ended_stream(gw)
    finally:
        gw.stop()


def _ended_stream(gw: RunningGateway) -> tuple[RunningGateway, str, str]:
    proc = publish(gw.rtmp_url("front"), seconds=3, realtime=False)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/stream/front/source.m3u8").status_code == 200
                and b"#EXT-X-ENDLIST" in gw.get("/stream/front/source.m3u8").content, 20, "the ended playlist")
    playlist = "/stream/front/source.m3u8"
    first = parse_playlist(gw.get(playlist).text).entries[0][1]
    return gw, playlist, first if first.startswith("/") else f"/stream/front/{first}"


def _by_uvicorn(port: int, path: str, *extra: str, method: str = "GET") -> Response:
    """The same request as uvicorn and the app answer it (Connection: close is not answered in front)."""
    conn = Conn(port)
    conn.send(_get(path, "Connection: close", *extra, method=method))
    try:
        return conn.response(head=method == "HEAD")
    finally:
        conn.close()


def _same(a: Response, b: Response) -> None:
    assert a.status == b.status and a.body == b.body
    mine = {k: v for k, v in a.headers.items() if k != "date"}
    theirs = {k: v for k, v in b.headers.items() if k not in ("date", "connection")}
    assert mine == theirs


@pytest.mark.parametrize("extra", [(), ("Origin: http://player.example",), ("Connection: keep-alive",)])
def test_playlist_and_segment_answered_as_uvicorn_answers_them(
    ended: tuple[RunningGateway, str, str], extra: tuple[str, ...]
) -> None:
    gw, playlist, segment = ended
    conn = Conn(gw.node.http_port)
    for path in (playlist, segment):
        conn.send(_get(path, *extra))
        front = conn.response()
        assert front.status == 200 and front.body
        _same(front, _by_uvicorn(gw.node.http_port, path, *extra))
        assert ("access-control-allow-origin" in front.headers) == any(e.startswith("Origin") for e in extra)
    conn.close()


def test_head_has_the_get_headers_and_no_body(ended: tuple[RunningGateway, str, str]) -> None:
    gw, playlist, _ = ended
    conn = Conn(gw.node.http_port)
    conn.send(_get(playlist, method="HEAD") + _get(playlist))
    head = conn.response(head=True)
    get = conn.response()
    assert head.status == 200 and head.headers["content-length"] == str(len(get.body))
    _same(head, _by_uvicorn(gw.node.http_port, playlist, method="HEAD"))
    conn.close()


def test_pipelined_and_split_requests_are_answered_in_order(ended: tuple[RunningGateway, str, str]) -> None:
    gw, playlist, segment = ended
    conn = Conn(gw.node.http_port)
    stream = _get(playlist) + _get(segment) + _get(playlist)
    for i in range(0, len(stream), 7):  # a few bytes per send: heads split anywhere
        conn.send(stream[i:i + 7])
    answers = [conn.response() for _ in range(3)]
    assert [a.headers["content-type"] for a in answers] == [
        "application/vnd.apple.mpegurl", "video/mp2t", "application/vnd.apple.mpegurl"]
    assert answers[0].body == answers[2].body and answers[1].body.startswith(b"\x47")
    conn.close()


def test_other_requests_and_what_follows_go_to_uvicorn(ended: tuple[RunningGateway, str, str]) -> None:
    gw, playlist, _ = ended
    conn = Conn(gw.node.http_port)
    conn.send(_get(playlist))
    assert conn.response().status == 200
    # The API, a 404, then a playlist again, pipelined after the hand-over.
    conn.send(_get("/api/streams") + _get("/stream/nobody/source.m3u8") + _get(playlist))
    api = conn.response()
    assert api.status == 200 and api.headers["content-type"] == "application/json" and api.body.startswith(b"[")
    assert conn.response().status == 404
    again = conn.response()
    assert again.status == 200 and b"#EXTM3U" in again.body
    conn.close()


def test_a_request_with_a_body_or_odd_path_is_not_answered_in_front(ended: tuple[RunningGateway, str, str]) -> None:
    gw, playlist, _ = ended
    encoded = playlist.replace("source", "sour%63e")  # percent-decoded by uvicorn, still the playlist
    conn = Conn(gw.node.http_port)
    conn.send(_get(encoded))
    assert conn.response().status == 200
    conn.close()
    conn = Conn(gw.node.http_port)
    conn.send(b"POST " + playlist.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    assert conn.response().status == 405
    conn.close()


def _front_counts(gw: RunningGateway) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in gw.get("/metrics").text.splitlines():
        if line.startswith("streamgw_http_front_events_total{"):
            what = line.split('what="', 1)[1].split('"', 1)[0]
            counts[what] = float(line.rsplit(" ", 1)[1])
    return counts


def test_plain_gets_are_answered_in_front_and_others_handed_over(ended: tuple[RunningGateway, str, str]) -> None:
    gw, playlist, segment = ended
    before = _front_counts(gw)
    conn = Conn(gw.node.http_port)
    conn.send(_get(playlist) + _get(segment, "Connection: keep-alive") + _get(playlist, "Connection: close"))
    assert [conn.response().status for _ in range(3)] == [200, 200, 200]
    conn.close()
    after = _front_counts(gw)
    # Two answered in front; the third went to uvicorn with its connection (as the /metrics
    # requests do: not a playlist or segment).
    assert after["answered"] - before["answered"] == 2
    assert after["handed_over"] - before["handed_over"] >= 1
