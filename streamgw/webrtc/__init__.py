"""What WHIP (``ingest/whip.py``) and WHEP (``output/whep.py``) share, over aiortc.

* :mod:`.ice`: ICE settings, advertised addresses, host candidates on those only;
* :mod:`.peer`: the peer-connection factory, codec preferences, the answer to an offer;
* :mod:`.sdp`: what an offer asks for (read without aiortc);
* :mod:`.session`: :class:`PeerSessions`, the bounds, timeouts, connection watch and tasks of sessions;
* :mod:`.hooks`: the one module that touches aiortc's and aioice's private state, checked at import.
"""

from streamgw.webrtc.ice import HostAddress, IceSettings, gather_candidates, parse_ice_addresses, parse_ice_servers
from streamgw.webrtc.peer import answer_offer, new_peer_connection, prefer_codecs
from streamgw.webrtc.sdp import MAX_OFFER_BYTES, OfferedMedia, offered_media
from streamgw.webrtc.session import PeerSessions

__all__ = [
    "MAX_OFFER_BYTES", "HostAddress", "IceSettings", "OfferedMedia", "PeerSessions", "answer_offer",
    "gather_candidates", "new_peer_connection", "offered_media", "parse_ice_addresses", "parse_ice_servers",
    "prefer_codecs",
]
