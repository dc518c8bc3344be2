"""Live AI paid on a local chain: the start prepays a minute, then the gateway pays every 5 s of stream
(go-livepeer's interval) to the orchestrator's ``/payment``, whose meter charges the stream as it runs. The
same with a remote signer holding the key (``streamgw signer``), and a signer that is down.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from streamgw.errors import SignerError
from streamgw.payments.chain import Deployment
from streamgw.payments.keystore import new_keystore
from streamgw.payments.localchain import ANVIL_KEYS, Anvil
from tests.chain_harness import chain_for, run
from tests.conftest import FFMPEG, OrchestratorProcess, RunningGateway, finish, free_port, start_gateway
from tests.harness import poll
from tests.harness import testsrc as lavfi_testsrc

pytestmark = pytest.mark.slow

ORCH_KEY, GATEWAY_KEY, SIGNER_KEY = ANVIL_KEYS[2], ANVIL_KEYS[1], ANVIL_KEYS[3]
TICKET_EV = 10**15


def _fund(anvil: Anvil, deployment: Deployment, key: str) -> None:
    chain = chain_for(anvil, deployment, key)

    async def fund() -> None:
        try:
            await chain.fund_deposit_and_reserve(10**18, 10**18)
        finally:
            await chain.close()

    run(fund())


def _keystore(tmp: Path, name: str, key: str) -> tuple[str, str]:
    password = tmp / "password"
    password.write_text("pw\n")
    path = tmp / f"{name}.json"
    new_keystore(path, "pw", private_key=bytes.fromhex(key[2:]), iterations=2**10)
    return str(path), str(password)


def _chain(anvil: Anvil, deployment: Deployment) -> list[str]:
    return ["--eth-url", anvil.url, "--ticket-broker-addr", deployment.ticket_broker,
            "--rounds-manager-addr", deployment.rounds_manager]


def _orchestrator(tmp: Path, anvil: Anvil, deployment: Deployment,
                  orchestrators: Callable[..., OrchestratorProcess]) -> tuple[OrchestratorProcess, Path]:
    keystore, password = _keystore(tmp, "orch", ORCH_KEY)
    data = tmp / "orch"
    orch = orchestrators(*_chain(anvil, deployment), "--eth-keystore-path", keystore, "--eth-password-file",
                         password, "--price-per-unit", "1000", "--ticket-ev", str(TICKET_EV), "--max-face-value",
                         str(TICKET_EV + 1), "--live-pipelines", "noop", data_dir=str(data))
    return orch, data


def _publish(url: str, seconds: int) -> object:
    import subprocess

    return subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                             *lavfi_testsrc("320x180", 15),
                             "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-f", "flv",
                             url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _winners(data: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(data / "tickets.db") as db:
            return {state: n for state, n in db.execute("SELECT state, COUNT(*) FROM winners GROUP BY state")}
    except sqlite3.OperationalError:
        return {}


def test_live_ai_prepays_then_pays_every_five_seconds(
        tmp_path: Path, anvil: Anvil, deployment: Deployment, chain_snapshot: None,
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., OrchestratorProcess]) -> None:
    _fund(anvil, deployment, GATEWAY_KEY)
    orch, data = _orchestrator(tmp_path, anvil, deployment, orchestrators)
    keystore, password = _keystore(tmp_path, "gw", GATEWAY_KEY)
    gw = gateway_factory(orch_addr=orch.url, transcoding_options="none", eth_url=anvil.url,
                         ticket_broker_addr=deployment.ticket_broker, rounds_manager_addr=deployment.rounds_manager,
                         eth_keystore_path=keystore, eth_password_file=password, max_ticket_ev=10 * TICKET_EV,
                         max_total_ev=100 * TICKET_EV)
    proc = _publish(gw.rtmp_url("paidai") + "?pipeline=noop", 16)
    try:
        # The prepayment with the start, then one payment per 5 s of stream: at least two more in 16 s.
        gw.wait_for(lambda: gw.get("/api/payments").json()["payments"] >= 3, 40, "three live payments")
        view = gw.get("/api/payments").json()
        assert view["refused"] == 0 and view["tickets_sent"] >= 2
        # The first payment alone covers a minute of 720p30 at 1000 wei/pixel.
        assert int(view["spend_by_stream"]["paidai"]) > 60 * 1280 * 720 * 30 * 1000
        gw.wait_for(lambda: gw.get("/api/streams/paidai").json()["renditions"].__contains__("ai"), 40,
                    "AI output while paid")
        assert poll(lambda: _winners(data).get("redeemed", 0) >= 2, 20), _winners(data)
    finally:
        finish(proc, kill=True)  # type: ignore[arg-type]


def test_a_remote_signer_that_is_down_is_a_clear_error() -> None:
    with pytest.raises(SignerError, match=r"remote signer http://127\.0\.0\.1:\d+/sign-orchestrator-info: Connect"):
        start_gateway(orch_addr="https://127.0.0.1:9", transcoding_options="none",
                      remote_signer_url=f"http://127.0.0.1:{free_port()}")
