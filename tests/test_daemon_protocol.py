"""The harpd server protocol on a StringTransport, with a fake runner and clock.

Replies are compared with the original daemon's captured lines by value
(decoded JSON), so spacing and key order do not matter but every field does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.daemon_support import decode_all, harpd_exchanges, memory_registry
from txharp.daemon.protocol import HarpDaemonFactory, HarpDaemonProtocol
from txharp.daemon.runner import Call, CallLimiter
from txharp.wire import ErrorReply, ExceptionReply, ResultReply

GOOD = b'{"harp": 1, "procedure": "echo", "arguments": [1], "auth": {"user": "alice", "password": "s3cret"}}\n'
STREAM = b'{"harp": 1, "procedure": "stream_n", "arguments": [2], "auth": {"user": "alice", "password": "s3cret"}}\n'


class FakeAuthenticator:
    """alice/s3cret only; answers at once, or later when ``hold`` is set."""

    def __init__(self) -> None:
        self.hold = False
        self.pending: List[Deferred[bool]] = []
        self.asked: List[str] = []

    def authenticate(self, user: str, password: str) -> "Deferred[bool]":
        self.asked.append(user)
        ok = (user, password) == ("alice", "s3cret")
        if not self.hold:
            return succeed(ok)
        d: Deferred[bool] = Deferred()
        self.pending.append(d)
        return d


class FakeRun:
    def __init__(self, call: Call, on_stream: Any) -> None:
        self.call = call
        self.on_stream = on_stream
        self.cancelled = False
        self.outcome: Deferred[Any] = Deferred(lambda _: setattr(self, "cancelled", True))


class FakeRunner:
    """Records calls; the test decides what each one produces."""

    def __init__(self) -> None:
        self.runs: List[FakeRun] = []

    def run(self, call: Call, on_stream: Any, consumer: Any = None) -> "Deferred[Any]":
        run = FakeRun(call, on_stream)
        self.runs.append(run)
        return run.outcome

    def stop(self) -> "Deferred[None]":
        return succeed(None)


class ProtocolTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.auth = FakeAuthenticator()
        self.runner = FakeRunner()
        self.limiter = CallLimiter(2, 1)
        self.factory = HarpDaemonFactory(
            memory_registry(),
            self.auth,
            self.runner,
            self.limiter,
            clock=self.clock,
            idle_timeout=30.0,
            max_line_length=1000,
        )

    def connect(self) -> "tuple[HarpDaemonProtocol, StringTransport]":
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def converse(self, *chunks: bytes) -> "tuple[HarpDaemonProtocol, StringTransport]":
        """Connect, deliver each chunk as one read, let the reactor turn."""
        protocol, transport = self.connect()
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.clock.advance(0)
        return protocol, transport

    def replies(self, transport: StringTransport) -> List[Any]:
        data = transport.value()
        self.assertTrue(data == b"" or data.endswith(b"\n"), data)
        return decode_all(data.splitlines())

    def assertError(self, transport: StringTransport, type: str, message: Optional[str] = None) -> None:
        last = self.replies(transport)[-1]
        self.assertEqual(set(last), {"harp", "error"})
        self.assertEqual(last["harp"], 1)
        self.assertEqual(last["error"]["type"], type)
        if message is not None:
            self.assertEqual(last["error"]["message"], message)
        self.assertTrue(transport.disconnecting)


class CapturedVectorTests(ProtocolTestCase):
    """Every captured conversation the original refused before running anything."""

    def test_refusals_match_the_original(self) -> None:
        refusals = [
            e for e in harpd_exchanges().values() if len(e.server) == 1 and b'"error"' in e.server[0]
        ]
        self.assertEqual(len(refusals), 15)
        for exchange in refusals:
            _, transport = self.converse(b"".join(line + b"\n" for line in exchange.client))
            self.assertEqual(self.replies(transport), decode_all(exchange.server), exchange.title)
            self.assertTrue(transport.disconnecting, exchange.title)
        self.assertEqual(self.runner.runs, [])

    def test_acknowledgements_match_the_original(self) -> None:
        exchanges = harpd_exchanges()
        for title, name in [
            ("single result: ack + result (echo)", "echo"),
            ("streamed result: ack + stream packets + result", "stream_n"),
        ]:
            exchange = exchanges[title]
            _, transport = self.converse(exchange.client[0] + b"\n")
            self.assertEqual(self.replies(transport), decode_all(exchange.server[:1]), title)
            self.assertEqual(self.runner.runs[-1].call.spec.name, name)

    def test_conversation_replayed_through_the_runner(self) -> None:
        """The streamed capture: the runner's events become the original's lines."""
        exchange = harpd_exchanges()["streamed result: ack + stream packets + result"]
        _, transport = self.converse(exchange.client[0] + b"\n")
        run = self.runner.runs[0]
        self.assertEqual(run.call.arguments, [3])
        for line in decode_all(exchange.server[1:-1]):
            run.on_stream(line["stream"])
        run.outcome.callback(ResultReply(decode_all(exchange.server[-1:])[0]["result"]))
        self.assertEqual(self.replies(transport), decode_all(exchange.server))
        self.assertTrue(transport.disconnecting)


class ConversationTests(ProtocolTestCase):
    def test_result(self) -> None:
        _, transport = self.converse(GOOD)
        run = self.runner.runs[0]
        self.assertEqual((run.call.spec.name, run.call.arguments, run.call.user), ("echo", [1], "alice"))
        self.assertFalse(transport.disconnecting)
        run.outcome.callback(ResultReply([1]))
        self.assertEqual(
            self.replies(transport), [{"harp": 1, "stream_result": False}, {"result": [1]}]
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.limiter.running, 0)

    def test_stream(self) -> None:
        _, transport = self.converse(STREAM)
        run = self.runner.runs[0]
        run.on_stream(0)
        run.on_stream({"x": None})
        run.outcome.callback(ResultReply(None))
        self.assertEqual(
            self.replies(transport),
            [{"harp": 1, "stream_result": True}, {"stream": 0}, {"stream": {"x": None}}, {"result": None}],
        )

    def test_exception(self) -> None:
        _, transport = self.converse(GOOD)
        self.runner.runs[0].outcome.callback(
            ExceptionReply("ValueError", "bad", {"class": "ValueError", "module": "builtins"})
        )
        self.assertEqual(
            self.replies(transport)[-1],
            {"exception": {"type": "ValueError", "message": "bad",
                           "data": {"class": "ValueError", "module": "builtins"}}},
        )
        self.assertTrue(transport.disconnecting)

    def test_error_after_ack_carries_the_protocol_marker(self) -> None:
        _, transport = self.converse(GOOD)
        self.runner.runs[0].outcome.callback(ErrorReply("timeout", "maximum execution time exceeded"))
        self.assertEqual(self.replies(transport)[0], {"harp": 1, "stream_result": False})
        self.assertError(transport, "timeout", "maximum execution time exceeded")

    def test_runner_failure_is_a_system_error(self) -> None:
        _, transport = self.converse(GOOD)
        self.runner.runs[0].outcome.errback(RuntimeError("bug"))
        self.assertError(transport, "system_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_authenticator_failure_is_a_system_error(self) -> None:
        self.auth.authenticate = lambda user, password: fail(RuntimeError("db down"))  # type: ignore[method-assign]
        _, transport = self.converse(GOOD)
        self.assertError(transport, "system_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.runner.runs, [])


class CheckOrderTests(ProtocolTestCase):
    """Request shape, then credentials, then the procedure, then the ack."""

    def test_shape_before_credentials(self) -> None:
        _, transport = self.converse(
            b'{"harp": 2, "procedure": "nope", "arguments": [], "auth": {"user": "x", "password": "y"}}\n'
        )
        self.assertError(transport, "invalid_request", "unsupported protocol version")
        self.assertEqual(self.auth.asked, [])

    def test_credentials_before_procedure(self) -> None:
        _, transport = self.converse(
            b'{"harp": 1, "procedure": "nope", "arguments": [], "auth": {"user": "x", "password": "y"}}\n'
        )
        self.assertError(transport, "auth_error", "unknown user or wrong password")

    def test_unknown_procedure(self) -> None:
        _, transport = self.converse(
            b'{"harp":1,"procedure":"nope","arguments":[],"auth":{"user":"alice","password":"s3cret"}}\n'
        )
        self.assertEqual(
            self.replies(transport),
            [{"harp": 1, "error": {"type": "no_such_procedure", "message": "no such procedure",
                                   "data": {"procedure": "nope"}}}],
        )

    def test_wrong_argument_count_still_runs(self) -> None:
        """As the original: the procedure runs and raises TypeError itself."""
        _, transport = self.converse(
            b'{"harp":1,"procedure":"add","arguments":[1],"auth":{"user":"alice","password":"s3cret"}}\n'
        )
        self.assertEqual(self.replies(transport), [{"harp": 1, "stream_result": False}])
        self.assertEqual(self.runner.runs[0].call.arguments, [1])


class ExcessiveDataTests(ProtocolTestCase):
    EXCESSIVE = "excessive data after request"

    def test_second_line_in_the_same_read(self) -> None:
        _, transport = self.converse(GOOD + b'{"x": 1}\n')
        self.assertEqual(self.replies(transport), [{"harp": 1, "error": {"type": "invalid_request", "message": self.EXCESSIVE}}])
        self.assertEqual(self.runner.runs, [])

    def test_second_read_before_the_reactor_turns(self) -> None:
        _, transport = self.converse(GOOD, b'{"x": 1}\n')
        self.assertError(transport, "invalid_request", self.EXCESSIVE)
        self.assertEqual(self.runner.runs, [])

    def test_unterminated_trailing_bytes(self) -> None:
        _, transport = self.converse(GOOD + b"x")
        self.assertError(transport, "invalid_request", self.EXCESSIVE)

    def test_data_while_running_stops_the_call(self) -> None:
        protocol, transport = self.converse(GOOD)
        protocol.dataReceived(b"more\n")
        self.assertEqual(self.replies(transport)[0], {"harp": 1, "stream_result": False})
        self.assertError(transport, "invalid_request", self.EXCESSIVE)
        self.assertTrue(self.runner.runs[0].cancelled)
        self.assertEqual(self.limiter.running, 0)

    def test_data_after_the_final_line_is_ignored(self) -> None:
        protocol, transport = self.converse(b"garbage\n")
        before = transport.value()
        protocol.dataReceived(b"more\n")
        self.assertEqual(transport.value(), before)


class LimitTests(ProtocolTestCase):
    def test_idle_client_gets_a_timeout_error(self) -> None:
        _, transport = self.connect()
        self.clock.advance(29.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assertError(transport, "timeout")

    def test_partial_request_does_not_reset_the_idle_timer(self) -> None:
        protocol, transport = self.connect()
        self.clock.advance(20)
        protocol.dataReceived(GOOD[:10])
        self.clock.advance(10.1)
        self.assertError(transport, "timeout")

    def test_line_too_long(self) -> None:
        _, transport = self.converse(b"[" + b"1," * 600 + b"1]\n")
        self.assertError(transport, "invalid_request", "line longer than 1000 bytes")

    def test_unterminated_line_too_long(self) -> None:
        _, transport = self.converse(b"x" * 1001)
        self.assertError(transport, "invalid_request", "line longer than 1000 bytes")

    def test_queue_then_overloaded(self) -> None:
        """Two run, one waits (no ack yet), the fourth is refused at once."""
        transports = [self.converse(GOOD)[1] for _ in range(3)]
        self.assertEqual(len(self.runner.runs), 2)
        self.assertEqual(transports[2].value(), b"")
        _, refused = self.converse(GOOD)
        self.assertError(refused, "overloaded")
        self.runner.runs[0].outcome.callback(ResultReply(1))
        self.assertEqual(len(self.runner.runs), 3)
        self.assertEqual(self.replies(transports[2]), [{"harp": 1, "stream_result": False}])

    def test_queue_wait_is_bounded(self) -> None:
        for _ in range(2):
            self.converse(GOOD)
        _, waiting = self.converse(GOOD)
        self.clock.advance(30)
        self.assertError(waiting, "overloaded")
        self.assertEqual(self.limiter.waiting, 0)

    def test_waiting_client_that_leaves_frees_its_place(self) -> None:
        for _ in range(2):
            self.converse(GOOD)
        protocol, _ = self.converse(GOOD)
        protocol.connectionLost(None)
        self.assertEqual(self.limiter.waiting, 0)
        self.runner.runs[0].outcome.callback(ResultReply(1))
        self.assertEqual(len(self.runner.runs), 2)

    def test_client_that_never_reads_is_aborted(self) -> None:
        _, transport = self.converse(b"garbage\n")
        self.assertFalse(transport.disconnected)
        self.clock.advance(30)
        self.assertTrue(transport.disconnected)


class EndingTests(ProtocolTestCase):
    def test_disconnect_cancels_the_call(self) -> None:
        protocol, _ = self.converse(GOOD)
        protocol.connectionLost(None)
        self.assertTrue(self.runner.runs[0].cancelled)
        self.assertEqual(self.limiter.running, 0)
        self.assertEqual(self.factory.connections, set())

    def test_disconnect_during_authentication(self) -> None:
        self.auth.hold = True
        protocol, transport = self.converse(GOOD)
        protocol.connectionLost(None)
        self.auth.pending[0].callback(True)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.runner.runs, [])

    def test_shutdown_during_a_call(self) -> None:
        exchange = harpd_exchanges()["SIGTERM to harpd (parent) 0.5 s into sleep(5)"]
        _, transport = self.converse(GOOD)
        closed = self.factory.shutDown()
        self.assertEqual(self.replies(transport), decode_all(exchange.server))
        self.assertTrue(self.runner.runs[0].cancelled)
        self.assertNoResult(closed)
        for protocol in list(self.factory.connections):
            protocol.connectionLost(None)
        self.successResultOf(closed)

    def test_shutdown_before_the_request(self) -> None:
        _, transport = self.connect()
        self.factory.shutDown()
        self.assertError(transport, "shutdown", "service is shutting down")

    def test_one_log_event_per_call_without_the_password(self) -> None:
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        _, transport = self.converse(GOOD)
        self.clock.advance(0.25)
        self.runner.runs[0].outcome.callback(ResultReply([1]))
        calls = [e for e in events if "outcome" in e]
        self.assertEqual(len(calls), 1)
        event = calls[0]
        self.assertEqual(
            (event["user"], event["procedure"], event["outcome"], event["duration"]),
            ("alice", "echo", "result", 0.25),
        )
        self.assertNotIn("s3cret", repr(events))
