"""``noop``: every frame as it came (go-livepeer's default pipeline when none is asked for)."""

from __future__ import annotations

from streamgw.pipelines.base import BasePipeline, Frame


class Noop(BasePipeline):
    name = model_id = "noop"

    def process(self, frame: Frame) -> Frame:
        return frame
