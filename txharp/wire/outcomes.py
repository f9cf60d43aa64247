"""How a call ends, as both protocols spell it.

``{"result": V}``, ``{"exception": {...}}`` and ``{"error": {...}}`` have the
same shape on the dispatcher and the harpd wire (harpd adds ``"harp": 1`` to
error lines), so one set of types serves both.  The dispatcher protocol adds
``{"cancelled": true}``, ``{"no_result": true}`` and ``{"continue": true}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

from txharp.errors import MalformedMessage, RemoteError, RemoteException

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


@dataclass(frozen=True)
class ResultReply:
    """The procedure returned ``value``."""

    value: Any

    def to_json(self) -> Dict[str, Any]:
        return {"result": self.value}


@dataclass(frozen=True)
class _FailureFields:
    """``{"type": T, "message": M, "data": D}``; ``data`` is left out when None."""

    type: str
    message: str
    data: Optional[Any] = None

    def fields(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": self.type, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass(frozen=True)
class ExceptionReply(_FailureFields):
    """The procedure raised; ``type`` is the exception's name."""

    def to_json(self) -> Dict[str, Any]:
        return {"exception": self.fields()}

    def exception(self) -> RemoteException:
        """The API-side exception for this reply."""
        return RemoteException(self.type, self.message, self.data)


@dataclass(frozen=True)
class ErrorReply(_FailureFields):
    """An operational error (no such host, timeout, auth, invalid request...)."""

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.fields()}

    def exception(self) -> RemoteError:
        """The API-side exception for this reply."""
        return RemoteError(self.type, self.message, self.data)

    def to_daemon_json(self) -> Dict[str, Any]:
        """The harpd wire form, which carries the protocol marker."""
        return {"harp": 1, "error": self.fields()}


@dataclass(frozen=True)
class CancelledReply:
    """The job was cancelled before it ended."""

    def to_json(self) -> Dict[str, Any]:
        return {"cancelled": True}


@dataclass(frozen=True)
class NoResultReply:
    """``get_result`` without waiting: the job has not ended yet."""

    def to_json(self) -> Dict[str, Any]:
        return {"no_result": True}


@dataclass(frozen=True)
class ContinueReply:
    """``read_stream`` of a job that has not ended: more packets may come."""

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
