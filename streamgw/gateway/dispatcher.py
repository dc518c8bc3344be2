"""Sends source segments to orchestrators in parallel and publishes their renditions in order.

Per stream, up to ``max_in_flight`` segments are out at once, each on the orchestrator that
selection ranks best at that moment (so concurrent segments spread over orchestrators). Each
segment has a deadline scaled by its duration (go-livepeer: whole call within
max(8 s, 4 x duration)); a failed attempt (timeout, connection error, HTTP error or
``TranscodeResult.error``) suspends that orchestrator and the segment is retried on another
while its deadline allows. Results are reassembled in seq order; a segment that is truly lost
becomes a gap, and the next rendition segment carries ``discontinuity``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamgw.errors import OrchestratorBusy, OrchestratorError, StreamgwError
from streamgw.gateway.discovery import OrchestratorPool
from streamgw.gateway.hub import Hub, StreamEnded, Subscription
from streamgw.gateway.selection import SelectionPolicy, select
from streamgw.livepeer.capabilities import job_capabilities
from streamgw.livepeer.client import segment_deadlines
from streamgw.livepeer.profiles import VideoProfile
from streamgw.livepeer.segdata import AuthToken, SegMetadata, duration_ms, result_renditions
from streamgw.livepeer.signing import keccak256_off_loop
from streamgw.segment import Segment

log = logging.getLogger(__name__)

# TranscodeResult.error texts that mean "full", not "broken" (go-livepeer server/broadcast.go).
BUSY_ERRORS = frozenset({"OrchestratorBusy", "OrchestratorCapped"})
ATTEMPT_FLOOR = 3.0  # seconds: the least an attempt gets when a retry elsewhere is possible
ATTEMPT_SLACK = 3.0  # times an orchestrator's usual round trip before trying another


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Parallelism and backlog bounds."""

    max_in_flight: int = 4
    max_backlog: int = 8  # segments waiting for a slot; beyond this the oldest is given up


class DispatchObserver:
    """Hooks for metrics, called on the event loop."""

    def on_attempt(self, orchestrator: str, ok: bool, seconds: float) -> None:
        """One attempt on ``orchestrator`` ended."""

    def on_transcoded(self, ok: bool, seconds: float) -> None:
        """A segment's renditions were published (``ok``) or given up, ``seconds`` after it was cut."""


@dataclass(slots=True)
class _StreamState:
    stream_id: str
    slots: asyncio.Semaphore
    next_seq: int | None = None
    done: dict[int, tuple[Segment, list[bytes] | None]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    waiting: int = 0
    gap: bool = False
    ended: bool = False
    last_error: str | None = None


class Dispatcher:
    """Source segments in, rendition segments out, through a pool of orchestrators."""

    def __init__(self, hub: Hub, pool: OrchestratorPool, profiles: Sequence[VideoProfile],
                 settings: DispatchSettings, policy: SelectionPolicy | None = None,
                 observer: DispatchObserver | None = None, rng: random.Random | None = None) -> None:
        self.hub = hub
        self.pool = pool
        self.profiles = tuple(profiles)
        self.settings = settings
        job = job_capabilities(self.profiles)
        self.policy = policy if policy is not None else SelectionPolicy()
        if not self.policy.job.ids:
            self.policy = SelectionPolicy(job, self.policy.max_price, self.policy.max_price_per_capability,
                                          self.policy.include, self.policy.exclude, self.policy.explore,
                                          self.policy.allow_unknown)
        self.pool.job = self.policy.job
        self.observer = observer or DispatchObserver()
        self.rng = rng or random.Random()
        self.streams: dict[str, _StreamState] = {}
        self.lost = 0
        self.late = 0
        self.given_up = 0

    def stream_error(self, stream_id: str) -> str | None:
        """Why the last segment of ``stream_id`` got no renditions, if it did not."""
        state = self.streams.get(stream_id)
        return state.last_error if state else None

    async def run(self, subscription: Subscription) -> None:
        """Consume source segments and stream ends until cancelled."""
        try:
            while True:
                event = await subscription.get()
                if isinstance(event, StreamEnded):
                    if event.rendition == "source" and event.stream_id in self.streams:
                        self._track(self.streams[event.stream_id], self._finish(self.streams[event.stream_id]))
                elif event.rendition == "source":
                    self._submit(event)
        finally:
            subscription.close()
            tasks = [t for s in self.streams.values() for t in s.tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _track(self, state: _StreamState, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def _submit(self, segment: Segment) -> None:
        state = self.streams.get(segment.stream_id)
        if state is None or state.ended:
            state = _StreamState(segment.stream_id, asyncio.Semaphore(self.settings.max_in_flight))
            self.streams[segment.stream_id] = state
        if state.next_seq is None:
            state.next_seq = segment.seq
        self._track(state, self._segment(state, segment, time.monotonic()))

    async def _segment(self, state: _StreamState, segment: Segment, cut_at: float) -> None:
        if state.waiting >= self.settings.max_backlog:
            # Too far behind: give this segment up rather than grow the backlog.
            self.given_up += 1
            self._complete(state, segment, None, "renditions fell behind: segment skipped", cut_at)
            return
        state.waiting += 1
        try:
            await state.slots.acquire()
        finally:
            state.waiting -= 1
        try:
            outputs, error = await self._transcode(segment)
        finally:
            state.slots.release()
        self._complete(state, segment, outputs, error, cut_at)

    def _complete(self, state: _StreamState, segment: Segment, outputs: list[bytes] | None,
                  error: str | None, cut_at: float) -> None:
        state.done[segment.seq] = (segment, outputs)
        self.observer.on_transcoded(outputs is not None, time.monotonic() - cut_at)
        if outputs is None:
            self.lost += 1
            state.last_error = error
            log.error("stream %s seq %d: no renditions (%s); the source keeps playing",
                      segment.stream_id, segment.seq, error)
        else:
            state.last_error = None
        self._flush(state)

    def _flush(self, state: _StreamState) -> None:
        """Publish finished segments in seq order; a lost one leaves a gap."""
        while state.next_seq is not None and state.next_seq in state.done:
            segment, outputs = state.done.pop(state.next_seq)
            state.next_seq += 1
            if outputs is None:
                state.gap = True
                continue
            discontinuity = segment.discontinuity or state.gap
            state.gap = False
            for profile, data in zip(self.profiles, outputs, strict=True):
                self.hub.publish(Segment(segment.stream_id, segment.seq, profile.name, segment.start_pts,
                                         segment.duration, segment.time_base, data, discontinuity))

    async def _finish(self, state: _StreamState) -> None:
        """After the source ends: wait for segments in flight, then end every rendition."""
        state.ended = True
        current = asyncio.current_task()
        pending = [t for t in state.tasks if t is not current]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for profile in self.profiles:
            self.hub.publish(StreamEnded(state.stream_id, profile.name))

    async def _transcode(self, segment: Segment) -> tuple[list[bytes] | None, str | None]:
        """Try orchestrators in selection order until one succeeds or the deadline passes."""
        _, total = segment_deadlines(segment.duration_seconds)
        deadline = time.monotonic() + total
        tried: set[str] = set()
        errors: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            ranked = [c for c in select(self.pool.candidates(), self.policy, self.rng) if c.url not in tried]
            if remaining <= 0.05 or not ranked:
                break
            best = ranked[0]
            url = best.url
            tried.add(url)
            budget = remaining
            if len(ranked) > 1 and best.latency is not None:
                # Another orchestrator could take over: give this one a few times what it
                # usually needs, so one that hangs after accepting leaves room for a retry.
                budget = min(remaining, max(ATTEMPT_FLOOR, ATTEMPT_SLACK * best.latency * segment.duration_seconds))
            self.pool.started(url)
            started = time.monotonic()
            try:
                outputs = await asyncio.wait_for(self._attempt(url, segment), budget)
            except TimeoutError:
                if budget >= remaining:
                    self.late += 1
                text = f"{url}: no result within {budget:.1f} s (segment deadline {total:.0f} s)"
                self._fail(url, text, forget=False, started=started)
                errors.append(text)
                continue
            except OrchestratorBusy as exc:
                # Full, not failing: try another now, without suspending this one.
                self.pool.busy(url)
                self.observer.on_attempt(url, False, time.monotonic() - started)
                errors.append(str(exc))
                continue
            except StreamgwError as exc:
                # Any refusal or broken connection may mean a restarted orchestrator whose
                # sessions are gone: start a fresh one when it is next tried.
                self._fail(url, str(exc), forget=True, started=started)
                errors.append(str(exc))
                continue
            seconds = time.monotonic() - started
            self.pool.succeeded(url, seconds, segment.duration_seconds)
            self.observer.on_attempt(url, True, seconds)
            return outputs, None
        if not errors:
            suspended = [c.url for c in self.pool.candidates() if c.suspended]
            reason = "no orchestrator available" + (f" ({len(suspended)} suspended after failures)"
                                                    if suspended else "")
            if self.pool.last_discovery_error:
                reason += f"; {self.pool.last_discovery_error}"
            return None, reason
        return None, "; ".join(errors)

    def _fail(self, url: str, text: str, *, forget: bool, started: float) -> None:
        penalty = self.pool.failed(url, text, forget_session=forget)
        self.observer.on_attempt(url, False, time.monotonic() - started)
        log.warning("%s (suspended %.0f s)", text, penalty)

    async def _attempt(self, url: str, segment: Segment) -> list[bytes]:
        client = self.pool.records[url].client
        info = await self.pool.session(url)
        meta = SegMetadata(
            manifest_id=segment.stream_id.encode(),
            seq=segment.seq,
            seg_hash=await keccak256_off_loop(segment.data),
            profiles=self.profiles,
            duration_ms=duration_ms(segment.duration, segment.time_base),
            capabilities=self.policy.job,
            auth_token=AuthToken.from_proto(info.auth_token),
        )
        answer = await client.submit(info, meta, segment.data, segment.duration_seconds)
        if answer.result.HasField("info"):
            self.pool.update_info(url, answer.result.info)
        if answer.result.WhichOneof("result") == "error" and answer.result.error in BUSY_ERRORS:
            raise OrchestratorBusy(f"{url}: {answer.result.error}")
        renditions = result_renditions(answer.result)
        if len(renditions) != len(self.profiles):
            raise OrchestratorError(f"{url}: {len(renditions)} renditions for {len(self.profiles)} profiles")
        _, total = segment_deadlines(segment.duration_seconds)
        return list(await asyncio.gather(*(client.download(r.url, total) for r in renditions)))

    async def close(self) -> None:
        """Close the orchestrator connections."""
        await self.pool.close()
