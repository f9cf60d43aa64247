"""Dispatcher-protocol lines recorded from the original HarpCaller programs.

Copied from the project's protocol captures (harpcallerd 0.5.0 and the
original ``harp`` 0.5.0 client library, on loopback) so that tests need
nothing outside this repository.  Replies are the server's bytes verbatim,
without the trailing newline; requests are what the original client sends,
compared as decoded JSON.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

JOB_ID = "c4baf2d8-3ecf-42d5-83d9-c3d2a334829f"
UNKNOWN_JOB_ID = "11111111-2222-3333-4444-555555555555"

# ------------------------------------------------ what the original client sends
#: (description, request line) — "J" stands for the job ID.
CLIENT_REQUESTS: Dict[str, bytes] = {
    "rpc.host('h1').echo(1, 2)":
        b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [1, 2], "info": null}',
    "rpc.h1.add(a=1, b=2)":
        b'{"harpcaller": 1, "host": "h1", "procedure": "add", "arguments": {"a": 1, "b": 2}, "info": null}',
    "rpc.h1.noargs()":
        b'{"harpcaller": 1, "host": "h1", "procedure": "noargs", "arguments": [], "info": null}',
    "rpc.host('h1', queue={'q': 1}, concurrency=2, timeout=5, max_exec_time=9, info={'x': 1}).echo(1)":
        b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [1], "queue": {"name":'
        b' {"q": 1}, "concurrency": 2}, "timeout": 5, "max_exec_time": 9, "info": {"x": 1}}',
    "rpc.host('h1', queue={'q': 1}).echo()":
        b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [], "queue": {"name":'
        b' {"q": 1}}, "info": null}',
    "job.get()": b'{"harpcaller": 1, "get_result": "J", "wait": true}',
    "job.result()": b'{"harpcaller": 1, "get_result": "J", "wait": false}',
    "job.cancel()": b'{"harpcaller": 1, "cancel": "J"}',
    "job.host()": b'{"harpcaller": 1, "get_status": "J"}',
    "job.follow()": b'{"harpcaller": 1, "follow_stream": "J"}',
    "job.follow(since=3)": b'{"harpcaller": 1, "follow_stream": "J", "since": 3}',
    "job.follow(recent=2)": b'{"harpcaller": 1, "follow_stream": "J", "recent": 2}',
    "job.stream()": b'{"harpcaller": 1, "read_stream": "J"}',
    "job.stream(since=1)": b'{"harpcaller": 1, "read_stream": "J", "since": 1}',
}

# ---------------------------------------------------------------------- replies
CALL_ACCEPTED = b'{"harpcaller":1,"job_id":"c4baf2d8-3ecf-42d5-83d9-c3d2a334829f"}'
NO_RESULT = b'{"no_result":true}'
CANCELLED = b'{"cancelled":true}'
NOT_CANCELLED = b'{"cancelled":false}'
INVALID_JOBID = b'{"error":{"type":"invalid_jobid","message":"no job with this ID"}}'
MISSING_RESULT = b'{"error":{"type":"missing_result","message":"job interrupted abruptly"}}'
CONTINUE = b'{"continue":true}'

#: get_result replies carrying a value: (reply line, expected value).
RESULT_VALUES: List[Tuple[bytes, Any]] = [
    (b'{"result":[1,2]}', [1, 2]),
    (b'{"result":true}', True),
    (b'{"result":5}', 5),
    (b'{"result":"spied"}', "spied"),
    (b'{"result":[1.50000000000000000000e+00]}', [1.5]),
    (b'{"result":[1.00000000000000005551e-01]}', [0.1]),
    (b'{"result":[-0.00000000000000000000e+00]}', [-0.0]),
    (b'{"result":[3.00000000000000000000e+00]}', [3.0]),
    (b'{"result":[12345678901234567890]}', [12345678901234567890]),
    (b'{"result":[-5]}', [-5]),
    ('{"result":["zażółć"]}'.encode("utf-8"), ["zażółć"]),
    ('{"result":["zażółć ☃ (raw UTF-8)"]}'.encode("utf-8"), ["zażółć ☃ (raw UTF-8)"]),
    (b'{"result":["tab\\tx"]}', ["tab\tx"]),
    (b'{"result":["q\\"x"]}', ['q"x']),
    (b'{"result":["b\\\\s"]}', ["b\\s"]),
    (b'{"result":["s/l"]}', ["s/l"]),
    (b'{"result":["s\\\\/l"]}', ["s\\/l"]),
    (b'{"result":["\\n"]}', ["\n"]),
    (b'{"result":["\\u0000"]}', ["\x00"]),
    (b'{"result":[{"a":[true,false,null],"b":1}]}', [{"a": [True, False, None], "b": 1}]),
    (b'{"result":[[]]}', [[]]),
    (b'{"result":[{}]}', [{}]),
]

#: get_result replies for a procedure that raised: (line, type, message, data).
EXCEPTIONS: List[Tuple[bytes, str, str, Any]] = [
    (
        b'{"exception":{"type":"TestFailure","message":"intentional failure","data":'
        b'{"class":"TestFailure","module":"harpd.__procedures__"}}}',
        "TestFailure",
        "intentional failure",
        {"class": "TestFailure", "module": "harpd.__procedures__"},
    ),
    (
        b'{"exception":{"type":"RuntimeError","message":"stream broke after 2 packets","data":'
        b'{"class":"RuntimeError","module":"exceptions"}}}',
        "RuntimeError",
        "stream broke after 2 packets",
        {"class": "RuntimeError", "module": "exceptions"},
    ),
]

#: get_result replies for operational errors: (line, type, message, data).
ERRORS: List[Tuple[bytes, str, str, Any]] = [
    (INVALID_JOBID, "invalid_jobid", "no job with this ID", None),
    (MISSING_RESULT, "missing_result", "job interrupted abruptly", None),
    (
        b'{"error":{"type":"no_such_procedure","message":"no such procedure","data":{"procedure":"nope"}}}',
        "no_such_procedure",
        "no such procedure",
        {"procedure": "nope"},
    ),
    (b'{"error":{"type":"auth_error","message":"unknown user or wrong password"}}',
     "auth_error", "unknown user or wrong password", None),
    (b'{"error":{"type":"econnrefused","message":"connection refused"}}',
     "econnrefused", "connection refused", None),
    (b'{"error":{"type":"unknown_host","message":"host unknown"}}', "unknown_host", "host unknown", None),
    (b'{"error":{"type":"bad_address","message":"invalid host address or port number"}}',
     "bad_address", "invalid host address or port number", None),
    (b'{"error":{"type":"invalid_request","message":"invalid request"}}',
     "invalid_request", "invalid request", None),
    (b'{"error":{"type":"invalid_message","message":"set([1, 2]) is not JSON serializable"}}',
     "invalid_message", "set([1, 2]) is not JSON serializable", None),
    (b'{"error":{"type":"timeout","message":"maximum execution time exceeded"}}',
     "timeout", "maximum execution time exceeded", None),
    (b'{"error":{"type":"timeout","message":"reading result timed out"}}',
     "timeout", "reading result timed out", None),
    (b'{"error":{"type":"timeout","message":"request timed out"}}', "timeout", "request timed out", None),
    (b'{"error":{"type":"bad_protocol","message":"Harp protocol error"}}',
     "bad_protocol", "Harp protocol error", None),
    (b'{"error":{"type":"custom_error","message":"boom"}}', "custom_error", "boom", None),
]

# ----------------------------------------------------------------- get_status
STATUS_FINISHED_WITH_INFO = (
    b'{"call":{"procedure":"echo","arguments":[1,2],"host":"h1"},'
    b'"time":{"submit":1795530117,"start":1795530117,"end":1795530117},'
    b'"info":{"n":[1,2],"who":"capture"}}'
)
STATUS_RUNNING = (
    b'{"call":{"procedure":"sleep","arguments":[1],"host":"h1"},'
    b'"time":{"submit":1795530117,"start":1795530117,"end":null},"info":null}'
)
STATUS_QUEUED = (
    b'{"call":{"procedure":"sleep","arguments":[1],"host":"h1"},'
    b'"time":{"submit":1795530118,"start":null,"end":null},"info":null}'
)
STATUS_CANCELLED_IN_QUEUE = (
    b'{"call":{"procedure":"sleep","arguments":[1],"host":"h1"},'
    b'"time":{"submit":1795530118,"start":null,"end":1795530118},"info":null}'
)

# ------------------------------------------------------- follow / read_stream
def packet(number: int, data: Any = None) -> bytes:
    """A packet line as the original dispatcher prints it (``{"i": N}`` data by default)."""
    body = f'{{"i":{number}}}' if data is None else data
    return f'{{"packet":{number},"data":{body}}}'.encode()


#: read_stream of a running stream_n(6, 0.5) job with packets 0..2 recorded.
READ_RUNNING = [packet(0), packet(1), packet(2), CONTINUE]
#: read_stream of that job once finished.
READ_FINISHED = [packet(n) for n in range(6)] + [b'{"result":"done"}']
#: follow_stream (default recent=0) of that job while running.
FOLLOW_RUNNING = [packet(3), packet(4), packet(5), b'{"result":"done"}']
#: follow_stream of a stream_fail(2) job: an exception ends the stream.
FOLLOW_EXCEPTION = [packet(0), packet(1), EXCEPTIONS[1][0]]
#: read_stream of a job whose harpd sent an error mid-stream.
READ_ERROR = [b'{"packet":0,"data":{"x":1}}', b'{"error":{"type":"custom_error","message":"boom"}}']
#: follow_stream of a job cancelled by another client mid-stream.
FOLLOW_CANCELLED = [packet(2), packet(3), CANCELLED]
#: read_stream of a queued job.
READ_QUEUED = [CONTINUE]


def same_json(expected: Any, actual: Any) -> bool:
    """Equality that also tells -0.0 from 0.0 (which ``==`` does not)."""
    if isinstance(expected, float) and isinstance(actual, float):
        return expected == actual and math.copysign(1, expected) == math.copysign(1, actual)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(map(same_json, expected, actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(same_json(v, actual[k]) for k, v in expected.items())
    return type(expected) is type(actual) and expected == actual
