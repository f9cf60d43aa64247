"""Wire lines for the harp-proxy tests, copied from the original programs' captures.

Requests are what the original ``harp`` client library (or a raw client)
sent to the original dispatcher; replies are the original's exact bytes
where harp-proxy answers the same way.  Where harp-proxy deliberately
differs (an error line instead of a silent close) the expected line is
harp-proxy's.
"""
from __future__ import annotations

from tests import vectors_dispatcher as D

# Error lines the original dispatcher sent, byte for byte.
UNKNOWN_JOB = D.INVALID_JOBID + b"\n"
NO_RESULT = D.NO_RESULT + b"\n"
CANCELLED = D.CANCELLED + b"\n"
NOT_CANCELLED = D.NOT_CANCELLED + b"\n"
CONTINUE = D.CONTINUE + b"\n"


def _client(call: str) -> bytes:
    """The line the original client library sent for ``call`` ("J": a job ID)."""
    return D.CLIENT_REQUESTS[call] + b"\n"


# Requests of the original client library (harp 0.5.0), with "J" to be
# replaced by a job ID.
CLIENT_CALL_POSITIONAL = _client("rpc.host('h1').echo(1, 2)")
CLIENT_CALL_NAMED = _client("rpc.h1.add(a=1, b=2)")
CLIENT_CALL_QUEUED = _client(
    "rpc.host('h1', queue={'q': 1}, concurrency=2, timeout=5, max_exec_time=9, info={'x': 1}).echo(1)"
)
CLIENT_GET_WAIT = _client("job.get()")
CLIENT_GET_NOWAIT = _client("job.result()")
CLIENT_CANCEL = _client("job.cancel()")
CLIENT_STATUS = _client("job.host()")
CLIENT_FOLLOW = _client("job.follow()")
CLIENT_FOLLOW_SINCE = _client("job.follow(since=3)")
CLIENT_FOLLOW_RECENT = _client("job.follow(recent=2)")
CLIENT_READ = _client("job.stream()")
CLIENT_READ_SINCE = _client("job.stream(since=1)")

# Malformed requests the original dropped silently, and harp-proxy's answer.
MALFORMED = [
    (b"this is not json\n",
     b'{"error":{"type":"invalid_request","message":'
     b'"not a JSON value: Expecting value: line 1 column 1 (char 0)"}}\n'),
    (b'{"harpcaller": 2, "get_result": "11111111-2222-3333-4444-555555555555"}\n',
     b'{"error":{"type":"invalid_request","message":"unsupported protocol version"}}\n'),
    (b'{"get_result": "11111111-2222-3333-4444-555555555555"}\n',
     b'{"error":{"type":"invalid_request","message":"unsupported protocol version"}}\n'),
    (b'{"harpcaller": 1, "host": "h1", "procedure": "echo"}\n',
     b'{"error":{"type":"invalid_request","message":"call request without arguments"}}\n'),
    (b'{"harpcaller": 1, "bogus": 1}\n',
     b'{"error":{"type":"invalid_request","message":"unknown operation"}}\n'),
    (b'{"harpcaller": 1, "get_result": "11111111-2222-3333-4444-555555555555", "wait": "yes"}\n',
     b'{"error":{"type":"invalid_request","message":"wait must be true or false"}}\n'),
    (b'{"harpcaller": 1, "read_stream": "J", "since": 0, "recent": 1}\n',
     b'{"error":{"type":"invalid_request","message":"since and recent are mutually exclusive"}}\n'),
    (b'{"harpcaller": 1, "follow_stream": "J", "since": -1}\n',
     b'{"error":{"type":"invalid_request","message":"since must be a non-negative integer"}}\n'),
    (b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [], "queue": {"name": "q"}}\n',
     b'{"error":{"type":"invalid_request","message":"queue name must be a JSON object"}}\n'),
    (b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": "abc"}\n',
     b'{"error":{"type":"invalid_request","message":"arguments must be a list or an object"}}\n'),
    (b'{"harpcaller": 1, "get_status": 5}\n',
     b'{"error":{"type":"invalid_request","message":"get_status must be a job ID string"}}\n'),
    (b'[1, 2]\n',
     b'{"error":{"type":"invalid_request","message":"request must be a JSON object, not list"}}\n'),
    (b'{"harpcaller": true, "cancel": "J"}\n',
     b'{"error":{"type":"invalid_request","message":"unsupported protocol version"}}\n'),
]

# Values the original's JSON decoder mishandled; harp-proxy accepts them.
AWKWARD_ARGUMENTS = [
    b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [1E5]}\n',
    b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [1e100]}\n',
    b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": ["\\ud83d\\ude00"]}\n',
    b'{"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": ["s\\/l"]}\n',
]

# Daemon lines recorded from the original harpd (sorted keys, spaces).
HARPD_ACK = b'{"harp": 1, "stream_result": false}\n'
HARPD_STREAM_ACK = b'{"harp": 1, "stream_result": true}\n'
HARPD_AUTH_ERROR = b'{"error": {"message": "unknown user or wrong password", "type": "auth_error"}, "harp": 1}\n'
HARPD_NO_SUCH_PROCEDURE = (
    b'{"error": {"data": {"procedure": "nope"}, "message": "no such procedure", '
    b'"type": "no_such_procedure"}, "harp": 1}\n'
)
HARPD_EXCEPTION = (
    b'{"exception": {"data": {"class": "TestFailure", "module": "harpd.__procedures__"}, '
    b'"message": "intentional failure", "type": "TestFailure"}}\n'
)
HARPD_TIMEOUT = b'{"error": {"message": "maximum execution time exceeded", "type": "timeout"}, "harp": 1}\n'

# ... and what the original dispatcher relayed for them.
RELAYED_AUTH_ERROR = b'{"error":{"type":"auth_error","message":"unknown user or wrong password"}}\n'
RELAYED_NO_SUCH_PROCEDURE = (
    b'{"error":{"type":"no_such_procedure","message":"no such procedure","data":{"procedure":"nope"}}}\n'
)
RELAYED_EXCEPTION = (
    b'{"exception":{"type":"TestFailure","message":"intentional failure",'
    b'"data":{"class":"TestFailure","module":"harpd.__procedures__"}}}\n'
)

# What the original dispatcher sent to harpd (spy captures).
SPY_REQUEST_POSITIONAL = (
    b'{"harp":1,"procedure":"some_proc","arguments":[1,"two",{"three":3}],'
    b'"auth":{"user":"spyuser","password":"spypass"}}\n'
)
