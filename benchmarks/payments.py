"""Payments: tickets signed and verified per second per core, redemptions per second on anvil, and the
payment overhead of one segment on the gateway and on the orchestrator.

Run on one pinned CPU (``os.sched_setaffinity``). Baselines in the same run: eth-account's own signing and
recovery (``Account.unsafe_sign_hash`` / ``Account._recover_hash``, what a web3 stack does by default), and
for the overhead the segment's own duration (2 s) and an offchain segment's empty ``Livepeer-Payment``.

    python benchmarks/payments.py [--tickets 4000] [--redemptions 40] [--cpu 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eth_account import Account  # noqa: E402
from eth_account.messages import _hash_eip191_message, encode_defunct  # noqa: E402

from streamgw.livepeer import lp_rpc_pb2 as pb  # noqa: E402
from streamgw.livepeer.profiles import PRESETS  # noqa: E402
from streamgw.livepeer.signing import Signer, personal_digest, verify_sig  # noqa: E402
from streamgw.livepeer.tickets import MAX_WIN_PROB, Ticket, decode_payment_header, recipient_rand_hash  # noqa: E402
from streamgw.payments.chain import Chain, ChainSettings  # noqa: E402
from streamgw.payments.localchain import ANVIL_KEYS, Anvil, deploy  # noqa: E402
from streamgw.payments.recipient import (  # noqa: E402
    RecipientChainState,
    RecipientSettings,
    SenderReserve,
    TicketRecipient,
)
from streamgw.payments.sender import SenderChainState, TicketSender, segment_fee_pixels  # noqa: E402

GATEWAY, ORCH = Signer(ANVIL_KEYS[1]), Signer(ANVIL_KEYS[2])


def tickets(n: int) -> list[Ticket]:
    return [Ticket(recipient=ORCH.address, sender=GATEWAY.address, face_value=10**15, win_prob=MAX_WIN_PROB // 1000,
                   sender_nonce=i + 1, recipient_rand_hash=recipient_rand_hash(7), creation_round=3,
                   creation_round_block_hash=b"\x05" * 32) for i in range(n)]


def rate(fn, items) -> float:  # type: ignore[no-untyped-def]
    started = time.thread_time()
    for item in items:
        fn(item)
    return len(items) / (time.thread_time() - started)


def signing(n: int) -> None:
    batch = tickets(n)
    hashes = [t.hash() for t in batch]
    sigs = [GATEWAY.sign_hash(h) for h in hashes]
    account = Account.from_key(ANVIL_KEYS[1])
    ours_sign = rate(GATEWAY.sign_hash, hashes)
    base_sign = rate(lambda h: account.unsafe_sign_hash(personal_digest(h)), hashes)
    pairs = list(zip(hashes, sigs, strict=True))
    ours_verify = rate(lambda p: verify_sig(GATEWAY.address, p[0], p[1]), pairs)
    base_verify = rate(lambda p: Account._recover_hash(_hash_eip191_message(encode_defunct(primitive=p[0])),
                                                       signature=p[1]), pairs)
    hash_sign = rate(lambda t: t.sign(GATEWAY), batch)
    print(f"tickets signed per second, one core:   streamgw {ours_sign:8.0f}   eth-account {base_sign:8.0f}   "
          f"ratio {ours_sign / base_sign:.2f}x   (hash + sign: {hash_sign:.0f}/s)")
    print(f"tickets verified per second, one core: streamgw {ours_verify:8.0f}   eth-account {base_verify:8.0f}   "
          f"ratio {ours_verify / base_verify:.2f}x")


def overhead(n: int) -> None:
    """One segment (2 s, the default 3-rendition ladder) paid with one ticket: stage on B, receive on O."""
    recipient = TicketRecipient(RecipientSettings(address=ORCH.address, ticket_ev=10**12))
    recipient.set_chain_state(RecipientChainState(last_block=100, current_round=2, last_initialized_round=2,
                                                  round_block_hash=b"\x05" * 32))
    recipient.set_sender(GATEWAY.address, SenderReserve(deposit=10**20, reserve=10**20))
    sender = TicketSender(GATEWAY)
    sender.set_chain_state(SenderChainState(last_block=100, current_round=2, deposit=10**20, reserve=10**20))
    ladder = [PRESETS[p] for p in ("P144p30fps16x9", "P240p30fps16x9", "P360p30fps16x9")]
    pixels = segment_fee_pixels(ladder, 2.0)
    price = Fraction(10**12, int(pixels))  # one EV per segment: one ticket each
    stage_s, receive_s, quote_s = [], [], []
    for _ in range(n):
        t0 = time.thread_time()
        params = recipient.ticket_params(GATEWAY.address, price)
        info = pb.OrchestratorInfo(transcoder="https://o", address=ORCH.address)
        info.price_info.pricePerUnit, info.price_info.pixelsPerUnit = price.numerator, price.denominator
        info.ticket_params.CopyFrom(params.to_proto())
        info.auth_token.session_id = "s"
        t1 = time.thread_time()
        staged = sender.stage("o", info, pixels)
        t2 = time.thread_time()
        receipt = recipient.receive(decode_payment_header(staged.header), "s", quote=price)
        recipient.check_balance(GATEWAY.address, "s")
        t3 = time.thread_time()
        assert receipt.error == "" and staged.tickets >= 1, (receipt, staged.tickets)
        sender.settle(staged, accepted=True)
        recipient.charge(GATEWAY.address, "s", int(pixels / Fraction(102, 100)))
        quote_s.append(t1 - t0)
        stage_s.append(t2 - t1)
        receive_s.append(t3 - t2)
    for name, values in (("O quotes ticket params", quote_s), ("B builds the payment", stage_s),
                         ("O checks and credits it", receive_s)):
        mean = statistics.mean(values) * 1e6
        print(f"per segment, {name:24s} {mean:7.1f} us   = {mean / 2e6 * 100:.4f}% of the 2 s segment, one core")


async def redemptions(n: int) -> None:
    anvil = Anvil()
    await anvil.start()
    try:
        deployment = await deploy(anvil.url, ANVIL_KEYS[0])
        settings = ChainSettings(rpc_url=anvil.url, chain_id=deployment.chain_id,
                                 ticket_broker=deployment.ticket_broker, rounds_manager=deployment.rounds_manager)
        funder = Chain(settings, GATEWAY.account)
        await funder.fund_deposit_and_reserve(10**18, 10**18)
        redeemer = Chain(settings, ORCH.account)
        rounds = await redeemer.round_info()
        batch = [Ticket(recipient=ORCH.address, sender=GATEWAY.address, face_value=10**12, win_prob=MAX_WIN_PROB,
                        sender_nonce=i + 1, recipient_rand_hash=recipient_rand_hash(7),
                        creation_round=rounds.last_initialized_round, creation_round_block_hash=rounds.block_hash)
                for i in range(2 * n)]
        started = time.monotonic()
        gas = []
        for t in batch[:n]:
            gas.append((await redeemer.redeem_winning_ticket(t, t.sign(GATEWAY), 7)).gas_used)
        sequential = n / (time.monotonic() - started)
        started = time.monotonic()
        await asyncio.gather(*(redeemer.redeem_winning_ticket(t, t.sign(GATEWAY), 7) for t in batch[n:]))
        concurrent = n / (time.monotonic() - started)
        print(f"redemptions on anvil: {sequential:.0f}/s one at a time, {concurrent:.0f}/s {n} at once "
              f"(one account, nonces in order); {statistics.mean(gas):.0f} gas each")
        await funder.close()
        await redeemer.close()
    finally:
        await anvil.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=4000)
    parser.add_argument("--segments", type=int, default=500)
    parser.add_argument("--redemptions", type=int, default=40)
    parser.add_argument("--cpu", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    print(f"one core (CPU {args.cpu}) of {os.cpu_count()}; {args.tickets} tickets")
    signing(args.tickets)
    overhead(args.segments)
    asyncio.run(redemptions(args.redemptions))


if __name__ == "__main__":
    main()
