"""Per-frame time of each live pipeline on one core, at 512x512 and 1280x720.

The frames are scikit-image's astronaut (a face) placed on its coffee photo, moving 8 px per
frame; each pipeline runs with its defaults on this process pinned to one CPU (``taskset``
semantics via ``os.sched_setaffinity``). Printed beside the 30 fps budget (33.3 ms) as a ratio,
and beside a baseline measured in the same run: one full-frame ``cv2.GaussianBlur`` (sigma 8),
the cost of the simplest whole-frame filter.

    python benchmarks/pipelines.py [--frames 150] [--cpu 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

from streamgw.pipelines import registry  # noqa: E402

BUDGET_MS = 1000 / 30


def frames(size: tuple[int, int], n: int) -> list[np.ndarray]:
    width, height = size
    side = min(320, height)
    person = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    background = cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_AREA)
    out = []
    for i in range(n):
        x = (8 * i) % max(1, width - side)
        scene = background.copy()
        scene[0:side, x:x + side] = person
        out.append(scene)
    return out


def per_frame_ms(fn, scenes: list[np.ndarray]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for scene in scenes:
        t = time.thread_time()
        fn(scene)
        times.append((time.thread_time() - t) * 1000)
    times.sort()
    return statistics.mean(times), times[int(len(times) * 0.95) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--cpu", type=int, default=1, help="the CPU to pin to (default 1)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    cv2.setNumThreads(1)
    print(f"pipelines: {args.frames} frames per size, one thread on CPU {args.cpu}; "
          f"budget at 30 fps {BUDGET_MS:.1f} ms")
    print(f"{'pipeline':18s} {'size':>9s} {'mean ms':>8s} {'p95 ms':>7s} {'x budget':>9s} {'x baseline':>11s}")
    for size in ((512, 512), (1280, 720)):
        scenes = frames(size, args.frames)
        base, _ = per_frame_ms(lambda f: cv2.GaussianBlur(f, (0, 0), 8), scenes)
        print(f"{'(baseline)':18s} {size[0]:>4d}x{size[1]:<4d} {base:8.2f} {'':>7s} {base / BUDGET_MS:9.2f} {1:11.2f}")
        for name in sorted(registry.installed()):
            pipeline = registry.create(name)
            pipeline.warm_up()
            mean, p95 = per_frame_ms(pipeline.process, scenes)
            print(f"{name:18s} {size[0]:>4d}x{size[1]:<4d} {mean:8.2f} {p95:7.2f} {mean / BUDGET_MS:9.2f} "
                  f"{mean / base:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
