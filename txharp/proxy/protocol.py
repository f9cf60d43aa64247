"""The server side of the dispatcher protocol: one request per connection.

:class:`DispatcherProtocol` reads one request line, answers it from the
:class:`~txharp.proxy.jobs.JobManager` and closes.  Where the original
dispatcher silently dropped the connection, this one answers with exactly
one error line, then closes:

- a line that is not JSON, a wrong or missing ``harpcaller`` version, an
  unknown operation, a call without ``arguments``, fields of the wrong
  type (non-boolean ``wait``, ``since`` with ``recent``, a queue name that
  is not an object...), a line longer than the limit, or no complete line
  within ``request_timeout``: ``{"error": {"type": "invalid_request",
  "message": WHY}}``;
- any request naming an unknown job (``follow_stream`` and ``read_stream``
  included): ``{"error": {"type": "invalid_jobid", "message": "no job with
  this ID"}}``; ``cancel`` of an unknown job answers ``{"cancelled":
  false}`` as the contract says.

Anything the client sends after its request line is ignored (read and
discarded, so that a client going away is still noticed).

Stream replies are sent by a :class:`StreamSender`, a streaming producer
registered with the connection: it writes while the connection accepts
data and stops when the transport pauses it.  It holds only a cursor (the
next packet number) and at most one batch read from the store; packets
come from the job's shared cache of recent packets while the follower
keeps up, and from the store once it has fallen behind.  So a slow follower
costs a bounded amount of memory and never delays the job or the others.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, List, Optional, Tuple, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txharp.errors import MalformedMessage
from txharp.lines import JSONLinesProtocol, set_no_delay
from txharp.proxy.jobs import READ_BATCH, JobManager, StreamSource, packet_line, store_failure
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH, encode_line
from txharp.wire.dispatcher import (
    CallRequest,
    CancelReply,
    CancelRequest,
    FollowStreamRequest,
    GetResultRequest,
    GetStatusRequest,
    ReadStreamRequest,
    Request,
    parse_request,
)
from txharp.wire.outcomes import ContinueReply, ErrorReply

__all__ = ["DispatcherProtocol", "DispatcherFactory", "StreamSender", "invalid_request"]

log = Logger(namespace="txharp.proxy.protocol")

#: Seconds a client has to send its request line.
DEFAULT_REQUEST_TIMEOUT = 60.0


def invalid_request(why: str) -> ErrorReply:
    """The one-line answer to a request that cannot be understood."""
    return ErrorReply("invalid_request", why)


@implementer(IPushProducer)
class StreamSender:
    """Writes a job's packets from ``cursor`` on, then its end, to one connection.

    ``follow=True`` (``follow_stream``) waits for new packets until the job
    ends; ``follow=False`` (``read_stream``) sends what had committed when
    it started and then the end, or ``{"continue": true}`` if the job has
    not ended.
    """

    def __init__(self, transport: ITransport, source: StreamSource, cursor: int, follow: bool) -> None:
        self._transport = transport
        self._source = source
        self.cursor = cursor
        self._follow = follow
        self._limit = source.available
        self._batch: Deque[Tuple[int, Any]] = deque()
        self._paused = False
        self._reading = False
        self._pumping = False
        self.done = False

    def start(self) -> None:
        """Register with the transport, watch the job and send what is there."""
        self._transport.registerProducer(self, True)
        if self._follow:
            self._source.watch(self)
        self._pump()

    # ------------------------------------------------ StreamWatcher

    def packets_available(self) -> None:
        self._pump()

    def job_ended(self) -> None:
        self._pump()

    # ------------------------------------------------- IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The connection went away."""
        self._stop()

    # ----------------------------------------------------- internals

    def _target(self) -> int:
        """The packet number to send up to (exclusive)."""
        if self._follow or self._source.outcome is not None:
            return self._source.available
        return self._limit

    def _pump(self) -> None:
        """Send as much as the connection accepts; re-entrant calls fold into the loop."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self._reading or self.done):
                if self._batch:
                    number, data = self._batch.popleft()
                    self._write(number, packet_line(number, data))
                    continue
                target = self._target()
                if self.cursor < target:
                    line = self._source.cached_line(self.cursor)
                    if line is None:
                        self._fetch(target)
                    else:
                        self._write(self.cursor, line)
                    continue
                outcome = self._source.outcome
                if outcome is not None:
                    self._finish(outcome)
                elif not self._follow:
                    self._finish(ContinueReply())
                break
        finally:
            self._pumping = False

    def _write(self, number: int, line: bytes) -> None:
        self.cursor = number + 1
        self._transport.write(line)

    def _fetch(self, target: int) -> None:
        """Catch up from the store: the next batch after the last packet sent."""
        self._reading = True
        limit = min(READ_BATCH, target - self.cursor)
        self._source.read(self.cursor, limit).addCallbacks(self._fetched, self._fetch_failed)

    def _fetched(self, rows: List[Tuple[int, Any]]) -> None:
        self._reading = False
        if self.done:
            return
        if not rows or rows[0][0] != self.cursor:
            log.error(
                "job {job_id}: packet {number} missing from the job store (pruned?)",
                job_id=self._source.job_id, number=self.cursor,
            )
            self._abort()
            return
        self._batch.extend(rows)
        self._pump()

    def _fetch_failed(self, failure: Failure) -> None:
        self._reading = False
        if not self.done:
            log.failure("job {job_id}: reading packets failed", failure, job_id=self._source.job_id)
            self._abort()

    def _finish(self, last: Any) -> None:
        self._transport.write(encode_line(last.to_json()))
        self._stop()
        self._transport.loseConnection()

    def _abort(self) -> None:
        self._stop()
        self._transport.abortConnection()

    def _stop(self) -> None:
        if self.done:
            return
        self.done = True
        self._batch.clear()
        self._source.unwatch(self)
        self._transport.unregisterProducer()


class DispatcherProtocol(JSONLinesProtocol):
    """One connection of a dispatcher client: one request, its answer, close."""

    def __init__(
        self,
        manager: JobManager,
        clock: IReactorTime,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        super().__init__(max_line_length)
        self._manager = manager
        self._clock = clock
        self._request_timeout = request_timeout
        self._timer: Optional[IDelayedCall] = None
        self._answered = False  # a request (or garbage) was seen: no more input wanted
        self._waiting: Optional[Deferred[Any]] = None  # a get_result wait
        self._sender: Optional[StreamSender] = None
        self._gone = False

    # ----------------------------------------------------- connection

    def connectionMade(self) -> None:
        set_no_delay(self.transport)  # small replies, then close: no waiting for ACKs
        self._timer = self._clock.callLater(self._request_timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if not self._answered:
            super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        self._cancel_timer()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        if self._sender is not None:
            self._sender.stopProducing()

    def messageReceived(self, value: Any) -> None:
        if self._answered:
            return
        self._stop_reading()
        try:
            request = parse_request(value)
        except MalformedMessage as error:
            self._reply(invalid_request(error.message))
            return
        self._dispatch(request)

    def malformedLineReceived(self, error: MalformedMessage) -> None:
        if self._answered:
            return
        self._stop_reading()
        self._reply(invalid_request(error.message))

    def _timed_out(self) -> None:
        self._timer = None
        if not self._answered:
            self._stop_reading()
            self._reply(invalid_request(f"no request within {self._request_timeout:g} s"))

    def _stop_reading(self) -> None:
        """One request per connection: anything after it is discarded."""
        self._answered = True
        self._cancel_timer()
        self.clearLineBuffer()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # ------------------------------------------------------- requests

    def _dispatch(self, request: Request) -> None:
        manager = self._manager
        if isinstance(request, CallRequest):
            self._answer(manager.submit(request))
        elif isinstance(request, CancelRequest):
            self._answer(manager.cancel(request.job_id).addCallback(CancelReply))
        elif isinstance(request, GetResultRequest):
            # A missing "wait" means true, as the published contract says.
            self._waiting = manager.result(request.job_id, request.wait is not False)
            self._answer(self._waiting)
        elif isinstance(request, GetStatusRequest):
            self._answer(manager.status(request.job_id))
        else:
            self._answer(manager.stream_source(request.job_id), request)

    def _answer(
        self,
        reply: "Deferred[Any]",
        stream: Optional[Union[FollowStreamRequest, ReadStreamRequest]] = None,
    ) -> None:
        """Send ``reply``'s answer when it fires, or start the stream it designates.

        Only a ``get_result`` wait is cancelled when the client goes away;
        other operations (a job being recorded) complete regardless.
        """

        def ready(answer: Any) -> None:
            self._waiting = None
            if self._gone:
                return
            if stream is None or isinstance(answer, ErrorReply):
                self._reply(answer)
            else:
                self._stream(stream, answer)

        def failed(failure: Failure) -> None:
            self._waiting = None
            if failure.check(CancelledError) and self._gone:
                return
            log.failure("answering a dispatcher request failed", failure)
            if not self._gone:
                self._reply(store_failure(failure))

        reply.addCallbacks(ready, failed)

    def _stream(self, request: Union[FollowStreamRequest, ReadStreamRequest], source: StreamSource) -> None:
        follow = isinstance(request, FollowStreamRequest)
        if request.since is not None:
            cursor = request.since
        elif request.recent is not None or follow:
            cursor = max(0, source.available - (request.recent or 0))
        else:
            cursor = 0
        self._sender = StreamSender(self.transport, source, cursor, follow)
        self._sender.start()

    def _reply(self, message: Any) -> None:
        self.sendMessage(message)
        self.transport.loseConnection()


class DispatcherFactory(Factory):
    """Builds a :class:`DispatcherProtocol` per connection, sharing one job manager."""

    def __init__(
        self,
        manager: JobManager,
        clock: IReactorTime,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        self.manager = manager
        self.clock = clock
        self.request_timeout = request_timeout
        self.max_line_length = max_line_length

    def buildProtocol(self, addr: Any) -> DispatcherProtocol:
        protocol = DispatcherProtocol(
            self.manager, self.clock,
            request_timeout=self.request_timeout, max_line_length=self.max_line_length,
        )
        protocol.factory = self
        return protocol
