"""The one exception tree of streamgw.

    StreamgwError
    ├── ConfigError            invalid settings, unknown keys
    ├── IncompatibleDependency an installed library lacks the internals streamgw hooks into (an
    │                          upgrade changed them); names what; also an ImportError
    ├── ListenError            a listening port cannot be bound (in use, not permitted); names the
    │                          address; also an OSError
    ├── ProtocolError          a peer broke a wire protocol
    │   ├── RtmpError
    │   │   ├── HandshakeError
    │   │   ├── ChunkError     malformed or oversized chunk stream
    │   │   └── AmfError       malformed AMF0 value
    │   └── LivepeerError      a go-livepeer peer or value broke the Livepeer wire protocol
    │       ├── SignatureError         malformed signature, or signed by someone else
    │       ├── ProfileError           invalid VideoProfile or transcoding options
    │       ├── CapabilityMismatch     a job's capabilities do not fit an orchestrator's
    │       ├── SegDataError           Livepeer-Segment credentials cannot be built or are rejected
    │       ├── TranscodeResultError   malformed TranscodeResult, or one that reports a failure
    │       ├── PaymentError           malformed ticket parameters or payment
    │       │   ├── TicketRejected     the O refuses a payment or ticket (go-livepeer's text); ``fatal``
    │       │   │                      ends the whole payment, otherwise only crediting stops
    │       │   ├── InsufficientBalance  the sender's balance does not cover the work (``Insufficient balance``)
    │       │   └── TicketParamsRefused  the gateway will not pay on these ticket params (expiring, EV
    │       │                          over a limit, face value over the deposit, price over the cap)
    │       └── TrickleError           a trickle server answered out of protocol, or with an error
    │           └── TrickleClosed      the channel ended (closed, or gone: 404): end of stream
    ├── OrchestratorError      an orchestrator refused or failed a call (HTTP error, result error)
    │   ├── OrchestratorUnavailable  unreachable, no connection within the dial timeout, timed out
    │   │                            (GetOrchestrator included), TLS failed, or the connection broke
    │   ├── OrchestratorBusy   at capacity right now (OrchestratorBusy / OrchestratorCapped)
    │   └── BadRenditionSignature  an on-chain orchestrator's signature does not cover the
    │                              renditions fetched (missing, malformed, or someone else's)
    ├── ChainError             the chain (an Ethereum JSON-RPC node) failed a call
    │   ├── ChainUnavailable   the node cannot be reached, timed out or answered out of protocol
    │   │                      (transient: retry later)
    │   └── TransactionReverted  a contract refused a call or transaction; ``reason`` is its revert text
    ├── SignerError            the remote signer failed or refused a request (no payment is made)
    ├── StreamError            stream lifecycle
    │   ├── StreamBusy         the stream name already has a live publisher
    │   ├── BadStreamName      the name is not allowed
    │   ├── CapacityError      too many streams
    │   └── LiveAiRefused      a stream's live AI cannot start: bad pipeline request (names the
    │       │                  field), or an orchestrator refused it (its text)
    │       └── NoLiveOrchestrator  no orchestrator offers the pipeline, or none could start it
    ├── PipelineError          a live AI pipeline cannot be made or run
    │   ├── UnknownPipeline    no pipeline of that name is installed
    │   └── PipelineParamsError  a parameter is unknown or out of range; names the field
    └── MediaError             media that cannot be segmented
        ├── KeyframeTimeout    no keyframe for too long
        ├── SegmentTooLarge    a segment outgrew its byte bound
        ├── TranscodeError     a segment or rendition spec that cannot be transcoded
        └── SegmentRejected    an orchestrator could not transcode a segment because of the segment
                               (undecodable, unsupported codec or pixel format): the stream's fault,
                               never held against the orchestrator

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class StreamgwError(Exception):
    """Base of every error streamgw raises on purpose."""


class ConfigError(StreamgwError):
    """The configuration is invalid."""


class IncompatibleDependency(StreamgwError, ImportError):
    """An installed library's private internals that streamgw hooks into have changed; the text names them."""


class ListenError(StreamgwError, OSError):
    """A server cannot listen on its address; the text names the address and what it is for."""


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


class LiveAiRefused(StreamError):
    """A stream's live AI request cannot be served: a bad request (``field`` names what), or a
    refusal by the orchestrators (their text)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NoLiveOrchestrator(LiveAiRefused):
    """No orchestrator offers the pipeline, or none of those that do could start the stream."""


class MediaError(StreamgwError):
    """The media cannot be segmented."""


class KeyframeTimeout(MediaError):
    """The stream sent no keyframe for longer than allowed."""


class SegmentTooLarge(MediaError):
    """A segment grew past its byte bound."""


class LivepeerError(ProtocolError):
    """A go-livepeer peer, or a value meant for one, broke the Livepeer wire protocol."""


class SignatureError(LivepeerError):
    """A signature is malformed or was not made by the expected address; the text is go-livepeer's."""


class ProfileError(LivepeerError):
    """A VideoProfile or a transcoding-options document is invalid."""


class CapabilityMismatch(LivepeerError):
    """A job's capabilities are not compatible with an orchestrator's."""


class SegDataError(LivepeerError):
    """Livepeer-Segment credentials cannot be built, or an orchestrator rejects them (the text is its 403 body)."""


class TranscodeResultError(LivepeerError):
    """A TranscodeResult is malformed or reports a transcoding failure (the text is the orchestrator's)."""


class PaymentError(LivepeerError):
    """Ticket parameters or a payment are malformed or out of range."""


class TicketRejected(PaymentError):
    """The orchestrator refuses a payment or one of its tickets, with go-livepeer's text.

    ``fatal`` errors (wrong recipient, bad recipientRand, bad expected price) end the whole payment; the
    others (bad signature, nonce seen, params expired) stop crediting from that ticket on.
    """

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


class InsufficientBalance(PaymentError):
    """The sender's balance with this orchestrator does not cover the work (``Insufficient balance``)."""


class TicketParamsRefused(PaymentError):
    """The gateway will not pay on an orchestrator's ticket params (go-livepeer's sender rules, price cap)."""


class ChainError(StreamgwError):
    """An Ethereum JSON-RPC call failed."""


class ChainUnavailable(ChainError):
    """The chain node cannot be reached, timed out, or answered out of protocol: transient, retry later."""


class TransactionReverted(ChainError):
    """A contract refused a call or a transaction; ``reason`` is its revert text (may be empty)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class SignerError(StreamgwError):
    """The remote signer could not be reached or refused a request: no payment is made."""


class TranscodeError(MediaError):
    """A segment cannot be transcoded (bad input, bad rendition spec, encoder failure)."""


class OrchestratorError(StreamgwError):
    """An orchestrator refused or failed a call."""


class OrchestratorUnavailable(OrchestratorError):
    """An orchestrator could not be reached, timed out, or dropped the connection."""


class OrchestratorBusy(OrchestratorError):
    """An orchestrator is at capacity: try another, without holding it against this one."""


class BadRenditionSignature(OrchestratorError):
    """An on-chain orchestrator's result signature does not match the renditions fetched: its failure."""


class SegmentRejected(MediaError):
    """An orchestrator reports that a segment itself cannot be transcoded: charged to its stream, not to it."""


class TrickleError(LivepeerError):
    """A trickle server answered out of protocol or with an error status."""


class TrickleClosed(TrickleError):
    """The trickle channel ended: closed by its publisher (``Lp-Trickle-Closed``) or gone (404)."""


class PipelineError(StreamgwError):
    """A live AI pipeline cannot be made, or failed on a frame."""


class UnknownPipeline(PipelineError):
    """No pipeline of that name is installed (entry-point group ``streamgw.pipelines``)."""


class PipelineParamsError(PipelineError):
    """A pipeline parameter is unknown, of the wrong type or out of range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
