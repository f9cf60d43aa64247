"""Tests of the ``txharp`` command line, in-process and as a subprocess."""
from __future__ import annotations

import io
import json
import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

import txharp
from txharp import cli
from txharp.testing.certs import TestPKI
from tests.test_sync_fakes import PASSWORD, USER, FakesTestCase

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Terminal(io.StringIO):
    """A captured stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


class _CLITestCase(FakesTestCase):
    """Runs ``txharp`` in-process against a fake dispatcher and a fake harpd."""

    async def txharp(
        self,
        *argv: str,
        environ: Optional[Dict[str, str]] = None,
        stderr: Optional[io.StringIO] = None,
        prompt: Any = None,
    ) -> Tuple[int, str, str]:
        """Run the command; return (exit status, stdout, stderr)."""
        stdout = io.StringIO()
        stderr = io.StringIO() if stderr is None else stderr
        if environ is None:
            environ = {"TXHARP_DISPATCHER": f"127.0.0.1:{self.port}"}

        def no_prompt(text: str) -> str:
            raise AssertionError(f"unexpected password prompt {text!r}")

        code = await cli.run(reactor, argv, stdout=stdout, stderr=stderr, environ=environ, prompt=prompt or no_prompt)
        return code, stdout.getvalue(), stderr.getvalue()

    async def json_lines(self, *argv: str) -> Tuple[int, List[Any]]:
        code, out, _ = await self.txharp("--json", *argv)
        return code, [json.loads(line) for line in out.splitlines()]

    def direct_argv(self, *argv: str) -> List[str]:
        return ["direct", "localhost", "--port", str(self.harpd_port), "--user", USER,
                "--ca-file", self.harpd.pki.ca_file, *argv]


class CallTests(_CLITestCase):
    """end-to-end over loopback: ``txharp call``."""

    async def test_call_prints_value(self) -> None:
        code, out, err = await self.txharp("call", "web01", "return_immediate", "1", '"two"', '{"three": 3}')
        self.assertEqual(code, cli.EXIT_OK)
        self.assertEqual(json.loads(out), [1, "two", {"three": 3}])
        (job,) = self.dispatcher.jobs
        self.assertEqual(err, f"job {job}\n")

    async def test_call_json_named_arguments_and_options(self) -> None:
        code, lines = await self.json_lines(
            "call", "web01", "return_immediate", "--kw", "a=1", "--kw", 'b="x"',
            "--queue", '{"q": 1}', "--concurrency", "2", "--timeout", "5",
            "--max-exec-time", "9.5", "--info", '{"ticket": 7}',
        )
        self.assertEqual(code, cli.EXIT_OK)
        (job,) = self.dispatcher.jobs
        self.assertEqual(lines, [{"job": job}, {"result": {"a": 1, "b": "x"}}])
        request = self.dispatcher.requests[0]
        self.assertEqual(request["queue"], {"name": {"q": 1}, "concurrency": 2})
        self.assertEqual((request["timeout"], request["max_exec_time"], request["info"]), (5, 9.5, {"ticket": 7}))

    async def test_no_wait(self) -> None:
        code, out, err = await self.txharp("call", "web01", "forever", "--no-wait")
        self.assertEqual(code, cli.EXIT_OK)
        self.assertEqual(list(self.dispatcher.jobs), [out.strip()])
        self.assertEqual(err, "")
        self.assertNotIn("get_result", json.dumps(self.dispatcher.requests))

    async def test_follow(self) -> None:
        code, out, _ = await self.txharp("call", "web01", "stream_infinity", "--follow")
        self.assertEqual(code, cli.EXIT_OK)
        self.assertEqual(out.splitlines(), ['{"line": 0}', '{"line": 1}', '{"line": 2}', 'result: "done"'])
        code, lines = await self.json_lines("call", "web01", "stream_infinity", "--follow")
        self.assertEqual(lines[1:], [
            {"packet": 0, "data": {"line": 0}},
            {"packet": 1, "data": {"line": 1}},
            {"packet": 2, "data": {"line": 2}},
            {"result": "done"},
        ])

    async def test_progress_on_a_terminal(self) -> None:
        terminal = _Terminal()
        code, out, err = await self.txharp("call", "web01", "stream_infinity", "--follow", stderr=terminal)
        self.assertEqual(code, cli.EXIT_OK)
        self.assertIn("3 packets", err)
        self.assertTrue(err.endswith("\r\x1b[K"), "the progress line is erased at the end")
        self.assertNotIn("\x1b", out)

    async def test_exit_codes(self) -> None:
        code, out, err = await self.txharp("call", "web01", "fail")
        self.assertEqual((code, out), (cli.EXIT_REMOTE_EXCEPTION, ""))
        self.assertIn('remote exception ValueError: bad value (data: {"class": "ValueError"})', err)
        code, lines = await self.json_lines("call", "nowhere", "return_immediate")
        self.assertEqual(code, cli.EXIT_REMOTE_ERROR)
        self.assertEqual(lines[1], {"error": {"type": "unknown_host", "message": "host not found"}})

    async def test_communication_failure(self) -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        code, out, err = await self.txharp("--dispatcher", f"127.0.0.1:{port}", "call", "web01", "return_immediate")
        self.assertEqual((code, out), (cli.EXIT_COMMUNICATION, ""))
        self.assertIn("refused", err)
        code, lines = await self.json_lines("--dispatcher", f"127.0.0.1:{port}", "status", "j")
        self.assertEqual(code, cli.EXIT_COMMUNICATION)
        self.assertEqual(lines[0]["communication_error"]["type"], "CommunicationError")

    async def test_io_timeout(self) -> None:
        self.dispatcher.silent = True
        code, lines = await self.json_lines("--io-timeout", "0.1", "result", "j")
        self.assertEqual(code, cli.EXIT_COMMUNICATION)
        self.assertEqual(lines[0]["communication_error"]["type"], "HarpTimeout")


class JobCommandTests(_CLITestCase):
    """end-to-end over loopback: result, follow, stream, status and cancel of a job."""

    async def submit(self, procedure: str, *args: str) -> str:
        code, out, _ = await self.txharp("call", "web01", procedure, *args, "--no-wait")
        self.assertEqual(code, cli.EXIT_OK)
        return out.strip()

    async def test_result_and_cancel(self) -> None:
        job = await self.submit("forever")
        code, out, err = await self.txharp("result", job)
        self.assertEqual((code, out, err), (cli.EXIT_NOT_FINISHED, "", "not finished\n"))
        code, lines = await self.json_lines("result", job)
        self.assertEqual((code, lines), (cli.EXIT_NOT_FINISHED, [{"no_result": True}]))
        code, out, _ = await self.txharp("cancel", job)
        self.assertEqual((code, out), (cli.EXIT_OK, "cancelled\n"))
        code, lines = await self.json_lines("cancel", job)
        self.assertEqual((code, lines), (cli.EXIT_NOT_CANCELLED, [{"cancelled": False}]))
        code, lines = await self.json_lines("result", "--wait", job)
        self.assertEqual((code, lines), (cli.EXIT_CANCELLED, [{"cancelled": True}]))

    async def test_result_wait(self) -> None:
        job = await self.submit("run_foo")
        code, out, _ = await self.txharp("result", job, "--wait")
        self.assertEqual((code, out), (cli.EXIT_OK, '"foo done"\n'))
        code, lines = await self.json_lines("result", "no-such-job")
        self.assertEqual(code, cli.EXIT_REMOTE_ERROR)
        self.assertEqual(lines[0]["error"]["type"], "invalid_jobid")

    async def test_follow_and_stream(self) -> None:
        job = await self.submit("many", "5")
        code, lines = await self.json_lines("follow", job, "--recent", "2")
        self.assertEqual(code, cli.EXIT_OK)
        self.assertEqual(lines, [{"packet": 3, "data": 3}, {"packet": 4, "data": 4}, {"result": 5}])
        code, out, _ = await self.txharp("stream", job, "--since", "4")
        self.assertEqual((code, out), (cli.EXIT_OK, "4\nresult: 5\n"))
        code, out, _ = await self.txharp("follow", job)
        self.assertEqual(out.splitlines(), ["0", "1", "2", "3", "4", "result: 5"])
        running = await self.submit("forever")
        code, out, err = await self.txharp("stream", running)
        self.assertEqual((code, out, err), (cli.EXIT_NOT_FINISHED, "", "not finished\n"))

    async def test_status(self) -> None:
        job = await self.submit("return_immediate", "1")
        code, out, _ = await self.txharp("status", job)
        self.assertEqual(code, cli.EXIT_OK)
        table = dict(line.split(None, 1) for line in out.splitlines())
        self.assertEqual(table["job"], job)
        self.assertEqual(table["state"], "ended")
        self.assertEqual((table["host"], table["procedure"], table["arguments"], table["info"]),
                         ("web01", "return_immediate", "[1]", "null"))
        submitted = self.dispatcher.jobs[job].submit
        self.assertTrue(table["submitted"].endswith(f"({submitted})"))
        await self.submit("forever")  # the fake queues a job while another one runs
        queued = await self.submit("forever", "--queue", '{"q": 1}')
        code, lines = await self.json_lines("status", queued)
        self.assertEqual(lines[0]["state"], "queued")
        self.assertIsNone(lines[0]["start"])
        self.assertEqual(lines[0]["arguments"], [])


class DirectTests(_CLITestCase):
    """end-to-end over loopback: ``txharp direct`` to a TLS harpd."""

    async def test_value_with_password_from_environment(self) -> None:
        code, out, err = await self.txharp(*self.direct_argv("echo", "1", '"x"'), environ={"TXHARP_PASSWORD": PASSWORD})
        self.assertEqual((code, json.loads(out), err), (cli.EXIT_OK, [1, "x"], ""))
        self.assertEqual(self.harpd.requests[0]["auth"], {"user": USER, "password": PASSWORD})

    async def test_stream_and_password_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(PASSWORD + "\n")
        code, lines = await self.json_lines(*self.direct_argv("logs_in_next_minutes", "--kw", "n=10", "--password-file", path))
        self.assertEqual(code, cli.EXIT_OK)
        self.assertEqual(lines, [{"stream": f"log line {i}"} for i in range(3)] + [{"result": {"lines": 3}}])
        self.assertEqual(self.harpd.requests[0]["arguments"], {"n": 10})

    async def test_prompt_and_failures(self) -> None:
        asked: List[str] = []

        def prompt(text: str) -> str:
            asked.append(text)
            return "wrong"

        code, out, err = await self.txharp(*self.direct_argv("echo"), environ={}, prompt=prompt)
        self.assertEqual(asked, [f"password for {USER}@localhost: "])
        self.assertEqual(code, cli.EXIT_REMOTE_ERROR)
        self.assertIn("remote error auth_error", err)
        self.assertNotIn("wrong", out + err)
        env = {"TXHARP_PASSWORD": PASSWORD}
        code, _, err = await self.txharp(*self.direct_argv("explode"), environ=env)
        self.assertEqual(code, cli.EXIT_REMOTE_EXCEPTION)
        code, out, err = await self.txharp(*self.direct_argv("broken_stream"), environ=env)
        self.assertEqual((code, out), (cli.EXIT_REMOTE_ERROR, '"first"\n'))

    async def test_tls(self) -> None:
        env = {"TXHARP_PASSWORD": PASSWORD}
        other = TestPKI(self.mktemp(), name="other")
        argv = ["direct", "localhost", "--port", str(self.harpd_port), "--user", USER]
        code, _, err = await self.txharp(*argv, "--ca-file", other.ca_file, "echo", environ=env)
        self.assertEqual(code, cli.EXIT_COMMUNICATION)
        code, out, err = await self.txharp(*argv, "--pin", self.harpd.pki.fingerprint, "echo", "1", environ=env)
        self.assertEqual((code, out, err), (cli.EXIT_OK, "[\n  1\n]\n", ""))
        code, out, err = await self.txharp(*argv, "echo", environ=env)
        self.assertEqual(code, cli.EXIT_OK)
        self.assertIn("not verified", err)


class UsageTests(SynchronousTestCase):
    """Usage errors are found before any connection is made."""

    def txharp(self, *argv: str) -> Tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        coroutine = cli.run(None, argv, stdout=stdout, stderr=stderr, environ={})
        result = self.successResultOf(Deferred.fromCoroutine(coroutine))
        return result, stdout.getvalue(), stderr.getvalue()

    def assertUsage(self, *argv: str, says: str) -> None:
        code, out, err = self.txharp(*argv)
        self.assertEqual((code, out), (cli.EXIT_USAGE, ""))
        self.assertIn(says, err)

    def test_usage_errors(self) -> None:
        self.assertUsage(says="required: COMMAND")
        self.assertUsage("call", "h", "p", "text", says="'text' is not JSON")
        self.assertUsage("call", "h", "p", "1", "--kw", "a=2", says="cannot be mixed")
        self.assertUsage("call", "h", "p", "--kw", "novalue", says="is not NAME=JSON")
        self.assertUsage("call", "h", "p", "--queue", "[1]", says="is not a JSON object")
        self.assertUsage("call", "h", "p", "--timeout", "0", says="is not positive")
        self.assertUsage("call", "h", "p", "--follow", "--no-wait", says="not allowed with")
        self.assertUsage("call", "h", "p", "--concurrency", "2", says="give queue= too")
        self.assertUsage("follow", "j", "--since", "1", "--recent", "1", says="not allowed with")
        self.assertUsage("--dispatcher", "h:99999", "status", "j", says="bad address")
        self.assertUsage("direct", "h", "p", says="--user")

    def test_help_and_version(self) -> None:
        code, out, _ = self.txharp("--help")
        self.assertEqual(code, 0)
        self.assertIn("exit status:", out)
        self.assertIn(f"{cli.EXIT_COMMUNICATION}    communication failure", out)
        code, out, _ = self.txharp("--version")
        self.assertEqual((code, out), (0, f"txharp {txharp.__version__}\n"))

    def test_parse_address(self) -> None:
        self.assertEqual(cli.parse_address("h"), ("h", 3502))
        self.assertEqual(cli.parse_address("h:1"), ("h", 1))
        self.assertEqual(cli.parse_address("[::1]:7"), ("::1", 7))
        self.assertEqual(cli.parse_address("::1"), ("::1", 3502))
        self.assertRaises(cli.UsageError, cli.parse_address, "h:x")


class SubprocessTests(_CLITestCase):
    """end-to-end over loopback: ``python -m txharp.cli`` as a real process."""

    async def process(self, *argv: str, **env: str) -> Tuple[int, str, str]:
        environ = dict(os.environ, PYTHONPATH=_ROOT, TXHARP_DISPATCHER=f"127.0.0.1:{self.port}", **env)
        out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "txharp.cli", *argv], env=environ, path=_ROOT)
        return code, out.decode(), err.decode()

    async def test_call_and_direct(self) -> None:
        code, out, err = await self.process("--json", "call", "web01", "stream_infinity", "--follow")
        self.assertEqual(code, cli.EXIT_OK, err)
        self.assertEqual([json.loads(line) for line in out.splitlines()][-1], {"result": "done"})
        code, out, err = await self.process(*self.direct_argv("current_time"), TXHARP_PASSWORD=PASSWORD)
        self.assertEqual((code, out), (cli.EXIT_OK, "1700000000\n"), err)

    async def test_interrupted(self) -> None:
        """Ctrl-C closes the connection and exits 130."""
        ended: Deferred[Any] = Deferred()
        output: List[bytes] = []

        class Collect(ProcessProtocol):
            def errReceived(self, data: bytes) -> None:
                output.append(data)

            def processEnded(self, reason: Failure) -> None:
                ended.callback(reason.value.exitCode)

        environ = dict(os.environ, PYTHONPATH=_ROOT, TXHARP_DISPATCHER=f"127.0.0.1:{self.port}")
        process = reactor.spawnProcess(Collect(), sys.executable, [sys.executable, "-m", "txharp.cli", "call", "web01", "forever"], env=environ, path=_ROOT)
        await self.until(lambda: any(job.waiters for job in self.dispatcher.jobs.values()))
        process.signalProcess("INT")
        self.assertEqual(await ended, cli.EXIT_INTERRUPTED)
        self.assertIn(b"interrupted", b"".join(output))
        await self.until(lambda: not self.dispatcher.connections)

    async def test_output_closed_early(self) -> None:
        """``txharp follow JOB | head``: once the reader has gone, the command
        stops following and exits 141, without a traceback."""
        job = await self.submit_in_process("stream_infinity")
        ended: Deferred[Any] = Deferred()
        errors: List[bytes] = []

        class Collect(ProcessProtocol):
            def connectionMade(self) -> None:
                self.transport.closeChildFD(1)  # the reader of stdout is gone at once

            def errReceived(self, data: bytes) -> None:
                errors.append(data)

            def processEnded(self, reason: Failure) -> None:
                ended.callback(reason.value.exitCode)

        environ = dict(os.environ, PYTHONPATH=_ROOT, TXHARP_DISPATCHER=f"127.0.0.1:{self.port}")
        reactor.spawnProcess(Collect(), sys.executable, [sys.executable, "-m", "txharp.cli", "follow", job],
                             env=environ, path=_ROOT)
        self.assertEqual(await ended, cli.EXIT_BROKEN_PIPE)
        self.assertEqual(b"".join(errors), b"")
        await self.until(lambda: not self.dispatcher.connections)

    async def submit_in_process(self, procedure: str) -> str:
        code, out, _ = await self.txharp("call", "web01", procedure, "--no-wait")
        self.assertEqual(code, cli.EXIT_OK)
        return out.strip()

    async def until(self, condition: Callable[[], bool]) -> None:
        for _ in range(200):
            if condition():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail("condition not reached in 10 s")

    async def test_exit_statuses(self) -> None:
        code, _, err = await self.process("call", "web01", "fail")
        self.assertEqual(code, cli.EXIT_REMOTE_EXCEPTION, err)
        code, _, err = await self.process("call", "web01", "echo", "not json")
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertIn("is not JSON", err)
