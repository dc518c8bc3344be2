"""go-livepeer's remote signer API, both sides: the signer (holds the key, pays) and the gateway's client.

Facts (not code) from go-livepeer ``doc/remote-signer.md`` and ``doc/signer-protocol.md``: every call is a
``POST`` with JSON, byte fields base64.

- ``/sign-orchestrator-info`` -> ``{"address": "0x…", "signature": "0x…"}``: the signer's address and
  ``Sign(EIP-55 address)``, the GetOrchestrator credentials (static, never expiring).
- ``/generate-live-payment`` <- ``{"orchestrator": b64(PaymentResult with the O's info), "state": {"state", "sig"}?,
  "manifestID"?, "inPixels"?, "type"?}`` -> ``{"payment", "segCreds", "state": {"state", "sig"}}``. With
  ``type: "lv2v"`` the pixels are the time since the state's last update at 720p30 (60 s on the first call).
  HTTP **480** asks the gateway to refresh the O's info (expired ticket params) and try again.

The signer is stateless: the sender session (credit, nonces of the ticket params in use, the last instant
paid) travels in the opaque state, signed by the signer's key and checked on the way back, so a gateway can
neither rewrite it nor forge one. Nothing of a request may change another stream's state.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import httpx
from google.protobuf.message import DecodeError

from streamgw.errors import SignatureError, SignerError, TicketParamsRefused
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capability, ai_job_capabilities
from streamgw.livepeer.segdata import AuthToken, SegMetadata, build_segdata, encode_segdata_header
from streamgw.livepeer.signing import Signer, checksum_address, keccak256, parse_address, verify_message, verify_sig
from streamgw.livepeer.tickets import TicketParams
from streamgw.payments.sender import LIVE_PIXELS_PER_SECOND, LIVE_PREPAY_PIXELS, PaymentSession, TicketSender

__all__ = [
    "REFRESH_SESSION",
    "RemoteIdentity",
    "RemoteSignerClient",
    "SignerRefusal",
    "SignerService",
    "SignerState",
]

REFRESH_SESSION = 480
"""go-livepeer's ``HTTPStatusRefreshSession``: fetch fresh orchestrator info and call again."""

MAX_REQUEST_BYTES = 256 * 1024
SIGNER_TIMEOUT = 10.0


class SignerRefusal(SignerError):
    """The signer refuses a request: ``status`` is its HTTP status (400, 480 refresh)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SignerState:
    """One payment session as the signer hands it back to the gateway (signed, opaque to it)."""

    orchestrator: str  # the O's address, 0x hex
    manifest_id: str
    credit: Fraction
    recipient_rand_hash: str  # hex of the ticket params in use ("" none yet)
    nonce: int
    first_price: Fraction
    last_update: float  # unix seconds of the last instant paid for

    def encode(self) -> bytes:
        """Canonical JSON bytes (what is signed)."""
        return json.dumps({
            "orchestrator": self.orchestrator, "manifest_id": self.manifest_id,
            "credit": [self.credit.numerator, self.credit.denominator], "rrh": self.recipient_rand_hash,
            "nonce": self.nonce, "first_price": [self.first_price.numerator, self.first_price.denominator],
            "last_update": self.last_update,
        }, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SignerState:
        """Back from :meth:`encode`; ``ValueError`` when malformed."""
        try:
            d = json.loads(raw)
            return cls(orchestrator=str(d["orchestrator"]), manifest_id=str(d["manifest_id"]),
                       credit=Fraction(int(d["credit"][0]), int(d["credit"][1])),
                       recipient_rand_hash=str(d["rrh"]), nonce=int(d["nonce"]),
                       first_price=Fraction(int(d["first_price"][0]), int(d["first_price"][1])),
                       last_update=float(d["last_update"]))
        except (KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
            raise ValueError(f"malformed signer state: {exc!r}") from exc


class SignerService:
    """The remote signer's logic, over a :class:`TicketSender` whose chain facts its node keeps fresh."""

    def __init__(self, sender: TicketSender, *, version: str = "", clock: Callable[[], float] = time.time) -> None:
        self.sender = sender
        self.version = version
        self.clock = clock
        self.payments = 0
        self.refused = 0

    @property
    def signer(self) -> Signer:
        """The key the signer pays with."""
        signer = self.sender.signer
        assert isinstance(signer, Signer)
        return signer

    def sign_orchestrator_info(self) -> dict[str, str]:
        """``/sign-orchestrator-info``: the address and ``Sign(its EIP-55 ASCII)``."""
        address = self.signer.checksum_address
        return {"address": address, "signature": "0x" + self.signer.sign(address.encode()).hex()}

    def generate_live_payment(self, body: Any) -> dict[str, Any]:
        """``/generate-live-payment``; raises :class:`SignerRefusal` (400, or 480: refresh the O's info)."""
        if not isinstance(body, dict):
            raise SignerRefusal(400, "the body must be a JSON object")
        try:
            result = pb.PaymentResult()
            result.ParseFromString(base64.b64decode(str(body.get("orchestrator", "")), validate=True))
        except (binascii.Error, DecodeError, ValueError) as exc:
            raise SignerRefusal(400, f"orchestrator: not a base64 PaymentResult: {exc}") from exc
        info = result.info
        if not info.transcoder or not info.HasField("price_info"):
            raise SignerRefusal(400, "orchestrator: missing orchestrator info")
        kind = str(body.get("type", ""))
        if kind not in ("", "lv2v"):
            raise SignerRefusal(400, f"type: unknown job type {kind!r}")
        manifest = str(body.get("manifestID") or "")[:128]
        state = self._state(body.get("state"), info)
        now = self.clock()
        if kind == "lv2v":
            pixels = LIVE_PREPAY_PIXELS if state is None else int(max(0.0, now - state.last_update)
                                                                  * LIVE_PIXELS_PER_SECOND)
        else:
            try:
                pixels = int(body["inPixels"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SignerRefusal(400, "inPixels: required without a type") from exc
            if pixels < 0:
                raise SignerRefusal(400, "inPixels: must not be negative")
        if not manifest:
            manifest = state.manifest_id if state is not None else keccak256(str(now).encode()).hex()[:8]
        orch = "0x" + bytes(info.address).hex()
        key = (orch, manifest)
        session = PaymentSession(recipient=bytes(info.address), first_price=_price(info))
        if state is not None:
            session.credit, session.first_price = state.credit, state.first_price
            if state.recipient_rand_hash == bytes(info.ticket_params.recipient_rand_hash).hex():
                session.params = TicketParams.from_proto(info.ticket_params)
                session.nonce = state.nonce
        self.sender.sessions[key] = session  # for this call only: the state carries it between calls
        try:
            staged = self.sender.stage(orch, info, pixels, key=manifest)
            self.sender.settle(staged, accepted=True)  # the signer cannot know the O's answer (go-livepeer's neither)
        except TicketParamsRefused as exc:
            self.refused += 1
            status = REFRESH_SESSION if str(exc) == "TicketParams expired" else 400
            raise SignerRefusal(status, str(exc)) from exc
        finally:
            self.sender.sessions.pop(key, None)
        self.payments += 1
        caps = ai_job_capabilities(Capability.LIVE_VIDEO_TO_VIDEO, "", version=self.version, discovery=True)
        meta = SegMetadata(manifest_id=manifest.encode(), seq=0, seg_hash=keccak256(b""), capabilities=caps,
                           auth_token=AuthToken.from_proto(info.auth_token))
        new_state = SignerState(
            orchestrator=orch, manifest_id=manifest, credit=session.credit,
            recipient_rand_hash=session.params.recipient_rand_hash.hex() if session.params else "",
            nonce=session.nonce, first_price=session.first_price,
            last_update=now if state is None or kind != "lv2v"
            else state.last_update + pixels / LIVE_PIXELS_PER_SECOND)
        raw = new_state.encode()
        return {
            "payment": staged.header,
            "segCreds": encode_segdata_header(build_segdata(meta, self.signer)),
            "state": {"state": base64.b64encode(raw).decode(),
                      "sig": base64.b64encode(self.signer.sign(raw)).decode()},
        }

    def _state(self, raw: Any, info: pb.OrchestratorInfo) -> SignerState | None:
        if raw is None:
            return None
        try:
            blob = base64.b64decode(str(raw["state"]), validate=True)
            sig = base64.b64decode(str(raw["sig"]), validate=True)
            verify_message(self.signer.address, blob, sig)
            state = SignerState.decode(blob)
        except (KeyError, TypeError, binascii.Error, ValueError, SignatureError) as exc:
            raise SignerRefusal(400, f"state: not a state this signer signed: {exc}") from exc
        if state.orchestrator != "0x" + bytes(info.address).hex():
            raise SignerRefusal(400, "state: signed for another orchestrator")
        return state


def _price(info: pb.OrchestratorInfo) -> Fraction:
    p = info.price_info
    return Fraction(p.pricePerUnit, p.pixelsPerUnit) if p.pixelsPerUnit else Fraction(0)


class RemoteSignerClient:
    """The gateway's side: it asks the signer for its credentials and for each live payment."""

    def __init__(self, url: str, *, timeout: float = SIGNER_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._credentials: tuple[bytes, bytes] | None = None
        self._states: dict[tuple[str, str], Any] = {}
        self.payments = 0
        self.errors = 0
        self.last_error = ""

    async def _post(self, path: str, body: dict[str, Any] | None) -> Any:
        url = self.url + path
        try:
            response = await self._http.post(url, json=body if body is not None else {})
        except httpx.HTTPError as exc:
            self.errors += 1
            self.last_error = f"remote signer {url}: {type(exc).__name__}: {exc or 'no answer'}"
            raise SignerError(self.last_error) from exc
        if response.status_code != 200:
            self.errors += 1
            self.last_error = f"remote signer {url}: HTTP {response.status_code}: {response.text[:300].strip()}"
            raise SignerRefusal(response.status_code, self.last_error)
        try:
            return response.json()
        except ValueError as exc:
            raise SignerError(f"remote signer {url}: the answer is not JSON") from exc

    async def credentials(self) -> tuple[bytes, bytes]:
        """The signer's 20-byte address and its GetOrchestrator signature (fetched once)."""
        if self._credentials is None:
            reply = await self._post("/sign-orchestrator-info", None)
            try:
                self._credentials = (parse_address(str(reply["address"])),
                                     bytes.fromhex(str(reply["signature"]).removeprefix("0x")))
            except (KeyError, TypeError, ValueError) as exc:
                raise SignerError(f"remote signer: malformed /sign-orchestrator-info answer: {exc!r}") from exc
        return self._credentials

    async def live_payment(self, orchestrator: str, info: pb.OrchestratorInfo, manifest_id: str) -> tuple[str, str]:
        """The ``Livepeer-Payment`` and ``Livepeer-Segment`` of a live payment (``type: lv2v``).

        Raises :class:`SignerRefusal` (480: refresh the O's info first) or :class:`SignerError`.
        """
        key = (orchestrator, manifest_id)
        body: dict[str, Any] = {
            "orchestrator": base64.b64encode(pb.PaymentResult(info=info).SerializeToString()).decode(),
            "manifestID": manifest_id, "type": "lv2v"}
        if key in self._states:
            body["state"] = self._states[key]
        reply = await self._post("/generate-live-payment", body)
        try:
            payment, creds, state = str(reply["payment"]), str(reply["segCreds"]), reply["state"]
        except (KeyError, TypeError) as exc:
            raise SignerError(f"remote signer: malformed /generate-live-payment answer: {exc!r}") from exc
        self._states[key] = state
        self.payments += 1
        return payment, creds

    def rekey(self, orchestrator: str, old: str, new: str) -> None:
        """Carry a session's state over to the manifest id the O gave it."""
        if (orchestrator, old) in self._states:
            self._states[(orchestrator, new)] = self._states.pop((orchestrator, old))

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()


class RemoteIdentity:
    """A gateway identity whose key the remote signer holds: it answers GetOrchestrator's ``Sign(address)``
    with the signer's cached signature and signs nothing else (its segments go unsigned, as an offchain
    gateway's; live AI requests carry the signer's segment credentials instead)."""

    def __init__(self) -> None:
        self._address = bytes(20)
        self._sig = b""
        self._checksum = checksum_address(self._address)

    def set_credentials(self, address: bytes, address_sig: bytes) -> None:
        """Adopt the signer's address and GetOrchestrator signature (until then: unsigned, offchain-like)."""
        self._address = address
        self._sig = address_sig
        self._checksum = checksum_address(address)

    @property
    def address(self) -> bytes:
        return self._address

    @property
    def checksum_address(self) -> str:
        return self._checksum

    def sign(self, msg: bytes) -> bytes:
        return self._sig if msg == self._checksum.encode() else b""

    def sign_hash(self, payload: bytes) -> bytes:
        raise SignatureError("the remote signer holds this gateway's key: it signs no tickets here")

    def verify(self, address: str | bytes, msg: bytes, sig: bytes) -> None:
        verify_message(address, msg, sig)

    def verify_hash(self, address: str | bytes, payload: bytes, sig: bytes) -> None:
        verify_sig(address, payload, sig)
