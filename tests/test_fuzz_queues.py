"""Model-based tests of harp-proxy's queues and job manager (hypothesis state machines).

:class:`QueueMachine` drives :class:`~txharp.proxy.queues.QueueRegistry`
alone: members submitted to random queues, members that end at once
inside ``begin()`` (an unknown host), members leaving while running or
while waiting.  :class:`ManagerMachine` drives the whole
:class:`~txharp.proxy.jobs.JobManager` (in-memory store whose commits the
test releases, fake relay, clock): calls with queues and time limits,
packets, ends, cancels, ``get_result`` waiters and followers arriving at
any moment.  Invariants checked after every step: no queue runs more than
its concurrency, members start in submission order, a job ends exactly
once, and every waiter and follower gets that one end.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests import strategies as S
from txharp.proxy.jobs import JobManager, Limits, Phase
from txharp.proxy.protocol import DispatcherFactory
from txharp.proxy.queues import QueueRegistry
from txharp.proxy.store import SQLiteJobStore
from txharp.wire import CallRequest, FollowStreamRequest, GetResultRequest, QueueSpec
from txharp.wire.outcomes import ErrorReply, ResultReply

EPOCH = 1_795_530_117
QUEUE_NAMES = [{"q": 0}, {"q": 1}, {"q": 2, "x": [1]}]


class Member:
    def __init__(self, machine: "QueueMachine", number: int, queue: Optional[int], ends_at_once: bool) -> None:
        self.machine = machine
        self.number = number
        self.queue = queue
        self.ends_at_once = ends_at_once
        self.begun = False

    def begin(self) -> None:
        assert not self.begun, "begin() called twice"
        self.begun = True
        self.machine.started.append(self)
        if self.ends_at_once:
            self.machine.registry.leave(self)
            self.machine.ended.add(self.number)

    def __repr__(self) -> str:
        return f"<Member {self.number} q={self.queue}>"


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.registry = QueueRegistry()
        self.members: List[Member] = []
        self.started: List[Member] = []
        self.ended: set = set()
        self.limits: Dict[int, int] = {}

    @rule(queue=st.one_of(st.none(), st.integers(0, 2)), concurrency=st.one_of(st.none(), st.integers(1, 3)),
          ends_at_once=st.booleans())
    def submit(self, queue: Optional[int], concurrency: Optional[int], ends_at_once: bool) -> None:
        member = Member(self, len(self.members), queue, ends_at_once)
        self.members.append(member)
        if queue is not None and self.registry.get(QUEUE_NAMES[queue]) is None:
            self.limits[queue] = concurrency or 1  # fixed when the queue is created
        self.registry.submit(member, None if queue is None else QueueSpec(QUEUE_NAMES[queue], concurrency))
        if queue is None:
            assert member.begun

    @precondition(lambda self: any(m.number not in self.ended for m in self.members))
    @rule(data=st.data())
    def leave(self, data: Any) -> None:
        live = [m for m in self.members if m.number not in self.ended]
        member = data.draw(st.sampled_from(live))
        self.registry.leave(member)
        self.ended.add(member.number)

    @invariant()
    def limits_hold_and_order_kept(self) -> None:
        for queue, name in enumerate(QUEUE_NAMES):
            mine = [m for m in self.members if m.queue == queue]
            running = [m for m in mine if m.begun and m.number not in self.ended]
            waiting = [m for m in mine if not m.begun and m.number not in self.ended]
            live = self.registry.get(name)
            if not running and not waiting:
                assert live is None, f"queue {queue} kept although empty"
                continue
            assert live is not None
            assert len(running) <= self.limits[queue], (queue, running, self.limits[queue])
            # Work-conserving: nobody waits while a slot is free.
            assert not waiting or len(running) == self.limits[queue], (queue, running, waiting)
            # First come, first served.
            begun = [m.number for m in self.started if m.queue == queue]
            assert begun == sorted(begun), begun


class QueueMachineTests(SynchronousTestCase):
    """The queue registry against its model."""

    def test_queue_machine(self) -> None:
        QueueMachine.TestCase.settings = S.ci_settings(150)
        QueueMachine.TestCase("runTest").runTest()


# ------------------------------------------------------------------ manager


class Relay:
    def __init__(self) -> None:
        self.running: Dict[str, Any] = {}
        self.stopped: List[str] = []

    def run(self, job: Any) -> Any:
        self.running[job.job_id] = job
        relay = self

        class Handle:
            def release(self) -> None:
                pass

            def stop(self) -> None:
                relay.stopped.append(job.job_id)
                relay.running.pop(job.job_id, None)

        return Handle()


class HeldStore:
    """Writes happen at once; their Deferreds fire when the test releases them (in order)."""

    def __init__(self, inner: SQLiteJobStore) -> None:
        self.inner = inner
        self.held: List[Tuple[Deferred[Any], Deferred[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in ("create_job", "mark_started", "append_packet", "end_job"):
            return attribute

        def write(*args: Any) -> "Deferred[Any]":
            done = attribute(*args)
            out: Deferred[Any] = Deferred()
            self.held.append((done, out))
            return out

        return write

    def release(self, count: int) -> None:
        batch, self.held = self.held[:count], self.held[count:]
        for done, out in batch:
            done.addBoth(out.callback)


class ManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.sqlite = SQLiteJobStore(":memory:", threaded=False)
        self.sqlite.open()
        self.store = HeldStore(self.sqlite)
        self.relay = Relay()
        numbers = iter(range(1, 10 ** 6))
        self.manager = JobManager(self.store, self.relay, self.clock, Limits(60, 60),
                                  new_id=lambda: f"job-{next(numbers):04d}",  # replayable
                                  cache_packets=2, cache_bytes=64)
        self.factory = DispatcherFactory(self.manager, self.clock)
        self.accepts: List[StringTransport] = []
        self.jobs: List[str] = []
        self.limits: Dict[int, int] = {}
        self.queue_of: Dict[str, Optional[int]] = {}
        self.max_running: Dict[int, int] = {}
        self.observers: List[Tuple[str, str, StringTransport]] = []  # (job, kind, transport)
        self.packets_sent: Dict[str, int] = {}

    def connect(self, request: Any) -> StringTransport:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(json.dumps(request.to_json()).encode() + b"\n")
        return transport

    def collect_accepted(self) -> None:
        for transport in list(self.accepts):
            if transport.value():
                reply = json.loads(transport.value())
                self.jobs.append(reply["job_id"])
                self.accepts.remove(transport)

    @rule(queue=st.one_of(st.none(), st.integers(0, 2)), concurrency=st.integers(1, 3),
          max_exec_time=st.one_of(st.none(), st.sampled_from([1, 5])))
    def submit(self, queue: Optional[int], concurrency: int, max_exec_time: Optional[int]) -> None:
        spec = None if queue is None else QueueSpec(QUEUE_NAMES[queue], concurrency)
        self.accepts.append(self.connect(CallRequest("h", "p", [len(self.accepts)], queue=spec,
                                                     max_exec_time=max_exec_time)))

    @rule(count=st.integers(1, 12))
    def release_writes(self, count: int) -> None:
        self.store.release(count)
        self.collect_accepted()

    @rule(data=st.data())
    def stream_or_finish(self, data: Any) -> None:
        running = sorted(self.relay.running)
        if not running:
            return
        job_id = data.draw(st.sampled_from(running))
        job = self.relay.running[job_id]
        if data.draw(st.booleans()):
            number = self.packets_sent.get(job_id, 0)
            job.stream({"n": number})
            self.packets_sent[job_id] = number + 1
        else:
            del self.relay.running[job_id]
            job.finish(data.draw(st.sampled_from([ResultReply("ok"), ErrorReply("network_error", "closed")])))

    @rule(data=st.data(), kind=st.sampled_from(["result", "follow", "cancel"]))
    def client(self, data: Any, kind: str) -> None:
        if not self.jobs:
            return
        job_id = data.draw(st.sampled_from(self.jobs))
        if kind == "result":
            self.observers.append((job_id, kind, self.connect(GetResultRequest(job_id, True))))
        elif kind == "follow":
            self.observers.append((job_id, kind, self.connect(FollowStreamRequest(job_id, since=0))))
        else:
            self.connect(_Cancel(job_id))

    @rule(seconds=st.sampled_from([0.5, 2, 6]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def queues_within_limits(self) -> None:
        for queue in self.manager.queues:
            assert len(queue.running) <= queue.concurrency, (queue.name, len(queue.running))
            running_phases = {job.phase for job in queue.running}
            assert running_phases <= {Phase.RUNNING, Phase.QUEUED}, running_phases

    def teardown(self) -> None:
        # Everything ends: every held write commits, every running job finishes.
        for _ in range(50):
            self.store.release(len(self.store.held))
            for job_id, job in list(self.relay.running.items()):
                del self.relay.running[job_id]
                job.finish(ResultReply("late"))
            if not self.store.held and not self.relay.running:
                break
        self.collect_accepted()
        assert self.manager.live_jobs() == [], self.manager.live_jobs()
        ends: Dict[str, Any] = {}
        for job_id in self.jobs:
            [end] = [json.loads(line) for line in self.connect(GetResultRequest(job_id, False)).value().splitlines()]
            assert "no_result" not in end, (job_id, end)
            ends[job_id] = end
        for job_id, kind, transport in self.observers:
            lines = [json.loads(line) for line in transport.value().splitlines()]
            assert lines, (job_id, kind, "no answer")
            assert lines[-1] == ends[job_id], (job_id, kind, lines[-1], ends[job_id])
            if kind == "follow":
                numbers = [line["packet"] for line in lines[:-1]]
                assert numbers == list(range(len(numbers))), numbers
                recorded = self.sqlite.read_packets(job_id)
                recorded_numbers: List[int] = []
                recorded.addCallback(lambda rows: recorded_numbers.extend(n for n, _ in rows))
                assert numbers == recorded_numbers, (numbers, recorded_numbers)
        self.sqlite.close()


class _Cancel:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def to_json(self) -> Dict[str, Any]:
        return {"harpcaller": 1, "cancel": self.job_id}


class ManagerMachineTests(SynchronousTestCase):
    """The job manager and dispatcher protocol against their invariants."""

    def test_manager_machine(self) -> None:
        ManagerMachine.TestCase.settings = S.ci_settings(60)
        ManagerMachine.TestCase("runTest").runTest()
