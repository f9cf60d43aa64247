"""The hosts registry: how to reach each harpd host the proxy relays to.

The format is the original dispatcher's: JSON lines, one host per line::

    {"hostname": "web01", "address": "10.0.0.5", "port": 4306,
     "credentials": {"user": "u", "password": "p"}}

(one line each; ``port`` may be left out for 4306).  Entries come from a
file (``--hosts FILE``), from the standard output of a script
(``--hosts-script CMD``), or both; :class:`HostRefreshService` reloads them
every ``--hosts-refresh`` seconds.

Choices made here:

* A bad line is reported with its number and skipped; the other lines
  still load.  A later line for the same hostname replaces an earlier one.
* With both sources, the script's entries override the file's for the same
  hostname; hosts in only one of them are kept.
* A refresh replaces the registry only if every source could be read: an
  unreadable file, or a script that exits non-zero, is killed by a signal,
  times out or writes too much, leaves the previous registry in place and
  is logged as an error.
* Hostnames are matched exactly, case included.
* Passwords are never logged: :class:`HostEntry` leaves them out of its
  ``repr``, and messages about bad lines never quote the line.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, Union

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from txharp.errors import MalformedMessage
from txharp.wire.codec import decode_line
from txharp.wire.daemon import DEFAULT_PORT

__all__ = [
    "HostEntry",
    "HostLineError",
    "HostSourceError",
    "parse_hosts",
    "HostRegistry",
    "HostRefreshService",
    "MAX_SCRIPT_OUTPUT",
]

log = Logger()

#: A hosts script writing more than this is killed and its output ignored.
MAX_SCRIPT_OUTPUT = 64 * 1024 * 1024

#: How much of a failed script's standard error goes into the log.
_STDERR_KEPT = 2048

#: Bad lines of one source logged one by one at each refresh; the rest are counted.
_BAD_LINES_LOGGED = 10


@dataclass(frozen=True)
class HostEntry:
    """Where host ``hostname``'s harpd listens and the credentials it takes."""

    hostname: str
    address: str
    port: int
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class HostLineError:
    """Line ``line`` (counted from 1) of a hosts source was skipped because of ``message``."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class HostSourceError(Exception):
    """A hosts source could not be read at all."""


#: What a source yields: its good entries and its bad lines.
_Parsed = Tuple[List[HostEntry], List[HostLineError]]


def _entry(value: Any) -> HostEntry:
    """Validate one decoded line; ValueError names the fault without quoting values."""
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    hostname, address = value.get("hostname"), value.get("address")
    if not isinstance(hostname, str) or not hostname:
        raise ValueError("hostname must be a non-empty string")
    if not isinstance(address, str) or not address:
        raise ValueError(f"host {hostname!r}: address must be a non-empty string")
    port = value.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"host {hostname!r}: port must be an integer from 1 to 65535")
    credentials = value.get("credentials")
    if (
        not isinstance(credentials, dict)
        or not isinstance(credentials.get("user"), str)
        or not isinstance(credentials.get("password"), str)
    ):
        raise ValueError(
            f"host {hostname!r}: credentials must be an object with string user and password"
        )
    return HostEntry(hostname, address, port, credentials["user"], credentials["password"])


def parse_hosts(data: bytes) -> _Parsed:
    """Parse a hosts registry: the good entries, and an error per bad line.

    Blank lines are skipped.  A hostname that appears again replaces its
    earlier entry (keeping the first one's place in the list).
    """
    entries: Dict[str, HostEntry] = {}
    errors: List[HostLineError] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = _entry(decode_line(line))
        except MalformedMessage as e:
            errors.append(HostLineError(number, e.message))
        except ValueError as e:
            errors.append(HostLineError(number, str(e)))
        else:
            entries[entry.hostname] = entry
    return list(entries.values()), errors


class _ScriptProcess(ProcessProtocol):
    """Collects a hosts script's output; ``done`` fires with its standard output.

    ``done`` fails with :class:`HostSourceError` if the script exits
    non-zero, dies of a signal, or is stopped with :meth:`stop`.
    """

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._stdout: List[bytes] = []
        self._size = 0
        self._stderr = b""
        self._stopped: Optional[str] = None

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_SCRIPT_OUTPUT:
            self.stop(f"wrote more than {MAX_SCRIPT_OUTPUT} bytes")
        else:
            self._stdout.append(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr += data[: _STDERR_KEPT - len(self._stderr)]

    def stop(self, why: str) -> None:
        """Kill the script and stop reading, so that a grandchild holding the
        pipes open cannot delay the end."""
        if self._stopped is None:
            self._stopped = why
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            self.transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        status = reason.value
        if self._stopped is None and isinstance(status, ProcessDone):
            self.done.callback(b"".join(self._stdout))
            return
        if self._stopped is not None:
            why = self._stopped
        elif isinstance(status, ProcessTerminated) and status.signal is not None:
            why = f"killed by signal {status.signal}"
        else:
            why = f"exited with status {getattr(status, 'exitCode', None)}"
        stderr = self._stderr.decode("utf-8", "replace").strip()
        self.done.errback(HostSourceError(why + (f"; stderr: {stderr}" if stderr else "")))


class HostRegistry:
    """The hosts the proxy knows, reloaded from a file and/or a script.

    :param hosts_file: path of a hosts file
    :param hosts_script: a command whose standard output is a hosts
        registry: a string runs with ``/bin/sh -c``, a sequence is an argv
        (the program looked up on ``PATH``); it inherits the environment
    :param script_timeout: seconds the script may run before it is killed
    :param reactor: provides ``spawnProcess``, ``callLater`` and the thread
        pool that reads the file; the global reactor by default

    The registry starts empty: call :meth:`refresh` (or start a
    :class:`HostRefreshService`) to load it.
    """

    def __init__(
        self,
        hosts_file: Optional[str] = None,
        hosts_script: Union[str, Sequence[str], None] = None,
        *,
        script_timeout: float = 30.0,
        reactor: Any = None,
    ) -> None:
        if hosts_file is None and hosts_script is None:
            raise ValueError("a hosts registry needs a hosts file, a hosts script or both")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._script_timeout = script_timeout
        self._hosts: Dict[str, HostEntry] = {}
        self._sources: List[Tuple[str, Callable[[], Awaitable[_Parsed]]]] = []
        if hosts_file is not None:
            self._sources.append((f"hosts file {hosts_file}", lambda: self._read_file(hosts_file)))
        if hosts_script is not None:
            argv = (
                ["/bin/sh", "-c", hosts_script]
                if isinstance(hosts_script, str)
                else list(hosts_script)
            )
            if not argv:
                raise ValueError("the hosts script's argv is empty")
            label = hosts_script if isinstance(hosts_script, str) else shlex.join(argv)
            self._sources.append((f"hosts script {label}", lambda: self._run_script(argv)))
        self._running = False
        self._waiting: List[Deferred[bool]] = []
        self._queued: List[Deferred[bool]] = []

    def lookup(self, hostname: str) -> Optional[HostEntry]:
        """The entry for ``hostname``, or None if the registry has none."""
        return self._hosts.get(hostname)

    def entries(self) -> List[HostEntry]:
        """Every known host."""
        return list(self._hosts.values())

    def refresh(self) -> "Deferred[bool]":
        """Reload the registry from its sources.

        Fires with True once the registry has been replaced, or False if a
        source failed (logged; the previous registry stays); it never
        fails.  A call made while a refresh runs starts another one after
        it, so that its result reflects the sources as they are now.
        """
        waiter: Deferred[bool] = Deferred()
        if self._running:
            self._queued.append(waiter)
        else:
            self._waiting.append(waiter)
            self._start()
        return waiter

    def _start(self) -> None:
        self._running = True
        Deferred.fromCoroutine(self._load()).addErrback(self._crashed).addCallback(self._loaded)

    def _crashed(self, reason: Failure) -> bool:
        log.failure("hosts refresh failed unexpectedly", reason)
        return False

    def _loaded(self, replaced: bool) -> None:
        waiting, self._waiting, self._queued = self._waiting, self._queued, []
        self._running = False
        if self._waiting:
            self._start()
        for waiter in waiting:
            waiter.callback(replaced)

    async def _load(self) -> bool:
        merged: Dict[str, HostEntry] = {}
        for source, read in self._sources:
            try:
                entries, errors = await read()
            except HostSourceError as e:
                log.error(
                    "cannot load the hosts registry from the {source}: {reason};"
                    " keeping the {count} hosts known",
                    source=source,
                    reason=str(e),
                    count=len(self._hosts),
                )
                return False
            for error in errors[:_BAD_LINES_LOGGED]:
                log.warn(
                    "{source}, line {line}: {problem}; line skipped",
                    source=source,
                    line=error.line,
                    problem=error.message,
                )
            if len(errors) > _BAD_LINES_LOGGED:
                log.warn(
                    "{source}: {count} more bad lines skipped",
                    source=source,
                    count=len(errors) - _BAD_LINES_LOGGED,
                )
            merged.update((entry.hostname, entry) for entry in entries)
        if merged != self._hosts:
            log.info("hosts registry loaded: {count} hosts", count=len(merged))
        self._hosts = merged
        return True

    def _read_file(self, path: str) -> "Deferred[_Parsed]":
        def read() -> _Parsed:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise HostSourceError(e.strerror or str(e)) from None
            return parse_hosts(data)

        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), read)

    async def _run_script(self, argv: List[str]) -> _Parsed:
        process = _ScriptProcess()
        try:
            self._reactor.spawnProcess(process, argv[0], argv, env=None)
        except OSError as e:
            raise HostSourceError(f"cannot start: {e.strerror or e}") from None
        timer = self._reactor.callLater(
            self._script_timeout, process.stop, f"timed out after {self._script_timeout} s"
        )
        try:
            output = await process.done
        finally:
            if timer.active():
                timer.cancel()
        return await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), parse_hosts, output
        )


class HostRefreshService(TimerService):
    """Refreshes a :class:`HostRegistry` when started, then every ``interval`` seconds.

    A refresh still running when the next is due delays it rather than
    overlapping it; stopping the service waits for a running refresh.

    :param clock: the time source, the global reactor by default
    """

    def __init__(
        self, registry: HostRegistry, interval: float, clock: Optional[IReactorTime] = None
    ) -> None:
        if not interval > 0:
            raise ValueError("the hosts refresh interval must be positive")
        super().__init__(interval, registry.refresh)
        self.clock = clock
