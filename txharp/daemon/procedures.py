"""Exposing Python functions as harpd procedures, and loading the module that holds them.

A procedures module is a plain Python file.  Each function it exposes is
wrapped by :func:`procedure` (one return value) or :func:`streaming_procedure`
(a generator: every value it yields is a stream packet; yielding
``Result(value)`` ends the stream and sets the result, otherwise the result
is ``None``, or the value of a Python 3 ``return``)::

    from harpd.proc import procedure, streaming_procedure, Result

    @procedure
    def add(a, b):
        return a + b

    @streaming_procedure(timeout=60, uid="nobody")
    def count(n):
        for i in range(n):
            yield i
        yield Result("done")

Instead of the decorators, a module may also create instances of subclasses
of :class:`Procedure` or :class:`StreamingProcedure` (overriding
``__call__``, and ``result`` for a streaming one), as the original daemon
allowed.  The exposed name of a procedure is the module-level name it is
bound to.

The module is executed under the fixed name :data:`PROCEDURES_MODULE_NAME`
(the original's), so exceptions defined in it are reported with that module
name whatever the file is called.  This module imports nothing from Twisted:
the child process that runs a call imports it.
"""
from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import (
    Any,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Optional,
    Sequence,
    TypeVar,
    Union,
    overload,
)

from txharp.wire._record import Record, _set
from txharp.wire.dispatcher import Arguments

__all__ = [
    "PROCEDURES_MODULE_NAME",
    "Result",
    "Procedure",
    "StreamingProcedure",
    "procedure",
    "streaming_procedure",
    "ProcedureSpec",
    "ProcedureRegistry",
    "ProcedureLoadError",
    "load_procedures_module",
    "extend_sys_path",
    "run_procedure",
]

#: The name the procedures module is executed under (as in the original harpd).
PROCEDURES_MODULE_NAME = "harpd.__procedures__"

#: A user given by name or number.
UserSpec = Union[str, int]
#: A group by name or number, or a list of them (the first is the primary group).
GroupSpec = Union[str, int, Sequence[Union[str, int]]]


class Result:
    """Yielded by a streaming procedure: ends the stream with ``value`` as the result."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Result({self.value!r})"


def _check_options(timeout: Any, uid: Any, gid: Any) -> None:
    """Raise TypeError/ValueError for options the daemon could not honour."""
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
    if uid is not None and (isinstance(uid, bool) or not isinstance(uid, (str, int))):
        raise TypeError(f"uid must be a user name or number, not {uid!r}")
    if gid is not None:
        groups = gid if isinstance(gid, (list, tuple)) else [gid]
        if not groups or any(isinstance(g, bool) or not isinstance(g, (str, int)) for g in groups):
            raise TypeError(f"gid must be a group name or number, or a list of them, not {gid!r}")


class Procedure:
    """A callable exposed by harpd that returns one JSON value.

    :param function: what to call; may be None in a subclass that overrides
        :meth:`__call__`
    :param timeout: seconds the call may run before it is killed and the
        client gets a ``timeout`` error; None for no limit
    :param uid: user (name or number) the call runs as, when the daemon
        runs as root
    :param gid: group, or list of groups (the first one primary), the call
        runs as, when the daemon runs as root
    """

    #: Whether calls produce stream packets; fixed per class.
    streaming = False

    def __init__(
        self,
        function: Optional[Callable[..., Any]] = None,
        timeout: Optional[float] = None,
        uid: Optional[UserSpec] = None,
        gid: Optional[GroupSpec] = None,
    ) -> None:
        _check_options(timeout, uid, gid)
        self.function = function
        self.timeout = timeout
        self.uid = uid
        self.gid = gid
        if function is not None:
            functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the procedure and return its result."""
        if self.function is None:
            raise NotImplementedError(f"{type(self).__name__} must override __call__")
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", None) or type(self).__name__
        return f"<{type(self).__name__} {name}>"


class StreamingProcedure(Procedure):
    """A callable exposed by harpd that streams packets, then gives a result.

    Calling it returns an iterator of packets; once that is exhausted,
    :meth:`result` gives the end result.  ``function`` is a generator (or
    returns any iterable); a :class:`Result` among its items ends the stream.
    """

    streaming = True

    def __init__(
        self,
        function: Optional[Callable[..., Any]] = None,
        timeout: Optional[float] = None,
        uid: Optional[UserSpec] = None,
        gid: Optional[GroupSpec] = None,
    ) -> None:
        super().__init__(function, timeout, uid, gid)
        self._result: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run the procedure: an iterator of its stream packets."""
        self._result = None
        return self._packets(super().__call__(*args, **kwargs))

    def _packets(self, items: Any) -> Generator[Any, None, None]:
        iterator = iter(items)
        try:
            while True:
                try:
                    item = next(iterator)
                except StopIteration as stop:
                    self._result = stop.value
                    return
                if isinstance(item, Result):
                    self._result = item.value
                    return
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def result(self) -> Any:
        """The end result of the last call, once its stream is exhausted."""
        return self._result


@overload
def procedure(function: Callable[..., Any]) -> Procedure: ...
@overload
def procedure(
    function: None = None,
    *,
    timeout: Optional[float] = None,
    uid: Optional[UserSpec] = None,
    gid: Optional[GroupSpec] = None,
) -> Callable[[Callable[..., Any]], Procedure]: ...


def procedure(
    function: Optional[Callable[..., Any]] = None,
    *,
    timeout: Optional[float] = None,
    uid: Optional[UserSpec] = None,
    gid: Optional[GroupSpec] = None,
) -> Union[Procedure, Callable[[Callable[..., Any]], Procedure]]:
    """Expose ``function``; use bare (``@procedure``) or with options
    (``@procedure(timeout=10, uid="nobody", gid=["nogroup", "adm"])``)."""
    return _expose(Procedure, function, timeout, uid, gid)


@overload
def streaming_procedure(function: Callable[..., Any]) -> StreamingProcedure: ...
@overload
def streaming_procedure(
    function: None = None,
    *,
    timeout: Optional[float] = None,
    uid: Optional[UserSpec] = None,
    gid: Optional[GroupSpec] = None,
) -> Callable[[Callable[..., Any]], StreamingProcedure]: ...


def streaming_procedure(
    function: Optional[Callable[..., Any]] = None,
    *,
    timeout: Optional[float] = None,
    uid: Optional[UserSpec] = None,
    gid: Optional[GroupSpec] = None,
) -> Union[StreamingProcedure, Callable[[Callable[..., Any]], StreamingProcedure]]:
    """Expose the generator ``function`` as a streaming procedure; same options
    as :func:`procedure`."""
    return _expose(StreamingProcedure, function, timeout, uid, gid)


P = TypeVar("P", bound=Procedure)


def _expose(
    kind: Callable[..., P],
    function: Optional[Callable[..., Any]],
    timeout: Optional[float],
    uid: Optional[UserSpec],
    gid: Optional[GroupSpec],
) -> Union[P, Callable[[Callable[..., Any]], P]]:
    """What both decorators do: wrap ``function`` now, or return the decorator."""
    _check_options(timeout, uid, gid)
    if function is None:
        return lambda f: kind(f, timeout=timeout, uid=uid, gid=gid)
    return kind(function, timeout=timeout, uid=uid, gid=gid)


class ProcedureLoadError(Exception):
    """The procedures module cannot be loaded, or declares a procedure wrongly.

    :ivar details: the traceback of the underlying error, for logs and
        ``--test`` output ("" when there is none)
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class ProcedureSpec(Record):
    """What the daemon knows of one exposed procedure."""

    __slots__ = _fields = ("name", "streaming", "timeout", "uid", "gid", "target")
    _hidden = _uncompared = frozenset({"target"})
    name: str
    streaming: bool
    timeout: Optional[float]
    uid: Optional[UserSpec]
    gid: Optional[GroupSpec]
    target: Procedure

    def __init__(
        self,
        name: str,
        streaming: bool,
        timeout: Optional[float],
        uid: Optional[UserSpec],
        gid: Optional[GroupSpec],
        target: Procedure,
    ) -> None:
        _set(self, "name", name)
        _set(self, "streaming", streaming)
        _set(self, "timeout", timeout)
        _set(self, "uid", uid)
        _set(self, "gid", gid)
        _set(self, "target", target)


class ProcedureRegistry(Mapping[str, ProcedureSpec]):
    """The procedures a module exposes, by name."""

    def __init__(self, specs: Mapping[str, ProcedureSpec]) -> None:
        self._specs = dict(specs)

    @classmethod
    def from_module(cls, module: ModuleType) -> "ProcedureRegistry":
        """Every :class:`Procedure` bound to a module-level name of ``module``.

        Options of subclass instances (which may skip ``Procedure.__init__``)
        are validated here, so a bad one fails at startup, not at call time.
        """
        specs = {}
        for name, value in sorted(vars(module).items()):
            if not isinstance(value, Procedure):
                continue
            timeout = getattr(value, "timeout", None)
            uid = getattr(value, "uid", None)
            gid = getattr(value, "gid", None)
            try:
                _check_options(timeout, uid, gid)
            except (TypeError, ValueError) as e:
                raise ProcedureLoadError(f"procedure {name!r}: {e}") from None
            if isinstance(gid, list):
                gid = tuple(gid)
            specs[name] = ProcedureSpec(name, bool(value.streaming), timeout, uid, gid, value)
        return cls(specs)

    def __getitem__(self, name: str) -> ProcedureSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def load_procedures_module(path: str, name: str = PROCEDURES_MODULE_NAME) -> ModuleType:
    """Execute the Python file ``path`` as module ``name`` and return the module.

    Any file name works (no ``.py`` needed).  Every failure, including a
    missing file, a syntax error or an exception raised by the module's
    code, becomes :class:`ProcedureLoadError`.
    """
    parent = name.rpartition(".")[0]
    try:
        if parent:
            importlib.import_module(parent)
        loader = importlib.machinery.SourceFileLoader(name, path)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    except (Exception, SystemExit) as e:
        import traceback  # not at the top: children import this module on every call

        raise ProcedureLoadError(
            f"cannot load procedures from {path}: {type(e).__name__}: {e}",
            traceback.format_exc(),
        ) from None
    return module


def extend_sys_path(prepend: Sequence[str] = (), append: Sequence[str] = ()) -> None:
    """Add directories to the module search path: ``prepend`` before every
    existing entry (in the order given), ``append`` after them."""
    sys.path[:0] = [p for p in prepend if p not in sys.path]
    sys.path.extend(p for p in append if p not in sys.path)


def run_procedure(target: Procedure, arguments: Arguments, emit: Callable[[Any], None]) -> Any:
    """Call ``target`` with positional (list) or named (dict) ``arguments``.

    A streaming procedure's packets go to ``emit`` one by one as they are
    produced; the end result is returned.  Exceptions raised by the
    procedure (including a ``TypeError`` for a wrong argument list)
    propagate.
    """
    args, kwargs = ([], arguments) if isinstance(arguments, dict) else (arguments, {})
    if not target.streaming:
        return target(*args, **kwargs)
    for packet in target(*args, **kwargs):
        emit(packet)
    result = getattr(target, "result", None)
    return result() if result is not None else None
