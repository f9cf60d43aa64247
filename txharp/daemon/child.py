"""The process that runs one call: ``python -m txharp.daemon.child``.

The daemon (:mod:`txharp.daemon.runner`) starts one such process per call.
The conversation uses the wire codec's JSON lines over two pipes:

* on **stdin** the daemon writes one :class:`Job` line, then closes it;
* on **file descriptor 3** the child answers with an
  :class:`~txharp.wire.Acknowledgement` (sent once the procedure is found,
  so the daemon can check the module still matches what it loaded), then
  ``{"stream": X}`` packets, then exactly one final line: ``{"result": V}``,
  ``{"exception": {...}}`` or ``{"error": {...}}`` — the same shapes the
  harpd protocol uses, checked by :class:`~txharp.wire.DaemonReplyReader`.

stdout and stderr stay free for the procedure (``print``, stdlib logging's
default handler); the daemon logs what arrives there.

Before doing anything else the child calls :func:`os.setsid`, so that it and
every process the procedure starts form a process group the daemon can kill
as a whole.  It imports the procedures module with the daemon's identity
(as the original did, which imported it before forking: the file may be
readable by root only), then, if the job names an identity (the daemon
runs as root), switches to it just before calling the procedure.

Only the wire codec and :mod:`txharp.daemon.procedures` are imported (no
Twisted), to keep the start of each call fast.
"""
from __future__ import annotations

import os
import sys
from typing import Any, BinaryIO, Dict, List, Optional

from txharp.errors import EncodingError, MalformedMessage
from txharp.wire.codec import decode_line, encode_line
from txharp.wire.daemon import Acknowledgement, StreamItem
from txharp.wire.dispatcher import Arguments
from txharp.wire._record import Record, _set
from txharp.wire.outcomes import ErrorReply, ExceptionReply, ResultReply
from txharp.daemon.procedures import (
    ProcedureLoadError,
    ProcedureRegistry,
    extend_sys_path,
    load_procedures_module,
    run_procedure,
)

__all__ = ["EVENTS_FD", "Identity", "Job", "describe_exception", "main"]

#: The child's file descriptor for messages to the daemon.
EVENTS_FD = 3


class Identity(Record):
    """Numeric user, primary group and supplementary groups to run as."""

    __slots__ = _fields = ("uid", "gid", "groups")
    uid: int
    gid: int
    groups: List[int]

    def __init__(self, uid: int, gid: int, groups: Optional[List[int]] = None) -> None:
        _set(self, "uid", uid)
        _set(self, "gid", gid)
        _set(self, "groups", [] if groups is None else groups)


class Job(Record):
    """Everything a child needs to run one call."""

    __slots__ = _fields = (
        "module", "procedure", "arguments", "prepend", "append", "identity", "logging",
    )
    module: str
    procedure: str
    arguments: Arguments
    prepend: List[str]
    append: List[str]
    identity: Optional[Identity]
    logging: Optional[Dict[str, Any]]

    def __init__(
        self,
        module: str,
        procedure: str,
        arguments: Arguments,
        prepend: Optional[List[str]] = None,
        append: Optional[List[str]] = None,
        identity: Optional[Identity] = None,
        logging: Optional[Dict[str, Any]] = None,
    ) -> None:
        _set(self, "module", module)
        _set(self, "procedure", procedure)
        _set(self, "arguments", arguments)
        _set(self, "prepend", [] if prepend is None else prepend)
        _set(self, "append", [] if append is None else append)
        _set(self, "identity", identity)
        _set(self, "logging", logging)

    def to_json(self) -> Dict[str, Any]:
        identity = self.identity
        return {
            "module": self.module,
            "procedure": self.procedure,
            "arguments": self.arguments,
            "prepend": list(self.prepend),
            "append": list(self.append),
            "identity": None if identity is None else {
                "uid": identity.uid, "gid": identity.gid, "groups": list(identity.groups),
            },
            "logging": self.logging,
        }

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "Job":
        identity = value.get("identity")
        return cls(**{**value, "identity": Identity(**identity) if identity else None})


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return object.__repr__(value)


def describe_exception(error: BaseException) -> ExceptionReply:
    """The wire form of an exception raised by a procedure: type and
    ``data.class`` are the class name, ``data.module`` its module."""
    cls = type(error)
    return ExceptionReply(
        cls.__name__, _text(error), {"class": cls.__name__, "module": cls.__module__}
    )


class _Channel:
    """Writes wire messages to the daemon, one flushed line each."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def send(self, message: Any) -> None:
        self._stream.write(encode_line(message.to_json()))
        self._stream.flush()


def _switch_identity(identity: Identity) -> None:
    """Become ``identity``; HOME, USER and LOGNAME follow, as with ``su``."""
    os.setgroups(identity.groups)
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    import pwd  # only here: most calls switch no identity

    try:
        entry = pwd.getpwuid(identity.uid)
    except KeyError:
        return  # a uid without an account: nothing to say about it
    os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)


def _run(job: Job, channel: _Channel) -> None:
    """Run the job and send its messages; every outcome ends in one final line."""
    extend_sys_path(job.prepend, job.append)
    try:
        if job.logging is not None:
            import logging.config  # only then: importing logging costs each call ~10 ms

            logging.config.dictConfig(job.logging)
        registry = ProcedureRegistry.from_module(load_procedures_module(job.module))
    except (ProcedureLoadError, ValueError, TypeError, AttributeError, ImportError) as e:
        sys.stderr.write(getattr(e, "details", "") or f"{e}\n")
        channel.send(ErrorReply("procedure_loading_error", _text(e)))
        return
    spec = registry.get(job.procedure)
    if spec is None:
        channel.send(
            ErrorReply("procedure_loading_error", f"procedure {job.procedure!r} no longer exists")
        )
        return
    if job.identity is not None:
        try:
            _switch_identity(job.identity)
        except OSError as e:
            channel.send(ErrorReply("system_error", f"cannot switch to uid {job.identity.uid}: {e}"))
            return
    channel.send(Acknowledgement(spec.streaming))

    def emit(packet: Any) -> None:
        channel.send(StreamItem(packet))

    try:
        value = run_procedure(spec.target, job.arguments, emit)
        channel.send(ResultReply(value))
    except EncodingError as e:
        channel.send(ErrorReply("invalid_message", _text(e)))
    except BaseException as e:  # a procedure's SystemExit is its outcome too
        channel.send(describe_exception(e))


def main() -> None:
    """Run the job read from stdin; exit status 0 once a final line is sent."""
    os.setsid()
    os.set_inheritable(EVENTS_FD, False)
    try:
        job = Job.from_json(decode_line(sys.stdin.buffer.readline().rstrip(b"\n")))
    except (MalformedMessage, TypeError, ValueError) as e:
        sys.stderr.write(f"txharp.daemon.child: bad job: {e}\n")
        os._exit(2)
    with open(os.devnull, "rb") as null:
        os.dup2(null.fileno(), 0)
    with open(EVENTS_FD, "wb", closefd=True) as events:
        _run(job, _Channel(events))
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()  # flush what the procedure logged
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: threads a procedure left behind must not
    # keep the process alive (the daemon would kill it later anyway).
    os._exit(0)


if __name__ == "__main__":
    main()
