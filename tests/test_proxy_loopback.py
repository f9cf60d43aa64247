"""End-to-end over loopback: txharp's dispatcher client → harp-proxy → a TLS fake harpd.

Real reactor, 127.0.0.1 only.  The fake harpd is a few scripted procedures
on :class:`~txharp.lines.JSONLinesProtocol` behind TLS, answering the way
the original harpd does (sorted keys, spaces).  The last test runs
``twistd -n harp-proxy`` as a subprocess, kills it with SIGKILL in the
middle of a job, restarts it and checks that every earlier job answers
byte for byte as before and that the interrupted one is ``missing_result``.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.loopback import RawClient, free_port, raw_request
from txharp.caller import CALL_NOT_FINISHED, HarpCaller
from txharp.errors import CancelledException, RemoteError, RemoteException
from txharp.lines import JSONLinesProtocol
from txharp.proxy.admin import AdminError, admin_call
from txharp.proxy.service import ProxyConfig, ProxyService
from txharp.testing.certs import TestPKI, make_self_signed_cert, write_pem
from txharp.tls import server_tls_options
from txharp.wire.daemon import DaemonRequest, DaemonRequestError, parse_daemon_request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER, PASSWORD = "alice", "s3cret"


def harpd_line(value: Any) -> bytes:
    """A line the way the original harpd writes it."""
    return json.dumps(value, sort_keys=True).encode() + b"\n"


def sleep(seconds: float) -> "Deferred[None]":
    return deferLater(reactor, seconds, lambda: None)


class FakeHarpd(JSONLinesProtocol):
    """One call: scripted procedures, the original harpd's replies."""

    def __init__(self, server: "FakeHarpdServer") -> None:
        super().__init__()
        self.server = server
        self.running: Optional[Deferred[None]] = None

    def messageReceived(self, value: Any) -> None:
        if self.running is not None:
            return
        try:
            request = parse_daemon_request(value)
        except DaemonRequestError as error:
            self.finish(error.reply().to_daemon_json())
            return
        self.server.requests.append(request)
        if (request.user, request.password) != (USER, PASSWORD):
            self.finish({"harp": 1, "error": {"type": "auth_error", "message": "unknown user or wrong password"}})
            return
        self.running = ensureDeferred(self.run(request))
        self.running.addErrback(lambda failure: None)

    async def run(self, request: DaemonRequest) -> None:
        name, args = request.procedure, request.arguments
        if name == "silent":
            return
        if name == "garbage":
            self.transport.write(b"this is not json\n")
            return
        if name == "nope":
            self.finish({"harp": 1, "error": {"type": "no_such_procedure", "message": "no such procedure",
                                              "data": {"procedure": name}}})
            return
        streaming = name in ("stream_n", "stream_fail", "blobs")
        self.transport.write(harpd_line({"harp": 1, "stream_result": streaming}))
        if name == "echo":
            self.finish({"result": args})
        elif name == "fail":
            self.finish({"exception": {"type": "TestFailure", "message": "intentional failure",
                                       "data": {"class": "TestFailure", "module": "harpd.__procedures__"}}})
        elif name == "sleep":
            await sleep(args[0])
            self.finish({"result": True})
        elif name == "stall":
            return
        elif name == "blobs":
            count, size = args
            for i in range(count):
                self.transport.write(harpd_line({"stream": {"i": i, "blob": "x" * size}}))
            self.finish({"result": "done"})
        elif name in ("stream_n", "stream_fail"):
            count, delay = args[0], (args[1] if len(args) > 1 else 0)
            for i in range(count):
                self.transport.write(harpd_line({"stream": {"i": i}}))
                if delay:
                    await sleep(delay)
            if name == "stream_fail":
                self.finish({"exception": {"type": "RuntimeError", "message": f"stream broke after {count} packets"}})
            else:
                self.finish({"result": "done"})

    def finish(self, value: Any) -> None:
        self.transport.write(harpd_line(value))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.server.closed += 1
        if self.running is not None:
            self.running.cancel()


class FakeHarpdServer(Factory):
    def __init__(self) -> None:
        self.requests: List[DaemonRequest] = []
        self.closed = 0

    def buildProtocol(self, addr: Any) -> FakeHarpd:
        return FakeHarpd(self)


async def wait_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` (a function, possibly async) every 50 ms."""
    for _ in range(int(timeout / 0.05)):
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Environment:
    """TLS material, three fake daemons and a hosts file, in ``directory``."""

    def __init__(self, directory: str) -> None:
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.pki = TestPKI(directory)
        self.rogue = TestPKI(directory, name="rogue")
        pinned = make_self_signed_cert(ip_addresses=["127.0.0.1"])
        self.pinned_cert = write_pem(os.path.join(directory, "pinned-cert.pem"), pinned)
        self.pinned_key = write_pem(os.path.join(directory, "pinned-key.pem"), pinned.private_key)
        self.known_certs = self.pinned_cert
        self.harpd = FakeHarpdServer()
        self.ports: Dict[str, Any] = {}

    async def start(self) -> None:
        for name, cert, key in [
            ("h1", self.pki.chain_file, self.pki.key_file),
            ("pinned", self.pinned_cert, self.pinned_key),
            ("rogue", self.rogue.chain_file, self.rogue.key_file),
        ]:
            endpoint = SSL4ServerEndpoint(reactor, 0, server_tls_options(cert, key), interface="127.0.0.1")
            self.ports[name] = await endpoint.listen(self.harpd)
        port = {name: p.getHost().port for name, p in self.ports.items()}
        hosts = [
            ("h1", port["h1"], PASSWORD), ("pinned", port["pinned"], PASSWORD),
            ("rogue", port["rogue"], PASSWORD), ("badauth", port["h1"], "wrong"),
            ("down", free_port(), PASSWORD),
        ]
        self.hosts_file = os.path.join(self.directory, "hosts.json")
        with open(self.hosts_file, "w") as f:
            for name, number, password in hosts:
                f.write(json.dumps({"hostname": name, "address": "127.0.0.1", "port": number,
                                    "credentials": {"user": USER, "password": password}}) + "\n")

    async def stop(self) -> None:
        for port in self.ports.values():
            await port.stopListening()


class LoopbackTests(TestCase):
    """The proxy in-process, on the real reactor; the client is txharp's HarpCaller."""

    timeout = 30

    async def _setUp(self) -> None:
        # Cleanups run last registered first (and, in trial, before tearDown).
        # AF_UNIX paths are short (108 bytes): not under trial's deep temp directory.
        socket_dir = tempfile.mkdtemp(prefix="harp-proxy-")
        self.addCleanup(shutil.rmtree, socket_dir, True)
        self.env = Environment(self.mktemp())
        await self.env.start()
        self.addCleanup(lambda: ensureDeferred(self.env.stop()))
        self.admin_path = os.path.join(socket_dir, "admin.sock")
        config = ProxyConfig(
            listen=["tcp:0:interface=127.0.0.1"],
            hosts_file=self.env.hosts_file,
            data_dir=os.path.join(self.env.directory, "data"),
            ca_file=self.env.pki.ca_file,
            known_certs=self.env.known_certs,
            admin_socket=self.admin_path,
        )
        self.proxy = ProxyService(config, reactor)
        self.proxy.startService()
        self.addCleanup(lambda: self.proxy.stopService())
        self.assertTrue(await self.proxy.ready)
        self.port = self.proxy.ports[0].getHost().port
        self.rpc = HarpCaller("127.0.0.1", self.port, reactor=reactor, timeout=10)

    def setUp(self) -> "Deferred[None]":
        return ensureDeferred(self._setUp())

    async def error_of(self, job: Any) -> Tuple[str, str, Any]:
        error = await job.result(wait=True)
        self.assertIsInstance(error, RemoteError)
        return error.type, error.message, error.data

    async def test_value(self) -> None:
        job = await self.rpc.h1.echo(1, "two", {"three": 3})
        self.assertEqual(await job.get(), [1, "two", {"three": 3}])
        self.assertEqual(self.env.harpd.requests[-1], DaemonRequest("echo", [1, "two", {"three": 3}], USER, PASSWORD))
        self.assertEqual(await job.host(), "h1")
        self.assertIsInstance(await job.end_time(), int)

    async def test_stream_with_follower(self) -> None:
        job = await self.rpc.h1.stream_n(6, 0.05)
        early = job.follow(since=0, numbered=True)
        await sleep(0.12)
        late = job.follow(numbered=True)
        self.assertEqual(await early.all(), [(i, {"i": i}) for i in range(6)])
        self.assertEqual(early.result(), "done")
        packets = await late.all()
        self.assertTrue(packets and packets[-1] == (5, {"i": 5}) and packets[0][0] > 0, packets)
        self.assertEqual(await job.stream(recent=2).all(), [{"i": 4}, {"i": 5}])

    async def test_exception(self) -> None:
        job = await self.rpc.h1.fail()
        with self.assertRaises(RemoteException) as caught:
            await job.get()
        self.assertEqual((caught.exception.type, caught.exception.message),
                         ("TestFailure", "intentional failure"))

    async def test_harpd_errors_relayed(self) -> None:
        self.assertEqual(await self.error_of(await self.rpc.h1.nope()),
                         ("no_such_procedure", "no such procedure", {"procedure": "nope"}))
        self.assertEqual(await self.error_of(await self.rpc.badauth.echo()),
                         ("auth_error", "unknown user or wrong password", None))

    async def test_refused_and_unknown_host(self) -> None:
        kind, message, data = await self.error_of(await self.rpc.down.echo())
        self.assertEqual((kind, message), ("econnrefused", "connection refused"))
        self.assertEqual(await self.error_of(await self.rpc.nohost.echo()),
                         ("unknown_host", "host unknown", {"host": "nohost"}))

    async def test_bad_protocol(self) -> None:
        kind, message, data = await self.error_of(await self.rpc.h1.garbage())
        self.assertEqual((kind, message), ("bad_protocol", "Harp protocol error"))

    async def test_tls_rules(self) -> None:
        """CA-valid: accepted; pinned (self-signed): accepted; neither: tls_error."""
        self.assertEqual(await (await self.rpc.h1.echo(1)).get(), [1])
        self.assertEqual(await (await self.rpc.pinned.echo(2)).get(), [2])
        kind, message, data = await self.error_of(await self.rpc.rogue.echo(3))
        self.assertEqual((kind, message), ("tls_error", "TLS handshake failed"))
        self.assertIn("rejected", data["reason"])
        self.assertEqual([r.arguments for r in self.env.harpd.requests], [[1], [2]])

    async def test_timeouts(self) -> None:
        silent = await self.rpc.host("h1", timeout=0.3).silent()
        stall = await self.rpc.host("h1", timeout=0.3).stall()
        long = await self.rpc.host("h1", timeout=5, max_exec_time=0.5).stream_n(50, 0.05)
        self.assertEqual((await self.error_of(silent))[:2], ("timeout", "request timed out"))
        self.assertEqual((await self.error_of(stall))[:2], ("timeout", "reading result timed out"))
        self.assertEqual((await self.error_of(long))[:2], ("timeout", "maximum execution time exceeded"))
        packets = await long.stream().all()
        self.assertTrue(3 <= len(packets) < 50, packets)

    async def test_cancel_running(self) -> None:
        job = await self.rpc.h1.sleep(30)
        await wait_until(lambda: self.env.harpd.requests, what="the call to reach harpd")
        closed = self.env.harpd.closed
        self.assertEqual(await job.result(), CALL_NOT_FINISHED)
        self.assertTrue(await job.cancel())
        with self.assertRaises(CancelledException):
            await job.get()
        await wait_until(lambda: self.env.harpd.closed > closed, what="harpd to see the connection close")
        self.assertFalse(await job.cancel())

    async def test_queue(self) -> None:
        slow = await self.rpc.host("h1", queue={"q": 1}).sleep(0.3)
        queued = await self.rpc.host("h1", queue={"q": 1}).echo(1)
        self.assertIsNone(await queued.start_time())
        self.assertEqual(await queued.get(), [1])
        self.assertTrue(await slow.get())

    async def test_slow_follower_catches_up_from_store(self) -> None:
        """A follower that stops reading holds up neither the job nor itself for good."""
        job = await self.rpc.h1.blobs(2000, 4000)
        slow = RawClient(json.dumps({"harpcaller": 1, "follow_stream": job.id(), "since": 0}).encode() + b"\n")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), slow)
        slow.transport.pauseProducing()
        self.assertEqual(await job.get(), "done")
        self.assertLess(slow.received, 8_000_000)  # it really stopped reading
        slow.transport.resumeProducing()
        lines = (await slow.done).splitlines()
        self.assertEqual(json.loads(lines[-1]), {"result": "done"})
        self.assertEqual([json.loads(line)["packet"] for line in lines[:-1]], list(range(2000)))

    async def test_clean_shutdown(self) -> None:
        """Stopping the proxy ends live jobs as ``shutdown``, closing their daemon connections."""
        running = await self.rpc.h1.sleep(30)
        queued = await self.rpc.host("h1", queue={"q": 1}).sleep(30)
        waiting = await self.rpc.host("h1", queue={"q": 1}).sleep(30)
        await wait_until(lambda: len(self.env.harpd.requests) == 2, what="the calls to reach harpd")
        await self.proxy.stopService()
        await wait_until(lambda: self.env.harpd.closed == 2, what="harpd to see both connections close")
        self.proxy = ProxyService(self.proxy.config, reactor)
        self.proxy.startService()
        self.assertTrue(await self.proxy.ready)
        rpc = HarpCaller("127.0.0.1", self.proxy.ports[0].getHost().port, reactor=reactor, timeout=10)
        for job in (running, queued, waiting):
            self.assertEqual(await self.error_of(rpc.job(job.id())), ("shutdown", "dispatcher shut down", None))
        self.assertIsNone(await rpc.job(waiting.id()).start_time())
        self.assertEqual(len(self.env.harpd.requests), 2)

    async def test_admin_socket(self) -> None:
        self.assertEqual(os.stat(self.admin_path).st_mode & 0o777, 0o600)
        job = await self.rpc.h1.sleep(30)
        listing = await deferToThreadCall(admin_call, self.admin_path, "list", queues=True)
        self.assertEqual([j["job_id"] for j in listing["jobs"]], [job.id()])
        self.assertEqual(listing["queues"], [])
        hosts = await deferToThreadCall(admin_call, self.admin_path, "hosts-list")
        self.assertIn({"hostname": "h1", "address": "127.0.0.1",
                       "port": self.env.ports["h1"].getHost().port}, hosts["hosts"])
        self.assertNotIn(PASSWORD, json.dumps(hosts))
        info = await deferToThreadCall(admin_call, self.admin_path, "info", job_id=job.id())
        self.assertEqual((info["state"], info["procedure"]), ("running", "sleep"))
        self.assertEqual(await deferToThreadCall(admin_call, self.admin_path, "cancel", job_id=job.id()),
                         {"cancelled": True})
        with self.assertRaises(CancelledException):
            await job.get()
        with self.assertRaises(AdminError) as caught:
            await deferToThreadCall(admin_call, self.admin_path, "info", job_id="nope")
        self.assertEqual(caught.exception.type, "invalid_jobid")
        self.assertEqual(await deferToThreadCall(admin_call, self.admin_path, "hosts-refresh"),
                         {"refreshed": True})
        queue = {"q": "admin"}
        first = await self.rpc.host("h1", queue=queue, concurrency=1).sleep(30)
        second = await self.rpc.host("h1", queue=queue).sleep(30)
        queues = await deferToThreadCall(admin_call, self.admin_path, "queue-list")
        self.assertEqual(queues, {"queues": [{"name": queue, "concurrency": 1, "running": 1, "waiting": 1}]})
        detail = await deferToThreadCall(admin_call, self.admin_path, "queue-list", name=queue)
        self.assertEqual([(j["job_id"], j["state"]) for j in detail["queues"][0]["jobs"]],
                         [(first.id(), "running"), (second.id(), "queued")])
        cancelled = await deferToThreadCall(admin_call, self.admin_path, "queue-cancel", name=queue)
        self.assertEqual(sorted(cancelled["cancelled"]), sorted([first.id(), second.id()]))
        self.assertIsNone(await second.start_time())
        with self.assertRaises(AdminError) as caught:
            await deferToThreadCall(admin_call, self.admin_path, "queue-list", name=queue)
        self.assertEqual(caught.exception.type, "unknown_queue")
        everything = await deferToThreadCall(admin_call, self.admin_path, "list", all=True)
        self.assertEqual({j["job_id"]: j["outcome"] for j in everything["jobs"]},
                         {job.id(): {"cancelled": True} for job in (job, first, second)})
        pruned = await deferToThreadCall(admin_call, self.admin_path, "prune-jobs", age_days=0)
        self.assertIsInstance(pruned["pruned"], int)  # what ended this very second is kept
        with self.assertRaises(AdminError) as caught:
            await deferToThreadCall(admin_call, self.admin_path, "bogus")
        self.assertEqual(caught.exception.type, "invalid_request")


def deferToThreadCall(function: Any, *args: Any, **kwargs: Any) -> "Deferred[Any]":
    """Run the blocking admin client off the reactor thread."""
    from twisted.internet.threads import deferToThread

    return deferToThread(function, *args, **kwargs)


class RestartTests(TestCase):
    """``twistd -n harp-proxy`` killed with SIGKILL mid-job, then restarted."""

    timeout = 45

    async def _setUp(self) -> None:
        self.env = Environment(self.mktemp())
        await self.env.start()
        self.addCleanup(lambda: ensureDeferred(self.env.stop()))
        self.addCleanup(self.kill_proxy)
        self.data_dir = os.path.join(self.env.directory, "data")
        self.port = free_port()
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.runs = 0

    def setUp(self) -> "Deferred[None]":
        return ensureDeferred(self._setUp())

    def kill_proxy(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def start_proxy(self) -> None:
        self.runs += 1
        log = os.path.join(self.env.directory, f"proxy-{self.runs}.log")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "harp-proxy",
             "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--hosts", self.env.hosts_file, "--data-dir", self.data_dir,
             "--ca-file", self.env.pki.ca_file],
            cwd=self.env.directory, env=env, stdin=subprocess.DEVNULL,
            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        )

        async def listening() -> bool:
            if self.process.poll() is not None:
                with open(log) as f:
                    raise AssertionError(f"harp-proxy exited:\n{f.read()}")
            try:
                await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Protocol())
            except ConnectionRefusedError:
                return False
            return True

        await wait_until(listening, what="harp-proxy to listen")

    async def answers(self, job_id: str) -> List[bytes]:
        """Every read-only answer about a job, as raw bytes."""
        return [
            await raw_request(self.port, {"harpcaller": 1, "get_result": job_id, "wait": False}),
            await raw_request(self.port, {"harpcaller": 1, "get_status": job_id}),
            await raw_request(self.port, {"harpcaller": 1, "read_stream": job_id}),
            await raw_request(self.port, {"harpcaller": 1, "follow_stream": job_id, "since": 0}),
        ]

    async def test_sigkill_mid_job(self) -> None:
        await self.start_proxy()
        rpc = HarpCaller("127.0.0.1", self.port, reactor=reactor, timeout=10)
        finished = [
            await rpc.h1.echo(1, "zażółć", {"b": 1, "a": 2}),
            await rpc.h1.fail(),
            await rpc.h1.stream_n(5),
            await rpc.h1.stream_fail(2),
            await rpc.nohost.echo(),
            await rpc.host("h1", info={"who": "test"}).nope(),
        ]
        cancelled = await rpc.h1.sleep(30)
        await wait_until(lambda: len(self.env.harpd.requests) == 6, what="the sleep call to reach harpd")
        self.assertTrue(await cancelled.cancel())
        finished.append(cancelled)
        for job in finished:
            await job.result(wait=True)
        before = {job.id(): await self.answers(job.id()) for job in finished}
        interrupted = await rpc.h1.stream_n(1000, 0.05)
        queued = [await rpc.host("h1", queue={"q": 1}).sleep(30) for _ in range(2)]
        await wait_until(lambda: len(self.env.harpd.requests) == 8, what="the calls to reach harpd")
        await sleep(0.2)  # a few packets recorded

        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        await self.start_proxy()

        for job_id, answers in before.items():
            self.assertEqual(await self.answers(job_id), answers, job_id)
        missing = b'{"error":{"type":"missing_result","message":"job interrupted abruptly"}}\n'
        for job in [interrupted] + queued:
            self.assertEqual(await raw_request(self.port, {"harpcaller": 1, "get_result": job.id(), "wait": True}),
                             missing)
            status = await job.status()
            self.assertIsNotNone(status.end_time)
        self.assertIsNotNone((await interrupted.status()).start_time)
        self.assertIsNone((await queued[1].status()).start_time)
        lines = (await raw_request(self.port, {"harpcaller": 1, "read_stream": interrupted.id()})).splitlines()
        self.assertEqual(lines[-1] + b"\n", missing)
        self.assertGreater(len(lines), 1)
        self.assertEqual([json.loads(line)["packet"] for line in lines[:-1]], list(range(len(lines) - 1)))
        # The restarted proxy still serves new calls.
        self.assertEqual(await (await rpc.h1.echo(7)).get(), [7])
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()
