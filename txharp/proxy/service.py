"""``harp-proxy`` as a Twisted service: store, hosts, relay, listeners, timers, admin socket.

Start-up order: the data directory is created (mode 0700) if missing, the
job store is opened and the jobs a previous run left unfinished are ended
as ``missing_result``, the hosts registry is loaded once, and only then do
the listeners open (so no request is ever served by a half-started proxy).
A failure on the way is logged and stops the reactor.

Clean shutdown: the listeners and the admin socket close first, then every
job still queued or running ends with the error ``shutdown`` ("dispatcher
shut down"; the daemon connections are closed), and the store is closed
once those ends have committed.  A proxy killed without a clean shutdown
leaves such jobs to become ``missing_result`` at its next start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from txharp.proxy.hosts import HostRefreshService, HostRegistry
from txharp.proxy.jobs import JobManager, Limits
from txharp.proxy.protocol import DispatcherFactory
from txharp.proxy.relay import HarpdRelay
from txharp.proxy.store import SQLiteJobStore
from txharp.tls import ClientTLSPolicy, load_pinned_fingerprints

__all__ = ["DEFAULT_LISTEN", "default_data_dir", "ProxyConfig", "ProxyService", "STORE_FILE"]

log = Logger(namespace="txharp.proxy.service")

#: Where the proxy listens unless told otherwise: loopback only.
DEFAULT_LISTEN = "tcp:3502:interface=127.0.0.1"

#: The job store's file name inside the data directory.
STORE_FILE = "jobs.sqlite3"


#: Connections the kernel may hold for the proxy before it accepts them.
#: Twisted's default, 50, overflows as soon as a few dozen clients connect
#: at once, and every overflow costs a client a SYN retransmit (1 s).
LISTEN_BACKLOG = 1024


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """An endpoint description with a ``backlog`` of ``backlog`` unless it names one."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "unix", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


def default_data_dir() -> str:
    """``$XDG_STATE_HOME/harp-proxy``, i.e. ``~/.local/state/harp-proxy`` by default."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "harp-proxy")


@dataclass
class ProxyConfig:
    """Everything ``harp-proxy`` is configured with (see :mod:`txharp.proxy.tap`).

    Times are in seconds; ``max_age`` None keeps ended jobs for ever.
    """

    listen: List[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    hosts_file: Optional[str] = None
    hosts_script: Optional[str] = None
    hosts_refresh: Optional[float] = None
    data_dir: str = field(default_factory=default_data_dir)
    default_timeout: float = 600.0
    max_exec_time: float = 600.0
    max_age: Optional[float] = 30 * 24 * 3600.0
    prune_interval: float = 3600.0
    ca_file: Optional[str] = None
    known_certs: Optional[str] = None
    tls_minimum: str = "1.2"
    admin_socket: Optional[str] = None
    durability: str = "normal"

    def tls_policy(self) -> ClientTLSPolicy:
        """Trust a daemon that is CA-valid (name checked) or whose certificate is listed."""
        pins = load_pinned_fingerprints(self.known_certs) if self.known_certs else frozenset()
        return ClientTLSPolicy(self.ca_file, pins, True, self.tls_minimum)


class ProxyService(MultiService):
    """The whole proxy; its children (listeners, timers, admin) start once it is ready.

    :param reactor: the only reactor used, for time, connections, threads
        and processes
    """

    def __init__(self, config: ProxyConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.store = SQLiteJobStore(
            os.path.join(config.data_dir, STORE_FILE), reactor=reactor, durability=config.durability
        )
        self.hosts = HostRegistry(config.hosts_file, config.hosts_script, reactor=reactor)
        self.relay = HarpdRelay(self.hosts, config.tls_policy(), reactor)
        self.manager = JobManager(
            self.store, self.relay, reactor, Limits(config.default_timeout, config.max_exec_time)
        )
        self.factory = DispatcherFactory(self.manager, reactor)
        self._endpoints = [
            serverFromString(reactor, with_backlog(description)) for description in config.listen
        ]
        #: The dispatcher's listening ports, once :attr:`ready` has fired.
        self.ports: List[IListeningPort] = []
        if config.hosts_refresh:
            HostRefreshService(self.hosts, config.hosts_refresh, clock=reactor).setServiceParent(self)
        if config.max_age:
            pruner = TimerService(config.prune_interval, self.prune)
            pruner.clock = reactor
            pruner.setServiceParent(self)
        if config.admin_socket:
            from txharp.proxy.admin import admin_service

            admin_service(self, config.admin_socket).setServiceParent(self)
        #: Fires with True once the proxy serves requests, False if it could not start.
        self.ready: Optional[Deferred[bool]] = None
        self._children_running = False

    def prune(self) -> "Deferred[Any]":
        """Delete jobs that ended more than ``max_age`` ago (logged, never raises)."""
        assert self.config.max_age
        return self.manager.prune(self.config.max_age).addErrback(
            lambda failure: log.failure("pruning old jobs failed", failure)
        )

    # ------------------------------------------------------------ life

    def privilegedStartService(self) -> None:
        """Nothing binds before the store is ready (see :meth:`startService`), so
        ``twistd --uid`` cannot be combined with a privileged port."""

    def startService(self) -> None:
        Service.startService(self)
        self.ready = Deferred.fromCoroutine(self._start())
        self.ready.addErrback(self._start_failed)

    async def _start(self) -> bool:
        config = self.config
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        await self.store.open()
        await self.manager.recover()
        if not await self.hosts.refresh():
            log.warn("starting with an empty hosts registry: every call will end as unknown_host")
        if not self.running:
            return False
        for endpoint in self._endpoints:
            self.ports.append(await endpoint.listen(self.factory))
        self._children_running = True
        for child in self:
            child.privilegedStartService()
            child.startService()
        log.info(
            "harp-proxy ready: listening on {listen}, jobs in {data_dir}",
            listen=", ".join(config.listen), data_dir=config.data_dir,
        )
        return True

    def _start_failed(self, failure: Failure) -> bool:
        """Log why, and stop the reactor: a proxy that cannot serve should not linger."""
        log.failure("harp-proxy cannot start", failure)
        if self.reactor.running:
            self.reactor.stop()
        return False

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.ready is not None and not self.ready.called:
            await self.ready
        ports, self.ports = self.ports, []
        for port in ports:
            await maybeDeferred(port.stopListening)
        if self._children_running:
            self._children_running = False
            for child in reversed(list(self)):
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    log.failure("stopping {service!r} failed", service=child)
        await self.manager.shutdown()
        await self.store.close()
