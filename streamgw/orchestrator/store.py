"""What an orchestrator keeps between calls: auth-token sessions and transcoded renditions."""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

AUTH_TOKEN_VALIDITY = 30 * 60  # seconds, as go-livepeer server/rpc.go


@dataclass(frozen=True, slots=True)
class Session:
    """A gateway's transcoding session, named by the auth token's session id."""

    session_id: str
    token: bytes
    expiration: int  # Unix seconds
    gateway_address: bytes  # 20 bytes; all zero for an offchain gateway


class Sessions:
    """Auth-token sessions, at most ``max_sessions`` live at once."""

    def __init__(self, max_sessions: int, clock: Callable[[], float] = time.time) -> None:
        self.max_sessions = max_sessions
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def _expire(self) -> None:
        now = self._clock()
        for sid in [sid for sid, s in self._by_id.items() if s.expiration < now]:
            del self._by_id[sid]

    def create(self, gateway_address: bytes) -> Session | None:
        """A new session, or None when at capacity."""
        self._expire()
        if len(self._by_id) >= self.max_sessions:
            return None
        session = Session(secrets.token_hex(8), secrets.token_bytes(32),
                          int(self._clock()) + AUTH_TOKEN_VALIDITY, gateway_address)
        self._by_id[session.session_id] = session
        return session

    def renew(self, session: Session) -> Session:
        """The same session with a fresh expiry."""
        renewed = Session(session.session_id, session.token, int(self._clock()) + AUTH_TOKEN_VALIDITY,
                          session.gateway_address)
        self._by_id[session.session_id] = renewed
        return renewed

    def get(self, session_id: str) -> Session | None:
        """The live session with this id."""
        return self._by_id.get(session_id)

    def is_expired(self, session: Session) -> bool:
        """True when the session's token has expired."""
        return session.expiration < self._clock()

    def end(self, session_id: str) -> bool:
        """Remove a session; False if unknown."""
        return self._by_id.pop(session_id, None) is not None

    def __len__(self) -> int:
        self._expire()
        return len(self._by_id)


class RenditionStore:
    """Transcoded segments kept in memory for download, bounded in time and bytes."""

    def __init__(self, ttl: float = 60.0, max_bytes: int = 512 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()
        self._bytes = 0

    def put(self, path: str, data: bytes) -> None:
        """Keep ``data`` at ``path`` until it expires or memory is needed."""
        self._evict(len(data))
        old = self._items.pop(path, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._items[path] = (self._clock() + self.ttl, data)
        self._bytes += len(data)

    def get(self, path: str) -> bytes | None:
        """The data at ``path`` while kept."""
        self._evict(0)
        item = self._items.get(path)
        return item[1] if item else None

    def _evict(self, incoming: int) -> None:
        now = self._clock()
        while self._items:
            path, (expires, data) = next(iter(self._items.items()))
            if expires > now and self._bytes + incoming <= self.max_bytes:
                break
            del self._items[path]
            self._bytes -= len(data)
