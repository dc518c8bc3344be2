"""A local chain for tests and ``streamgw up --payments``: anvil (Foundry), and the contracts deployed on it.

anvil's Linux binary ships inside the npm package ``@foundry-rs/anvil`` (pinned in ``contracts/package.json``,
installed by ``npm ci --prefix contracts``). It listens on 127.0.0.1, mines a block per transaction, and with
``state_file`` keeps its whole state across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx

from streamgw.errors import ChainUnavailable, ConfigError
from streamgw.livepeer.signing import Signer
from streamgw.payments.chain import Chain, ChainSettings, Deployment, SenderInfo

__all__ = ["ANVIL_KEYS", "DEFAULT_ROUND_LENGTH", "Anvil", "deploy", "find_anvil", "fund_sender"]

ANVIL_KEYS = (
    # anvil's default development accounts (mnemonic "test test ... junk"), funded with 10,000 ETH each on
    # every new anvil chain. Public knowledge: for a local chain only, never for real funds.
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)

DEFAULT_ROUND_LENGTH = 50
"""Blocks per round on a local chain. anvil mines a block per transaction (or every ``block_time``), so a round
lasts 50 transactions: long enough that a ticket's creation round (valid for ``ticket_validity_period`` = 2
rounds) outlives a test or a demo stream's redemptions, short enough that ``anvil_mine`` crosses one at once."""

_REPO = Path(__file__).resolve().parents[2]


def _npm_platform() -> str:
    """The suffix of the npm package holding this machine's anvil binary (``linux-amd64``, ``darwin-arm64``)."""
    system = {"Windows": "win32"}.get(platform.system(), platform.system().lower())
    machine = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return f"{system}-{machine}"


def find_anvil() -> Path:
    """anvil: ``$STREAMGW_ANVIL``, the npm package under ``contracts/``, or ``anvil`` on PATH.

    Raises :class:`ConfigError` when there is none.
    """
    env = os.environ.get("STREAMGW_ANVIL")
    candidates = [Path(env)] if env else []
    candidates.append(_REPO / "contracts" / "node_modules" / "@foundry-rs" / f"anvil-{_npm_platform()}" / "bin"
                      / "anvil")
    on_path = shutil.which("anvil")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigError("anvil is not installed: run `npm ci --prefix contracts` (or set STREAMGW_ANVIL)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Anvil:
    """An anvil process on ``host`` (127.0.0.1) and ``port`` (0: a free one), usable from threads or asyncio.

    ``state_file``: anvil loads it at start and writes it when stopped (SIGTERM), so contracts and balances
    survive a restart. ``block_time``: seconds between blocks (None: a block per transaction).
    """

    def __init__(self, *, port: int = 0, state_file: Path | None = None, chain_id: int = 31337,
                 block_time: float | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.state_file = state_file
        self.chain_id = chain_id
        self.block_time = block_time
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Its JSON-RPC URL."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The command line (raises :class:`ConfigError` without anvil)."""
        args = [str(find_anvil()), "--host", self.host, "--port", str(self.port), "--chain-id", str(self.chain_id),
                "--silent"]
        if self.state_file is not None:
            args += ["--state", str(self.state_file)]
        if self.block_time:
            args += ["--block-time", f"{self.block_time:g}"]
        return args

    def start_sync(self, timeout: float = 10.0) -> None:
        """Start it and wait (bounded) until ``eth_chainId`` answers; :class:`ChainUnavailable` if it does not."""
        if self.proc is not None:
            raise RuntimeError("anvil is running already")
        if not self.port:
            self.port = _free_port()
        command = self.command()
        # stderr goes to a file, not a pipe nobody reads (a full pipe would stall anvil); read back on failure.
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr)
        deadline = time.monotonic() + timeout
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                err = self._stderr_tail()
                self.stop_sync()
                raise ChainUnavailable(f"anvil exited ({code}): {err}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(self.url, json=body, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop_sync()
        raise ChainUnavailable(f"anvil did not answer on {self.url} within {timeout:g} s")

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-500:]

    def stop_sync(self, timeout: float = 10.0) -> None:
        """Stop it: SIGTERM (anvil then writes its state file), SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    async def start(self, timeout: float = 10.0) -> None:
        """:meth:`start_sync` off the event loop."""
        await asyncio.to_thread(self.start_sync, timeout)

    async def stop(self) -> None:
        """:meth:`stop_sync` off the event loop."""
        await asyncio.to_thread(self.stop_sync)


async def deploy(rpc_url: str, deployer_key: str, *, round_length: int = DEFAULT_ROUND_LENGTH,
                 unlock_period: int = 2, ticket_validity_period: int = 2) -> Deployment:
    """Deploy the RoundsManager, then the TicketBroker using it, from ``deployer_key``'s account.

    ``round_length`` is in blocks; ``unlock_period`` (rounds from ``unlock()`` to ``withdraw()``) and
    ``ticket_validity_period`` (rounds a ticket's creation round stays redeemable) are in rounds.
    """
    async with Chain(ChainSettings(rpc_url=rpc_url), Signer(deployer_key).account) as chain:
        rounds = await chain.deploy("RoundsManager", round_length)
        broker = await chain.deploy("TicketBroker", rounds, unlock_period, ticket_validity_period)
        return Deployment(chain_id=await chain.chain_id(), ticket_broker=broker, rounds_manager=rounds)


async def fund_sender(settings: ChainSettings, key: str, deposit: int, reserve: int) -> SenderInfo:
    """Fund ``key``'s deposit and reserve (wei) in one transaction; its sender info after."""
    signer = Signer(key)
    async with Chain(settings, signer.account) as chain:
        await chain.fund_deposit_and_reserve(deposit, reserve)
        return await chain.sender_info(signer.address)
