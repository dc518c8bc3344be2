"""``face-blur`` and ``face-boxes``: faces found with OpenCV's Haar cascade (frontal face, alt2;
shipped inside the opencv wheel, ``cv2.data``), then blurred or outlined.

Detection runs every ``detect_every`` frames (the boxes are held in between: a face moves little
in 100 ms), on a grey copy: the whole frame scaled to :data:`DETECT_HEIGHT` lines now and then,
else only around the faces already known (see :class:`FaceDetector`). Faces smaller than about
1/17 of the frame's height are not found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from streamgw.errors import PipelineError
from streamgw.pipelines.base import BasePipeline, Frame, Param

DETECT_HEIGHT = 270  # a full-frame search looks at the frame scaled to this height
FULL_MIN = 16  # the smallest face it finds there (px): 1/17 of the frame's height
TRACK_SIDE = 48  # a known face is looked for around its box, scaled to about this size
TRACK_MIN = 28
FULL_EVERY = 10  # one full search (new faces) per this many searches
HOLD = 3  # searches in a row a known face may be missed before its box goes
PAD = 0.15  # each side of a detected box, as a share of its size: the cascade's box is tight
Box = tuple[int, int, int, int]  # x, y, width, height in frame pixels


class FaceDetector:
    """Frontal faces in RGB frames: a search of the whole frame every :data:`FULL_EVERY`
    detections (and while no face is known, or one was just missed), around the known faces in
    between (a small crop, ~20x cheaper); a face missed by up to :data:`HOLD` searches in a row keeps its last box (for
    blurring, a box too many is better than a face shown)."""

    def __init__(self) -> None:
        path = cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml"  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise PipelineError(f"OpenCV's face cascade is missing ({path}): opencv 4.x ships it, 5.0 does not")
        self.tracks: list[tuple[Box, int]] = []  # (box, searches missed in a row)
        self.reset()

    def reset(self) -> None:
        """Forget every face and start counting frames again."""
        self.frames = self.searches = 0
        self.tracks = []

    @property
    def boxes(self) -> list[Box]:
        return [box for box, _ in self.tracks]

    def detect(self, frame: Frame, every: int) -> list[Box]:
        if self.frames % every == 0:
            lost = any(missed for _, missed in self.tracks)
            if not self.tracks or lost or self.searches % FULL_EVERY == 0:
                self._full(frame)
            else:
                self._around(frame)
            self.searches += 1
        self.frames += 1
        return self.boxes

    def _full(self, frame: Frame) -> None:
        found = self._search(frame, (0, 0), DETECT_HEIGHT / frame.shape[0], FULL_MIN)
        kept = [(box, missed + 1) for box, missed in self.tracks
                if missed < HOLD and not any(_overlap(box, f) for f in found)]
        self.tracks = [(box, 0) for box in found] + kept

    def _around(self, frame: Frame) -> None:
        height, width = frame.shape[:2]
        tracks = []
        for (x, y, w, h), missed in self.tracks:
            margin = int(max(w, h) * 0.75)
            x0, y0 = max(0, x - margin), max(0, y - margin)
            x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
            found = self._search(frame[y0:y1, x0:x1], (x0, y0), TRACK_SIDE / max(w, h), TRACK_MIN)
            if found:
                tracks.append((max(found, key=lambda b: b[2] * b[3]), 0))
            elif missed < HOLD:
                tracks.append(((x, y, w, h), missed + 1))
        self.tracks = tracks

    def _search(self, image: Frame, origin: tuple[int, int], scale: float, min_size: int) -> list[Box]:
        """Faces in ``image`` (a crop of the frame at ``origin``), searched at ``scale``, as padded
        boxes in frame pixels."""
        height, width = image.shape[:2]
        scale = min(1.0, scale)
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else image
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        found = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=2, minSize=(min_size, min_size))
        boxes: list[Box] = []
        ox, oy = origin
        for x, y, w, h in (found if len(found) else []):
            pad_w, pad_h = w * PAD, h * PAD
            x0 = max(0, int((x - pad_w) / scale))
            y0 = max(0, int((y - pad_h) / scale))
            x1 = min(width, int((x + w + pad_w) / scale))
            y1 = min(height, int((y + h + pad_h) / scale))
            if x1 > x0 and y1 > y0:
                boxes.append((ox + x0, oy + y0, x1 - x0, y1 - y0))
        return boxes


def _overlap(a: Box, b: Box) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


class _FacePipeline(BasePipeline):
    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.detector = FaceDetector()

    def warm_up(self) -> None:
        self.detector.detect(np.zeros((64, 64, 3), np.uint8), 1)
        self.detector.reset()


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
