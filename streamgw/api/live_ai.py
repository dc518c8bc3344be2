"""Live AI routes on the gateway's HTTP port: go-livepeer's (WIRE.md §10.1) and streamgw's own.

    POST /live/video-to-video/{stream}/start    form (go-livepeer: ``query`` with pipeline, params,
                                                 streamId) or JSON {"pipeline", "params", "stream_id"}
    POST /live/video-to-video/{stream}/update   the new params, forwarded byte for byte
    ANY  /live/video-to-video/{stream_id}/status the last status event + the gateway's fields
    POST /live/video-to-video/{stream}/whip     WHIP ingest, the pipeline from the URL query
    POST /live/video-to-video/{stream}[-{request_id}]-out/whep   WHEP of the AI output
    GET  /api/live                               pipelines the network offers (with parameters
                                                 where installed here) and every session's status

Errors are plain text, as go-livepeer's ``http.Error``: 400 for a bad request (naming the field),
404 for an unknown stream, 503 when no orchestrator can take the stream.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from streamgw.errors import (
    BadStreamName,
    CapacityError,
    LiveAiRefused,
    NoLiveOrchestrator,
    ProtocolError,
    StreamBusy,
)
from streamgw.gateway.live_ai import AI_RENDITION, LiveAi
from streamgw.gateway.live_request import MAX_PARAMS, LiveRequest, parse_params, parse_query
from streamgw.pipelines import registry

PREFIX = "/live/video-to-video"
MAX_FORM = 16 * 1024


class LiveIngest(Protocol):
    """What the WHIP and WHEP routes under /live need (the node's WHIP server and WHEP output)."""

    async def whip(self, stream: str, offer: str, remote: str, query: str) -> tuple[str, str]: ...

    async def whep(self, stream: str, rendition: str, offer: str, remote: str) -> tuple[str, str]: ...

    def is_live(self, stream: str) -> bool: ...


def _text(status: int, text: str) -> PlainTextResponse:
    return PlainTextResponse(text + "\n", status_code=status)


def _refused(exc: LiveAiRefused) -> PlainTextResponse:
    return _text(503 if isinstance(exc, NoLiveOrchestrator) else 400, str(exc))


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, or None past ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _start_request(content_type: str, body: bytes) -> LiveRequest:
    """The /start body: go-livepeer's form (its ``query`` field) or streamgw's JSON."""
    if content_type.startswith("application/json"):
        value = parse_params(body or b"{}")
        pipeline = value.get("pipeline") or value.get("model_id") or "noop"
        params = value.get("params")
        if params is not None and not isinstance(params, dict):
            raise LiveAiRefused("must be a JSON object", "params")
        query = "pipeline=" + str(pipeline)
        request = parse_query(query)
        assert request is not None
        return LiveRequest(request.pipeline, params, str(value.get("stream_id") or ""),
                           str(value.get("orchestrator") or ""))
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    request = parse_query(form.get("query", ""))
    return request if request is not None else LiveRequest("noop")


def live_ai_router(live: LiveAi, ingest: LiveIngest) -> APIRouter:
    """The live AI routes over the gateway's live AI and its WebRTC endpoints."""
    router = APIRouter(tags=["live-ai"])

    @router.post(PREFIX + "/{stream}/start", response_class=Response)
    async def start(stream: str, request: Request) -> Response:
        """Run ``stream`` through a pipeline (now if it is live, else when it is published)."""
        if stream.endswith("-out"):
            return Response(status_code=200)  # go-livepeer ignores its own outputs
        body = await _body(request, MAX_FORM + MAX_PARAMS)
        if body is None:
            return _text(413, "request body too large")
        try:
            wanted = _start_request(request.headers.get("content-type", ""), body)
            if not ingest.is_live(stream):
                live.expect(stream, wanted)
                return JSONResponse({"stream": stream, "pipeline": wanted.pipeline,
                                     "state": "waiting for the stream to be published"})
            session = await live.start(stream, wanted)
        except LiveAiRefused as exc:
            return _refused(exc)
        return JSONResponse(session.status())

    @router.post(PREFIX + "/{stream}/update", response_class=Response)
    async def update(stream: str, request: Request) -> Response:
        """New parameters for ``stream``'s pipeline, applied live."""
        body = await _body(request, MAX_PARAMS)
        if body is None:
            return _text(413, f"params: larger than {MAX_PARAMS} bytes")
        try:
            parse_params(body)
        except LiveAiRefused as exc:
            return _refused(exc)
        session = live.session(stream)
        if session is None:
            return _text(404, "Stream not found")
        session.update(body)
        return Response(status_code=200)

    @router.api_route(PREFIX + "/{stream_id}/status", methods=["GET", "POST"], response_class=Response)
    async def status(stream_id: str) -> Response:
        """go-livepeer's status JSON for a stream (by stream_id; the stream name when none was given)."""
        session = live.by_stream_id(stream_id)
        if session is None:
            return _text(404, "Stream not found")
        return JSONResponse(session.status())

    @router.post(PREFIX + "/{stream}/whip", response_class=Response)
    async def whip(stream: str, request: Request) -> Response:
        """Publish ``stream`` over WHIP through the pipeline in the URL query (default ``noop``)."""
        offer = await _sdp(request)
        if isinstance(offer, Response):
            return offer
        query = request.url.query if "pipeline=" in request.url.query else "pipeline=noop&" + request.url.query
        try:
            session_id, answer = await ingest.whip(stream, offer, _remote(request), query)
        except LiveAiRefused as exc:
            return _refused(exc)
        except StreamBusy as exc:
            return _text(409, str(exc))
        except CapacityError as exc:
            return _text(503, str(exc))
        except (ProtocolError, BadStreamName) as exc:
            return _text(400, str(exc))
        return Response(answer, status_code=201, media_type="application/sdp", headers={
            "Location": f"/whip/session/{session_id}", "ETag": f'"{session_id}"',
            "Livepeer-Playback-URL": f"{PREFIX}/{stream}-out/whep", "Cache-Control": "no-store"})

    @router.post(PREFIX + "/{output}/whep", response_class=Response)
    async def whep(output: str, request: Request) -> Response:
        """Watch a stream's AI output: ``{stream}-out`` or ``{stream}-{request_id}-out``."""
        parts = output.split("-")
        if len(parts) not in (2, 3) or parts[-1] != "out":
            return _text(404, "Malformed stream ID")
        stream = parts[0]
        session = live.session(stream)
        if session is None or (len(parts) == 3 and parts[1] != session.request_id):
            return _text(404, "Stream not found")
        offer = await _sdp(request)
        if isinstance(offer, Response):
            return offer
        try:
            session_id, answer = await ingest.whep(stream, AI_RENDITION, offer, _remote(request))
        except CapacityError as exc:
            return _text(429, str(exc))
        except (ProtocolError, BadStreamName) as exc:
            return _text(400, str(exc))
        return Response(answer, status_code=201, media_type="application/sdp",
                        headers={"Location": f"/whep/session/{session_id}", "Cache-Control": "no-store"})

    @router.get("/api/live")
    async def overview() -> dict[str, Any]:
        """The pipelines the network offers (how many orchestrators offer each, and their
        parameters where the pipeline is installed here) and every stream's live AI."""
        offered = live.models()
        return {
            "pipelines": [{"name": name, "orchestrators": count, "params": registry.parameters(name)}
                          for name, count in sorted(offered.items())],
            "sessions": [s.status() for s in live.sessions.values()],
            "defaults": live.defaults,
        }

    return router


def _remote(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


async def _sdp(request: Request) -> str | Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/sdp":
        return _text(415, "the offer must be application/sdp")
    body = await _body(request, 64 * 1024)
    if body is None:
        return _text(413, "SDP offer too large")
    text = body.decode("utf-8", "replace")
    if not text.startswith("v=0"):
        return _text(400, "the body is not an SDP offer")
    return text

