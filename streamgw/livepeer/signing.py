"""EIP-191 signatures as go-livepeer makes and checks them (WIRE.md section 4).

``Sign(msg)`` is secp256k1 over ``keccak256("\\x19Ethereum Signed Message:\\n32" || keccak256(msg))``: the
32-byte keccak of the message is the personal_sign payload. Ticket signatures sign the 32-byte ticket hash
itself as the payload (``sign_hash``). Signatures are 65 bytes ``r || s || v`` with v 27 or 28 and low s.
Verification recovers the signer and compares addresses (go-livepeer ``crypto/verify.go``). Signing and
recovery call libsecp256k1 through coincurve directly (the same bytes as eth-account, several times faster);
eth-account holds the key and signs transactions.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import coincurve
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from streamgw.errors import SignatureError

__all__ = [
    "MessageSigner",
    "OffchainSigner",
    "Signer",
    "ZERO_ADDRESS",
    "bytes_to_address",
    "checksum_address",
    "keccak256",
    "keccak256_off_loop",
    "parse_address",
    "parse_address_list",
    "personal_digest",
    "recover_address",
    "verify_message",
    "verify_sig",
]

ZERO_ADDRESS = bytes(20)
"""The zero address: an offchain node's address, and the O's fallback sender when a payment has none."""

_PERSONAL_PREFIX = b"\x19Ethereum Signed Message:\n32"
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_HALF_N = _SECP256K1_N // 2


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 of ``data``."""
    return bytes(keccak(data))


OFF_LOOP_BYTES = 256 * 1024
"""From this size on, ``keccak256_off_loop`` hashes in a worker thread (~4.5 ms per MB here)."""


async def keccak256_off_loop(data: bytes) -> bytes:
    """``keccak256(data)`` without holding the event loop for a large segment.

    The C hash (pycryptodome, through eth-hash) releases the GIL, so a worker thread hashes while
    the loop goes on; small inputs are hashed in place, where a thread hop would cost more.
    """
    if len(data) < OFF_LOOP_BYTES:
        return keccak256(data)
    return await asyncio.to_thread(keccak256, data)


def personal_digest(payload: bytes) -> bytes:
    """The digest actually signed: ``keccak256("\\x19Ethereum Signed Message:\\n32" || payload)``.

    go-livepeer always writes the length as 32 (its payloads are 32-byte hashes), so this does too.
    """
    return keccak256(_PERSONAL_PREFIX + payload)


def bytes_to_address(raw: bytes) -> bytes:
    """Go's ``common.BytesToAddress``: left-pad with zeros, or keep the last 20 bytes."""
    return raw[-20:].rjust(20, b"\x00")


def parse_address(address: str | bytes) -> bytes:
    """A 20-byte address from 20 raw bytes or a ``0x`` hex string (any case); raises ``ValueError``."""
    if isinstance(address, bytes):
        raw = address
    else:
        text = address[2:] if address[:2] in ("0x", "0X") else address
        raw = bytes.fromhex(text)
    if len(raw) != 20:
        raise ValueError(f"an address is 20 bytes, got {len(raw)}")
    return raw


def parse_address_list(text: str) -> frozenset[bytes]:
    """20-byte addresses from comma-separated ``0x`` hex; raises ``ValueError`` naming the bad one.

    All-lowercase or all-uppercase hex is taken as is; mixed case must pass its EIP-55 checksum, so a
    mistyped character is caught rather than silently naming someone else.
    """
    out: set[bytes] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item[:2] not in ("0x", "0X"):
            raise ValueError(f"{item!r} is not a 0x address")
        try:
            raw = parse_address(item)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a 20-byte hex address") from exc
        digits = item[2:]
        if digits != digits.lower() and digits != digits.upper() and checksum_address(raw)[2:] != digits:
            raise ValueError(f"{item!r} fails its EIP-55 checksum (expected {checksum_address(raw)})")
        out.add(raw)
    return frozenset(out)


def checksum_address(address: str | bytes) -> str:
    """The EIP-55 ``0x`` form of an address (Go's ``Address.Hex()``)."""
    return str(to_checksum_address(parse_address(address)))


def recover_address(payload: bytes, sig: bytes) -> bytes:
    """The 20-byte address that signed ``personal_digest(payload)``; raises ``SignatureError``.

    The checks and their texts follow go-livepeer ``crypto/verify.go:ecrecover``, in its order.
    """
    if len(sig) != 65:
        raise SignatureError("invalid signature length")
    if int.from_bytes(sig[32:64], "big") > _SECP256K1_HALF_N:
        raise SignatureError("signature s value too high")
    v = sig[64]
    if v not in (27, 28):
        raise SignatureError("signature v value must be 27 or 28")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            sig[:64] + bytes([v - 27]), personal_digest(payload), hasher=None
        )
    except Exception as exc:  # coincurve raises bare ValueError/Exception for unrecoverable signatures
        raise SignatureError("invalid signature") from exc
    return keccak256(pub.format(compressed=False)[1:])[-20:]


def verify_sig(address: str | bytes, payload: bytes, sig: bytes) -> None:
    """Check that ``address`` signed the 32-byte ``payload`` (a hash); raises ``SignatureError``."""
    expected = parse_address(address)
    if recover_address(payload, sig) != expected:
        raise SignatureError(f"signature is not from {checksum_address(expected)}")


def verify_message(address: str | bytes, msg: bytes, sig: bytes) -> None:
    """Check a ``Sign(msg)`` signature: ``verify_sig`` over ``keccak256(msg)``; raises ``SignatureError``."""
    verify_sig(address, keccak256(msg), sig)


class MessageSigner(Protocol):
    """A node's Ethereum identity: signs as go-livepeer's ``Eth.Sign`` and verifies as ``VerifySig``."""

    @property
    def address(self) -> bytes:
        """The 20-byte address (zero when offchain)."""
        ...

    @property
    def checksum_address(self) -> str:
        """The EIP-55 ``0x`` form of ``address``."""
        ...

    def sign(self, msg: bytes) -> bytes:
        """``Sign(msg)``: personal_sign over ``keccak256(msg)``."""
        ...

    def sign_hash(self, payload: bytes) -> bytes:
        """personal_sign over the 32-byte ``payload`` itself (ticket signatures)."""
        ...

    def verify(self, address: str | bytes, msg: bytes, sig: bytes) -> None:
        """Check ``sig == Sign(msg)`` by ``address``; raises ``SignatureError``."""
        ...

    def verify_hash(self, address: str | bytes, payload: bytes, sig: bytes) -> None:
        """Check ``sig == sign_hash(payload)`` by ``address``; raises ``SignatureError``."""
        ...


class Signer:
    """An on-chain identity holding a secp256k1 key (via eth-account)."""

    __slots__ = ("_account", "_address", "_checksum", "_key")

    def __init__(self, private_key: bytes | str) -> None:
        self._account: LocalAccount = Account.from_key(private_key)
        self._key = coincurve.PrivateKey(bytes(self._account.key))
        self._checksum: str = str(self._account.address)
        self._address = parse_address(self._checksum)

    def __repr__(self) -> str:
        return f"Signer({self._checksum})"

    @property
    def account(self) -> LocalAccount:
        """The eth-account account (it signs this node's transactions)."""
        return self._account

    @property
    def address(self) -> bytes:
        """The 20-byte address."""
        return self._address

    @property
    def checksum_address(self) -> str:
        """The EIP-55 ``0x`` form of ``address``."""
        return self._checksum

    def sign(self, msg: bytes) -> bytes:
        """``Sign(msg)``: 65 bytes ``r || s || v`` over ``personal_digest(keccak256(msg))``."""
        return self.sign_hash(keccak256(msg))

    def sign_hash(self, payload: bytes) -> bytes:
        """65 bytes ``r || s || v`` over ``personal_digest(payload)`` (deterministic RFC 6979, low s)."""
        # libsecp256k1 (coincurve) as go-livepeer's: RFC 6979 nonces, low s; v = recovery id + 27.
        raw = self._key.sign_recoverable(personal_digest(payload), hasher=None)
        return raw[:64] + bytes([raw[64] + 27])

    def verify(self, address: str | bytes, msg: bytes, sig: bytes) -> None:
        """Check ``sig == Sign(msg)`` by ``address``; raises ``SignatureError``."""
        verify_message(address, msg, sig)

    def verify_hash(self, address: str | bytes, payload: bytes, sig: bytes) -> None:
        """Check ``sig == sign_hash(payload)`` by ``address``; raises ``SignatureError``."""
        verify_sig(address, payload, sig)


class OffchainSigner:
    """An offchain identity (go-livepeer with ``Eth == nil``): empty signatures, every check passes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OffchainSigner()"

    @property
    def address(self) -> bytes:
        """The zero address."""
        return ZERO_ADDRESS

    @property
    def checksum_address(self) -> str:
        """``0x`` and 40 zeros."""
        return "0x" + "0" * 40

    def sign(self, msg: bytes) -> bytes:
        """Empty bytes."""
        return b""

    def sign_hash(self, payload: bytes) -> bytes:
        """Empty bytes."""
        return b""

    def verify(self, address: str | bytes, msg: bytes, sig: bytes) -> None:
        """Accept anything."""

    def verify_hash(self, address: str | bytes, payload: bytes, sig: bytes) -> None:
        """Accept anything."""
