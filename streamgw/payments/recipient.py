"""The orchestrator's side of probabilistic micropayments: quoting ticket params, checking payments, balances.

WIRE.md §5; sources (facts, not code): go-livepeer ``pm/recipient.go`` (``TicketParams``, ``ReceiveTicket``,
``faceValue``, ``winProb``, ``rand``), ``pm/validator.go``, ``pm/sendermonitor.go`` (max float),
``core/orchestrator.go`` (``ProcessPayment``, ``SufficientBalance``), ``core/balance.go``.

Sans-I/O: the chain facts come in as a :class:`RecipientChainState` and per-sender :class:`SenderReserve`
values the node keeps fresh; winning tickets go out as :class:`WinningTicket` values for the redeemer to store
and redeem. Nothing here waits.

Checks, in go-livepeer's order (its error texts):

1. the recipient is this O, active in the round: else ``orchestrator 0x… is inactive in round N, cannot
   process payments`` (fatal);
2. ``expected_price`` decodes (``invalid expected price sent with payment err="…"``, fatal) and is not below
   the session's fixed price or the quote (streamgw closes go-livepeer's hole of a gateway echoing 0);
3. the sender is not zero (``invalid ticket sender``), the expiration params are present, and the
   recipientRand re-derived from the seed, sender, face value, win prob, expiration block, price and auxData
   hashes to ``recipientRandHash`` (``invalid recipientRand for ticket recipientRandHash``), all fatal;
4. per ticket: signature (``invalid ticket signature``), win test, nonce (``invalid ticket senderNonce:
   already seen …`` / ``too many values …``), expiry (``TicketParams expired``, the nonce still recorded).
   The first of these stops crediting for the rest of the payment, the last one seen is returned; credits
   before it stand. Every valid ticket credits its EV; every valid winning ticket is queued for redemption.

Balances are per (sender, session key): ``auth_token.session_id`` for ``/segment``, ``SegData.manifestId`` for
``/payment``, the manifest id for live AI. The price of a session is fixed by its first payment.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from streamgw.errors import InsufficientBalance, PaymentError, SignatureError, TicketRejected
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.signing import ZERO_ADDRESS, bytes_to_address, checksum_address, verify_sig
from streamgw.livepeer.tickets import (
    Ticket,
    TicketParams,
    is_winning_ticket,
    o_win_prob,
    price_from_proto,
    recipient_rand,
    recipient_rand_hash,
    ticket_ev,
)

__all__ = [
    "Balances",
    "LiveMeter",
    "PaymentReceipt",
    "RecipientChainState",
    "RecipientSettings",
    "SenderReserve",
    "TicketRecipient",
    "WinningTicket",
]

MAX_NONCES = 600
"""Nonces accepted per recipientRand (go-livepeer ``maxSenderNonces``)."""


@dataclass(frozen=True, slots=True)
class RecipientSettings:
    """go-livepeer's recipient flags: ``-ticketEV``, ``-maxFaceValue``, ``-txCostMultiplier``."""

    address: bytes
    ticket_ev: int = 1_000_000_000_000
    max_face_value: int = 0  # 0: no cap
    tx_cost_multiplier: int = 100
    redeem_gas: int = 350_000
    expiration_blocks: int = 40


@dataclass(frozen=True, slots=True)
class RecipientChainState:
    """What the recipient knows of the chain (its watcher keeps this fresh)."""

    last_block: int = 0
    current_round: int = 0
    last_initialized_round: int = 0
    round_block_hash: bytes = bytes(32)
    gas_price: int = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SenderReserve:
    """A sender's funds as the TicketBroker reports them, and what this O already claimed of its reserve."""

    deposit: int = 0
    reserve: int = 0
    claimed: int = 0  # by this O, in the current round

    def reserve_alloc(self) -> int:
        """The share of the reserve this O may claim: all of it, in a pool of one active orchestrator."""
        return max(0, self.reserve - self.claimed)


@dataclass(frozen=True, slots=True)
class WinningTicket:
    """A winning ticket with what redeeming it needs: the sender's signature and the revealed recipientRand."""

    ticket: Ticket
    sig: bytes
    recipient_rand: int
    expiration_block: int
    session: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON object (the redeemer's store)."""
        t = self.ticket
        return {
            "recipient": t.recipient.hex(), "sender": t.sender.hex(), "face_value": str(t.face_value),
            "win_prob": str(t.win_prob), "sender_nonce": t.sender_nonce,
            "recipient_rand_hash": t.recipient_rand_hash.hex(),
            "creation_round": t.creation_round, "creation_round_block_hash": t.creation_round_block_hash.hex(),
            "sig": base64.b64encode(self.sig).decode(), "recipient_rand": str(self.recipient_rand),
            "expiration_block": self.expiration_block, "session": self.session,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WinningTicket:
        """Back from :meth:`to_json`; raises ``PaymentError`` on a malformed record."""
        try:
            ticket = Ticket(
                recipient=bytes.fromhex(raw["recipient"]), sender=bytes.fromhex(raw["sender"]),
                face_value=int(raw["face_value"]), win_prob=int(raw["win_prob"]),
                sender_nonce=int(raw["sender_nonce"]), recipient_rand_hash=bytes.fromhex(raw["recipient_rand_hash"]),
                creation_round=int(raw["creation_round"]),
                creation_round_block_hash=bytes.fromhex(raw["creation_round_block_hash"]))
            return cls(ticket=ticket, sig=base64.b64decode(raw["sig"], validate=True),
                       recipient_rand=int(raw["recipient_rand"]), expiration_block=int(raw["expiration_block"]),
                       session=str(raw.get("session", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise PaymentError(f"malformed winning ticket record: {exc!r}") from exc

    def dumps(self) -> str:
        """One line of JSON."""
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass(frozen=True, slots=True)
class PaymentReceipt:
    """What one payment did: tickets credited, EV credited, the winners to redeem, the session's fixed price."""

    sender: bytes
    credited: int
    ev: Fraction
    winners: tuple[WinningTicket, ...]
    price: Fraction
    error: str = ""  # the last non-fatal error (the O answers 400 with it, after queueing the winners)


@dataclass(slots=True)
class _Account:
    balance: Fraction = field(default_factory=Fraction)
    price: Fraction | None = None  # fixed by the first payment


class Balances:
    """Credit per (sender, session key) with each session's fixed price (go-livepeer ``core.AddressBalances``)."""

    def __init__(self) -> None:
        self._accounts: dict[tuple[bytes, str], _Account] = {}

    def _get(self, sender: bytes, key: str) -> _Account:
        return self._accounts.setdefault((bytes_to_address(sender), key), _Account())

    def credit(self, sender: bytes, key: str, amount: Fraction) -> None:
        """Add ``amount`` wei."""
        self._get(sender, key).balance += amount

    def debit(self, sender: bytes, key: str, amount: Fraction) -> None:
        """Take ``amount`` wei (a balance may go negative: work is debited after it is done)."""
        self._get(sender, key).balance -= amount

    def balance(self, sender: bytes, key: str) -> Fraction:
        """The credit left."""
        account = self._accounts.get((bytes_to_address(sender), key))
        return account.balance if account else Fraction(0)

    def fixed_price(self, sender: bytes, key: str) -> Fraction | None:
        """The session's price, once its first payment fixed it."""
        account = self._accounts.get((bytes_to_address(sender), key))
        return account.price if account else None

    def fix_price(self, sender: bytes, key: str, price: Fraction) -> Fraction:
        """Fix the session's price unless already fixed; returns the fixed one."""
        account = self._get(sender, key)
        if account.price is None:
            account.price = price
        return account.price

    def close(self, key: str) -> None:
        """Forget every sender's account under ``key`` (the session ended)."""
        for k in [k for k in self._accounts if k[1] == key]:
            del self._accounts[k]

    def snapshot(self) -> dict[tuple[bytes, str], Fraction]:
        """Every balance, for the operator view."""
        return {k: a.balance for k, a in self._accounts.items()}


class TicketRecipient:
    """An orchestrator's ticket params, payment checks and balances."""

    def __init__(self, settings: RecipientSettings, *, secret: bytes | None = None) -> None:
        self.settings = settings
        self.address = bytes_to_address(settings.address)
        self._secret = secret or secrets.token_bytes(32)
        self.chain = RecipientChainState()
        self.senders: dict[bytes, SenderReserve] = {}
        self.pending: dict[bytes, int] = {}  # face value of winning tickets not yet redeemed, per sender
        self.balances = Balances()
        self._nonces: dict[int, tuple[int, set[int]]] = {}  # recipientRand -> (expiration block, nonces seen)
        self.received = 0
        self.won = 0

    # --- chain facts ---

    def set_chain_state(self, state: RecipientChainState) -> None:
        """Adopt fresher chain facts; forget the nonces of params that expired."""
        self.chain = state
        for rand in [r for r, (expiry, _) in self._nonces.items() if expiry < state.last_block]:
            del self._nonces[rand]

    def set_sender(self, sender: bytes, reserve: SenderReserve) -> None:
        """A sender's funds, as read from the TicketBroker."""
        self.senders[bytes_to_address(sender)] = reserve

    def knows(self, sender: bytes) -> bool:
        """Whether this sender's funds have been read."""
        return bytes_to_address(sender) in self.senders

    def add_pending(self, sender: bytes, amount: int) -> None:
        """A winning ticket of ``amount`` is waiting for redemption (it counts against the sender's float)."""
        sender = bytes_to_address(sender)
        self.pending[sender] = self.pending.get(sender, 0) + amount

    def settled(self, sender: bytes, amount: int) -> None:
        """A pending winning ticket was redeemed or given up."""
        sender = bytes_to_address(sender)
        left = self.pending.get(sender, 0) - amount
        if left > 0:
            self.pending[sender] = left
        else:
            self.pending.pop(sender, None)

    def max_float(self, sender: bytes) -> int:
        """What this O can still be paid from the sender's reserve: its allocation less pending winners."""
        reserve = self.senders.get(bytes_to_address(sender), SenderReserve())
        return reserve.reserve_alloc() - self.pending.get(bytes_to_address(sender), 0)

    # --- quoting ---

    def face_value(self, sender: bytes) -> int:
        """go-livepeer's face value: tx cost x multiplier, capped by ``max_face_value`` and the max float.

        Raises ``PaymentError`` (``insufficient sender reserve``) when the float cannot cover one EV.
        """
        s = self.settings
        value = s.tx_cost_multiplier * self.chain.gas_price * s.redeem_gas
        if s.max_face_value and value > s.max_face_value:
            value = s.max_face_value
        value = min(value, self.max_float(sender))
        if value < s.ticket_ev:
            raise PaymentError("insufficient sender reserve")
        return value

    def ticket_params(self, sender: bytes, price: Fraction) -> TicketParams:
        """Fresh ticket params for ``sender`` at ``price`` (a new seed each time, so a new recipientRandHash)."""
        face_value = self.face_value(sender)
        win_prob = o_win_prob(face_value, self.settings.ticket_ev)
        seed = int.from_bytes(secrets.token_bytes(32), "big")
        chain = self.chain
        params = TicketParams(
            recipient=self.address, face_value=face_value, win_prob=win_prob, recipient_rand_hash=bytes(32),
            seed=seed, expiration_block=chain.last_block + self.settings.expiration_blocks,
            creation_round=chain.last_initialized_round, creation_round_block_hash=chain.round_block_hash)
        rand = self._rand(params, bytes_to_address(sender), price)
        return TicketParams(
            recipient=params.recipient, face_value=face_value, win_prob=win_prob,
            recipient_rand_hash=recipient_rand_hash(rand), seed=seed, expiration_block=params.expiration_block,
            creation_round=params.creation_round, creation_round_block_hash=params.creation_round_block_hash)

    def ev(self) -> Fraction:
        """The EV this O asks per ticket."""
        return Fraction(self.settings.ticket_ev)

    def _rand(self, params: TicketParams, sender: bytes, price: Fraction) -> int:
        aux = params.ticket(sender, 0).aux_data()
        return recipient_rand(self._secret, seed=params.seed, sender=sender, face_value=params.face_value,
                              win_prob=params.win_prob, expiration_block=params.expiration_block, price=price,
                              aux_data=aux)

    # --- receiving ---

    def receive(self, payment: pb.Payment, key: str, *, quote: Fraction) -> PaymentReceipt:
        """Check and credit ``payment`` for session ``key`` (this O's price for it now is ``quote``).

        Fatal errors raise :class:`TicketRejected`; a non-fatal one is the receipt's ``error`` (credits made before
        it stand, and its valid winners are in it, so none is lost).
        """
        sender = bytes_to_address(payment.sender) if payment.sender else ZERO_ADDRESS
        if not payment.HasField("ticket_params"):
            price = self._expected_price(payment, sender, key, quote, required=False)
            return PaymentReceipt(sender=sender, credited=0, ev=Fraction(0), winners=(), price=price)
        params = TicketParams.from_proto(payment.ticket_params)
        if params.recipient != self.address:
            raise TicketRejected(f"orchestrator {checksum_address(params.recipient)} is inactive in round "
                                 f"{self.chain.current_round}, cannot process payments", fatal=True)
        price = self._expected_price(payment, sender, key, quote, required=True)
        if sender == ZERO_ADDRESS:
            raise TicketRejected("invalid ticket sender", fatal=True)
        if not payment.HasField("expiration_params"):
            raise TicketRejected("invalid ticket params: missing expiration_params", fatal=True)
        exp = payment.expiration_params
        params = TicketParams(
            recipient=params.recipient, face_value=params.face_value, win_prob=params.win_prob,
            recipient_rand_hash=params.recipient_rand_hash, seed=params.seed,
            expiration_block=params.expiration_block, creation_round=exp.creation_round,
            creation_round_block_hash=bytes(exp.creation_round_block_hash)[-32:].rjust(32, b"\x00"))
        rand = self._rand(params, sender, price)
        if recipient_rand_hash(rand) != params.recipient_rand_hash:
            raise TicketRejected("invalid recipientRand for ticket recipientRandHash", fatal=True)
        ev = ticket_ev(params.face_value, params.win_prob)
        credited = 0
        winners: list[WinningTicket] = []
        error: str | None = None
        for tsp in payment.ticket_sender_params:
            self.received += 1
            ticket = params.ticket(sender, tsp.sender_nonce)
            sig = bytes(tsp.sig)
            try:
                verify_sig(sender, ticket.hash(), sig)
            except SignatureError:
                error = "invalid ticket signature"
                continue
            won = is_winning_ticket(sig, rand, params.win_prob)
            problem = self._accept_nonce(rand, params.expiration_block, sender, tsp.sender_nonce)
            if problem is None and params.expiration_block <= self.chain.last_block:
                problem = "TicketParams expired"
            if problem is not None:
                error = problem
                continue
            if won:
                self.won += 1
                winners.append(WinningTicket(ticket=ticket, sig=sig, recipient_rand=rand,
                                             expiration_block=params.expiration_block, session=key))
            if error is None:
                credited += 1
                self.balances.credit(sender, key, ev)
        return PaymentReceipt(sender=sender, credited=credited, ev=ev * credited, winners=tuple(winners), price=price,
                              error=error or "")

    def _expected_price(self, payment: pb.Payment, sender: bytes, key: str, quote: Fraction, *,
                        required: bool) -> Fraction:
        if not payment.HasField("expected_price"):
            if not required and quote == 0:
                return self.balances.fix_price(sender, key, Fraction(0))
            raise TicketRejected('invalid expected price sent with payment err="missing expected price"', fatal=True)
        try:
            price = price_from_proto(payment.expected_price)
        except PaymentError as exc:
            raise TicketRejected(f'invalid expected price sent with payment err="{exc}"', fatal=True) from exc
        fixed = self.balances.fixed_price(sender, key)
        floor = fixed if fixed is not None else quote
        if price < floor:
            raise TicketRejected(f'invalid expected price sent with payment err="price {_ratio(price)} is below '
                                 f'the price {_ratio(floor)} of this session"', fatal=True)
        return self.balances.fix_price(sender, key, price)

    def _accept_nonce(self, rand: int, expiration_block: int, sender: bytes, nonce: int) -> str | None:
        expiry, seen = self._nonces.setdefault(rand, (expiration_block, set()))
        who = checksum_address(sender)
        if nonce in seen:
            return f"invalid ticket senderNonce: already seen sender={who} nonce={nonce}"
        if len(seen) >= MAX_NONCES:
            return f"invalid ticket senderNonce: too many values sender={who} nonce={nonce}"
        seen.add(nonce)
        return None

    def check_balance(self, sender: bytes, key: str) -> None:
        """go-livepeer's ``SufficientBalance``: after crediting, at least one ticket's EV must be left, for a
        session with a price. Raises :class:`InsufficientBalance`."""
        price = self.balances.fixed_price(sender, key)
        if not price:
            return
        if self.balances.balance(sender, key) < self.ev():
            raise InsufficientBalance("Insufficient balance")

    def charge(self, sender: bytes, key: str, pixels: int) -> Fraction:
        """Debit ``pixels`` of work at the session's fixed price; returns the fee."""
        price = self.balances.fixed_price(sender, key) or Fraction(0)
        fee = price * pixels
        if fee:
            self.balances.debit(sender, key, fee)
        return fee


class LiveMeter:
    """Charges a live AI stream as it runs (go-livepeer's O, WIRE.md §10.4): at an input segment, once
    ``interval`` seconds passed since the last billed instant, the balance must cover the time since then at
    ``pixels_per_second`` (27,648,000: 720p30 whatever the size) and the session's fixed price, and is debited
    it (whole pixels, the remainder carried). :meth:`charge` returns False when it falls short: the O closes
    the stream."""

    def __init__(self, recipient: TicketRecipient, sender: bytes, key: str, *, interval: float = 5.0,
                 pixels_per_second: int = 1280 * 720 * 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.recipient = recipient
        self.sender = sender
        self.key = key
        self.interval = interval
        self.rate = pixels_per_second
        self.clock = clock
        self.billed = clock()
        self.charged = Fraction(0)

    def charge(self) -> bool:
        """Bill the time since the last billed instant if due; False: the balance cannot cover it."""
        now = self.clock()
        elapsed = now - self.billed
        if elapsed < self.interval:
            return True
        pixels = int(elapsed * self.rate)
        price = self.recipient.balances.fixed_price(self.sender, self.key) or Fraction(0)
        fee = price * pixels
        if self.recipient.balances.balance(self.sender, self.key) < fee:
            return False
        self.recipient.charge(self.sender, self.key, pixels)
        self.charged += fee
        self.billed += pixels / self.rate
        return True


def _ratio(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"
