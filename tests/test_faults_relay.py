"""Faults on the harpd side of harp-proxy (issue item 4).

End-to-end over loopback: harp-proxy built in-process on 127.0.0.1, relaying
to fake harpd daemons (TLS, in this process) that misbehave on purpose:
connection refused, TLS handshake failures (no TLS at all, TLS 1.0 only,
an untrusted CA, a certificate for another name, an expired certificate),
a daemon that closes or resets before the acknowledgement, after it, in
the middle of a stream or right after the final line, that stalls (the
job's ``timeout``) or streams for ever (``max_exec_time``), and one that
floods packets faster than a follower reads.

Every job must end with the error documented in :mod:`txharp.proxy.relay`
and :mod:`txharp.proxy.jobs`; the packets recorded before the fault stay
readable (``read_stream``), numbered without gaps; a control job running
alongside every fault is unaffected; and no daemon connection is left open.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.loopback import free_port
from tests.daemon_support import Tls10OnlyServer
from txharp.caller import HarpCaller
from txharp.errors import RemoteError
from txharp.lines import JSONLinesProtocol
from txharp.proxy.service import ProxyConfig, ProxyService
from txharp.testing.certs import TestPKI, make_server_cert, write_pem
from txharp.tls import server_tls_options
from txharp.wire.daemon import DaemonRequestError, parse_daemon_request

USER, PASSWORD = "alice", "s3cret"


def sleep(seconds: float) -> "Deferred[None]":
    return deferLater(reactor, seconds, lambda: None)


def line(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode() + b"\n"


ACK = line({"harp": 1, "stream_result": False})
STREAM_ACK = line({"harp": 1, "stream_result": True})


class MisbehavingHarpd(JSONLinesProtocol):
    """The procedure name says how to misbehave; arguments tune it."""

    def __init__(self, factory: "MisbehavingFactory") -> None:
        super().__init__()
        self.factory = factory
        self.stopped = False
        self.running: Optional[Deferred[None]] = None

    def connectionMade(self) -> None:
        self.factory.open += 1

    def connectionLost(self, reason: Failure) -> None:
        self.factory.open -= 1
        self.stopped = True
        if self.running is not None:
            self.running.cancel()

    def messageReceived(self, value: Any) -> None:
        try:
            request = parse_daemon_request(value)
        except DaemonRequestError as error:
            self.transport.write(line(error.reply().to_daemon_json()))
            self.transport.loseConnection()
            return
        self.factory.calls.append(request.procedure)
        self.running = Deferred.fromCoroutine(self.behave(request.procedure, request.arguments))
        self.running.addErrback(lambda f: None if self.stopped else f)

    def send(self, data: bytes) -> None:
        if not self.stopped:
            self.transport.write(data)

    async def behave(self, name: str, args: List[Any]) -> None:
        t = self.transport
        if name == "echo":
            self.send(ACK + line({"result": args}))
            t.loseConnection()
        elif name == "fail":
            self.send(ACK + line({"exception": {"type": "TestFailure", "message": "intentional failure"}}))
            t.loseConnection()
        elif name == "sleep":
            self.send(ACK)
            await sleep(args[0])
            self.send(line({"result": args[0]}))
            t.loseConnection()
        elif name == "slow_stream":
            self.send(STREAM_ACK)
            for i in range(args[0]):
                self.send(line({"stream": {"i": i}}))
                await sleep(args[1])
            self.send(line({"result": "done"}))
            t.loseConnection()
        elif name == "close_before_ack":
            t.loseConnection()
        elif name == "reset_before_ack":
            t.abortConnection()
        elif name == "close_after_ack":
            self.send(ACK)
            t.loseConnection()
        elif name in ("close_mid_stream", "reset_mid_stream", "stall_mid_stream", "stream_n"):
            self.send(STREAM_ACK + b"".join(line({"stream": {"i": i}}) for i in range(args[0])))
            if name == "close_mid_stream":
                await sleep(0.05)  # the packets reach the proxy first
                t.loseConnection()
            elif name == "reset_mid_stream":
                await sleep(0.05)
                t.abortConnection()
            elif name == "stream_n":
                self.send(line({"result": "done"}))
                t.loseConnection()
        elif name == "close_after_final":
            self.send(STREAM_ACK + line({"stream": 1}) + line({"result": "final"}))
            t.loseConnection()
        elif name == "final_then_garbage":
            self.send(ACK + line({"result": "final"}) + b"garbage\n" + line({"result": "second"}))
            t.loseConnection()
        elif name == "huge_line":
            self.send(STREAM_ACK + line({"stream": 1}))
            self.send(b'{"stream": "' + b"x" * (5 * 1024 * 1024))  # over the 4 MiB line limit
            await sleep(5)
        elif name == "stall_before_ack":
            pass
        elif name == "stall_after_ack":
            self.send(ACK)
        elif name == "stream_forever":
            self.send(STREAM_ACK)
            i = 0
            while not self.stopped:
                self.send(line({"stream": i}))
                i += 1
                await sleep(0.01)
        elif name == "flood":
            count = args[0]
            self.send(STREAM_ACK)
            chunk = 2000
            for first in range(0, count, chunk):
                self.send(b"".join(line({"stream": [i, "x" * 600]}) for i in range(first, min(count, first + chunk))))
                await sleep(0)
            self.send(line({"result": count}))
            t.loseConnection()
        else:
            self.send(line({"harp": 1, "error": {"type": "no_such_procedure", "message": "no such procedure"}}))
            t.loseConnection()


class MisbehavingFactory(Factory):
    def __init__(self) -> None:
        self.calls: List[str] = []
        self.open = 0

    def buildProtocol(self, addr: Any) -> MisbehavingHarpd:
        return MisbehavingHarpd(self)


class Silent(Protocol):
    """Accepts the TCP connection and never says a word (a stalled TLS handshake)."""


class Garbage(Protocol):
    """Not TLS at all: answers the ClientHello with text."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        self.transport.loseConnection()


class _Follower(Protocol):
    """A raw follow_stream client that can stop reading (TCP back-pressure)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(bytes(self.data))


class Daemons:
    """Misbehaving fake harpd daemons on 127.0.0.1 and a hosts file naming them.

    Hosts: ``h`` (valid certificate), ``rogue`` (untrusted CA), ``mismatch``
    (a certificate for another name), ``expired``, ``legacy`` (TLS 1.0/1.1
    only), ``plain`` (no TLS), ``silent`` (accepts, never answers the TLS
    handshake), ``down`` (nothing listens).
    """

    async def start(self, directory: str) -> None:
        pki = TestPKI(directory)
        rogue = TestPKI(directory, name="rogue")
        other_name = make_server_cert(pki.intermediate, ["other.example"], [])
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
        expired = make_server_cert(pki.intermediate, ["localhost"], ["127.0.0.1"],
                                   not_valid_before=past - datetime.timedelta(days=1), not_valid_after=past)
        files: Dict[str, Tuple[str, str]] = {}
        for name, pair in [("other", other_name), ("expired", expired)]:
            files[name] = (write_pem(os.path.join(directory, f"{name}-chain.pem"), pair, pki.intermediate),
                           write_pem(os.path.join(directory, f"{name}-key.pem"), pair.private_key))
        self.ca_file = pki.ca_file
        self.harpd = MisbehavingFactory()
        self.ports: List[Any] = []

        async def tls(creator: Any) -> int:
            port = await SSL4ServerEndpoint(reactor, 0, creator, interface="127.0.0.1").listen(self.harpd)
            self.ports.append(port)
            return port.getHost().port

        plain = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Garbage))
        silent = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Silent))
        self.ports += [plain, silent]
        numbers = {
            "h": await tls(server_tls_options(pki.chain_file, pki.key_file)),
            "rogue": await tls(server_tls_options(rogue.chain_file, rogue.key_file)),
            "mismatch": await tls(server_tls_options(*files["other"])),
            "expired": await tls(server_tls_options(*files["expired"])),
            "legacy": await tls(Tls10OnlyServer(pki.chain_file, pki.key_file)),
            "plain": plain.getHost().port,
            "silent": silent.getHost().port,
            "down": free_port(),
        }
        self.hosts_file = os.path.join(directory, "hosts.json")
        with open(self.hosts_file, "w") as f:
            for name, number in numbers.items():
                f.write(json.dumps({"hostname": name, "address": "127.0.0.1", "port": number,
                                    "credentials": {"user": USER, "password": PASSWORD}}) + "\n")

    async def stop(self) -> None:
        for port in self.ports:
            await port.stopListening()


class RelayFaultTests(TestCase):
    """End-to-end over loopback: harp-proxy relaying to misbehaving TLS daemons."""

    timeout = 60

    async def _setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.daemons = Daemons()
        await self.daemons.start(directory)
        self.harpd = self.daemons.harpd
        hosts, ca_file = self.daemons.hosts_file, self.daemons.ca_file
        self.proxy = ProxyService(ProxyConfig(
            listen=["tcp:0:interface=127.0.0.1"], hosts_file=hosts, data_dir=os.path.join(directory, "data"),
            ca_file=ca_file, default_timeout=20, max_exec_time=30), reactor)
        self.proxy.startService()
        await self.proxy.ready
        self.proxy_port = self.proxy.ports[0].getHost().port
        self.rpc = HarpCaller("127.0.0.1", self.proxy_port, reactor=reactor, timeout=15)

    def setUp(self) -> "Deferred[None]":
        return ensureDeferred(self._setUp())

    async def _tearDown(self) -> None:
        await self.proxy.stopService()
        await self.daemons.stop()

    def tearDown(self) -> "Deferred[None]":
        return ensureDeferred(self._tearDown())

    async def outcome(self, job: Any) -> Any:
        value = await job.result(wait=True, timeout=20)
        return value

    async def packets(self, job: Any) -> List[Any]:
        items = await job.stream(numbered=True).all()
        numbers = [n for n, _ in items]
        self.assertEqual(numbers, list(range(len(numbers))), "packets with gaps or repeats")
        return [data for _, data in items]

    async def check_error(self, job: Any, kind: str, message: Optional[str] = None,
                          reason: Optional[str] = None) -> RemoteError:
        error = await self.outcome(job)
        self.assertIsInstance(error, RemoteError, (kind, error))
        self.assertEqual(error.type, kind, error)
        if message is not None:
            self.assertEqual(error.message, message)
        if reason is not None:
            self.assertIn(reason, json.dumps(error.data))
        status = await job.status()
        self.assertIsNotNone(status.end_time)
        return error

    def test_every_fault_at_once_beside_a_healthy_job(self) -> "Deferred[None]":
        async def run() -> None:
            control = await self.rpc.h.stream_n(200)
            rpc = self.rpc
            jobs = {
                "refused": await rpc.down.echo(1),
                "rogue": await rpc.rogue.echo(1),
                "mismatch": await rpc.mismatch.echo(1),
                "expired": await rpc.expired.echo(1),
                "legacy": await rpc.legacy.echo(1),
                "plain": await rpc.plain.echo(1),
                "silent": await rpc.host("silent", timeout=0.5).echo(1),
                "huge_line": await rpc.h.huge_line(),
                "close_before_ack": await rpc.h.close_before_ack(),
                "reset_before_ack": await rpc.h.reset_before_ack(),
                "close_after_ack": await rpc.h.close_after_ack(),
                "close_mid_stream": await rpc.h.close_mid_stream(7),
                "reset_mid_stream": await rpc.h.reset_mid_stream(5),
                "close_after_final": await rpc.h.close_after_final(),
                "final_then_garbage": await rpc.h.final_then_garbage(),
                "stall_before_ack": await rpc.host("h", timeout=0.5).stall_before_ack(),
                # The acknowledgement must come within the timeout: leave room for a busy machine.
                "stall_after_ack": await rpc.host("h", timeout=2).stall_after_ack(),
                "stall_mid_stream": await rpc.host("h", timeout=2).stall_mid_stream(4),
                "stream_forever": await rpc.host("h", timeout=5, max_exec_time=0.7).stream_forever(),
            }
            await self.check_error(jobs["refused"], "econnrefused", "connection refused")
            await self.check_error(jobs["rogue"], "tls_error", "TLS handshake failed", "rejected")
            await self.check_error(jobs["mismatch"], "tls_error", "TLS handshake failed", "does not match")
            await self.check_error(jobs["expired"], "tls_error", "TLS handshake failed", "expired")
            await self.check_error(jobs["legacy"], "tls_error", "TLS handshake failed")
            await self.check_error(jobs["plain"], "tls_error", "TLS handshake failed")
            await self.check_error(jobs["silent"], "timeout", "request timed out")
            await self.check_error(jobs["huge_line"], "bad_protocol", "Harp protocol error", "longer than")
            self.assertEqual(await self.packets(jobs["huge_line"]), [1])
            for name in ["close_before_ack", "close_after_ack"]:
                await self.check_error(jobs[name], "network_error", "connection closed")
                self.assertEqual(await self.packets(jobs[name]), [])
            await self.check_error(jobs["reset_before_ack"], "network_error")
            await self.check_error(jobs["close_mid_stream"], "network_error", "connection closed")
            self.assertEqual(await self.packets(jobs["close_mid_stream"]), [{"i": i} for i in range(7)])
            await self.check_error(jobs["reset_mid_stream"], "network_error")
            # A reset may discard what the proxy had not read yet: a prefix survives.
            reset = await self.packets(jobs["reset_mid_stream"])
            self.assertEqual(reset, [{"i": i} for i in range(len(reset))])
            self.assertLessEqual(len(reset), 5)
            self.assertEqual(await self.outcome(jobs["close_after_final"]), "final")
            self.assertEqual(await self.packets(jobs["close_after_final"]), [1])
            self.assertEqual(await self.outcome(jobs["final_then_garbage"]), "final")
            await self.check_error(jobs["stall_before_ack"], "timeout", "request timed out")
            await self.check_error(jobs["stall_after_ack"], "timeout", "reading result timed out")
            await self.check_error(jobs["stall_mid_stream"], "timeout", "reading result timed out")
            self.assertEqual(await self.packets(jobs["stall_mid_stream"]), [{"i": i} for i in range(4)])
            error = await self.check_error(jobs["stream_forever"], "timeout", "maximum execution time exceeded")
            self.assertEqual(error.data, {"max_exec_time": 0.7})
            forever = await self.packets(jobs["stream_forever"])
            self.assertTrue(1 <= len(forever) < 1000, len(forever))
            self.assertEqual(forever, list(range(len(forever))))
            # The healthy job beside them all.
            self.assertEqual(await self.outcome(control), "done")
            self.assertEqual(await self.packets(control), [{"i": i} for i in range(200)])
            # A job's end is final: the answers do not change, and every
            # daemon connection was closed by the proxy.
            for job in jobs.values():
                self.assertEqual(await job.stream().all(), await job.stream().all())
            for _ in range(100):
                if self.harpd.open == 0:
                    break
                await sleep(0.05)
            self.assertEqual(self.harpd.open, 0, "daemon connections left open")

        return ensureDeferred(run())

    def test_daemon_faster_than_a_follower_reads(self) -> "Deferred[None]":
        """A daemon floods packets; one follower stops reading (TCP
        back-pressure) for a while, another reads normally.  The job is not
        delayed by the slow one, and both get every packet in order."""

        async def run() -> None:
            count = 20000
            job = await self.rpc.h.flood(count)
            request = json.dumps({"harpcaller": 1, "follow_stream": job.id(), "since": 0}).encode() + b"\n"
            slow = _Follower(request)
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port), slow)
            slow.transport.pauseProducing()
            fast = job.follow(since=0, numbered=True)
            fast_items = await fast.all()
            self.assertEqual([n for n, _ in fast_items], list(range(count)))
            self.assertEqual(fast.result(), count)
            # The job ended while the slow follower still holds most of it unread.
            self.assertEqual(await job.result(), count)
            received_while_paused = len(slow.data)
            slow.transport.resumeProducing()
            data = await slow.done
            self.assertLess(received_while_paused, len(data))
            lines = [json.loads(l) for l in data.splitlines()]
            self.assertEqual(lines[-1], {"result": count})
            self.assertEqual([l["packet"] for l in lines[:-1]], list(range(count)))
            self.assertEqual(lines[123], {"packet": 123, "data": [123, "x" * 600]})

        return ensureDeferred(run())
