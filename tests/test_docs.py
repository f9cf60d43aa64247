"""The documentation builds without warnings, and every example in it runs.

* :class:`BuildTests` builds the Sphinx site (HTML) and the man pages with
  ``-W`` in a temporary directory (skipped only when Sphinx is missing).
* Every file in ``docs/examples/`` is shown in the docs with
  ``literalinclude`` and has an entry in :data:`EXAMPLES`, the table of how
  each one is checked; :class:`ExampleCoverageTests` enforces both, and
  that no page carries an untested inline code block.
* The client examples run as the reader would run them: ``python
  example.py ARGS`` in a subprocess, against an in-test fake dispatcher or a
  fake TLS harpd on 127.0.0.1, and their output must equal the ``.out``
  file the docs show beside them (job IDs aside).
* Examples that need code which is not in this checkout yet (``txharp.sync``,
  the twistd plugins, the ``txharp`` command...) are skipped with the reason
  "waiting on ..." and run as soon as that code exists.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.protocol import Factory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txharp.errors import MalformedMessage
from txharp.lines import JSONLinesProtocol
from txharp.wire import (
    Acknowledgement,
    CallAccepted,
    CallRequest,
    CancelledReply,
    CancelReply,
    CancelRequest,
    ContinueReply,
    DaemonRequestError,
    ErrorReply,
    ExceptionReply,
    FollowStreamRequest,
    GetResultRequest,
    GetStatusRequest,
    NoResultReply,
    Packet,
    ReadStreamRequest,
    ResultReply,
    StatusReply,
    StreamItem,
    parse_daemon_request,
    parse_request,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
EXAMPLES_DIR = os.path.join(DOCS, "examples")

#: How long one example may run.
EXAMPLE_TIMEOUT = 60


def missing(*modules: str) -> Optional[str]:
    """A skip reason naming the modules that do not exist yet, or None."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            absent.append(name)
    return f"waiting on {', '.join(absent)}" if absent else None


def require(*modules: str) -> None:
    reason = missing(*modules)
    if reason:
        raise SkipTest(reason)


def example(name: str) -> str:
    return os.path.join(EXAMPLES_DIR, name)


# ===================================================================== build


_builds: Dict[str, Tuple[int, str, str, float]] = {}


def build(builder: str) -> Tuple[int, str, str, float]:
    """Run ``sphinx-build -W --keep-going -b BUILDER`` once per process:
    (exit status, output, output directory, seconds)."""
    if importlib.util.find_spec("sphinx") is None:
        raise SkipTest("Sphinx is not installed (pip install '.[test]')")
    if builder not in _builds:
        out = tempfile.mkdtemp(prefix=f"txharp-docs-{builder}-")
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
             "-d", os.path.join(out, ".doctrees"), DOCS, out],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )
        _builds[builder] = (proc.returncode, proc.stdout, out, time.monotonic() - started)
    return _builds[builder]


def pending_reference() -> List[Dict[str, str]]:
    """What the HTML build could not generate because code is missing."""
    status, output, out, _ = build("html")
    with open(os.path.join(out, "pending.json"), encoding="utf-8") as f:
        return json.load(f)


class BuildTests(SynchronousTestCase):
    """``sphinx-build -W`` of the site and of the man pages."""

    def test_html(self) -> None:
        status, output, out, seconds = build("html")
        self.assertEqual(status, 0, f"the HTML build failed or warned:\n{output}")
        self.assertTrue(os.path.exists(os.path.join(out, "index.html")))
        self.assertLess(seconds, 60, "the HTML build should stay fast")

    def test_man_pages(self) -> None:
        status, output, out, seconds = build("man")
        self.assertEqual(status, 0, f"the man page build failed or warned:\n{output}")
        pages = {os.path.relpath(os.path.join(d, f), out)
                 for d, _, files in os.walk(out) for f in files if not d.endswith(".doctrees")
                 and ".doctrees" not in d}
        names = {os.path.basename(p) for p in pages}
        for page in ("txharp.1", "harp-proxy.8", "txharp-harpd.8", "txharp.3"):
            self.assertIn(page, names)

    def test_diagram(self) -> None:
        """With Graphviz the data-flow diagram is an SVG image; without, its source."""
        status, output, out, _ = build("html")
        self.assertEqual(status, 0, output)
        with open(os.path.join(out, "overview.html"), encoding="utf-8") as f:
            page = f.read()
        if shutil.which(os.environ.get("GRAPHVIZ_DOT", "dot")):
            self.assertRegex(page, r'(?s)<(img|object)[^>]+\.svg')
        else:
            self.assertIn("harp-proxy", page)
            raise SkipTest("Graphviz's dot is not installed: the diagram is built as source only")


def _man_text(name: str) -> str:
    status, output, out, _ = build("man")
    if status != 0:
        raise AssertionError(f"the man page build failed:\n{output}")
    for directory, _, files in os.walk(out):
        if name in files:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                return f.read()
    raise AssertionError(f"no man page {name}")


def _unescape_man(text: str) -> str:
    return text.replace("\\-", "-").replace("\\fB", "").replace("\\fP", "").replace("\\fI", "")


class GeneratedReferenceTests(SynchronousTestCase):
    """The option lists are generated from the code, so every option is there."""

    def _check_twistd(self, tapname: str, page: str) -> None:
        maker = service_maker(tapname)
        text = _unescape_man(_man_text(page))
        options = maker.options()
        for name in options.longOpt:
            name = name.rstrip("=")
            if name not in ("help", "version"):
                self.assertIn(f"--{name}", text, f"{page} lacks --{name}")

    def test_harp_proxy_options(self) -> None:
        self._check_twistd("harp-proxy", "harp-proxy.8")

    def test_harpd_options(self) -> None:
        self._check_twistd("harpd", "txharp-harpd.8")

    def test_txharp_command_options(self) -> None:
        require("txharp.cli")
        parser = docs_extension().find_parser("txharp.cli")
        text = _unescape_man(_man_text("txharp.1"))
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    self.assertIn(option, text)

    def test_every_module_documented(self) -> None:
        """Every module of txharp has a page (modules appear in the module index)."""
        import pkgutil

        import txharp

        status, output, out, _ = build("html")
        self.assertEqual(status, 0, output)
        with open(os.path.join(out, "py-modindex.html"), encoding="utf-8") as f:
            index = f.read()
        for info in pkgutil.walk_packages(txharp.__path__, "txharp."):
            if info.name.split(".")[-1].startswith("_"):
                continue
            self.assertIn(f">{info.name}<", index, f"{info.name} is not documented")

    def test_nothing_pending(self) -> None:
        """Lists what the reference still waits for (a skip, not a failure)."""
        pending = pending_reference()
        if pending:
            raise SkipTest("waiting on " + "; ".join(sorted({p["needs"] for p in pending})))


# ================================================================= coverage

#: Every file in docs/examples and how it is checked: the test method that
#: runs it (in this module) and the modules it needs.
EXAMPLES: Dict[str, str] = {
    "call_deferreds.py": "ClientExampleTests.test_call_deferreds",
    "call_deferreds.out": "ClientExampleTests.test_call_deferreds",
    "call_async.py": "ClientExampleTests.test_call_async",
    "call_async.out": "ClientExampleTests.test_call_async",
    "call_sync.py": "ClientExampleTests.test_call_sync",
    "call_sync.out": "ClientExampleTests.test_call_sync",
    "streams.py": "ClientExampleTests.test_streams",
    "streams.out": "ClientExampleTests.test_streams",
    "queues.py": "ClientExampleTests.test_queues",
    "queues.out": "ClientExampleTests.test_queues",
    "errors.py": "ClientExampleTests.test_errors",
    "errors.out": "ClientExampleTests.test_errors",
    "migrate_harp.py": "ClientExampleTests.test_migrate_harp",
    "migrate_harp.out": "ClientExampleTests.test_migrate_harp",
    "direct.py": "DirectExampleTests.test_direct",
    "direct.out": "DirectExampleTests.test_direct",
    "direct_callbacks.py": "DirectExampleTests.test_direct_callbacks",
    "direct_callbacks.out": "DirectExampleTests.test_direct_callbacks",
    "direct_sync.py": "DirectExampleTests.test_direct_sync",
    "direct_sync.out": "DirectExampleTests.test_direct_sync",
    "direct_pinned.py": "TLSExampleTests.test_openssl_pki",
    "direct_legacy.py": "TLSExampleTests.test_legacy_tls",
    "make-pki.sh": "TLSExampleTests.test_openssl_pki",
    "make_pki.py": "TLSExampleTests.test_testing_pki",
    "make_pki.out": "TLSExampleTests.test_testing_pki",
    "procedures.py": "DaemonExampleTests.test_procedures",
    "procedures_native.py": "DaemonExampleTests.test_procedures_native",
    "harpd.yaml": "DaemonExampleTests.test_configuration",
    "harpd-inline.yaml": "DaemonExampleTests.test_configuration",
    "users.txt": "DaemonExampleTests.test_password_file",
    "logging.yaml": "DaemonExampleTests.test_logging_configuration",
    "hosts.jsonl": "ProxyExampleTests.test_hosts_registry",
    "hosts-script.sh": "ProxyExampleTests.test_hosts_script",
    "harpcaller.toml": "ProxyExampleTests.test_harpcaller_toml",
    "harp-proxy.service": "OperationsExampleTests.test_systemd_units",
    "txharp-harpd.service": "OperationsExampleTests.test_systemd_units",
    "jsonlog.py": "OperationsExampleTests.test_json_log_observer",
    "backup-jobs.sh": "OperationsExampleTests.test_backup_script",
    "backup_jobs.py": "OperationsExampleTests.test_backup_python",
    "quickstart-harpd.yaml": "QuickstartTests.test_by_hand",
    "quickstart-hosts.jsonl": "QuickstartTests.test_by_hand",
}

_LITERALINCLUDE = re.compile(r"^\s*\.\. literalinclude::\s+(\S+)", re.M)
_UNTESTED_BLOCK = re.compile(
    r"^\s*\.\. (?:code-block|code|sourcecode)::\s*(python|py|python3|pycon|yaml|toml|json|ini|"
    r"systemd|sh|bash|shell)\s*$", re.M)


def doc_sources() -> List[str]:
    sources = []
    for directory, dirs, files in os.walk(DOCS):
        dirs[:] = [d for d in dirs if d not in ("_build", "examples", "_ext")]
        sources += [os.path.join(directory, f) for f in files if f.endswith((".rst", ".md"))]
    return sorted(sources)


class ExampleCoverageTests(SynchronousTestCase):
    """Every example is shown and tested; no page has untested code."""

    def test_every_example_is_included(self) -> None:
        included = set()
        for source in doc_sources():
            with open(source, encoding="utf-8") as f:
                for target in _LITERALINCLUDE.findall(f.read()):
                    included.add(os.path.normpath(os.path.join(os.path.dirname(source), target)))
        for name in sorted(os.listdir(EXAMPLES_DIR)):
            if name.startswith(("_", ".")) or name == "__pycache__":
                continue
            self.assertIn(os.path.join(EXAMPLES_DIR, name), included,
                          f"docs/examples/{name} is not shown on any page")

    def test_every_example_is_tested(self) -> None:
        for name in sorted(os.listdir(EXAMPLES_DIR)):
            if name.startswith(("_", ".")) or name == "__pycache__":
                continue
            self.assertIn(name, EXAMPLES, f"docs/examples/{name} has no test in EXAMPLES")
            cls, method = EXAMPLES[name].split(".")
            self.assertTrue(hasattr(globals()[cls], method), EXAMPLES[name])
        for name in EXAMPLES:
            self.assertTrue(os.path.exists(example(name)), f"EXAMPLES names a missing file {name}")

    def test_no_inline_code(self) -> None:
        """Code in the pages comes from docs/examples (literalinclude), where it is tested.

        Only ``console`` blocks (command lines, checked by
        :class:`CommandLineTests`) and ``text`` blocks are written inline.
        """
        for source in doc_sources():
            with open(source, encoding="utf-8") as f:
                text = f.read()
            self.assertEqual(_UNTESTED_BLOCK.findall(text), [], f"inline code in {source}")


# ============================================================ command lines

_CONSOLE_BLOCK = re.compile(
    r"^([ \t]*)\.\. code-block:: console[ \t]*\n((?:\1[ \t]+.*\n|[ \t]*\n)+)", re.M)


def _without_assignments(command: str) -> str:
    """The command without leading ``VAR=value`` environment assignments."""
    words = command.split(" ")
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=\S*$", words[0]):
        words.pop(0)
    return " ".join(words)


def console_commands() -> List[Tuple[str, str]]:
    """``(page, command)`` for every ``$ command`` in the pages' console blocks,
    with backslash continuations joined and environment assignments left out."""
    commands = []
    for source in doc_sources():
        with open(source, encoding="utf-8") as f:
            text = f.read()
        for match in _CONSOLE_BLOCK.finditer(text):
            lines = [line.strip() for line in match.group(2).splitlines()]
            current: Optional[str] = None
            for line in lines:
                if current is not None:
                    current += " " + line.rstrip("\\").strip()
                    if not line.endswith("\\"):
                        commands.append((source, _without_assignments(current)))
                        current = None
                elif line.startswith("$ "):
                    if line.endswith("\\"):
                        current = line[2:].rstrip("\\").strip()
                    else:
                        commands.append((source, _without_assignments(line[2:])))
    return commands


#: Programs whose command lines in the docs are only checked to be known.
KNOWN_PROGRAMS = {
    "bash", "sh", "python", "python3", "pip", "openssl", "sqlite3", "systemctl", "journalctl",
    "sudo", "install", "mkdir", "cp", "chmod", "chown", "useradd", "cd", "ls", "cat", "git",
    "man", "harp", "ln", "jq", "sphinx-build", "kill", "systemd-analyze",
}


def check_twistd_command(argv: List[str]) -> None:
    """Check a ``twistd [OPTIONS] PLUGIN [PLUGIN-OPTIONS]`` command line.

    twistd's own options are parsed; the plugin's are checked by name only,
    since parsing them would read the files they name.
    """
    from twisted.scripts.twistd import ServerOptions

    extension = docs_extension()
    for position, word in enumerate(argv[1:], 1):
        maker = None if word.startswith("-") else extension.find_service_maker(word)
        if maker is not None:
            break
    else:
        raise AssertionError(f"no txharp twistd plugin in {argv}")
    class TwistdOnly(ServerOptions):
        subCommands: List[Any] = []  # twistd's own options, without loading plugins

    sys.path.insert(0, EXAMPLES_DIR)  # for --logger=jsonlog.observer
    try:
        TwistdOnly().parseOptions(argv[1:position])
    finally:
        sys.path.remove(EXAMPLES_DIR)
    options = maker.options()
    known = {name.rstrip("=") for name in options.longOpt} | set(options.synonyms)
    for word in argv[position + 1:]:
        if word.startswith("--"):
            name = word[2:].split("=")[0]
        elif word.startswith("-") and len(word) > 1:
            name = word[1]
        else:
            continue
        if name not in known:
            raise AssertionError(f"twistd {maker.tapname} has no option {word!r}")


class CommandLineTests(SynchronousTestCase):
    """Every ``$ twistd ...`` and ``$ txharp ...`` line in the docs parses."""

    def test_twistd_command_lines(self) -> None:
        service_maker("harp-proxy")
        service_maker("harpd")
        commands = [(page, c) for page, c in console_commands() if c.startswith("twistd ")]
        self.assertTrue(commands)
        for page, command in commands:
            try:
                check_twistd_command(shlex.split(command))
            except Exception as e:
                self.fail(f"{os.path.relpath(page, ROOT)}: {command}: {e}")

    def test_txharp_command_lines(self) -> None:
        require("txharp.cli")
        parser = docs_extension().find_parser("txharp.cli")
        commands = [(page, c) for page, c in console_commands() if c.startswith("txharp ")]
        self.assertTrue(commands)
        for page, command in commands:
            argv = shlex.split(command.split(" | ")[0])[1:]
            try:
                parser.parse_args(argv)
            except (SystemExit, Exception) as e:
                self.fail(f"{os.path.relpath(page, ROOT)}: {command} does not parse: {e}")

    def test_other_programs_known(self) -> None:
        """Scripts named in the docs exist; other programs are expected ones."""
        for page, command in console_commands():
            argv = shlex.split(command.split(" | ")[0].split(" && ")[0])
            program = os.path.basename(argv[0])
            if program in ("twistd", "txharp"):
                continue
            self.assertIn(program, KNOWN_PROGRAMS, f"{page}: {command}")
            if program == "bash" and argv[1].startswith("scripts/"):
                if not os.path.exists(os.path.join(ROOT, argv[1])):
                    raise SkipTest(f"waiting on {argv[1]}")


# ================================================================== fakes


async def _sleep(clock: Any, seconds: float) -> None:
    await task.deferLater(clock, seconds, lambda: None)


async def proc_uptime(clock: Any, emit: Callable[[Any], None]) -> Any:
    return 86400.25


async def proc_add(clock: Any, emit: Callable[[Any], None], a: Any, b: Any) -> Any:
    return a + b


async def proc_tail_log(clock: Any, emit: Callable[[Any], None], path: str, lines: int = 10) -> Any:
    for number in range(1, lines + 1):
        await _sleep(clock, 0.01)
        emit(f"{path}: line {number}")
    return lines


async def proc_sleep(clock: Any, emit: Callable[[Any], None], seconds: float) -> Any:
    await _sleep(clock, seconds)
    return seconds


#: The procedures the examples call, with whether each one streams.
PROCEDURES: Dict[str, Tuple[Callable[..., Any], bool]] = {
    "uptime": (proc_uptime, False),
    "add": (proc_add, False),
    "tail_log": (proc_tail_log, True),
    "sleep": (proc_sleep, False),
}


def run_procedure(name: str, arguments: Any, emit: Callable[[Any], None]) -> Deferred:
    """Start a fake procedure; fires with its value or fails with its exception."""
    function, _ = PROCEDURES[name]
    if isinstance(arguments, dict):
        return ensureDeferred(_call(function, [], arguments, emit))
    return ensureDeferred(_call(function, list(arguments), {}, emit))


async def _call(function: Callable[..., Any], args: List[Any], kwargs: Dict[str, Any], emit: Any) -> Any:
    return await function(reactor, emit, *args, **kwargs)


def exception_reply(failure: Failure) -> ExceptionReply:
    error = failure.value
    return ExceptionReply(type(error).__name__, str(error),
                          {"class": type(error).__name__, "module": type(error).__module__})


def forget(protocol: Any) -> None:
    """Take a closed connection off its factory's list (see ``_Tracked``)."""
    connections = getattr(getattr(protocol, "factory", None), "connections", None)
    if connections is not None and protocol in connections:
        connections.remove(protocol)


class FakeJob:
    """One job of the fake dispatcher."""

    def __init__(self, dispatcher: "FakeDispatcher", call: CallRequest) -> None:
        self.dispatcher = dispatcher
        self.call = call
        self.id = str(uuid.uuid4())
        self.packets: List[Any] = []
        self.outcome: Optional[Any] = None
        self.submit = int(time.time())
        self.start: Optional[int] = None
        self.end: Optional[int] = None
        self.watchers: List[Any] = []
        self._running: Optional[Deferred] = None
        self._timers: List[Any] = []

    def begin(self) -> None:
        self.start = int(time.time())
        if self.call.host not in self.dispatcher.hosts:
            self.finish(ErrorReply("unknown_host", "host unknown", {"host": self.call.host}))
            return
        if self.call.procedure not in PROCEDURES:
            self.finish(ErrorReply("no_such_procedure", "no such procedure"))
            return
        limit = min(self.call.max_exec_time or 600, 600)
        self._timers.append(reactor.callLater(
            limit, self.finish,
            ErrorReply("timeout", "maximum execution time exceeded", {"max_exec_time": limit})))
        self._running = run_procedure(self.call.procedure, self.call.arguments, self.emit)
        self._running.addCallbacks(lambda value: self.finish(ResultReply(value)), self._failed)

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self.finish(exception_reply(failure))

    def emit(self, data: Any) -> None:
        if self.outcome is None:
            self.packets.append(data)
            for watcher in list(self.watchers):
                watcher.packet(len(self.packets) - 1, data)

    def finish(self, outcome: Any) -> bool:
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.end = int(time.time())
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if self._running is not None and not self._running.called:
            self._running.cancel()
        self.dispatcher.job_ended(self)
        for watcher in list(self.watchers):
            watcher.ended(outcome)
        return True

    def status(self) -> StatusReply:
        return StatusReply(self.call.host, self.call.procedure, self.call.arguments,
                           self.submit, self.start, self.end, self.call.info)


class FakeDispatcher:
    """A small in-memory dispatcher: jobs, queues, max_exec_time, streams."""

    def __init__(self, hosts: Tuple[str, ...] = ("web01", "web02")) -> None:
        self.hosts = hosts
        self.jobs: Dict[str, FakeJob] = {}
        self.queues: Dict[str, Dict[str, Any]] = {}
        self.requests: List[Any] = []

    def submit(self, call: CallRequest) -> FakeJob:
        job = FakeJob(self, call)
        self.jobs[job.id] = job
        if call.queue is None:
            reactor.callLater(0, job.begin)
            return job
        key = json.dumps(call.queue.name, sort_keys=True)
        queue = self.queues.setdefault(
            key, {"concurrency": call.queue.concurrency or 1, "running": set(), "waiting": deque()})
        if len(queue["running"]) < queue["concurrency"]:
            queue["running"].add(job)
            reactor.callLater(0, job.begin)
        else:
            queue["waiting"].append(job)
        return job

    def job_ended(self, job: FakeJob) -> None:
        if job.call.queue is None:
            return
        key = json.dumps(job.call.queue.name, sort_keys=True)
        queue = self.queues[key]
        if job in queue["waiting"]:
            queue["waiting"].remove(job)
        queue["running"].discard(job)
        while queue["waiting"] and len(queue["running"]) < queue["concurrency"]:
            following = queue["waiting"].popleft()
            queue["running"].add(following)
            reactor.callLater(0, following.begin)
        if not queue["running"] and not queue["waiting"]:
            del self.queues[key]

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: FakeDispatcherProtocol(self))


class FakeDispatcherProtocol(JSONLinesProtocol):
    """The dispatcher protocol's server side, one request per connection."""

    def __init__(self, dispatcher: FakeDispatcher) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.job: Optional[FakeJob] = None
        self.streaming = False

    def reply(self, message: Any) -> None:
        self.sendMessage(message)
        self.transport.loseConnection()

    def messageReceived(self, value: Any) -> None:
        try:
            request = parse_request(value)
        except MalformedMessage as e:
            self.reply(ErrorReply("invalid_request", e.message))
            return
        self.dispatcher.requests.append(request)
        if isinstance(request, CallRequest):
            self.reply(CallAccepted(self.dispatcher.submit(request).id))
            return
        job = self.dispatcher.jobs.get(request.job_id)
        if job is None:
            self.reply(ErrorReply("invalid_jobid", "no job with this ID"))
        elif isinstance(request, CancelRequest):
            self.reply(CancelReply(job.finish(CancelledReply())))
        elif isinstance(request, GetStatusRequest):
            self.reply(job.status())
        elif isinstance(request, GetResultRequest):
            if job.outcome is not None:
                self.reply(job.outcome)
            elif not request.wait:
                self.reply(NoResultReply())
            else:
                self.watch(job)
        elif isinstance(request, (FollowStreamRequest, ReadStreamRequest)):
            follow = isinstance(request, FollowStreamRequest)
            if request.since is not None:
                first = request.since
            elif request.recent is not None:
                first = max(0, len(job.packets) - request.recent)
            else:
                first = len(job.packets) if follow else 0
            for number in range(first, len(job.packets)):
                self.sendMessage(Packet(number, job.packets[number]))
            if job.outcome is not None:
                self.reply(job.outcome)
            elif not follow:
                self.reply(ContinueReply())
            else:
                self.streaming = True
                self.watch(job)

    def watch(self, job: FakeJob) -> None:
        self.job = job
        job.watchers.append(self)

    def packet(self, number: int, data: Any) -> None:
        if self.streaming:
            self.sendMessage(Packet(number, data))

    def ended(self, outcome: Any) -> None:
        self.reply(outcome)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        forget(self)
        if self.job is not None and self in self.job.watchers:
            self.job.watchers.remove(self)


class FakeHarpdProtocol(JSONLinesProtocol):
    """The harpd protocol's server side, over TLS, for user alice."""

    password = "s3cret"

    def __init__(self) -> None:
        super().__init__()
        self.running: Optional[Deferred] = None

    def send_error(self, error: ErrorReply) -> None:
        self.sendMessage(error.to_daemon_json())
        self.transport.loseConnection()

    def messageReceived(self, value: Any) -> None:
        if self.running is not None:
            self.send_error(ErrorReply("invalid_request", "unexpected data after the request"))
            return
        try:
            request = parse_daemon_request(value)
        except DaemonRequestError as e:
            self.send_error(e.reply())
            return
        if (request.user, request.password) != ("alice", self.password):
            self.send_error(ErrorReply("auth_error", "authentication error"))
            return
        if request.procedure not in PROCEDURES:
            self.send_error(ErrorReply("no_such_procedure", "no such procedure"))
            return
        self.sendMessage(Acknowledgement(PROCEDURES[request.procedure][1]))
        self.running = run_procedure(
            request.procedure, request.arguments, lambda data: self.sendMessage(StreamItem(data)))
        self.running.addCallbacks(ResultReply, self._raised)
        self.running.addCallbacks(self._final, lambda failure: failure.trap(CancelledError))

    def _raised(self, failure: Failure) -> Any:
        if failure.check(CancelledError):
            return failure
        return exception_reply(failure)

    def _final(self, reply: Any) -> None:
        self.sendMessage(reply)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        forget(self)
        if self.running is not None and not self.running.called:
            self.running.cancel()


def listen_harpd(creator: Any) -> Any:
    """A fake harpd behind ``creator`` (server TLS) on 127.0.0.1; returns the port."""
    factory = TLSMemoryBIOFactory(creator, False, Factory.forProtocol(FakeHarpdProtocol))
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


# ================================================================ running

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FINGERPRINT = re.compile(r"\b[0-9a-f]{64}\b")


def normalise(text: str) -> str:
    """Output with the parts that change from run to run replaced."""
    text = _UUID.sub("<job id>", text)
    return _FINGERPRINT.sub("<fingerprint>", text)


class _Tracked(Factory):
    """A factory remembering its connections, so tests can close them all."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build
        self.connections: List[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.build()
        protocol.factory = self
        self.connections.append(protocol)
        return protocol


class ExampleTestCase(TestCase):
    """Runs example files as a reader would: ``python FILE ARGS``."""

    timeout = 180

    def setUp(self) -> None:
        # Not self.mktemp(): under pytest that is relative to the checkout.
        self.directory = tempfile.mkdtemp(prefix="txharp-docs-example-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def listen(self, factory: Factory, tls: Any = None) -> int:
        """Listen on 127.0.0.1 (over TLS when ``tls`` is server TLS options)."""
        tracked = factory
        if tls is not None:
            factory = TLSMemoryBIOFactory(tls, False, factory)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._close, port, tracked)
        return port.getHost().port

    def _close(self, port: Any, factory: Any) -> Deferred:
        return ensureDeferred(self._closing(port, factory))

    async def _closing(self, port: Any, factory: Any) -> None:
        await port.stopListening()
        for connection in list(getattr(factory, "connections", [])):
            connection.transport.abortConnection()
        await task.deferLater(reactor, 0.05, lambda: None)  # let the aborts finish

    def run_example(self, name: str, *args: str, env: Optional[Dict[str, str]] = None,
                    succeed: bool = True) -> Deferred:
        """Run docs/examples/NAME with ARGS in the test's directory; fires with
        (stdout, stderr) as text; fails the test if the exit status is not 0
        (or is 0 when ``succeed`` is False)."""
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(
            [ROOT, EXAMPLES_DIR] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []))
        environ.update(env or {})
        program = sys.executable if name.endswith(".py") else "/bin/sh"
        d = getProcessOutputAndValue(program, [example(name), *args], env=environ,
                                     path=self.directory)
        d.addTimeout(EXAMPLE_TIMEOUT, reactor)

        def done(result: Tuple[bytes, bytes, int]) -> Tuple[str, str]:
            out, err, status = result
            out_text, err_text = out.decode(), err.decode()
            if succeed and status != 0:
                self.fail(f"{name} {' '.join(args)} exited with {status}:\n{out_text}{err_text}")
            if not succeed and status == 0:
                self.fail(f"{name} {' '.join(args)} should have failed:\n{out_text}")
            return out_text, err_text

        return d.addCallback(done)

    def assertOutput(self, name: str, output: str) -> None:
        """``output`` equals docs/examples/NAME (the output the docs show).

        With ``TXHARP_DOCS_WRITE_OUTPUT=1`` in the environment the file is
        rewritten instead (check the diff before committing it).
        """
        if os.environ.get("TXHARP_DOCS_WRITE_OUTPUT"):
            with open(example(name), "w", encoding="utf-8") as f:
                f.write(output)
        with open(example(name), encoding="utf-8") as f:
            expected = f.read()
        self.assertEqual(normalise(output), normalise(expected))

    async def check_example(self, name: str, *args: str, **options: Any) -> str:
        out, _ = await self.run_example(name, *args, **options)
        self.assertOutput(name.rsplit(".", 1)[0] + ".out", out)
        return out


class ClientExampleTests(ExampleTestCase):
    """The dispatcher client examples against the fake dispatcher."""

    def setUp(self) -> None:
        super().setUp()
        self.dispatcher = FakeDispatcher()
        self.address = ["127.0.0.1", str(self.listen(_Tracked(
            lambda: FakeDispatcherProtocol(self.dispatcher))))]
        self.addCleanup(self._end_jobs)

    def _end_jobs(self) -> None:
        for job in self.dispatcher.jobs.values():
            job.finish(CancelledReply())

    def test_call_deferreds(self) -> Deferred:
        return ensureDeferred(self.check_example("call_deferreds.py", *self.address))

    def test_call_async(self) -> Deferred:
        return ensureDeferred(self.check_example("call_async.py", *self.address))

    def test_call_sync(self) -> Deferred:
        require("txharp.sync")
        return ensureDeferred(self.check_example("call_sync.py", *self.address))

    def test_streams(self) -> Deferred:
        return ensureDeferred(self.check_example("streams.py", *self.address))

    async def _queues(self) -> None:
        await self.check_example("queues.py", *self.address)
        calls = [r for r in self.dispatcher.requests if isinstance(r, CallRequest)]
        self.assertEqual(calls[0].queue.to_json(),
                         {"name": {"deploy": "web01"}, "concurrency": 1})
        self.assertEqual((calls[2].max_exec_time, calls[2].timeout), (1, 30))

    def test_queues(self) -> Deferred:
        return ensureDeferred(self._queues())

    def test_errors(self) -> Deferred:
        return ensureDeferred(self.check_example("errors.py", *self.address))

    def test_migrate_harp(self) -> Deferred:
        require("txharp.sync")
        return ensureDeferred(self.check_example("migrate_harp.py", *self.address))


def _harpd_factory() -> _Tracked:
    return _Tracked(FakeHarpdProtocol)


class DirectExampleTests(ExampleTestCase):
    """The harpd client examples against a fake harpd over TLS."""

    def setUp(self) -> None:
        super().setUp()
        from txharp.testing import TestPKI
        from txharp.tls import server_tls_options

        self.pki = TestPKI(os.path.join(self.directory, "pki"))
        port = self.listen(_harpd_factory(), server_tls_options(self.pki.chain_file, self.pki.key_file))
        self.args = ["localhost", str(port), self.pki.ca_file]
        self.env = {"HARPD_PASSWORD": FakeHarpdProtocol.password}

    def test_direct(self) -> Deferred:
        return ensureDeferred(self.check_example("direct.py", *self.args, env=self.env))

    def test_direct_callbacks(self) -> Deferred:
        return ensureDeferred(self.check_example("direct_callbacks.py", *self.args, env=self.env))

    def test_direct_sync(self) -> Deferred:
        require("txharp.sync")
        return ensureDeferred(self.check_example("direct_sync.py", *self.args, env=self.env))


class TLSExampleTests(ExampleTestCase):
    """Certificates made as the TLS tutorial says work with txharp."""

    env = {"HARPD_PASSWORD": FakeHarpdProtocol.password}

    async def _testing_pki(self) -> None:
        from txharp.tls import server_tls_options

        out = await self.check_example("make_pki.py", "pki")
        pki = os.path.join(self.directory, "pki")
        fingerprint = _FINGERPRINT.search(out).group(0)  # type: ignore[union-attr]
        port = str(self.listen(_harpd_factory(), server_tls_options(
            os.path.join(pki, "server-chain.pem"), os.path.join(pki, "server-key.pem"))))
        out, _ = await self.run_example(
            "direct.py", "localhost", port, os.path.join(pki, "server-ca.pem"), env=self.env)
        self.assertIn("uptime: 86400.25", out)
        out, _ = await self.run_example("direct_pinned.py", "localhost", port, fingerprint, env=self.env)
        self.assertEqual(out, "uptime: 86400.25\n")

    def test_testing_pki(self) -> Deferred:
        return ensureDeferred(self._testing_pki())

    async def _openssl_pki(self) -> None:
        from txharp.tls import server_tls_options

        out, _ = await self.run_example("make-pki.sh", "localhost")
        fingerprint = re.search(r"Fingerprint=([0-9A-F:]{95})", out).group(1)  # type: ignore[union-attr]
        port = str(self.listen(_harpd_factory(), server_tls_options(
            os.path.join(self.directory, "localhost.pem"),
            os.path.join(self.directory, "localhost.key"))))
        out, _ = await self.run_example(
            "direct.py", "localhost", port, os.path.join(self.directory, "ca.pem"), env=self.env)
        self.assertIn("uptime: 86400.25", out)
        # As openssl prints it: upper case, with colons.
        out, _ = await self.run_example("direct_pinned.py", "localhost", port, fingerprint, env=self.env)
        self.assertEqual(out, "uptime: 86400.25\n")
        # A name the certificate does not carry is refused when a CA is given.
        _, err = await self.run_example(
            "direct.py", "127.0.0.1", port, os.path.join(self.directory, "ca.pem"),
            env=self.env, succeed=False)
        self.assertIn("does not match '127.0.0.1'", err)

    def test_openssl_pki(self) -> Deferred:
        if not shutil.which("openssl"):
            raise SkipTest("the openssl program is not installed")
        return ensureDeferred(self._openssl_pki())

    async def _legacy(self) -> None:
        from OpenSSL import SSL
        from zope.interface import implementer
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

        from txharp.testing import TestPKI

        pki = TestPKI(os.path.join(self.directory, "pki"), key_type="rsa")
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_VERSION)  # what the original harpd speaks
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.use_certificate_chain_file(pki.chain_file)
        context.use_privatekey_file(pki.key_file)

        @implementer(IOpenSSLServerConnectionCreator)
        class Creator:
            def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
                return SSL.Connection(context, None)

        port = str(self.listen(_harpd_factory(), Creator()))
        out, _ = await self.run_example("direct_legacy.py", "localhost", port, pki.ca_file, env=self.env)
        self.assertEqual(out, "uptime: 86400.25\n")
        # Without the opt-in, the error says what to do.
        _, err = await self.run_example("direct.py", "localhost", port, pki.ca_file,
                                        env=self.env, succeed=False)
        self.assertIn("minimum_version='1.0'", err)

    def test_legacy_tls(self) -> Deferred:
        return ensureDeferred(self._legacy())


def docs_extension() -> Any:
    """docs/_ext/txharp_docs.py, the Sphinx extension (for its code readers)."""
    sys.path.insert(0, os.path.join(DOCS, "_ext"))
    try:
        return importlib.import_module("txharp_docs")
    finally:
        sys.path.remove(os.path.join(DOCS, "_ext"))


def service_maker(tapname: str) -> Any:
    """txharp's twistd plugin ``tapname``; skips the test while it does not exist."""
    maker = docs_extension().find_service_maker(tapname)
    if maker is None:
        raise SkipTest(f"waiting on the {tapname} twistd plugin")
    return maker


def twistd_argv(path: str) -> List[str]:
    """The ExecStart command line of a systemd unit file."""
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    (line,) = [l for l in text.splitlines() if l.startswith("ExecStart=")]
    return shlex.split(line[len("ExecStart="):])


def _load(path: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DaemonExampleTests(ExampleTestCase):
    """Procedure modules and configuration files for ``twistd harpd``."""

    def _procedures(self, name: str) -> Any:
        from txharp.daemon.procedures import ProcedureRegistry, load_procedures_module

        module = load_procedures_module(example(name), f"txharp_docs_{name[:-3]}")
        self.addCleanup(sys.modules.pop, f"txharp_docs_{name[:-3]}", None)
        return module, ProcedureRegistry.from_module(module)

    def test_procedures(self) -> None:
        from txharp.daemon.procedures import run_procedure

        module, registry = self._procedures("procedures.py")
        self.assertEqual(sorted(registry), ["add", "tail_log", "uptime"])
        self.assertEqual(registry["add"].timeout, 10)
        self.assertEqual(run_procedure(module.add, [2, 3], self.fail), 5)
        log = os.path.join(self.directory, "log")
        with open(log, "w") as f:
            f.write("".join(f"line {n}\n" for n in range(1, 6)))
        packets: List[Any] = []
        self.assertEqual(run_procedure(module.tail_log, {"path": log, "lines": 2}, packets.append), 2)
        self.assertEqual(packets, ["line 4", "line 5"])
        if os.path.exists("/proc/uptime"):
            self.assertGreater(run_procedure(module.uptime, [], self.fail), 0)

    def test_procedures_native(self) -> None:
        from txharp.daemon.procedures import run_procedure

        module, registry = self._procedures("procedures_native.py")
        self.assertEqual(sorted(registry), ["countdown", "whoami"])
        packets: List[Any] = []
        self.assertEqual(run_procedure(module.countdown, [3, 0], packets.append), "liftoff")
        self.assertEqual(packets, [3, 2, 1])
        self.assertEqual(run_procedure(module.whoami, [], self.fail)["uid"], os.getuid())

    def test_configuration(self) -> None:
        from txharp.daemon.auth import database_from_config
        from txharp.daemon.config import load_config

        config = load_config(example("harpd.yaml"))
        self.assertEqual((config.network.address, config.network.port), ("0.0.0.0", 4306))
        self.assertEqual(config.authentication.module, "passfile")
        self.assertEqual(config.python.prepend, ("/etc/harpd/lib",))
        inline = load_config(example("harpd-inline.yaml"))
        self.assertEqual(inline.network.certfile, example("harpd.pem"))
        users = database_from_config(inline.authentication)
        self.assertTrue(users.check("alice", "s3cret"))
        self.assertTrue(users.check("bob", "s3cret"))
        self.assertFalse(users.check("bob", "wrong"))

    def test_password_file(self) -> None:
        from txharp.daemon.auth import PasswordFile

        self.assertTrue(PasswordFile(example("users.txt")).check("alice", "s3cret"))
        if shutil.which("openssl"):  # the command the file's comment gives
            made = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input="n3w\n",
                                  stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
            path = os.path.join(self.directory, "users.txt")
            with open(path, "w") as f:
                f.write(f"carol:{made}\n")
            self.assertTrue(PasswordFile(path).check("carol", "n3w"))

    def test_logging_configuration(self) -> None:
        from txharp.daemon.config import load_logging_config

        load_logging_config(example("logging.yaml"))
        subprocess.run(
            [sys.executable, "-c", "import logging, logging.config, sys, yaml; "
             "logging.config.dictConfig(yaml.safe_load(open(sys.argv[1]))); "
             "logging.getLogger('x').info('hello')", example("logging.yaml")],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def _real_daemon(self) -> None:
        from txharp.server import HarpServer, Result
        from txharp.testing import TestPKI

        service_maker("harpd")
        pki = TestPKI(os.path.join(self.directory, "pki"))
        with open(example("harpd-inline.yaml"), encoding="utf-8") as f:
            text = f.read()
        port = _free_port()
        text = text.replace("certfile: harpd.pem", f"certfile: {pki.chain_file}\n  port: {port}")
        text = text.replace("keyfile: harpd.key", f"keyfile: {pki.key_file}")
        config = os.path.join(self.directory, "harpd.yaml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(text)
        argv = ["--nodaemon", "--pidfile=", "harpd", "--config", config,
                "--procedures", example("procedures.py")]
        process = _Twistd(argv, self.directory)
        self.addCleanup(process.stop)
        await process.wait_for_port(port)
        server = HarpServer("localhost", "bob", "s3cret", port, ca_file=pki.ca_file, reactor=reactor)
        self.assertEqual(await server.add(2, 3), 5)
        log = os.path.join(self.directory, "log")
        with open(log, "w") as f:
            f.write("one\ntwo\nthree\n")
        stream = await server.tail_log(log, 2)
        self.assertEqual(await stream.all(), ["two", "three", Result(2)])

    def test_real_daemon(self) -> Deferred:
        """The example configuration and procedures in a real ``twistd harpd``."""
        service_maker("harpd")
        return ensureDeferred(self._real_daemon())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Twistd:
    """``twistd ARGV`` in a subprocess of the test, with this checkout's txharp."""

    def __init__(self, argv: List[str], directory: str) -> None:
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join([ROOT] + (
            [environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []))
        self.log = open(os.path.join(directory, "twistd.log"), "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *argv],
            cwd=directory, env=environ, stdout=self.log, stderr=subprocess.STDOUT)

    async def wait_for_port(self, port: int, seconds: float = 30) -> None:
        import socket

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            await task.deferLater(reactor, 0.1, lambda: None)
        self.log.seek(0)
        raise AssertionError(f"twistd did not listen on {port}:\n{self.log.read()}")

    def stop(self) -> Deferred:
        """SIGTERM, then wait without blocking the reactor (our clients'
        connections must be able to finish closing); SIGKILL after 30 s."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            deadline = time.monotonic() + 30
            while self.process.poll() is None and time.monotonic() < deadline:
                await task.deferLater(reactor, 0.05, lambda: None)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.log.close()


class ProxyExampleTests(ExampleTestCase):
    """The hosts registry and configuration examples of ``twistd harp-proxy``."""

    def _entries(self, data: bytes) -> List[Dict[str, Any]]:
        entries = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        for entry in entries:
            self.assertEqual(set(entry), {"hostname", "address", "port", "credentials"})
            self.assertEqual(set(entry["credentials"]), {"user", "password"})
        return entries

    def test_hosts_registry(self) -> None:
        with open(example("hosts.jsonl"), "rb") as f:
            data = f.read()
        self.assertEqual([e["hostname"] for e in self._entries(data)], ["web01", "web02", "db01"])
        require("txharp.proxy.hosts")
        from txharp.proxy.hosts import parse_hosts

        entries, errors = parse_hosts(data)
        self.assertEqual(errors, [])
        self.assertEqual([(e.hostname, e.port, e.user) for e in entries],
                         [("web01", 4306, "harp"), ("web02", 4306, "harp"), ("db01", 4306, "ops")])

    async def _hosts_script(self) -> None:
        inventory = os.path.join(self.directory, "inventory.txt")
        with open(inventory, "w") as f:
            f.write("# name address\nweb01 192.0.2.10\n\nweb02 192.0.2.11\n")
        out, _ = await self.run_example(
            "hosts-script.sh", env={"INVENTORY": inventory, "HARPD_PASSWORD": "s3cret"})
        entries = self._entries(out.encode())
        self.assertEqual([(e["hostname"], e["address"]) for e in entries],
                         [("web01", "192.0.2.10"), ("web02", "192.0.2.11")])

    def test_hosts_script(self) -> Deferred:
        return ensureDeferred(self._hosts_script())

    def test_harpcaller_toml(self) -> None:
        if sys.version_info < (3, 11):
            raise SkipTest("reading TOML here needs Python 3.11's tomllib")
        import tomllib

        with open(example("harpcaller.toml"), "rb") as f:
            self.assertEqual(tomllib.load(f)["listen"], ["localhost:3502"])
        maker = service_maker("harp-proxy")
        hosts = os.path.join(self.directory, "hosts.jsonl")
        shutil.copy(example("hosts.jsonl"), hosts)
        with open(example("harpcaller.toml"), encoding="utf-8") as f:
            text = f.read()
        # The example's CA file has to exist to be read.
        from txharp.testing import TestPKI

        pki = TestPKI(os.path.join(self.directory, "pki"))
        text = text.replace("/etc/harpcaller/ca_certs.pem", pki.ca_file)
        text = text.replace("/etc/harpcaller/known_certs.pem", pki.cert_file)
        config = os.path.join(self.directory, "harpcaller.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(text)
        options = maker.options()
        options.parseOptions(["--config", config])
        self.assertEqual(options.config.default_timeout, 600)


class OperationsExampleTests(ExampleTestCase):
    """systemd units, the JSON log observer and job store backups."""

    def test_systemd_units(self) -> None:
        for unit, tapname in (("harp-proxy.service", "harp-proxy"),
                              ("txharp-harpd.service", "harpd")):
            argv = twistd_argv(example(unit))
            self.assertTrue(argv[0].endswith("/twistd"))
            self.assertIn(tapname, argv)
            service_maker(tapname)
            check_twistd_command(argv)

    def test_json_log_observer(self) -> None:
        import io

        from twisted.logger import Logger

        module = _load(example("jsonlog.py"), "txharp_docs_jsonlog")
        captured = io.StringIO()
        real, sys.stdout = sys.stdout, captured
        try:
            observer = module.observer()
        finally:
            sys.stdout = real
        Logger(observer=observer, namespace="txharp.proxy.jobs").info(
            "job {job_id} ended", job_id="42")
        (line,) = captured.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual((event["job_id"], event["log_namespace"]), ("42", "txharp.proxy.jobs"))

    def _database(self) -> Tuple[str, Any]:
        import sqlite3

        path = os.path.join(self.directory, "jobs.sqlite3")
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
        with db:
            db.executemany("INSERT INTO jobs VALUES (?)", [(str(n),) for n in range(100)])
        self.addCleanup(db.close)  # left open: the copy is taken "while it runs"
        return path, db

    def _check_copy(self, path: str) -> None:
        import sqlite3

        copy = sqlite3.connect(path)
        try:
            self.assertEqual(copy.execute("SELECT count(*) FROM jobs").fetchone(), (100,))
        finally:
            copy.close()

    async def _backup(self, name: str) -> None:
        path, _ = self._database()
        copy = os.path.join(self.directory, "copy.sqlite3")
        out, _ = await self.run_example(name, path, copy)
        self.assertEqual(out, f"backed up {path} to {copy}\n")
        self._check_copy(copy)

    def test_backup_script(self) -> Deferred:
        if not shutil.which("sqlite3"):
            raise SkipTest("the sqlite3 program is not installed")
        return ensureDeferred(self._backup("backup-jobs.sh"))

    def test_backup_python(self) -> Deferred:
        return ensureDeferred(self._backup("backup_jobs.py"))


def _commands_of(page: str, program: str) -> List[str]:
    path = os.path.join(DOCS, page)
    return [c for p, c in console_commands() if p == path and c.startswith(program + " ")]


class QuickstartTests(ExampleTestCase):
    """The quick start's "step by step" system: the real ``twistd harpd`` and
    ``twistd harp-proxy``, the ``txharp`` command and a client example."""

    async def txharp(self, argv: List[str], dispatcher: str) -> Tuple[int, str, str]:
        environ = dict(os.environ, TXHARP_DISPATCHER=dispatcher)
        environ["PYTHONPATH"] = os.pathsep.join([ROOT] + (
            [environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []))
        d = getProcessOutputAndValue(
            sys.executable, ["-c", "from txharp.cli import main; main()", *argv],
            env=environ, path=self.directory)
        out, err, status = await d.addTimeout(EXAMPLE_TIMEOUT, reactor)
        return status, out.decode(), err.decode()

    async def _by_hand(self) -> None:
        await self.run_example("make_pki.py", "pki", "localhost")
        harpd_port, proxy_port = _free_port(), _free_port()
        for name in ("quickstart-harpd.yaml", "quickstart-hosts.jsonl"):
            with open(example(name), encoding="utf-8") as f:
                text = f.read().replace("4306", str(harpd_port))
            with open(os.path.join(self.directory, name), "w", encoding="utf-8") as f:
                f.write(text)
        (harpd_command,) = _commands_of("tutorials/quickstart.rst", "twistd --pidfile=harpd.pid")
        (proxy_command,) = _commands_of("tutorials/quickstart.rst", "twistd --pidfile=harp-proxy.pid")

        def foreground(command: str, *extra: str) -> List[str]:
            argv = shlex.split(command)[1:]
            argv = [a for a in argv if not a.startswith(("--pidfile", "--logfile"))]
            argv = [example("procedures.py") if a == "docs/examples/procedures.py" else a for a in argv]
            return ["--nodaemon", "--pidfile="] + argv + list(extra)

        harpd = _Twistd(foreground(harpd_command), self.directory)
        self.addCleanup(harpd.stop)
        await harpd.wait_for_port(harpd_port)
        proxy = _Twistd(foreground(proxy_command, "--listen", f"tcp:{proxy_port}:interface=127.0.0.1"),
                        self.directory)
        self.addCleanup(proxy.stop)
        await proxy.wait_for_port(proxy_port)
        dispatcher = f"127.0.0.1:{proxy_port}"

        for command in _commands_of("tutorials/quickstart.rst", "txharp"):
            argv = shlex.split(command)[1:]
            if argv[0] == "status":
                status, out, err = await self.txharp(["call", "web01", "uptime", "--no-wait"], dispatcher)
                argv = ["status", _UUID.search(out).group(0)]  # type: ignore[union-attr]
            if "/etc/os-release" in argv and not os.path.exists("/etc/os-release"):
                continue
            status, out, err = await self.txharp(argv, dispatcher)
            self.assertEqual(status, 0, f"{command}:\n{out}{err}")
            if argv[:4] == ["call", "web01", "add", "2"]:
                self.assertEqual(out.strip(), "5")
        out, _ = await self.run_example("call_deferreds.py", "127.0.0.1", str(proxy_port))
        self.assertRegex(out, r"uptime: [0-9.]+\nuptime ran on web01, finished: True")

    def test_by_hand(self) -> Deferred:
        service_maker("harpd")
        service_maker("harp-proxy")
        require("txharp.cli")
        return ensureDeferred(self._by_hand())
