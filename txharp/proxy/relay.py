"""One job's conversation with its harpd: connect over TLS, send the call, report back.

:class:`HarpdRelay` looks the job's host up in the registry, opens an
:class:`~txharp.lines.Exchange` to the daemon (TLS per the proxy's
:class:`~txharp.tls.ClientTLSPolicy`), sends the compact
:class:`~txharp.wire.DaemonRequest`, and turns what comes back into job
events: each ``{"stream": X}`` becomes :meth:`Job.stream`, the final line
or any failure becomes :meth:`Job.finish`.  The job's ``timeout`` bounds the
connection attempt, the wait for the acknowledgement and every gap between
later lines; ``max_exec_time`` is the job's own timer.

A job that starts as it is submitted is dialled at once, while its record
is being committed, but its call is sent only on ``release()``, once the
record is durable: a daemon never runs a call the proxy might not know of.
A connection that fails before the call was sent (the daemon closed it, or
refused it) is dialled again on release, so the error the job ends with is
always that of a connection that carried its call.

Errors a job ends with because of the relay
-------------------------------------------
Every failure is an ``{"error": {"type", "message", "data"}}`` outcome with
a fixed message (the original dispatcher's where it had one) and the
details in ``data``:

=================  =================================  =============================================
type               message                            when (``data``)
=================  =================================  =============================================
unknown_host       host unknown                       the host is not in the registry
                                                      (``host``)
bad_address        invalid host address or port       the registry entry cannot be dialled
                   number                             (``host``, ``reason``)
econnrefused       connection refused                 nothing listens on the daemon's port
                                                      (``address``)
network_error      connection failed                  DNS failure, unreachable network, reset
                                                      during connect (``address``, ``reason``)
network_error      connection closed                  the daemon closed before its final line
                                                      (``address``, ``reason``)
tls_error          TLS handshake failed               certificate rejected (not CA-valid nor
                                                      pinned, wrong name, expired) or no common
                                                      TLS version (``address``, ``reason``)
bad_protocol       Harp protocol error                the daemon sent a line that is not JSON,
                                                      not a valid message, or out of order
                                                      (``address``, ``reason``)
timeout            request timed out                  no connection or no acknowledgement within
                                                      the job's ``timeout`` (``timeout``)
timeout            reading result timed out           after the acknowledgement, a gap between
                                                      lines exceeded ``timeout`` (``timeout``)
*daemon's type*    *daemon's message*                 harpd answered ``{"harp": 1, "error": ...}``
                                                      (``auth_error``, ``no_such_procedure``,
                                                      ``invalid_request``, ``timeout``,
                                                      ``shutdown``...): relayed unchanged with
                                                      its own ``data``
=================  =================================  =============================================

A procedure's exception is relayed unchanged as an ``exception`` outcome.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import (
    ConnectionClosed,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from txharp.errors import CommunicationError, HarpTimeout
from txharp.lines import Exchange
from txharp.proxy.hosts import HostEntry
from txharp.proxy.jobs import Job, RunningCall
from txharp.tls import ClientTLSPolicy, tls_failure
from txharp.wire.daemon import Acknowledgement, DaemonReply, DaemonReplyReader, DaemonRequest, StreamItem
from txharp.wire.outcomes import ErrorReply

__all__ = ["HostLookup", "HarpdRelay", "unknown_host"]

log = Logger(namespace="txharp.proxy.relay")


class HostLookup(TypingProtocol):
    """The hosts registry as the relay uses it (:class:`~txharp.proxy.hosts.HostRegistry`)."""

    def lookup(self, hostname: str) -> Optional[HostEntry]: ...


def unknown_host(name: str) -> ErrorReply:
    """The outcome of a call to a host the registry does not know."""
    return ErrorReply("unknown_host", "host unknown", {"host": name})


class _Failed(CommunicationError):
    """A relay failure already translated into the job's error outcome."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.message)
        self.reply = reply


class _NothingRunning:
    """The call never got a connection: nothing to send, stop or pause."""

    def release(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def pauseReading(self) -> None:
        pass

    def resumeReading(self) -> None:
        pass


class _Call:
    """One job's exchange with its daemon: the listener and the handle to stop it.

    Dialled before its call is sent (see the module documentation): until
    :meth:`release`, a failed connection is only remembered, and release
    dials again.
    """

    def __init__(self, job: Job, entry: HostEntry, address: str,
                 open_exchange: Callable[["_Call", Optional[DaemonRequest]], Exchange[DaemonReply]]) -> None:
        self._job = job
        self._request = DaemonRequest(job.call.procedure, job.call.arguments, entry.user, entry.password)
        self._address = address
        self._hostname = entry.address
        self._open_exchange = open_exchange
        self._released = False
        self._dropped = False  # the connection dialled early ended before release
        self._acknowledged = False
        self._over = False
        self._packets: List[Any] = []  # stream packets of the chunk being read
        self.exchange = open_exchange(self, None)

    # ---------------------------------------------------- RunningCall

    def release(self) -> None:
        """Send the call: over the connection dialled early, or a new one if that one failed."""
        if self._released or self._over:
            return
        self._released = True
        if self._dropped:
            self.exchange = self._open_exchange(self, self._request)
        else:
            self.exchange.protocol.send(self._request)

    def stop(self) -> None:
        if not self._over:
            self._over = True
            self.exchange.cancel()

    def pauseReading(self) -> None:
        if not self._over:
            self.exchange.protocol.pauseReading()

    def resumeReading(self) -> None:
        if not self._over:
            self.exchange.protocol.resumeReading()

    # -------------------------------------------------- ReplyListener

    def replyReceived(self, reply: DaemonReply) -> None:
        if not self._released:
            # A line before the call was sent (an idle daemon's timeout
            # notice): this connection is no use; release dials again.
            self.exchange.cancel()
            return
        if isinstance(reply, StreamItem):
            # Recorded with the rest of the chunk (linesProcessed), in one write.
            self._packets.append(reply.data)
            return
        self._record_packets()
        if isinstance(reply, Acknowledgement):
            self._acknowledged = True
        else:
            self._over = True
            self._job.finish(reply)

    def linesProcessed(self) -> None:
        """Every line of a chunk read from the daemon has been reported."""
        self._record_packets()

    def _record_packets(self) -> None:
        if self._packets:
            packets, self._packets = self._packets, []
            self._job.stream_many(packets)

    def conversationEnded(self, reason: Optional[Failure]) -> None:
        if not self._released:
            self._dropped = True  # release dials again
            return
        self._over = True
        self._record_packets()  # what arrived before the end or the failure counts
        if reason is None or reason.check(CancelledError):
            return  # the final line was reported, or the job stopped us
        self._job.finish(self._error(reason))

    # -------------------------------------------------------- errors

    def explain(self, reason: Failure, peer: str) -> Failure:
        """Turn a connection-level failure into :class:`_Failed` (Exchange's hook)."""
        if reason.check(CancelledError, HarpTimeout, _Failed):
            return reason
        return Failure(_Failed(self._connection_error(reason)))

    def _connection_error(self, reason: Failure) -> ErrorReply:
        where = {"address": self._address}
        tls = tls_failure(reason, self._hostname)
        if tls is not None:
            return ErrorReply("tls_error", "TLS handshake failed", {**where, "reason": str(tls)})
        if reason.check(ConnectionRefusedError):
            return ErrorReply("econnrefused", "connection refused", where)
        details = {**where, "reason": reason.getErrorMessage()}
        if reason.check(ConnectionClosed):
            return ErrorReply("network_error", "connection closed", details)
        if reason.check(DNSLookupError):
            details["reason"] = f"address lookup failed: {reason.getErrorMessage()}"
        return ErrorReply("network_error", "connection failed", details)

    def _error(self, reason: Failure) -> ErrorReply:
        error = reason.value
        if isinstance(error, _Failed):
            return error.reply
        if isinstance(error, HarpTimeout):
            message = "reading result timed out" if self._acknowledged else "request timed out"
            return ErrorReply("timeout", message, {"timeout": self._job.timeout})
        if isinstance(error, CommunicationError):
            # ClientConversation reports a bad line from the daemon this way.
            return ErrorReply("bad_protocol", "Harp protocol error",
                              {"address": self._address, "reason": str(error)})
        log.failure("job {job_id}: unexpected relay failure", reason, job_id=self._job.job_id)
        return ErrorReply("network_error", "connection failed",
                          {"address": self._address, "reason": reason.getErrorMessage()})


Dialer = Callable[[HostEntry], IStreamClientEndpoint]


class HarpdRelay:
    """Relays jobs to harpd daemons over TLS.

    :param hosts: the hosts registry (name → address, port, credentials)
    :param tls: how daemons' certificates are verified
    :param reactor: provides TCP connections and time
    :param dial: builds the endpoint for a host (tests replace it); the
        default is TLS over :class:`HostnameEndpoint` to ``address:port``,
        verifying the certificate against ``address``, the name (or IP
        address) actually dialled, since the registry's ``hostname`` is only
        the name clients use
    """

    def __init__(
        self,
        hosts: HostLookup,
        tls: ClientTLSPolicy,
        reactor: Any,
        *,
        dial: Optional[Dialer] = None,
    ) -> None:
        self._hosts = hosts
        self._tls = tls
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._dial = dial or self._tls_endpoint

    def _tls_endpoint(self, entry: HostEntry) -> IStreamClientEndpoint:
        if not 0 < entry.port < 65536:
            raise ValueError(f"port {entry.port} out of range")
        # An address that is already an IP address needs no name lookup:
        # HostnameEndpoint would still make one per call, in a thread.
        tcp: IStreamClientEndpoint
        if isIPAddress(entry.address):
            tcp = TCP4ClientEndpoint(self._reactor, entry.address, entry.port)
        elif isIPv6Address(entry.address):
            tcp = TCP6ClientEndpoint(self._reactor, entry.address, entry.port)
        else:
            tcp = HostnameEndpoint(self._reactor, entry.address, entry.port)
        return wrapClientTLS(self._tls.creator_for(entry.address), tcp)

    def run(self, job: Job) -> RunningCall:
        """Dial ``job``'s daemon now; its call goes on ``release()``, its end to :meth:`Job.finish`."""
        name = job.call.host
        entry = self._hosts.lookup(name)
        if entry is None:
            job.finish(unknown_host(name))
            return _NothingRunning()
        address = f"{entry.address}:{entry.port}"
        try:
            endpoint = self._dial(entry)
        except ValueError as e:
            job.finish(ErrorReply("bad_address", "invalid host address or port number",
                                  {"host": name, "reason": str(e)}))
            return _NothingRunning()

        def open_exchange(call: _Call, request: Optional[DaemonRequest]) -> Exchange[DaemonReply]:
            return Exchange(
                endpoint,
                request,
                DaemonReplyReader(),
                call,
                clock=self._clock,
                peer=f"{name} ({address})",
                connect_timeout=job.timeout,
                idle_timeout=job.timeout,
                explain=call.explain,
            )

        return _Call(job, entry, address, open_exchange)
