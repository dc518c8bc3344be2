"""Sends each source segment to an orchestrator and publishes the renditions it returns.

One worker per stream keeps a stream's segments in order (so each rendition playlist grows in
seq order); orchestrators are tried in turn within the segment's deadline. When none answers,
the source keeps playing and the renditions skip the segment: the next rendition segment is
marked as a discontinuity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamgw.errors import LivepeerError, OrchestratorError, StreamgwError
from streamgw.gateway.hub import Hub, StreamEnded, Subscription
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities, job_capabilities
from streamgw.livepeer.client import OrchestratorClient, segment_deadlines
from streamgw.livepeer.profiles import VideoProfile
from streamgw.livepeer.segdata import AuthToken, SegMetadata, duration_ms, result_renditions
from streamgw.livepeer.signing import keccak256
from streamgw.segment import Segment

log = logging.getLogger(__name__)

_SESSION_MARGIN = 60.0  # refresh an orchestrator session this long before its token expires
_END = object()


@dataclass(slots=True)
class OrchestratorStatus:
    """What the gateway knows of one orchestrator."""

    url: str
    info: pb.OrchestratorInfo | None = None
    segments: int = 0
    failures: int = 0
    in_flight: int = 0
    last_error: str | None = None
    last_seconds: float = 0.0  # round trip of the last successful segment
    latencies: list[float] = field(default_factory=list)


class TranscodeDispatcher:
    """Source segments in, rendition segments out, through orchestrators."""

    def __init__(self, hub: Hub, orchestrators: Sequence[OrchestratorClient],
                 profiles: Sequence[VideoProfile], *, max_queue: int = 8) -> None:
        self.hub = hub
        self.clients = list(orchestrators)
        self.profiles = tuple(profiles)
        self.capabilities: Capabilities = job_capabilities(self.profiles)
        self.max_queue = max_queue
        self.status = {c.url: OrchestratorStatus(c.url) for c in self.clients}
        self.dropped = 0
        self.failed_segments = 0
        self._queues: dict[str, asyncio.Queue[object]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._gap: set[str] = set()
        self._next = 0

    async def run(self, subscription: Subscription) -> None:
        """Consume source segments and stream ends until cancelled."""
        try:
            while True:
                event = await subscription.get()
                if isinstance(event, StreamEnded):
                    if event.rendition == "source":
                        self._enqueue(event.stream_id, _END)
                elif event.rendition == "source":
                    self._enqueue(event.stream_id, event)
        finally:
            subscription.close()
            for task in self._workers.values():
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    def _enqueue(self, stream_id: str, item: object) -> None:
        queue = self._queues.get(stream_id)
        if queue is None:
            queue = asyncio.Queue()
            self._queues[stream_id] = queue
            self._workers[stream_id] = asyncio.create_task(self._worker(stream_id, queue))
        if isinstance(item, Segment) and queue.qsize() >= self.max_queue:
            # Falling behind: transcoding a stale segment helps nobody; skip the oldest.
            old = queue.get_nowait()
            if isinstance(old, Segment):
                self.dropped += 1
                self._gap.add(stream_id)
                log.warning("stream %s: renditions fell behind; skipped seq %d", stream_id, old.seq)
            else:
                queue.put_nowait(old)
        queue.put_nowait(item)

    async def _worker(self, stream_id: str, queue: asyncio.Queue[object]) -> None:
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    for profile in self.profiles:
                        self.hub.publish(StreamEnded(stream_id, profile.name))
                    self._gap.discard(stream_id)
                    if queue.empty():
                        break
                    continue
                assert isinstance(item, Segment)
                await self._process(item)
        finally:
            if self._queues.get(stream_id) is queue:
                del self._queues[stream_id]
                del self._workers[stream_id]

    async def _process(self, segment: Segment) -> None:
        _, total = segment_deadlines(segment.duration_seconds)
        deadline = time.monotonic() + total
        errors: list[str] = []
        for client in self._order():
            if time.monotonic() >= deadline:
                break
            try:
                outputs = await asyncio.wait_for(self._try(client, segment), deadline - time.monotonic())
            except (StreamgwError, TimeoutError) as exc:
                text = str(exc) or "timed out"
                st = self.status[client.url]
                st.failures += 1
                st.last_error = text
                if isinstance(exc, (OrchestratorError, LivepeerError)):
                    st.info = None  # start a fresh session next time
                errors.append(text)
                log.warning("stream %s seq %d: %s", segment.stream_id, segment.seq, text)
                continue
            discontinuity = segment.discontinuity or segment.stream_id in self._gap
            self._gap.discard(segment.stream_id)
            for profile, data in zip(self.profiles, outputs, strict=True):
                self.hub.publish(Segment(segment.stream_id, segment.seq, profile.name, segment.start_pts,
                                         segment.duration, segment.time_base, data, discontinuity))
            return
        self.failed_segments += 1
        self._gap.add(segment.stream_id)
        log.error("stream %s seq %d: no orchestrator transcoded it (%s); the source keeps playing",
                  segment.stream_id, segment.seq, "; ".join(errors) or "no orchestrators")

    def _order(self) -> list[OrchestratorClient]:
        """Orchestrators to try, rotating the first so the load spreads."""
        if not self.clients:
            return []
        start = self._next % len(self.clients)
        self._next += 1
        return self.clients[start:] + self.clients[:start]

    async def _session(self, client: OrchestratorClient) -> pb.OrchestratorInfo:
        st = self.status[client.url]
        info = st.info
        if info is None or info.auth_token.expiration - time.time() < _SESSION_MARGIN:
            info = await client.get_orchestrator(self.capabilities)
            st.info = info
        return info

    async def _try(self, client: OrchestratorClient, segment: Segment) -> list[bytes]:
        st = self.status[client.url]
        st.in_flight += 1
        started = time.monotonic()
        try:
            info = await self._session(client)
            meta = SegMetadata(
                manifest_id=segment.stream_id.encode(),
                seq=segment.seq,
                seg_hash=keccak256(segment.data),
                profiles=self.profiles,
                duration_ms=duration_ms(segment.duration, segment.time_base),
                capabilities=self.capabilities,
                auth_token=AuthToken.from_proto(info.auth_token),
            )
            answer = await client.submit(info, meta, segment.data, segment.duration_seconds)
            if answer.result.HasField("info"):
                st.info = answer.result.info
            renditions = result_renditions(answer.result)
            if len(renditions) != len(self.profiles):
                raise OrchestratorError(
                    f"{client.url}: {len(renditions)} renditions for {len(self.profiles)} profiles"
                )
            _, total = segment_deadlines(segment.duration_seconds)
            outputs = await asyncio.gather(*(client.download(r.url, total) for r in renditions))
        finally:
            st.in_flight -= 1
        st.segments += 1
        st.last_error = None
        st.last_seconds = time.monotonic() - started
        return list(outputs)

    async def close(self) -> None:
        """Close every orchestrator connection."""
        for client in self.clients:
            await client.close()
