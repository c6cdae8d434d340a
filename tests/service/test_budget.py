"""
Tests for L{okws_twisted.service.budget}: what a client may cost one instance, in descriptors and time.
"""

from __future__ import annotations

import gc
import io
import os
import resource

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.service.budget import RESERVED_FDS, SMALL_BODY, BodyFiles, FdBudget
from okws_twisted.wire.bodytime import BodyDeadline


class FdBudgetTests(SynchronousTestCase):
    def test_launcherDefault(self) -> None:
        """The launcher gives a service max_connections + 256: every connection, and the rest for bodies."""
        budget = FdBudget(nofile=1000 + 256, max_connections=1000)
        self.assertEqual((budget.conn_cap, budget.memfd_cap), (1000, 256 - RESERVED_FDS))

    def test_tightLimitCapsConnections(self) -> None:
        budget = FdBudget(nofile=564, max_connections=1000)
        self.assertEqual((budget.conn_cap, budget.memfd_cap), (500, 0))

    def test_neverMoreThanTheLimit(self) -> None:
        for nofile in (0, 10, 64, 65, 100, 1256, 5000):
            for conns in (1, 100, 1000, 10000):
                b = FdBudget(nofile, conns)
                self.assertLessEqual(RESERVED_FDS + b.conn_cap + b.memfd_cap, max(nofile, RESERVED_FDS))
                self.assertLessEqual(b.conn_cap, conns)
                self.assertGreaterEqual(min(b.conn_cap, b.memfd_cap), 0)

    def test_forProcessRaisesTheSoftLimit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        budget = FdBudget.for_process(100)
        want = min(2 * 100 + RESERVED_FDS, hard)
        self.assertEqual(budget.nofile, want)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], want)


class BodyFilesTests(SynchronousTestCase):
    def test_smallInMemory(self) -> None:
        files = BodyFiles(cap=5)
        self.assertIsInstance(files.new(SMALL_BODY - 1), io.BytesIO)
        self.assertEqual(files.open, 0)

    def test_largeInMemfdsWhileTheBudgetAllows(self) -> None:
        files = BodyFiles(cap=2)
        a, b = files.new(SMALL_BODY), files.new(None)
        self.assertEqual(files.open, 2)
        for f in (a, b):
            self.assertTrue(os.readlink(f"/proc/self/fd/{f.fileno()}").startswith("/memfd:okws-request-body"))
        c = files.new(10**6)
        self.assertIsInstance(c, io.BytesIO)  # over budget: memory
        a.write(b"body")
        a.seek(0)
        self.assertEqual(a.read(), b"body")
        a.close()
        a.close()
        self.assertEqual(files.open, 1)
        d = files.new(10**6)
        self.assertEqual(files.open, 2)
        del b, f  # garbage: closed, and counted as closed
        gc.collect()
        self.assertEqual(files.open, 1)
        d.close()
        self.assertEqual(files.open, 0)

    def test_noBudgetNoFiles(self) -> None:
        self.assertIsInstance(BodyFiles(cap=0).new(10**7), io.BytesIO)


class BodyDeadlineTests(SynchronousTestCase):
    def test_stall(self) -> None:
        d = BodyDeadline(timeout=10, min_rate=0, now=100)
        self.assertEqual(d.deadline(), 110)
        d.arrived(5, 108)
        self.assertEqual(d.deadline(), 118)
        self.assertIsNone(d.expired(117.9))
        self.assertEqual(d.expired(118), "The request body stopped arriving.")

    def test_rateFloorAfterTheGrace(self) -> None:
        """One byte a second against a 100 B/s floor: cut once the grace (timeout) is spent."""
        d = BodyDeadline(timeout=10, min_rate=100, now=0)
        for t in range(1, 10):
            d.arrived(1, t)
            self.assertIsNone(d.expired(t))
        d.arrived(1, 10)
        self.assertAlmostEqual(d.deadline(), 10.1)
        self.assertEqual(d.expired(10.1), "The request body arrived too slowly.")

    def test_fastEnoughNeverCut(self) -> None:
        d = BodyDeadline(timeout=5, min_rate=1000, now=0)
        for t in range(1, 120):
            d.arrived(2000, t)
            self.assertIsNone(d.expired(t))

    def test_dripForeverIsCut(self) -> None:
        """However long a drip keeps each gap under the timeout, its total time is bounded."""
        d = BodyDeadline(timeout=60, min_rate=1024, now=0)
        t = 0.0
        while d.deadline() >= t + 5:  # the next byte arrives in time
            t += 5
            d.arrived(1, t)
            self.assertLess(t, 1000, "a one-byte-every-5s drip was never cut")
        self.assertLess(d.deadline(), 61)
        self.assertEqual(d.expired(d.deadline()), "The request body arrived too slowly.")
