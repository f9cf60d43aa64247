"""Twisted glue for JSON-lines protocols: framing, and one-request client conversations.

:class:`JSONLinesProtocol` turns bytes into decoded JSON values and back.
:class:`ClientConversation` is the client side of the "one request per
connection" pattern both HarpCaller protocols use: it sends the request,
checks each reply line with a reader from :mod:`txharp.wire`, enforces an
idle timeout, and reports to a :class:`ReplyListener` exactly once that the
conversation ended — cleanly after the final line, or with a
:class:`~txharp.errors.CommunicationError` on every other path (EOF,
garbage, timeout, cancellation), so no caller's Deferred can hang.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Optional, TypeVar
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from txharp.errors import (
    CommunicationError,
    HarpException,
    HarpTimeout,
    LineTooLong,
    MalformedMessage,
)
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH, decode_line, encode_line

__all__ = [
    "explain_connection_failure",
    "JSONLinesProtocol",
    "ReplyReader",
    "SingleReply",
    "ReplyListener",
    "ClientConversation",
    "Exchange",
]

T = TypeVar("T")
_log = Logger()


def set_no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on the TCP connection under ``transport``.

    One-request conversations write small messages that must go at once:
    with Nagle on, a small write that follows another before the peer has
    acknowledged it waits for that acknowledgement, which the peer's
    delayed-ACK timer can hold for 40 ms.  Looks through wrappers (TLS)
    for the TCP transport; does nothing where there is none.
    """
    for _ in range(4):
        if transport is None:
            return
        set_it = getattr(transport, "setTcpNoDelay", None)
        if set_it is not None:
            set_it(True)
            return
        transport = getattr(transport, "transport", None)


def _wire_value(message: Any) -> Any:
    to_json = getattr(message, "to_json", None)
    return to_json() if to_json is not None else message


class JSONLinesProtocol(LineReceiver):
    """One JSON value per ``\\n``-terminated line, at most ``max_line_length`` bytes.

    Subclasses implement :meth:`messageReceived`; a line that is not JSON or
    is too long goes to :meth:`malformedLineReceived` instead, after which
    every further line is ignored (the peer is no longer trusted to frame).
    """

    delimiter = b"\n"
    #: Where the unread data starts in ``_buffer`` (see :meth:`dataReceived`).
    _start = 0

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self.MAX_LENGTH = max_line_length
        self._refusing = False

    def dataReceived(self, data: bytes) -> None:
        """Split ``data`` into lines, as :class:`LineReceiver` does, without copies.

        ``LineReceiver`` splits one line at a time and copies the rest of
        its buffer each time, which costs the square of the number of lines
        a chunk holds (a stream packet line is tens of bytes, a TLS record
        up to 16 KiB).  Here the unread data is ``_buffer[_start:]`` and
        lines are sliced out of it; the behaviour is ``LineReceiver``'s:
        nothing is read while paused, a line (or a line's start) longer than
        ``MAX_LENGTH`` goes to :meth:`lineLengthExceeded` with everything
        after it, reading stops once the transport is disconnecting, and
        :meth:`clearLineBuffer` returns what has not been read yet.
        """
        if self._busyReceiving:
            self._buffer += data
            return
        self._busyReceiving = True
        try:
            if self._start:
                self._buffer = self._buffer[self._start:]
                self._start = 0
            self._buffer += data
            delimiter = self.delimiter
            while not self.paused:
                buffer, start = self._buffer, self._start
                if start >= len(buffer):
                    break
                end = buffer.find(delimiter, start)
                if end < 0:
                    if len(buffer) - start >= self.MAX_LENGTH + len(delimiter):
                        self._buffer, self._start = b"", 0
                        return self.lineLengthExceeded(buffer[start:])
                    break
                if end - start > self.MAX_LENGTH:
                    self._buffer, self._start = b"", 0
                    return self.lineLengthExceeded(buffer[start:])
                self._start = end + len(delimiter)
                why = self.lineReceived(buffer[start:end])
                if why or self.transport and self.transport.disconnecting:
                    return why
        finally:
            self._busyReceiving = False
            if self._start:
                self._buffer = self._buffer[self._start:]
                self._start = 0

    def clearLineBuffer(self) -> bytes:
        """Forget the data not read yet, and return it."""
        unread = self._buffer[self._start:]
        self._buffer, self._start = b"", 0
        return unread

    def lineReceived(self, line: bytes) -> None:
        if self._refusing:
            return
        try:
            value = decode_line(line)
        except MalformedMessage as error:
            self._refuse(error)
        else:
            self.messageReceived(value)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(LineTooLong(self.MAX_LENGTH))

    def _refuse(self, error: MalformedMessage) -> None:
        self._refusing = True
        self.clearLineBuffer()
        self.malformedLineReceived(error)

    def messageReceived(self, value: Any) -> None:
        """Handle one decoded JSON value."""
        raise NotImplementedError

    def malformedLineReceived(self, error: MalformedMessage) -> None:
        """Handle a line that cannot be decoded; the default drops the connection."""
        self.transport.abortConnection()

    def sendMessage(self, message: Any) -> None:
        """Write a wire message (anything with ``to_json()``) or a plain JSON value.

        Raises :class:`~txharp.errors.EncodingError` before writing anything
        if the value cannot be encoded.
        """
        self.transport.write(encode_line(_wire_value(message)))


class ReplyReader(TypingProtocol[T]):
    """Turns decoded reply lines into typed messages and knows when the reply is complete.

    The readers of :mod:`txharp.wire` (``StreamReader``, ``DaemonReplyReader``)
    and :class:`SingleReply` fit this shape.
    """

    @property
    def finished(self) -> bool: ...

    def feed(self, value: Any) -> T: ...


class SingleReply(Generic[T]):
    """A reader for requests answered by exactly one line, parsed by ``parse``."""

    def __init__(self, parse: Callable[[Any], T]) -> None:
        self._parse = parse
        self.finished = False

    def feed(self, value: Any) -> T:
        if self.finished:
            raise MalformedMessage("more than one reply line")
        reply = self._parse(value)
        self.finished = True
        return reply


class ReplyListener(TypingProtocol[T]):
    """Receives what a conversation produces."""

    def replyReceived(self, reply: T) -> None:
        """One typed reply line, in order."""

    def conversationEnded(self, reason: Optional[Failure]) -> None:
        """Called exactly once: ``None`` after the final line, else why it failed."""

    # Optional: ``linesProcessed()``, called after each chunk of data read
    # from the connection that held at least one line, once every line of
    # it was reported (a listener may batch what one chunk brings).


def explain_connection_failure(reason: Failure, peer: str) -> Failure:
    """Turn a connection-level failure into a CommunicationError failure.

    Failures that already are :class:`~txharp.errors.HarpException` or
    :class:`CancelledError` pass through unchanged.
    """
    if reason.check(HarpException, CancelledError):
        return reason
    if reason.check(ConnectionRefusedError):
        return Failure(CommunicationError(f"connection to {peer} refused"))
    if reason.check(TimeoutError):
        return Failure(HarpTimeout(f"connecting to {peer} timed out"))
    if reason.check(ConnectionDone):
        return Failure(CommunicationError(f"{peer} closed the connection before the final reply"))
    return Failure(CommunicationError(f"connection to {peer} failed: {reason.getErrorMessage()}"))


@implementer(IHandshakeListener)
class ClientConversation(JSONLinesProtocol, Generic[T]):
    """Send one request, read typed replies until the reader is finished.

    ``idle_timeout`` bounds the silence between two lines (None waits for
    ever, as a caller following a long job wants); it is suspended while
    the listener has paused reading for flow control.  Over TLS, pass
    ``handshake_timeout``: it bounds the time from the TCP connection to
    ``handshakeCompleted`` (a silent peer otherwise holds the call for
    ever when ``idle_timeout`` is None); the idle clock starts after it.

    ``request=None`` connects without sending: :meth:`send` sends the
    request later (harp-proxy dials a daemon while the job is being
    recorded, and sends the call only once it is).
    """

    def __init__(
        self,
        request: Any,
        reader: ReplyReader[T],
        listener: ReplyListener[T],
        *,
        clock: IReactorTime,
        peer: str,
        idle_timeout: Optional[float] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        explain: Callable[[Failure, str], Failure] = explain_connection_failure,
        handshake_timeout: Optional[float] = None,
    ) -> None:
        super().__init__(max_line_length)
        self._request: Optional[bytes] = None if request is None else encode_line(_wire_value(request))
        self._reader = reader
        self._listener = listener
        self._clock = clock
        self._peer = peer
        self._idle_timeout = idle_timeout
        self._explain = explain
        self._handshake_timeout = handshake_timeout
        self._handshaking = False
        self._timer: Optional[IDelayedCall] = None
        self._line_seen = False  # a line arrived in the chunk being read
        self._ended = False
        self._lost: Optional[Failure] = None  # connection gone while reading was paused

    # -- connection events

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        if self._request is not None:
            self.transport.write(self._request)
        self._handshaking = self._handshake_timeout is not None
        self._arm_timer()

    def handshakeCompleted(self) -> None:
        """TLS is up: from now on the idle timeout applies."""
        if self._handshaking:
            self._handshaking = False
            self._arm_timer()

    def dataReceived(self, data: bytes) -> None:
        """Read lines; the idle clock restarts once per chunk that held any."""
        super().dataReceived(data)
        if not self._line_seen:
            return
        self._line_seen = False
        # Paused by the listener: the idle clock stays stopped until resumed.
        if not self._ended and not self.paused:
            self._touch_timer()
        processed = getattr(self._listener, "linesProcessed", None)
        if processed is not None:
            processed()

    def messageReceived(self, value: Any) -> None:
        if self._ended:
            return
        self._line_seen = True
        try:
            reply = self._reader.feed(value)
        except MalformedMessage as error:
            self._abort(Failure(CommunicationError(f"invalid reply from {self._peer}: {error}")))
            return
        self._listener.replyReceived(reply)
        if self._reader.finished and not self._ended:
            self._end(None)
            self.transport.loseConnection()

    def malformedLineReceived(self, error: MalformedMessage) -> None:
        self._abort(Failure(CommunicationError(f"invalid reply from {self._peer}: {error}")))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._cancel_timer()
        if self._ended:
            return
        if self.paused:
            # Lines already received may wait in the buffer for a slow
            # consumer (over TLS the peer's close arrives with them): the
            # end is reported once resumeReading has delivered them.
            self._lost = reason
        else:
            self._end(self._explain(reason, self._peer))

    # -- control from the API side

    def send(self, request: Any) -> None:
        """Send the request of a conversation made without one (once)."""
        if self._request is not None:
            raise RuntimeError("this conversation's request was already given")
        self._request = encode_line(_wire_value(request))
        if self.transport is not None and not self._ended:
            self.transport.write(self._request)

    def cancel(self) -> None:
        """Stop the conversation: the listener sees CancelledError."""
        self._abort(Failure(CancelledError()))

    def pauseReading(self) -> None:
        """Flow control: stop reading (and stop the idle clock) until resumed."""
        self._cancel_timer()
        self.pauseProducing()

    def resumeReading(self) -> None:
        if self._ended:
            return
        if self._lost is None:
            self._arm_timer()
        self.resumeProducing()
        if self._lost is not None and not self.paused and not self._ended:
            self._end(self._explain(self._lost, self._peer))

    # -- internals

    def _abort(self, reason: Failure) -> None:
        if not self._ended:
            self._end(reason)
        if self.transport is not None and self._lost is None:
            self.transport.abortConnection()

    def _end(self, reason: Optional[Failure]) -> None:
        self._ended = True
        self._cancel_timer()
        self._listener.conversationEnded(reason)

    def _arm_timer(self) -> None:
        self._cancel_timer()
        delay = self._handshake_timeout if self._handshaking else self._idle_timeout
        if delay is not None and not self._ended:
            self._timer = self._clock.callLater(delay, self._timed_out)

    def _touch_timer(self) -> None:
        """A line arrived: the idle clock starts again.

        Pushing a running idle timer later with ``reset`` is cheap (the
        reactor re-files it only when it comes due), unlike a cancel and a
        new ``callLater`` per line of a long stream.
        """
        timer = self._timer
        if timer is not None and not self._handshaking and timer.active():
            timer.reset(self._idle_timeout)  # type: ignore[arg-type]
        else:
            self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._handshaking:
            message = f"TLS handshake with {self._peer} not done within {self._handshake_timeout:g} s"
        else:
            message = f"no reply from {self._peer} within {self._idle_timeout:g} s"
        self._abort(Failure(HarpTimeout(message)))


class Exchange(Generic[T]):
    """Connect, run one :class:`ClientConversation`, and make it cancellable throughout.

    Whatever happens — refused connection, connect timeout, cancellation
    before or after connecting — the listener's ``conversationEnded`` is
    called exactly once.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        request: Any,
        reader: ReplyReader[T],
        listener: ReplyListener[T],
        *,
        clock: IReactorTime,
        peer: str,
        connect_timeout: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        explain: Callable[[Failure, str], Failure] = explain_connection_failure,
        handshake_timeout: Optional[float] = None,
    ) -> None:
        self._listener = listener
        self._peer = peer
        self._explain = explain
        self._protocol: ClientConversation[T] = ClientConversation(
            request,
            reader,
            listener,
            clock=clock,
            peer=peer,
            idle_timeout=idle_timeout,
            max_line_length=max_line_length,
            explain=explain,
            handshake_timeout=handshake_timeout,
        )
        self._connected = False
        self._cancelled_by_us = False
        factory = Factory.forProtocol(lambda: self._protocol)
        factory.noisy = False  # one connection per request: start/stop lines would flood the log
        self._connecting: Deferred[Any] = endpoint.connect(factory)
        if connect_timeout is not None:
            self._connecting.addTimeout(connect_timeout, clock, onTimeoutCancel=self._connect_timed_out)
        self._connecting.addCallbacks(self._on_connected, self._on_connect_failed)

    @property
    def protocol(self) -> ClientConversation[T]:
        return self._protocol

    def _connect_timed_out(self, result: Any, timeout: float) -> Any:
        # Endpoints report a cancelled attempt as ConnectingCancelledError.
        if isinstance(result, Failure) and result.check(CancelledError, ConnectingCancelledError):
            return Failure(HarpTimeout(f"connecting to {self._peer} timed out after {timeout:g} s"))
        return result

    def _on_connected(self, _: Any) -> None:
        self._connected = True

    def _on_connect_failed(self, reason: Failure) -> None:
        if self._cancelled_by_us:
            # Whatever the endpoint reports (ConnectingCancelledError for TCP),
            # the caller asked for this: report a plain CancelledError.
            self._listener.conversationEnded(Failure(CancelledError()))
        else:
            self._listener.conversationEnded(self._explain(reason, self._peer))

    def cancel(self) -> None:
        """Abort the connection attempt or the conversation."""
        if self._connected:
            self._protocol.cancel()
        else:
            self._cancelled_by_us = True
            self._connecting.cancel()
