"""Faults inside txharp's harpd: a slow or busy daemon, a child that has exited.

Found by ``bench/load.py`` at full size: streaming calls sometimes ended as
``system_error`` "the procedure process exited without a result" after
800-970 of their 1,000 packets.  A child writes its last packets and its
final line into its pipe and exits; the runner terminates the process
group and, ``kill_grace`` seconds later, closes the pipes (a process that
escaped the group could otherwise hold them open for ever) — with output
still unread in them when the daemon had not read it by then: because the
client was slow (reading paused by flow control), or because the daemon
was busy (it reads a pipe 8 KiB per reactor turn).

Fixed in :mod:`txharp.daemon.runner`: once the child has exited its pipes
are read whatever the client's pace, and closing them first reads what
they hold (bounded).  These tests drive
:class:`~txharp.daemon.runner.ProcessRunner` directly with real child
processes, on the real reactor.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from txharp.daemon.procedures import ProcedureRegistry, load_procedures_module
from txharp.daemon.runner import Call, ChildSettings, ProcessRunner
from txharp.wire.outcomes import ResultReply

PROCEDURES = '''
from harpd.proc import Result, streaming_procedure


@streaming_procedure
def burst(n, size=0):
    for i in range(n):
        yield [i, "x" * size] if size else i
    yield Result("done")
'''


class PausingConsumer:
    """A client connection that stops reading at once (its buffer is full)."""

    def __init__(self) -> None:
        self.producer: Optional[Any] = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None


class SlowClientTests(TestCase):
    """A paused client outlasting the child process and the kill grace period."""

    timeout = 30

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "burst_procedures.py")
        with open(path, "w") as f:
            f.write(PROCEDURES)
        self.registry = ProcedureRegistry.from_module(load_procedures_module(path, "burst_procedures"))
        self.runner = ProcessRunner(reactor, ChildSettings(path), grace=0.3)
        self.addCleanup(self.runner.stop)

    def test_output_left_in_the_pipe_is_delivered(self) -> "Deferred[None]":
        async def run() -> None:
            packets: List[Any] = []
            consumer = PausingConsumer()
            outcome = self.runner.run(Call(self.registry["burst"], [300], "alice"), packets.append, consumer)
            # The child writes ~2 KiB (it fits in the pipe) and exits; the
            # consumer stays paused past the kill grace period.
            await deferLater(reactor, 1.5, lambda: None)
            if consumer.producer is not None:
                consumer.producer.resumeProducing()
            final = await outcome.addTimeout(10, reactor)
            self.assertEqual(final, ResultReply("done"))
            self.assertEqual(packets, list(range(300)))

        return Deferred.fromCoroutine(run())

    def test_output_left_in_the_pipe_of_a_busy_daemon_is_delivered(self) -> "Deferred[None]":
        """The daemon is busy: handling each chunk read from a child takes
        50 ms, so the ~100 KiB a child writes before exiting take longer
        than the kill grace period to read.  Closing the pipes then must not
        drop what they still hold (found by bench/load.py: under load,
        streaming calls ended as "exited without a result")."""
        import time

        from txharp.daemon import runner as runner_module

        slow_read = runner_module._ChildProcess.childDataReceived

        def busy(child: Any, fd: int, data: bytes) -> None:
            time.sleep(0.05)
            slow_read(child, fd, data)

        self.patch(runner_module._ChildProcess, "childDataReceived", busy)

        async def run() -> None:
            packets: List[Any] = []
            outcome = self.runner.run(Call(self.registry["burst"], [1000, 100], "alice"), packets.append)
            final = await outcome.addTimeout(20, reactor)
            self.assertEqual(final, ResultReply("done"))
            self.assertEqual(packets, [[i, "x" * 100] for i in range(1000)])

        return Deferred.fromCoroutine(run())
