"""Unit tests for the launcher's relaunch bookkeeping (okws_twisted.launcher.supervision)."""

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.launcher.supervision import Backoff, CrashBudget, Heartbeat


class BackoffTests(SynchronousTestCase):
    def test_doubles_to_the_ceiling(self) -> None:
        b = Backoff(floor=0.5, ceiling=3.0, stable_after=10)
        self.assertEqual([b.delay(1) for _ in range(5)], [0.5, 1.0, 2.0, 3.0, 3.0])

    def test_stable_run_resets(self) -> None:
        b = Backoff(floor=1, ceiling=60, stable_after=30)
        b.delay(1), b.delay(1), b.delay(1)
        self.assertEqual(b.delay(30), 1)
        self.assertEqual(b.delay(2), 2)


class CrashBudgetTests(SynchronousTestCase):
    def test_budget_exhausted_within_window(self) -> None:
        budget = CrashBudget(budget=3, window=50)
        self.assertEqual([budget.crashed(t) for t in (0, 10, 20, 30)], [False, False, False, True])

    def test_old_crashes_leave_the_window(self) -> None:
        budget = CrashBudget(budget=2, window=10)
        self.assertFalse(budget.crashed(0))
        self.assertFalse(budget.crashed(5))
        self.assertFalse(budget.crashed(11))  # the crash at 0 is out of the window
        self.assertTrue(budget.crashed(12))

    def test_zero_budget_and_reset(self) -> None:
        budget = CrashBudget(budget=0, window=10)
        self.assertTrue(budget.crashed(0))
        budget.reset()
        self.assertEqual(len(budget.crashes), 0)


class HeartbeatTests(SynchronousTestCase):
    def test_overdue_only_after_timeout_without_answer(self) -> None:
        hb = Heartbeat(timeout=10, last_answer=0)
        seq = hb.ping()
        self.assertFalse(hb.overdue(10))
        self.assertTrue(hb.overdue(10.5))
        hb.pong(seq, 10.5)
        self.assertFalse(hb.overdue(20))

    def test_stale_answers_do_not_count(self) -> None:
        hb = Heartbeat(timeout=5, last_answer=0)
        first, second = hb.ping(), hb.ping()
        hb.pong(second, 4)
        hb.pong(first, 9)  # an older answer arriving late does not refresh
        self.assertEqual(hb.last_answer, 4)
        self.assertTrue(hb.overdue(9.5))
