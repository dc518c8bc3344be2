"""The gateway's peer connections: the factory, codec preferences, and the answer to an offer."""

from __future__ import annotations

from collections.abc import Callable

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcconfiguration import RTCBundlePolicy

from streamgw.errors import ProtocolError
from streamgw.webrtc.ice import IceSettings, gather_candidates
from streamgw.webrtc.sdp import MAX_OFFER_BYTES


def new_peer_connection(ice: IceSettings) -> RTCPeerConnection:
    """A peer connection that asks only the configured STUN/TURN servers, one bundled transport."""
    servers = [
        RTCIceServer(urls=url, username=ice.username or None, credential=ice.credential or None)
        if url.startswith("turn") else RTCIceServer(urls=url)
        for url in ice.servers
    ]
    # iceServers=[] matters: None makes aiortc use a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def prefer_codecs(transceiver: RTCRtpTransceiver, mime_types: list[str], *, only: bool = False) -> None:
    """Put ``mime_types`` first in ``transceiver``'s codec preferences (or use only them)."""
    capabilities = RTCRtpReceiver.getCapabilities(transceiver.kind)
    caps = capabilities.codecs if capabilities is not None else []
    first = [c for m in mime_types for c in caps if c.mimeType.lower() == m.lower()]
    rtx = [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    rest = [] if only else [c for c in caps if c not in first and c not in rtx]
    transceiver.setCodecPreferences(first + rest + rtx)


async def answer_offer(pc: RTCPeerConnection, offer: str, ice: IceSettings,
                       prepare: Callable[[], None] | None = None) -> str:
    """Apply ``offer`` and return the answer SDP, with every candidate in it (no trickle ICE).

    ``prepare`` runs between the remote and local descriptions (to check what was offered).
    Raises ProtocolError for an offer that is not SDP or shares no codec with us.
    """
    if len(offer) > MAX_OFFER_BYTES:
        raise ProtocolError(f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    except (ValueError, LookupError, TypeError, InvalidAccessError, InvalidStateError, OperationError) as exc:
        raise ProtocolError(f"bad SDP offer: {exc or type(exc).__name__}") from exc
    if prepare is not None:
        prepare()
    await gather_candidates(pc, ice.addresses)
    try:
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except (ValueError, InvalidAccessError, InvalidStateError, OperationError) as exc:
        raise ProtocolError(f"cannot answer the SDP offer: {exc or type(exc).__name__}") from exc
    return str(pc.localDescription.sdp)
