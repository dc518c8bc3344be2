"""The test harness itself: no test touches the real HOME or a default port, a missing browser fails."""

from __future__ import annotations

import errno
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamgw.orchestrator.node import OrchestratorNodeSettings
from tests.browsers import BrowserMissing, chromium
from tests.conftest import DEFAULT_PORTS


def test_home_is_a_fresh_directory_for_the_test_and_its_processes(isolated_home: Path) -> None:
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert Path.home() == isolated_home != real_home and not any(isolated_home.iterdir())
    # The orchestrator's default data directory follows HOME when a node is configured, not at import.
    assert OrchestratorNodeSettings().data_dir == isolated_home / ".streamgw" / "orchestrator"
    out = subprocess.run(
        [sys.executable, "-c", "from streamgw.orchestrator.node import default_data_dir; print(default_data_dir())"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(isolated_home / ".streamgw" / "orchestrator")
    assert not [k for k in os.environ if k.startswith("STREAMGW_")]


def test_default_ports_cannot_be_bound_during_tests() -> None:
    assert sorted(DEFAULT_PORTS) == [1935, 8935, 9935]
    for port in DEFAULT_PORTS:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the nodes do
            with pytest.raises(OSError) as exc:
                sock.bind(("127.0.0.1", port))
            assert exc.value.errno == errno.EADDRINUSE, port


def test_missing_chromium_fails_and_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(BrowserMissing) as exc:  # an AssertionError: a failure, not a skip
        with chromium([], binary=tmp_path / "chromium", driver=tmp_path / "chromedriver"):
            pass
    assert "apt-get install chromium;" in str(exc.value) and "apt-get install chromium-driver" in str(exc.value)
