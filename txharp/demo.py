"""The quick-start demo: a harpd and a harp-proxy on loopback, and the seed's synopsis.

``python -m txharp.demo`` (or ``bash scripts/demo.sh``) builds everything in
a temporary directory — a CA and a server certificate, a harpd
configuration with one user, a procedures module, a hosts registry —
starts ``twistd -n harpd`` and ``twistd -n harp-proxy`` on free ports of
127.0.0.1, then runs the original ``harp`` library's synopsis through them
with the synchronous facade (:mod:`txharp.sync`): a single result, a
stream followed live, job metadata, a queued call, a cancellation, errors,
a direct harpd call, and one ``txharp`` command.  It stops both daemons
and exits 0 if every step did what it should, 1 otherwise.  ``--keep``
leaves the directory (configuration, logs, job store) for a look.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import txharp.sync as harp
from txharp.testing.certs import TestPKI

__all__ = ["main", "LoopbackSystem", "PROCEDURES"]

#: The demo's procedures module, in the original harpd's style.
PROCEDURES = '''\
"""Procedures of the txharp demo (the names of the harp synopsis)."""
import time

from harpd.proc import Result, procedure, streaming_procedure


@procedure
def return_immediate(*args):
    return list(args)


@procedure
def current_time():
    return int(time.time())


@streaming_procedure
def stream_infinity(count=5, delay=0.2):
    # "infinity" is a few packets here, so that the demo ends.
    for tick in range(count):
        time.sleep(delay)
        yield {"tick": tick}
    yield Result("stream done")


@procedure
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@procedure
def fail():
    raise ValueError("this procedure always fails")


# The other names of the harp documentation's examples.

@streaming_procedure
def logs_in_next_minutes(minutes):
    for number in range(3):
        yield "log line %d" % number
    yield Result({"lines": 3})


@procedure
def run_foo():
    time.sleep(0.3)
    return "foo done"


@streaming_procedure
def run_stream():
    for number in range(3):
        yield "log line %d" % number
    yield Result({"lines": 3})
'''

_STARTUP_LIMIT = 20.0  # seconds a daemon may take to listen
_STOP_LIMIT = 10.0  # seconds between SIGTERM and SIGKILL


def _in_order(*stamps: Optional[int]) -> bool:
    """Whether every time stamp is known and none comes before the previous one."""
    known = [stamp for stamp in stamps if stamp is not None]
    return len(known) == len(stamps) and known == sorted(known)


class DemoFailure(Exception):
    """A step of the demo did not do what it should."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _write(path: str, text: str, mode: int = 0o644) -> str:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    return path


def _child_environment() -> Dict[str, str]:
    """This process's environment, with its module search path for the children.

    The daemons and the command run in other directories, from a source
    tree as well as from an installation: given the search path this
    process resolved (absolute entries), they import the same txharp and
    find the same twistd plugins.
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry)
    return environment


class _Daemon:
    """A ``twistd -n`` child process and its log."""

    def __init__(self, name: str, directory: str, plugin_args: Sequence[str], port: int) -> None:
        self.name = name
        self.port = port
        self.log = os.path.join(directory, f"{name}.log")
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile", os.path.join(directory, f"{name}.pid"), "--logfile", self.log,
            *plugin_args,
        ]
        # What twistd says before its log starts (a configuration error) goes here.
        self.output = os.path.join(directory, f"{name}.out")
        with open(self.output, "wb") as output:
            self.process = subprocess.Popen(command, cwd=directory, env=_child_environment(),
                                            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)

    def wait_listening(self) -> None:
        deadline = time.monotonic() + _STARTUP_LIMIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DemoFailure(f"{self.name} exited with status {self.process.returncode}\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise DemoFailure(f"{self.name} did not listen within {_STARTUP_LIMIT:g} s\n{self.log_tail()}")

    def stop(self) -> Tuple[bool, str]:
        """SIGTERM, wait, SIGKILL if needed; whether it stopped cleanly, and how."""
        if self.process.poll() is not None:
            return False, f"had already exited with status {self.process.returncode}"
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_STOP_LIMIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False, f"did not stop within {_STOP_LIMIT:g} s of SIGTERM: killed"
        # twistd stops its reactor, then ends by the signal it was sent.
        if self.process.returncode in (0, -signal.SIGTERM):
            return True, "stopped on SIGTERM"
        return False, f"stopped on SIGTERM with exit status {self.process.returncode}"

    def log_tail(self, lines: int = 20) -> str:
        """The end of the daemon's output and log, for a failure report."""
        tail = []
        for path in (self.output, self.log):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    tail.extend(f.readlines()[-lines:])
            except OSError:
                pass
        return "".join(tail) or "(no output)"


class LoopbackSystem:
    """A harpd and a harp-proxy on free ports of 127.0.0.1, set up in ``directory``.

    :meth:`start` writes a throw-away PKI, a harpd configuration with one
    user (``user``; ``password`` is random unless given), the :data:`PROCEDURES` module
    and a hosts registry naming the harpd once per entry of ``hosts``, then
    starts ``twistd -n harpd`` and ``twistd -n harp-proxy`` and waits until
    both listen.  :meth:`stop` stops them.  The demo runs on it, and so can
    tests that need the real programs.
    """

    def __init__(
        self,
        directory: str,
        hosts: Sequence[str] = ("localhost",),
        user: str = "demo",
        password: Optional[str] = None,
    ) -> None:
        self.directory = directory
        self.hosts = tuple(hosts)
        self.user = user
        self.password = secrets.token_urlsafe(16) if password is None else password
        self.daemons: List[_Daemon] = []
        self.ca_file = ""
        self.harpd_port = self.proxy_port = 0

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def start(self) -> None:
        """Write the files, start both daemons, wait until they listen (bounded)."""
        pki = TestPKI(self.directory, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        self.ca_file = pki.ca_file
        self.harpd_port, self.proxy_port = _free_port(), _free_port()
        config = {
            "network": {"address": "127.0.0.1", "port": self.harpd_port,
                        "certfile": pki.chain_file, "keyfile": pki.key_file},
            "authentication": {"module": "inconfig", "users": {self.user: f"plain:{self.password}"}},
        }
        # JSON is YAML: no quoting questions for the password.
        _write(self.path("harpd.conf"), json.dumps(config, indent=2) + "\n", 0o600)
        _write(self.path("procedures.py"), PROCEDURES)
        registry = "".join(
            json.dumps({"hostname": name, "address": "127.0.0.1", "port": self.harpd_port,
                        "credentials": {"user": self.user, "password": self.password}}) + "\n"
            for name in self.hosts
        )
        _write(self.path("hosts.json"), registry, 0o600)
        self.daemons.append(_Daemon("harpd", self.directory, [
            "harpd", "--config", self.path("harpd.conf"), "--procedures", self.path("procedures.py"),
        ], self.harpd_port))
        self.daemons.append(_Daemon("harp-proxy", self.directory, [
            "harp-proxy", "--listen", f"tcp:{self.proxy_port}:interface=127.0.0.1",
            "--hosts", self.path("hosts.json"), "--data-dir", self.path("jobs"),
            "--ca-file", self.ca_file,
        ], self.proxy_port))
        for daemon in self.daemons:
            daemon.wait_listening()

    def stop(self) -> List[Tuple[str, bool, str]]:
        """Stop the daemons (proxy first); (name, stopped cleanly, how) for each."""
        return [(daemon.name, *daemon.stop()) for daemon in reversed(self.daemons)]


class _Demo:
    """Runs the steps on a :class:`LoopbackSystem` and reports."""

    def __init__(self, system: LoopbackSystem, out: Callable[[str], None]) -> None:
        self.system = system
        self.say = out
        self.failures: List[str] = []

    def start(self) -> None:
        self.say(f"directory  {self.system.directory}")
        self.system.start()
        for daemon in self.system.daemons:
            self.say(f"{daemon.name:<10} listening on 127.0.0.1:{daemon.port} (pid {daemon.process.pid})")

    def stop(self) -> None:
        for name, clean, how in self.system.stop():
            self.say(f"{name:<10} {how}")
            self.check(f"{name} stops cleanly", clean)

    # -- the steps

    def check(self, what: str, condition: bool) -> None:
        if not condition:
            self.failures.append(what)
            self.say(f"   !! unexpected: {what}")

    def step(self, title: str) -> None:
        self.say("")
        self.say(f"== {title}")

    def run_steps(self) -> None:
        system = self.system
        rpc = harp.HarpCaller("127.0.0.1", system.proxy_port, timeout=10, wait_timeout=30)

        self.step("a single result: rpc(\"localhost\").return_immediate(\"bar\", \"baz\").get()")
        result = rpc("localhost").return_immediate("bar", "baz").get()
        self.say(f"   -> {result!r}")
        self.check("return_immediate gives its arguments back", result == ["bar", "baz"])

        self.step("a stream followed live: for n, msg in job.follow(since=0, numbered=True)")
        host = rpc.localhost(queue={"foo": "bar"}, max_exec_time=15)
        job = host.stream_infinity()
        self.say(f"   job {job.id()}")
        started = time.monotonic()
        packets = []
        for number, message in job.follow(since=0, numbered=True):
            packets.append(message)
            self.say(f"   packet {number}: {json.dumps(message)}  (+{time.monotonic() - started:.1f} s)")
        self.say(f"   job.result() -> {job.result()!r}")
        self.check("five packets, in order", packets == [{"tick": i} for i in range(5)])
        self.check("the stream's end result", job.result() == "stream done")
        self.check("the recorded stream replays", job.stream().all() == packets)

        self.step("job metadata")
        job = rpc.host("localhost", info={"ticket": 42}).return_immediate(1, "two")
        job.get()
        again = rpc.job(job.id())
        self.say(f"   host={again.host()!r} procedure={again.procedure()!r} args={again.args()!r} info={again.info()!r}")
        self.say(f"   submitted={again.submit_time()} started={again.start_time()} ended={again.end_time()}")
        self.check("metadata", (again.host(), again.procedure(), again.args(), again.info())
                   == ("localhost", "return_immediate", [1, "two"], {"ticket": 42}))
        self.check("times", _in_order(again.submit_time(), again.start_time(), again.end_time()))

        self.step("a queued call: two jobs in a queue of concurrency 1")
        queue = {"demo": "queue"}
        first = rpc.host("localhost", queue=queue, concurrency=1).sleep(1)
        second = rpc.host("localhost", queue=queue).return_immediate("after the first")
        self.say(f"   while the first runs, the second has start_time() = {second.start_time()!r}")
        self.check("the second job waits in the queue", second.start_time() is None)
        self.say(f"   second.get() -> {second.get()!r}  (waited for the first: {first.result()!r})")
        self.check("queue order", _in_order(first.end_time(), second.start_time()))

        self.step("a cancel")
        job = rpc.localhost.sleep(30)
        cancelled = job.cancel()
        self.say(f"   job.cancel() -> {cancelled!r}; job.result() -> {job.result(wait=True)!r}")
        self.check("cancel stops a running job", cancelled is True and job.result() is harp.CALL_CANCELLED)
        try:
            job.get()
            self.check("get() of a cancelled job raises", False)
        except harp.CancelledException:
            self.say("   job.get() raises CancelledException")

        self.step("errors are returned by result(), raised by get()")
        error = rpc.localhost.fail().result(wait=True)
        self.say(f"   procedure raised: {error!r}")
        self.check("RemoteException", isinstance(error, harp.RemoteException) and error.type == "ValueError")
        try:
            rpc.host("no-such-host").return_immediate().get()
            self.check("unknown host raises", False)
        except harp.RemoteError as e:
            self.say(f"   unknown host: RemoteError({e.type!r}, {e.message!r})")
        missing = rpc.job("3f22e0d4-c8ed-11e5-8d66-001e8c140268").result()
        self.say(f"   unknown job: {missing!r}")
        self.check("invalid job ID", isinstance(missing, harp.RemoteError))

        self.step("harpd directly, over TLS: harp.HarpServer(...)")
        server = harp.HarpServer("127.0.0.1", system.user, system.password, system.harpd_port,
                                 ca_file=system.ca_file, timeout=30)
        now = server.current_time()
        self.say(f"   server.current_time() -> {now}")
        self.check("current time", abs(now - time.time()) < 60)
        items = list(server.stream_infinity(3, 0.05))
        for item in items:
            self.say(f"   {'end' if isinstance(item, harp.Result) else 'packet'}: {item!r}")
        self.check("stream ends with a Result", items[-1] == harp.Result("stream done") and len(items) == 4)

        self.step("the same dispatcher from the command line: txharp status JOB")
        address = f"127.0.0.1:{system.proxy_port}"
        command = [sys.executable, "-m", "txharp.cli", "--dispatcher", address, "status", again.id()]
        self.say(f"   $ txharp --dispatcher {address} status {again.id()}")
        finished = subprocess.run(command, capture_output=True, text=True, timeout=30, env=_child_environment())
        for line in finished.stdout.splitlines():
            self.say(f"   {line}")
        self.check("txharp status exits 0", finished.returncode == 0 and "return_immediate" in finished.stdout)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; return 0 if every step did what it should."""
    parser = argparse.ArgumentParser(prog="python -m txharp.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, flush=True)

    directory = tempfile.mkdtemp(prefix="txharp-demo-")
    demo = _Demo(LoopbackSystem(directory), say)
    started = time.monotonic()
    say("txharp demo: harpd + harp-proxy on 127.0.0.1, driven by txharp.sync")
    try:
        demo.start()
        demo.run_steps()
    except (DemoFailure, harp.HarpException) as e:
        demo.failures.append(f"{type(e).__name__}: {e}")
        say(f"!! {type(e).__name__}: {e}")
        for daemon in demo.system.daemons:
            say(f"-- last lines from {daemon.name}:\n{daemon.log_tail()}")
    finally:
        say("")
        demo.stop()
        if options.keep:
            say(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    elapsed = time.monotonic() - started
    if demo.failures:
        say(f"FAILED ({len(demo.failures)} problems) in {elapsed:.1f} s")
        return 1
    say(f"all steps OK in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
