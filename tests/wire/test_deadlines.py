"""
L{okws_twisted.wire.deadlines}: deadlines run exactly when due, as C{callLater} would, with one
reactor timer per length.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire.deadlines import Deadlines


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.3)
        self.deadlines = Deadlines(self.clock)
        self.fired: list[str] = []

    def later(self, delay: float, name: str):  # type: ignore[no-untyped-def]
        return self.deadlines.call_later(delay, lambda: self.fired.append(name))

    def test_exactlyWhenDue(self) -> None:
        self.later(5, "a")
        self.clock.advance(2)
        self.later(5, "b")
        self.clock.advance(2.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(1.9)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneTimerPerLength(self) -> None:
        for i in range(100):
            self.later(5, f"h{i}")
            self.later(30, f"k{i}")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.clock.advance(5)
        self.assertEqual(self.fired, [f"h{i}" for i in range(100)])
        self.clock.advance(25)
        self.assertEqual(len(self.fired), 200)

    def test_cancel(self) -> None:
        a = self.later(5, "a")
        b = self.later(5, "b")
        self.assertTrue(a.active())
        a.cancel()
        a.cancel()  # twice is harmless
        self.assertFalse(a.active())
        self.clock.advance(5)
        self.assertEqual(self.fired, ["b"])
        self.assertFalse(b.active())
        b.cancel()  # after it ran: nothing

    def test_allCancelledLeavesNoTimer(self) -> None:
        calls = [self.later(5, str(i)) for i in range(3)]
        for call in calls:
            call.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.later(5, "again")
        self.clock.advance(5)
        self.assertEqual(self.fired, ["again"])

    def test_cancelledAreCompacted(self) -> None:
        """A queue of mostly cancelled deadlines does not grow (a dispatcher under load)."""
        keep = self.later(5, "keep")
        for i in range(10_000):
            self.later(5, str(i)).cancel()
        queue = self.deadlines._queues[5]
        self.assertLess(len(queue._entries), 200)
        self.clock.advance(5)
        self.assertEqual(self.fired, ["keep"])
        self.assertFalse(keep.active())

    def test_setWhileSweeping(self) -> None:
        """A deadline set or cancelled by one that runs keeps its own time."""
        later: list[object] = []

        def first() -> None:
            self.fired.append("first")
            later.append(self.later(5, "set by first"))
            second.cancel()

        self.deadlines.call_later(5, first)
        second = self.later(5, "second")
        self.clock.advance(1)
        self.later(5, "third")
        self.clock.advance(4)
        self.assertEqual(self.fired, ["first"])
        self.clock.advance(1)
        self.assertEqual(self.fired, ["first", "third"])
        self.clock.advance(4)
        self.assertEqual(self.fired, ["first", "third", "set by first"])

    def test_oneFailureStopsNoOther(self) -> None:
        def boom() -> None:
            raise RuntimeError("boom")

        self.deadlines.call_later(5, boom)
        self.later(5, "after")
        self.clock.advance(5)
        self.assertEqual(self.fired, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_reset(self) -> None:
        a = self.later(5, "a")
        self.later(5, "b")
        self.clock.advance(3)
        a.reset(5)  # due at 8 now
        self.clock.advance(2)
        self.assertEqual(self.fired, ["b"])
        self.assertTrue(a.active())
        self.clock.advance(3)
        self.assertEqual(self.fired, ["b", "a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resetToAnotherLength(self) -> None:
        a = self.later(60, "a")
        a.reset(1)
        self.clock.advance(1)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(60)
        self.assertEqual(self.fired, ["a"])

    def test_resetOftenStaysSmall(self) -> None:
        """An idle timer reset on every request (keep-alive) keeps the queue bounded."""
        timers = [self.later(60, f"c{i}") for i in range(50)]
        for n in range(20_000):
            timers[n % 50].reset(60)
            self.clock.advance(0.0001)
        self.assertLess(len(self.deadlines._queues[60]._entries), 300)
        self.clock.advance(60)
        self.assertEqual(sorted(self.fired), sorted(f"c{i}" for i in range(50)))

    def test_timeoutMixin(self) -> None:
        """A protocol's idle timer (TimeoutMixin) runs on these deadlines: set, reset, cancel, fire."""
        from twisted.protocols.policies import TimeoutMixin

        class Idle(TimeoutMixin):
            timedOut = 0

            def timeoutConnection(self) -> None:
                self.timedOut += 1

        idle = Idle()
        idle.callLater = self.deadlines.call_later  # type: ignore[method-assign]
        idle.setTimeout(10)
        self.clock.advance(9)
        idle.resetTimeout()
        self.clock.advance(9)
        self.assertEqual(idle.timedOut, 0)
        saved = idle.setTimeout(None)
        self.clock.advance(30)
        self.assertEqual(idle.timedOut, 0)
        idle.setTimeout(saved)
        self.clock.advance(10)
        self.assertEqual(idle.timedOut, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
