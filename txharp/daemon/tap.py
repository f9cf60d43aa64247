"""``twistd harpd``: command-line options and the service maker.

::

    twistd -n harpd --config /etc/harpd/harpd.conf --procedures /etc/harpd/harpd.py
    twistd harpd --test -c harpd.conf -r procedures.py    # check, print, exit 0/1

The original daemon's ``--daemon``, ``--pidfile`` and ``--syslog`` are
twistd's own options, given before ``harpd``: twistd daemonizes unless
``-n``/``--nodaemon``, and takes ``--pidfile FILE``, ``--syslog``,
``--logfile FILE``, ``--uid``/``--gid`` (the port is opened before
privileges are dropped).  ``--logging`` configures the stdlib logging that
procedures use; twistd's own log records one event per call.
"""
from __future__ import annotations

import sys
from typing import Optional, Union

from twisted.application.service import IService
from twisted.python import usage

from txharp.daemon.config import ConfigError
from txharp.daemon.procedures import ProcedureLoadError
from txharp.daemon.service import DaemonSettings, HarpDaemonService, LoadedDaemon, load_daemon
from txharp.wire.codec import DEFAULT_MAX_LINE_LENGTH

__all__ = ["Options", "makeService"]

_TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")


def _identity(value: Optional[str]) -> Optional[Union[str, int]]:
    """A user or group option: a number when it is all digits, else a name."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


class Options(usage.Options):
    """Options of ``twistd harpd``; parsing also loads and checks the daemon."""

    synopsis = "[options]"
    longdesc = (
        "Run the HarpCaller RPC daemon: procedures from a Python module, "
        "called over TLS by the HarpCaller dispatcher or a harp client. "
        "--daemon, --pidfile and --syslog are twistd's own options "
        "(twistd daemonizes unless -n is given)."
    )
    optParameters = [
        ["config", "c", "/etc/harpd/harpd.conf", "YAML configuration file."],
        ["procedures", "r", "/etc/harpd/harpd.py", "Python file with the procedures to expose."],
        ["logging", "l", None, "YAML logging configuration (logging.config.dictConfig) "
         "for the stdlib logging of procedures."],
        ["default-user", None, None, "User that procedures without their own uid run as "
         "(when started as root)."],
        ["default-group", None, None, "Group that procedures without their own gid run as "
         "(when started as root)."],
        ["max-calls", None, 64, "Calls running at once (one process each).", int],
        ["max-waiting", None, 64, "Calls waiting for a free slot; more are refused "
         "with an 'overloaded' error.", int],
        ["idle-timeout", None, 30.0, "Seconds a client may take to send its request "
         "(and a call may wait for a slot).", float],
        ["kill-grace", None, 2.0, "Seconds between SIGTERM and SIGKILL when a call "
         "is stopped.", float],
        ["max-line-length", None, DEFAULT_MAX_LINE_LENGTH, "Longest request or reply "
         "line, in bytes.", int],
        ["tls-minimum", None, "1.2", "Lowest TLS version accepted: 1.0, 1.1, 1.2 or 1.3 "
         "(the original dispatcher needs 1.0).", str],
    ]
    optFlags = [
        ["test", "t", "Check the configuration and the procedures module, then exit."],
        ["in-process", None, "Run procedures inside the daemon (fast, for trusted "
         "Twisted-aware procedures and benchmarks): no isolation, no time limit on "
         "blocking code, no user switching."],
    ]

    daemon: LoadedDaemon

    def postOptions(self) -> None:
        for key in ("max-calls", "max-line-length"):
            if self[key] < 1:
                raise usage.UsageError(f"--{key} must be at least 1")
        if self["max-waiting"] < 0:
            raise usage.UsageError("--max-waiting must not be negative")
        for key in ("idle-timeout", "kill-grace"):
            if not self[key] > 0:
                raise usage.UsageError(f"--{key} must be positive")
        if self["tls-minimum"] not in _TLS_VERSIONS:
            raise usage.UsageError(f"--tls-minimum must be one of {', '.join(_TLS_VERSIONS)}")
        settings = DaemonSettings(
            max_calls=self["max-calls"],
            max_waiting=self["max-waiting"],
            idle_timeout=self["idle-timeout"],
            max_line_length=self["max-line-length"],
            tls_minimum=self["tls-minimum"],
            kill_grace=self["kill-grace"],
            default_user=_identity(self["default-user"]),
            default_group=_identity(self["default-group"]),
            in_process=bool(self["in-process"]),
        )
        try:
            self.daemon = load_daemon(
                self["config"], self["procedures"], settings, self["logging"]
            )
        except (ConfigError, ProcedureLoadError) as e:
            details = getattr(e, "details", "")
            sys.stderr.write(f"harpd: {e}\n{details}")
            raise SystemExit(1)
        if self["test"]:
            names = ", ".join(self.daemon.registry) or "none"
            sys.stdout.write(
                f"harpd: configuration OK; {len(self.daemon.registry)} procedures: {names}\n"
            )
            raise SystemExit(0)


def makeService(options: Options) -> IService:
    """The daemon service, for twistd."""
    from twisted.internet import reactor

    return HarpDaemonService(options.daemon, reactor)
