"""Shared fixtures: a real gateway on 127.0.0.1 ports, orchestrator processes, an isolated HOME.

What they start comes from :mod:`tests.harness` (shared with the benchmarks); its names are
re-exported here for the tests that import them from this module.
"""

from __future__ import annotations

import os
import site
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401 - imported before any test runs: see below
import pytest

from streamgw.config import Settings, split_addr
from tests.harness import (  # noqa: F401 - re-exported for the tests
    FFMPEG,
    FFPROBE,
    OrchestratorProcess,
    RunningGateway,
    ffmpeg_publish_args,
    finish,
    free_port,
    publish,
    start_gateway,
    start_orchestrator,
    start_publish,
    stop_gateway,
    wait_until,
)

pytest_plugins = ["tests.chain_harness"]  # anvil, deployment, chain_snapshot

# hypothesis's pytest plugin imports hypothesis at the end of the session if no test did; by then
# a C extension has left CPython 3.11's AST recursion counter off and the assertion rewriter's
# parse fails ("AST constructor recursion depth mismatch"). Importing it up front avoids that.

# The ports a node listens on when nobody says otherwise: tests never use them (see below).
DEFAULT_PORTS = tuple(split_addr(str(Settings.model_fields[name].default))[1]
                      for name in ("rtmp_addr", "http_addr", "serve_addr"))


class DefaultPorts:
    """Listening sockets on the default ports, so that a node started on one fails at bind time."""

    def __init__(self) -> None:
        self.held: dict[int, socket.socket] = {}

    def hold(self) -> None:
        """Take each default port not held yet; one another process holds is left to it (binding
        there fails just the same) and tried again before the next test."""
        for port in DEFAULT_PORTS:
            if port in self.held:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen(1)
            except OSError:
                sock.close()
                continue
            self.held[port] = sock

    def close(self) -> None:
        """Release them."""
        for sock in self.held.values():
            sock.close()
        self.held.clear()


@pytest.fixture(scope="session")
def default_ports() -> Iterator[DefaultPorts]:
    """The default ports, held for the whole run (tests use free ports only)."""
    ports = DefaultPorts()
    yield ports
    ports.close()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, default_ports: DefaultPorts) -> Iterator[Path]:
    """Each test (and every process it starts) gets an empty ``HOME``, no ``STREAMGW_*`` variables and
    the default ports taken; it fails if anything was written under ``HOME`` (the orchestrator's
    default data directory is there: tests pass a temporary one)."""
    default_ports.hold()
    home = tmp_path_factory.mktemp("home")
    names = ["HOME", "PYTHONUSERBASE", *(k for k in os.environ if k.startswith("STREAMGW_"))]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.setdefault("PYTHONUSERBASE", site.getuserbase())  # a `pip install --user` still imports
    for k in names:
        if k.startswith("STREAMGW_"):
            del os.environ[k]
    os.environ["HOME"] = str(home)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert not written, f"written under $HOME ({home}): {written}"


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways with custom settings; all are stopped at the end of the test."""
    running: list[RunningGateway] = []

    def make(**overrides: Any) -> RunningGateway:
        gw = start_gateway(**overrides)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    """A gateway with default test settings."""
    return gateway_factory()


@pytest.fixture
def orchestrators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OrchestratorProcess]]:
    """Start orchestrator processes; all are stopped at the end of the test."""
    started: list[OrchestratorProcess] = []

    def make(*extra: str, port: int | None = None, data_dir: str | None = None) -> OrchestratorProcess:
        orch = start_orchestrator(data_dir or str(tmp_path_factory.mktemp("orch")), port, *extra)
        started.append(orch)
        return orch

    yield make
    for orch in started:
        orch.stop(timeout=10)
