"""Sockets the nodes listen on."""

from __future__ import annotations

import os
import socket

from streamgw.errors import ListenError


def listen_error(what: str, host: str, port: int, exc: OSError) -> ListenError:
    """``exc`` (from bind or listen) as a ListenError that names the address, e.g. for ``Address already in use``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # asyncio's create_server puts the address in strerror already: take the plain reason.
    reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
    error = ListenError(f"cannot listen on {where} ({what}): {reason}")
    error.errno = exc.errno
    return error


def tcp_listener(host: str, port: int, backlog: int = 512, *, what: str = "TCP") -> socket.socket:
    """A bound, listening TCP socket (port 0: any free port); raises ListenError naming the address.

    Made with ``proto=IPPROTO_TCP`` so that asyncio sets TCP_NODELAY on accepted connections;
    with proto 0 it leaves Nagle on and a keep-alive response body waits ~40 ms for the peer's
    delayed ACK. ``what`` says what the port serves, for the error message.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise listen_error(what, host, port, exc) from exc
    return sock
