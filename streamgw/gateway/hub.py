"""Fan-out of segments and stream events to subscribers that never stall the producer."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Union

from streamgw.segment import Segment


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """A rendition of a stream is finished: outputs end it (EXT-X-ENDLIST).

    The ingest ends "source" when the publisher is gone for good; the dispatcher ends each
    transcoded rendition once the segments still in flight are done.
    """

    stream_id: str
    rendition: str = "source"


Event = Union[Segment, StreamEnded]


class Subscription:
    """A bounded queue of events for one consumer; when full, the oldest event is dropped."""

    def __init__(self, hub: Hub, maxsize: int, name: str) -> None:
        self._hub = hub
        self._items: collections.deque[Event] = collections.deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.name = name
        self.dropped = 0

    def put(self, event: Event) -> None:
        """Queue ``event``, dropping (and counting, here and in the hub's ``dropped``) the oldest if full."""
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            self._hub.dropped[self.name] += 1
        self._items.append(event)
        self._ready.set()

    async def get(self) -> Event:
        """The next event, waiting for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        """Stop receiving events."""
        self._hub._subs.discard(self)


class Hub:
    """Delivers every published event to every subscription, in order, without blocking."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self.dropped: collections.Counter[str] = collections.Counter()  # events dropped, by subscriber name

    def subscribe(self, maxsize: int = 256, *, name: str = "other") -> Subscription:
        """A new subscription to all events from now on; ``name`` says who it is in the drop counts."""
        sub = Subscription(self, maxsize, name)
        self.dropped[name] += 0  # listed from the start, at 0
        self._subs.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber."""
        for sub in self._subs:
            sub.put(event)
