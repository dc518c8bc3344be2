"""The remote signer's HTTP API (go-livepeer's: ``/sign-orchestrator-info``, ``/generate-live-payment``)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from streamgw import __version__
from streamgw.payments.remote_signer import MAX_REQUEST_BYTES, SignerRefusal, SignerService


def signer_app(service: SignerService, health: dict[str, object] | None = None) -> FastAPI:
    """The signer's app; errors are plain text with go-livepeer's statuses (480: refresh the session)."""
    app = FastAPI(title="streamgw remote signer", version=__version__, docs_url=None, redoc_url=None)

    @app.post("/sign-orchestrator-info")
    async def sign_orchestrator_info() -> dict[str, str]:
        return service.sign_orchestrator_info()

    @app.post("/generate-live-payment")
    async def generate_live_payment(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return PlainTextResponse(f"request larger than {MAX_REQUEST_BYTES} bytes\n", status_code=413)
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            return PlainTextResponse(f"the body is not JSON: {exc}\n", status_code=400)
        try:
            return JSONResponse(service.generate_live_payment(parsed))
        except SignerRefusal as exc:
            return PlainTextResponse(f"{exc}\n", status_code=exc.status)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "address": service.signer.checksum_address, "payments": service.payments,
                "refused": service.refused, **(health or {})}

    return app
