"""The ``streamgw`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

from streamgw import __version__
from streamgw.config import Settings, load_settings, split_addr
from streamgw.errors import ConfigError, StreamgwError
from streamgw.livepeer.signing import parse_address_list
from streamgw.log import configure
from streamgw.node import GatewayNode, load_profiles
from streamgw.orchestrator.node import OrchestratorNode, OrchestratorNodeSettings, default_data_dir
from streamgw.pipelines import registry as pipeline_registry

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
    return parser


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
    ))


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


async def _serve(command: str, settings: Settings) -> int:
    """Run until SIGINT/SIGTERM (exit status 0) or a background task that cannot restart failed (1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    orchestrator: OrchestratorNode | None = None
    gateway: GatewayNode | None = None
    try:
        if command == "orchestrator" or (command == "up" and not settings.orch_addr.strip()):
            if command == "up" and not settings.live_pipelines.strip():
                # Zero config: the embedded orchestrator serves every installed live pipeline.
                settings = settings.model_copy(update={"live_pipelines": "all"})
            orchestrator = orchestrator_node(settings)
            await orchestrator.start()
            print(f"streamgw {__version__}: orchestrator at {orchestrator.url}", flush=True)
        if command in ("up", "gateway"):
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamgw`` console script."""
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(args.config, overrides)
        if args.command != "orchestrator" and settings.orch_addr.strip() or args.command == "up":
            load_profiles(settings.transcoding_options)  # fail at start-up, not at the first segment
    except ConfigError as exc:
        print(f"streamgw: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    try:
        return asyncio.run(_serve(args.command, settings))
    except (OSError, StreamgwError) as exc:  # ListenError among them: the message names the address
        print(f"streamgw: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
