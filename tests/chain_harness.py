"""pytest fixtures for a real local chain: anvil on a free port, the contracts deployed, snapshots per test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from streamgw.livepeer.signing import Signer
from streamgw.payments.chain import Chain, ChainSettings, Deployment
from streamgw.payments.localchain import ANVIL_KEYS, Anvil, deploy


def rpc(url: str, method: str, *params: Any) -> Any:
    """One JSON-RPC call (anvil_mine, evm_snapshot, ...); raises on an error answer."""
    answer = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
                        timeout=10).json()
    if "error" in answer:
        raise AssertionError(f"{method}: {answer['error']}")
    return answer["result"]


def mine(url: str, blocks: int) -> None:
    """Mine ``blocks`` empty blocks."""
    rpc(url, "anvil_mine", hex(blocks))


def chain_for(anvil: Anvil, deployment: Deployment, key: str | None = None) -> Chain:
    """A client of the deployment, sending as ``key``'s account (None: read only)."""
    return Chain(ChainSettings(rpc_url=anvil.url, chain_id=deployment.chain_id,
                               ticket_broker=deployment.ticket_broker, rounds_manager=deployment.rounds_manager),
                 Signer(key).account if key else None)


def run(coro: Any) -> Any:
    """Run a coroutine on a fresh loop (bounded)."""
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """anvil on a free port, its state in a temporary directory."""
    node = Anvil(state_file=tmp_path_factory.mktemp("anvil") / "state.json")
    node.start_sync()
    yield node
    node.stop_sync()


@pytest.fixture(scope="module")
def deployment(anvil: Anvil) -> Deployment:
    """The TicketBroker and RoundsManager, deployed once per anvil."""
    result: Deployment = run(deploy(anvil.url, ANVIL_KEYS[0]))
    return result


@pytest.fixture
def chain_snapshot(anvil: Anvil, deployment: Deployment) -> Iterator[None]:
    """The chain as it was before the test, after it (evm_snapshot / evm_revert)."""
    snapshot = rpc(anvil.url, "evm_snapshot")
    yield
    rpc(anvil.url, "evm_revert", snapshot)
