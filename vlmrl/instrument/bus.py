"""A bounded, drop-oldest event bus that never blocks the producer.

Taps run inside XLA's host callbacks: a producer that waits stalls the device stream.
So `publish` only appends to each subscriber's bounded deque (dropping the oldest event
when full, counted per kind) and returns. Each consumer (dashboard, recorder, plain log)
has its own queue, so a slow one never starves another.
"""
from __future__ import annotations

import collections
import threading
from typing import Iterable, Optional

from vlmrl.errors import UsageError

DEFAULT_CAPACITY = 100


class Subscription:
    """One consumer's view of the bus: a bounded queue it drains at its own pace.

    The producer's path is one `deque.append` (atomic in CPython) and one attribute read:
    on a virtualised host, taking a lock or setting an Event right after the producer
    thread wakes costs 20-50 us of cold page walks, ten times the append. The lock is
    taken only to make room when the queue is full and by the consumer, so every event is
    either delivered or counted as dropped. Concurrent producers may overfill the queue by
    at most one event each before the next publish trims it.
    """

    def __init__(self, name: str, capacity: int):
        if capacity < 1:
            raise UsageError(f"subscription {name!r}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._waiting = False  # the producer signals only a consumer blocked in wait()
        self.dropped: collections.Counter = collections.Counter()
        self.delivered = 0
        self.closed = False

    def put(self, event) -> None:
        """The producer's path: append, making room first when full; never blocks."""
        items = self._items
        if len(items) >= self.capacity:
            self._make_room()
        items.append(event)
        if self._waiting:
            self._ready.set()

    def _make_room(self) -> None:
        with self._lock:
            items = self._items
            while len(items) >= self.capacity:
                old = items.popleft()
                self.dropped[getattr(old, "kind", type(old).__name__)] += 1

    def drain(self, limit: Optional[int] = None) -> list:
        """Take every queued event (or at most `limit`), oldest first, without waiting."""
        with self._lock:
            items = self._items
            n = len(items) if limit is None else min(limit, len(items))
            out = [items.popleft() for _ in range(n)]
            self.delivered += n
        return out

    def wait(self, timeout: float) -> bool:
        """Block the consumer (never the producer) until an event is queued or timeout."""
        if self._items:
            return True
        self._ready.clear()
        self._waiting = True
        try:
            # an event appended before `_waiting` was set is seen here; one appended after
            # it finds `_waiting` set and signals
            if self._items:
                return True
            return self._ready.wait(timeout)
        finally:
            self._waiting = False

    @property
    def received(self) -> int:
        """Events offered to this subscription: delivered, dropped or still queued."""
        with self._lock:
            return self.delivered + sum(self.dropped.values()) + len(self._items)

    @property
    def total_dropped(self) -> int:
        with self._lock:  # a producer making room may be adding a kind to the counter
            return sum(self.dropped.values())

    def __len__(self) -> int:
        return len(self._items)


class Bus:
    """Fan-out of events to any number of bounded subscriptions.

    `publish` is the producer's call: a loop over the subscriptions, each a bounded
    append. The subscriptions are one tuple swapped whole under the lock, so a publish
    racing a subscribe sees the old set or the new one and never takes the lock. A
    publish costs a few microseconds (bench_render.py's paced producer), noise beside
    the host callback of at least 4 us that carries a tap's payload.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._subs: tuple = ()
        self._lock = threading.Lock()

    def publish(self, event) -> None:
        """Hand `event` to every subscriber; never blocks, never raises for a full queue."""
        for sub in self._subs:
            sub.put(event)

    def subscribe(self, name: str, capacity: Optional[int] = None) -> Subscription:
        sub = Subscription(name, self.capacity if capacity is None else capacity)
        with self._lock:
            self._subs = self._subs + (sub,)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
        sub.closed = True

    def publish_many(self, events: Iterable) -> None:
        for event in events:
            self.publish(event)

    @property
    def subscriptions(self) -> tuple:
        return self._subs


_default_bus: Optional[Bus] = None
_default_lock = threading.Lock()


def default_bus() -> Bus:
    """The process-wide bus that taps publish to unless given another."""
    global _default_bus
    with _default_lock:
        if _default_bus is None:
            _default_bus = Bus()
        return _default_bus
