"""Live video-to-video on the orchestrator (capability 35; WIRE.md §10.4): the start call, the
four trickle channels of a stream, and a runner per stream.

A runner reads its input channel ``{mid}`` in-process, one MPEG-TS segment at a time as its
bytes arrive, runs it through the stream's pipeline on a worker thread
(:func:`~streamgw.media.live_video.run_segment`: decode, the pipeline on every picture, x264
with an IDR at the start of each output segment, audio copied) and writes the output segment
to ``{mid}-out`` as it is muxed. It applies the JSON messages of ``{mid}-control`` (new params;
``{"keep":"alive"}`` is dropped) and writes a status event to ``{mid}-events`` every
``status_interval`` seconds, and an error event when a segment or the pipeline fails. The stream
ends when its input or control channel closes, or at the first failure: every channel is closed
and the model's capacity freed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamgw.errors import CapacityError, MediaError, PipelineError, StreamgwError
from streamgw.livepeer.capabilities import ModelConstraint
from streamgw.media.live_video import SegmentStats, run_segment
from streamgw.media.pipe import BytesPipe
from streamgw.pipelines import registry
from streamgw.pipelines.base import LivePipeline
from streamgw.trickle.channels import TrickleChannel, TrickleChannels, TrickleSegment, local_segments

log = logging.getLogger(__name__)

RUNNER_VERSION = "streamgw-live-1"


@dataclass(frozen=True)
class LiveSettings:
    """What an orchestrator's live pipelines offer and how they report."""

    pipelines: tuple[str, ...] = ("noop", "face-blur", "face-boxes", "cartoon", "sketch")
    capacity: int = 1  # streams at once per pipeline
    status_interval: float = 10.0  # go-livepeer's gateway drops an O silent for 30 s
    max_control_bytes: int = 64 * 1024


class StartError(StreamgwError):
    """A start request refused: ``status`` and the text go-livepeer answers with."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class LiveStream:
    """One stream on this orchestrator: its channels, pipeline, runner task and what it did."""

    def __init__(self, mid: str, model_id: str, pipeline: LivePipeline, request: Mapping[str, Any],
                 channels: dict[str, TrickleChannel]) -> None:
        self.mid = mid
        self.model_id = model_id
        self.pipeline = pipeline
        self.request_id = str(request.get("gateway_request_id") or "")
        self.stream_id = str(request.get("stream_id") or "")
        self.channels = channels
        self.started = time.time()
        self.state = "LOADING"
        self.frames_in = 0
        self.frames_out = 0
        self.inference_seconds = 0.0
        self.last_input = 0.0
        self.last_output = 0.0
        self.fps_in = 0.0
        self.fps_out = 0.0
        self.last_params_update = 0.0
        self.last_error: str | None = None
        self.last_error_time = 0.0
        self.events_seq = 0
        self.meter: Callable[[], bool] | None = None  # charges the stream at each input segment (on-chain)
        self._pending: dict[str, Any] | None = None  # params for the worker thread, at the next picture
        self._lock = threading.Lock()

    def queue_params(self, params: Mapping[str, Any]) -> None:
        with self._lock:
            self._pending = {**(self._pending or {}), **params}

    def process(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The pipeline on one picture (worker thread), new params applied first."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            try:
                self.pipeline.update(pending)
                self.last_params_update = time.time()
            except PipelineError as exc:
                self.last_error, self.last_error_time = str(exc), time.time()
        return self.pipeline.process(frame)

    def status(self) -> dict[str, Any]:
        """The status event, shaped as the ai-runner's (WIRE.md §10.3), times in ms."""
        now = time.time()

        def ms(t: float) -> int | None:
            return int(t * 1000) if t else None

        return {"queue_event_type": "ai_stream_events", "event": {
            "type": "status", "pipeline": self.model_id, "start_time": ms(self.started), "state": self.state,
            "last_state_update_time": ms(now),
            "input_status": {"last_input_time": ms(self.last_input), "fps": round(self.fps_in, 2)},
            "inference_status": {
                "last_output_time": ms(self.last_output), "fps": round(self.fps_out, 2),
                "inference_ms_per_frame": round(self.inference_seconds / self.frames_out * 1000, 2)
                if self.frames_out else None,
                "last_params_update_time": ms(self.last_params_update), "last_params": self.pipeline.params(),
                "last_error_time": ms(self.last_error_time), "last_error": self.last_error,
                "restart_count": 0,
            },
            "timestamp": ms(now),
        }}


class LiveRunners:
    """The orchestrator's live streams: start, capacity per pipeline, the runners."""

    def __init__(self, channels: TrickleChannels, settings: LiveSettings, trickle_url: Callable[[], str],
                 executor: concurrent.futures.Executor | None = None) -> None:
        self.channels = channels
        self.settings = settings
        self.trickle_url = trickle_url  # the public base URL of /ai/trickle/, as gateways reach it
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(thread_name_prefix="live")
        self.streams: dict[str, LiveStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def in_use(self, model_id: str) -> int:
        return sum(s.model_id == model_id for s in self.streams.values())

    def constraints(self) -> dict[str, ModelConstraint]:
        """The capability-35 model constraints to advertise: capacity is what is free now."""
        return {name: ModelConstraint(warm=True, capacity=max(0, self.settings.capacity - self.in_use(name)),
                                      runner_version=RUNNER_VERSION, capacity_in_use=self.in_use(name))
                for name in self.settings.pipelines}

    def check(self, request: Mapping[str, Any]) -> str:
        """The model ``request`` asks for, if it is served and has a free runner; else :class:`StartError`."""
        model_id = request.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise StartError(400, "missing model_id")  # go-livepeer's handler panics here
        if model_id not in self.settings.pipelines:
            served = ", ".join(self.settings.pipelines)
            raise StartError(400, f"model {model_id!r} is not served here (serving: {served})")
        if self.in_use(model_id) >= self.settings.capacity:
            raise StartError(503, "insufficient capacity")
        return model_id

    def start(self, request: Mapping[str, Any], *, mid: str | None = None,
              meter: Callable[[], bool] | None = None) -> dict[str, str]:
        """Start a stream for ``request`` (the JSON body go-livepeer's gateway sends); returns the
        reply body. Raises :class:`StartError` with go-livepeer's status and text.

        ``mid`` is its manifest id (new if None); ``meter``, called at each input segment, charges the
        stream and returns False when its balance falls short: the stream ends (``Insufficient balance``)."""
        model_id = self.check(request)
        params = request.get("params")
        if params is not None and not isinstance(params, dict):
            raise StartError(400, "params: must be a JSON object")
        try:
            pipeline = registry.create(model_id, params or {})
        except PipelineError as exc:
            raise StartError(400, str(exc)) from exc
        mid = mid or secrets.token_hex(4)
        try:
            channels = {
                "in": self.channels.create(mid, "video/MP2T"),
                "out": self.channels.create(f"{mid}-out", "video/MP2T"),
                "control": self.channels.create(f"{mid}-control", "application/json"),
                "events": self.channels.create(f"{mid}-events", "application/json"),
            }
        except CapacityError as exc:
            raise StartError(503, "insufficient capacity") from exc
        stream = LiveStream(mid, model_id, pipeline, request, channels)
        stream.meter = meter
        self.streams[mid] = stream
        task = asyncio.get_running_loop().create_task(self._run(stream), name=f"live-{mid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        base = self.trickle_url().rstrip("/")
        log.info("live stream %s: %s for request %s", mid, model_id, stream.request_id or "-")
        return {"publish_url": f"{base}/{mid}", "subscribe_url": f"{base}/{mid}-out",
                "control_url": f"{base}/{mid}-control", "events_url": f"{base}/{mid}-events", "manifest_id": mid}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- one stream ---

    async def _run(self, stream: LiveStream) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._control(stream)), loop.create_task(self._status(stream))]
        try:
            await loop.run_in_executor(self.executor, stream.pipeline.warm_up)
            stream.state = "ONLINE"
            self._event(stream, stream.status())
            tasks.append(loop.create_task(self._input(stream)))
            done, _ = await asyncio.wait({tasks[0], tasks[2]}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # an error ends the stream with an error event
        except Exception as exc:  # noqa: BLE001 - a pipeline or runner fault ends this stream only
            stream.state = "ERROR"
            log.warning("live stream %s: %s", stream.mid, exc)
            self._error(stream, str(exc))
            self._event(stream, stream.status())
        finally:
            for task in tasks:
                task.cancel()
            self.streams.pop(stream.mid, None)
            for channel in stream.channels.values():
                self.channels.close(channel.name)
            log.info("live stream %s: ended (%d pictures in, %d out)", stream.mid, stream.frames_in,
                     stream.frames_out)

    async def _input(self, stream: LiveStream) -> None:
        out = stream.channels["out"]
        seq = 0
        async for segment in local_segments(stream.channels["in"]):
            if stream.meter is not None and not stream.meter():
                raise StartError(400, "Insufficient balance")  # ends the stream, closing its channels
            stats = await self._segment(stream, segment, out, seq)
            if stats is not None:
                seq += 1

    async def _segment(self, stream: LiveStream, segment: TrickleSegment, out: TrickleChannel,
                       seq: int) -> SegmentStats | None:
        loop = asyncio.get_running_loop()
        pipe = BytesPipe()
        written = [False]
        target, _ = out.for_write(seq)

        def write(data: bytes) -> None:  # on the worker thread
            loop.call_soon_threadsafe(self._write_out, out, target, seq, written, data)

        # Unbuffered: a read returns what has arrived (a buffered reader waits for its buffer to fill).
        work = loop.run_in_executor(self.executor, lambda: run_segment(pipe, write, stream.process))
        offset = 0
        started = time.monotonic()
        try:
            while True:
                data, ended = await segment.read(offset)
                if data:
                    stream.last_input = time.time()
                    offset += len(data)
                    pipe.feed(data)
                if ended:
                    break
        finally:
            pipe.end()
        try:
            stats = await work  # the thread's writes were queued on the loop before its result
        except MediaError:
            if offset:
                raise
            return None  # an empty segment (the channel closed before it began)
        finally:
            target.close()
        if offset == 0:
            return None
        elapsed = max(1e-6, time.monotonic() - started)
        stream.frames_in += stats.frames_in
        stream.frames_out += stats.frames_out
        stream.inference_seconds += stats.inference_seconds
        stream.fps_in = stats.frames_in / elapsed
        stream.fps_out = stats.frames_out / elapsed
        stream.last_output = time.time()
        return stats

    @staticmethod
    def _write_out(out: TrickleChannel, target: TrickleSegment, seq: int, written: list[bool], data: bytes) -> None:
        if not written[0]:
            written[0] = True
            out.started(seq)
        target.write(data)

    async def _control(self, stream: LiveStream) -> None:
        """Apply each control message; ends (and so ends the stream) when the channel closes."""
        limit = self.settings.max_control_bytes
        async for segment in local_segments(stream.channels["control"]):
            body = bytearray()
            while True:
                data, ended = await segment.read(len(body))
                body += data
                if ended or len(body) > limit:
                    break
            if len(body) > limit:
                self._error(stream, f"control message over {limit} bytes: dropped")
                continue
            message = bytes(body).strip()
            if not message:
                continue
            try:
                params = json.loads(message)
            except ValueError as exc:
                self._error(stream, f"control message is not JSON: {exc}")
                continue
            if not isinstance(params, dict):
                self._error(stream, "control message is not a JSON object")
                continue
            if params.get("keep") == "alive" and len(params) == 1:
                continue
            # Applied at the next picture; a bad one changes nothing and shows as last_error.
            stream.queue_params(params)

    async def _status(self, stream: LiveStream) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval)
            self._event(stream, stream.status())

    def _error(self, stream: LiveStream, message: str) -> None:
        stream.last_error, stream.last_error_time = message, time.time()
        self._event(stream, {"queue_event_type": "ai_stream_events", "event": {
            "type": "error", "pipeline": stream.model_id, "message": message, "time": int(time.time() * 1000)}})

    def _event(self, stream: LiveStream, event: Mapping[str, Any]) -> None:
        """One JSON message as one segment of ``{mid}-events``."""
        channel = stream.channels["events"]
        if channel.closed:
            return
        segment, seq = channel.for_write(stream.events_seq)
        stream.events_seq += 1
        channel.started(seq)
        segment.write(json.dumps(event, separators=(",", ":")).encode())
        segment.close()
