"""
Tests of L{okws_twisted.logd.priority.LagWatch}: when the log daemon asks for normal priority.

Pure logic on a L{Clock}; the launcher's side (the kernel's nice value of the real daemon) is in
L{tests.test_e2e_logging.PriorityTests}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.logd import priority
from okws_twisted.logd.priority import CALM_TICKS, LATE, MAX_CALM_TICKS, RELAPSE, TICK, LagWatch


class LagWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.asked: list[bool] = []
        self.watch = LagWatch(self.clock, self.asked.append)
        self.watch.start()
        # It starts at normal priority and asks to be lowered after its first calm stretch.
        self.assertTrue(self.watch.raised)
        self.on_time(CALM_TICKS - 1)
        self.assertEqual(self.asked, [])
        self.on_time(1)
        self.assertEqual(self.asked, [False])
        del self.asked[:]

    def on_time(self, ticks: int) -> None:
        for _ in range(ticks):
            self.clock.advance(TICK)

    def late(self, by: float) -> None:
        """The daemon was not run for a while: its next tick fires C{by} seconds late."""
        self.clock.advance(TICK + by)

    def test_on_time_asks_nothing(self) -> None:
        self.on_time(200)
        self.assertEqual(self.asked, [])
        self.assertFalse(self.watch.raised)

    def test_a_little_late_asks_nothing(self) -> None:
        for _ in range(20):
            self.late(LATE * 0.9)
        self.assertEqual(self.asked, [])

    def test_late_asks_for_normal_priority_once(self) -> None:
        self.on_time(3)
        self.late(LATE * 2)
        self.assertEqual(self.asked, [True])
        self.assertTrue(self.watch.raised)
        self.late(LATE * 2)  # still behind: asked already
        self.assertEqual(self.asked, [True])
        self.assertEqual(self.watch.raised_total, 1)

    def settled(self) -> None:
        """Long enough after the start's lowering that being late is no relapse."""
        self.on_time(int(RELAPSE / TICK) + 1)

    def test_back_to_low_after_a_calm_stretch(self) -> None:
        self.settled()
        self.late(1.0)
        self.on_time(CALM_TICKS - 1)
        self.assertEqual(self.asked, [True])
        self.on_time(1)
        self.assertEqual(self.asked, [True, False])
        self.assertFalse(self.watch.raised)

    def test_a_late_tick_restarts_the_calm_stretch(self) -> None:
        self.settled()
        self.late(1.0)
        self.on_time(CALM_TICKS - 1)
        self.late(priority.ON_TIME * 2)  # not late enough to ask, too late to count as calm
        self.on_time(CALM_TICKS - 1)
        self.assertEqual(self.asked, [True])
        self.on_time(1)
        self.assertEqual(self.asked, [True, False])

    def test_again_after_lowered(self) -> None:
        self.settled()
        self.late(1.0)
        self.on_time(CALM_TICKS)
        self.assertEqual(self.asked, [True, False])
        self.settled()
        self.late(1.0)
        self.assertEqual(self.asked, [True, False, True])
        self.assertEqual(self.watch.raised_total, 2)
        self.assertEqual(self.watch.calm_needed, CALM_TICKS)

    def test_relapses_lengthen_the_calm_stretch(self) -> None:
        """Late again soon after being lowered: the machine is busy for good; no see-saw every 5 s."""
        self.late(1.0)  # soon after the start's lowering
        self.assertEqual(self.watch.calm_needed, 2 * CALM_TICKS)
        self.on_time(2 * CALM_TICKS - 1)
        self.assertEqual(self.asked, [True])
        self.on_time(1)
        self.assertEqual(self.asked, [True, False])
        self.late(1.0)
        self.assertEqual(self.watch.calm_needed, 4 * CALM_TICKS)
        for _ in range(10):
            self.on_time(self.watch.calm_needed)
            self.late(1.0)
        self.assertEqual(self.watch.calm_needed, MAX_CALM_TICKS)
        # Quiet for longer than RELAPSE after a lowering: back to the short stretch.
        self.on_time(MAX_CALM_TICKS + int(RELAPSE / TICK) + 1)
        self.late(1.0)
        self.assertEqual(self.watch.calm_needed, CALM_TICKS)

    def test_late_at_start_waits_longer(self) -> None:
        """A slow start (a relaunch's recovery) keeps normal priority until it is on time."""
        watch = LagWatch(Clock(), self.asked.append)
        watch.start()
        for _ in range(CALM_TICKS - 1):
            watch.clock.advance(TICK)
        watch.clock.advance(TICK + LATE * 2)
        for _ in range(CALM_TICKS - 1):
            watch.clock.advance(TICK)
        self.assertEqual(self.asked, [])
        watch.clock.advance(TICK)
        self.assertEqual(self.asked, [False])

    def test_stop_cancels_the_timer(self) -> None:
        self.watch.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.late(5.0)
        self.assertEqual(self.asked, [])
