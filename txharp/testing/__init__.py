"""Helpers for testing code that uses txharp."""
from txharp.testing.certs import (
    KeyPair,
    TestPKI,
    make_ca,
    make_self_signed_cert,
    make_server_cert,
    write_pem,
)

__all__ = [
    "KeyPair",
    "TestPKI",
    "make_ca",
    "make_self_signed_cert",
    "make_server_cert",
    "write_pem",
]
