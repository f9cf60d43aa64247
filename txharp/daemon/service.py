"""The harpd daemon as a :mod:`twisted.application` service.

:func:`load_daemon` reads and checks everything the daemon needs — the
configuration, the logging configuration, the procedures module, the
identities procedures run as, the password database and the TLS
certificate — so that ``--test`` and a real start fail the same way, before
anything listens.  :class:`HarpDaemonService` then listens (TLS, on
``network.address``, 127.0.0.1 unless configured otherwise) and, when
stopped, refuses new connections, ends every call with a ``shutdown``
error, and fires once the connections are closed and every child process
is gone.
"""
from __future__ import annotations

import logging.config
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure

from txharp.daemon.auth import Authenticator, PasswordDatabase, database_from_config
from txharp.daemon.config import ConfigError, DaemonConfig, load_config, load_logging_config
from txharp.daemon.procedures import (
    ProcedureRegistry,
    extend_sys_path,
    load_procedures_module,
)
from txharp.daemon.protocol import HarpDaemonFactory
from txharp.daemon.runner import (
    CallLimiter,
    CallRunner,
    ChildSettings,
    InProcessRunner,
    ProcessRunner,
    resolve_identities,
)
from txharp.tls import server_tls_options
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH, encode_line

__all__ = ["DaemonSettings", "LoadedDaemon", "load_daemon", "HarpDaemonService"]

_log = Logger()

#: Connections the kernel may hold before the daemon accepts them (Twisted's
#: default of 50 overflows when a dispatcher starts many calls at once, and
#: each overflow costs the caller a SYN retransmit: one second).
LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class DaemonSettings:
    """Daemon settings that come from the command line, not the configuration file.

    :ivar max_calls: calls running at once (one child process each)
    :ivar max_waiting: calls waiting for a slot; more get ``overloaded``
    :ivar idle_timeout: seconds a client may take to send its request, a
        call may wait for a slot, and a client may take to read its replies
    :ivar max_line_length: longest request, and longest message of a child
    :ivar tls_minimum: lowest TLS version accepted (``"1.0"`` for the
        original dispatcher, which offers only TLS 1.0/1.1)
    :ivar kill_grace: seconds between SIGTERM and SIGKILL for a call's processes
    :ivar default_user: user (name or number) procedures without ``uid`` run as
    :ivar default_group: group procedures without ``gid`` run as
    :ivar in_process: run procedures inside the daemon
        (:class:`~txharp.daemon.runner.InProcessRunner`): fast, for trusted
        Twisted-aware procedures and benchmarks, with no isolation
    """

    max_calls: int = 64
    max_waiting: int = 64
    idle_timeout: float = 30.0
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    tls_minimum: str = "1.2"
    kill_grace: float = 2.0
    default_user: Optional[Union[str, int]] = None
    default_group: Optional[Union[str, int]] = None
    in_process: bool = False


@dataclass(frozen=True)
class LoadedDaemon:
    """Everything :func:`load_daemon` read and checked."""

    config: DaemonConfig
    settings: DaemonSettings
    registry: ProcedureRegistry
    database: PasswordDatabase
    tls: IOpenSSLServerConnectionCreator
    child: ChildSettings


def load_daemon(
    config_path: str,
    procedures_path: str,
    settings: DaemonSettings = DaemonSettings(),
    logging_path: Optional[str] = None,
) -> LoadedDaemon:
    """Read the configuration, the procedures module and everything they name.

    The module search path is extended and the logging configuration
    applied in this process too (the procedures module is imported here,
    as the original daemon did, to learn which procedures exist).
    Raises :class:`~txharp.daemon.config.ConfigError` or
    :class:`~txharp.daemon.procedures.ProcedureLoadError`.
    """
    config = load_config(config_path)
    logging_config: Optional[Dict[str, Any]] = None
    if logging_path is not None:
        logging_config = load_logging_config(logging_path)
        try:
            encode_line(logging_config)  # it travels to every child as JSON
            logging.config.dictConfig(logging_config)
        except (ValueError, TypeError, AttributeError, ImportError) as e:
            raise ConfigError(f"logging configuration {logging_path}: {e}") from None
    extend_sys_path(config.python.prepend, config.python.append)
    procedures_path = os.path.abspath(procedures_path)
    registry = ProcedureRegistry.from_module(load_procedures_module(procedures_path))
    try:
        identities = resolve_identities(registry, settings.default_user, settings.default_group)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    database = database_from_config(config.authentication)
    try:
        tls = server_tls_options(
            config.network.certfile, config.network.keyfile, settings.tls_minimum
        )
    except ValueError as e:
        raise ConfigError(f"{config_path}: network: {e}") from None
    child = ChildSettings(
        procedures_path,
        config.python.prepend,
        config.python.append,
        logging_config,
        identities,
    )
    return LoadedDaemon(config, settings, registry, database, tls, child)


class HarpDaemonService(Service):
    """Listens for harpd calls and runs them; see the module docstring.

    :ivar port: the listening port once started (``port.getHost().port``
        tells which one was picked when the configuration says 0)
    """

    name = "harpd"

    def __init__(self, daemon: LoadedDaemon, reactor: Any) -> None:
        settings = daemon.settings
        self._reactor = reactor
        self._daemon = daemon
        self.runner: CallRunner
        if settings.in_process:
            self.runner = InProcessRunner(reactor)
        else:
            self.runner = ProcessRunner(
                reactor,
                daemon.child,
                grace=settings.kill_grace,
                max_message_length=settings.max_line_length,
            )
        self.factory = HarpDaemonFactory(
            daemon.registry,
            Authenticator(daemon.database, reactor),
            self.runner,
            CallLimiter(settings.max_calls, settings.max_waiting),
            clock=reactor,
            idle_timeout=settings.idle_timeout,
            max_line_length=settings.max_line_length,
        )
        self.port: Optional[IListeningPort] = None

    def privilegedStartService(self) -> None:
        """Listen before twistd drops privileges, so that ports below 1024 work."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self._listen()
        if self._daemon.settings.in_process:
            _log.warn(
                "procedures run inside the daemon (--in-process): no isolation, "
                "no user or group switching"
            )
        elif os.geteuid() != 0 and any(self._daemon.child.identities.values()):
            _log.warn(
                "procedures ask for a user or group, but the daemon does not run as "
                "root: calls run as the daemon's own user"
            )

    def _listen(self) -> None:
        network = self._daemon.config.network
        endpoint = SSL4ServerEndpoint(
            self._reactor, network.port, self._daemon.tls, backlog=LISTEN_BACKLOG,
            interface=network.address,
        )
        # This endpoint listens synchronously: a port already in use must stop
        # the start-up here, not be logged and ignored.
        outcome: List[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0]
        _log.info(
            "harpd listening on {address}:{port} (TLS {tls}+), {count} procedures",
            address=network.address,
            port=self.port.getHost().port,
            tls=self._daemon.settings.tls_minimum,
            count=len(self._daemon.registry),
        )

    def stopService(self) -> "Deferred[None]":
        """Stop listening, end every call with ``shutdown``, wait for the
        connections to close and the child processes to be reaped."""
        super().stopService()
        waits = []
        if self.port is not None:
            waits.append(maybeDeferred(self.port.stopListening))
            self.port = None
        waits.append(self.factory.shutDown())
        waits.append(self.runner.stop())
        return gatherResults(waits).addCallback(lambda _: None)
