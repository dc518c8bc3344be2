"""The live pipelines on real photos (scikit-image's astronaut has a face; coffee has none):
found by entry point, faces changed and the rest intact, parameters checked and applied live."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import pytest
from skimage import data

from streamgw.errors import PipelineParamsError, UnknownPipeline
from streamgw.pipelines import registry
from streamgw.pipelines.base import Frame, LivePipeline

SHIPPED = {"noop", "face-blur", "face-boxes", "cartoon", "sketch", "background-blur", "background-replace"}


def psnr(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def _scene(x: int, y: int, size: tuple[int, int] = (720, 1280)) -> tuple[Frame, tuple[int, int, int, int]]:
    """The astronaut (scaled to 320 px) at (x, y) on the coffee photo; and her face's box in the
    scene, found with another cascade than the pipelines use (default, on the full-size photo)."""
    photo = data.astronaut()
    person = cv2.resize(photo, (320, 320), interpolation=cv2.INTER_AREA)
    background = cv2.resize(data.coffee(), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    scene = background.copy()
    scene[y:y + 320, x:x + 320] = person
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
    found = cascade.detectMultiScale(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(40, 40))
    assert len(found) == 1, found
    scale = 320 / photo.shape[0]
    fx, fy, fw, fh = (round(int(v) * scale) for v in found[0])
    return np.ascontiguousarray(scene), (x + fx, y + fy, fw, fh)


def _inside(frame: Frame, box: tuple[int, int, int, int]) -> Frame:
    x, y, w, h = box
    return frame[y:y + h, x:x + w]


def _outside(frame: Frame, box: tuple[int, int, int, int], margin: int = 40) -> Frame:
    x, y, w, h = box
    mask = np.ones(frame.shape[:2], bool)
    mask[max(0, y - margin):y + h + margin, max(0, x - margin):x + w + margin] = False
    return frame[mask]


def test_the_shipped_pipelines_are_found_by_entry_point() -> None:
    assert SHIPPED <= set(registry.installed())
    for name in SHIPPED:
        pipeline = registry.create(name)
        assert isinstance(pipeline, LivePipeline) and pipeline.name == name and pipeline.model_id
        pipeline.warm_up()
    with pytest.raises(UnknownPipeline, match="nope"):
        registry.create("nope")


@pytest.mark.parametrize("where", [(40, 40), (900, 350), (480, 200)])
def test_face_blur_changes_the_face_and_leaves_the_rest(where: tuple[int, int]) -> None:
    scene, face = _scene(*where)
    pipeline = registry.create("face-blur", {"detect_every": 1})
    out = pipeline.process(scene)
    assert out.shape == scene.shape and out.dtype == np.uint8
    inside, outside = psnr(_inside(out, face), _inside(scene, face)), psnr(_outside(out, face), _outside(scene, face))
    assert inside < 25, f"the face is still sharp (PSNR {inside:.1f} dB)"
    assert outside == math.inf, f"pixels away from the face changed (PSNR {outside:.1f} dB)"


def test_face_blur_follows_a_moving_face_and_takes_strength_live() -> None:
    pipeline = registry.create("face-blur", {"detect_every": 2})
    # A face moving 8 px right and 3 px down per frame (240 px/s at 30 fps): found on the whole
    # frame first, then followed around its box.
    path = [(40 + 8 * i, 40 + 3 * i) for i in range(40)]
    for i, where in enumerate(path):
        scene, face = _scene(*where)
        if i == 30:
            pipeline.update({"strength": 0})
        out = pipeline.process(scene)
        if i < 30:
            assert psnr(_inside(out, face), _inside(scene, face)) < 25, f"frame {i}: the face shows"
        else:
            assert np.array_equal(out, scene), "strength 0 leaves every frame as it came"
    assert pipeline.params()["strength"] == 0


def test_no_face_no_change() -> None:
    # The Haar cascade, tuned for recall (a missed face is worse than a blurred patch), fires on
    # the coffee photo at its native size (one box on the cup's rim): not asserted here.
    for photo in (data.chelsea(), data.rocket()):
        photo = np.ascontiguousarray(photo)
        for name in ("face-blur", "face-boxes"):
            assert np.array_equal(registry.create(name, {"detect_every": 1}).process(photo), photo), name


def test_face_boxes_outline_the_face_in_the_colour_asked() -> None:
    scene, face = _scene(480, 200)
    pipeline = registry.create("face-boxes", {"color": "#ff00ff", "thickness": 4, "detect_every": 1})
    out = pipeline.process(scene)
    magenta = np.all(out == (255, 0, 255), axis=2)
    x, y, w, h = face
    ys, xs = np.nonzero(magenta)
    assert len(xs) > 4 * (w + h), "a box outline of thickness 4"
    assert xs.min() <= x and xs.max() >= x + w - 1 and ys.min() <= y and ys.max() >= y + h - 1, "around the face"
    assert psnr(_outside(out, face, margin=120), _outside(scene, face, margin=120)) == math.inf
    pipeline.update({"color": [0, 0, 255]})
    assert np.any(np.all(pipeline.process(scene) == (0, 0, 255), axis=2))


@pytest.mark.parametrize("name", ["cartoon", "sketch"])
def test_styles_change_the_whole_frame_and_strength_zero_is_identity(name: str) -> None:
    scene, _ = _scene(480, 200)
    pipeline = registry.create(name)
    out = pipeline.process(scene)
    assert out.shape == scene.shape and out.dtype == np.uint8
    assert psnr(out, scene) < 20, "the look applies to the whole frame"
    pipeline.update({"strength": 0.5})
    half = pipeline.process(scene)
    assert psnr(out, scene) < psnr(half, scene) < math.inf
    pipeline.update({"strength": 0})
    assert np.array_equal(pipeline.process(scene), scene)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_odd_frame_sizes(name: str) -> None:
    frame = np.ascontiguousarray(cv2.resize(data.astronaut(), (97, 61)))
    out = registry.create(name).process(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8


@pytest.mark.parametrize("params, field", [
    ({"strength": 2}, "strength"), ({"strength": "high"}, "strength"), ({"strength": True}, "strength"),
    ({"blur": 1}, "blur"), ({"detect_every": 1.5}, "detect_every"),
])
def test_bad_params_name_the_field_and_change_nothing(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PipelineParamsError) as raised:
        registry.create("face-blur", params)
    assert raised.value.field == field and field in str(raised.value)
    pipeline = registry.create("face-blur", {"strength": 0.3})
    with pytest.raises(PipelineParamsError):
        pipeline.update({"strength": 0.9, **params})
    assert pipeline.params()["strength"] == 0.3
    with pytest.raises(PipelineParamsError, match="color"):
        registry.create("face-boxes", {"color": "#12345"})


# --- background-blur, background-replace (person segmentation) ---

PERSON = (150, 250, 150, 150)  # x, y, w, h: the astronaut's chest and suit in skimage's 512x512 photo
BACKGROUND = (0, 0, 90, 90)  # the wall at the top left


def _box(frame: Frame, box: tuple[int, int, int, int]) -> Frame:
    x, y, w, h = box
    return frame[y:y + h, x:x + w]


def _jpeg_data_url(image: Frame, side: int = 160) -> str:
    import base64

    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(image, (side, side)), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


def test_background_blur_keeps_the_person_and_blurs_the_rest() -> None:
    photo = np.ascontiguousarray(data.astronaut())
    pipeline = registry.create("background-blur", {"strength": 1.0})
    pipeline.warm_up()
    out = pipeline.process(photo)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert psnr(_box(out, PERSON), _box(photo, PERSON)) > 35
    blurred = psnr(_box(out, BACKGROUND), _box(photo, BACKGROUND))
    assert blurred < 30
    pipeline.update({"strength": 0.2})
    for _ in range(3):
        lighter = pipeline.process(photo)
    assert blurred < psnr(_box(lighter, BACKGROUND), _box(photo, BACKGROUND))
    pipeline.update({"strength": 0})
    assert np.array_equal(pipeline.process(photo), photo)


def test_background_replace_with_a_colour_then_an_image() -> None:
    photo = np.ascontiguousarray(data.astronaut())
    pipeline = registry.create("background-replace", {"color": "#0000ff"})
    out = pipeline.process(photo)
    assert psnr(_box(out, PERSON), _box(photo, PERSON)) > 35
    assert np.abs(_box(out, BACKGROUND).astype(int) - (0, 0, 255)).mean() < 3
    # An image (a data URL, as a control message carries it) replaces the colour, scaled to the frame.
    coffee = data.coffee()
    pipeline.update({"image": _jpeg_data_url(coffee)})
    for _ in range(3):
        out = pipeline.process(photo)
    expected = cv2.resize(cv2.resize(coffee, (160, 160)), (512, 512), interpolation=cv2.INTER_AREA)
    assert psnr(_box(out, BACKGROUND), _box(expected, BACKGROUND)) > 25
    assert psnr(_box(out, PERSON), _box(photo, PERSON)) > 35
    pipeline.update({"image": ""})  # back to the colour
    assert np.abs(_box(pipeline.process(photo), BACKGROUND).astype(int) - (0, 0, 255)).mean() < 3


@pytest.mark.parametrize("image, why", [
    ("http://example.com/a.png", "data:image"), ("data:image/png;base64,@@@", "base64"),
    ("data:image/png;base64,aGVsbG8=", "not an image"), (7, "data:image"),
])
def test_a_bad_background_image_names_the_field_and_changes_nothing(image: Any, why: str) -> None:
    pipeline = registry.create("background-replace", {"color": "#00ff00"})
    with pytest.raises(PipelineParamsError, match=why) as raised:
        pipeline.update({"color": "#ff0000", "image": image})
    assert raised.value.field == "image"
    assert pipeline.params()["color"] == (0, 255, 0)
    with pytest.raises(PipelineParamsError) as raised:
        registry.create("background-replace", {"image": "data:image/png;base64," + "A" * 70_000})
    assert raised.value.field == "image"


def test_the_segmentation_model_is_the_one_its_notice_names() -> None:
    import hashlib
    import re as _re
    from pathlib import Path

    from streamgw.pipelines.background import MODEL

    notice = (Path(MODEL).parent / "NOTICE").read_text()
    want = _re.search(r"sha256 ([0-9a-f]{64})", notice)
    assert want is not None
    assert hashlib.sha256(Path(MODEL).read_bytes()).hexdigest() == want.group(1)
