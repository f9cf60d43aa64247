"""Tests for txharp.tls and txharp.testing.certs.

``TLSLoopbackTests`` run end-to-end over loopback (127.0.0.1) with the real
reactor; the other classes are plain unit tests.
"""
from __future__ import annotations

import atexit
import datetime
import os
import shutil
import tempfile
from typing import Optional

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.daemon_support import tls10_only_context
from txharp import tls
from txharp.errors import TLSError
from txharp.testing import (
    TestPKI,
    make_ca,
    make_self_signed_cert,
    make_server_cert,
    write_pem,
)
from txharp.tls import (
    ClientTLSPolicy,
    fingerprint,
    load_pinned_fingerprints,
    normalize_fingerprint,
    server_tls_options,
    tls_failure,
)

TIMEOUT = 5


class _Echo(LineReceiver):
    """Server side: echoes each line; tells its factory when it is gone."""

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class _EchoFactory(Factory):
    protocol = _Echo

    def __init__(self) -> None:
        self.connections: list[_Echo] = []


class _Client(LineReceiver):
    """Client side: sends one line, closes once it comes back."""

    def __init__(self) -> None:
        self.line: Optional[bytes] = None
        self.tls_version: Optional[str] = None
        self.reason: Optional[Failure] = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.sendLine(b"hello over TLS")

    def lineReceived(self, line: bytes) -> None:
        self.line = line
        self.tls_version = self.transport.getHandle().get_protocol_version_name()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class _RawContext:
    """A bare pyOpenSSL context, to play a peer txharp would not configure."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


_fixtures: Optional[dict] = None


def _loopback_fixtures() -> dict:
    """Certificates and files for the loopback tests, made once per process
    (RSA keys are slow to generate) and removed at exit."""
    global _fixtures
    if _fixtures is None:
        directory = tempfile.mkdtemp(prefix="txharp-test-tls-")
        atexit.register(shutil.rmtree, directory, True)
        self_signed = make_self_signed_cert()
        now = datetime.datetime.now(datetime.timezone.utc)
        pki = TestPKI(directory, name="main")
        expired = make_server_cert(
            pki.root, ["localhost"],
            not_valid_before=now - datetime.timedelta(days=10),
            not_valid_after=now - datetime.timedelta(days=1),
        )
        _fixtures = {
            "pki": pki,
            "other": TestPKI(directory, name="other"),
            "no_ip": TestPKI(directory, ip_addresses=(), name="no-ip"),
            "rsa": TestPKI(directory, key_type="rsa", name="rsa"),
            "self_signed": self_signed,
            "self_signed_cert": write_pem(os.path.join(directory, "ss-cert.pem"), self_signed),
            "self_signed_key": write_pem(
                os.path.join(directory, "ss-key.pem"), self_signed.private_key
            ),
            "expired_cert": write_pem(os.path.join(directory, "expired-cert.pem"), expired),
            "expired_key": write_pem(
                os.path.join(directory, "expired-key.pem"), expired.private_key
            ),
        }
    return _fixtures


class TLSLoopbackTests(TestCase):
    """End-to-end over loopback: a TLS line-echo server on 127.0.0.1, port 0,
    and a client through ``wrapClientTLS(policy.creator_for(host), ...)``."""

    timeout = TIMEOUT * 2

    def setUp(self) -> None:
        for name, value in _loopback_fixtures().items():  # self.pki, self.rsa...
            setattr(self, name, value)

    @inlineCallbacks
    def _talk(self, server_creator, client_creator):
        """Echo one line; return the client protocol once its connection is lost."""
        factory = _EchoFactory()
        endpoint = SSL4ServerEndpoint(reactor, 0, server_creator, interface="127.0.0.1")
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        client = _Client()
        yield connectProtocol(
            wrapClientTLS(
                client_creator,
                TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=TIMEOUT),
            ),
            client,
        ).addTimeout(TIMEOUT, reactor)
        yield client.lost.addTimeout(TIMEOUT, reactor)
        for server in factory.connections:  # leave a clean reactor
            if not server.lost.called:
                server.transport.abortConnection()
            yield server.lost.addTimeout(TIMEOUT, reactor)
        return client

    @inlineCallbacks
    def assertAccepted(self, server_creator, policy: ClientTLSPolicy, host: str = "localhost"):
        client = yield self._talk(server_creator, policy.creator_for(host))
        reason = client.reason
        self.assertEqual(client.line, b"hello over TLS", f"connection failed: {reason.value!r}")
        self.assertTrue(reason.check(ConnectionDone), f"unclean close: {reason.value!r}")
        self.assertIsNone(tls_failure(reason, host))
        return client

    @inlineCallbacks
    def assertRejected(self, server_creator, client_creator, host: str, *fragments: str):
        client = yield self._talk(server_creator, client_creator)
        reason = client.reason
        self.assertIsNone(client.line)
        error = tls_failure(reason, host)
        self.assertIsInstance(error, TLSError, f"not a TLS failure: {reason.value!r}")
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return client

    # CA verification and host names

    @inlineCallbacks
    def test_ca_signed_and_hostname_matches(self):
        client = yield self.assertAccepted(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.pki.ca_file),
        )
        self.assertIn(client.tls_version, ("TLSv1.2", "TLSv1.3"))

    @inlineCallbacks
    def test_wrong_hostname(self):
        client = yield self.assertRejected(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.pki.ca_file).creator_for("wronghost"),
            "wronghost",
            "certificate of 'wronghost' rejected: "
            "certificate for 'localhost', '127.0.0.1' does not match 'wronghost'",
        )
        # The verification failure itself reaches connectionLost as a TLSError.
        self.assertIsInstance(client.reason.value, TLSError)

    def test_wrong_hostname_without_check_hostname(self):
        return self.assertAccepted(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.pki.ca_file, check_hostname=False),
            host="wronghost",
        )

    def test_ip_address_in_subject_alt_names(self):
        return self.assertAccepted(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.pki.ca_file),
            host="127.0.0.1",
        )

    def test_ip_address_not_in_subject_alt_names(self):
        return self.assertRejected(
            server_tls_options(self.no_ip.chain_file, self.no_ip.key_file),
            ClientTLSPolicy(ca_file=self.no_ip.ca_file).creator_for("127.0.0.1"),
            "127.0.0.1",
            "certificate for 'localhost' does not match '127.0.0.1'",
        )

    def test_unknown_ca(self):
        return self.assertRejected(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.other.ca_file).creator_for("localhost"),
            "localhost",
            "certificate not signed by a trusted CA",
        )

    def test_server_without_intermediate(self):
        # cert_file lacks the intermediate, so the chain cannot reach the root.
        return self.assertRejected(
            server_tls_options(self.pki.cert_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.pki.ca_file).creator_for("localhost"),
            "localhost",
            "certificate not signed by a trusted CA",
        )

    def test_expired_certificate(self):
        return self.assertRejected(
            server_tls_options(self.expired_cert, self.expired_key),
            ClientTLSPolicy(ca_file=self.pki.ca_file).creator_for("localhost"),
            "localhost",
            "certificate has expired",
        )

    # Pins

    def test_self_signed_pinned_without_ca(self):
        # Pins match whatever the name and however the fingerprint is written.
        written = ":".join(fingerprint(self.self_signed.certificate)[i:i + 2]
                           for i in range(0, 64, 2)).upper()
        return self.assertAccepted(
            server_tls_options(self.self_signed_cert, self.self_signed_key),
            ClientTLSPolicy(pins=frozenset({written})),
            host="wronghost",
        )

    def test_pin_mismatch(self):
        return self.assertRejected(
            server_tls_options(self.self_signed_cert, self.self_signed_key),
            ClientTLSPolicy(pins=frozenset({self.pki.fingerprint})).creator_for("localhost"),
            "localhost",
            f"fingerprint {fingerprint(self.self_signed.certificate)} not pinned",
        )

    def test_unknown_ca_but_pinned(self):
        return self.assertAccepted(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.other.ca_file, pins=frozenset({self.pki.fingerprint})),
        )

    def test_unknown_ca_and_not_pinned(self):
        return self.assertRejected(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(
                ca_file=self.other.ca_file, pins=frozenset({self.other.fingerprint})
            ).creator_for("localhost"),
            "localhost",
            "certificate not signed by a trusted CA, and "
            f"fingerprint {self.pki.fingerprint} not pinned",
        )

    def test_pinned_certificate_with_wrong_hostname(self):
        return self.assertAccepted(
            server_tls_options(self.pki.chain_file, self.pki.key_file),
            ClientTLSPolicy(ca_file=self.pki.ca_file, pins=frozenset({self.pki.fingerprint})),
            host="wronghost",
        )

    # No verification

    @inlineCallbacks
    def test_no_verification_warns_once(self):
        self.patch(tls, "_warned_unverified", False)
        warnings: list[dict] = []

        def observer(event: dict) -> None:
            if event.get("log_namespace") == "txharp.tls" and event["log_level"] == LogLevel.warn:
                warnings.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        server = server_tls_options(self.self_signed_cert, self.self_signed_key)
        yield self.assertAccepted(server, ClientTLSPolicy(), host="wronghost")
        yield self.assertAccepted(server, ClientTLSPolicy(), host="otherhost")
        self.assertEqual(len(warnings), 1)
        self.assertIn("not verified", formatEvent(warnings[0]))
        self.assertIn("wronghost", formatEvent(warnings[0]))

    # TLS versions

    def test_default_client_refuses_tls10_server(self):
        return self.assertRejected(
            _RawContext(self._tls10_server_context()),
            ClientTLSPolicy(ca_file=self.rsa.ca_file).creator_for("localhost"),
            "localhost",
            "TLS handshake with 'localhost' failed",
            "minimum_version='1.0'",
        )

    @inlineCallbacks
    def test_legacy_client_reaches_tls10_server(self):
        client = yield self.assertAccepted(
            _RawContext(self._tls10_server_context()),
            ClientTLSPolicy(ca_file=self.rsa.ca_file, minimum_version="1.0"),
        )
        self.assertEqual(client.tls_version, "TLSv1")

    @inlineCallbacks
    def test_legacy_server_accepts_tls10_client(self):
        client = yield self._talk(
            server_tls_options(self.rsa.chain_file, self.rsa.key_file, minimum_version="1.0"),
            _RawContext(tls10_only_context(SSL.TLS_CLIENT_METHOD)),
        )
        self.assertEqual(client.line, b"hello over TLS")
        self.assertEqual(client.tls_version, "TLSv1")

    def test_default_server_refuses_tls10_client(self):
        return self.assertRejected(
            server_tls_options(self.rsa.chain_file, self.rsa.key_file),
            _RawContext(tls10_only_context(SSL.TLS_CLIENT_METHOD)),
            "localhost",
            "TLS handshake with 'localhost' failed",
        )

    def _tls10_server_context(self) -> SSL.Context:
        context = tls10_only_context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(self.rsa.chain_file)
        context.use_privatekey_file(self.rsa.key_file)
        return context


class _TempFileTestCase(TestCase):
    """Gives each test a private temporary directory (trial's ``mktemp`` would
    write under the working directory when run by pytest)."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="txharp-test-tls-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self._files = 0

    def temp_path(self) -> str:
        """A fresh path in the test's directory; nothing is created there."""
        self._files += 1
        return os.path.join(self.directory, f"file{self._files}.pem")


class FingerprintTests(_TempFileTestCase):
    """Fingerprints: the canonical form, normalisation, pinned-certificate files."""

    def setUp(self) -> None:
        super().setUp()
        self.ca = make_ca()
        self.first = make_self_signed_cert()
        self.second = make_server_cert(self.ca, ["example.test"])

    def test_canonical_form(self):
        value = fingerprint(self.first.certificate)
        self.assertRegex(value, r"\A[0-9a-f]{64}\Z")
        self.assertNotEqual(value, fingerprint(self.second.certificate))

    def test_pyopenssl_certificate(self):
        from OpenSSL.crypto import X509

        self.assertEqual(
            fingerprint(X509.from_cryptography(self.first.certificate)),
            fingerprint(self.first.certificate),
        )

    def test_normalize_accepts_colons_and_any_case(self):
        canonical = fingerprint(self.first.certificate)
        pairs = [canonical[i:i + 2] for i in range(0, 64, 2)]
        for written in (canonical, canonical.upper(), ":".join(pairs).upper(),
                        " " + ":".join(pairs) + "\n"):
            self.assertEqual(normalize_fingerprint(written), canonical)

    def test_normalize_rejects_non_fingerprints(self):
        for bad in ("", "ab" * 20, "ab" * 33, "zz" * 32, "ab cd" + "ab" * 30):
            with self.assertRaises(ValueError):
                normalize_fingerprint(bad)

    def test_policy_normalises_pins(self):
        canonical = fingerprint(self.first.certificate)
        policy = ClientTLSPolicy(pins=[canonical.upper()])  # type: ignore[arg-type]
        self.assertEqual(policy.pins, frozenset({canonical}))
        self.assertTrue(policy.verifies)
        self.assertFalse(ClientTLSPolicy().verifies)

    def test_policy_rejects_bad_pins(self):
        self.assertRaises(TypeError, ClientTLSPolicy, pins=fingerprint(self.first.certificate))
        self.assertRaises(ValueError, ClientTLSPolicy, pins=frozenset({"not-a-fingerprint"}))

    def test_load_pinned_fingerprints(self):
        path = write_pem(self.temp_path(), self.first, self.second)
        self.assertEqual(
            load_pinned_fingerprints(path),
            frozenset({fingerprint(self.first.certificate), fingerprint(self.second.certificate)}),
        )

    def test_load_pinned_fingerprints_without_certificates(self):
        path = self.temp_path()
        with open(path, "w") as f:
            f.write("# no certificate here yet\n")
        self.assertEqual(load_pinned_fingerprints(path), frozenset())

    def test_load_pinned_fingerprints_errors(self):
        missing = self.temp_path()
        error = self.assertRaises(ValueError, load_pinned_fingerprints, missing)
        self.assertIn(repr(missing), str(error))
        broken = self.temp_path()
        with open(broken, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        self.assertRaises(ValueError, load_pinned_fingerprints, broken)


class ConfigurationErrorTests(_TempFileTestCase):
    """Bad files and settings fail when options are built, with clear messages."""

    def setUp(self) -> None:
        super().setUp()
        self.pki = TestPKI(self.directory)

    def test_unknown_minimum_version(self):
        for version in ("1", "2.0", "TLSv1.2", "1.4"):
            self.assertRaises(ValueError, ClientTLSPolicy, minimum_version=version)
            self.assertRaises(ValueError, server_tls_options,
                              self.pki.chain_file, self.pki.key_file, version)

    def test_missing_ca_file(self):
        missing = self.temp_path()
        error = self.assertRaises(ValueError, ClientTLSPolicy, ca_file=missing)
        self.assertIn("cannot read CA file", str(error))

    def test_ca_file_without_certificates(self):
        error = self.assertRaises(ValueError, ClientTLSPolicy, ca_file=self.pki.key_file)
        self.assertIn("holds no PEM certificate", str(error))

    def test_missing_server_files(self):
        missing = self.temp_path()
        error = self.assertRaises(ValueError, server_tls_options, missing, self.pki.key_file)
        self.assertIn("cannot read certificate file", str(error))
        error = self.assertRaises(ValueError, server_tls_options, self.pki.chain_file, missing)
        self.assertIn("cannot read key file", str(error))

    def test_key_does_not_match_certificate(self):
        other = make_self_signed_cert()
        key = write_pem(self.temp_path(), other.private_key)
        error = self.assertRaises(ValueError, server_tls_options, self.pki.chain_file, key)
        self.assertIn("does not match the certificate", str(error))

    def test_encrypted_key(self):
        key = self.temp_path()
        with open(key, "wb") as f:
            f.write(self.pki.server.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ))
        error = self.assertRaises(ValueError, server_tls_options, self.pki.chain_file, key)
        self.assertIn("encrypted", str(error))
        self.assertNotIn("secret", str(error))

    def test_combined_certificate_and_key_file(self):
        combined = self.temp_path()
        with open(combined, "wb") as f:
            for path in (self.pki.chain_file, self.pki.key_file):
                with open(path, "rb") as part:
                    f.write(part.read())
        self.assertTrue(IOpenSSLServerConnectionCreator.providedBy(
            server_tls_options(combined, combined)))


class TLSFailureTests(TestCase):
    """tls_failure: what a connectionLost reason means for TLS."""

    def test_not_a_tls_failure(self):
        self.assertIsNone(tls_failure(Failure(ConnectionDone())))
        self.assertIsNone(tls_failure(ConnectionLost()))

    def test_tls_error_passes_through(self):
        error = TLSError("certificate of 'h' rejected: fingerprint x not pinned")
        self.assertIs(tls_failure(Failure(error), "h"), error)

    def test_openssl_error(self):
        ssl_error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        error = tls_failure(Failure(ssl_error), "harpd.example")
        self.assertIsInstance(error, TLSError)
        self.assertEqual(
            str(error), "TLS handshake with 'harpd.example' failed: certificate verify failed"
        )
        self.assertIs(error.__cause__, ssl_error)

    def test_no_common_version_hint(self):
        ssl_error = SSL.Error([("SSL routines", "", "unsupported protocol")])
        self.assertIn("minimum_version='1.0'", str(tls_failure(ssl_error)))
