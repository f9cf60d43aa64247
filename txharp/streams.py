"""Streams of messages arriving over a connection, consumable three ways.

A :class:`MessageStream` is fed by a connection and read by one consumer:

* ``async for item in stream`` inside ``Deferred.fromCoroutine`` /
  ``ensureDeferred``;
* ``stream.each(callback)``, a Deferred fired when the stream ends (a
  callback returning a Deferred is waited for before the next item);
* ``stream.all()``, a Deferred of the list of every item.

Items already received are delivered before a failure is reported.  When
the consumer falls behind, reading from the connection is paused, so a slow
consumer never makes the client buffer without bound.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Generic, List, Optional, TypeVar, Union

from twisted.internet.defer import Deferred, inlineCallbacks, fail, succeed
from twisted.python.failure import Failure

__all__ = ["MessageStream", "StreamControl"]

T = TypeVar("T")


class _End:
    def __repr__(self) -> str:
        return "<end of stream>"


_END = _End()


class StreamControl:
    """What a stream may ask of its connection: flow control and cancellation."""

    def pauseReading(self) -> None: ...

    def resumeReading(self) -> None: ...

    def cancel(self) -> None: ...


class MessageStream(Generic[T]):
    """An ordered sequence of items with a single consumer.

    :param high_water: how many unread items may pile up before reading
        from the connection is paused; reading resumes at half of it.
    """

    def __init__(self, high_water: int = 256) -> None:
        self._items: Deque[T] = deque()
        self._waiting: Optional[Deferred[Any]] = None
        self._outcome: Optional[Union[_End, Failure]] = None
        self._control: Optional[StreamControl] = None
        self._paused = False
        self._high_water = max(1, high_water)

    # ------------------------------------------------------------ producer

    def attach(self, control: StreamControl) -> None:
        """Connect the stream to what feeds it (called once by the client)."""
        self._control = control

    def push(self, item: T) -> None:
        """Deliver one item (in order)."""
        if self._outcome is not None:
            return
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.callback(item)
            return
        self._items.append(item)
        if not self._paused and len(self._items) >= self._high_water and self._control:
            self._paused = True
            self._control.pauseReading()

    def finish(self, reason: Optional[Failure] = None) -> None:
        """End the stream: cleanly (``None``) or with ``reason``."""
        if self._outcome is not None:
            return
        self._outcome = _END if reason is None else reason
        if self._waiting is not None and not self._items:
            waiting, self._waiting = self._waiting, None
            waiting.callback(_END) if reason is None else waiting.errback(reason)

    # ------------------------------------------------------------ consumer

    @property
    def ended(self) -> bool:
        """Whether no more items will be pushed (some may still be unread)."""
        return self._outcome is not None

    def cancel(self) -> None:
        """Stop receiving; pending and later reads fail with CancelledError."""
        if self._outcome is None and self._control is not None:
            self._control.cancel()

    def _next(self) -> "Deferred[Union[T, _End]]":
        if self._waiting is not None:
            raise RuntimeError("this stream is already being consumed")
        if self._items:
            item = self._items.popleft()
            if self._paused and len(self._items) <= self._high_water // 2 and self._control:
                self._paused = False
                self._control.resumeReading()
            return succeed(item)
        if isinstance(self._outcome, Failure):
            return fail(self._outcome)
        if self._outcome is _END:
            return succeed(_END)
        self._waiting = Deferred(lambda d: self._cancel_waiting())
        return self._waiting

    def _cancel_waiting(self) -> None:
        self._waiting = None
        self.cancel()

    def __aiter__(self) -> "MessageStream[T]":
        return self

    async def __anext__(self) -> T:
        item = await self._next()
        if isinstance(item, _End):
            raise StopAsyncIteration
        return item

    @inlineCallbacks
    def each(self, callback: Callable[[T], Any]) -> Any:
        """Call ``callback`` with every item; fires with None at the end.

        If ``callback`` raises, the stream is cancelled and the returned
        Deferred fails with that exception.
        """
        while True:
            item = yield self._next()
            if isinstance(item, _End):
                return None
            try:
                result = callback(item)
                if isinstance(result, Deferred):
                    yield result
            except BaseException:
                self.cancel()
                raise

    def all(self) -> "Deferred[List[T]]":
        """Collect every item into a list."""
        collected: List[T] = []
        return self.each(collected.append).addCallback(lambda _: collected)
