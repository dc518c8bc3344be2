"""What a publisher asks of live AI, read from its ingest query or the settings, checked before
anything starts.

streamgw's own form: ``rtmp://HOST/live/STREAM?pipeline=face-blur&params={"strength":0.8}`` or
``POST /whip/STREAM?pipeline=...``; go-livepeer's names are read too (``streamId``, and
``pipeline``/``params`` in the ``query`` form field of ``/live/video-to-video/{stream}/start``).
An empty ``pipeline`` is go-livepeer's ``noop``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from streamgw.errors import ConfigError, LiveAiRefused

MAX_QUERY = 8 * 1024  # bytes of an ingest query string
MAX_PARAMS = 64 * 1024  # bytes of a params JSON (a control message is bounded the same way)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class LiveRequest:
    """A stream's live AI: the pipeline (the capability-35 model id), its initial parameters, and
    go-livepeer's ids. ``params`` is None when none were given (go-livepeer sends ``null``)."""

    pipeline: str
    params: dict[str, Any] | None = None
    stream_id: str = ""
    orchestrator: str = ""  # only orchestrators whose URL contains this (go-livepeer's `orchestrator`)
    extra: Mapping[str, str] = field(default_factory=dict)


def parse_params(text: str | bytes) -> dict[str, Any]:
    """A params JSON object; :class:`LiveAiRefused` naming ``params`` (or the field) otherwise."""
    if len(text) > MAX_PARAMS:
        raise LiveAiRefused(f"larger than {MAX_PARAMS} bytes", "params")
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LiveAiRefused(f"not JSON: {exc}", "params") from exc
    if not isinstance(value, dict):
        raise LiveAiRefused("must be a JSON object", "params")
    return value


def parse_query(query: str) -> LiveRequest | None:
    """The live AI an ingest query asks for, or None when it names no pipeline."""
    if len(query) > MAX_QUERY:
        raise LiveAiRefused(f"longer than {MAX_QUERY} bytes", "query")
    values = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if "pipeline" not in values and "params" not in values:
        return None
    pipeline = values.get("pipeline", "") or "noop"
    if not _NAME.match(pipeline):
        raise LiveAiRefused(f"{pipeline[:80]!r} is not a pipeline name", "pipeline")
    params = parse_params(values["params"]) if values.get("params") else None
    stream_id = values.get("streamId", values.get("stream_id", ""))
    if len(stream_id) > 128:
        raise LiveAiRefused("longer than 128 characters", "streamId")
    return LiveRequest(pipeline, params, stream_id, values.get("orchestrator", ""))


def parse_defaults(spec: str) -> dict[str, str]:
    """The ``live_default_pipelines`` setting: ``STREAM=PIPELINE`` pairs, comma-separated, ``*``
    for every stream without its own; raises :class:`ConfigError`."""
    out: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        stream, sep, pipeline = (p.strip() for p in item.partition("="))
        if not sep or not stream or not _NAME.match(pipeline) or not (stream == "*" or _NAME.match(stream)):
            raise ConfigError(f"live_default_pipelines: {item!r} is not STREAM=PIPELINE")
        out[stream] = pipeline
    return out
