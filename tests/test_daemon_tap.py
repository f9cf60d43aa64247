"""``twistd harpd``: option parsing, ``--test``, and a real twistd process stopped by SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.daemon_support import (
    PROCEDURES_FILE,
    decode_all,
    harpd_exchanges,
    process_alive,
    read_pid,
    temp_path,
    wait_until,
)
from tests.test_daemon_loopback import DaemonLoopbackTestCase, _certificates, _request
from txharp.daemon.service import HarpDaemonService
from txharp.daemon.tap import Options, makeService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


class _TapTestCase(TestCase):
    def write_config(self, port: int = 0, authentication: str = "") -> str:
        pki = _certificates("ec")
        path = temp_path(self)
        with open(path, "w") as f:
            f.write(
                f"network: {{address: 127.0.0.1, port: {port}, certfile: {pki.chain_file}, "
                f"keyfile: {pki.key_file}}}\n"
                + (authentication or "authentication: {module: inconfig, users: {alice: 'plain:s3cret'}}\n")
            )
        return path

    def twistd(self, *args: str) -> "Deferred[Any]":
        return getProcessOutputAndValue(TWISTD[0], TWISTD[1:] + list(args), env=_environment(), path=ROOT)


class OptionsTests(_TapTestCase):
    def test_defaults_are_the_originals(self) -> None:
        options = Options()
        self.assertEqual(options["config"], "/etc/harpd/harpd.conf")
        self.assertEqual(options["procedures"], "/etc/harpd/harpd.py")
        self.assertEqual(options["tls-minimum"], "1.2")

    def test_parse_and_make_service(self) -> None:
        options = Options()
        options.parseOptions(
            ["-c", self.write_config(), "-r", PROCEDURES_FILE, "--max-calls", "3",
             "--default-user", "65534", "--tls-minimum", "1.0"]
        )
        settings = options.daemon.settings
        self.assertEqual((settings.max_calls, settings.default_user, settings.tls_minimum), (3, 65534, "1.0"))
        service = makeService(options)
        self.assertIsInstance(service, HarpDaemonService)
        self.assertIn("echo", options.daemon.registry)

    def test_logging_option(self) -> None:
        logging_file = temp_path(self)
        with open(logging_file, "w") as f:
            f.write("version: 1\ndisable_existing_loggers: false\nincremental: true\n")
        options = Options()
        options.parseOptions(["-c", self.write_config(), "-r", PROCEDURES_FILE, "-l", logging_file])
        self.assertEqual(
            options.daemon.child.logging,
            {"version": 1, "disable_existing_loggers": False, "incremental": True},
        )

    def test_bad_values(self) -> None:
        config = self.write_config()
        for args in (["--tls-minimum", "1.4"], ["--max-calls", "0"], ["--idle-timeout", "0"],
                     ["--max-waiting", "-1"], ["--max-calls", "x"]):
            self.assertRaises(
                usage.UsageError, Options().parseOptions, ["-c", config, "-r", PROCEDURES_FILE] + args
            )


class TestFlagTests(_TapTestCase):
    """``twistd harpd --test`` in a subprocess."""

    timeout = 60

    @inlineCallbacks
    def test_good_configuration(self) -> None:
        out, err, code = yield self.twistd("harpd", "--test", "-c", self.write_config(), "-r", PROCEDURES_FILE)
        self.assertEqual(code, 0, err)
        self.assertIn(b"configuration OK", out)
        self.assertIn(b"stream_n", out)

    @inlineCallbacks
    def test_bad_configuration(self) -> None:
        config = self.write_config(authentication="authentication: {module: ldap}\n")
        out, err, code = yield self.twistd("harpd", "--test", "-c", config, "-r", PROCEDURES_FILE)
        self.assertEqual(code, 1)
        self.assertIn(b"authentication.module", err)

    @inlineCallbacks
    def test_broken_procedures_module(self) -> None:
        module = temp_path(self)
        with open(module, "w") as f:
            f.write("import no_such_module_anywhere\n")
        out, err, code = yield self.twistd("harpd", "--test", "-c", self.write_config(), "-r", module)
        self.assertEqual(code, 1)
        self.assertIn(b"no_such_module_anywhere", err)
        self.assertIn(b"Traceback", err)


class _Twistd(ProcessProtocol):
    """A ``twistd -n harpd`` process; finds the port in its log."""

    def __init__(self) -> None:
        self.output = b""
        self.port: int = 0
        self.ended: Deferred[BaseException] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        found = re.search(rb"harpd listening on 127\.0\.0\.1:(\d+)", self.output)
        if found:
            self.port = int(found.group(1))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


class TwistdProcessTests(DaemonLoopbackTestCase, _TapTestCase):
    """End-to-end over loopback: a real ``twistd -n harpd`` and SIGTERM mid-call."""

    @inlineCallbacks
    def test_sigterm_during_a_call(self) -> None:
        expected = harpd_exchanges()["SIGTERM to harpd (parent) 0.5 s into sleep(5)"]
        twistd = _Twistd()
        process = reactor.spawnProcess(
            twistd, TWISTD[0],
            TWISTD + ["-n", "--pidfile", temp_path(self), "harpd",
                      "-c", self.write_config(), "-r", PROCEDURES_FILE],
            env=_environment(), path=ROOT,
        )
        self.addCleanup(lambda: twistd.ended.called or process.signalProcess("KILL"))
        yield wait_until(lambda: twistd.port or twistd.ended.called, what="twistd to listen")
        self.assertTrue(twistd.port, twistd.output.decode(errors="replace"))
        self.daemon_port = twistd.port
        self.ca_file = _certificates("ec").ca_file
        pid_file = temp_path(self)
        client = yield self.connect(_request("hang", [pid_file]))
        yield wait_until(lambda: read_pid(pid_file), what="the procedure to start")
        process.signalProcess(signal.SIGTERM)
        lines: List[bytes] = yield client.closed.addTimeout(10, reactor)
        self.assertEqual(decode_all(lines), decode_all(expected.server))
        status = yield twistd.ended.addTimeout(10, reactor)
        output = twistd.output.decode(errors="replace")
        # twistd ends a clean SIGTERM shutdown by re-raising the signal.
        self.assertIn(getattr(status, "signal", None), (None, signal.SIGTERM), output)
        self.assertIn(getattr(status, "exitCode", 0), (0, None), output)
        self.assertIn("Main loop terminated", output)
        self.assertRegex(output, r"call hang by alice from [0-9.:]+: shutdown")
        self.assertNotIn("s3cret", output)
        self.assertFalse(process_alive(read_pid(pid_file)))
