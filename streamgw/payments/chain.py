"""The chain: a TicketBroker and a RoundsManager over Ethereum JSON-RPC (web3, async).

The contracts' ABI and bytecode are ``contracts.json`` beside this module, compiled from ``contracts/`` by
``scripts/compile_contracts.sh``. Every call is bounded by ``ChainSettings.timeout`` and every wait for a
receipt by ``ChainSettings.receipt_timeout``. Third-party errors are translated here, by type (never by their
text):

- :class:`ChainUnavailable` (transient, retry later): the node cannot be reached or timed out (``aiohttp``,
  ``OSError``, ``TimeoutError``, web3's ``TimeExhausted``), answered out of protocol (``ValueError`` from JSON
  decoding, ``BadResponseFormat`` and web3's other exceptions), or refused a transaction with a JSON-RPC error
  that is not a revert (``Web3RPCError``: nonce, funds for gas, fees).
- :class:`TransactionReverted`: a contract refused (``ContractLogicError`` from ``eth_call`` or gas estimation,
  or a mined transaction with status 0, whose reason is found by replaying it); ``reason`` is the decoded
  ``Error(string)`` text, ``panic 0x..`` for a ``Panic(uint256)``, or empty.
- :class:`ChainError`: used without a contract address or an account.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar, cast

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexAddress, HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxParams, Wei

from streamgw.errors import ChainError, ChainUnavailable, TransactionReverted
from streamgw.livepeer.signing import bytes_to_address, checksum_address
from streamgw.livepeer.tickets import Ticket

__all__ = [
    "Chain",
    "ChainSettings",
    "Deployment",
    "Redemption",
    "RoundInfo",
    "SenderInfo",
    "contract_artifact",
    "ticket_tuple",
]

T = TypeVar("T")
_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
_PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


@cache
def contract_artifact() -> dict[str, Any]:
    """``contracts.json``: compiler, settings, and per contract its ``abi`` and ``bytecode``."""
    text = resources.files("streamgw.payments").joinpath("contracts.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """Where the chain and the contracts are (``chain_id`` 0: ask the node)."""

    rpc_url: str
    chain_id: int = 0
    ticket_broker: str = ""
    rounds_manager: str = ""
    timeout: float = 10.0  # each JSON-RPC call
    receipt_timeout: float = 30.0  # a transaction until mined


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where a deployment put the contracts."""

    chain_id: int
    ticket_broker: str
    rounds_manager: str

    def to_json(self) -> dict[str, Any]:
        """A JSON object."""
        return {"chain_id": self.chain_id, "ticket_broker": self.ticket_broker, "rounds_manager": self.rounds_manager}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Deployment:
        """Back from :meth:`to_json` (``KeyError``/``ValueError`` when malformed)."""
        return cls(chain_id=int(raw["chain_id"]), ticket_broker=checksum_address(str(raw["ticket_broker"])),
                   rounds_manager=checksum_address(str(raw["rounds_manager"])))


@dataclass(frozen=True, slots=True)
class RoundInfo:
    """The RoundsManager's view: the current round, and the last initialised one with its block hash."""

    current_round: int
    initialized: bool
    last_initialized_round: int
    block_hash: bytes  # of the last initialised round (32 bytes)


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """``getSenderInfo``: deposit, withdraw round (0: no unlock), reserve and what was claimed of it this round."""

    deposit: int
    withdraw_round: int
    reserve: int
    claimed_in_current_round: int

    @property
    def unlock_in_progress(self) -> bool:
        """Whether the sender asked to unlock."""
        return self.withdraw_round > 0


@dataclass(frozen=True, slots=True)
class Redemption:
    """A mined redemption: its transaction, block, gas, and what the recipient received (wei)."""

    tx_hash: str
    block: int
    gas_used: int
    amount: int


class Chain:
    """The TicketBroker and RoundsManager of one chain; ``account`` signs transactions (None: read only)."""

    def __init__(self, settings: ChainSettings, account: LocalAccount | None = None) -> None:
        self.settings = settings
        self.account = account
        self.w3 = AsyncWeb3(AsyncHTTPProvider(settings.rpc_url, request_kwargs={
            "timeout": aiohttp.ClientTimeout(total=settings.timeout)}))
        artifact = contract_artifact()["contracts"]
        self.broker = self.w3.eth.contract(address=self.w3.to_checksum_address(settings.ticket_broker),
                                           abi=artifact["TicketBroker"]["abi"]) if settings.ticket_broker else None
        self.rounds = self.w3.eth.contract(address=self.w3.to_checksum_address(settings.rounds_manager),
                                           abi=artifact["RoundsManager"]["abi"]) if settings.rounds_manager else None
        self._send_lock = asyncio.Lock()
        self._chain_id = settings.chain_id

    async def close(self) -> None:
        """Close the HTTP session."""
        provider = self.w3.provider
        if isinstance(provider, AsyncHTTPProvider):
            await provider.disconnect()

    async def __aenter__(self) -> Chain:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- calls ---

    async def _call(self, awaitable: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """``awaitable`` within ``timeout`` (default: the settings'), its errors translated (module docstring)."""
        limit = self.settings.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(awaitable, limit)
        except (TimeoutError, TimeExhausted) as exc:
            raise ChainUnavailable(f"{what}: no answer from {self.settings.rpc_url} within {limit:g} s") from exc
        except ContractLogicError as exc:
            reason = _revert_reason(exc)
            raise TransactionReverted(f"{what}: reverted: {reason}", reason) from exc
        except Web3RPCError as exc:
            raise ChainUnavailable(f"{what}: the node refused: {_rpc_message(exc)}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ChainUnavailable(f"{what}: {self.settings.rpc_url}: {type(exc).__name__}: {exc}") from exc
        except (Web3Exception, ValueError) as exc:  # an answer out of protocol
            raise ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc

    def _broker(self) -> Any:
        if self.broker is None:
            raise ChainError("no TicketBroker address configured")
        return self.broker

    def _rounds(self) -> Any:
        if self.rounds is None:
            raise ChainError("no RoundsManager address configured")
        return self.rounds

    async def chain_id(self) -> int:
        """The chain's id (asked once when not configured)."""
        if not self._chain_id:
            self._chain_id = int(await self._call(self.w3.eth.chain_id, "eth_chainId"))
        return self._chain_id

    async def block_number(self) -> int:
        """The latest block."""
        return int(await self._call(self.w3.eth.block_number, "eth_blockNumber"))

    async def gas_price(self) -> int:
        """The node's gas price, wei."""
        return int(await self._call(self.w3.eth.gas_price, "eth_gasPrice"))

    async def balance(self, address: bytes | str) -> int:
        """An account's ETH balance, wei."""
        return int(await self._call(self.w3.eth.get_balance(_address(address)), "eth_getBalance"))

    async def code(self, address: bytes | str) -> bytes:
        """The code at an address (empty: no contract)."""
        return bytes(await self._call(self.w3.eth.get_code(_address(address)), "eth_getCode"))

    async def round_info(self) -> RoundInfo:
        """The current round, whether it is initialised, and the last initialised one with its block hash."""
        rounds = self._rounds()
        current = int(await self._call(rounds.functions.currentRound().call(), "currentRound"))
        last = int(await self._call(rounds.functions.lastInitializedRound().call(), "lastInitializedRound"))
        block_hash = bytes(await self._call(rounds.functions.blockHashForRound(last).call(), "blockHashForRound"))
        return RoundInfo(current_round=current, initialized=current == last, last_initialized_round=last,
                         block_hash=block_hash)

    async def sender_info(self, address: bytes | str) -> SenderInfo:
        """``getSenderInfo(address)``."""
        sender, reserve = await self._call(self._broker().functions.getSenderInfo(_address(address)).call(),
                                           "getSenderInfo")
        return SenderInfo(deposit=int(sender[0]), withdraw_round=int(sender[1]), reserve=int(reserve[0]),
                          claimed_in_current_round=int(reserve[1]))

    async def claimed_reserve(self, holder: bytes | str, claimant: bytes | str) -> int:
        """What ``claimant`` claimed of ``holder``'s reserve this round."""
        return int(await self._call(
            self._broker().functions.claimedReserve(_address(holder), _address(claimant)).call(), "claimedReserve"))

    async def is_ticket_used(self, ticket_hash: bytes) -> bool:
        """Whether a ticket was redeemed already."""
        return bool(await self._call(self._broker().functions.usedTickets(ticket_hash).call(), "usedTickets"))

    async def ticket_hash(self, ticket: Ticket) -> bytes:
        """The contract's ``getTicketHash`` of ``ticket``."""
        return bytes(await self._call(self._broker().functions.getTicketHash(ticket_tuple(ticket)).call(),
                                      "getTicketHash"))

    # --- transactions ---

    async def _transact(self, function: Any, what: str, value: int = 0) -> dict[str, Any]:
        if self.account is None:
            raise ChainError(f"{what}: no account to send transactions from")
        async with self._send_lock:  # one account, one nonce sequence
            sender = self.account.address
            nonce = await self._call(self.w3.eth.get_transaction_count(sender, "pending"), "eth_getTransactionCount")
            tx = await self._call(function.build_transaction({
                "from": sender, "nonce": nonce, "value": value, "chainId": await self.chain_id()}), what)
            if not tx.get("to"):
                # A contract creation: web3 8 fills in an empty "to" and estimates the gas of a call to it,
                # which is far too little for the creation itself.
                tx.pop("to", None)
                tx["gas"] = await self._call(self.w3.eth.estimate_gas(
                    {"from": sender, "data": tx["data"], "value": Wei(value)}), what) * 5 // 4
            signed = self.account.sign_transaction(tx)
            tx_hash = await self._call(self.w3.eth.send_raw_transaction(signed.raw_transaction), what)
        wait = self.settings.receipt_timeout
        receipt = await self._call(self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=wait, poll_latency=0.05),
                                   f"{what}: transaction 0x{tx_hash.hex()} not mined", wait + 1)
        if receipt["status"] != 1:
            # Mined but reverted (it passed gas estimation against an older state: a race, e.g. two redemptions
            # of one ticket): replay it on the state after its block for the contract's reason.
            reason = await self._replay_reason(tx, int(receipt["blockNumber"]))
            raise TransactionReverted(f"{what}: transaction 0x{tx_hash.hex()} reverted: {reason}", reason)
        return dict(receipt)

    async def _replay_reason(self, tx: Any, block: int) -> str:
        call = cast(TxParams, {key: tx[key] for key in ("from", "to", "data", "value") if key in tx})
        try:
            await self._call(self.w3.eth.call(call, block), "replay")
        except TransactionReverted as exc:
            return exc.reason
        except ChainUnavailable:
            pass
        return ""

    async def initialize_round(self) -> None:
        """Initialise the current round (nothing when it is)."""
        if (await self.round_info()).initialized:
            return
        await self._transact(self._rounds().functions.initializeRound(), "initializeRound")

    async def fund_deposit(self, wei: int) -> None:
        """Add to this account's deposit."""
        await self._transact(self._broker().functions.fundDeposit(), "fundDeposit", wei)

    async def fund_reserve(self, wei: int) -> None:
        """Add to this account's reserve."""
        await self._transact(self._broker().functions.fundReserve(), "fundReserve", wei)

    async def fund_deposit_and_reserve(self, deposit: int, reserve: int) -> None:
        """Add to both in one transaction."""
        await self._transact(self._broker().functions.fundDepositAndReserve(deposit, reserve),
                             "fundDepositAndReserve", deposit + reserve)

    async def unlock(self) -> None:
        """Start the unlock period of this account's funds."""
        await self._transact(self._broker().functions.unlock(), "unlock")

    async def cancel_unlock(self) -> None:
        """Cancel an unlock in progress."""
        await self._transact(self._broker().functions.cancelUnlock(), "cancelUnlock")

    async def withdraw(self) -> None:
        """Withdraw deposit and reserve once unlocked."""
        await self._transact(self._broker().functions.withdraw(), "withdraw")

    async def redeem_winning_ticket(self, ticket: Ticket, sig: bytes, recipient_rand: int) -> Redemption:
        """``redeemWinningTicket``; raises :class:`TransactionReverted` with the contract's reason."""
        broker = self._broker()
        receipt = await self._transact(
            broker.functions.redeemWinningTicket(ticket_tuple(ticket), sig, recipient_rand), "redeemWinningTicket")
        transfers = broker.events.WinningTicketTransfer().process_receipt(receipt, errors=DISCARD)
        amount = sum(int(e["args"]["amount"]) for e in transfers)
        return Redemption(tx_hash="0x" + bytes(receipt["transactionHash"]).hex(), block=int(receipt["blockNumber"]),
                          gas_used=int(receipt["gasUsed"]), amount=amount)

    async def deploy(self, name: str, *args: Any) -> str:
        """Deploy a contract of ``contracts.json`` with constructor ``args``; its address."""
        artifact = contract_artifact()["contracts"][name]
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = await self._transact(factory.constructor(*args), f"deploy {name}")
        return str(receipt["contractAddress"])


def _address(address: bytes | str) -> ChecksumAddress:
    return ChecksumAddress(HexAddress(HexStr(
        checksum_address(bytes_to_address(address) if isinstance(address, bytes) else address))))


def ticket_tuple(ticket: Ticket) -> tuple[Any, ...]:
    """``ticket`` as the contracts' ``Ticket`` struct argument."""
    return (_address(ticket.recipient), _address(ticket.sender), ticket.face_value, ticket.win_prob,
            ticket.sender_nonce, ticket.recipient_rand_hash, ticket.aux_data())


def _rpc_message(exc: Web3RPCError) -> str:
    """The JSON-RPC error's ``message`` (the whole error when it has none)."""
    error = (exc.rpc_response or {}).get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(exc.message)


def _revert_reason(exc: ContractLogicError) -> str:
    """The ``Error(string)`` a contract reverted with (its message when there is no data)."""
    data = exc.data
    if isinstance(data, str) and data.startswith("0x"):
        try:
            raw = bytes.fromhex(data[2:])
            if raw[:4] == _ERROR_SELECTOR:
                return str(abi_decode(["string"], raw[4:])[0])
            if raw[:4] == _PANIC_SELECTOR:
                return f"panic {int(abi_decode(['uint256'], raw[4:])[0]):#04x}"
        except Exception:  # noqa: BLE001 - malformed revert data (eth_abi raises several types): use the message
            pass
    return str(exc.message or exc)
