"""Server-side tests of harp-proxy's dispatcher protocol and job state machine.

Everything runs on :class:`StringTransport` with a :class:`Clock`, an
in-memory job store and a fake relay whose calls the tests end by hand, so
every interleaving (a waiter arriving while the end is being recorded, a
follower paused by its transport...) is reproduced exactly.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests import vectors_proxy as V
from txharp.proxy.jobs import PENDING_HIGH, PENDING_LOW, Job, JobManager, Limits, Phase
from txharp.proxy.protocol import DispatcherFactory, DispatcherProtocol
from txharp.proxy.store import JobState, SQLiteJobStore, StoreError
from txharp.wire.dispatcher import CallRequest
from txharp.wire.outcomes import ErrorReply, ExceptionReply, ResultReply

EPOCH = 1_795_530_117


def job_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


class FakeCall:
    """The relay's handle of one job, driven by the test."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.stopped = False
        self.paused = False
        self.released = False

    def release(self) -> None:
        self.released = True

    def stop(self) -> None:
        self.stopped = True

    def pauseReading(self) -> None:
        self.paused = True

    def resumeReading(self) -> None:
        self.paused = False


class FakeRelay:
    """Records every job it is asked to run; ends them only when told."""

    def __init__(self) -> None:
        self.calls: Dict[str, FakeCall] = {}
        self.order: List[str] = []
        self.on_run: Optional[Any] = None

    def run(self, job: Job) -> FakeCall:
        call = FakeCall(job)
        self.calls[job.job_id] = call
        self.order.append(job.job_id)
        if self.on_run is not None:
            self.on_run(job)
        return call


class HeldStore:
    """Wraps a store so that each write's Deferred fires only when released.

    The write itself happens at once (reads see it), but whoever waits for
    its "commit" waits until :meth:`release`: that is how the tests check
    that nothing is reported before its write has committed.
    """

    def __init__(self, inner: SQLiteJobStore) -> None:
        self.inner = inner
        self.held: List[Tuple[str, Deferred[Any], Deferred[Any]]] = []
        self.holding = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _hold(self, name: str, done: "Deferred[Any]") -> "Deferred[Any]":
        if not self.holding:
            return done
        out: Deferred[Any] = Deferred()
        self.held.append((name, done, out))
        return out

    def create_job(self, record: Any) -> "Deferred[Any]":
        return self._hold("create_job", self.inner.create_job(record))

    def mark_started(self, *args: Any) -> "Deferred[Any]":
        return self._hold("mark_started", self.inner.mark_started(*args))

    def append_packet(self, *args: Any) -> "Deferred[Any]":
        return self._hold("append_packet", self.inner.append_packet(*args))

    def end_job(self, *args: Any) -> "Deferred[Any]":
        return self._hold("end_job", self.inner.end_job(*args))

    def pending(self) -> List[str]:
        return [name for name, _, _ in self.held]

    def release(self, count: Optional[int] = None) -> None:
        """Let the first ``count`` held writes (all by default) commit, in order."""
        count = len(self.held) if count is None else count
        batch, self.held = self.held[:count], self.held[count:]
        for _, done, out in batch:
            done.addBoth(out.callback)


class Connection:
    """One client connection to the protocol under test."""

    def __init__(self, protocol: DispatcherProtocol) -> None:
        self.protocol = protocol
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> "Connection":
        self.protocol.dataReceived(data)
        return self

    def output(self) -> bytes:
        return self.transport.value()

    def lines(self) -> List[Any]:
        return [json.loads(line) for line in self.output().splitlines()]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected

    def drop(self) -> None:
        """The client goes away."""
        self.transport.disconnected = True
        self.protocol.connectionLost(Failure(ConnectionError("client gone")))


class ProxyHarness:
    """A job manager on an in-memory store with a fake relay and a clock."""

    def __init__(self, test: SynchronousTestCase, limits: Limits = Limits(), **manager_options: Any) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.sqlite = SQLiteJobStore(":memory:", threaded=False)
        test.successResultOf(self.sqlite.open())
        test.addCleanup(self.sqlite.close)
        self.store = HeldStore(self.sqlite)
        self.relay = FakeRelay()
        counter = iter(range(1, 10_000))
        self.manager = JobManager(
            self.store, self.relay, self.clock, limits,
            new_id=lambda: job_id(next(counter)), **manager_options,
        )
        self.factory = DispatcherFactory(self.manager, self.clock, request_timeout=30)
        self.test = test

    def connect(self) -> Connection:
        return Connection(self.factory.buildProtocol(None))

    def request(self, line: bytes, job: Optional[str] = None) -> Connection:
        if job is not None:
            line = line.replace(b'"J"', json.dumps(job).encode())
        return self.connect().send(line)

    def call(self, host: str = "h1", procedure: str = "echo", arguments: Any = (1,), **options: Any) -> str:
        body = {"harpcaller": 1, "host": host, "procedure": procedure,
                "arguments": list(arguments) if isinstance(arguments, tuple) else arguments}
        body.update(options)
        connection = self.request(json.dumps(body).encode() + b"\n")
        [reply] = connection.lines()
        self.test.assertTrue(connection.closed)
        return reply["job_id"]

    def job(self, job: str) -> Job:
        found = self.manager.get(job)
        assert found is not None, f"{job} is not live"
        return found

    def result(self, job: str, wait: bool = False) -> bytes:
        line = V.CLIENT_GET_WAIT if wait else V.CLIENT_GET_NOWAIT
        return self.request(line, job).output()

    def status(self, job: str) -> Dict[str, Any]:
        [reply] = self.request(V.CLIENT_STATUS, job).lines()
        return reply


class RequestTests(SynchronousTestCase):
    """Each of the six requests, as the original client library sends them."""

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self)

    def test_call_acknowledged_with_job_id(self) -> None:
        connection = self.proxy.request(V.CLIENT_CALL_POSITIONAL)
        self.assertEqual(connection.output(), b'{"harpcaller":1,"job_id":"%s"}\n' % job_id(1).encode())
        self.assertTrue(connection.transport.disconnecting)
        job = self.proxy.job(job_id(1))
        self.assertEqual(job.phase, Phase.RUNNING)
        self.assertEqual((job.call.host, job.call.procedure, job.call.arguments), ("h1", "echo", [1, 2]))

    def test_job_ids_are_random_uuids(self) -> None:
        manager = JobManager(self.proxy.store, self.proxy.relay, self.proxy.clock)
        ids = set()
        for _ in range(3):
            reply = self.successResultOf(manager.submit(CallRequest("h1", "echo", [])))
            ids.add(reply.job_id)
        self.assertEqual(len(ids), 3)
        for value in ids:
            self.assertRegex(value, r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

    def test_named_arguments(self) -> None:
        job = self.proxy.call(arguments={"a": 1, "b": 2})
        self.assertEqual(self.proxy.job(job).call.arguments, {"a": 1, "b": 2})

    def test_awkward_json_accepted(self) -> None:
        for line in V.AWKWARD_ARGUMENTS:
            connection = self.proxy.request(line)
            self.assertIn("job_id", connection.lines()[0])
        self.assertEqual(self.proxy.job(job_id(3)).call.arguments, ["\U0001F600"])

    def test_get_result_of_each_outcome(self) -> None:
        cases = [
            (ResultReply([1, {"k": None}]), b'{"result":[1,{"k":null}]}\n'),
            (ExceptionReply("TestFailure", "intentional failure",
                            {"class": "TestFailure", "module": "harpd.__procedures__"}),
             V.RELAYED_EXCEPTION),
            (ErrorReply("no_such_procedure", "no such procedure", {"procedure": "nope"}),
             V.RELAYED_NO_SUCH_PROCEDURE),
            (ErrorReply("auth_error", "unknown user or wrong password"), V.RELAYED_AUTH_ERROR),
        ]
        for outcome, line in cases:
            job = self.proxy.call()
            self.proxy.relay.calls[job].job.finish(outcome)
            self.assertEqual(self.proxy.result(job, wait=False), line)
            self.assertEqual(self.proxy.result(job, wait=True), line)

    def test_get_result_no_wait_while_running(self) -> None:
        job = self.proxy.call()
        connection = self.proxy.request(V.CLIENT_GET_NOWAIT, job)
        self.assertEqual(connection.output(), V.NO_RESULT)
        self.assertTrue(connection.closed)

    def test_get_result_wait_blocks_until_end(self) -> None:
        job = self.proxy.call()
        connection = self.proxy.request(V.CLIENT_GET_WAIT, job)
        self.assertEqual(connection.output(), b"")
        self.assertFalse(connection.closed)
        self.proxy.relay.calls[job].job.finish(ResultReply(True))
        self.assertEqual(connection.output(), b'{"result":true}\n')
        self.assertTrue(connection.closed)

    def test_get_result_without_wait_field_waits(self) -> None:
        """The published contract: a missing ``wait`` means true."""
        job = self.proxy.call()
        connection = self.proxy.request(b'{"harpcaller": 1, "get_result": "J"}\n', job)
        self.assertEqual(connection.output(), b"")
        self.proxy.relay.calls[job].job.finish(ResultReply(5))
        self.assertEqual(connection.output(), b'{"result":5}\n')

    def test_waiter_that_leaves_is_forgotten(self) -> None:
        job = self.proxy.call()
        connection = self.proxy.request(V.CLIENT_GET_WAIT, job)
        connection.drop()
        self.assertEqual(self.proxy.job(job)._waiters, [])
        self.proxy.relay.calls[job].job.finish(ResultReply(1))
        self.assertEqual(connection.output(), b"")

    def test_unknown_job(self) -> None:
        unknown = "11111111-2222-3333-4444-555555555555"
        for line in (V.CLIENT_GET_WAIT, V.CLIENT_GET_NOWAIT, V.CLIENT_STATUS,
                     V.CLIENT_FOLLOW, V.CLIENT_READ, V.CLIENT_READ_SINCE):
            connection = self.proxy.request(line, unknown)
            self.assertEqual(connection.output(), V.UNKNOWN_JOB, line)
            self.assertTrue(connection.closed)
        self.assertEqual(self.proxy.request(V.CLIENT_STATUS, "not-a-uuid").output(), V.UNKNOWN_JOB)
        self.assertEqual(self.proxy.request(V.CLIENT_CANCEL, unknown).output(), V.NOT_CANCELLED)
        self.assertEqual(self.proxy.request(V.CLIENT_CANCEL, "not-a-uuid").output(), V.NOT_CANCELLED)

    def test_status_running_and_ended(self) -> None:
        job = self.proxy.call(info={"who": "capture", "n": [1, 2]})
        self.assertEqual(self.proxy.status(job), {
            "call": {"host": "h1", "procedure": "echo", "arguments": [1]},
            "time": {"submit": EPOCH, "start": EPOCH, "end": None},
            "info": {"who": "capture", "n": [1, 2]},
        })
        self.proxy.clock.advance(2.7)
        self.proxy.relay.calls[job].job.finish(ResultReply(None))
        status = self.proxy.status(job)
        self.assertEqual(status["time"], {"submit": EPOCH, "start": EPOCH, "end": EPOCH + 2})
        self.assertIsInstance(status["time"]["end"], int)

    def test_status_without_info_is_null(self) -> None:
        job = self.proxy.call()
        self.assertIsNone(self.proxy.status(job)["info"])

    def test_cancel_running_job(self) -> None:
        job = self.proxy.call()
        waiter = self.proxy.request(V.CLIENT_GET_WAIT, job)
        connection = self.proxy.request(V.CLIENT_CANCEL, job)
        self.assertEqual(connection.output(), V.CANCELLED)
        self.assertTrue(self.proxy.relay.calls[job].stopped)
        self.assertEqual(waiter.output(), V.CANCELLED)
        self.assertEqual(self.proxy.result(job), V.CANCELLED)
        self.assertEqual(self.proxy.request(V.CLIENT_CANCEL, job).output(), V.NOT_CANCELLED)
        # The relay reporting late changes nothing.
        self.assertFalse(self.proxy.relay.calls[job].job.finish(ResultReply(1)))
        self.assertEqual(self.proxy.result(job), V.CANCELLED)

    def test_cancel_ended_job(self) -> None:
        job = self.proxy.call()
        self.proxy.relay.calls[job].job.finish(ResultReply(1))
        self.assertEqual(self.proxy.request(V.CLIENT_CANCEL, job).output(), V.NOT_CANCELLED)
        self.assertEqual(self.proxy.result(job), b'{"result":1}\n')

    def test_second_request_line_ignored(self) -> None:
        job = self.proxy.call()
        connection = self.proxy.connect()
        connection.send(V.CLIENT_GET_NOWAIT.replace(b'"J"', b'"%s"' % job.encode()) + V.CLIENT_CANCEL)
        self.assertEqual(connection.output(), V.NO_RESULT)
        connection.send(b"more garbage\n")
        self.assertEqual(connection.output(), V.NO_RESULT)
        self.assertEqual(self.proxy.job(job).phase, Phase.RUNNING)

    def test_request_in_pieces(self) -> None:
        connection = self.proxy.connect()
        for byte in V.CLIENT_CALL_NAMED:
            connection.send(bytes([byte]))
        self.assertEqual(connection.lines(), [{"harpcaller": 1, "job_id": job_id(1)}])


class MalformedRequestTests(SynchronousTestCase):
    """Where the original closed silently, one error line, then close."""

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self)

    def test_each_malformed_request(self) -> None:
        for line, reply in V.MALFORMED:
            connection = self.proxy.request(line)
            self.assertEqual(connection.output(), reply, line)
            self.assertTrue(connection.closed)
        self.assertEqual(self.proxy.relay.calls, {})

    def test_malformed_utf8(self) -> None:
        connection = self.proxy.request(b'{"harpcaller": 1, "cancel": "\xff"}\n')
        [reply] = connection.lines()
        self.assertEqual(reply["error"]["type"], "invalid_request")
        self.assertTrue(reply["error"]["message"].startswith("line is not valid UTF-8"))

    def test_line_too_long(self) -> None:
        factory = DispatcherFactory(self.proxy.manager, self.proxy.clock, max_line_length=100)
        connection = Connection(factory.buildProtocol(None))
        connection.send(b'{"harpcaller": 1, "host": "h1", "procedure": "' + b"x" * 200)
        self.assertEqual(
            connection.output(),
            b'{"error":{"type":"invalid_request","message":"line longer than 100 bytes"}}\n',
        )
        self.assertTrue(connection.closed)
        connection.send(b'", "arguments": []}\n')
        self.assertEqual(self.proxy.relay.calls, {})

    def test_no_newline_before_timeout(self) -> None:
        connection = self.proxy.connect().send(V.CLIENT_CALL_POSITIONAL.rstrip(b"\n"))
        self.proxy.clock.advance(29)
        self.assertEqual(connection.output(), b"")
        self.proxy.clock.advance(1)
        self.assertEqual(
            connection.output(),
            b'{"error":{"type":"invalid_request","message":"no request within 30 s"}}\n',
        )
        self.assertTrue(connection.closed)
        connection.send(b"\n")
        self.assertEqual(self.proxy.relay.calls, {})

    def test_idle_connection_dropped(self) -> None:
        connection = self.proxy.connect()
        self.proxy.clock.advance(30)
        self.assertTrue(connection.closed)

    def test_timer_stops_after_request(self) -> None:
        job = self.proxy.call()
        waiter = self.proxy.request(V.CLIENT_GET_WAIT, job)
        self.proxy.clock.advance(100)
        self.assertEqual(waiter.output(), b"")
        self.assertFalse(waiter.closed)


class QueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = ProxyHarness(self)
        self.queues = self.proxy.manager.queues

    def test_concurrency_one(self) -> None:
        queue = {"name": {"q": 1}, "concurrency": 1}
        a = self.proxy.call(queue=queue)
        b = self.proxy.call(queue={"name": {"q": 1}})
        self.assertEqual(self.proxy.relay.order, [a])
        self.assertEqual(self.proxy.status(b)["time"], {"submit": EPOCH, "start": None, "end": None})
        self.assertEqual(self.proxy.result(b), V.NO_RESULT)
        self.assertEqual(self.proxy.request(V.CLIENT_READ, b).output(), V.CONTINUE)
        self.proxy.clock.advance(5)
        self.proxy.relay.calls[a].job.finish(ResultReply(True))
        self.assertEqual(self.proxy.relay.order, [a, b])
        self.assertEqual(self.proxy.status(b)["time"]["start"], EPOCH + 5)

    def test_names_compared_by_value(self) -> None:
        self.proxy.call(queue={"name": {"a": 1, "b": [1, 2]}})
        self.proxy.call(queue={"name": {"b": [1, 2], "a": 1}})
        self.proxy.call(queue={"name": {"a": 1, "b": [2, 1]}})
        self.assertEqual(self.proxy.relay.order, [job_id(1), job_id(3)])

    def test_concurrency_fixed_at_creation(self) -> None:
        for _ in range(4):
            self.proxy.call(queue={"name": {"q": 1}, "concurrency": 2 if _ == 0 else 5})
        self.assertEqual(self.proxy.relay.order, [job_id(1), job_id(2)])
        self.assertEqual(self.queues.get({"q": 1}).concurrency, 2)
        self.proxy.relay.calls[job_id(2)].job.finish(ResultReply(1))
        self.assertEqual(self.proxy.relay.order, [job_id(1), job_id(2), job_id(3)])

    def test_queue_removed_when_empty(self) -> None:
        a = self.proxy.call(queue={"name": {"q": 1}, "concurrency": 3})
        self.assertIsNotNone(self.queues.get({"q": 1}))
        self.proxy.relay.calls[a].job.finish(ResultReply(1))
        self.assertIsNone(self.queues.get({"q": 1}))
        self.proxy.call(queue={"name": {"q": 1}})
        self.assertEqual(self.queues.get({"q": 1}).concurrency, 1)

    def test_empty_object_name(self) -> None:
        self.proxy.call(queue={"name": {}, "concurrency": 2})
        self.assertEqual(self.queues.get({}).concurrency, 2)

    def test_cancel_queued_job(self) -> None:
        a = self.proxy.call(queue={"name": {"q": 1}})
        b = self.proxy.call(queue={"name": {"q": 1}})
        c = self.proxy.call(queue={"name": {"q": 1}})
        self.proxy.clock.advance(3)
        self.assertEqual(self.proxy.request(V.CLIENT_CANCEL, b).output(), V.CANCELLED)
        self.assertEqual(self.proxy.status(b)["time"], {"submit": EPOCH, "start": None, "end": EPOCH + 3})
        self.assertEqual(self.proxy.result(b, wait=True), V.CANCELLED)
        self.proxy.relay.calls[a].job.finish(ResultReply(1))
        self.assertEqual(self.proxy.relay.order, [a, c])

    def test_jobs_ending_at_start_do_not_recurse(self) -> None:
        """Many queued jobs that end as soon as they start (unknown host)."""
        self.proxy.relay.on_run = lambda job: job.finish(ErrorReply("unknown_host", "host unknown"))
        blocker = FakeRelay()
        self.proxy.manager.relay = blocker
        first = self.proxy.call(queue={"name": {"q": 1}})
        self.proxy.manager.relay = self.proxy.relay
        for _ in range(2000):
            self.proxy.call(queue={"name": {"q": 1}})
        blocker.calls[first].job.finish(ResultReply(1))
        self.assertEqual(len(self.proxy.relay.order), 2000)
        self.assertIsNone(self.queues.get({"q": 1}))


class RelayFailureTests(SynchronousTestCase):
    def test_relay_crash_ends_job(self) -> None:
        proxy = ProxyHarness(self)

        def crash(job: Job) -> None:
            raise RuntimeError("bug")

        proxy.relay.on_run = crash
        job = proxy.call()
        self.assertEqual(proxy.result(job), b'{"error":{"type":"system_error","message":"internal error",'
                         b'"data":{"reason":"bug"}}}\n')
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LoggingTests(SynchronousTestCase):
    def test_job_start_and_end_events(self) -> None:
        events: List[Dict[str, Any]] = []
        from twisted.logger import formatEvent, globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proxy = ProxyHarness(self)
        job = proxy.call(host="h\ud800", procedure="p\udfff")
        proxy.clock.advance(1.5)
        proxy.relay.calls[job].job.finish(ErrorReply("x\udc80", "boom"))
        texts = [formatEvent(e) for e in events if e.get("job_id") == job]
        self.assertEqual(texts, [
            f"job {job} started: h\\ud800 p\\udfff",
            f"job {job} ended: h\\ud800 p\\udfff -> error:x\\udc80 after 1.500 s",
        ])
        for text in texts:
            text.encode("utf-8")  # a text log file can write it
        ended = [e for e in events if e.get("job_id") == job][-1]
        self.assertEqual((ended["duration"], ended["outcome"]), (1.5, "error:x\\udc80"))


class TimeLimitTests(SynchronousTestCase):
    def test_max_exec_time(self) -> None:
        proxy = ProxyHarness(self)
        job = proxy.call(max_exec_time=2)
        waiter = proxy.request(V.CLIENT_GET_WAIT, job)
        proxy.clock.advance(1.9)
        self.assertEqual(waiter.output(), b"")
        proxy.clock.advance(0.1)
        self.assertEqual(waiter.lines(), [{"error": {
            "type": "timeout", "message": "maximum execution time exceeded",
            "data": {"max_exec_time": 2}}}])
        self.assertTrue(proxy.relay.calls[job].stopped)

    def test_queue_time_not_counted(self) -> None:
        proxy = ProxyHarness(self)
        a = proxy.call(queue={"name": {"q": 1}})
        b = proxy.call(queue={"name": {"q": 1}}, max_exec_time=2)
        proxy.clock.advance(10)
        self.assertEqual(proxy.result(b), V.NO_RESULT)
        proxy.relay.calls[a].job.finish(ResultReply(1))
        proxy.clock.advance(1.5)
        self.assertEqual(proxy.result(b), V.NO_RESULT)
        proxy.clock.advance(0.5)
        self.assertIn(b"maximum execution time exceeded", proxy.result(b))

    def test_limits_default_and_ceiling(self) -> None:
        proxy = ProxyHarness(self, Limits(default_timeout=30, max_exec_time=100))
        default = proxy.job(proxy.call())
        self.assertEqual((default.timeout, default.max_exec_time), (30, 30))
        capped = proxy.job(proxy.call(timeout=500, max_exec_time=1000))
        self.assertEqual((capped.timeout, capped.max_exec_time), (100, 100))
        small = proxy.job(proxy.call(timeout=0.5, max_exec_time=7))
        self.assertEqual((small.timeout, small.max_exec_time), (0.5, 7))
        proxy.clock.advance(30)
        self.assertEqual(proxy.job(capped.job_id).phase, Phase.RUNNING)
        self.assertIsNone(proxy.manager.get(default.job_id))


class StreamTests(SynchronousTestCase):
    """follow_stream and read_stream: attached before, during and after."""

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self)
        self.job = self.proxy.call(procedure="stream_n")
        self.running = self.proxy.relay.calls[self.job].job

    def packets(self, numbers: range) -> List[Any]:
        return [{"packet": n, "data": {"i": n}} for n in numbers]

    def emit(self, numbers: range) -> None:
        for n in numbers:
            self.running.stream({"i": n})

    def test_follow_before_during_after(self) -> None:
        before = self.proxy.request(V.CLIENT_FOLLOW, self.job)
        self.emit(range(0, 3))
        during = self.proxy.request(V.CLIENT_FOLLOW, self.job)
        during_recent = self.proxy.request(V.CLIENT_FOLLOW_RECENT, self.job)
        during_since = self.proxy.request(b'{"harpcaller": 1, "follow_stream": "J", "since": 0}\n', self.job)
        self.emit(range(3, 6))
        self.assertEqual(before.lines(), self.packets(range(0, 6)))
        self.assertFalse(before.closed)
        self.running.finish(ResultReply("done"))
        after = self.proxy.request(V.CLIENT_FOLLOW, self.job)
        after_since = self.proxy.request(V.CLIENT_FOLLOW_SINCE, self.job)
        end = [{"result": "done"}]
        self.assertEqual(before.lines(), self.packets(range(0, 6)) + end)
        self.assertEqual(during.lines(), self.packets(range(3, 6)) + end)
        self.assertEqual(during_recent.lines(), self.packets(range(1, 6)) + end)
        self.assertEqual(during_since.lines(), self.packets(range(0, 6)) + end)
        self.assertEqual(after.lines(), end)
        self.assertEqual(after_since.lines(), self.packets(range(3, 6)) + end)
        for connection in (before, during, during_recent, during_since, after, after_since):
            self.assertTrue(connection.closed)
            self.assertIsNone(connection.transport.producer)

    def test_follow_since_in_future(self) -> None:
        follower = self.proxy.request(b'{"harpcaller": 1, "follow_stream": "J", "since": 4}\n', self.job)
        self.emit(range(0, 6))
        self.assertEqual(follower.lines(), self.packets(range(4, 6)))

    def test_read_stream(self) -> None:
        self.emit(range(0, 3))
        self.assertEqual(self.proxy.request(V.CLIENT_READ, self.job).lines(),
                         self.packets(range(0, 3)) + [{"continue": True}])
        self.assertEqual(self.proxy.request(V.CLIENT_READ_SINCE, self.job).lines(),
                         self.packets(range(1, 3)) + [{"continue": True}])
        self.assertEqual(
            self.proxy.request(b'{"harpcaller": 1, "read_stream": "J", "recent": 1}\n', self.job).lines(),
            self.packets(range(2, 3)) + [{"continue": True}])
        self.emit(range(3, 6))
        self.running.finish(ErrorReply("custom_error", "boom"))
        error = {"error": {"type": "custom_error", "message": "boom"}}
        self.assertEqual(self.proxy.request(V.CLIENT_READ, self.job).lines(),
                         self.packets(range(0, 6)) + [error])
        self.assertEqual(
            self.proxy.request(b'{"harpcaller": 1, "read_stream": "J", "since": 99}\n', self.job).lines(),
            [error])

    def test_cancelled_while_followed(self) -> None:
        follower = self.proxy.request(V.CLIENT_FOLLOW, self.job)
        self.emit(range(0, 2))
        self.assertEqual(self.proxy.request(V.CLIENT_CANCEL, self.job).output(), V.CANCELLED)
        self.assertEqual(follower.lines(), self.packets(range(0, 2)) + [{"cancelled": True}])
        self.emit(range(2, 3))  # a late packet from the relay is dropped
        self.assertEqual(self.proxy.request(V.CLIENT_READ, self.job).lines(),
                         self.packets(range(0, 2)) + [{"cancelled": True}])

    def test_follower_leaves(self) -> None:
        follower = self.proxy.request(V.CLIENT_FOLLOW, self.job)
        follower.drop()
        self.assertEqual(self.running._watchers, [])
        self.emit(range(0, 2))
        self.assertEqual(follower.output(), b"")

    def test_many_followers(self) -> None:
        followers = [self.proxy.request(V.CLIENT_FOLLOW, self.job) for _ in range(20)]
        self.emit(range(0, 10))
        self.running.finish(ResultReply(None))
        for follower in followers:
            self.assertEqual(follower.lines(), self.packets(range(0, 10)) + [{"result": None}])


class FlowControlTests(SynchronousTestCase):
    """A follower whose connection is full is paused and later catches up from the store."""

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self, cache_packets=4)
        self.job = self.proxy.call(procedure="stream_n")
        self.running = self.proxy.relay.calls[self.job].job
        self.reads: List[Tuple[int, int]] = []
        read_packets = self.proxy.sqlite.read_packets

        def counting(job: str, since: int = 0, limit: Optional[int] = None) -> Any:
            self.reads.append((since, limit))
            return read_packets(job, since, limit)

        self.proxy.sqlite.read_packets = counting  # type: ignore[method-assign]

    def test_paused_follower_catches_up_from_store(self) -> None:
        slow = self.proxy.request(V.CLIENT_FOLLOW, self.job)
        fast = self.proxy.request(V.CLIENT_FOLLOW, self.job)
        sender = slow.transport.producer
        self.assertIsNotNone(sender)
        self.running.stream(0)
        sender.pauseProducing()
        for n in range(1, 200):
            self.running.stream(n)
        # The job and the other follower are not held back.
        self.assertEqual(len(fast.lines()), 200)
        self.assertEqual(len(slow.lines()), 1)
        # The slow follower holds a cursor, not a queue of packets.
        self.assertEqual((sender.cursor, len(sender._batch)), (1, 0))
        self.assertEqual(self.reads, [])
        sender.resumeProducing()
        self.assertEqual([line["packet"] for line in slow.lines()], list(range(200)))
        self.assertEqual(self.reads[0], (1, 64))
        self.assertTrue(all(limit <= 64 for _, limit in self.reads))
        self.running.finish(ResultReply("done"))
        self.assertEqual(slow.lines()[-1], {"result": "done"})

    def test_pause_during_batch(self) -> None:
        for n in range(100):
            self.running.stream(n)
        self.running.finish(ResultReply("done"))
        connection = self.proxy.connect()
        transport = connection.transport
        written: List[bytes] = []

        def write(data: bytes) -> None:
            written.append(data)
            if len(written) == 10:
                transport.producer.pauseProducing()

        transport.write = write  # type: ignore[method-assign]
        connection.send(b'{"harpcaller": 1, "read_stream": "%s"}\n' % self.job.encode())
        self.assertEqual(len(written), 10)
        sender = transport.producer
        self.assertLessEqual(len(sender._batch), 64)
        sender.resumeProducing()
        self.assertEqual(len(written), 101)
        self.assertEqual([json.loads(line).get("packet") for line in written[:-1]], list(range(100)))

    def test_cache_bounded_by_bytes(self) -> None:
        proxy = ProxyHarness(self, cache_packets=1000, cache_bytes=1000)
        job = proxy.relay.calls[proxy.call(procedure="big")].job
        for n in range(50):
            job.stream("x" * 100)
        self.assertIsNone(job.cached_line(0))
        self.assertIsNotNone(job.cached_line(49))
        self.assertLessEqual(job._cache._bytes, 1000)


class DurabilityTests(SynchronousTestCase):
    """Nothing is reported before the store write that records it has committed."""

    def setUp(self) -> None:
        self.proxy = ProxyHarness(self)
        self.store = self.proxy.store

    def test_call_ack_after_create_committed(self) -> None:
        """A job that can start is dialled at once, its start in its record;
        the call reaches the daemon, and the job ID the client, only once
        that record has committed."""
        self.store.holding = True
        connection = self.proxy.request(V.CLIENT_CALL_POSITIONAL)
        self.assertEqual(connection.output(), b"")
        self.assertEqual(self.store.pending(), ["create_job"])
        self.assertEqual(self.proxy.relay.order, [job_id(1)])
        self.assertFalse(self.proxy.relay.calls[job_id(1)].released)
        self.store.release()
        self.assertEqual(connection.lines(), [{"harpcaller": 1, "job_id": job_id(1)}])
        self.assertTrue(self.proxy.relay.calls[job_id(1)].released)
        self.assertEqual(self.store.pending(), [])  # no separate mark_started
        status = self.proxy.status(job_id(1))
        self.assertEqual(status["time"]["start"], status["time"]["submit"])

    def test_queued_job_not_dialled_before_it_starts(self) -> None:
        first = self.proxy.call(queue={"name": {"q": 1}})
        self.store.holding = True
        connection = self.proxy.request(json.dumps({
            "harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [2],
            "queue": {"name": {"q": 1}}}).encode() + b"\n")
        self.store.release()
        second = connection.lines()[0]["job_id"]
        self.assertEqual(self.proxy.relay.order, [first])
        self.assertIsNone(self.proxy.status(second)["time"]["start"])
        self.store.holding = True
        self.proxy.relay.calls[first].job.finish(ResultReply(1))
        # The slot frees as the first job ends: the second, recorded long
        # ago, starts with its start written and its call sent at once.
        self.assertEqual(self.store.pending(), ["mark_started", "end_job"])
        self.assertTrue(self.proxy.relay.calls[second].released)
        self.store.release()
        self.assertIsNotNone(self.proxy.status(second)["time"]["start"])

    def test_packets_reach_followers_after_commit_in_order(self) -> None:
        job = self.proxy.call()
        running = self.proxy.relay.calls[job].job
        follower = self.proxy.request(V.CLIENT_FOLLOW, job)
        self.store.holding = True
        for n in range(3):
            running.stream(n)
        running.finish(ResultReply("done"))
        self.assertEqual(self.store.pending(), ["append_packet"] * 3 + ["end_job"])
        self.assertEqual(follower.output(), b"")
        self.store.release(1)
        self.assertEqual(follower.lines(), [{"packet": 0, "data": 0}])
        self.store.release(2)
        self.assertEqual(len(follower.lines()), 3)
        self.assertEqual(self.proxy.result(job), V.NO_RESULT)
        self.store.release()
        self.assertEqual(follower.lines()[-1], {"result": "done"})

    def test_commits_fired_out_of_order_still_applied_in_order(self) -> None:
        job = self.proxy.call()
        running = self.proxy.relay.calls[job].job
        follower = self.proxy.request(V.CLIENT_FOLLOW, job)
        self.store.holding = True
        running.stream("a")
        running.stream("b")
        (_, first, out_first), (_, second, out_second) = self.store.held
        second.addBoth(out_second.callback)
        self.assertEqual(follower.output(), b"")
        first.addBoth(out_first.callback)
        self.assertEqual([line["data"] for line in follower.lines()], ["a", "b"])

    def test_end_decided_once_no_missing_result_race(self) -> None:
        """Waiters and followers arriving while the end is being recorded get the true end."""
        job = self.proxy.call()
        running = self.proxy.relay.calls[job].job
        early = self.proxy.request(V.CLIENT_GET_WAIT, job)
        self.store.holding = True
        self.assertTrue(running.finish(ResultReply(True)))
        self.assertEqual(running.phase, Phase.ENDING)
        # Everything racing for the end after it was decided changes nothing.
        self.assertFalse(running.finish(ErrorReply("network_error", "connection closed")))
        self.assertEqual(self.proxy.request(V.CLIENT_CANCEL, job).output(), V.NOT_CANCELLED)
        self.proxy.clock.advance(10_000)
        # Requests arriving now wait for the committed end.
        late = self.proxy.request(V.CLIENT_GET_WAIT, job)
        follower = self.proxy.request(V.CLIENT_FOLLOW, job)
        self.assertEqual(self.proxy.result(job), V.NO_RESULT)
        self.assertIsNone(self.proxy.status(job)["time"]["end"])
        self.assertEqual((early.output(), late.output(), follower.output()), (b"", b"", b""))
        self.store.release()
        for connection in (early, late, follower):
            self.assertEqual(connection.output(), b'{"result":true}\n')
        self.assertIsNone(self.proxy.manager.get(job))
        self.assertEqual(self.proxy.result(job, wait=True), b'{"result":true}\n')

    def test_cancel_reply_after_commit(self) -> None:
        job = self.proxy.call()
        self.store.holding = True
        connection = self.proxy.request(V.CLIENT_CANCEL, job)
        self.assertEqual(connection.output(), b"")
        self.store.release()
        self.assertEqual(connection.output(), V.CANCELLED)

    def test_daemon_paused_while_store_is_behind(self) -> None:
        """Writes awaiting their commit are bounded: reading from harpd pauses."""
        job = self.proxy.call()
        call = self.proxy.relay.calls[job]
        self.store.holding = True
        for n in range(PENDING_HIGH - 1):
            call.job.stream(n)
        self.assertFalse(call.paused)
        call.job.stream(PENDING_HIGH - 1)
        self.assertTrue(call.paused)
        self.store.release(PENDING_HIGH - PENDING_LOW - 1)
        self.assertTrue(call.paused)
        self.store.release(1)
        self.assertFalse(call.paused)
        self.store.release()
        self.assertEqual(self.proxy.job(job).available, PENDING_HIGH)

    def test_store_write_failure_ends_job(self) -> None:
        job = self.proxy.call()
        running = self.proxy.relay.calls[job].job
        self.store.holding = True
        running.stream(1)
        (_, _, out) = self.store.held.pop()
        out.errback(StoreError("disk full"))
        self.store.release()
        self.assertEqual(self.proxy.result(job), b'{"error":{"type":"os_error","message":'
                         b'"job store failed","data":{"reason":"disk full"}}}\n')
        self.flushLoggedErrors(StoreError)

    def test_create_failure_answered(self) -> None:
        self.store.holding = True
        connection = self.proxy.request(V.CLIENT_CALL_POSITIONAL)
        (_, done, out) = self.store.held.pop()
        out.errback(StoreError("disk full"))
        self.assertEqual(connection.lines(), [{"error": {
            "type": "os_error", "message": "job store failed", "data": {"reason": "disk full"}}}])
        # Dialled while the record was written, never sent, then closed.
        call = self.proxy.relay.calls[job_id(1)]
        self.assertFalse(call.released)
        self.assertTrue(call.stopped)
        self.assertEqual(self.store.pending(), [])
        self.assertEqual(self.proxy.manager.live_jobs(), [])
        self.flushLoggedErrors(StoreError)

    def test_create_failure_after_immediate_end(self) -> None:
        """An unknown host ends its job before the record commits; if that
        record is then refused, the end is let go: no retries, no job."""
        def unknown_host(job: Job) -> None:
            job.finish(ErrorReply("unknown_host", "host unknown", {"host": "h1"}))

        self.proxy.relay.on_run = unknown_host
        self.store.holding = True
        connection = self.proxy.request(V.CLIENT_CALL_POSITIONAL)
        self.assertEqual(self.store.pending(), ["create_job", "end_job"])
        (_, _, create), (_, _, end) = self.store.held
        self.store.held = []
        create.errback(StoreError("disk full"))
        end.errback(StoreError("no such job"))
        self.assertIn(b'"job store failed"', connection.output())
        self.assertEqual(self.proxy.manager.live_jobs(), [])
        self.assertEqual(self.proxy.clock.getDelayedCalls(), [])
        self.flushLoggedErrors(StoreError)


class LifecycleTests(SynchronousTestCase):
    def test_recover_interrupted(self) -> None:
        proxy = ProxyHarness(self)
        job = proxy.call()
        queued = proxy.call(queue={"name": {"q": 1}})
        also_queued = proxy.call(queue={"name": {"q": 1}})
        proxy.relay.calls[job].job.stream("x")
        done = proxy.call()
        proxy.relay.calls[done].job.finish(ResultReply(1))
        # A new manager on the same store: the previous process died.
        proxy.clock.advance(60)
        fresh = JobManager(proxy.store, FakeRelay(), proxy.clock)
        self.assertEqual(sorted(self.successResultOf(fresh.recover())), sorted([job, queued, also_queued]))
        proxy.manager = fresh
        proxy.factory = DispatcherFactory(fresh, proxy.clock)
        missing = b'{"error":{"type":"missing_result","message":"job interrupted abruptly"}}\n'
        for interrupted in (job, queued):
            self.assertEqual(proxy.result(interrupted, wait=True), missing)
            self.assertEqual(proxy.status(interrupted)["time"]["end"], EPOCH + 60)
        self.assertEqual(proxy.request(V.CLIENT_READ, job).lines(), [{"packet": 0, "data": "x"}, json.loads(missing)])
        self.assertEqual(proxy.result(done), b'{"result":1}\n')

    def test_shutdown_ends_live_jobs(self) -> None:
        proxy = ProxyHarness(self)
        running = proxy.call()
        queued = [proxy.call(queue={"name": {"q": 1}}) for _ in range(3)]
        waiter = proxy.request(V.CLIENT_GET_WAIT, running)
        done = proxy.manager.shutdown()
        self.successResultOf(done)
        shutdown = b'{"error":{"type":"shutdown","message":"dispatcher shut down"}}\n'
        self.assertEqual(waiter.output(), shutdown)
        self.assertTrue(proxy.relay.calls[running].stopped)
        # Only the first queued job had started; the others never do.
        self.assertEqual(proxy.relay.order, [running, queued[0]])
        for job in [running] + queued:
            self.assertEqual(proxy.result(job), shutdown)
        self.assertEqual(self.successResultOf(proxy.sqlite.list_jobs({JobState.QUEUED, JobState.RUNNING})), [])

    def test_call_during_shutdown(self) -> None:
        proxy = ProxyHarness(self)
        proxy.store.holding = True
        connection = proxy.request(V.CLIENT_CALL_POSITIONAL)
        proxy.manager.shutdown()
        proxy.store.holding = False
        proxy.store.release()
        job = connection.lines()[0]["job_id"]
        # Dialled while its record was written, but its call was never sent.
        self.assertFalse(proxy.relay.calls[job].released)
        self.assertTrue(proxy.relay.calls[job].stopped)
        self.assertIn(b'"shutdown"', proxy.result(job))

    def test_prune_keeps_live_jobs(self) -> None:
        proxy = ProxyHarness(self, Limits(default_timeout=10_000, max_exec_time=10_000))
        old = proxy.call()
        proxy.relay.calls[old].job.finish(ResultReply(1))
        live = proxy.call()
        proxy.clock.advance(7200)
        self.assertEqual(self.successResultOf(proxy.manager.prune(3600)), 1)
        self.assertEqual(proxy.result(old), V.UNKNOWN_JOB)
        self.assertEqual(proxy.result(live), V.NO_RESULT)
