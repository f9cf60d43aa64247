"""TLS for txharp: how a client verifies a harpd server, and server contexts.

A harpd server is trusted when its chain verifies against a CA file *and*
its certificate names the host dialled (unless ``check_hostname`` is off),
*or* when its leaf certificate's SHA-256 fingerprint is pinned.  Pins are
what the original dispatcher's ``known_certs_file`` gave: self-signed
daemons accepted without a CA.  With neither a CA file nor pins nothing is
verified, as with the original ``ca_file=None``; txharp logs a warning the
first time this happens in a process.

Fingerprints have one canonical form throughout: 64 lower-case hex digits,
no colons (``fingerprint`` returns it, ``normalize_fingerprint`` makes it).

A verification failure reaches the application protocol's ``connectionLost``
as a ``Failure`` wrapping a :class:`~txharp.errors.TLSError` that says why;
other handshake failures (no common TLS version, a peer's alert) arrive as
an ``OpenSSL.SSL.Error``.  :func:`tls_failure` turns either into a
``TLSError``.

Files are read only when a policy or server options are built; nothing
here blocks the reactor afterwards.

A :class:`ClientTLSPolicy` resumes TLS sessions: the session of a
connection to a host that ended with a clean TLS close is offered again on
the next connection to the same host name, so that call after call to one
daemon skips the certificate exchange and its verification (a resumed
session was verified, under the same policy and for the same name, when it
was first established; a server that cannot resume it gets a full, fully
verified handshake).
"""
from __future__ import annotations

import ipaddress
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txharp.errors import TLSError

__all__ = [
    "ClientTLSPolicy",
    "fingerprint",
    "load_pinned_fingerprints",
    "normalize_fingerprint",
    "server_tls_options",
    "tls_failure",
]

_log = Logger()

_VERSIONS = {
    "1.0": SSL.TLS1_VERSION,
    "1.1": SSL.TLS1_1_VERSION,
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}
_LEGACY_VERSIONS = frozenset({"1.0", "1.1"})
# OpenSSL 3 refuses TLS < 1.2 and SHA-1 signatures above security level 0.
_LEGACY_CIPHERS = b"DEFAULT:@SECLEVEL=0"

# X509_V_ERR_* codes a verify callback sees, in words.
_UNTRUSTED = "certificate not signed by a trusted CA"
_CHAIN_ERRORS = {
    2: _UNTRUSTED,  # unable to get issuer certificate
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: _UNTRUSTED,  # self-signed leaf
    19: _UNTRUSTED,  # self-signed certificate in chain
    20: _UNTRUSTED,  # unable to get local issuer certificate
    21: _UNTRUSTED,  # unable to verify the first certificate
    24: "invalid CA certificate",
    26: "certificate not meant for a TLS server",
    27: _UNTRUSTED,  # certificate not trusted
    66: "certificate key too weak for the security level",
    67: "CA certificate key too weak for the security level",
    68: "certificate signature algorithm too weak for the security level",
}

# OpenSSL reasons meaning the peers share no protocol version or suite.
_NO_COMMON_PROTOCOL = (
    "unsupported protocol",
    "protocol version",
    "no protocols available",
    "wrong version number",
    "no shared cipher",
    "insufficient security",
)

_warned_unverified = False

#: Host names whose last TLS session a policy remembers for resumption.
MAX_REMEMBERED_SESSIONS = 4096

# ``ret`` of an info callback about an alert: (level << 8) | description;
# close_notify is a warning (1) with description 0.
_CLOSE_NOTIFY = 0x100


def _check_version(minimum_version: str) -> int:
    try:
        return _VERSIONS[minimum_version]
    except KeyError:
        raise ValueError(
            f"minimum_version must be one of {', '.join(_VERSIONS)}, not {minimum_version!r}"
        ) from None


def _new_context(method: int, minimum_version: str) -> SSL.Context:
    """A context with txharp's defaults; below TLS 1.2 it accepts legacy crypto."""
    version = _check_version(minimum_version)
    context = SSL.Context(method)
    context.set_min_proto_version(version)
    context.set_options(SSL.OP_NO_COMPRESSION)
    if minimum_version in _LEGACY_VERSIONS:
        context.set_cipher_list(_LEGACY_CIPHERS)
    return context


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def _read_certificates(path: str, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in order; [] when it holds none."""
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{what} {path!r} holds an invalid PEM certificate: {e}") from None


def fingerprint(cert: Union[x509.Certificate, crypto.X509]) -> str:
    """The certificate's SHA-256 fingerprint: 64 lower-case hex digits, no colons."""
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    return cert.fingerprint(hashes.SHA256()).hex()


def normalize_fingerprint(text: str) -> str:
    """Bring a SHA-256 fingerprint written in hex, colons optional, any case, to
    the canonical form; raise ValueError for anything else."""
    canonical = text.strip().replace(":", "").lower()
    if len(canonical) != 64 or any(c not in "0123456789abcdef" for c in canonical):
        raise ValueError(
            f"not a SHA-256 fingerprint: {text!r} (expected 64 hex digits, colons optional)"
        )
    return canonical


def load_pinned_fingerprints(path: str) -> frozenset[str]:
    """The fingerprints of every certificate in a PEM file (the original
    dispatcher's ``known_certs_file``); a file with no certificate gives none."""
    return frozenset(fingerprint(c) for c in _read_certificates(path, "pinned certificates file"))


def _is_ip_address(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def _ascii_hostname(hostname: str) -> str:
    """The name as it travels in SNI and is matched against certificates."""
    if hostname.isascii():
        return hostname.lower()
    import idna  # a dependency of twisted[tls]; only needed for non-ASCII names

    return idna.encode(hostname, uts46=True).decode("ascii")


@dataclass(frozen=True)
class ClientTLSPolicy:
    """How a client decides whether to trust a harpd server.

    :ivar ca_file: PEM file of one or more trusted CA certificates, or None.
    :ivar pins: SHA-256 fingerprints of leaf certificates accepted whatever
        signed them (any iterable; normalised to a frozenset of canonical
        fingerprints).
    :ivar check_hostname: whether a CA-verified certificate must also name
        the host dialled.  Pinned certificates never need to.
    :ivar minimum_version: lowest TLS version, ``"1.0"`` to ``"1.3"``; below
        ``"1.2"`` also enables the legacy cipher suites of the old harpd.

    The CA file is read when the policy is built; a missing or empty file,
    a malformed pin or an unknown version raises ValueError.
    """

    ca_file: Optional[str] = None
    pins: frozenset[str] = frozenset()
    check_hostname: bool = True
    minimum_version: str = "1.2"
    _context: SSL.Context = field(init=False, repr=False, compare=False)
    _sessions: "OrderedDict[str, SSL.Session]" = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.pins, (str, bytes)):
            raise TypeError("pins must be a collection of fingerprints, not a single string")
        object.__setattr__(self, "pins", frozenset(normalize_fingerprint(p) for p in self.pins))
        context = _new_context(SSL.TLS_CLIENT_METHOD, self.minimum_version)
        if self.ca_file is not None:
            certificates = _read_certificates(self.ca_file, "CA file")
            if not certificates:
                raise ValueError(f"CA file {self.ca_file!r} holds no PEM certificate")
            store = context.get_cert_store()
            assert store is not None
            for certificate in certificates:
                store.add_cert(crypto.X509.from_cryptography(certificate))
        context.set_info_callback(_session_events)
        object.__setattr__(self, "_context", context)
        object.__setattr__(self, "_sessions", OrderedDict())

    @property
    def verifies(self) -> bool:
        """False when any certificate is accepted (no CA file, no pins)."""
        return self.ca_file is not None or bool(self.pins)

    def creator_for(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """Connection creator for ``wrapClientTLS`` when dialling ``hostname``
        (a DNS name, sent as SNI, or an IP address, matched against IP SANs)."""
        if not self.verifies:
            _warn_unverified(hostname)
        return _ClientCreator(self, hostname)


def _warn_unverified(hostname: str) -> None:
    global _warned_unverified
    if not _warned_unverified:
        _warned_unverified = True
        _log.warn(
            "TLS certificates are not verified (no CA file and no pinned fingerprints), "
            "starting with the connection to {hostname}: any server can impersonate "
            "harpd. This warning is logged once per process.",
            hostname=hostname,
        )


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Makes the client side of each connection to one host under one policy."""

    def __init__(self, policy: ClientTLSPolicy, hostname: str) -> None:
        self._policy = policy
        self._hostname = hostname
        self._is_ip = _is_ip_address(hostname)
        self._ascii_hostname = hostname if self._is_ip else _ascii_hostname(hostname)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._policy._context, None)
        _creators[connection] = self
        if not self._is_ip:
            connection.set_tlsext_host_name(self._ascii_hostname.encode("ascii"))
        if self._policy.verifies:
            connection.set_verify(SSL.VERIFY_PEER, _Verifier(self, tlsProtocol))
        session = self._policy._sessions.get(self._ascii_hostname)
        if session is not None:
            connection.set_session(session)
        return connection

    def _remember(self, connection: SSL.Connection) -> None:
        """Keep the session of a connection that ended cleanly, for the next one."""
        session = connection.get_session()
        if session is None:
            return
        sessions = self._policy._sessions
        sessions[self._ascii_hostname] = session
        sessions.move_to_end(self._ascii_hostname)
        while len(sessions) > MAX_REMEMBERED_SESSIONS:
            sessions.popitem(last=False)


#: The creator of each live client connection (Twisted keeps the connection's
#: app data for itself).
_creators: "weakref.WeakKeyDictionary[SSL.Connection, _ClientCreator]" = weakref.WeakKeyDictionary()


def _session_events(connection: SSL.Connection, where: int, ret: int) -> None:
    """The client context's info callback: remember sessions at a clean close.

    A close_notify (sent or received) comes after the handshake and, in TLS
    1.3, after the session tickets that precede the server's data, so the
    session is resumable then.  (OpenSSL refuses to resume a session whose
    connection was freed without a close_notify of its own; that only costs
    the next connection a full handshake.)  Exceptions raised inside OpenSSL
    callbacks get lost: none can escape.
    """
    if where & SSL.SSL_CB_ALERT and ret == _CLOSE_NOTIFY:
        try:
            creator = _creators.get(connection)
            if creator is not None:
                creator._remember(connection)
        except BaseException:
            _log.failure("while keeping a TLS session for resumption")


class _Verifier:
    """One connection's verify callback.

    OpenSSL calls it for each certificate, root first, and again for each
    error.  Chain errors are only recorded (so that a pinned leaf can still
    be accepted); the decision is taken at depth 0, the leaf.  The first
    rejection is reported through ``failVerification``, which makes the
    reason reach the application's ``connectionLost``.
    """

    def __init__(self, creator: _ClientCreator, tls_protocol: TLSMemoryBIOProtocol) -> None:
        self._creator = creator
        self._protocol: Optional[TLSMemoryBIOProtocol] = tls_protocol
        self._chain_error: Optional[tuple[int, int]] = None

    def __call__(
        self, connection: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
    ) -> bool:
        # Exceptions raised inside OpenSSL callbacks get lost: catch them all.
        try:
            if not ok and self._chain_error is None:
                self._chain_error = (depth, errnum)
            if depth != 0:
                return True
            problem = self._problem(cert.to_cryptography())
        except BaseException:
            _log.failure("while verifying the certificate of {hostname}",
                         hostname=self._creator._hostname)
            problem = "internal error while verifying the certificate"
        if problem is None:
            return True
        if self._protocol is not None:
            message = f"TLS certificate of {self._creator._hostname!r} rejected: {problem}"
            self._protocol.failVerification(Failure(TLSError(message)))
            self._protocol = None
        return False

    def _problem(self, cert: x509.Certificate) -> Optional[str]:
        """Why the leaf ``cert`` is unacceptable, or None if it is accepted."""
        policy = self._creator._policy
        leaf_fingerprint = fingerprint(cert)
        if leaf_fingerprint in policy.pins:
            return None
        not_pinned = f"fingerprint {leaf_fingerprint} not pinned"
        if policy.ca_file is None:
            return not_pinned
        problem = self._chain_problem() or self._name_problem(cert)
        if problem is not None and policy.pins:
            problem = f"{problem}, and {not_pinned}"
        return problem

    def _chain_problem(self) -> Optional[str]:
        if self._chain_error is None:
            return None
        depth, errnum = self._chain_error
        text = _CHAIN_ERRORS.get(errnum, f"chain rejected by OpenSSL (X509 error {errnum})")
        if depth == 0 or text == _UNTRUSTED:
            return text
        return f"{text} (CA certificate at depth {depth})"

    def _name_problem(self, cert: x509.Certificate) -> Optional[str]:
        creator = self._creator
        if not creator._policy.check_hostname:
            return None
        try:
            if creator._is_ip:
                verify_certificate_ip_address(cert, creator._ascii_hostname)
            else:
                verify_certificate_hostname(cert, creator._ascii_hostname)
        except VerificationError:
            return f"certificate for {_names(cert)} does not match {creator._hostname!r}"
        except CertificateError as e:
            return f"certificate cannot be matched to {creator._hostname!r}: {e}"
        return None


def _names(cert: x509.Certificate) -> str:
    """The DNS and IP subjectAltNames of ``cert``, for messages."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no name"
    names = sans.get_values_for_type(x509.DNSName)
    names += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return ", ".join(repr(n) for n in names) or "no name"


def _openssl_reasons(error: SSL.Error) -> str:
    """The reason strings of an OpenSSL error queue, or the error's text."""
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [str(entry[-1]) for entry in queue if entry and entry[-1]]
    return "; ".join(dict.fromkeys(reasons)) or str(error) or type(error).__name__


def tls_failure(
    reason: Union[Failure, BaseException], hostname: Optional[str] = None
) -> Optional[TLSError]:
    """The :class:`TLSError` a ``connectionLost`` reason stands for.

    A certificate rejected by a :class:`ClientTLSPolicy` arrives as a
    ``TLSError`` and is returned as it is; an ``OpenSSL.SSL.Error`` (failed
    handshake, no common TLS version, a peer's alert) becomes a ``TLSError``
    naming ``hostname`` and OpenSSL's reasons.  Returns None when the reason
    is not a TLS failure (a clean close, a reset connection...).
    """
    error = reason.value if isinstance(reason, Failure) else reason
    if isinstance(error, TLSError):
        return error
    if not isinstance(error, SSL.Error):
        return None
    text = _openssl_reasons(error)
    if any(marker in text for marker in _NO_COMMON_PROTOCOL):
        text += (
            " (no TLS version or cipher suite in common; reaching a peer limited"
            " to TLS 1.0 needs minimum_version='1.0')"
        )
    peer = f" with {hostname!r}" if hostname else ""
    tls_error = TLSError(f"TLS handshake{peer} failed: {text}")
    tls_error.__cause__ = error
    return tls_error


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """Makes the server side of each connection from one prepared context."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)


def server_tls_options(
    certfile: str, keyfile: str, minimum_version: str = "1.2"
) -> IOpenSSLServerConnectionCreator:
    """Server TLS for ``SSL4ServerEndpoint``, ``listenSSL`` or ``TLSMemoryBIOFactory``.

    ``certfile`` holds the server certificate then any intermediate CA
    certificates it should present; ``keyfile`` its unencrypted private key
    (it may be the same file).  Both are read now.  Missing, malformed,
    encrypted or mismatched files raise ValueError.  A ``minimum_version``
    below ``"1.2"`` also enables legacy suites, for TLS 1.0 clients.
    """
    context = _new_context(SSL.TLS_SERVER_METHOD, minimum_version)
    context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    # Parse with cryptography first, for clear errors (and so that OpenSSL
    # never prompts on the terminal for the passphrase of an encrypted key).
    if not _read_certificates(certfile, "certificate file"):
        raise ValueError(f"certificate file {certfile!r} holds no PEM certificate")
    key_data = _read(keyfile, "key file")
    try:
        serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ValueError(
            f"private key in {keyfile!r} is encrypted; txharp needs an unencrypted key"
        ) from None
    except ValueError:
        raise ValueError(f"key file {keyfile!r} holds no usable PEM private key") from None
    context.use_certificate_chain_file(certfile)
    try:
        context.use_privatekey_file(keyfile)
        context.check_privatekey()
    except SSL.Error:
        raise ValueError(
            f"private key in {keyfile!r} does not match the certificate in {certfile!r}"
        ) from None
    return _ServerCreator(context)
