"""The ``streamgw`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import textwrap
from fractions import Fraction
from pathlib import Path
from typing import Any

import uvicorn

from streamgw import __version__
from streamgw.api.signer import signer_app
from streamgw.config import Settings, load_settings, split_addr
from streamgw.errors import ConfigError, StreamgwError
from streamgw.livepeer.signing import Signer, parse_address_list
from streamgw.log import configure
from streamgw.net import tcp_listener
from streamgw.node import GatewayNode, chain_settings, load_profiles
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings, PaymentSettings, default_data_dir
from streamgw.payments.chain import Chain
from streamgw.payments.devnet import Devnet, start_devnet
from streamgw.payments.keystore import load_signer, new_keystore, read_password
from streamgw.payments.remote_signer import SignerService
from streamgw.payments.sender import SenderLimits, TicketSender
from streamgw.payments.sender_service import SenderService
from streamgw.pipelines import registry as pipeline_registry
from streamgw.supervise import Supervisor

log = logging.getLogger(__name__)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help text without splitting words at hyphens (flags, URLs, go-livepeer)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (also STREAMGW_CONFIG)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind: Any = field.annotation if field.annotation in (int, float) else str
        parser.add_argument(
            flag, dest=name, type=kind, default=None, metavar=name.upper(),
            help=f"{field.description} (default: {field.default!r}; env STREAMGW_{name.upper()})",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand and setting."""
    parser = argparse.ArgumentParser(
        prog="streamgw",
        description="Live video gateway for the Livepeer network: RTMP in, segments, HLS out.",
        epilog="Settings come from defaults, then --config FILE, then STREAMGW_* variables, then flags.",
    )
    parser.add_argument("--version", action="version", version=f"streamgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", formatter_class=_HelpFormatter, help="run the whole system on this machine (zero config)",
                        description="Run the gateway: RTMP ingest, segmenter, HLS output, API and web page.")
    _add_settings_flags(up)
    gw = sub.add_parser("gateway", formatter_class=_HelpFormatter, help="run the gateway alone (go-livepeer -gateway)",
                        description="Run the gateway: RTMP in, segments to --orch-addr orchestrators, HLS out.")
    _add_settings_flags(gw)
    orch = sub.add_parser("orchestrator", formatter_class=_HelpFormatter,
                          help="run a transcoding orchestrator (go-livepeer -orchestrator)",
                          description="Run an orchestrator: GetOrchestrator over gRPC and /segment over "
                                      "HTTPS on one TLS port; transcodes with PyAV.")
    _add_settings_flags(orch)
    up.add_argument("--payments", action="store_true",
                    help="also run a local chain (anvil), deploy the TicketBroker and RoundsManager, fund the "
                         "gateway and pay the orchestrator for every segment with tickets")
    signer = sub.add_parser("signer", formatter_class=_HelpFormatter, help="run a remote signer (go-livepeer's API)",
                            description="Hold the account and pay for gateways that have no key "
                                        "(/sign-orchestrator-info, /generate-live-payment).")
    _add_settings_flags(signer)
    signer.add_argument("--signer-addr", default="127.0.0.1:8937", metavar="HOST:PORT", help="listen address")
    account = sub.add_parser("account", formatter_class=_HelpFormatter, help="make an encrypted keystore",
                             description="Write a new account to an encrypted keystore (password from "
                                         "STREAMGW_ETH_PASSWORD or --eth-password-file).")
    account.add_argument("action", choices=["new"])
    account.add_argument("--keystore", required=True, metavar="FILE")
    account.add_argument("--eth-password-file", default="", metavar="FILE")
    pay = sub.add_parser("payments", formatter_class=_HelpFormatter, help="the account's funds on chain",
                         description="Show or move the account's TicketBroker deposit and reserve "
                                     "(amounts in wei, or with an eth/gwei suffix).")
    pay.add_argument("action", choices=["show", "fund", "unlock", "cancel-unlock", "withdraw"])
    pay.add_argument("--deposit", default="0", metavar="AMOUNT")
    pay.add_argument("--reserve", default="0", metavar="AMOUNT")
    _add_settings_flags(pay)
    return parser


def parse_wei(text: str) -> int:
    """``12345`` (wei), ``0.5eth``, ``100gwei``; raises ConfigError."""
    value = text.strip().lower().replace("_", "")
    scale = 1
    for suffix, factor in (("gwei", 10**9), ("eth", 10**18), ("wei", 1)):
        if value.endswith(suffix):
            value, scale = value[: -len(suffix)].strip(), factor
            break
    try:
        amount = Fraction(value) * scale
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{text!r} is not an amount (wei, or with an eth/gwei suffix)") from exc
    if amount < 0 or amount.denominator != 1:
        raise ConfigError(f"{text!r} is not a whole, non-negative number of wei")
    return int(amount)


async def _payments_command(action: str, settings: Settings, deposit: int, reserve: int) -> int:
    """``streamgw payments ...`` against the chain in the settings, as the keystore's account."""
    signer = node_signer(settings)
    if signer is None:
        raise ConfigError("payments needs eth_url (and eth_keystore_path, ticket_broker_addr, rounds_manager_addr)")
    chain = Chain(chain_settings(settings), signer.account)
    try:
        if action == "fund":
            if deposit == 0 and reserve == 0:
                raise ConfigError("fund needs --deposit and/or --reserve")
            await chain.fund_deposit_and_reserve(deposit, reserve)
        elif action == "unlock":
            await chain.unlock()
        elif action == "cancel-unlock":
            await chain.cancel_unlock()
        elif action == "withdraw":
            await chain.withdraw()
        info = await chain.sender_info(signer.address)
        rounds = await chain.round_info()
        print(json.dumps({
            "address": signer.checksum_address, "balance": str(await chain.balance(signer.address)),
            "deposit": str(info.deposit), "reserve": str(info.reserve), "withdraw_round": info.withdraw_round,
            "unlock_in_progress": info.withdraw_round != 0, "round": rounds.current_round,
        }, indent=1))
    finally:
        await chain.close()
    return 0


def payment_settings(settings: Settings) -> PaymentSettings | None:
    """An orchestrator's payments from the settings (None offchain)."""
    if not settings.eth_url:
        return None
    return PaymentSettings(chain=chain_settings(settings), price_per_unit=settings.price_per_unit,
                           pixels_per_unit=settings.pixels_per_unit, ticket_ev=settings.ticket_ev,
                           max_face_value=settings.max_face_value, initialize_round=settings.initialize_round)


def node_signer(settings: Settings) -> Signer | None:
    """The node's account from its keystore when it is on-chain (None offchain)."""
    if not settings.eth_url:
        return None
    if not settings.eth_keystore_path:
        raise ConfigError("eth_url needs eth_keystore_path (the node's account)")
    return load_signer(settings.eth_keystore_path, read_password(settings.eth_password_file))


def orchestrator_node(settings: Settings) -> OrchestratorNode:
    """An orchestrator built from the settings."""
    return OrchestratorNode(OrchestratorNodeSettings(
        serve_addr=settings.serve_addr,
        service_addr=settings.service_addr,
        data_dir=Path(settings.orch_data_dir) if settings.orch_data_dir else default_data_dir(),
        max_sessions=settings.max_sessions,
        transcode_workers=settings.transcode_workers,
        max_concurrent=settings.transcode_capacity,
        delay=settings.orch_delay,
        require_signed=settings.orch_require_signed,
        allowed_gateways=parse_address_list(settings.orch_allowed_gateways),
        live_pipelines=live_pipelines(settings.live_pipelines),
        live_capacity=settings.live_capacity,
        payments=payment_settings(settings),
    ), signer=node_signer(settings))


def live_pipelines(spec: str) -> tuple[str, ...]:
    """The ``live_pipelines`` setting as names: 'all' is every installed pipeline; an unknown one
    is a :class:`ConfigError` at start, not a refusal later."""
    installed = pipeline_registry.installed()
    if spec.strip() == "none":
        return ()
    names = sorted(installed) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in installed]
    if unknown:
        raise ConfigError(f"live_pipelines: unknown pipeline(s) {', '.join(unknown)} "
                          f"(installed: {', '.join(sorted(installed))})")
    return tuple(names)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # IPv6 in a URL (RFC 3986 3.2.2)


async def _serve_signer(settings: Settings, addr: str) -> int:
    """``streamgw signer``: the remote signer's API until SIGINT/SIGTERM."""
    signer = node_signer(settings)
    if signer is None:
        raise ConfigError("signer needs eth_url, eth_keystore_path, ticket_broker_addr and rounds_manager_addr")
    limits = SenderLimits(max_ticket_ev=settings.max_ticket_ev, max_total_ev=settings.max_total_ev,
                          deposit_multiplier=settings.deposit_multiplier)
    sender = TicketSender(signer, limits)
    watcher = SenderService(sender, Chain(chain_settings(settings), signer.account))
    service = SignerService(sender)
    host, port = split_addr(addr)
    sock = tcp_listener(host, port, what="signer")
    config = uvicorn.Config(signer_app(service), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    supervisor = Supervisor("signer")
    supervisor.spawn("chain-watch", watcher.watch)
    supervisor.spawn("http", lambda: server.serve(sockets=[sock]), restart=False)
    print(f"streamgw {__version__}: remote signer for {signer.checksum_address} at "
          f"http://{_url_host(host)}:{sock.getsockname()[1]}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(supervisor.fatal.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        server.should_exit = True
        await supervisor.close(wait=("http",), timeout=3.0)
        await watcher.chain.close()
    return 1 if supervisor.fatal.is_set() else 0


async def _serve(command: str, settings: Settings, *, payments: bool = False) -> int:
    """Run until SIGINT/SIGTERM (exit status 0) or a background task that cannot restart failed (1).

    ``payments`` (``up --payments``): a local chain first, and both nodes paying and paid on it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    orchestrator: OrchestratorNode | None = None
    gateway: GatewayNode | None = None
    devnet: Devnet | None = None
    gateway_settings = settings
    try:
        if payments:
            data_dir = Path(settings.orch_data_dir) if settings.orch_data_dir else default_data_dir()
            devnet = await start_devnet(data_dir / "devnet")
            gateway_settings = settings.model_copy(update=devnet.gateway_settings())
            settings = settings.model_copy(update=devnet.orchestrator_settings())
            print(f"streamgw {__version__}: local chain at {devnet.url} (chain {devnet.deployment.chain_id}), "
                  f"TicketBroker {devnet.deployment.ticket_broker}; gateway {devnet.gateway_address} funded "
                  f"with {devnet.deposit} wei deposit, {devnet.reserve} wei reserve", flush=True)
        if command == "orchestrator" or (command == "up" and not settings.orch_addr.strip()):
            if command == "up" and not settings.live_pipelines.strip():
                # Zero config: the embedded orchestrator serves every installed live pipeline.
                settings = settings.model_copy(update={"live_pipelines": "all"})
            orchestrator = orchestrator_node(settings)
            await orchestrator.start()
            print(f"streamgw {__version__}: orchestrator at {orchestrator.url}", flush=True)
        if command in ("up", "gateway"):
            settings = gateway_settings
            gateway = GatewayNode(settings, [orchestrator.url] if orchestrator else None)
            await gateway.start()
            rtmp_host, http_host = (_url_host(split_addr(a)[0]) for a in (settings.rtmp_addr, settings.http_addr))
            print(f"streamgw {__version__}: publish to rtmp://{rtmp_host}:{gateway.rtmp.port}/live/STREAM, "
                  f"watch at http://{http_host}:{gateway.http_port}/", flush=True)  # the ports bound
        supervisors = [node.supervisor for node in (orchestrator, gateway) if node is not None]
        waits = [asyncio.ensure_future(stop.wait())]
        waits += [asyncio.ensure_future(sup.fatal.wait()) for sup in supervisors]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        for sup in supervisors:
            if sup.fatal.is_set():
                print(f"streamgw: stopping: {sup.node} {sup.fatal_error}", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        log.info("shutting down")
        if gateway is not None:
            await gateway.close()
        if orchestrator is not None:
            await orchestrator.close()
        if devnet is not None:
            await devnet.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamgw`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "account":
        try:
            password = read_password(args.eth_password_file)
            print(new_keystore(args.keystore, password))
        except (ConfigError, OSError) as exc:
            print(f"streamgw: {exc}", file=sys.stderr)
            return 2
        return 0
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(args.config, overrides)
        if args.command == "payments":
            deposit, reserve = parse_wei(args.deposit), parse_wei(args.reserve)
        if args.command != "orchestrator" and settings.orch_addr.strip() or args.command == "up":
            load_profiles(settings.transcoding_options)  # fail at start-up, not at the first segment
    except ConfigError as exc:
        print(f"streamgw: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    try:
        if args.command == "payments":
            return asyncio.run(_payments_command(args.action, settings, deposit, reserve))
        if args.command == "signer":
            return asyncio.run(_serve_signer(settings, args.signer_addr))
        return asyncio.run(_serve(args.command, settings, payments=getattr(args, "payments", False)))
    except ConfigError as exc:
        print(f"streamgw: {exc}", file=sys.stderr)
        return 2
    except (OSError, StreamgwError) as exc:  # ListenError among them: the message names the address
        print(f"streamgw: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
