"""Tests for L{okws_twisted.wire.bodytime.BodyTimer} (L{BodyDeadline}'s rules: tests.service.test_budget)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire.bodytime import BodyTimer


class BodyTimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cut: list[str] = []

    def test_oneTimerMovedWhenItFiresEarly(self) -> None:
        timer = BodyTimer(self.clock, 10, 0, self.cut.append)
        for _ in range(5):
            self.clock.advance(5)
            timer.arrived(100)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.cut, ["The request body stopped arriving."])
        self.assertFalse(timer.active)

    def test_rateFloor(self) -> None:
        timer = BodyTimer(self.clock, 5, 1000, self.cut.append)
        for _ in range(60):
            self.clock.advance(1)
            timer.arrived(10)
            if self.cut:
                break
        self.assertEqual(self.cut, ["The request body arrived too slowly."])

    def test_cancel(self) -> None:
        timer = BodyTimer(self.clock, 10, 0, self.cut.append)
        timer.cancel()
        self.clock.advance(100)
        self.assertEqual((self.cut, self.clock.getDelayedCalls()), ([], []))
