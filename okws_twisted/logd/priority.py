# -*- test-case-name: tests.logd.test_priority -*-
"""
The log daemon's CPU priority: low while it keeps up, normal the moment it falls behind.

OKWS's oklogd ran at the priority it was started with.  Here the log daemon's work comes in
bursts (a sender's batch of up to 256 records, about half a millisecond of CPU): at normal
priority such a burst preempts a service instance or the dispatcher in the middle of its own
batch, and the requests waiting on them wait for it.  On a busy machine that is the tail of
``isolation = request`` (bench/README.md, session 8: the log daemon at nice 19 took 0.6-0.8 ms
off the relayed site's keep-alive p99, 8 rounds of 8 out of 8).  Records may wait; requests
should not.  So the daemon runs at ``[okws] logd_nice`` (default 19): it gets the CPU time
nobody else wants, which on a machine that is not saturated is plenty.

A low priority must not cost records: on a machine that stays busy the daemon would get too
little CPU to keep up, its senders' buffers (``log_buffer``) would fill, and records would be
dropped.  L{LagWatch} notices (a timer of the daemon's own firing late means it was runnable and
not run, or busy with a backlog) and asks the launcher for normal priority (nice 0), then for
the low one again once it has been on time for a while.  It starts at normal priority and asks
for the low one only after its first 5 s on time: a relaunched daemon's recovery (the journal,
every sender's resent batches) is when senders' buffers are fullest.  Only the launcher changes the
daemon's priority: it takes back a lowered priority with C{CAP_SYS_NICE}, which a jailed child
never has, and it lowers the daemon only if it holds that capability (a launcher that is not
root runs the daemon at normal priority).  The daemon's request is a plain yes or no about
itself: the worst a hostile daemon can ask for is the priority every other child has.
"""

from __future__ import annotations

from typing import Any, Callable

#: How often the watch's timer fires.
TICK = 0.1
#: A tick this much later than due means the daemon is being starved: ask for normal priority.
LATE = 0.1
#: Ticks in a row on time (each less than L{ON_TIME} late) before asking to be lowered (again).
CALM_TICKS = 50
ON_TIME = 0.02
#: Late again within this many seconds of being lowered: the machine is busy for good, so the
#: next calm stretch asked for is twice as long (up to L{MAX_CALM_TICKS}, 5 minutes), rather
#: than see-sawing (and logging each change) every few seconds.
RELAPSE = 60.0
MAX_CALM_TICKS = 3000


class LagWatch:
    """Asks for the low priority once the daemon keeps up, and for normal priority while it runs late.

    C{ask} is called with C{True} (normal priority, please) or C{False} (lower me again): in
    the daemon it sends the launcher a ``priority`` message, and the launcher, which makes the
    change, logs it (so an operator sees when the machine was too busy for the daemon to keep
    up at its low priority).
    """

    def __init__(self, clock: Any, ask: Callable[[bool], None]) -> None:
        self.clock = clock
        self.ask = ask
        #: Whether the daemon runs at normal priority now: it starts so (its start-up, a
        #: relaunch's recovery and resent batches go at full speed) and asks to be lowered once
        #: it has been on time for a while.
        self.raised = True
        self.raised_total = 0
        #: Ticks on time in a row needed before asking to be lowered (grows on relapses).
        self.calm_needed = CALM_TICKS
        self._lowered_at: float | None = None
        self._calm = 0
        self._due = 0.0
        self._call: Any = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + TICK
        self._call = self.clock.callLater(TICK, self._tick)

    def _tick(self) -> None:
        late = self.clock.seconds() - self._due
        self._schedule()
        if not self.raised:
            if late > LATE:
                self.raised = True
                self.raised_total += 1
                self._calm = 0
                if self._lowered_at is not None and self.clock.seconds() - self._lowered_at < RELAPSE:
                    self.calm_needed = min(self.calm_needed * 2, MAX_CALM_TICKS)
                else:
                    self.calm_needed = CALM_TICKS
                self.ask(True)
            return
        if late < ON_TIME:
            self._calm += 1
            if self._calm >= self.calm_needed:
                self.raised = False
                self._lowered_at = self.clock.seconds()
                self.ask(False)
        else:
            self._calm = 0
