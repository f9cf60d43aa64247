"""Decorators, the registry, loading a procedures module, and calling procedures."""
from __future__ import annotations

import os
import sys
from typing import Any, List

from twisted.trial.unittest import TestCase

import harpd.proc
from tests.daemon_support import PROCEDURES_FILE, temp_path
from txharp.daemon import procedures
from txharp.daemon.procedures import (
    PROCEDURES_MODULE_NAME,
    Procedure,
    ProcedureLoadError,
    ProcedureRegistry,
    Result,
    StreamingProcedure,
    extend_sys_path,
    load_procedures_module,
    procedure,
    run_procedure,
    streaming_procedure,
)


def _run(target: Procedure, arguments: Any) -> "tuple[List[Any], Any]":
    packets: List[Any] = []
    result = run_procedure(target, arguments, packets.append)
    return packets, result


class DecoratorTests(TestCase):
    def test_bare_and_with_options(self) -> None:
        def f(a: int, b: int = 2) -> int:
            """Adds."""
            return a + b

        bare = procedure(f)
        self.assertIsInstance(bare, Procedure)
        self.assertEqual((bare.timeout, bare.uid, bare.gid, bare.streaming), (None, None, None, False))
        self.assertEqual(bare(1), 3)
        self.assertEqual((bare.__doc__, bare.__name__), ("Adds.", "f"))
        optioned = procedure(timeout=2.5, uid="nobody", gid=["nogroup", 0])(f)
        self.assertEqual((optioned.timeout, optioned.uid, optioned.gid), (2.5, "nobody", ["nogroup", 0]))
        self.assertIsInstance(procedure()(f), Procedure)

    def test_bad_options(self) -> None:
        for kwargs in [{"timeout": 0}, {"timeout": "1"}, {"timeout": True}, {"uid": 1.5},
                       {"gid": []}, {"gid": [None]}]:
            self.assertRaises((TypeError, ValueError), procedure, **kwargs)
            self.assertRaises((TypeError, ValueError), streaming_procedure, **kwargs)

    def test_streaming_with_result(self) -> None:
        @streaming_procedure(timeout=3)
        def count(n: int) -> Any:
            for i in range(n):
                yield i
            yield Result("done")
            yield "never sent"

        self.assertIsInstance(count, StreamingProcedure)
        self.assertEqual(count.timeout, 3)
        self.assertEqual(_run(count, [3]), ([0, 1, 2], "done"))
        self.assertEqual(_run(count, {"n": 1}), ([0], "done"))

    def test_streaming_without_result_or_with_return(self) -> None:
        self.assertEqual(_run(streaming_procedure(lambda: iter([1, 2])), []), ([1, 2], None))

        def returns() -> Any:
            yield 1
            return "returned"

        self.assertEqual(_run(streaming_procedure(returns), []), ([1], "returned"))

    def test_streaming_exception_after_packets(self) -> None:
        def broken() -> Any:
            yield 1
            raise RuntimeError("broke")

        packets: List[Any] = []
        self.assertRaises(
            RuntimeError, run_procedure, streaming_procedure(broken), [], packets.append
        )
        self.assertEqual(packets, [1])

    def test_arguments(self) -> None:
        add = procedure(lambda a, b: a - b)
        self.assertEqual(_run(add, [5, 3]), ([], 2))
        self.assertEqual(_run(add, {"b": 5, "a": 3}), ([], -2))
        self.assertRaises(TypeError, run_procedure, add, [1], lambda p: None)

    def test_compatibility_module_reexports(self) -> None:
        for name in ["procedure", "streaming_procedure", "Result", "Procedure", "StreamingProcedure"]:
            self.assertIs(getattr(harpd.proc, name), getattr(procedures, name))


class LoadingTests(TestCase):
    def write(self, text: str, name: str = "procs.py") -> str:
        directory = temp_path(self)
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_original_style_module(self) -> None:
        module = load_procedures_module(PROCEDURES_FILE)
        self.assertEqual(module.__name__, PROCEDURES_MODULE_NAME)
        self.assertIs(sys.modules[PROCEDURES_MODULE_NAME], module)
        self.assertEqual(module.TestFailure.__module__, "harpd.__procedures__")
        registry = ProcedureRegistry.from_module(module)
        self.assertIn("echo", registry)
        self.assertNotIn("TestFailure", registry)
        self.assertNotIn("Result", registry)
        self.assertEqual(registry["stream_n"].streaming, True)
        self.assertEqual(registry["sleep_timeout1"].timeout, 1)
        self.assertEqual(registry["identity_nobody"].uid, "nobody")
        self.assertEqual(registry["countdown"].streaming, True)
        self.assertEqual(_run(registry["countdown"].target, [2]), ([2, 1], "liftoff"))

    def test_exposed_name_is_the_binding(self) -> None:
        path = self.write(
            "from harpd.proc import procedure\n"
            "def _impl(): return 1\n"
            "public = procedure(_impl)\n"
        )
        self.assertEqual(list(ProcedureRegistry.from_module(load_procedures_module(path))), ["public"])

    def test_any_file_name(self) -> None:
        path = self.write("from harpd.proc import procedure\nx = procedure(len)\n", "harpd.conf.procs")
        self.assertEqual(list(ProcedureRegistry.from_module(load_procedures_module(path))), ["x"])

    def test_load_errors(self) -> None:
        for text, expected in [
            ("def broken(:\n", "SyntaxError"),
            ("import no_such_module_here\n", "ModuleNotFoundError"),
            ("raise SystemExit(3)\n", "SystemExit"),
        ]:
            error = self.assertRaises(ProcedureLoadError, load_procedures_module, self.write(text))
            self.assertIn(expected, str(error))
            self.assertIn("Traceback", error.details)
        missing = self.assertRaises(ProcedureLoadError, load_procedures_module, "/nonexistent.py")
        self.assertIn("/nonexistent.py", str(missing))

    def test_subclass_with_bad_options(self) -> None:
        path = self.write(
            "from harpd.proc import Procedure\n"
            "class P(Procedure):\n"
            "    def __init__(self): self.timeout = -1\n"
            "p = P()\n"
        )
        module = load_procedures_module(path)
        error = self.assertRaises(ProcedureLoadError, ProcedureRegistry.from_module, module)
        self.assertIn("'p'", str(error))

    def test_extend_sys_path(self) -> None:
        saved = list(sys.path)
        self.addCleanup(setattr, sys, "path", saved)
        extend_sys_path(["/first", "/second"], ["/last"])
        self.assertEqual(sys.path[:2], ["/first", "/second"])
        self.assertEqual(sys.path[-1], "/last")
        extend_sys_path(["/first"], ["/last"])
        self.assertEqual(sys.path.count("/first") + sys.path.count("/last"), 2)
