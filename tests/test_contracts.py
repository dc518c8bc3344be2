"""The contracts: the committed artifact is a fresh compile, and on anvil they follow Livepeer's protocol.

Tickets here are built and signed by streamgw's ``livepeer.tickets`` (itself checked against go-livepeer's
vectors) and by eth-account; the contract hashes, checks and pays them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import coincurve
import pytest
from web3.logs import DISCARD

from streamgw.errors import TransactionReverted
from streamgw.livepeer.signing import Signer, keccak256, personal_digest
from streamgw.livepeer.tickets import MAX_WIN_PROB, Ticket, is_winning_ticket, recipient_rand_hash
from streamgw.payments.chain import Chain, Deployment, contract_artifact, ticket_tuple
from streamgw.payments.localchain import ANVIL_KEYS, Anvil
from tests.chain_harness import chain_for, mine, run

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "livepeer" / "vectors" / "tickets.json"
SENDER_KEY, RECIPIENT_KEY = ANVIL_KEYS[1], ANVIL_KEYS[2]
SENDER, RECIPIENT = Signer(SENDER_KEY), Signer(RECIPIENT_KEY)
RAND = 0x1234_5678_9ABC_DEF0
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_the_committed_artifact_is_a_fresh_compile(tmp_path: Path) -> None:
    out = tmp_path / "contracts.json"
    done = subprocess.run(["bash", str(REPO / "scripts" / "compile_contracts.sh"), str(out)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == contract_artifact()
    assert out.read_bytes() == (REPO / "streamgw" / "payments" / "contracts.json").read_bytes()
    assert contract_artifact()["compiler"].startswith("solc-js 0.8.37+")


def _ticket(chain_round: tuple[int, bytes], *, nonce: int = 1, face_value: int = 10**15,
            win_prob: int = MAX_WIN_PROB, rand: int = RAND, **kw: Any) -> Ticket:
    fields: dict[str, Any] = {
        "recipient": RECIPIENT.address, "sender": SENDER.address, "face_value": face_value, "win_prob": win_prob,
        "sender_nonce": nonce, "recipient_rand_hash": recipient_rand_hash(rand),
        "creation_round": chain_round[0], "creation_round_block_hash": chain_round[1]}
    fields.update(kw)
    return Ticket(**fields)


async def _setup(anvil: Anvil, deployment: Deployment, *, deposit: int = 10**16,
                 reserve: int = 10**16) -> tuple[Chain, Chain, tuple[int, bytes]]:
    sender = chain_for(anvil, deployment, SENDER_KEY)
    recipient = chain_for(anvil, deployment, RECIPIENT_KEY)
    await sender.fund_deposit_and_reserve(deposit, reserve)
    rounds = await recipient.round_info()
    return sender, recipient, (rounds.last_initialized_round, rounds.block_hash)


def test_the_contract_hashes_tickets_as_the_vectors_do(anvil: Anvil, deployment: Deployment) -> None:
    chain = chain_for(anvil, deployment)

    async def main() -> None:
        try:
            for case in json.loads(VECTORS.read_text()):
                if case["kind"] not in ("ticket", "ticket_hash_only"):
                    continue
                i = case["inputs"]
                ticket = Ticket(recipient=bytes.fromhex(i["recipient"][2:]), sender=bytes.fromhex(i["sender"][2:]),
                                face_value=int(i["face_value"]), win_prob=int(i["win_prob"]),
                                sender_nonce=int(i["sender_nonce"]),
                                recipient_rand_hash=bytes.fromhex(i["recipient_rand_hash_hex"]),
                                creation_round=int(i["creation_round"]),
                                creation_round_block_hash=bytes.fromhex(i["creation_round_block_hash_hex"]))
                expected = case["expected"].get("ticket_hash_hex") or case["expected"]["hash_hex"]
                assert (await chain.ticket_hash(ticket)).hex() == expected == ticket.hash().hex(), case["name"]
        finally:
            await chain.close()

    run(main())


def test_a_winning_ticket_pays_from_the_deposit_then_the_reserve(
        anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    async def main() -> None:
        sender, recipient, current = await _setup(anvil, deployment, deposit=10**15, reserve=10**16)
        try:
            before = await recipient.balance(RECIPIENT.address)
            ticket = _ticket(current, face_value=4 * 10**14)
            sig = ticket.sign(SENDER)
            assert is_winning_ticket(sig, RAND, ticket.win_prob)
            done = await recipient.redeem_winning_ticket(ticket, sig, RAND)
            assert done.amount == 4 * 10**14 and done.block == await recipient.block_number()
            assert await recipient.is_ticket_used(ticket.hash())
            after = await recipient.balance(RECIPIENT.address)
            assert after == before + 4 * 10**14 - done.gas_used * (await _gas_price(recipient, done.tx_hash))
            info = await recipient.sender_info(SENDER.address)
            assert (info.deposit, info.reserve, info.claimed_in_current_round) == (6 * 10**14, 10**16, 0)
            # More than the deposit left: all of it, the rest from the reserve.
            second = _ticket(current, nonce=2, face_value=3 * 10**15)
            done = await recipient.redeem_winning_ticket(second, second.sign(SENDER), RAND)
            assert done.amount == 3 * 10**15
            info = await recipient.sender_info(SENDER.address)
            assert (info.deposit, info.reserve, info.claimed_in_current_round) == (0, 76 * 10**14, 24 * 10**14)
            assert await recipient.claimed_reserve(SENDER.address, RECIPIENT.address) == 24 * 10**14
            # Another recipient claims the rest of the reserve, no more, however big its ticket.
            other = Signer(ANVIL_KEYS[4])
            third = _ticket(current, nonce=3, face_value=10**17, recipient=other.address)
            done = await recipient.redeem_winning_ticket(third, third.sign(SENDER), RAND)
            assert done.amount == 76 * 10**14
            info = await recipient.sender_info(SENDER.address)
            assert (info.deposit, info.reserve, info.claimed_in_current_round) == (0, 0, 10**16)
            assert await recipient.claimed_reserve(SENDER.address, other.address) == 76 * 10**14
            fourth = _ticket(current, nonce=4)
            with pytest.raises(TransactionReverted) as err:
                await recipient.redeem_winning_ticket(fourth, fourth.sign(SENDER), RAND)
            assert err.value.reason == "sender deposit and reserve are zero"
        finally:
            await sender.close()
            await recipient.close()

    run(main())


def test_a_batch_of_winning_tickets_redeems_in_one_transaction(
        anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    async def main() -> None:
        sender, recipient, current = await _setup(anvil, deployment, deposit=10**16, reserve=0)
        try:
            tickets = [_ticket(current, nonce=n, face_value=10**15) for n in (1, 2, 3)]
            broker = recipient._broker()
            call = broker.functions.batchRedeemWinningTickets(
                [ticket_tuple(t) for t in tickets], [t.sign(SENDER) for t in tickets], [RAND] * 3)
            receipt = await recipient._transact(call, "batchRedeemWinningTickets")
            transfers = broker.events.WinningTicketTransfer().process_receipt(receipt, errors=DISCARD)
            assert [int(e["args"]["amount"]) for e in transfers] == [10**15] * 3
            assert [await recipient.is_ticket_used(t.hash()) for t in tickets] == [True] * 3
            assert (await recipient.sender_info(SENDER.address)).deposit == 7 * 10**15
        finally:
            await sender.close()
            await recipient.close()

    run(main())


def _ecrecover(digest: bytes, sig: bytes) -> bytes:
    """The EVM's ecrecover, without its callers' checks (it takes a high s)."""
    pub = coincurve.PublicKey.from_signature_and_message(sig[:64] + bytes([sig[64] - 27]), digest, hasher=None)
    return keccak256(pub.format(compressed=False)[1:])[-20:]


async def _gas_price(chain: Chain, tx_hash: str) -> int:
    receipt = await chain.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    return int(receipt["effectiveGasPrice"])


@pytest.mark.parametrize(("name", "reason"), [
    ("used", "ticket is used"),
    ("bad_sig", "invalid signature over ticket hash"),
    ("losing", "ticket did not win"),
    ("wrong_rand", "recipientRand does not match recipientRandHash"),
    ("high_s", "invalid signature over ticket hash"),
    ("bad_v", "invalid signature over ticket hash"),
    ("short_sig", "invalid signature over ticket hash"),
    ("zero_recipient", "ticket recipient is null address"),
    ("zero_sender", "ticket sender is null address"),
    ("no_block_hash", "ticket creationRound does not have a block hash"),
    ("expired_round", "ticket is expired"),
    ("wrong_block_hash", "ticket creationRoundBlockHash invalid for creationRound"),
    ("no_aux", "invalid length for ticket auxData: must be 64 bytes"),
])
def test_bad_tickets_revert_with_livepeer_texts(
        name: str, reason: str, anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    async def main() -> None:
        sender, recipient, current = await _setup(anvil, deployment)
        try:
            ticket, sig, rand = _ticket(current), b"", RAND
            sig = ticket.sign(SENDER)
            if name == "used":
                await recipient.redeem_winning_ticket(ticket, sig, rand)
            elif name == "bad_sig":
                sig = ticket.sign(RECIPIENT)
            elif name == "losing":
                ticket = _ticket(current, win_prob=0)
                sig = ticket.sign(SENDER)
            elif name == "wrong_rand":
                rand += 1
            elif name == "high_s":  # the malleable twin (n - s, flipped v): ecrecover alone would accept it
                s_value = SECP256K1_N - int.from_bytes(sig[32:64], "big")
                sig = sig[:32] + s_value.to_bytes(32, "big") + bytes([55 - sig[64]])
                assert _ecrecover(personal_digest(ticket.hash()), sig) == SENDER.address
            elif name == "bad_v":
                sig = sig[:64] + bytes([sig[64] - 27])
            elif name == "short_sig":
                sig = sig[:64]
            elif name == "zero_sender":
                ticket = _ticket(current, sender=bytes(20))
            elif name == "no_block_hash":
                ticket = _ticket((current[0] + 1, b"\x01" * 32))
                sig = ticket.sign(SENDER)
            elif name == "zero_recipient":
                ticket = _ticket(current, recipient=bytes(20))
                sig = ticket.sign(SENDER)
            elif name == "expired_round":
                rounds = await recipient.w3.eth.contract(
                    address=deployment.rounds_manager, abi=contract_artifact()["contracts"]["RoundsManager"]["abi"]
                ).functions.roundLength().call()
                mine(anvil.url, 2 * int(rounds))  # two rounds on: past the validity period of 2
                await recipient.initialize_round()
            elif name == "wrong_block_hash":
                ticket = _ticket((current[0], b"\x01" * 32))
                sig = ticket.sign(SENDER)
            elif name == "no_aux":
                ticket = _ticket((0, bytes(32)))
                sig = ticket.sign(SENDER)
            with pytest.raises(TransactionReverted) as err:
                await recipient.redeem_winning_ticket(ticket, sig, rand)
            assert err.value.reason == reason
        finally:
            await sender.close()
            await recipient.close()

    run(main())


def test_unlock_cancel_and_withdraw(anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    async def main() -> None:
        sender, recipient, _ = await _setup(anvil, deployment, deposit=10**16, reserve=2 * 10**16)
        try:
            with pytest.raises(TransactionReverted, match="no unlock request in progress"):
                await sender.withdraw()
            await sender.unlock()
            info = await sender.sender_info(SENDER.address)
            current = (await sender.round_info()).current_round
            assert info.unlock_in_progress and info.withdraw_round == current + 2
            with pytest.raises(TransactionReverted, match="account is locked"):
                await sender.withdraw()
            await sender.cancel_unlock()
            assert not (await sender.sender_info(SENDER.address)).unlock_in_progress
            await sender.unlock()
            await sender.fund_deposit(1)  # funding cancels an unlock, as Livepeer's does
            assert not (await sender.sender_info(SENDER.address)).unlock_in_progress
            await sender.unlock()
            mine(anvil.url, 3 * 50)
            # Past its withdraw round the sender may leave at any moment: its funds back no more tickets.
            await recipient.initialize_round()
            rounds = await recipient.round_info()
            ticket = _ticket((rounds.last_initialized_round, rounds.block_hash))
            with pytest.raises(TransactionReverted) as err:
                await recipient.redeem_winning_ticket(ticket, ticket.sign(SENDER), RAND)
            assert err.value.reason == "sender is unlocked"
            before = await sender.balance(SENDER.address)
            await sender.withdraw()
            info = await sender.sender_info(SENDER.address)
            assert (info.deposit, info.reserve) == (0, 0)
            assert await sender.balance(SENDER.address) > before + 3 * 10**16 - 10**15  # less the gas
        finally:
            await sender.close()
            await recipient.close()

    run(main())
