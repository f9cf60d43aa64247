"""The exception tree shared by every layer of txharp.

The four public classes of the original ``harp`` library keep their names and
constructor signatures; txharp adds subclasses of :class:`CommunicationError`
so that callers can tell a TLS failure from a timeout without parsing text.
This module imports nothing from Twisted.
"""
from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "HarpException",
    "CommunicationError",
    "MalformedMessage",
    "LineTooLong",
    "TLSError",
    "HarpTimeout",
    "EncodingError",
    "CancelledException",
    "RemoteException",
    "RemoteError",
]


class HarpException(Exception):
    """Base class of every exception txharp raises on purpose."""


class CommunicationError(HarpException):
    """The conversation with a server failed: connection, framing or protocol."""


class MalformedMessage(CommunicationError):
    """A line that is not a valid message of the protocol.

    :ivar error_type: the wire error type a server answers with
        (``parse_error`` for bytes that are not JSON, ``invalid_request``
        for JSON of the wrong shape).
    """

    def __init__(self, message: str, error_type: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


class LineTooLong(MalformedMessage):
    """A line longer than the configured maximum; the connection is closed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes", "invalid_request")
        self.limit = limit


class TLSError(CommunicationError):
    """The TLS handshake or certificate verification failed."""


class HarpTimeout(CommunicationError):
    """The server did not answer within the configured time."""


class EncodingError(HarpException, ValueError):
    """A value cannot travel as JSON (NaN, infinity, a set, an arbitrary object).

    Raised before anything is sent, so the peer never sees a broken line.
    """


class CancelledException(HarpException):
    """The job has no value because it was cancelled."""


class _TypedRemoteFailure(HarpException):
    """A failure reported by the remote side as ``type``, ``message``, ``data``."""

    def __init__(self, type: str, message: str, data: Optional[Any] = None) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.type!r}, {self.message!r}, {self.data!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _TypedRemoteFailure)
        return (self.type, self.message, self.data) == (other.type, other.message, other.data)

    __hash__ = HarpException.__hash__


class RemoteException(_TypedRemoteFailure):
    """The remote procedure raised an exception.

    :ivar type: the exception's type name, e.g. ``ValueError``
    :ivar message: its message
    :ivar data: extra JSON data (the original harpd sends ``class`` and
        ``module``), ``None`` when absent
    """


class RemoteError(_TypedRemoteFailure):
    """An operational error: the call could not run or finish.

    ``type`` names the failure (``unknown_host``, ``auth_error``,
    ``timeout``, ``missing_result``...); see the documentation's table of
    error types for each one's meaning.
    """
