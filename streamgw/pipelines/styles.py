"""``cartoon`` and ``sketch``: whole-frame looks made with OpenCV filters, no model.

Both filter a copy at most :data:`WORK_SIDE` pixels on its long side and scale the result back
(the bilateral filter costs ~5x more at 512 than at 256), then blend it with the frame by
``strength`` (0: the frame unchanged, 1: the effect alone).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from streamgw.pipelines.base import BasePipeline, Frame, Param

WORK_SIDE = 256


def _work_size(frame: Frame) -> tuple[int, int]:
    height, width = frame.shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _blend(frame: Frame, effect: Any, strength: float) -> Frame:
    if strength < 1:
        effect = cv2.addWeighted(effect, strength, frame, 1 - strength, 0)
    return np.asarray(effect, dtype=np.uint8)  # OpenCV's results are typed as any array


class Cartoon(BasePipeline):
    """Flat colours (bilateral filter) with dark edges (adaptive threshold)."""

    name = model_id = "cartoon"
    PARAMS = {"strength": Param(1.0, 0.0, 1.0)}

    def process(self, frame: Frame) -> Frame:
        strength = self._params["strength"]
        if strength <= 0:
            return frame
        height, width = frame.shape[:2]
        small = cv2.resize(frame, _work_size(frame), interpolation=cv2.INTER_AREA)
        flat = cv2.bilateralFilter(small, 7, 60, 7)
        grey = cv2.medianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), 5)
        edges = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
        toon = cv2.bitwise_and(flat, flat, mask=edges)
        effect = cv2.resize(toon, (width, height), interpolation=cv2.INTER_LINEAR)
        return _blend(frame, effect, strength)


class Sketch(BasePipeline):
    """A pencil drawing: the grey frame divided by its blurred negative (colour dodge)."""

    name = model_id = "sketch"
    PARAMS = {"strength": Param(1.0, 0.0, 1.0)}

    def process(self, frame: Frame) -> Frame:
        strength = self._params["strength"]
        if strength <= 0:
            return frame
        height, width = frame.shape[:2]
        grey = cv2.cvtColor(cv2.resize(frame, _work_size(frame), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        blurred = cv2.GaussianBlur(255 - grey, (0, 0), 5)
        drawing = cv2.divide(grey, np.maximum(255 - blurred, 1).astype(np.uint8), scale=256)
        effect = cv2.cvtColor(cv2.resize(drawing, (width, height), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)
        return _blend(frame, effect, strength)
