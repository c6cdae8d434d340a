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
C{callLater} would.  A service instance arms its channels' idle timers on them too (kept
lazily there: L{okws_twisted.service.web.ServiceChannel.setTimeout}), and any
L{twisted.protocols.policies.TimeoutMixin} may use them: resetting one appends a new entry
and leaves the old one stale; stale and cancelled entries are dropped as the queue is swept,
or compacted away once they are more than half of it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

#: Cancelled deadlines kept before the queue is compacted (also: more than half the queue).
_COMPACT_AT = 64


class Deadline:
    """One pending deadline: as much of L{twisted.internet.interfaces.IDelayedCall} as its
    callers use (C{cancel}, C{active}, C{reset}: L{twisted.protocols.policies.TimeoutMixin}'s
    idle timer is one of these when a protocol's C{callLater} is L{Deadlines.call_later})."""

    __slots__ = ("_queue", "_expired", "_due")

    def __init__(self, queue: "_Queue", expired: Callable[[], Any], due: float) -> None:
        self._queue = queue
        self._expired: Callable[[], Any] | None = expired
        self._due = due

    def active(self) -> bool:
        return self._expired is not None

    def cancel(self) -> None:
        if self._expired is not None:
            self._expired = None
            self._queue.cancelled()

    def reset(self, delay: float) -> None:
        """Due C{delay} seconds from now instead (its entry in the queue goes stale)."""
        if self._expired is None:
            return
        self._queue.moved(self, delay)


class _Queue:
    """The deadlines of one length, due in the order they were set."""

    def __init__(self, owner: "Deadlines", delay: float) -> None:
        self._owner = owner
        self._reactor = owner._reactor
        self._delay = delay
        #: (due, deadline): an entry whose due is not its deadline's any more is stale
        self._entries: deque[tuple[float, Deadline]] = deque()
        self._live = 0
        self._call: Any = None
        self._sweeping = False

    def add(self, expired: Callable[[], Any]) -> Deadline:
        due = self._reactor.seconds() + self._delay
        deadline = Deadline(self, expired, due)
        self._append(due, deadline)
        return deadline

    def _append(self, due: float, deadline: Deadline) -> None:
        self._entries.append((due, deadline))
        self._live += 1
        if self._call is None and not self._sweeping:
            self._call = self._reactor.callLater(self._delay, self._sweep)

    def moved(self, deadline: Deadline, delay: float) -> None:
        self._live -= 1
        queue = self if delay == self._delay else self._owner._queue(delay)
        deadline._queue = queue
        deadline._due = due = self._reactor.seconds() + delay
        queue._append(due, deadline)
        self._maybe_compact()

    def cancelled(self) -> None:
        self._live -= 1
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        entries = self._entries
        if not self._live and not self._sweeping:
            # Nothing pending: no timer either (an idle process never wakes for nothing).
            entries.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif len(entries) > _COMPACT_AT and len(entries) > 2 * self._live:
            self._entries = deque(e for e in entries if e[1]._expired is not None and e[1]._due == e[0])

    def _sweep(self) -> None:
        self._call = None
        self._sweeping = True
        try:
            entries = self._entries
            while entries:
                due, deadline = entries[0]
                expired = deadline._expired
                if expired is None or deadline._due != due:
                    entries.popleft()  # cancelled, or reset to a later entry
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
                # The first entry may be stale: the sweep it causes just skips it.
                due = self._entries[0][0]
                self._call = self._reactor.callLater(max(0.0, due - self._reactor.seconds()), self._sweep)


class Deadlines:
    """Deadlines by length: C{call_later(delay, f)} as the reactor's, for a few distinct delays."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._queues: dict[float, _Queue] = {}

    def _queue(self, delay: float) -> _Queue:
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = _Queue(self, delay)
        return queue

    def call_later(self, delay: float, expired: Callable[[], Any]) -> Deadline:
        """Call C{expired} in C{delay} seconds, unless the returned deadline is cancelled first."""
        return self._queue(delay).add(expired)
