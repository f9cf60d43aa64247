"""harp-proxy's administration channel: JSON lines over a UNIX socket (mode 0600).

Off by default; ``--admin-socket PATH`` turns it on.  Like the dispatcher
protocol, one request per connection: the client sends one line
``{"command": NAME, ...arguments}`` and gets one line back, either
``{"result": VALUE}`` or ``{"error": {"type": T, "message": M}}`` (types
``invalid_request``, ``invalid_jobid``, ``unknown_queue``, ``os_error``).

==================  =====================================  =====================================
command             arguments                              result
==================  =====================================  =====================================
``list``            ``all`` (bool: every stored job, not   ``{"jobs": [JOB...]}`` plus
                    only queued/running), ``queues``        ``"queues": [QUEUE...]`` if asked
                    (bool), ``limit`` (int, with ``all``)
``info``            ``job_id``                             ``JOB`` (with its packet count)
``cancel``          ``job_id``                             ``{"cancelled": bool}``
``queue-list``      ``name`` (optional JSON object)        ``{"queues": [QUEUE...]}``; with a
                                                           name, that queue with its ``jobs``
``queue-cancel``    ``name``                               ``{"cancelled": [JOB_ID...]}``
``hosts-list``      --                                     ``{"hosts": [{"hostname", "address",
                                                           "port"}...]}`` (no credentials)
``hosts-refresh``   --                                     ``{"refreshed": bool}``
``prune-jobs``      ``age_days`` (number, default the      ``{"pruned": COUNT}``
                    proxy's ``--max-age``)
==================  =====================================  =====================================

``JOB`` is ``{"job_id", "host", "procedure", "arguments", "info", "queue",
"state", "submit", "start", "end", "outcome"}`` (``state``: queued,
running, ending, ended; ``outcome``: the ``get_result`` reply or null).
``QUEUE`` is ``{"name", "concurrency", "running", "waiting"}`` (counts).

:func:`admin_call` is the blocking client the ``txharp`` command uses.
"""
from __future__ import annotations

import math
import os
import socket
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Mapping, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txharp.errors import MalformedMessage
from txharp.lines import JSONLinesProtocol
from txharp.proxy.jobs import Job, JobManager, UNKNOWN_JOB, store_failure
from txharp.proxy.queues import JobQueue
from txharp.proxy.store import JobRecord
from txharp.wire.codec import decode_line, encode_line
from txharp.wire.outcomes import ErrorReply

if TYPE_CHECKING:
    from txharp.proxy.service import ProxyService

__all__ = ["AdminError", "AdminProtocol", "AdminFactory", "admin_service", "admin_call"]

log = Logger(namespace="txharp.proxy.admin")

#: Jobs ``list`` with ``all`` returns unless given a ``limit``.
DEFAULT_LIST_LIMIT = 1000


class AdminError(Exception):
    """An admin request failed: ``type`` and ``message`` as the proxy sent them."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


def _describe_live(job: Job) -> Dict[str, Any]:
    outcome = job.outcome
    return {
        "job_id": job.job_id, "host": job.call.host, "procedure": job.call.procedure,
        "arguments": job.call.arguments, "info": job.call.info,
        "queue": None if job.call.queue is None else job.call.queue.name,
        "state": job.phase.value, "submit": job.submit, "start": job.start,
        "end": job.end if outcome is not None else None,
        "outcome": None if outcome is None else outcome.to_json(),
    }


def _describe_record(record: JobRecord) -> Dict[str, Any]:
    return {
        "job_id": record.job_id, "host": record.host, "procedure": record.procedure,
        "arguments": record.arguments, "info": record.info, "queue": record.queue,
        "state": record.state.value, "submit": record.submit, "start": record.start,
        "end": record.end, "outcome": None if record.outcome is None else record.outcome.to_json(),
    }


def _describe_queue(queue: JobQueue) -> Dict[str, Any]:
    return {"name": queue.name, "concurrency": queue.concurrency,
            "running": len(queue.running), "waiting": len(queue.waiting)}


def _job_id(request: Mapping[str, Any]) -> str:
    job_id = request.get("job_id")
    if not isinstance(job_id, str):
        raise MalformedMessage("job_id must be a string")
    return job_id


def _flag(request: Mapping[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise MalformedMessage(f"{key} must be true or false")
    return value


def _queue_name(request: Mapping[str, Any], required: bool) -> Optional[Dict[str, Any]]:
    name = request.get("name")
    if name is None and not required:
        return None
    if not isinstance(name, dict):
        raise MalformedMessage("name must be a JSON object")
    return name


class AdminOperations:
    """The commands, as coroutines returning the ``result`` value."""

    def __init__(self, proxy: "ProxyService") -> None:
        self._proxy = proxy
        self._manager: JobManager = proxy.manager
        self.commands: Dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]] = {
            "list": self.list, "info": self.info, "cancel": self.cancel,
            "queue-list": self.queue_list, "queue-cancel": self.queue_cancel,
            "hosts-list": self.hosts_list, "hosts-refresh": self.hosts_refresh,
            "prune-jobs": self.prune_jobs,
        }

    async def list(self, request: Mapping[str, Any]) -> Any:
        result: Dict[str, Any] = {}
        if _flag(request, "all"):
            limit = request.get("limit", DEFAULT_LIST_LIMIT)
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise MalformedMessage("limit must be a positive integer")
            records = await self._manager.store.list_jobs(None, limit)
            result["jobs"] = [self._describe(record) for record in records]
        else:
            result["jobs"] = [_describe_live(job) for job in self._manager.live_jobs()]
        if _flag(request, "queues"):
            result["queues"] = [_describe_queue(queue) for queue in self._manager.queues]
        return result

    def _describe(self, record: JobRecord) -> Dict[str, Any]:
        live = self._manager.get(record.job_id)
        return _describe_live(live) if live is not None else _describe_record(record)

    async def info(self, request: Mapping[str, Any]) -> Any:
        job_id = _job_id(request)
        record = await self._manager.store.get_job(job_id)
        if record is None:
            raise AdminError(UNKNOWN_JOB.type, UNKNOWN_JOB.message)
        return {**self._describe(record), "packets": record.packet_count}

    async def cancel(self, request: Mapping[str, Any]) -> Any:
        return {"cancelled": await self._manager.cancel(_job_id(request))}

    async def queue_list(self, request: Mapping[str, Any]) -> Any:
        name = _queue_name(request, required=False)
        queues = self._manager.queues
        if name is None:
            return {"queues": [_describe_queue(queue) for queue in queues]}
        queue = queues.get(name)
        if queue is None:
            raise AdminError("unknown_queue", "no such queue")
        members = list(queue.running) + list(queue.waiting)
        return {"queues": [{**_describe_queue(queue),
                            "jobs": [_describe_live(job) for job in members if isinstance(job, Job)]}]}

    async def queue_cancel(self, request: Mapping[str, Any]) -> Any:
        name = _queue_name(request, required=True)
        assert name is not None
        queue = self._manager.queues.get(name)
        if queue is None:
            raise AdminError("unknown_queue", "no such queue")
        # Waiting jobs first: ending a running one would start the next.
        members = list(queue.waiting) + list(queue.running)
        jobs = [job for job in members if isinstance(job, Job)]
        results = await gatherResults([self._manager.cancel(job.job_id) for job in jobs])
        return {"cancelled": [job.job_id for job, done in zip(jobs, results) if done]}

    async def hosts_list(self, request: Mapping[str, Any]) -> Any:
        return {"hosts": [{"hostname": e.hostname, "address": e.address, "port": e.port}
                          for e in self._proxy.hosts.entries()]}

    async def hosts_refresh(self, request: Mapping[str, Any]) -> Any:
        return {"refreshed": await self._proxy.hosts.refresh()}

    async def prune_jobs(self, request: Mapping[str, Any]) -> Any:
        days = request.get("age_days")
        if days is None:
            age = self._proxy.config.max_age
            if not age:
                raise MalformedMessage("no age given and no --max-age configured")
        elif isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0:
            raise MalformedMessage("age_days must be a non-negative number")
        else:
            try:
                age = float(days) * 86400.0
            except OverflowError:  # an integer beyond any float
                age = math.inf
            if not math.isfinite(age):
                raise MalformedMessage("age_days is out of range")
        return {"pruned": await self._manager.prune(age)}


class AdminProtocol(JSONLinesProtocol):
    """One admin request, its answer, close."""

    def __init__(self, operations: AdminOperations) -> None:
        super().__init__()
        self._operations = operations
        self._answered = False

    def messageReceived(self, value: Any) -> None:
        if self._answered:
            return
        self._answered = True
        Deferred.fromCoroutine(self._run(value)).addCallbacks(
            lambda result: self._reply({"result": result}), self._failed
        )

    async def _run(self, value: Any) -> Any:
        if not isinstance(value, dict) or not isinstance(value.get("command"), str):
            raise MalformedMessage("request must be an object with a command")
        command = self._operations.commands.get(value["command"])
        if command is None:
            raise MalformedMessage(f"unknown command {value['command']!r}")
        log.info("admin command {command}", command=value["command"])
        return await command(value)

    def malformedLineReceived(self, error: MalformedMessage) -> None:
        self._answered = True
        self._reply(ErrorReply("invalid_request", error.message).to_json())

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, MalformedMessage):
            reply = ErrorReply("invalid_request", error.message)
        elif isinstance(error, AdminError):
            reply = ErrorReply(error.type, error.message)
        else:
            log.failure("admin command failed", failure)
            reply = store_failure(failure)
        self._reply(reply.to_json())

    def _reply(self, value: Any) -> None:
        if self.transport is not None and self.connected:
            self.sendMessage(value)
            self.transport.loseConnection()


class AdminFactory(Factory):
    """Builds an :class:`AdminProtocol` per connection."""

    def __init__(self, operations: AdminOperations) -> None:
        self.operations = operations

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        protocol = AdminProtocol(self.operations)
        protocol.factory = self
        return protocol


@implementer(IStreamServerEndpoint)
class _PrivateUNIXEndpoint:
    """A UNIX socket created with mode 0600 from the start (umask set around bind)."""

    def __init__(self, inner: UNIXServerEndpoint) -> None:
        self._inner = inner

    def listen(self, factory: Factory) -> "Deferred[IListeningPort]":
        previous = os.umask(0o177)
        try:
            return self._inner.listen(factory)
        finally:
            os.umask(previous)


def admin_service(proxy: "ProxyService", path: str) -> StreamServerEndpointService:
    """The admin socket at ``path`` as a service (a stale socket file is replaced)."""
    endpoint = _PrivateUNIXEndpoint(UNIXServerEndpoint(proxy.reactor, path, mode=0o600, wantPID=True))
    service = StreamServerEndpointService(endpoint, AdminFactory(AdminOperations(proxy)))
    service._raiseSynchronously = True
    return service


def admin_call(path: str, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
    """Send one admin command to the proxy at socket ``path``; return its result.

    Blocking (for the command line, not for use inside a reactor).  Raises
    :class:`AdminError` for an error reply and ``OSError`` if the socket
    cannot be reached.
    """
    request = encode_line({"command": command, **arguments})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(path)
        connection.sendall(request)
        chunks: List[bytes] = []
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    if not data.endswith(b"\n"):
        raise AdminError("network_error", "the proxy closed the connection without an answer")
    reply = decode_line(data[:-1])
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        error = reply["error"]
        raise AdminError(str(error.get("type")), str(error.get("message")))
    if not isinstance(reply, dict) or "result" not in reply:
        raise AdminError("invalid_reply", "unexpected reply from the proxy")
    return reply["result"]
