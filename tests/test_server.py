"""Tests for txharp.server, the Deferred harpd client, without sockets or a global reactor.

Most tests build the :class:`HarpServer` with ``endpoint=`` a plain
``TCP4ClientEndpoint`` on a ``MemoryReactorClock``: ``endpoint=`` is the
public way to supply the complete transport, so the protocol layer is
tested as it runs above TLS, byte for byte, with a ``StringTransport``.
The default path (TLS over ``HostnameEndpoint``) is checked here up to the
ClientHello, and end to end in ``test_server_loopback``.
"""
from __future__ import annotations

import json
import math
from typing import Any, List, Optional, Tuple

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.vectors_daemon import DISPATCHER_REQUESTS, HARPD
from txharp.errors import (
    CommunicationError,
    EncodingError,
    HarpException,
    HarpTimeout,
    RemoteError,
    RemoteException,
    TLSError,
)
from txharp.lines import ClientConversation
from txharp.server import HarpProcedure, HarpServer, Result
from txharp.streams import MessageStream
from txharp.wire.daemon import DaemonReplyReader

ALICE = ("alice", "s3cret")


class Daemon:
    """A scripted harpd on a StringTransport, for one HarpServer on a MemoryReactorClock."""

    def __init__(self, user: str = "alice", password: str = "s3cret", **options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.server = HarpServer(
            "harpd.example",
            user,
            password,
            reactor=self.reactor,
            endpoint=TCP4ClientEndpoint(self.reactor, "192.0.2.7", 4306),
            **options,
        )
        self.protocol: Optional[Protocol] = None
        self.transport = StringTransport()

    def connect(self) -> None:
        """Complete the pending TCP connection: the client writes its request."""
        host, port, factory = self.reactor.tcpClients[-1][:3]
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.protocol.makeConnection(self.transport)

    def request(self) -> Any:
        """The request line the client sent, decoded."""
        data = self.transport.value()
        assert data.endswith(b"\n") and data.count(b"\n") == 1, data
        return json.loads(data)

    def send(self, *lines: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(b"".join(line + b"\n" for line in lines))

    def close(self, reason: Failure = Failure(ConnectionDone())) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(reason)


ACK = b'{"harp": 1, "stream_result": false}'
STREAM_ACK = b'{"harp": 1, "stream_result": true}'


class ResultTests(SynchronousTestCase):
    """Result, the end value a stream delivers last."""

    def test_value_equality_repr(self) -> None:
        self.assertEqual(Result([1, "x"]).value, [1, "x"])
        self.assertEqual(Result(5), Result(5))
        self.assertNotEqual(Result(5), Result(6))
        self.assertNotEqual(Result(5), 5)
        self.assertEqual(Result(None), Result())
        self.assertEqual(repr(Result("done")), "Result('done')")
        self.assertEqual(hash(Result("a")), hash(Result("a")))
        self.assertRaises(TypeError, hash, Result([1]))


class RequestTests(SynchronousTestCase):
    """What goes on the wire, and what is refused before connecting."""

    def test_positional_request_bytes(self) -> None:
        """Byte for byte the compact form the original dispatcher sends to harpd."""
        daemon = Daemon("spyuser", "spypass")
        daemon.server.some_proc(1, "two", {"three": 3})
        daemon.connect()
        self.assertEqual(daemon.transport.value(), DISPATCHER_REQUESTS[0] + b"\n")

    def test_named_request_bytes(self) -> None:
        daemon = Daemon("spyuser", "spypass")
        daemon.server.kw_proc(a=1, b=2)
        daemon.connect()
        self.assertEqual(daemon.transport.value(), DISPATCHER_REQUESTS[1] + b"\n")

    def test_no_arguments_is_empty_list(self) -> None:
        daemon = Daemon()
        daemon.server.noargs()
        daemon.connect()
        self.assertEqual(daemon.request()["arguments"], [])

    def test_item_access_reaches_any_name(self) -> None:
        daemon = Daemon()
        procedure = daemon.server["_private proc"]
        self.assertIsInstance(procedure, HarpProcedure)
        procedure()
        daemon.connect()
        self.assertEqual(daemon.request()["procedure"], "_private proc")
        self.assertRaises(AttributeError, getattr, daemon.server, "_private")

    def test_mixed_arguments_raise_before_connecting(self) -> None:
        daemon = Daemon()
        with self.assertRaises(HarpException) as caught:
            daemon.server.add(1, b=2)
        self.assertIn("mixed", str(caught.exception))
        self.assertEqual(daemon.reactor.tcpClients, [])

    def test_non_json_arguments_raise_before_connecting(self) -> None:
        daemon = Daemon()
        self.assertRaises(EncodingError, daemon.server.echo, {1, 2})
        self.assertRaises(EncodingError, daemon.server.echo, x=float("nan"))
        self.assertEqual(daemon.reactor.tcpClients, [])

    def test_password_never_in_repr(self) -> None:
        daemon = Daemon()
        for text in (repr(daemon.server), repr(daemon.server.echo)):
            self.assertIn("alice@harpd.example:4306", text)
            self.assertNotIn("s3cret", text)

    def test_endpoint_excludes_tls_options(self) -> None:
        reactor = MemoryReactorClock()
        endpoint = TCP4ClientEndpoint(reactor, "192.0.2.7", 4306)
        for option in ({"ca_file": "ca.pem"}, {"pins": ["00" * 32]},
                       {"check_hostname": False}, {"tls_minimum": "1.0"}):
            self.assertRaises(ValueError, HarpServer, "h", *ALICE,
                              reactor=reactor, endpoint=endpoint, **option)

    def test_invalid_arguments(self) -> None:
        reactor = MemoryReactorClock()
        self.assertRaises(ValueError, HarpServer, "h", *ALICE, port=0, reactor=reactor)
        self.assertRaises(ValueError, HarpServer, "h", *ALICE, timeout=0, reactor=reactor)
        self.assertRaises(TypeError, HarpServer, "h", "alice", None, reactor=reactor)
        self.assertRaises(ValueError, HarpServer, "h", *ALICE, tls_minimum="0.9", reactor=reactor)


# What each recorded conversation must give: a value, stream items (the
# last one a Result when the stream ends cleanly), and/or an exception.
TESTING = "harpd.__procedures__"
EXPECTED = {
    "echo": {"value": [1, 2, "x"]},
    "named_args": {"value": 5},
    "no_args": {"value": []},
    "stream": {"items": [{"i": 0}, {"i": 1}, {"i": 2}, Result("done")]},
    "stream_no_result": {"items": [0, 1, Result(None)]},
    "exception": {"error": RemoteException(
        "TestFailure", "intentional failure", {"class": "TestFailure", "module": TESTING})},
    "exception_builtin": {"error": RemoteException(
        "ValueError", "bad value", {"class": "ValueError", "module": "exceptions"})},
    "exception_mid_stream": {"items": [{"i": 0}, {"i": 1}], "error": RemoteException(
        "RuntimeError", "stream broke after 2 packets",
        {"class": "RuntimeError", "module": "exceptions"})},
    "wrong_arg_count": {"error": RemoteException(
        "TypeError", "add() takes exactly 2 arguments (1 given)",
        {"class": "TypeError", "module": "exceptions"})},
    "type_error": {"error": RemoteException(
        "TypeError", "unsupported operand type(s) for +: 'int' and 'unicode'",
        {"class": "TypeError", "module": "exceptions"})},
    "auth_wrong_password": {"error": RemoteError("auth_error", "unknown user or wrong password")},
    "auth_unknown_user": {"error": RemoteError("auth_error", "unknown user or wrong password")},
    "auth_before_procedure": {"error": RemoteError(
        "auth_error", "unknown user or wrong password")},
    "no_such_procedure": {"error": RemoteError(
        "no_such_procedure", "no such procedure", {"procedure": "nope"})},
    "arguments_string": {"error": RemoteError("invalid_request", "invalid request")},
    "arguments_number": {"error": RemoteError("invalid_request", "invalid request")},
    "arguments_missing": {"error": RemoteError("invalid_request", "invalid request")},
    "procedure_not_string": {"error": RemoteError("invalid_request", "invalid request")},
    "request_not_object": {"error": RemoteError(
        "invalid_request", "invalid request data type")},
    "missing_version": {"error": RemoteError(
        "invalid_request", "unsupported protocol version")},
    "wrong_version": {"error": RemoteError("invalid_request", "unsupported protocol version")},
    "missing_auth": {"error": RemoteError("invalid_request", "malformed credentials data")},
    "excessive_data": {"error": RemoteError("invalid_request", "excessive data after request")},
    "parse_error": {"error": RemoteError("parse_error", "No JSON object could be decoded")},
    "parse_error_truncated": {"error": RemoteError(
        "parse_error", "No JSON object could be decoded")},
    "invalid_message": {"error": RemoteError(
        "invalid_message", "set([1, 2]) is not JSON serializable")},
    "timeout": {"error": RemoteError("timeout", "maximum execution time exceeded")},
    "shutdown": {"error": RemoteError("shutdown", "service is shutting down")},
    "non_ascii": {"value": ["za\u017c\u00f3\u0142\u0107"]},
    "json_types": {"value": [1.5, 1e100, True, None, {"k": [1]}]},
    "json_types_full": {"value": [
        1.5, 0.1, 1e-05, 1e100, -0.0, 3.0, 12345678901234567890,
        "zażółć \u2603", "\U0001F600", "s/l", {"a": [True, False, None], "b": 1}]},
}


class ReplayTests(SynchronousTestCase):
    """Every harpd conversation recorded from the original, replayed."""

    def replay(self, name: str) -> Tuple[Daemon, Deferred[Any], List[Any]]:
        """Send the recorded call (or echo(1) when the recording's request is
        one no client would send), feed the recorded replies, then EOF."""
        recorded = HARPD[name]
        try:
            request = json.loads(recorded.requests[0])
            procedure, arguments = request["procedure"], request["arguments"]
            user, password = request["auth"]["user"], request["auth"]["password"]
            sendable = (isinstance(procedure, str) and isinstance(arguments, (list, dict))
                        and request["harp"] == 1 and len(recorded.requests) == 1)
        except (ValueError, TypeError, KeyError):
            sendable = False
        if not sendable:
            procedure, arguments, (user, password) = "echo", [1], ALICE
        daemon = Daemon(user, password)
        if isinstance(arguments, dict):
            d = daemon.server[procedure](**arguments)
        else:
            d = daemon.server[procedure](*arguments)
        daemon.connect()
        if sendable:
            self.assertEqual(daemon.request(), request)
        items: List[Any] = []
        for line in recorded.replies:
            daemon.send(line)
        self.assertTrue(daemon.transport.disconnecting, "client must close after the final line")
        daemon.close()
        if d.called and isinstance(d.result, MessageStream):
            d = self.successResultOf(d).each(items.append)
        return daemon, d, items

    def check(self, name: str) -> None:
        expected = EXPECTED[name]
        _, d, items = self.replay(name)
        if "error" in expected:
            failure = self.failureResultOf(d, type(expected["error"]))
            self.assertEqual(failure.value, expected["error"])
        elif "value" in expected:
            self.assertEqual(self.successResultOf(d), expected["value"])
        else:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(items, expected.get("items", []))

    def test_every_recording_has_an_expectation(self) -> None:
        self.assertEqual(sorted(HARPD), sorted(EXPECTED))

    def test_all_recordings(self) -> None:
        for name in HARPD:
            with self.subTest(name):
                self.check(name)

    def test_exception_is_not_error(self) -> None:
        """A procedure's exception and a daemon's error stay distinct classes."""
        _, d, _ = self.replay("exception")
        self.assertFalse(isinstance(self.failureResultOf(d).value, RemoteError))
        _, d, _ = self.replay("timeout")
        failure = self.failureResultOf(d, RemoteError)
        self.assertNotIsInstance(failure.value, HarpTimeout)

    def test_json_edge_values(self) -> None:
        """Big integers stay exact, -0.0 keeps its sign, 1e+100 is a float."""
        _, d, _ = self.replay("json_types_full")
        value = self.successResultOf(d)
        self.assertIs(type(value[6]), int)
        self.assertEqual(value[6], 12345678901234567890)
        self.assertEqual(math.copysign(1, value[4]), -1)
        self.assertIs(type(value[3]), float)

    def test_stream_fires_at_acknowledgement(self) -> None:
        """The stream is handed over at the ack, and packets arrive as they come."""
        daemon = Daemon()
        d = daemon.server.stream_n(3)
        daemon.connect()
        self.assertNoResult(d)
        daemon.send(STREAM_ACK)
        stream = self.successResultOf(d)
        seen: List[Any] = []
        done = stream.each(seen.append)
        daemon.send(b'{"stream": {"i": 0}}')
        self.assertEqual(seen, [{"i": 0}])
        self.assertNoResult(done)
        daemon.send(b'{"result": "done"}')
        self.assertEqual(seen, [{"i": 0}, Result("done")])
        self.assertIsNone(self.successResultOf(done))


class ProtocolErrorTests(SynchronousTestCase):
    """Replies that break the protocol are communication failures, never results."""

    def run_call(self, *lines: bytes, close: bool = True) -> Tuple[Daemon, Deferred[Any]]:
        daemon = Daemon()
        d = daemon.server.echo(1)
        daemon.connect()
        daemon.send(*lines)
        if close:
            daemon.close()
        return daemon, d

    def assert_communication_error(self, d: Deferred[Any], text: str) -> None:
        """``d`` failed with a CommunicationError saying ``text``, neither a
        timeout nor a TLS failure (MalformedMessage, a subclass, is fine)."""
        failure = self.failureResultOf(d, CommunicationError)
        self.assertNotIsInstance(failure.value, (HarpTimeout, TLSError))
        self.assertIn(text, str(failure.value))

    def test_eof_before_acknowledgement(self) -> None:
        _, d = self.run_call()
        self.assert_communication_error(d, "closed the connection before the final reply")

    def test_eof_after_acknowledgement(self) -> None:
        _, d = self.run_call(ACK)
        self.assert_communication_error(d, "before the final reply")

    def test_connection_lost_mid_stream(self) -> None:
        """Packets already received are delivered, then the stream fails."""
        daemon, d = self.run_call(STREAM_ACK, b'{"stream": 1}', close=False)
        items: List[Any] = []
        done = self.successResultOf(d).each(items.append)
        daemon.close(Failure(ConnectionLost()))
        self.assertEqual(items, [1])
        self.assert_communication_error(done, "harpd at harpd.example:4306")

    def test_garbage_instead_of_acknowledgement(self) -> None:
        daemon, d = self.run_call(b"this is not json", close=False)
        self.assertTrue(daemon.transport.disconnected)
        self.assert_communication_error(d, "invalid reply")

    def test_malformed_acknowledgement(self) -> None:
        _, d = self.run_call(b'{"harp": 1, "stream_result": "yes"}', close=False)
        self.assert_communication_error(d, "expected an acknowledgement")

    def test_result_before_acknowledgement(self) -> None:
        _, d = self.run_call(b'{"result": 1}', close=False)
        self.assert_communication_error(d, "expected an acknowledgement")

    def test_stream_packet_for_non_streaming_procedure(self) -> None:
        _, d = self.run_call(ACK, b'{"stream": 1}', b'{"result": 1}', close=False)
        self.assert_communication_error(d, "stream packet from a non-streaming procedure")

    def test_garbage_mid_stream(self) -> None:
        daemon, d = self.run_call(STREAM_ACK, b'{"stream": 1}', b"{oops", close=False)
        items: List[Any] = []
        done = self.successResultOf(d).each(items.append)
        self.assertEqual(items, [1])
        self.assertTrue(daemon.transport.disconnected)
        self.assert_communication_error(done, "invalid reply")

    def test_error_after_stream_packets(self) -> None:
        """A daemon error mid-stream (the dispatcher's spy recording) fails the stream."""
        _, d = self.run_call(STREAM_ACK, b'{"stream": {"x": 1}}',
                             b'{"harp": 1, "error": {"type": "custom_error", "message": "boom"}}')
        items: List[Any] = []
        done = self.successResultOf(d).each(items.append)
        self.assertEqual(items, [{"x": 1}])
        self.assertEqual(self.failureResultOf(done, RemoteError).value,
                         RemoteError("custom_error", "boom"))

    def test_line_too_long(self) -> None:
        daemon = Daemon(max_line_length=64)
        d = daemon.server.echo(1)
        daemon.connect()
        daemon.send(ACK, b'{"result": "' + b"x" * 100 + b'"}')
        self.assertTrue(daemon.transport.disconnected)
        self.assert_communication_error(d, "longer than 64 bytes")

    def test_data_after_final_line_is_ignored(self) -> None:
        """The value is known once the final line came; the client hangs up."""
        daemon, d = self.run_call(ACK, b'{"result": 7}', b'{"result": 8}', b"junk", close=False)
        self.assertTrue(daemon.transport.disconnecting)
        self.assertFalse(daemon.transport.disconnected)
        daemon.close()
        self.assertEqual(self.successResultOf(d), 7)

    def test_refused_connection(self) -> None:
        daemon = Daemon()
        d = daemon.server.echo(1)
        host, port, factory = daemon.reactor.tcpClients[-1][:3]
        factory.clientConnectionFailed(daemon.reactor.connectors[-1],
                                       Failure(ConnectionRefusedError()))
        self.assert_communication_error(d, "connection to harpd at harpd.example:4306 refused")

    def test_tls_failure_becomes_tls_error(self) -> None:
        """A handshake failure seen in connectionLost is reported as TLSError."""
        daemon = Daemon()
        d = daemon.server.echo(1)
        daemon.connect()
        daemon.close(Failure(SSL.Error([("SSL routines", "", "unsupported protocol")])))
        failure = self.failureResultOf(d, TLSError)
        self.assertIn("harpd.example", str(failure.value))
        self.assertIn("minimum_version='1.0'", str(failure.value))


class TimeoutTests(SynchronousTestCase):
    """Both limits run on the injected reactor's clock."""

    def test_idle_timeout_between_lines(self) -> None:
        daemon = Daemon(timeout=5)
        d = daemon.server.stream_n(2)
        daemon.connect()
        daemon.reactor.advance(4.9)
        daemon.send(STREAM_ACK)
        stream = self.successResultOf(d)
        daemon.reactor.advance(4.9)
        daemon.send(b'{"stream": 0}')
        items: List[Any] = []
        done = stream.each(items.append)
        daemon.reactor.advance(4.9)
        self.assertNoResult(done)
        daemon.reactor.advance(0.2)
        self.assertEqual(items, [0])
        failure = self.failureResultOf(done, HarpTimeout)
        self.assertIn("no reply from harpd at harpd.example:4306 within 5 s", str(failure.value))
        self.assertTrue(daemon.transport.disconnected)

    def test_no_idle_timeout_by_default(self) -> None:
        """Without ``timeout`` a call waits as long as the procedure runs."""
        daemon = Daemon()
        d = daemon.server.sleep(86400)
        daemon.connect()
        daemon.send(ACK)
        daemon.reactor.advance(86400 * 7)
        self.assertNoResult(d)
        daemon.send(b'{"result": true}')
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(daemon.reactor.getDelayedCalls(), [])

    def test_connect_timeout(self) -> None:
        daemon = Daemon(connect_timeout=3)
        d = daemon.server.echo(1)
        daemon.reactor.advance(2.9)
        self.assertNoResult(d)
        daemon.reactor.advance(0.1)
        failure = self.failureResultOf(d, HarpTimeout)
        self.assertIn("connecting to harpd at harpd.example:4306 timed out", str(failure.value))
        self.assertTrue(daemon.reactor.connectors[-1].stoppedConnecting)


class DefaultTransportTests(SynchronousTestCase):
    """Without ``endpoint=``: TLS over HostnameEndpoint, port 4306."""

    def test_request_only_after_tls_and_handshake_bounded(self) -> None:
        """The ClientHello names the host (SNI), the password is never sent in
        clear, and a peer that never completes the handshake times out after
        ``connect_timeout`` although ``timeout`` is None."""
        reactor = MemoryReactorClock()
        server = HarpServer("harpd.example", *ALICE, reactor=reactor, connect_timeout=10)
        d = server.echo(1)
        host, port, factory = reactor.tcpClients[-1][:3]
        self.assertEqual(port, 4306)
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        hello = transport.value()
        self.assertEqual(hello[:1], b"\x16")  # a TLS handshake record
        self.assertIn(b"harpd.example", hello)
        self.assertNotIn(b"s3cret", hello)
        reactor.advance(9.9)
        self.assertNoResult(d)
        reactor.advance(0.1)
        failure = self.failureResultOf(d, HarpTimeout)
        self.assertIn("TLS handshake with harpd at harpd.example:4306", str(failure.value))
        self.assertTrue(transport.disconnected)


class _Recorder:
    """A ReplyListener that keeps what it is told."""

    def __init__(self) -> None:
        self.replies: List[Any] = []
        self.ended: List[Optional[Failure]] = []

    def replyReceived(self, reply: Any) -> None:
        self.replies.append(reply)

    def conversationEnded(self, reason: Optional[Failure]) -> None:
        self.ended.append(reason)


class HandshakeTimeoutTests(SynchronousTestCase):
    """``ClientConversation(handshake_timeout=...)``, added to txharp.lines for this client."""

    def conversation(self, **timeouts: Any) -> Tuple[ClientConversation[Any], _Recorder, Clock]:
        clock, listener = Clock(), _Recorder()
        protocol: ClientConversation[Any] = ClientConversation(
            {"harp": 1}, DaemonReplyReader(), listener, clock=clock, peer="harpd at h:4306",
            **timeouts)
        protocol.makeConnection(StringTransport())
        return protocol, listener, clock

    def test_handshake_bounded_then_idle_timeout_applies(self) -> None:
        protocol, listener, clock = self.conversation(handshake_timeout=10, idle_timeout=60)
        clock.advance(9)
        protocol.handshakeCompleted()
        clock.advance(59)
        protocol.dataReceived(ACK + b"\n")
        clock.advance(59)
        self.assertEqual(listener.ended, [])
        clock.advance(1)
        [reason] = listener.ended
        self.assertIn("no reply from harpd at h:4306 within 60 s", str(reason.value))

    def test_no_idle_timeout_after_handshake(self) -> None:
        protocol, listener, clock = self.conversation(handshake_timeout=10)
        protocol.handshakeCompleted()
        clock.advance(10**6)
        self.assertEqual((listener.ended, clock.getDelayedCalls()), ([], []))

    def test_handshake_timeout(self) -> None:
        protocol, listener, clock = self.conversation(handshake_timeout=10, idle_timeout=60)
        clock.advance(10)
        [reason] = listener.ended
        self.assertIsInstance(reason.value, HarpTimeout)
        self.assertIn("TLS handshake with harpd at h:4306 not done within 10 s", str(reason.value))
        self.assertTrue(protocol.transport.disconnected)


class CancellationTests(SynchronousTestCase):
    """Cancelling closes the connection, which is how the protocol cancels a call."""

    def test_cancel_before_connect(self) -> None:
        daemon = Daemon()
        d = daemon.server.echo(1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(daemon.reactor.connectors[-1].stoppedConnecting)
        self.assertEqual(daemon.reactor.getDelayedCalls(), [])

    def test_cancel_after_connect(self) -> None:
        daemon = Daemon(timeout=5)
        d = daemon.server.sleep(30)
        daemon.connect()
        daemon.send(ACK)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(daemon.transport.disconnected)
        daemon.close(Failure(ConnectionLost()))
        self.assertEqual(daemon.reactor.getDelayedCalls(), [])

    def test_cancel_stream(self) -> None:
        daemon = Daemon()
        d = daemon.server.stream_n(10)
        daemon.connect()
        daemon.send(STREAM_ACK, b'{"stream": 0}')
        stream = self.successResultOf(d)
        items: List[Any] = []
        done = stream.each(items.append)
        stream.cancel()
        self.assertEqual(items, [0])
        self.failureResultOf(done, CancelledError)
        self.assertTrue(daemon.transport.disconnected)

    def test_cancel_pending_read_cancels_call(self) -> None:
        """Cancelling the Deferred of an ``async for`` step closes the connection too."""
        daemon = Daemon()
        d = daemon.server.stream_n(10)
        daemon.connect()
        daemon.send(STREAM_ACK)
        stream = self.successResultOf(d)

        async def first() -> Any:
            async for item in stream:
                return item

        step = Deferred.fromCoroutine(first())
        step.cancel()
        self.failureResultOf(step, CancelledError)
        self.assertTrue(daemon.transport.disconnected)


class FlowControlTests(SynchronousTestCase):
    """A slow stream consumer pauses reading instead of buffering without bound."""

    def test_slow_consumer_pauses_transport(self) -> None:
        daemon = Daemon(timeout=5)
        d = daemon.server.stream_n(1000)
        daemon.connect()
        daemon.send(STREAM_ACK)
        stream = self.successResultOf(d)
        daemon.send(*[b'{"stream": %d}' % i for i in range(1000)], b'{"result": "done"}')
        self.assertEqual(daemon.transport.producerState, "paused")
        daemon.reactor.advance(60)  # no idle timeout while the consumer holds reading
        items: List[Any] = []
        gate: List[Deferred[None]] = []

        def slow(item: Any) -> Deferred[None]:
            items.append(item)
            gate.append(Deferred())
            return gate[-1]

        done = stream.each(slow)
        self.assertEqual(len(items), 1)
        self.assertEqual(daemon.transport.producerState, "paused")
        while gate:
            gate.pop().callback(None)
        self.assertEqual(items, list(range(1000)) + [Result("done")])
        self.assertEqual(daemon.transport.producerState, "producing")
        self.assertIsNone(self.successResultOf(done))

    def paused_stream(self, *tail: bytes) -> Tuple[Daemon, MessageStream[Any]]:
        """A stream whose consumer has not started: 300 packets (then ``tail``)
        received in one chunk, reading paused, then the daemon hangs up."""
        daemon = Daemon(timeout=5)
        d = daemon.server.stream_n(300)
        daemon.connect()
        daemon.send(STREAM_ACK, *[b'{"stream": %d}' % i for i in range(300)], *tail)
        self.assertEqual(daemon.transport.producerState, "paused")
        daemon.close()
        return daemon, self.successResultOf(d)

    def test_hang_up_while_paused_keeps_buffered_lines(self) -> None:
        """Over TLS the peer's close arrives with the last lines; the lines still
        buffered for a paused consumer are delivered, final line included."""
        daemon, stream = self.paused_stream(b'{"result": "done"}')
        daemon.reactor.advance(60)
        self.assertEqual(self.successResultOf(stream.all()),
                         list(range(300)) + [Result("done")])
        self.assertEqual(daemon.reactor.getDelayedCalls(), [])

    def test_hang_up_while_paused_before_final_line(self) -> None:
        daemon, stream = self.paused_stream()
        items: List[Any] = []
        done = stream.each(items.append)
        self.assertEqual(items, list(range(300)))
        self.failureResultOf(done, CommunicationError)
        self.assertEqual(daemon.reactor.getDelayedCalls(), [])

    def test_cancel_after_hang_up_while_paused(self) -> None:
        daemon, stream = self.paused_stream()
        stream.cancel()
        self.failureResultOf(stream.all(), CancelledError)
        self.assertFalse(daemon.transport.disconnected, "no abort of a closed connection")

