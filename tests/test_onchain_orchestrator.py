"""streamgw's orchestrator paid by a gateway shaped as go-livepeer's on-chain gateway, on a real local chain.

The gateway here is written from WIRE.md §4-§6 (tests/test_offchain_gateway.py's helpers): GetOrchestrator
signed with ``Sign(EIP-55 address)``, a signed SegData, and a ``Livepeer-Payment`` filled field by field:
``ticket_params`` fields 1-6 copied from the O, ``sender``, ``expiration_params`` at field 3, one
``{sender_nonce, sig}`` per ticket with the signature computed by eth-account over the ticket hash as WIRE.md
§5 lays it out, and ``expected_price`` echoed. The chain is anvil with the contracts of ``contracts/``.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak

from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.signing import Signer
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings, PaymentSettings
from streamgw.payments.chain import ChainSettings, Deployment
from streamgw.payments.localchain import ANVIL_KEYS, Anvil
from tests.chain_harness import chain_for, mine, run
from tests.conftest import FFMPEG
from tests.test_offchain_gateway import Gateway, orchestrator_request, segdata

GATEWAY_KEY = ANVIL_KEYS[3]
ORCH_KEY = ANVIL_KEYS[4]
GATEWAY = bytes.fromhex(Account.from_key(GATEWAY_KEY).address[2:])
ORCH = bytes.fromhex(Account.from_key(ORCH_KEY).address[2:])
PRICE = 1000  # wei per pixel
TICKET_EV = 10**15
FACE_VALUE = TICKET_EV + 1  # winProb = EV x (floor(MAX / FV) + 1): every ticket but one in 10^15 wins
CHECKSUM = Account.from_key(GATEWAY_KEY).address


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One 2 s MPEG-TS segment, 320x180 H.264 and AAC."""
    out = tmp_path_factory.mktemp("media") / "seg.ts"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "2", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-muxdelay", "0",
                    "-f", "mpegts", str(out)], check=True, timeout=60)
    return out.read_bytes()


@pytest.fixture(scope="module")
def funded(anvil: Anvil, deployment: Deployment) -> Deployment:
    """The gateway's deposit and reserve: 1 ETH each."""
    chain = chain_for(anvil, deployment, GATEWAY_KEY)

    async def fund() -> None:
        try:
            await chain.fund_deposit_and_reserve(10**18, 10**18)
        finally:
            await chain.close()

    run(fund())
    return deployment


def wire_payment(info: pb.OrchestratorInfo, nonces: list[int], *, key: str = GATEWAY_KEY,
                 price: pb.PriceInfo | None = None) -> str:
    """``Livepeer-Payment`` as go-livepeer's ``genPayment`` builds it, field by field (WIRE.md §5)."""
    tp = info.ticket_params
    account = Account.from_key(key)
    sender = bytes.fromhex(account.address[2:])
    payment = pb.Payment(sender=sender)
    for field in ("recipient", "face_value", "win_prob", "recipient_rand_hash", "seed", "expiration_block"):
        setattr(payment.ticket_params, field, getattr(tp, field))
    payment.expiration_params.CopyFrom(tp.expiration_params)
    payment.expected_price.CopyFrom(price if price is not None else info.price_info)
    exp = tp.expiration_params
    for nonce in nonces:
        flat = (bytes(tp.recipient) + sender + int.from_bytes(tp.face_value, "big").to_bytes(32, "big")
                + int.from_bytes(tp.win_prob, "big").to_bytes(32, "big") + nonce.to_bytes(32, "big")
                + bytes(tp.recipient_rand_hash) + exp.creation_round.to_bytes(32, "big")
                + bytes(exp.creation_round_block_hash))
        sig = account.sign_message(encode_defunct(primitive=keccak(flat))).signature
        payment.ticket_sender_params.add(sender_nonce=nonce, sig=bytes(sig))
    return base64.b64encode(payment.SerializeToString()).decode()


@asynccontextmanager
async def paid_orchestrator(tmp: Path, anvil: Anvil, deployment: Deployment,
                            **kw: Any) -> AsyncIterator[tuple[OrchestratorNode, Gateway]]:
    """An on-chain orchestrator node (price, ticket EV as above) and a Go-shaped gateway connected to it."""
    chain = ChainSettings(rpc_url=anvil.url, chain_id=deployment.chain_id, ticket_broker=deployment.ticket_broker,
                          rounds_manager=deployment.rounds_manager, timeout=3.0, receipt_timeout=5.0)
    paid = PaymentSettings(chain=chain, price_per_unit=PRICE, ticket_ev=TICKET_EV, max_face_value=FACE_VALUE,
                           poll_interval=0.2)
    node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp, payments=paid, **kw),
                            signer=Signer(ORCH_KEY))
    await node.start()
    try:
        pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", node.port))
        creds = grpc.ssl_channel_credentials(pem.encode())
        async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", creds,
                                           options=[("grpc.ssl_target_name_override", "127.0.0.1")]) as channel:
            async with httpx.AsyncClient(http2=True, verify=False, timeout=30) as http, \
                    httpx.AsyncClient(verify=False, timeout=30) as http1:
                yield node, Gateway(channel, http, http1)
    finally:
        await node.close()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def ticket_states(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "tickets.db") as db:
        return {state: n for state, n in db.execute("SELECT state, COUNT(*) FROM winners GROUP BY state")}


def test_a_go_shaped_gateway_pays_and_the_winning_tickets_are_redeemed(
        tmp_path: Path, segment: bytes, anvil: Anvil, funded: Deployment, chain_snapshot: None) -> None:
    chain = chain_for(anvil, funded)

    async def main() -> None:
        o_before = await chain.balance(ORCH)
        g_before = await chain.sender_info(GATEWAY)
        async with paid_orchestrator(tmp_path, anvil, funded) as (node, gw):
            info = await gw.get_orchestrator(orchestrator_request(GATEWAY_KEY))
            tp = info.ticket_params
            assert bytes(tp.recipient) == ORCH and int.from_bytes(tp.face_value, "big") == FACE_VALUE
            assert (info.price_info.pricePerUnit, info.price_info.pixelsPerUnit) == (PRICE, 1)
            block = await chain.block_number()
            assert block < int.from_bytes(tp.expiration_block, "big") <= block + 40
            assert tp.expiration_params.creation_round_block_hash == (await chain.round_info()).block_hash
            r = await gw.segment(info, segdata(info, segment, GATEWAY_KEY, seq=1), segment, wire_payment(info, [1, 2]))
            assert r.status_code == 200, r.text
            result = pb.TranscodeResult.FromString(r.content)
            assert result.WhichOneof("result") == "data", result
            # Fresh params with every info: a new recipientRandHash.
            assert result.info.ticket_params.recipient_rand_hash != tp.recipient_rand_hash
            assert result.info.ticket_params.recipient == tp.recipient
            assert node.payments is not None
            await until(lambda: node.payments is not None and node.payments.stats.redeemed == 2, 20, "2 redemptions")
            assert ticket_states(tmp_path) == {"redeemed": 2}
        g_after = await chain.sender_info(GATEWAY)
        assert g_before.deposit - g_after.deposit == 2 * FACE_VALUE  # the deposit paid both
        assert await chain.balance(ORCH) > o_before + FACE_VALUE  # two face values in, less two redemptions' gas
        await chain.close()

    run(main())


def test_bad_payments_are_refused_with_go_livepeer_texts(
        tmp_path: Path, segment: bytes, anvil: Anvil, funded: Deployment, chain_snapshot: None) -> None:
    async def main() -> None:
        async with paid_orchestrator(tmp_path, anvil, funded) as (node, gw):
            info = await gw.get_orchestrator(orchestrator_request(GATEWAY_KEY))

            async def refused(pay: str, seq: int = 1) -> tuple[int, str]:
                # A connection of its own: the O answers before reading the body, then closes it.
                async with httpx.AsyncClient(verify=False, timeout=30) as http1:
                    r = await http1.post(info.transcoder + "/segment", content=segment, headers={
                        "Livepeer-Segment": segdata(info, segment, GATEWAY_KEY, seq=seq), "Livepeer-Payment": pay,
                        "Content-Type": "video/MP2T"})
                return r.status_code, r.text

            assert (await refused("***"))[0] == 402
            assert (await refused("***"))[1].startswith("base64 decode error")
            assert (await refused("AAAA"))[1].startswith("protobuf unmarshal error")
            # No tickets, a price echoed: nothing in the balance.
            assert await refused(_no_tickets(info)) == (400, "Insufficient balance\n")
            # A ticket signed by another key.
            forged = wire_payment(info, [1], key=ANVIL_KEYS[1])
            forged_payment = pb.Payment.FromString(_decode(forged))
            forged_payment.sender = GATEWAY
            assert await refused(_encode(forged_payment)) == (400, "invalid ticket signature\n")
            # Underpriced: the echo below the quote.
            low = pb.PriceInfo(pricePerUnit=1, pixelsPerUnit=1)
            status, text = await refused(wire_payment(info, [5], price=low))
            assert status == 400 and text.startswith('invalid expected price sent with payment err="price 1/1')
            # A rewritten expiration block breaks the recipientRand.
            tampered = pb.Payment.FromString(_decode(wire_payment(info, [6])))
            tampered.ticket_params.expiration_block = (10**9).to_bytes(4, "big")
            assert await refused(_encode(tampered)) == (400, "invalid recipientRand for ticket recipientRandHash\n")
            # A ticket for another recipient.
            other = pb.OrchestratorInfo()
            other.CopyFrom(info)
            other.ticket_params.recipient = GATEWAY
            status, text = await refused(wire_payment(other, [7]))
            assert status == 400 and text.startswith(f"orchestrator {CHECKSUM} is inactive in round ")
            # A good one, then the same again: replayed.
            good = wire_payment(info, [1])
            r = await gw.segment(info, segdata(info, segment, GATEWAY_KEY, seq=2), segment, good)
            assert r.status_code == 200, r.text
            assert await refused(good, seq=3) == (
                400, f"invalid ticket senderNonce: already seen sender={CHECKSUM} nonce=1\n")
            # Expired: the chain moves 41 blocks past the quote.
            mine(anvil.url, 41)
            await until(lambda: node.payments is not None and node.payments.recipient.chain.last_block
                        >= int.from_bytes(info.ticket_params.expiration_block, "big"), 10, "the O to see the block")
            assert await refused(wire_payment(info, [9]), seq=4) == (400, "TicketParams expired\n")
            # A sender with no funds gets no ticket params at all.
            assert await gw.refused_info(orchestrator_request(ANVIL_KEYS[2])) == "insufficient sender reserve"

    run(main())


def test_a_chain_outage_stops_no_stream_and_an_orchestrator_restart_loses_no_ticket(
        tmp_path: Path, segment: bytes, anvil: Anvil, funded: Deployment, chain_snapshot: None) -> None:
    chain = chain_for(anvil, funded)

    async def main() -> None:
        g_before = await chain.sender_info(GATEWAY)
        try:
            async with paid_orchestrator(tmp_path, anvil, funded) as (node, gw):
                info = await gw.get_orchestrator(orchestrator_request(GATEWAY_KEY))
                await anvil.stop()  # the chain goes away (its state saved)
                # A segment paid while the chain is down: served; its winning tickets wait on disk.
                r = await gw.segment(info, segdata(info, segment, GATEWAY_KEY, seq=1), segment,
                                     wire_payment(info, [1, 2]))
                assert r.status_code == 200, r.text
                result = pb.TranscodeResult.FromString(r.content)
                assert result.WhichOneof("result") == "data"
                # The next segment on the credit (one EV left over its fee): still served.
                r = await gw.segment(result.info, segdata(result.info, segment, GATEWAY_KEY, seq=2), segment,
                                     _no_tickets(result.info))
                assert r.status_code == 200, r.text
                await until(lambda: node.payments is not None and node.payments.stats.redeem_errors >= 1, 10,
                            "a redemption to fail")
                assert ticket_states(tmp_path) == {"pending": 2}
        finally:
            # The orchestrator is gone too; the chain comes back, then a new orchestrator on the same data.
            await anvil.start()
        async with paid_orchestrator(tmp_path, anvil, funded) as (node, _):
            await until(lambda: node.payments is not None and node.payments.stats.redeemed == 2, 20,
                        "the stored tickets' redemption")
            assert ticket_states(tmp_path) == {"redeemed": 2}
        assert g_before.deposit - (await chain.sender_info(GATEWAY)).deposit == 2 * FACE_VALUE
        await chain.close()

    run(main())


def _no_tickets(info: pb.OrchestratorInfo) -> str:
    """What go-livepeer's on-chain gateway sends with no tickets due: ``Payment{sender, expected_price}``."""
    return _encode(pb.Payment(sender=GATEWAY, expected_price=info.price_info))


def _decode(header: str) -> bytes:
    return base64.b64decode(header)


def _encode(payment: pb.Payment) -> str:
    return base64.b64encode(payment.SerializeToString()).decode()
