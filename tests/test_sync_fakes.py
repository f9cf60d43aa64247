"""In-test stand-ins for a dispatcher and a harpd, listening on 127.0.0.1.

Shared by the tests of the synchronous facade and of the command line.  They
speak the wire protocols (PROTOCOL.md §1 and §2) from scripted procedures,
so a test controls exactly when packets and results appear.  This module
holds no tests.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from txharp.lines import JSONLinesProtocol
from txharp.testing.certs import TestPKI
from txharp.tls import server_tls_options


@dataclass
class FakeJob:
    """One job of :class:`FakeDispatcher`; ``outcome`` is its final wire line."""

    job_id: str
    host: str
    procedure: str
    arguments: Any
    info: Any
    submit: int
    start: Optional[int] = None
    end: Optional[int] = None
    packets: List[Any] = field(default_factory=list)
    outcome: Optional[Dict[str, Any]] = None
    waiters: List["_DispatcherConnection"] = field(default_factory=list)
    followers: List["_DispatcherConnection"] = field(default_factory=list)

    def emit(self, data: Any) -> None:
        """Record a packet and send it to every follower."""
        if self.outcome is not None:
            return
        number = len(self.packets)
        self.packets.append(data)
        for follower in self.followers:
            follower.sendMessage({"packet": number, "data": data})

    def finish(self, outcome: Dict[str, Any]) -> None:
        """End the job with ``outcome`` (a wire line) and answer whoever waits."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.end = int(reactor.seconds())
        for waiting in self.waiters + self.followers:
            waiting.answer(outcome)
        self.waiters, self.followers = [], []


class FakeDispatcher:
    """A dispatcher whose jobs run the scripted procedures of :meth:`run`.

    ``requests`` records every request line received; ``silent`` makes it
    accept connections and never answer (for timeout tests).
    """

    def __init__(self) -> None:
        self.jobs: Dict[str, FakeJob] = {}
        self.requests: List[Dict[str, Any]] = []
        self.connections: List["_DispatcherConnection"] = []
        self.silent = False
        self.port: Any = None
        self._calls: List[Any] = []

    def later(self, delay: float, function: Callable[..., Any], *args: Any) -> None:
        """Schedule part of a job's script (cancelled by :meth:`stop`)."""
        self._calls.append(reactor.callLater(delay, function, *args))

    def run(self, job: FakeJob) -> None:
        """The scripted procedures, by name (anything else: no_such_procedure)."""
        args, name = job.arguments, job.procedure
        if job.host == "nowhere":
            job.finish({"error": {"type": "unknown_host", "message": "host not found"}})
        elif name == "return_immediate":
            job.finish({"result": args})
        elif name == "fail":
            job.finish({"exception": {"type": "ValueError", "message": "bad value", "data": {"class": "ValueError"}}})
        elif name == "stream_infinity":  # the synopsis' name; finite here
            for i in range(3):
                self.later(0.05 * (i + 1), job.emit, {"line": i})
            self.later(0.2, job.finish, {"result": "done"})
        elif name == "run_foo":
            self.later(0.3, job.finish, {"result": "foo done"})
        elif name == "many":
            for i in range(args[0]):
                job.emit(i)
            job.finish({"result": args[0]})
        elif name != "forever":  # "forever" ends only when cancelled
            job.finish({"error": {"type": "no_such_procedure", "message": f"no procedure {name}"}})

    async def start(self) -> int:
        """Listen on 127.0.0.1; return the port."""
        factory = Factory.forProtocol(lambda: _DispatcherConnection(self))
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        return self.port.getHost().port

    async def stop(self) -> None:
        """Stop listening, end every job and drop every connection."""
        for call in self._calls:
            if call.active():
                call.cancel()
        for connection in list(self.connections):
            connection.transport.abortConnection()
        await self.port.stopListening()

    def submit(self, request: Dict[str, Any]) -> FakeJob:
        now = int(reactor.seconds())
        job = FakeJob(
            job_id=str(uuid.uuid4()),
            host=request["host"],
            procedure=request["procedure"],
            arguments=request["arguments"],
            info=request.get("info"),
            submit=now,
        )
        self.jobs[job.job_id] = job
        if request.get("queue") is not None and any(
            other.outcome is None and other is not job for other in self.jobs.values()
        ):
            return job  # waits in its queue until cancelled: start stays None
        job.start = now
        self.run(job)
        return job


class _DispatcherConnection(JSONLinesProtocol):
    def __init__(self, dispatcher: FakeDispatcher) -> None:
        super().__init__()
        self.dispatcher = dispatcher

    def connectionMade(self) -> None:
        self.dispatcher.connections.append(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.dispatcher.connections.remove(self)
        for job in self.dispatcher.jobs.values():
            for waiting in (job.waiters, job.followers):
                if self in waiting:
                    waiting.remove(self)

    def answer(self, line: Dict[str, Any]) -> None:
        self.sendMessage(line)
        self.transport.loseConnection()

    def messageReceived(self, request: Any) -> None:
        dispatcher = self.dispatcher
        dispatcher.requests.append(request)
        if dispatcher.silent:
            return
        jobs = dispatcher.jobs
        if "host" in request:
            job = dispatcher.submit(request)
            self.answer({"harpcaller": 1, "job_id": job.job_id})
            return
        if "cancel" in request:
            job = jobs.get(request["cancel"])
            running = job is not None and job.outcome is None
            if running:
                job.finish({"cancelled": True})
            self.answer({"cancelled": running})
            return
        job = None
        for key in ("get_result", "get_status", "follow_stream", "read_stream"):
            if key in request:
                job = jobs.get(request[key])
                break
        if job is None:
            self.answer({"error": {"type": "invalid_jobid", "message": "no such job"}})
        elif "get_status" in request:
            self.answer(
                {
                    "call": {"host": job.host, "procedure": job.procedure, "arguments": job.arguments},
                    "time": {"submit": job.submit, "start": job.start, "end": job.end},
                    "info": job.info,
                }
            )
        elif "get_result" in request:
            if job.outcome is not None:
                self.answer(job.outcome)
            elif request.get("wait"):
                job.waiters.append(self)
            else:
                self.answer({"no_result": True})
        else:
            first = request.get("since")
            if first is None:
                recent = request.get("recent", 0 if "follow_stream" in request else None)
                first = 0 if recent is None else max(0, len(job.packets) - recent)
            for number in range(first, len(job.packets)):
                self.sendMessage({"packet": number, "data": job.packets[number]})
            if job.outcome is not None:
                self.answer(job.outcome)
            elif "read_stream" in request:
                self.answer({"continue": True})
            else:
                job.followers.append(self)


# ------------------------------------------------------------------ harpd

#: The credentials of the seed's synopsis.
USER = "username"
PASSWORD = "secret"


class _HarpdConnection(JSONLinesProtocol):
    """harpd's side of one call; procedures scripted below."""

    def __init__(self, harpd: "FakeHarpd") -> None:
        super().__init__()
        self.harpd = harpd
        self.calls: List[Any] = []

    def connectionMade(self) -> None:
        self.harpd.connections.append(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.harpd.connections.remove(self)
        for call in self.calls:
            if call.active():
                call.cancel()

    def later(self, delay: float, function: Callable[..., Any], *args: Any) -> None:
        self.calls.append(reactor.callLater(delay, function, *args))

    def final(self, line: Dict[str, Any]) -> None:
        self.sendMessage(line)
        self.transport.loseConnection()

    def messageReceived(self, request: Any) -> None:
        self.harpd.requests.append(request)
        auth = request.get("auth", {})
        if (auth.get("user"), auth.get("password")) != (USER, PASSWORD):
            self.final({"harp": 1, "error": {"type": "auth_error", "message": "authentication error"}})
            return
        name, args = request["procedure"], request["arguments"]
        if name in ("current_time", "run_foo"):
            self.sendMessage({"harp": 1, "stream_result": False})
            self.final({"result": 1700000000})
        elif name == "echo":
            self.sendMessage({"harp": 1, "stream_result": False})
            self.final({"result": args})
        elif name == "explode":
            self.sendMessage({"harp": 1, "stream_result": False})
            self.final({"exception": {"type": "RuntimeError", "message": "boom", "data": {"class": "RuntimeError"}}})
        elif name in ("logs_in_next_minutes", "run_stream"):
            self.sendMessage({"harp": 1, "stream_result": True})
            for i in range(3):
                self.later(0.02 * (i + 1), self.sendMessage, {"stream": f"log line {i}"})
            self.later(0.1, self.final, {"result": {"lines": 3}})
        elif name == "broken_stream":
            self.sendMessage({"harp": 1, "stream_result": True})
            self.sendMessage({"stream": "first"})
            self.later(0.02, self.final, {"harp": 1, "error": {"type": "timeout", "message": "too slow"}})
        elif name == "hang":
            self.sendMessage({"harp": 1, "stream_result": False})
        else:
            self.final({"harp": 1, "error": {"type": "no_such_procedure", "message": "no such procedure"}})


class FakeHarpd:
    """A TLS harpd on 127.0.0.1 with a throw-away PKI (``pki.ca_file`` to trust)."""

    def __init__(self) -> None:
        self.requests: List[Any] = []
        self.connections: List[_HarpdConnection] = []
        self.directory = tempfile.mkdtemp(prefix="txharp-fake-harpd-")
        self.pki = TestPKI(self.directory)
        self.port: Any = None

    async def start(self, tls: Any = None) -> int:
        """Listen on 127.0.0.1 (TLS per ``tls``, txharp's server defaults if None); return the port."""
        if tls is None:
            tls = server_tls_options(self.pki.chain_file, self.pki.key_file)
        factory = Factory.forProtocol(lambda: _HarpdConnection(self))
        self.port = await SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(factory)
        return self.port.getHost().port

    async def stop(self) -> None:
        for connection in list(self.connections):
            connection.transport.abortConnection()
        await self.port.stopListening()
        for name in os.listdir(self.directory):
            os.unlink(os.path.join(self.directory, name))
        os.rmdir(self.directory)


class FakesTestCase(TestCase):
    """Starts a fake dispatcher and a fake harpd (TLS) on 127.0.0.1 for each test."""

    async def setUp(self) -> None:
        self.dispatcher = FakeDispatcher()
        self.port = await self.dispatcher.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(self.dispatcher.stop()))
        self.harpd = FakeHarpd()
        self.harpd_port = await self.harpd.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(self.harpd.stop()))
