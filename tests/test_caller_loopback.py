"""The dispatcher client against a canned fake dispatcher over real TCP on 127.0.0.1."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.vectors_dispatcher import (
    CALL_ACCEPTED,
    JOB_ID,
    STATUS_FINISHED_WITH_INFO,
    UNKNOWN_JOB_ID,
    packet,
)
from txharp.caller import HarpCaller, RemoteCall
from txharp.errors import CommunicationError
from txharp.lines import JSONLinesProtocol

#: (seconds after the request, line) pairs the fake dispatcher sends.
Script = List[Tuple[float, bytes]]

STREAM_SCRIPT: Script = [
    (0.0, packet(0)),
    (0.0, packet(1)),
    (0.03, packet(2)),
    (0.06, packet(3)),
    (0.09, b'{"result":"done"}'),
]


def script_for(request: Dict[str, Any]) -> Optional[Script]:
    """The canned answer to ``request``; None: close without a word, as the original does."""
    if "host" in request:
        return [(0.0, CALL_ACCEPTED)]
    if "get_result" in request:
        return [(0.02 if request.get("wait") else 0.0, b'{"result":[1.50000000000000000000e+00]}')]
    if "get_status" in request:
        return [(0.0, STATUS_FINISHED_WITH_INFO)]
    if "follow_stream" in request and request["follow_stream"] != UNKNOWN_JOB_ID:
        return STREAM_SCRIPT[request.get("since", 0):]
    if "cancel" in request:
        return []  # never answers: the client gives up
    return None


class FakeDispatcher(JSONLinesProtocol):
    """Answers one request with its script, spacing lines with ``reactor.callLater``."""

    factory: "FakeDispatcherFactory"

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)
        self._pending: List[IDelayedCall] = []

    def messageReceived(self, request: Any) -> None:
        self.factory.requests.append(request)
        self.factory.request_received.callback(self)
        self.factory.request_received = Deferred()
        script = script_for(request)
        if script is None:
            self.transport.loseConnection()
            return
        for delay, line in script:
            self._pending.append(reactor.callLater(delay, self.transport.write, line + b"\n"))
        if script:
            self._pending.append(reactor.callLater(script[-1][0], self.transport.loseConnection))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        for call in self._pending:
            if call.active():
                call.cancel()
        self.lost.callback(None)


class FakeDispatcherFactory(Factory):
    protocol = FakeDispatcher

    def __init__(self) -> None:
        self.requests: List[Dict[str, Any]] = []
        self.connections: List[FakeDispatcher] = []
        self.request_received: Deferred[FakeDispatcher] = Deferred()


class LoopbackTests(TestCase):
    """End-to-end over loopback: the real reactor, real TCP, a fake dispatcher."""

    def setUp(self) -> None:
        self.dispatcher = FakeDispatcherFactory()
        port = reactor.listenTCP(0, self.dispatcher, interface="127.0.0.1")
        self.addCleanup(self.all_closed, port)
        self.rpc = HarpCaller("127.0.0.1", port.getHost().port, reactor=reactor, timeout=5)

    def all_closed(self, port: Any) -> Deferred[None]:
        async def closing() -> None:
            await gatherResults([connection.lost for connection in self.dispatcher.connections])
            await port.stopListening()
            await deferLater(reactor, 0, lambda: None)  # the client's side of the last close

        return Deferred.fromCoroutine(closing())

    def test_async_await(self) -> Deferred[None]:
        async def follow_a_streaming_job() -> None:
            job = await self.rpc.h1.stream_n(4)
            stream = job.follow(since=0, numbered=True)
            seen = [item async for item in stream]
            self.assertEqual(seen, [(n, {"i": n}) for n in range(4)])
            self.assertEqual(stream.result(), "done")
            self.assertEqual(await job.get(), "done")  # known from the stream: not asked again
            self.assertEqual(
                self.dispatcher.requests,
                [
                    {"harpcaller": 1, "host": "h1", "procedure": "stream_n", "arguments": [4], "info": None},
                    {"harpcaller": 1, "follow_stream": JOB_ID, "since": 0},
                ],
            )

        return Deferred.fromCoroutine(follow_a_streaming_job())

    def test_callback_style(self) -> Deferred[None]:
        info = {"n": [1, 2], "who": "capture"}

        def submitted(job: RemoteCall) -> Deferred[List[Any]]:
            return gatherResults([job.get(), job.info()])

        def check(results: List[Any]) -> None:
            self.assertEqual(results, [[1.5], info])
            self.assertEqual(self.dispatcher.requests[0]["info"], info)
            self.assertIn({"harpcaller": 1, "get_result": JOB_ID, "wait": True}, self.dispatcher.requests)
            self.assertIn({"harpcaller": 1, "get_status": JOB_ID}, self.dispatcher.requests)

        d = self.rpc.host("h1", info=info).echo(1.5)
        return d.addCallback(submitted).addCallback(check)

    def test_dispatcher_closing_without_reply(self) -> Deferred[None]:
        d = self.rpc.job(UNKNOWN_JOB_ID).follow().all()
        return self.assertFailure(d, CommunicationError)

    def test_refused(self) -> Deferred[None]:
        async def refused() -> None:
            port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
            number = port.getHost().port
            await port.stopListening()
            rpc = HarpCaller("127.0.0.1", number, reactor=reactor, timeout=5)
            with self.assertRaises(CommunicationError) as caught:
                await rpc.job(JOB_ID).get()
            self.assertIn("refused", str(caught.exception))

        return Deferred.fromCoroutine(refused())

    def test_cancel_closes_the_connection(self) -> Deferred[None]:
        async def cancel_while_waiting() -> None:
            waiting = self.rpc.job(JOB_ID).cancel()  # the fake never answers a cancel
            server_side = await self.dispatcher.request_received
            waiting.cancel()
            with self.assertRaises(CancelledError):
                await waiting
            await server_side.lost

        return Deferred.fromCoroutine(cancel_while_waiting())
