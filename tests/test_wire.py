"""The pure wire layer against every line recorded from the original programs."""
from __future__ import annotations

import json
import math

from twisted.trial.unittest import SynchronousTestCase

from tests.capture import load_exchanges
from txharp.errors import EncodingError, MalformedMessage, RemoteError, RemoteException
from txharp.wire import (
    Acknowledgement,
    CallAccepted,
    CallRequest,
    CancelledReply,
    CancelReply,
    CancelRequest,
    ContinueReply,
    DaemonReplyReader,
    DaemonRequest,
    DaemonRequestError,
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
    StreamReader,
    decode_line,
    encode_line,
    parse_call_reply,
    parse_cancel_reply,
    parse_daemon_request,
    parse_request,
    parse_result_reply,
    parse_status_reply,
)

EXCHANGES = load_exchanges()

#: Dispatcher requests the original closed without a reply because they are malformed.
MALFORMED_DISPATCHER_REQUESTS = {
    "not JSON",
    "harpcaller: 2",
    "missing harpcaller field",
    "call without arguments",
    "unknown operation",
    "wait not a boolean",
    "queue name as a string (docs: must be an object)",
    "read_stream with both since and recent",
}

#: Accepted by the original (the job then failed at harpd), refused at once by
#: txharp: the published contract says arguments are a list or an object.
REFUSED_ONLY_BY_TXHARP = {'call h1.echo("abc")'}


def _decode(line: bytes):
    return decode_line(line)


class CaptureCoverageTests(SynchronousTestCase):
    """The capture file is read completely, so the tests below see every line."""

    def test_every_recorded_line_is_loaded(self) -> None:
        self.assertEqual(sum(len(e.client) for e in EXCHANGES), 202)
        self.assertEqual(sum(len(e.server) for e in EXCHANGES), 239)
        self.assertEqual({e.protocol for e in EXCHANGES}, {"harpd", "dispatcher"})


class DaemonCaptureTests(SynchronousTestCase):
    """Every harpd line of the captures parses, and refusals match the original's."""

    def _harpd(self):
        return [e for e in EXCHANGES if e.protocol == "harpd"]

    def test_requests_parse_or_are_refused_like_the_original(self) -> None:
        checked = 0
        for exchange in self._harpd():
            # A second line is "excessive data", refused by the daemon's
            # protocol state, not by request validation.
            for line in exchange.client[:1]:
                try:
                    value = _decode(line)
                except MalformedMessage as e:
                    self.assertEqual(e.error_type, "parse_error")
                    first = _decode(exchange.server[0])
                    self.assertEqual(first["error"]["type"], "parse_error", exchange.title)
                    checked += 1
                    continue
                try:
                    request = parse_daemon_request(value)
                except DaemonRequestError as e:
                    self.assertEqual(
                        e.reply().to_daemon_json(), _decode(exchange.server[0]), exchange.title
                    )
                    checked += 1
                    continue
                self.assertIsInstance(request, DaemonRequest)
                self.assertEqual(decode_line(encode_line(request.to_json())), value)
                checked += 1
        self.assertEqual(checked, 37)

    def test_replies_follow_the_reply_order(self) -> None:
        finals = []
        for exchange in self._harpd():
            if not exchange.server:
                continue
            reader = DaemonReplyReader()
            for line in exchange.server:
                reader.feed(_decode(line))
            self.assertTrue(reader.finished, exchange.title)
            finals.append(reader.final)
        self.assertIn(ResultReply(["zażółć"]), finals)
        self.assertIn(
            ExceptionReply(
                "TestFailure",
                "intentional failure",
                {"class": "TestFailure", "module": "harpd.__procedures__"},
            ),
            finals,
        )
        self.assertIn(ErrorReply("shutdown", "service is shutting down"), finals)

    def test_stream_reply(self) -> None:
        reader = DaemonReplyReader()
        lines = [
            b'{"harp": 1, "stream_result": true}',
            b'{"stream": {"i": 0}}',
            b'{"result": "done"}',
        ]
        self.assertEqual(
            [reader.feed(_decode(line)) for line in lines],
            [Acknowledgement(True), StreamItem({"i": 0}), ResultReply("done")],
        )

    def test_error_before_acknowledgement(self) -> None:
        reader = DaemonReplyReader()
        line = b'{"error": {"message": "unknown user or wrong password", "type": "auth_error"}, "harp": 1}'
        self.assertEqual(
            reader.feed(_decode(line)), ErrorReply("auth_error", "unknown user or wrong password")
        )
        self.assertTrue(reader.finished)

    def test_out_of_order_lines_are_refused(self) -> None:
        cases = [
            [b'{"result": 1}'],  # result before the acknowledgement
            [b'{"harp": 1, "stream_result": false}', b'{"stream": 1}'],  # packet, not streaming
            [b'{"harp": 1, "stream_result": false}', b'{"result": 1}', b'{"result": 2}'],
            [b'{"harp": 2, "stream_result": false}'],
            [b'{"harp": 1, "stream_result": "yes"}'],
            [b'{"harp": 1, "stream_result": true}', b'{"what": 1}'],
            [b"[1, 2]"],
        ]
        for lines in cases:
            reader = DaemonReplyReader()
            with self.assertRaises(MalformedMessage, msg=lines):
                for line in lines:
                    reader.feed(_decode(line))

    def test_password_is_not_in_repr(self) -> None:
        request = DaemonRequest("echo", [1], "alice", "s3cret")
        self.assertNotIn("s3cret", repr(request))
        self.assertEqual(request.to_json()["auth"], {"user": "alice", "password": "s3cret"})

    def test_request_check_order(self) -> None:
        self.assertEqual(
            str(self._refusal({"harp": 2, "procedure": 5})), "unsupported protocol version"
        )
        self.assertEqual(str(self._refusal({"harp": 1, "procedure": 5})), "invalid request")
        self.assertEqual(
            str(self._refusal({"harp": 1, "procedure": "p", "arguments": [], "auth": {"user": 1}})),
            "malformed credentials data",
        )
        self.assertEqual(str(self._refusal({"harp": True, "procedure": "p"})), "unsupported protocol version")

    def _refusal(self, value):
        with self.assertRaises(DaemonRequestError) as cm:
            parse_daemon_request(value)
        self.assertEqual(cm.exception.error_type, "invalid_request")
        return cm.exception


class DispatcherCaptureTests(SynchronousTestCase):
    """Every dispatcher line of the captures parses with the right parser."""

    def _dispatcher(self):
        return [e for e in EXCHANGES if e.protocol == "dispatcher"]

    def test_requests(self) -> None:
        parsed = refused = 0
        for exchange in self._dispatcher():
            for line in exchange.client:
                if exchange.title.strip() in MALFORMED_DISPATCHER_REQUESTS | REFUSED_ONLY_BY_TXHARP:
                    with self.assertRaises(MalformedMessage, msg=exchange.title):
                        parse_request(_decode(line))
                    refused += 1
                    continue
                value = _decode(line)
                request = parse_request(value)
                again = parse_request(decode_line(encode_line(request.to_json())))
                self.assertEqual(again, request, exchange.title)
                parsed += 1
        self.assertEqual(refused, len(MALFORMED_DISPATCHER_REQUESTS) + len(REFUSED_ONLY_BY_TXHARP))
        self.assertEqual(parsed, 155)

    def test_the_original_library_request_lines_are_reproduced(self) -> None:
        built = {
            "rpc.host('h1').echo(1, 2)": CallRequest("h1", "echo", [1, 2]),
            "rpc.h1.add(a=1, b=2)": CallRequest("h1", "add", {"a": 1, "b": 2}),
            "rpc.h1.noargs()": CallRequest("h1", "noargs", []),
            "rpc.host('h1', queue={'q': 1}, concurrency=2, timeout=5, max_exec_time=9, info={'x': 1}).echo(1)": CallRequest(
                "h1", "echo", [1], timeout=5, max_exec_time=9, queue=QueueSpec({"q": 1}, 2), info={"x": 1}
            ),
            "rpc.host('h1', queue={'q': 1}).echo()": CallRequest("h1", "echo", [], queue=QueueSpec({"q": 1})),
            "job.get()  (result(wait=True))": GetResultRequest("J", True),
            "job.result()  (default wait=False)": GetResultRequest("J", False),
            "job.cancel()": CancelRequest("J"),
            "job.host()  (get_status)": GetStatusRequest("J"),
            "job.follow()": FollowStreamRequest("J"),
            "job.follow(since=3)": FollowStreamRequest("J", since=3),
            "job.follow(recent=2)": FollowStreamRequest("J", recent=2),
            "job.stream()": ReadStreamRequest("J"),
            "job.stream(since=1)": ReadStreamRequest("J", since=1),
        }
        library = [e for e in EXCHANGES if e.section.startswith("HARP CLIENT")]
        self.assertEqual(len(library), len(built))
        for exchange in library:
            (line,) = exchange.client
            self.assertEqual(built[exchange.title].to_json(), _decode(line), exchange.title)
            # Byte-exact apart from separators: same keys in the same order.
            self.assertEqual(
                json.dumps(built[exchange.title].to_json()).encode(), line, exchange.title
            )

    def test_replies(self) -> None:
        seen = set()
        for exchange in self._dispatcher():
            if not exchange.server or not exchange.client or exchange.title.strip() in REFUSED_ONLY_BY_TXHARP:
                continue
            request = parse_request(_decode(exchange.client[0]))
            replies = [_decode(line) for line in exchange.server]
            if isinstance(request, CallRequest):
                (reply,) = replies
                self.assertIsInstance(parse_call_reply(reply), CallAccepted)
            elif isinstance(request, CancelRequest):
                (reply,) = replies
                self.assertIsInstance(parse_cancel_reply(reply), CancelReply)
            elif isinstance(request, GetResultRequest):
                (reply,) = replies
                seen.add(type(parse_result_reply(reply)))
            elif isinstance(request, GetStatusRequest):
                (reply,) = replies
                seen.add(type(parse_status_reply(reply)))
            else:
                reader = StreamReader(allow_continue=isinstance(request, ReadStreamRequest))
                for reply in replies:
                    seen.add(type(reader.feed(reply)))
                self.assertTrue(reader.finished, exchange.title)
        self.assertEqual(
            seen,
            {
                ResultReply,
                ExceptionReply,
                ErrorReply,
                CancelledReply,
                NoResultReply,
                StatusReply,
                Packet,
                ContinueReply,
            },
        )

    def test_original_number_formats(self) -> None:
        self.assertEqual(
            parse_result_reply(_decode(b'{"result":[1.50000000000000000000e+00]}')), ResultReply([1.5])
        )
        self.assertEqual(
            parse_result_reply(_decode(b'{"result":[-0.00000000000000000000e+00]}')).value[0], 0.0
        )
        self.assertEqual(
            parse_result_reply(_decode(b'{"result":[12345678901234567890]}')),
            ResultReply([12345678901234567890]),
        )

    def test_status_reply(self) -> None:
        line = (
            b'{"call":{"procedure":"sleep","arguments":[1],"host":"h1"},'
            b'"time":{"submit":1795530117,"start":1795530117,"end":null},"info":null}'
        )
        status = parse_status_reply(_decode(line))
        self.assertEqual(status, StatusReply("h1", "sleep", [1], 1795530117, 1795530117, None, None))
        self.assertEqual(parse_status_reply(status.to_json()), status)


class RequestValidationTests(SynchronousTestCase):
    """Wrong types in every field are refused with a message naming the field."""

    def test_bad_requests(self) -> None:
        bad = [
            ({"harpcaller": True, "cancel": "J"}, "version"),
            ({"harpcaller": 1, "host": 1, "procedure": "p", "arguments": []}, "host"),
            ({"harpcaller": 1, "host": "h", "procedure": "p", "arguments": "x"}, "arguments"),
            ({"harpcaller": 1, "host": "h", "procedure": "p", "arguments": [], "timeout": 0}, "timeout"),
            ({"harpcaller": 1, "host": "h", "procedure": "p", "arguments": [], "timeout": True}, "timeout"),
            ({"harpcaller": 1, "host": "h", "procedure": "p", "arguments": [], "max_exec_time": "1"}, "max_exec_time"),
            ({"harpcaller": 1, "host": "h", "procedure": "p", "arguments": [], "queue": []}, "queue"),
            (
                {"harpcaller": 1, "host": "h", "procedure": "p", "arguments": [], "queue": {"name": {}, "concurrency": 0}},
                "concurrency",
            ),
            ({"harpcaller": 1, "cancel": 5}, "cancel"),
            ({"harpcaller": 1, "get_result": "J", "wait": 1}, "wait"),
            ({"harpcaller": 1, "follow_stream": "J", "since": -1}, "since"),
            ({"harpcaller": 1, "read_stream": "J", "recent": 1.5}, "recent"),
            ({"harpcaller": 1, "read_stream": "J", "since": 1, "recent": 1}, "exclusive"),
            ([], "object"),
        ]
        for value, word in bad:
            with self.assertRaises(MalformedMessage, msg=value) as cm:
                parse_request(value)
            self.assertIn(word, str(cm.exception))
            self.assertEqual(cm.exception.error_type, "invalid_request")

    def test_since_and_recent_refused_when_building(self) -> None:
        self.assertRaises(MalformedMessage, FollowStreamRequest, "J", since=1, recent=1)

    def test_get_result_without_wait(self) -> None:
        self.assertEqual(parse_request({"harpcaller": 1, "get_result": "J"}), GetResultRequest("J", None))
        self.assertNotIn("wait", GetResultRequest("J", None).to_json())


class StreamReaderTests(SynchronousTestCase):
    def test_numbering_must_be_consecutive(self) -> None:
        reader = StreamReader(allow_continue=False)
        reader.feed({"packet": 4, "data": 1})
        self.assertRaises(MalformedMessage, reader.feed, {"packet": 4, "data": 1})

    def test_continue_only_for_read_stream(self) -> None:
        self.assertRaises(MalformedMessage, StreamReader(allow_continue=False).feed, {"continue": True})
        reader = StreamReader(allow_continue=True)
        self.assertEqual(reader.feed({"continue": True}), ContinueReply())
        self.assertRaises(MalformedMessage, reader.feed, {"packet": 0, "data": 1})

    def test_garbage(self) -> None:
        for value in ({"packet": "1", "data": 0}, {"packet": 1}, {"what": 1}, {"no_result": True}, 7):
            self.assertRaises(MalformedMessage, StreamReader(allow_continue=True).feed, value)


class OutcomeTests(SynchronousTestCase):
    def test_exceptions(self) -> None:
        self.assertEqual(
            ExceptionReply("ValueError", "bad", {"class": "ValueError"}).exception(),
            RemoteException("ValueError", "bad", {"class": "ValueError"}),
        )
        self.assertEqual(ErrorReply("timeout", "t").exception(), RemoteError("timeout", "t"))

    def test_data_left_out_when_none(self) -> None:
        self.assertEqual(ErrorReply("x", "y").to_json(), {"error": {"type": "x", "message": "y"}})
        self.assertEqual(
            ErrorReply("x", "y").to_daemon_json(), {"harp": 1, "error": {"type": "x", "message": "y"}}
        )

    def test_error_body_must_have_a_type(self) -> None:
        self.assertRaises(MalformedMessage, parse_result_reply, {"error": {"message": "m"}})
        self.assertRaises(MalformedMessage, parse_result_reply, {"exception": "boom"})


class CodecTests(SynchronousTestCase):
    def test_compact_utf8_line(self) -> None:
        self.assertEqual(encode_line({"a": ["zażółć", 1.5]}), '{"a":["zażółć",1.5]}\n'.encode())

    def test_nan_and_infinity_refused_before_sending(self) -> None:
        for value in (math.nan, math.inf, -math.inf, {1, 2}, object()):
            self.assertRaises(EncodingError, encode_line, [value])

    def test_lone_surrogate_is_escaped(self) -> None:
        line = encode_line(["\ud83d"])
        self.assertEqual(line, b'["\\ud83d"]\n')
        self.assertEqual(decode_line(line.rstrip()), ["\ud83d"])

    def test_decode_rejects(self) -> None:
        for line in (b"NaN", b"[Infinity]", b"[1e400]", b"[-1.5e999]", b"\xff\xfe", b"{", b"", b"[1] [2]", b"[" * 100000):
            with self.assertRaises(MalformedMessage, msg=line[:20]) as cm:
                decode_line(line)
            self.assertEqual(cm.exception.error_type, "parse_error")

    def test_surrogate_pair_escape_and_slash(self) -> None:
        self.assertEqual(decode_line(b'["\\ud83d\\ude00", "s\\/l"]'), ["\U0001F600", "s/l"])

    def test_big_numbers_round_trip(self) -> None:
        value = [12345678901234567890, 10**400, 1e100, -0.0, 1e-05]
        self.assertEqual(decode_line(encode_line(value).rstrip()), value)
