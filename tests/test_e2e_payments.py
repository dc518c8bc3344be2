"""A stream paid end to end on a local chain: RTMP -> streamgw's gateway (tickets) -> an orchestrator process
(checks, credits, redeems) -> HLS; the deposit moves on chain; ``/api/payments`` and ``/metrics`` show it.
Also ``streamgw up --payments`` from nothing, and the keystore rules."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from streamgw.config import load_settings
from streamgw.errors import ConfigError
from streamgw.livepeer.signing import Signer
from streamgw.node import GatewayNode
from streamgw.payments.chain import Deployment
from streamgw.payments.keystore import PASSWORD_ENV, load_signer, new_keystore, read_password
from streamgw.payments.localchain import ANVIL_KEYS, Anvil
from tests.chain_harness import chain_for, run
from tests.conftest import OrchestratorProcess, RunningGateway, free_port, publish
from tests.harness import poll, spawn_streamgw
from tests.media import parse_playlist

pytestmark = pytest.mark.slow

GATEWAY_KEY = ANVIL_KEYS[1]
ORCH_KEY = ANVIL_KEYS[2]
TICKET_EV = 10**15
PASSWORD = "correct horse battery staple"


def _keystores(tmp: Path) -> tuple[Path, Path, Path]:
    password = tmp / "password"
    password.write_text(PASSWORD + "\n")
    gw, orch = tmp / "gateway.json", tmp / "orchestrator.json"
    for path, key in ((gw, GATEWAY_KEY), (orch, ORCH_KEY)):
        new_keystore(path, PASSWORD, private_key=bytes.fromhex(key[2:]), iterations=2**10)
    return gw, orch, password


def _chain_flags(anvil: Anvil, deployment: Deployment) -> list[str]:
    return ["--eth-url", anvil.url, "--ticket-broker-addr", deployment.ticket_broker,
            "--rounds-manager-addr", deployment.rounds_manager]


def test_a_stream_is_paid_and_its_winning_tickets_redeemed_on_chain(
        tmp_path: Path, anvil: Anvil, deployment: Deployment, chain_snapshot: None,
        gateway_factory: Callable[..., RunningGateway], orchestrators: Callable[..., OrchestratorProcess]) -> None:
    gw_keystore, orch_keystore, password = _keystores(tmp_path)
    chain = chain_for(anvil, deployment, GATEWAY_KEY)
    gateway_address = Signer(GATEWAY_KEY).address
    orch_address = Signer(ORCH_KEY).address

    async def fund() -> tuple[int, int]:
        await chain.fund_deposit_and_reserve(10**18, 10**18)
        return (await chain.sender_info(gateway_address)).deposit, await chain.balance(orch_address)

    deposit_before, orch_before = run(fund())
    data_dir = tmp_path / "orch"
    orch = orchestrators(*_chain_flags(anvil, deployment), "--eth-keystore-path", str(orch_keystore),
                         "--eth-password-file", str(password), "--price-per-unit", "1000",
                         "--ticket-ev", str(TICKET_EV), "--max-face-value", str(TICKET_EV + 1),
                         data_dir=str(data_dir))
    gw = gateway_factory(orch_addr=orch.url, transcoding_options="P144p30fps16x9", eth_url=anvil.url,
                         ticket_broker_addr=deployment.ticket_broker, rounds_manager_addr=deployment.rounds_manager,
                         eth_keystore_path=str(gw_keystore), eth_password_file=str(password),
                         max_ticket_ev=10 * TICKET_EV, max_total_ev=100 * TICKET_EV)
    proc = publish(gw.rtmp_url("paid"), seconds=6)
    assert proc.returncode == 0, proc.stderr
    gw.wait_for(lambda: gw.get("/stream/paid/P144p30fps16x9.m3u8").status_code == 200 and parse_playlist(
        gw.get("/stream/paid/P144p30fps16x9.m3u8").text).ended, timeout=60, what="the rendition")
    assert len(parse_playlist(gw.get("/stream/paid/P144p30fps16x9.m3u8").text).entries) == 3

    view = gw.get("/api/payments").json()
    assert view["mode"] == "on-chain" and view["sender"] == Signer(GATEWAY_KEY).checksum_address
    assert view["payments"] == 3 and view["refused"] == 0
    assert view["tickets_sent"] >= 1 and int(view["deposit"]) > 0 and view["chain"]["ok"]
    # Three segments of 256x144 at 30 fps, 2 s each, x 1.02, at 1000 wei per pixel.
    assert int(view["spend_by_stream"]["paid"]) == 3 * 256 * 144 * 30 * 2 * 102 * 1000 // 100
    assert list(view["balances"]) == [orch.url]
    metrics = gw.get("/metrics").text
    assert re.search(r"^streamgw_payment_tickets_sent_total [1-9]", metrics, re.M), metrics[-2000:]
    assert "streamgw_payment_spend_wei_total{stream=\"paid\"}" in metrics

    def redeemed() -> int:
        with sqlite3.connect(data_dir / "tickets.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM winners WHERE state = 'redeemed'").fetchone()[0])

    assert poll(lambda: redeemed() == view["tickets_sent"], 20), "every ticket won and was redeemed"

    async def after() -> tuple[int, int]:
        try:
            return (await chain.sender_info(gateway_address)).deposit, await chain.balance(orch_address)
        finally:
            await chain.close()

    deposit_after, orch_after = run(after())
    assert deposit_before - deposit_after == view["tickets_sent"] * (TICKET_EV + 1)
    assert orch_after > orch_before  # face values in, less the redemptions' gas


def test_up_with_payments_pays_from_nothing(tmp_path: Path) -> None:
    """``streamgw up --payments``: a local chain, the contracts, a funded gateway, every segment paid."""
    rtmp, http = free_port(), free_port()
    proc = spawn_streamgw("up", "--payments", "--rtmp-addr", f"127.0.0.1:{rtmp}", "--http-addr",
                          f"127.0.0.1:{http}", "--serve-addr", f"127.0.0.1:{free_port()}",
                          "--transcoding-options", "P144p30fps16x9", "--live-pipelines", "none",
                          "--orch-data-dir", str(tmp_path), ports=[rtmp, http])
    proc.wait_ready(timeout=60)
    try:
        result = publish(f"rtmp://127.0.0.1:{rtmp}/live/newcomer", seconds=4)
        assert result.returncode == 0, result.stderr
        import httpx

        def paid() -> bool:
            view = httpx.get(f"http://127.0.0.1:{http}/api/payments", timeout=5).json()
            return view.get("payments", 0) >= 2 and int(view["spend_by_stream"].get("newcomer", 0)) > 0
        assert poll(paid, 60), httpx.get(f"http://127.0.0.1:{http}/api/payments", timeout=5).text
        view = httpx.get(f"http://127.0.0.1:{http}/api/payments", timeout=5).json()
        assert view["tickets_sent"] >= 1 and int(view["deposit"]) > 0
    finally:
        err = proc.stop()
    assert proc.proc.returncode == 0, err
    deployment = json.loads((tmp_path / "devnet" / "deployment.json").read_text())
    assert deployment["ticket_broker"].startswith("0x") and deployment["chain_id"] == 31337
    assert (tmp_path / "tickets.db").exists()


def test_keystore_password_rules(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    address = new_keystore(path, "pw", iterations=2**10)
    assert load_signer(path, "pw").checksum_address == address
    with pytest.raises(ConfigError) as err:
        load_signer(path, "wrong password")
    assert "wrong password?" in str(err.value) and "wrong password\"" not in str(err.value)
    assert read_password("", {PASSWORD_ENV: "from-env"}) == "from-env"
    (tmp_path / "pw").write_text("from-file\nignored\n")
    assert read_password(str(tmp_path / "pw"), {PASSWORD_ENV: "from-env"}) == "from-file"
    with pytest.raises(ConfigError, match="STREAMGW_ETH_PASSWORD or eth_password_file"):
        read_password("", {})
    # The password variable is not a setting (never in a settings dump), and an on-chain gateway needs a keystore.
    settings = load_settings(None, {"eth_url": "http://127.0.0.1:1", "ticket_broker_addr": "0x" + "11" * 20,
                                    "rounds_manager_addr": "0x" + "22" * 20}, environ={PASSWORD_ENV: "secret"})
    assert "secret" not in settings.model_dump_json()
    with pytest.raises(ConfigError, match="eth_keystore_path"):
        GatewayNode(settings, ["https://127.0.0.1:1"])


def test_payments_cli(tmp_path: Path, anvil: Anvil, deployment: Deployment, chain_snapshot: None) -> None:
    """``streamgw account new`` then ``streamgw payments fund/show/unlock/cancel-unlock`` as an operator would."""
    keystore, password = tmp_path / "op.json", tmp_path / "pw"
    password.write_text("pw\n")
    made = subprocess.run(["streamgw", "account", "new", "--keystore", str(keystore), "--eth-password-file",
                           str(password)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    address = made.stdout.strip()
    # Give the new account some ETH from anvil's first one.
    funder = chain_for(anvil, deployment, ANVIL_KEYS[0])

    async def give() -> None:
        try:
            w3, account = funder.w3, funder.account
            assert account is not None
            tx = {"to": address, "value": 10**18, "gas": 21000, "nonce": await w3.eth.get_transaction_count(
                account.address), "chainId": deployment.chain_id, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1}
            await w3.eth.wait_for_transaction_receipt(
                await w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))
        finally:
            await funder.close()

    run(give())
    base = ["streamgw", "payments", "--eth-url", anvil.url, "--ticket-broker-addr", deployment.ticket_broker,
            "--rounds-manager-addr", deployment.rounds_manager, "--eth-keystore-path", str(keystore),
            "--eth-password-file", str(password)]

    def cli(*args: str) -> dict[str, object]:
        out = subprocess.run([*base[:2], *args, *base[2:]], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    shown = cli("fund", "--deposit", "0.1eth", "--reserve", "20000000gwei")
    assert (shown["address"], shown["deposit"], shown["reserve"]) == (address, str(10**17), str(2 * 10**16))
    assert cli("unlock")["unlock_in_progress"] is True
    assert cli("cancel-unlock")["unlock_in_progress"] is False
    refused = subprocess.run([*base[:2], "withdraw", *base[2:]], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "no unlock request in progress" in refused.stderr
    bad = subprocess.run([*base[:2], "fund", "--deposit", "lots", *base[2:]], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "'lots' is not an amount" in bad.stderr
