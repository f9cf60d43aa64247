"""The pure wire layer: message types, parsing, validation and encoding.

No I/O and no Twisted imports here, so the protocol can be tested, fuzzed
and reused (by the daemon, the proxy and both clients) without a reactor.
"""
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH, decode_line, encode_line
from txharp.wire.daemon import (
    Acknowledgement,
    DaemonReplyReader,
    DaemonRequest,
    DaemonRequestError,
    StreamItem,
    parse_daemon_request,
)
from txharp.wire.dispatcher import (
    CallAccepted,
    CallRequest,
    CancelReply,
    CancelRequest,
    FollowStreamRequest,
    GetResultRequest,
    GetStatusRequest,
    Packet,
    QueueSpec,
    ReadStreamRequest,
    StatusReply,
    StreamReader,
    parse_call_reply,
    parse_cancel_reply,
    parse_outcome,
    parse_request,
    parse_result_reply,
    parse_status_reply,
    parse_stream_line,
)
from txharp.wire.outcomes import (
    CancelledReply,
    ContinueReply,
    ErrorReply,
    ExceptionReply,
    NoResultReply,
    Outcome,
    ResultReply,
)

__all__ = [
    "DEFAULT_MAX_LINE_LENGTH", "decode_line", "encode_line",
    "Acknowledgement", "DaemonReplyReader", "DaemonRequest", "DaemonRequestError",
    "StreamItem", "parse_daemon_request",
    "CallAccepted", "CallRequest", "CancelReply", "CancelRequest", "FollowStreamRequest",
    "GetResultRequest", "GetStatusRequest", "Packet", "QueueSpec", "ReadStreamRequest",
    "StatusReply", "StreamReader", "parse_call_reply", "parse_cancel_reply", "parse_outcome",
    "parse_request", "parse_result_reply", "parse_status_reply", "parse_stream_line",
    "CancelledReply", "ContinueReply", "ErrorReply", "ExceptionReply", "NoResultReply",
    "Outcome", "ResultReply",
]
