"""The layering docs/ARCHITECTURE.md and STYLE.md describe, read from the imports of every module.

PyAV only in ``media/`` (the orchestrator's workers use it through ``media/transcoder``); aiortc
and aioice only in the WebRTC layer and the WHIP/WHEP session modules; protocol sessions
(``ingest/``, ``output/``) never import PyAV; output never imports ingest; gateway and
orchestrator never import each other; media imports no protocol or node package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streamgw"


def _imports() -> dict[str, set[str]]:
    """Every module of the package (as a path under streamgw/) -> the top-level names it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[rel] = names
    return out


def _uses(names: set[str], package: str) -> bool:
    return any(n == package or n.startswith(package + ".") for n in names)


def test_pyav_only_in_media() -> None:
    users = sorted(m for m, names in _imports().items() if _uses(names, "av"))
    assert users and all(m.startswith("media/") for m in users), users


def test_aiortc_only_in_the_webrtc_layer_and_the_session_modules() -> None:
    allowed = ("webrtc/", "ingest/whip.py", "output/whep.py")
    users = sorted(m for m, names in _imports().items() if _uses(names, "aiortc") or _uses(names, "aioice"))
    assert users and all(m.startswith(allowed) for m in users), users


def test_opencv_only_in_the_pipelines() -> None:
    users = sorted(m for m, names in _imports().items() if _uses(names, "cv2"))
    assert users and all(m.startswith("pipelines/") for m in users), users


def test_the_packages_keep_to_their_layers() -> None:
    forbidden = {
        "gateway/": ("streamgw.orchestrator",),
        "orchestrator/": ("streamgw.gateway", "streamgw.ingest", "streamgw.output"),
        "output/": ("streamgw.ingest",),
        "media/": ("streamgw.gateway", "streamgw.orchestrator", "streamgw.ingest", "streamgw.output",
                   "streamgw.api", "streamgw.webrtc", "streamgw.node"),
        "ingest/": ("streamgw.gateway", "streamgw.output", "streamgw.orchestrator"),
        "livepeer/": ("streamgw.gateway", "streamgw.orchestrator", "streamgw.media"),
        "pipelines/": ("streamgw.gateway", "streamgw.orchestrator", "streamgw.media", "streamgw.ingest",
                       "streamgw.output", "streamgw.api", "streamgw.node", "streamgw.trickle", "av"),
        "trickle/": ("streamgw.gateway", "streamgw.orchestrator", "streamgw.media", "streamgw.ingest",
                     "streamgw.output", "streamgw.api", "streamgw.node"),
    }
    wrong = [(m, n) for m, names in _imports().items() for prefix, bad in forbidden.items()
             if m.startswith(prefix) for n in names if any(_uses({n}, b) for b in bad)]
    assert not wrong, wrong


def test_only_the_hooks_module_touches_private_aiortc_state() -> None:
    private = re.compile(r"_RTCRtpReceiver__|_send_rtcp_pli|\._connection\b|_local_candidates")
    touching = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
                      if private.search(path.read_text()))
    assert touching == ["webrtc/hooks.py"], touching
