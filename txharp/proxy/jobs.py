"""Jobs of the relaying dispatcher: one state machine per job, one owner of its end.

A :class:`Job` goes ``QUEUED → RUNNING → ENDING → ENDED`` (or straight from
``QUEUED`` to ``ENDING`` when cancelled in its queue).  Its end is decided
in exactly one place, :meth:`Job.finish`, whoever asks (the relay with the
daemon's final line or a failure, ``cancel``, the ``max_exec_time`` timer,
a shutdown): the first call wins, later ones are ignored.  Everything else
reacts to the transitions: the queue frees the slot, the relay closes the
daemon connection, the store records the end, and only when that record
has committed (``ENDED``) do waiters and followers learn the outcome.  A
``get_result`` or a follower arriving at any moment therefore sees either
"not ended yet" (and is told later) or the committed end — never the
original dispatcher's spurious ``missing_result``.

Durability ordering
-------------------
Every store write of a job goes through a :class:`_CommitPipeline`: writes
are issued at once (so the store's group commit batches them), and their
effects are applied strictly in issue order as their Deferreds fire.  So a
packet is handed to followers only after its ``append_packet`` committed,
and the end only after ``end_job`` committed, which is after every packet.

Followers read a job through :class:`StreamSource`: the committed packet
count, the committed outcome, a bounded cache of the most recent packets
(encoded once, shared by every follower) and the store for anything older.

Error outcomes produced here
----------------------------
==============  ==========================================  ===============================
type            message                                     when
==============  ==========================================  ===============================
timeout         maximum execution time exceeded             the run exceeded max_exec_time
                                                            (``data.max_exec_time``: seconds)
shutdown        dispatcher shut down                        harp-proxy stopped cleanly while
                                                            the job was queued or running
os_error        job store failed                            a job store write failed
                                                            (``data.reason``)
system_error    internal error                              a bug in harp-proxy's relay
                                                            (``data.reason``; logged)
missing_result  job interrupted abruptly                    harp-proxy died while the job ran
                                                            (set at the next start)
invalid_jobid   no job with this ID                         unknown job ID (request error)
==============  ==========================================  ===============================

The relay's own errors are listed in :mod:`txharp.proxy.relay`.
"""
from __future__ import annotations

import enum
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txharp.proxy.queues import QueueRegistry
from txharp.proxy.store import INTERRUPTED, JobRecord, JobStore
from txharp.wire.codec import RawJSON, encode_json
from txharp.wire.dispatcher import CallAccepted, CallRequest, StatusReply
from txharp.wire.outcomes import (
    CancelledReply,
    ErrorReply,
    ExceptionReply,
    NoResultReply,
    Outcome,
    ResultReply,
)

__all__ = [
    "UNKNOWN_JOB",
    "SHUTDOWN",
    "Phase",
    "Limits",
    "RunningCall",
    "Relay",
    "StreamWatcher",
    "StreamSource",
    "Job",
    "FinishedJob",
    "JobManager",
    "packet_line",
    "store_failure",
]

log = Logger(namespace="txharp.proxy.jobs")

#: The reply to any request naming a job that does not exist.
UNKNOWN_JOB = ErrorReply("invalid_jobid", "no job with this ID")

#: How jobs still queued or running end when the proxy stops cleanly.
SHUTDOWN = ErrorReply("shutdown", "dispatcher shut down")

#: Packets a read from the store fetches at once (bounds a follower's memory).
READ_BATCH = 64

#: Store writes of one job awaiting their commit before reading from its
#: daemon is paused, and the count at which it resumes.
PENDING_HIGH, PENDING_LOW = 1024, 256

#: A job's end that the store refused is written again after this many
#: seconds, doubling up to the maximum: no reply reports an end before it is
#: on disk, so waiters wait for the store to recover.
END_RETRY_FIRST, END_RETRY_MAX = 1.0, 60.0


def packet_line(number: int, data: Any) -> bytes:
    """The wire line of stream packet ``number``; the one place it is built.

    The same bytes as ``encode_line(Packet(number, data).to_json())``, with
    ``data`` encoded on its own (or given already encoded, as
    :class:`~txharp.wire.codec.RawJSON`) and no dictionary in between.
    """
    return b'{"packet":%d,"data":%s}\n' % (number, encode_json(data))


def loggable(text: str) -> str:
    """A client-chosen name made safe for any text log (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def store_failure(failure: Failure) -> ErrorReply:
    """The reply or outcome for a failed job store operation (details in ``data``)."""
    return ErrorReply("os_error", "job store failed", {"reason": failure.getErrorMessage()})


def outcome_summary(outcome: Outcome) -> str:
    """A short text for logs: ``result``, ``cancelled``, ``error:TYPE``..."""
    if isinstance(outcome, (ErrorReply, ExceptionReply)):
        kind = "error" if isinstance(outcome, ErrorReply) else "exception"
        return loggable(f"{kind}:{outcome.type}")
    return "result" if isinstance(outcome, ResultReply) else "cancelled"


class Phase(enum.Enum):
    """Where a live job is; ``ENDING`` means decided but not yet committed."""

    QUEUED = "queued"
    RUNNING = "running"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(frozen=True)
class Limits:
    """The proxy's time limits: defaults for calls that give none, and a ceiling.

    Both a call's ``timeout`` and its ``max_exec_time`` default to
    ``default_timeout`` and are capped by ``max_exec_time``.
    """

    default_timeout: float = 600.0
    max_exec_time: float = 600.0

    def timeout_for(self, call: CallRequest) -> float:
        """Longest silence allowed from the daemon."""
        return min(call.timeout or self.default_timeout, self.max_exec_time)

    def max_exec_time_for(self, call: CallRequest) -> float:
        """Longest run allowed, from the start (queue time excluded)."""
        return min(call.max_exec_time or self.default_timeout, self.max_exec_time)


class RunningCall(TypingProtocol):
    """A call the relay is carrying out."""

    def release(self) -> None:
        """Send the call to the daemon: the job's record is durable now."""

    def stop(self) -> None:
        """Close the daemon connection; idempotent, no report to the job."""

    def pauseReading(self) -> None:
        """Stop reading from the daemon (the store is behind); its idle timer stops too."""

    def resumeReading(self) -> None:
        """Read from the daemon again."""


class Relay(TypingProtocol):
    """Carries a job's call to its daemon and reports back to the job.

    ``run`` may connect at once, but sends the call only when told to by
    :meth:`RunningCall.release` (a job may start while its record is still
    being written).  It reports with :meth:`Job.stream` and ends with
    :meth:`Job.finish` (possibly before it returns, e.g. for an unknown
    host).
    """

    def run(self, job: "Job") -> RunningCall: ...


class StreamWatcher(TypingProtocol):
    """A follower: told when more packets committed and when the job ended."""

    def packets_available(self) -> None: ...

    def job_ended(self) -> None: ...


class StreamSource(TypingProtocol):
    """A job's stream as a follower or reader sees it: committed data only."""

    job_id: str

    @property
    def available(self) -> int:
        """How many packets have committed."""

    @property
    def outcome(self) -> Optional[Outcome]:
        """The committed end, or None while the job has not (durably) ended."""

    def cached_line(self, number: int) -> Optional[bytes]:
        """Packet ``number``'s line if still held in memory."""

    def read(self, since: int, limit: int) -> "Deferred[List[Tuple[int, Any]]]":
        """Committed packets from the store."""

    def watch(self, watcher: StreamWatcher) -> None: ...

    def unwatch(self, watcher: StreamWatcher) -> None: ...


class PacketCache:
    """The most recent packets' encoded lines, bounded by count and bytes.

    Shared by every follower of a job; a follower whose next packet has
    left it reads from the store instead.  The newest packet is always kept.
    """

    def __init__(self, max_packets: int, max_bytes: int) -> None:
        self._lines: Deque[bytes] = deque()
        self._first = 0
        self._bytes = 0
        self._max_packets = max(1, max_packets)
        self._max_bytes = max_bytes

    @property
    def max_packets(self) -> int:
        return self._max_packets

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def add(self, number: int, line: bytes) -> None:
        if number != self._first + len(self._lines):
            self._lines.clear()
            self._first, self._bytes = number, 0
        self._lines.append(line)
        self._bytes += len(line)
        while len(self._lines) > 1 and (
            len(self._lines) > self._max_packets or self._bytes > self._max_bytes
        ):
            self._bytes -= len(self._lines.popleft())
            self._first += 1

    def get(self, number: int) -> Optional[bytes]:
        index = number - self._first
        if 0 <= index < len(self._lines):
            return self._lines[index]
        return None


class _CommitPipeline:
    """Applies the effects of store writes in the order the writes were issued.

    The store fires its Deferreds in order anyway; this makes the guarantee
    local, so no packet is ever announced before an earlier one.
    """

    def __init__(self) -> None:
        self._entries: Deque[List[Any]] = deque()  # [fired, failure, effect, weight]
        self._flushing = False
        self._weight = 0

    def __len__(self) -> int:
        """Writes whose effect has not been applied yet (a write of N packets counts N)."""
        return self._weight

    def add(
        self, write: "Deferred[Any]", effect: Callable[[Optional[Failure]], None], weight: int = 1
    ) -> None:
        entry: List[Any] = [False, None, effect, weight]
        self._entries.append(entry)
        self._weight += weight

        def fired(result: Any) -> None:
            entry[0] = True
            entry[1] = result if isinstance(result, Failure) else None
            self._flush()

        write.addBoth(fired)

    def _flush(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._entries and self._entries[0][0]:
                _, failure, effect, weight = self._entries.popleft()
                self._weight -= weight
                effect(failure)
        finally:
            self._flushing = False


class Job:
    """One live job (queued, running or ending): the owner of its own end."""

    def __init__(self, manager: "JobManager", job_id: str, call: CallRequest, submit: int) -> None:
        self._manager = manager
        self.job_id = job_id
        self.call = call
        self.submit = submit
        self.timeout = manager.limits.timeout_for(call)
        self.max_exec_time = manager.limits.max_exec_time_for(call)
        self.phase = Phase.QUEUED
        self.recorded = False  # the job's record has committed
        self._abandoned = False  # ... or was refused (see abandon)
        self.start: Optional[int] = None
        self.end: Optional[int] = None
        self._decided: Optional[Outcome] = None
        self._numbered = 0
        self._committed = 0
        self._started_at: Optional[float] = None
        self._cache = PacketCache(manager.cache_packets, manager.cache_bytes)
        self._pipeline = _CommitPipeline()
        self._watchers: List[StreamWatcher] = []
        self._waiters: List[Deferred[Outcome]] = []
        self._run: Optional[RunningCall] = None
        self._reading_paused = False
        self._deadline: Optional[IDelayedCall] = None
        self._end_retry: Optional[IDelayedCall] = None
        self._end_retry_delay = END_RETRY_FIRST

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.call.host}/{self.call.procedure} {self.phase.value}>"

    # ------------------------------------------------------- transitions

    def begin(self) -> None:
        """QUEUED → RUNNING: record the start, arm ``max_exec_time``, relay the call.

        A job that starts as it is submitted has its start in its record
        (see :meth:`JobManager.submit`), and its call is held by the relay
        until that record has committed (:meth:`record_committed`).
        """
        if self.phase is not Phase.QUEUED:
            return
        manager = self._manager
        if manager.closing:
            self.finish(SHUTDOWN)
            return
        self.phase = Phase.RUNNING
        self._started_at = manager.clock.seconds()
        if self.recorded:
            self.start = int(self._started_at)
            self._pipeline.add(manager.store.mark_started(self.job_id, self.start), self._written)
        else:
            self.start = self.submit
        self._deadline = manager.clock.callLater(self.max_exec_time, self._deadline_passed)
        log.info(
            "job {job_id} started: {host} {procedure}",
            job_id=self.job_id, host=loggable(self.call.host), procedure=loggable(self.call.procedure),
        )
        try:
            run = manager.relay.run(self)
        except Exception:
            failure = Failure()
            log.failure("job {job_id}: the relay failed", failure, job_id=self.job_id)
            self.finish(ErrorReply("system_error", "internal error", {"reason": failure.getErrorMessage()}))
            return
        if self.phase is not Phase.RUNNING:
            run.stop()
            return
        self._run = run
        if self.recorded:
            run.release()

    def record_committed(self) -> None:
        """The job's record is durable: a call held until now goes to the daemon."""
        self.recorded = True
        if self._run is not None:
            self._run.release()

    def abandon(self) -> None:
        """The job's record was refused: stop it and write nothing more.

        Nobody knows the job's id (its submitter gets the store's error), so
        nobody waits for it; an end already being written is let go.
        """
        self._abandoned = True
        if self.phase is not Phase.ENDED:
            self._stop_running()
            self.phase = Phase.ENDED
        if self._end_retry is not None and self._end_retry.active():
            self._end_retry.cancel()

    def stream(self, data: Any) -> None:
        """A packet from the daemon: record it, then hand it to followers."""
        if self.phase is not Phase.RUNNING:
            return
        number = self._numbered
        self._numbered += 1
        encoded = RawJSON(encode_json(data))  # once, for the line and for the store
        line = packet_line(number, encoded)
        write = self._manager.store.append_packet(self.job_id, number, encoded)
        self._pipeline.add(write, lambda failure: self._packets_written(failure, number, [line]))
        self._pause_if_behind()

    def stream_many(self, datas: Sequence[Any]) -> None:
        """Packets that arrived from the daemon together: as :meth:`stream` for
        each, in order, but recorded with one store write.

        The relay hands over the packets of each chunk it reads from the
        daemon this way: one ``append_packets`` (all or nothing) and one
        commit wait for the lot, instead of one of each per packet.
        Followers see them once that write has committed, as always.  A
        store without ``append_packets`` gets them one by one.
        """
        if self.phase is not Phase.RUNNING or not datas:
            return
        store = self._manager.store
        append_packets = getattr(store, "append_packets", None)
        if append_packets is None or len(datas) == 1:
            for data in datas:
                self.stream(data)
            return
        first = self._numbered
        self._numbered += len(datas)
        encoded = [RawJSON(encode_json(data)) for data in datas]
        lines = [packet_line(first + n, raw) for n, raw in enumerate(encoded)]
        write = append_packets(self.job_id, first, encoded)
        self._pipeline.add(
            write, lambda failure: self._packets_written(failure, first, lines), len(datas)
        )
        self._pause_if_behind()

    def _pause_if_behind(self) -> None:
        """Flow control: stop reading from the daemon while too many packets await their commit."""
        if len(self._pipeline) >= PENDING_HIGH and not self._reading_paused and self._run is not None:
            self._reading_paused = True
            self._run.pauseReading()

    def finish(self, outcome: Outcome) -> bool:
        """Decide the job's end; True for the first call, False (ignored) after."""
        if self.phase in (Phase.ENDING, Phase.ENDED):
            return False
        manager = self._manager
        self.phase = Phase.ENDING
        self._decided = outcome
        self.end = int(manager.clock.seconds())
        self._stop_running()
        self._record_end()
        return True

    def _stop_running(self) -> None:
        """Disarm the deadline, close the daemon connection, free the queue slot."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        run, self._run = self._run, None
        if run is not None:
            run.stop()
        self._manager.queues.leave(self)

    def _record_end(self) -> None:
        self._end_retry = None
        assert self._decided is not None and self.end is not None
        write = self._manager.store.end_job(self.job_id, self._decided, self.end)
        self._pipeline.add(write, self._settled)

    def retry_end_now(self) -> None:
        """Write a refused end at once instead of after its back-off (shutdown)."""
        if self._end_retry is not None and self._end_retry.active():
            self._end_retry.cancel()
            self._record_end()

    # ---------------------------------------------------------- effects

    def _written(self, failure: Optional[Failure]) -> None:
        if failure is not None:
            self._store_failed(failure)

    def _packets_written(self, failure: Optional[Failure], first: int, lines: List[bytes]) -> None:
        """Packets ``first``... are committed: cache and announce them, in order."""
        if failure is not None:
            self._store_failed(failure)
            return
        if self._reading_paused and len(self._pipeline) <= PENDING_LOW and self._run is not None:
            self._reading_paused = False
            self._run.resumeReading()
        if first != self._committed:  # an earlier packet was refused
            return
        # Announced in slices of at most half the cache, so that followers
        # that keep up take every packet from the cache before it leaves.
        cache = self._cache
        most_packets, most_bytes = cache.max_packets // 2, cache.max_bytes // 2
        last = first + len(lines) - 1
        count = size = 0
        for n, line in enumerate(lines, first):
            cache.add(n, line)
            count += 1
            size += len(line)
            if count >= most_packets or size >= most_bytes or n == last:
                self._committed = n + 1
                count = size = 0
                for watcher in list(self._watchers):
                    watcher.packets_available()

    def _store_failed(self, failure: Failure) -> None:
        log.failure("job {job_id}: job store write failed", failure, job_id=self.job_id)
        self.finish(store_failure(failure))

    def _settled(self, failure: Optional[Failure]) -> None:
        """ENDING → ENDED once the end is durable; a refused write is retried.

        Nobody is told an end the store does not hold: waiters and followers
        wait while the write is retried with back-off.  Only when harp-proxy
        shuts down with the store still refusing is the job given up, as
        ``missing_result`` -- what a restart would read for it anyway.
        """
        if self._abandoned:
            return
        if failure is not None:
            log.failure("job {job_id}: recording its end failed", failure, job_id=self.job_id)
            if not self._manager.closing:
                delay, self._end_retry_delay = self._end_retry_delay, min(
                    END_RETRY_MAX, self._end_retry_delay * 2
                )
                self._end_retry = self._manager.clock.callLater(delay, self._record_end)
                return
            self._decided = INTERRUPTED
        outcome = self._decided
        assert outcome is not None
        self.phase = Phase.ENDED
        started = self._started_at
        log.info(
            "job {job_id} ended: {host} {procedure} -> {outcome} after {duration:.3f} s",
            job_id=self.job_id, host=loggable(self.call.host),
            procedure=loggable(self.call.procedure), outcome=outcome_summary(outcome),
            duration=0.0 if started is None else self._manager.clock.seconds() - started,
            queued=started is None,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(outcome)
        for watcher in list(self._watchers):
            watcher.job_ended()
        self._manager._retire(self)

    def _deadline_passed(self) -> None:
        self._deadline = None
        self.finish(ErrorReply("timeout", "maximum execution time exceeded",
                               {"max_exec_time": self.max_exec_time}))

    # ------------------------------------------------------- observers

    @property
    def outcome(self) -> Optional[Outcome]:
        """The end, once committed; None before."""
        return self._decided if self.phase is Phase.ENDED else None

    @property
    def available(self) -> int:
        return self._committed

    def when_ended(self) -> "Deferred[Outcome]":
        """A new Deferred fired with the committed outcome (cancellable)."""
        if self.phase is Phase.ENDED:
            assert self._decided is not None
            return succeed(self._decided)
        waiter: Deferred[Outcome] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(waiter)
        return waiter

    def status(self) -> StatusReply:
        """``get_status``: the end time shows once the end has committed."""
        return StatusReply(
            host=self.call.host, procedure=self.call.procedure, arguments=self.call.arguments,
            submit=self.submit, start=self.start,
            end=self.end if self.phase is Phase.ENDED else None, info=self.call.info,
        )

    def cached_line(self, number: int) -> Optional[bytes]:
        return self._cache.get(number)

    def read(self, since: int, limit: int) -> "Deferred[List[Tuple[int, Any]]]":
        return self._manager.store.read_packets(self.job_id, since, limit)

    def watch(self, watcher: StreamWatcher) -> None:
        self._watchers.append(watcher)

    def unwatch(self, watcher: StreamWatcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)


class FinishedJob:
    """A stream source for a job that ended before it was asked for (from the store)."""

    def __init__(self, record: JobRecord, store: JobStore) -> None:
        self.job_id = record.job_id
        self._record = record
        self._store = store

    @property
    def available(self) -> int:
        return self._record.packet_count

    @property
    def outcome(self) -> Optional[Outcome]:
        return _stored_outcome(self._record)

    def cached_line(self, number: int) -> Optional[bytes]:
        return None

    def read(self, since: int, limit: int) -> "Deferred[List[Tuple[int, Any]]]":
        return self._store.read_packets(self.job_id, since, limit)

    def watch(self, watcher: StreamWatcher) -> None:
        """A finished job produces nothing more."""

    def unwatch(self, watcher: StreamWatcher) -> None:
        """A finished job produces nothing more."""


def _stored_outcome(record: JobRecord) -> Outcome:
    """A stored job's end; a record left unfinished can only be an interrupted job."""
    return record.outcome if record.outcome is not None else INTERRUPTED


ResultAnswer = Union[Outcome, NoResultReply, ErrorReply]


class JobManager:
    """Every job: creation, lookup (live jobs first, then the store), cancel, shutdown.

    Live jobs stay in memory until their end has committed, so a job that is
    not in memory is either unknown or ended in the store: there is no
    moment at which a job is neither.
    """

    def __init__(
        self,
        store: JobStore,
        relay: Relay,
        clock: IReactorTime,
        limits: Limits = Limits(),
        *,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        cache_packets: int = 2048,
        cache_bytes: int = 4 << 20,
    ) -> None:
        self.store = store
        self.relay = relay
        self.clock = clock
        self.limits = limits
        self.queues = QueueRegistry()
        self.cache_packets = cache_packets
        self.cache_bytes = cache_bytes
        self._new_id = new_id
        self._active: Dict[str, Job] = {}
        self._closing = False

    # ---------------------------------------------------------- requests

    def submit(self, call: CallRequest) -> "Deferred[Union[CallAccepted, ErrorReply]]":
        """Record a new job and queue or start it; the reply once the record is durable.

        A job its queue lets start at once starts now, with its start in
        its record: the relay dials the daemon while the record is being
        written, and sends the call once it has committed.  Its later
        writes (an end, if the host is unknown) are queued behind the
        record's, so the store always sees them in order.
        """
        job_id = self._new_id()
        submit = int(self.clock.seconds())
        job = Job(self, job_id, call, submit)
        starts_now = not self._closing and self.queues.has_room(call.queue)
        record = JobRecord.from_call(job_id, call, submit, start=submit if starts_now else None)
        creating = self.store.create_job(record)
        if not self._closing:
            self.queues.submit(job, call.queue)

        def created(_: None) -> CallAccepted:
            if job.phase is not Phase.ENDED:  # a store that answers at once may have ended it
                self._active[job_id] = job
            if self._closing:
                job.finish(SHUTDOWN)
            job.record_committed()
            return CallAccepted(job_id)

        def refused(failure: Failure) -> ErrorReply:
            job.abandon()
            log.failure("cannot record new job {job_id} for {host} {procedure}", failure,
                        job_id=job_id, host=loggable(call.host), procedure=loggable(call.procedure))
            return store_failure(failure)

        return creating.addCallbacks(created, refused)

    def cancel(self, job_id: str) -> "Deferred[bool]":
        """Stop a queued or running job; True once its cancellation committed."""
        job = self._active.get(job_id)
        if job is None or not job.finish(CancelledReply()):
            return succeed(False)
        return job.when_ended().addCallback(lambda _: True)

    def result(self, job_id: str, wait: bool) -> "Deferred[ResultAnswer]":
        """The committed end; waits for it or says ``no_result`` if not ended."""
        job = self._active.get(job_id)
        if job is not None:
            if job.outcome is not None:
                return succeed(job.outcome)
            return job.when_ended() if wait else succeed(NoResultReply())
        return self._stored(job_id, _stored_outcome)

    def status(self, job_id: str) -> "Deferred[Union[StatusReply, ErrorReply]]":
        """The job's call, times and info."""
        job = self._active.get(job_id)
        if job is not None:
            return succeed(job.status())
        return self._stored(job_id, JobRecord.status)

    def stream_source(self, job_id: str) -> "Deferred[Union[StreamSource, ErrorReply]]":
        """What a follower or reader of ``job_id`` reads from."""
        job = self._active.get(job_id)
        if job is not None:
            return succeed(job)
        return self._stored(job_id, lambda record: FinishedJob(record, self.store))

    def _stored(self, job_id: str, answer: Callable[[JobRecord], Any]) -> "Deferred[Any]":
        def found(record: Optional[JobRecord]) -> Any:
            return UNKNOWN_JOB if record is None else answer(record)

        return self.store.get_job(job_id).addCallback(found)

    # -------------------------------------------------------- inspection

    def get(self, job_id: str) -> Optional[Job]:
        """The live job ``job_id``, or None."""
        return self._active.get(job_id)

    def live_jobs(self) -> List[Job]:
        """Every job queued, running or ending, oldest first."""
        return sorted(self._active.values(), key=lambda job: (job.submit, job.job_id))

    # --------------------------------------------------------- lifecycle

    @property
    def closing(self) -> bool:
        """Whether :meth:`shutdown` was called: no job starts any more."""
        return self._closing

    def recover(self) -> "Deferred[List[str]]":
        """End the jobs a previous run left unfinished as ``missing_result`` (the store logs it)."""
        return self.store.recover_interrupted(int(self.clock.seconds()))

    def prune(self, max_age: float) -> "Deferred[int]":
        """Delete jobs that ended more than ``max_age`` seconds ago (never live ones)."""
        return self.store.prune(int(self.clock.seconds() - max_age))

    def shutdown(self) -> "Deferred[Any]":
        """End every live job as :data:`SHUTDOWN`; fires when all ends committed."""
        self._closing = True
        ending = [job.when_ended() for job in self._active.values()]
        for job in list(self._active.values()):
            job.finish(SHUTDOWN)
            job.retry_end_now()
        return DeferredList(ending, consumeErrors=True)

    def _retire(self, job: Job) -> None:
        if self._active.get(job.job_id) is job:
            del self._active[job.job_id]
