"""Probabilistic micropayment tickets: hashing, signing, the win test, EV and the O's quoting math.

WIRE.md section 5; sources (facts, not code): go-livepeer ``pm/ticket.go``, ``pm/recipient.go``,
``pm/sender.go``, protocol ``MixinTicketBrokerCore.sol``. Pure functions and values only: nonces, balances
and the chain live in ``streamgw.payments``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from google.protobuf.message import DecodeError

from streamgw.errors import PaymentError
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.signing import MessageSigner, bytes_to_address, keccak256

__all__ = [
    "MAX_WIN_PROB",
    "Ticket",
    "TicketParams",
    "build_payment",
    "bytes_to_int",
    "decode_payment_header",
    "encode_payment_header",
    "float_string",
    "int_to_bytes",
    "is_winning_ticket",
    "o_win_prob",
    "price_from_proto",
    "price_to_proto",
    "recipient_rand",
    "recipient_rand_hash",
    "ticket_ev",
    "uint256",
    "win_check_value",
]

MAX_WIN_PROB = 2**256 - 1
"""``winProb`` is a numerator over this (a ticket with it always wins)."""


def int_to_bytes(value: int) -> bytes:
    """Minimal unsigned big-endian bytes of ``abs(value)``, empty for 0 (Go ``big.Int.Bytes()``)."""
    value = abs(value)
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def bytes_to_int(raw: bytes) -> int:
    """An unsigned big-endian integer (Go ``big.Int.SetBytes``)."""
    return int.from_bytes(raw, "big")


def uint256(value: int) -> bytes:
    """``value`` as 32 big-endian bytes; raises ``PaymentError`` outside [0, 2**256)."""
    if not 0 <= value <= MAX_WIN_PROB:
        raise PaymentError(f"{value} does not fit in uint256")
    return value.to_bytes(32, "big")


def _hash32(raw: bytes) -> bytes:
    # Go common.BytesToHash: left-pad, or keep the last 32 bytes.
    return raw[-32:].rjust(32, b"\x00")


@dataclass(frozen=True, slots=True)
class Ticket:
    """One ticket as the contract hashes it; the 20- and 32-byte fields are raw bytes."""

    recipient: bytes
    sender: bytes
    face_value: int
    win_prob: int
    sender_nonce: int
    recipient_rand_hash: bytes
    creation_round: int = 0
    creation_round_block_hash: bytes = bytes(32)

    def aux_data(self) -> bytes:
        """``uint256(creationRound) || creationRoundBlockHash``, or empty when both are zero."""
        if self.creation_round == 0 and not any(self.creation_round_block_hash):
            return b""
        return uint256(self.creation_round) + _hash32(self.creation_round_block_hash)

    def flatten(self) -> bytes:
        """``abi.encodePacked`` of the contract's ``Ticket``: the bytes that are hashed."""
        if not 0 <= self.sender_nonce < 2**32:
            raise PaymentError(f"sender nonce {self.sender_nonce} is not a uint32")
        return (
            bytes_to_address(self.recipient)
            + bytes_to_address(self.sender)
            + uint256(self.face_value)
            + uint256(self.win_prob)
            + uint256(self.sender_nonce)
            + _hash32(self.recipient_rand_hash)
            + self.aux_data()
        )

    def hash(self) -> bytes:
        """The ticket hash, ``keccak256(flatten())``."""
        return keccak256(self.flatten())

    def sign(self, signer: MessageSigner) -> bytes:
        """The sender's signature: personal_sign over the ticket hash itself (not ``Sign``)."""
        return signer.sign_hash(self.hash())

    def ev(self) -> Fraction:
        """The expected value in wei, ``faceValue * winProb / (2**256 - 1)``."""
        return ticket_ev(self.face_value, self.win_prob)


def ticket_ev(face_value: int, win_prob: int) -> Fraction:
    """``faceValue * winProb / (2**256 - 1)`` (``pm/ticket.go:ticketEV``)."""
    return Fraction(face_value * win_prob, MAX_WIN_PROB)


def win_check_value(sig: bytes, recipient_rand_value: int) -> int:
    """``uint256(keccak256(sig || uint256(recipientRand)))``, compared against ``winProb``."""
    return bytes_to_int(keccak256(sig + uint256(recipient_rand_value)))


def is_winning_ticket(sig: bytes, recipient_rand_value: int, win_prob: int) -> bool:
    """The win test: ``win_check_value(sig, recipientRand) < winProb`` (strict)."""
    return win_check_value(sig, recipient_rand_value) < win_prob


def recipient_rand(
    secret: bytes,
    *,
    seed: int,
    sender: bytes,
    face_value: int,
    win_prob: int,
    expiration_block: int,
    price: Fraction,
    aux_data: bytes,
) -> int:
    """The O's recipientRand for one TicketParams set (O-internal, ``pm/recipient.go:rand``).

    HMAC-SHA256 keyed by ``secret`` over ``seed || sender || faceValue || winProb || expirationBlock ||
    price.num || price.den || auxData``, integers minimal big-endian; ``price`` is reduced first.
    """
    msg = (
        int_to_bytes(seed)
        + bytes_to_address(sender)
        + int_to_bytes(face_value)
        + int_to_bytes(win_prob)
        + int_to_bytes(expiration_block)
        + int_to_bytes(price.numerator)
        + int_to_bytes(price.denominator)
        + aux_data
    )
    return bytes_to_int(hmac.new(secret, msg, hashlib.sha256).digest())


def recipient_rand_hash(recipient_rand_value: int) -> bytes:
    """The commitment ``keccak256(uint256(recipientRand))``."""
    return keccak256(uint256(recipient_rand_value))


def o_win_prob(face_value: int, ev: int) -> int:
    """The winProb an O quotes for ``face_value`` and a target ``ev`` (``pm/recipient.go:winProb``)."""
    if face_value == 0:
        return 0
    if face_value == ev:
        return MAX_WIN_PROB
    quotient, remainder = divmod(MAX_WIN_PROB, face_value)
    return ev * (quotient if remainder == 0 else quotient + 1)


def float_string(value: Fraction, prec: int) -> str:
    """Go ``big.Rat.FloatString(prec)``: ``prec`` decimals, rounded half away from zero."""
    scaled = abs(value) * 10**prec
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest >= scaled.denominator:
        whole += 1
    digits = str(whole).rjust(prec + 1, "0")
    text = digits if prec == 0 else f"{digits[:-prec]}.{digits[-prec:]}"
    return f"-{text}" if value < 0 else text


def price_from_proto(msg: pb.PriceInfo) -> Fraction:
    """The price in wei per pixel; raises ``PaymentError`` (``pixels per unit is 0``)."""
    if msg.pixelsPerUnit == 0:
        raise PaymentError("pixels per unit is 0")
    return Fraction(msg.pricePerUnit, msg.pixelsPerUnit)


def price_to_proto(price: Fraction, *, capability: int = 0, constraint: str = "") -> pb.PriceInfo:
    """A ``PriceInfo`` with the reduced fraction, as the O emits it."""
    return pb.PriceInfo(
        pricePerUnit=price.numerator, pixelsPerUnit=price.denominator, capability=capability, constraint=constraint
    )


@dataclass(frozen=True, slots=True)
class TicketParams:
    """An O's ticket parameters (``net.TicketParams``) with integers as ints and hashes as 32 bytes."""

    recipient: bytes
    face_value: int
    win_prob: int
    recipient_rand_hash: bytes
    seed: int
    expiration_block: int
    creation_round: int = 0
    creation_round_block_hash: bytes = bytes(32)

    def to_proto(self, *, with_expiration_params: bool = True) -> pb.TicketParams:
        """The wire message; the O nests ``expiration_params`` (field 7), a B's Payment copy leaves it out."""
        msg = pb.TicketParams(
            recipient=bytes_to_address(self.recipient),
            face_value=int_to_bytes(self.face_value),
            win_prob=int_to_bytes(self.win_prob),
            recipient_rand_hash=_hash32(self.recipient_rand_hash),
            seed=int_to_bytes(self.seed),
            expiration_block=int_to_bytes(self.expiration_block),
        )
        if with_expiration_params:
            msg.expiration_params.CopyFrom(self.expiration_params_proto())
        return msg

    def expiration_params_proto(self) -> pb.TicketExpirationParams:
        """``TicketExpirationParams`` with the 32-byte block hash (Go ``Hash.Bytes()``)."""
        return pb.TicketExpirationParams(
            creation_round=self.creation_round, creation_round_block_hash=_hash32(self.creation_round_block_hash)
        )

    @classmethod
    def from_proto(cls, msg: pb.TicketParams) -> TicketParams:
        """Decode as Go's ``pmTicketParams`` does (missing expiration params read as zero)."""
        return cls(
            recipient=bytes_to_address(msg.recipient),
            face_value=bytes_to_int(msg.face_value),
            win_prob=bytes_to_int(msg.win_prob),
            recipient_rand_hash=_hash32(msg.recipient_rand_hash),
            seed=bytes_to_int(msg.seed),
            expiration_block=bytes_to_int(msg.expiration_block),
            creation_round=msg.expiration_params.creation_round,
            creation_round_block_hash=_hash32(msg.expiration_params.creation_round_block_hash),
        )

    def ticket(self, sender: bytes, sender_nonce: int) -> Ticket:
        """The ticket a sender makes from these params with ``sender_nonce``."""
        return Ticket(
            recipient=self.recipient,
            sender=sender,
            face_value=self.face_value,
            win_prob=self.win_prob,
            sender_nonce=sender_nonce,
            recipient_rand_hash=self.recipient_rand_hash,
            creation_round=self.creation_round,
            creation_round_block_hash=self.creation_round_block_hash,
        )

    def ev(self) -> Fraction:
        """The expected value of one ticket, in wei."""
        return ticket_ev(self.face_value, self.win_prob)


def build_payment(
    params: TicketParams,
    *,
    signer: MessageSigner,
    nonces: Sequence[int],
    expected_price: pb.PriceInfo | None,
) -> pb.Payment:
    """A Payment as Go B builds it (``genPayment``): one signed ticket per nonce.

    ``ticket_params`` copies fields 1-6 only; the expiration params go in Payment field 3; ``sender`` is the
    signer's address; ``expected_price`` echoes the O's quote.
    """
    payment = pb.Payment(
        ticket_params=params.to_proto(with_expiration_params=False),
        sender=signer.address,
        expiration_params=params.expiration_params_proto(),
    )
    for nonce in nonces:
        sig = params.ticket(signer.address, nonce).sign(signer)
        payment.ticket_sender_params.add(sender_nonce=nonce, sig=sig)
    if expected_price is not None:
        payment.expected_price.CopyFrom(expected_price)
    return payment


def encode_payment_header(payment: pb.Payment) -> str:
    """The ``Livepeer-Payment`` header value: standard base64 with padding."""
    return base64.b64encode(payment.SerializeToString()).decode("ascii")


def decode_payment_header(value: str) -> pb.Payment:
    """Decode ``Livepeer-Payment`` strictly; empty means an empty Payment. Raises ``PaymentError``.

    The texts are the O's 402 bodies: ``base64 decode error: ...``, ``protobuf unmarshal error: ...``.
    """
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise PaymentError(f"base64 decode error: {exc}") from exc
    payment = pb.Payment()
    try:
        payment.ParseFromString(raw)
    except DecodeError as exc:
        raise PaymentError(f"protobuf unmarshal error: {exc}") from exc
    return payment
