"""Messages of the harpd protocol ("harp", TLS 4306).

One call per connection: the client sends a :class:`DaemonRequest`; the
daemon answers with an :class:`Acknowledgement` (or an error), then, for a
streaming procedure, :class:`StreamItem` lines, then exactly one final
line.  :class:`DaemonReplyReader` checks that order without doing I/O.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

from txharp.errors import MalformedMessage
from txharp.wire._record import Record, _set
from txharp.wire.dispatcher import Arguments, parse_outcome
from txharp.wire.outcomes import ErrorReply, ExceptionReply, ResultReply, require_object

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_PORT",
    "DaemonRequest",
    "DaemonRequestError",
    "parse_daemon_request",
    "Acknowledgement",
    "StreamItem",
    "DaemonFinal",
    "DaemonReply",
    "DaemonReplyReader",
]

PROTOCOL_VERSION = 1
DEFAULT_PORT = 4306


class DaemonRequest(Record):
    """A call with its credentials; ``repr`` never shows the password."""

    __slots__ = _fields = ("procedure", "arguments", "user", "password")
    _hidden = frozenset({"password"})
    procedure: str
    arguments: Arguments
    user: str
    password: str

    def __init__(self, procedure: str, arguments: Arguments, user: str, password: str) -> None:
        _set(self, "procedure", procedure)
        _set(self, "arguments", arguments)
        _set(self, "user", user)
        _set(self, "password", password)

    def to_json(self) -> Dict[str, Any]:
        return {
            "harp": PROTOCOL_VERSION,
            "procedure": self.procedure,
            "arguments": self.arguments,
            "auth": {"user": self.user, "password": self.password},
        }


class DaemonRequestError(MalformedMessage):
    """A request harpd must refuse; ``error_type`` and ``message`` go on the wire."""

    def reply(self) -> ErrorReply:
        return ErrorReply(self.error_type, self.message)


def parse_daemon_request(value: Any) -> DaemonRequest:
    """Validate a decoded request in the original daemon's order of checks.

    Shape first (object, protocol version, procedure and arguments), then
    the credentials' format; the messages match the original's words.
    """
    if not isinstance(value, dict):
        raise DaemonRequestError("invalid request data type")
    version = value.get("harp")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise DaemonRequestError("unsupported protocol version")
    procedure, arguments = value.get("procedure"), value.get("arguments")
    if not isinstance(procedure, str) or not isinstance(arguments, (list, dict)):
        raise DaemonRequestError("invalid request")
    auth = value.get("auth")
    if (
        not isinstance(auth, dict)
        or not isinstance(auth.get("user"), str)
        or not isinstance(auth.get("password"), str)
    ):
        raise DaemonRequestError("malformed credentials data")
    return DaemonRequest(procedure, arguments, auth["user"], auth["password"])


class Acknowledgement(Record):
    """The daemon accepted the call; ``stream_result`` says whether packets follow."""

    __slots__ = _fields = ("stream_result",)
    stream_result: bool

    def __init__(self, stream_result: bool) -> None:
        _set(self, "stream_result", stream_result)

    def to_json(self) -> Dict[str, Any]:
        return {"harp": PROTOCOL_VERSION, "stream_result": self.stream_result}


class StreamItem(Record):
    """One packet of a streaming procedure."""

    __slots__ = _fields = ("data",)
    data: Any

    def __init__(self, data: Any) -> None:
        _set(self, "data", data)

    def to_json(self) -> Dict[str, Any]:
        return {"stream": self.data}


DaemonFinal = Union[ResultReply, ExceptionReply, ErrorReply]
DaemonReply = Union[Acknowledgement, StreamItem, DaemonFinal]


class DaemonReplyReader:
    """Checks the order of a daemon's reply lines, one decoded line at a time.

    ``feed`` returns the typed message or raises MalformedMessage for a line
    that is garbage or out of place; ``finished`` tells whether the final
    line has been seen (anything after it is an error).
    """

    def __init__(self) -> None:
        self.acknowledged: Optional[Acknowledgement] = None
        self.final: Optional[DaemonFinal] = None

    @property
    def finished(self) -> bool:
        return self.final is not None

    def feed(self, value: Any) -> DaemonReply:
        if self.final is not None:
            raise MalformedMessage("data after the final line")
        body = require_object(value, "reply")
        if self.acknowledged is None:
            if "error" not in body:
                ack = body.get("stream_result")
                if body.get("harp") != PROTOCOL_VERSION or not isinstance(ack, bool):
                    raise MalformedMessage("expected an acknowledgement")
                self.acknowledged = Acknowledgement(ack)
                return self.acknowledged
        elif "stream" in body and "error" not in body:
            if not self.acknowledged.stream_result:
                raise MalformedMessage("stream packet from a non-streaming procedure")
            return StreamItem(body["stream"])
        outcome = parse_outcome(body)
        if outcome is None or not isinstance(outcome, (ResultReply, ExceptionReply, ErrorReply)):
            raise MalformedMessage("unexpected line from the daemon")
        if self.acknowledged is None and not isinstance(outcome, ErrorReply):
            raise MalformedMessage("result before the acknowledgement")
        self.final = outcome
        return outcome
