"""L{okws_twisted.launcher.timeslice} against the kernel: what it sets is what C{/proc/PID/sched} shows."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from okws_twisted.launcher.timeslice import set_time_slice, time_slice


class TimeSliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        self.addCleanup(self.proc.wait, 10)
        self.addCleanup(self.proc.stdin.close)  # type: ignore[union-attr]
        self.default = time_slice(self.proc.pid)
        if self.default is None:
            raise SkipTest("this kernel shows no se.slice in /proc/PID/sched (before Linux 6.6)")

    def test_set_and_reset(self) -> None:
        set_time_slice(self.proc.pid, 250)
        self.assertEqual(time_slice(self.proc.pid), 250)
        self.assertNotEqual(self.default, 250)
        set_time_slice(self.proc.pid, 0)
        self.assertEqual(time_slice(self.proc.pid), self.default)

    def test_no_such_process(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(10)
        with self.assertRaises(OSError):
            set_time_slice(self.proc.pid, 100)
