"""Deferred client for the HarpCaller dispatcher protocol (TCP, default port 3502).

The API mirrors the original synchronous ``harp`` library with Deferreds::

    rpc = HarpCaller("dispatcher.example", reactor=reactor)
    job = await rpc.web01.uptime()                  # Deferred[RemoteCall]
    value = await job.get()                         # waits for the job's end
    async for packet in job.follow(since=0):        # a streaming procedure
        ...

Every request opens its own connection (the protocol allows one request per
connection) through :class:`~txharp.lines.Exchange`, which owns framing,
timeouts and cancellation; this module only chooses requests and maps
replies to values and exceptions.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, TypeVar, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from txharp.errors import (
    CancelledException,
    HarpException,
    MalformedMessage,
    RemoteError,
    RemoteException,
)
from txharp.lines import Exchange, ReplyReader, SingleReply
from txharp.streams import MessageStream, StreamControl
from txharp.wire import (
    CallAccepted,
    CallRequest,
    CancelledReply,
    CancelRequest,
    ContinueReply,
    ErrorReply,
    ExceptionReply,
    FollowStreamRequest,
    GetResultRequest,
    GetStatusRequest,
    NoResultReply,
    Outcome,
    Packet,
    QueueSpec,
    ReadStreamRequest,
    ResultReply,
    StatusReply,
    StreamReader,
    parse_call_reply,
    parse_cancel_reply,
    parse_result_reply,
    parse_status_reply,
)
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH
from txharp.wire.dispatcher import DEFAULT_PORT, Arguments, StreamLine

__all__ = [
    "CallState",
    "CALL_NOT_FINISHED",
    "CALL_CANCELLED",
    "JobStatus",
    "JobStream",
    "HarpCaller",
    "RemoteServer",
    "RemoteProcedure",
    "RemoteCall",
]

T = TypeVar("T")
_log = Logger()

#: How a stream reply ends: the job's end, or ``continue`` for ``read_stream``
#: of a job that is still running.
StreamEnd = Union[Outcome, ContinueReply]

#: Error replies that say nothing final about the job: ``invalid_jobid`` is
#: about the ID, and the original dispatcher answers ``missing_result`` by
#: mistake when a waiter races the job's end (a second request gets the result).
_UNSETTLED_ERRORS = frozenset({"invalid_jobid", "missing_result"})


class CallState(enum.Enum):
    """What :meth:`RemoteCall.result` returns when the job has no value."""

    NOT_FINISHED = "CALL_NOT_FINISHED"
    CANCELLED = "CALL_CANCELLED"

    def __repr__(self) -> str:
        return self.value


#: The job is still queued or running.
CALL_NOT_FINISHED = CallState.NOT_FINISHED
#: The job was cancelled before it ended.
CALL_CANCELLED = CallState.CANCELLED


def _as_result(end: Union[StreamEnd, NoResultReply]) -> Any:
    """Map a job's end to what ``result()`` gives: value, marker or exception instance."""
    if isinstance(end, ResultReply):
        return end.value
    if isinstance(end, (ExceptionReply, ErrorReply)):
        return end.exception()
    if isinstance(end, CancelledReply):
        return CALL_CANCELLED
    return CALL_NOT_FINISHED


def _loggable(text: str) -> str:
    """Text from the dispatcher (a job ID, an error message) made safe for any
    text log: JSON strings may hold lone surrogates, which UTF-8 cannot carry,
    and a log file that cannot write an event drops it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _raise_unless_value(result: Any) -> Any:
    """What ``get()`` adds to ``result()``: failures and cancellation raise."""
    if isinstance(result, (RemoteException, RemoteError)):
        raise result
    if result is CALL_CANCELLED:
        raise CancelledException("the job was cancelled")
    return result


def _unless_error(reply: Union[T, ErrorReply]) -> T:
    """Raise the RemoteError a request-level ``{"error": ...}`` reply stands for."""
    if isinstance(reply, ErrorReply):
        raise reply.exception()
    return reply


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class JobStatus:
    """A job's call, its integer Unix times (None until they happen) and its info."""

    host: str
    procedure: str
    args: Arguments
    submit_time: int
    start_time: Optional[int]
    end_time: Optional[int]
    info: Any

    @property
    def finished(self) -> bool:
        """Whether the job has ended (nothing here changes any more)."""
        return self.end_time is not None

    @classmethod
    def from_reply(cls, reply: StatusReply) -> "JobStatus":
        """The status a get_status reply describes."""
        return cls(
            host=reply.host,
            procedure=reply.procedure,
            args=reply.arguments,
            submit_time=reply.submit,
            start_time=reply.start,
            end_time=reply.end,
            info=reply.info,
        )


class _Keep(enum.Enum):
    """Default of :meth:`RemoteServer.__call__`: leave that option as it is."""

    KEEP = 0


_KEEP = _Keep.KEEP


@dataclass(frozen=True)
class _CallOptions:
    """The options a :class:`RemoteServer` puts on every call it submits."""

    queue: Optional[Mapping[str, Any]] = None
    concurrency: Optional[int] = None
    timeout: Optional[float] = None
    max_exec_time: Optional[float] = None
    info: Any = None

    def __post_init__(self) -> None:
        # The original dispatcher closes the connection without a word on
        # these, so they are refused here, where the mistake is made.
        if self.queue is not None and not isinstance(self.queue, Mapping):
            raise HarpException("a queue name must be a JSON object (a dict)")
        if self.queue is None and self.concurrency is not None:
            raise HarpException("concurrency applies to a queue: give queue= too")

    def request(self, host: str, procedure: str, arguments: Arguments) -> CallRequest:
        queue = None if self.queue is None else QueueSpec(dict(self.queue), self.concurrency)
        return CallRequest(
            host=host,
            procedure=procedure,
            arguments=arguments,
            timeout=self.timeout,
            max_exec_time=self.max_exec_time,
            queue=queue,
            info=self.info,
        )


# ------------------------------------------------------------ listeners


class _SingleAnswer:
    """ReplyListener firing one cancellable Deferred with the only reply line."""

    exchange: Exchange[Any]  # set right after construction, before anyone can cancel

    def __init__(self) -> None:
        self.deferred: Deferred[Any] = Deferred(lambda _: self.exchange.cancel())
        self._reply: Any = None

    def replyReceived(self, reply: Any) -> None:
        self._reply = reply

    def conversationEnded(self, reason: Optional[Failure]) -> None:
        if reason is None:
            self.deferred.callback(self._reply)
        else:
            self.deferred.errback(reason)


class JobStream(MessageStream[Any]):
    """The packets of a job's stream, then the job's end without another request.

    Consume it with ``async for``, :meth:`each` or :meth:`all`; items are
    packet data, or ``(number, data)`` pairs when asked for numbered
    packets.  Once the last packet is read, :attr:`end` holds how the reply
    ended and :meth:`result` maps it like :meth:`RemoteCall.result`.
    :meth:`cancel` closes the connection.
    """

    def __init__(self) -> None:
        super().__init__()
        self._end: Optional[StreamEnd] = None

    @property
    def end(self) -> Optional[StreamEnd]:
        """The final line (an outcome, or ContinueReply for ``stream()`` of a running
        job); None until it arrives or if the stream failed."""
        return self._end

    def result(self) -> Any:
        """The job's end as :meth:`RemoteCall.result` gives it (CALL_NOT_FINISHED
        after ``continue``); raises HarpException before the end has arrived."""
        if self._end is None:
            raise HarpException("the stream has not delivered the job's end")
        return _as_result(self._end)


class _StreamFeeder(StreamControl):
    """Feeds a JobStream from a conversation and lets the stream control it."""

    exchange: Exchange[StreamLine]  # set right after construction, before the stream is attached

    def __init__(self, stream: JobStream, numbered: bool, job: "RemoteCall") -> None:
        self._stream = stream
        self._numbered = numbered
        self._job = job

    # ReplyListener

    def replyReceived(self, line: StreamLine) -> None:
        if isinstance(line, Packet):
            self._stream.push((line.number, line.data) if self._numbered else line.data)
            return
        self._stream._end = line
        self._job._remember_end(line)

    def conversationEnded(self, reason: Optional[Failure]) -> None:
        self._stream.finish(reason)

    # StreamControl

    def pauseReading(self) -> None:
        self.exchange.protocol.pauseReading()

    def resumeReading(self) -> None:
        self.exchange.protocol.resumeReading()

    def cancel(self) -> None:
        self.exchange.cancel()


# ------------------------------------------------------------------ client


def _resolve_reactor(reactor: Optional[Any]) -> Any:
    """The given reactor, else the global one (imported only when needed)."""
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as global_reactor

    return global_reactor


class HarpCaller:
    """A client of one dispatcher: hosts, calls and existing jobs.

    ``rpc.host("web01")`` or ``rpc.web01`` gives a :class:`RemoteServer`;
    ``rpc.job(job_id)`` a :class:`RemoteCall` for an existing job.  Names
    starting with ``_`` and the method names below are not turned into
    hosts by attribute access; ``rpc.host(name)`` reaches any host.

    :param timeout: seconds allowed for connecting and for every reply that
        should come at once (call, cancel, status, ``result(wait=False)``,
        ``stream()``).  Waiting for a job's end (``get()``,
        ``result(wait=True)``, ``follow()``) is not bounded unless that
        method gets its own ``timeout=``.
    :param connect_timeout: seconds allowed for connecting (default: ``timeout``).
    :param max_line_length: longest reply line accepted, in bytes.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        *,
        reactor: Optional[Any] = None,
        timeout: float = 30.0,
        connect_timeout: Optional[float] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        reactor = _resolve_reactor(reactor)
        connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._configure(
            HostnameEndpoint(reactor, host, port, timeout=connect_timeout),
            clock=reactor,
            peer=f"dispatcher [{host}]:{port}" if ":" in host else f"dispatcher {host}:{port}",
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_line_length=max_line_length,
        )

    @classmethod
    def from_endpoint(
        cls,
        endpoint: IStreamClientEndpoint,
        *,
        reactor: Optional[IReactorTime] = None,
        timeout: float = 30.0,
        connect_timeout: Optional[float] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        peer: Optional[str] = None,
    ) -> "HarpCaller":
        """A client connecting through ``endpoint`` (UNIX socket, TLS, a test double...).

        ``reactor`` is only used as the clock; ``peer`` names the dispatcher
        in error messages.
        """
        caller = cls.__new__(cls)
        caller._configure(
            endpoint,
            clock=_resolve_reactor(reactor),
            peer=peer or f"dispatcher via {type(endpoint).__name__}",
            timeout=timeout,
            connect_timeout=timeout if connect_timeout is None else connect_timeout,
            max_line_length=max_line_length,
        )
        return caller

    @classmethod
    def from_string(cls, reactor: Any, description: str, **options: Any) -> "HarpCaller":
        """A client for an endpoint string such as ``"tcp:host=h:port=3502"``.

        ``options`` are those of :meth:`from_endpoint`.
        """
        options.setdefault("peer", f"dispatcher {description}")
        return cls.from_endpoint(clientFromString(reactor, description), reactor=reactor, **options)

    def _configure(
        self,
        endpoint: IStreamClientEndpoint,
        *,
        clock: IReactorTime,
        peer: str,
        timeout: float,
        connect_timeout: float,
        max_line_length: int,
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._peer = peer
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_line_length = max_line_length

    def __repr__(self) -> str:
        return f"<HarpCaller {self._peer}>"

    # -- public API

    def host(
        self,
        name: str,
        *,
        queue: Optional[Mapping[str, Any]] = None,
        concurrency: Optional[int] = None,
        timeout: Optional[float] = None,
        max_exec_time: Optional[float] = None,
        info: Any = None,
    ) -> "RemoteServer":
        """The host ``name`` as registered at the dispatcher, with call options.

        ``queue`` (a JSON object naming a queue) and ``concurrency`` make
        calls wait in that queue; ``timeout`` and ``max_exec_time`` are the
        dispatcher-side limits of each job, in seconds; ``info`` is opaque
        JSON returned by :meth:`RemoteCall.info`.
        """
        options = _CallOptions(queue, concurrency, timeout, max_exec_time, info)
        return RemoteServer(self, name, options)

    def __getattr__(self, name: str) -> "RemoteServer":
        # Private and special names stay ordinary attribute errors, so copy,
        # pickle and introspection never mistake this object for a host list.
        if name.startswith("_"):
            raise AttributeError(name)
        return self.host(name)

    def job(self, job_id: str) -> "RemoteCall":
        """An existing job, known by its ID; nothing is sent until it is asked something."""
        return RemoteCall(self, job_id)

    # -- requests

    def _exchange(
        self,
        request: Any,
        reader: ReplyReader[T],
        listener: Any,
        idle_timeout: Optional[float],
    ) -> Exchange[T]:
        """Start one connection carrying ``request``; encoding errors raise here."""
        return Exchange(
            self._endpoint,
            request,
            reader,
            listener,
            clock=self._clock,
            peer=self._peer,
            connect_timeout=self._connect_timeout,
            idle_timeout=idle_timeout,
            max_line_length=self._max_line_length,
        )

    def _reply_timeout(self, timeout: Optional[float], waits: bool) -> Optional[float]:
        """The silence allowed before a reply line: the caller's ``timeout`` if
        given, else none for requests that wait for a job, else the client's."""
        if timeout is not None:
            return timeout
        return None if waits else self._timeout

    def _ask(
        self,
        request: Any,
        parse: Callable[[Any], T],
        *,
        timeout: Optional[float] = None,
        waits: bool = False,
    ) -> "Deferred[T]":
        """Send ``request`` and fire with its one reply line, parsed by ``parse``.

        The Deferred is cancellable (the connection is closed) and fails
        with a CommunicationError on every path that yields no reply.
        """
        answer = _SingleAnswer()
        idle_timeout = self._reply_timeout(timeout, waits)
        answer.exchange = self._exchange(request, SingleReply(parse), answer, idle_timeout)
        answer.deferred.addErrback(self._log_failure, request)
        return answer.deferred

    def _log_failure(self, reason: Failure, request: Any) -> Failure:
        _log.debug(
            "{request} to {peer} failed: {error}",
            request=type(request).__name__,
            peer=_loggable(self._peer),
            error=_loggable(reason.getErrorMessage()),
        )
        return reason

    def _open_stream(
        self,
        job: "RemoteCall",
        request: Union[FollowStreamRequest, ReadStreamRequest],
        numbered: bool,
        *,
        timeout: Optional[float],
        waits: bool,
    ) -> JobStream:
        """Send a stream request; its lines feed the returned JobStream."""
        stream = JobStream()
        feeder = _StreamFeeder(stream, numbered, job)
        reader = StreamReader(allow_continue=isinstance(request, ReadStreamRequest))
        idle_timeout = self._reply_timeout(timeout, waits)
        feeder.exchange = self._exchange(request, reader, feeder, idle_timeout)
        stream.attach(feeder)
        return stream


class RemoteServer:
    """A host at the dispatcher with the options its calls carry.

    Any attribute not starting with ``_`` is a :class:`RemoteProcedure`;
    ``server["name"]`` reaches every procedure, including names that are
    not identifiers or start with ``_``.  ``str(server)`` is the host name.
    Calling the server with options changes them and returns it.
    """

    def __init__(self, caller: HarpCaller, name: str, options: _CallOptions) -> None:
        self._caller = caller
        self._name = name
        self._options = options

    def __call__(
        self,
        *,
        queue: Union[Mapping[str, Any], None, _Keep] = _KEEP,
        concurrency: Union[int, None, _Keep] = _KEEP,
        timeout: Union[float, None, _Keep] = _KEEP,
        max_exec_time: Union[float, None, _Keep] = _KEEP,
        info: Any = _KEEP,
    ) -> "RemoteServer":
        """Change the given options (None clears one) and return this server."""
        given = dict(
            queue=queue,
            concurrency=concurrency,
            timeout=timeout,
            max_exec_time=max_exec_time,
            info=info,
        )
        self._options = replace(
            self._options, **{key: value for key, value in given.items() if value is not _KEEP}
        )
        return self

    def __getattr__(self, name: str) -> "RemoteProcedure":
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteProcedure(self, name)

    def __getitem__(self, name: str) -> "RemoteProcedure":
        return RemoteProcedure(self, name)

    def __str__(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<RemoteServer {self._name!r} at {self._caller._peer}>"


class RemoteProcedure:
    """A procedure of a host; calling it submits a job (``Deferred[RemoteCall]``)."""

    def __init__(self, server: RemoteServer, name: str) -> None:
        self._server = server
        self._name = name

    def host(self) -> str:
        """The host name."""
        return self._server._name

    def procedure(self) -> str:
        """The procedure name."""
        return self._name

    def __repr__(self) -> str:
        return f"<RemoteProcedure {self._name!r} on {self._server._name!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> "Deferred[RemoteCall]":
        """Submit the call; fires with its :class:`RemoteCall` once the dispatcher
        has registered it.

        Raises at once (nothing sent) :class:`HarpException` when positional
        and named arguments are mixed, and
        :class:`~txharp.errors.EncodingError` for values JSON cannot carry.
        """
        if args and kwargs:
            raise HarpException("positional and named arguments cannot be mixed in one call")
        arguments: Arguments = dict(kwargs) if kwargs else list(args)
        server = self._server
        caller = server._caller
        request = server._options.request(server._name, self._name, arguments)
        return caller._ask(request, parse_call_reply).addCallback(self._accepted, caller)

    def _accepted(self, reply: Union[CallAccepted, ErrorReply], caller: HarpCaller) -> "RemoteCall":
        job_id = _unless_error(reply).job_id
        _log.debug(
            "submitted {procedure} on {host} as job {job_id}",
            procedure=_loggable(self._name),
            host=_loggable(self._server._name),
            job_id=_loggable(job_id),
        )
        return RemoteCall(caller, job_id)


class RemoteCall:
    """A job at the dispatcher: its end, its status, its stream, cancelling it.

    Only what cannot change is cached: the job's end once known (from
    :meth:`result`, :meth:`get` or a stream's last line) and the status once
    it carries an end time.  "Not finished" is never cached.
    """

    def __init__(self, caller: HarpCaller, job_id: str) -> None:
        self._caller = caller
        self._id = job_id
        self._end: Optional[Outcome] = None
        self._status: Optional[JobStatus] = None

    def __repr__(self) -> str:
        return f"<RemoteCall {self._id}>"

    def id(self) -> str:
        """The job ID."""
        return self._id

    def _remember_end(self, end: Union[StreamEnd, NoResultReply]) -> None:
        """Cache ``end`` if it is the job's final end."""
        if isinstance(end, (ResultReply, ExceptionReply, CancelledReply)) or (
            isinstance(end, ErrorReply) and end.type not in _UNSETTLED_ERRORS
        ):
            self._end = end

    # -- the job's end

    def result(self, wait: bool = False, *, timeout: Optional[float] = None) -> "Deferred[Any]":
        """The job's value, CALL_NOT_FINISHED, CALL_CANCELLED, or the
        RemoteException/RemoteError instance it ended with.

        With ``wait`` the reply waits for the job's end (bounded by
        ``timeout`` if given); without, it comes at once (bounded by the
        client's timeout, or ``timeout``).  Only communication failures errback.
        """
        if self._end is not None:
            return succeed(_as_result(self._end))
        request = GetResultRequest(self._id, wait)
        answer = self._caller._ask(request, parse_result_reply, timeout=timeout, waits=wait)
        return answer.addCallback(self._answered)

    def _answered(self, answer: Union[Outcome, NoResultReply]) -> Any:
        self._remember_end(answer)
        return _as_result(answer)

    def get(self, wait: bool = True, *, timeout: Optional[float] = None) -> "Deferred[Any]":
        """The job's value; errbacks RemoteException, RemoteError,
        CancelledException or CommunicationError.

        ``get(wait=False)`` of an unfinished job gives CALL_NOT_FINISHED.
        """
        return self.result(wait, timeout=timeout).addCallback(_raise_unless_value)

    def cancel(self) -> "Deferred[bool]":
        """Stop the job; True if it was queued or running, False if it had ended."""
        answer = self._caller._ask(CancelRequest(self._id), parse_cancel_reply)
        return answer.addCallback(lambda reply: _unless_error(reply).cancelled)

    # -- status

    def status(self) -> "Deferred[JobStatus]":
        """The job's call, times and info (one get_status request, or the cache)."""
        if self._status is not None:
            return succeed(self._status)
        answer = self._caller._ask(GetStatusRequest(self._id), parse_status_reply)
        return answer.addCallback(self._status_received)

    def _status_received(self, reply: Union[StatusReply, ErrorReply]) -> JobStatus:
        status = JobStatus.from_reply(_unless_error(reply))
        if status.finished:
            self._status = status
        return status

    def _status_field(self, name: str) -> "Deferred[Any]":
        return self.status().addCallback(lambda status: getattr(status, name))

    def host(self) -> "Deferred[str]":
        """The host the job runs on."""
        return self._status_field("host")

    def procedure(self) -> "Deferred[str]":
        """The procedure called."""
        return self._status_field("procedure")

    def args(self) -> "Deferred[Arguments]":
        """The call's arguments: a list, or a dict of named arguments."""
        return self._status_field("args")

    def submit_time(self) -> "Deferred[int]":
        """When the job was submitted (Unix time)."""
        return self._status_field("submit_time")

    def start_time(self) -> "Deferred[Optional[int]]":
        """When the job started (Unix time), None while queued or if cancelled in its queue."""
        return self._status_field("start_time")

    def end_time(self) -> "Deferred[Optional[int]]":
        """When the job ended (Unix time), None while it runs."""
        return self._status_field("end_time")

    def info(self) -> "Deferred[Any]":
        """The opaque ``info`` given when the job was submitted."""
        return self._status_field("info")

    # -- streams

    def follow(
        self,
        since: Optional[int] = None,
        recent: Optional[int] = None,
        numbered: bool = False,
        *,
        timeout: Optional[float] = None,
    ) -> JobStream:
        """Packets as the job produces them, until it ends.

        ``since=N`` starts at packet N (0: all), ``recent=N`` with the last N
        recorded packets; neither gives only new packets.  ``timeout``
        bounds the silence between two lines (default: none).
        """
        request = self._stream_request(FollowStreamRequest, since, recent)
        return self._caller._open_stream(self, request, numbered, timeout=timeout, waits=True)

    def stream(
        self,
        since: Optional[int] = None,
        recent: Optional[int] = None,
        numbered: bool = False,
        *,
        timeout: Optional[float] = None,
    ) -> JobStream:
        """The packets recorded so far (default: all), then the job's end or,
        if it still runs, ``continue`` (:meth:`JobStream.result` gives
        CALL_NOT_FINISHED).  ``timeout`` defaults to the client's.
        """
        request = self._stream_request(ReadStreamRequest, since, recent)
        return self._caller._open_stream(self, request, numbered, timeout=timeout, waits=False)

    def _stream_request(
        self,
        kind: Union[type[FollowStreamRequest], type[ReadStreamRequest]],
        since: Optional[int],
        recent: Optional[int],
    ) -> Union[FollowStreamRequest, ReadStreamRequest]:
        try:
            return kind(self._id, since=since, recent=recent)
        except MalformedMessage as error:
            # A wrong argument, not a wire failure: no CommunicationError.
            raise HarpException(str(error)) from None
