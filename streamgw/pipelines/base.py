"""What a live video-to-video pipeline is: the one small Protocol every pipeline keeps, and the
parameters it takes.

A pipeline gets frames as RGB ``uint8`` arrays of shape (height, width, 3) and returns one of
the same shape, one call per frame, on a worker thread (never the event loop). It is made with
its initial parameters and takes new ones live with :meth:`LivePipeline.update`. Nothing here
assumes a CPU: a GPU pipeline uploads in :meth:`process` and keeps its model resident from
:meth:`warm_up` on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streamgw.errors import PipelineParamsError

Frame = npt.NDArray[np.uint8]  # (height, width, 3), RGB
MAX_TEXT = 64 * 1024  # characters of a text parameter (a control message is at most 64 KiB)


@runtime_checkable
class LivePipeline(Protocol):
    """A live pipeline: frame in, frame out; parameters changed while it runs."""

    name: str  # as published and asked for: "face-blur"
    model_id: str  # the capability-35 model id orchestrators advertise (go-livepeer: the pipeline)
    version: str

    def warm_up(self) -> None:
        """Load what the first frame needs (models, kernels), so the first frame is on time."""

    def process(self, frame: Frame) -> Frame:
        """The output frame for ``frame``."""

    def update(self, params: Mapping[str, Any]) -> None:
        """Apply new parameters (only those given change); raises :class:`PipelineParamsError`."""

    def params(self) -> dict[str, Any]:
        """The parameters in force."""


@dataclass(frozen=True)
class Param:
    """One parameter: its default and how a value is checked (a number in a range, a colour)."""

    default: Any
    low: float | None = None
    high: float | None = None
    kind: str = "number"  # "number", "int", "color", "text" (a string the pipeline reads itself)


def color(value: Any, field: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` or ``[r, g, b]`` (0-255) as an RGB tuple."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)
        except ValueError:
            pass
    elif (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        return int(value[0]), int(value[1]), int(value[2])
    raise PipelineParamsError(field, f"{value!r} is not a colour (\"#rrggbb\" or [r, g, b] in 0-255)")


class Parameters:
    """A pipeline's parameters: defaults, checked updates, the values in force."""

    def __init__(self, spec: Mapping[str, Param], initial: Mapping[str, Any] | None = None) -> None:
        self.spec = dict(spec)
        self.values: dict[str, Any] = {name: p.default for name, p in self.spec.items()}
        if initial:
            self.update(initial)

    def update(self, params: Mapping[str, Any]) -> None:
        """Check every value first, then apply them all (a bad one changes nothing)."""
        if not isinstance(params, Mapping):
            raise PipelineParamsError("params", "must be a JSON object")
        checked = {name: self._check(name, value) for name, value in params.items()}
        self.values.update(checked)

    def _check(self, name: str, value: Any) -> Any:
        spec = self.spec.get(name)
        if spec is None:
            known = ", ".join(sorted(self.spec)) or "none"
            raise PipelineParamsError(name, f"unknown parameter (this pipeline takes: {known})")
        if spec.kind == "color":
            return color(value, name)
        if spec.kind == "text":
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise PipelineParamsError(name, f"must be a string of at most {MAX_TEXT} characters")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineParamsError(name, f"{value!r} is not a number")
        if spec.kind == "int" and int(value) != value:
            raise PipelineParamsError(name, f"{value!r} is not a whole number")
        if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
            raise PipelineParamsError(name, f"{value!r} is outside {spec.low}-{spec.high}")
        return int(value) if spec.kind == "int" else float(value)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


class BasePipeline:
    """What most pipelines share: their parameters, kept by :class:`Parameters`."""

    name = ""
    model_id = ""
    version = "1"
    PARAMS: Mapping[str, Param] = {}

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self._params = Parameters(self.PARAMS, params)

    def warm_up(self) -> None:
        pass

    def update(self, params: Mapping[str, Any]) -> None:
        self._params.update(params)

    def params(self) -> dict[str, Any]:
        return dict(self._params.values)

    def process(self, frame: Frame) -> Frame:  # pragma: no cover - every pipeline overrides it
        raise NotImplementedError
