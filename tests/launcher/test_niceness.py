"""
Tests of L{okws_twisted.launcher.niceness}: the kernel's nice value of every thread of a real process.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.launcher.niceness import may_lower, renice

#: A child with three threads that waits until its stdin closes.
THREADS = """
import sys, threading
gate = threading.Event()
for _ in range(2):
    threading.Thread(target=gate.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def thread_nices(pid: int) -> list[int]:
    """The nice value of each thread of C{pid}, as the kernel reports it (/proc/PID/task/TID/stat field 19)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


class ReniceTests(SynchronousTestCase):
    def child(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.stdin.close)  # type: ignore[union-attr]
        self.assertEqual(proc.stdout.readline().strip(), "ready")  # type: ignore[union-attr]
        return proc

    def test_every_thread(self) -> None:
        """All three threads take the new value (setpriority on the pid alone changes one)."""
        proc = self.child()
        self.assertEqual(len(thread_nices(proc.pid)), 3)
        renice(proc.pid, 7)
        self.assertEqual(thread_nices(proc.pid), [7, 7, 7])

    def test_back_to_normal(self) -> None:
        """With the capability, a lowered process gets nice 0 back (the launcher's case: it runs as root)."""
        if not may_lower():
            raise self.skipTest("needs CAP_SYS_NICE (the launcher is root in production and in CI)")
        proc = self.child()
        renice(proc.pid, 19)
        renice(proc.pid, 0)
        self.assertEqual(thread_nices(proc.pid), [0, 0, 0])

    def test_gone(self) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait(10)
        self.assertRaises(ProcessLookupError, renice, proc.pid, 5)


class MayLowerTests(SynchronousTestCase):
    def status(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_capability_bit(self) -> None:
        self.assertTrue(may_lower(self.status("Name:\tx\nCapEff:\t0000000000800000\n")))
        self.assertTrue(may_lower(self.status("CapEff:\t000001fffeffffff\n")))
        self.assertFalse(may_lower(self.status("CapEff:\t00000000007fffff\n")))
        self.assertFalse(may_lower(self.status("CapEff:\t0000000000000000\n")))

    def test_unreadable(self) -> None:
        self.assertFalse(may_lower(self.mktemp()))
        self.assertFalse(may_lower(self.status("Name:\tx\n")))

    def test_this_process(self) -> None:
        """As root with the usual capabilities (CI), the launcher may lower."""
        if os.geteuid() != 0:
            raise self.skipTest("not root")
        self.assertTrue(may_lower())
