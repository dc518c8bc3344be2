"""Settings: defaults < TOML file < ``STREAMGW_*`` environment < command-line flags.

Validated once at start-up; unknown keys anywhere are errors. ``samples/streamgw.toml``
documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streamgw.errors import ConfigError
from streamgw.livepeer.signing import ZERO_ADDRESS, parse_address, parse_address_list

ENV_PREFIX = "STREAMGW_"
ENV_CONFIG_FILE = "STREAMGW_CONFIG"
# Read where they are used, never kept in Settings (so never in a settings dump): the keystore password.
ENV_NOT_SETTINGS = frozenset({ENV_CONFIG_FILE, "STREAMGW_ETH_PASSWORD", "STREAMGW_ANVIL"})


def split_addr(addr: str) -> tuple[str, int]:
    """Split 'HOST:PORT' (IPv6 as '[::1]:PORT') into host and port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class Settings(BaseModel):
    """Every setting of a streamgw process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rtmp_addr: str = Field("127.0.0.1:1935", description="RTMP listen address, HOST:PORT")
    http_addr: str = Field("127.0.0.1:9935", description="HTTP listen address (HLS, API, web), HOST:PORT")
    segment_duration: float = Field(
        2.0, ge=0.5, le=30.0, description="target segment duration in seconds; cuts happen at keyframes"
    )
    playlist_window: int = Field(6, ge=2, le=100, description="segments listed in each live media playlist")
    keyframe_timeout: float = Field(
        10.0, ge=1.0, le=120.0, description="drop a publisher that sends no keyframe for this many seconds"
    )
    reconnect_grace: float = Field(
        10.0, ge=0.0, le=600.0,
        description="seconds a dropped publisher may take to come back and continue the same stream",
    )
    ended_retention: float = Field(
        60.0, ge=0.0, le=86400.0, description="seconds an ended stream's playlists stay available"
    )
    max_streams: int = Field(100, ge=1, le=100000, description="most streams published at once")
    segmenter_threads: int = Field(
        1, ge=1, le=64, description="threads that cut every publisher's media into segments (PyAV muxing), "
        "shared by all; each 720p30 publisher costs one of them ~3 ms of CPU per second"
    )
    record_dir: str = Field("", description="directory to record every segment to; empty: no recording")
    probe_duration: float = Field(
        0.1, ge=0.0, le=5.0, description="seconds of media PyAV may read to probe a new stream"
    )
    rtmp_handshake_timeout: float = Field(10.0, gt=0, le=120, description="seconds allowed for the RTMP handshake")
    rtmp_idle_timeout: float = Field(
        30.0, gt=0, le=3600, description="drop an RTMP connection that sends nothing for this many seconds"
    )
    rtmp_read_coalesce: float = Field(
        0.02, ge=0, le=0.2,
        description="while publishing, read RTMP input once about this many seconds of media have arrived "
                    "(SO_RCVLOWAT from the stream's rate; 0: read every message as it comes)",
    )
    max_message_size: int = Field(
        8 * 1024 * 1024, ge=65536, le=16 * 1024 * 1024, description="largest RTMP message accepted, bytes"
    )
    max_segment_bytes: int = Field(
        64 * 1024 * 1024, ge=1024 * 1024, le=1024 * 1024 * 1024, description="largest segment accepted, bytes"
    )
    web_dir: str = Field("", description="directory of the web pages; empty: the bundled web/")
    orch_addr: str = Field(
        "", description="orchestrator URLs, comma-separated (like go-livepeer -orchAddr); "
        "'up' with none runs an embedded orchestrator",
    )
    transcoding_options: str = Field(
        "P144p30fps16x9,P240p30fps16x9,P360p30fps16x9",
        description="the ABR ladder: preset names, comma-separated, or a JSON file of go-livepeer profiles; "
        "'none': no ladder (a gateway for live AI only)",
    )
    orch_webhook_url: str = Field(
        "", description="URL answering GET with [{\"address\": URL, \"score\": float}] "
        "(like go-livepeer -orchWebhookUrl); read at start and every orch_refresh_interval",
    )
    orch_refresh_interval: float = Field(
        60.0, ge=1.0, le=3600.0, description="seconds between orchestrator discovery refreshes"
    )
    max_in_flight: int = Field(4, ge=1, le=64, description="segments of one stream transcoding at once")
    max_price_per_unit: int = Field(
        0, ge=0, description="highest price (wei per pixels_per_unit pixels) an orchestrator may ask; 0: no cap"
    )
    pixels_per_unit: int = Field(1, ge=1, description="the pixel unit of max_price_per_unit")
    max_price_per_capability: str = Field(
        "", description="per-capability price caps, 'CAP=WEI_PER_PIXEL,...' (e.g. '35=100'); empty: none"
    )
    orch_include: str = Field("", description="if set, only these orchestrator URLs are used (comma-separated)")
    orch_exclude: str = Field("", description="orchestrator URLs never used (comma-separated)")
    gateway_key: str = Field(
        "", description="hex secp256k1 key the gateway signs segments with; empty: a new key per run"
    )
    serve_addr: str = Field("127.0.0.1:8935", description="orchestrator: gRPC and HTTPS listen address, HOST:PORT")
    service_addr: str = Field(
        "", description="orchestrator: public URL advertised to gateways; empty: https://SERVE_ADDR"
    )
    max_sessions: int = Field(10, ge=1, le=10000, description="orchestrator: most gateway sessions at once")
    transcode_workers: int = Field(
        0, ge=0, le=256, description="orchestrator: segments transcoded at once (threads); 0: one per CPU core"
    )
    transcode_capacity: int = Field(
        0, ge=0, le=1024, description="orchestrator: segments accepted at once (advertised as its capacity; "
        "more are answered OrchestratorBusy); 0: 2 x transcode_workers",
    )
    orch_data_dir: str = Field(
        "", description="orchestrator: where its TLS certificate, its winning tickets (and `up --payments`' "
        "local chain) are kept; empty: ~/.streamgw/orchestrator"
    )
    live_pipelines: str = Field(
        "", description="orchestrator: live video-to-video pipelines served (capability 35), comma-separated, "
        "or 'all' for every installed one, or 'none'; empty: none ('all' for the orchestrator `streamgw up` embeds)",
    )
    live_capacity: int = Field(1, ge=1, le=64, description="orchestrator: live streams at once per pipeline")
    live_default_pipelines: str = Field(
        "", description="gateway: the live AI pipeline of streams published without ?pipeline=, as "
        "STREAM=PIPELINE pairs, comma-separated ('*=face-blur': every stream); empty: none",
    )
    live_events_timeout: float = Field(
        30.0, ge=1.0, le=600.0, description="gateway: seconds without a live AI event before swapping orchestrator",
    )
    live_output_timeout: float = Field(
        30.0, ge=1.0, le=600.0,
        description="gateway: seconds without live AI output (input flowing) before swapping orchestrator",
    )
    orch_delay: float = Field(
        0.0, ge=0.0, le=60.0, description="orchestrator: seconds of delay added per segment (testing)"
    )
    orch_require_signed: bool = Field(
        False, description="orchestrator: refuse unsigned (offchain) gateways; GetOrchestrator requests "
        "and segments must be signed by the gateway's key",
    )
    orch_allowed_gateways: str = Field(
        "", description="orchestrator: serve only these gateway addresses (0x..., comma-separated), which "
        "must sign their requests; empty: every gateway",
    )
    eth_url: str = Field(
        "", description="Ethereum JSON-RPC URL of the chain payments are on (go-livepeer -ethUrl); "
        "empty: offchain, no payments",
    )
    eth_chain_id: int = Field(0, ge=0, description="the chain's id; 0: read it from eth_url")
    ticket_broker_addr: str = Field("", description="the TicketBroker contract's address (0x...)")
    rounds_manager_addr: str = Field("", description="the RoundsManager contract's address (0x...)")
    eth_keystore_path: str = Field(
        "", description="the encrypted Ethereum keystore (JSON) of this node's account (go-livepeer "
        "-ethKeystorePath); its password comes from STREAMGW_ETH_PASSWORD or eth_password_file, never a flag",
    )
    eth_password_file: str = Field("", description="file holding the keystore's password")
    remote_signer_url: str = Field(
        "", description="gateway: a remote signer (go-livepeer's remote signer API) that signs and pays "
        "for it; the gateway then holds no key",
    )
    price_per_unit: int = Field(
        0, ge=0, description="orchestrator: price in wei per pixels_per_unit pixels (go-livepeer -pricePerUnit); "
        "0: free",
    )
    ticket_ev: int = Field(
        1_000_000_000_000, ge=1, description="orchestrator: expected value of one ticket, wei (go-livepeer -ticketEV)"
    )
    max_face_value: int = Field(
        0, ge=0, description="orchestrator: highest ticket face value quoted, wei (go-livepeer -maxFaceValue); "
        "0: no cap",
    )
    initialize_round: bool = Field(
        True, description="orchestrator: initialise each new round on chain (go-livepeer -initializeRound)"
    )
    max_ticket_ev: int = Field(
        3_000_000_000_000, ge=1, description="gateway: most EV of one ticket accepted, wei (go-livepeer -maxTicketEV)"
    )
    max_total_ev: int = Field(
        20_000_000_000_000, ge=1,
        description="gateway: most EV of the tickets of one payment, wei (go-livepeer -maxTotalEV)",
    )
    deposit_multiplier: int = Field(
        1, ge=1, description="gateway: a face value may be at most deposit / this (go-livepeer -depositMultiplier)"
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    webrtc_addrs: str = Field(
        "127.0.0.1,*", description="WHIP/WHEP: local IPs to offer ICE host candidates on, comma-separated; "
        "'*' every non-loopback interface, PUBLIC=LOCAL behind a 1:1 NAT",
    )
    webrtc_ice_servers: str = Field(
        "", description="WHIP/WHEP: STUN/TURN server URLs, comma-separated (stun:HOST:PORT, "
        "turn:HOST:PORT?transport=udp); empty: none is contacted",
    )
    webrtc_turn_username: str = Field("", description="WHIP/WHEP: username for the TURN servers")
    webrtc_turn_password: str = Field("", description="WHIP/WHEP: password for the TURN servers")
    whip_token: str = Field(
        "", description="WHIP: bearer token publishers must send (Authorization: Bearer ...); empty: none"
    )
    whip_max_sessions: int = Field(16, ge=1, le=10000, description="WHIP: most WebRTC publishers at once")
    whip_video: Literal["copy", "transcode"] = Field(
        "copy", description="WHIP: 'copy' H.264 as published (asking for a keyframe every segment) and "
        "re-encode other codecs; 'transcode' re-encodes every publisher to a fixed GOP",
    )
    whip_video_bitrate: int = Field(
        2_500_000, ge=100_000, le=50_000_000,
        description="WHIP: most bits per second of the H.264 a WebRTC publisher is re-encoded to",
    )
    whep_max_sessions: int = Field(100, ge=1, le=100000, description="WHEP: most WebRTC viewers at once")

    @field_validator("rtmp_addr", "http_addr", "serve_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        split_addr(value)
        return value

    @field_validator("webrtc_addrs")
    @classmethod
    def _webrtc_addrs(cls, value: str) -> str:
        items = [s.strip() for s in value.split(",") if s.strip()]
        if not items:
            raise ValueError("at least one address is needed")
        for item in items:
            for part in item.split("=", 1):
                if part.strip() != "*":
                    ipaddress.ip_address(part.strip())
        return value

    @field_validator("webrtc_ice_servers")
    @classmethod
    def _ice_servers(cls, value: str) -> str:
        for url in (s.strip() for s in value.split(",")):
            if url and url.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns"):
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return value

    @field_validator("orch_allowed_gateways")
    @classmethod
    def _gateways(cls, value: str) -> str:
        if ZERO_ADDRESS in parse_address_list(value):
            raise ValueError("the zero address cannot sign, so it cannot be allowed")
        return value

    @field_validator("ticket_broker_addr", "rounds_manager_addr")
    @classmethod
    def _contract(cls, value: str) -> str:
        if value:
            parse_address(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return value.lower()


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    fields = Settings.model_fields
    values: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_SETTINGS:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in fields:
            raise ConfigError(f"unknown environment setting {key}")
        values[name] = value
    return values


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build validated settings from a TOML file, the environment and explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get(ENV_CONFIG_FILE)
    if path:
        try:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    values.update(_from_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(values, strict=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
