"""Background tasks are supervised: a failure is logged with context and restarted (or stops the node),
``/healthz`` says so, and the orchestrator's shutdown handler does not mute anyone else's errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from streamgw.api.app import create_app
from streamgw.errors import StreamgwError
from streamgw.gateway.hub import Hub
from streamgw.gateway.publishers import Publishers, PublisherSettings
from streamgw.metrics import Metrics
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings, QuietShutdown
from streamgw.output.hls import HlsOutput
from streamgw.supervise import Backoff, Supervisor, TaskState, TaskStatus
from tests.conftest import RunningGateway

FAST = Backoff(initial=0.01, maximum=0.04, stable=60.0)
WEB = Path(__file__).resolve().parent.parent / "web"


class FlakyLoop:
    """A background loop that raises on its first ``failures`` runs, then runs until cancelled."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            await asyncio.sleep(0)
            raise RuntimeError(f"boom {self.runs}")
        self.running.set()
        await asyncio.Event().wait()


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def test_a_failing_loop_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[TaskStatus]:
        sup = Supervisor("gateway", FAST)
        loop = FlakyLoop(failures=2)
        sup.spawn("hls", loop.run)
        await asyncio.wait_for(loop.running.wait(), 5)
        statuses = sup.statuses()
        await sup.close()
        assert loop.runs == 3
        return statuses

    with caplog.at_level(logging.ERROR, logger="streamgw.supervise"):
        (status,) = asyncio.run(scenario())
    assert status.name == "hls" and status.state is TaskState.RUNNING
    assert status.restarts == 2 and status.failures == 2
    assert status.last_error == "RuntimeError: boom 2"
    assert not status.healthy  # it failed moments ago
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "gateway: hls failed" in errors[0].getMessage() and "boom 1" in errors[0].getMessage()
    assert "restarting in" in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is RuntimeError  # the traceback


def test_a_loop_that_returns_counts_as_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def returns_once() -> None:
        runs.append(1)
        if len(runs) > 1:
            await asyncio.Event().wait()

    async def scenario() -> TaskStatus:
        sup = Supervisor("gateway", FAST)
        sup.spawn("discovery", returns_once)
        await _until(lambda: len(runs) == 2)
        status = sup.statuses()[0]
        await sup.close()
        return status

    with caplog.at_level(logging.ERROR, logger="streamgw.supervise"):
        status = asyncio.run(scenario())
    assert status.restarts == 1 and status.state is TaskState.RUNNING
    assert status.last_error is not None and "returned" in status.last_error
    assert any("discovery failed" in r.getMessage() for r in caplog.records)


def test_a_task_that_cannot_restart_sets_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[bool, str | None, TaskStatus]:
        sup = Supervisor("gateway", FAST)
        sup.spawn("http", FlakyLoop(failures=1).run, restart=False)
        await asyncio.wait_for(sup.fatal.wait(), 5)
        await asyncio.sleep(0.05)  # no restart comes
        status = sup.statuses()[0]
        await sup.close()
        return sup.fatal.is_set(), sup.fatal_error, status

    with caplog.at_level(logging.ERROR, logger="streamgw.supervise"):
        fatal, why, status = asyncio.run(scenario())
    assert fatal and why == "http: RuntimeError: boom 1"
    assert status.state is TaskState.FAILED and status.restarts == 0
    assert any("cannot be restarted" in r.getMessage() for r in caplog.records)


def test_close_stops_quietly_and_cancels_pending_restarts(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[TaskStatus], int]:
        sup = Supervisor("gateway", Backoff(initial=10.0))
        steady, flaky = FlakyLoop(failures=0), FlakyLoop(failures=5)
        sup.spawn("whep", steady.run)
        sup.spawn("dispatcher", flaky.run)
        await steady.running.wait()
        await _until(lambda: sup.statuses()[1].state is TaskState.RESTARTING)
        await sup.close()
        return sup.statuses(), flaky.runs

    with caplog.at_level(logging.DEBUG, logger="streamgw.supervise"):
        statuses, flaky_runs = asyncio.run(scenario())
    assert [s.state for s in statuses] == [TaskState.STOPPED, TaskState.STOPPED]
    assert flaky_runs == 1  # the restart waiting out its backoff never happened
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1  # only the real failure


def test_close_waits_for_tasks_told_to_end_then_cancels_them() -> None:
    async def scenario() -> tuple[bool, bool]:
        sup = Supervisor("gateway")
        done = asyncio.Event()
        ended_by_itself = False

        async def graceful() -> None:
            nonlocal ended_by_itself
            await done.wait()
            ended_by_itself = True

        sup.spawn("http", graceful, restart=False)
        sup.spawn("stubborn", lambda: asyncio.Event().wait(), restart=False)
        asyncio.get_running_loop().call_later(0.05, done.set)
        async with asyncio.timeout(5):
            await sup.close(wait=("http", "stubborn"), timeout=0.3)
        return ended_by_itself, sup.fatal.is_set()

    ended_by_itself, fatal = asyncio.run(scenario())
    assert ended_by_itself and not fatal


def test_backoff_doubles_up_to_its_maximum_and_resets_after_a_stable_run(
        caplog: pytest.LogCaptureFixture) -> None:
    b = Backoff(initial=0.5, maximum=4.0, stable=10.0)
    assert [b.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]

    now = [0.0]  # the supervisor's clock: each run "lasts" what fail_later adds
    runs: list[float] = []

    async def fail_later() -> None:
        runs.append(now[0])
        now[0] += 20.0 if len(runs) == 3 else 1.0  # the third run lasts longer than `stable`
        raise RuntimeError("x")

    async def scenario() -> None:
        sup = Supervisor("gateway", Backoff(initial=0.001, maximum=0.004, stable=10.0), clock=lambda: now[0])
        sup.spawn("loop", fail_later)
        await _until(lambda: len(runs) >= 6)  # the fifth failure has been handled
        await sup.close()

    with caplog.at_level(logging.ERROR, logger="streamgw.supervise"):
        asyncio.run(scenario())
    in_a_row = [r.args[3] for r in caplog.records if r.args and len(r.args) > 3][:5]  # type: ignore[index]
    assert in_a_row == [1, 2, 1, 2, 3]


class FailedTask:
    """A HealthSource test double: one task down, one fine."""

    def statuses(self) -> list[TaskStatus]:
        return [TaskStatus("hls", TaskState.RESTARTING, 3, 4, "RuntimeError: boom", 0.5),
                TaskStatus("whep", TaskState.RUNNING, 0, 0, None, None)]


class AllFine:
    """A HealthSource test double: every task running, no failure."""

    def statuses(self) -> list[TaskStatus]:
        return [TaskStatus("hls", TaskState.RUNNING, 0, 0, None, None)]


def _healthz(source: object) -> dict[str, object]:
    app = create_app(Publishers(Hub(), PublisherSettings()), HlsOutput(), Metrics(), WEB, health=source)  # type: ignore[arg-type]

    async def get() -> dict[str, object]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
            r = await client.get("/healthz")
            assert r.status_code == 200
            return dict(r.json())

    return asyncio.run(get())


def test_healthz_reports_a_failing_task_as_degraded() -> None:
    body = _healthz(FailedTask())
    assert body["status"] == "degraded"
    tasks = {t["name"]: t for t in body["tasks"]}  # type: ignore[attr-defined]
    assert tasks["hls"] == {"name": "hls", "state": "restarting", "restarts": 3, "failures": 4,
                            "last_error": "RuntimeError: boom", "last_failure_ago": 0.5}
    assert tasks["whep"]["state"] == "running"
    assert _healthz(AllFine())["status"] == "ok"


def test_gateway_loops_are_supervised_and_a_failure_shows_in_healthz(gateway: RunningGateway) -> None:
    gw = gateway
    names = [s.name for s in gw.call(gw.node.supervisor.statuses)]
    assert names == ["hls", "whep", "http"]  # no orchestrators configured: no dispatcher, no discovery
    assert gw.get("/healthz").json()["status"] == "ok"

    flaky: list[FlakyLoop] = []

    def add_flaky_loop() -> None:
        flaky.append(FlakyLoop(failures=1))
        gw.node.supervisor.spawn("probe", flaky[0].run)

    gw.call(add_flaky_loop)
    gw.wait_for(lambda: flaky[0].running.is_set(), timeout=10, what="the probe loop to be restarted")
    body = gw.get("/healthz").json()
    assert body["status"] == "degraded"
    probe = next(t for t in body["tasks"] if t["name"] == "probe")
    assert probe["state"] == "running" and probe["restarts"] == 1 and probe["last_error"] == "RuntimeError: boom 1"
    assert all(t["state"] == "running" for t in body["tasks"])


def test_dispatcher_and_discovery_are_supervised_with_orchestrators(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory(orch_addr="https://127.0.0.1:9", transcoding_options="P144p30fps16x9")
    assert [s.name for s in gw.call(gw.node.supervisor.statuses)] == ["hls", "whep", "dispatcher", "discovery",
                                                                      "live-ai", "http"]
    # No ladder ("none"): no dispatcher, but discovery and live AI still run.
    live_only = gateway_factory(orch_addr="https://127.0.0.1:9", transcoding_options="none")
    assert [s.name for s in live_only.call(live_only.node.supervisor.statuses)] == ["hls", "whep", "discovery",
                                                                                   "live-ai", "http"]


def _hypercorn_task() -> asyncio.Task[None]:
    from hypercorn.utils import raise_shutdown

    return asyncio.ensure_future(raise_shutdown(asyncio.Event().wait))


def test_orchestrator_shutdown_handler_mutes_only_its_own_connections(tmp_path: Path) -> None:
    """In `streamgw up` the gateway shares the loop: after the orchestrator closes, the gateway's
    connection errors still reach the loop's handler; the orchestrator's own are quiet."""
    seen: list[dict[str, object]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path))
        await node.start()
        await node.close()
        handler = loop.get_exception_handler()
        assert isinstance(handler, QuietShutdown)

        async def gateway_connection() -> None:
            raise ConnectionResetError("publisher went away")

        gateway_task = asyncio.ensure_future(gateway_connection())
        await asyncio.gather(gateway_task, return_exceptions=True)
        loop.call_exception_handler({"message": "gateway task failed", "exception": gateway_task.exception(),
                                     "task": gateway_task})
        loop.call_exception_handler({"message": "gateway callback failed", "exception": ssl_error()})

        hypercorn_task = _hypercorn_task()
        await asyncio.sleep(0)
        hypercorn_task.cancel()
        await asyncio.gather(hypercorn_task, return_exceptions=True)
        loop.call_exception_handler({"message": "connection task cancelled",
                                     "exception": asyncio.CancelledError(), "task": hypercorn_task})

    asyncio.run(scenario())
    assert [c["message"] for c in seen] == ["gateway task failed", "gateway callback failed"]


def ssl_error() -> Exception:
    import ssl

    return ssl.SSLError("gateway's TLS client broke")


def test_orchestrator_server_is_supervised_and_its_failure_is_fatal(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The orchestrator's TLS server runs under its supervisor: while it serves, it shows as running;
    when it fails (here a corrupt certificate in the data directory) the failure is logged, the
    supervisor's ``fatal`` is set (``streamgw`` waits on it and exits 1) and start() says why."""
    async def serving() -> list[TaskStatus]:
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path / "ok"))
        await node.start()
        try:
            return node.supervisor.statuses()
        finally:
            await node.close()

    statuses = {s.name: s for s in asyncio.run(serving())}
    assert set(statuses) == {"tls", "trickle-sweep"}  # the TLS server, and the idle trickle channels' sweep
    for status in statuses.values():
        assert (status.state, status.failures) == (TaskState.RUNNING, 0), status

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cert.pem").write_text("not a certificate")
    (broken / "key.pem").write_text("not a key")

    async def failing() -> tuple[str, bool, TaskStatus]:
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=broken))
        try:
            with pytest.raises(StreamgwError) as raised:
                await node.start()
            tls = next(s for s in node.supervisor.statuses() if s.name == "tls")
            return str(raised.value), node.supervisor.fatal.is_set(), tls
        finally:
            await node.close()

    with caplog.at_level(logging.ERROR, logger="streamgw.supervise"):
        why, fatal, status = asyncio.run(failing())
    assert fatal and "tls" in why and "SSLError" in why
    assert status.state is TaskState.FAILED and status.last_error and "SSLError" in status.last_error
    assert any("orchestrator: tls failed" in r.getMessage() for r in caplog.records)
