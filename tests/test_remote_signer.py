"""The remote signer (go-livepeer's API) over HTTP: its payments pass streamgw's recipient checks, its state
cannot be forged or replayed into another O's session, and a signer that is down is a clear error.

Requests are written from go-livepeer's ``doc/signer-protocol.md`` (JSON, base64 bytes), not only by
streamgw's client.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Callable, Coroutine
from fractions import Fraction
from typing import Any

import httpx
import pytest

from streamgw.api.signer import signer_app
from streamgw.errors import SignerError
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.segdata import decode_segdata_header
from streamgw.livepeer.signing import Signer, checksum_address, parse_address, verify_message
from streamgw.livepeer.tickets import decode_payment_header
from streamgw.payments.recipient import RecipientChainState, RecipientSettings, SenderReserve, TicketRecipient
from streamgw.payments.remote_signer import REFRESH_SESSION, RemoteSignerClient, SignerRefusal, SignerService
from streamgw.payments.sender import LIVE_PIXELS_PER_SECOND, LIVE_PREPAY_PIXELS, SenderChainState, TicketSender
from tests.harness import free_port

SIGNER_KEY = "44" * 32
ORCH = parse_address("0x1563915e194D8CfBA1943570603F7606A3115508")


def synchronous(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on its own loop (the suite has no asyncio plugin), bounded."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))
    return run


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _service(clock: Clock) -> SignerService:
    sender = TicketSender(Signer(SIGNER_KEY))
    sender.set_chain_state(SenderChainState(last_block=100, current_round=2, deposit=10**18, reserve=10**18))
    return SignerService(sender, clock=clock)


def _recipient(signer: Signer) -> TicketRecipient:
    recipient = TicketRecipient(RecipientSettings(address=ORCH, ticket_ev=10**12))
    recipient.set_chain_state(RecipientChainState(last_block=100, current_round=2, last_initialized_round=2,
                                                  round_block_hash=b"\x05" * 32))
    recipient.set_sender(signer.address, SenderReserve(deposit=10**18, reserve=10**18))
    return recipient


def _info(recipient: TicketRecipient, sender: bytes, price: Fraction = Fraction(100)) -> pb.OrchestratorInfo:
    info = pb.OrchestratorInfo(transcoder="https://o.example:8935", address=ORCH)
    info.price_info.pricePerUnit, info.price_info.pixelsPerUnit = price.numerator, price.denominator
    info.ticket_params.CopyFrom(recipient.ticket_params(sender, price).to_proto())
    info.auth_token.session_id = "abc"
    return info


def _orchestrator_field(info: pb.OrchestratorInfo) -> str:
    return base64.b64encode(pb.PaymentResult(info=info).SerializeToString()).decode()


async def _client(service: SignerService) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=signer_app(service)), base_url="http://signer")


@synchronous
async def test_sign_orchestrator_info_is_the_getorchestrator_signature() -> None:
    service = _service(Clock())
    async with await _client(service) as http:
        reply = (await http.post("/sign-orchestrator-info")).json()
    assert reply["address"] == Signer(SIGNER_KEY).checksum_address
    verify_message(reply["address"], reply["address"].encode(), bytes.fromhex(reply["signature"][2:]))


@synchronous
async def test_live_payments_pass_the_recipient_and_follow_the_clock() -> None:
    clock = Clock()
    service = _service(clock)
    signer = Signer(SIGNER_KEY)
    recipient = _recipient(signer)
    info = _info(recipient, signer.address)
    async with await _client(service) as http:
        first = (await http.post("/generate-live-payment", json={
            "orchestrator": _orchestrator_field(info), "manifestID": "m1", "type": "lv2v"})).json()
        payment = decode_payment_header(first["payment"])
        receipt = recipient.receive(payment, "m1", quote=Fraction(100))
        assert receipt.error == "" and receipt.credited >= 1
        # 60 s of 720p30 at 100 wei/pixel, prepaid with the first call.
        assert receipt.ev >= LIVE_PREPAY_PIXELS * 100
        creds = decode_segdata_header(first["segCreds"])
        assert creds.manifestId == b"m1"
        clock.now += 5
        second = (await http.post("/generate-live-payment", json={
            "orchestrator": _orchestrator_field(info), "manifestID": "m1", "type": "lv2v",
            "state": first["state"]})).json()
        again = decode_payment_header(second["payment"])
        # Same ticket params: the nonces go on from the state, so none is seen twice.
        assert min(t.sender_nonce for t in again.ticket_sender_params) > max(
            t.sender_nonce for t in payment.ticket_sender_params) or not again.ticket_sender_params
        assert recipient.receive(again, "m1", quote=Fraction(100)).error == ""
        state = json.loads(base64.b64decode(second["state"]["state"]))
        assert state["last_update"] == pytest.approx(clock.now - 5 + 5 * LIVE_PIXELS_PER_SECOND
                                                     // LIVE_PIXELS_PER_SECOND, abs=1e-6)


@synchronous
async def test_a_forged_or_foreign_state_is_refused() -> None:
    service = _service(Clock())
    signer = Signer(SIGNER_KEY)
    recipient = _recipient(signer)
    info = _info(recipient, signer.address)
    async with await _client(service) as http:
        first = (await http.post("/generate-live-payment", json={
            "orchestrator": _orchestrator_field(info), "manifestID": "m1", "type": "lv2v"})).json()
        state = json.loads(base64.b64decode(first["state"]["state"]))
        state["credit"] = [10**30, 1]  # the gateway claims credit it never paid
        forged = {"state": base64.b64encode(json.dumps(state).encode()).decode(), "sig": first["state"]["sig"]}
        answer = await http.post("/generate-live-payment", json={
            "orchestrator": _orchestrator_field(info), "manifestID": "m1", "type": "lv2v", "state": forged})
        assert answer.status_code == 400 and "not a state this signer signed" in answer.text
        other = pb.OrchestratorInfo()
        other.CopyFrom(info)
        other.address = b"\x09" * 20
        answer = await http.post("/generate-live-payment", json={
            "orchestrator": _orchestrator_field(other), "manifestID": "m1", "type": "lv2v",
            "state": first["state"]})
        assert answer.status_code == 400 and "another orchestrator" in answer.text


@pytest.mark.parametrize(("body", "text"), [
    ({"orchestrator": "%%%"}, "not a base64 PaymentResult"),
    ({"orchestrator": ""}, "missing orchestrator info"),
    ("[1, 2]", "must be a JSON object"),
])
@synchronous
async def test_bad_requests(body: Any, text: str) -> None:
    async with await _client(_service(Clock())) as http:
        answer = await http.post("/generate-live-payment",
                                 content=body if isinstance(body, str) else json.dumps(body))
    assert answer.status_code == 400 and text in answer.text


@synchronous
async def test_expired_ticket_params_ask_for_a_refresh() -> None:
    service = _service(Clock())
    signer = Signer(SIGNER_KEY)
    info = _info(_recipient(signer), signer.address)
    service.sender.set_chain_state(SenderChainState(last_block=139, current_round=2, deposit=10**18))
    async with await _client(service) as http:
        answer = await http.post("/generate-live-payment", json={
            "orchestrator": _orchestrator_field(info), "manifestID": "m", "type": "lv2v"})
    assert answer.status_code == REFRESH_SESSION and "TicketParams expired" in answer.text


@synchronous
async def test_the_client_keeps_the_state_and_reports_a_dead_signer() -> None:
    service = _service(Clock())
    signer = Signer(SIGNER_KEY)
    info = _info(_recipient(signer), signer.address)
    client = RemoteSignerClient("http://signer", transport=httpx.ASGITransport(app=signer_app(service)))
    address, sig = await client.credentials()
    assert checksum_address(address) == signer.checksum_address and len(sig) == 65
    await client.live_payment("o", info, "start-1")
    client.rekey("o", "start-1", "mid1")
    await client.live_payment("o", info, "mid1")
    assert client.payments == 2 and ("o", "mid1") in client._states
    await client.close()
    dead = RemoteSignerClient(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    with pytest.raises(SignerError, match="remote signer http://127.0.0.1:.*ConnectError"):
        await dead.credentials()
    with pytest.raises(SignerError):
        await dead.live_payment("o", info, "m")
    await dead.close()
    with pytest.raises(SignerRefusal) as refused:
        refusing = RemoteSignerClient("http://signer", transport=httpx.ASGITransport(app=signer_app(service)))
        await refusing.live_payment("o", pb.OrchestratorInfo(), "m")
    assert refused.value.status == 400
