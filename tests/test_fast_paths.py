"""The speed-ups of issue 6 change nothing but speed.

Each fast path is checked against the slow code it replaced, or against
the behaviour the rest of txharp relies on:

* the JSON-lines splitter against Twisted's ``LineReceiver`` (any
  chunking, pauses, ``clearLineBuffer``, overlong lines, disconnection);
* the cached C encoder against ``json.JSONEncoder``, and ``packet_line``
  against encoding a ``Packet``;
* the wire value classes (no more dataclasses) for equality, hashing,
  ``repr``, immutability, pickling and pattern matching;
* the job store's batched packet writes (one statement for a run of
  consecutive packets) for exactly the answers of one-by-one writes, and
  its hand-over of a reactor turn's requests to the database thread;
* TLS session resumption: a second connection to a daemon resumes, a
  different daemon under the same name gets a full, verified handshake;
* the listen backlog defaults.
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Any, List, Optional, Tuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import strategies as S
from txharp.errors import EncodingError, TLSError
from txharp.lines import JSONLinesProtocol
from txharp.proxy.jobs import packet_line
from txharp.proxy.service import with_backlog
from txharp.proxy.store import JobRecord, SQLiteJobStore, StoreError
from txharp.testing.certs import TestPKI
from txharp.tls import ClientTLSPolicy, server_tls_options
from txharp.wire import (
    CallRequest,
    CancelledReply,
    DaemonRequest,
    ErrorReply,
    ExceptionReply,
    FollowStreamRequest,
    Packet,
    ResultReply,
    StatusReply,
    StreamItem,
)
from txharp.wire._record import FrozenInstanceError
from txharp.wire.codec import RawJSON, encode_json, encode_line
from txharp.wire.outcomes import ResultReply as Result


# ------------------------------------------------------------ line splitting


class _Recorder:
    """What a line protocol did: lines, overflows, and what it cleared."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, bytes]] = []


def _recording(base: type, script: dict) -> Any:
    """A subclass of ``base`` that records its lines and acts on some of them."""

    class Recording(base):  # type: ignore[valid-type, misc]
        delimiter = b"\n"

        def __init__(self) -> None:
            if base is JSONLinesProtocol:
                JSONLinesProtocol.__init__(self, script["max"])
            else:
                self.MAX_LENGTH = script["max"]
            self.record = _Recorder()

        def lineReceived(self, line: bytes) -> Any:
            self.record.events.append(("line", line))
            action = script["actions"].get(len(self.record.events))
            if action == "pause":
                self.pauseProducing()
            elif action == "clear":
                self.record.events.append(("cleared", self.clearLineBuffer()))
            elif action == "disconnect":
                self.transport.loseConnection()
            elif action == "feed":
                self.dataReceived(b"nested\n")
            return None

        def lineLengthExceeded(self, line: bytes) -> None:
            self.record.events.append(("exceeded", line))

    return Recording


def _drive(cls: Any, chunks: List[bytes], resume_after: List[int]) -> List[Tuple[str, bytes]]:
    protocol = cls()
    transport = StringTransport()
    protocol.makeConnection(transport)
    for n, chunk in enumerate(chunks):
        protocol.dataReceived(chunk)
        if n in resume_after and protocol.paused and not transport.disconnecting:
            protocol.resumeProducing()
    if protocol.paused and not transport.disconnecting:
        protocol.resumeProducing()
    return protocol.record.events + [("left", protocol.clearLineBuffer())]


class LineSplittingTests(SynchronousTestCase):
    """``JSONLinesProtocol.dataReceived`` behaves exactly as ``LineReceiver``'s."""

    @S.ci_settings(300)
    @given(
        data=st.lists(st.sampled_from([b"a", b"bb", b"\n", b"{}", b"x" * 7, b"\n\n", b"\r"]),
                      max_size=40).map(b"".join),
        cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
        max_length=st.integers(min_value=1, max_value=12),
        actions=st.dictionaries(st.integers(min_value=1, max_value=12),
                                st.sampled_from(["pause", "clear", "disconnect", "feed"]),
                                max_size=3),
        resume_after=st.lists(st.integers(min_value=0, max_value=8), max_size=4),
    )
    def test_same_as_line_receiver(self, data: bytes, cuts: List[int], max_length: int,
                                   actions: dict, resume_after: List[int]) -> None:
        points = sorted({min(c, len(data)) for c in cuts})
        chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
        script = {"max": max_length, "actions": actions}
        expected = _drive(_recording(LineReceiver, script), chunks, resume_after)
        actual = _drive(_recording(JSONLinesProtocol, script), chunks, resume_after)
        self.assertEqual(actual, expected)

    def test_many_lines_in_one_chunk(self) -> None:
        script = {"max": 100, "actions": {}}
        data = b"".join(b"line %d\n" % n for n in range(5000)) + b"partial"
        events = _drive(_recording(JSONLinesProtocol, script), [data], [])
        self.assertEqual(len(events), 5001)
        self.assertEqual(events[-1], ("left", b"partial"))


# ---------------------------------------------------------------- encoding


class EncodingTests(SynchronousTestCase):
    _reference = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    @S.CI
    @given(S.json_values(20))
    def test_same_bytes_as_json_encoder(self, value: Any) -> None:
        try:
            expected = self._reference.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            expected = json.dumps(value, allow_nan=False, separators=(",", ":")).encode("ascii")
        self.assertEqual(encode_json(value), expected)
        self.assertEqual(encode_line(value), expected + b"\n")

    @S.CI
    @given(st.integers(min_value=0, max_value=2 ** 70), S.json_values(10))
    def test_packet_line(self, number: int, data: Any) -> None:
        expected = encode_line(Packet(number, data).to_json())
        self.assertEqual(packet_line(number, data), expected)
        self.assertEqual(packet_line(number, RawJSON(encode_json(data))), expected)

    def test_what_json_cannot_carry(self) -> None:
        cyclic: List[Any] = []
        cyclic.append(cyclic)
        for value in [float("nan"), {1, 2}, object(), cyclic, {(1,): 2}]:
            with self.assertRaises(EncodingError):
                encode_json(value)

    def test_raw_json_is_written_as_it_is(self) -> None:
        self.assertEqual(encode_json(RawJSON(b'{"a":1}')), b'{"a":1}')
        self.assertEqual(RawJSON(b"1"), RawJSON(b"1"))
        self.assertNotEqual(RawJSON(b"1"), RawJSON(b"2"))


# ------------------------------------------------------------ value classes


class ValueClassTests(SynchronousTestCase):
    """The wire types keep the behaviour they had as frozen dataclasses."""

    def test_equality_and_hash(self) -> None:
        self.assertEqual(ErrorReply("t", "m"), ErrorReply("t", "m", None))
        self.assertEqual(hash(ErrorReply("t", "m")), hash(ErrorReply(type="t", message="m")))
        self.assertNotEqual(ErrorReply("t", "m"), ExceptionReply("t", "m"))
        self.assertNotEqual(ResultReply(1), ResultReply(2))
        self.assertEqual(CancelledReply(), CancelledReply())
        self.assertEqual(CallRequest("h", "p"), CallRequest("h", "p", []))
        self.assertEqual(len({StreamItem(1), StreamItem(1), StreamItem(2)}), 2)
        with self.assertRaises(TypeError):
            hash(ResultReply([1]))  # unhashable field, as with dataclasses

    def test_repr(self) -> None:
        self.assertEqual(repr(ErrorReply("t", "m")), "ErrorReply(type='t', message='m', data=None)")
        self.assertEqual(repr(StreamItem([1])), "StreamItem(data=[1])")
        self.assertNotIn("hunter2", repr(DaemonRequest("p", [], "u", "hunter2")))

    def test_immutable(self) -> None:
        reply = Result(1)
        with self.assertRaises(FrozenInstanceError):
            reply.value = 2  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            del reply.value
        with self.assertRaises(AttributeError):
            reply.other = 1  # type: ignore[attr-defined]

    def test_pickle_and_match(self) -> None:
        status = StatusReply("h", "p", [1], 1, None, None, {"i": 1})
        self.assertEqual(pickle.loads(pickle.dumps(status)), status)
        # Positional class patterns (``case ErrorReply(kind, message, data)``).
        self.assertEqual(ErrorReply.__match_args__, ("type", "message", "data"))
        self.assertEqual(StreamItem.__match_args__, ("data",))

    def test_validation_kept(self) -> None:
        from txharp.errors import MalformedMessage

        with self.assertRaises(MalformedMessage):
            FollowStreamRequest("j", since=1, recent=2)


# --------------------------------------------------------------- job store


class PacketRunTests(TestCase):
    """Consecutive packets are written together, with one-by-one answers."""

    def setUp(self) -> "Deferred[Any]":
        self.store = SQLiteJobStore(os.path.join(self.mktemp(), "jobs.sqlite3"))
        d = self.store.open()
        d.addCallback(lambda _: self.store.create_job(JobRecord("job", "h", "p", [], 1)))
        return d

    def tearDown(self) -> "Deferred[None]":
        return self.store.close()

    async def _append(self, numbers: List[int]) -> List[Any]:
        results = await gatherResults([
            self.store.append_packet("job", n, {"n": n}).addErrback(lambda f: f.value)
            for n in numbers
        ])
        return [r if isinstance(r, Exception) else "ok" for r in results]

    async def _run_test(self) -> None:
        commits = self.store.commits
        self.assertEqual(await self._append(list(range(100))), ["ok"] * 100)
        self.assertEqual(self.store.commits, commits + 1)  # one turn, one commit
        self.assertEqual(await self.store.packet_count("job"), 100)
        # A run starting at the wrong number: every packet refused on its own.
        refused = await self._append([101, 102, 103])
        self.assertTrue(all(isinstance(r, StoreError) for r in refused), refused)
        self.assertIn("out of order (next is 100)", str(refused[0]))
        # A run whose head is right and whose tail repeats numbers.
        self.assertEqual((await self._append([100, 101, 101]))[:2], ["ok", "ok"])
        self.assertEqual(await self.store.packet_count("job"), 102)
        packets = await self.store.read_packets("job")
        self.assertEqual(packets, [(n, {"n": n}) for n in range(102)])
        # A run into an ended job.
        await self.store.end_job("job", ResultReply(None), 2)
        late = await self._append([102, 103])
        self.assertTrue(all("has ended" in str(r) for r in late), late)

    def test_runs(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._run_test())


# --------------------------------------------------------------------- TLS


class _OneLine(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"ok\n")
        self.transport.loseConnection()


class _Client(Protocol):
    def __init__(self) -> None:
        self.done: Deferred[Optional[int]] = Deferred()
        self.reused: Optional[int] = None

    def connectionMade(self) -> None:
        self.transport.write(b"hello\n")

    def dataReceived(self, data: bytes) -> None:
        from OpenSSL._util import lib

        self.reused = lib.SSL_session_reused(self.transport.getHandle()._ssl)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if self.reused is None:
            self.done.errback(reason)
        else:
            self.done.callback(self.reused)


class SessionResumptionTests(TestCase):
    async def _serve(self, pki: TestPKI) -> int:
        endpoint = SSL4ServerEndpoint(
            reactor, 0, server_tls_options(pki.chain_file, pki.key_file), interface="127.0.0.1"
        )
        port = await endpoint.listen(Factory.forProtocol(_OneLine))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def _call(self, policy: ClientTLSPolicy, port: int) -> Optional[int]:
        client = _Client()
        endpoint = wrapClientTLS(policy.creator_for("127.0.0.1"),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await endpoint.connect(Factory.forProtocol(lambda: client))
        return await client.done

    async def _resumes(self) -> None:
        directory = self.mktemp()
        trusted = TestPKI(directory, name="trusted")
        policy = ClientTLSPolicy(trusted.ca_file)
        port = await self._serve(trusted)
        self.assertEqual(await self._call(policy, port), 0)
        self.assertEqual(await self._call(policy, port), 1)
        self.assertEqual(await self._call(policy, port), 1)
        # Another daemon at the same address cannot resume the session: it
        # gets a full handshake, and its certificate is verified (and refused).
        other = TestPKI(directory, name="other")
        other_port = await self._serve(other)
        with self.assertRaises(TLSError):
            await self._call(policy, other_port)
        # ... which leaves the good session usable.
        self.assertEqual(await self._call(policy, port), 1)

    def test_resumes_and_still_verifies(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._resumes())


# ------------------------------------------------------------------ backlog


class BacklogTests(SynchronousTestCase):
    def test_default_backlog(self) -> None:
        self.assertEqual(with_backlog("tcp:3502:interface=127.0.0.1"),
                         "tcp:3502:interface=127.0.0.1:backlog=1024")
        self.assertEqual(with_backlog("tcp:3502:backlog=7"), "tcp:3502:backlog=7")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")


# -------------------------------------------------- packets of one chunk


class _HeldAppends:
    """A store whose ``append_packets`` commits only when released."""

    def __init__(self, inner: SQLiteJobStore) -> None:
        self.inner = inner
        self.held: List[Tuple[Deferred[Any], Deferred[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def append_packets(self, *args: Any) -> "Deferred[Any]":
        out: Deferred[Any] = Deferred()
        self.held.append((self.inner.append_packets(*args), out))
        return out

    def release(self) -> None:
        held, self.held = self.held, []
        for done, out in held:
            done.addBoth(out.callback)


class _Running:
    def __init__(self) -> None:
        self.paused = False

    def release(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def pauseReading(self) -> None:
        self.paused = True

    def resumeReading(self) -> None:
        self.paused = False


class _Relay:
    def __init__(self) -> None:
        self.running = _Running()

    def run(self, job: Any) -> _Running:
        self.job = job
        return self.running


class StreamManyTests(SynchronousTestCase):
    """``Job.stream_many``: one write for many packets, same guarantees."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from txharp.proxy.jobs import JobManager
        from txharp.proxy.protocol import StreamSender

        sqlite = SQLiteJobStore(":memory:", threaded=False)
        self.successResultOf(sqlite.open())
        self.store = _HeldAppends(sqlite)
        self.relay = _Relay()
        self.manager = JobManager(self.store, self.relay, Clock(), cache_packets=8)
        self.successResultOf(self.manager.submit(CallRequest("h", "p", [])))
        self.job = self.relay.job
        self.out = StringTransport()
        StreamSender(self.out, self.job, 0, True).start()

    def lines(self) -> List[Any]:
        return [json.loads(line) for line in self.out.value().splitlines()]

    def test_visible_after_commit_in_order(self) -> None:
        self.job.stream_many(["a", "b", "c"])
        self.job.stream_many(["d", "e"])
        self.assertEqual(len(self.store.held), 2)
        self.assertEqual((self.lines(), self.job.available), ([], 0))
        self.store.release()
        self.assertEqual([(p["packet"], p["data"]) for p in self.lines()],
                         list(enumerate("abcde")))
        self.assertEqual(self.successResultOf(self.store.packet_count(self.job.job_id)), 5)

    def test_batch_larger_than_the_cache(self) -> None:
        """Announced in slices: a follower that keeps up never reads the store."""
        reads: List[Any] = []
        read = self.store.inner.read_packets
        self.store.inner.read_packets = lambda *a: reads.append(a) or read(*a)  # type: ignore
        self.job.stream_many(list(range(50)))
        self.store.release()
        self.assertEqual([p["data"] for p in self.lines()], list(range(50)))
        self.assertEqual(reads, [])

    def test_pending_counts_packets(self) -> None:
        from txharp.proxy.jobs import PENDING_HIGH

        self.job.stream_many(list(range(PENDING_HIGH - 1)))
        self.assertFalse(self.relay.running.paused)
        self.job.stream_many([0, 1])
        self.assertTrue(self.relay.running.paused)
        self.store.release()
        self.assertFalse(self.relay.running.paused)
        self.assertEqual(self.job.available, PENDING_HIGH + 1)

    def test_ignored_after_the_end(self) -> None:
        self.job.finish(ResultReply(1))
        self.job.stream_many([1, 2])
        self.assertEqual(self.store.held, [])


class RelayChunkTests(SynchronousTestCase):
    """The relay hands a chunk's packets over together, before any end."""

    def setUp(self) -> None:
        from txharp.proxy.relay import _Call

        self.events: List[Any] = []
        events = self.events

        from txharp.proxy.hosts import HostEntry
        from txharp.wire import CallRequest

        class FakeJob:
            job_id = "j"
            timeout = 10.0
            call = CallRequest("h", "stream", [])

            def stream_many(self, datas: List[Any]) -> None:
                events.append(("packets", list(datas)))

            def finish(self, outcome: Any) -> bool:
                events.append(("finish", outcome))
                return True

        class FakeExchange:
            class protocol:
                @staticmethod
                def send(request: Any) -> None:
                    events.append(("sent", request.procedure))

        self.call = _Call(FakeJob(), HostEntry("h", "127.0.0.1", 1, "u", "p"), "127.0.0.1:1",
                          lambda call, request: FakeExchange())
        self.call.release()
        self.assertEqual(events, [("sent", "stream")])
        del events[:]

    def test_chunk(self) -> None:
        from txharp.wire import Acknowledgement

        self.call.replyReceived(Acknowledgement(True))
        for n in range(3):
            self.call.replyReceived(StreamItem(n))
        self.assertEqual(self.events, [])
        self.call.linesProcessed()
        self.call.replyReceived(StreamItem(3))
        self.call.replyReceived(ResultReply("done"))
        self.call.conversationEnded(None)
        self.assertEqual(self.events, [("packets", [0, 1, 2]), ("packets", [3]),
                                       ("finish", ResultReply("done"))])

    def test_failure_after_packets(self) -> None:
        from twisted.python.failure import Failure

        from txharp.errors import CommunicationError

        self.call.replyReceived(StreamItem("x"))
        self.call.conversationEnded(Failure(CommunicationError("invalid reply")))
        self.assertEqual(self.events[0], ("packets", ["x"]))
        self.assertEqual(self.events[1][0], "finish")
        self.assertEqual(self.events[1][1].type, "bad_protocol")


class LinesProcessedTests(SynchronousTestCase):
    def test_once_per_chunk_with_lines(self) -> None:
        from twisted.internet.task import Clock

        from txharp.lines import ClientConversation
        from txharp.wire import DaemonReplyReader

        calls: List[Any] = []

        class Listener:
            def replyReceived(self, reply: Any) -> None:
                calls.append(reply)

            def conversationEnded(self, reason: Any) -> None:
                calls.append("ended")

            def linesProcessed(self) -> None:
                calls.append("chunk")

        conversation = ClientConversation({"x": 1}, DaemonReplyReader(), Listener(),
                                          clock=Clock(), peer="p", idle_timeout=5)
        conversation.makeConnection(StringTransport())
        conversation.dataReceived(b'{"harp": 1, "stream_result": true}\n{"stream": 1}\n{"str')
        conversation.dataReceived(b'eam"')
        conversation.dataReceived(b': 2}\n{"result": 3}\n')
        self.assertEqual(calls[1:], [StreamItem(1), "chunk", StreamItem(2), ResultReply(3),
                                     "ended", "chunk"])
