"""End-to-end tests of txharp.server over loopback (127.0.0.1, real reactor, TLS).

A small fake harpd (a :class:`~txharp.lines.JSONLinesProtocol` behind
``TLSMemoryBIOFactory``) listens on an ephemeral port with certificates
from :mod:`txharp.testing.certs`; :class:`HarpServer` reaches it through
its default path (``HostnameEndpoint`` wrapped in TLS).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from tests.daemon_support import Tls10OnlyServer, tls10_only_context
from txharp.errors import CommunicationError, HarpTimeout, RemoteError, TLSError
from txharp.lines import JSONLinesProtocol
from txharp.server import HarpServer, Result
from txharp.testing.certs import TestPKI
from txharp.tls import server_tls_options
from txharp.wire.daemon import (
    Acknowledgement,
    DaemonRequest,
    DaemonRequestError,
    StreamItem,
    parse_daemon_request,
)
from txharp.wire.outcomes import ErrorReply, ResultReply

LIMIT = 5.0  # seconds; no test should come near it

_pkis: Dict[str, TestPKI] = {}
_directory: List[str] = []


def pki(name: str, **options: Any) -> TestPKI:
    """A test PKI made once per process (RSA keys are slow), removed at exit."""
    if not _directory:
        _directory.append(tempfile.mkdtemp(prefix="txharp-test-server-"))
        atexit.register(shutil.rmtree, _directory[0], True)
    if name not in _pkis:
        _pkis[name] = TestPKI(_directory[0], name=name, **options)
    return _pkis[name]


class FakeHarpd(JSONLinesProtocol):
    """The daemon side of one call: checks the request, then plays a procedure."""

    def __init__(self, daemon: "FakeDaemon") -> None:
        super().__init__()
        self.daemon = daemon
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.daemon.connections.append(self)

    def messageReceived(self, value: Any) -> None:
        try:
            request = parse_daemon_request(value)
        except DaemonRequestError as error:
            return self.end(error.reply())
        self.daemon.requests.append(request)
        self.daemon.tls_versions.append(self.transport.getHandle().get_protocol_version_name())
        if (request.user, request.password) != ("alice", "s3cret"):
            return self.end(ErrorReply("auth_error", "unknown user or wrong password"))
        procedure = PROCEDURES.get(request.procedure)
        if procedure is None:
            return self.end(ErrorReply("no_such_procedure", "no such procedure",
                                       {"procedure": request.procedure}))
        procedure(self, request)
        if not self.daemon.called.called:
            self.daemon.called.callback(request)

    def end(self, final: Any) -> None:
        """Send the final line and hang up, as harpd does."""
        self.sendMessage(final.to_daemon_json() if isinstance(final, ErrorReply) else final)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class Silent(Protocol):
    """Accepts the TCP connection and never says anything, TLS included."""

    def __init__(self, daemon: "FakeDaemon") -> None:
        self.lost: Deferred[None] = Deferred()
        daemon.connections.append(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


def echo(harpd: FakeHarpd, request: DaemonRequest) -> None:
    harpd.sendMessage(Acknowledgement(False))
    harpd.end(ResultReply(request.arguments))


def stream_n(harpd: FakeHarpd, request: DaemonRequest) -> None:
    harpd.sendMessage(Acknowledgement(True))
    for i in range(request.arguments[0]):
        harpd.sendMessage(StreamItem({"i": i}))
    harpd.end(ResultReply("done"))


def stream_then_close(harpd: FakeHarpd, request: DaemonRequest) -> None:
    """Two packets, then the connection closes without a final line."""
    harpd.sendMessage(Acknowledgement(True))
    harpd.sendMessage(StreamItem(0))
    harpd.sendMessage(StreamItem(1))
    harpd.transport.loseConnection()


def sleep(harpd: FakeHarpd, request: DaemonRequest) -> None:
    """Acknowledge and never finish (until the client goes away)."""
    harpd.sendMessage(Acknowledgement(False))


PROCEDURES: Dict[str, Callable[[FakeHarpd, DaemonRequest], None]] = {
    "echo": echo, "stream_n": stream_n, "stream_then_close": stream_then_close, "sleep": sleep,
}


class FakeDaemon(Factory):
    """Listens on 127.0.0.1, port 0; remembers requests and connections."""

    def __init__(self) -> None:
        self.requests: List[DaemonRequest] = []
        self.tls_versions: List[str] = []
        self.connections: List[Any] = []  # FakeHarpd or Silent
        self.called: Deferred[DaemonRequest] = Deferred()
        self.port: Optional[IListeningPort] = None

    def buildProtocol(self, addr: Any) -> Protocol:
        return FakeHarpd(self)


def _tls10_unavailable(server: Tls10OnlyServer) -> Optional[str]:
    """Why this OpenSSL cannot complete a TLS 1.0 handshake at all (in memory),
    or None when it can."""
    client = SSL.Connection(tls10_only_context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    peer = SSL.Connection(server.context, None)
    peer.set_accept_state()
    try:
        for _ in range(10):
            for side, other in ((client, peer), (peer, client)):
                try:
                    side.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    other.bio_write(side.bio_read(65536))
                except SSL.WantReadError:
                    pass
        client.do_handshake()
    except SSL.Error as error:
        return f"the local OpenSSL refuses TLS 1.0 even at security level 0: {error}"
    return None


class LoopbackTests(TestCase):
    """End-to-end over loopback: HarpServer against a fake TLS harpd on 127.0.0.1."""

    timeout = 2 * LIMIT

    @inlineCallbacks
    def start(self, certs: Optional[TestPKI] = None,
              tls: Optional[Any] = None) -> Any:
        """Start a fake harpd presenting ``certs``' chain (or with ``tls``)."""
        certs = certs or pki("main")
        daemon = FakeDaemon()
        creator = tls or server_tls_options(certs.chain_file, certs.key_file)
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        daemon.port = yield endpoint.listen(TLSMemoryBIOFactory(creator, False, daemon))
        self.addCleanup(self.stop, daemon)
        return daemon

    def stop(self, daemon: FakeDaemon) -> Deferred[Any]:
        """Stop listening and wait until every server-side connection is gone,
        which happens after the client has closed its own socket."""
        assert daemon.port is not None
        waits = [daemon.port.stopListening()]
        for harpd in daemon.connections:
            if not harpd.lost.called:
                harpd.transport.loseConnection()
            waits.append(harpd.lost)
        return DeferredList(waits, fireOnOneErrback=True).addTimeout(LIMIT, reactor)

    def client(self, daemon: FakeDaemon, host: str = "127.0.0.1", **options: Any) -> HarpServer:
        options.setdefault("ca_file", pki("main").ca_file)
        assert daemon.port is not None
        return HarpServer(host, "alice", "s3cret", daemon.port.getHost().port,
                          reactor=reactor, connect_timeout=LIMIT, timeout=LIMIT, **options)

    @inlineCallbacks
    def test_value_call(self) -> Any:
        daemon = yield self.start()
        value = yield self.client(daemon).echo(1, "two", {"three": 3})
        self.assertEqual(value, [1, "two", {"three": 3}])
        self.assertEqual(daemon.requests, [DaemonRequest(
            "echo", [1, "two", {"three": 3}], "alice", "s3cret")])

    @inlineCallbacks
    def test_stream_with_async_for(self) -> Any:
        daemon = yield self.start()
        rpc = self.client(daemon)

        async def collect() -> List[Any]:
            items = []
            async for item in await rpc.stream_n(3):
                items.append(item)
            return items

        items = yield Deferred.fromCoroutine(collect())
        self.assertEqual(items, [{"i": 0}, {"i": 1}, {"i": 2}, Result("done")])

    @inlineCallbacks
    def test_slow_consumer_of_long_stream(self) -> Any:
        """Flow control through TLS: a consumer slower than the daemon gets
        every packet in order (reading pauses at the stream's high-water mark)."""
        daemon = yield self.start()
        stream = yield self.client(daemon).stream_n(2000)
        items: List[Any] = []

        def slow(item: Any) -> Deferred[None]:
            items.append(item)
            return deferLater(reactor, 0, lambda: None)

        yield stream.each(slow)
        self.assertEqual(items, [{"i": i} for i in range(2000)] + [Result("done")])

    def test_callback_style(self) -> Deferred[Any]:
        def call(daemon: FakeDaemon) -> Deferred[Any]:
            return self.client(daemon).echo(a=2, b=3).addCallback(self.assertEqual, {"a": 2, "b": 3})

        def unknown(daemon: FakeDaemon) -> Deferred[Any]:
            d = self.client(daemon).nope()
            return self.assertFailure(d, RemoteError).addCallback(
                lambda error: self.assertEqual(error.type, "no_such_procedure"))

        return self.start().addCallback(lambda daemon: call(daemon).addCallback(
            lambda _: unknown(daemon)))

    @inlineCallbacks
    def test_daemon_error(self) -> Any:
        daemon = yield self.start()
        rpc = HarpServer("127.0.0.1", "alice", "wrong", daemon.port.getHost().port,
                         pki("main").ca_file, reactor=reactor)
        with self.assertRaises(RemoteError) as caught:
            yield rpc.echo(1)
        self.assertEqual(caught.exception,
                         RemoteError("auth_error", "unknown user or wrong password"))

    @inlineCallbacks
    def test_server_closes_mid_stream(self) -> Any:
        daemon = yield self.start()
        stream = yield self.client(daemon).stream_then_close()
        items: List[Any] = []
        with self.assertRaises(CommunicationError) as caught:
            yield stream.each(items.append)
        self.assertEqual(items, [0, 1])
        self.assertIn("before the final reply", str(caught.exception))

    @inlineCallbacks
    def test_cancel_closes_connection(self) -> Any:
        """Cancelling is closing: the daemon sees its connection go."""
        daemon = yield self.start()
        d = self.client(daemon).sleep(60)
        yield daemon.called
        d.cancel()
        self.failureResultOf(d, CancelledError)
        yield daemon.connections[0].lost.addTimeout(LIMIT, reactor)

    # TLS trust

    @inlineCallbacks
    def assertTLSError(self, daemon: FakeDaemon, *fragments: str, **options: Any) -> Any:
        with self.assertRaises(TLSError) as caught:
            yield self.client(daemon, **options).echo(1)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))
        self.assertEqual(daemon.requests, [], "the request must not reach an untrusted daemon")

    @inlineCallbacks
    def test_wrong_hostname(self) -> Any:
        other = pki("dns-only", dns_names=("harpd.example",), ip_addresses=())
        daemon = yield self.start(other)
        yield self.assertTLSError(daemon, "does not match '127.0.0.1'", ca_file=other.ca_file)

    @inlineCallbacks
    def test_wrong_hostname_allowed_without_check_hostname(self) -> Any:
        other = pki("dns-only", dns_names=("harpd.example",), ip_addresses=())
        daemon = yield self.start(other)
        rpc = self.client(daemon, ca_file=other.ca_file, check_hostname=False)
        self.assertEqual((yield rpc.echo(1)), [1])

    @inlineCallbacks
    def test_unknown_ca(self) -> Any:
        daemon = yield self.start()
        yield self.assertTLSError(daemon, "not signed by a trusted CA", ca_file=pki("other").ca_file)

    @inlineCallbacks
    def test_pinned_fingerprint(self) -> Any:
        daemon = yield self.start()
        rpc = self.client(daemon, ca_file=None, pins=[pki("main").fingerprint.upper()])
        self.assertEqual((yield rpc.echo("pinned")), ["pinned"])

    @inlineCallbacks
    def test_pinned_fingerprint_mismatch(self) -> Any:
        daemon = yield self.start()
        yield self.assertTLSError(daemon, "not pinned", ca_file=None, pins=[pki("other").fingerprint])

    @inlineCallbacks
    def test_tls10_daemon(self) -> Any:
        """The shipped harpd speaks TLS 1.0 only: refused by default, reached with the opt-in."""
        legacy = pki("rsa", key_type="rsa")
        server = Tls10OnlyServer(legacy.chain_file, legacy.key_file)
        reason = _tls10_unavailable(server)
        if reason is not None:
            raise SkipTest(reason)
        daemon = yield self.start(legacy, tls=server)
        yield self.assertTLSError(daemon, "minimum_version='1.0'", ca_file=legacy.ca_file)
        rpc = self.client(daemon, ca_file=legacy.ca_file, tls_minimum="1.0")
        self.assertEqual((yield rpc.echo("old")), ["old"])
        self.assertEqual(daemon.tls_versions, ["TLSv1"])

    # A silent peer

    @inlineCallbacks
    def test_silent_peer_bounded_by_connect_timeout(self) -> Any:
        """A peer that accepts TCP and never answers the handshake times out
        after ``connect_timeout`` even with no idle ``timeout``."""
        silent = FakeDaemon()
        silent.buildProtocol = lambda addr: Silent(silent)  # type: ignore[method-assign]
        silent.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(silent)
        self.addCleanup(self.stop, silent)
        rpc = HarpServer("127.0.0.1", "alice", "s3cret", silent.port.getHost().port,
                         reactor=reactor, connect_timeout=0.2)
        started = reactor.seconds()
        with self.assertRaises(HarpTimeout) as caught:
            yield rpc.echo(1)
        self.assertLess(reactor.seconds() - started, LIMIT)
        self.assertIn("TLS handshake", str(caught.exception))
        self.assertEqual(len(silent.connections), 1)
