"""Hostile servers for both clients: :class:`~txharp.caller.HarpCaller` and
:class:`~txharp.server.HarpServer`.

A fake server answers with garbage, partial lines, duplicated or reordered
stream packets, a stream that ends without its final line, or valid lines
split at every byte boundary; it may then close, reset or fall silent.
Every case must end — on a :class:`~twisted.internet.task.Clock`, so
"never hangs" is checked exactly — in the value an oracle computes from
the same bytes with the pure wire layer, or in a typed error
(:class:`~txharp.errors.CommunicationError` for anything the server got
wrong).  Items delivered before a failure are exactly the valid prefix.

The disappearance tests (issue item 6) check that the dispatcher or harpd
going away mid-request or mid-stream fails *every* pending Deferred with
``CommunicationError``, on the clock and over loopback.
"""
from __future__ import annotations

import json
from typing import Any, Callable, List, Optional, Tuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import strategies as S
from txharp.caller import CALL_CANCELLED, CALL_NOT_FINISHED, HarpCaller, JobStatus
from txharp.errors import (
    CommunicationError,
    HarpTimeout,
    MalformedMessage,
    RemoteError,
    RemoteException,
)
from txharp.server import HarpServer, Result
from txharp.wire import (
    Acknowledgement,
    CallAccepted,
    CancelReply,
    DaemonReplyReader,
    ErrorReply,
    ExceptionReply,
    NoResultReply,
    Packet,
    ResultReply,
    StatusReply,
    StreamItem,
    StreamReader,
    decode_line,
    parse_call_reply,
    parse_cancel_reply,
    parse_result_reply,
    parse_status_reply,
)
from txharp.wire.outcomes import CancelledReply, ContinueReply

MAX_LINE = 1000
TIMEOUT = 10.0
JOB = "5e0d6c4e-1b58-4d3a-9a51-0d3f0b3f7a11"


class FakeEndpoint:
    """Connects at once to a StringTransport, or fails like a refused connection."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.connections: List[Tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> "Deferred[Any]":
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3502))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def deliver(protocol: Any, data: bytes, cuts: List[int]) -> None:
    """``data`` in pieces cut at ``cuts`` (positions modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    last = 0
    for point in points:
        if point > last:
            protocol.dataReceived(data[last:point])
        last = point


def close(protocol: Any, how: str) -> None:
    if how == "done":
        protocol.connectionLost(Failure(ConnectionDone()))
    elif how == "lost":
        protocol.connectionLost(Failure(ConnectionLost()))


# ---------------------------------------------------------------- oracles


class Ends(Exception):
    """The oracle's verdict: the client must fail with CommunicationError."""


def read_lines(data: bytes, feed: Callable[[Any], Any], finished: Callable[[], bool]) -> List[Any]:
    """Run ``data`` through line framing and ``feed`` the way the client does.

    Returns the typed messages up to the end; raises :class:`Ends` when the
    client must fail (bad line, too long, no end before the data runs out).
    """
    out: List[Any] = []
    rest = data
    while not finished():
        newline = rest.find(b"\n")
        if newline < 0:
            raise Ends(out)
        line, rest = rest[:newline], rest[newline + 1:]
        if len(line) > MAX_LINE:
            raise Ends(out)
        try:
            out.append(feed(decode_line(line)))
        except MalformedMessage:
            raise Ends(out)
    return out


def single_reply(data: bytes, parse: Callable[[Any], Any]) -> Any:
    state: List[Any] = []

    def feed(value: Any) -> Any:
        reply = parse(value)
        state.append(reply)
        return reply

    return read_lines(data, feed, lambda: bool(state))[0]


def as_result(reply: Any) -> Any:
    """What RemoteCall.result() gives for a get_result reply."""
    if isinstance(reply, ResultReply):
        return reply.value
    if isinstance(reply, (ExceptionReply, ErrorReply)):
        return reply.exception()
    if isinstance(reply, CancelledReply):
        return CALL_CANCELLED
    assert isinstance(reply, NoResultReply)
    return CALL_NOT_FINISHED


def encode_variant(value: Any, style: int) -> bytes:
    """One line as different peers write it (compact, spaced and sorted, ASCII-escaped)."""
    if style == 0:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == 1:
        return json.dumps(value, sort_keys=True).encode()
    return json.dumps(value, indent=None, ensure_ascii=True).encode()


def reply_bytes(valid: st.SearchStrategy[Any], count: int = 3) -> st.SearchStrategy[bytes]:
    """Server output: some lines (valid, damaged, garbage), maybe an unterminated tail."""
    line = st.one_of(
        st.tuples(valid, st.integers(0, 2)).map(lambda vs: encode_variant(vs[0].to_json(), vs[1])),
        st.tuples(valid, st.integers(0, 2)).map(lambda vs: encode_variant(vs[0].to_json(), vs[1])),
        S.mutated_lines(valid),
        S.mutated_values(valid).map(lambda v: encode_variant(v, 0)),
        S.garbage_lines,
        st.integers(MAX_LINE - 2, MAX_LINE + 2).map(lambda n: b'{"result": "' + b"x" * n + b'"}'),
    )
    tail = st.one_of(st.just(b""), S.mutated_lines(valid), st.just(b'{"result": 1}'))
    return st.tuples(st.lists(line, max_size=count), tail).map(
        lambda lt: b"".join(l + b"\n" for l in lt[0]) + lt[1])


endings = st.sampled_from(["done", "lost", "silent"])
cuts = st.lists(st.integers(0, 10 ** 6), max_size=5)


# ------------------------------------------------------------ dispatcher


class Client:
    def __init__(self, test: SynchronousTestCase) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.rpc = HarpCaller.from_endpoint(self.endpoint, reactor=self.clock, timeout=TIMEOUT,
                                            max_line_length=MAX_LINE)
        self.test = test

    def serve(self, data: bytes, cuts: List[int], ending: str) -> None:
        protocol, transport = self.endpoint.connections[-1]
        deliver(protocol, data, cuts)
        close(protocol, ending)
        self.clock.advance(TIMEOUT + 1)
        self.test.assertEqual(self.clock.getDelayedCalls(), [])

    def settled(self, d: "Deferred[Any]") -> Tuple[bool, Any]:
        """(succeeded, value or exception); fails the test if ``d`` has not fired."""
        results: List[Any] = []
        d.addBoth(results.append)
        self.test.assertEqual(len(results), 1, "the client's Deferred never fired: a hang")
        result = results[0]
        if isinstance(result, Failure):
            return False, result.value
        return True, result


class DispatcherClientFuzzTests(SynchronousTestCase):
    """HarpCaller against a dispatcher that answers anything."""

    def check_single(self, start: Callable[[HarpCaller], "Deferred[Any]"], parse: Callable[[Any], Any],
                     expect: Callable[[Any], Tuple[bool, Any]], data: bytes, cuts: List[int],
                     ending: str) -> None:
        client = Client(self)
        d = start(client.rpc)
        client.serve(data, cuts, ending)
        ok, got = client.settled(d)
        try:
            reply = single_reply(data, parse)
        except Ends:
            self.assertFalse(ok, S_ascii(("expected a failure", data, got)))
            self.assertIsInstance(got, CommunicationError, S_ascii(data))
            return
        expected_ok, expected = expect(reply)
        self.assertEqual(ok, expected_ok, S_ascii((data, got)))
        if isinstance(expected, type):
            self.assertIsInstance(got, expected)
        else:
            self.assertEqual(got, expected, S_ascii(data))

    @S.ci_settings(120)
    @given(reply_bytes(st.one_of(S.outcomes, st.just(NoResultReply()))), cuts, endings)
    def test_result(self, data: bytes, cuts: List[int], ending: str) -> None:
        self.check_single(lambda rpc: rpc.job(JOB).result(), parse_result_reply,
                          lambda reply: (True, as_result(reply)), data, cuts, ending)

    @S.ci_settings(120)
    @given(reply_bytes(st.one_of(S.outcomes, st.just(NoResultReply()))), cuts, endings)
    def test_get(self, data: bytes, cuts: List[int], ending: str) -> None:
        def expect(reply: Any) -> Tuple[bool, Any]:
            value = as_result(reply)
            if isinstance(value, (RemoteError, RemoteException)):
                return False, value
            if value is CALL_CANCELLED:
                from txharp.errors import CancelledException
                return False, CancelledException
            return True, value

        self.check_single(lambda rpc: rpc.job(JOB).get(timeout=TIMEOUT), parse_result_reply,
                          expect, data, cuts, ending)

    @S.ci_settings(100)
    @given(reply_bytes(st.one_of(st.builds(CallAccepted, S.job_ids), S.error_replies)), cuts, endings)
    def test_call(self, data: bytes, cuts: List[int], ending: str) -> None:
        def expect(reply: Any) -> Tuple[bool, Any]:
            if isinstance(reply, ErrorReply):
                return False, reply.exception()
            return True, reply.job_id

        self.check_single(lambda rpc: rpc.h1.echo(1).addCallback(lambda job: job.id()),
                          parse_call_reply, expect, data, cuts, ending)

    @S.ci_settings(100)
    @given(reply_bytes(st.one_of(S.status_replies, S.error_replies)), cuts, endings)
    def test_status(self, data: bytes, cuts: List[int], ending: str) -> None:
        def expect(reply: Any) -> Tuple[bool, Any]:
            if isinstance(reply, ErrorReply):
                return False, reply.exception()
            return True, JobStatus.from_reply(reply)

        self.check_single(lambda rpc: rpc.job(JOB).status(), parse_status_reply, expect, data, cuts, ending)

    @S.ci_settings(100)
    @given(reply_bytes(st.one_of(st.builds(CancelReply, st.booleans()), S.error_replies)), cuts, endings)
    def test_cancel(self, data: bytes, cuts: List[int], ending: str) -> None:
        def expect(reply: Any) -> Tuple[bool, Any]:
            if isinstance(reply, ErrorReply):
                return False, reply.exception()
            return True, reply.cancelled

        self.check_single(lambda rpc: rpc.job(JOB).cancel(), parse_cancel_reply, expect, data, cuts, ending)

    # -- streams

    def check_stream(self, data: bytes, cuts: List[int], ending: str, follow: bool) -> None:
        client = Client(self)
        job = client.rpc.job(JOB)
        stream = job.follow(since=0, numbered=True, timeout=TIMEOUT) if follow else job.stream(numbered=True)
        items: List[Any] = []
        done = stream.each(items.append)
        client.serve(data, cuts, ending)
        ok, got = client.settled(done)
        # Independent of the oracle: whatever was delivered is numbered without gaps or repeats.
        numbers = [number for number, _ in items]
        self.assertEqual(numbers, list(range(numbers[0], numbers[0] + len(numbers))) if numbers else [])
        reader = StreamReader(allow_continue=not follow)
        try:
            lines = read_lines(data, reader.feed, lambda: reader.finished)
        except Ends as ends:
            self.assertFalse(ok, S_ascii((data, items)))
            self.assertIsInstance(got, CommunicationError)
            valid = ends.args[0]
            self.assertEqual(items, [(p.number, p.data) for p in valid if isinstance(p, Packet)])
            return
        self.assertTrue(ok, S_ascii((data, got)))
        self.assertEqual(items, [(p.number, p.data) for p in lines[:-1]])
        self.assertEqual(stream.end, lines[-1])

    @S.ci_settings(150)
    @given(st.one_of(S.stream_sequences(), S.stream_sequences(False)), st.data(), cuts, endings, st.booleans())
    def test_streams(self, lines: List[Any], data: Any, cuts: List[int], ending: str, follow: bool) -> None:
        """Valid streams with damage: a packet duplicated, dropped, swapped or
        garbled, the final line missing or damaged."""
        wire = [encode_variant(line.to_json(), data.draw(st.integers(0, 2))) for line in lines]
        damage = data.draw(st.sampled_from(["none", "duplicate", "drop", "swap", "garble", "no end", "cut end"]))
        if len(wire) > 1 and damage in ("duplicate", "drop", "swap", "garble"):
            i = data.draw(st.integers(0, len(wire) - 2))
            if damage == "duplicate":
                wire.insert(i, wire[i])
            elif damage == "drop":
                del wire[i]
            elif damage == "swap":
                j = data.draw(st.integers(0, len(wire) - 2))
                wire[i], wire[j] = wire[j], wire[i]
            else:
                wire[i] = data.draw(S.mutated_lines(st.just(lines[i])))
        payload = b"".join(line + b"\n" for line in wire)
        if damage == "no end":
            payload = b"".join(line + b"\n" for line in wire[:-1])
        elif damage == "cut end":
            payload = payload[:-data.draw(st.integers(1, len(wire[-1]) + 1))]
        self.check_stream(payload, cuts, ending, follow)

    @S.ci_settings(80)
    @given(reply_bytes(st.one_of(S.packets, S.outcomes, st.just(ContinueReply())), count=5), cuts, endings,
           st.booleans())
    def test_streams_of_anything(self, data: bytes, cuts: List[int], ending: str, follow: bool) -> None:
        self.check_stream(data, cuts, ending, follow)

    def test_valid_replies_split_at_every_byte(self) -> None:
        """Each valid line cut at every point, and fed byte by byte: the right value."""
        cases = [
            (ResultReply({"ü": ["\U0001f984", 10 ** 40, -0.0, None]}), parse_result_reply),
            (ErrorReply("timeout", "request timed out", {"timeout": 1.5}), parse_result_reply),
            (StatusReply("h1", "echo", {"a": [1]}, 1, 2, None, {"who": "me"}), parse_status_reply),
        ]
        for message, parse in cases:
            data = encode_variant(message.to_json(), 0) + b"\n"
            for split in [[cut] for cut in range(len(data) + 1)] + [list(range(len(data)))]:
                if parse is parse_status_reply:
                    self.check_single(lambda rpc: rpc.job(JOB).status(), parse,
                                      lambda reply: (True, JobStatus.from_reply(reply)), data, split, "done")
                else:
                    self.check_single(lambda rpc: rpc.job(JOB).result(), parse,
                                      lambda reply: (True, as_result(reply)), data, split, "silent")
        stream = [Packet(0, "zażółć"), Packet(1, {"\U0001f984": 2}), ResultReply("done")]
        data = b"".join(encode_variant(line.to_json(), 0) + b"\n" for line in stream)
        for split in [[cut] for cut in range(len(data) + 1)] + [list(range(len(data)))]:
            self.check_stream(data, split, "done", follow=True)

    def test_slow_consumer_with_everything_buffered(self) -> None:
        """Thousands of packets, the end and the close arrive before the consumer
        reads anything: reading pauses, nothing is lost, the end comes last."""
        client = Client(self)
        stream = client.rpc.job(JOB).follow(since=0, numbered=True)
        protocol, transport = client.endpoint.connections[-1]
        lines = [Packet(i, {"i": i}).to_json() for i in range(3000)] + [{"result": "done"}]
        deliver(protocol, b"".join(encode_variant(l, 0) + b"\n" for l in lines), [7, 5000, 40000])
        close(protocol, "done")
        self.assertEqual(transport.producerState, "paused")
        items: List[Any] = []
        ok, _ = client.settled(stream.each(items.append))
        self.assertTrue(ok)
        self.assertEqual(items, [(i, {"i": i}) for i in range(3000)])
        self.assertEqual(stream.result(), "done")

    def test_slow_consumer_then_reset(self) -> None:
        """The connection is reset while reading is paused: the packets that
        arrived are delivered, then the stream fails (no end line came)."""
        client = Client(self)
        stream = client.rpc.job(JOB).follow(since=0, numbered=True)
        protocol, _ = client.endpoint.connections[-1]
        deliver(protocol, b"".join(encode_variant(Packet(i, i).to_json(), 0) + b"\n" for i in range(600)), [])
        close(protocol, "lost")
        items: List[Any] = []
        ok, error = client.settled(stream.each(items.append))
        self.assertFalse(ok)
        self.assertIsInstance(error, CommunicationError)
        self.assertEqual(items, [(i, i) for i in range(600)])


class ClientLogTests(SynchronousTestCase):
    """What the dispatcher sends ends up in the client's debug log events: a
    lone surrogate there (valid JSON) must not make them unwritable (a text
    log file drops an event it cannot encode)."""

    def test_job_id_and_error_message_with_lone_surrogates(self) -> None:
        from tests.test_fuzz_servers import assert_log_writable, captured_log

        with captured_log() as events:
            client = Client(self)
            accepted = client.rpc.h1.echo(1)
            client.serve(b'{"harpcaller": 1, "job_id": "j\\ud800"}\n', [], "done")
            self.assertEqual(client.settled(accepted)[1].id(), "j\ud800")
            refused = client.rpc.h1.echo(1)
            client.serve(b'{"error": {"type": "t\\udfff", "message": "m\\ud800"}}\n', [], "done")
            self.assertEqual(client.settled(refused)[1], RemoteError("t\udfff", "m\ud800"))
            named = HarpCaller.from_endpoint(client.endpoint, reactor=client.clock, timeout=1,
                                             peer="dispatcher \udc80")
            silent = named.job("j").status()
            client.clock.advance(2)
            self.assertIsInstance(client.settled(silent)[1], HarpTimeout)
        self.assertEqual(len(events), 2)  # the job submitted, the request that timed out
        assert_log_writable(self, events)


def S_ascii(value: Any) -> str:
    return ascii(value)[:600]


# ------------------------------------------------------------------ harpd


class DaemonClient:
    def __init__(self, test: SynchronousTestCase, refuse: bool = False, timeout: Optional[float] = TIMEOUT) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint(refuse)
        self.server = HarpServer("db1", "alice", "s3cret", reactor=self.clock, endpoint=self.endpoint,
                                 timeout=timeout, max_line_length=MAX_LINE)


def daemon_bytes() -> st.SearchStrategy[Tuple[bytes, bool]]:
    """A harpd reply with damage; (bytes, whether the lines were made valid)."""
    @st.composite
    def build(draw: Any) -> bytes:
        lines = draw(S.daemon_reply_sequences())
        wire = [encode_variant(S.daemon_wire(line), draw(st.integers(0, 2))) for line in lines]
        damage = draw(st.sampled_from(["none", "none", "drop", "duplicate", "garble", "no end", "cut", "extra"]))
        if damage == "drop" and len(wire) > 1:
            del wire[draw(st.integers(0, len(wire) - 1))]
        elif damage == "duplicate":
            i = draw(st.integers(0, len(wire) - 1))
            wire.insert(i, wire[i])
        elif damage == "garble":
            i = draw(st.integers(0, len(wire) - 1))
            wire[i] = draw(S.mutated_lines(st.just(S.daemon_wire(lines[i]))))
        elif damage == "no end":
            wire = wire[:-1]
        elif damage == "extra":
            wire.append(draw(S.garbage_lines))
        payload = b"".join(line + b"\n" for line in wire)
        if damage == "cut" and payload:
            payload = payload[:draw(st.integers(0, len(payload) - 1))]
        return payload

    return st.one_of(build(), reply_bytes(st.one_of(st.builds(Acknowledgement, st.booleans()),
                                                    st.builds(StreamItem, S.json_values(4)),
                                                    S.outcomes), count=4))


class DaemonClientFuzzTests(SynchronousTestCase):
    """HarpServer against a harpd that answers anything."""

    def check(self, data: bytes, cuts: List[int], ending: str) -> None:
        client = DaemonClient(self)
        d = client.server.echo(1)
        protocol, _ = client.endpoint.connections[-1]
        deliver(protocol, data, cuts)
        close(protocol, ending)
        client.clock.advance(TIMEOUT + 1)
        self.assertEqual(client.clock.getDelayedCalls(), [])
        results: List[Any] = []
        d.addBoth(results.append)
        self.assertEqual(len(results), 1, "HarpServer's Deferred never fired")
        first = results[0]
        items: List[Any] = []
        error: Optional[BaseException] = None
        if isinstance(first, Failure):
            error = first.value
        elif hasattr(first, "each"):  # a streaming procedure: consume it
            ends: List[Any] = []
            first.each(items.append).addBoth(ends.append)
            self.assertEqual(len(ends), 1, "the stream never ended")
            if isinstance(ends[0], Failure):
                error = ends[0].value
        reader = DaemonReplyReader()
        try:
            replies = read_lines(data, reader.feed, lambda: reader.finished)
        except Ends as ends_:
            self.assertIsNotNone(error, S_ascii((data, first, items)))
            self.assertIsInstance(error, CommunicationError, S_ascii(data))
            valid = ends_.args[0]
            self.assertEqual(items, [r.data for r in valid if isinstance(r, StreamItem)])
            return
        final = replies[-1]
        streaming = isinstance(replies[0], Acknowledgement) and replies[0].stream_result
        if isinstance(final, ResultReply):
            if streaming:
                self.assertIsNone(error)
                self.assertEqual(items, [r.data for r in replies[1:-1]] + [Result(final.value)])
            else:
                self.assertEqual(first, final.value)
        else:
            self.assertEqual(error, final.exception())
            self.assertEqual(items, [r.data for r in replies[1:-1]])

    @S.ci_settings(250)
    @given(daemon_bytes(), cuts, endings)
    def test_any_reply(self, data: bytes, cuts: List[int], ending: str) -> None:
        self.check(data, cuts, ending)

    def test_valid_reply_split_at_every_byte(self) -> None:
        lines = [{"harp": 1, "stream_result": True}, {"stream": "zażółć"}, {"stream": {"\U0001f984": [1.5]}},
                 {"result": 10 ** 30}]
        data = b"".join(encode_variant(l, 1) + b"\n" for l in lines)
        for split in [[cut] for cut in range(len(data) + 1)] + [list(range(len(data)))]:
            self.check(data, split, "done")

    def test_silent_daemon_times_out(self) -> None:
        for data in [b"", b'{"harp": 1, "stream_result": false}\n', b'{"harp": 1, "stream_res']:
            client = DaemonClient(self)
            d = client.server.echo()
            protocol, transport = client.endpoint.connections[-1]
            protocol.dataReceived(data)
            client.clock.advance(TIMEOUT + 0.1)
            self.failureResultOf(d, HarpTimeout)
            self.assertTrue(transport.disconnected, "the connection was not aborted")


# ----------------------------------------------------------- disappearance


class DisappearanceTests(SynchronousTestCase):
    """The peer disappears with requests pending: every Deferred fails with
    CommunicationError (issue item 6)."""

    def test_dispatcher_gone_mid_request_and_mid_stream(self) -> None:
        for how in ["done", "lost"]:
            client = Client(self)
            rpc = client.rpc
            job = rpc.job(JOB)
            pending = [rpc.h1.echo(1), job.result(), job.get(wait=True), job.status(), job.cancel()]
            follow = job.follow(since=0)
            read = job.stream()
            collected: List[List[Any]] = [[], []]
            pending.append(follow.each(collected[0].append))
            pending.append(read.each(collected[1].append))
            self.assertEqual(len(client.endpoint.connections), 7)
            # The streams got two packets and half a line each before the dispatcher vanished.
            for protocol, _ in client.endpoint.connections[5:]:
                protocol.dataReceived(b'{"packet": 0, "data": 1}\n{"packet": 1, "data": 2}\n{"packet": 2, "da')
            for protocol, _ in client.endpoint.connections[:5]:
                protocol.dataReceived(b'{"result": ')  # half a reply
            for protocol, _ in client.endpoint.connections:
                close(protocol, how)
            for d in pending:
                self.assertIsInstance(client.settled(d)[1], CommunicationError)
            self.assertEqual(collected, [[1, 2], [1, 2]])
            self.assertEqual(client.clock.getDelayedCalls(), [])

    def test_dispatcher_refuses(self) -> None:
        client = Client(self)
        client.endpoint.refuse = True
        rpc, job = client.rpc, client.rpc.job(JOB)
        pending = [rpc.h1.echo(1), job.result(), job.get(), job.status(), job.cancel(),
                   job.follow().all(), job.stream().all()]
        for d in pending:
            self.assertIsInstance(client.settled(d)[1], CommunicationError)

    def test_harpd_gone_before_ack_after_ack_and_mid_stream(self) -> None:
        for how in ["done", "lost"]:
            client = DaemonClient(self, timeout=None)
            before, plain, streaming = client.server.echo(), client.server.echo(), client.server.stream()
            connections = client.endpoint.connections
            connections[1][0].dataReceived(b'{"harp": 1, "stream_result": false}\n')
            connections[2][0].dataReceived(b'{"harp": 1, "stream_result": true}\n{"stream": 1}\n{"stream": 2}\n')
            stream = self.successResultOf(streaming)
            items: List[Any] = []
            consumed = stream.each(items.append)
            for protocol, _ in connections:
                close(protocol, how)
            for d in [before, plain, consumed]:
                self.assertIsInstance(self.failureResultOf(d).value, CommunicationError)
            self.assertEqual(items, [1, 2])

    def test_harpd_refuses(self) -> None:
        client = DaemonClient(self, refuse=True)
        self.assertIsInstance(self.failureResultOf(client.server.echo()).value, CommunicationError)


class _Vanishing(Protocol):
    """Reads the request, sends ``lines``, then closes (``abort``: with a reset)."""

    def __init__(self, lines: bytes, abort: bool) -> None:
        self.lines = lines
        self.abort = abort

    def dataReceived(self, data: bytes) -> None:
        if b"\n" in data and self.transport is not None:
            self.transport.write(self.lines)
            if self.abort:
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()


class DisappearanceLoopbackTests(TestCase):
    """End-to-end over loopback: a dispatcher on 127.0.0.1 that closes or resets
    mid-request and mid-stream; every pending Deferred fails with CommunicationError."""

    timeout = 30

    async def run_case(self, lines: bytes, abort: bool) -> None:
        factory = Factory.forProtocol(lambda: _Vanishing(lines, abort))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        rpc = HarpCaller("127.0.0.1", port.getHost().port, reactor=reactor, timeout=10)
        job = rpc.job(JOB)
        pending = [rpc.h1.echo(1), job.result(wait=True), job.status(), job.cancel(),
                   job.follow(since=0).all(), job.stream().all()]
        for d in pending:
            try:
                await d
            except CommunicationError:
                continue
            self.fail(f"a request succeeded against a vanishing dispatcher ({lines!r})")

    def test_closes_mid_request(self) -> Deferred[None]:
        return ensureDeferred(self.run_case(b'{"resu', abort=False))

    def test_resets_mid_stream(self) -> Deferred[None]:
        return ensureDeferred(self.run_case(b'{"packet": 0, "data": 1}\n{"packet": 1, "da', abort=True))

    def test_closes_after_packets_without_end(self) -> Deferred[None]:
        return ensureDeferred(self.run_case(b'{"packet": 0, "data": 1}\n', abort=False))
