"""ICE for the gateway's peers: the addresses host candidates are gathered on and advertise, and
the STUN/TURN servers (none by default: aiortc's default would ask a public STUN server).

aioice never offers 127.0.0.1 and binds every interface it finds, so host candidates are gathered
on the configured addresses only (``IceSettings.addresses``), through :mod:`streamgw.webrtc.hooks`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from aioice.ice import get_host_addresses
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceGatherer, parse_stun_turn_uri

from streamgw.errors import ConfigError
from streamgw.webrtc.hooks import fill_host_candidates


@dataclass(frozen=True, slots=True)
class HostAddress:
    """A local address to gather a host candidate on, and the address the candidate advertises.

    ``bind`` is an IP address or ``*`` (every non-loopback interface address); ``advertise``
    differs from ``bind`` only behind a 1:1 NAT (the public address of a cloud VM).
    """

    bind: str
    advertise: str


@dataclass(frozen=True, slots=True)
class IceSettings:
    """ICE for the gateway's peers: host addresses, and STUN/TURN servers (none by default)."""

    addresses: tuple[HostAddress, ...] = (HostAddress("127.0.0.1", "127.0.0.1"),)
    servers: tuple[str, ...] = ()  # stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], turns:...
    username: str = ""  # TURN credentials
    credential: str = ""


def parse_ice_addresses(spec: str) -> tuple[HostAddress, ...]:
    """Parse ``"IP,*,PUBLIC=LOCAL"``; raises ConfigError."""
    out: list[HostAddress] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        advertise, _, bind = item.rpartition("=")
        bind = bind.strip()
        advertise = advertise.strip() or bind
        try:
            if bind != "*":
                ipaddress.ip_address(bind)
            if advertise != bind or bind != "*":
                ipaddress.ip_address(advertise)
        except ValueError as exc:
            raise ConfigError(f"webrtc_addrs: {item!r} is not IP, * or PUBLIC_IP=LOCAL_IP") from exc
        out.append(HostAddress(bind, advertise))
    if not out:
        raise ConfigError("webrtc_addrs: at least one address is needed")
    return tuple(out)


def parse_ice_servers(spec: str) -> tuple[str, ...]:
    """Parse comma-separated STUN/TURN URLs (RFC 7064, RFC 7065); raises ConfigError."""
    urls = tuple(u.strip() for u in spec.split(",") if u.strip())
    for url in urls:
        try:
            parse_stun_turn_uri(url)
        except ValueError as exc:
            raise ConfigError(f"webrtc_ice_servers: {url!r}: {exc}") from exc
    return urls


async def gather_candidates(pc: RTCPeerConnection, addresses: tuple[HostAddress, ...]) -> None:
    """Gather host candidates on ``addresses`` only, before aiortc's own gathering would.

    Call after the transceivers exist and before ``setLocalDescription``; aiortc's gathering then
    finds it done. STUN/TURN candidates are still gathered for the configured servers.
    """
    gatherers: list[RTCIceGatherer] = []
    for t in pc.getTransceivers():
        gatherer = t.receiver.transport.transport.iceGatherer
        if gatherer not in gatherers:
            gatherers.append(gatherer)
    advertised: dict[str, str] = {}
    binds: list[str] = []
    for addr in addresses:
        if addr.bind == "*":
            found = get_host_addresses(use_ipv4=True, use_ipv6=True)
            binds += [a for a in found if a not in binds]
        elif addr.bind not in binds:
            binds.append(addr.bind)
            advertised[addr.bind] = addr.advertise
    await asyncio.gather(*(fill_host_candidates(g, binds, advertised) for g in gatherers))
