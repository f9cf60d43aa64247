"""How a call ends, as both protocols spell it.

``{"result": V}``, ``{"exception": {...}}`` and ``{"error": {...}}`` have the
same shape on the dispatcher and the harpd wire (harpd adds ``"harp": 1`` to
error lines), so one set of types serves both.  The dispatcher protocol adds
``{"cancelled": true}``, ``{"no_result": true}`` and ``{"continue": true}``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from txharp.errors import MalformedMessage, RemoteError, RemoteException
from txharp.wire._record import Record, _set

__all__ = [
    "ResultReply",
    "ExceptionReply",
    "ErrorReply",
    "CancelledReply",
    "NoResultReply",
    "ContinueReply",
    "Outcome",
    "parse_failure_fields",
    "require_object",
]


def require_object(value: Any, what: str) -> Mapping[str, Any]:
    """Return ``value`` if it is a JSON object, else raise MalformedMessage."""
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


class ResultReply(Record):
    """The procedure returned ``value``."""

    __slots__ = _fields = ("value",)
    value: Any

    def __init__(self, value: Any) -> None:
        _set(self, "value", value)

    def to_json(self) -> Dict[str, Any]:
        return {"result": self.value}


class _FailureFields(Record):
    """``{"type": T, "message": M, "data": D}``; ``data`` is left out when None."""

    __slots__ = _fields = ("type", "message", "data")
    type: str
    message: str
    data: Optional[Any]

    def __init__(self, type: str, message: str, data: Optional[Any] = None) -> None:
        _set(self, "type", type)
        _set(self, "message", message)
        _set(self, "data", data)

    def fields(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": self.type, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


class ExceptionReply(_FailureFields):
    """The procedure raised; ``type`` is the exception's name."""

    __slots__ = ()

    def to_json(self) -> Dict[str, Any]:
        return {"exception": self.fields()}

    def exception(self) -> RemoteException:
        """The API-side exception for this reply."""
        return RemoteException(self.type, self.message, self.data)


class ErrorReply(_FailureFields):
    """An operational error (no such host, timeout, auth, invalid request...)."""

    __slots__ = ()

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.fields()}

    def exception(self) -> RemoteError:
        """The API-side exception for this reply."""
        return RemoteError(self.type, self.message, self.data)

    def to_daemon_json(self) -> Dict[str, Any]:
        """The harpd wire form, which carries the protocol marker."""
        return {"harp": 1, "error": self.fields()}


class CancelledReply(Record):
    """The job was cancelled before it ended."""

    __slots__ = ()

    def to_json(self) -> Dict[str, Any]:
        return {"cancelled": True}


class NoResultReply(Record):
    """``get_result`` without waiting: the job has not ended yet."""

    __slots__ = ()

    def to_json(self) -> Dict[str, Any]:
        return {"no_result": True}


class ContinueReply(Record):
    """``read_stream`` of a job that has not ended: more packets may come."""

    __slots__ = ()

    def to_json(self) -> Dict[str, Any]:
        return {"continue": True}


#: Every way a job can end.
Outcome = Union[ResultReply, ExceptionReply, ErrorReply, CancelledReply]


def parse_failure_fields(value: Any, what: str) -> Dict[str, Any]:
    """Validate an exception/error body and return its keyword arguments.

    ``message`` is required to be a string by the protocol, but peers in the
    wild send other JSON there; it is turned into text rather than losing
    the whole reply.
    """
    body = require_object(value, what)
    kind = body.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage(f"{what}.type must be a string")
    message = body.get("message", "")
    if not isinstance(message, str):
        try:
            message = str(message)
        except RecursionError:
            # A value the decoder just managed to nest can be too deep for repr().
            raise MalformedMessage(f"{what}.message nested too deeply") from None
    return {"type": kind, "message": message, "data": body.get("data")}
