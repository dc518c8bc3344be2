"""Supervision of a node's background loops: a failure is logged with context, then restarted or fatal.

Every long-running task of a node (the HLS writer, the WHEP router, the dispatcher, discovery,
the servers) runs under one ``Supervisor``. A task that raises, or returns although it should run
until cancelled, is logged with the node, the task's name, how long it ran and the traceback.

* A restartable task starts again from its factory after a backoff that doubles from
  ``Backoff.initial`` to ``Backoff.maximum``; a run that lasted ``Backoff.stable`` seconds resets it.
* A task that cannot be restarted (a server that owns its socket) is marked failed and sets
  ``fatal``: the process waits on it and stops cleanly instead of serving half its outputs.

``statuses()`` is what ``/healthz`` shows. Once ``close()`` has begun, endings are expected and
nothing is logged or restarted.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

log = logging.getLogger(__name__)

RECENT = 300.0  # seconds a failure keeps a node "degraded" after its task came back


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``initial`` seconds, doubling per failure in a row up to ``maximum``."""

    initial: float = 0.5
    maximum: float = 30.0
    stable: float = 60.0  # a run at least this long forgets the earlier failures

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows the ``failures``-th failure in a row."""
        return float(min(self.maximum, self.initial * 2 ** max(0, failures - 1)))


class TaskState(enum.StrEnum):
    """Where a supervised task is."""

    RUNNING = "running"
    RESTARTING = "restarting"  # failed; waiting out its backoff
    FAILED = "failed"  # failed and not restartable: the node is stopping
    STOPPED = "stopped"  # ended by close()


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of one supervised task (for ``/healthz``)."""

    name: str
    state: TaskState
    restarts: int
    failures: int  # in total
    last_error: str | None
    last_failure_ago: float | None  # seconds since the last failure

    @property
    def healthy(self) -> bool:
        """Running, and no failure in the last ``RECENT`` seconds."""
        return self.state is TaskState.RUNNING and (
            self.last_failure_ago is None or self.last_failure_ago > RECENT)


class _Record:
    """The mutable state of one supervised task (owned by the supervisor, on the loop)."""

    def __init__(self, name: str, factory: Callable[[], Awaitable[None]], restart: bool) -> None:
        self.name = name
        self.factory = factory
        self.restart = restart
        self.state = TaskState.RUNNING
        self.task: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        self.restarts = 0
        self.failures = 0
        self.in_a_row = 0
        self.last_error: str | None = None
        self.last_failure: float | None = None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "returned (it should run until stopped)"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Supervisor:
    """Runs a node's named background tasks; see the module docstring for what happens on failure."""

    def __init__(self, node: str, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._closing = False
        self.fatal = asyncio.Event()
        self.fatal_error: str | None = None  # "task: error" of the failure that set ``fatal``

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, restart: bool = True) -> None:
        """Run ``factory()`` now as task ``name`` (on the running loop), and again after each failure.

        ``factory`` is called once per run, so each run gets fresh arguments (a new hub
        subscription, say); with ``restart=False`` a failure sets ``fatal`` instead.
        """
        if name in self._records:
            raise ValueError(f"{self.node}: a task named {name!r} is already supervised")
        if self._closing:
            raise RuntimeError(f"{self.node} is closing")
        record = _Record(name, factory, restart)
        self._records[name] = record
        self._launch(record)

    def _launch(self, record: _Record) -> None:
        record.timer = None
        if self._closing:
            record.state = TaskState.STOPPED
            return
        record.state = TaskState.RUNNING
        record.started = self._clock()
        task = asyncio.ensure_future(record.factory())
        record.task = task
        task.add_done_callback(lambda t: self._ended(record, t))

    def _ended(self, record: _Record, task: asyncio.Future[None]) -> None:
        if self._closing:
            record.state = TaskState.STOPPED
            if not task.cancelled() and task.exception() is not None:
                log.debug("%s: %s ended with %s while closing", self.node, record.name,
                          _describe(task.exception()))
            return
        exc: BaseException | None
        exc = asyncio.CancelledError("cancelled from outside its supervisor") if task.cancelled() \
            else task.exception()
        now = self._clock()
        ran = now - record.started
        if ran >= self.backoff.stable:
            record.in_a_row = 0
        record.in_a_row += 1
        record.failures += 1
        record.last_error = _describe(exc)
        record.last_failure = now
        if not record.restart:
            record.state = TaskState.FAILED
            log.error("%s: %s failed after %.1f s: %s; it cannot be restarted, stopping", self.node,
                      record.name, ran, record.last_error, exc_info=exc)
            if not self.fatal.is_set():
                self.fatal_error = f"{record.name}: {record.last_error}"
                self.fatal.set()
            return
        delay = self.backoff.delay(record.in_a_row)
        record.state = TaskState.RESTARTING
        log.error("%s: %s failed after %.1f s (failure %d in a row): %s; restarting in %.1f s", self.node,
                  record.name, ran, record.in_a_row, record.last_error, delay, exc_info=exc)
        record.timer = asyncio.get_running_loop().call_later(delay, self._restart, record)

    def _restart(self, record: _Record) -> None:
        record.restarts += 1
        try:
            self._launch(record)
        except Exception as exc:  # the factory itself raised: count it as a failed run
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            record.task = failed
            self._ended(record, failed)
        else:
            log.info("%s: %s restarted (restart %d)", self.node, record.name, record.restarts)

    def statuses(self) -> list[TaskStatus]:
        """Every supervised task, in the order they were spawned."""
        now = self._clock()
        return [
            TaskStatus(r.name, r.state, r.restarts, r.failures, r.last_error,
                       round(now - r.last_failure, 3) if r.last_failure is not None else None)
            for r in self._records.values()
        ]

    async def close(self, *, wait: Collection[str] = (), timeout: float = 5.0) -> None:
        """Stop every task: cancel all but those in ``wait`` (told to end by themselves), which get
        ``timeout`` seconds before they are cancelled too."""
        self._closing = True
        tasks: list[asyncio.Future[None]] = []
        waiting: list[asyncio.Future[None]] = []
        for record in self._records.values():
            if record.timer is not None:
                record.timer.cancel()
                record.timer = None
                record.state = TaskState.STOPPED
            if record.task is None or record.task.done():
                continue
            tasks.append(record.task)
            if record.name in wait:
                waiting.append(record.task)
            else:
                record.task.cancel()
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=timeout)
            for task in late:
                task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=timeout)  # bounded: a task may ignore cancel
            if stuck:
                names = [r.name for r in self._records.values() if r.task in stuck]
                log.warning("%s: %s did not end within %.1f s of being cancelled", self.node,
                            ", ".join(names), timeout)
