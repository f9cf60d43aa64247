"""JSON-lines framing shared by both protocols: one JSON value per line.

Encoding is compact UTF-8 with no NaN or infinity; decoding is strict and
turns every failure into :class:`~txharp.errors.MalformedMessage`, so no
caller ever sees a bare ``ValueError`` or ``RecursionError``.
"""
from __future__ import annotations

import json
import math
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Callable

from txharp.errors import EncodingError, MalformedMessage

try:
    from json.encoder import c_make_encoder
except ImportError:  # pragma: no cover - CPython always has it
    c_make_encoder = None

__all__ = ["DEFAULT_MAX_LINE_LENGTH", "RawJSON", "encode_json", "encode_line", "decode_line"]

#: Longest line either side accepts by default (4 MiB, newline excluded).
DEFAULT_MAX_LINE_LENGTH = 4 * 1024 * 1024


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _text_encoder(ensure_ascii: bool) -> Callable[[Any], str]:
    """Compact JSON text, NaN and infinities refused.

    On CPython this is the json module's C encoder, made once and reused:
    ``JSONEncoder.encode`` builds a new one for every value, which costs
    more than encoding a small value.  It keeps no state between calls
    (no circular-reference markers: a cyclic value fails with
    RecursionError), so threads may share it.
    """
    if c_make_encoder is None:  # pragma: no cover
        return json.JSONEncoder(
            ensure_ascii=ensure_ascii, allow_nan=False, separators=(",", ":")
        ).encode
    encoder = c_make_encoder(
        None, _not_json, encode_basestring_ascii if ensure_ascii else encode_basestring,
        None, ":", ",", False, False, False,
    )
    return lambda value: "".join(encoder(value, 0))


_encode_text = _text_encoder(False)
_encode_ascii = _text_encoder(True)


class RawJSON:
    """A value already encoded by :func:`encode_json`, to be written as it is.

    Lets a hot path encode a value once and use the bytes twice (a stream
    packet goes both into its wire line and into the job store).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"RawJSON({self.data!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, RawJSON) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        # 1e400 would become infinity, which no JSON encoder can write back.
        raise ValueError(f"number {text} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def encode_json(value: Any) -> bytes:
    """Encode ``value`` as compact JSON (no newline), as :func:`encode_line` does.

    A :class:`RawJSON` is returned as it is.
    """
    if type(value) is RawJSON:
        return value.data
    try:
        text = _encode_text(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise EncodingError(f"cannot encode as JSON: {e}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _encode_ascii(value).encode("ascii")


def encode_line(value: Any) -> bytes:
    """Encode ``value`` as one compact JSON line ending in ``\\n``.

    Non-ASCII text travels as raw UTF-8; a string holding a lone surrogate
    (which UTF-8 cannot carry) falls back to ``\\uXXXX`` escapes instead of
    failing.  NaN, infinities and non-JSON types raise
    :class:`~txharp.errors.EncodingError` before anything is written.
    """
    return encode_json(value) + b"\n"


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
