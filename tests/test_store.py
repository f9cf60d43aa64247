"""Tests for :mod:`txharp.proxy.store`, the durable job store.

The behaviour tests run twice: against a file with the database thread
(and the real reactor, since a real thread delivers the results), and
against an unthreaded in-memory store whose Deferreds fire at once.
Durability, group commit and file handling are tested on files only.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from typing import Any, List

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

import txharp.proxy.store
from txharp.errors import EncodingError
from txharp.proxy.store import (
    INTERRUPTED,
    PRUNE_CHUNK,
    JobRecord,
    JobState,
    SQLiteJobStore,
    StoreError,
    UnknownJob,
)
from txharp.wire.dispatcher import CallRequest, QueueSpec, StatusReply
from txharp.wire.outcomes import CancelledReply, ErrorReply, ExceptionReply, ResultReply

#: Values that must come back exactly as they went in (compared by repr,
#: so that 1 and True, 0.0 and -0.0, key order and types all count).
JSON_VALUES: List[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**64,
    -(2**100),
    10**40 + 1,
    0.1,
    -0.0,
    5e-324,
    1.7976931348623157e308,
    3.141592653589793,
    "",
    "héllo wörld",
    "日本語 and emoji 🎉",
    "lone surrogate \ud800",
    'nul \x00 newline \n quote " backslash \\ tab \t',
    [],
    {},
    [1, [2, [3, {"a": [None, 2.5]}]]],
    {"z": 1, "a": {"deep": [1.5, "x", {"k": None}]}, "": "empty key", "ключ": [True]},
]


def job(job_id: str = "job-1", submit: int = 1000, **fields: Any) -> JobRecord:
    """A fresh job record with defaults for the fields a test does not care about."""
    values: dict = dict(host="web01", procedure="echo", arguments=["a", 1], submit=submit)
    values.update(fields)
    return JobRecord(job_id, **values)


class StoreBehaviourMixin:
    """What every :class:`SQLiteJobStore` mode must do; ``make_store`` picks the mode."""

    def make_store(self) -> SQLiteJobStore:
        raise NotImplementedError

    async def open_store(self) -> SQLiteJobStore:
        store = self.make_store()
        await store.open()
        self.addCleanup(store.close)
        return store

    async def test_create_and_get(self) -> None:
        store = await self.open_store()
        record = job(info={"ticket": 7}, queue={"name": "backups"}, arguments={"x": [1]})
        await store.create_job(record)
        self.assertEqual(await store.get_job("job-1"), record)
        self.assertIsNone(await store.get_job("no-such-job"))

    async def test_lifecycle(self) -> None:
        store = await self.open_store()
        await store.create_job(job())
        self.assertEqual((await store.get_job("job-1")).state, JobState.QUEUED)
        await store.mark_started("job-1", 1001)
        for number in range(3):
            await store.append_packet("job-1", number, {"n": number})
        running = await store.get_job("job-1")
        self.assertEqual((running.state, running.start, running.packet_count),
                         (JobState.RUNNING, 1001, 3))
        self.assertIs(await store.end_job("job-1", ResultReply([1, 2]), 1005), True)
        ended = await store.get_job("job-1")
        self.assertEqual((ended.state, ended.end, ended.outcome),
                         (JobState.ENDED, 1005, ResultReply([1, 2])))
        self.assertEqual(
            ended.status(),
            StatusReply("web01", "echo", ["a", 1], 1000, 1001, 1005, None),
        )

    async def test_from_call(self) -> None:
        store = await self.open_store()
        call = CallRequest("db1", "backup", {"full": True}, queue=QueueSpec({"q": 1}, 2),
                           info=[1, "x"])
        await store.create_job(JobRecord.from_call("j", call, 50))
        self.assertEqual(
            await store.get_job("j"),
            JobRecord("j", "db1", "backup", {"full": True}, 50, info=[1, "x"], queue={"q": 1}),
        )

    async def test_read_packets(self) -> None:
        store = await self.open_store()
        await store.create_job(job())
        await gatherResults([store.append_packet("job-1", n, f"p{n}") for n in range(10)])
        everything = [(n, f"p{n}") for n in range(10)]
        self.assertEqual(await store.read_packets("job-1"), everything)
        self.assertEqual(await store.read_packets("job-1", since=7), everything[7:])
        self.assertEqual(await store.read_packets("job-1", since=2, limit=3), everything[2:5])
        self.assertEqual(await store.read_packets("job-1", limit=0), [])
        self.assertEqual(await store.read_packets("job-1", since=10), [])
        self.assertEqual(await store.read_packets("no-such-job"), [])
        self.assertEqual(await store.packet_count("job-1"), 10)
        await self.assertFailure(store.packet_count("no-such-job"), UnknownJob)

    async def test_refused_writes(self) -> None:
        """Bad requests fail alone; requests around them in the same batch succeed."""
        store = await self.open_store()
        await store.create_job(job())
        results = await gatherResults(
            [
                store.append_packet("job-1", 0, "a"),
                store.append_packet("job-1", 5, "gap").addErrback(lambda f: f.value),
                store.append_packet("job-1", 0, "again").addErrback(lambda f: f.value),
                store.append_packet("nobody", 0, "x").addErrback(lambda f: f.value),
                store.create_job(job()).addErrback(lambda f: f.value),
                store.mark_started("nobody", 1).addErrback(lambda f: f.value),
                store.end_job("nobody", CancelledReply(), 1).addErrback(lambda f: f.value),
                store.append_packet("job-1", 1, "b"),
            ]
        )
        self.assertEqual(results[0], None)
        self.assertEqual(results[-1], None)
        self.assertIn("out of order", str(results[1]))
        self.assertIn("out of order", str(results[2]))
        self.assertIsInstance(results[3], UnknownJob)
        self.assertIn("already exists", str(results[4]))
        self.assertEqual([type(e) for e in results[5:7]], [UnknownJob, UnknownJob])
        self.assertEqual(await store.read_packets("job-1"), [(0, "a"), (1, "b")])

    async def test_end_is_final(self) -> None:
        store = await self.open_store()
        await store.create_job(job())
        self.assertIs(await store.end_job("job-1", CancelledReply(), 1002), True)
        self.assertIs(await store.end_job("job-1", ResultReply(1), 1003), False)
        await store.mark_started("job-1", 1004)
        error = await self.assertFailure(store.append_packet("job-1", 0, "late"), StoreError)
        self.assertIn("has ended", str(error))
        record = await store.get_job("job-1")
        self.assertEqual((record.start, record.end, record.outcome, record.packet_count),
                         (None, 1002, CancelledReply(), 0))

    async def test_outcomes_round_trip(self) -> None:
        store = await self.open_store()
        outcomes = [
            ResultReply(None),
            ResultReply({"a": [1]}),
            ExceptionReply("ValueError", "bad value"),
            ExceptionReply("KeyError", "k", {"class": "KeyError", "module": "builtins"}),
            ErrorReply("timeout", "took too long"),
            ErrorReply("unknown_host", "no such host", [1, 2]),
            CancelledReply(),
        ]
        for n, outcome in enumerate(outcomes):
            await store.create_job(job(f"j{n}"))
            await store.end_job(f"j{n}", outcome, 2000 + n)
        for n, outcome in enumerate(outcomes):
            self.assertEqual((await store.get_job(f"j{n}")).outcome, outcome)

    async def test_json_round_trip(self) -> None:
        store = await self.open_store()
        info = {str(n): value for n, value in enumerate(JSON_VALUES)}
        await store.create_job(job(arguments=JSON_VALUES, info=info, queue={"q": JSON_VALUES}))
        for number, value in enumerate(JSON_VALUES):
            await store.append_packet("job-1", number, value)
        await store.end_job("job-1", ExceptionReply("E", "\ud800 é", JSON_VALUES), 1001)
        record = await store.get_job("job-1")
        self.assertEqual(repr(record.arguments), repr(JSON_VALUES))
        self.assertEqual(repr(record.info), repr(info))
        self.assertEqual(repr(record.queue), repr({"q": JSON_VALUES}))
        self.assertEqual(repr(record.outcome), repr(ExceptionReply("E", "\ud800 é", JSON_VALUES)))
        self.assertEqual(repr(await store.read_packets("job-1")), repr(list(enumerate(JSON_VALUES))))

    async def test_values_json_cannot_carry(self) -> None:
        store = await self.open_store()
        await self.assertFailure(store.create_job(job(info=float("nan"))), EncodingError)
        await store.create_job(job())
        await self.assertFailure(store.append_packet("job-1", 0, {1, 2}), EncodingError)
        await self.assertFailure(
            store.end_job("job-1", ResultReply(float("inf")), 1), EncodingError
        )
        await store.append_packet("job-1", 0, "still works")
        self.assertEqual((await store.get_job("job-1")).packet_count, 1)

    async def test_list_jobs(self) -> None:
        store = await self.open_store()
        await store.create_job(job("queued", submit=1))
        await store.create_job(job("running", submit=2, start=2))
        await store.create_job(job("ended", submit=3))
        await store.end_job("ended", ResultReply(0), 4)

        async def ids(states: Any = None, limit: Any = None) -> List[str]:
            return [r.job_id for r in await store.list_jobs(states, limit)]

        self.assertEqual(await ids(), ["ended", "running", "queued"])
        self.assertEqual(await ids(limit=2), ["ended", "running"])
        self.assertEqual(await ids([JobState.QUEUED]), ["queued"])
        self.assertEqual(await ids([JobState.RUNNING]), ["running"])
        self.assertEqual(await ids([JobState.ENDED]), ["ended"])
        self.assertEqual(await ids([JobState.QUEUED, JobState.RUNNING]), ["running", "queued"])
        self.assertEqual(await ids([JobState.QUEUED, JobState.ENDED]), ["ended", "queued"])
        self.assertEqual(await ids([JobState.RUNNING, JobState.ENDED]), ["ended", "running"])
        self.assertEqual(await ids([]), [])

    async def test_prune(self) -> None:
        """Ended jobs older than the cut go with their packets; unfinished ones never do."""
        store = await self.open_store()
        await store.create_job(job("old-queued", submit=1))
        await store.create_job(job("old-running", submit=1, start=1))
        await store.append_packet("old-running", 0, "keep")
        for name, end in (("old-ended", 10), ("new-ended", 100)):
            await store.create_job(job(name, submit=1))
            await store.append_packet(name, 0, "data")
            await store.end_job(name, ResultReply(name), end)
        self.assertEqual(await store.prune(100), 1)
        self.assertIsNone(await store.get_job("old-ended"))
        self.assertEqual(await store.read_packets("old-ended"), [])
        remaining = {r.job_id for r in await store.list_jobs()}
        self.assertEqual(remaining, {"old-queued", "old-running", "new-ended"})
        self.assertEqual(await store.read_packets("old-running"), [(0, "keep")])
        self.assertEqual(await store.prune(10**12), 1)
        self.assertEqual(await store.prune(10**12), 0)
        self.assertEqual({r.job_id for r in await store.list_jobs()},
                         {"old-queued", "old-running"})

    async def test_prune_in_chunks(self) -> None:
        store = await self.open_store()
        count = 2 * PRUNE_CHUNK + 500
        await store.fill_synthetic(count, now=10_000)
        synthetic = await store.get_job("synthetic-0")
        self.assertEqual((synthetic.submit, synthetic.end, synthetic.outcome),
                         (10_000 - count, 10_000 - count + 1, ResultReply(True)))
        self.assertEqual(await store.prune(10_000 - 99), count - 100)
        self.assertEqual(len(await store.list_jobs()), 100)

    async def test_recover_interrupted(self) -> None:
        store = await self.open_store()
        await store.create_job(job("queued"))
        await store.create_job(job("running", start=1001))
        await store.create_job(job("ended"))
        await store.end_job("ended", ResultReply("done"), 1002)
        ids = await store.recover_interrupted(5000)
        self.assertEqual(sorted(ids), ["queued", "running"])
        queued, running, ended = [await store.get_job(i) for i in ("queued", "running", "ended")]
        self.assertEqual((queued.start, queued.end, queued.outcome), (None, 5000, INTERRUPTED))
        self.assertEqual((running.start, running.end, running.outcome), (1001, 5000, INTERRUPTED))
        self.assertEqual((ended.end, ended.outcome), (1002, ResultReply("done")))
        self.assertEqual(await store.recover_interrupted(6000), [])

    async def test_use_outside_open(self) -> None:
        store = self.make_store()
        await self.assertFailure(store.get_job("x"), StoreError)
        await store.open()
        await self.assertFailure(store.open(), StoreError)
        await store.close()
        await self.assertFailure(store.create_job(job()), StoreError)
        await store.close()


class ThreadedStoreTests(StoreBehaviourMixin, TestCase):
    """A file-backed store with its database thread."""

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "data", "jobs.db")

    def make_store(self, **options: Any) -> SQLiteJobStore:
        return SQLiteJobStore(self.path, **options)

    async def test_reopen_and_recover(self) -> None:
        """Records survive a close and reopen; unfinished jobs are recovered."""
        first = self.make_store()
        await first.open()
        await first.create_job(job("ended"))
        await first.append_packet("ended", 0, ["x"])
        await first.end_job("ended", ResultReply({"v": 1}), 1003)
        await first.create_job(job("running", start=1001))
        await first.append_packet("running", 0, "half")
        await first.create_job(job("queued"))
        before = await first.get_job("ended")
        await first.close()

        second = await self.open_store()
        self.assertEqual(sorted(await second.recover_interrupted(9000)), ["queued", "running"])
        self.assertEqual(await second.get_job("ended"), before)
        self.assertEqual(await second.read_packets("ended"), [(0, ["x"])])
        running = await second.get_job("running")
        self.assertEqual((running.start, running.end, running.outcome, running.packet_count),
                         (1001, 9000, INTERRUPTED, 1))

    async def test_group_commit(self) -> None:
        """1000 appends made at once share a few commits, and each one's Deferred
        fires only once its packet is visible to another connection."""
        store = await self.open_store()
        await store.create_job(job())
        reader = sqlite3.connect(self.path)
        self.addCleanup(reader.close)
        fired: List[int] = []

        def committed(_: None, number: int) -> None:
            (count,) = reader.execute(
                "SELECT count(*) FROM packets WHERE job_id = 'job-1' AND number = ?", (number,)
            ).fetchone()
            self.assertEqual(count, 1, f"packet {number} reported before its commit")
            fired.append(number)

        before = store.commits
        await gatherResults(
            [store.append_packet("job-1", n, n).addCallback(committed, n) for n in range(1000)]
        )
        commits = store.commits - before
        self.assertEqual(fired, list(range(1000)))
        self.assertTrue(1 <= commits <= 50, f"{commits} commits for 1000 appends")

    async def test_close_finishes_pending_work(self) -> None:
        store = self.make_store()
        await store.open()
        await store.create_job(job())
        pending = [store.append_packet("job-1", n, n) for n in range(200)]
        closed = store.close()
        self.assertEqual(await gatherResults(pending), [None] * 200)
        await closed
        self.assertFalse(os.path.exists(self.path + "-wal") and os.path.getsize(self.path + "-wal"))
        again = await self.open_store()
        self.assertEqual(await again.packet_count("job-1"), 200)

    async def test_survives_kill_9(self) -> None:
        """Every write a child process reported before SIGKILL is in the file."""
        child = r"""
import sys
from twisted.internet import defer, task
from txharp.proxy.store import JobRecord, SQLiteJobStore
from txharp.wire.outcomes import ResultReply

def report(_, line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

async def worker(store, name):
    for n in range(2000):
        job = f"{name}-{n}"
        writes = [store.create_job(JobRecord(job, "h", "p", [n], submit=n))
                  .addCallback(report, "job " + job)]
        writes += [store.append_packet(job, k, {"k": k, "job": job})
                   .addCallback(report, f"packet {job} {k}") for k in range(3)]
        await defer.gatherResults(writes)
        await store.end_job(job, ResultReply(job), n + 1).addCallback(report, "end " + job)

async def main(reactor):
    store = SQLiteJobStore(sys.argv[1])
    await store.open()
    await defer.gatherResults([defer.ensureDeferred(worker(store, f"w{w}")) for w in range(20)])

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""
        root = os.path.dirname(os.path.dirname(os.path.dirname(txharp.proxy.store.__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        process = subprocess.Popen(
            [sys.executable, "-c", child, self.path], stdout=subprocess.PIPE, env=env
        )
        # Read until 500 jobs have ended, then for a random while more, so
        # that the kill lands anywhere in the child's stream of commits.
        lines: List[str] = []
        ends = 0
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.decode())
            ends += line.startswith(b"end ")
            if ends == 500 and deadline is None:
                deadline = time.monotonic() + random.uniform(0.0, 0.05)
        process.send_signal(signal.SIGKILL)
        lines += [line.decode() for line in process.stdout]
        process.stdout.close()
        self.assertEqual(process.wait(), -signal.SIGKILL)
        self.assertGreaterEqual(ends, 500)

        store = await self.open_store()
        interrupted = set(await store.recover_interrupted(10**9))
        for line in lines:
            kind, job_id, *number = line.split()
            record = await store.get_job(job_id)
            self.assertIsNotNone(record, line)
            if kind == "packet":
                self.assertEqual(
                    await store.read_packets(job_id, since=int(number[0]), limit=1),
                    [(int(number[0]), {"k": int(number[0]), "job": job_id})],
                )
            elif kind == "end":
                self.assertNotIn(job_id, interrupted)
                self.assertEqual(record.outcome, ResultReply(job_id))

    async def test_unwritable_path(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path + ".file", "w"):
            pass
        for path in (self.path + ".file/sub/jobs.db", os.path.dirname(self.path)):
            store = SQLiteJobStore(path)
            error = await self.assertFailure(store.open(), StoreError)
            self.assertIn(path, str(error))
            await self.assertFailure(store.get_job("x"), StoreError)

    async def test_corrupt_file(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "wb") as f:
            f.write(b"this is not a database\n" * 1000)
        error = await self.assertFailure(self.make_store().open(), StoreError)
        self.assertIn("not a database", str(error))

    async def test_newer_schema_refused(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        connection = sqlite3.connect(self.path)
        connection.execute("PRAGMA user_version=99")
        connection.close()
        error = await self.assertFailure(self.make_store().open(), StoreError)
        self.assertIn("schema version 99", str(error))

    async def test_one_process_at_a_time(self) -> None:
        first = self.make_store()
        await first.open()
        error = await self.assertFailure(self.make_store().open(), StoreError)
        self.assertIn("in use", str(error))
        await first.close()
        await self.open_store()

    async def test_file_modes_and_options(self) -> None:
        """A new directory is private, and so is the file; ``full`` and ``check`` work."""
        store = self.make_store(durability="full", check=True)
        await store.open()
        self.addCleanup(store.close)
        await store.create_job(job())
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        await store.close()
        reopened = self.make_store(check=True)
        await reopened.open()
        self.addCleanup(reopened.close)
        self.assertEqual((await reopened.get_job("job-1")).job_id, "job-1")
        self.assertRaises(ValueError, SQLiteJobStore, self.path, durability="sometimes")


class InMemoryStoreTests(StoreBehaviourMixin, TestCase):
    """The unthreaded in-memory store: every Deferred has fired on return."""

    def make_store(self) -> SQLiteJobStore:
        return SQLiteJobStore(":memory:", threaded=False)

    def test_synchronous(self) -> None:
        store = self.make_store()
        self.successResultOf(store.open())
        self.successResultOf(store.create_job(job()))
        self.assertEqual(self.successResultOf(store.get_job("job-1")), job())
        self.successResultOf(store.close())

    def test_full_disk(self) -> None:
        """SQLite's "disk full" becomes a StoreError; the store recovers with space."""
        store = self.make_store()
        self.successResultOf(store.open())
        self.successResultOf(store.create_job(job()))
        # The page limit is the one way to fill SQLite's disk from a test.
        connection = store._db.connection
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        connection.execute(f"PRAGMA max_page_count={pages}")
        failure = self.failureResultOf(store.append_packet("job-1", 0, "x" * 20000), StoreError)
        self.assertIn("SQLITE_FULL", str(failure.value))
        self.assertEqual(self.successResultOf(store.packet_count("job-1")), 0)
        connection.execute("PRAGMA max_page_count=1000000")
        self.successResultOf(store.append_packet("job-1", 0, "x" * 20000))
        self.assertEqual(self.successResultOf(store.packet_count("job-1")), 1)
        self.successResultOf(store.close())

    def test_lone_statement_commits_by_itself(self) -> None:
        """A write of one statement alone in its batch runs without BEGIN and
        COMMIT (SQLite commits it by itself); refused, it leaves nothing and
        the next write is unaffected; a full disk still fails it cleanly."""
        store = self.make_store()
        self.successResultOf(store.open())
        statements: List[str] = []
        connection = store._db.connection
        connection.set_trace_callback(statements.append)
        before = store.commits
        self.successResultOf(store.create_job(job()))
        self.assertEqual([s.split()[0] for s in statements], ["INSERT"])
        self.assertEqual(store.commits, before + 1)
        self.assertFalse(connection.in_transaction)
        self.failureResultOf(store.create_job(job()), StoreError)  # the same ID again
        self.assertEqual(store.commits, before + 1)
        self.assertTrue(self.successResultOf(store.end_job("job-1", ResultReply(1), 5)))
        self.assertEqual(self.successResultOf(store.get_job("job-1")).outcome, ResultReply(1))
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        connection.execute(f"PRAGMA max_page_count={pages}")
        big = job("job-2", arguments=["x" * 20000])
        self.assertIn("SQLITE_FULL", str(self.failureResultOf(store.create_job(big), StoreError).value))
        self.assertIsNone(self.successResultOf(store.get_job("job-2")))
        self.assertFalse(connection.in_transaction)
        self.successResultOf(store.close())
