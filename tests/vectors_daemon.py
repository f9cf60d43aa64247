"""Lines recorded from the original harpd 0.5.0, for replay in the client tests.

Copied verbatim from the project's protocol captures (the HARPD sections
and the dispatcher's requests to a spy daemon) so that the tests need
nothing outside this repository.  Requests are what the recording client
sent (spaced JSON); replies are the daemon's lines without their ``\\n``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["Recorded", "HARPD", "DISPATCHER_REQUESTS"]


@dataclass(frozen=True)
class Recorded:
    """One connection to the original harpd: request line(s), then reply lines."""

    title: str
    requests: Tuple[bytes, ...]
    replies: Tuple[bytes, ...]


#: Every recorded harpd conversation, by a short name.
HARPD: Dict[str, Recorded] = {
    'echo': Recorded(
        'single result: ack + result (echo)',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": [1, 2, "x"], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"result": [1, 2, "x"]}',
        ),
    ),
    'named_args': Recorded(
        'named arguments (add)',
        (
            rb'{"harp": 1, "procedure": "add", "arguments": {"a": 2, "b": 3}, "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"result": 5}',
        ),
    ),
    'no_args': Recorded(
        'no arguments',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"result": []}',
        ),
    ),
    'stream': Recorded(
        'streamed result: ack + stream packets + result',
        (
            rb'{"harp": 1, "procedure": "stream_n", "arguments": [3], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": true}',
            rb'{"stream": {"i": 0}}',
            rb'{"stream": {"i": 1}}',
            rb'{"stream": {"i": 2}}',
            rb'{"result": "done"}',
        ),
    ),
    'stream_no_result': Recorded(
        'streaming procedure without Result -> result null',
        (
            rb'{"harp": 1, "procedure": "stream_noresult", "arguments": [2], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": true}',
            rb'{"stream": 0}',
            rb'{"stream": 1}',
            rb'{"result": null}',
        ),
    ),
    'exception': Recorded(
        'exception raised in procedure',
        (
            rb'{"harp": 1, "procedure": "fail", "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"exception": {"data": {"class": "TestFailure", "module": "harpd.__procedures__"}, "message": "intentional failure", "type": "TestFailure"}}',
        ),
    ),
    'exception_builtin': Recorded(
        'exception (builtin ValueError)',
        (
            rb'{"harp": 1, "procedure": "fail_value", "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"exception": {"data": {"class": "ValueError", "module": "exceptions"}, "message": "bad value", "type": "ValueError"}}',
        ),
    ),
    'exception_mid_stream': Recorded(
        'exception in the middle of a stream',
        (
            rb'{"harp": 1, "procedure": "stream_fail", "arguments": [2], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": true}',
            rb'{"stream": {"i": 0}}',
            rb'{"stream": {"i": 1}}',
            rb'{"exception": {"data": {"class": "RuntimeError", "module": "exceptions"}, "message": "stream broke after 2 packets", "type": "RuntimeError"}}',
        ),
    ),
    'wrong_arg_count': Recorded(
        'wrong number of arguments (NOT invalid_argument_list: TypeError exception)',
        (
            rb'{"harp": 1, "procedure": "add", "arguments": [1], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"exception": {"data": {"class": "TypeError", "module": "exceptions"}, "message": "add() takes exactly 2 arguments (1 given)", "type": "TypeError"}}',
        ),
    ),
    'type_error': Recorded(
        'TypeError inside procedure',
        (
            rb'{"harp": 1, "procedure": "add", "arguments": [1, "x"], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb"""{"exception": {"data": {"class": "TypeError", "module": "exceptions"}, "message": "unsupported operand type(s) for +: 'int' and 'unicode'", "type": "TypeError"}}""",
        ),
    ),
    'auth_wrong_password': Recorded(
        'auth_error (wrong password)',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": [1], "auth": {"user": "alice", "password": "wrong"}}',
        ),
        (
            rb'{"error": {"message": "unknown user or wrong password", "type": "auth_error"}, "harp": 1}',
        ),
    ),
    'auth_unknown_user': Recorded(
        'auth_error (unknown user)',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": [1], "auth": {"user": "nobody", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"message": "unknown user or wrong password", "type": "auth_error"}, "harp": 1}',
        ),
    ),
    'no_such_procedure': Recorded(
        'no_such_procedure',
        (
            rb'{"harp": 1, "procedure": "nope", "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"data": {"procedure": "nope"}, "message": "no such procedure", "type": "no_such_procedure"}, "harp": 1}',
        ),
    ),
    'auth_before_procedure': Recorded(
        'no_such_procedure with bad password -> auth checked first',
        (
            rb'{"harp": 1, "procedure": "nope", "arguments": [], "auth": {"user": "alice", "password": "wrong"}}',
        ),
        (
            rb'{"error": {"message": "unknown user or wrong password", "type": "auth_error"}, "harp": 1}',
        ),
    ),
    'arguments_string': Recorded(
        'arguments is a string -> invalid_request (invalid_argument_list is unreachable)',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": "abc", "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"message": "invalid request", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'arguments_number': Recorded(
        'arguments is a number',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": 5, "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"message": "invalid request", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'arguments_missing': Recorded(
        'arguments missing',
        (
            rb'{"harp": 1, "procedure": "echo", "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"message": "invalid request", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'parse_error': Recorded(
        'parse_error',
        (
            rb'this is not json',
        ),
        (
            rb'{"error": {"message": "No JSON object could be decoded", "type": "parse_error"}, "harp": 1}',
        ),
    ),
    'parse_error_truncated': Recorded(
        'parse_error (truncated JSON)',
        (
            rb'{"harp": 1, "procedure": ',
        ),
        (
            rb'{"error": {"message": "No JSON object could be decoded", "type": "parse_error"}, "harp": 1}',
        ),
    ),
    'request_not_object': Recorded(
        'request is not an object',
        (
            rb'[1, 2]',
        ),
        (
            rb'{"error": {"message": "invalid request data type", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'missing_version': Recorded(
        'missing harp field (docs say invalid_protocol)',
        (
            rb'{"procedure": "echo", "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"message": "unsupported protocol version", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'wrong_version': Recorded(
        'harp: 2',
        (
            rb'{"harp": 2, "procedure": "echo", "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"message": "unsupported protocol version", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'missing_auth': Recorded(
        'missing auth',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": []}',
        ),
        (
            rb'{"error": {"message": "malformed credentials data", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'procedure_not_string': Recorded(
        'procedure not a string',
        (
            rb'{"harp": 1, "procedure": 5, "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"error": {"message": "invalid request", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'excessive_data': Recorded(
        'two lines in one write -> excessive data',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": [1], "auth": {"user": "alice", "password": "s3cret"}}',
            rb'{"x": 1}',
        ),
        (
            rb'{"error": {"message": "excessive data after request", "type": "invalid_request"}, "harp": 1}',
        ),
    ),
    'invalid_message': Recorded(
        'result not JSON-serializable (error after ack)',
        (
            rb'{"harp": 1, "procedure": "unserializable", "arguments": [], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"error": {"message": "set([1, 2]) is not JSON serializable", "type": "invalid_message"}, "harp": 1}',
        ),
    ),
    'timeout': Recorded(
        'procedure(timeout=1) exceeding its time (harpd timeout)',
        (
            rb'{"harp": 1, "procedure": "sleep_timeout1", "arguments": [5], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"error": {"message": "maximum execution time exceeded", "type": "timeout"}, "harp": 1}',
        ),
    ),
    'non_ascii': Recorded(
        'non-ASCII string (harpd escapes with \\uXXXX)',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": ["za\u017c\u00f3\u0142\u0107"], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"result": ["za\u017c\u00f3\u0142\u0107"]}',
        ),
    ),
    'json_types': Recorded(
        'JSON types round-trip',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": [1.5, 1e+100, true, null, {"k": [1]}], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"result": [1.5, 1e+100, true, null, {"k": [1]}]}',
        ),
    ),
    'json_types_full': Recorded(
        'for comparison: harpd directly (Python 2 json.dumps, sort_keys=True, ensure_ascii)',
        (
            rb'{"harp": 1, "procedure": "echo", "arguments": [1.5, 0.1, 1e-05, 1e+100, -0.0, 3.0, 12345678901234567890, "za\u017c\u00f3\u0142\u0107 \u2603", "\ud83d\ude00", "s/l", {"b": 1, "a": [true, false, null]}], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"result": [1.5, 0.1, 1e-05, 1e+100, -0.0, 3.0, 12345678901234567890, "za\u017c\u00f3\u0142\u0107 \u2603", "\ud83d\ude00", "s/l", {"a": [true, false, null], "b": 1}]}',
        ),
    ),
    'shutdown': Recorded(
        'SIGTERM to harpd (parent) 0.5 s into sleep(5)',
        (
            rb'{"harp": 1, "procedure": "sleep", "arguments": [5], "auth": {"user": "alice", "password": "s3cret"}}',
        ),
        (
            rb'{"harp": 1, "stream_result": false}',
            rb'{"error": {"message": "service is shutting down", "type": "shutdown"}, "harp": 1}',
        ),
    ),
}

#: The original dispatcher's requests to harpd, verbatim (compact JSON): the
#: byte form txharp's client sends.  Called as ``some_proc(1, "two",
#: {"three": 3})`` and ``kw_proc(a=1, b=2)`` as user ``spyuser``, password
#: ``spypass``.
DISPATCHER_REQUESTS: Tuple[bytes, ...] = (
    rb'{"harp":1,"procedure":"some_proc","arguments":[1,"two",{"three":3}],"auth":{"user":"spyuser","password":"spypass"}}',
    rb'{"harp":1,"procedure":"kw_proc","arguments":{"a":1,"b":2},"auth":{"user":"spyuser","password":"spypass"}}',
)
