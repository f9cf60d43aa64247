"""Named queues with a concurrency fixed when the queue is created.

A call may name a queue (any JSON object, compared by value).  The first job
naming it creates it with its ``concurrency`` (default 1); later jobs' values
are ignored.  At most ``concurrency`` of the queue's jobs run at once, the
rest wait in submission order; the queue disappears when it has neither a
running nor a waiting job.  Jobs without a queue start at once.

The registry knows nothing about jobs beyond :class:`QueueMember`: it calls
``begin()`` when a member may run, and is told by :meth:`QueueRegistry.leave`
when a member has ended (running or still waiting).
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterator, Mapping, Optional, Set
from typing import Protocol as TypingProtocol

from txharp.wire.dispatcher import QueueSpec

__all__ = ["QueueMember", "JobQueue", "QueueRegistry", "queue_key"]

#: Concurrency of a queue whose creator did not say.
DEFAULT_CONCURRENCY = 1


def queue_key(name: Mapping[str, Any]) -> str:
    """The canonical text of a queue name: equal JSON objects, equal keys."""
    return json.dumps(name, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class QueueMember(TypingProtocol):
    """What a queue holds: something that can be told to begin running."""

    def begin(self) -> None:
        """Called once, when a slot is free; may end the member synchronously."""


@dataclass(eq=False)
class JobQueue:
    """One named queue: its jobs waiting in order and those running."""

    name: Dict[str, Any]
    concurrency: int
    waiting: Deque[QueueMember] = field(default_factory=deque)
    running: Set[QueueMember] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not self.waiting and not self.running

    @property
    def has_free_slot(self) -> bool:
        return len(self.running) < self.concurrency


class QueueRegistry:
    """Every live queue, keyed by the canonical text of its name."""

    def __init__(self) -> None:
        self._queues: Dict[str, JobQueue] = {}
        self._membership: Dict[QueueMember, JobQueue] = {}
        self._pumping: Set[str] = set()

    def submit(self, member: QueueMember, spec: Optional[QueueSpec]) -> None:
        """Run ``member`` now (no queue) or when its queue has a free slot."""
        if spec is None:
            member.begin()
            return
        key = queue_key(spec.name)
        queue = self._queues.get(key)
        if queue is None:
            queue = JobQueue(spec.name, spec.concurrency or DEFAULT_CONCURRENCY)
            self._queues[key] = queue
        queue.waiting.append(member)
        self._membership[member] = queue
        self._pump(key, queue)

    def has_room(self, spec: Optional[QueueSpec]) -> bool:
        """Whether a member submitted now with ``spec`` would begin at once."""
        if spec is None:
            return True
        queue = self._queues.get(queue_key(spec.name))
        return queue is None or (not queue.waiting and queue.has_free_slot)

    def leave(self, member: QueueMember) -> None:
        """``member`` ended: free its slot or its place in line."""
        queue = self._membership.pop(member, None)
        if queue is None:
            return
        if member in queue.running:
            queue.running.discard(member)
        else:
            queue.waiting.remove(member)
        key = queue_key(queue.name)
        self._pump(key, queue)

    def get(self, name: Mapping[str, Any]) -> Optional[JobQueue]:
        """The live queue named ``name``, if any."""
        return self._queues.get(queue_key(name))

    def __iter__(self) -> Iterator[JobQueue]:
        return iter(list(self._queues.values()))

    def _pump(self, key: str, queue: JobQueue) -> None:
        """Start waiting members while slots are free; drop the queue when empty.

        ``begin()`` may end a member at once (unknown host), which calls
        :meth:`leave` and so this method again: the inner call only records
        that the loop must go on, so the stack stays flat however many such
        members wait.
        """
        if key in self._pumping:
            return
        self._pumping.add(key)
        try:
            while queue.waiting and queue.has_free_slot:
                member = queue.waiting.popleft()
                queue.running.add(member)
                member.begin()
        finally:
            self._pumping.discard(key)
        if queue.empty and self._queues.get(key) is queue:
            del self._queues[key]
