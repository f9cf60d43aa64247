"""Messages of the dispatcher protocol ("harpcaller", TCP 3502).

Requests are parsed and validated here for the server side and built here
for the client side; replies likewise.  Nothing in this module does I/O.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Union

from txharp.errors import MalformedMessage
from txharp.wire._record import Record, _set
from txharp.wire.outcomes import (
    CancelledReply,
    ContinueReply,
    ErrorReply,
    ExceptionReply,
    NoResultReply,
    Outcome,
    ResultReply,
    parse_failure_fields,
    require_object,
)

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_PORT",
    "Arguments",
    "QueueSpec",
    "CallRequest",
    "CancelRequest",
    "GetResultRequest",
    "GetStatusRequest",
    "FollowStreamRequest",
    "ReadStreamRequest",
    "Request",
    "parse_request",
    "CallAccepted",
    "CancelReply",
    "StatusReply",
    "Packet",
    "ResultAnswer",
    "StreamLine",
    "parse_call_reply",
    "parse_cancel_reply",
    "parse_result_reply",
    "parse_status_reply",
    "parse_stream_line",
    "parse_outcome",
    "StreamReader",
    "check_arguments",
]

PROTOCOL_VERSION = 1
DEFAULT_PORT = 3502

Arguments = Union[List[Any], Dict[str, Any]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_arguments(value: Any) -> Arguments:
    """Arguments are a JSON list (positional) or object (named)."""
    if not isinstance(value, (list, dict)):
        raise MalformedMessage("arguments must be a list or an object")
    return value


def _optional_seconds(body: Mapping[str, Any], key: str) -> Optional[float]:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value) or not value > 0:
        raise MalformedMessage(f"{key} must be a positive number of seconds")
    return value


def _optional_count(body: Mapping[str, Any], key: str) -> Optional[int]:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise MalformedMessage(f"{key} must be a non-negative integer")
    return value


def _job_id(body: Mapping[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise MalformedMessage(f"{key} must be a job ID string")
    return value


# ---------------------------------------------------------------- requests


class QueueSpec(Record):
    """A named queue: ``name`` is any JSON object, compared by value."""

    __slots__ = _fields = ("name", "concurrency")
    name: Dict[str, Any]
    concurrency: Optional[int]

    def __init__(self, name: Dict[str, Any], concurrency: Optional[int] = None) -> None:
        _set(self, "name", name)
        _set(self, "concurrency", concurrency)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name}
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        return out

    @classmethod
    def from_json(cls, value: Any) -> "QueueSpec":
        body = require_object(value, "queue")
        name = body.get("name")
        if not isinstance(name, dict):
            raise MalformedMessage("queue name must be a JSON object")
        concurrency = body.get("concurrency")
        if concurrency is not None and (not _is_int(concurrency) or concurrency < 1):
            raise MalformedMessage("queue concurrency must be a positive integer")
        return cls(name=name, concurrency=concurrency)


class CallRequest(Record):
    """Run ``procedure(*arguments)`` on ``host``; answered with a job ID."""

    __slots__ = _fields = (
        "host", "procedure", "arguments", "timeout", "max_exec_time", "queue", "info",
    )
    host: str
    procedure: str
    arguments: Arguments
    timeout: Optional[float]
    max_exec_time: Optional[float]
    queue: Optional[QueueSpec]
    info: Any

    def __init__(
        self,
        host: str,
        procedure: str,
        arguments: Optional[Arguments] = None,
        timeout: Optional[float] = None,
        max_exec_time: Optional[float] = None,
        queue: Optional[QueueSpec] = None,
        info: Any = None,
    ) -> None:
        _set(self, "host", host)
        _set(self, "procedure", procedure)
        _set(self, "arguments", [] if arguments is None else arguments)
        _set(self, "timeout", timeout)
        _set(self, "max_exec_time", max_exec_time)
        _set(self, "queue", queue)
        _set(self, "info", info)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "harpcaller": PROTOCOL_VERSION,
            "host": self.host,
            "procedure": self.procedure,
            "arguments": self.arguments,
        }
        if self.queue is not None:
            out["queue"] = self.queue.to_json()
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.max_exec_time is not None:
            out["max_exec_time"] = self.max_exec_time
        out["info"] = self.info
        return out

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "CallRequest":
        host, procedure = body.get("host"), body.get("procedure")
        if not isinstance(host, str) or not isinstance(procedure, str):
            raise MalformedMessage("host and procedure must be strings")
        if "arguments" not in body:
            raise MalformedMessage("call request without arguments")
        queue = body.get("queue")
        return cls(
            host=host,
            procedure=procedure,
            arguments=check_arguments(body["arguments"]),
            timeout=_optional_seconds(body, "timeout"),
            max_exec_time=_optional_seconds(body, "max_exec_time"),
            queue=None if queue is None else QueueSpec.from_json(queue),
            info=body.get("info"),
        )


class CancelRequest(Record):
    """Stop a queued or running job."""

    __slots__ = _fields = ("job_id",)
    job_id: str

    def __init__(self, job_id: str) -> None:
        _set(self, "job_id", job_id)

    def to_json(self) -> Dict[str, Any]:
        return {"harpcaller": PROTOCOL_VERSION, "cancel": self.job_id}


class GetResultRequest(Record):
    """Ask for a job's end; ``wait=None`` leaves the field out of the line."""

    __slots__ = _fields = ("job_id", "wait")
    job_id: str
    wait: Optional[bool]

    def __init__(self, job_id: str, wait: Optional[bool] = True) -> None:
        _set(self, "job_id", job_id)
        _set(self, "wait", wait)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"harpcaller": PROTOCOL_VERSION, "get_result": self.job_id}
        if self.wait is not None:
            out["wait"] = self.wait
        return out


class GetStatusRequest(Record):
    """Ask for a job's call, times and info."""

    __slots__ = _fields = ("job_id",)
    job_id: str

    def __init__(self, job_id: str) -> None:
        _set(self, "job_id", job_id)

    def to_json(self) -> Dict[str, Any]:
        return {"harpcaller": PROTOCOL_VERSION, "get_status": self.job_id}


class _StreamRequest(Record):
    __slots__ = _fields = ("job_id", "since", "recent")
    job_id: str
    since: Optional[int]
    recent: Optional[int]
    _operation = ""

    def __init__(self, job_id: str, since: Optional[int] = None, recent: Optional[int] = None) -> None:
        _set(self, "job_id", job_id)
        _set(self, "since", since)
        _set(self, "recent", recent)
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.since is not None and self.recent is not None:
            raise MalformedMessage("since and recent are mutually exclusive")
        for key in ("since", "recent"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < 0):
                raise MalformedMessage(f"{key} must be a non-negative integer")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"harpcaller": PROTOCOL_VERSION, self._operation: self.job_id}
        if self.since is not None:
            out["since"] = self.since
        if self.recent is not None:
            out["recent"] = self.recent
        return out


class FollowStreamRequest(_StreamRequest):
    """Packets from a point (default: only new ones), live, then the end."""

    __slots__ = ()

    _operation = "follow_stream"


class ReadStreamRequest(_StreamRequest):
    """Packets recorded so far (default: all), then the end or ``continue``."""

    __slots__ = ()

    _operation = "read_stream"


Request = Union[
    CallRequest,
    CancelRequest,
    GetResultRequest,
    GetStatusRequest,
    FollowStreamRequest,
    ReadStreamRequest,
]


def parse_request(value: Any) -> Request:
    """Validate a decoded request line; raise MalformedMessage naming the fault."""
    body = require_object(value, "request")
    if body.get("harpcaller") != PROTOCOL_VERSION or isinstance(body.get("harpcaller"), bool):
        raise MalformedMessage("unsupported protocol version")
    if "host" in body or "procedure" in body:
        return CallRequest.from_json(body)
    if "cancel" in body:
        return CancelRequest(_job_id(body, "cancel"))
    if "get_result" in body:
        wait = body.get("wait")
        if wait is not None and not isinstance(wait, bool):
            raise MalformedMessage("wait must be true or false")
        return GetResultRequest(_job_id(body, "get_result"), wait)
    if "get_status" in body:
        return GetStatusRequest(_job_id(body, "get_status"))
    for operation, kind in (("follow_stream", FollowStreamRequest), ("read_stream", ReadStreamRequest)):
        if operation in body:
            return kind(
                _job_id(body, operation),
                since=_optional_count(body, "since"),
                recent=_optional_count(body, "recent"),
            )
    raise MalformedMessage("unknown operation")


# ----------------------------------------------------------------- replies


class CallAccepted(Record):
    """The call was registered as job ``job_id``."""

    __slots__ = _fields = ("job_id",)
    job_id: str

    def __init__(self, job_id: str) -> None:
        _set(self, "job_id", job_id)

    def to_json(self) -> Dict[str, Any]:
        return {"harpcaller": PROTOCOL_VERSION, "job_id": self.job_id}


class CancelReply(Record):
    """Whether a queued or running job was stopped."""

    __slots__ = _fields = ("cancelled",)
    cancelled: bool

    def __init__(self, cancelled: bool) -> None:
        _set(self, "cancelled", cancelled)

    def to_json(self) -> Dict[str, Any]:
        return {"cancelled": self.cancelled}


class StatusReply(Record):
    """A job's call, its integer Unix times and its opaque ``info``."""

    __slots__ = _fields = ("host", "procedure", "arguments", "submit", "start", "end", "info")
    host: str
    procedure: str
    arguments: Arguments
    submit: int
    start: Optional[int]
    end: Optional[int]
    info: Any

    def __init__(
        self,
        host: str,
        procedure: str,
        arguments: Arguments,
        submit: int,
        start: Optional[int],
        end: Optional[int],
        info: Any = None,
    ) -> None:
        _set(self, "host", host)
        _set(self, "procedure", procedure)
        _set(self, "arguments", arguments)
        _set(self, "submit", submit)
        _set(self, "start", start)
        _set(self, "end", end)
        _set(self, "info", info)

    def to_json(self) -> Dict[str, Any]:
        return {
            "call": {"host": self.host, "procedure": self.procedure, "arguments": self.arguments},
            "time": {"submit": self.submit, "start": self.start, "end": self.end},
            "info": self.info,
        }


class Packet(Record):
    """Stream packet ``number`` (counted from 0 over the whole job)."""

    __slots__ = _fields = ("number", "data")
    number: int
    data: Any

    def __init__(self, number: int, data: Any) -> None:
        _set(self, "number", number)
        _set(self, "data", data)

    def to_json(self) -> Dict[str, Any]:
        return {"packet": self.number, "data": self.data}


ResultAnswer = Union[Outcome, NoResultReply]
StreamLine = Union[Packet, Outcome, ContinueReply]


def parse_outcome(value: Any) -> Optional[Outcome]:
    """Recognise an end-of-job line; None if ``value`` is not one.

    Shared by both protocols, which spell a call's end the same way.
    """
    body = require_object(value, "reply")
    if "result" in body:
        return ResultReply(body["result"])
    if "exception" in body:
        return ExceptionReply(**parse_failure_fields(body["exception"], "exception"))
    if "error" in body:
        return ErrorReply(**parse_failure_fields(body["error"], "error"))
    if body.get("cancelled") is True:
        return CancelledReply()
    return None


def _expect(value: Any, what: str) -> Outcome:
    outcome = parse_outcome(value)
    if outcome is None:
        raise MalformedMessage(f"unexpected reply to {what}")
    return outcome


def parse_call_reply(value: Any) -> Union[CallAccepted, ErrorReply]:
    """The answer to a call request: a job ID or a request-level error."""
    body = require_object(value, "reply")
    if isinstance(body.get("job_id"), str):
        return CallAccepted(body["job_id"])
    outcome = _expect(body, "call")
    if not isinstance(outcome, ErrorReply):
        raise MalformedMessage("unexpected reply to call")
    return outcome


def parse_cancel_reply(value: Any) -> Union[CancelReply, ErrorReply]:
    """The answer to cancel: whether the job was stopped."""
    body = require_object(value, "reply")
    if isinstance(body.get("cancelled"), bool) and len(body) == 1:
        return CancelReply(body["cancelled"])
    outcome = _expect(body, "cancel")
    if not isinstance(outcome, ErrorReply):
        raise MalformedMessage("unexpected reply to cancel")
    return outcome


def parse_result_reply(value: Any) -> ResultAnswer:
    """The answer to get_result: the job's end, or that it has none yet."""
    body = require_object(value, "reply")
    if body.get("no_result") is True:
        return NoResultReply()
    return _expect(body, "get_result")


def parse_status_reply(value: Any) -> Union[StatusReply, ErrorReply]:
    """The answer to get_status."""
    body = require_object(value, "reply")
    if "call" not in body:
        outcome = _expect(body, "get_status")
        if not isinstance(outcome, ErrorReply):
            raise MalformedMessage("unexpected reply to get_status")
        return outcome
    call = require_object(body["call"], "call")
    times = require_object(body.get("time"), "time")
    host, procedure = call.get("host"), call.get("procedure")
    if not isinstance(host, str) or not isinstance(procedure, str):
        raise MalformedMessage("call.host and call.procedure must be strings")
    submit, start, end = times.get("submit"), times.get("start"), times.get("end")
    if not _is_number(submit):
        raise MalformedMessage("time.submit must be a number")
    for name, stamp in (("start", start), ("end", end)):
        if stamp is not None and not _is_number(stamp):
            raise MalformedMessage(f"time.{name} must be a number or null")
    return StatusReply(
        host=host,
        procedure=procedure,
        arguments=check_arguments(call.get("arguments", [])),
        submit=submit,
        start=start,
        end=end,
        info=body.get("info"),
    )


def parse_stream_line(value: Any) -> StreamLine:
    """One line of a follow_stream/read_stream reply."""
    body = require_object(value, "reply")
    if "packet" in body:
        number = body["packet"]
        if not _is_int(number) or number < 0:
            raise MalformedMessage("packet number must be a non-negative integer")
        if "data" not in body:
            raise MalformedMessage("packet without data")
        return Packet(number, body["data"])
    if body.get("continue") is True:
        return ContinueReply()
    return _expect(body, "stream request")


class StreamReader:
    """Checks a follow_stream/read_stream reply, one decoded line at a time.

    Packets must be numbered consecutively from the first one seen; the
    reply ends with one outcome (or, for ``read_stream`` only, ``continue``).
    ``feed`` returns the typed line or raises MalformedMessage.
    """

    def __init__(self, allow_continue: bool) -> None:
        self.allow_continue = allow_continue
        self.next_number: Optional[int] = None
        self.end: Optional[Union[Outcome, ContinueReply]] = None

    @property
    def finished(self) -> bool:
        return self.end is not None

    def feed(self, value: Any) -> StreamLine:
        if self.end is not None:
            raise MalformedMessage("data after the end of the stream")
        line = parse_stream_line(value)
        if isinstance(line, Packet):
            if self.next_number is not None and line.number != self.next_number:
                raise MalformedMessage(
                    f"packet {line.number} out of order (expected {self.next_number})"
                )
            self.next_number = line.number + 1
            return line
        if isinstance(line, ContinueReply) and not self.allow_continue:
            raise MalformedMessage("continue in a followed stream")
        self.end = line
        return line
