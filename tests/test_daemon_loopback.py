"""The daemon end-to-end over loopback: TLS, real child processes, raw JSON lines.

Each test starts a :class:`HarpDaemonService` on 127.0.0.1 with an ephemeral
port and talks to it with a minimal TLS line client, so that what is
checked is exactly what travels on the wire.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from OpenSSL import SSL
from passlib.hash import sha512_crypt
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.daemon_support import (
    PROCEDURES_FILE,
    decode_all,
    harpd_exchanges,
    process_alive,
    read_pid,
    temp_path,
    wait_until,
)
from txharp.daemon.service import DaemonSettings, HarpDaemonService, load_daemon
from txharp.testing import TestPKI
from txharp.tls import ClientTLSPolicy

_pki: Dict[str, TestPKI] = {}


def _certificates(key_type: str) -> TestPKI:
    """A test PKI per key type, made once per process and removed at exit."""
    if key_type not in _pki:
        directory = tempfile.mkdtemp(prefix="txharp-test-daemon-")
        atexit.register(shutil.rmtree, directory, True)
        _pki[key_type] = TestPKI(directory, key_type=key_type, name=key_type)
    return _pki[key_type]


def _request(procedure: str, arguments: Any, password: str = "s3cret") -> bytes:
    return json.dumps(
        {"harp": 1, "procedure": procedure, "arguments": arguments,
         "auth": {"user": "alice", "password": password}}
    ).encode()


class LineClient(LineReceiver):
    """Sends its lines in one write, collects reply lines until the server closes."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 22

    def __init__(self, lines: List[bytes]) -> None:
        self._request = b"".join(line + b"\n" for line in lines)
        self.lines: List[bytes] = []
        self.reason: Optional[Failure] = None
        self.closed: Deferred[List[bytes]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.closed.callback(self.lines)

    def replies(self) -> List[Any]:
        return decode_all(self.lines)


@implementer(IOpenSSLClientConnectionCreator)
class _LegacyClientTLS:
    """A client that speaks TLS 1.0 and 1.1 only, like the original dispatcher."""

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        return SSL.Connection(context, None)


def _normalise_python2(reply: Any) -> Any:
    """The original ran on Python 2: its builtin exceptions live in module
    ``exceptions``, Python 3's in ``builtins``."""
    exception = reply.get("exception") if isinstance(reply, dict) else None
    if exception and exception.get("data", {}).get("module") == "exceptions":
        exception["data"]["module"] = "builtins"
    return reply


class DaemonLoopbackTestCase(TestCase):
    """End-to-end over loopback (base class: starts a daemon per test)."""

    timeout = 60

    def start_daemon(
        self, authentication: Optional[str] = None, key_type: str = "ec", **settings: Any
    ) -> HarpDaemonService:
        pki = _certificates(key_type)
        directory = temp_path(self)
        os.makedirs(directory)
        config = os.path.join(directory, "harpd.conf")
        with open(config, "w") as f:
            f.write(
                "network:\n"
                "  address: 127.0.0.1\n"
                "  port: 0\n"
                f"  certfile: {pki.chain_file}\n"
                f"  keyfile: {pki.key_file}\n"
                + (authentication or "authentication:\n  module: inconfig\n"
                   "  users: {alice: 'plain:s3cret'}\n")
            )
        settings.setdefault("kill_grace", 0.5)
        service = HarpDaemonService(
            load_daemon(config, PROCEDURES_FILE, DaemonSettings(**settings)), reactor
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        assert service.port is not None
        self.daemon_port = service.port.getHost().port
        self.ca_file = pki.ca_file
        return service

    @inlineCallbacks
    def connect(self, *lines: bytes, tls: Any = None) -> Any:
        """Connect to ``daemon_port`` and send ``lines``; the LineClient."""
        port = self.daemon_port
        creator = tls or ClientTLSPolicy(ca_file=self.ca_file).creator_for("127.0.0.1")
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5))
        client = yield connectProtocol(endpoint, LineClient(list(lines)))
        return client

    @inlineCallbacks
    def exchange(self, *lines: bytes, tls: Any = None) -> Any:
        """Send ``lines``, return the decoded replies once the daemon closes."""
        client = yield self.connect(*lines, tls=tls)
        yield client.closed.addTimeout(15, reactor)
        return client.replies()


class CapturedConversationTests(DaemonLoopbackTestCase):
    """End-to-end over loopback: the original's recorded requests, replayed."""

    @inlineCallbacks
    def replay(self, skip: str = "SIGTERM") -> Any:
        """Send every recorded request (but those whose title starts with
        ``skip``) at once; compare each reply with the original's, field by field."""
        exchanges = [
            e for e in harpd_exchanges().values()
            if not e.title.startswith(("SIGTERM", skip))
        ]
        replies = yield gatherResults([self.exchange(*e.client) for e in exchanges])
        for exchange, got in zip(exchanges, replies):
            expected = [_normalise_python2(r) for r in decode_all(exchange.server)]
            self.assertEqual(len(got), len(expected), exchange.title)
            for mine, theirs in zip(got, expected):
                self.assertEqual(mine.keys(), theirs.keys(), exchange.title)
                if "exception" in theirs and theirs["exception"]["type"] == "TypeError":
                    # Python 3 words its TypeErrors differently.
                    mine["exception"].pop("message")
                    theirs["exception"].pop("message")
                if theirs.get("error", {}).get("type") == "invalid_message":
                    # The message quotes Python's own serialisation error.
                    mine["error"].pop("message")
                    theirs["error"].pop("message")
                self.assertEqual(mine, theirs, exchange.title)
        return len(exchanges)

    @inlineCallbacks
    def test_replies_match_the_original(self) -> None:
        self.start_daemon()
        self.assertEqual((yield self.replay()), 29)

    @inlineCallbacks
    def test_replies_match_the_original_in_process(self) -> None:
        """The same replies from the in-process runner (but for the time
        limit, which cannot interrupt a blocking procedure in-process)."""
        self.start_daemon(in_process=True)
        self.assertEqual((yield self.replay(skip="procedure(timeout=1)")), 28)
        self.assertEqual(self.service.runner.running, 0)


class ContainmentTests(DaemonLoopbackTestCase):
    """End-to-end over loopback: calls that hang, time out or overload."""

    @inlineCallbacks
    def test_client_disconnect_kills_the_call(self) -> None:
        self.start_daemon()
        pid_file = temp_path(self)
        client = yield self.connect(_request("hang", [pid_file]))
        yield wait_until(
            lambda: read_pid(pid_file) and read_pid(pid_file + ".grandchild"),
            what="the procedure to start",
        )
        pids = [read_pid(pid_file), read_pid(pid_file + ".grandchild")]
        self.assertTrue(all(process_alive(p) for p in pids))
        client.transport.abortConnection()
        yield wait_until(lambda: not any(process_alive(p) for p in pids), what="the processes to die")
        yield wait_until(lambda: self.service.runner.running == 0, what="the child to be reaped")
        self.assertEqual(client.replies(), [{"harp": 1, "stream_result": False}])

    @inlineCallbacks
    def test_timeout_kills_the_call(self) -> None:
        self.start_daemon()
        pid_file = temp_path(self)
        replies = yield self.exchange(_request("hang_with_timeout", [pid_file]))
        self.assertEqual(
            replies,
            [{"harp": 1, "stream_result": False},
             {"harp": 1, "error": {"type": "timeout", "message": "maximum execution time exceeded"}}],
        )
        yield wait_until(lambda: not process_alive(read_pid(pid_file)), what="the child to die")

    @inlineCallbacks
    def test_concurrency_limit(self) -> None:
        self.start_daemon(max_calls=1, max_waiting=0)
        pid_file = temp_path(self)
        first = yield self.connect(_request("hang", [pid_file]))
        yield wait_until(lambda: first.lines, what="the first acknowledgement")
        refused = yield self.exchange(_request("echo", [1]))
        self.assertEqual(refused[0]["error"]["type"], "overloaded")
        first.transport.abortConnection()
        yield wait_until(lambda: self.service.factory.limiter.running == 0, what="the slot")
        self.assertEqual((yield self.exchange(_request("echo", [2])))[-1], {"result": [2]})

    @inlineCallbacks
    def test_shutdown_during_a_call(self) -> None:
        """As the original on SIGTERM: a ``shutdown`` error, then EOF; the
        child is reaped and the port closed before stopService fires."""
        self.start_daemon()
        expected = harpd_exchanges()["SIGTERM to harpd (parent) 0.5 s into sleep(5)"]
        pid_file = temp_path(self)
        client = yield self.connect(_request("hang", [pid_file]))
        yield wait_until(lambda: read_pid(pid_file), what="the procedure to start")
        port = self.daemon_port
        yield self.service.stopService()
        yield client.closed.addTimeout(5, reactor)
        self.assertEqual(client.replies(), decode_all(expected.server))
        self.assertFalse(process_alive(read_pid(pid_file)))
        self.assertEqual(self.service.runner.running, 0)
        with self.assertRaises(ConnectionRefusedError):
            yield TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2).connect(Factory())


class AuthenticationTests(DaemonLoopbackTestCase):
    """End-to-end over loopback: both authentication modules."""

    @inlineCallbacks
    def check(self) -> Any:
        self.assertEqual((yield self.exchange(_request("echo", [1])))[-1], {"result": [1]})
        wrong = yield self.exchange(_request("echo", [1], password="wrong"))
        self.assertEqual(wrong, [{"harp": 1, "error": {"type": "auth_error",
                                                       "message": "unknown user or wrong password"}}])

    def test_password_file(self) -> Any:
        users = temp_path(self)
        with open(users, "w") as f:
            f.write(f"alice:{sha512_crypt.using(rounds=5000).hash('s3cret')}\n")
        self.start_daemon(f"authentication:\n  module: harpd.auth.passfile\n  file: {users}\n")
        return self.check()

    def test_inline_users(self) -> Any:
        hashed = sha512_crypt.using(rounds=5000).hash("s3cret")
        self.start_daemon(
            "authentication:\n  module: harpd.auth.inconfig\n"
            f"  users: {{alice: 'crypt:{hashed}', bob: 'plain:b0b'}}\n"
        )
        return self.check()


class TLSVersionTests(DaemonLoopbackTestCase):
    """End-to-end over loopback: TLS 1.2+ by default, 1.0 only when asked."""

    @inlineCallbacks
    def test_legacy_client_refused_by_default(self) -> None:
        self.start_daemon(key_type="rsa")
        client = yield self.connect(_request("echo", [1]), tls=_LegacyClientTLS())
        yield client.closed.addTimeout(10, reactor)
        self.assertEqual(client.lines, [])
        self.assertIsInstance(client.reason.value, SSL.Error)

    @inlineCallbacks
    def test_legacy_client_accepted_with_tls_minimum_1_0(self) -> None:
        self.start_daemon(key_type="rsa", tls_minimum="1.0")
        replies = yield self.exchange(_request("echo", [1]), tls=_LegacyClientTLS())
        self.assertEqual(replies[-1], {"result": [1]})
