"""Read ``tests/vectors/original-wire.txt``: lines recorded from the original programs.

The file is a copy of the project's protocol captures (the original harpd
and harpcallerd on loopback), kept in the test tree so the suite needs
nothing outside this repository.  :func:`load_exchanges` splits it into
request/reply exchanges tagged with the protocol they belong to.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import List

CAPTURE_FILE = os.path.join(os.path.dirname(__file__), "vectors", "original-wire.txt")

_SERVER_LINE = re.compile(r"^\s*S> (?:\(\+[0-9.]+s\) )?(.*)$")
_CLIENT_LINE = re.compile(r"^\s*C> (.*?)(  <no newline>)?$")
_SPY_LINE = re.compile(r"^\[[a-z_]+\] TLSv[0-9.]+ \S+  (\{.*\})$")


@dataclass
class Exchange:
    """One recorded conversation: what the client sent and what came back."""

    section: str
    title: str
    protocol: str  # "harpd" or "dispatcher"
    client: List[bytes] = field(default_factory=list)
    server: List[bytes] = field(default_factory=list)
    unterminated: bool = False  # the request was sent without its newline


def _protocol_of(section: str) -> str:
    return "harpd" if section.startswith("HARPD") else "dispatcher"


def load_exchanges() -> List[Exchange]:
    """Every exchange of the capture file, in file order."""
    with open(CAPTURE_FILE, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    exchanges: List[Exchange] = []
    section = ""
    current: Exchange | None = None
    for i, line in enumerate(lines):
        if 0 < i < len(lines) - 1 and lines[i - 1].startswith("====") and lines[i + 1].startswith("===="):
            section = line.strip()
            current = None
            continue
        if line.startswith("--- ") or (
            section.startswith("HARP CLIENT") and line[:1].isalpha()
        ):
            current = Exchange(section, line.lstrip("- "), _protocol_of(section))
            exchanges.append(current)
            continue
        spy = _SPY_LINE.match(line)
        if spy:
            exchanges.append(Exchange(section, "spy record", "harpd", [spy.group(1).encode()]))
            continue
        client = _CLIENT_LINE.match(line)
        if client:
            if current is None or current.server:
                current = Exchange(section, "(untitled)", _protocol_of(section))
                exchanges.append(current)
            current.client.append(client.group(1).encode("utf-8"))
            current.unterminated = bool(client.group(2))
            continue
        server = _SERVER_LINE.match(line)
        if server and current is not None:
            current.server.append(server.group(1).encode("utf-8"))
    for exchange in exchanges:
        # A few harpd exchanges are recorded inside dispatcher sections.
        if exchange.client and exchange.client[0].startswith((b'{"harp": ', b'{"harp":1')):
            exchange.protocol = "harpd"
    return [e for e in exchanges if e.client or e.server]
