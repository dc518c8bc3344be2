"""Sockets the nodes listen on."""

from __future__ import annotations

import socket


def tcp_listener(host: str, port: int, backlog: int = 512) -> socket.socket:
    """A bound, listening TCP socket (port 0: any free port).

    Made with ``proto=IPPROTO_TCP`` so that asyncio sets TCP_NODELAY on accepted connections;
    with proto 0 it leaves Nagle on and a keep-alive response body waits ~40 ms for the peer's
    delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
