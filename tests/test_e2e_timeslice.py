"""
The dispatcher's short CPU time slice (C{[okws] dispatcher_slice_us},
L{okws_twisted.launcher.timeslice}), as the kernel shows it: C{se.slice} in C{/proc/PID/sched}.

Real processes (see L{tests.e2e}).  The kernel must have EEVDF's custom slices (Linux 6.12+),
as the machines this project runs on do.
"""

from __future__ import annotations

import os
import signal

from twisted.trial.unittest import SkipTest

from okws_twisted.launcher.timeslice import time_slice
from tests.e2e import E2ETestCase, Site

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello
"""


class DispatcherSliceTests(E2ETestCase):
    def slices(self, okws: str = "") -> dict[str, int | None]:
        self.site = site = Site(SERVICES, okws)
        self.addCleanup(site.close)
        site.start()
        self.assertEqual(site.get("/hello").status, 200)
        return {name: time_slice(pid) for name, pid in site.pids().items()}

    def test_default(self) -> None:
        """The dispatcher runs with a 100 us slice; the other children keep the kernel's."""
        slices = self.slices()
        if slices["dispatcher"] is None:
            raise SkipTest("this kernel shows no se.slice in /proc/PID/sched (before Linux 6.6)")
        self.assertEqual(slices["dispatcher"], 100, slices)
        for name in ("hello.0", "logd", "pubd"):
            self.assertNotEqual(slices[name], 100, (name, slices))
            self.assertGreater(slices[name], 100, (name, slices))
        # A relaunched dispatcher gets it again.
        site = self.site
        mark = site.mark()
        os.kill(site.pids()["dispatcher"], signal.SIGKILL)
        found = site.wait_for(r"started dispatcher as pid (\d+) \(relaunch", after=mark)
        self.assertEqual(time_slice(int(found.group(1))), 100)

    def test_configured(self) -> None:
        """C{dispatcher_slice_us = 300} gives 300 us; C{0} leaves the kernel's default, as every other child has."""
        self.assertEqual(self.slices("dispatcher_slice_us = 300\n")["dispatcher"], 300)
        slices = self.slices("dispatcher_slice_us = 0\n")
        self.assertEqual(slices["dispatcher"], slices["hello.0"], slices)
