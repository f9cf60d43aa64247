"""Shared helpers for the daemon tests: the captured harpd vectors and a
procedures registry built in memory."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import types
from typing import Any, Callable, Dict, List, Optional

from OpenSSL import SSL
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import deferLater
from zope.interface import implementer

from tests.capture import Exchange, load_exchanges
from txharp.daemon.procedures import ProcedureRegistry, Result, procedure, streaming_procedure

__all__ = [
    "PROCEDURES_FILE",
    "harpd_exchanges",
    "decode_all",
    "memory_registry",
    "process_alive",
    "wait_until",
    "read_pid",
    "temp_path",
    "tls10_only_context",
    "Tls10OnlyServer",
]

#: The original-style procedures module of the end-to-end tests.
PROCEDURES_FILE = os.path.join(os.path.dirname(__file__), "vectors", "harpd_procedures.py")


def harpd_exchanges() -> Dict[str, Exchange]:
    """The recorded conversations with the original harpd (sections starting
    with "HARPD"), by their title."""
    return {
        e.title: e
        for e in load_exchanges()
        if e.protocol == "harpd" and e.section.startswith("HARPD")
    }


def decode_all(lines: List[bytes]) -> List[Any]:
    """Decode JSON lines, so replies compare by value, not by spelling."""
    return [json.loads(line) for line in lines]


def memory_registry() -> ProcedureRegistry:
    """A few procedures (never run by the protocol tests' fake runner)."""
    module = types.ModuleType("memory_procedures")

    def echo(*args: Any) -> List[Any]:
        return list(args)

    def count(n: int) -> Any:
        yield from range(n)
        yield Result("done")

    module.echo = procedure(echo)  # type: ignore[attr-defined]
    module.add = procedure(lambda a, b: a + b)  # type: ignore[attr-defined]
    module.stream_n = streaming_procedure(count)  # type: ignore[attr-defined]
    module.slow = procedure(timeout=5)(echo)  # type: ignore[attr-defined]
    return ProcedureRegistry.from_module(module)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@inlineCallbacks
def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` on the real reactor until true; fail after ``timeout``."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield deferLater(reactor, 0.02, lambda: None)


def read_pid(path: str) -> Optional[int]:
    """The pid a test procedure wrote to ``path``, or None while it is not there."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def temp_path(case: Any) -> str:
    """A new absolute path (nothing is there yet) in a directory of its own,
    removed after the test.  Unlike ``TestCase.mktemp`` it never lands in
    the current directory, which is the checkout under pytest."""
    directory = tempfile.mkdtemp(prefix="txharp-test-daemon-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "path")


def tls10_only_context(method: int) -> SSL.Context:
    """A context that speaks TLS 1.0 and nothing newer, with the legacy
    suites it needs, like the shipped harpd."""
    context = SSL.Context(method)
    context.set_min_proto_version(SSL.TLS1_VERSION)
    context.set_max_proto_version(SSL.TLS1_VERSION)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    return context


@implementer(IOpenSSLServerConnectionCreator)
class Tls10OnlyServer:
    """Server TLS like the shipped harpd's: TLS 1.0 only (for server endpoints)."""

    def __init__(self, chain_file: str, key_file: str) -> None:
        self.context = tls10_only_context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate_chain_file(chain_file)
        self.context.use_privatekey_file(key_file)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)
