"""``face-blur`` and ``face-boxes``: faces found with OpenCV's Haar cascade (frontal face, alt2;
shipped inside the opencv wheel, ``cv2.data``), then blurred or outlined.

Detection runs on a grey copy at most :data:`DETECT_SIDE` pixels on its long side, every
``detect_every`` frames; the boxes found are held in between (a face moves little in 100 ms,
and detection costs ~10x the blur).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from streamgw.errors import PipelineError
from streamgw.pipelines.base import BasePipeline, Frame, Param

DETECT_SIDE = 480
PAD = 0.15  # each side of a detected box, as a share of its size: the cascade's box is tight
Box = tuple[int, int, int, int]  # x, y, width, height in frame pixels


class FaceDetector:
    """Frontal faces in RGB frames, with the boxes of the last detection held in between."""

    def __init__(self) -> None:
        path = cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml"  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise PipelineError(f"OpenCV's face cascade is missing ({path}): opencv 4.x ships it, 5.0 does not")
        self.frames = 0
        self.boxes: list[Box] = []

    def detect(self, frame: Frame, every: int) -> list[Box]:
        if self.frames % every == 0:
            self.boxes = self._detect(frame)
        self.frames += 1
        return self.boxes

    def _detect(self, frame: Frame) -> list[Box]:
        height, width = frame.shape[:2]
        scale = min(1.0, DETECT_SIDE / max(height, width))
        small = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else frame
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        found = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=2, minSize=(12, 12))
        boxes: list[Box] = []
        for x, y, w, h in (found if len(found) else []):
            pad_w, pad_h = w * PAD, h * PAD
            x0 = max(0, int((x - pad_w) / scale))
            y0 = max(0, int((y - pad_h) / scale))
            x1 = min(width, int((x + w + pad_w) / scale))
            y1 = min(height, int((y + h + pad_h) / scale))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1 - x0, y1 - y0))
        return boxes


class _FacePipeline(BasePipeline):
    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.detector = FaceDetector()

    def warm_up(self) -> None:
        self.detector.detect(np.zeros((64, 64, 3), np.uint8), 1)
        self.detector.frames = 0


class FaceBlur(_FacePipeline):
    """Blurs every face; ``strength`` 0 (none) to 1 (unrecognisable)."""

    name = model_id = "face-blur"
    PARAMS = {"strength": Param(0.8, 0.0, 1.0), "detect_every": Param(3, 1, 30, "int")}

    def process(self, frame: Frame) -> Frame:
        strength = self._params["strength"]
        boxes = self.detector.detect(frame, self._params["detect_every"])
        if not boxes or strength <= 0:
            return frame
        out = frame.copy()
        for x, y, w, h in boxes:
            sigma = max(1.0, strength * max(w, h) / 6)
            out[y:y + h, x:x + w] = cv2.GaussianBlur(out[y:y + h, x:x + w], (0, 0), sigma)
        return out


class FaceBoxes(_FacePipeline):
    """Outlines every face in ``color`` with lines ``thickness`` pixels wide."""

    name = model_id = "face-boxes"
    PARAMS = {"color": Param((0, 255, 0), kind="color"), "thickness": Param(3, 1, 20, "int"),
              "detect_every": Param(3, 1, 30, "int")}

    def process(self, frame: Frame) -> Frame:
        boxes = self.detector.detect(frame, self._params["detect_every"])
        if not boxes:
            return frame
        out = frame.copy()
        for x, y, w, h in boxes:
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), self._params["color"], self._params["thickness"])
        return out
