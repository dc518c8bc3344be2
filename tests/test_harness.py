"""The test harness itself: no test touches the real HOME or a default port, a missing browser fails;
the harness the benchmarks share (tests/harness.py) starts them from the repository root, and they
time the orchestrator through its constructor instead of replacing methods on live objects."""

from __future__ import annotations

import ast
import asyncio
import errno
import os
import pwd
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamgw.livepeer.capabilities import job_capabilities
from streamgw.livepeer.client import OrchestratorClient
from streamgw.livepeer.profiles import PRESETS
from streamgw.livepeer.segdata import AuthToken, SegMetadata, result_renditions
from streamgw.livepeer.signing import Signer, keccak256
from streamgw.livepeer.tls import CertificatePins
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings, TranscodeJob
from tests.browsers import BrowserMissing, chromium
from tests.conftest import DEFAULT_PORTS
from tests.harness import REPO, percentile, summary


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


class RecordingTranscoder:
    """A transcoder that answers each spec with the source bytes and its name, and keeps every job."""

    def __init__(self) -> None:
        self.jobs: list[tuple[TranscodeJob, str]] = []  # with the thread that ran it

    def __call__(self, job: TranscodeJob) -> list[bytes]:
        self.jobs.append((job, threading.current_thread().name))
        return [job.data + spec.name.encode() for spec in job.specs]


def test_orchestrator_transcodes_with_the_transcoder_it_is_given(tmp_path: Path) -> None:
    ladder = (PRESETS["P144p30fps16x9"], PRESETS["P240p30fps16x9"])
    body = bytes(range(256)) * 4  # verified by hash only: the transcoder given does not decode it
    transcoder = RecordingTranscoder()

    async def main() -> None:
        node = OrchestratorNode(OrchestratorNodeSettings(serve_addr="127.0.0.1:0", data_dir=tmp_path,
                                                         transcode_workers=1), transcoder)
        await node.start()
        client = OrchestratorClient(node.url, Signer(b"\x11" * 32), CertificatePins())
        try:
            info = await client.get_orchestrator(job_capabilities(ladder))
            meta = SegMetadata(manifest_id=b"cam", seq=7, seg_hash=keccak256(body), profiles=ladder,
                               duration_ms=2000, capabilities=job_capabilities(ladder),
                               auth_token=AuthToken.from_proto(info.auth_token))
            sent = time.monotonic()
            answer = await client.submit(info, meta, body, 2.0)
            renditions = result_renditions(answer.result)
            assert [await client.download(r.url, 5) for r in renditions] == [body + p.name.encode() for p in ladder]
        finally:
            await client.close()
            await node.close()
        [(job, thread)] = transcoder.jobs
        assert (job.seq, job.data, [s.name for s in job.specs]) == (7, body, [p.name for p in ladder])
        assert [(s.width, s.height) for s in job.specs] == [(p.width, p.height) for p in ladder]
        assert sent < job.queued_at < time.monotonic() and thread.startswith("transcode")

    asyncio.run(main())


def test_percentiles_are_numpys_linear_ones() -> None:
    rng = random.Random(3)
    for n in (1, 2, 5, 101):
        values = [rng.uniform(0, 10) for _ in range(n)]
        for q in (0, 50, 95, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert summary([0.1, 0.3, 0.2], scale=1000, quantiles=(50, 99), ndigits=1) == {
        "n": 3, "p50": 200.0, "p99": 298.0, "max": 300.0, "mean": 200.0}
    empty = summary([])
    assert empty["n"] == 0 and all(v != v for k, v in empty.items() if k != "n")  # nan


BENCHMARKS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name != "__init__.py")


def replaced_attributes(source: str) -> list[str]:
    """Assignments in ``source`` that replace an attribute of another object with a function or lambda,
    or set its private state: ``obj.method = wrapper``, ``obj._x = ...`` (``self``'s own are fine)."""
    tree = ast.parse(source)
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if not isinstance(target, ast.Attribute) or (
                    isinstance(target.value, ast.Name) and target.value.id in ("self", "cls")):
                continue
            value = node.value
            if (isinstance(value, ast.Lambda) or (isinstance(value, ast.Name) and value.id in functions)
                    or target.attr.startswith("_")):
                found.append(f"line {node.lineno}: {ast.unparse(target)} = {ast.unparse(value)}")
    return found


def test_no_benchmark_replaces_methods_on_live_objects() -> None:
    assert len(BENCHMARKS) >= 10
    patched = {p.name: found for p in BENCHMARKS if (found := replaced_attributes(p.read_text()))}
    assert not patched
    # The check itself, on what benchmarks/renditions_latency.py did before its transcoder was injected:
    assert replaced_attributes("async def timed(d, p): ...\nnode._transcode = timed\nclient.submit = timed\n"
                               "metrics.on_transcoded = lambda ok, s: None\natt.end = 1.0\n") == [
        "line 2: node._transcode = timed", "line 3: client.submit = timed",
        "line 4: metrics.on_transcoded = lambda ok, s: None"]


# Runs each benchmark as ``python benchmarks/X.py --help`` would, in one process (so imports are paid
# once): sys.path[0] is the script's folder and the script puts the repository root on sys.path.
RUN_AS_SCRIPTS = """
import contextlib, io, json, runpy, sys
failed = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code = repr(exc)
    if code != 0 or "usage:" not in out.getvalue():
        failed[path] = code
print(json.dumps(failed))
"""


def test_every_benchmark_starts_from_the_repository_root() -> None:
    """Every benchmark script imports the harness, the other benchmarks and streamgw, and parses ``--help``."""
    scripts = [str(p) for p in BENCHMARKS if '__name__ == "__main__"' in p.read_text()]  # __main__.py too
    assert len(scripts) >= 11
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", RUN_AS_SCRIPTS, *scripts], cwd=REPO / "benchmarks", env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "{}", out.stdout[-3000:]
