# -*- test-case-name: tests.dbproxy.test_scheduler -*-
"""
Which call runs next in the database proxy, and how many may wait (pure logic).

A pool's queue is one FIFO for every caller, unbounded: a service that sends
100,000 calls would sit in front of every other service's first.  So the
proxy keeps its own queues and hands its pool at most C{slots} calls at a
time (one per pool connection):

    - each service has its own FIFO; the next call comes from the services
      in turn (round robin), so one service's flood delays another's calls by
      at most one call per service ahead of it;
    - a service may have at most C{queue_max} calls queued or running, over
      all its instances; one more is refused at once (the caller gets
      L{DatabaseUnavailable}, "queue full"), never buffered.

No I/O, no clock: the proxy passes time in as deadlines and asks.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Waiting(Generic[T]):
    """One call in the scheduler: C{item} is the proxy's, C{service} whose queue it counts in."""

    service: str
    item: T
    state: str = "queued"  # queued -> running -> done (or queued -> dropped)


@dataclass
class CallQueue(Generic[T]):
    """Per-service FIFOs, served in turn, at most C{slots} running, C{queue_max} per service."""

    slots: int
    queue_max: int
    running: int = 0
    #: The most calls one service has held at once since the start (C{queue_max} at most).
    peak_held: int = 0
    _queues: "OrderedDict[str, deque[Waiting[T]]]" = field(default_factory=OrderedDict)
    _held: dict[str, int] = field(default_factory=dict)
    _last: str | None = None

    def admit(self, service: str, item: T) -> Waiting[T] | None:
        """Queue C{item} for C{service}; L{None} if that service already holds C{queue_max} calls."""
        if self._held.get(service, 0) >= self.queue_max:
            return None
        waiting = Waiting(service, item)
        self._queues.setdefault(service, deque()).append(waiting)
        held = self._held[service] = self._held.get(service, 0) + 1
        if held > self.peak_held:
            self.peak_held = held
        return waiting

    def take(self) -> Waiting[T] | None:
        """The next call to run, if a slot is free: the oldest of the next service in turn."""
        if self.running >= self.slots:
            return None
        if self._last in self._queues:
            # The service served last waits for every other's turn, including services
            # whose first call arrived since.
            self._queues.move_to_end(self._last)
        if self._queues:
            service, queue = next(iter(self._queues.items()))
            self._last = service
            waiting = queue.popleft()
            if not queue:
                del self._queues[service]
            waiting.state = "running"
            self.running += 1
            return waiting
        return None

    def finished(self, waiting: Waiting[T]) -> None:
        """A running call is over: its slot and its place in its service's quota are free."""
        if waiting.state != "running":
            raise ValueError(f"finished a call that is {waiting.state}")
        waiting.state = "done"
        self.running -= 1
        self._release(waiting.service)

    def drop(self, waiting: Waiting[T]) -> bool:
        """Forget a queued call (it expired, or its caller went away); C{False} if it runs already."""
        if waiting.state != "queued":
            return False
        waiting.state = "dropped"
        queue = self._queues.get(waiting.service)
        if queue is not None:
            queue.remove(waiting)
            if not queue:
                del self._queues[waiting.service]
        self._release(waiting.service)
        return True

    def held(self, service: str) -> int:
        """How many calls C{service} has queued or running."""
        return self._held.get(service, 0)

    @property
    def ready(self) -> bool:
        """A call waits and a slot is free: L{take} would give one (whatever the number of services)."""
        return self.running < self.slots and bool(self._queues)

    @property
    def queued(self) -> int:
        return sum(self._held.values()) - self.running

    def queued_items(self) -> Iterator[Waiting[T]]:
        for queue in self._queues.values():
            yield from queue

    def _release(self, service: str) -> None:
        left = self._held[service] - 1
        if left:
            self._held[service] = left
        else:
            del self._held[service]

