"""What WHIP publishers and WHEP viewers share as sessions: one :class:`PeerSessions` per kind.

It holds the sessions by id and bounds them (live plus negotiating ones, refused while the
gateway shuts down), puts the offer/answer under a timeout, watches each peer connection (a
failed or closed connection, or one not up within ``connect_timeout``, ends the session) and
keeps the tasks sessions spawn, logging any that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Generic, Protocol, TypeVar

from aiortc import RTCPeerConnection

from streamgw.errors import CapacityError

log = logging.getLogger(__name__)

T = TypeVar("T")


class PeerSession(Protocol):
    """What :class:`PeerSessions` reads of a session."""

    @property
    def id(self) -> str:
        """The session id (its URL's last part)."""
        ...

    @property
    def closed(self) -> bool:
        """Whether it has ended (or is ending)."""
        ...


S = TypeVar("S", bound=PeerSession)

Lost = Callable[[str], Coroutine[Any, Any, None]]
"""``lost(why)``: end the session; ``why`` is ``failed``, ``closed`` or ``did not connect in N s``."""


class PeerSessions(Generic[S]):
    """The sessions of one kind by id, with their bounds, timeouts, connection watch and tasks."""

    def __init__(self, kind: str, noun: str, max_sessions: int, negotiate_timeout: float,
                 connect_timeout: float) -> None:
        self.kind = kind  # "WHIP", "WHEP": for messages
        self.noun = noun  # "publishers", "viewers"
        self.max_sessions = max_sessions
        self.negotiate_timeout = negotiate_timeout  # seconds for the offer/answer, gathering included
        self.connect_timeout = connect_timeout  # seconds from the answer until ICE and DTLS are up
        self.active: dict[str, S] = {}
        self.pending = 0  # offers being answered
        self.closing = False
        self._background: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.active)

    def get(self, session_id: str) -> S | None:
        """The live session ``session_id``, if any."""
        return self.active.get(session_id)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for one negotiation; CapacityError at the bound or while closing."""
        if self.closing or len(self.active) + self.pending >= self.max_sessions:
            raise CapacityError(f"at {self.kind} capacity ({self.max_sessions} {self.noun})")
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def negotiate(self, answer: Awaitable[T]) -> T:
        """Await ``answer`` within the negotiation timeout; CapacityError past it."""
        try:
            return await asyncio.wait_for(answer, self.negotiate_timeout)
        except asyncio.TimeoutError as exc:
            raise CapacityError(f"{self.kind} negotiation took over {self.negotiate_timeout:.0f} s") from exc

    def check_open(self) -> None:
        """CapacityError once the gateway is shutting down (a negotiation that ended meanwhile)."""
        if self.closing:
            raise CapacityError("the gateway is shutting down")

    def add(self, session: S) -> None:
        """A negotiated session goes live."""
        self.active[session.id] = session

    def forget(self, session: S) -> None:
        """A session ended."""
        if self.active.get(session.id) is session:
            del self.active[session.id]

    def watch(self, session: S, pc: RTCPeerConnection, lost: Lost) -> asyncio.Task[None]:
        """Call ``lost`` when ``pc`` fails or closes, or is not connected within ``connect_timeout``.

        Returns the connect watchdog's task, for the session to cancel when it closes.
        """
        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and not session.closed:
                self.spawn(lost(pc.connectionState))

        return self.spawn(self._watch_connect(session, pc, lost))

    async def _watch_connect(self, session: S, pc: RTCPeerConnection, lost: Lost) -> None:
        await asyncio.sleep(self.connect_timeout)
        if pc.connectionState != "connected" and not session.closed:
            await lost(f"did not connect in {self.connect_timeout:.0f} s")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task kept until it ends; a failure is logged with its task."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s task %s failed", self.kind, task.get_name(), exc_info=exc)

    async def close(self, close: Callable[[S], Awaitable[None]]) -> None:
        """Refuse new sessions and end every live one with ``close``."""
        self.closing = True
        await asyncio.gather(*(close(s) for s in list(self.active.values())), return_exceptions=True)

    async def drain(self) -> None:
        """Wait (at most 10 s) for the spawned tasks to end."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=10)
