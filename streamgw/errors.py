"""The one exception tree of streamgw.

    StreamgwError
    ├── ConfigError            invalid settings, unknown keys
    ├── ProtocolError          a peer broke a wire protocol
    │   └── RtmpError
    │       ├── HandshakeError
    │       ├── ChunkError     malformed or oversized chunk stream
    │       └── AmfError       malformed AMF0 value
    ├── StreamError            stream lifecycle
    │   ├── StreamBusy         the stream name already has a live publisher
    │   ├── BadStreamName      the name is not allowed
    │   └── CapacityError      too many streams
    └── MediaError             media that cannot be segmented
        ├── KeyframeTimeout    no keyframe for too long
        └── SegmentTooLarge    a segment outgrew its byte bound

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class StreamgwError(Exception):
    """Base of every error streamgw raises on purpose."""


class ConfigError(StreamgwError):
    """The configuration is invalid."""


class ProtocolError(StreamgwError):
    """A peer violated a wire protocol."""


class RtmpError(ProtocolError):
    """An RTMP peer violated the RTMP specification."""


class HandshakeError(RtmpError):
    """The RTMP handshake failed."""


class ChunkError(RtmpError):
    """The RTMP chunk stream is malformed or exceeds a bound."""


class AmfError(RtmpError):
    """An AMF0 value is malformed or exceeds a bound."""


class StreamError(StreamgwError):
    """A stream cannot be published or continued."""


class StreamBusy(StreamError):
    """The stream name already has a live publisher."""


class BadStreamName(StreamError):
    """The stream name is not allowed."""


class CapacityError(StreamError):
    """The gateway is at its stream capacity."""


class MediaError(StreamgwError):
    """The media cannot be segmented."""


class KeyframeTimeout(MediaError):
    """The stream sent no keyframe for longer than allowed."""


class SegmentTooLarge(MediaError):
    """A segment grew past its byte bound."""
