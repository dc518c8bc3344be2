"""Installed pipelines, found through the ``streamgw.pipelines`` entry-point group.

Each entry point names a factory ``(params) -> LivePipeline``; another package ships its own
pipeline by declaring one in that group. Nothing is imported until a pipeline is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from streamgw.errors import PipelineError, UnknownPipeline
from streamgw.pipelines.base import LivePipeline

GROUP = "streamgw.pipelines"


def installed() -> dict[str, EntryPoint]:
    """Every installed pipeline by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def create(name: str, params: Mapping[str, Any] | None = None) -> LivePipeline:
    """Make pipeline ``name`` with ``params``; raises :class:`UnknownPipeline` or
    :class:`~streamgw.errors.PipelineParamsError` before anything starts."""
    found = installed()
    entry = found.get(name)
    if entry is None:
        raise UnknownPipeline(f"unknown pipeline {name!r} (installed: {', '.join(sorted(found)) or 'none'})")
    try:
        factory = entry.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in must not take the node down
        raise PipelineError(f"pipeline {name!r} cannot be loaded: {exc}") from exc
    pipeline = factory(params or {})
    if not isinstance(pipeline, LivePipeline):
        raise PipelineError(f"pipeline {name!r} ({entry.value}) does not keep the LivePipeline protocol")
    return pipeline


def parameters(name: str) -> dict[str, dict[str, Any]] | None:
    """Pipeline ``name``'s parameters (default, range, kind) as JSON, read from its factory's
    ``PARAMS`` without making it; None when it is not installed or declares none."""
    entry = installed().get(name)
    if entry is None:
        return None
    try:
        factory = entry.load()
    except Exception:  # noqa: BLE001 - a broken plug-in has no parameters to show
        return None
    spec = getattr(factory, "PARAMS", None)
    if not isinstance(spec, Mapping):
        return None
    return {key: {"default": list(p.default) if isinstance(p.default, tuple) else p.default,
                  "low": p.low, "high": p.high, "kind": p.kind} for key, p in spec.items()}
