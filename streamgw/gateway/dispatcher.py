"""Sends source segments to orchestrators in parallel and publishes their renditions in order.

Per stream, up to ``max_in_flight`` segments are out at once, each on the orchestrator that
selection ranks best at that moment (so concurrent segments spread over orchestrators). Each
segment has a deadline scaled by its duration (go-livepeer: whole call within
max(8 s, 4 x duration)). Each failure is charged to whoever caused it, by exception type:

* the orchestrator's fault (:class:`OrchestratorError`: timeout, connection error, HTTP error,
  a failed result, missing renditions, or, from an on-chain orchestrator, renditions its signature
  does not cover: :class:`BadRenditionSignature`) suspends it, and the segment is retried on
  another while its deadline allows;
* busy (:class:`OrchestratorBusy`): no suspension; another is tried, and when every one is full
  (it refused, or holds as many of this gateway's segments as its advertised capacity) the
  segment waits for capacity (the oldest waiter is woken when one of this gateway's attempts
  ends, else after a short backoff) for as long as its deadline still leaves time for a transcode;
* the segment's fault (:class:`SegmentRejected`: it does not decode, unsupported codec or pixel
  format): charged to the stream (``stream_error``), never to the orchestrator; not retried.

A stream without video is not sent at all: its source plays alone and ``stream_error`` says why.
Results are reassembled in seq order; a segment that is truly lost becomes a gap, and the next
rendition segment carries ``discontinuity``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from streamgw.errors import (
    BadRenditionSignature,
    OrchestratorBusy,
    OrchestratorError,
    SegmentRejected,
    SignatureError,
    StreamgwError,
)
from streamgw.gateway.discovery import OrchestratorPool
from streamgw.gateway.hub import Hub, StreamEnded, Subscription
from streamgw.gateway.selection import SelectionPolicy, select
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import job_capabilities
from streamgw.livepeer.client import segment_deadlines
from streamgw.livepeer.profiles import VideoProfile
from streamgw.livepeer.segdata import (
    AuthToken,
    SegMetadata,
    duration_ms,
    result_renditions,
    result_signer_address,
    verify_rendition_hashes,
)
from streamgw.livepeer.signing import ZERO_ADDRESS, checksum_address, keccak256_off_loop
from streamgw.payments.sender import segment_fee_pixels
from streamgw.payments.sender_service import Payer
from streamgw.segment import Segment

log = logging.getLogger(__name__)

ATTEMPT_FLOOR = 3.0  # seconds: the least an attempt gets when a retry elsewhere is possible
ATTEMPT_SLACK = 3.0  # times an orchestrator's usual round trip before trying another
BUSY_BACKOFF = 0.1  # seconds: first wait when every orchestrator is busy; doubles per round
BUSY_BACKOFF_MAX = 1.0
BUSY_SLACK = 2.0  # a busy wait leaves the deadline at least this many usual round trips
BUSY_MIN_LEFT = 1.0  # seconds a busy wait always leaves for the transcode itself
MAX_ERROR_TEXT = 1000  # characters of a segment's collected errors kept for the API
NO_VIDEO = "not transcoded: the stream has no video"

Outcome = Literal["ok", "failed", "busy", "rejected", "abandoned"]
"""How one attempt ended: renditions, the orchestrator's failure, busy, the segment's fault, or cancelled."""

HasVideo = Callable[[str], bool | None]
"""Whether a stream (by name) carries video: False stops its segments being sent; None: not known yet."""


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Parallelism and backlog bounds."""

    max_in_flight: int = 4
    max_backlog: int = 8  # segments waiting for a slot; beyond this the oldest is given up


class DispatchObserver:
    """Hooks for metrics, called on the event loop."""

    def on_attempt(self, orchestrator: str, outcome: Outcome, seconds: float) -> None:
        """One attempt on ``orchestrator`` ended with ``outcome`` after ``seconds``."""

    def on_transcoded(self, ok: bool, seconds: float) -> None:
        """A segment's renditions were published (``ok``) or given up, ``seconds`` after it was cut."""


@dataclass(slots=True)
class _DispatchedStream:
    """What the dispatcher holds per stream: its in-flight slots and reassembly state."""

    stream_id: str
    slots: asyncio.Semaphore
    next_seq: int | None = None
    done: dict[int, tuple[Segment, list[bytes] | None]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    waiting: int = 0
    gap: bool = False
    ended: bool = False
    last_error: str | None = None
    skipped: int = 0  # segments not sent (no video)
    rendition: str = "source"  # what its ladder is made from ("ai": the live AI output)


class Dispatcher:
    """Source segments in, rendition segments out, through a pool of orchestrators."""

    def __init__(self, hub: Hub, pool: OrchestratorPool, profiles: Sequence[VideoProfile],
                 settings: DispatchSettings, policy: SelectionPolicy | None = None,
                 observer: DispatchObserver | None = None, rng: random.Random | None = None,
                 has_video: HasVideo | None = None, input_rendition: Callable[[str], str] | None = None,
                 payments: Payer | None = None) -> None:
        self.hub = hub
        self.payments = payments  # on-chain: pays every segment; None: offchain (an empty Livepeer-Payment)
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
        self.has_video: HasVideo = has_video or (lambda _: None)
        # Which rendition of a stream the ladder is made from, asked at its first segment:
        # "source", or "ai" for a stream through a live AI pipeline (its AI output is transcoded).
        self.input_rendition: Callable[[str], str] = input_rendition or (lambda _: "source")
        self.streams: dict[str, _DispatchedStream] = {}
        self.lost = 0
        self.late = 0
        self.given_up = 0
        self.rejected = 0  # segments orchestrators blamed on the segment itself
        self.busy_refusals = 0  # attempts refused as busy, all orchestrators (each one's: its pool record)
        # Segments waiting for capacity, oldest first: each attempt that ends wakes one.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def stream_error(self, stream_id: str) -> str | None:
        """Why the last segment of ``stream_id`` got no renditions, if it did not (or why none is sent)."""
        state = self.streams.get(stream_id)
        return state.last_error if state else None

    async def run(self, subscription: Subscription) -> None:
        """Consume source (or AI output) segments and their ends until cancelled."""
        try:
            while True:
                event = await subscription.get()
                state = self.streams.get(event.stream_id)
                if state is not None and state.ended:
                    state = None
                wanted = state.rendition if state is not None else self.input_rendition(event.stream_id)
                if event.rendition != wanted:
                    continue
                if isinstance(event, StreamEnded):
                    if state is not None:
                        self._track(state, self._finish(state))
                else:
                    self._submit(event, wanted)
        finally:
            subscription.close()
            tasks = [t for s in self.streams.values() for t in s.tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _track(self, state: _DispatchedStream, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def _submit(self, segment: Segment, rendition: str = "source") -> None:
        state = self.streams.get(segment.stream_id)
        if state is None or state.ended:
            state = _DispatchedStream(segment.stream_id, asyncio.Semaphore(self.settings.max_in_flight),
                                      rendition=rendition)
            self.streams[segment.stream_id] = state
        if self.has_video(segment.stream_id) is False:
            # Nothing to transcode: the source plays alone, and the API says why.
            if state.skipped == 0:
                log.info("stream %s: %s; the source plays alone", segment.stream_id, NO_VIDEO)
            state.skipped += 1
            state.last_error = NO_VIDEO
            if state.next_seq is not None:  # video earlier in this stream: a gap in its renditions
                state.done[segment.seq] = (segment, None)
                self._flush(state)
            return
        if state.next_seq is None:
            state.next_seq = segment.seq
        self._track(state, self._segment(state, segment, time.monotonic()))

    async def _segment(self, state: _DispatchedStream, segment: Segment, cut_at: float) -> None:
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
        except SegmentRejected as exc:
            self._segment_rejected(state, segment, str(exc), cut_at)
            return
        finally:
            state.slots.release()
        self._complete(state, segment, outputs, error, cut_at)

    def _complete(self, state: _DispatchedStream, segment: Segment, outputs: list[bytes] | None,
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

    def _segment_rejected(self, state: _DispatchedStream, segment: Segment, error: str, cut_at: float) -> None:
        """The segment's own fault: counted against its stream, not the orchestrator."""
        self.rejected += 1
        self._complete(state, segment, None, f"segment {segment.seq} cannot be transcoded: {error}", cut_at)

    def _flush(self, state: _DispatchedStream) -> None:
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

    async def _finish(self, state: _DispatchedStream) -> None:
        """After the source ends: wait for segments in flight, then end every rendition."""
        state.ended = True
        current = asyncio.current_task()
        pending = [t for t in state.tasks if t is not current]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for profile in self.profiles:
            self.hub.publish(StreamEnded(state.stream_id, profile.name))

    async def _transcode(self, segment: Segment) -> tuple[list[bytes] | None, str | None]:
        """Try orchestrators in selection order until one succeeds or the deadline passes.

        Raises :class:`SegmentRejected` when an orchestrator blames the segment itself.
        """
        _, total = segment_deadlines(segment.duration_seconds)
        deadline = time.monotonic() + total
        tried: set[str] = set()  # failed this segment: not again
        busy: set[str] = set()  # refused it as busy since the last wait
        errors: dict[str, None] = {}  # distinct texts, in order
        backoff = BUSY_BACKOFF
        while True:
            remaining = deadline - time.monotonic()
            left = [c for c in select(self.pool.candidates(), self.policy, self.rng) if c.url not in tried]
            # Full: refused this segment as busy, or already holding as many of this gateway's
            # segments as the capacity it advertises (sending more would only be refused).
            full = [c for c in left if c.url in busy or c.in_flight >= c.capacity]
            ranked = [c for c in left if c.url not in busy and c.in_flight < c.capacity]
            if not ranked and full:
                # Every orchestrator left is full: wait for capacity, as long as the deadline
                # still leaves room for the transcode itself, then ask them again.
                known = [c.latency for c in full if c.latency is not None]
                usual = min(known) * segment.duration_seconds if known else segment.duration_seconds
                wait = min(backoff, remaining - max(BUSY_MIN_LEFT, BUSY_SLACK * usual))
                if wait <= 0:
                    errors[f"every orchestrator stayed busy within the segment deadline ({total:.0f} s)"] = None
                    break
                await self._wait_for_capacity(wait)
                backoff = min(BUSY_BACKOFF_MAX, 2 * backoff)
                busy.clear()
                continue
            if remaining <= 0.05 or not ranked:
                break
            best = ranked[0]
            url = best.url
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
                tried.add(url)
                if budget >= remaining:
                    self.late += 1
                text = f"{url}: no result within {budget:.1f} s (segment deadline {total:.0f} s)"
                self._fail(url, text, forget=False, started=started)
                errors[text] = None
                continue
            except OrchestratorBusy as exc:
                # Full, not failing: try another now, without suspending this one.
                busy.add(url)
                self.busy_refusals += 1
                self.pool.busy(url)
                self._ended(url, "busy", started)
                errors[str(exc)] = None
                continue
            except SegmentRejected:
                # The segment's fault: the orchestrator did its job. Another would say the same.
                self.pool.rejected(url)
                self._ended(url, "rejected", started)
                raise
            except StreamgwError as exc:
                # Any refusal or broken connection may mean a restarted orchestrator whose
                # sessions are gone: start a fresh one when it is next tried.
                tried.add(url)
                self._fail(url, str(exc), forget=True, started=started)
                errors[str(exc)] = None
                continue
            except Exception as exc:
                # Not translated at the boundary (a bug): still the attempt's end, so the
                # orchestrator's in-flight count stays right; charged to it, and logged.
                log.exception("attempt on %s for stream %s seq %d", url, segment.stream_id, segment.seq)
                tried.add(url)
                self._fail(url, f"{url}: {type(exc).__name__}: {exc}", forget=True, started=started)
                errors[f"{url}: {type(exc).__name__}"] = None
                continue
            except BaseException:
                self.pool.abandoned(url)  # cancelled: no outcome, but no longer in flight
                self._ended(url, "abandoned", started)
                raise
            seconds = time.monotonic() - started
            self.pool.succeeded(url, seconds, segment.duration_seconds)
            self._ended(url, "ok", started)
            return outputs, None
        if not errors:
            suspended = [c.url for c in self.pool.candidates() if c.suspended]
            reason = "no orchestrator available" + (f" ({len(suspended)} suspended after failures)"
                                                    if suspended else "")
            if self.pool.last_discovery_error:
                reason += f"; {self.pool.last_discovery_error}"
            return None, reason
        return None, "; ".join(errors)[:MAX_ERROR_TEXT]

    async def _wait_for_capacity(self, timeout: float) -> None:
        """Until an attempt of this gateway ends (one waiter per ending, oldest first) or ``timeout``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:  # already woken
                pass

    def _ended(self, url: str, outcome: Outcome, started: float) -> None:
        """An attempt ended: tell the observer; if it held a slot, wake the oldest segment waiting for one."""
        self.observer.on_attempt(url, outcome, time.monotonic() - started)
        if outcome == "busy":  # a refusal frees nothing
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _fail(self, url: str, text: str, *, forget: bool, started: float) -> None:
        penalty = self.pool.failed(url, text, forget_info=forget)
        self._ended(url, "failed", started)
        log.warning("%s (suspended %.0f s)", text, penalty)

    async def _attempt(self, url: str, segment: Segment) -> list[bytes]:
        client = self.pool.records[url].client
        info = await self.pool.orchestrator_info(url)
        meta = SegMetadata(
            manifest_id=segment.stream_id.encode(),
            seq=segment.seq,
            seg_hash=await keccak256_off_loop(segment.data),
            profiles=self.profiles,
            duration_ms=duration_ms(segment.duration, segment.time_base),
            capabilities=self.policy.job,
            auth_token=AuthToken.from_proto(info.auth_token),
        )
        # Paid for first (on-chain): the tickets cover this segment's fee less the credit held there.
        staged = self.payments.stage(url, info, segment_fee_pixels(self.profiles, segment.duration_seconds),
                                     stream=segment.stream_id) if self.payments is not None else None
        # Raises the result's error as its type: OrchestratorBusy, SegmentRejected, OrchestratorError.
        try:
            answer = await client.submit(info, meta, segment.data, segment.duration_seconds,
                                         payment=staged.header if staged is not None else "")
        except BaseException:
            if staged is not None and self.payments is not None:
                self.payments.settle(staged, accepted=False)
            raise
        if staged is not None and self.payments is not None:
            self.payments.settle(staged, accepted=True)
        if answer.result.HasField("info"):
            self.pool.update_info(url, answer.result.info)
        renditions = result_renditions(answer.result)
        if len(renditions) != len(self.profiles):
            raise OrchestratorError(f"{url}: {len(renditions)} renditions for {len(self.profiles)} profiles")
        _, total = segment_deadlines(segment.duration_seconds)
        outputs = list(await asyncio.gather(*(client.download(r.url, total) for r in renditions)))
        await _check_signature(url, info, outputs, answer.result.data.sig)
        return outputs

    async def close(self) -> None:
        """Close the orchestrator connections."""
        await self.pool.close()


async def _check_signature(url: str, info: pb.OrchestratorInfo, outputs: Sequence[bytes], sig: bytes) -> None:
    """An on-chain orchestrator's results carry its signature over the renditions; offchain ones none.

    Raises :class:`BadRenditionSignature` when the renditions fetched are not the ones it signed.
    """
    address = result_signer_address(info)
    if address == ZERO_ADDRESS:
        return
    hashes = await asyncio.gather(*(keccak256_off_loop(o) for o in outputs))
    try:
        verify_rendition_hashes(address, hashes, sig)
    except SignatureError as exc:
        raise BadRenditionSignature(f"{url}: renditions not signed by {checksum_address(address)}: {exc}") from exc
