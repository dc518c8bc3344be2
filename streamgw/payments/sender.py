"""The gateway's side of probabilistic micropayments: ticket batches, local credit, go-livepeer's limits.

WIRE.md §5 and §10.5; sources (facts, not code): go-livepeer ``pm/sender.go`` (``CreateTicketBatch``,
``validateTicketParams``), ``core/balance.go`` (``StageUpdate``), ``server/segment_rpc.go`` (``genPayment``),
``server/broadcast.go`` (the fee of a segment), ``server/live_payment.go``.

Sans-I/O: the chain facts it needs (the last block, this sender's deposit, its unlock) come in as a
:class:`SenderChainState` value that the node keeps fresh; nothing here waits.

- A **payment session** is one (orchestrator, auth-token session): its credit (what this gateway believes the O
  holds for it), the price of its first quote, and the ticket params in use with their nonce counter. New ticket
  params (a fresh ``recipientRandHash``) restart the nonces at 1, as go-livepeer's ``StartSession`` does.
- **Tickets per payment** = ceil((max(fee, EV) - credit) / EV), possibly 0. Staging takes the whole credit; a
  200 gives back credit + n·EV - fee, a refusal gives back nothing (go-livepeer loses the credit too: the O has it).
- **Limits** (go-livepeer's flags): ``EV >= faceValue`` (``ticket faceValue too low``), ``EV > max_ticket_ev``,
  ``n·EV > max_total_ev``, ``faceValue > deposit / deposit_multiplier``, params expiring within a block, and a
  deposit set to unlock soon are refused with go-livepeer's texts; so is a price over the cap, and a price above
  twice the session's first quote ends the session.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from streamgw.errors import TicketParamsRefused
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.profiles import VideoProfile
from streamgw.livepeer.signing import MessageSigner, checksum_address
from streamgw.livepeer.tickets import (
    TicketParams,
    build_payment,
    encode_payment_header,
    float_string,
    price_from_proto,
)

__all__ = [
    "FEE_MARGIN",
    "LIVE_PIXELS_PER_SECOND",
    "LIVE_PREPAY_PIXELS",
    "PARAMS_EXPIRY_BUFFER",
    "PaymentSession",
    "SenderChainState",
    "SenderLimits",
    "SenderStats",
    "StagedPayment",
    "TicketSender",
    "segment_fee_pixels",
    "segment_pixels",
]

PARAMS_EXPIRY_BUFFER = 1
"""Ticket params expiring within this many blocks of the last one seen are refused (``paramsExpiryBuffer``)."""

FEE_MARGIN = Fraction(102, 100)
"""go-livepeer's gateway pays 2% over its own pixel count of a segment."""

LIVE_PIXELS_PER_SECOND = 1280 * 720 * 30
"""Live AI is paid per second of stream as if it were 720p30, whatever its size (27,648,000 px/s)."""

LIVE_PREPAY_PIXELS = 60 * LIVE_PIXELS_PER_SECOND
"""The start of a live AI stream pays 60 s ahead (1,658,880,000 px)."""


def segment_fee_pixels(profiles: Iterable[VideoProfile], duration_s: float) -> Fraction:
    """What go-livepeer's gateway pays a segment for: :func:`segment_pixels` plus :data:`FEE_MARGIN`."""
    return segment_pixels(profiles, duration_s) * FEE_MARGIN


def segment_pixels(profiles: Iterable[VideoProfile], duration_s: float) -> int:
    """The pixels go-livepeer's gateway charges a segment: w·h·ceil(fps)·ceil(duration) per profile.

    A profile without a frame rate counts as 60 fps.
    """
    seconds = math.ceil(duration_s)
    total = 0
    for p in profiles:
        fps = Fraction(p.fps, p.fps_den or 1) if p.fps else Fraction(60)
        total += p.width * p.height * math.ceil(fps) * seconds
    return total


@dataclass(frozen=True, slots=True)
class SenderLimits:
    """go-livepeer's sender flags (``-maxTicketEV``, ``-maxTotalEV``, ``-depositMultiplier``) and price caps."""

    max_ticket_ev: int = 3_000_000_000_000
    max_total_ev: int = 20_000_000_000_000
    deposit_multiplier: int = 1
    max_price: Fraction | None = None  # wei per pixel; None: no cap
    max_price_rise: Fraction = Fraction(2)  # a quote above this times the session's first ends the session


@dataclass(frozen=True, slots=True)
class SenderChainState:
    """What the sender knows of the chain: the last block, its deposit, when its funds unlock."""

    last_block: int = 0
    current_round: int = 0
    deposit: int = 0
    reserve: int = 0
    withdraw_round: int = 0  # 0: no unlock in progress
    creation_round: int = 0  # the last initialised round and its block hash (B's own expiration params)
    creation_round_block_hash: bytes = bytes(32)


@dataclass(slots=True)
class PaymentSession:
    """One (orchestrator, session) of this gateway: credit, first price, the ticket params in use."""

    recipient: bytes
    first_price: Fraction
    credit: Fraction = Fraction(0)
    params: TicketParams | None = None
    nonce: int = 0  # the last nonce used with ``params``
    ended: str = ""  # why the session may no longer be paid in (empty: open)


@dataclass(frozen=True, slots=True)
class StagedPayment:
    """A payment built for one request: the header value, and what settling it does to the credit."""

    key: tuple[str, str]
    header: str
    tickets: int
    new_credit: Fraction  # tickets x EV
    taken_credit: Fraction  # the session's credit taken when staged
    fee: Fraction


@dataclass(slots=True)
class SenderStats:
    """Counters for the operator view."""

    tickets: int = 0
    ev_sent: Fraction = field(default_factory=Fraction)
    face_value_sent: int = 0
    payments: int = 0
    refused: int = 0
    fees: Fraction = field(default_factory=Fraction)
    by_stream: dict[str, Fraction] = field(default_factory=dict)


class TicketSender:
    """Builds the ``Livepeer-Payment`` of each request to an on-chain orchestrator and keeps the credit."""

    def __init__(self, signer: MessageSigner, limits: SenderLimits | None = None) -> None:
        self.signer = signer
        self.limits = limits or SenderLimits()
        self.chain = SenderChainState()
        self.sessions: dict[tuple[str, str], PaymentSession] = {}
        self._nonces: dict[bytes, int] = {}  # the last nonce used per recipientRandHash
        self.stats = SenderStats()

    def set_chain_state(self, state: SenderChainState) -> None:
        """Adopt fresher chain facts (the node's watcher calls this)."""
        self.chain = state

    def session(self, orchestrator: str, info: pb.OrchestratorInfo, key: str | None = None) -> PaymentSession:
        """The payment session ``key`` (default: the info's auth-token session), made on first use."""
        session_key = (orchestrator, key if key is not None else info.auth_token.session_id)
        current = self.sessions.get(session_key)
        if current is None:
            current = PaymentSession(recipient=bytes(info.address), first_price=_price(info))
            self.sessions[session_key] = current
        return current

    def check_price(self, info: pb.OrchestratorInfo, session: PaymentSession) -> Fraction:
        """The quote of ``info``, refused over the cap or above ``max_price_rise`` x the first quote.

        A rise ends the session (go-livepeer drops an O whose price jumps mid-stream; streamgw keeps its other
        sessions).
        """
        price = _price(info)
        limits = self.limits
        if limits.max_price is not None and price > limits.max_price:
            raise TicketParamsRefused(f"price {_ratio(price)} wei/pixel > max price {_ratio(limits.max_price)}")
        if session.first_price > 0 and price > limits.max_price_rise * session.first_price:
            session.ended = (f"price {_ratio(price)} wei/pixel is more than {limits.max_price_rise} x the session's "
                             f"first quote {_ratio(session.first_price)}")
        elif session.first_price == 0 and price > 0:
            session.ended = f"price {_ratio(price)} wei/pixel after a free first quote"
        if session.ended:
            raise TicketParamsRefused(session.ended)
        return price

    def validate(self, params: TicketParams, tickets: int) -> None:
        """go-livepeer's ``validateTicketParams`` for ``tickets`` tickets on ``params``; raises
        :class:`TicketParamsRefused` with its texts."""
        chain = self.chain
        if params.expiration_block == 0:
            return
        if params.expiration_block - chain.last_block <= PARAMS_EXPIRY_BUFFER:
            raise TicketParamsRefused("TicketParams expired")
        ev = params.ev()
        if ev <= 0:
            return
        if ev >= params.face_value:
            raise TicketParamsRefused(f"ticket faceValue too low faceValue={params.face_value}")
        limits = self.limits
        if ev > limits.max_ticket_ev:
            raise TicketParamsRefused(
                f"ticket EV {_float(ev)} > max ticket EV {_float(Fraction(limits.max_ticket_ev))}")
        total = ev * tickets
        if total > limits.max_total_ev:
            raise TicketParamsRefused(f"total ticket EV {_float(total)} for {tickets} tickets > max total ticket EV "
                                      f"{_float(Fraction(limits.max_total_ev))}")
        if chain.withdraw_round and chain.withdraw_round <= chain.current_round + 1:
            raise TicketParamsRefused("deposit and reserve is set to unlock soon")
        max_face = chain.deposit // limits.deposit_multiplier
        if params.face_value > max_face:
            raise TicketParamsRefused(f"ticket faceValue {params.face_value} > max faceValue {max_face}")

    def stage(self, orchestrator: str, info: pb.OrchestratorInfo, pixels: int | Fraction, *, stream: str = "",
              key: str | None = None, minimum: bool = True) -> StagedPayment:
        """The payment for ``pixels`` of work at ``info``'s price, and the credit it stages.

        ``key`` is the O's balance key (default the auth-token session; a live stream's manifest id);
        ``minimum`` pays at least one ticket's EV (segments and live payments do); the credit staged comes back
        through :meth:`settle`. Raises :class:`TicketParamsRefused` (limits, expiry, price).
        """
        session = self.session(orchestrator, info, key)
        price = self.check_price(info, session)
        fee = price * pixels
        session_key = (orchestrator, key if key is not None else info.auth_token.session_id)
        payment = pb.Payment(sender=self.signer.address)
        if info.HasField("price_info"):
            payment.expected_price.CopyFrom(info.price_info)
        tickets = 0
        ev = Fraction(0)
        if info.HasField("ticket_params") and info.ticket_params.recipient:
            params = TicketParams.from_proto(info.ticket_params)
            if session.params is None or session.params.recipient_rand_hash != params.recipient_rand_hash:
                session.params, session.nonce = params, 0  # new params: nonces restart at 1
            ev = params.ev()
            wanted = max(fee, ev) if minimum else fee
            if ev > 0 and session.credit < wanted:
                tickets = math.ceil((wanted - session.credit) / ev)
            if tickets:
                self.validate(params, tickets)
                if not params.creation_round and not any(params.creation_round_block_hash):
                    # No expiration params from the O: go-livepeer's sender uses its own round data.
                    params = TicketParams(
                        recipient=params.recipient, face_value=params.face_value, win_prob=params.win_prob,
                        recipient_rand_hash=params.recipient_rand_hash, seed=params.seed,
                        expiration_block=params.expiration_block, creation_round=self.chain.creation_round,
                        creation_round_block_hash=self.chain.creation_round_block_hash)
                # Nonces are unique per recipientRandHash, whichever session uses the params (a live stream's
                # start and its later payments share the quote's params under two balance keys).
                used = max(session.nonce, self._nonces.get(params.recipient_rand_hash, 0))
                nonces = range(used + 1, used + 1 + tickets)
                session.nonce = used + tickets
                self._nonces[params.recipient_rand_hash] = session.nonce
                payment = build_payment(params, signer=self.signer, nonces=nonces,
                                        expected_price=info.price_info if info.HasField("price_info") else None)
                self.stats.tickets += tickets
                self.stats.ev_sent += ev * tickets
                self.stats.face_value_sent += params.face_value * tickets
        taken = session.credit
        session.credit = Fraction(0)
        self.stats.payments += 1
        if stream:
            self.stats.by_stream[stream] = self.stats.by_stream.get(stream, Fraction(0)) + fee
        self.stats.fees += fee
        return StagedPayment(key=session_key, header=encode_payment_header(payment), tickets=tickets,
                             new_credit=ev * tickets, taken_credit=taken, fee=fee)

    def settle(self, staged: StagedPayment, *, accepted: bool) -> None:
        """The O answered: on acceptance the credit becomes credit + n·EV - fee; on refusal it is lost."""
        session = self.sessions.get(staged.key)
        if session is None:
            return
        if accepted:
            session.credit += staged.taken_credit + staged.new_credit - staged.fee
        else:
            self.stats.refused += 1

    def discard(self, staged: StagedPayment) -> None:
        """Accepted, but not credit (go-livepeer's live start prepayment never enters the local credit)."""
        session = self.sessions.get(staged.key)
        if session is not None:
            session.credit += staged.taken_credit

    def forget(self, orchestrator: str) -> None:
        """Drop every session with ``orchestrator`` (it went away; a new quote starts afresh)."""
        for key in [k for k in self.sessions if k[0] == orchestrator]:
            del self.sessions[key]

    def balances(self) -> dict[str, Fraction]:
        """The credit this gateway believes each orchestrator holds for it, summed over sessions."""
        out: dict[str, Fraction] = {}
        for (url, _), session in self.sessions.items():
            out[url] = out.get(url, Fraction(0)) + session.credit
        return out

    def describe(self) -> str:
        """The sender's address, for logs."""
        return checksum_address(self.signer.address)


def _price(info: pb.OrchestratorInfo) -> Fraction:
    if not info.HasField("price_info") or info.price_info.pixelsPerUnit == 0:
        return Fraction(0)
    return price_from_proto(info.price_info)


def _ratio(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def _float(value: Fraction) -> str:
    return float_string(value, 5)
