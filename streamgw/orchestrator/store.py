"""What an orchestrator keeps between calls: auth-token sessions and transcoded renditions."""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

SESSION_IDLE = 300.0  # seconds without a segment after which a session is dropped
SESSION_RECLAIM = 60.0  # at capacity, a session idle this long makes room for a new one


@dataclass(slots=True)
class Session:
    """A gateway's transcoding session, named by the auth token's session id."""

    gateway_address: bytes  # 20 bytes; all zero for an offchain gateway
    last_used: float


class Sessions:
    """Live sessions, at most ``max_sessions``; idle ones expire, and make room when needed.

    A gateway opens a session with each GetOrchestrator, and one that retries opens many: without
    expiry the orchestrator would end up refusing everyone (``OrchestratorCapped``) for good.
    """

    def __init__(self, max_sessions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def _prune(self, idle: float) -> None:
        now = self._clock()
        for sid in [sid for sid, s in self._by_id.items() if now - s.last_used > idle]:
            del self._by_id[sid]

    def open(self, gateway_address: bytes, *, ignore_capacity: bool = False) -> str | None:
        """A new session id, or None when at capacity with no session idle long enough to reclaim."""
        self._prune(SESSION_IDLE)
        if len(self._by_id) >= self.max_sessions and not ignore_capacity:
            self._prune(SESSION_RECLAIM)
            if len(self._by_id) >= self.max_sessions:
                return None
        session_id = secrets.token_hex(8)
        self._by_id[session_id] = Session(gateway_address, self._clock())
        return session_id

    def use(self, session_id: str) -> Session | None:
        """The live session with this id, marked as used now."""
        session = self._by_id.get(session_id)
        if session is not None:
            session.last_used = self._clock()
        return session

    def end(self, session_id: str) -> bool:
        """Remove a session; False if unknown."""
        return self._by_id.pop(session_id, None) is not None

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def __len__(self) -> int:
        self._prune(SESSION_IDLE)
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
