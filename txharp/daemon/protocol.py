"""The server side of the harpd protocol: one call per connection.

The conversation, with the original daemon's order of checks (PROTOCOL.md
§2 and §3):

1. the request line: not JSON gives ``parse_error``; a wrong shape, protocol
   version or credentials format gives ``invalid_request`` with the
   original's messages (:func:`~txharp.wire.parse_daemon_request`); any
   further data gives ``invalid_request`` "excessive data after request",
   also when it arrives in the same packet as the request: the call starts
   one reactor turn after the request, and everything received before
   then counts;
2. credentials: ``auth_error`` "unknown user or wrong password";
3. the procedure exists: ``no_such_procedure`` with ``{"procedure": name}``;
4. a slot to run in (:class:`~txharp.daemon.runner.CallLimiter`): a full
   queue, or no free slot within the idle timeout, gives ``overloaded``
   (a txharp addition; nothing has run, so a client may retry);
5. the acknowledgement ``{"harp": 1, "stream_result": BOOL}``, the
   ``{"stream": X}`` packets, and one final line, then the connection closes.

A client silent for ``idle_timeout`` seconds before its request gets a
``timeout`` error.  A client that disconnects cancels its call (the runner
kills the child).  :meth:`HarpDaemonFactory.shutDown` ends every
conversation with a ``shutdown`` error.  One log event per connection
records user, procedure, outcome and duration; passwords are never logged.
"""
from __future__ import annotations

import enum
from typing import Any, List, Optional, Set
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from txharp.daemon.procedures import ProcedureRegistry
from txharp.daemon.runner import SHUTDOWN_MESSAGE, Call, CallLimiter, CallRunner, Overloaded
from txharp.errors import MalformedMessage
from txharp.lines import JSONLinesProtocol
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH
from txharp.wire.daemon import (
    Acknowledgement,
    DaemonFinal,
    DaemonRequest,
    DaemonRequestError,
    StreamItem,
    parse_daemon_request,
)
from txharp.wire.outcomes import ErrorReply, ExceptionReply

__all__ = [
    "PARSE_ERROR_MESSAGE",
    "AUTH_ERROR_MESSAGE",
    "EXCESSIVE_DATA_MESSAGE",
    "CredentialChecker",
    "HarpDaemonProtocol",
    "HarpDaemonFactory",
]

_log = Logger()

#: The original daemon's words for each error it sends before running anything.
PARSE_ERROR_MESSAGE = "No JSON object could be decoded"
AUTH_ERROR_MESSAGE = "unknown user or wrong password"
NO_SUCH_PROCEDURE_MESSAGE = "no such procedure"
EXCESSIVE_DATA_MESSAGE = "excessive data after request"


class CredentialChecker(TypingProtocol):
    """Checks a user's password (:class:`txharp.daemon.auth.Authenticator`)."""

    def authenticate(self, user: str, password: str) -> "Deferred[bool]": ...


class _State(enum.Enum):
    REQUEST = "waiting for the request"
    CHECKING = "checking the request"
    QUEUED = "waiting for a slot"
    RUNNING = "running"
    DONE = "done"


def _loggable(text: str) -> str:
    """A client-chosen name made safe for any text log: JSON strings may hold
    lone surrogates, which UTF-8 cannot carry, and a log file that cannot
    write an event drops it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _peer_name(address: IAddress) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class HarpDaemonProtocol(JSONLinesProtocol):
    """One client connection; see the module docstring for the conversation."""

    factory: "HarpDaemonFactory"

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        super().__init__(max_line_length)
        self._state = _State.REQUEST
        self._timer: Optional[IDelayedCall] = None
        self._pending: Optional[Deferred[Any]] = None
        self._holding_slot = False
        self._request: Optional[DaemonRequest] = None
        self._call: Optional[Call] = None
        self._received_at: Optional[float] = None
        self._peer = "?"
        self._close_waiters: List[Deferred[None]] = []

    # -- connection events

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self._peer = _peer_name(self.transport.getPeer())
        # The acknowledgement and the result are small separate writes: without
        # this, Nagle's algorithm and the client's delayed ACK hold the result
        # back ~40 ms (the original daemon's observed delay).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._schedule(self.factory.idle_timeout, self._idle_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._state is _State.REQUEST:
            super().dataReceived(data)
        elif data and self._state is not _State.DONE:  # an empty read is no data
            self._end(ErrorReply("invalid_request", EXCESSIVE_DATA_MESSAGE))

    def messageReceived(self, value: Any) -> None:
        self._state = _State.CHECKING
        self._received_at = self.factory.clock.seconds()
        if self.clearLineBuffer():
            self._end(ErrorReply("invalid_request", EXCESSIVE_DATA_MESSAGE))
            return
        try:
            self._request = parse_daemon_request(value)
        except DaemonRequestError as error:
            self._end(error.reply())
            return
        # Data that arrived with the request is delivered within this reactor
        # turn; only then is the request known to stand alone.
        self._schedule(0, self._check_credentials)

    def malformedLineReceived(self, error: MalformedMessage) -> None:
        self._received_at = self.factory.clock.seconds()
        if error.error_type == "parse_error":
            self._end(ErrorReply("parse_error", PARSE_ERROR_MESSAGE))
        else:
            self._end(ErrorReply(error.error_type, error.message))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        if self._state is not _State.DONE:
            self._stop()
            self._log_call("disconnected")
        self._cancel_timer()
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenClosed(self) -> "Deferred[None]":
        """Fire once the connection is closed."""
        waiter: Deferred[None] = Deferred()
        if self.transport is None or self not in self.factory.connections:
            waiter.callback(None)
        else:
            self._close_waiters.append(waiter)
        return waiter

    # -- the steps of a call

    def _check_credentials(self) -> None:
        assert self._request is not None
        d = self.factory.authenticator.authenticate(self._request.user, self._request.password)
        self._pending = d
        d.addCallbacks(self._authenticated, self._failed)

    def _authenticated(self, ok: bool) -> None:
        if self._state is not _State.CHECKING:
            return
        self._pending = None
        request = self._request
        assert request is not None
        if not ok:
            self._end(ErrorReply("auth_error", AUTH_ERROR_MESSAGE))
            return
        spec = self.factory.registry.get(request.procedure)
        if spec is None:
            self._end(
                ErrorReply(
                    "no_such_procedure", NO_SUCH_PROCEDURE_MESSAGE, {"procedure": request.procedure}
                )
            )
            return
        self._call = Call(spec, request.arguments, request.user)
        self._state = _State.QUEUED
        d = self.factory.limiter.acquire()
        self._pending = d
        if not d.called:
            self._schedule(self.factory.idle_timeout, self._queue_timed_out)
        d.addCallbacks(self._admitted, self._refused)

    def _refused(self, reason: Failure) -> None:
        if reason.check(CancelledError):
            return
        reason.trap(Overloaded)
        self._pending = None
        self._end(ErrorReply("overloaded", f"too many calls: {reason.getErrorMessage()}"))

    def _admitted(self, _: None) -> None:
        self._holding_slot = True
        self._pending = None
        self._cancel_timer()
        call = self._call
        assert call is not None
        self._state = _State.RUNNING
        self.sendMessage(Acknowledgement(call.spec.streaming))
        d = self.factory.runner.run(call, self._stream, self.transport)
        self._pending = d
        d.addCallbacks(self._end, self._failed)

    def _stream(self, packet: Any) -> None:
        if self._state is _State.RUNNING:
            self.sendMessage(StreamItem(packet))

    def _failed(self, reason: Failure) -> None:
        """A step failed: a bug (logged, ``system_error``), or our own cancellation."""
        if reason.check(CancelledError):
            return
        _log.failure("internal error in a call from {peer}", reason, peer=self._peer)
        self._end(ErrorReply("system_error", "internal error in the daemon"))

    # -- timers

    def _idle_timed_out(self) -> None:
        self._timer = None
        self._end(
            ErrorReply("timeout", f"no request within {self.factory.idle_timeout:g} seconds")
        )

    def _queue_timed_out(self) -> None:
        self._timer = None
        self._end(
            ErrorReply(
                "overloaded",
                f"too many calls: no free slot within {self.factory.idle_timeout:g} seconds",
            )
        )

    def _schedule(self, delay: float, action: Any) -> None:
        self._cancel_timer()
        self._timer = self.factory.clock.callLater(delay, action)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- ending

    def shutDown(self) -> None:
        """End the conversation now with a ``shutdown`` error (stopping its call)."""
        self._end(ErrorReply("shutdown", SHUTDOWN_MESSAGE))

    def _stop(self) -> None:
        """Leave whatever step the call is in: cancel it, free its slot."""
        self._state = _State.DONE
        self._cancel_timer()
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        if self._holding_slot:
            self._holding_slot = False
            self.factory.limiter.release()

    def _end(self, final: DaemonFinal) -> None:
        """Send the final line and close; only the first call does anything."""
        if self._state is _State.DONE:
            return
        self._stop()
        self.sendMessage(final.to_daemon_json() if isinstance(final, ErrorReply) else final)
        self.transport.loseConnection()
        # A client that does not read its last replies is not waited for long.
        self._schedule(self.factory.idle_timeout, self.transport.abortConnection)
        if isinstance(final, ErrorReply):
            self._log_call(final.type, final.message)
        elif isinstance(final, ExceptionReply):
            self._log_call("exception", final.type)
        else:
            self._log_call("result")

    def _log_call(self, outcome: str, detail: str = "") -> None:
        """The one log event of this connection (never with the password)."""
        request = self._request
        started = self._received_at
        _log.info(
            "call {procedure} by {user} from {peer}: {outcome}{detail_text} in {duration:.3f} s",
            procedure=_loggable(request.procedure) if request else None,
            user=_loggable(request.user) if request else None,
            peer=self._peer,
            outcome=outcome,
            detail=_loggable(detail),
            detail_text=f" ({_loggable(detail)})" if detail else "",
            duration=self.factory.clock.seconds() - started if started is not None else 0.0,
        )


class HarpDaemonFactory(Factory):
    """Makes :class:`HarpDaemonProtocol` connections sharing one daemon's parts.

    :param registry: the procedures that exist
    :param authenticator: checks credentials
    :param runner: runs calls
    :param limiter: bounds running and waiting calls
    :param clock: for timeouts
    :param idle_timeout: seconds a client may take to send its request, and
        a call may wait for a slot
    :param max_line_length: longest request line accepted
    """

    protocol = HarpDaemonProtocol
    noisy = False

    def __init__(
        self,
        registry: ProcedureRegistry,
        authenticator: CredentialChecker,
        runner: CallRunner,
        limiter: CallLimiter,
        *,
        clock: IReactorTime,
        idle_timeout: float = 30.0,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        self.registry = registry
        self.authenticator = authenticator
        self.runner = runner
        self.limiter = limiter
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_line_length = max_line_length
        self.connections: Set[HarpDaemonProtocol] = set()

    def buildProtocol(self, addr: Optional[IAddress]) -> HarpDaemonProtocol:
        protocol = HarpDaemonProtocol(self.max_line_length)
        protocol.factory = self
        return protocol

    def shutDown(self) -> "Deferred[None]":
        """Send every open conversation a ``shutdown`` error and close it;
        fire when all connections are closed (at most ``idle_timeout`` later)."""
        protocols = list(self.connections)
        for protocol in protocols:
            protocol.shutDown()
        closed = gatherResults([protocol.whenClosed() for protocol in protocols])
        return closed.addCallback(lambda _: None)
