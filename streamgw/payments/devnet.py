"""``streamgw up --payments``: a local chain with the contracts, and two funded accounts in keystores.

Everything lives in one directory (``~/.streamgw/devnet``): anvil's state (so a restart keeps the contracts,
the deposits and the redeemed tickets), ``deployment.json``, the gateway's and the orchestrator's keystores
and their password file. The accounts are anvil's well-known development keys: for a local chain only.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamgw.errors import ChainError
from streamgw.livepeer.signing import Signer
from streamgw.payments.chain import Chain, ChainSettings, Deployment
from streamgw.payments.keystore import new_keystore
from streamgw.payments.localchain import ANVIL_KEYS, Anvil, deploy

log = logging.getLogger(__name__)

__all__ = ["DEVNET_PRICES", "Devnet", "start_devnet"]

DEVNET_PRICES = {
    # About one ticket per 2 s segment of the default ladder, one in ten winning: a newcomer sees tickets
    # redeemed within a minute (go-livepeer's defaults would make a win a matter of hours).
    "price_per_unit": 1000,
    "ticket_ev": 20_000_000_000,
    "max_face_value": 200_000_000_000,
}
DEPOSIT = 10**18
RESERVE = 10**18


@dataclass(slots=True)
class Devnet:
    """A running local chain and what the nodes need to use it."""

    anvil: Anvil
    deployment: Deployment
    directory: Path
    gateway_keystore: Path
    orchestrator_keystore: Path
    password_file: Path
    gateway_address: str
    deposit: int
    reserve: int

    @property
    def url(self) -> str:
        """The chain's JSON-RPC URL."""
        return self.anvil.url

    def _common(self) -> dict[str, Any]:
        return {"eth_url": self.url, "eth_chain_id": self.deployment.chain_id,
                "ticket_broker_addr": self.deployment.ticket_broker,
                "rounds_manager_addr": self.deployment.rounds_manager,
                "eth_password_file": str(self.password_file)}

    def gateway_settings(self) -> dict[str, Any]:
        """Settings overrides for the gateway."""
        return {**self._common(), "eth_keystore_path": str(self.gateway_keystore)}

    def orchestrator_settings(self) -> dict[str, Any]:
        """Settings overrides for the orchestrator."""
        return {**self._common(), "eth_keystore_path": str(self.orchestrator_keystore), **DEVNET_PRICES}

    async def close(self) -> None:
        """Stop the chain (its state is on disk)."""
        await self.anvil.stop()


async def start_devnet(directory: Path, *, port: int = 0) -> Devnet:
    """Start anvil in ``directory`` (its state kept there), deploy the contracts once, fund the gateway."""
    directory.mkdir(parents=True, exist_ok=True)
    anvil = Anvil(port=port, state_file=directory / "anvil-state.json")
    await anvil.start()
    try:
        deployment = await _deployment(anvil, directory / "deployment.json")
        password_file = directory / "password"
        if not password_file.exists():
            password_file.write_text(secrets.token_hex(16) + "\n")
            password_file.chmod(0o600)
        password = password_file.read_text().splitlines()[0]
        keystores = {}
        for name, key in (("gateway", ANVIL_KEYS[1]), ("orchestrator", ANVIL_KEYS[2])):
            path = directory / f"{name}.keystore.json"
            if not path.exists():
                new_keystore(path, password, private_key=bytes.fromhex(key.removeprefix("0x")), iterations=2**12)
            keystores[name] = path
        gateway = Signer(ANVIL_KEYS[1])
        chain = Chain(ChainSettings(rpc_url=anvil.url, chain_id=deployment.chain_id,
                                    ticket_broker=deployment.ticket_broker,
                                    rounds_manager=deployment.rounds_manager), gateway.account)
        try:
            info = await chain.sender_info(gateway.address)
            top_up = (max(0, DEPOSIT - info.deposit), max(0, RESERVE - info.reserve))
            if any(top_up):
                await chain.fund_deposit_and_reserve(*top_up)
                info = await chain.sender_info(gateway.address)
        finally:
            await chain.close()
    except BaseException:
        await anvil.stop()
        raise
    log.info("local chain at %s: TicketBroker %s, RoundsManager %s", anvil.url, deployment.ticket_broker,
             deployment.rounds_manager)
    return Devnet(anvil=anvil, deployment=deployment, directory=directory, gateway_keystore=keystores["gateway"],
                  orchestrator_keystore=keystores["orchestrator"], password_file=password_file,
                  gateway_address=gateway.checksum_address, deposit=info.deposit, reserve=info.reserve)


async def _deployment(anvil: Anvil, path: Path) -> Deployment:
    """The contracts deployed by an earlier run (anvil's state kept them), else deployed now."""
    if path.exists():
        try:
            deployment = Deployment.from_json(json.loads(path.read_text()))
            chain = Chain(ChainSettings(rpc_url=anvil.url, chain_id=deployment.chain_id,
                                        ticket_broker=deployment.ticket_broker,
                                        rounds_manager=deployment.rounds_manager), None)
            try:
                await chain.round_info()  # the contracts answer: still deployed
                return deployment
            finally:
                await chain.close()
        except (ChainError, ValueError, KeyError) as exc:
            log.info("deploying again (%s)", exc)
    deployment = await deploy(anvil.url, ANVIL_KEYS[0])
    path.write_text(json.dumps(deployment.to_json()))
    return deployment
