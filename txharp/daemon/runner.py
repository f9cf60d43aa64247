"""Running calls: the runner interface, the child-process runner and the call limiter.

A runner turns a :class:`Call` into events: ``on_stream(packet)`` for each
stream packet, then the returned Deferred fires with exactly one final reply
(:class:`~txharp.wire.ResultReply`, :class:`~txharp.wire.ExceptionReply` or
:class:`~txharp.wire.ErrorReply`).  It never errbacks, except with
``CancelledError`` when the caller cancels it (the client went away), which
stops the call.  :class:`ProcessRunner` isolates each call in a process;
:class:`InProcessRunner` runs trusted (Deferred-returning) procedures inside
the daemon, for speed.

:class:`ProcessRunner` starts ``python -m txharp.daemon.child`` for each call
(see that module for the pipe protocol).  The child puts itself in a new
process group; whenever a call ends early — its ``timeout`` expires, the
client disconnects, the daemon stops, the child breaks the protocol — the
runner sends SIGTERM to the whole group and SIGKILL ``grace`` seconds later.
After a normal end it does the same to whatever the procedure left running
in that group, so nothing it started outlives the call (a process that
opened a session of its own has left on purpose; the call does not wait for
it).  A child that dies without a final line gives a ``system_error``.

:class:`CallLimiter` bounds how many calls run at once; calls over the
bound wait in a bounded queue, and calls over *that* are refused.
"""
from __future__ import annotations

import grp
import os
import pwd
import signal
import site
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Union
from typing import Protocol as TypingProtocol

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

import txharp.daemon
from txharp.daemon.child import EVENTS_FD, Identity, Job, describe_exception
from txharp.daemon.procedures import (
    GroupSpec,
    ProcedureRegistry,
    ProcedureSpec,
    UserSpec,
    run_procedure,
)
from txharp.errors import EncodingError, MalformedMessage
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH, decode_line, encode_line
from txharp.wire.daemon import Acknowledgement, DaemonFinal, DaemonReplyReader, StreamItem
from txharp.wire.dispatcher import Arguments
from txharp.wire.outcomes import ErrorReply, ResultReply

__all__ = [
    "SHUTDOWN_MESSAGE",
    "Call",
    "CallRunner",
    "ChildSettings",
    "ProcessRunner",
    "InProcessRunner",
    "Overloaded",
    "CallLimiter",
    "resolve_identity",
    "resolve_identities",
]

_log = Logger()

#: The message of the ``shutdown`` error, as the original daemon words it.
SHUTDOWN_MESSAGE = "service is shutting down"
#: The message of the ``timeout`` error for a procedure's own time limit.
TIMEOUT_MESSAGE = "maximum execution time exceeded"
# Longest line of a procedure's stdout/stderr copied to the log.
_MAX_LOGGED_OUTPUT = 2000
#: Most bytes read from each pipe of an exited child when its pipes are closed.
_DRAIN_LIMIT = 1 << 20


@dataclass(frozen=True)
class Call:
    """One authenticated call to an existing procedure."""

    spec: ProcedureSpec
    arguments: Arguments
    user: str


class CallRunner(TypingProtocol):
    """Something that runs calls (see the module docstring for the contract)."""

    def run(
        self,
        call: Call,
        on_stream: Callable[[Any], None],
        consumer: Optional[IConsumer] = None,
    ) -> "Deferred[DaemonFinal]":
        """Start ``call``.  ``consumer``, when given, gets a push producer
        registered so that a slow client slows the procedure down."""

    def stop(self) -> "Deferred[None]":
        """End every running call with a ``shutdown`` error; fire when all
        their resources (processes) are gone."""


# -- identities ---------------------------------------------------------------


def _user_entry(user: UserSpec) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"unknown user {user!r}") from None


def _group_id(group: Union[str, int]) -> int:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"unknown group {group!r}") from None


def resolve_identity(user: Optional[UserSpec], group: Optional[GroupSpec]) -> Optional[Identity]:
    """Numeric ids for a user and group given by name or number.

    No group: the user's primary group and its supplementary groups.  A
    group or list of groups: the first is primary, all are the groups.  No
    user but a group: stay the current user, switch groups only.  Neither:
    None.  Unknown names raise ValueError.  Looks names up now (blocking):
    call at startup.
    """
    if user is None and group is None:
        return None
    if user is None:
        uid = os.geteuid()
        default_gid, default_groups = os.getegid(), os.getgroups()
    else:
        entry = _user_entry(user)
        uid = entry.pw_uid
        default_gid = entry.pw_gid
        default_groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    if group is None:
        return Identity(uid, default_gid, list(default_groups))
    groups = list(group) if isinstance(group, (list, tuple)) else [group]
    gids = [_group_id(g) for g in groups]
    return Identity(uid, gids[0], gids)


def resolve_identities(
    registry: ProcedureRegistry,
    default_user: Optional[UserSpec] = None,
    default_group: Optional[GroupSpec] = None,
) -> Dict[str, Optional[Identity]]:
    """The identity each procedure runs as: its own ``uid``/``gid``, else the
    defaults.  Raises ValueError naming the procedure for an unknown name."""
    identities = {}
    for name, spec in registry.items():
        user = spec.uid if spec.uid is not None else default_user
        group = spec.gid if spec.gid is not None else default_group
        if spec.uid is not None and spec.gid is None:
            group = None  # a procedure's own user brings its own groups
        try:
            identities[name] = resolve_identity(user, group)
        except ValueError as e:
            raise ValueError(f"procedure {name!r}: {e}") from None
    return identities


# -- the child-process runner -------------------------------------------------


@dataclass(frozen=True)
class ChildSettings:
    """What every child needs besides the call: the module and its environment."""

    module: str
    prepend: Sequence[str] = ()
    append: Sequence[str] = ()
    logging: Optional[Dict[str, Any]] = None
    identities: Mapping[str, Optional[Identity]] = field(default_factory=dict)


def _child_environment() -> Dict[str, str]:
    """The daemon's environment, plus the directory holding txharp on
    ``PYTHONPATH`` unless the interpreter finds it in site-packages anyway."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(txharp.daemon.__file__))))
    site_dirs = {os.path.realpath(d) for d in site.getsitepackages() + [site.getusersitepackages()]}
    if os.path.realpath(root) not in site_dirs:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _describe_exit(reason: Failure) -> str:
    if reason.check(ProcessTerminated):
        error = reason.value
        if error.signal is not None:
            return f"killed by signal {error.signal}"
        return f"exited with status {error.exitCode}"
    return "exited"


@implementer(IPushProducer)
class _ChildProcess(ProcessProtocol):
    """One call's child: feeds the job, reads events, kills the group when due."""

    def __init__(
        self,
        runner: "ProcessRunner",
        call: Call,
        job: Job,
        on_stream: Callable[[Any], None],
        consumer: Optional[IConsumer],
    ) -> None:
        self._runner = runner
        self._call = call
        self._job = job
        self._on_stream = on_stream
        self._consumer = consumer
        self._reader = DaemonReplyReader()
        self._buffer = b""
        self.outcome: Deferred[DaemonFinal] = Deferred(lambda _: self._cancelled())
        self._finished = False
        self._exited: Optional[Failure] = None
        self._events_closed = False
        self._terminating = False
        self._killed = False
        self._ended = False
        self._pgid = 0  # the child's pid, which its setsid makes its group id
        self._end_waiters: List[Deferred[None]] = []
        self._timers: Dict[str, IDelayedCall] = {}

    # -- process events

    def connectionMade(self) -> None:
        self._pgid = self.transport.pid
        self.transport.write(encode_line(self._job.to_json()))
        self.transport.closeStdin()
        if self._consumer is not None:
            self._consumer.registerProducer(self, True)
        if self._call.spec.timeout is not None:
            self._later("timeout", self._call.spec.timeout, self._timed_out)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == EVENTS_FD:
            self._events_received(data)
        else:
            for line in data.decode("utf-8", "replace").splitlines():
                _log.info(
                    "{procedure} (pid {pid}) {stream}: {line}",
                    procedure=self._call.spec.name,
                    pid=self.transport.pid,
                    stream="stdout" if childFD == 1 else "stderr",
                    line=line[:_MAX_LOGGED_OUTPUT],
                )

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == EVENTS_FD:
            self._events_closed = True
            self._check_silent_death()

    def processExited(self, reason: Failure) -> None:
        self._exited = reason
        # What the child wrote before exiting may still wait in its pipes
        # (reading paused for a slow client): at most a pipe buffer, so read
        # it now whatever the client's pace, before _kill closes the pipes.
        self.transport.resumeProducing()
        self._check_silent_death()
        if self._killed:
            self._close_pipes()
        else:
            self.terminate()  # whatever the procedure started and left behind goes too

    def processEnded(self, reason: Failure) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._signal_group(signal.SIGKILL)
        self._ended = True
        self._runner._forget(self)
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- IPushProducer: flow control from the client's connection

    def pauseProducing(self) -> None:
        if not self._finished and self._exited is None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The client connection is gone; its protocol cancels the call."""

    # -- reading the child's messages

    def _events_received(self, data: bytes) -> None:
        self._buffer += data
        limit = self._runner.max_message_length
        while not self._finished:
            line, newline, rest = self._buffer.partition(b"\n")
            if len(line) > limit:
                self._abort("invalid_message", f"a message from the procedure exceeds {limit} bytes")
                return
            if not newline:
                return
            self._buffer = rest
            try:
                message = self._reader.feed(decode_line(line))
            except MalformedMessage as e:
                self._abort("system_error", f"the procedure process broke the protocol: {e}")
                return
            self._message_received(message)

    def _message_received(self, message: Any) -> None:
        if isinstance(message, Acknowledgement):
            if message.stream_result != self._call.spec.streaming:
                self._abort(
                    "procedure_loading_error",
                    f"procedure {self._call.spec.name!r} changed since the daemon started",
                )
        elif isinstance(message, StreamItem):
            self._on_stream(message.data)
        else:
            self._finish(message)
            # The child exits right after its final line; one that lingers is killed.
            self._later("linger", self._runner.grace, self.terminate)

    def _check_silent_death(self) -> None:
        if self._exited is not None and self._events_closed and not self._finished:
            self._finish(
                ErrorReply(
                    "system_error",
                    f"the procedure process {_describe_exit(self._exited)} without a result",
                )
            )

    # -- ending

    def _finish(self, final: DaemonFinal) -> None:
        """Deliver the outcome (once) and detach from the client's connection."""
        if self._finished:
            return
        self._finished = True
        self._release_consumer()
        self.outcome.callback(final)

    def _release_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.unregisterProducer()
        if not self._ended:
            self.transport.resumeProducing()

    def _abort(self, error_type: str, message: str) -> None:
        self._finish(ErrorReply(error_type, message))
        self.terminate()

    def _timed_out(self) -> None:
        self._abort("timeout", TIMEOUT_MESSAGE)

    def _cancelled(self) -> None:
        self._finished = True
        self._release_consumer()
        self.terminate()

    def shutdown(self) -> "Deferred[None]":
        """End the call with a ``shutdown`` error; fire when the process is gone."""
        self._abort("shutdown", SHUTDOWN_MESSAGE)
        return self.when_ended()

    def when_ended(self) -> "Deferred[None]":
        if self._ended:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._end_waiters.append(waiter)
        return waiter

    def terminate(self) -> None:
        """SIGTERM to the process group now, SIGKILL after the grace period."""
        if self._terminating or self._ended:
            return
        self._terminating = True
        self._signal_group(signal.SIGTERM)
        self._later("kill", self._runner.grace, self._kill)

    def _kill(self) -> None:
        self._killed = True
        self._signal_group(signal.SIGKILL)
        if self._exited is not None:
            self._close_pipes()

    def _close_pipes(self) -> None:
        """Stop reading: a process that left the group (with setsid) may hold
        the pipes open for ever, and the call must still end.

        What the pipes hold already is read first: a busy daemon reads a
        pipe 8 KiB per reactor turn, so a child that wrote its last packets
        and its final line before exiting may not have been read completely
        ``grace`` seconds later.  At most :data:`_DRAIN_LIMIT` bytes per
        pipe (a pipe buffer is 64 KiB), so a process still writing cannot
        hold the call.
        """
        for fd in (1, 2, EVENTS_FD):
            self._drain(fd)
            self.transport.closeChildFD(fd)

    def _drain(self, fd: int) -> None:
        reader = getattr(self.transport, "pipes", {}).get(fd)
        if reader is None:
            return
        left = _DRAIN_LIMIT
        while left > 0 and not (fd == EVENTS_FD and self._finished):
            try:
                data = os.read(reader.fileno(), min(left, 65536))
            except OSError:  # EAGAIN: nothing more for now; or the pipe is gone
                return
            if not data:
                return
            left -= len(data)
            self.childDataReceived(fd, data)

    def _signal_group(self, signum: int) -> None:
        if self._pgid <= 0:
            return  # never killpg(0): that is the daemon's own group
        try:
            os.killpg(self._pgid, signum)
        except OSError:
            pass  # no such group (yet: the child calls setsid first thing)
        if self._exited is None:
            try:
                self.transport.signalProcess(signum)
            except (ProcessExitedAlready, OSError):
                pass

    def _later(self, name: str, delay: float, action: Callable[[], None]) -> None:
        if not self._ended:
            self._timers[name] = self._runner.clock.callLater(delay, action)


class ProcessRunner:
    """Runs each call in a child process (see the module docstring).

    :param reactor: spawns the children
    :param settings: the procedures module, search path, logging and
        identities every child gets
    :param clock: for time limits; the reactor by default
    :param grace: seconds between SIGTERM and SIGKILL
    :param max_message_length: longest line a child may send
    :param switch_identity: whether children change user/group; by default
        when the daemon runs as root at the time of the call (twistd may
        drop privileges after start-up)
    :param executable: the Python interpreter children run
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        settings: ChildSettings,
        *,
        clock: Optional[IReactorTime] = None,
        grace: float = 2.0,
        max_message_length: int = DEFAULT_MAX_LINE_LENGTH,
        switch_identity: Optional[bool] = None,
        executable: str = sys.executable,
    ) -> None:
        self._reactor = reactor
        self.settings = settings
        self.clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self.grace = grace
        self.max_message_length = max_message_length
        self._switch_identity = switch_identity
        self._executable = executable
        self._env = _child_environment()
        self._live: Set[_ChildProcess] = set()

    @property
    def running(self) -> int:
        """How many child processes exist (including ones being killed)."""
        return len(self._live)

    def _job(self, call: Call) -> Job:
        settings = self.settings
        switch = self._switch_identity
        if switch is None:
            switch = os.geteuid() == 0
        identity = settings.identities.get(call.spec.name) if switch else None
        return Job(
            module=settings.module,
            procedure=call.spec.name,
            arguments=call.arguments,
            prepend=list(settings.prepend),
            append=list(settings.append),
            identity=identity,
            logging=settings.logging,
        )

    def run(
        self,
        call: Call,
        on_stream: Callable[[Any], None],
        consumer: Optional[IConsumer] = None,
    ) -> "Deferred[DaemonFinal]":
        child = _ChildProcess(self, call, self._job(call), on_stream, consumer)
        try:
            self._reactor.spawnProcess(
                child,
                self._executable,
                [self._executable, "-m", "txharp.daemon.child"],
                env=self._env,
                childFDs={0: "w", 1: "r", 2: "r", EVENTS_FD: "r"},
            )
        except OSError as e:
            return succeed(ErrorReply("system_error", f"cannot start the procedure process: {e}"))
        self._live.add(child)
        return child.outcome

    def _forget(self, child: _ChildProcess) -> None:
        self._live.discard(child)

    def stop(self) -> "Deferred[None]":
        children = list(self._live)
        d = gatherResults([child.shutdown() for child in children])
        return d.addCallback(lambda _: None)


# -- the in-process runner ---------------------------------------------------


def _checked(value: Any) -> Any:
    """``value`` if it can travel as JSON, else EncodingError (as a child would report)."""
    encode_line(value)
    return value


class _InProcessCall:
    """One call run by :class:`InProcessRunner`: its outcome, and how to stop it."""

    def __init__(self, runner: "InProcessRunner", call: Call, on_stream: Callable[[Any], None]) -> None:
        self._runner = runner
        self.outcome: Deferred[DaemonFinal] = Deferred(lambda _: self._stop())
        self._work = maybeDeferred(
            run_procedure, call.spec.target, call.arguments, lambda p: on_stream(_checked(p))
        )
        if call.spec.timeout is not None:
            self._work.addTimeout(call.spec.timeout, runner.clock)
        self._work.addCallback(self._returned).addErrback(self._raised)
        self._work.addBoth(self.end)

    def _returned(self, value: Any) -> DaemonFinal:
        return ResultReply(_checked(value))

    def _raised(self, reason: Failure) -> Optional[DaemonFinal]:
        if reason.check(EncodingError):
            return ErrorReply("invalid_message", reason.getErrorMessage())
        if reason.check(DeferredTimeoutError):
            return ErrorReply("timeout", TIMEOUT_MESSAGE)
        if reason.check(CancelledError):
            return None  # stopped by end()
        return describe_exception(reason.value)

    def end(self, final: Optional[DaemonFinal]) -> None:
        """Deliver ``final`` (once) and stop the procedure's work if pending."""
        self._runner._live.discard(self)
        if final is not None and not self.outcome.called:
            self.outcome.callback(final)
        self._stop()

    def _stop(self) -> None:
        self._runner._live.discard(self)
        if not self._work.called:
            self._work.cancel()


class InProcessRunner:
    """Runs calls inside the daemon, on the reactor thread: fast, and not isolated.

    Meant for trusted procedures written for Twisted (a procedure may return
    a Deferred or be a coroutine function) and for benchmarks.  A procedure
    that blocks blocks the whole daemon; ``timeout`` cancels a procedure's
    Deferred but cannot interrupt code that does not return; ``uid``/``gid``
    are ignored.  Results and packets are checked the way a child checks
    them, so replies are the same as with :class:`ProcessRunner`.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._live: Set[_InProcessCall] = set()

    @property
    def running(self) -> int:
        return len(self._live)

    def run(
        self,
        call: Call,
        on_stream: Callable[[Any], None],
        consumer: Optional[IConsumer] = None,
    ) -> "Deferred[DaemonFinal]":
        running = _InProcessCall(self, call, on_stream)
        if not running.outcome.called:
            self._live.add(running)
        return running.outcome

    def stop(self) -> "Deferred[None]":
        for running in list(self._live):
            running.end(ErrorReply("shutdown", SHUTDOWN_MESSAGE))
        return succeed(None)


# -- concurrency --------------------------------------------------------------


class Overloaded(Exception):
    """Too many calls are running and waiting already."""


class CallLimiter:
    """At most ``max_running`` calls at once; up to ``max_waiting`` more wait.

    :meth:`acquire` gives a Deferred that fires when the call may start (at
    once when a slot is free), fails at once with :class:`Overloaded` when
    the queue is full, and can be cancelled to leave the queue.  Every
    successful acquire must be matched by one :meth:`release`.
    """

    def __init__(self, max_running: int, max_waiting: int) -> None:
        if max_running < 1 or max_waiting < 0:
            raise ValueError("max_running must be at least 1 and max_waiting at least 0")
        self._semaphore = DeferredSemaphore(max_running)
        self.max_waiting = max_waiting

    @property
    def running(self) -> int:
        return self._semaphore.limit - self._semaphore.tokens

    @property
    def waiting(self) -> int:
        return len(self._semaphore.waiting)

    def acquire(self) -> "Deferred[None]":
        if not self._semaphore.tokens and self.waiting >= self.max_waiting:
            return fail(Overloaded(f"{self.running} calls running and {self.waiting} waiting"))
        return self._semaphore.acquire().addCallback(lambda _: None)

    def release(self) -> None:
        self._semaphore.release()
