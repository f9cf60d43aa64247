"""Helpers of the end-to-end tests that talk to servers over 127.0.0.1."""
from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from txharp.errors import CommunicationError

__all__ = ["free_port", "RawClient", "raw_request"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawClient(Protocol):
    """Sends one request line, then collects every byte until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.received = 0
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.data)


async def raw_request(port: int, request: Any, timeout: float = 20) -> bytes:
    """Send one request (a JSON value, or a line as bytes) to 127.0.0.1:``port``;
    return every byte of the answer until the server closes."""
    line = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
    protocol = RawClient(line)
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), protocol)
    except ConnectError as e:
        raise CommunicationError(f"cannot connect: {e}") from None
    return await protocol.done.addTimeout(timeout, reactor)
