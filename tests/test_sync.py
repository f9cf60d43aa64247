"""Tests of txharp.sync, the original ``harp`` library's blocking API.

The facade blocks the calling thread while the reactor does the work, so
every test runs its blocking code in a worker thread (``deferToThread``)
while trial runs the reactor — exactly how a Twisted application would use
it — against in-test fakes of a dispatcher and a harpd on 127.0.0.1.
"""
from __future__ import annotations

import gc
import json
import shutil
import tempfile
import threading
import sys
import time
import warnings
from typing import Any, Callable, List

from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

import txharp.errors
import txharp.sync as harp
from txharp import caller
from txharp.demo import LoopbackSystem
from txharp.server import Result
from txharp.testing.certs import TestPKI
from tests.test_sync_fakes import PASSWORD, USER, FakeHarpd, FakesTestCase

#: The seed's synopsis (doc/manpages/client.rst), Python 3 prints; run as is.
SYNOPSIS_CALLER = """
rpc = harp.HarpCaller("localhost", PORT)

host = rpc.localhost(queue = {"foo": "bar"}, max_exec_time = 15)
# or: `host = rpc.host(host = "localhost", queue = ...)'
# or simply: `host = rpc.localhost', if no job configuration is needed
job = host.stream_infinity()
for msg in job.follow(since = 0):
    print(json.dumps(msg))

print(job.id())
print(job.result())

result = rpc("localhost").return_immediate("bar", "baz").get()

job_id = "3f22e0d4-c8ed-11e5-8d66-001e8c140268"
result = rpc.job(job_id).result()
if result is harp.CALL_NOT_FINISHED:
    print("still running")
elif result is harp.CALL_CANCELLED:
    print("cancelled")
"""

SYNOPSIS_HARPD = """
server = harp.HarpServer(
    host = "localhost",
    user = "username",
    password = "secret",
    port = PORT,
)
print(server.current_time())
for msg in server.logs_in_next_minutes(10):
    if isinstance(msg, harp.Result):
        # last value, nothing more will be returned
        print(json.dumps(msg.value))
    else:
        print("log message:", json.dumps(msg))
"""

#: The seed's overview (doc/overview.rst), its job IDs replaced by real ones.
OVERVIEW = """
rpc = harp.HarpCaller("localhost", PORT)

job = rpc.host("web01.example.net").run_foo()
print(job.id()) # output: 8ec71d6b-28d1-4ce2-aa23-f3ea7887beda
# job ID, being a string, can be stored in a database for later use

# recall a job ID and check job's status
job = rpc.job(job.id())
print("job {host}:{procedure}(...)".format(
    host = job.host(),
    procedure = job.procedure(),
))

if job.result() is harp.CALL_NOT_FINISHED:
    print("job still running")
else:
    print("job terminated")

print(job.start_time()) # unix timestamp
print(job.end_time())   # unix timestamp or `None' if still running

print(job.result(wait = True)) # NOTE: errors are returned, not raised

job = rpc.job(rpc.localhost.stream_infinity().id())
job.get()
# print partial results collected up until now
for msg in job.stream(since = 0):
    print(msg)

# print partial results collected from now on until the job terminates
for msg in job.follow(recent = 0):
    print(msg)

job = rpc.host("web01.example.net", max_exec_time = 60).run_foo()
job = rpc.host("web01.example.net", timeout = 60).run_foo()

hostname = "web01.example.net"
queue = { "host": hostname, "command": "foo" } # per-host queue
# run at most 3 jobs in this queue
job = rpc.host(hostname, queue = queue, concurrency = 3).run_foo()

print(job.submit_time())
print(job.start_time())  # `None' if the job still waits in the queue

job_info = { "ticket": 42 } # JSON-serializable data
job = rpc.host("web01.example.net", info = job_info).run_foo()

job = rpc.job(job.id())
print(json.dumps(job.info()))

server = harp.HarpServer(
    host = "localhost",
    user = "username",
    password = "secret",
    ca_file = CA_FILE,
    port = HARPD_PORT,
)

value = server.run_foo()
print(value)

for record in server.run_stream():
    if isinstance(record, harp.Result):
        end_result = record
        break
    else:
        print(record)
print(end_result.value)
"""


def run_example(source: str, **names: Any) -> List[str]:
    """Execute example code with ``harp`` = txharp.sync; return what it printed."""
    printed: List[str] = []

    def fake_print(*args: Any) -> None:
        printed.append(" ".join(str(arg) for arg in args))

    namespace = {"harp": harp, "json": json, "print": fake_print, **names}
    exec(compile(source, "<example>", "exec"), namespace)
    return printed


class _FakesTestCase(FakesTestCase):
    """Starts a fake dispatcher and a fake harpd for each test."""

    def rpc(self, **options: Any) -> harp.HarpCaller:
        return harp.HarpCaller("127.0.0.1", self.port, **options)

    def server(self, **options: Any) -> harp.HarpServer:
        options.setdefault("ca_file", self.harpd.pki.ca_file)
        return harp.HarpServer("localhost", USER, PASSWORD, self.harpd_port, **options)

    def in_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """Run blocking code the way an application would: off the reactor thread."""
        return threads.deferToThread(function, *args, **kwargs)

    def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """In a worker thread: wait until ``condition()`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("condition not reached in time")
            time.sleep(0.01)


class SeedExamplesTests(_FakesTestCase):
    """end-to-end over loopback: the seed's synopsis and overview run unchanged."""

    async def test_synopsis_dispatcher(self) -> None:
        printed = await self.in_thread(run_example, SYNOPSIS_CALLER, PORT=self.port)
        job_id = printed[3]
        self.assertEqual(
            printed,
            ['{"line": 0}', '{"line": 1}', '{"line": 2}', job_id, "done"],
        )
        call = self.dispatcher.requests[0]
        self.assertEqual(call["queue"], {"name": {"foo": "bar"}})
        self.assertEqual(call["max_exec_time"], 15)
        returned = [job for job in self.dispatcher.jobs.values() if job.procedure == "return_immediate"]
        self.assertEqual(returned[0].arguments, ["bar", "baz"])
        # The job's end came with the stream: result() asked nothing more.
        self.assertNotIn({"harpcaller": 1, "get_result": job_id, "wait": False}, self.dispatcher.requests)

    async def test_synopsis_harpd(self) -> None:
        printed = await self.in_thread(run_example, SYNOPSIS_HARPD, PORT=self.harpd_port)
        self.assertEqual(
            printed,
            [
                "1700000000",
                'log message: "log line 0"',
                'log message: "log line 1"',
                'log message: "log line 2"',
                '{"lines": 3}',
            ],
        )
        self.assertEqual(self.harpd.requests[1]["arguments"], [10])

    async def test_overview(self) -> None:
        printed = await self.in_thread(
            run_example,
            OVERVIEW,
            PORT=self.port,
            HARPD_PORT=self.harpd_port,
            CA_FILE=self.harpd.pki.ca_file,
        )
        submitted = printed[0]
        self.assertIn(submitted, self.dispatcher.jobs)
        self.assertEqual(printed[1], "job web01.example.net:run_foo(...)")
        self.assertEqual(printed[2], "job still running")
        self.assertTrue(printed[3].isdigit())  # start time
        self.assertEqual(printed[4], "None")  # end time: still running
        self.assertEqual(printed[5], "foo done")
        self.assertEqual(printed[6:9], ["{'line': 0}", "{'line': 1}", "{'line': 2}"])
        # follow(recent=0) of an ended job: no packets, just the end.
        self.assertTrue(printed[9].isdigit())  # submit time
        self.assertEqual(printed[10:], ["None", '{"ticket": 42}', "1700000000", "log line 0", "log line 1", "log line 2", "{'lines': 3}"])
        calls = [r for r in self.dispatcher.requests if r.get("procedure") == "run_foo"]
        self.assertEqual(calls[1]["max_exec_time"], 60)
        self.assertEqual(calls[2]["timeout"], 60)
        self.assertEqual(calls[3]["queue"], {"name": {"host": "web01.example.net", "command": "foo"}, "concurrency": 3})
        self.assertEqual(calls[4]["info"], {"ticket": 42})


class DispatcherTests(_FakesTestCase):
    """end-to-end over loopback: HarpCaller, RemoteCall and the stream iterators."""

    def test_same_classes_and_markers(self) -> None:
        """Exceptions and markers are txharp's own objects, not copies."""
        for name in ("HarpException", "CommunicationError", "CancelledException", "RemoteException", "RemoteError", "HarpTimeout"):
            self.assertIs(getattr(harp, name), getattr(txharp.errors, name))
        self.assertIs(harp.CALL_NOT_FINISHED, caller.CALL_NOT_FINISHED)
        self.assertIs(harp.CALL_CANCELLED, caller.CALL_CANCELLED)
        self.assertIs(harp.Result, Result)

    async def test_result_returns_and_get_raises(self) -> None:
        def body() -> None:
            rpc = self.rpc()
            failing = rpc.web01.fail()
            error = failing.result(wait=True)
            self.assertIsInstance(error, harp.RemoteException)
            self.assertEqual((error.type, error.message, error.data), ("ValueError", "bad value", {"class": "ValueError"}))
            with self.assertRaises(harp.RemoteException):
                failing.get()
            unknown = rpc.nowhere.return_immediate().result(wait=True)
            self.assertIsInstance(unknown, harp.RemoteError)
            self.assertEqual(unknown.type, "unknown_host")
            with self.assertRaises(harp.RemoteError):
                rpc.job("no-such-job").get()
            self.assertEqual(rpc.web01.return_immediate(a=1).get(), {"a": 1})

        await self.in_thread(body)

    async def test_not_finished_is_not_cached_and_cancel(self) -> None:
        def body() -> None:
            job = self.rpc().web01.forever()
            self.assertIs(job.result(), harp.CALL_NOT_FINISHED)
            self.assertIs(job.get(wait=False), harp.CALL_NOT_FINISHED)
            self.assertIs(job.cancel(), True)
            self.assertIs(job.cancel(), False)
            self.assertIs(job.result(), harp.CALL_CANCELLED)
            with self.assertRaises(harp.CancelledException):
                job.get()
            self.assertIsNotNone(job.end_time())

        await self.in_thread(body)

    async def test_metadata(self) -> None:
        def body() -> None:
            rpc = self.rpc()
            job = rpc.host("db1", info={"who": "test"}).return_immediate(1, "two")
            self.assertEqual(job.host(), "db1")
            self.assertEqual(job.procedure(), "return_immediate")
            self.assertEqual(job.args(), [1, "two"])
            self.assertEqual(job.info(), {"who": "test"})
            self.assertIsInstance(job.submit_time(), int)
            self.assertEqual(job.start_time(), job.submit_time())
            self.assertIsInstance(job.end_time(), int)
            self.assertEqual(rpc.job(job.id()).status().args, [1, "two"])
            queued = rpc.host("db1", queue={"q": 1}).forever()
            self.assertIsNone(rpc.host("db1", queue={"q": 1}).forever().start_time())
            queued.cancel()

        await self.in_thread(body)

    async def test_iterators(self) -> None:
        """Iterators have a real __next__ (and harp's next()), numbered pairs and all()."""

        def body() -> None:
            job = self.rpc().web01.stream_infinity()
            follower = job.follow(since=0, numbered=True)
            self.assertIs(iter(follower), follower)
            self.assertIsInstance(follower, harp.RemoteCall.StreamIterator)
            self.assertEqual(next(follower), (0, {"line": 0}))
            self.assertEqual(follower.next(), (1, {"line": 1}))
            self.assertEqual(follower.all(), [(2, {"line": 2})])
            with self.assertRaises(StopIteration):
                next(follower)
            self.assertEqual(job.stream().all(), [{"line": 0}, {"line": 1}, {"line": 2}])
            self.assertEqual(list(job.stream(since=1, numbered=True)), [(1, {"line": 1}), (2, {"line": 2})])
            self.assertEqual(job.follow(recent=1).all(), [{"line": 2}])
            with self.assertRaises(harp.HarpException):
                job.follow(since=1, recent=1)

        await self.in_thread(body)

    async def test_stream_of_running_job(self) -> None:
        def body() -> None:
            job = self.rpc().web01.forever()
            self.assertEqual(job.stream().all(), [])
            self.assertIs(job.result(), harp.CALL_NOT_FINISHED)
            job.cancel()

        await self.in_thread(body)

    async def test_big_stream(self) -> None:
        """More packets than the stream buffers before pausing the connection."""

        def body() -> List[Any]:
            job = self.rpc().web01.many(1000)
            return job.follow(since=0).all()

        self.assertEqual(await self.in_thread(body), list(range(1000)))

    async def test_mixed_arguments(self) -> None:
        def body() -> None:
            with self.assertRaises(harp.HarpException):
                self.rpc().web01.return_immediate(1, a=2)

        await self.in_thread(body)
        self.assertEqual(self.dispatcher.requests, [])

    async def test_eight_threads(self) -> None:
        """The facade serves many threads at once, each with its own answers."""
        rpc = self.rpc()
        started = threading.Barrier(8)

        def body(n: int) -> Any:
            started.wait(5)
            job = rpc.host(f"host{n}").stream_infinity()
            packets = job.follow(since=0).all()
            return (n, rpc.job(job.id()).host(), packets, rpc.web01.return_immediate(n).get())

        results = await Deferred.fromCoroutine(self._gather([self.in_thread(body, n) for n in range(8)]))
        for n, (got_n, host, packets, value) in enumerate(results):
            self.assertEqual((got_n, host, packets, value), (n, f"host{n}", [{"line": i} for i in range(3)], [n]))

    async def _gather(self, deferreds: List["Deferred[Any]"]) -> List[Any]:
        return [await d for d in deferreds]

    async def test_raw_request_and_connection(self) -> None:
        def body() -> None:
            rpc = self.rpc()
            reply = rpc.request({"harpcaller": 1, "host": "h", "procedure": "return_immediate", "arguments": [7]})
            with rpc.connect() as conn:
                conn.send({"harpcaller": 1, "get_result": reply["job_id"], "wait": True})
                self.assertEqual(conn.receive(), {"result": [7]})
                self.assertIsNone(conn.receive())
            with self.assertRaises(harp.CommunicationError):
                conn.receive()

        await self.in_thread(body)


class ReactorThreadTests(_FakesTestCase):
    """end-to-end over loopback: blocking in the reactor thread is refused, not a deadlock."""

    async def test_reactor_thread_refused(self) -> None:
        rpc = self.rpc()

        def in_reactor() -> BaseException:
            with self.assertRaises(harp.ReactorThreadError) as caught:
                rpc.job("some-job").result()
            return caught.exception

        error = await task.deferLater(reactor, 0, in_reactor)
        self.assertIsInstance(error, RuntimeError)
        self.assertIsInstance(error, harp.HarpException)
        self.assertIn("txharp.caller", str(error))
        self.assertEqual(self.dispatcher.requests, [])


class ShutdownTests(_FakesTestCase):
    """end-to-end over loopback: the reactor's shutdown event fails pending calls only."""

    async def test_shutdown_event(self) -> None:
        """trial --jobs fires "shutdown" after every test and goes on using the
        reactor: calls waiting then fail, later calls still work.

        The event cannot be fired inside a running test (it stops the
        reactor), so this runs what txharp.sync registers for it.
        """

        def waiting() -> str:
            with self.assertRaises(harp.CommunicationError) as caught:
                self.rpc().web01.forever().get()
            return str(caught.exception)

        pending = self.in_thread(waiting)
        while not any(job.waiters for job in self.dispatcher.jobs.values()):
            await task.deferLater(reactor, 0.01, lambda: None)
        harp._reactor_stopping()
        self.assertIn("the reactor is shutting down", await pending)
        while self.dispatcher.connections:  # the waiting connection was closed
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(await self.in_thread(lambda: self.rpc().web01.return_immediate(1).get()), [1])


class TimeoutTests(_FakesTestCase):
    """end-to-end over loopback: bounds on blocking calls, and the connections they close."""

    def assertNoConnections(self) -> None:
        self.until(lambda: not self.dispatcher.connections)

    async def test_prompt_request_timeout(self) -> None:
        self.dispatcher.silent = True

        def body() -> float:
            started = time.monotonic()
            with self.assertRaises(harp.HarpTimeout):
                self.rpc(timeout=0.2).job("j").result()
            elapsed = time.monotonic() - started
            self.assertNoConnections()
            return elapsed

        elapsed = await self.in_thread(body)
        self.assertLess(elapsed, 2)

    async def test_wait_timeouts(self) -> None:
        def body() -> None:
            rpc = self.rpc(wait_timeout=0.2)
            job = rpc.web01.forever()
            with self.assertRaises(harp.HarpTimeout):
                job.get()
            self.assertNoConnections()
            with self.assertRaises(harp.CommunicationError):  # HarpTimeout is one
                self.rpc().job(job.id()).result(wait=True, timeout=0.2)
            self.assertNoConnections()
            self.assertIs(job.result(), harp.CALL_NOT_FINISHED)  # nothing else broken
            job.cancel()

        await self.in_thread(body)

    async def test_follow_item_timeout_and_close(self) -> None:
        def body() -> None:
            job = self.rpc().web01.forever()
            follower = job.follow(timeout=0.2)
            with self.assertRaises(harp.HarpTimeout):
                next(follower)
            self.assertNoConnections()
            with self.assertRaises(StopIteration):
                next(follower)
            with job.follow() as follower:
                self.until(lambda: len(self.dispatcher.connections) == 1)
            self.assertNoConnections()
            follower = job.follow()
            self.until(lambda: len(self.dispatcher.connections) == 1)
            del follower  # an abandoned iterator closes its connection
            gc.collect()
            self.assertNoConnections()
            job.cancel()

        await self.in_thread(body)

    async def test_harpd_timeout(self) -> None:
        def body() -> None:
            with self.assertRaises(harp.HarpTimeout):
                self.server(timeout=0.2).hang()
            self.until(lambda: not self.harpd.connections)

        await self.in_thread(body)


class HarpServerTests(_FakesTestCase):
    """end-to-end over loopback: HarpServer against a TLS harpd."""

    async def test_values_and_failures(self) -> None:
        def body() -> None:
            server = self.server()
            self.assertEqual(server.echo(1, [2]), [1, [2]])
            self.assertEqual(server.echo(a=1), {"a": 1})
            with self.assertRaises(harp.RemoteException) as caught:
                server.explode()
            self.assertEqual(caught.exception.type, "RuntimeError")
            with self.assertRaises(harp.RemoteError) as refused:
                harp.HarpServer("localhost", USER, "wrong", self.harpd_port, ca_file=self.harpd.pki.ca_file).echo()
            self.assertEqual(refused.exception.type, "auth_error")
            with self.assertRaises(harp.HarpException):
                server.echo(1, a=2)

        await self.in_thread(body)

    async def test_stream(self) -> None:
        def body() -> None:
            stream = self.server().logs_in_next_minutes(10)
            self.assertIsInstance(stream, harp.HarpStreamIterator)
            self.assertEqual(next(stream), "log line 0")
            self.assertEqual(stream.all(), ["log line 1", "log line 2", Result({"lines": 3})])
            broken = self.server().broken_stream()
            self.assertEqual(next(broken), "first")
            with self.assertRaises(harp.RemoteError) as caught:
                next(broken)
            self.assertEqual(caught.exception.type, "timeout")
            with self.assertRaises(StopIteration):
                next(broken)

        await self.in_thread(body)

    async def test_untrusted_certificate(self) -> None:
        other = TestPKI(self.mktemp(), name="other")  # its CA does not sign our harpd

        def body() -> None:
            with self.assertRaises(txharp.errors.TLSError):
                self.server(ca_file=other.ca_file).echo()
            with self.assertRaises(txharp.errors.TLSError):
                harp.JSONSSLConnection("localhost", self.harpd_port, other.ca_file)

        await self.in_thread(body)

    async def test_json_ssl_connection(self) -> None:
        def body() -> None:
            request = {"harp": 1, "procedure": "echo", "arguments": ["x"], "auth": {"user": USER, "password": PASSWORD}}
            with harp.JSONSSLConnection("localhost", self.harpd_port, self.harpd.pki.ca_file) as conn:
                conn.send(request)
                self.assertEqual(conn.receive(), {"harp": 1, "stream_result": False})
                self.assertEqual(conn.receive(), {"result": ["x"]})
                self.assertIsNone(conn.receive())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                harp.JSONSSLConnection("127.0.0.1", self.harpd_port).close()
            self.assertIn("not verified", str(caught[0].message))

        await self.in_thread(body)


class LegacyTLSTests(TestCase):
    """end-to-end over loopback: the synchronous clients and a TLS 1.0-only harpd."""

    async def test_tls_1_0_only_by_opt_in(self) -> None:
        from tests.daemon_support import Tls10OnlyServer

        legacy = FakeHarpd()
        port = await legacy.start(Tls10OnlyServer(legacy.pki.chain_file, legacy.pki.key_file))
        self.addCleanup(lambda: Deferred.fromCoroutine(legacy.stop()))
        request = {"harp": 1, "procedure": "echo", "arguments": ["x"], "auth": {"user": USER, "password": PASSWORD}}

        def body() -> None:
            with self.assertRaises(txharp.errors.TLSError):
                harp.JSONSSLConnection("localhost", port, legacy.pki.ca_file)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with harp.JSONSSLConnection("localhost", port, legacy.pki.ca_file, tls_minimum="1.0") as conn:
                    conn.send(request)
                    self.assertEqual(conn.receive(), {"harp": 1, "stream_result": False})
                    self.assertEqual(conn.receive(), {"result": ["x"]})
                server = harp.HarpServer("localhost", USER, PASSWORD, port, ca_file=legacy.pki.ca_file,
                                         tls_minimum="1.0")
                self.assertEqual(server.echo(1, [2]), [1, [2]])
            if sys.version_info >= (3, 10):  # Python's own word on the opt-in, left to the user
                self.assertIn("TLSv1 is deprecated", str(caught[0].message))

        await threads.deferToThread(body)


class RealSystemTests(TestCase):
    """end-to-end over loopback: the seed's examples through a real ``twistd harp-proxy``
    and ``twistd harpd`` (txharp.demo.LoopbackSystem, started for each test)."""

    async def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="txharp-test-sync-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        # The synopsis' own credentials, so that it runs unchanged.
        self.system = LoopbackSystem(directory, ("localhost", "web01.example.net"), "username", "secret")
        self.addCleanup(self.stop)
        await threads.deferToThread(self.system.start)

    def stop(self) -> None:
        stopped = self.system.stop()
        self.assertTrue(all(clean for _, clean, _ in stopped), stopped)

    def in_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        return threads.deferToThread(function, *args, **kwargs)

    async def test_seed_examples(self) -> None:
        system = self.system
        printed = await self.in_thread(run_example, SYNOPSIS_CALLER, PORT=system.proxy_port)
        self.assertEqual(printed, [json.dumps({"tick": i}) for i in range(5)] + [printed[5], "stream done"])
        printed = await self.in_thread(run_example, SYNOPSIS_HARPD, PORT=system.harpd_port)
        self.assertLess(abs(int(printed[0]) - time.time()), 60)
        self.assertEqual(printed[1:], [f'log message: "log line {i}"' for i in range(3)] + ['{"lines": 3}'])

        printed = await self.in_thread(
            run_example, OVERVIEW, PORT=system.proxy_port, HARPD_PORT=system.harpd_port, CA_FILE=system.ca_file
        )
        self.assertEqual(printed[1:3], ["job web01.example.net:run_foo(...)", "job still running"])
        self.assertEqual(printed[4:6], ["None", "foo done"])
        self.assertEqual(printed[6:11], [str({"tick": i}) for i in range(5)])
        self.assertTrue(printed[11].isdigit())  # submit time; nothing from follow(recent=0) of an ended job
        self.assertEqual(
            printed[13:],
            ['{"ticket": 42}', "foo done", "log line 0", "log line 1", "log line 2", "{'lines': 3}"],
        )

    async def test_eight_threads(self) -> None:
        rpc = harp.HarpCaller("127.0.0.1", self.system.proxy_port, timeout=10, wait_timeout=30)

        def body(n: int) -> Any:
            job = rpc.localhost.return_immediate(n, str(n))
            return job.get(), rpc.job(job.id()).args()

        results = [await d for d in [self.in_thread(body, n) for n in range(8)]]
        self.assertEqual(results, [([n, str(n)], [n, str(n)]) for n in range(8)])
