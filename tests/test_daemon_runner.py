"""The call limiter, identities, and the child-process runner with real processes."""
from __future__ import annotations

import os
import pwd
from typing import Any, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.daemon_support import PROCEDURES_FILE, process_alive, read_pid, temp_path, wait_until
from txharp.daemon.child import Identity
from txharp.daemon.procedures import (
    ProcedureRegistry,
    Result,
    load_procedures_module,
    procedure,
    streaming_procedure,
)
from txharp.daemon.runner import (
    Call,
    CallLimiter,
    ChildSettings,
    InProcessRunner,
    Overloaded,
    ProcessRunner,
    resolve_identities,
    resolve_identity,
)
from txharp.wire import ErrorReply, ExceptionReply, ResultReply


class CallLimiterTests(TestCase):
    def test_bounds(self) -> None:
        limiter = CallLimiter(2, 1)
        first, second, third = limiter.acquire(), limiter.acquire(), limiter.acquire()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertNoResult(third)
        self.assertEqual((limiter.running, limiter.waiting), (2, 1))
        self.failureResultOf(limiter.acquire(), Overloaded)
        limiter.release()
        self.successResultOf(third)
        self.assertEqual((limiter.running, limiter.waiting), (2, 0))

    def test_cancel_leaves_the_queue(self) -> None:
        limiter = CallLimiter(1, 5)
        self.successResultOf(limiter.acquire())
        waiting = limiter.acquire()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(limiter.waiting, 0)
        limiter.release()
        self.assertEqual(limiter.running, 0)

    def test_no_queue(self) -> None:
        limiter = CallLimiter(1, 0)
        self.successResultOf(limiter.acquire())
        self.failureResultOf(limiter.acquire(), Overloaded)

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, CallLimiter, 0, 1)
        self.assertRaises(ValueError, CallLimiter, 1, -1)


class IdentityTests(TestCase):
    def test_user_brings_its_groups(self) -> None:
        nobody = pwd.getpwnam("nobody")
        self.assertEqual(
            resolve_identity("nobody", None),
            Identity(nobody.pw_uid, nobody.pw_gid, os.getgrouplist("nobody", nobody.pw_gid)),
        )
        self.assertEqual(resolve_identity(nobody.pw_uid, None).uid, nobody.pw_uid)

    def test_groups(self) -> None:
        self.assertEqual(resolve_identity("root", [0, "root"]), Identity(0, 0, [0, 0]))
        self.assertEqual(resolve_identity(None, 0), Identity(os.geteuid(), 0, [0]))
        self.assertIsNone(resolve_identity(None, None))

    def test_unknown_names(self) -> None:
        self.assertRaises(ValueError, resolve_identity, "no-such-user-here", None)
        self.assertRaises(ValueError, resolve_identity, "root", "no-such-group-here")

    def test_procedure_options_override_defaults(self) -> None:
        registry = ProcedureRegistry.from_module(load_procedures_module(PROCEDURES_FILE))
        identities = resolve_identities(registry, "root", 0)
        nobody = pwd.getpwnam("nobody")
        self.assertEqual(identities["identity_nobody"].uid, nobody.pw_uid)
        self.assertEqual(identities["identity_nobody"].gid, nobody.pw_gid)
        self.assertEqual(identities["echo"], Identity(0, 0, [0]))
        self.assertIsNone(resolve_identities(registry)["echo"])
        error = self.assertRaises(ValueError, resolve_identities, registry, "no-such-user-here")
        self.assertIn("procedure", str(error))


class ProcessRunnerTests(TestCase):
    """Real child processes (no network)."""

    timeout = 30

    def setUp(self) -> None:
        self.registry = ProcedureRegistry.from_module(load_procedures_module(PROCEDURES_FILE))
        self.runner = self.make_runner()

    def make_runner(self, **kwargs: Any) -> ProcessRunner:
        settings = kwargs.pop("settings", ChildSettings(PROCEDURES_FILE))
        runner = ProcessRunner(reactor, settings, grace=0.5, **kwargs)
        self.addCleanup(runner.stop)
        return runner

    def call(self, name: str, arguments: Any = (), runner: Any = None, consumer: Any = None) -> Any:
        self.packets: List[Any] = []
        call = Call(self.registry[name], list(arguments) if not isinstance(arguments, dict) else arguments, "tester")
        return (runner or self.runner).run(call, self.packets.append, consumer)

    @inlineCallbacks
    def test_result_stream_and_exception(self) -> None:
        self.assertEqual((yield self.call("add", {"a": 2, "b": 3})), ResultReply(5))
        self.assertEqual((yield self.call("stream_n", [2])), ResultReply("done"))
        self.assertEqual(self.packets, [{"i": 0}, {"i": 1}])
        failure = yield self.call("fail")
        self.assertEqual(
            failure,
            ExceptionReply("TestFailure", "intentional failure",
                           {"class": "TestFailure", "module": "harpd.__procedures__"}),
        )
        wrong = yield self.call("add", [1])
        self.assertEqual((wrong.type, wrong.data["module"]), ("TypeError", "builtins"))

    @inlineCallbacks
    def test_unserializable_result(self) -> None:
        reply = yield self.call("unserializable")
        self.assertIsInstance(reply, ErrorReply)
        self.assertEqual(reply.type, "invalid_message")

    @inlineCallbacks
    def test_crash_is_a_system_error(self) -> None:
        reply = yield self.call("crash")
        self.assertEqual(reply.type, "system_error")
        self.assertIn("status 7", reply.message)

    @inlineCallbacks
    def test_output_is_logged(self) -> None:
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertEqual((yield self.call("chatty")), ResultReply("said hello"))
        yield self.runner.stop()
        lines = {(e.get("stream"), e.get("line")) for e in events if "line" in e}
        self.assertIn(("stdout", "hello from stdout"), lines)
        self.assertIn(("stderr", "hello from stderr"), lines)

    @inlineCallbacks
    def test_timeout_kills_the_process(self) -> None:
        pid_file = temp_path(self)
        started = reactor.seconds()
        reply = yield self.call("hang_with_timeout", [pid_file])
        self.assertEqual(reply, ErrorReply("timeout", "maximum execution time exceeded"))
        self.assertLess(reactor.seconds() - started, 5)
        pid = read_pid(pid_file)
        yield wait_until(lambda: not process_alive(pid), what="the child to die")

    @inlineCallbacks
    def test_cancel_kills_the_process_group(self) -> None:
        pid_file = temp_path(self)
        d = self.call("hang", [pid_file])
        yield wait_until(lambda: read_pid(pid_file) and read_pid(pid_file + ".grandchild"),
                         what="the procedure to start")
        pids = [read_pid(pid_file), read_pid(pid_file + ".grandchild")]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        yield wait_until(lambda: not any(process_alive(p) for p in pids), what="the processes to die")
        yield wait_until(lambda: self.runner.running == 0, what="the runner to forget the child")

    @inlineCallbacks
    def test_sigkill_after_the_grace_period(self) -> None:
        pid_file = temp_path(self)
        d = self.call("stubborn", [pid_file])
        yield wait_until(lambda: read_pid(pid_file), what="the procedure to start")
        cancelled_at = reactor.seconds()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        yield wait_until(lambda: not process_alive(read_pid(pid_file)), what="SIGKILL")
        self.assertGreaterEqual(reactor.seconds() - cancelled_at, 0.4)

    @inlineCallbacks
    def test_process_that_left_the_group_does_not_hold_the_call(self) -> None:
        pid_file = temp_path(self)
        self.addCleanup(lambda: read_pid(pid_file) and os.kill(read_pid(pid_file), 9))
        self.assertEqual((yield self.call("escape", [pid_file])), ResultReply("escaped"))
        yield wait_until(lambda: self.runner.running == 0, what="the runner to let go")
        self.assertTrue(process_alive(read_pid(pid_file)))

    @inlineCallbacks
    def test_stop_ends_calls_with_shutdown(self) -> None:
        pid_file = temp_path(self)
        d = self.call("hang", [pid_file])
        yield wait_until(lambda: read_pid(pid_file), what="the procedure to start")
        yield self.runner.stop()
        self.assertEqual(self.successResultOf(d), ErrorReply("shutdown", "service is shutting down"))
        self.assertFalse(process_alive(read_pid(pid_file)))
        self.assertEqual(self.runner.running, 0)

    @inlineCallbacks
    def test_logging_configuration_applies_in_the_child(self) -> None:
        log_file = temp_path(self)
        logging_config = {
            "version": 1,
            "formatters": {"plain": {"format": "%(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": log_file,
                                  "formatter": "plain"}},
            "root": {"handlers": ["file"], "level": "INFO"},
        }
        runner = self.make_runner(settings=ChildSettings(PROCEDURES_FILE, logging=logging_config))
        self.assertEqual((yield self.call("log_message", ["logged"], runner=runner)), ResultReply(True))
        with open(log_file) as f:
            self.assertEqual(f.read(), "procedures logged\n")

    @inlineCallbacks
    def test_message_too_long(self) -> None:
        runner = self.make_runner(max_message_length=100)
        reply = yield self.call("echo", ["x" * 200], runner=runner)
        self.assertEqual(reply.type, "invalid_message")

    @inlineCallbacks
    def test_module_changed_since_start(self) -> None:
        other = temp_path(self)
        with open(other, "w") as f:
            f.write("from harpd.proc import streaming_procedure\necho = streaming_procedure(iter)\n")
        runner = self.make_runner(settings=ChildSettings(other))
        reply = yield self.call("echo", [[1]], runner=runner)
        self.assertEqual(reply.type, "procedure_loading_error")
        reply = yield self.call("add", [1, 2], runner=runner)
        self.assertEqual(reply.type, "procedure_loading_error")

    @inlineCallbacks
    def test_flow_control_producer_is_registered_then_released(self) -> None:
        consumer = StringTransport()
        d = self.call("stream_n", [3], consumer=consumer)
        self.assertTrue(consumer.streaming)
        self.assertIsNotNone(consumer.producer)
        consumer.producer.pauseProducing()
        consumer.producer.resumeProducing()
        self.assertEqual((yield d), ResultReply("done"))
        self.assertIsNone(consumer.producer)

    @inlineCallbacks
    def test_identity_switch(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("switching identity needs root")
        identities = resolve_identities(self.registry)
        runner = self.make_runner(settings=ChildSettings(PROCEDURES_FILE, identities=identities))
        nobody = pwd.getpwnam("nobody")
        reply = yield self.call("identity_nobody", runner=runner)
        self.assertEqual(reply, ResultReply({"uid": nobody.pw_uid, "gid": nobody.pw_gid,
                                             "env": [nobody.pw_dir, "nobody", "nobody"]}))
        reply = yield self.call("identity", runner=runner)
        self.assertEqual(reply.value["uid"], 0)
        unswitched = self.make_runner(
            settings=ChildSettings(PROCEDURES_FILE, identities=identities), switch_identity=False
        )
        reply = yield self.call("identity_nobody", runner=unswitched)
        self.assertEqual(reply.value["uid"], 0)


class InProcessRunnerTests(TestCase):
    """The in-process runner: same replies as a child would send, no process."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.runner = InProcessRunner(self.clock)
        self.packets: List[Any] = []

    def run_call(self, target: Any, arguments: Any = ()) -> Any:
        registry = ProcedureRegistry.from_module(_module(target=target))
        return self.runner.run(Call(registry["target"], list(arguments), "t"), self.packets.append)

    def test_plain_result_and_exception(self) -> None:
        self.assertEqual(self.successResultOf(self.run_call(procedure(lambda a, b: a + b), [1, 2])), ResultReply(3))
        reply = self.successResultOf(self.run_call(procedure(lambda: 1 / 0)))
        self.assertEqual((reply.type, reply.data), ("ZeroDivisionError",
                                                    {"class": "ZeroDivisionError", "module": "builtins"}))
        self.assertEqual(self.runner.running, 0)

    def test_deferred_and_coroutine_results(self) -> None:
        pending: Deferred[Any] = Deferred()
        d = self.run_call(procedure(lambda: pending))
        self.assertNoResult(d)
        self.assertEqual(self.runner.running, 1)
        pending.callback("later")
        self.assertEqual(self.successResultOf(d), ResultReply("later"))

        async def coroutine() -> str:
            return "awaited"

        self.assertEqual(self.successResultOf(self.run_call(procedure(coroutine))), ResultReply("awaited"))

    def test_stream_and_unserializable(self) -> None:
        def count() -> Any:
            yield 1
            yield Result("done")

        self.assertEqual(self.successResultOf(self.run_call(streaming_procedure(count))), ResultReply("done"))
        self.assertEqual(self.packets, [1])
        for target in (procedure(lambda: {1}), streaming_procedure(lambda: iter([{2}]))):
            reply = self.successResultOf(self.run_call(target))
            self.assertEqual(reply.type, "invalid_message")

    def test_timeout_cancels_the_procedure(self) -> None:
        cancelled: List[bool] = []
        pending: Deferred[Any] = Deferred(lambda _: cancelled.append(True))
        d = self.run_call(procedure(timeout=2)(lambda: pending))
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(d), ErrorReply("timeout", "maximum execution time exceeded"))
        self.assertEqual(cancelled, [True])

    def test_cancel_and_stop(self) -> None:
        cancelled: List[str] = []
        first: Deferred[Any] = Deferred(lambda _: cancelled.append("first"))
        d = self.run_call(procedure(lambda: first))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        second: Deferred[Any] = Deferred(lambda _: cancelled.append("second"))
        d = self.run_call(procedure(lambda: second))
        self.successResultOf(self.runner.stop())
        self.assertEqual(self.successResultOf(d), ErrorReply("shutdown", "service is shutting down"))
        self.assertEqual(cancelled, ["first", "second"])
        self.assertEqual(self.runner.running, 0)


def _module(**attributes: Any) -> Any:
    import types

    module = types.ModuleType("in_process_procedures")
    module.__dict__.update(attributes)
    return module
