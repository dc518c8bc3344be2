"""What an SDP offer asks for, read without aiortc (RFC 8866)."""

from __future__ import annotations

from typing import NamedTuple

MAX_OFFER_BYTES = 64 * 1024


class OfferedMedia(NamedTuple):
    """One audio/video m-section of an SDP offer."""

    kind: str  # "audio" | "video"
    direction: str  # sendrecv (the default), sendonly, recvonly or inactive
    codecs: frozenset[str]  # encoding names of its a=rtpmap lines, lower case (rtx included)


def offered_media(sdp: str) -> list[OfferedMedia]:
    """The audio/video m-sections of an SDP offer, in order (RFC 8866 5.14, 6.6, 6.7)."""
    out: list[OfferedMedia] = []
    kind = ""
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            if kind in ("audio", "video"):
                out.append(OfferedMedia(kind, "sendrecv", frozenset()))
        elif kind not in ("audio", "video"):
            continue
        elif line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            out[-1] = out[-1]._replace(direction=line[2:])
        elif line.startswith("a=rtpmap:"):
            name = line.partition(" ")[2].split("/", 1)[0].strip().lower()
            if name:
                out[-1] = out[-1]._replace(codecs=out[-1].codecs | {name})
    return out
