"""The orchestrator's payments at run time: chain facts kept fresh, winners stored and redeemed.

:class:`RecipientService` wraps the sans-I/O :class:`~streamgw.payments.recipient.TicketRecipient` with the
chain (:class:`~streamgw.payments.chain.Chain`) and the durable :class:`WinningTicketStore`:

- ``watch`` (a supervised task): every ``poll_interval`` the last block, the round (initialising it when asked,
  as go-livepeer's ``-initializeRound``), the gas price, and the funds of the senders seen. When the chain is
  down the last facts stay in use, so streams with balance go on; only new senders wait for it.
- ``redeem`` (a supervised task): every pending winner is redeemed; a chain outage leaves it pending and
  retries with backoff; the contract refusing it for good (``ticket is expired``, ``ticket is used``) is
  recorded with the reason. Winners are on disk before the payment is answered, so none is lost to a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

from streamgw.errors import ChainError, ChainUnavailable, PaymentError, TicketRejected, TransactionReverted
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.signing import bytes_to_address, checksum_address
from streamgw.livepeer.tickets import TicketParams
from streamgw.payments.recipient import PaymentReceipt, RecipientChainState, SenderReserve, TicketRecipient
from streamgw.payments.ticket_store import StoredTicket, TicketState, WinningTicketStore

if TYPE_CHECKING:
    from streamgw.payments.chain import Chain

log = logging.getLogger(__name__)

__all__ = ["RecipientService", "RecipientStats"]

SENDER_REFRESH = 10.0  # seconds between re-reads of a known sender's funds
SENDER_READ_TIMEOUT = 5.0  # a new sender's first read


@dataclass(slots=True)
class RecipientStats:
    """Counters for the operator view."""

    payments: int = 0
    refused: int = 0
    tickets: int = 0
    credited: int = 0
    won: int = 0
    redeemed: int = 0
    redeemed_wei: int = 0
    failed: int = 0
    redeem_errors: int = 0
    chain_errors: int = 0
    chain_ok: bool = False
    last_error: str = ""
    fees: Fraction = field(default_factory=Fraction)


class RecipientService:
    """An orchestrator's ticket params, payment checks, balances, and redemptions on chain."""

    def __init__(self, recipient: TicketRecipient, chain: Chain, store: WinningTicketStore, *,
                 poll_interval: float = 1.0, initialize_rounds: bool = True,
                 retry_backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.recipient = recipient
        self.chain = chain
        self.store = store
        self.poll_interval = poll_interval
        self.initialize_rounds = initialize_rounds
        self.retry_backoff = retry_backoff
        self.stats = RecipientStats()
        self._wake = asyncio.Event()
        self._sender_read: dict[bytes, float] = {}
        self._loaded = False

    @property
    def address(self) -> bytes:
        """The recipient: this orchestrator's address."""
        return self.recipient.address

    # --- background tasks ---

    async def watch(self) -> None:
        """Keep the chain facts fresh (runs until cancelled)."""
        await self._load()
        while True:
            try:
                await self.refresh()
            except ChainError as exc:
                self._chain_failed(exc)
            await asyncio.sleep(self.poll_interval)

    async def refresh(self) -> None:
        """Read the block, the round and the gas price once, and re-read senders due for it."""
        block = await self.chain.block_number()
        rounds = await self.chain.round_info()
        if not rounds.initialized and self.initialize_rounds:
            try:
                await self.chain.initialize_round()
            except TransactionReverted as exc:  # another node initialised it first
                log.info("initializeRound: %s", exc.reason or exc)
            rounds = await self.chain.round_info()
            block = await self.chain.block_number()
        gas_price = await self.chain.gas_price()
        self.recipient.set_chain_state(RecipientChainState(
            last_block=block, current_round=rounds.current_round,
            last_initialized_round=rounds.last_initialized_round, round_block_hash=rounds.block_hash,
            gas_price=gas_price))
        now = time.monotonic()
        for sender, read in list(self._sender_read.items()):
            if now - read >= SENDER_REFRESH:
                await self._read_sender(sender)
        if not self.stats.chain_ok:
            log.info("chain at block %d, round %d", block, rounds.current_round)
        self.stats.chain_ok = True

    async def redeem(self) -> None:
        """Redeem winning tickets as they come, retrying through chain outages (runs until cancelled)."""
        await self._load()
        backoff = self.retry_backoff[0]
        while True:
            self._wake.clear()
            pending = await self.store.pending_async()
            outage = False
            for stored in pending:
                try:
                    await self._redeem_one(stored)
                except ChainUnavailable as exc:
                    self.stats.redeem_errors += 1
                    self.stats.last_error = f"redeem: {exc}"
                    log.warning("redeeming ticket %s waits for the chain: %s", stored.hash[:12], exc)
                    outage = True
                    break
            if outage:
                await self._sleep_or_wake(backoff)
                backoff = min(backoff * 2, self.retry_backoff[1])
                continue
            backoff = self.retry_backoff[0]
            await self._sleep_or_wake(self.retry_backoff[1])

    async def _redeem_one(self, stored: StoredTicket) -> None:
        ticket_hash, winner = stored.hash, stored.ticket
        sender, face = winner.ticket.sender, winner.ticket.face_value
        try:
            receipt = await self.chain.redeem_winning_ticket(winner.ticket, winner.sig, winner.recipient_rand)
        except TransactionReverted as exc:
            reason = exc.reason or str(exc)
            # The contract's verdict is final: someone redeemed it already, or it can never pay.
            state: TicketState = "used" if "ticket is used" in reason else "failed"
            await self.store.mark_async(ticket_hash, state, error=reason)
            self.recipient.settled(sender, face)
            if state == "failed":
                self.stats.failed += 1
            log.warning("winning ticket %s not redeemed: %s", ticket_hash[:12], reason)
            return
        await self.store.mark_async(ticket_hash, "redeemed", tx=receipt.tx_hash)
        self.recipient.settled(sender, face)
        self.stats.redeemed += 1
        self.stats.redeemed_wei += receipt.amount
        log.info("redeemed winning ticket %s from %s: %d wei (tx %s)", ticket_hash[:12],
                 checksum_address(sender), receipt.amount, receipt.tx_hash)

    async def _sleep_or_wake(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for stored in await self.store.pending_async():  # winners a previous run did not redeem
            self.recipient.add_pending(stored.ticket.ticket.sender, stored.ticket.ticket.face_value)

    def _chain_failed(self, exc: ChainError) -> None:
        self.stats.chain_errors += 1
        self.stats.last_error = str(exc)
        if self.stats.chain_ok:
            log.warning("chain unavailable, going on with block %d: %s", self.recipient.chain.last_block, exc)
        self.stats.chain_ok = False

    async def _read_sender(self, sender: bytes) -> None:
        info = await self.chain.sender_info(sender)
        claimed = await self.chain.claimed_reserve(sender, self.address)
        self.recipient.set_sender(sender, SenderReserve(deposit=info.deposit, reserve=info.reserve, claimed=claimed))
        self._sender_read[bytes_to_address(sender)] = time.monotonic()

    # --- per request ---

    async def quote(self, sender: bytes, price: Fraction) -> TicketParams:
        """Fresh ticket params for ``sender`` (its funds read first if never seen). Raises ``PaymentError``."""
        sender = bytes_to_address(sender)
        if not self.recipient.knows(sender):
            try:
                await asyncio.wait_for(self._read_sender(sender), SENDER_READ_TIMEOUT)
            except (ChainError, TimeoutError) as exc:
                raise PaymentError(f"cannot read the funds of sender {checksum_address(sender)}: {exc}") from exc
        elif sender not in self._sender_read:
            self._sender_read[sender] = time.monotonic()
        return self.recipient.ticket_params(sender, price)

    def orchestrator_ticket_params(self, params: TicketParams) -> pb.TicketParams:
        """The wire form the O puts in OrchestratorInfo (with nested expiration params)."""
        return params.to_proto()

    async def accept(self, payment: pb.Payment, key: str, *, quote: Fraction) -> PaymentReceipt:
        """Check and credit a payment; its winners are on disk before this returns.

        Raises :class:`TicketRejected` (fatal ones, and the non-fatal error after crediting what came before it).
        """
        self.stats.payments += 1
        try:
            receipt = self.recipient.receive(payment, key, quote=quote)
        except TicketRejected:
            self.stats.refused += 1
            raise
        self.stats.tickets += len(payment.ticket_sender_params)
        self.stats.credited += receipt.credited
        for winner in receipt.winners:
            if await self.store.add_async(winner):
                self.recipient.add_pending(winner.ticket.sender, winner.ticket.face_value)
                self.stats.won += 1
        if receipt.winners:
            self._wake.set()
        if receipt.error:
            self.stats.refused += 1
            raise TicketRejected(receipt.error, fatal=False)
        return receipt

    def charge(self, sender: bytes, key: str, pixels: int) -> Fraction:
        """Debit work done at the session's fixed price."""
        fee = self.recipient.charge(sender, key, pixels)
        self.stats.fees += fee
        return fee
