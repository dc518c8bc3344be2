"""The aiortc/aioice internals streamgw/webrtc/hooks.py builds on: checked against stand-ins that
lack each piece, and against the installed libraries (which an upgrade that moves one fails)."""

from __future__ import annotations

import queue
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtcicetransport import RTCIceGatherer

from streamgw.errors import IncompatibleDependency, StreamgwError
from streamgw.webrtc import hooks

ICE_STATE = ["_local_candidates_start", "_local_candidates_end", "_local_candidates", "_components", "_protocols"]


def new_receiver() -> RTCRtpReceiver:
    return RTCRtpReceiver("video", SimpleNamespace(state="new"))  # type: ignore[arg-type]


class Connection:
    """An aioice Connection stand-in with the state named in ``keep`` (copied from a real one)."""

    def __init__(self, keep: list[str]) -> None:
        real = RTCIceGatherer()._connection
        for name in keep:
            setattr(self, name, getattr(real, name))

    async def get_component_candidates(self, component: int, addresses: list[str], timeout: int = 5) -> list[Any]:
        return []


def test_the_installed_aiortc_and_aioice_have_every_hook() -> None:
    """Fails when an aiortc or aioice upgrade changes the private state a hook uses."""
    hooks.check_ice_gathering(RTCIceGatherer())
    hooks.check_h264_tap(new_receiver())
    hooks.check_pli(RTCRtpReceiver)
    support = hooks.check_hooks(RTCIceGatherer(), new_receiver(), RTCRtpReceiver)
    assert support == hooks.HOOKS and support.copy_h264, support
    assert support.tap_problem is None and support.pli_problem is None


def test_the_stand_in_connection_passes_with_all_its_state() -> None:
    hooks.check_ice_gathering(SimpleNamespace(_connection=Connection(ICE_STATE)))


@pytest.mark.parametrize("missing", ICE_STATE)
def test_ice_gathering_without_its_state_is_an_error(missing: str) -> None:
    gatherer = SimpleNamespace(_connection=Connection([n for n in ICE_STATE if n != missing]))
    with pytest.raises(IncompatibleDependency, match=missing):
        hooks.check_ice_gathering(gatherer)
    # No fallback for this one: the whole check raises (at import, for the installed aiortc).
    with pytest.raises(IncompatibleDependency):
        hooks.check_hooks(gatherer, new_receiver(), RTCRtpReceiver)


def test_ice_gathering_without_a_connection_or_with_another_signature_is_an_error() -> None:
    with pytest.raises(IncompatibleDependency, match="_connection"):
        hooks.check_ice_gathering(SimpleNamespace())

    class Renamed(Connection):
        async def get_component_candidates(self, component: int, addrs: list[str],  # type: ignore[override]
                                           timeout: int = 5) -> list[Any]:
            return []

    with pytest.raises(IncompatibleDependency, match="get_component_candidates"):
        hooks.check_ice_gathering(SimpleNamespace(_connection=Renamed(ICE_STATE)))
    err = IncompatibleDependency("x")
    assert isinstance(err, StreamgwError) and isinstance(err, ImportError)


def test_a_receiver_without_the_decoder_queue_falls_back_to_decoding() -> None:
    class Receiver:
        """Like aiortc 1.16's, but its decoder queue has another name."""

        def __init__(self) -> None:
            self._RTCRtpReceiver__frames: queue.Queue[Any] = queue.Queue()
            self._RTCRtpReceiver__started = False

        def _handle_rtp_packet(self) -> None:
            self._RTCRtpReceiver__frames.put(None)

    with pytest.raises(IncompatibleDependency, match="__decoder_queue"):
        hooks.check_h264_tap(Receiver())
    support = hooks.check_hooks(RTCIceGatherer(), Receiver(), RTCRtpReceiver)
    assert not support.copy_h264 and support.tap_problem and "__decoder_queue" in support.tap_problem
    assert support.pli_problem is None


def test_a_started_receiver_cannot_be_tapped() -> None:
    receiver = new_receiver()
    receiver._RTCRtpReceiver__started = True  # type: ignore[attr-defined]
    with pytest.raises(IncompatibleDependency, match="__started"):
        hooks.check_h264_tap(receiver)
    assert hooks.tap_h264(receiver, lambda data, ts: True) is None


def test_a_tapped_receiver_hands_h264_to_the_session() -> None:
    receiver = new_receiver()
    got: list[tuple[bytes, int]] = []
    tap = hooks.tap_h264(receiver, lambda data, ts: got.append((data, ts)) is None)
    assert isinstance(tap, hooks.CopyTap) and receiver._RTCRtpReceiver__decoder_queue is tap  # type: ignore[attr-defined]
    h264, vp8 = SimpleNamespace(mimeType="video/H264"), SimpleNamespace(mimeType="video/VP8")
    tap.put((h264, SimpleNamespace(data=b"\x00\x00\x01\x65", timestamp=3000)))
    tap.put((vp8, SimpleNamespace(data=b"vp8", timestamp=3000)))
    assert got == [(b"\x00\x00\x01\x65", 3000)] and tap.qsize() == 1  # VP8 goes on to aiortc's decoder


def test_a_receiver_without_pli_falls_back() -> None:
    class Receiver:
        def _send_rtcp_pli(self, media_ssrc: int) -> None:  # not a coroutine any more
            pass

    with pytest.raises(IncompatibleDependency, match="_send_rtcp_pli"):
        hooks.check_pli(Receiver)
    with pytest.raises(IncompatibleDependency, match="_send_rtcp_pli"):
        hooks.check_pli(object)
    support = hooks.check_hooks(RTCIceGatherer(), new_receiver(), Receiver)
    assert not support.copy_h264 and support.tap_problem is None and support.pli_problem
