"""Hypothesis strategies for both HarpCaller wire protocols, valid and broken.

Valid messages are the dataclasses of :mod:`txharp.wire` filled with
arbitrary JSON: big integers, floats, every kind of text (astral planes,
lone surrogates, NUL, escapes), nested lists and objects.  Broken input
comes in two layers: *JSON-level* mutations (a field dropped, retyped or
replaced by a huge number or a deeply nested value) and *byte-level*
mutations of an encoded line (truncated, a byte flipped, NUL or invalid
UTF-8 injected, bytes deleted or duplicated).

Example counts are bounded for CI by :data:`CI` (``derandomize=True``, so a
run is reproducible); set ``TXHARP_FUZZ_EXAMPLES`` to multiply them for a
longer local hunt, e.g. ``TXHARP_FUZZ_EXAMPLES=20``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from txharp.wire import (
    Acknowledgement,
    CallAccepted,
    CallRequest,
    CancelledReply,
    CancelReply,
    CancelRequest,
    ContinueReply,
    DaemonRequest,
    ErrorReply,
    ExceptionReply,
    FollowStreamRequest,
    GetResultRequest,
    GetStatusRequest,
    NoResultReply,
    Packet,
    QueueSpec,
    ReadStreamRequest,
    ResultReply,
    StatusReply,
    StreamItem,
)

__all__ = [
    "CI",
    "ci_settings",
    "same_json",
    "texts",
    "json_values",
    "json_objects",
    "arguments",
    "outcomes",
    "requests",
    "daemon_requests",
    "daemon_reply_sequences",
    "stream_sequences",
    "mutated_values",
    "mutated_lines",
    "garbage_lines",
    "deep_nesting",
    "huge_number_texts",
]

_SCALE = max(1, int(os.environ.get("TXHARP_FUZZ_EXAMPLES", "1") or 1))


def ci_settings(max_examples: int) -> settings:
    """Bounded, deterministic settings: what runs in CI (scaled by TXHARP_FUZZ_EXAMPLES)."""
    return settings(
        max_examples=max_examples * _SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
        print_blob=False,
    )


#: The default for most properties.
CI = ci_settings(150)


# ------------------------------------------------------------------ JSON


def same_json(a: Any, b: Any) -> bool:
    """Equality that tells ``1`` from ``1.0`` from ``True`` and ``0.0`` from ``-0.0``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return bool(a == b)


#: Text of every kind: any code point including astral ones and lone
#: surrogates (which UTF-8 cannot carry: the codec escapes them), NUL, the
#: characters JSON must escape, and ordinary words.
_characters = st.one_of(
    st.characters(codec=None, exclude_categories=()),  # everything, surrogates included
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),  # astral
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.sampled_from(['"', "\\", "/", "\n", "\r", "\t", "\x00", "\x7f", "\u2028", "\ufeff"]),
)
texts = st.one_of(
    st.text(_characters, max_size=12),
    st.sampled_from(["", "echo", "web01", "zażółć", "🦄", "\ud800", "\udfff\ud800", "a\x00b"]),
)

#: Integers from small to thousands of digits (below Python's 4300-digit
#: conversion limit, which :func:`huge_number_texts` goes past).
big_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(10 ** 60), max_value=10 ** 60),
    st.builds(lambda digits, sign: sign * int("9" * digits), st.integers(20, 4000), st.sampled_from([1, -1])),
    st.sampled_from([2 ** 63 - 1, 2 ** 63, -(2 ** 63), 2 ** 64, 10 ** 308]),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.5, 1e-320, 5e-324, 1.7976931348623157e308, 1e16, 0.1]),
)
json_scalars = st.one_of(st.none(), st.booleans(), big_ints, floats, texts)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value, nested."""
    return st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(texts, children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def json_objects(max_leaves: int = 8) -> st.SearchStrategy[Dict[str, Any]]:
    return st.dictionaries(texts, json_values(max_leaves), max_size=4)


arguments = st.one_of(st.lists(json_values(6), max_size=4), json_objects(6))
positive_seconds = st.one_of(
    st.integers(min_value=1, max_value=10 ** 6),
    st.floats(min_value=1e-3, max_value=1e6, allow_nan=False),
)
counts = st.one_of(st.integers(min_value=0, max_value=10 ** 6), st.sampled_from([0, 2 ** 63, 10 ** 30]))


# --------------------------------------------------------------- messages


def _failure_fields(kind: Callable[..., Any]) -> st.SearchStrategy[Any]:
    return st.builds(kind, texts, texts, st.one_of(st.none(), json_values(6)))


result_replies = st.builds(ResultReply, json_values())
exception_replies = _failure_fields(ExceptionReply)
error_replies = _failure_fields(ErrorReply)
#: Every way a job ends.
outcomes = st.one_of(result_replies, exception_replies, error_replies, st.just(CancelledReply()))

queue_specs = st.builds(
    QueueSpec, json_objects(4), st.one_of(st.none(), st.integers(min_value=1, max_value=10 ** 9))
)
call_requests = st.builds(
    CallRequest,
    host=texts,
    procedure=texts,
    arguments=arguments,
    timeout=st.one_of(st.none(), positive_seconds),
    max_exec_time=st.one_of(st.none(), positive_seconds),
    queue=st.one_of(st.none(), queue_specs),
    info=json_values(6),
)
job_ids = st.one_of(st.uuids().map(str), texts)


def _stream_request(kind: Any) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(kind, job_ids),
        st.builds(kind, job_ids, since=counts),
        st.builds(kind, job_ids, recent=counts),
    )


#: Every dispatcher request, valid.
requests = st.one_of(
    call_requests,
    st.builds(CancelRequest, job_ids),
    st.builds(GetResultRequest, job_ids, st.one_of(st.none(), st.booleans())),
    st.builds(GetStatusRequest, job_ids),
    _stream_request(FollowStreamRequest),
    _stream_request(ReadStreamRequest),
)

times = st.integers(min_value=0, max_value=2 ** 40)
status_replies = st.builds(
    StatusReply,
    host=texts,
    procedure=texts,
    arguments=arguments,
    submit=times,
    start=st.one_of(st.none(), times),
    end=st.one_of(st.none(), times),
    info=json_values(6),
)
packets = st.builds(Packet, counts, json_values())

daemon_requests = st.builds(DaemonRequest, texts, arguments, texts, texts)


@st.composite
def daemon_reply_sequences(draw: Any) -> List[Any]:
    """A complete, valid harpd reply: an error alone, or ack, packets, final."""
    if draw(st.integers(0, 5)) == 0:
        return [draw(error_replies)]
    streaming = draw(st.booleans())
    lines: List[Any] = [Acknowledgement(streaming)]
    if streaming:
        lines += [StreamItem(v) for v in draw(st.lists(json_values(6), max_size=5))]
    lines.append(draw(st.one_of(result_replies, exception_replies, error_replies)))
    return lines


def daemon_wire(message: Any) -> Any:
    """The harpd wire form of a reply message (errors carry ``"harp": 1``)."""
    return message.to_daemon_json() if isinstance(message, ErrorReply) else message.to_json()


@st.composite
def stream_sequences(draw: Any, allow_continue: bool = True) -> List[Any]:
    """A complete, valid follow/read stream reply: numbered packets, one end."""
    first = draw(st.one_of(st.integers(0, 5), st.sampled_from([2 ** 40, 10 ** 20])))
    data = draw(st.lists(json_values(6), max_size=6))
    lines: List[Any] = [Packet(first + i, d) for i, d in enumerate(data)]
    ends = outcomes | st.just(ContinueReply()) if allow_continue else outcomes
    lines.append(draw(ends))
    return lines


#: (message, its parser's name) pairs, built in test_fuzz_wire.
def any_reply() -> st.SearchStrategy[Any]:
    """Every dispatcher reply message."""
    return st.one_of(
        st.builds(CallAccepted, job_ids),
        st.builds(CancelReply, st.booleans()),
        status_replies,
        packets,
        outcomes,
        st.just(NoResultReply()),
        st.just(ContinueReply()),
    )


# -------------------------------------------------------------- mutations


def deep_nesting(depth: int, opener: str = "[") -> bytes:
    """A JSON text nested ``depth`` levels (deep enough to overflow a naive parser)."""
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "[":
        return (opener * depth + closer * depth).encode()
    return ('{"a":' * depth + "1" + "}" * depth).encode()


def huge_number_texts() -> st.SearchStrategy[bytes]:
    """Numbers a JSON parser may choke on: 5000+ digits, exponents out of range."""
    return st.one_of(
        st.integers(4301, 20000).map(lambda n: b"9" * n),
        st.sampled_from([b"1e400", b"-1e400", b"1" + b"0" * 400 + b".5",
                         b"123456789012345678901234567890e999999999"]),
    )


_weird_values = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1.5, "", "x", [], {}, [[]], {"": {}}]),
    big_ints,
    texts,
    st.just(json.loads(deep_nesting(200).decode())),
)


@st.composite
def mutated_values(draw: Any, base: st.SearchStrategy[Any]) -> Any:
    """A wire value (``to_json()`` of a valid message) with its fields dropped,
    retyped, renamed or replaced, at the top level or one level down."""
    value = draw(base)
    value = value.to_json() if hasattr(value, "to_json") else value
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(value, dict) or not value:
            return draw(st.one_of(_weird_values, st.just(value)))
        key = draw(st.sampled_from(sorted(value)))
        value = dict(value)
        action = draw(st.integers(0, 5))
        if action == 0:
            del value[key]
        elif action == 1:
            value[key] = draw(_weird_values)
        elif action == 2:
            value[draw(texts)] = value.pop(key)
        elif action == 3 and isinstance(value[key], dict) and value[key]:
            inner = dict(value[key])
            inner_key = draw(st.sampled_from(sorted(inner)))
            if draw(st.booleans()):
                del inner[inner_key]
            else:
                inner[inner_key] = draw(_weird_values)
            value[key] = inner
        elif action == 4:
            value[draw(st.sampled_from(["harp", "harpcaller", "since", "recent", "wait", "queue",
                                        "arguments", "auth", "stream", "packet", "error"]))] = draw(_weird_values)
        else:
            value = draw(st.one_of(st.just([value]), st.just(value)))
    return value


def _line_of(value: Any) -> bytes:
    """``value`` as the original harpd or a careless client might write it."""
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"null"


@st.composite
def mutated_lines(draw: Any, base: st.SearchStrategy[Any]) -> bytes:
    """An encoded message (without newline) damaged at the byte level."""
    value = draw(base)
    value = value.to_json() if hasattr(value, "to_json") else value
    line = bytearray(_line_of(value))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.integers(0, 7))
        position = draw(st.integers(0, len(line)))
        if action == 0:
            del line[position:]  # truncated
        elif action == 1 and line:
            index = min(position, len(line) - 1)
            line[index] ^= 1 << draw(st.integers(0, 7))  # a flipped bit
        elif action == 2:
            line[position:position] = b"\x00"
        elif action == 3:
            line[position:position] = draw(st.sampled_from(
                [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]))
        elif action == 4:
            end = draw(st.integers(position, len(line)))
            del line[position:end]
        elif action == 5:
            end = draw(st.integers(position, len(line)))
            line[position:position] = line[position:end]  # duplicated bytes
        elif action == 6:
            line[position:position] = draw(huge_number_texts())
        else:
            line[position:position] = draw(st.sampled_from([b"[", b"{", b"}", b"]", b",", b":", b'"', b"\\"]))
    return bytes(line).replace(b"\n", b" ")


#: Lines with no structure at all.
garbage_lines = st.one_of(
    st.binary(max_size=64).map(lambda b: b.replace(b"\n", b"")),
    huge_number_texts(),
    st.integers(1, 5000).map(deep_nesting),
    st.integers(1, 5000).map(lambda d: deep_nesting(d, "{")),
    st.sampled_from([b"", b" ", b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"a":1}{"b":2}',
                     b"\xef\xbb\xbf{}", b'"\\ud800"', b'"\\u00"', b"[1,]", b'{"a"}', b"nul",
                     b'{"harp":1e400}', b"\x00", b"{}\x00"]),
)


def pairs(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Tuple[Any, Any]]:
    return st.tuples(strategy, strategy)
