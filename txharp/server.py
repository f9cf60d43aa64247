"""Deferred client for harpd, the HarpCaller RPC daemon ("harp" protocol, TLS, port 4306).

The shape of the original synchronous ``harp.HarpServer``, with Deferreds::

    rpc = HarpServer("db1.example.net", "alice", "s3cret", ca_file="ca.pem")
    value = yield rpc.echo(1, 2)            # a plain procedure: its value
    stream = yield rpc.tail_log(n=10)       # a streaming one: a MessageStream
    async for item in stream: ...           # packets, then Result(end value)

One call is one TLS connection: the request goes out, the daemon
acknowledges, streams packets if the procedure streams, and sends one final
line.  Closing the connection is how the protocol cancels a call, so
cancelling the Deferred or the stream does exactly that.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from txharp.errors import HarpException
from txharp.lines import Exchange, explain_connection_failure
from txharp.streams import MessageStream
from txharp.tls import ClientTLSPolicy, tls_failure
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH
from txharp.wire.daemon import (
    DEFAULT_PORT,
    Acknowledgement,
    DaemonFinal,
    DaemonReply,
    DaemonReplyReader,
    DaemonRequest,
    StreamItem,
)
from txharp.wire.dispatcher import Arguments
from txharp.wire.outcomes import ResultReply

__all__ = ["DEFAULT_PORT", "HarpServer", "HarpProcedure", "Result"]


class Result:
    """The end value of a streaming procedure: always the last item of its stream."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash((Result, self.value))

    def __repr__(self) -> str:
        return f"Result({self.value!r})"


class _Call:
    """One call's :class:`~txharp.lines.ReplyListener` and stream control.

    Fires ``deferred`` with the value, or with the stream as soon as the
    daemon acknowledges a streaming procedure; after that, the end of the
    call (``Result`` or failure) goes into the stream.
    """

    def __init__(self) -> None:
        self.deferred: Deferred[Any] = Deferred(lambda _: self.cancel())
        self._exchange: Optional[Exchange[DaemonReply]] = None
        self._stream: Optional[MessageStream[Any]] = None
        self._final: Optional[DaemonFinal] = None

    def start(self, exchange: Exchange[DaemonReply]) -> None:
        self._exchange = exchange

    # -- ReplyListener

    def replyReceived(self, reply: DaemonReply) -> None:
        if isinstance(reply, Acknowledgement):
            if reply.stream_result:
                self._stream = MessageStream()
                self._stream.attach(self)
                self.deferred.callback(self._stream)
        elif isinstance(reply, StreamItem):
            assert self._stream is not None  # the reader refuses packets otherwise
            self._stream.push(reply.data)
        else:
            self._final = reply

    def conversationEnded(self, reason: Optional[Failure]) -> None:
        value = None
        if reason is None:
            assert self._final is not None  # a clean end means the final line came
            if isinstance(self._final, ResultReply):
                value = self._final.value
            else:
                reason = Failure(self._final.exception())
        if self._stream is None:
            if reason is None:
                self.deferred.callback(value)
            else:
                self.deferred.errback(reason)
        elif reason is None:
            self._stream.push(Result(value))
            self._stream.finish()
        else:
            self._stream.finish(reason)

    # -- StreamControl

    def pauseReading(self) -> None:
        assert self._exchange is not None
        self._exchange.protocol.pauseReading()

    def resumeReading(self) -> None:
        assert self._exchange is not None
        self._exchange.protocol.resumeReading()

    def cancel(self) -> None:
        """Close the connection, which cancels the call on the daemon."""
        if self._exchange is not None:
            self._exchange.cancel()


class HarpServer:
    """A harpd daemon reached directly: attribute access gives a :class:`HarpProcedure`.

    TLS trust (see :class:`txharp.tls.ClientTLSPolicy`): with ``ca_file``
    the certificate chain is verified and must name ``host`` (unless
    ``check_hostname=False``); ``pins`` accepts leaf certificates by SHA-256
    fingerprint; with neither, nothing is verified (the original's meaning
    of ``ca_file=None``; a warning is logged once).  ``tls_minimum="1.0"``
    is the explicit opt-in needed to reach the shipped harpd, which speaks
    TLS 1.0 only.

    ``connect_timeout`` bounds the TCP connection and then, separately, the
    TLS handshake (None: only the endpoint's own connect limit applies);
    ``timeout`` bounds the silence between two lines of the daemon (None
    waits as long as the procedure runs).  Both run on ``reactor``'s clock;
    ``reactor`` (the global one when None) must also provide TCP and name
    resolution.

    ``endpoint``, when given, is the complete transport to the daemon and is
    used as it is: txharp adds no TLS to it, so the TLS arguments cannot be
    combined with it.  Build a TLS one with
    ``wrapClientTLS(ClientTLSPolicy(...).creator_for(host), your_endpoint)``.
    ``host`` and ``port`` then only name the daemon in messages.

    A procedure whose name is not a plain attribute (it starts with ``_``
    or is not an identifier) is reached with ``server["name"]``.
    """

    def __init__(
        self,
        host: str,
        user: str,
        password: str,
        port: int = DEFAULT_PORT,
        ca_file: Optional[str] = None,
        *,
        reactor: Optional[Any] = None,
        pins: Iterable[str] = (),
        check_hostname: bool = True,
        tls_minimum: str = "1.2",
        connect_timeout: Optional[float] = 30.0,
        timeout: Optional[float] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        endpoint: Optional[IStreamClientEndpoint] = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError("host must be a non-empty string")
        if not isinstance(user, str) or not isinstance(password, str):
            raise TypeError("user and password must be strings")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an integer from 1 to 65535, not {port!r}")
        for name, limit in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{name} must be positive or None, not {limit!r}")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._host = host
        self._port = port
        self._user = user
        self._password = password
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._max_line_length = max_line_length
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._peer = f"harpd at {self._address}"
        if endpoint is None:
            policy = ClientTLSPolicy(
                ca_file, pins=pins, check_hostname=check_hostname, minimum_version=tls_minimum
            )
            self._endpoint: IStreamClientEndpoint = wrapClientTLS(
                policy.creator_for(host), HostnameEndpoint(reactor, host, port)
            )
            self._handshake_timeout = connect_timeout
        else:
            if ca_file is not None or tuple(pins) or not check_hostname or tls_minimum != "1.2":
                raise ValueError(
                    "endpoint= is used as it is: configure TLS on that endpoint instead "
                    "of passing ca_file, pins, check_hostname or tls_minimum"
                )
            self._endpoint = endpoint
            self._handshake_timeout = None

    def __getattr__(self, name: str) -> HarpProcedure:
        if name.startswith("_"):
            raise AttributeError(name)
        return HarpProcedure(self, name)

    def __getitem__(self, name: str) -> HarpProcedure:
        return HarpProcedure(self, name)

    def __repr__(self) -> str:
        return f"<HarpServer {self._user}@{self._address}>"

    def _explain(self, reason: Failure, peer: str) -> Failure:
        """Connection failures as txharp errors, TLS ones as TLSError."""
        error = tls_failure(reason, self._host)
        if error is not None:
            return Failure(error)
        return explain_connection_failure(reason, peer)

    def _call(self, procedure: str, arguments: Arguments) -> Deferred[Any]:
        """Run one call on a new connection (see :meth:`HarpProcedure.__call__`)."""
        call = _Call()
        call.start(
            Exchange(
                self._endpoint,
                DaemonRequest(procedure, arguments, self._user, self._password),
                DaemonReplyReader(),
                call,
                clock=self._reactor,
                peer=self._peer,
                connect_timeout=self._connect_timeout,
                idle_timeout=self._timeout,
                handshake_timeout=self._handshake_timeout,
                max_line_length=self._max_line_length,
                explain=self._explain,
            )
        )
        return call.deferred


class HarpProcedure:
    """A procedure of one harpd; call it with positional *or* named arguments."""

    def __init__(self, server: HarpServer, name: str) -> None:
        self._server = server
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Call the procedure on a new connection.

        The Deferred fires with the procedure's value; for a streaming
        procedure, as soon as the daemon acknowledges, with a
        :class:`~txharp.streams.MessageStream` of its packets whose last
        item is a :class:`Result`.  Failures: ``RemoteException`` (the
        procedure raised), ``RemoteError`` (the daemon refused or broke the
        call), ``CommunicationError`` and its subclasses ``TLSError`` and
        ``HarpTimeout``; cancelling closes the connection (CancelledError).

        Raises at once, before connecting: :class:`HarpException` when
        positional and named arguments are mixed, and
        :class:`~txharp.errors.EncodingError` for arguments JSON cannot carry.
        """
        if args and kwargs:
            raise HarpException("positional and named arguments cannot be mixed in one call")
        return self._server._call(self.name, dict(kwargs) if kwargs else list(args))

    def __repr__(self) -> str:
        return f"<HarpProcedure {self.name!r} of {self._server!r}>"
