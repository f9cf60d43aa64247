"""Tests of harp-proxy's relay to harpd: request bytes, reply handling, error mapping, timeouts.

The daemon side is a :class:`StringTransport` behind a fake endpoint, fed
with lines recorded from the original harpd; time is a :class:`Clock`.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests import vectors_proxy as V
from txharp.errors import TLSError
from txharp.proxy.hosts import HostEntry
from txharp.proxy.jobs import JobManager, Limits
from txharp.proxy.relay import HarpdRelay
from txharp.proxy.store import SQLiteJobStore
from txharp.tls import ClientTLSPolicy
from txharp.wire.dispatcher import CallRequest
from txharp.wire.outcomes import ErrorReply, ExceptionReply, ResultReply

ADDRESS = "192.0.2.10:4306"


class Hosts:
    def __init__(self, *entries: HostEntry) -> None:
        self._entries = {entry.hostname: entry for entry in entries}

    def lookup(self, hostname: str) -> Optional[HostEntry]:
        return self._entries.get(hostname)


class FakeEndpoint:
    """Connects at once to a StringTransport, or fails, or hangs, as told."""

    def __init__(self, outcome: str = "connect", error: Optional[BaseException] = None) -> None:
        self.outcome = outcome
        self.error = error
        self.protocol: Any = None
        self.transport = StringTransport()
        self.pending: Optional[Deferred[Any]] = None

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        if self.outcome == "fail":
            return fail(self.error)
        if self.outcome == "hang":
            self.pending = Deferred()
            return self.pending
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)

    def daemon_says(self, *lines: bytes) -> None:
        for line in lines:
            self.protocol.dataReceived(line)

    def daemon_closes(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.transport.disconnected = True
        self.protocol.connectionLost(reason)


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(self.store.open())
        self.addCleanup(self.store.close)
        self.endpoints: List[FakeEndpoint] = []
        self.next_endpoint = FakeEndpoint()
        self.dialled: List[HostEntry] = []
        hosts = Hosts(
            HostEntry("spy", "192.0.2.10", 4306, "spyuser", "spypass"),
            HostEntry("h1", "192.0.2.10", 4306, "alice", "s3cret"),
        )
        self.relay = HarpdRelay(hosts, ClientTLSPolicy(), self.clock, dial=self.dial)
        self.manager = JobManager(self.store, self.relay, self.clock, Limits(default_timeout=10, max_exec_time=60))

    def dial(self, entry: HostEntry) -> FakeEndpoint:
        self.dialled.append(entry)
        endpoint, self.next_endpoint = self.next_endpoint, FakeEndpoint()
        self.endpoints.append(endpoint)
        return endpoint

    def submit(self, host: str = "h1", procedure: str = "echo", arguments: Any = None, **options: Any) -> str:
        call = CallRequest(host, procedure, [] if arguments is None else arguments, **options)
        return self.successResultOf(self.manager.submit(call)).job_id

    def outcome(self, job: str) -> Any:
        return self.successResultOf(self.manager.result(job, wait=False))

    def test_request_bytes(self) -> None:
        """The request line is compact, as the original dispatcher's was."""
        self.submit("spy", "some_proc", [1, "two", {"three": 3}])
        self.assertEqual(self.endpoints[0].transport.value(), V.SPY_REQUEST_POSITIONAL)
        self.assertEqual(self.dialled[0].address, "192.0.2.10")

    def test_value(self) -> None:
        job = self.submit()
        self.endpoints[0].daemon_says(V.HARPD_ACK, b'{"result": [1, 2, "x"]}\n')
        self.assertEqual(self.outcome(job), ResultReply([1, 2, "x"]))
        self.assertTrue(self.endpoints[0].transport.disconnecting)

    def test_stream(self) -> None:
        job = self.submit()
        self.endpoints[0].daemon_says(
            V.HARPD_STREAM_ACK, b'{"stream": {"i": 0}}\n', b'{"stream": {"i": 1}}\n', b'{"result": "done"}\n')
        self.assertEqual(self.outcome(job), ResultReply("done"))
        self.assertEqual(self.successResultOf(self.store.read_packets(job)), [(0, {"i": 0}), (1, {"i": 1})])

    def test_exception_relayed(self) -> None:
        job = self.submit()
        self.endpoints[0].daemon_says(V.HARPD_ACK, V.HARPD_EXCEPTION)
        self.assertEqual(self.outcome(job), ExceptionReply(
            "TestFailure", "intentional failure",
            {"class": "TestFailure", "module": "harpd.__procedures__"}))

    def test_daemon_errors_relayed(self) -> None:
        for line, expected in [
            (V.HARPD_AUTH_ERROR, ErrorReply("auth_error", "unknown user or wrong password")),
            (V.HARPD_NO_SUCH_PROCEDURE,
             ErrorReply("no_such_procedure", "no such procedure", {"procedure": "nope"})),
        ]:
            job = self.submit()
            self.endpoints[-1].daemon_says(line)
            self.assertEqual(self.outcome(job), expected)

    def test_daemon_error_mid_stream(self) -> None:
        job = self.submit()
        self.endpoints[0].daemon_says(
            V.HARPD_STREAM_ACK, b'{"stream": {"x": 1}}\n',
            b'{"harp": 1, "error": {"type": "custom_error", "message": "boom"}}\n')
        self.assertEqual(self.outcome(job), ErrorReply("custom_error", "boom"))
        self.assertEqual(self.successResultOf(self.store.packet_count(job)), 1)

    def test_unknown_host(self) -> None:
        job = self.submit("nohost")
        self.assertEqual(self.outcome(job), ErrorReply("unknown_host", "host unknown", {"host": "nohost"}))
        self.assertEqual(self.dialled, [])

    def test_bad_address(self) -> None:
        def refuse(entry: HostEntry) -> Any:
            raise ValueError("port 70000 out of range")

        self.relay._dial = refuse
        job = self.submit()
        self.assertEqual(self.outcome(job), ErrorReply(
            "bad_address", "invalid host address or port number",
            {"host": "h1", "reason": "port 70000 out of range"}))

    def test_connection_errors(self) -> None:
        cases = [
            (ConnectionRefusedError(), ErrorReply("econnrefused", "connection refused", {"address": ADDRESS})),
            (DNSLookupError("nowhere"), ErrorReply(
                "network_error", "connection failed",
                {"address": ADDRESS, "reason": "address lookup failed: DNS lookup failed: nowhere."})),
            (ConnectionLost("reset"), ErrorReply(
                "network_error", "connection closed",
                {"address": ADDRESS, "reason": "Connection to the other side was lost in a non-clean fashion: reset."})),
        ]
        for error, expected in cases:
            self.next_endpoint = FakeEndpoint("fail", error)
            job = self.submit()
            self.assertEqual(self.outcome(job), expected)

    def test_closed_before_final_line(self) -> None:
        job = self.submit()
        self.endpoints[0].daemon_says(V.HARPD_STREAM_ACK, b'{"stream": 1}\n')
        self.endpoints[0].daemon_closes()
        self.assertEqual(self.outcome(job), ErrorReply(
            "network_error", "connection closed",
            {"address": ADDRESS, "reason": "Connection was closed cleanly."}))

    def test_tls_errors(self) -> None:
        job = self.submit()
        self.endpoints[0].daemon_closes(Failure(TLSError("certificate of '192.0.2.10' rejected: bad")))
        self.assertEqual(self.outcome(job), ErrorReply(
            "tls_error", "TLS handshake failed",
            {"address": ADDRESS, "reason": "certificate of '192.0.2.10' rejected: bad"}))
        job = self.submit()
        self.endpoints[1].daemon_closes(Failure(SSL.Error([("SSL routines", "", "unsupported protocol")])))
        error = self.outcome(job)
        self.assertEqual((error.type, error.message), ("tls_error", "TLS handshake failed"))
        self.assertIn("unsupported protocol", error.data["reason"])

    def test_bad_protocol(self) -> None:
        for lines in (
            [b"this is not json\n"],
            [b'{"harp": 1, "stream_result": "yes"}\n'],
            [b'{"result": 1}\n'],  # no acknowledgement
            [V.HARPD_ACK, b'{"stream": 1}\n'],  # stream from a non-streaming call
            [V.HARPD_ACK, b'[1]\n'],
        ):
            job = self.submit()
            self.endpoints[-1].daemon_says(*lines)
            error = self.outcome(job)
            self.assertEqual((error.type, error.message), ("bad_protocol", "Harp protocol error"), lines)
            self.assertEqual(error.data["address"], ADDRESS)
            self.assertTrue(self.endpoints[-1].transport.disconnected or self.endpoints[-1].transport.disconnecting)

    def test_silent_daemon_request_timed_out(self) -> None:
        job = self.submit(timeout=1)
        self.clock.advance(0.999)
        self.assertIsNone(self.manager.get(job).outcome)
        self.clock.advance(0.001)
        self.assertEqual(self.outcome(job), ErrorReply("timeout", "request timed out", {"timeout": 1}))

    def test_connect_timeout(self) -> None:
        self.next_endpoint = FakeEndpoint("hang")
        job = self.submit(timeout=2)
        self.clock.advance(2)
        self.assertEqual(self.outcome(job), ErrorReply("timeout", "request timed out", {"timeout": 2}))

    def test_gap_after_ack(self) -> None:
        job = self.submit(timeout=1, max_exec_time=30)
        endpoint = self.endpoints[0]
        endpoint.daemon_says(V.HARPD_STREAM_ACK)
        for n in range(5):  # packets every 0.9 s keep the call alive past its timeout
            self.clock.advance(0.9)
            endpoint.daemon_says(b'{"stream": %d}\n' % n)
        self.clock.advance(1)
        self.assertEqual(self.outcome(job), ErrorReply("timeout", "reading result timed out", {"timeout": 1}))
        self.assertEqual(self.successResultOf(self.store.packet_count(job)), 5)

    def test_max_exec_time_closes_connection(self) -> None:
        job = self.submit(timeout=5, max_exec_time=2)
        endpoint = self.endpoints[0]
        endpoint.daemon_says(V.HARPD_STREAM_ACK)
        for n in range(4):
            self.clock.advance(0.5)
            endpoint.daemon_says(b'{"stream": %d}\n' % n)
        self.assertEqual(self.outcome(job), ErrorReply(
            "timeout", "maximum execution time exceeded", {"max_exec_time": 2}))
        self.assertTrue(endpoint.transport.disconnected or endpoint.transport.disconnecting)

    def test_pause_reading_from_daemon(self) -> None:
        """While the store is behind, the daemon is not read and its silence is not timed."""
        job = self.submit(timeout=1)
        endpoint = self.endpoints[0]
        endpoint.daemon_says(V.HARPD_STREAM_ACK)
        call = self.manager.get(job)._run
        call.pauseReading()
        self.assertEqual(endpoint.transport.producerState, "paused")
        self.clock.advance(5)
        self.assertIsNone(self.manager.get(job).outcome)
        call.resumeReading()
        self.assertEqual(endpoint.transport.producerState, "producing")
        endpoint.daemon_says(b'{"result": 1}\n')
        self.assertEqual(self.outcome(job), ResultReply(1))

    def test_cancel_closes_connection(self) -> None:
        job = self.submit()
        self.assertTrue(self.successResultOf(self.manager.cancel(job)))
        self.assertTrue(self.endpoints[0].transport.disconnecting or self.endpoints[0].transport.disconnected)
        self.endpoints[0].daemon_closes()
        self.assertEqual(self.outcome(job).to_json(), {"cancelled": True})

    def test_cancel_while_connecting(self) -> None:
        self.next_endpoint = FakeEndpoint("hang")
        job = self.submit()
        self.assertTrue(self.successResultOf(self.manager.cancel(job)))
        self.assertTrue(self.endpoints[0].pending.called)
        self.assertEqual(self.outcome(job).to_json(), {"cancelled": True})

    def test_password_not_in_logs_or_repr(self) -> None:
        events: List[Dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        job = self.submit()
        self.endpoints[0].daemon_says(V.HARPD_AUTH_ERROR)
        self.outcome(job)
        self.assertNotIn("s3cret", repr(self.relay._hosts.lookup("h1")))
        self.assertTrue(events)
        for event in events:
            self.assertNotIn("s3cret", json.dumps(event, default=repr))


class HeldCreate:
    """A store whose ``create_job`` commits only when the test says so."""

    def __init__(self, inner: SQLiteJobStore) -> None:
        self.inner = inner
        self.held: List[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create_job(self, record: Any) -> "Deferred[None]":
        committed: Deferred[None] = Deferred()
        self.held.append((self.inner.create_job(record), committed))
        return committed

    def commit(self, error: Optional[Exception] = None) -> None:
        held, self.held = self.held, []
        for write, committed in held:
            if error is None:
                write.chainDeferred(committed)
            else:
                committed.errback(error)


class ScriptedEndpoint:
    """Each connection attempt does the next thing it was told: connect (to
    a new StringTransport), fail with an error, or hang."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.connections: List[Any] = []  # (protocol, transport)

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            return fail(step)
        if step == "hang":
            return Deferred()
        protocol, transport = factory.buildProtocol(None), StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


class EarlyDialTests(SynchronousTestCase):
    """A job that starts at once is dialled while its record is written;
    its call goes out only once the record has committed."""

    def setUp(self) -> None:
        self.clock = Clock()
        sqlite = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(sqlite.open())
        self.addCleanup(sqlite.close)
        self.store = HeldCreate(sqlite)
        self.endpoint = ScriptedEndpoint()
        hosts = Hosts(HostEntry("h1", "192.0.2.10", 4306, "alice", "s3cret"))
        self.relay = HarpdRelay(hosts, ClientTLSPolicy(), self.clock, dial=lambda entry: self.endpoint)
        self.manager = JobManager(self.store, self.relay, self.clock, Limits(default_timeout=10, max_exec_time=60))

    def submit(self, **options: Any) -> "Deferred[Any]":
        return self.manager.submit(CallRequest("h1", "echo", [1], **options))

    def outcome(self, job: str) -> Any:
        return self.successResultOf(self.manager.result(job, wait=False))

    def test_call_sent_once_recorded(self) -> None:
        self.endpoint.script = ["connect"]
        accepted = self.submit()
        [(protocol, transport)] = self.endpoint.connections
        self.assertEqual(transport.value(), b"")
        self.assertNoResult(accepted)
        self.store.commit()
        job = self.successResultOf(accepted).job_id
        self.assertIn(b'"procedure":"echo"', transport.value())
        protocol.dataReceived(V.HARPD_ACK + b'{"result": 1}\n')
        self.assertEqual(self.outcome(job), ResultReply(1))

    def test_early_connection_failed_dialled_again(self) -> None:
        """Refused, closed by the daemon, timed out or spoken to before the
        call: the job does not inherit that; its call gets a new connection."""
        for spoil in ("refused", "closed", "line", "timeout"):
            if spoil == "refused":
                self.endpoint.script = [ConnectionRefusedError(), "connect"]
            elif spoil == "timeout":
                self.endpoint.script = ["hang", "connect"]
            else:
                self.endpoint.script = ["connect", "connect"]
            self.endpoint.connections = []
            accepted = self.submit(timeout=2)
            if spoil == "closed":
                self.endpoint.connections[0][0].connectionLost(Failure(ConnectionDone()))
            elif spoil == "line":
                self.endpoint.connections[0][0].dataReceived(
                    b'{"harp": 1, "error": {"type": "timeout", "message": "idle"}}\n')
                self.assertTrue(self.endpoint.connections[0][1].disconnecting)
            elif spoil == "timeout":
                self.clock.advance(2)
            self.store.commit()
            job = self.successResultOf(accepted).job_id
            protocol, transport = self.endpoint.connections[-1]
            self.assertIn(b'"procedure":"echo"', transport.value(), spoil)
            protocol.dataReceived(V.HARPD_ACK + b'{"result": 1}\n')
            self.assertEqual(self.outcome(job), ResultReply(1), spoil)
            self.assertEqual(self.endpoint.script, [], spoil)

    def test_failure_after_release_is_the_jobs(self) -> None:
        self.endpoint.script = ["connect", "connect"]
        accepted = self.submit()
        self.store.commit()
        job = self.successResultOf(accepted).job_id
        self.endpoint.connections[0][0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.outcome(job).type, "network_error")
        self.assertEqual(self.endpoint.script, ["connect"])  # not dialled again

    def test_record_refused_closes_connection_unsent(self) -> None:
        self.endpoint.script = ["connect"]
        accepted = self.submit()
        self.store.commit(OSError("disk full"))
        self.assertEqual(self.successResultOf(accepted).type, "os_error")
        [(_, transport)] = self.endpoint.connections
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(self.manager.live_jobs(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors(OSError)
