"""The one module that touches aiortc's and aioice's private state (aiortc 1.16, aioice 0.13, pinned).

Three hooks; each is checked when this module is imported, against the installed libraries:

* **Host candidates** (:func:`fill_host_candidates`). aioice has no option to gather on chosen
  addresses (it skips 127.0.0.1 and binds every interface), so the candidate list of the aioice
  ``Connection`` that aiortc keeps in ``RTCIceGatherer._connection`` is filled here, and aiortc's
  own gathering then finds it done. No fallback: without it the gateway cannot say which
  addresses its peers use, so a mismatch raises :class:`IncompatibleDependency` at import.
* **The H.264 tap** (:func:`tap_h264`). aiortc always decodes what it receives; a stand-in for a
  receiver's decoder queue (``RTCRtpReceiver.__decoder_queue``, read by aiortc's
  ``decoder_worker`` thread) takes each H.264 access unit its jitter buffer completes.
* **Picture loss** (:func:`send_pli`): RTCP PLI (RFC 4585 6.3.1) through the receiver's private
  ``_send_rtcp_pli``; aiortc has no public way to ask a sender for an IDR.

Fallback for the last two (``HOOKS.copy_h264`` False; why in ``HOOKS.tap_problem`` and
``HOOKS.pli_problem``): a WHIP publisher's H.264 cannot be copied with its GOP kept to the segment
length, so WHIP decodes and re-encodes every publisher (as ``whip_video = "transcode"``); without
PLI a keyframe request reaches only the gateway's own encoders. ``tests/test_webrtc_hooks.py``
runs the checks against stand-ins that lack each piece of state, and against the installed aiortc.
"""

from __future__ import annotations

import inspect
import logging
import queue
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from aioice import Connection
from aioice.candidate import Candidate, candidate_foundation
from aiortc import RTCRtpReceiver
from aiortc.rtcicetransport import RTCIceGatherer

from streamgw.errors import IncompatibleDependency

log = logging.getLogger(__name__)

# aiortc 1.16's receiver: the queue its decoder thread reads, and whether that thread is running.
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_STARTED = "_RTCRtpReceiver__started"
# aioice 0.13's Connection state that gathering fills in, with its type.
_ICE_STATE: tuple[tuple[str, type], ...] = (
    ("_local_candidates_start", bool), ("_local_candidates_end", bool), ("_local_candidates", list),
    ("_components", set), ("_protocols", list),
)


# ---------------------------------------------------------------------------------------------
# Checks (each takes the object it looks at, so a test can hand it a stand-in)


def check_ice_gathering(gatherer: object) -> None:
    """Raise IncompatibleDependency unless ``gatherer`` (an RTCIceGatherer) has what
    :func:`fill_host_candidates` fills in."""
    conn = getattr(gatherer, "_connection", None)
    if conn is None:
        raise IncompatibleDependency("aiortc's RTCIceGatherer has no _connection (aiortc 1.16 is supported)")
    problems = [f"Connection.{name} ({kind.__name__})" for name, kind in _ICE_STATE
                if not isinstance(getattr(conn, name, None), kind)]
    get = getattr(conn, "get_component_candidates", None)
    if not inspect.iscoroutinefunction(get) or not {"component", "addresses"} <= set(inspect.signature(get).parameters):
        problems.append("Connection.get_component_candidates(component=, addresses=)")
    if problems:
        raise IncompatibleDependency(f"aioice's ICE connection differs from 0.13 in: {', '.join(problems)}; "
                                     "streamgw cannot gather host candidates on its configured addresses")


def check_h264_tap(receiver: object) -> None:
    """Raise IncompatibleDependency unless ``receiver`` (a new RTCRtpReceiver) can be tapped by :func:`tap_h264`."""
    problems = []
    if not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue):
        problems.append("RTCRtpReceiver.__decoder_queue (a queue.Queue)")
    if getattr(receiver, _STARTED, None) is not False:
        problems.append("RTCRtpReceiver.__started (False until receive())")
    handle = getattr(type(receiver), "_handle_rtp_packet", None)
    if _DECODER_QUEUE not in getattr(getattr(handle, "__code__", None), "co_names", ()):
        problems.append("RTCRtpReceiver._handle_rtp_packet putting frames in __decoder_queue")
    if problems:
        raise IncompatibleDependency(f"aiortc's receiver differs from 1.16 in: {', '.join(problems)}")


def check_pli(receiver_type: type) -> None:
    """Raise IncompatibleDependency unless ``receiver_type`` (RTCRtpReceiver) has ``_send_rtcp_pli(media_ssrc)``."""
    send = getattr(receiver_type, "_send_rtcp_pli", None)
    if not inspect.iscoroutinefunction(send) or "media_ssrc" not in inspect.signature(send).parameters:
        raise IncompatibleDependency("aiortc's RTCRtpReceiver has no coroutine _send_rtcp_pli(media_ssrc) "
                                     "(aiortc 1.16 is supported)")


@dataclass(frozen=True, slots=True)
class HookSupport:
    """What the installed aiortc allows (None: the hook works; else why it does not)."""

    tap_problem: str | None
    pli_problem: str | None

    @property
    def copy_h264(self) -> bool:
        """Copying H.264 needs both the tap and PLI (the GOP is asked for)."""
        return self.tap_problem is None and self.pli_problem is None


def _problem(check: Callable[[Any], None], target: object) -> str | None:
    try:
        check(target)
    except IncompatibleDependency as exc:
        return str(exc)
    return None


def check_hooks(gatherer: object, receiver: object, receiver_type: type) -> HookSupport:
    """Check every hook: raise for the one without a fallback (ICE), report the others."""
    check_ice_gathering(gatherer)
    return HookSupport(tap_problem=_problem(check_h264_tap, receiver), pli_problem=_problem(check_pli, receiver_type))


def _installed() -> HookSupport:
    # The constructors only store things (no sockets, no loop); the receiver needs a transport
    # that is not closed.
    return check_hooks(RTCIceGatherer(), RTCRtpReceiver("video", SimpleNamespace(state="new")),  # type: ignore[arg-type]
                       RTCRtpReceiver)


HOOKS = _installed()
"""What the installed aiortc/aioice allow (checked at import; ICE raises IncompatibleDependency)."""


# ---------------------------------------------------------------------------------------------
# Host candidates


async def fill_host_candidates(gatherer: RTCIceGatherer, binds: list[str], advertised: dict[str, str]) -> None:
    """Gather ``gatherer``'s host candidates on the addresses ``binds`` only (once per gatherer).

    ``advertised`` maps a bound address to the one its candidate names (1:1 NAT); STUN/TURN
    candidates are still gathered by aioice for the configured servers.
    """
    conn: Connection = gatherer._connection
    if conn._local_candidates_start:
        return
    conn._local_candidates_start = True
    candidates: list[Candidate] = []
    for component in sorted(conn._components):
        got: list[Candidate] = await conn.get_component_candidates(component=component, addresses=binds)
        for protocol in conn._protocols:
            cand = getattr(protocol, "local_candidate", None)
            if cand is None or cand not in got or cand.type != "host":
                continue
            public = advertised.get(cand.host)
            if public and public != cand.host:
                # 1:1 NAT: the socket stays on the local address, the candidate names the public one.
                new = Candidate(
                    foundation=candidate_foundation("host", "udp", public), component=cand.component,
                    transport=cand.transport, priority=cand.priority, host=public, port=cand.port, type="host",
                )
                protocol.local_candidate = new
                got[got.index(cand)] = new
        candidates += got
    conn._local_candidates += candidates
    conn._local_candidates_end = True
    if not any(c.type == "host" for c in candidates):
        log.warning("ICE: no host candidate could be bound on %s", ", ".join(binds) or "(no address)")


# ---------------------------------------------------------------------------------------------
# The H.264 tap and PLI


class CopyTap(queue.Queue[Any]):
    """Stands in for an aiortc receiver's decoder queue: H.264 frames are taken, not decoded.

    aiortc's receiver puts each frame its jitter buffer completes, ``(codec, JitterFrame)``, in
    this queue for its decoder thread (``aiortc.rtcrtpreceiver.decoder_worker``); H.264 ones go to
    ``on_h264(data, timestamp)`` instead (on the event loop) unless it returns False, the rest
    (another codec, and the ``None`` that stops the thread and ends the track) go on to the
    decoder as before.
    """

    def __init__(self, on_h264: Callable[[bytes, int], bool]) -> None:
        super().__init__()
        self._on_h264 = on_h264
        self.copying = True  # False: H.264 goes to the decoder too

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Take an H.264 frame (while copying), or queue ``item`` for aiortc's decoder."""
        if item is not None and self.copying:
            codec, frame = item
            if str(codec.mimeType).lower() == "video/h264" and self._on_h264(bytes(frame.data), int(frame.timestamp)):
                return
        super().put(item, block, timeout)


def tap_h264(receiver: RTCRtpReceiver, on_h264: Callable[[bytes, int], bool]) -> CopyTap | None:
    """Take ``receiver``'s H.264 frames before its decoder; None if this receiver cannot be tapped."""
    if not HOOKS.copy_h264 or not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue) \
            or getattr(receiver, _STARTED, True):
        log.warning("WHIP: cannot take H.264 from this aiortc's receiver; decoding and re-encoding it")
        return None
    tap = CopyTap(on_h264)
    setattr(receiver, _DECODER_QUEUE, tap)
    return tap


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Coroutine[Any, Any, None] | None:
    """RTCP PLI for ``media_ssrc`` from ``receiver`` (a coroutine to run); None without the hook."""
    if HOOKS.pli_problem is not None:
        return None
    pli: Coroutine[Any, Any, None] = receiver._send_rtcp_pli(media_ssrc)
    return pli
