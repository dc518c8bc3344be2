"""The chain client against anvil: rounds, errors by type, one account's concurrent transactions, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from streamgw.errors import ChainError, ChainUnavailable, TransactionReverted
from streamgw.livepeer.signing import Signer
from streamgw.livepeer.tickets import MAX_WIN_PROB, Ticket, recipient_rand_hash
from streamgw.payments.chain import Chain, ChainSettings, Deployment
from streamgw.payments.localchain import ANVIL_KEYS, Anvil, deploy, fund_sender
from tests.chain_harness import chain_for, mine, rpc, run
from tests.harness import free_port

BROKER, ROUNDS = "0x" + "11" * 20, "0x" + "22" * 20


def test_fund_and_read_sender_info(anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    signer = Signer(ANVIL_KEYS[1])
    chain = chain_for(anvil, deployment, ANVIL_KEYS[1])

    async def main() -> None:
        async with chain:
            assert await chain.chain_id() == deployment.chain_id == 31337
            empty = await chain.sender_info(signer.address)
            assert (empty.deposit, empty.reserve, empty.withdraw_round, empty.unlock_in_progress) == (0, 0, 0, False)
            before = await chain.balance(signer.address)
            info = await fund_sender(chain.settings, ANVIL_KEYS[1], 3 * 10**15, 10**15)
            assert (info.deposit, info.reserve, info.claimed_in_current_round) == (3 * 10**15, 10**15, 0)
            await chain.fund_deposit(5)
            await chain.fund_reserve(7)
            info = await chain.sender_info(signer.address.hex())  # a hex string does as well as bytes
            assert (info.deposit, info.reserve) == (3 * 10**15 + 5, 10**15 + 7)
            assert before - await chain.balance(signer.address) > 4 * 10**15 + 12  # the funds and the gas
            assert await chain.balance(deployment.ticket_broker) == 4 * 10**15 + 12

    run(main())


def test_rounds_move_with_blocks_and_are_initialised(anvil: Anvil, deployment: Deployment,
                                                     chain_snapshot: None) -> None:
    chain = chain_for(anvil, deployment, ANVIL_KEYS[0])

    async def main() -> None:
        try:
            before = await chain.round_info()
            assert before.initialized and len(before.block_hash) == 32 and any(before.block_hash)
            mine(anvil.url, 60)  # past a 50-block round
            moved = await chain.round_info()
            assert moved.current_round == before.current_round + 1 and not moved.initialized
            assert moved.last_initialized_round == before.current_round
            await chain.initialize_round()
            now = await chain.round_info()
            assert now.initialized and now.last_initialized_round == moved.current_round
            assert now.block_hash != before.block_hash
            await chain.initialize_round()  # nothing to do
            with pytest.raises(TransactionReverted) as err:  # the contract itself refuses a second one
                await chain._transact(chain._rounds().functions.initializeRound(), "initializeRound")
            assert err.value.reason == "round already initialized"
        finally:
            await chain.close()

    run(main())


def test_an_unreachable_node_is_unavailable_within_the_bound() -> None:
    chain = Chain(ChainSettings(rpc_url=f"http://127.0.0.1:{free_port()}", ticket_broker="0x" + "11" * 20,
                                rounds_manager="0x" + "22" * 20, timeout=2.0))

    async def main() -> None:
        try:
            for call in (chain.block_number(), chain.sender_info(b"\x01" * 20), chain.round_info()):
                started = time.monotonic()
                with pytest.raises(ChainUnavailable):
                    await call
                assert time.monotonic() - started < 3.0
        finally:
            await chain.close()

    run(main())


def test_concurrent_transactions_of_one_account(anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    chain = chain_for(anvil, deployment, ANVIL_KEYS[3])
    address = Signer(ANVIL_KEYS[3]).address

    async def main() -> None:
        try:
            await asyncio.gather(*(chain.fund_deposit(1000 + i) for i in range(8)))
            assert (await chain.sender_info(address)).deposit == sum(1000 + i for i in range(8))
        finally:
            await chain.close()

    run(main())


def test_a_restarted_chain_keeps_its_state(tmp_path: Path) -> None:
    node = Anvil(state_file=tmp_path / "state.json")
    node.start_sync()
    try:
        deployment = run(deploy(node.url, ANVIL_KEYS[0]))
        chain = chain_for(node, deployment, ANVIL_KEYS[1])

        async def fund() -> None:
            try:
                await chain.fund_deposit_and_reserve(5, 7)
            finally:
                await chain.close()

        run(fund())
        node.stop_sync()
        node.start_sync()
        chain = chain_for(node, deployment)

        async def read() -> tuple[int, int]:
            try:
                info = await chain.sender_info(Signer(ANVIL_KEYS[1]).address)
                return info.deposit, info.reserve
            finally:
                await chain.close()

        assert run(read()) == (5, 7)
    finally:
        node.stop_sync()


@asynccontextmanager
async def _bad_node(answer: str | None) -> AsyncIterator[str]:
    """An HTTP server answering every request with ``answer`` (None: never answering); its URL."""
    async def handler(request: web.Request) -> web.Response:
        if answer is None:
            await asyncio.sleep(3600)
        return web.Response(text=answer or "", content_type="application/json")

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("answer", [
    "not json",
    '{"result": "0x1"}',  # no "jsonrpc"
    '{"jsonrpc": "2.0", "id": 0, "result": "0xzz"}',
    None,  # no answer at all
])
def test_an_answer_out_of_protocol_is_unavailable(answer: str | None) -> None:
    async def main() -> None:
        async with _bad_node(answer) as url, Chain(ChainSettings(rpc_url=url, ticket_broker=BROKER,
                                                                 rounds_manager=ROUNDS, timeout=0.5)) as chain:
            started = time.monotonic()
            with pytest.raises(ChainUnavailable):
                await chain.block_number()
            with pytest.raises(ChainUnavailable):
                await chain.round_info()
            assert time.monotonic() - started < 5.0  # two calls bounded at 0.5 s each, on a loaded machine

    run(main())


def test_a_refusal_by_the_node_is_not_a_revert(anvil: Anvil, deployment: Deployment) -> None:
    broke = Signer("0x" + "42" * 32)  # an account anvil never funded

    async def main() -> None:
        async with chain_for(anvil, deployment, "0x" + "42" * 32) as chain:
            assert await chain.balance(broke.address) == 0
            with pytest.raises(ChainUnavailable) as err:
                await chain.fund_deposit(10**18)
            assert not isinstance(err.value, TransactionReverted)
        async with chain_for(anvil, deployment) as read_only:
            with pytest.raises(ChainError) as refused:
                await read_only.fund_deposit(1)
            assert not isinstance(refused.value, (ChainUnavailable, TransactionReverted))
        async with Chain(ChainSettings(rpc_url=anvil.url)) as no_contracts:
            with pytest.raises(ChainError):
                await no_contracts.round_info()

    run(main())


def test_a_transaction_reverted_once_mined_has_its_reason(
        anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    """Two redemptions of one ticket both pass gas estimation; the one mined second reverts on chain."""
    sender = Signer(ANVIL_KEYS[1])

    async def main() -> None:
        async with chain_for(anvil, deployment, ANVIL_KEYS[1]) as funder:
            await funder.fund_deposit(10**16)
            rounds = await funder.round_info()
        ticket = Ticket(recipient=Signer(ANVIL_KEYS[2]).address, sender=sender.address, face_value=10**15,
                        win_prob=MAX_WIN_PROB, sender_nonce=1, recipient_rand_hash=recipient_rand_hash(9),
                        creation_round=rounds.last_initialized_round, creation_round_block_hash=rounds.block_hash)
        sig = ticket.sign(sender)
        first, second = chain_for(anvil, deployment, ANVIL_KEYS[2]), chain_for(anvil, deployment, ANVIL_KEYS[3])
        slow = Chain(dataclasses.replace(first.settings, receipt_timeout=0.5), first.account)
        rpc(anvil.url, "evm_setAutomine", False)
        try:
            started = time.monotonic()
            with pytest.raises(ChainUnavailable, match="not mined"):  # the wait for a receipt is bounded
                await slow.fund_deposit(1)
            assert time.monotonic() - started < 2.5
            rpc(anvil.url, "evm_mine")
            results = asyncio.gather(first.redeem_winning_ticket(ticket, sig, 9),
                                     second.redeem_winning_ticket(ticket, sig, 9), return_exceptions=True)
            await asyncio.sleep(0.5)  # both sent, neither mined
            rpc(anvil.url, "evm_mine")
            done, failed = sorted(await results, key=lambda r: isinstance(r, Exception))
        finally:
            rpc(anvil.url, "evm_setAutomine", True)
            for chain in (first, second, slow):
                await chain.close()
        assert not isinstance(done, BaseException) and done.amount == 10**15
        assert isinstance(failed, TransactionReverted) and failed.reason == "ticket is used"
        assert "reverted" in str(failed)

    run(main())
