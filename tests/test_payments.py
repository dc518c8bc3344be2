"""The ticket sender and recipient, sans-I/O: vectors from go-livepeer, every refusal with its text.

Payments here are the vectors' bytes (computed from go-livepeer's messages and keys) or built field by field
from WIRE.md §5 with eth-account, not only by streamgw's own sender.
"""

from __future__ import annotations

import base64
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from streamgw.errors import InsufficientBalance, PaymentError, TicketParamsRefused, TicketRejected
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.profiles import PRESETS
from streamgw.livepeer.signing import Signer, parse_address
from streamgw.livepeer.tickets import (
    MAX_WIN_PROB,
    TicketParams,
    decode_payment_header,
    int_to_bytes,
    is_winning_ticket,
)
from streamgw.payments.recipient import (
    RecipientChainState,
    RecipientSettings,
    SenderReserve,
    TicketRecipient,
    WinningTicket,
)
from streamgw.payments.sender import (
    LIVE_PREPAY_PIXELS,
    SenderChainState,
    SenderLimits,
    TicketSender,
    segment_pixels,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "livepeer" / "vectors" / "tickets.json"
GATEWAY_KEY = "11" * 32
O_KEY = "22" * 32
GATEWAY = parse_address("0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A")
ORCH = parse_address("0x1563915e194D8CfBA1943570603F7606A3115508")


def _vector(name: str) -> dict[str, Any]:
    for case in json.loads(VECTORS.read_text()):
        if case["name"] == name:
            return dict(case)
    raise KeyError(name)


def _vector_recipient(case: dict[str, Any], *, last_block: int = 21_000_000) -> TicketRecipient:
    internal = case["inputs"]["ticket_params"]["o_internal"]
    recipient = TicketRecipient(RecipientSettings(address=ORCH, ticket_ev=int(internal["ticket_ev"])),
                                secret=bytes.fromhex(internal["orchestrator_secret_hex"]))
    recipient.set_chain_state(RecipientChainState(last_block=last_block, current_round=3650,
                                                  last_initialized_round=3650))
    return recipient


def _vector_payment(case: dict[str, Any]) -> pb.Payment:
    return decode_payment_header(case["expected"]["payment_b64"])


def _price(case: dict[str, Any]) -> Fraction:
    num, den = case["inputs"]["ticket_params"]["o_internal"]["price"]
    return Fraction(num, den)


def test_vector_payment_is_credited_ticket_by_ticket() -> None:
    case = _vector("payment_3_tickets")
    recipient = _vector_recipient(case)
    receipt = recipient.receive(_vector_payment(case), "session-1", quote=_price(case))
    assert receipt.error == ""
    assert receipt.credited == 3
    ev = Fraction(8_000_000_000)  # the vector's ticket EV, up to winProb's rounding
    assert abs(receipt.ev - 3 * ev) / ev < Fraction(1, 10**6)
    assert recipient.balances.balance(GATEWAY, "session-1") == receipt.ev
    assert recipient.balances.fixed_price(GATEWAY, "session-1") == Fraction(1430)
    assert receipt.winners == ()  # realistic win probability: these three lose


def test_replayed_payment_is_refused_with_the_nonce() -> None:
    case = _vector("payment_3_tickets")
    recipient = _vector_recipient(case)
    recipient.receive(_vector_payment(case), "s", quote=_price(case))
    again = recipient.receive(_vector_payment(case), "s", quote=_price(case))
    assert again.credited == 0
    # go-livepeer returns the last error seen: the third ticket's nonce.
    assert again.error == ("invalid ticket senderNonce: already seen "
                           "sender=0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A nonce=3")


def test_expired_params_are_refused_and_their_nonces_recorded() -> None:
    case = _vector("payment_3_tickets")
    recipient = _vector_recipient(case, last_block=21_000_040)  # expiration block == last block seen
    receipt = recipient.receive(_vector_payment(case), "s", quote=_price(case))
    assert (receipt.credited, receipt.error) == (0, "TicketParams expired")
    recipient.set_chain_state(RecipientChainState(last_block=21_000_000, current_round=3650))
    replay = recipient.receive(_vector_payment(case), "s", quote=_price(case))
    assert replay.error.startswith("invalid ticket senderNonce: already seen")


def test_wrong_recipient_is_an_inactive_orchestrator() -> None:
    case = _vector("payment_3_tickets")
    other = TicketRecipient(RecipientSettings(address=GATEWAY))  # any other O's address
    other.set_chain_state(RecipientChainState(last_block=1, current_round=3650))
    with pytest.raises(TicketRejected) as err:
        other.receive(_vector_payment(case), "s", quote=Fraction(0))
    assert str(err.value) == ("orchestrator 0x1563915e194D8CfBA1943570603F7606A3115508 is inactive in round 3650, "
                              "cannot process payments")
    assert err.value.fatal


@pytest.mark.parametrize("field", ["expiration_block", "face_value", "creation_round", "price", "seed"])
def test_any_rewritten_field_fails_the_recipient_rand(field: str) -> None:
    case = _vector("payment_3_tickets")
    recipient = _vector_recipient(case)
    payment = _vector_payment(case)
    if field == "expiration_block":
        payment.ticket_params.expiration_block = int_to_bytes(21_000_999)
    elif field == "face_value":
        payment.ticket_params.face_value = int_to_bytes(2_000_000_000_000_000)
    elif field == "creation_round":
        payment.expiration_params.creation_round = 3649  # a ticket claiming another round
    elif field == "seed":
        payment.ticket_params.seed = int_to_bytes(12345)
    else:
        payment.expected_price.pricePerUnit = 2860  # a different ratio (higher, so not "underpriced")
    with pytest.raises(TicketRejected) as err:
        recipient.receive(payment, "s", quote=_price(case))
    assert str(err.value) == "invalid recipientRand for ticket recipientRandHash"
    assert recipient.balances.balance(GATEWAY, "s") == 0


def test_a_forged_signature_stops_crediting_from_that_ticket_on() -> None:
    case = _vector("payment_3_tickets")
    recipient = _vector_recipient(case)
    payment = _vector_payment(case)
    # Ticket 2 re-signed by a stranger over the right hash (EIP-191 of the 32-byte hash).
    stranger = Account.from_key("0x" + "33" * 32)
    ticket_hash = bytes.fromhex(case["expected"]["ticket_hashes_hex"][1])
    payment.ticket_sender_params[1].sig = stranger.sign_message(encode_defunct(primitive=ticket_hash)).signature
    receipt = recipient.receive(payment, "s", quote=_price(case))
    assert receipt.error == "invalid ticket signature"
    assert receipt.credited == 1  # the first stands; the third, though valid, is not credited


def test_underpriced_and_malformed_expected_prices() -> None:
    case = _vector("payment_3_tickets")
    recipient = _vector_recipient(case)
    payment = _vector_payment(case)
    payment.expected_price.pricePerUnit = 1  # below the quote of 1430
    with pytest.raises(TicketRejected, match='^invalid expected price sent with payment err="price 1/1 is below'):
        recipient.receive(payment, "s", quote=_price(case))
    payment.expected_price.pixelsPerUnit = 0
    with pytest.raises(TicketRejected) as err:
        recipient.receive(payment, "s", quote=_price(case))
    assert str(err.value) == 'invalid expected price sent with payment err="pixels per unit is 0"'
    payment.ClearField("expected_price")
    with pytest.raises(TicketRejected, match="missing expected price"):
        recipient.receive(payment, "s", quote=_price(case))


def test_zero_sender_and_missing_expiration_params() -> None:
    case = _vector("payment_3_tickets")
    recipient = _vector_recipient(case)
    payment = _vector_payment(case)
    payment.sender = bytes(20)
    with pytest.raises(TicketRejected, match="^invalid ticket sender$"):
        recipient.receive(payment, "s", quote=_price(case))
    payment = _vector_payment(case)
    payment.ClearField("expiration_params")  # go-livepeer's O crashes here; streamgw answers
    with pytest.raises(TicketRejected, match="missing expiration_params"):
        recipient.receive(payment, "s", quote=_price(case))


def test_a_gateway_echoing_zero_without_tickets_is_refused() -> None:
    recipient = TicketRecipient(RecipientSettings(address=ORCH))
    payment = pb.Payment(sender=GATEWAY)
    payment.expected_price.pricePerUnit, payment.expected_price.pixelsPerUnit = 0, 1
    with pytest.raises(TicketRejected, match="below the price 5/1"):
        recipient.receive(payment, "s", quote=Fraction(5))
    free = recipient.receive(payment, "free", quote=Fraction(0))
    assert free.price == 0


def _quote(recipient: TicketRecipient, price: Fraction, session: str = "sess") -> pb.OrchestratorInfo:
    """An OrchestratorInfo as the O sends it: fresh ticket params with nested expiration params."""
    info = pb.OrchestratorInfo(transcoder="https://o.example:8935", address=ORCH)
    info.price_info.pricePerUnit, info.price_info.pixelsPerUnit = price.numerator, price.denominator
    info.ticket_params.CopyFrom(recipient.ticket_params(GATEWAY, price).to_proto())
    info.auth_token.session_id = session
    return info


def _funded_recipient(**settings: Any) -> TicketRecipient:
    recipient = TicketRecipient(RecipientSettings(address=ORCH, **settings))
    recipient.set_chain_state(RecipientChainState(last_block=100, current_round=2, last_initialized_round=2,
                                                  round_block_hash=b"\x07" * 32, gas_price=1_000_000_000))
    recipient.set_sender(GATEWAY, SenderReserve(deposit=10**18, reserve=10**18))
    return recipient


def _sender(**limits: Any) -> TicketSender:
    sender = TicketSender(Signer(GATEWAY_KEY), SenderLimits(**limits))
    sender.set_chain_state(SenderChainState(last_block=100, current_round=2, deposit=10**18, reserve=10**18))
    return sender


def test_sender_and_recipient_agree_over_many_segments() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    sender = _sender()
    price = Fraction(3)
    pixels = segment_pixels([PRESETS["P240p30fps16x9"]], 2.0)
    assert pixels == 426 * 240 * 30 * 2
    nonces: list[int] = []
    for _ in range(20):
        info = _quote(recipient, price)
        staged = sender.stage("o", info, pixels)
        payment = decode_payment_header(staged.header)
        nonces += [t.sender_nonce for t in payment.ticket_sender_params]
        receipt = recipient.receive(payment, "sess", quote=price)
        assert receipt.error == ""
        recipient.check_balance(GATEWAY, "sess")
        recipient.charge(GATEWAY, "sess", int(pixels / Fraction(102, 100)))  # the O counts fewer than B
        sender.settle(staged, accepted=True)
    # The O wants a ticket's EV in hand before each segment: the first payment brings one EV, the second
    # tops the credit up over an EV again, then 18 segments (fees far below the EV) need no ticket. Each
    # info had fresh params (a fresh recipientRandHash), so each ticket's nonce is 1.
    assert nonces == [1, 1]
    assert recipient.balances.balance(GATEWAY, "sess") > 0
    assert sender.balances()["o"] > 0


def test_nonces_go_on_across_payments_on_the_same_params() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    sender = _sender()
    info = _quote(recipient, Fraction(3))
    seen: list[int] = []
    for _ in range(3):
        staged = sender.stage("o", info, 10**6)
        seen += [t.sender_nonce for t in decode_payment_header(staged.header).ticket_sender_params]
        sender.settle(staged, accepted=True)
        sender.sessions[staged.key].credit = Fraction(0)  # force tickets every time
    assert seen == list(range(1, len(seen) + 1))


def test_tickets_per_payment_cover_the_fee_less_the_credit() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    sender = _sender()
    info = _quote(recipient, Fraction(1))
    ev = TicketParams.from_proto(info.ticket_params).ev()
    staged = sender.stage("o", info, 2_500_000_000_000)  # fee 2.5 EV: 3 tickets
    assert staged.tickets == 3
    sender.settle(staged, accepted=True)
    assert sender.sessions[staged.key].credit == 3 * ev - 2_500_000_000_000
    small = sender.stage("o", info, 100)  # the credit covers max(fee, EV)? no: 0.5 EV < EV -> 1 ticket
    assert small.tickets == 1
    sender.settle(small, accepted=False)  # refused: the staged credit is gone
    assert sender.sessions[staged.key].credit == 0


def test_the_start_of_a_live_stream_prepays_a_minute() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    sender = _sender()
    info = _quote(recipient, Fraction(1000))
    staged = sender.stage("o", info, LIVE_PREPAY_PIXELS)
    assert staged.fee == LIVE_PREPAY_PIXELS * 1000
    assert staged.tickets == 2  # 1.66e12 wei of work at EV 1e12


def test_insufficient_balance_and_charging() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    payment = pb.Payment(sender=GATEWAY)
    payment.expected_price.pricePerUnit, payment.expected_price.pixelsPerUnit = 2, 1
    recipient.receive(payment, "k", quote=Fraction(2))
    with pytest.raises(InsufficientBalance, match="^Insufficient balance$"):
        recipient.check_balance(GATEWAY, "k")
    assert recipient.charge(GATEWAY, "k", 10) == 20
    assert recipient.balances.balance(GATEWAY, "k") == -20


@pytest.mark.parametrize(("limits", "chain", "text"), [
    ({"max_ticket_ev": 10**11}, {}, "ticket EV 1000000000000.00000 > max ticket EV 100000000000.00000"),
    ({"max_total_ev": 10**12}, {}, "total ticket EV 3000000000000.00000 for 3 tickets > max total ticket EV "
                                   "1000000000000.00000"),
    ({"deposit_multiplier": 10**6}, {}, "ticket faceValue 35000000000000000 > max faceValue 1000000000000"),
    ({}, {"last_block": 139}, "TicketParams expired"),
    ({}, {"withdraw_round": 3}, "deposit and reserve is set to unlock soon"),
])
def test_sender_limits(limits: dict[str, int], chain: dict[str, int], text: str) -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    sender = _sender(**limits)
    state = {"last_block": 100, "current_round": 2, "deposit": 10**18, "reserve": 10**18, **chain}
    sender.set_chain_state(SenderChainState(**state))
    info = _quote(recipient, Fraction(1))
    with pytest.raises(TicketParamsRefused) as err:
        sender.stage("o", info, 3 * 10**12)
    assert str(err.value) == text


def test_ev_equal_to_face_value_is_refused_as_go_livepeer_does() -> None:
    recipient = _funded_recipient(ticket_ev=10**12, max_face_value=10**12)
    info = _quote(recipient, Fraction(1))
    assert TicketParams.from_proto(info.ticket_params).win_prob == MAX_WIN_PROB
    with pytest.raises(TicketParamsRefused, match="^ticket faceValue too low faceValue=1000000000000$"):
        _sender().stage("o", info, 10)


def test_a_price_rise_over_twice_the_first_quote_ends_the_session() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    sender = _sender()
    sender.settle(sender.stage("o", _quote(recipient, Fraction(10)), 10), accepted=True)
    sender.stage("o", _quote(recipient, Fraction(20)), 10)  # twice: still fine
    with pytest.raises(TicketParamsRefused, match="more than 2 x the session's first quote 10"):
        sender.stage("o", _quote(recipient, Fraction(21)), 10)
    with pytest.raises(TicketParamsRefused):  # ended for good
        sender.stage("o", _quote(recipient, Fraction(10)), 10)
    sender.stage("o", _quote(recipient, Fraction(21), session="another"), 10)  # a new session is quoted anew


def test_price_cap() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    with pytest.raises(TicketParamsRefused, match="price 7 wei/pixel > max price 5"):
        _sender(max_price=Fraction(5)).stage("o", _quote(recipient, Fraction(7)), 10)


def test_quoting_follows_go_livepeer() -> None:
    recipient = _funded_recipient(ticket_ev=10**12)
    params = recipient.ticket_params(GATEWAY, Fraction(1))
    assert params.face_value == 100 * 1_000_000_000 * 350_000  # tx cost multiplier x gas price x redeem gas
    assert params.expiration_block == 140
    assert (params.creation_round, params.creation_round_block_hash) == (2, b"\x07" * 32)
    assert params.recipient_rand_hash != recipient.ticket_params(GATEWAY, Fraction(1)).recipient_rand_hash
    capped = _funded_recipient(ticket_ev=10**12, max_face_value=5 * 10**12).ticket_params(GATEWAY, Fraction(1))
    assert capped.face_value == 5 * 10**12
    poor = _funded_recipient(ticket_ev=10**12)
    poor.set_sender(GATEWAY, SenderReserve(deposit=10**18, reserve=10**11))
    with pytest.raises(PaymentError, match="^insufficient sender reserve$"):
        poor.ticket_params(GATEWAY, Fraction(1))
    poor.set_sender(GATEWAY, SenderReserve(deposit=10**18, reserve=10**13))
    poor.add_pending(GATEWAY, 9 * 10**12 + 1)  # pending winners count against the float
    with pytest.raises(PaymentError):
        poor.ticket_params(GATEWAY, Fraction(1))


def test_the_vectors_winning_ticket_is_queued_with_its_rand() -> None:
    case = _vector("payment_1_ticket_fractional_price")
    recipient = _vector_recipient(case)
    payment = _vector_payment(case)
    receipt = recipient.receive(payment, "s", quote=_price(case))
    expected_win = _vector("ticket_winprob_1pct_winning")
    nonce = payment.ticket_sender_params[0].sender_nonce
    assert nonce == expected_win["inputs"]["sender_nonce"]
    assert len(receipt.winners) == 1
    winner = receipt.winners[0]
    assert winner.ticket.hash().hex() == expected_win["expected"]["ticket_hash_hex"]
    assert is_winning_ticket(winner.sig, winner.recipient_rand, winner.ticket.win_prob)
    assert WinningTicket.from_json(json.loads(winner.dumps())) == winner


def test_a_payment_built_by_hand_from_wire_md() -> None:
    """Field by field as WIRE.md §5 lays it out, signed with eth-account: the O credits it."""
    recipient = _funded_recipient(ticket_ev=10**12)
    info = _quote(recipient, Fraction(3))
    tp = info.ticket_params
    account = Account.from_key("0x" + GATEWAY_KEY)
    payment = pb.Payment(sender=bytes.fromhex(account.address[2:]))
    payment.ticket_params.CopyFrom(tp)
    payment.ticket_params.ClearField("expiration_params")  # B copies fields 1-6 only
    payment.expiration_params.CopyFrom(tp.expiration_params)
    payment.expected_price.CopyFrom(info.price_info)
    for nonce in (1, 2):
        flat = (bytes(tp.recipient) + payment.sender + int.from_bytes(tp.face_value, "big").to_bytes(32, "big")
                + int.from_bytes(tp.win_prob, "big").to_bytes(32, "big") + nonce.to_bytes(32, "big")
                + bytes(tp.recipient_rand_hash) + tp.expiration_params.creation_round.to_bytes(32, "big")
                + bytes(tp.expiration_params.creation_round_block_hash))
        from eth_utils import keccak

        sig = account.sign_message(encode_defunct(primitive=keccak(flat))).signature
        payment.ticket_sender_params.add(sender_nonce=nonce, sig=sig)
    header = base64.b64encode(payment.SerializeToString()).decode()
    receipt = recipient.receive(decode_payment_header(header), "sess", quote=Fraction(3))
    assert (receipt.credited, receipt.error) == (2, "")
