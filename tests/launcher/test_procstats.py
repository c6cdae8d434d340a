"""Tests for L{okws_twisted.launcher.procstats}: reading a process's memory, CPU time and open files."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.launcher.procstats import cpu_seconds, resident_bytes, sample

# /proc/PID/stat of a process whose command has a space and a parenthesis in it.
STAT = "4242 (okws (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 130 0 0 20 0 1 0 123 45678901 3456 18446744073709551615"


class ParseTests(SynchronousTestCase):
    def test_cpu(self) -> None:
        self.assertEqual(cpu_seconds(STAT, ticks=100), 3.8)

    def test_rss(self) -> None:
        self.assertEqual(resident_bytes("11145 3456 1234 1 0 2345 0", page_size=4096), 3456 * 4096)


class SampleTests(SynchronousTestCase):
    def test_self(self) -> None:
        s = sample(os.getpid())
        assert s is not None
        self.assertGreater(s.rss, 1_000_000)
        self.assertGreater(s.cpu, 0)
        self.assertEqual(s.fds is None, False)
        assert s.fds is not None
        self.assertGreaterEqual(s.fds, 3)

    def test_gone(self) -> None:
        self.assertIsNone(sample(2**22 + 1))
