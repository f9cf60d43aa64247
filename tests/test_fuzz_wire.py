"""Property-based tests of the pure wire layer (:mod:`txharp.wire`).

Two properties, for both protocols and every message type:

* parsing anything — random bytes, damaged lines, valid JSON of the wrong
  shape — raises nothing but :class:`~txharp.errors.MalformedMessage`;
* every valid message round-trips exactly through ``to_json`` →
  ``encode_line`` → ``decode_line`` → its parser (types included: ``1`` is
  not ``1.0`` is not ``True``), and the readers accept exactly the valid
  sequences.

Example counts are bounded (see :mod:`tests.strategies`).
"""
from __future__ import annotations

import json
from typing import Any, Callable, List

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests import strategies as S
from txharp.errors import EncodingError, MalformedMessage
from txharp.wire import (
    Acknowledgement,
    DaemonRequest,
    CallAccepted,
    CancelReply,
    ContinueReply,
    DaemonReplyReader,
    ErrorReply,
    NoResultReply,
    Packet,
    StatusReply,
    StreamItem,
    StreamReader,
    decode_line,
    encode_line,
    parse_call_reply,
    parse_cancel_reply,
    parse_daemon_request,
    parse_outcome,
    parse_request,
    parse_result_reply,
    parse_status_reply,
    parse_stream_line,
)
from txharp.wire.outcomes import CancelledReply, ExceptionReply, ResultReply

#: Every parser of a decoded line, by name.
PARSERS: List[Callable[[Any], Any]] = [
    parse_request,
    parse_call_reply,
    parse_cancel_reply,
    parse_result_reply,
    parse_status_reply,
    parse_stream_line,
    parse_outcome,
    parse_daemon_request,
    lambda value: DaemonReplyReader().feed(value),
    lambda value: StreamReader(allow_continue=True).feed(value),
    lambda value: StreamReader(allow_continue=False).feed(value),
]

#: Messages and the wire values built from them, for mutation.
ANY_MESSAGE = st.one_of(S.requests, S.any_reply(), S.daemon_requests,
                        st.builds(Acknowledgement, st.booleans()), st.builds(StreamItem, S.json_values()))


def wire_round_trip(message: Any, daemon: bool = False) -> Any:
    """The decoded JSON a peer gets for ``message``."""
    value = S.daemon_wire(message) if daemon else message.to_json()
    line = encode_line(value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1, line
    line.decode("utf-8")  # always valid UTF-8, lone surrogates included (escaped)
    return decode_line(line[:-1])


def parse_only_malformed(test: SynchronousTestCase, value: Any) -> None:
    """Every parser accepts ``value`` or raises MalformedMessage, nothing else."""
    for parse in PARSERS:
        try:
            parse(value)
        except MalformedMessage:
            pass
        except Exception as e:  # pragma: no cover - what the test is for
            test.fail(f"{parse} raised {type(e).__name__}: {e!r} for {value!r:.300}")


def decode_only_malformed(test: SynchronousTestCase, line: bytes) -> Any:
    try:
        return decode_line(line)
    except MalformedMessage:
        return MalformedMessage
    except Exception as e:  # pragma: no cover
        test.fail(f"decode_line raised {type(e).__name__}: {e!r} for {line[:200]!r}")


class ParsingNeverCrashesTests(SynchronousTestCase):
    """Bad input of every kind ends as MalformedMessage."""

    @S.CI
    @given(st.binary(max_size=200))
    def test_random_bytes(self, line: bytes) -> None:
        value = decode_only_malformed(self, line)
        if value is not MalformedMessage:
            parse_only_malformed(self, value)

    @S.CI
    @given(S.garbage_lines)
    def test_garbage(self, line: bytes) -> None:
        value = decode_only_malformed(self, line)
        if value is not MalformedMessage:
            parse_only_malformed(self, value)

    @S.ci_settings(300)
    @given(S.mutated_lines(ANY_MESSAGE))
    def test_damaged_lines(self, line: bytes) -> None:
        value = decode_only_malformed(self, line)
        if value is not MalformedMessage:
            parse_only_malformed(self, value)

    @S.ci_settings(300)
    @given(S.mutated_values(ANY_MESSAGE))
    def test_wrong_shapes(self, value: Any) -> None:
        parse_only_malformed(self, value)

    @S.CI
    @given(S.json_values(20))
    def test_any_json(self, value: Any) -> None:
        parse_only_malformed(self, value)

    @S.ci_settings(60)
    @given(S.huge_number_texts())
    def test_huge_numbers(self, number: bytes) -> None:
        for line in [number, b'{"harpcaller": 1, "get_result": "j", "since": ' + number + b"}",
                     b'{"harp": ' + number + b', "procedure": "x"}', b"[" + number + b"]"]:
            self.assertIs(decode_only_malformed(self, line), MalformedMessage, line[:80])

    def test_deep_nesting_at_every_depth_near_the_limit(self) -> None:
        """Just below, at and above the recursion limit, as a value and as an
        error message (which the parser turns into text, one more recursion
        per level: the decoder's limit is not enough there)."""
        for depth in list(range(1, 1100, 17)) + [5000, 100_000]:
            for opener in "[{":
                nested = S.deep_nesting(depth, opener)
                for line in [nested, b'{"harp": 1, "stream_result": true, "x": ' + nested + b"}",
                             b'{"result": ' + nested + b"}"]:
                    value = decode_only_malformed(self, line)
                    if value is not MalformedMessage:
                        parse_only_malformed(self, value)
        # Whether str() of a value overflows depends on how deep the stack
        # already is where the parser runs: try from many stack depths.
        def at_depth(frames: int, action: Any) -> Any:
            return action() if frames <= 0 else at_depth(frames - 1, action)

        def decode_and_parse(line: bytes) -> None:
            value = decode_only_malformed(self, line)
            if value is not MalformedMessage:
                parse_only_malformed(self, value)

        for frames in range(0, 80, 4):
            for wrapper, opener in [(b'{"error": {"type": "x", "message": %s}}', "{"),
                                    (b'{"exception": {"type": "x", "message": %s}}', "[")]:
                # The deepest message the decoder accepts from here, and a few below it.
                deepest = 1000
                while deepest > 0 and at_depth(frames, lambda: decode_only_malformed(
                        self, wrapper % S.deep_nesting(deepest, opener))) is MalformedMessage:
                    deepest -= 5
                for depth in range(deepest + 5, max(0, deepest - 10), -1):
                    line = wrapper % S.deep_nesting(depth, opener)
                    at_depth(frames, lambda: decode_and_parse(line))

    def test_invalid_utf8_and_nul(self) -> None:
        for line in [b'{"result": "\xff"}', b'{"result": "\xed\xa0\x80"}', b'{"result": "\xc0\x80"}',
                     b'{"result": "a\x00b"}', b'{"res\x00ult": 1}', b"\x00", b'{"result": 1}\x00']:
            self.assertIs(decode_only_malformed(self, line), MalformedMessage, line)
        # NUL escaped is ordinary text.
        self.assertEqual(decode_line(b'{"result": "a\\u0000b"}'), {"result": "a\x00b"})


class EncodingTests(SynchronousTestCase):
    """``encode_line`` writes one valid line or raises EncodingError before writing."""

    @S.CI
    @given(S.json_values(20))
    def test_any_json_value_round_trips(self, value: Any) -> None:
        line = encode_line(value)
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(S.same_json(decode_line(line[:-1]), value), (value, line))

    def test_what_json_cannot_carry(self) -> None:
        deep: Any = []
        for _ in range(5000):
            deep = [deep]
        for value in [float("nan"), float("inf"), {1, 2}, object(), b"bytes", {(1,): 2},
                      10 ** 5000, deep]:
            with self.assertRaises(EncodingError):
                encode_line(value)


class RoundTripTests(SynchronousTestCase):
    """Valid messages survive the wire exactly."""

    def check(self, message: Any, parse: Callable[[Any], Any], daemon: bool = False) -> None:
        value = wire_round_trip(message, daemon)
        self.assertTrue(S.same_json(value, S.daemon_wire(message) if daemon else message.to_json()))
        parsed = parse(value)
        self.assertEqual(parsed, message)
        self.assertIs(type(parsed), type(message))
        self.assertTrue(S.same_json(parsed.to_json(), message.to_json()), (parsed, message))

    @S.ci_settings(300)
    @given(S.requests)
    def test_requests(self, request: Any) -> None:
        self.check(request, parse_request)

    @S.CI
    @given(S.daemon_requests)
    def test_daemon_requests(self, request: Any) -> None:
        self.check(request, parse_daemon_request)
        marked = DaemonRequest(request.procedure, request.arguments, request.user, "\x01SeCrEt\x02")
        self.assertNotIn("SeCrEt", repr(marked))

    @S.CI
    @given(st.one_of(st.builds(CallAccepted, S.job_ids), S.error_replies))
    def test_call_replies(self, reply: Any) -> None:
        self.check(reply, parse_call_reply)

    @S.CI
    @given(st.one_of(st.builds(CancelReply, st.booleans()), S.error_replies))
    def test_cancel_replies(self, reply: Any) -> None:
        self.check(reply, parse_cancel_reply)

    @S.CI
    @given(st.one_of(S.outcomes, st.just(NoResultReply())))
    def test_result_replies(self, reply: Any) -> None:
        self.check(reply, parse_result_reply)

    @S.CI
    @given(st.one_of(S.status_replies, S.error_replies))
    def test_status_replies(self, reply: Any) -> None:
        self.check(reply, parse_status_reply)

    @S.CI
    @given(st.one_of(S.packets, S.outcomes, st.just(ContinueReply())))
    def test_stream_lines(self, line: Any) -> None:
        self.check(line, parse_stream_line)

    @S.CI
    @given(S.daemon_reply_sequences())
    def test_daemon_replies(self, lines: List[Any]) -> None:
        reader = DaemonReplyReader()
        for message in lines:
            self.assertFalse(reader.finished)
            parsed = reader.feed(wire_round_trip(message, daemon=True))
            self.assertEqual(parsed, message)
            self.assertIs(type(parsed), type(message))
        self.assertTrue(reader.finished)
        # Nothing may follow the final line.
        for extra in lines:
            with self.assertRaises(MalformedMessage):
                reader.feed(S.daemon_wire(extra))

    @S.CI
    @given(S.stream_sequences(), st.booleans())
    def test_stream_replies(self, lines: List[Any], follow: bool) -> None:
        if follow and isinstance(lines[-1], ContinueReply):
            lines = lines[:-1] + [CancelledReply()]
        reader = StreamReader(allow_continue=not follow)
        for message in lines:
            parsed = reader.feed(wire_round_trip(message))
            self.assertEqual(parsed, message)
        self.assertTrue(reader.finished)
        with self.assertRaises(MalformedMessage):
            reader.feed(lines[-1].to_json())


class ReaderOrderTests(SynchronousTestCase):
    """The readers refuse sequences a correct peer never sends."""

    @S.CI
    @given(S.stream_sequences(), st.data())
    def test_duplicated_or_reordered_packets(self, lines: List[Any], data: Any) -> None:
        packets = [line for line in lines if isinstance(line, Packet)]
        if not packets:
            return
        index = data.draw(st.integers(0, len(packets) - 1))
        damaged = list(packets)
        if data.draw(st.booleans()) or len(packets) == 1:
            damaged.insert(index + 1, packets[index])  # duplicated
        else:
            other = data.draw(st.integers(0, len(packets) - 1).filter(lambda i: i != index))
            damaged[index], damaged[other] = damaged[other], damaged[index]  # reordered
        reader = StreamReader(allow_continue=True)
        with self.assertRaises(MalformedMessage):
            for packet in damaged:
                reader.feed(packet.to_json())

    def test_continue_only_in_read_stream(self) -> None:
        with self.assertRaises(MalformedMessage):
            StreamReader(allow_continue=False).feed({"continue": True})

    @S.CI
    @given(S.daemon_reply_sequences(), st.data())
    def test_daemon_lines_out_of_place(self, lines: List[Any], data: Any) -> None:
        """A packet or result before the acknowledgement, a second
        acknowledgement, a packet from a non-streaming procedure."""
        reader = DaemonReplyReader()
        if isinstance(lines[0], ErrorReply):
            return
        wrong = data.draw(st.sampled_from(["packet first", "result first", "second ack", "packet after plain ack"]))
        with self.assertRaises(MalformedMessage):
            if wrong == "packet first":
                reader.feed({"stream": 1})
            elif wrong == "result first":
                reader.feed({"result": 1})
            elif wrong == "second ack":
                reader.feed(lines[0].to_json())
                reader.feed(lines[0].to_json())
                # a second ack can only be read as a final line if it is one: it is not
            else:
                reader.feed(Acknowledgement(False).to_json())
                reader.feed({"stream": 1})

    @S.CI
    @given(st.lists(S.mutated_values(st.one_of(st.builds(Acknowledgement, st.booleans()),
                                               st.builds(StreamItem, S.json_values(4)),
                                               S.outcomes)), max_size=8))
    def test_readers_fed_damaged_sequences(self, values: List[Any]) -> None:
        """Whatever arrives, a reader answers with a typed message or
        MalformedMessage, and after its end accepts nothing more."""
        for reader in (DaemonReplyReader(), StreamReader(True), StreamReader(False)):
            for value in values:
                was_finished = reader.finished
                try:
                    reader.feed(value)
                except MalformedMessage:
                    continue
                except Exception as e:  # pragma: no cover
                    self.fail(f"{type(reader).__name__} raised {e!r} for {value!r:.200}")
                self.assertFalse(was_finished, "a reader accepted a line after its end")


class SpecificFindingsTests(SynchronousTestCase):
    """Single cases the properties above are built around, kept explicit."""

    def test_lone_surrogates_travel_escaped(self) -> None:
        line = encode_line({"result": "a\ud800b\U0001f984"})
        self.assertEqual(line, b'{"result":"a\\ud800b\\ud83e\\udd84"}\n')
        self.assertEqual(decode_line(line[:-1]), {"result": "a\ud800b\U0001f984"})

    def test_astral_text_travels_raw(self) -> None:
        self.assertEqual(encode_line({"result": "\U0001f984"}), '{"result":"\U0001f984"}\n'.encode())

    def test_big_integers_round_trip(self) -> None:
        for number in [2 ** 64, -(10 ** 4299), int("9" * 4300)]:
            self.assertEqual(parse_result_reply(wire_round_trip(ResultReply(number))), ResultReply(number))

    def test_failure_message_of_another_type_becomes_text(self) -> None:
        self.assertEqual(parse_outcome({"exception": {"type": "T", "message": [1]}}),
                         ExceptionReply("T", "[1]"))

    def test_status_reply_times_must_be_numbers(self) -> None:
        body = StatusReply("h", "p", [], 1, None, None).to_json()
        body["time"]["start"] = "yesterday"
        with self.assertRaises(MalformedMessage):
            parse_status_reply(body)
        self.assertIsInstance(parse_status_reply({"error": {"type": "invalid_jobid", "message": "m"}}),
                              ErrorReply)

    def test_json_text_forms_a_peer_may_send(self) -> None:
        """Spaces, sorted keys, escapes, long exponent floats: all the same message."""
        self.assertEqual(decode_line(b' { "result" : 1.50000000000000000000e+00 } '), {"result": 1.5})
        self.assertEqual(decode_line(json.dumps({"result": "\u00e9/"}).encode().replace(b"/", b"\\/")),
                         {"result": "\u00e9/"})
