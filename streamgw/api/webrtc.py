"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) endpoints on the gateway's HTTP port.

    POST   /whip/STREAM[?pipeline=P&params=JSON]  application/sdp offer -> 201, answer, Location
    DELETE /whip/session/ID              ends the stream
    POST   /whep/STREAM[/RENDITION]      application/sdp offer -> 201, answer, Location
    DELETE /whep/session/ID              ends the viewer session

No trickle ICE: the answer carries every candidate, and PATCH on a session answers 405
(RFC 9725 4.3.1). A bearer token (RFC 6750) guards WHIP when ``whip_token`` is set (RFC 9725 4.5).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Protocol

from fastapi import APIRouter, HTTPException, Request, Response

from streamgw.errors import BadStreamName, CapacityError, LiveAiRefused, NoLiveOrchestrator, ProtocolError, StreamBusy
from streamgw.webrtc.sdp import MAX_OFFER_BYTES

SDP_TYPE = "application/sdp"


class WhipEndpoint(Protocol):
    """What the WHIP routes need: ingest/whip.WhipServer."""

    async def publish(self, stream: str, offer: str, remote: str, query: str = "") -> tuple[str, str]: ...

    async def stop(self, session_id: str) -> bool: ...


class WhepEndpoint(Protocol):
    """What the WHEP routes need: output/whep.WhepOutput."""

    def available(self, stream: str, rendition: str) -> bool: ...

    async def play(self, stream: str, rendition: str, offer: str, remote: str) -> tuple[str, str]: ...

    async def stop(self, session_id: str) -> bool: ...


def _remote(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


async def _offer(request: Request) -> str:
    """The SDP offer of a POST; 415 for another content type, 400/413 for a bad body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != SDP_TYPE:
        raise HTTPException(415, f"the offer must be {SDP_TYPE}", headers={"Accept-Post": SDP_TYPE})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_OFFER_BYTES:
            raise HTTPException(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "the SDP offer is not UTF-8") from exc
    if not text.startswith("v=0"):
        raise HTTPException(400, "the body is not an SDP offer")
    return text


def _created(session_url: str, answer: str) -> Response:
    return Response(answer, status_code=201, media_type=SDP_TYPE,
                    headers={"Location": session_url, "Cache-Control": "no-store"})


def _http_error(exc: StreamBusy | CapacityError | ProtocolError | BadStreamName | LiveAiRefused) -> HTTPException:
    """Our exception tree in HTTP terms: 409 busy, 503 at capacity or no orchestrator for the
    pipeline, 400 for a bad offer, name or live AI request."""
    if isinstance(exc, StreamBusy):
        return HTTPException(409, str(exc))
    if isinstance(exc, (CapacityError, NoLiveOrchestrator)):
        return HTTPException(503, str(exc), headers={"Retry-After": "5"})
    return HTTPException(400, str(exc))


def webrtc_router(whip: WhipEndpoint, whep: WhepEndpoint, whip_token: str = "",
                  check_query: Callable[[str, str], None] | None = None) -> APIRouter:
    """The WHIP and WHEP routes over a running WHIP server and WHEP output; ``check_query``
    (stream, query) refuses a WHIP publish's live AI request before any WebRTC is negotiated."""
    router = APIRouter(tags=["webrtc"])

    def authorize(request: Request) -> None:
        if not whip_token:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), whip_token.encode()):
            raise HTTPException(403, "wrong token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    @router.post("/whip/{stream}", status_code=201, response_class=Response)
    async def whip_publish(stream: str, request: Request) -> Response:
        """Publish ``stream`` over WebRTC: the body is the SDP offer, the answer comes back."""
        authorize(request)
        if check_query is not None:
            try:
                check_query(stream, request.url.query)
            except LiveAiRefused as exc:
                raise _http_error(exc) from exc
        offer = await _offer(request)
        try:
            session_id, answer = await whip.publish(stream, offer, _remote(request), request.url.query)
        except (StreamBusy, CapacityError, ProtocolError, BadStreamName, LiveAiRefused) as exc:
            raise _http_error(exc) from exc
        return _created(f"/whip/session/{session_id}", answer)

    @router.delete("/whip/session/{session_id}", response_class=Response)
    async def whip_stop(session_id: str, request: Request) -> Response:
        """End a WHIP session: the stream ends."""
        authorize(request)
        if not await whip.stop(session_id):
            raise HTTPException(404, "no such WHIP session")
        return Response(status_code=200)

    @router.post("/whep/{stream}", status_code=201, response_class=Response)
    async def whep_source(stream: str, request: Request) -> Response:
        """Watch ``stream``'s source over WebRTC."""
        return await _play(stream, "source", request)

    @router.post("/whep/{stream}/{rendition}", status_code=201, response_class=Response)
    async def whep_rendition(stream: str, rendition: str, request: Request) -> Response:
        """Watch one rendition of ``stream`` over WebRTC."""
        return await _play(stream, rendition, request)

    async def _play(stream: str, rendition: str, request: Request) -> Response:
        offer = await _offer(request)
        if not whep.available(stream, rendition):
            raise HTTPException(404, f"no rendition {rendition!r} of a live stream {stream!r}")
        try:
            session_id, answer = await whep.play(stream, rendition, offer, _remote(request))
        except (CapacityError, ProtocolError) as exc:
            raise _http_error(exc) from exc
        return _created(f"/whep/session/{session_id}", answer)

    @router.delete("/whep/session/{session_id}", response_class=Response)
    async def whep_stop(session_id: str) -> Response:
        """End a WHEP viewer session."""
        if not await whep.stop(session_id):
            raise HTTPException(404, "no such WHEP session")
        return Response(status_code=200)

    @router.patch("/whip/session/{session_id}", response_class=Response)
    @router.patch("/whep/session/{session_id}", response_class=Response)
    async def no_trickle(session_id: str) -> Response:
        """Trickle ICE and ICE restarts are not supported (RFC 9725 4.3.1)."""
        return Response(status_code=405, headers={"Allow": "DELETE"})

    return router
