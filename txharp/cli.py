"""The ``txharp`` command: call procedures through a dispatcher, or directly on harpd.

Built on the Deferred clients (:mod:`txharp.caller`, :mod:`txharp.server`)
and :func:`twisted.internet.task.react`, so it doubles as an example of
using them.  :func:`run` is the whole command as a coroutine on a given
reactor (what the tests drive); :func:`main` is the console script.
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, TextIO, Tuple, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall, react

from txharp._version import __version__
from txharp.caller import CALL_CANCELLED, CALL_NOT_FINISHED, HarpCaller, JobStatus, JobStream, RemoteCall
from txharp.errors import (
    CancelledException,
    CommunicationError,
    HarpException,
    RemoteError,
    RemoteException,
)
from txharp.server import HarpServer, Result
from txharp.streams import MessageStream
from txharp.wire.daemon import DEFAULT_PORT as HARPD_PORT
from txharp.wire.dispatcher import DEFAULT_PORT as DISPATCHER_PORT

__all__ = [
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_REMOTE_EXCEPTION",
    "EXIT_REMOTE_ERROR",
    "EXIT_CANCELLED",
    "EXIT_NOT_FINISHED",
    "EXIT_COMMUNICATION",
    "EXIT_NOT_CANCELLED",
    "EXIT_INTERRUPTED",
    "run",
    "main",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REMOTE_EXCEPTION = 3
EXIT_REMOTE_ERROR = 4
EXIT_CANCELLED = 5
EXIT_NOT_FINISHED = 6
EXIT_COMMUNICATION = 7
EXIT_NOT_CANCELLED = 8
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a process killed by SIGPIPE: what shells expect of `cmd | head`

_EPILOG = f"""\
exit status:
  {EXIT_OK}    success (the job ended with a value; cancel stopped the job)
  {EXIT_USAGE}    bad usage (unknown option, argument that is not JSON, ...)
  {EXIT_REMOTE_EXCEPTION}    the remote procedure raised an exception
  {EXIT_REMOTE_ERROR}    operational error reported by the dispatcher or harpd
       (unknown host or job, authentication, time limit, ...)
  {EXIT_CANCELLED}    the job was cancelled
  {EXIT_NOT_FINISHED}    the job has not finished yet (result, stream)
  {EXIT_COMMUNICATION}    communication failure (connection, TLS, timeout, garbled reply)
  {EXIT_NOT_CANCELLED}    cancel: the job was not running (already ended, or unknown)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_BROKEN_PIPE}  standard output closed early (e.g. piped into head); a job
       being followed keeps running

arguments of procedures are JSON: 42, 1.5, true, null, '"text"', '[1, 2]',
'{{"a": 1}}' (quote strings twice: once for JSON, once for the shell).

environment:
  TXHARP_DISPATCHER  dispatcher address (HOST[:PORT]) when --dispatcher is not given
  TXHARP_PASSWORD    harpd password for "direct" when --password-file is not given;
                     without either, the password is asked on the terminal

with --json every line on stdout is one JSON value: {{"job": ID}} after a
call, {{"packet": N, "data": D}} per packet ({{"stream": D}} from harpd), then
the end as the dispatcher spells it: {{"result": V}}, {{"exception": {{...}}}},
{{"error": {{...}}}}, {{"cancelled": true}} or {{"no_result": true}};
{{"communication_error": {{"type": T, "message": M}}}} when txharp could not
talk to the server."""


class UsageError(Exception):
    """The command line is wrong; the message says how."""


# ------------------------------------------------------------------ parsing


class _Parser(argparse.ArgumentParser):
    """Reports usage errors as :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage()}{self.prog}: error: {message}")


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not JSON (a string is written '\"{text}\"')"
        ) from None


def _json_object(text: str) -> Dict[str, Any]:
    value = _json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def _named_argument(text: str) -> Tuple[str, Any]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=JSON")
    return name, _json_value(value)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not positive")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def parse_address(text: str, default_port: int = DISPATCHER_PORT) -> Tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    host, port = text, str(default_port)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"bad address {text!r}: expected [ADDRESS]:PORT")
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad address {text!r}: expected HOST[:PORT]")
    return host, int(port)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arguments", nargs="*", type=_json_value, metavar="ARG",
                        help="positional argument, as JSON")
    parser.add_argument("--kw", action="append", type=_named_argument, default=[],
                        metavar="NAME=JSON", help="named argument (repeatable; not with ARGs)")


def _add_stream_position(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--since", type=_count, metavar="N", help="start at packet N (default 0: the first)")
    group.add_argument("--recent", type=_count, metavar="N", help="start with the last N recorded packets")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``txharp`` command."""
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine output: one JSON value per line on stdout")
    common.add_argument("--dispatcher", metavar="HOST[:PORT]", default=argparse.SUPPRESS,
                        help=f"dispatcher address (default: $TXHARP_DISPATCHER, else localhost:{DISPATCHER_PORT})")
    common.add_argument("--io-timeout", type=_positive(float), metavar="S", default=argparse.SUPPRESS,
                        help="seconds allowed to connect and for replies that come at once (default 30)")

    parser = _Parser(
        prog="txharp",
        description="Call procedures through a HarpCaller dispatcher (or harp-proxy), "
        "or directly on a harpd.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"txharp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common],
                                   epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)

    call = command("call", "submit a call through the dispatcher and wait for its result")
    call.add_argument("host", help="target host, as the dispatcher knows it")
    call.add_argument("procedure")
    _add_arguments(call)
    call.add_argument("--queue", type=_json_object, metavar="JSON", help="wait in the queue named by this JSON object")
    call.add_argument("--concurrency", type=_positive(int), metavar="N", help="jobs of the queue running at once (with --queue)")
    call.add_argument("--timeout", type=_positive(float), metavar="S", help="job limit: seconds between messages from harpd")
    call.add_argument("--max-exec-time", type=_positive(float), metavar="S", help="job limit: seconds for the whole run")
    call.add_argument("--info", type=_json_value, metavar="JSON", help="opaque data kept with the job")
    mode = call.add_mutually_exclusive_group()
    mode.add_argument("--follow", action="store_true", help="print stream packets as they come, then the result")
    mode.add_argument("--no-wait", action="store_true", help="print the job ID and return at once")

    result = command("result", "print a job's result")
    result.add_argument("job")
    result.add_argument("--wait", action="store_true", help="wait for the job to end")

    follow = command("follow", "print a job's packets as they come, then its result")
    follow.add_argument("job")
    _add_stream_position(follow)

    stream = command("stream", "print the packets a job has recorded so far, then its result if it ended")
    stream.add_argument("job")
    _add_stream_position(stream)

    status = command("status", "print a job's call, times and info")
    status.add_argument("job")

    cancel = command("cancel", "stop a queued or running job")
    cancel.add_argument("job")

    direct = command("direct", "call a procedure directly on a harpd (TLS), without a dispatcher")
    direct.add_argument("host", help="harpd address")
    direct.add_argument("procedure")
    _add_arguments(direct)
    direct.add_argument("--port", type=_positive(int), default=HARPD_PORT, metavar="N", help=f"harpd port (default {HARPD_PORT})")
    direct.add_argument("--user", required=True)
    direct.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE")
    direct.add_argument("--ca-file", metavar="FILE", help="CA certificates to verify harpd against")
    direct.add_argument("--pin", action="append", default=[], metavar="SHA256",
                        help="accept harpd's certificate by its SHA-256 fingerprint (repeatable)")
    direct.add_argument("--no-check-hostname", dest="check_hostname", action="store_false",
                        help="with --ca-file, accept a certificate that does not name HOST")
    direct.add_argument("--tls-minimum", choices=("1.0", "1.1", "1.2", "1.3"), default="1.2",
                        help="oldest TLS version accepted (1.0 for the original harpd; default 1.2)")
    direct.add_argument("--timeout", type=_positive(float), metavar="S",
                        help="seconds harpd may stay silent (default: as long as the procedure runs)")
    return parser


def _call_arguments(options: argparse.Namespace) -> Union[List[Any], Dict[str, Any]]:
    if options.arguments and options.kw:
        raise UsageError("positional ARGs and --kw cannot be mixed in one call")
    return dict(options.kw) if options.kw else list(options.arguments)


def _invoke(procedure: Callable[..., Any], arguments: Union[List[Any], Dict[str, Any]]) -> Any:
    """Call ``procedure`` with named (a dict) or positional (a list) arguments."""
    return procedure(**arguments) if isinstance(arguments, dict) else procedure(*arguments)


def _stream_position(options: argparse.Namespace) -> Dict[str, Optional[int]]:
    if options.since is None and options.recent is None:
        return {"since": 0}
    return {"since": options.since, "recent": options.recent}


# ------------------------------------------------------------------- output


def _outcome_json(result: Any) -> Dict[str, Any]:
    """A ``result()`` value back in the dispatcher's words."""
    if result is CALL_NOT_FINISHED:
        return {"no_result": True}
    if result is CALL_CANCELLED:
        return {"cancelled": True}
    if isinstance(result, (RemoteException, RemoteError)):
        key = "exception" if isinstance(result, RemoteException) else "error"
        body = {"type": result.type, "message": result.message}
        if result.data is not None:
            body["data"] = result.data
        return {key: body}
    return {"result": result}


def _exit_code(result: Any) -> int:
    if result is CALL_NOT_FINISHED:
        return EXIT_NOT_FINISHED
    if result is CALL_CANCELLED:
        return EXIT_CANCELLED
    if isinstance(result, RemoteException):
        return EXIT_REMOTE_EXCEPTION
    if isinstance(result, RemoteError):
        return EXIT_REMOTE_ERROR
    return EXIT_OK


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _describe(failure: Union[RemoteException, RemoteError]) -> str:
    kind = "remote exception" if isinstance(failure, RemoteException) else "remote error"
    text = f"{kind} {failure.type}: {failure.message}"
    if failure.data is not None:
        text += f" (data: {_text(failure.data)})"
    return text


class _Output:
    """Human or JSON-lines output, and the live progress line on a terminal."""

    def __init__(self, stdout: TextIO, stderr: TextIO, as_json: bool, clock: Any) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.as_json = as_json
        self._clock = clock
        self._progress: Optional[LoopingCall] = None
        self._packets = 0
        self._started = 0.0
        self._label = ""

    def line(self, text: str) -> None:
        """One line on stdout (keeping the progress line, if any, below it)."""
        self._clear_progress()
        self.stdout.write(text + "\n")
        self.stdout.flush()
        self._draw_progress()

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    def note(self, text: str) -> None:
        """A remark for humans, on stderr (nothing in JSON mode)."""
        if not self.as_json:
            self._clear_progress()
            self.stderr.write(text + "\n")
            self.stderr.flush()
            self._draw_progress()

    def job(self, job_id: str, alone: bool = False) -> None:
        """A submitted job: on stdout when it is all there is to say."""
        if self.as_json:
            self.json({"job": job_id})
        elif alone:
            self.line(job_id)
        else:
            self.note(f"job {job_id}")

    def packet(self, numbered: Tuple[int, Any]) -> None:
        """One packet of a job's stream, as ``(number, data)``."""
        self._packets += 1
        number, data = numbered
        if self.as_json:
            self.json({"packet": number, "data": data})
        else:
            self.line(_text(data))

    def stream_item(self, data: Any) -> None:
        """One packet from harpd (harpd does not number them)."""
        self._packets += 1
        if self.as_json:
            self.json({"stream": data})
        else:
            self.line(_text(data))

    def end(self, result: Any, after_packets: bool = False) -> int:
        """Print how a job or call ended; return the exit status it means."""
        if self.as_json:
            self.json(_outcome_json(result))
        elif result is CALL_NOT_FINISHED:
            self.note("not finished")
        elif result is CALL_CANCELLED:
            self.note("cancelled")
        elif isinstance(result, (RemoteException, RemoteError)):
            self.note(_describe(result))
        elif after_packets:
            self.line(f"result: {_text(result)}")
        else:
            indent = 2 if isinstance(result, (dict, list)) and result else None
            self.line(json.dumps(result, ensure_ascii=False, indent=indent))
        return _exit_code(result)

    def communication_error(self, error: Exception) -> None:
        if self.as_json:
            self.json({"communication_error": {"type": type(error).__name__, "message": str(error)}})
        else:
            self.note(f"txharp: {error}")

    # -- progress line (human mode, stderr on a terminal)

    def start_progress(self, label: str) -> None:
        if self.as_json or not self.stderr.isatty():
            return
        self._label = label
        self._started = self._clock.seconds()
        self._progress = LoopingCall(self._draw_progress)
        self._progress.clock = self._clock
        self._progress.start(0.25)

    def stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._clear_progress()
            self._progress = None

    def _draw_progress(self) -> None:
        if self._progress is not None:
            elapsed = self._clock.seconds() - self._started
            self.stderr.write(f"\r\x1b[K{self._label}: {self._packets} packets, {elapsed:.1f} s")
            self.stderr.flush()

    def _clear_progress(self) -> None:
        if self._progress is not None:
            self.stderr.write("\r\x1b[K")
            self.stderr.flush()


# ----------------------------------------------------------------- commands


class _Command:
    """One invocation: parsed options, output, and the clients they ask for."""

    def __init__(
        self,
        reactor: Any,
        options: argparse.Namespace,
        out: _Output,
        environ: Mapping[str, str],
        prompt: Callable[[str], str],
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.out = out
        self.environ = environ
        self.prompt = prompt
        self.io_timeout = getattr(options, "io_timeout", 30.0)

    def caller(self) -> HarpCaller:
        address = getattr(self.options, "dispatcher", None) or self.environ.get("TXHARP_DISPATCHER") or "localhost"
        host, port = parse_address(address)
        return HarpCaller(host, port, reactor=self.reactor, timeout=self.io_timeout)

    def job(self) -> RemoteCall:
        return self.caller().job(self.options.job)

    async def call(self) -> int:
        options = self.options
        arguments = _call_arguments(options)
        server = self.caller().host(
            options.host,
            queue=options.queue,
            concurrency=options.concurrency,
            timeout=options.timeout,
            max_exec_time=options.max_exec_time,
            info=options.info,
        )
        job = await _invoke(server[options.procedure], arguments)
        if options.no_wait:
            self.out.job(job.id(), alone=True)
            return EXIT_OK
        self.out.job(job.id())
        if options.follow:
            return await self._packets(job.follow(since=0, numbered=True), f"job {job.id()}")
        return self.out.end(await job.result(wait=True))

    async def result(self) -> int:
        return self.out.end(await self.job().result(wait=self.options.wait))

    async def follow(self) -> int:
        job = self.job()
        return await self._packets(job.follow(numbered=True, **_stream_position(self.options)), f"job {job.id()}")

    async def stream(self) -> int:
        return await self._packets(self.job().stream(numbered=True, **_stream_position(self.options)))

    async def _packets(self, stream: JobStream, live: Optional[str] = None) -> int:
        if live is not None:
            self.out.start_progress(live)
        try:
            await stream.each(self.out.packet)
        finally:
            self.out.stop_progress()
        return self.out.end(stream.result(), after_packets=True)

    async def status(self) -> int:
        status: JobStatus = await self.job().status()
        if status.end_time is not None:
            state = "ended" if status.start_time is not None else "ended in its queue"
        else:
            state = "running" if status.start_time is not None else "queued"
        if self.out.as_json:
            self.out.json(
                {
                    "job": self.options.job,
                    "state": state,
                    "host": status.host,
                    "procedure": status.procedure,
                    "arguments": status.args,
                    "info": status.info,
                    "submit": status.submit_time,
                    "start": status.start_time,
                    "end": status.end_time,
                }
            )
            return EXIT_OK
        rows = [
            ("job", self.options.job),
            ("state", state),
            ("host", status.host),
            ("procedure", status.procedure),
            ("arguments", _text(status.args)),
            ("info", _text(status.info)),
            ("submitted", _when(status.submit_time)),
            ("started", _when(status.start_time)),
            ("ended", _when(status.end_time)),
        ]
        for name, value in rows:
            self.out.line(f"{name:<10} {value}")
        return EXIT_OK

    async def cancel(self) -> int:
        cancelled = await self.job().cancel()
        if self.out.as_json:
            self.out.json({"cancelled": cancelled})
        else:
            self.out.line("cancelled" if cancelled else "not running (already ended, or unknown job)")
        return EXIT_OK if cancelled else EXIT_NOT_CANCELLED

    def _password(self) -> str:
        options = self.options
        if options.password_file is not None:
            try:
                with open(options.password_file, encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n")
            except OSError as e:
                raise UsageError(f"cannot read the password file: {e.strerror or e}") from None
        if "TXHARP_PASSWORD" in self.environ:
            return self.environ["TXHARP_PASSWORD"]
        try:
            return self.prompt(f"password for {options.user}@{options.host}: ")
        except EOFError:
            raise UsageError("no password: use $TXHARP_PASSWORD, --password-file or a terminal") from None

    async def direct(self) -> int:
        options = self.options
        arguments = _call_arguments(options)
        password = self._password()
        try:
            server = HarpServer(
                options.host,
                options.user,
                password,
                options.port,
                options.ca_file,
                reactor=self.reactor,
                pins=options.pin,
                check_hostname=options.check_hostname,
                tls_minimum=options.tls_minimum,
                connect_timeout=self.io_timeout,
                timeout=options.timeout,
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
        if options.ca_file is None and not options.pin:
            self.out.note("warning: harpd's certificate is not verified (no --ca-file or --pin)")
        outcome = await _invoke(server[options.procedure], arguments)
        if not isinstance(outcome, MessageStream):
            return self.out.end(outcome)
        final: List[Any] = []

        def item(value: Any) -> None:
            if isinstance(value, Result):
                final.append(value.value)
            else:
                self.out.stream_item(value)

        self.out.start_progress(f"{options.procedure} on {options.host}")
        try:
            await outcome.each(item)
        finally:
            self.out.stop_progress()
        return self.out.end(final[0], after_packets=True)


def _when(stamp: Optional[int]) -> str:
    if stamp is None:
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(stamp))} ({stamp})"


async def run(
    reactor: Any,
    argv: Sequence[str],
    *,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    environ: Optional[Mapping[str, str]] = None,
    prompt: Callable[[str], str] = getpass.getpass,
) -> int:
    """Run the ``txharp`` command ``argv`` (without the program name) on ``reactor``.

    Returns the exit status (see ``txharp --help``).  Output goes to
    ``stdout``/``stderr`` (default: the process's), variables are read
    from ``environ`` (default: ``os.environ``), a password is asked with
    ``prompt``.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            options = parser.parse_args(list(argv))
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except UsageError as e:
        stderr.write(f"{e}\n")
        return EXIT_USAGE
    out = _Output(stdout, stderr, getattr(options, "json", False), reactor)
    command = _Command(reactor, options, out, environ, prompt)
    try:
        return await _answer(command, options, out, stderr)
    except BrokenPipeError:  # whoever read our output has gone: stop quietly
        return EXIT_BROKEN_PIPE


async def _answer(command: "_Command", options: Any, out: "_Output", stderr: TextIO) -> int:
    """Run the command; turn the errors it may end with into exit statuses."""
    try:
        handler: Callable[[], Awaitable[int]] = getattr(command, options.command)
        return await handler()
    except UsageError as e:
        stderr.write(f"txharp {options.command}: {e}\n")
        return EXIT_USAGE
    except RemoteException as e:
        return out.end(e)
    except RemoteError as e:
        return out.end(e)
    except CancelledException:
        return out.end(CALL_CANCELLED)
    except CommunicationError as e:
        out.communication_error(e)
        return EXIT_COMMUNICATION
    except HarpException as e:  # a wrong value in the call: mixed arguments, JSON limits...
        stderr.write(f"txharp {options.command}: {e}\n")
        return EXIT_USAGE


async def _react_main(reactor: Any, argv: Sequence[str]) -> NoReturn:
    running = Deferred.fromCoroutine(run(reactor, argv))

    def interrupted() -> None:
        if not running.called:
            running.cancel()

    # Ctrl-C stops the reactor: close the connections and say so.
    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    try:
        code = await running
    except CancelledError:
        sys.stderr.write("txharp: interrupted (a submitted job keeps running)\n")
        code = EXIT_INTERRUPTED
    if code == EXIT_BROKEN_PIPE:
        # Python flushes stdout once more at exit; into the closed pipe
        # that would print an "Exception ignored" message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(code)


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The ``txharp`` console script."""
    react(_react_main, (sys.argv[1:] if argv is None else argv,))
    raise AssertionError("react() returns only by exiting")


if __name__ == "__main__":
    main()
