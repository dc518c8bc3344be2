"""The orchestrator's TLS port served by hypercorn, with three of hypercorn 0.18's faults fixed.

* **DATA after the response** (hypercorn issue 329; PRs 312, 334 and 365 unmerged). When the app
  answers before it has read the whole request body (a 403/402 refusal, a 413), hypercorn drops the
  stream while the client's DATA frames are still arriving, and the next one raises ``KeyError`` in
  ``H2Protocol._handle_events``: the connection closes and every other stream on it fails with
  ``Server disconnected``. :class:`GuardedH2Protocol` discards those frames instead and hands their
  flow-control window back, so a client that keeps uploading (httpx does until its body is sent)
  gets its answer and the other streams carry on. Past ``discard_limit`` bytes it resets the stream
  with ``NO_ERROR``, as RFC 9113 §8.1 allows once the response is complete. A client that resets
  the stream itself (Go's transport does on a status above 299) needs nothing more.
* **A refusal that waits can hang the connection.** Each app gets a bounded queue of request
  messages, and closing a stream puts ``http.disconnect`` in it. If the app answered without reading
  while the queue was full, its final ``send`` waits for room that nobody makes, and the connection's
  reader waits on the same queue: every stream on the connection hangs. :class:`_TaskGroup` lets
  ``http.disconnect`` in at once, dropping body the app has not read (ASGI: once the response is
  sent, ``receive`` gives ``http.disconnect``).
* **TLS close traceback.** When hypercorn closes a connection (keep-alive timeout, shutdown) and the
  peer never answers its TLS close_notify (an idle pooled client connection nobody reads), asyncio
  aborts the socket after ``ssl_shutdown_timeout`` (30 s by default) and ``StreamWriter.wait_closed``
  raises ``TimeoutError: SSL shutdown timed out``, which hypercorn lets escape as an "Unhandled
  exception in client_connected_cb" traceback. :class:`_Connection` ends such a close quietly (DEBUG);
  :func:`serve_tls` sets the timeout.

hypercorn picks its protocol classes by name inside ``TCPServer.run`` and ``ProtocolWrapper``, with
no option to choose them, so :func:`serve_tls` runs its own accept loop (hypercorn's
``worker_serve`` without lifespan, QUIC, statsd and signals, none of which the orchestrator uses)
with subclasses that choose :class:`GuardedH2Protocol`. Nothing of hypercorn's is patched: the
internals relied on are checked when this module is imported (:func:`check_hypercorn`), and
``tests/test_orchestrator_http2.py`` fails when an upgrade changes the code copied or overridden.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Response
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.typing import AppWrapper, ASGIFramework, ASGIReceiveEvent, ASGISendEvent, ConnectionState, LifespanState
from hypercorn.typing import Scope as HypercornScope
from hypercorn.typing import TaskGroup as TaskGroupProtocol
from hypercorn.typing import WorkerContext as WorkerContextProtocol
from hypercorn.utils import parse_socket_addr

from streamgw.errors import ConfigError
from streamgw.orchestrator.grpc_asgi import AsgiApp

log = logging.getLogger(__name__)

DEFAULT_DISCARD_LIMIT = 64 * 1024 * 1024
"""Bytes of request body discarded after the response before the stream is reset (per stream)."""


class GuardedH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol, discarding request DATA that arrives after the response."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContextProtocol,
        task_group: TaskGroupProtocol,
        connection_state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Callable[[Event], Awaitable[None]],
        *,
        discard_limit: int = DEFAULT_DISCARD_LIMIT,
    ) -> None:
        super().__init__(app, config, context, task_group, connection_state, ssl, client, server, send)
        self.discard_limit = discard_limit
        self._discarded: dict[int, int] = {}  # stream id -> bytes discarded since its response

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time: while one is handled the app may answer and its stream be dropped,
        # so whether a stream is still there is asked just before each event is handed on.
        for event in events:
            if (isinstance(event, (h2.events.DataReceived, h2.events.StreamEnded))
                    and event.stream_id not in self.streams):
                self._discard(event)
                continue
            if isinstance(event, h2.events.StreamReset):
                self._discarded.pop(event.stream_id, None)
            await super()._handle_events([event])
        await self._flush()

    def _discard(self, event: h2.events.DataReceived | h2.events.StreamEnded) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        if isinstance(event, h2.events.StreamEnded):
            self._discarded.pop(stream_id, None)
            return
        size = event.flow_controlled_length or 0
        # Hand the window back, or the client's upload stalls and with it the connection's window.
        self.connection.acknowledge_received_data(size, stream_id)
        total = self._discarded.get(stream_id, 0) + size
        # Reset only once the response has gone out whole (hypercorn then drops the stream's buffer).
        if total <= self.discard_limit or stream_id in self.stream_buffers:
            self._discarded[stream_id] = total
            return
        self._discarded.pop(stream_id, None)
        log.debug("HTTP/2 stream %d from %s: %d bytes after the response, reset", stream_id, self.client, total)
        try:
            self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.StreamClosedError:
            pass  # the client ended it meanwhile


class _RequestQueue:
    """One app's request messages: bounded, but ``http.disconnect`` gets in at once, dropping unread body."""

    __slots__ = ("queue",)

    def __init__(self, queue: asyncio.Queue[ASGIReceiveEvent]) -> None:
        self.queue = queue

    async def put(self, message: ASGIReceiveEvent) -> None:
        """Queue ``message``; waits for room, except for ``http.disconnect``."""
        if message["type"] != "http.disconnect":
            await self.queue.put(message)
            return
        # The app may have stopped reading (it answered): waiting for room would wait forever.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(message)


INTERIM_EXTENSION = "streamgw.interim_response"
"""ASGI scope extension (HTTP/1.1 under this server): an ``async () -> None`` that sends ``100
Continue`` before the response has started (go-livepeer's trickle server keeps idle POSTs alive
so); ASGI itself has no message for it."""


def _interim_sender(send: Callable[[ASGISendEvent | None], Awaitable[None]]) -> Callable[[], Awaitable[None]] | None:
    """``100 Continue`` through the app's hypercorn HTTPStream (its ``send`` is the stream's bound
    ``app_send``): hypercorn's HTTP/1.1 protocol sends a Response event under 200 as an
    informational response, without changing the stream's state."""
    stream = getattr(send, "__self__", None)
    stream_send, stream_id = getattr(stream, "send", None), getattr(stream, "stream_id", None)
    if stream_send is None or not isinstance(stream_id, int):
        return None

    async def interim() -> None:
        await stream_send(Response(stream_id=stream_id, headers=[], status_code=100))

    return interim


class _TaskGroup(TaskGroup):
    """hypercorn's connection TaskGroup, giving each app a :class:`_RequestQueue`."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: HypercornScope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        if scope.get("type") == "http" and scope.get("http_version") in ("1.0", "1.1"):
            interim = _interim_sender(send)
            if interim is not None:
                extensions = cast(dict[str, Any], scope).setdefault("extensions", {})
                extensions[INTERIM_EXTENSION] = interim
        put = await super().spawn_app(app, config, scope, send)
        queue = getattr(put, "__self__", None)  # hypercorn hands out its asyncio.Queue's put
        if not isinstance(queue, asyncio.Queue):
            raise TypeError(f"hypercorn's spawn_app returned {put!r}, not an asyncio.Queue's put")
        return _RequestQueue(queue).put


class _Protocol(ProtocolWrapper):
    """hypercorn's ProtocolWrapper, choosing :class:`GuardedH2Protocol` for HTTP/2."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContextProtocol,
        task_group: TaskGroupProtocol,
        state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Callable[[Event], Awaitable[None]],
        alpn_protocol: str | None,
        *,
        discard_limit: int,
    ) -> None:
        self.discard_limit = discard_limit
        super().__init__(app, config, context, task_group, state, ssl, client, server, send, alpn_protocol)
        if isinstance(self.protocol, H2Protocol):
            self.protocol = self._h2()

    def _h2(self) -> GuardedH2Protocol:
        return GuardedH2Protocol(self.app, self.config, self.context, self.task_group, self.state, self.ssl,
                                 self.client, self.server, self.send, discard_limit=self.discard_limit)

    async def handle(self, event: Event) -> None:
        # ProtocolWrapper.handle, upgrading to GuardedH2Protocol instead of H2Protocol.
        try:
            return await self.protocol.handle(event)
        except H2ProtocolAssumedError as error:
            self.protocol = self._h2()
            await self.protocol.initiate()
            if error.data != b"":
                return await self.protocol.handle(RawData(data=error.data))
        except H2CProtocolRequiredError as error:
            self.protocol = self._h2()
            await self.protocol.initiate(error.headers, error.settings)
            if error.data != b"":
                return await self.protocol.handle(RawData(data=error.data))
        return None


class _Connection(TCPServer):
    """hypercorn's TCPServer with :class:`_Protocol`, ending an unconfirmed TLS close quietly."""

    def __init__(
        self,
        app: AppWrapper,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        discard_limit: int,
    ) -> None:
        super().__init__(app, loop, config, context, state, reader, writer)
        self.discard_limit = discard_limit
        self.peer: tuple[str, int] | None = None  # for logs: the transport forgets it once closed

    async def run(self) -> None:
        # TCPServer.run with _TaskGroup and _Protocol in place of TaskGroup and ProtocolWrapper.
        sock = self.writer.get_extra_info("socket")
        try:
            client = self.peer = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            ssl_object = self.writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                tls = True
                alpn_protocol = ssl_object.selected_alpn_protocol()
            else:
                tls = False
                alpn_protocol = "http/1.1"

            async with _TaskGroup(self.loop) as task_group:
                self._task_group = task_group
                self.protocol = _Protocol(self.app, self.config, self.context, task_group,
                                          ConnectionState(self.state), tls, client, server, self.protocol_send,
                                          alpn_protocol, discard_limit=self.discard_limit)
                await self.protocol.initiate()
                await self.idle_task.restart(task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        try:
            await super()._close()
        except (TimeoutError, ssl.SSLError) as exc:
            # The peer did not answer our close_notify in time, or broke the TLS close: asyncio has
            # already cut the socket. Nothing is lost; a peer's doing, not an error of ours.
            log.debug("TLS close with %s not completed: %r", self.peer, exc)


async def serve_tls(
    app: AsgiApp,
    config: Config,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    ssl_shutdown_timeout: float,
    discard_limit: int = DEFAULT_DISCARD_LIMIT,
) -> None:
    """Serve ``app`` with TLS on the listening ``sock`` (which it takes over) until ``shutdown_trigger`` returns.

    ``config`` gives hypercorn's TLS files, ALPN, timeouts and limits; its ``bind`` is ignored.
    At shutdown connections get ``config.graceful_timeout`` seconds to finish their requests and
    are then cancelled; a peer gets ``ssl_shutdown_timeout`` seconds to answer each TLS
    close_notify. Returns once every connection has ended.
    """
    loop = asyncio.get_running_loop()
    try:
        ssl_context = config.create_ssl_context()
    except BaseException:
        sock.close()  # taken over, so closed here too when serving never starts
        raise
    if ssl_context is None:
        sock.close()
        raise ConfigError("serve_tls needs a certificate and key (config.certfile, config.keyfile)")
    context = WorkerContext(None)
    state: LifespanState = {}
    wrapped = ASGIWrapper(cast(ASGIFramework, app))
    connections: set[asyncio.Task[Any]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        await _Connection(wrapped, loop, config, context, state, reader, writer, discard_limit=discard_limit)

    server = await asyncio.start_server(
        on_connection, sock=sock, backlog=config.backlog, ssl=ssl_context,
        ssl_handshake_timeout=config.ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)
    try:
        await shutdown_trigger()
    finally:
        server.close()
        await context.terminated.set()  # idle connections close now, busy ones after their requests
        if connections:
            _, pending = await asyncio.wait(set(connections), timeout=config.graceful_timeout)
            for task in pending:
                task.cancel()
            if pending:
                # A cancelled connection still closes its TLS session, bounded by ssl_shutdown_timeout.
                await asyncio.wait(pending, timeout=ssl_shutdown_timeout + 1.0)
        await server.wait_closed()


def check_hypercorn() -> None:
    """Raise ImportError naming what is missing if hypercorn's internals this module uses have moved."""
    expected: dict[Callable[..., Any], tuple[str, ...]] = {
        H2Protocol.__init__: ("self", "app", "config", "context", "task_group", "connection_state", "ssl",
                              "client", "server", "send"),
        ProtocolWrapper.__init__: ("self", "app", "config", "context", "task_group", "state", "ssl", "client",
                                   "server", "send", "alpn_protocol"),
        TCPServer.__init__: ("self", "app", "loop", "config", "context", "state", "reader", "writer"),
    }
    problems = [f"{fn.__qualname__}{inspect.signature(fn)}" for fn, params in expected.items()
                if tuple(inspect.signature(fn).parameters) != params]
    methods = {H2Protocol: ("_handle_events", "_flush", "handle", "initiate"),
               TaskGroup: ("spawn_app",),
               ProtocolWrapper: ("handle", "initiate"),
               TCPServer: ("run", "_close", "_read_data", "_idle_timeout", "protocol_send")}
    problems += [f"{cls.__name__}.{name}" for cls, names in methods.items() for name in names
                 if not inspect.iscoroutinefunction(getattr(cls, name, None))]
    if not problems:
        # The instance attributes read here are set in the constructors, which only store things.
        config = Config()
        context = WorkerContext(None)
        protocol = H2Protocol(cast(Any, None), config, context, cast(Any, None), cast(Any, None), True, None, None,
                              cast(Any, None))
        for name, kind in (("streams", dict), ("stream_buffers", dict), ("connection", h2.connection.H2Connection),
                           ("client", type(None))):
            if not isinstance(getattr(protocol, name, None), kind):
                problems.append(f"H2Protocol().{name}")
        server = TCPServer(cast(Any, None), cast(Any, None), config, context, {}, cast(Any, None), cast(Any, None))
        problems += [f"TCPServer().{name}" for name in ("app", "loop", "config", "context", "state", "reader",
                                                        "writer", "idle_task") if not hasattr(server, name)]
    if problems:
        raise ImportError(f"streamgw.orchestrator.h2server supports hypercorn 0.18; this hypercorn differs in: "
                          f"{', '.join(problems)}")


check_hypercorn()
