# -*- test-case-name: tests.launcher.test_supervision -*-
"""
Relaunch bookkeeping for the launcher (OKWS okld's crash policy), with no I/O.

L{Backoff} spaces relaunches out; L{CrashBudget} decides when a child that
keeps crashing is given up on; L{Heartbeat} tracks whether a child still
answers its control channel.  Time is always passed in, so all three are
tested with plain numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Relaunch delays: doubling from C{floor} to C{ceiling}, reset after a stable run."""

    floor: float
    ceiling: float
    stable_after: float
    current: float = 0.0

    def delay(self, ran_for: float) -> float:
        """The delay before the next launch of a child that ran C{ran_for} seconds."""
        if ran_for >= self.stable_after or self.current == 0.0:
            self.current = self.floor
        else:
            self.current = min(self.ceiling, self.current * 2)
        return self.current


@dataclass
class CrashBudget:
    """At most C{budget} crashes within any C{window} seconds (OKWS: 30 in 50 s).

    One crash more and the child is given up on until an operator revives it.
    """

    budget: int
    window: float
    crashes: deque[float] = field(default_factory=deque)

    def crashed(self, now: float) -> bool:
        """Record a crash at C{now}; C{True} if the budget is now exhausted."""
        self.crashes.append(now)
        while self.crashes and self.crashes[0] <= now - self.window:
            self.crashes.popleft()
        return len(self.crashes) > self.budget

    def reset(self) -> None:
        self.crashes.clear()


@dataclass
class Heartbeat:
    """Whether a child answers pings on its control channel in time."""

    timeout: float
    last_answer: float
    sent: int = 0
    answered: int = 0

    def ping(self) -> int:
        """The sequence number of the next ping to send."""
        self.sent += 1
        return self.sent

    def pong(self, seq: int, now: float) -> None:
        if seq > self.answered:
            self.answered = seq
            self.last_answer = now

    def overdue(self, now: float) -> bool:
        """C{True} once the child has answered nothing for C{timeout} seconds."""
        return now - self.last_answer > self.timeout
