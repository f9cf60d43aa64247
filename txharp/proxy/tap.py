"""``twistd harp-proxy``: command-line options and the service they make.

Settings come from the command line, then from ``--config FILE`` (the
original dispatcher's ``harpcaller.toml``), then from the defaults; the
command line wins.  Keys read from the TOML file, where they mean something
here (others are ignored):

====================  ==========================================================
key                   meaning
====================  ==========================================================
``listen``            list of ``"ADDRESS:PORT"`` (``*`` = every interface;
                      ``[::1]:3502`` for IPv6), or Twisted endpoint strings
``ca_file``           ``--ca-file``
``known_certs_file``  ``--known-certs``
``stream_directory``  ``--data-dir``
``default_timeout``   ``--default-timeout`` (seconds)
``max_exec_time``     ``--max-exec-time`` (seconds)
``max_age``           ``--max-age`` (hours)
``host_db_script``    ``--hosts-script``
``host_db_refresh``   ``--hosts-refresh`` (seconds)
====================  ==========================================================

Reading TOML needs Python 3.11's ``tomllib`` or, on 3.9/3.10, ``tomli``.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from twisted.application.service import IService
from twisted.python import usage

from txharp.proxy.service import ProxyConfig, ProxyService, default_data_dir

__all__ = ["Options", "makeService", "listen_description", "read_config_file"]

_TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def listen_description(text: str) -> str:
    """A Twisted endpoint string for a listen entry: ``ADDRESS:PORT`` or already a description."""
    if text.split(":", 1)[0] in ("tcp", "tcp6", "unix", "ssl", "systemd"):
        return text
    address, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not address:
        raise usage.UsageError(f"listen address {text!r} is neither ADDRESS:PORT nor an endpoint string")
    if address == "*":
        return f"tcp:{port}"
    address = address.strip("[]").replace(":", r"\:")
    return f"tcp:{port}:interface={address}"


def read_config_file(path: str) -> Dict[str, Any]:
    """Settings from a ``harpcaller.toml``, keyed like :class:`ProxyConfig`'s fields."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.9/3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"{path} is not valid TOML: {e}") from None

    def number(key: str, scale: float = 1.0) -> Optional[float]:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise usage.UsageError(f"{path}: {key} must be a non-negative number")
        return value * scale

    def text(key: str) -> Optional[str]:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise usage.UsageError(f"{path}: {key} must be a string")
        return value

    settings: Dict[str, Any] = {
        "ca_file": text("ca_file"),
        "known_certs": text("known_certs_file"),
        "data_dir": text("stream_directory"),
        "default_timeout": number("default_timeout"),
        "max_exec_time": number("max_exec_time"),
        "max_age": number("max_age", 3600.0),
        "hosts_script": text("host_db_script"),
        "hosts_refresh": number("host_db_refresh"),
    }
    listen = data.get("listen")
    if listen is not None:
        if not isinstance(listen, list) or not all(isinstance(item, str) for item in listen):
            raise usage.UsageError(f"{path}: listen must be a list of strings")
        settings["listen"] = [listen_description(item) for item in listen]
    return {key: value for key, value in settings.items() if value is not None}


class Options(usage.Options):
    """Options of ``twistd harp-proxy``."""

    synopsis = "[options]"
    longdesc = (
        "A HarpCaller-compatible dispatcher: accepts calls from HarpCaller clients on "
        "the dispatcher protocol and relays each to its harpd over TLS, keeping every "
        "job's record, stream and result in a durable store."
    )

    optParameters = [
        ["hosts", None, None, "Hosts registry file (JSON lines: hostname, address, port, credentials)."],
        ["hosts-script", None, None, "Command printing the hosts registry (run with /bin/sh -c)."],
        ["hosts-refresh", None, None, "Reload the hosts registry every SECONDS.", _positive],
        ["data-dir", None, None,
         f"Directory of the job store, created if missing [default: {default_data_dir()}]."],
        ["default-timeout", None, None,
         "Default for a call's timeout and max_exec_time, in seconds [default: 600].", _positive],
        ["max-exec-time", None, None,
         "Ceiling of any call's timeout and max_exec_time, in seconds [default: 600].", _positive],
        ["max-age", None, None,
         "Delete jobs that ended more than HOURS ago; 0 keeps them for ever [default: 720].",
         _non_negative],
        ["ca-file", None, None, "PEM file of CAs that sign harpd certificates (hostname checked)."],
        ["known-certs", None, None,
         "PEM file of harpd certificates accepted as they are (pinned, no CA needed)."],
        ["tls-minimum", None, None,
         "Lowest TLS version towards harpd: 1.0, 1.1, 1.2 or 1.3 [default: 1.2]; "
         "1.0 reaches the original TLS 1.0-only harpd."],
        ["config", "c", None, "Read settings from the original dispatcher's harpcaller.toml."],
        ["admin-socket", None, None, "UNIX socket for administration (mode 0600; off by default)."],
        ["switch-interval", None, 0.2,
         "Python's thread switch interval for this process, in milliseconds [default: 0.2; "
         "Python's own is 5]: how long the reactor may keep the job store's thread waiting.",
         _positive],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on, repeatable [default: tcp:3502:interface=127.0.0.1]."""
        self["listen"].append(listen_description(description))

    def postOptions(self) -> None:
        settings: Dict[str, Any] = read_config_file(self["config"]) if self["config"] else {}
        given = {
            "listen": self["listen"] or None,
            "hosts_file": self["hosts"],
            "hosts_script": self["hosts-script"],
            "hosts_refresh": self["hosts-refresh"],
            "data_dir": self["data-dir"],
            "default_timeout": self["default-timeout"],
            "max_exec_time": self["max-exec-time"],
            "max_age": None if self["max-age"] is None else self["max-age"] * 3600.0,
            "ca_file": self["ca-file"],
            "known_certs": self["known-certs"],
            "tls_minimum": self["tls-minimum"],
            "admin_socket": self["admin-socket"],
        }
        settings.update({key: value for key, value in given.items() if value is not None})
        if settings.get("tls_minimum", "1.2") not in _TLS_VERSIONS:
            raise usage.UsageError(f"--tls-minimum must be one of {', '.join(_TLS_VERSIONS)}")
        if settings.get("max_age") == 0:
            settings["max_age"] = None
        config = ProxyConfig(**settings)
        try:
            config.tls_policy()
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self.config = config


def makeService(options: Options) -> IService:
    """The proxy service, on the global reactor (the only place that picks it).

    twistd runs one service per process, so the process-wide thread switch
    interval is set here: with Python's 5 ms, a commit the job store's
    thread has finished can wait that long for the reactor thread to let it
    report back, and every reply waiting for that commit waits with it.
    """
    from twisted.internet import reactor

    sys.setswitchinterval(options["switch-interval"] / 1000.0)
    return ProxyService(options.config, reactor)

