"""Tests for L{okws_twisted.dbproxy.scheduler}: per-service queues served in turn, bounded."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.dbproxy.scheduler import CallQueue


class CallQueueTests(SynchronousTestCase):
    def test_queue_max_per_service(self) -> None:
        """A service holds at most queue_max calls queued or running, over all its instances."""
        queue: CallQueue[str] = CallQueue(slots=2, queue_max=3)
        admitted = [queue.admit("a", f"a{i}") for i in range(5)]
        self.assertEqual([w is not None for w in admitted], [True, True, True, False, False])
        self.assertIsNotNone(queue.admit("b", "b0"), "another service has its own quota")
        running = queue.take()
        assert running is not None
        self.assertIsNone(queue.admit("a", "a5"), "running calls count too")
        queue.finished(running)
        self.assertIsNotNone(queue.admit("a", "a6"))
        self.assertEqual(queue.held("a"), 3)
        self.assertEqual(queue.peak_held, 3, "the most one service held at once")

    def test_at_most_slots_running(self) -> None:
        queue: CallQueue[int] = CallQueue(slots=4, queue_max=100)
        for i in range(10):
            queue.admit("a", i)
        taken = [queue.take() for _ in range(6)]
        self.assertEqual([w.item if w else None for w in taken], [0, 1, 2, 3, None, None])
        self.assertEqual((queue.running, queue.queued), (4, 6))
        self.assertFalse(queue.ready, "no slot free")
        assert taken[0] is not None
        queue.finished(taken[0])
        self.assertTrue(queue.ready)
        nxt = queue.take()
        self.assertEqual(nxt.item if nxt else None, 4)
        for waiting in list(queue.queued_items()):
            queue.drop(waiting)
        queue.finished(nxt)
        self.assertFalse(queue.ready, "nothing queued")

    def test_round_robin(self) -> None:
        """A's 10,000 queued calls do not stand in front of B's one: B's runs next."""
        queue: CallQueue[str] = CallQueue(slots=1, queue_max=20_000)
        for i in range(10_000):
            queue.admit("a", f"a{i}")
        first = queue.take()
        assert first is not None
        queue.admit("b", "b0")
        queue.admit("c", "c0")
        queue.finished(first)
        order = []
        for _ in range(4):
            w = queue.take()
            assert w is not None
            order.append(w.item)
            queue.finished(w)
        self.assertEqual(order, ["b0", "c0", "a1", "a2"])

    def test_drop_queued_only(self) -> None:
        queue: CallQueue[str] = CallQueue(slots=1, queue_max=2)
        one, two = queue.admit("a", "1"), queue.admit("a", "2")
        assert one is not None and two is not None
        running = queue.take()
        self.assertIs(running, one)
        self.assertFalse(queue.drop(one), "a running call is not dropped")
        self.assertTrue(queue.drop(two))
        self.assertFalse(queue.drop(two))
        self.assertEqual((queue.held("a"), queue.queued), (1, 0))
        queue.finished(one)
        self.assertIsNone(queue.take())
        self.assertEqual(list(queue.queued_items()), [])
        with self.assertRaises(ValueError):
            queue.finished(one)
