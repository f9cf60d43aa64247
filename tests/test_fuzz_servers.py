"""Bad input for both servers: harpd's protocol and harp-proxy's dispatcher protocol.

Random and damaged request lines (truncated JSON, wrong types in every
field, huge numbers, deep nesting, invalid UTF-8, NUL bytes, lines over the
size limit, no newline, a second request on one connection, idle
connections), delivered in random chunks.  Each connection must end with
the documented error line (checked against an oracle computed from the
input with the pure wire layer) or a close within a bounded time, and a
valid call right after must still work.

Most of it runs on :class:`StringTransport` with a :class:`Clock`; the
last classes repeat a sample over loopback against the real services.
"""
from __future__ import annotations

import json
import os
import types
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import strategies as S
from txharp.daemon.procedures import ProcedureRegistry, Result, procedure, streaming_procedure
from txharp.daemon.protocol import (
    AUTH_ERROR_MESSAGE,
    EXCESSIVE_DATA_MESSAGE,
    PARSE_ERROR_MESSAGE,
    HarpDaemonFactory,
)
from txharp.daemon.runner import Call, CallLimiter
from txharp.errors import MalformedMessage
from txharp.proxy.jobs import JobManager, Limits
from txharp.proxy.protocol import DispatcherFactory
from txharp.proxy.store import SQLiteJobStore
from txharp.wire import (
    CallRequest,
    QueueSpec,
    CancelRequest,
    DaemonRequest,
    FollowStreamRequest,
    GetResultRequest,
    GetStatusRequest,
    ReadStreamRequest,
    decode_line,
    parse_daemon_request,
    parse_request,
)
from txharp.wire.outcomes import ErrorReply, ResultReply

USER, PASSWORD = "alice", "s3cret"
MAX_LINE = 2000
IDLE = 30.0
EPOCH = 1_795_530_117


def good_daemon_request(procedure: str = "echo", arguments: Any = (1, "two")) -> bytes:
    return json.dumps(DaemonRequest(procedure, list(arguments), USER, PASSWORD).to_json()).encode() + b"\n"


def _registry() -> ProcedureRegistry:
    module = types.ModuleType("fuzz_procedures")

    def echo(*args: Any) -> Any:
        return list(args)

    def count(n: int) -> Any:
        yield from range(n)
        yield Result("done")

    module.echo = procedure(echo)  # type: ignore[attr-defined]
    module.stream_n = streaming_procedure(count)  # type: ignore[attr-defined]
    return ProcedureRegistry.from_module(module)


class Authenticator:
    def authenticate(self, user: str, password: str) -> "Deferred[bool]":
        return succeed((user, password) == (USER, PASSWORD))


def stream_count(arguments: Any) -> int:
    """How many packets the fake stream_n sends: its first argument modulo 7
    (any integer, 2**63 included, gives a small stream)."""
    n = arguments[0] if isinstance(arguments, list) and arguments else None
    if isinstance(n, bool) or not isinstance(n, int):
        return 0
    return n % 7


class InstantRunner:
    """Runs a call one clock tick later: echo returns its arguments, stream_n
    streams ``n`` integers then "done"."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started = 0
        self.cancelled = 0

    def run(self, call: Call, on_stream: Any, consumer: Any = None) -> "Deferred[Any]":
        self.started += 1
        pending: List[Any] = []

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1
            if pending and pending[0].active():
                pending[0].cancel()

        d: Deferred[Any] = Deferred(cancel)

        def finish() -> None:
            if call.spec.streaming:
                for i in range(stream_count(call.arguments)):
                    on_stream(i)
                d.callback(ResultReply("done"))
            else:
                d.callback(ResultReply(call.arguments))

        pending.append(self.clock.callLater(0.001, finish))
        return d

    def stop(self) -> "Deferred[None]":
        return succeed(None)


def daemon_oracle(data: bytes) -> Tuple[str, Any]:
    """What harpd answers to a connection that sends ``data`` at once and then waits.

    ("error", (type, message or None)), or ("ok", procedure result lines).
    """
    newline = data.find(b"\n")
    if newline < 0:
        if len(data) >= MAX_LINE + 1:
            return "error", ("invalid_request", f"line longer than {MAX_LINE} bytes")
        return "error", ("timeout", f"no request within {IDLE:g} seconds")
    line, rest = data[:newline], data[newline + 1:]
    if len(line) > MAX_LINE:
        return "error", ("invalid_request", f"line longer than {MAX_LINE} bytes")
    try:
        value = decode_line(line)
    except MalformedMessage:
        return "error", ("parse_error", PARSE_ERROR_MESSAGE)
    if rest:
        return "error", ("invalid_request", EXCESSIVE_DATA_MESSAGE)
    try:
        request = parse_daemon_request(value)
    except MalformedMessage as error:
        return "error", ("invalid_request", error.message)
    if (request.user, request.password) != (USER, PASSWORD):
        return "error", ("auth_error", AUTH_ERROR_MESSAGE)
    if request.procedure == "echo":
        return "ok", [{"harp": 1, "stream_result": False}, {"result": request.arguments}]
    if request.procedure == "stream_n":
        n = stream_count(request.arguments)
        return "ok", [{"harp": 1, "stream_result": True}] + [{"stream": i} for i in range(n)] + [{"result": "done"}]
    return "error", ("no_such_procedure", None)


def daemon_inputs() -> st.SearchStrategy[bytes]:
    """Whole inputs of one connection: valid, damaged, oversized, several lines, no newline."""
    valid = st.one_of(
        S.daemon_requests.map(lambda r: json.dumps(r.to_json(), ensure_ascii=True).encode()),
        st.builds(lambda args, proc: good_daemon_request(proc, args)[:-1],
                  st.lists(S.json_values(4), max_size=3), st.sampled_from(["echo", "stream_n", "nope"])),
        st.integers(0, 4).map(lambda n: good_daemon_request("stream_n", [n])[:-1]),
    )
    line = st.one_of(valid, S.mutated_lines(S.daemon_requests), S.mutated_values(S.daemon_requests)
                     .map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")), S.garbage_lines)
    oversized = st.integers(MAX_LINE - 2, MAX_LINE + 3).map(lambda n: b'{"harp": 1, "x": "' + b"a" * n + b'"}')
    return st.one_of(
        line.map(lambda l: l + b"\n"),
        line,  # no newline
        oversized.map(lambda l: l + b"\n"),
        oversized,
        st.tuples(line, line).map(lambda ls: ls[0] + b"\n" + ls[1] + b"\n"),  # a second request
        valid.map(lambda l: l + b"\n" + l + b"\n"),
        valid.map(lambda l: l + b"\n\n"),
        st.just(b""),  # idle
    )


@contextmanager
def captured_log() -> Iterator[List[Any]]:
    events: List[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def assert_log_writable(test: Any, events: List[Any]) -> None:
    """Every event can be written by a text log file (UTF-8, strict)."""
    for event in events:
        text = formatEvent(event)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            test.fail(f"log event cannot be written to a text log file: {ascii(text)}")


def flush_unwritable_log_events(test: Any) -> None:
    """Forget the errors of log observers that cannot write a lone surrogate.

    Both servers log client-chosen names (procedure, user, host); with a lone
    surrogate in one, a text log observer fails to write the event (see
    :class:`LogEventTests`, which checks that bug on its own).  The
    properties here are about the wire, so those observer errors are
    dropped.
    """
    test.flushLoggedErrors(UnicodeEncodeError)


def show(value: Any) -> str:
    """A failure message that any terminal can print (lone surrogates escaped)."""
    return ascii(value)[:600]


def chunked(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points + [len(data)]:
        if point > last:
            pieces.append(data[last:point])
        last = point
    return pieces


class DaemonProtocolFuzzTests(SynchronousTestCase):
    """harpd's protocol (on StringTransport + Clock) against hostile clients."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.runner = InstantRunner(self.clock)
        self.limiter = CallLimiter(2, 2)
        self.factory = HarpDaemonFactory(
            _registry(), Authenticator(), self.runner, self.limiter,
            clock=self.clock, idle_timeout=IDLE, max_line_length=MAX_LINE,
        )

    def converse(self, chunks: List[bytes], advance: float = IDLE + 1) -> Tuple[StringTransport, Any]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for chunk in chunks:
            if transport.disconnecting:
                break
            protocol.dataReceived(chunk)
        # Bounded time: the idle timeout and one tick for the call.
        for _ in range(3):
            self.clock.advance(advance / 3)
        return transport, protocol

    def close(self, transport: StringTransport, protocol: Any) -> None:
        protocol.connectionLost(Failure(ConnectionError("closed")))

    def check_conversation(self, data: bytes, cuts: List[int]) -> None:
        transport, protocol = self.converse(chunked(data, cuts))
        out = transport.value()
        self.assertTrue(out.endswith(b"\n"), show(out))
        replies = [json.loads(line) for line in out.splitlines()]
        self.assertTrue(transport.disconnecting, "the daemon did not close the connection")
        kind, expected = daemon_oracle(data)
        if kind == "ok":
            self.assertEqual(replies, expected)
        else:
            error_type, message = expected
            self.assertEqual(len(replies), 1, show(replies))
            self.assertEqual(set(replies[0]), {"harp", "error"})
            self.assertEqual(replies[0]["error"]["type"], error_type, show((data, replies)))
            if message is not None:
                self.assertEqual(replies[0]["error"]["message"], message)
        self.close(transport, protocol)
        flush_unwritable_log_events(self)
        # Nothing leaked: no slot held, no timer left behind.
        self.assertEqual(self.limiter.running, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.connections, set())

    @S.ci_settings(250)
    @given(daemon_inputs(), st.lists(st.integers(0, 10 ** 6), max_size=4))
    def test_any_input_gets_the_documented_answer(self, data: bytes, cuts: List[int]) -> None:
        self.check_conversation(data, cuts)
        # The daemon is still up: a valid call right after works.
        self.check_conversation(good_daemon_request(), [])

    def test_every_split_point_of_a_valid_request(self) -> None:
        request = good_daemon_request("echo", ["zażółć", "\U0001f984", 10 ** 30])
        for cut in range(len(request) + 1):
            self.check_conversation(request, [cut])
        self.check_conversation(request, list(range(len(request))))  # byte by byte

    def test_deep_nesting_and_huge_numbers(self) -> None:
        for line in [S.deep_nesting(5000), S.deep_nesting(990), S.deep_nesting(600, "{"), b"9" * 1999,
                     b'{"harp": 1, "procedure": "echo", "arguments": [' + b"9" * 1900 + b'], '
                     b'"auth": {"user": "alice", "password": "s3cret"}}']:
            self.check_conversation(line + b"\n", [])

    def test_invalid_utf8_and_nul(self) -> None:
        good = good_daemon_request()
        for damaged in [good.replace(b"echo", b"ec\xffho"), good.replace(b"echo", b"ec\x00ho"),
                        good.replace(b"alice", b"al\xed\xa0\x80ice"), b"\x00\n", b"\xff\xfe{}\n"]:
            self.check_conversation(damaged, [])

    def test_client_gone_in_every_state(self) -> None:
        """Disconnecting before the request, mid-line, while queued, while running:
        the call is cancelled and the slot freed."""
        for sent, ticks in [(b"", 0), (b'{"harp": 1', 0), (good_daemon_request(), 0),
                            (good_daemon_request("stream_n", [3]), 0)]:
            protocol = self.factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(sent)
            self.clock.advance(ticks)
            protocol.connectionLost(Failure(ConnectionError("gone")))
            self.clock.advance(IDLE * 2)
            self.assertEqual(self.limiter.running, 0)
            self.assertEqual(self.clock.getDelayedCalls(), [])
        self.check_conversation(good_daemon_request(), [])

    def test_client_that_never_reads_is_dropped(self) -> None:
        transport, protocol = self.converse([good_daemon_request()], advance=0.01)
        self.assertTrue(transport.disconnecting)
        # StringTransport never finishes closing: the daemon aborts after idle_timeout.
        self.clock.advance(IDLE + 1)
        self.assertTrue(transport.disconnected or getattr(transport, "aborting", False) or
                        transport.disconnecting)
        self.close(transport, protocol)


    def test_empty_read_is_not_data(self) -> None:
        """``dataReceived(b"")`` right after the request is no "excessive data"
        (fixed in txharp/daemon/protocol.py)."""
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(good_daemon_request())
        protocol.dataReceived(b"")
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual([json.loads(l) for l in transport.value().splitlines()],
                         [{"harp": 1, "stream_result": False}, {"result": [1, "two"]}])
        protocol.connectionLost(Failure(ConnectionError("closed")))

    def test_log_events_with_lone_surrogates(self) -> None:
        """A client's procedure or user name with a lone surrogate ("\\ud800" is
        valid JSON) must not make the connection's log event unwritable: a
        text log observer (twistd's log file, stdout) drops such an event."""
        with captured_log() as events:
            for procedure, user in [("\ud800", USER), ("echo", "\udc80x")]:
                line = json.dumps(DaemonRequest(procedure, [], user, PASSWORD).to_json()).encode() + b"\n"
                self.converse([line])
        flush_unwritable_log_events(self)
        self.assertTrue(events)
        assert_log_writable(self, events)


# ------------------------------------------------------------- harp-proxy


class FinishingRelay:
    """Ends every job at once with its arguments as the result."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, job: Any) -> Any:
        self.runs += 1
        job.finish(ResultReply(job.call.arguments))
        return self

    def release(self) -> None:
        pass

    def stop(self) -> None:
        pass


def proxy_oracle(data: bytes, max_line: int) -> Optional[Any]:
    """The one reply line harp-proxy sends for ``data`` naming unknown jobs, or
    None for a valid call (answered with a job ID)."""
    newline = data.find(b"\n")
    if newline < 0:
        if len(data) >= max_line + 1:
            return ErrorReply("invalid_request", f"line longer than {max_line} bytes").to_json()
        return "timeout"
    line = data[:newline]
    if len(line) > max_line:
        return ErrorReply("invalid_request", f"line longer than {max_line} bytes").to_json()
    try:
        request = parse_request(decode_line(line))
    except MalformedMessage as error:
        return ErrorReply("invalid_request", error.message).to_json()
    if isinstance(request, CallRequest):
        return None
    if isinstance(request, CancelRequest):
        return {"cancelled": False}
    return {"error": {"type": "invalid_jobid", "message": "no job with this ID"}}


def proxy_inputs() -> st.SearchStrategy[bytes]:
    line = st.one_of(
        S.requests.map(lambda r: json.dumps(r.to_json(), ensure_ascii=True).encode()),
        S.requests.map(lambda r: json.dumps(r.to_json(), ensure_ascii=False).encode("utf-8", "surrogatepass")),
        S.mutated_lines(S.requests),
        S.mutated_values(S.requests).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
        S.garbage_lines,
    )
    oversized = st.integers(MAX_LINE - 2, MAX_LINE + 3).map(
        lambda n: b'{"harpcaller": 1, "get_status": "' + b"a" * n + b'"}')
    return st.one_of(
        line.map(lambda l: l + b"\n"),
        line,
        oversized.map(lambda l: l + b"\n"),
        oversized,
        st.tuples(line, line).map(lambda ls: ls[0] + b"\n" + ls[1] + b"\n"),
        st.just(b""),
    )


class ProxyProtocolFuzzTests(SynchronousTestCase):
    """harp-proxy's dispatcher protocol (StringTransport + Clock, in-memory store)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.store = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(self.store.open())
        self.addCleanup(self.store.close)
        self.relay = FinishingRelay()
        self.manager = JobManager(self.store, self.relay, self.clock, Limits(60, 60))
        self.factory = DispatcherFactory(self.manager, self.clock, request_timeout=IDLE,
                                         max_line_length=MAX_LINE)

    def converse(self, chunks: List[bytes]) -> Tuple[StringTransport, Any]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.clock.advance(IDLE + 1)
        return transport, protocol

    def exchange(self, data: bytes, cuts: List[int] = []) -> List[Any]:
        transport, protocol = self.converse(chunked(data, cuts))
        out = transport.value()
        self.assertTrue(transport.disconnecting, show((data, out)))
        self.assertTrue(out.endswith(b"\n"), show(out))
        protocol.connectionLost(Failure(ConnectionError("closed")))
        flush_unwritable_log_events(self)
        return [json.loads(line) for line in out.splitlines()]

    def check(self, data: bytes, cuts: List[int]) -> None:
        expected = proxy_oracle(data, MAX_LINE)
        replies = self.exchange(data, cuts)
        if expected == "timeout":
            self.assertEqual(replies, [ErrorReply("invalid_request", f"no request within {IDLE:g} s").to_json()])
        elif expected is None:
            [reply] = replies
            self.assertEqual(set(reply), {"harpcaller", "job_id"}, show((data, reply)))
            request = parse_request(decode_line(data[:data.index(b"\n")]))
            # The job ran (the relay ends it at once) and answers like any other.
            [result] = self.exchange(json.dumps(GetResultRequest(reply["job_id"]).to_json()).encode() + b"\n")
            self.assertTrue(S.same_json(result, {"result": request.arguments}), show((result, request)))
            [status] = self.exchange(json.dumps(GetStatusRequest(reply["job_id"]).to_json()).encode() + b"\n")
            self.assertEqual(status["call"]["host"], request.host)
            self.assertTrue(S.same_json(status["info"], request.info))
        else:
            self.assertEqual(replies, [expected], show(data))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def check_still_serving(self) -> None:
        [reply] = self.exchange(json.dumps(CallRequest("h1", "echo", [1, "x"]).to_json()).encode() + b"\n")
        job_id = reply["job_id"]
        self.assertEqual(self.exchange(json.dumps(GetResultRequest(job_id).to_json()).encode() + b"\n"),
                         [{"result": [1, "x"]}])
        for request in [ReadStreamRequest(job_id), FollowStreamRequest(job_id, since=0)]:
            self.assertEqual(self.exchange(json.dumps(request.to_json()).encode() + b"\n"),
                             [{"result": [1, "x"]}])

    @S.ci_settings(250)
    @given(proxy_inputs(), st.lists(st.integers(0, 10 ** 6), max_size=4))
    def test_any_input_gets_the_documented_answer(self, data: bytes, cuts: List[int]) -> None:
        self.check(data, cuts)
        self.check_still_serving()

    def test_every_split_point_of_a_valid_request(self) -> None:
        line = json.dumps(CallRequest("h1", "echo", ["zażółć"], queue=None, info={"ü": 1}).to_json(),
                          ensure_ascii=False).encode() + b"\n"
        for cut in range(len(line) + 1):
            self.check(line, [cut])
        self.check(line, list(range(len(line))))

    def test_job_ids_sqlite_cannot_bind(self) -> None:
        """Job IDs with lone surrogates or NUL are valid JSON strings: they name
        no job (``invalid_jobid``), not a job store failure."""
        for job_id in ["\ud800", "a\udfffb", "\x00", "a\x00b", "\U0001f984" * 50]:
            for request in [GetResultRequest(job_id), GetStatusRequest(job_id), ReadStreamRequest(job_id),
                            FollowStreamRequest(job_id), GetResultRequest(job_id, False)]:
                line = json.dumps(request.to_json()).encode() + b"\n"
                self.assertEqual(self.exchange(line), [proxy_oracle(line, MAX_LINE)], show(job_id))
            self.assertEqual(self.exchange(json.dumps(CancelRequest(job_id).to_json()).encode() + b"\n"),
                             [{"cancelled": False}])

    def test_calls_with_text_sqlite_cannot_bind(self) -> None:
        """A call whose host, procedure or JSON holds a lone surrogate is a valid
        call: it is accepted and recorded, and answers like any other."""
        for call in [CallRequest("\ud800", "echo", []), CallRequest("h1", "e\udc80", ["\ud800"]),
                     CallRequest("h1", "echo", {"\ud800": 1}, info="\udfff"),
                     CallRequest("h\x00", "echo", [], queue=None)]:
            self.check(json.dumps(call.to_json()).encode() + b"\n", [])

    def test_log_events_with_lone_surrogates(self) -> None:
        """Job log events name the client's host and procedure: they must stay
        writable by a text log file whatever JSON string those are."""
        with captured_log() as events:
            self.check(json.dumps(CallRequest("\ud800", "p\udfff", []).to_json()).encode() + b"\n", [])
        self.assertTrue(events)
        assert_log_writable(self, events)

    def test_deep_nesting_and_huge_numbers(self) -> None:
        for line in [S.deep_nesting(5000), S.deep_nesting(990), S.deep_nesting(700, "{"),
                     b'{"harpcaller": 1, "read_stream": "j", "since": ' + b"9" * 1500 + b"}",
                     b'{"harpcaller": 1, "follow_stream": "j", "recent": 1e999}',
                     b'{"harpcaller": 1, "host": "h", "procedure": "p", "arguments": [], "timeout": '
                     + b"9" * 400 + b"}"]:
            self.check(line + b"\n", [])
        self.check_still_serving()


class KeepRunningRelay:
    """Leaves every job running: the test streams and ends it by hand."""

    def __init__(self) -> None:
        self.jobs: List[Any] = []

    def run(self, job: Any) -> Any:
        self.jobs.append(job)
        return self

    def release(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ProxyStreamFuzzTests(SynchronousTestCase):
    """follow_stream and read_stream of real jobs with any ``since``/``recent``,
    a follower whose connection pauses at random moments, a job cache so small
    that readers fall back to the store, jobs running, ended, or ended and
    forgotten (served from the store)."""

    def harness(self) -> Tuple[JobManager, KeepRunningRelay, DispatcherFactory, Clock]:
        clock = Clock()
        clock.advance(EPOCH)
        store = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(store.open())
        self.addCleanup(store.close)
        relay = KeepRunningRelay()
        manager = JobManager(store, relay, clock, Limits(60, 60), cache_packets=3, cache_bytes=200)
        return manager, relay, DispatcherFactory(manager, clock, request_timeout=IDLE), clock

    @S.ci_settings(200)
    @given(before=st.integers(0, 40), after=st.integers(0, 40),
           position=st.one_of(st.none(), st.tuples(st.sampled_from(["since", "recent"]),
                                                   st.one_of(st.integers(0, 50), st.sampled_from([2 ** 63, 10 ** 30])))),
           follow=st.booleans(), end=st.sampled_from(["running", "ended"]),
           pauses=st.lists(st.integers(0, 100), max_size=6), outcome=S.outcomes)
    def test_stream_replies(self, before: int, after: int, position: Any, follow: bool, end: str,
                            pauses: List[int], outcome: Any) -> None:
        manager, relay, factory, clock = self.harness()
        accepted = self.successResultOf(manager.submit(CallRequest("h", "p", [])))
        [job] = relay.jobs
        data = [{"n": n, "pad": "x" * (n % 7) * 10} for n in range(before + after)]
        for item in data[:before]:
            job.stream(item)
        if end != "running":
            job.finish(outcome)
            after = 0
        request: Any = (FollowStreamRequest if follow else ReadStreamRequest)(
            accepted.job_id, **({position[0]: position[1]} if position else {}))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(json.dumps(request.to_json()).encode() + b"\n")
        pauses = sorted(pauses)
        for n in range(before, before + after):
            if pauses and pauses[0] <= n and transport.producer is not None:
                pauses.pop(0)
                transport.producer.pauseProducing()
            job.stream(data[n])
            if transport.producer is not None and n % 3 == 0:
                transport.producer.resumeProducing()
        if end == "running":
            job.finish(outcome)
        if transport.producer is not None:  # the client reads again
            transport.producer.resumeProducing()
        available = before + after if (follow or end != "running") else before
        if request.since is not None:
            cursor = request.since
        elif request.recent is not None or follow:
            cursor = max(0, before - (request.recent or 0))
        else:
            cursor = 0
        if end == "running" and not follow:
            last: Any = {"continue": True}
        else:
            last = outcome.to_json()
        expected = [{"packet": n, "data": data[n]} for n in range(cursor, available)] if cursor < available else []
        got = [json.loads(line) for line in transport.value().splitlines()]
        self.assertEqual(got, expected + [last], show((request, before, after, end)))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionError("closed")))


SECRET = "pa55-\u00e9-SECRET"


def host_lines() -> st.SearchStrategy[bytes]:
    good = st.builds(
        lambda name, port: json.dumps({"hostname": name, "address": "127.0.0.1", "port": port,
                                       "credentials": {"user": "u", "password": SECRET}}).encode(),
        S.texts, st.one_of(st.integers(1, 65535), st.integers(), st.sampled_from([0, 65536, True, 4306.0])))
    damaged = S.mutated_lines(good.map(json.loads)).map(lambda l: l)
    reshaped = S.mutated_values(good.map(json.loads)).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))
    return st.lists(st.one_of(good, damaged, reshaped, S.garbage_lines, st.just(b"   ")), max_size=8).map(
        lambda lines: b"\n".join(line.replace(b"\n", b" ") for line in lines))


class HostsRegistryFuzzTests(SynchronousTestCase):
    """The hosts registry parser (``--hosts`` file, ``--hosts-script`` output)."""

    @S.ci_settings(200)
    @given(host_lines())
    def test_any_registry(self, data: bytes) -> None:
        from txharp.proxy.hosts import parse_hosts

        entries, errors = parse_hosts(data)
        lines = data.split(b"\n")
        blank = sum(1 for line in lines if not line.strip())
        self.assertLessEqual(len(entries), len(lines) - blank)
        self.assertEqual(len({e.line for e in errors}), len(errors))
        good_lines = len(lines) - blank - len(errors)
        self.assertGreaterEqual(good_lines, len(entries))  # a later line may replace an earlier one
        for entry in entries:
            self.assertTrue(entry.hostname and 0 < entry.port < 65536 and not isinstance(entry.port, bool))
            self.assertNotIn(SECRET, repr(entry))
        for error in errors:
            self.assertNotIn(SECRET, str(error))
            self.assertNotIn(SECRET.encode("utf-8").decode("latin-1"), str(error))


class _Hosts:
    def entries(self) -> List[Any]:
        return []

    def refresh(self) -> "Deferred[bool]":
        return succeed(True)


def admin_requests() -> st.SearchStrategy[Any]:
    commands = st.sampled_from(["list", "info", "cancel", "queue-list", "queue-cancel", "hosts-list",
                                "hosts-refresh", "prune-jobs", "bogus"])
    argument = st.one_of(S.json_values(4), st.sampled_from([10 ** 30, 2 ** 63, -1, 1e308, 1e300, 0.5, True]))
    keys = st.sampled_from(["all", "queues", "limit", "job_id", "name", "age_days", "command"])
    return st.builds(lambda command, extra: {"command": command, **extra}, commands,
                     st.dictionaries(keys, argument, max_size=3))


class AdminFuzzTests(SynchronousTestCase):
    """harp-proxy's admin socket protocol: every request gets one documented
    reply line; an internal failure (``os_error`` with a healthy store, or a
    logged traceback) is a bug."""

    def setUp(self) -> None:
        from txharp.proxy.admin import AdminFactory, AdminOperations

        clock = Clock()
        clock.advance(EPOCH)
        store = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(store.open())
        self.addCleanup(store.close)
        self.relay = KeepRunningRelay()
        manager = JobManager(store, self.relay, clock, Limits(60, 60))
        for n in range(3):
            self.successResultOf(manager.submit(CallRequest("h", "p", [n], queue=None if n else
                                                            QueueSpec({"q": 1}, 1))))
        proxy = types.SimpleNamespace(manager=manager, hosts=_Hosts(), config=types.SimpleNamespace(max_age=3600.0))
        self.factory = AdminFactory(AdminOperations(proxy))  # type: ignore[arg-type]

    def ask(self, data: bytes) -> List[Any]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        out = [json.loads(line) for line in transport.value().splitlines()]
        protocol.connectionLost(Failure(ConnectionError("closed")))
        return out

    def check(self, line: bytes) -> None:
        [reply] = self.ask(line + b"\n")
        self.assertTrue(set(reply) in ({"result"}, {"error"}), reply)
        logged = self.flushLoggedErrors()
        self.assertEqual(logged, [], show(line))
        if "error" in reply:
            self.assertIn(reply["error"]["type"], {"invalid_request", "invalid_jobid", "unknown_queue"},
                          show((line, reply)))

    @S.ci_settings(200)
    @given(st.one_of(admin_requests().map(lambda r: json.dumps(r).encode("utf-8", "surrogatepass")),
                     S.mutated_lines(admin_requests()), S.garbage_lines))
    def test_any_request(self, line: bytes) -> None:
        self.check(line)

    def test_out_of_range_numbers(self) -> None:
        """Numbers beyond SQLite's 64-bit integers are clamped by the store."""
        for request in [{"command": "list", "all": True, "limit": 10 ** 30},
                        {"command": "list", "all": True, "limit": 2 ** 63},
                        {"command": "prune-jobs", "age_days": 1e300},
                        {"command": "prune-jobs", "age_days": 10 ** 40}]:
            self.check(json.dumps(request).encode())

    def test_infinite_age(self) -> None:
        """age_days 1e308 is finite JSON but infinite once in seconds (fixed in
        txharp/proxy/admin.py): invalid_request, not a traceback and os_error."""
        for days in ["1e308", "1" + "0" * 400]:
            [reply] = self.ask(b'{"command": "prune-jobs", "age_days": ' + days.encode() + b"}\n")
            self.assertEqual(reply, {"error": {"type": "invalid_request", "message": "age_days is out of range"}})
        self.assertEqual(self.flushLoggedErrors(), [])


class StoreFuzzTests(SynchronousTestCase):
    """The job store with any IDs (lone surrogates, NUL...) and numbers (beyond
    64 bits): every call answers."""

    @S.ci_settings(150)
    @given(S.job_ids, st.one_of(st.integers(), S.big_ints), st.one_of(st.none(), st.integers(), S.big_ints),
           st.one_of(st.integers(), S.big_ints))
    def test_extreme_arguments(self, job_id: str, since: int, limit: Optional[int], older_than: int) -> None:
        from txharp.proxy.store import JobRecord

        store = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(store.open())
        try:
            self.successResultOf(store.create_job(JobRecord.from_call(job_id, CallRequest(job_id, job_id, [job_id]), 5)))
            self.successResultOf(store.append_packet(job_id, 0, {"p": job_id}))
            record = self.successResultOf(store.get_job(job_id))
            self.assertEqual((record.job_id, record.host, record.procedure, record.arguments),
                             (job_id, job_id, job_id, [job_id]))
            packets = self.successResultOf(store.read_packets(job_id, since, limit))
            expected = [(0, {"p": job_id})] if since <= 0 and (limit is None or limit < 0 or limit > 0) else []
            self.assertEqual(packets, expected)
            self.assertEqual(len(self.successResultOf(store.list_jobs(None, limit))),
                             0 if limit == 0 else 1)
            self.assertIn(self.successResultOf(store.prune(older_than)), (0, 1))
        finally:
            store.close()


# ----------------------------------------------------------- over loopback


class _Raw(Protocol):
    def __init__(self, data: bytes, close_after: bool) -> None:
        self.data = data
        self.close_after = close_after
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.received)


LOOPBACK_SAMPLE = [
    b"not json\n",
    b'{"harp": 1, "procedure": "echo"}\n',
    S.deep_nesting(5000) + b"\n",
    b"9" * 5000 + b"\n",
    b'{"harp": 1, "procedure": "ec\xffho"}\n',
    b"\x00\n",
    b"x" * 70000,  # over the limit, no newline
]


class DaemonLoopbackFuzzTests(TestCase):
    """End-to-end over loopback: the real harpd service (TLS, child processes)
    gets a sample of hostile requests, then serves a valid call."""

    timeout = 60

    def setUp(self) -> None:
        from txharp.daemon.service import DaemonSettings, HarpDaemonService, load_daemon
        from txharp.testing.certs import TestPKI

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pki = TestPKI(directory)
        config = os.path.join(directory, "harpd.yaml")
        with open(config, "w") as f:
            f.write("network:\n  address: 127.0.0.1\n  port: 0\n"
                    f"  certfile: {pki.chain_file}\n  keyfile: {pki.key_file}\n"
                    f"authentication:\n  module: inconfig\n  users: {{{USER}: 'plain:{PASSWORD}'}}\n")
        procedures = os.path.join(directory, "procedures.py")
        with open(procedures, "w") as f:
            f.write("from harpd.proc import procedure\n\n@procedure\ndef echo(*args):\n    return list(args)\n")
        settings = DaemonSettings(max_line_length=65536, idle_timeout=1.0, kill_grace=0.5)
        self.service = HarpDaemonService(load_daemon(config, procedures, settings), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        assert self.service.port is not None
        self.daemon_port = self.service.port.getHost().port
        self.ca_file = pki.ca_file

    async def send(self, data: bytes) -> List[Any]:
        from txharp.tls import ClientTLSPolicy

        creator = ClientTLSPolicy(ca_file=self.ca_file).creator_for("127.0.0.1")
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", self.daemon_port))
        protocol = await connectProtocol(endpoint, _Raw(data, False))
        received = await protocol.done.addTimeout(15, reactor)
        return [json.loads(line) for line in received.splitlines()]

    def test_hostile_requests_then_a_valid_call(self) -> Deferred[None]:
        async def run() -> None:
            for data in LOOPBACK_SAMPLE + [b'{"harp": 1', b""]:
                replies = await self.send(data)
                self.assertEqual(len(replies), 1, (data[:50], replies))
                expected_type = {b'{"harp": 1': "timeout", b"": "timeout"}.get(data)
                if data.startswith(b"x" * 100):
                    expected_type = "invalid_request"
                elif expected_type is None:
                    expected_type = daemon_oracle_loopback(data)
                self.assertEqual(replies[0]["error"]["type"], expected_type, data[:50])
            replies = await self.send(good_daemon_request("echo", [1, "\U0001f984"]))
            self.assertEqual(replies, [{"harp": 1, "stream_result": False}, {"result": [1, "\U0001f984"]}])

        return ensureDeferred(run())


def daemon_oracle_loopback(data: bytes) -> str:
    line = data.split(b"\n", 1)[0]
    try:
        value = decode_line(line)
    except MalformedMessage:
        return "parse_error"
    try:
        parse_daemon_request(value)
    except MalformedMessage:
        return "invalid_request"
    return "ok"


class ProxyLoopbackFuzzTests(TestCase):
    """End-to-end over loopback: harp-proxy built in-process on 127.0.0.1
    gets hostile requests, stays up, and serves a valid call."""

    timeout = 60

    def setUp(self) -> "Deferred[None]":
        from txharp.proxy.service import ProxyConfig, ProxyService

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        hosts = os.path.join(directory, "hosts.json")
        with open(hosts, "w") as f:
            f.write(json.dumps({"hostname": "h1", "address": "127.0.0.1", "port": 9,
                                "credentials": {"user": USER, "password": PASSWORD}}) + "\n")
        self.proxy = ProxyService(ProxyConfig(listen=["tcp:0:interface=127.0.0.1"], hosts_file=hosts,
                                              data_dir=os.path.join(directory, "data")), reactor)
        self.proxy.startService()
        assert self.proxy.ready is not None
        return self.proxy.ready

    def tearDown(self) -> "Deferred[None]":
        return self.proxy.stopService()

    async def send(self, data: bytes) -> List[Any]:
        port = self.proxy.ports[0].getHost().port
        protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Raw(data, False))
        received = await protocol.done.addTimeout(15, reactor)
        return [json.loads(line) for line in received.splitlines()]

    def test_hostile_requests_then_a_valid_call(self) -> Deferred[None]:
        async def run() -> None:
            for data in LOOPBACK_SAMPLE + [b'{"harpcaller": 1, "get_status": "\\ud800"}\n',
                                           b'{"harpcaller": 1, "cancel": "x"}\n{"harpcaller": 1}\n']:
                expected = proxy_oracle(data, 4 * 1024 * 1024)
                if data.startswith(b"x" * 100):
                    continue  # under the 4 MiB limit: waits for the request timeout (60 s)
                self.assertEqual(await self.send(data), [expected], data[:50])
            [accepted] = await self.send(json.dumps(CallRequest("nohost", "echo", [1]).to_json()).encode() + b"\n")
            line = json.dumps(GetResultRequest(accepted["job_id"], True).to_json()).encode() + b"\n"
            self.assertEqual(await self.send(line),
                             [{"error": {"type": "unknown_host", "message": "host unknown", "data": {"host": "nohost"}}}])

        return ensureDeferred(run())
