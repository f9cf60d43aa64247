"""The original ``harp`` library's blocking API, running on txharp's Twisted clients.

Code written for ``harp`` runs after changing only its import line::

    import txharp.sync as harp

    rpc = harp.HarpCaller("localhost")
    job = rpc.localhost(queue={"foo": "bar"}, max_exec_time=15).stream_infinity()
    for msg in job.follow(since=0):
        print(msg)
    print(job.id(), job.result())

    server = harp.HarpServer(host="localhost", user="username", password="secret")
    print(server.current_time())

The names, signatures and behaviour are those of ``harp``: ``result()``
*returns* :data:`CALL_NOT_FINISHED`, :data:`CALL_CANCELLED` or the
:class:`RemoteException` / :class:`RemoteError` instance the job ended with,
``get()`` raises them; iterators yield packet data, or ``(number, data)``
pairs when ``numbered``; a streaming harpd procedure yields its packets and
then a :class:`Result`.  The exception classes are those of
:mod:`txharp.errors`, and the two markers those of :mod:`txharp.caller`, so
code mixing this module with the Deferred clients catches the same things.
What differs from ``harp`` is what it got wrong: iterators have
``__next__``, "not finished" is never cached, ``HarpServer`` speaks TLS,
communication failures are raised rather than silently ending a stream.

How it works: every blocking method runs the matching Deferred call of
:mod:`txharp.caller` or :mod:`txharp.server` in the reactor and waits for
it in the calling thread.  The first blocking call starts the global
reactor in a background thread (``crochet.setup()``), unless it is already
running, as in a Twisted application calling this module from a worker
thread (then ``crochet.no_setup()``: the application's reactor serves;
such an application should call ``crochet.no_setup()`` before it starts
threads that use this module).  Any number of threads may block at once.
A blocking call made from the reactor thread itself could only deadlock,
so it raises :class:`ReactorThreadError` instead: use the Deferred
clients there.  When the reactor shuts down, the calls waiting for it
raise :class:`CommunicationError`.

Timeouts.  Each blocking call (each ``next()`` of an iterator) is bounded as
a whole, connection included; when the bound passes, the underlying
Deferred is cancelled in the reactor, which closes the connection, and
:class:`~txharp.errors.HarpTimeout` (a :class:`CommunicationError`) is
raised.  Bounds come from the constructors and can be overridden per call
with a ``timeout=`` keyword wherever the original signature leaves room:

- ``HarpCaller(timeout=30)``: requests the dispatcher answers at once
  (submitting, ``cancel()``, the job's metadata, ``result(wait=False)``,
  each item of ``stream()``);
- ``HarpCaller(wait_timeout=None)``: waiting for a job (``get()``,
  ``result(wait=True)``, each item of ``follow()``).  None waits as long as
  the job runs, as ``harp`` did: the dispatcher's own time limits end it;
- ``HarpServer(timeout=None)``: a harpd call until its value (or, for a
  streaming procedure, its acknowledgement), and each item of a stream;
  ``connect_timeout`` separately bounds the connection and TLS handshake.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, TypeVar, Union

import crochet
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.python import threadable
from twisted.python.failure import Failure

from txharp import caller as _caller
from txharp import server as _server
from txharp.caller import CALL_CANCELLED, CALL_NOT_FINISHED, JobStatus
from txharp.errors import (
    CancelledException,
    CommunicationError,
    HarpException,
    HarpTimeout,
    LineTooLong,
    RemoteError,
    RemoteException,
    TLSError,
)
from txharp.server import Result
from txharp.streams import MessageStream
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH, decode_line, encode_line
from txharp.wire.dispatcher import DEFAULT_PORT as DISPATCHER_PORT
from txharp.wire.daemon import DEFAULT_PORT as HARPD_PORT

__all__ = [
    "HarpCaller",
    "RemoteServer",
    "RemoteProcedure",
    "RemoteCall",
    "HarpServer",
    "HarpProcedure",
    "HarpStreamIterator",
    "Result",
    "JobStatus",
    "JSONConnection",
    "JSONSSLConnection",
    "CALL_NOT_FINISHED",
    "CALL_CANCELLED",
    "HarpException",
    "CommunicationError",
    "HarpTimeout",
    "CancelledException",
    "RemoteException",
    "RemoteError",
    "ReactorThreadError",
]

T = TypeVar("T")

#: How much longer than a bound enforced in the reactor the calling thread
#: waits before deciding the reactor itself is stuck.
_REACTOR_GRACE = 5.0


class ReactorThreadError(HarpException, RuntimeError):
    """A blocking call of :mod:`txharp.sync` was made in the reactor thread.

    Blocking there would stop the reactor that has to produce the answer, so
    the call could only hang.  Inside Twisted code use the Deferred clients
    (:mod:`txharp.caller`, :mod:`txharp.server`), or move the blocking code
    to a thread with ``twisted.internet.threads.deferToThread``.
    """


# ------------------------------------------------------------ reactor bridge
#
# crochet runs the reactor: crochet.setup() starts it in a thread of its own
# (with its logging bridge, and the atexit hook and watchdog that stop it
# when the program ends), or crochet.no_setup() leaves an application's
# running reactor alone.  Waiting is done here rather than with crochet's
# EventualResult: crochet refuses every later call once the reactor has
# fired its "shutdown" event, and trial's distributed runner (trial --jobs,
# what scripts/test.sh runs) fires that event after every test while the
# reactor goes on serving the next one.  _Call fails only the calls pending
# at a shutdown, and notices a reactor that is not running.

_setup_lock = threading.Lock()
_reactor_ready = False
_pending: "set[_Call]" = set()  # touched in the reactor thread only

#: How often a waiting thread checks that the reactor still runs, and how
#: many checks in a row may find it stopped before a call that has not even
#: started gives up (crochet's reactor thread may still be starting).
_CHECK_INTERVAL = 1.0
_STALLED_CHECKS = 5


def _ensure_reactor() -> None:
    """Make sure a reactor runs somewhere to serve blocking calls (once per process)."""
    global _reactor_ready
    if _reactor_ready:
        return
    with _setup_lock:
        if _reactor_ready:
            return
        from twisted.internet import reactor

        if reactor.running:
            # A Twisted application (or crochet.setup() by someone else)
            # already runs the reactor: use it, start nothing.
            try:
                crochet.no_setup()
            except RuntimeError:
                pass  # crochet.setup() already ran; its reactor thread serves us
        else:
            crochet.setup()
        reactor.callFromThread(reactor.addSystemEventTrigger, "before", "shutdown", _reactor_stopping)
        _reactor_ready = True


def _reactor_stopping() -> None:
    """The reactor shuts down: fail the calls waiting for it, close their connections."""
    for call in list(_pending):
        call.finish(Failure(CommunicationError(f"{call.what}: the reactor is shutting down")))
        call.cancel()


class _Call:
    """One function run in the reactor thread, waited for by one other thread."""

    def __init__(self, bound: Optional[float], what: str) -> None:
        self.bound = bound
        self.what = what
        self.outcome: Any = None
        self.done = threading.Event()
        self.deferred: "Optional[Deferred[Any]]" = None

    # -- in the reactor thread

    def start(self, function: Callable[..., Any], args: Any, kwargs: Any) -> None:
        from twisted.internet import reactor

        self.deferred = maybeDeferred(function, *args, **kwargs)
        if self.bound is not None:
            self.deferred.addTimeout(self.bound, reactor, onTimeoutCancel=self._timed_out)
        _pending.add(self)
        self.deferred.addBoth(self.finish)

    def _timed_out(self, outcome: Any, timeout: float) -> Any:
        if isinstance(outcome, Failure) and outcome.check(CancelledError):
            return Failure(HarpTimeout(f"{self.what}: no answer within {timeout:g} s"))
        return outcome

    def finish(self, outcome: Any) -> None:
        _pending.discard(self)
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()

    def cancel(self) -> None:
        if self.deferred is not None:
            self.deferred.cancel()

    # -- in the waiting thread

    def wait(self) -> Any:
        """The function's result, or raise its failure."""
        from twisted.internet import reactor

        deadline = None if self.bound is None else time.monotonic() + self.bound + _REACTOR_GRACE
        stalled = 0
        try:
            while not self.done.wait(_CHECK_INTERVAL):
                stalled = stalled + 1 if self.deferred is None and not reactor.running else 0
                if stalled >= _STALLED_CHECKS:
                    raise CommunicationError(f"{self.what}: the reactor is not running")
                if deadline is not None and time.monotonic() > deadline:
                    raise HarpTimeout(f"{self.what}: the reactor thread did not answer within {self.bound:g} s")
        except BaseException:
            reactor.callFromThread(self.cancel)  # closes the connection
            raise
        if isinstance(self.outcome, Failure):
            self.outcome.raiseException()
        return self.outcome


def _block(bound: Optional[float], what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` in the reactor thread and wait for its result.

    ``function`` may return a Deferred or a coroutine.  ``bound`` (seconds,
    None for no limit) is enforced in the reactor by cancelling the
    Deferred, which closes any connection it holds; the calling thread
    waits a little longer only in case the reactor itself is stuck.
    """
    if threadable.isInIOThread():
        raise ReactorThreadError(
            f"{what}: txharp.sync blocks the calling thread and cannot be used in "
            "the reactor thread; use the Deferred API of txharp.caller / txharp.server "
            "there, or run the blocking code with threads.deferToThread"
        )
    _ensure_reactor()
    from twisted.internet import reactor

    call = _Call(bound, what)
    reactor.callFromThread(call.start, function, args, kwargs)
    return call.wait()


def _cancel_in_reactor(stream: MessageStream[Any]) -> None:
    """Close a stream's connection from any thread (used for abandoned iterators)."""
    from twisted.internet import reactor

    reactor.callFromThread(stream.cancel)


class _End:
    """The marker :func:`_next_item` returns after a stream's last item."""


_END = _End()


async def _next_item(stream: MessageStream[T]) -> Union[T, _End]:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


class _StreamIterator:
    """A blocking iterator over a :class:`~txharp.streams.MessageStream`.

    Each ``next()`` waits for one item, bounded by ``bound``.  After the
    last item, a failure or a timeout the iterator is exhausted; an
    iterator dropped or :meth:`close`\\ d before its end closes its
    connection.
    """

    def __init__(self, stream: MessageStream[Any], bound: Optional[float], what: str) -> None:
        self._stream = stream
        self._bound = bound
        self._what = what
        self._finished = False
        self._closer = weakref.finalize(self, _cancel_in_reactor, stream)
        self._closer.atexit = False

    def __iter__(self) -> "_StreamIterator":
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        try:
            item = _block(self._bound, self._what, _next_item, self._stream)
        except BaseException:
            self.close()
            raise
        if item is _END:
            self._finished = True
            self._closer.detach()
            raise StopIteration
        return item

    #: ``harp`` was written for Python 2, whose iterators are advanced with ``next()``.
    next = __next__

    def all(self) -> List[Any]:
        """Every remaining item, in a list (waits for the stream's end)."""
        return list(self)

    def close(self) -> None:
        """Stop reading and close the connection (a followed job keeps running)."""
        self._finished = True
        self._closer()

    def __enter__(self) -> "_StreamIterator":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# ------------------------------------------------------ stdlib JSON sockets


class JSONConnection:
    """A blocking TCP connection carrying one JSON value per line (stdlib sockets).

    Connected on creation; usable as a context manager::

        with JSONConnection("localhost", 3502) as conn:
            conn.send({"harpcaller": 1, "get_status": job_id})
            reply = conn.receive()

    :meth:`send` refuses values JSON cannot carry
    (:class:`~txharp.errors.EncodingError`) before writing anything;
    :meth:`receive` returns None at the end of the stream and raises
    :class:`CommunicationError` for anything that is not one JSON value
    per line.  ``timeout`` bounds connecting and each socket operation
    (None: no limit); it raises :class:`~txharp.errors.HarpTimeout`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: Optional[float] = 30.0,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_line_length = max_line_length
        self._sock: Optional[socket.socket] = None
        self._reader: Any = None
        self.connect()

    def _peer(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def connect(self) -> None:
        """(Re)connect to the address given at creation."""
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.timeout:
            raise HarpTimeout(f"connecting to {self._peer()} timed out") from None
        except OSError as e:
            raise CommunicationError(f"can't connect to {self._peer()}: {e.strerror or e}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock = self._secure(sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = sock.makefile("rb")

    def _secure(self, sock: socket.socket) -> socket.socket:
        """Hook for :class:`JSONSSLConnection`: the socket to talk over."""
        return sock

    def close(self) -> None:
        """Close the connection; :meth:`connect` opens a new one."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "JSONConnection":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise CommunicationError(f"not connected to {self._peer()}")
        return self._sock

    def send(self, obj: Any) -> None:
        """Send ``obj`` as one compact JSON line."""
        sock = self._connected()
        line = encode_line(obj)
        try:
            sock.sendall(line)
        except socket.timeout:
            raise HarpTimeout(f"sending to {self._peer()} timed out") from None
        except OSError as e:
            raise CommunicationError(f"can't send to {self._peer()}: {e.strerror or e}") from None

    def receive(self) -> Any:
        """The next JSON value, or None when the peer has closed the connection."""
        self._connected()
        try:
            line = self._reader.readline(self.max_line_length + 1)
        except socket.timeout:
            raise HarpTimeout(f"no reply from {self._peer()} within {self.timeout:g} s") from None
        except OSError as e:
            raise CommunicationError(f"can't read from {self._peer()}: {e.strerror or e}") from None
        if not line:
            return None
        if not line.endswith(b"\n"):
            self.close()
            if len(line) > self.max_line_length:
                raise LineTooLong(self.max_line_length)
            raise CommunicationError(f"{self._peer()} closed the connection in the middle of a line")
        return decode_line(line[:-1])


_TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class JSONSSLConnection(JSONConnection):
    """A :class:`JSONConnection` over TLS (stdlib :mod:`ssl`).

    With ``ca_file`` the server's chain is verified against it and, unless
    ``check_hostname=False``, its certificate must name ``host``.  Without
    it nothing is verified (what ``ca_file=None`` meant in ``harp``); a
    warning says so.  ``tls_minimum="1.0"`` is the explicit opt-in needed
    for the shipped harpd, which speaks TLS 1.0 only; it also lowers the
    OpenSSL security level so that its SHA-1 suites are accepted.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ca_file: Optional[str] = None,
        *,
        check_hostname: bool = True,
        tls_minimum: str = "1.2",
        timeout: Optional[float] = 30.0,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        if tls_minimum not in _TLS_VERSIONS:
            raise ValueError(f"tls_minimum must be one of {', '.join(_TLS_VERSIONS)}, not {tls_minimum!r}")
        self.ca_file = ca_file
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = _TLS_VERSIONS[tls_minimum]
        if tls_minimum in ("1.0", "1.1"):
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        if ca_file is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            warnings.warn(
                f"JSONSSLConnection to {host}:{port} without ca_file: the server is not verified",
                stacklevel=2,
            )
        else:
            try:
                context.load_verify_locations(ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"cannot load CA file {ca_file!r}: {e}") from None
            context.check_hostname = check_hostname
        self._context = context
        super().__init__(host, port, timeout=timeout, max_line_length=max_line_length)

    def _secure(self, sock: socket.socket) -> socket.socket:
        try:
            return self._context.wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as e:
            raise TLSError(f"TLS with {self._peer()}: {e.verify_message}") from None
        except socket.timeout:
            raise HarpTimeout(f"TLS handshake with {self._peer()} timed out") from None
        except (ssl.SSLError, OSError) as e:
            raise TLSError(f"TLS with {self._peer()} failed: {e}") from None


# ------------------------------------------------------------- dispatcher


class HarpCaller:
    """A HarpCaller dispatcher (or txharp's harp-proxy).

    ``rpc.host(name, **options)``, ``rpc(name, **options)`` or ``rpc.name``
    give a :class:`RemoteServer`; ``rpc.job(job_id)`` a :class:`RemoteCall`
    for an existing job.  ``timeout`` and ``wait_timeout`` bound the
    blocking calls (see the module's documentation).
    """

    def __init__(
        self,
        host: str,
        port: int = DISPATCHER_PORT,
        *,
        timeout: float = 30.0,
        wait_timeout: Optional[float] = None,
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._wait_timeout = wait_timeout
        self._caller = _caller.HarpCaller(host, port, timeout=timeout)

    def __repr__(self) -> str:
        return f"<txharp.sync.HarpCaller {self._host}:{self._port}>"

    def job(self, job_id: str) -> "RemoteCall":
        """An existing job, by its ID (nothing is sent until it is asked something)."""
        return RemoteCall(self, job_id)

    def host(
        self,
        host: str,
        *,
        queue: Optional[Mapping[str, Any]] = None,
        concurrency: Optional[int] = None,
        timeout: Optional[float] = None,
        max_exec_time: Optional[float] = None,
        info: Any = None,
    ) -> "RemoteServer":
        """``host`` as registered at the dispatcher, with the options its calls carry.

        ``queue`` (a dict naming a queue) and ``concurrency`` make calls
        wait in that queue; ``timeout`` and ``max_exec_time`` are the jobs'
        time limits at the dispatcher, in seconds; ``info`` is opaque JSON
        returned by :meth:`RemoteCall.info`.
        """
        server = RemoteServer(self, host)
        return server(
            queue=queue, concurrency=concurrency, timeout=timeout, max_exec_time=max_exec_time, info=info
        )

    #: ``rpc("web01", queue=...)`` is ``rpc.host("web01", queue=...)``, as
    #: ``harp``'s synopsis writes it.
    __call__ = host

    def __getattr__(self, host: str) -> "RemoteServer":
        if host.startswith("_"):
            raise AttributeError(host)
        return self.host(host)

    def connect(self) -> JSONConnection:
        """A raw connection to the dispatcher, for one request of your own."""
        return JSONConnection(self._host, self._port, timeout=self._timeout)

    def request(self, req: Mapping[str, Any]) -> Any:
        """Send one raw request and return the dispatcher's (first) reply line."""
        with self.connect() as conn:
            conn.send(req)
            response = conn.receive()
        if response is None:
            raise CommunicationError(f"dispatcher {self._host}:{self._port} closed the connection without a reply")
        return response


class RemoteServer:
    """A host at the dispatcher and the options its calls carry.

    Attributes are :class:`RemoteProcedure`\\ s (``server["name"]`` reaches any
    name); calling the server with options changes them and returns it;
    ``str(server)`` is the host name.
    """

    def __init__(self, dispatcher: HarpCaller, hostname: str) -> None:
        self._dispatcher = dispatcher
        self._hostname = hostname
        self._server = dispatcher._caller.host(hostname)

    def __call__(self, **options: Any) -> "RemoteServer":
        """Change the given options (``queue``, ``concurrency``, ``timeout``,
        ``max_exec_time``, ``info``; None clears one); return this server."""
        self._server(**options)
        return self

    def __getattr__(self, procedure: str) -> "RemoteProcedure":
        if procedure.startswith("_"):
            raise AttributeError(procedure)
        return RemoteProcedure(self._dispatcher, self, procedure)

    def __getitem__(self, procedure: str) -> "RemoteProcedure":
        return RemoteProcedure(self._dispatcher, self, procedure)

    def __str__(self) -> str:
        return self._hostname

    def __repr__(self) -> str:
        return f"<txharp.sync.RemoteServer {self._hostname}>"


class RemoteProcedure:
    """A procedure on a host; calling it submits a job and returns its :class:`RemoteCall`."""

    def __init__(self, dispatcher: HarpCaller, server: RemoteServer, procedure: str) -> None:
        self._dispatcher = dispatcher
        self._server = server
        self._procedure = procedure

    def procedure(self) -> str:
        """The procedure's name."""
        return self._procedure

    def host(self) -> str:
        """The host it will be called on."""
        return str(self._server)

    def __call__(self, *args: Any, **kwargs: Any) -> "RemoteCall":
        """Submit the call (positional *or* named arguments) and return the job.

        Raises :class:`HarpException` when both kinds of arguments are
        given, :class:`~txharp.errors.EncodingError` for values JSON cannot
        carry, :class:`RemoteError` if the dispatcher refuses the call.
        """
        submit = self._server._server[self._procedure]
        job = _block(
            self._dispatcher._timeout,
            f"submitting {self._procedure} on {self.host()}",
            submit,
            *args,
            **kwargs,
        )
        return RemoteCall(self._dispatcher, job.id())

    def __repr__(self) -> str:
        return f"<txharp.sync.RemoteProcedure {self.host()}:{self._procedure}()>"


class RemoteCall:
    """A job at the dispatcher: its end result, its stream, its metadata, cancelling it.

    Only what cannot change any more is cached: the job's end once known
    (from :meth:`result`, :meth:`get` or the end of a stream) and the
    metadata once the job has ended.
    """

    class StreamIterator(_StreamIterator):
        """The packets of a job (data, or ``(number, data)`` when numbered).

        Reaching the end records the job's end result, so :meth:`RemoteCall.result`
        afterwards needs no request.  The job's own failure is not raised here
        (ask :meth:`RemoteCall.get`); communication failures and timeouts are.
        """

    def __init__(self, dispatcher: HarpCaller, job_id: str) -> None:
        self.dispatcher = dispatcher
        self.job_id = job_id
        self._call = dispatcher._caller.job(job_id)

    def __repr__(self) -> str:
        return f'<txharp.sync.RemoteCall "{self.job_id}">'

    def id(self) -> str:
        """The job's ID, to find the job again later (:meth:`HarpCaller.job`)."""
        return self.job_id

    def _bound(self, wait: bool, timeout: Optional[float]) -> Optional[float]:
        if timeout is not None:
            return timeout
        return self.dispatcher._wait_timeout if wait else self.dispatcher._timeout

    # -- end result

    def result(self, wait: bool = False, *, timeout: Optional[float] = None) -> Any:
        """The job's value, :data:`CALL_NOT_FINISHED`, :data:`CALL_CANCELLED`, or
        the :class:`RemoteException` / :class:`RemoteError` it ended with (returned,
        not raised).

        ``wait=True`` waits for the job's end.  Communication failures (which say
        nothing about the job) are raised: :class:`CommunicationError`,
        :class:`~txharp.errors.HarpTimeout`.
        """
        bound = self._bound(wait, timeout)
        return _block(bound, f"result of job {self.job_id}", self._call.result, wait, timeout=timeout)

    def get(self, wait: bool = True, *, timeout: Optional[float] = None) -> Any:
        """The job's value, waiting for its end unless ``wait=False``
        (then :data:`CALL_NOT_FINISHED` if it still runs).

        Raises :class:`RemoteException`, :class:`RemoteError`,
        :class:`CancelledException` or :class:`CommunicationError`.
        """
        bound = self._bound(wait, timeout)
        return _block(bound, f"result of job {self.job_id}", self._call.get, wait, timeout=timeout)

    def cancel(self) -> bool:
        """Stop the job; True if it was queued or running, False if it had ended."""
        return bool(_block(self.dispatcher._timeout, f"cancelling job {self.job_id}", self._call.cancel))

    # -- metadata

    def status(self) -> JobStatus:
        """All the metadata in one request: host, procedure, args, times, info."""
        status: JobStatus = _block(self.dispatcher._timeout, f"status of job {self.job_id}", self._call.status)
        return status

    def host(self) -> str:
        """The host the job runs on."""
        return self.status().host

    def procedure(self) -> str:
        """The procedure called."""
        return self.status().procedure

    def args(self) -> Union[List[Any], Dict[str, Any]]:
        """The call's arguments: a list, or a dict of named arguments."""
        return self.status().args

    def submit_time(self) -> int:
        """When the job was submitted (Unix time)."""
        return self.status().submit_time

    def start_time(self) -> Optional[int]:
        """When the job started (Unix time); None while it waits in its queue."""
        return self.status().start_time

    def end_time(self) -> Optional[int]:
        """When the job ended (Unix time); None while it runs."""
        return self.status().end_time

    def info(self) -> Any:
        """The ``info`` given when the job was submitted (None if none was)."""
        return self.status().info

    # -- streams

    def follow(
        self,
        since: Optional[int] = None,
        recent: Optional[int] = None,
        numbered: bool = False,
        *,
        timeout: Optional[float] = None,
    ) -> "RemoteCall.StreamIterator":
        """Iterate over the job's packets as they come, until the job ends.

        ``since=N`` starts at packet N (0: from the beginning), ``recent=N``
        with the last N recorded packets; neither gives only new packets.
        Each item waits at most ``timeout`` (default: the caller's
        ``wait_timeout``).
        """
        return self._packets(self._call.follow, True, f"following job {self.job_id}",
                             since, recent, numbered, timeout)

    def stream(
        self,
        since: Optional[int] = None,
        recent: Optional[int] = None,
        numbered: bool = False,
        *,
        timeout: Optional[float] = None,
    ) -> "RemoteCall.StreamIterator":
        """Iterate over the packets recorded so far (default: all), without
        waiting for the job.  Each item waits at most ``timeout`` (default:
        the caller's ``timeout``)."""
        return self._packets(self._call.stream, False, f"reading the stream of job {self.job_id}",
                             since, recent, numbered, timeout)

    def _packets(
        self,
        open_stream: Callable[..., Any],
        wait: bool,
        what: str,
        since: Optional[int],
        recent: Optional[int],
        numbered: bool,
        timeout: Optional[float],
    ) -> "RemoteCall.StreamIterator":
        """Open a stream (``follow`` or ``stream`` of the Deferred job) and
        iterate over it, each item bounded as ``wait`` says."""
        bound = self._bound(wait, timeout)
        stream = _block(self.dispatcher._timeout, what, open_stream, since, recent, numbered, timeout=bound)
        return RemoteCall.StreamIterator(stream, bound, what)


# ------------------------------------------------------------------ harpd


class HarpStreamIterator(_StreamIterator):
    """The packets of a streaming harpd procedure; the last item is a :class:`Result`.

    A failure of the call (:class:`RemoteException`, :class:`RemoteError`,
    :class:`CommunicationError`) is raised from ``next()`` after the packets
    that came before it.
    """


class HarpServer:
    """A harpd daemon called directly, over TLS: attributes are :class:`HarpProcedure`\\ s.

    Trust: with ``ca_file`` the chain is verified and must name ``host``
    (unless ``check_hostname=False``); ``pins`` accepts leaf certificates by
    SHA-256 fingerprint; with neither nothing is verified, as ``ca_file=None``
    meant in ``harp`` (a warning is logged).  ``tls_minimum="1.0"`` is the
    opt-in the shipped harpd needs.  ``timeout`` bounds each blocking call
    (see the module's documentation); ``connect_timeout`` the connection
    and TLS handshake.
    """

    def __init__(
        self,
        host: str,
        user: str,
        password: str,
        port: int = HARPD_PORT,
        ca_file: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        connect_timeout: float = 30.0,
        pins: Iterable[str] = (),
        check_hostname: bool = True,
        tls_minimum: str = "1.2",
    ) -> None:
        self._timeout = timeout
        self._peer = f"harpd at [{host}]:{port}" if ":" in host else f"harpd at {host}:{port}"
        self._user = user
        self._server = _server.HarpServer(
            host,
            user,
            password,
            port,
            ca_file,
            pins=pins,
            check_hostname=check_hostname,
            tls_minimum=tls_minimum,
            connect_timeout=connect_timeout,
            timeout=timeout,
        )

    def __getattr__(self, procedure: str) -> "HarpProcedure":
        if procedure.startswith("_"):
            raise AttributeError(procedure)
        return HarpProcedure(self, procedure)

    def __getitem__(self, procedure: str) -> "HarpProcedure":
        return HarpProcedure(self, procedure)

    def __repr__(self) -> str:
        return f"<txharp.sync.HarpServer {self._user} at {self._peer}>"


class HarpProcedure:
    """A procedure of one harpd: call it with positional *or* named arguments."""

    def __init__(self, server: HarpServer, name: str) -> None:
        self._server = server
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the procedure and return its value, or for a streaming procedure a
        :class:`HarpStreamIterator` whose last item is a :class:`Result`.

        Raises :class:`RemoteException` (the procedure raised),
        :class:`RemoteError` (harpd refused or broke the call),
        :class:`CommunicationError` (including ``TLSError`` and ``HarpTimeout``).
        """
        bound = self._server._timeout
        what = f"calling {self._name} on {self._server._peer}"
        outcome = _block(bound, what, self._server._server[self._name], *args, **kwargs)
        if isinstance(outcome, MessageStream):
            return HarpStreamIterator(outcome, bound, what)
        return outcome

    def __repr__(self) -> str:
        return f"<txharp.sync.HarpProcedure {self._name} of {self._server!r}>"
