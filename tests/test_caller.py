"""The dispatcher client driven in memory: exact request lines, every reply, every failure.

Each request opens its own connection in a ``MemoryReactorClock``; the test
plays the dispatcher by completing that connection with a
``StringTransport``, reading the bytes the client wrote and feeding reply
lines.  No real network and no global reactor.
"""
from __future__ import annotations

import copy
import json
import pickle
from typing import Any, Dict, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport, SynchronousResolver
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import txharp.caller
from tests.vectors_dispatcher import (
    CALL_ACCEPTED,
    CANCELLED,
    CLIENT_REQUESTS,
    CONTINUE,
    ERRORS,
    EXCEPTIONS,
    FOLLOW_CANCELLED,
    FOLLOW_EXCEPTION,
    FOLLOW_RUNNING,
    INVALID_JOBID,
    JOB_ID,
    MISSING_RESULT,
    NO_RESULT,
    NOT_CANCELLED,
    READ_ERROR,
    READ_FINISHED,
    READ_QUEUED,
    READ_RUNNING,
    RESULT_VALUES,
    STATUS_CANCELLED_IN_QUEUE,
    STATUS_FINISHED_WITH_INFO,
    STATUS_QUEUED,
    STATUS_RUNNING,
    packet,
    same_json,
)
from txharp.caller import (
    CALL_CANCELLED,
    CALL_NOT_FINISHED,
    HarpCaller,
    JobStatus,
    JobStream,
    RemoteCall,
    RemoteProcedure,
    RemoteServer,
)
from txharp.errors import (
    CancelledException,
    CommunicationError,
    EncodingError,
    HarpException,
    HarpTimeout,
    RemoteError,
    RemoteException,
)
from txharp.wire import CancelledReply, ContinueReply, ErrorReply, ExceptionReply, ResultReply

TIMEOUT = 10.0
PROXY_ERROR = b'{"error":{"type":"invalid_request","message":"unsupported protocol version"}}'


class Connection:
    """The dispatcher's end of one connection the client opened."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, *lines: bytes) -> None:
        """Deliver reply lines, all in one chunk."""
        self.protocol.dataReceived(b"".join(line + b"\n" for line in lines))

    def close(self, reason: Exception = ConnectionDone()) -> None:
        self.protocol.connectionLost(Failure(reason))

    @property
    def closed_cleanly(self) -> bool:
        return self.transport.disconnecting and not self.transport.disconnected

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)


class Dispatcher:
    """A MemoryReactorClock, a client bound to it, and the server side of its connections."""

    def __init__(self, **options: Any) -> None:
        self.reactor = MemoryReactorClock()
        options.setdefault("timeout", TIMEOUT)
        endpoint = TCP4ClientEndpoint(self.reactor, "dispatcher.example", 3502)
        self.rpc = HarpCaller.from_endpoint(endpoint, reactor=self.reactor, **options)
        self._accepted = 0

    @property
    def attempts(self) -> int:
        """How many connections the client has asked for."""
        return len(self.reactor.tcpClients)

    def accept(self) -> Connection:
        """Complete the next connection attempt."""
        factory = self.reactor.tcpClients[self._accepted][2]
        self._accepted += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 3502))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def answer(self, *lines: bytes) -> Connection:
        """Complete the next connection attempt and send ``lines`` on it."""
        connection = self.accept()
        connection.send(*lines)
        return connection


class CallerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dispatcher = Dispatcher()
        self.rpc = self.dispatcher.rpc
        self.job = self.rpc.job(JOB_ID)

    def assertSent(self, connection: Connection, expected: Dict[str, Any]) -> None:
        """The client wrote exactly one line, whose JSON is ``expected``."""
        data = connection.transport.value()
        self.assertEqual(data.count(b"\n"), 1, data)
        self.assertTrue(data.endswith(b"\n"), data)
        self.assertEqual(json.loads(data), expected)

    def assertNothingPending(self) -> None:
        """No timer is left behind (connect timeout, idle timeout)."""
        self.assertEqual(self.dispatcher.reactor.getDelayedCalls(), [])

    def submit(self) -> RemoteCall:
        d = self.rpc.h1.echo(1)
        self.dispatcher.answer(CALL_ACCEPTED)
        return self.successResultOf(d)


# ------------------------------------------------------------------- requests


class OriginalRequestLineTests(CallerTestCase):
    """The client sends what the original ``harp`` library sends (compared as JSON)."""

    def assertLikeOriginal(self, name: str, start: Any) -> None:
        start()
        connection = self.dispatcher.accept()
        expected = json.loads(CLIENT_REQUESTS[name].replace(b'"J"', b'"' + JOB_ID.encode() + b'"'))
        self.assertSent(connection, expected)

    def test_positional_call(self) -> None:
        self.assertLikeOriginal("rpc.host('h1').echo(1, 2)", lambda: self.rpc.host("h1").echo(1, 2))

    def test_named_call(self) -> None:
        self.assertLikeOriginal("rpc.h1.add(a=1, b=2)", lambda: self.rpc.h1.add(a=1, b=2))

    def test_call_without_arguments(self) -> None:
        self.assertLikeOriginal("rpc.h1.noargs()", lambda: self.rpc.h1.noargs())

    def test_call_with_every_option(self) -> None:
        name = "rpc.host('h1', queue={'q': 1}, concurrency=2, timeout=5, max_exec_time=9, info={'x': 1}).echo(1)"
        server = self.rpc.host("h1", queue={"q": 1}, concurrency=2, timeout=5, max_exec_time=9, info={"x": 1})
        self.assertLikeOriginal(name, lambda: server.echo(1))

    def test_queue_without_concurrency(self) -> None:
        server = self.rpc.host("h1", queue={"q": 1})
        self.assertLikeOriginal("rpc.host('h1', queue={'q': 1}).echo()", lambda: server.echo())

    def test_get(self) -> None:
        self.assertLikeOriginal("job.get()", lambda: self.job.get())

    def test_result(self) -> None:
        self.assertLikeOriginal("job.result()", lambda: self.job.result())

    def test_cancel(self) -> None:
        self.assertLikeOriginal("job.cancel()", lambda: self.job.cancel())

    def test_status(self) -> None:
        self.assertLikeOriginal("job.host()", lambda: self.job.host())

    def test_follow(self) -> None:
        self.assertLikeOriginal("job.follow()", lambda: self.job.follow())

    def test_follow_since(self) -> None:
        self.assertLikeOriginal("job.follow(since=3)", lambda: self.job.follow(since=3))

    def test_follow_recent(self) -> None:
        self.assertLikeOriginal("job.follow(recent=2)", lambda: self.job.follow(recent=2))

    def test_stream(self) -> None:
        self.assertLikeOriginal("job.stream()", lambda: self.job.stream())

    def test_stream_since(self) -> None:
        self.assertLikeOriginal("job.stream(since=1)", lambda: self.job.stream(since=1))

    def test_exact_bytes(self) -> None:
        """Compact UTF-8 JSON, one line; non-ASCII travels raw."""
        self.rpc.h1.echo(1, "ż")
        connection = self.dispatcher.accept()
        self.assertEqual(
            connection.transport.value(),
            '{"harpcaller":1,"host":"h1","procedure":"echo","arguments":[1,"ż"],"info":null}\n'.encode(),
        )


# ----------------------------------------------------------------------- calls


class CallTests(CallerTestCase):
    def test_accepted_call_gives_remote_call(self) -> None:
        d = self.rpc.h1.echo(1, 2)
        self.assertNoResult(d)
        connection = self.dispatcher.answer(CALL_ACCEPTED)
        job = self.successResultOf(d)
        self.assertIsInstance(job, RemoteCall)
        self.assertEqual(job.id(), JOB_ID)
        self.assertIs(type(job.id()), str)
        self.assertTrue(connection.closed_cleanly)
        self.assertNothingPending()

    def test_mixing_positional_and_named_arguments_raises_at_once(self) -> None:
        self.assertRaises(HarpException, self.rpc.h1.echo, 1, b=2)
        self.assertEqual(self.dispatcher.attempts, 0)

    def test_values_json_cannot_carry_raise_at_once(self) -> None:
        for arguments in ([float("nan")], [{1, 2}], [float("inf")]):
            self.assertRaises(EncodingError, self.rpc.h1.echo, *arguments)
        self.assertRaises(EncodingError, self.rpc.host("h1", info={"x": {1}}).echo)
        self.assertEqual(self.dispatcher.attempts, 0)

    def test_error_reply_is_remote_error(self) -> None:
        """txharp's harp-proxy answers a request it refuses with an error line."""
        d = self.rpc.h1.echo(1)
        self.dispatcher.answer(PROXY_ERROR)
        error = self.failureResultOf(d, RemoteError).value
        self.assertEqual((error.type, error.message), ("invalid_request", "unsupported protocol version"))

    def test_reply_of_the_wrong_shape(self) -> None:
        for reply in (b'{"result":1}', b'{"job_id":5}', b"[1]", NO_RESULT):
            d = self.rpc.h1.echo(1)
            connection = self.dispatcher.answer(reply)
            self.assertIn("invalid reply", str(self.failureResultOf(d, CommunicationError).value))
            self.assertTrue(connection.aborted)

    def test_submission_is_logged_with_structured_fields(self) -> None:
        events: List[Dict[str, Any]] = []
        self.patch(txharp.caller, "_log", Logger(observer=events.append))
        self.submit()
        self.assertEqual(len(events), 1)
        self.assertEqual(
            (events[0]["job_id"], events[0]["host"], events[0]["procedure"]), (JOB_ID, "h1", "echo")
        )


class RemoteServerTests(CallerTestCase):
    def test_attribute_and_host_give_the_same_server(self) -> None:
        self.assertIsInstance(self.rpc.web01, RemoteServer)
        self.assertEqual(str(self.rpc.web01), "web01")
        self.assertEqual(str(self.rpc.host("web01")), "web01")

    def test_procedure_knows_its_names(self) -> None:
        procedure = self.rpc.web01.uptime
        self.assertIsInstance(procedure, RemoteProcedure)
        self.assertEqual((procedure.host(), procedure.procedure()), ("web01", "uptime"))

    def test_calling_the_server_adjusts_its_options(self) -> None:
        server = self.rpc.host("h1", timeout=5, info="keep")
        self.assertIs(server(timeout=7, max_exec_time=9), server)
        server.echo()
        self.assertSent(
            self.dispatcher.accept(),
            {"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [],
             "timeout": 7, "max_exec_time": 9, "info": "keep"},
        )
        server(info=None, timeout=None).echo()
        self.assertSent(
            self.dispatcher.accept(),
            {"harpcaller": 1, "host": "h1", "procedure": "echo", "arguments": [],
             "max_exec_time": 9, "info": None},
        )

    def test_private_names_are_not_hosts_or_procedures(self) -> None:
        self.assertRaises(AttributeError, getattr, self.rpc, "_secret")
        self.assertRaises(AttributeError, getattr, self.rpc, "__wrapped__")
        self.assertRaises(AttributeError, getattr, self.rpc.h1, "_secret")
        self.assertFalse(hasattr(self.rpc.h1, "__length_hint__"))

    def test_copy_protocol_is_not_hijacked(self) -> None:
        self.assertEqual(str(copy.copy(self.rpc.h1)), "h1")
        self.assertEqual(str(copy.copy(self.rpc).h2), "h2")

    def test_private_names_are_reachable_explicitly(self) -> None:
        self.rpc.host("_x")["_private"]()
        self.rpc.h1["class"]()
        first, second = self.dispatcher.accept(), self.dispatcher.accept()
        self.assertEqual(json.loads(first.transport.value())["host"], "_x")
        self.assertEqual(json.loads(first.transport.value())["procedure"], "_private")
        self.assertEqual(json.loads(second.transport.value())["procedure"], "class")

    def test_queue_name_must_be_an_object(self) -> None:
        """The original dispatcher drops such a request without a word."""
        self.assertRaises(HarpException, self.rpc.host, "h1", queue="q")
        self.assertRaises(HarpException, self.rpc.host("h1"), queue=["q"])

    def test_concurrency_needs_a_queue(self) -> None:
        self.assertRaises(HarpException, self.rpc.host, "h1", concurrency=2)
        self.assertEqual(self.dispatcher.attempts, 0)


# ------------------------------------------------------------------ job's end


class ResultTests(CallerTestCase):
    def test_every_captured_value(self) -> None:
        for line, expected in RESULT_VALUES:
            job = self.rpc.job(JOB_ID)
            d = job.result()
            self.dispatcher.answer(line)
            self.assertTrue(same_json(expected, self.successResultOf(d)), line)

    def test_get_gives_the_value(self) -> None:
        d = self.job.get()
        self.dispatcher.answer(b'{"result":[1.50000000000000000000e+00]}')
        self.assertEqual(self.successResultOf(d), [1.5])

    def test_not_finished(self) -> None:
        d = self.job.result()
        self.dispatcher.answer(NO_RESULT)
        self.assertIs(self.successResultOf(d), CALL_NOT_FINISHED)

    def test_get_without_wait_of_unfinished_job(self) -> None:
        d = self.job.get(wait=False)
        connection = self.dispatcher.answer(NO_RESULT)
        self.assertFalse(json.loads(connection.transport.value())["wait"])
        self.assertIs(self.successResultOf(d), CALL_NOT_FINISHED)

    def test_exceptions(self) -> None:
        for line, kind, message, data in EXCEPTIONS:
            expected = RemoteException(kind, message, data)
            d = self.rpc.job(JOB_ID).result()
            self.dispatcher.answer(line)
            self.assertEqual(self.successResultOf(d), expected)
            d = self.rpc.job(JOB_ID).get()
            self.dispatcher.answer(line)
            self.assertEqual(self.failureResultOf(d, RemoteException).value, expected)

    def test_errors(self) -> None:
        for line, kind, message, data in ERRORS:
            expected = RemoteError(kind, message, data)
            d = self.rpc.job(JOB_ID).result()
            self.dispatcher.answer(line)
            self.assertEqual(self.successResultOf(d), expected)
            d = self.rpc.job(JOB_ID).get()
            self.dispatcher.answer(line)
            self.assertEqual(self.failureResultOf(d, RemoteError).value, expected)

    def test_cancelled(self) -> None:
        d = self.job.result()
        self.dispatcher.answer(CANCELLED)
        self.assertIs(self.successResultOf(d), CALL_CANCELLED)
        d = self.rpc.job(JOB_ID).get()
        self.dispatcher.answer(CANCELLED)
        self.failureResultOf(d, CancelledException)

    def test_markers(self) -> None:
        self.assertEqual(repr(CALL_NOT_FINISHED), "CALL_NOT_FINISHED")
        self.assertEqual(repr(CALL_CANCELLED), "CALL_CANCELLED")
        self.assertIsNot(CALL_NOT_FINISHED, CALL_CANCELLED)
        self.assertIs(pickle.loads(pickle.dumps(CALL_NOT_FINISHED)), CALL_NOT_FINISHED)
        self.assertIs(copy.deepcopy(CALL_CANCELLED), CALL_CANCELLED)


class ResultCachingTests(CallerTestCase):
    """Only a final end is cached; "not finished" never is (the original's bug)."""

    def test_not_finished_is_asked_again(self) -> None:
        d = self.job.result()
        self.dispatcher.answer(NO_RESULT)
        self.assertIs(self.successResultOf(d), CALL_NOT_FINISHED)
        d = self.job.result()
        self.dispatcher.answer(b'{"result":true}')
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.dispatcher.attempts, 2)

    def test_final_ends_are_cached(self) -> None:
        for line, expected in ((b'{"result":5}', 5), (CANCELLED, CALL_CANCELLED),
                               (EXCEPTIONS[0][0], RemoteException(*EXCEPTIONS[0][1:])),
                               (ERRORS[2][0], RemoteError(*ERRORS[2][1:]))):
            job = self.rpc.job(JOB_ID)
            d = job.result(wait=True)
            self.dispatcher.answer(line)
            self.assertEqual(self.successResultOf(d), expected)
            attempts = self.dispatcher.attempts
            self.assertEqual(self.successResultOf(job.result()), expected)
            self.assertEqual(self.successResultOf(job.result(wait=True)), expected)
            self.assertEqual(self.dispatcher.attempts, attempts, line)

    def test_cached_end_raises_again_from_get(self) -> None:
        first = self.job.get()
        self.dispatcher.answer(EXCEPTIONS[0][0])
        self.failureResultOf(first, RemoteException)
        self.failureResultOf(self.job.get(), RemoteException)
        self.assertEqual(self.dispatcher.attempts, 1)

    def test_unsettled_errors_are_asked_again(self) -> None:
        """invalid_jobid is about the ID; missing_result can be the original's race."""
        for line in (INVALID_JOBID, MISSING_RESULT):
            job = self.rpc.job(JOB_ID)
            job.result(wait=True)
            self.dispatcher.answer(line)
            d = job.result(wait=True)
            self.dispatcher.answer(b'{"result":true}')
            self.assertIs(self.successResultOf(d), True)

    def test_invalid_jobid(self) -> None:
        d = self.rpc.job("not-a-uuid").get()
        self.dispatcher.answer(INVALID_JOBID)
        self.assertEqual(self.failureResultOf(d, RemoteError).value.type, "invalid_jobid")


class CancelTests(CallerTestCase):
    def test_cancelled(self) -> None:
        d = self.job.cancel()
        self.dispatcher.answer(CANCELLED)
        self.assertIs(self.successResultOf(d), True)

    def test_already_ended(self) -> None:
        d = self.job.cancel()
        self.dispatcher.answer(NOT_CANCELLED)
        self.assertIs(self.successResultOf(d), False)

    def test_error_reply(self) -> None:
        d = self.job.cancel()
        self.dispatcher.answer(PROXY_ERROR)
        self.failureResultOf(d, RemoteError)

    def test_reply_of_the_wrong_shape(self) -> None:
        for reply in (b'{"cancelled":"yes"}', b'{"result":true}', NO_RESULT):
            d = self.rpc.job(JOB_ID).cancel()
            self.dispatcher.answer(reply)
            self.failureResultOf(d, CommunicationError)


class StatusTests(CallerTestCase):
    def test_finished_job_with_info(self) -> None:
        d = self.job.status()
        self.dispatcher.answer(STATUS_FINISHED_WITH_INFO)
        status = self.successResultOf(d)
        self.assertEqual(
            status,
            JobStatus(
                host="h1", procedure="echo", args=[1, 2], submit_time=1795530117,
                start_time=1795530117, end_time=1795530117, info={"n": [1, 2], "who": "capture"},
            ),
        )
        self.assertTrue(status.finished)

    def test_each_field_has_its_accessor(self) -> None:
        expected = {
            "host": "h1", "procedure": "sleep", "args": [1], "submit_time": 1795530118,
            "start_time": None, "end_time": None, "info": None,
        }
        for name, value in expected.items():
            d = getattr(self.job, name)()
            connection = self.dispatcher.answer(STATUS_QUEUED)
            self.assertSent(connection, {"harpcaller": 1, "get_status": JOB_ID})
            self.assertEqual(self.successResultOf(d), value, name)

    def test_status_without_end_is_not_cached(self) -> None:
        for line in (STATUS_RUNNING, STATUS_QUEUED):
            d = self.job.start_time()
            self.dispatcher.answer(line)
            self.successResultOf(d)
        self.assertEqual(self.dispatcher.attempts, 2)

    def test_status_with_end_is_cached(self) -> None:
        for line in (STATUS_FINISHED_WITH_INFO, STATUS_CANCELLED_IN_QUEUE):
            job = self.rpc.job(JOB_ID)
            job.status()
            self.dispatcher.answer(line)
            attempts = self.dispatcher.attempts
            self.assertIsNotNone(self.successResultOf(job.end_time()))
            self.successResultOf(job.info())
            self.assertEqual(self.dispatcher.attempts, attempts)

    def test_cancelled_in_its_queue(self) -> None:
        d = self.job.status()
        self.dispatcher.answer(STATUS_CANCELLED_IN_QUEUE)
        status = self.successResultOf(d)
        self.assertEqual((status.start_time, status.end_time), (None, 1795530118))

    def test_invalid_jobid(self) -> None:
        d = self.job.host()
        self.dispatcher.answer(INVALID_JOBID)
        self.assertEqual(self.failureResultOf(d, RemoteError).value, RemoteError(*ERRORS[0][1:]))

    def test_reply_of_the_wrong_shape(self) -> None:
        for reply in (b'{"call":{"host":"h1"},"time":{"submit":1}}', b'{"call":{}}', CANCELLED):
            d = self.rpc.job(JOB_ID).status()
            self.dispatcher.answer(reply)
            self.failureResultOf(d, CommunicationError)


# -------------------------------------------------------------------- failures


class ConnectionFailureTests(CallerTestCase):
    def test_refused(self) -> None:
        d = self.job.result()
        factory = self.dispatcher.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(self.dispatcher.reactor.connectors[0], Failure(ConnectionRefusedError()))
        self.assertIn("refused", str(self.failureResultOf(d, CommunicationError).value))
        self.assertNothingPending()

    def test_connect_timeout(self) -> None:
        d = self.job.get()
        self.dispatcher.reactor.advance(TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.dispatcher.reactor.advance(0.1)
        self.failureResultOf(d, HarpTimeout)
        self.assertTrue(self.dispatcher.reactor.connectors[0].stoppedConnecting)

    def test_separate_connect_timeout(self) -> None:
        dispatcher = Dispatcher(timeout=60, connect_timeout=2)
        d = dispatcher.rpc.job(JOB_ID).cancel()
        dispatcher.reactor.advance(2)
        self.failureResultOf(d, HarpTimeout)

    def test_eof_before_reply(self) -> None:
        for start in (self.job.result, self.job.get, self.job.cancel, self.job.status,
                      lambda: self.rpc.h1.echo()):
            d = start()
            self.dispatcher.accept().close()
            self.assertIn("closed the connection", str(self.failureResultOf(d, CommunicationError).value))
        self.assertNothingPending()

    def test_connection_lost_before_reply(self) -> None:
        d = self.job.get()
        self.dispatcher.accept().close(ConnectionLost())
        self.failureResultOf(d, CommunicationError)

    def test_line_without_newline_then_eof(self) -> None:
        d = self.job.result()
        connection = self.dispatcher.accept()
        connection.protocol.dataReceived(b'{"result":1}')
        self.assertNoResult(d)
        connection.close()
        self.failureResultOf(d, CommunicationError)

    def test_garbage_line(self) -> None:
        d = self.job.result()
        connection = self.dispatcher.answer(b"this is not json")
        self.assertIn("invalid reply", str(self.failureResultOf(d, CommunicationError).value))
        self.assertTrue(connection.aborted)

    def test_invalid_utf8(self) -> None:
        d = self.job.result()
        self.dispatcher.answer(b'{"result":"\xff"}')
        self.failureResultOf(d, CommunicationError)

    def test_oversized_line(self) -> None:
        dispatcher = Dispatcher(max_line_length=64)
        d = dispatcher.rpc.job(JOB_ID).result()
        connection = dispatcher.accept()
        connection.protocol.dataReceived(b'{"result":"' + b"x" * 100)
        self.assertIn("longer than 64", str(self.failureResultOf(d, CommunicationError).value))
        self.assertTrue(connection.aborted)

    def test_two_reply_lines_take_the_first(self) -> None:
        d = self.job.result()
        connection = self.dispatcher.answer(b'{"result":1}', b'{"result":2}')
        self.assertEqual(self.successResultOf(d), 1)
        self.assertTrue(connection.closed_cleanly)


class TimeoutTests(CallerTestCase):
    def test_reply_that_should_come_at_once(self) -> None:
        for start in (self.job.result, self.job.cancel, self.job.status, lambda: self.rpc.h1.echo()):
            d = start()
            connection = self.dispatcher.accept()
            self.dispatcher.reactor.advance(TIMEOUT - 0.1)
            self.assertNoResult(d)
            self.dispatcher.reactor.advance(0.1)
            self.assertIn("no reply", str(self.failureResultOf(d, HarpTimeout).value))
            self.assertTrue(connection.aborted)
        self.assertNothingPending()

    def test_waiting_for_the_end_is_not_bounded_by_default(self) -> None:
        for start in (self.job.get, lambda: self.job.result(wait=True)):
            d = start()
            connection = self.dispatcher.accept()
            self.assertNothingPending()
            self.dispatcher.reactor.advance(24 * 3600)
            self.assertNoResult(d)
            connection.send(b'{"result":true}')
            self.assertIs(self.successResultOf(d), True)
            self.job = self.rpc.job(JOB_ID)

    def test_waiting_for_the_end_with_a_timeout(self) -> None:
        d = self.job.get(timeout=60)
        self.dispatcher.accept()
        self.dispatcher.reactor.advance(59)
        self.assertNoResult(d)
        self.dispatcher.reactor.advance(1)
        self.failureResultOf(d, HarpTimeout)

    def test_result_without_wait_with_its_own_timeout(self) -> None:
        d = self.job.result(timeout=1)
        self.dispatcher.accept()
        self.dispatcher.reactor.advance(1)
        self.failureResultOf(d, HarpTimeout)


class CancellationTests(CallerTestCase):
    def test_before_connecting(self) -> None:
        for start in (self.job.get, self.job.cancel, self.job.status, lambda: self.rpc.h1.echo()):
            d = start()
            d.cancel()
            self.failureResultOf(d, CancelledError)
            self.assertTrue(self.dispatcher.reactor.connectors[-1].stoppedConnecting)
        self.assertNothingPending()

    def test_after_connecting(self) -> None:
        for start in (self.job.get, self.job.result, self.job.status, lambda: self.rpc.h1.echo()):
            d = start()
            connection = self.dispatcher.accept()
            d.cancel()
            self.failureResultOf(d, CancelledError)
            self.assertTrue(connection.aborted)
            connection.close()  # the transport reports the loss later: no second result
        self.assertNothingPending()

    def test_after_the_reply_changes_nothing(self) -> None:
        d = self.job.cancel()
        self.dispatcher.answer(CANCELLED)
        d.cancel()
        self.assertIs(self.successResultOf(d), True)


# --------------------------------------------------------------------- streams


class StreamConsumptionTests(CallerTestCase):
    def test_all(self) -> None:
        stream = self.job.follow()
        self.assertIsInstance(stream, JobStream)
        d = stream.all()
        connection = self.dispatcher.answer(*FOLLOW_RUNNING)
        self.assertEqual(self.successResultOf(d), [{"i": 3}, {"i": 4}, {"i": 5}])
        self.assertEqual(stream.end, ResultReply("done"))
        self.assertEqual(stream.result(), "done")
        self.assertTrue(connection.closed_cleanly)
        self.assertNothingPending()

    def test_each(self) -> None:
        seen: List[Any] = []
        d = self.job.stream(since=0).each(seen.append)
        connection = self.dispatcher.accept()
        connection.send(READ_FINISHED[0])
        self.assertEqual(seen, [{"i": 0}])
        self.assertNoResult(d)
        connection.send(*READ_FINISHED[1:])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(seen, [{"i": n} for n in range(6)])

    def test_async_for(self) -> None:
        stream = self.job.follow()
        seen: List[Any] = []

        async def consume() -> Any:
            async for item in stream:
                seen.append(item)
            return stream.result()

        d = Deferred.fromCoroutine(consume())
        connection = self.dispatcher.accept()
        connection.send(FOLLOW_RUNNING[0])
        self.assertEqual(seen, [{"i": 3}])
        self.assertNoResult(d)
        connection.send(*FOLLOW_RUNNING[1:])
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(len(seen), 3)

    def test_numbered(self) -> None:
        d = self.job.follow(recent=2, numbered=True).all()
        self.dispatcher.answer(packet(4), packet(5), b'{"result":"done"}')
        self.assertEqual(self.successResultOf(d), [(4, {"i": 4}), (5, {"i": 5})])

    def test_packet_data_of_any_json_type(self) -> None:
        d = self.job.stream().all()
        self.dispatcher.answer(
            packet(0, "0"), packet(1, "null"), packet(2, '"ż"'), packet(3, "[1.50000000000000000000e+00]"),
            b'{"result":null}',
        )
        self.assertEqual(self.successResultOf(d), [0, None, "ż", [1.5]])

    def test_since_and_recent_together_raise_at_once(self) -> None:
        self.assertRaises(HarpException, self.job.follow, since=0, recent=1)
        self.assertRaises(HarpException, self.job.stream, since=0, recent=1)
        self.assertRaises(HarpException, self.job.follow, since=-1)
        self.assertEqual(self.dispatcher.attempts, 0)


class StreamEndTests(CallerTestCase):
    """The job's end comes with the stream, and the RemoteCall remembers a final one."""

    def consume(self, stream: JobStream, lines: List[bytes]) -> List[Any]:
        d = stream.all()
        self.dispatcher.answer(*lines)
        return self.successResultOf(d)

    def test_read_of_running_job_ends_with_continue(self) -> None:
        stream = self.job.stream()
        self.assertEqual(self.consume(stream, READ_RUNNING), [{"i": 0}, {"i": 1}, {"i": 2}])
        self.assertEqual(stream.end, ContinueReply())
        self.assertIs(stream.result(), CALL_NOT_FINISHED)
        self.job.result()
        self.assertEqual(self.dispatcher.attempts, 2, "continue must not be cached")

    def test_follow_of_finished_job_gives_only_its_end(self) -> None:
        stream = self.job.follow()
        self.assertEqual(self.consume(stream, [b'{"result":"done"}']), [])
        self.assertEqual(stream.result(), "done")

    def test_read_of_queued_job(self) -> None:
        stream = self.job.stream()
        self.assertEqual(self.consume(stream, READ_QUEUED), [])
        self.assertIs(stream.result(), CALL_NOT_FINISHED)

    def test_followed_end_is_cached(self) -> None:
        self.consume(self.job.follow(), FOLLOW_RUNNING)
        self.assertEqual(self.successResultOf(self.job.get()), "done")
        self.assertEqual(self.dispatcher.attempts, 1)

    def test_exception_ends_stream(self) -> None:
        stream = self.job.follow(since=0)
        self.assertEqual(self.consume(stream, FOLLOW_EXCEPTION), [{"i": 0}, {"i": 1}])
        expected = RemoteException(*EXCEPTIONS[1][1:])
        self.assertEqual(stream.end, ExceptionReply(*EXCEPTIONS[1][1:]))
        self.assertEqual(stream.result(), expected)
        self.assertEqual(self.failureResultOf(self.job.get(), RemoteException).value, expected)
        self.assertEqual(self.dispatcher.attempts, 1)

    def test_error_ends_stream(self) -> None:
        stream = self.job.stream()
        self.assertEqual(self.consume(stream, READ_ERROR), [{"x": 1}])
        self.assertEqual(stream.result(), RemoteError("custom_error", "boom"))

    def test_cancelled_job_ends_stream(self) -> None:
        stream = self.job.follow()
        self.consume(stream, FOLLOW_CANCELLED)
        self.assertEqual(stream.end, CancelledReply())
        self.assertIs(stream.result(), CALL_CANCELLED)
        self.failureResultOf(self.job.get(), CancelledException)

    def test_error_reply_instead_of_a_stream(self) -> None:
        """txharp's harp-proxy answers an unknown job (the original just closes)."""
        stream = self.job.follow()
        self.assertEqual(self.consume(stream, [INVALID_JOBID]), [])
        self.assertEqual(stream.end, ErrorReply("invalid_jobid", "no job with this ID"))
        self.job.result()
        self.assertEqual(self.dispatcher.attempts, 2, "invalid_jobid must not be cached")

    def test_result_before_the_end_raises(self) -> None:
        stream = self.job.follow()
        self.assertRaises(HarpException, stream.result)
        self.dispatcher.answer(packet(3))
        self.assertIsNone(stream.end)
        self.assertRaises(HarpException, stream.result)


class StreamFailureTests(CallerTestCase):
    def collect(self, stream: JobStream) -> Tuple[List[Any], Deferred[None]]:
        seen: List[Any] = []
        return seen, stream.each(seen.append)

    def test_unknown_job_closes_without_reply(self) -> None:
        seen, d = self.collect(self.job.follow())
        self.dispatcher.accept().close()
        self.failureResultOf(d, CommunicationError)

    def test_eof_mid_stream_delivers_packets_then_fails(self) -> None:
        stream = self.job.follow(since=0)
        seen, d = self.collect(stream)
        connection = self.dispatcher.answer(packet(0), packet(1))
        connection.close()
        self.assertEqual(seen, [{"i": 0}, {"i": 1}])
        self.assertIn("closed the connection", str(self.failureResultOf(d, CommunicationError).value))
        self.assertIsNone(stream.end)

    def test_out_of_order_and_duplicate_packets(self) -> None:
        for lines in ([packet(0), packet(2)], [packet(3), packet(3)], [packet(5), packet(4)]):
            seen, d = self.collect(self.rpc.job(JOB_ID).follow())
            connection = self.dispatcher.answer(*lines)
            self.assertEqual(len(seen), 1)
            self.assertIn("out of order", str(self.failureResultOf(d, CommunicationError).value))
            self.assertTrue(connection.aborted)

    def test_continue_is_not_an_end_of_follow(self) -> None:
        seen, d = self.collect(self.job.follow())
        self.dispatcher.answer(packet(0), CONTINUE)
        self.failureResultOf(d, CommunicationError)

    def test_malformed_lines(self) -> None:
        for line in (b'{"packet":-1,"data":1}', b'{"packet":0}', b'{"no_result":true}', b"nope"):
            seen, d = self.collect(self.rpc.job(JOB_ID).stream())
            self.dispatcher.answer(line)
            self.failureResultOf(d, CommunicationError)

    def test_read_stream_timeout(self) -> None:
        seen, d = self.collect(self.job.stream())
        connection = self.dispatcher.answer(packet(0))
        self.dispatcher.reactor.advance(TIMEOUT)
        self.assertEqual(seen, [{"i": 0}])
        self.failureResultOf(d, HarpTimeout)
        self.assertTrue(connection.aborted)

    def test_follow_waits_for_ever_by_default(self) -> None:
        seen, d = self.collect(self.job.follow())
        connection = self.dispatcher.accept()
        self.dispatcher.reactor.advance(24 * 3600)
        connection.send(*FOLLOW_RUNNING)
        self.assertIsNone(self.successResultOf(d))

    def test_follow_timeout_bounds_the_silence_between_lines(self) -> None:
        seen, d = self.collect(self.job.follow(timeout=5))
        connection = self.dispatcher.accept()
        for line in FOLLOW_RUNNING[:3]:
            self.dispatcher.reactor.advance(4.9)
            connection.send(line)
        self.dispatcher.reactor.advance(5)
        self.assertEqual(len(seen), 3)
        self.failureResultOf(d, HarpTimeout)


class StreamCancellationTests(CallerTestCase):
    def test_stream_cancel(self) -> None:
        stream = self.job.follow()
        d = stream.all()
        connection = self.dispatcher.answer(packet(3))
        stream.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(connection.aborted)
        self.assertNothingPending()

    def test_stream_cancel_before_connecting(self) -> None:
        stream = self.job.follow()
        d = stream.all()
        stream.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.dispatcher.reactor.connectors[0].stoppedConnecting)

    def test_cancelling_the_consumer_closes_the_connection(self) -> None:
        d = self.job.follow().each(lambda item: None)
        connection = self.dispatcher.answer(packet(3))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(connection.aborted)

    def test_async_for_cancelled(self) -> None:
        stream = self.job.follow()

        async def consume() -> None:
            async for _ in stream:
                pass

        d = Deferred.fromCoroutine(consume())
        connection = self.dispatcher.accept()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(connection.aborted)


class StreamFlowControlTests(CallerTestCase):
    """A slow consumer pauses reading from the connection instead of buffering without bound."""

    PACKETS = 300

    def start_slow_consumer(self, **follow: Any) -> Tuple[JobStream, Connection, List[Any], List[Deferred[None]], Deferred[None]]:
        stream = self.job.follow(since=0, numbered=True, **follow)
        received: List[Any] = []
        pending: List[Deferred[None]] = []

        def slow(item: Any) -> Deferred[None]:
            received.append(item)
            pending.append(Deferred())
            return pending[-1]

        done = stream.each(slow)
        connection = self.dispatcher.accept()
        connection.send(*[packet(n) for n in range(self.PACKETS)], b'{"result":"done"}')
        return stream, connection, received, pending, done

    def test_slow_each_callback_pauses_the_transport(self) -> None:
        stream, connection, received, pending, done = self.start_slow_consumer()
        self.assertEqual(connection.transport.producerState, "paused")
        self.assertEqual(len(received), 1)
        self.assertIsNone(stream.end, "lines after the pause must stay unread")
        while pending:
            pending.pop().callback(None)
        self.assertEqual(connection.transport.producerState, "producing")
        self.assertEqual(received, [(n, {"i": n}) for n in range(self.PACKETS)])
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(stream.result(), "done")

    def test_idle_timeout_is_suspended_while_paused(self) -> None:
        stream, connection, received, pending, done = self.start_slow_consumer(timeout=5)
        self.dispatcher.reactor.advance(3600)
        self.assertNoResult(done)
        while pending:
            pending.pop().callback(None)
        self.assertIsNone(self.successResultOf(done))


# ---------------------------------------------------------------- construction


class _RecordingResolver(SynchronousResolver):
    def __init__(self) -> None:
        self.asked: List[Tuple[str, int]] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, *args: Any, **kwargs: Any) -> Any:
        self.asked.append((hostName, portNumber))
        return super().resolveHostName(receiver, hostName, portNumber, *args, **kwargs)


class ConstructionTests(SynchronousTestCase):
    def resolver_of(self, reactor: MemoryReactorClock) -> _RecordingResolver:
        resolver = _RecordingResolver()
        reactor.installNameResolver(resolver)
        return resolver

    def test_defaults(self) -> None:
        reactor = MemoryReactorClock()
        resolver = self.resolver_of(reactor)
        HarpCaller(reactor=reactor).h1.echo()
        self.assertEqual(resolver.asked, [("localhost", 3502)])

    def test_host_and_port(self) -> None:
        reactor = MemoryReactorClock()
        resolver = self.resolver_of(reactor)
        rpc = HarpCaller("dispatcher.example", 4000, reactor=reactor)
        d = rpc.job(JOB_ID).cancel()
        self.assertEqual(resolver.asked, [("dispatcher.example", 4000)])
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(CANCELLED + b"\n")
        self.assertIs(self.successResultOf(d), True)
        self.assertIn("dispatcher.example:4000", repr(rpc))

    def test_refused_through_hostname_endpoint(self) -> None:
        reactor = MemoryReactorClock()
        d = HarpCaller("dispatcher.example", reactor=reactor).job(JOB_ID).get()
        reactor.tcpClients[0][2].clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
        reactor.advance(1)
        error = self.failureResultOf(d, CommunicationError).value
        self.assertIn("dispatcher.example:3502 refused", str(error))

    def test_ipv6_address_in_messages(self) -> None:
        self.assertIn("[::1]:3502", repr(HarpCaller("::1", reactor=MemoryReactorClock())))

    def test_from_string(self) -> None:
        reactor = MemoryReactorClock()
        rpc = HarpCaller.from_string(reactor, "tcp:host=dispatcher.example:port=4000", timeout=3)
        d = rpc.h1.echo()
        self.assertEqual(reactor.tcpClients[0][:2], ("dispatcher.example", 4000))
        reactor.advance(3)
        error = self.failureResultOf(d, HarpTimeout).value
        self.assertIn("tcp:host=dispatcher.example:port=4000", str(error))

    def test_global_reactor_only_when_none_is_given(self) -> None:
        """The default is looked up when needed (patched here: no real reactor in unit tests)."""
        import twisted.internet

        given, global_stand_in = MemoryReactorClock(), MemoryReactorClock()
        self.patch(twisted.internet, "reactor", global_stand_in)
        HarpCaller(reactor=given).h1.echo()
        HarpCaller().h1.echo()
        self.assertEqual((len(given.tcpClients), len(global_stand_in.tcpClients)), (1, 1))
