"""Live AI on the gateway (capability 35; WIRE.md §10.1-10.3): a stream's source segments go
through a live video-to-video pipeline on an orchestrator and come back as the rendition ``ai``.

Per stream, one :class:`LiveAiSession`: it selects an orchestrator (:func:`select_live`: those
advertising the pipeline's model, warm first, then GetOrchestrator round trip, then price), makes
the start call, and runs an *attempt* on it with five tasks:

* **input**: each source segment published to ``{mid}`` as its own trickle seq, at most
  ``max_in_flight`` (3) POSTs open; a fourth segment while three are still being written means
  the orchestrator is too slow: it is suspended and the stream swaps;
* **output**: each segment of ``{mid}-out`` read, its timing read from the bytes
  (:mod:`streamgw.media.ts_timing`), published to the hub as ``ai`` with its own gap-free seq;
* **events**: ``{mid}-events`` read; the last ``status`` event is the stream's status;
* **control**: the latest parameters first (after a swap), each ``/update`` as one message, and
  ``{"keep":"alive"}`` every 10 s;
* **watchdog**: no event for 30 s stops the attempt; no output for 30 s while input is flowing
  suspends the orchestrator and stops it.

A stopped attempt (those watchdogs, a broken connection, a closed channel) swaps the stream to
another orchestrator while its input lives: a new start call and four new channels, and the next
``ai`` segment is a discontinuity; the output goes on. Swaps are capped as go-livepeer caps
them: one less than 3 min after the previous (or the start) counts, a later one restarts the
count, and a count above 2 ends the stream's AI (``Too many swaps``) while its source plays on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from streamgw.errors import (
    LiveAiRefused,
    MediaError,
    NoLiveOrchestrator,
    OrchestratorBusy,
    OrchestratorError,
    SignerError,
    StreamgwError,
    TicketParamsRefused,
    TrickleClosed,
    TrickleError,
)
from streamgw.gateway.discovery import OrchestratorPool
from streamgw.gateway.hub import Hub, StreamEnded, Subscription
from streamgw.gateway.live_request import MAX_PARAMS, LiveRequest, parse_query
from streamgw.gateway.selection import SelectionPolicy, live_models, select_live
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.client import LiveChannels, OrchestratorClient
from streamgw.media.ts_timing import segment_timing
from streamgw.payments.remote_signer import REFRESH_SESSION, RemoteSignerClient, SignerRefusal
from streamgw.payments.sender import LIVE_PIXELS_PER_SECOND, LIVE_PREPAY_PIXELS
from streamgw.payments.sender_service import Payer
from streamgw.segment import Segment
from streamgw.trickle.client import PublishedSegment, TricklePublisher, TrickleSubscriber

log = logging.getLogger(__name__)

class OutputFeed(Protocol):
    """Where a stream's AI output goes piece by piece as it arrives (the node's: a WHEP relay)."""

    def begin(self) -> None: ...

    def feed(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def close(self) -> None: ...


StreamParts = Callable[[str, Callable[[int, bytes, bool], None] | None], None]
"""``(stream, on_part)``: have the stream's publisher call ``on_part(seq, data, first)`` for every
piece of each segment as it is cut (None: stop); the node's, over its publishers."""

AI_RENDITION = "ai"
KEEPALIVE = b'{"keep":"alive"}'  # go-livepeer's exact bytes
MAX_EVENT_BYTES = 64 * 1024
CLOSE_TIMEOUT = 2.0  # seconds for the DELETEs that end a stream on an orchestrator
RETRY_PAUSE = 2.0  # seconds before selecting again when no orchestrator could take the stream


@dataclass(frozen=True)
class LiveAiSettings:
    """go-livepeer's constants (WIRE.md §10.6), settable for tests."""

    max_in_flight: int = 3  # input segments being written at once
    start_budget: float = 2.0  # seconds of selection tries (checked between tries)
    max_tries: int = 20
    tries_per_orchestrator: int = 3
    events_timeout: float = 30.0
    output_timeout: float = 30.0
    keepalive: float = 10.0
    swap_window: float = 180.0
    max_swaps: int = 2
    suspend_seconds: float = 300.0  # a slow or stalled orchestrator
    max_output_bytes: int = 32 * 1024 * 1024  # one output segment
    max_backlog: int = 8  # input segments waiting for the orchestrator; beyond, the oldest is dropped
    status_retention: float = 60.0  # seconds a finished stream's status stays readable
    runner_version: str = ""
    payment_interval: float = 5.0  # seconds between live payments (on-chain)


@dataclass(frozen=True, slots=True)
class _Part:
    """A piece of a source segment being cut."""

    seq: int
    data: bytes
    first: bool


class _StopOrchestrator(StreamgwError):
    """This attempt is over: ``suspend`` when the orchestrator is to blame for being slow or stalled."""

    def __init__(self, reason: str, *, suspend: bool = False) -> None:
        super().__init__(reason)
        self.suspend = suspend


@dataclass
class _Attempt:
    """One orchestrator running the stream."""

    url: str
    client: OrchestratorClient
    channels: LiveChannels
    http: httpx.AsyncClient
    started: float
    address: str
    control: asyncio.Queue[bytes]
    last_event: float = 0.0
    last_output: float = 0.0
    last_input: float = 0.0
    sent: int = 0  # input segments published
    received: int = 0  # output segments read
    info: pb.OrchestratorInfo | None = None  # its latest quote (a live payment's result brings a new one)
    billed: float = 0.0  # the last instant paid for (monotonic); on-chain only
    paying: asyncio.Task[None] | None = None


class LiveAiSession:
    """One stream's live AI, across orchestrators."""

    def __init__(self, live: LiveAi, stream: str, request: LiveRequest) -> None:
        self.live = live
        self.stream = stream
        self.request = request
        self.request_id = secrets.token_hex(4)
        self.stream_id = request.stream_id or stream
        self.params_cache: bytes | None = None  # the latest /update body: sent first after a swap
        self.attempt: _Attempt | None = None
        self.status_event: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.input_ended = False
        self.swaps = 0  # chained within the window
        self.swaps_total = 0
        self.segments_in = 0
        self.segments_out = 0
        self.segments_dropped = 0
        self.orchestrators: list[str] = []
        self._inputs: collections.deque[Segment | _Part] = collections.deque()
        self._input_ready = asyncio.Event()
        self._out_seq = 0
        self._discontinuity = False
        self._last_start = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.output: OutputFeed | None = None

    # --- from the gateway ---

    def feed(self, segment: Segment) -> None:
        """A whole source segment for the orchestrator (it ends the pieces streamed of it, or goes
        whole). While no orchestrator runs the stream, past the backlog the oldest is dropped."""
        if self.attempt is None:
            self._inputs = collections.deque(i for i in self._inputs if isinstance(i, Segment))
            if len(self._inputs) >= self.live.settings.max_backlog:
                self._inputs.popleft()
                self.segments_dropped += 1
        self._inputs.append(segment)
        self._input_ready.set()

    def part(self, seq: int, data: bytes, first: bool) -> None:
        """A piece of source segment ``seq`` as it is cut (``first``: its first piece): streamed to
        the orchestrator at once. Dropped while no orchestrator runs the stream (the whole
        segment follows as :meth:`feed`)."""
        if self.attempt is not None:
            self._inputs.append(_Part(seq, data, first))
            self._input_ready.set()

    def end_input(self) -> None:
        """The source ended: what is in flight finishes, then the stream ends on the orchestrator."""
        self.input_ended = True
        self._input_ready.set()

    def update(self, body: bytes) -> None:
        """New parameters (a control message, forwarded as is); kept for the next orchestrator too."""
        self.params_cache = body
        if self.attempt is not None:
            self.attempt.control.put_nowait(body)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    # --- the session ---

    async def connect(self) -> None:
        """Select an orchestrator and start the stream on it; raises :class:`LiveAiRefused`
        (the request's fault) or :class:`NoLiveOrchestrator`."""
        live, settings = self.live, self.live.settings
        await live.pool.ensure_info()
        deadline = time.monotonic() + settings.start_budget
        tries: collections.Counter[str] = collections.Counter()
        errors: list[str] = []
        params = self.request.params
        for _ in range(settings.max_tries):
            ranked = [c for c in select_live(live.pool.candidates(), self.request.pipeline, live.policy,
                                             self.request.orchestrator)
                      if tries[c.url] < settings.tries_per_orchestrator]
            if not ranked:
                break
            url = ranked[0].url
            tries[url] += 1
            client = live.pool.records[url].client
            staged = None
            start_key = f"start-{self.request_id}"
            try:
                info = await live.pool.orchestrator_info(url)
                payment, creds = "", None
                if live.signer is not None:  # the remote signer pays (and signs the request)
                    payment, creds, info = await self._remote_payment(url, info, start_key)
                elif live.payments is not None:  # 60 s of 720p30 ahead, as go-livepeer's gateway prepays
                    staged = live.payments.stage(url, info, LIVE_PREPAY_PIXELS, stream=self.stream, key=start_key)
                    payment = staged.header
                channels = await client.start_live_video(
                    info, self.request.pipeline, params, request_id=self.request_id, stream_id=self.stream_id,
                    version=settings.runner_version, payment=payment, segment=creds)
                http = await client.http(channels.publish_url)
            except OrchestratorBusy as exc:
                tries[url] = settings.tries_per_orchestrator
                errors.append(str(exc))
            except LiveAiRefused:
                raise  # the request's fault: no other orchestrator would take it either
            except (OrchestratorError, TicketParamsRefused) as exc:
                live.pool.suspend(url, str(exc), settings.suspend_seconds)
                errors.append(str(exc))
                log.warning("stream %s: live AI start on %s failed: %s", self.stream, url, exc)
            else:
                if staged is not None and live.payments is not None:
                    live.payments.discard(staged)  # the prepayment never enters the local credit
                if live.signer is not None:
                    live.signer.rekey(url, start_key, channels.manifest_id)
                now = time.monotonic()
                address = "0x" + info.address.hex() if info.address else ""
                self.attempt = _Attempt(url, client, channels, http, now, address, asyncio.Queue(),
                                        last_event=now, last_output=now, last_input=now, info=info, billed=now)
                self.orchestrators.append(url)
                log.info("stream %s: live AI %s on %s (manifest %s, request %s)", self.stream,
                         self.request.pipeline, url, channels.manifest_id, self.request_id)
                return
            if time.monotonic() > deadline:
                break
        if not tries:
            offered = live_models(live.pool.candidates())
            if self.request.pipeline in offered:
                raise NoLiveOrchestrator(f"every orchestrator offering pipeline {self.request.pipeline!r} is "
                                         "suspended or excluded")
            raise not_offered(self.request.pipeline, offered)
        raise NoLiveOrchestrator(f"no orchestrator could start pipeline {self.request.pipeline!r}: "
                                 + "; ".join(errors[-3:]))

    async def run(self) -> None:
        """Attempts until the input ends, swapping on failure within the swap cap."""
        try:
            while self.attempt is not None:
                attempt = self.attempt
                try:
                    await self._run_attempt(attempt)
                    if self.input_ended:
                        return
                    raise _StopOrchestrator("the orchestrator ended the stream")
                except _StopOrchestrator as exc:
                    if exc.suspend:
                        self.live.pool.suspend(attempt.url, str(exc), self.live.settings.suspend_seconds)
                    reason = str(exc)
                finally:
                    self.attempt = None
                    await self._close_attempt(attempt)
                if self.input_ended:
                    return
                log.warning("stream %s: live AI on %s stopped (%s); swapping", self.stream, attempt.url, reason)
                self._note_error(f"{attempt.url}: {reason}")
                while self.attempt is None:
                    if not self._count_swap():
                        self._note_error("Too many swaps")
                        log.error("stream %s: live AI: too many swaps; the source plays on without AI", self.stream)
                        return
                    try:
                        await self.connect()
                    except NoLiveOrchestrator as exc:
                        log.warning("stream %s: live AI: %s; trying again", self.stream, exc)
                        await asyncio.sleep(RETRY_PAUSE)
                    except LiveAiRefused as exc:
                        self._note_error(str(exc))
                        log.error("stream %s: live AI cannot go on: %s", self.stream, exc)
                        return
                self._discontinuity = True
        finally:
            self.ended_at = time.time()
            if self.output is not None:
                self.output.close()
            self.live.hub.publish(StreamEnded(self.stream, AI_RENDITION))

    def _count_swap(self) -> bool:
        """go-livepeer's cap: False when this swap is one too many."""
        now = time.monotonic()
        self.swaps = self.swaps + 1 if now - self._last_start < self.live.settings.swap_window else 1
        self._last_start = now
        self.swaps_total += 1
        return self.swaps <= self.live.settings.max_swaps

    def _note_error(self, message: str) -> None:
        if self.error is None:  # go-livepeer keeps the first
            self.error = {"error_message": message, "error_time": int(time.time() * 1000)}

    async def _run_attempt(self, attempt: _Attempt) -> None:
        tasks = [asyncio.ensure_future(c) for c in (
            self._input(attempt), self._output(attempt), self._events(attempt), self._control(attempt),
            self._watchdog(attempt))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # The input task ends first when the source ends, once the output has caught up.
            if tasks[0] in done and tasks[0].exception() is None:
                return
            for task in done:
                exc = task.exception()
                if exc is not None:
                    # Only a slow or stalled orchestrator is suspended (as go-livepeer does); one
                    # that broke off is tried again, and a dead one then fails its start call.
                    raise exc if isinstance(exc, _StopOrchestrator) else _StopOrchestrator(
                        f"{type(exc).__name__}: {str(exc) or 'no answer'}")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _remote_payment(self, url: str, info: pb.OrchestratorInfo,
                              key: str) -> tuple[str, str, pb.OrchestratorInfo]:
        """A payment from the remote signer (480: the O's info is refreshed, once). A signer that is down or
        refuses ends the start: no work goes unpaid."""
        signer = self.live.signer
        assert signer is not None
        for attempt in range(2):
            try:
                payment, creds = await signer.live_payment(url, info, key)
                return payment, creds, info
            except SignerRefusal as exc:
                if exc.status == REFRESH_SESSION and attempt == 0:
                    info = await self.live.pool.refresh_info(url)
                    continue
                raise LiveAiRefused(str(exc), "payment") from exc
            except SignerError as exc:
                raise LiveAiRefused(str(exc), "payment") from exc
        raise LiveAiRefused("the remote signer asked for a refresh twice", "payment")  # pragma: no cover

    def _pay(self, attempt: _Attempt) -> None:
        """At the start of an input segment, 5 s after the last instant paid for: pay the time since then
        at 720p30 (go-livepeer's live payment processor, WIRE.md §10.5), in the background."""
        payments = self.live.payments
        info = attempt.info
        if (payments is None and self.live.signer is None) or info is None or (
                attempt.paying is not None and not attempt.paying.done()):
            return
        if not info.price_info.pricePerUnit:
            return  # only an O that quoted a price is paid as the stream runs
        now = time.monotonic()
        elapsed = now - attempt.billed
        if elapsed < self.live.settings.payment_interval:
            return
        attempt.billed = now
        attempt.paying = asyncio.ensure_future(self._send_payment(attempt, info, int(elapsed * LIVE_PIXELS_PER_SECOND)))

    async def _send_payment(self, attempt: _Attempt, info: pb.OrchestratorInfo, pixels: int) -> None:
        payments = self.live.payments
        mid = attempt.channels.manifest_id
        if payments is None:  # the remote signer counts the time itself
            try:
                payment, creds, info = await self._remote_payment(attempt.url, info, mid)
                result = await attempt.client.pay(info, mid, payment, model_id=self.request.pipeline,
                                                  version=self.live.settings.runner_version, segment=creds)
            except (LiveAiRefused, OrchestratorError) as exc:
                log.warning("stream %s: live payment to %s failed: %s", self.stream, attempt.url, exc)
                return
            if result.HasField("info") and result.info.HasField("ticket_params"):
                attempt.info = result.info
            return
        try:
            staged = payments.stage(attempt.url, info, pixels, stream=self.stream, key=mid)
        except TicketParamsRefused as exc:
            log.warning("stream %s: live payment to %s not made: %s", self.stream, attempt.url, exc)
            return
        try:
            result = await attempt.client.pay(info, mid, staged.header, model_id=self.request.pipeline,
                                              version=self.live.settings.runner_version)
        except OrchestratorError as exc:  # go-livepeer only logs these: the O ends an unpaid stream itself
            payments.settle(staged, accepted=False)
            log.warning("stream %s: live payment to %s failed: %s", self.stream, attempt.url, exc)
            return
        payments.settle(staged, accepted=True)
        if result.HasField("info") and result.info.HasField("ticket_params"):
            attempt.info = result.info  # its fresh ticket params for the next payment

    async def _close_attempt(self, attempt: _Attempt) -> None:
        """go-livepeer ends a stream on an O by DELETEing its input and control channels."""
        if attempt.paying is not None:
            attempt.paying.cancel()
        for url in (attempt.channels.publish_url, attempt.channels.control_url):
            with contextlib.suppress(httpx.HTTPError, TimeoutError):
                await asyncio.wait_for(attempt.http.delete(url), CLOSE_TIMEOUT)

    async def _next_input(self) -> Segment | _Part | None:
        while not self._inputs:
            if self.input_ended:
                return None
            self._input_ready.clear()
            await self._input_ready.wait()
        return self._inputs.popleft()

    async def _input(self, attempt: _Attempt) -> None:
        publisher = TricklePublisher(attempt.http, attempt.channels.publish_url)
        writing: set[asyncio.Task[None]] = set()

        async def finish(segment: PublishedSegment) -> None:
            try:
                await segment.close()
            except TrickleClosed:
                raise
            except (httpx.HTTPError, TrickleError) as exc:
                raise _StopOrchestrator(f"input segment {segment.seq}: {type(exc).__name__}: {exc}") from exc

        streaming: dict[int, PublishedSegment] = {}  # seqs being written while they are cut

        def begin() -> PublishedSegment:
            for task in [t for t in writing if t.done()]:
                writing.discard(task)
                task.result()  # a failed POST stops this orchestrator
            if len(writing) + len(streaming) >= self.live.settings.max_in_flight:
                raise _StopOrchestrator(f"{len(writing) + len(streaming)} input segments still being written",
                                        suspend=True)
            attempt.last_input = time.monotonic()
            attempt.sent += 1
            self.segments_in += 1
            self._pay(attempt)
            return publisher.segment()

        try:
            while (item := await self._next_input()) is not None:
                if isinstance(item, _Part):
                    if item.first:
                        if item.seq in streaming:  # the cut began again (an empty one dropped)
                            writing.add(asyncio.ensure_future(finish(streaming.pop(item.seq))))
                        streaming[item.seq] = begin()
                    target = streaming.get(item.seq)
                    if target is not None:  # else: begun before this orchestrator; it gets the whole
                        target.write(item.data)
                    continue
                published = streaming.pop(item.seq, None)
                if published is None:
                    published = begin()
                    published.write(item.data)
                writing.add(asyncio.ensure_future(finish(published)))
            for published in streaming.values():
                writing.add(asyncio.ensure_future(finish(published)))
            for task in writing:
                await task
            # The source ended: wait (bounded) for the output of what was sent, then end.
            deadline = time.monotonic() + self.live.settings.output_timeout
            while attempt.received < attempt.sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            for task in writing:
                task.cancel()
            await publisher.aclose(delete=False)

    async def _output(self, attempt: _Attempt) -> None:
        subscriber = TrickleSubscriber(attempt.http, attempt.channels.subscribe_url, start=-1,
                                       max_segment_bytes=self.live.settings.max_output_bytes)
        try:
            while True:
                feed = self._output_feed()
                try:
                    segment = await subscriber.next()
                    parts = []
                    if feed is not None:
                        feed.begin()
                    try:
                        async for chunk in segment.chunks():  # to WHEP as it arrives
                            parts.append(chunk)
                            if feed is not None:
                                feed.feed(chunk)
                    finally:
                        if feed is not None:
                            feed.end()
                    data = b"".join(parts)
                except TrickleClosed:
                    return
                except httpx.HTTPError as exc:
                    raise TrickleError(f"output: {exc}") from exc
                attempt.last_output = time.monotonic()
                attempt.received += 1
                if not data:
                    continue
                try:
                    timing = await asyncio.to_thread(segment_timing, data)
                except MediaError as exc:
                    log.warning("stream %s: output segment %d from %s dropped: %s", self.stream, segment.seq,
                                attempt.url, exc)
                    continue
                self.live.hub.publish(Segment(self.stream, self._out_seq, AI_RENDITION, timing.start_pts,
                                              timing.duration, timing.time_base, data, self._discontinuity))
                self._out_seq += 1
                self._discontinuity = False
                self.segments_out += 1
        finally:
            await subscriber.aclose()

    def _output_feed(self) -> OutputFeed | None:
        """Where the AI output goes piece by piece (WHEP), opened at the first output segment."""
        if self.output is None and self.live.open_output is not None:
            self.output = self.live.open_output(self.stream)
        return self.output

    async def _events(self, attempt: _Attempt) -> None:
        subscriber = TrickleSubscriber(attempt.http, attempt.channels.events_url, start=-1,
                                       max_segment_bytes=MAX_EVENT_BYTES)
        try:
            while True:
                try:
                    body = await (await subscriber.next()).read()
                except TrickleClosed:
                    await asyncio.Event().wait()  # events ending alone is no failure; the watchdog decides
                    return
                except httpx.HTTPError as exc:
                    raise TrickleError(f"events: {exc}") from exc
                attempt.last_event = time.monotonic()
                self._on_event(body)
        finally:
            await subscriber.aclose()

    def _on_event(self, body: bytes) -> None:
        try:
            message = json.loads(body)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        event = message.get("event", message)
        if not isinstance(event, dict):
            return
        if event.get("type") == "status":
            previous = self.status_event or {}
            inference = event.get("inference_status")
            if isinstance(inference, dict):  # go-livepeer keeps these when a status has them null
                old = previous.get("inference_status") or {}
                for key in ("last_restart_logs", "last_params"):
                    if inference.get(key) is None and key in old:
                        inference[key] = old[key]
            self.status_event = event
        elif event.get("type") == "error":
            self._note_error(str(event.get("message", "pipeline error"))[:1000])

    async def _control(self, attempt: _Attempt) -> None:
        publisher = TricklePublisher(attempt.http, attempt.channels.control_url, mime="application/json")
        pending = self.params_cache
        try:
            while True:
                if pending is None:
                    try:
                        pending = await asyncio.wait_for(attempt.control.get(), self.live.settings.keepalive)
                    except TimeoutError:
                        pending = KEEPALIVE
                try:
                    await publisher.publish(pending)
                except TrickleClosed as exc:
                    raise _StopOrchestrator(f"control: {exc}") from exc
                except (httpx.HTTPError, TrickleError) as exc:
                    log.debug("stream %s: control message to %s failed: %s", self.stream, attempt.url, exc)
                pending = None
        finally:
            await publisher.aclose(delete=False)

    async def _watchdog(self, attempt: _Attempt) -> None:
        settings = self.live.settings
        period = min(1.0, settings.events_timeout / 10, settings.output_timeout / 10)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - attempt.last_event > settings.events_timeout:
                raise _StopOrchestrator(f"no events for {settings.events_timeout:.0f} s")
            if (now - attempt.last_output > settings.output_timeout
                    and now - attempt.last_input < settings.output_timeout / 2):
                raise _StopOrchestrator(f"no output for {settings.output_timeout:.0f} s", suspend=True)

    # --- for the API ---

    def status(self) -> dict[str, Any]:
        """go-livepeer's /status JSON (the last status event + the gateway's fields), plus streamgw's own."""
        out: dict[str, Any] = dict(self.status_event or {})
        attempt = self.attempt
        out.update({
            "stream_id": self.stream_id, "request_id": self.request_id, "pipeline_id": self.request.pipeline,
            "pipeline": self.request.pipeline,
            "orchestrator_info": ({"address": attempt.address, "url": attempt.url} if attempt else None),
            "gateway_status": {"whep_url": f"/whep/{self.stream}/{AI_RENDITION}", "error": self.error},
            "streamgw": {"stream": self.stream,
                         "state": "ended" if self.ended else ("running" if attempt else "swapping"),
                         "manifest_id": attempt.channels.manifest_id if attempt else None,
                         "segments_in": self.segments_in, "segments_out": self.segments_out,
                         "segments_dropped": self.segments_dropped, "swaps": self.swaps_total,
                         "orchestrators": list(self.orchestrators),
                         "params": _json_or_none(self.params_cache) or self.request.params},
        })
        return out


def _json_or_none(body: bytes | None) -> Any:
    if body is None:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(body)
    return None


def not_offered(pipeline: str, offered: Mapping[str, int]) -> LiveAiRefused:
    """The refusal of a pipeline no known orchestrator offers, naming those that are."""
    return LiveAiRefused(f"no orchestrator offers pipeline {pipeline!r} (offered: "
                         f"{', '.join(sorted(offered)) or 'none'})", "pipeline")


class LiveAi:
    """Every stream's live AI: sessions by stream name, fed from the hub."""

    def __init__(self, hub: Hub, pool: OrchestratorPool, settings: LiveAiSettings | None = None,
                 policy: SelectionPolicy | None = None, defaults: Mapping[str, str] | None = None,
                 stream_parts: StreamParts | None = None,
                 open_output: Callable[[str], OutputFeed] | None = None, payments: Payer | None = None,
                 signer: RemoteSignerClient | None = None) -> None:
        self.hub = hub
        self.pool = pool
        self.payments = payments  # on-chain: prepays each start, then pays as the stream runs
        self.signer = signer  # or a remote signer pays
        self.settings = settings or LiveAiSettings()
        self.policy = policy or SelectionPolicy()
        self.defaults = dict(defaults or {})
        self._stream_parts = stream_parts
        self.open_output = open_output
        self.sessions: dict[str, LiveAiSession] = {}
        self.expected: dict[str, LiveRequest] = {}  # asked for by /start before the stream was published
        self._tasks: set[asyncio.Task[None]] = set()

    def expect(self, stream: str, request: LiveRequest) -> None:
        """Run ``request`` when ``stream`` is next published."""
        self.expected[stream] = request

    def request_for(self, stream: str, query: str) -> LiveRequest | None:
        """What a publisher of ``stream`` gets: its query's pipeline, else one /start asked for,
        else the configured default (``*``: any stream); raises :class:`LiveAiRefused`."""
        request = parse_query(query)
        if request is not None:
            return request
        expected = self.expected.pop(stream, None)
        if expected is not None:
            return expected
        pipeline = self.defaults.get(stream) or self.defaults.get("*")
        return LiveRequest(pipeline) if pipeline else None

    def session(self, stream: str) -> LiveAiSession | None:
        """The running (or swapping) session of ``stream``."""
        session = self.sessions.get(stream)
        return session if session is not None and not session.ended else None

    def by_stream_id(self, stream_id: str) -> LiveAiSession | None:
        """A session by go-livepeer's stream_id (a finished one for ``status_retention``)."""
        now = time.time()
        for session in self.sessions.values():
            if session.stream_id == stream_id and (
                    session.ended_at is None or now - session.ended_at < self.settings.status_retention):
                return session
        return None

    def check(self, request: LiveRequest) -> None:
        """Refuse at once a pipeline none of the orchestrators known so far offers (before anything
        starts; with no orchestrator info yet, the start call decides)."""
        offered = self.models()
        if offered and request.pipeline not in offered:
            raise not_offered(request.pipeline, offered)

    def models(self) -> dict[str, int]:
        """Every pipeline the known orchestrators offer, with how many offer it."""
        return live_models(self.pool.candidates())

    async def start(self, stream: str, request: LiveRequest) -> LiveAiSession:
        """Start ``request`` for ``stream`` (replacing a session it has); returns once an orchestrator
        runs it. Raises :class:`LiveAiRefused` or :class:`NoLiveOrchestrator`."""
        if request.params is not None and len(json.dumps(request.params)) > MAX_PARAMS:
            raise LiveAiRefused(f"larger than {MAX_PARAMS} bytes", "params")
        old = self.sessions.get(stream)
        session = LiveAiSession(self, stream, request)
        await session.connect()
        if old is not None:
            await self.stop(stream)
        self.sessions[stream] = session
        self._spawn(session)
        self.connect_parts(stream)
        return session

    def connect_parts(self, stream: str) -> None:
        """Have ``stream``'s publisher (if it has one yet) stream its segments to the session while cut."""
        if self._stream_parts is not None and self.session(stream) is not None:
            self._stream_parts(stream, lambda seq, data, first: self._part(stream, seq, data, first))

    def _part(self, stream: str, seq: int, data: bytes, first: bool) -> None:
        session = self.session(stream)
        if session is not None:
            session.part(seq, data, first)

    def _spawn(self, session: LiveAiSession) -> None:
        task = asyncio.ensure_future(self._supervised(session))
        session.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervised(self, session: LiveAiSession) -> None:
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one stream's failure is logged, never the gateway's
            log.exception("stream %s: live AI session failed", session.stream)
        finally:
            if self._stream_parts is not None and self.sessions.get(session.stream) is session:
                self._stream_parts(session.stream, None)

    async def stop(self, stream: str) -> None:
        """End ``stream``'s live AI now (its source plays on)."""
        session = self.sessions.get(stream)
        if session is not None and session.task is not None and not session.task.done():
            session.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.task

    def forget(self, stream: str) -> None:
        """The stream is gone: drop its ended session once its status is no longer kept."""
        session = self.sessions.get(stream)
        if session is not None and session.ended and (
                time.time() - (session.ended_at or 0) > self.settings.status_retention):
            del self.sessions[stream]

    async def run(self, subscription: Subscription) -> None:
        """Route source segments and source ends to the streams' sessions until cancelled."""
        try:
            while True:
                event = await subscription.get()
                if event.rendition != "source":
                    continue
                session = self.session(event.stream_id)
                if session is None:
                    continue
                if isinstance(event, StreamEnded):
                    session.end_input()
                else:
                    session.feed(event)
        finally:
            subscription.close()

    async def close(self) -> None:
        """End every session."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
