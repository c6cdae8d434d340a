# -*- test-case-name: tests.wire.test_deadlines -*-
"""
Many deadlines of the same few lengths, swept by one reactor timer per length (OKWS's okd kept
its head timeouts in one timer list too).

The dispatcher gives every connection a deadline for its request head, and cancels it a few
milliseconds later, when the head arrives: a C{callLater} per connection costs a
L{twisted.internet.base.DelayedCall} and a heap push, and its cancellation a heap rebuild
later.  Deadlines of one length are due in the order they were set, so a queue per length
suffices: setting one appends, cancelling one marks it, and one reactor timer, armed for the
earliest live deadline, runs the due ones.  A deadline runs exactly when it is due, as a
C{callLater} would.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

#: Cancelled deadlines kept before the queue is compacted (also: more than half the queue).
_COMPACT_AT = 64


class Deadline:
    """One pending deadline (as much of L{twisted.internet.interfaces.IDelayedCall} as callers use)."""

    __slots__ = ("_queue", "_expired")

    def __init__(self, queue: "_Queue", expired: Callable[[], Any]) -> None:
        self._queue = queue
        self._expired: Callable[[], Any] | None = expired

    def active(self) -> bool:
        return self._expired is not None

    def cancel(self) -> None:
        if self._expired is not None:
            self._expired = None
            self._queue.cancelled()


class _Queue:
    """The deadlines of one length, due in the order they were set."""

    def __init__(self, reactor: Any, delay: float) -> None:
        self._reactor = reactor
        self._delay = delay
        self._entries: deque[tuple[float, Deadline]] = deque()
        self._live = 0
        self._call: Any = None
        self._sweeping = False

    def add(self, expired: Callable[[], Any]) -> Deadline:
        deadline = Deadline(self, expired)
        self._entries.append((self._reactor.seconds() + self._delay, deadline))
        self._live += 1
        if self._call is None and not self._sweeping:
            self._call = self._reactor.callLater(self._delay, self._sweep)
        return deadline

    def cancelled(self) -> None:
        self._live -= 1
        entries = self._entries
        if not self._live and not self._sweeping:
            # Nothing pending: no timer either (an idle process never wakes for nothing).
            entries.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif len(entries) > _COMPACT_AT and len(entries) > 2 * self._live:
            self._entries = deque(e for e in entries if e[1]._expired is not None)

    def _sweep(self) -> None:
        self._call = None
        self._sweeping = True
        try:
            entries = self._entries
            while entries:
                due, deadline = entries[0]
                expired = deadline._expired
                if expired is None:
                    entries.popleft()
                    continue
                if due > self._reactor.seconds() + 1e-9:  # (a float step past due is due)
                    break
                entries.popleft()
                deadline._expired = None
                self._live -= 1
                try:
                    expired()
                except Exception:
                    # One deadline's failure must not stop the others.
                    log.failure("a deadline's call failed")
                entries = self._entries  # compacted meanwhile?
        finally:
            self._sweeping = False
            if self._entries and self._call is None:
                # The first entry may be cancelled: the sweep it causes just skips it.
                due = self._entries[0][0]
                self._call = self._reactor.callLater(max(0.0, due - self._reactor.seconds()), self._sweep)


class Deadlines:
    """Deadlines by length: C{call_later(delay, f)} as the reactor's, for a few distinct delays."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._queues: dict[float, _Queue] = {}

    def call_later(self, delay: float, expired: Callable[[], Any]) -> Deadline:
        """Call C{expired} in C{delay} seconds, unless the returned deadline is cancelled first."""
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = _Queue(self._reactor, delay)
        return queue.add(expired)
