"""Fault injection into harp-proxy's job store (a full disk, an I/O error).

The job manager and the dispatcher protocol run on an in-memory SQLite
store wrapped so that chosen writes fail with :class:`StoreError`, on
:class:`StringTransport` with a :class:`Clock`.  Whatever fails, every
accepted job must end exactly once, every ``get_result`` waiter and every
follower must get an end line, followers must see packets numbered without
gaps, and the proxy must keep serving.
"""
from __future__ import annotations

import json
from typing import Any, List, Set, Tuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests import strategies as S
from tests.test_fuzz_servers import KeepRunningRelay
from txharp.proxy.jobs import END_RETRY_MAX, JobManager, Limits
from txharp.proxy.protocol import DispatcherFactory
from txharp.proxy.store import SQLiteJobStore, StoreError
from txharp.wire import CallRequest, FollowStreamRequest, GetResultRequest, GetStatusRequest, ReadStreamRequest
from txharp.wire.outcomes import ResultReply

EPOCH = 1_795_530_117
WRITES = ("create_job", "mark_started", "append_packet", "end_job")


class FailingStore:
    """Delegates to a real store; the writes numbered in ``failing`` fail."""

    def __init__(self, inner: SQLiteJobStore, failing: Set[int]) -> None:
        self.inner = inner
        self.failing = failing
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in WRITES:
            return attribute

        def write(*args: Any) -> "Deferred[Any]":
            self.writes += 1
            if self.writes in self.failing:
                return fail(StoreError(f"injected failure of {name} (write {self.writes})"))
            return attribute(*args)

        return write


class StoreFaultTests(SynchronousTestCase):
    """Injected store failures at every write position."""

    def connect(self, factory: DispatcherFactory, request: Any) -> StringTransport:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(json.dumps(request.to_json()).encode() + b"\n")
        return transport

    @S.ci_settings(150)
    @given(st.sets(st.integers(1, 40), max_size=4), st.lists(st.integers(0, 6), min_size=1, max_size=4))
    def test_every_job_ends_once_whatever_write_fails(self, failing: Set[int], packets: List[int]) -> None:
        self.run_jobs(failing, packets)

    def test_an_end_that_cannot_be_recorded_at_first(self) -> None:
        """Writes: create_job (with the start), end_job -- the second fails,
        its retry succeeds.

        Until the end is on disk nobody is told it; afterwards every request
        answers with it.
        """
        self.run_jobs({2}, [0])
        self.assertEqual(self.before_retries, [b""])
        [(end, again, status)] = self.later
        self.assertEqual(end, {"result": 0})
        self.assertEqual(again, end)
        self.assertIsNotNone(status["time"]["end"], status)

    def run_jobs(self, failing: Set[int], packets: List[int]) -> None:
        clock = Clock()
        clock.advance(EPOCH)
        sqlite = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(sqlite.open())
        store = FailingStore(sqlite, failing)
        relay = KeepRunningRelay()
        manager = JobManager(store, relay, clock, Limits(60, 60), cache_packets=2, cache_bytes=100)
        factory = DispatcherFactory(manager, clock)
        accepted: List[str] = []
        for count in packets:
            transport = self.connect(factory, CallRequest("h", "p", [count]))
            reply = json.loads(transport.value())
            if "job_id" in reply:
                accepted.append(reply["job_id"])
            else:
                self.assertEqual(reply["error"]["type"], "os_error")
        waiters: List[Tuple[str, StringTransport, StringTransport]] = []
        for job_id in accepted:
            waiters.append((job_id, self.connect(factory, GetResultRequest(job_id, True)),
                            self.connect(factory, FollowStreamRequest(job_id, since=0))))
        for job in list(relay.jobs):
            count = job.call.arguments[0]
            for n in range(count):
                job.stream({"n": n})
            job.finish(ResultReply(count))
        self.before_retries = [result.value() for _, result, _ in waiters]
        for _ in range(len(failing) + 1):  # each refused end is written again after a back-off
            clock.advance(END_RETRY_MAX)
        self.flushLoggedErrors(StoreError)
        later: List[Tuple[Any, Any, Any]] = []
        for job_id, result, follower in waiters:
            [end] = [json.loads(line) for line in result.value().splitlines()]
            lines = [json.loads(line) for line in follower.value().splitlines()]
            self.assertTrue(lines, f"the follower of {job_id} got nothing")
            self.assertEqual(lines[-1], end, "a follower saw another end than get_result")
            numbers = [line["packet"] for line in lines[:-1]]
            self.assertEqual(numbers, list(range(len(numbers))))
            if "result" in end:
                self.assertEqual(numbers, list(range(end["result"])))
            else:
                self.assertIn(end["error"]["type"], ("os_error", "missing_result"), end)
            self.assertTrue(result.disconnecting and follower.disconnecting)
            [again] = [json.loads(line) for line in
                       self.connect(factory, GetResultRequest(job_id, False)).value().splitlines()]
            [status] = [json.loads(line) for line in
                        self.connect(factory, GetStatusRequest(job_id)).value().splitlines()]
            later.append((end, again, status))
        self.later = later
        self.assertEqual(manager.live_jobs(), [])
        # Still serving: a new call is accepted and read back.
        store.failing = set()
        transport = self.connect(factory, CallRequest("h", "p", [0]))
        job_id = json.loads(transport.value())["job_id"]
        relay.jobs[-1].finish(ResultReply("again"))
        self.assertEqual(json.loads(self.connect(factory, ReadStreamRequest(job_id)).value()), {"result": "again"})
        sqlite.close()
