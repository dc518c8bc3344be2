"""libx264 options, built in one place (the transcoder's renditions, WHIP's and WHEP's re-encodes)."""

from __future__ import annotations

from collections.abc import Sequence


def x264_options(preset: str, *, tune: str | None = None, profile: str | None = None, crf: int | None = None,
                 maxrate: str | None = None, bufsize: str | None = None, forced_idr: bool = False,
                 params: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The libx264 private options for these settings (None: x264's default); ``params`` go in x264-params."""
    opts = {"preset": preset}
    if tune is not None:
        opts["tune"] = tune
    if profile is not None:
        opts["profile"] = profile
    if crf is not None:
        opts["crf"] = str(crf)
    if maxrate is not None:
        opts["maxrate"] = maxrate
    if bufsize is not None:
        opts["bufsize"] = bufsize
    if forced_idr:
        opts["forced-idr"] = "1"
    if params:
        opts["x264-params"] = ":".join(f"{k}={v}" for k, v in params)
    return opts


def realtime_x264_options(preset: str, max_bitrate: int) -> dict[str, str]:
    """x264 for WebRTC viewers: no lookahead, no B-frames, constrained baseline, one thread.

    Quality is CRF 23 below a VBV cap of ``max_bitrate`` bit/s over one second; keyframes come
    only when a frame is forced to be one (no scene cuts, no keyframe interval).
    """
    vbv = f"{max_bitrate // 1000}k"
    return x264_options(
        preset,
        tune="zerolatency",  # no lookahead, no B-frames: WebRTC viewers need none
        profile="baseline",  # constrained baseline: what every WebRTC H.264 decoder takes
        crf=23, maxrate=vbv, bufsize=vbv, forced_idr=True,
        params=(("scenecut", "0"), ("keyint", "infinite"), ("threads", "1")),
    )


def idle_x264_options() -> dict[str, str]:
    """For a muxer's stream whose packets come from elsewhere: the idle encoder it opens stays small."""
    return x264_options("ultrafast", tune="zerolatency")
