"""A throw-away PKI for tests: CAs, server certificates and PEM files.

Everything is generated in memory with ``cryptography`` and only written
when asked.  Keys are EC P-256 by default (fast to generate); pass
``key_type="rsa"`` for RSA-2048 when an old TLS 1.0 peer, whose cipher
suites are ECDHE-RSA, must be reachable.  Nothing here is meant for
production use: private keys are written unencrypted.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from txharp.tls import fingerprint

__all__ = [
    "KeyPair",
    "TestPKI",
    "make_ca",
    "make_self_signed_cert",
    "make_server_cert",
    "write_pem",
]

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

_ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key."""

    certificate: x509.Certificate
    private_key: PrivateKey

    def certificate_pem(self) -> bytes:
        """The certificate, PEM-encoded."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return _private_key_pem(self.private_key)


def _private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _build(
    subject: str,
    key: PrivateKey,
    issuer: Optional[KeyPair],
    is_ca: bool,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    not_valid_before: Optional[datetime.datetime],
    not_valid_after: Optional[datetime.datetime],
) -> KeyPair:
    """Build one certificate, self-signed when ``issuer`` is None."""
    now = datetime.datetime.now(datetime.timezone.utc)
    signer_key = issuer.private_key if issuer else key
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.certificate.subject if issuer else _name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_valid_before or now - _ONE_DAY)
        .not_valid_after(not_valid_after or now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                # RSA key exchange (TLS 1.0's plain RSA suites) encrypts to the key.
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return KeyPair(builder.sign(signer_key, hashes.SHA256()), key)


def make_ca(
    common_name: str = "txharp test CA",
    *,
    issuer: Optional[KeyPair] = None,
    key_type: str = "ec",
) -> KeyPair:
    """A CA certificate: a self-signed root, or an intermediate of ``issuer``."""
    return _build(common_name, _new_key(key_type), issuer, True, (), (), None, None)


def make_server_cert(
    ca: KeyPair,
    dns_names: Iterable[str] = ("localhost",),
    ip_addresses: Iterable[str] = (),
    *,
    common_name: Optional[str] = None,
    key_type: str = "ec",
    not_valid_before: Optional[datetime.datetime] = None,
    not_valid_after: Optional[datetime.datetime] = None,
) -> KeyPair:
    """A server (leaf) certificate signed by ``ca``, named by its subjectAltNames.

    Validity defaults to one day ago until 30 days from now; pass datetimes
    to make an expired or not-yet-valid certificate.
    """
    dns, ips = list(dns_names), list(ip_addresses)
    subject = common_name or (dns + ips + ["txharp test server"])[0]
    return _build(
        subject, _new_key(key_type), ca, False, dns, ips, not_valid_before, not_valid_after
    )


def make_self_signed_cert(
    dns_names: Iterable[str] = ("localhost",),
    ip_addresses: Iterable[str] = (),
    *,
    key_type: str = "ec",
) -> KeyPair:
    """A self-signed server certificate (not a CA), for pinning tests."""
    dns, ips = list(dns_names), list(ip_addresses)
    subject = (dns + ips + ["txharp self-signed server"])[0]
    return _build(subject, _new_key(key_type), None, False, dns, ips, None, None)


def write_pem(
    path: Union[str, "os.PathLike[str]"],
    *items: Union[KeyPair, x509.Certificate, PrivateKey],
) -> str:
    """Write certificates and keys to ``path`` in the order given; return the path.

    A :class:`KeyPair` contributes its certificate only; pass its
    ``private_key`` explicitly to write the key.
    """
    chunks = []
    for item in items:
        if isinstance(item, KeyPair):
            chunks.append(item.certificate_pem())
        elif isinstance(item, x509.Certificate):
            chunks.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            chunks.append(_private_key_pem(item))
    # Owner-only: these files may hold private keys.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(b"".join(chunks))
    return os.fspath(path)


class TestPKI:
    r"""A root CA, an intermediate CA and a server certificate, written as PEM.

    Files in ``directory``:

    - ``ca_file``: the root CA alone (what clients trust);
    - ``chain_file``: the server certificate then the intermediate (what a
      server should present);
    - ``cert_file``: the server certificate alone (a server presenting only
      this cannot be verified: the intermediate is missing);
    - ``key_file``: the server's private key.

    ``name`` prefixes the file names, so several PKIs can share a directory.
    ``root``, ``intermediate`` and ``server`` are the :class:`KeyPair`\ s;
    ``fingerprint`` is the server certificate's SHA-256 fingerprint in
    txharp's canonical form (see :func:`txharp.tls.fingerprint`).
    """

    __test__ = False  # not a test case, whatever pytest thinks of the name

    def __init__(
        self,
        directory: Union[str, "os.PathLike[str]"],
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = ("127.0.0.1",),
        *,
        key_type: str = "ec",
        name: str = "server",
    ) -> None:
        os.makedirs(directory, exist_ok=True)
        self.root = make_ca(f"txharp test root CA ({name})", key_type=key_type)
        self.intermediate = make_ca(
            f"txharp test intermediate CA ({name})", issuer=self.root, key_type=key_type
        )
        self.server = make_server_cert(
            self.intermediate, dns_names, ip_addresses, key_type=key_type
        )
        self.fingerprint = fingerprint(self.server.certificate)

        def path(suffix: str) -> str:
            return os.path.join(directory, f"{name}-{suffix}.pem")

        self.ca_file = write_pem(path("ca"), self.root)
        self.cert_file = write_pem(path("cert"), self.server)
        self.chain_file = write_pem(path("chain"), self.server, self.intermediate)
        self.key_file = write_pem(path("key"), self.server.private_key)
