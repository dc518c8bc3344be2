"""``background-blur`` and ``background-replace``: the person kept, the rest blurred or replaced.

The person is found by MediaPipe's selfie segmentation model (``models/selfie_segmentation.tflite``,
Apache-2.0, see ``models/NOTICE``: nothing is fetched at run time), run by OpenCV's TFLite
importer on the frame scaled to 256x256; its mask (1: person) is smoothed over time and scaled
back to the frame, and the frame is composited with ``cv2.blendLinear``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from streamgw.errors import PipelineError, PipelineParamsError
from streamgw.pipelines.base import BasePipeline, Frame, Param

MODEL = Path(__file__).resolve().parent / "models" / "selfie_segmentation.tflite"
MODEL_SIDE = 256
SMOOTH = 0.6  # weight of the newest mask (the rest: the previous one), against flicker
BLUR_SIDE = 160  # the background is blurred at most this size on its short side, then scaled up
MAX_IMAGE_BYTES = 48 * 1024  # a background image travels in a control message (64 KiB of JSON)
Mask = npt.NDArray[np.float32]


class PersonSegmenter:
    """The person mask of RGB frames, at the frame's size, smoothed from frame to frame."""

    def __init__(self) -> None:
        if not MODEL.is_file():
            raise PipelineError(f"the person-segmentation model is missing ({MODEL}): see scripts/extract_models.sh")
        try:
            self.net = cv2.dnn.readNetFromTFLite(str(MODEL))
        except cv2.error as exc:
            raise PipelineError(f"OpenCV cannot read {MODEL.name}: {exc}") from exc
        self.previous: Mask | None = None

    def mask(self, frame: Frame) -> Mask:
        small = cv2.resize(frame, (MODEL_SIDE, MODEL_SIDE), interpolation=cv2.INTER_AREA)
        blob = (small.astype(np.float32) * (1.0 / 255.0)).transpose(2, 0, 1)[None]
        self.net.setInput(np.ascontiguousarray(blob))
        raw = np.asarray(self.net.forward(), dtype=np.float32).reshape(MODEL_SIDE, MODEL_SIDE)
        if self.previous is not None and self.previous.shape == raw.shape:
            raw = np.asarray(cv2.addWeighted(raw, SMOOTH, self.previous, 1 - SMOOTH, 0), dtype=np.float32)
        self.previous = raw
        height, width = frame.shape[:2]
        return np.asarray(cv2.resize(raw, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.float32)


def _composite(person: Frame, background: Frame, mask: Mask) -> Frame:
    """``person`` where the mask is 1, ``background`` where it is 0."""
    return np.asarray(cv2.blendLinear(person, background, mask, 1.0 - mask), dtype=np.uint8)


class _Background(BasePipeline):
    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.segmenter = PersonSegmenter()
        super().__init__(params)

    def warm_up(self) -> None:
        self.segmenter.mask(np.zeros((MODEL_SIDE, MODEL_SIDE, 3), np.uint8))
        self.segmenter.previous = None


class BackgroundBlur(_Background):
    """The background blurred by ``strength`` (0: untouched, 1: the strongest blur)."""

    name = model_id = "background-blur"
    PARAMS = {"strength": Param(0.8, 0.0, 1.0)}

    def process(self, frame: Frame) -> Frame:
        strength = self._params["strength"]
        mask = self.segmenter.mask(frame)
        if strength <= 0:
            return frame
        height, width = frame.shape[:2]
        scale = min(1.0, BLUR_SIDE / min(height, width))
        small = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        sigma = 1.0 + 9.0 * strength  # at the reduced size: up to ~10 px there, ~45 px at 720p
        blurred = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma), (width, height), interpolation=cv2.INTER_LINEAR)
        return _composite(frame, np.asarray(blurred, dtype=np.uint8), mask)


def decode_image(value: Any, field: str) -> Frame | None:
    """A background image from a ``data:image/...;base64,`` URL (PNG or JPEG), as RGB; "" is none."""
    if value in ("", None):
        return None
    if not isinstance(value, str) or not value.startswith("data:image/") or ";base64," not in value:
        raise PipelineParamsError(field, "must be a data:image/png or data:image/jpeg base64 URL, or \"\"")
    try:
        raw = base64.b64decode(value.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PipelineParamsError(field, f"bad base64: {exc}") from exc
    if len(raw) > MAX_IMAGE_BYTES:
        raise PipelineParamsError(field, f"larger than {MAX_IMAGE_BYTES} bytes")
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise PipelineParamsError(field, "not an image OpenCV can read (PNG or JPEG)")
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


class BackgroundReplace(_Background):
    """The background replaced by ``color`` or, when given, ``image`` (scaled to the frame)."""

    name = model_id = "background-replace"
    PARAMS = {"color": Param((0, 177, 64), kind="color"), "image": Param("", kind="text")}

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.image: Frame | None = None
        self._fitted: Frame | None = None
        initial = dict(params) if isinstance(params, Mapping) else params
        image = initial.pop("image", None) if isinstance(initial, dict) else None
        super().__init__(initial)  # a non-mapping is refused there, naming params
        if image is not None:
            self.update({"image": image})

    def update(self, params: Mapping[str, Any]) -> None:
        image = decode_image(params["image"], "image") if isinstance(params, Mapping) and "image" in params else None
        super().update(params)  # checks everything else; a bad value changes nothing
        if isinstance(params, Mapping) and "image" in params:
            self.image, self._fitted = image, None

    def _background(self, frame: Frame) -> Frame:
        height, width = frame.shape[:2]
        if self.image is not None:
            if self._fitted is None or self._fitted.shape != frame.shape:
                self._fitted = np.asarray(cv2.resize(self.image, (width, height), interpolation=cv2.INTER_AREA),
                                          dtype=np.uint8)
            return self._fitted
        background = np.empty_like(frame)
        background[:] = self._params["color"]
        return background

    def process(self, frame: Frame) -> Frame:
        return _composite(frame, self._background(frame), self.segmenter.mask(frame))
