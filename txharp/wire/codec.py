"""JSON-lines framing shared by both protocols: one JSON value per line.

Encoding is compact UTF-8 with no NaN or infinity; decoding is strict and
turns every failure into :class:`~txharp.errors.MalformedMessage`, so no
caller ever sees a bare ``ValueError`` or ``RecursionError``.
"""
from __future__ import annotations

import json
import math
from typing import Any

from txharp.errors import EncodingError, MalformedMessage

__all__ = ["DEFAULT_MAX_LINE_LENGTH", "encode_line", "decode_line"]

#: Longest line either side accepts by default (4 MiB, newline excluded).
DEFAULT_MAX_LINE_LENGTH = 4 * 1024 * 1024

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        # 1e400 would become infinity, which no JSON encoder can write back.
        raise ValueError(f"number {text} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def encode_line(value: Any) -> bytes:
    """Encode ``value`` as one compact JSON line ending in ``\\n``.

    Non-ASCII text travels as raw UTF-8; a string holding a lone surrogate
    (which UTF-8 cannot carry) falls back to ``\\uXXXX`` escapes instead of
    failing.  NaN, infinities and non-JSON types raise
    :class:`~txharp.errors.EncodingError` before anything is written.
    """
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise EncodingError(f"cannot encode as JSON: {e}") from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = _ASCII_ENCODER.encode(value).encode("ascii")
    return data + b"\n"


def decode_line(line: bytes) -> Any:
    """Decode one line (without its ``\\n``) into a JSON value.

    Accepts everything a conforming peer may send: any whitespace, sorted or
    unsorted keys, ``\\uXXXX`` escapes, raw UTF-8, long exponent floats.
    Raises :class:`~txharp.errors.MalformedMessage` with error type
    ``parse_error`` for bytes that are not one JSON value.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedMessage(f"line is not valid UTF-8: {e.reason}", "parse_error") from None
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise MalformedMessage("JSON nested too deeply", "parse_error") from None
    except ValueError as e:
        raise MalformedMessage(f"not a JSON value: {e}", "parse_error") from None
