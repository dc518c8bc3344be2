"""The gateway's payments at run time: its own chain facts kept fresh, payments staged and settled.

:class:`SenderService` wraps the sans-I/O :class:`~streamgw.payments.sender.TicketSender`. ``watch`` (a
supervised task) reads the last block, the round and this gateway's deposit, reserve and unlock every
``poll_interval``; when the chain is down the last facts stay in use (streams go on while ticket params
last). The dispatcher and live AI call :meth:`stage` before each request and :meth:`settle` after it.
"""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

from streamgw.errors import ChainError
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.signing import checksum_address
from streamgw.payments.sender import SenderChainState, StagedPayment, TicketSender

if TYPE_CHECKING:
    from streamgw.payments.chain import Chain

log = logging.getLogger(__name__)

__all__ = ["Payer", "SenderService"]


class Payer(Protocol):
    """What pays requests: a local key (:class:`SenderService`) or a remote signer."""

    def stage(self, orchestrator: str, info: pb.OrchestratorInfo, pixels: int | Fraction, *,
              stream: str = "", key: str | None = None) -> StagedPayment:
        """The payment for ``pixels`` of work at ``info``'s quote; raises ``TicketParamsRefused``."""
        ...

    def discard(self, staged: StagedPayment) -> None:
        """Accepted without entering the credit."""
        ...

    def settle(self, staged: StagedPayment, *, accepted: bool) -> None:
        """The orchestrator accepted (or refused) the request ``staged`` paid for."""
        ...


class SenderService:
    """A gateway's ticket sender with its chain watcher and the numbers the operator sees."""

    def __init__(self, sender: TicketSender, chain: Chain, *, poll_interval: float = 2.0) -> None:
        self.sender = sender
        self.chain = chain
        self.poll_interval = poll_interval
        self.chain_ok = False
        self.chain_errors = 0
        self.last_error = ""
        self.ready = asyncio.Event()

    @property
    def address(self) -> bytes:
        """The gateway's (the sender's) address."""
        return self.sender.signer.address

    async def watch(self) -> None:
        """Keep the chain facts fresh (runs until cancelled)."""
        while True:
            try:
                await self.refresh()
            except ChainError as exc:
                self.chain_errors += 1
                self.last_error = str(exc)
                if self.chain_ok:
                    log.warning("chain unavailable, paying on block %d: %s", self.sender.chain.last_block, exc)
                self.chain_ok = False
            await asyncio.sleep(self.poll_interval)

    async def refresh(self) -> None:
        """Read the block, the round and this sender's funds once."""
        block = await self.chain.block_number()
        rounds = await self.chain.round_info()
        info = await self.chain.sender_info(self.address)
        self.sender.set_chain_state(SenderChainState(
            last_block=block, current_round=rounds.current_round, deposit=info.deposit, reserve=info.reserve,
            withdraw_round=info.withdraw_round, creation_round=rounds.last_initialized_round,
            creation_round_block_hash=rounds.block_hash))
        if not self.chain_ok:
            log.info("paying as %s: deposit %d wei, reserve %d wei, block %d",
                     checksum_address(self.address), info.deposit, info.reserve, block)
        self.chain_ok = True
        self.ready.set()

    def stage(self, orchestrator: str, info: pb.OrchestratorInfo, pixels: int | Fraction, *,
              stream: str = "", key: str | None = None) -> StagedPayment:
        """The ``Livepeer-Payment`` for ``pixels`` of work (raises ``TicketParamsRefused``)."""
        return self.sender.stage(orchestrator, info, pixels, stream=stream, key=key)

    def discard(self, staged: StagedPayment) -> None:
        """Accepted without entering the credit (a live stream's start prepayment)."""
        self.sender.discard(staged)

    def settle(self, staged: StagedPayment, *, accepted: bool) -> None:
        """The orchestrator answered the request ``staged`` paid for."""
        self.sender.settle(staged, accepted=accepted)

    def forget(self, orchestrator: str) -> None:
        """An orchestrator's sessions ended."""
        self.sender.forget(orchestrator)

    def snapshot(self) -> dict[str, Any]:
        """The operator view (``GET /api/payments``)."""
        s = self.sender
        stats = s.stats
        return {
            "mode": "on-chain",
            "sender": checksum_address(self.address),
            "chain": {"ok": self.chain_ok, "last_block": s.chain.last_block, "round": s.chain.current_round,
                      "errors": self.chain_errors, "last_error": self.last_error},
            "deposit": str(s.chain.deposit),
            "reserve": str(s.chain.reserve),
            "withdraw_round": s.chain.withdraw_round,
            "tickets_sent": stats.tickets,
            "ev_sent": _wei(stats.ev_sent),
            "face_value_sent": str(stats.face_value_sent),
            "payments": stats.payments,
            "refused": stats.refused,
            "fees": _wei(stats.fees),
            "balances": {url: _wei(v) for url, v in s.balances().items()},
            "spend_by_stream": {k: _wei(v) for k, v in stats.by_stream.items()},
        }


def _wei(value: Fraction) -> str:
    """Wei as a decimal string, rounded down to whole wei (JSON has no big integers)."""
    return str(value.numerator // value.denominator)
