"""
Tests for the end-to-end harness itself (L{tests.e2e}): the per-test watchdog, and sites that
remove what they made.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import os
import signal
import tempfile
import time

from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from tests import e2e
from tests.e2e import E2ETestCase, Overran, Site, process_exists


class WatchdogTests(SynchronousTestCase):
    class Sleeper(E2ETestCase):
        """A test that overruns a short bound, and one that does not (run by hand, not by trial)."""

        bound = 0.5

        def test_sleeps(self) -> None:
            time.sleep(30)

        def test_quick(self) -> None:
            pass

    def run_case(self, name: str) -> tuple[TestResult, str, float]:
        dump = tempfile.TemporaryFile("w+")
        self.addCleanup(dump.close)
        case = self.Sleeper(name)
        case.dump_to = dump
        result = TestResult()
        started = time.monotonic()
        case.run(result)
        took = time.monotonic() - started
        dump.seek(0)
        return result, dump.read(), took

    def test_overrunningTestFails(self) -> None:
        """Past its bound a test fails at once (not after its 30 s sleep), with every thread's traceback."""
        result, dump, took = self.run_case("test_sleeps")
        self.assertLess(took, 10)
        [(_, failure)] = result.errors
        self.assertTrue(failure.check(Overran))
        self.assertIn("ran past its bound of 0.5s", str(failure.value))
        self.assertIn("tests.test_harness.WatchdogTests.Sleeper.test_sleeps ran past its bound of 0.5s; every thread's traceback:", dump)
        self.assertIn("in test_sleeps", dump)
        self.assertEqual(result.successes, 0)

    def test_testInTimeIsLeftAlone(self) -> None:
        before = signal.getsignal(signal.SIGALRM)
        result, dump, _ = self.run_case("test_quick")
        self.assertEqual((result.successes, result.errors, result.failures, dump), (1, [], [], ""))
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))
        self.assertIs(signal.getsignal(signal.SIGALRM), before)

    def test_everyEndToEndTestIsBounded(self) -> None:
        """Every test case of the end-to-end modules derives from E2ETestCase (and so has the watchdog)."""
        names = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(e2e.REPO, "tests", "test_e2e_*.py"))]
        unbounded = []
        for name in sorted(names) + ["test_packaging", "test_harness"]:
            module = importlib.import_module(f"tests.{name}")
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, SynchronousTestCase):
                    if not issubclass(cls, E2ETestCase) and cls is not WatchdogTests:
                        unbounded.append(f"{name}.{cls.__name__}")
        self.assertGreater(len(names), 5)
        self.assertEqual(unbounded, [])


class SiteCleanupTests(E2ETestCase):
    def test_closeRemovesEverything(self) -> None:
        """A site's processes, directory, logs and jails are gone once it is closed."""
        site = Site("[service:hello]\nresource = services.hello:Hello\npaths = /hello\n")
        self.addCleanup(site.close)
        self.assertTrue(site.jail_root.startswith(site.dir + os.sep))
        site.start()
        self.assertEqual(site.get("/hello").status, 200)
        pids = site.all_pids()
        assert site.proc is not None
        launcher = site.proc.pid
        if os.geteuid() == 0:
            # Each child's jail is in this site's own jail root, so concurrent runs never share one.
            for name, pid in site.pids().items():
                self.assertEqual(os.readlink(f"/proc/{pid}/root"), os.path.join(site.jail_root, name))
        self.assertTrue(os.path.isdir(site.log_dir))
        site.close()
        self.assertFalse(os.path.exists(site.dir))
        for pid in pids | {launcher}:
            self.assertFalse(process_exists(pid), pid)
        self.assertNotIn(site, e2e._open_sites)

    def test_failedStartRemovesEverything(self) -> None:
        site = Site("[service:b]\nresource = tests.sites.slowstart:NeverReady\npaths = /b\n",
                    "restart_delay_min = 0.2\n")
        self.addCleanup(site.close)
        with self.assertRaises(AssertionError):
            site.start(timeout=3)
        assert site.proc is not None
        self.assertIsNotNone(site.proc.poll(), "a site that failed to start is killed")
        pids = site.all_pids()
        site.close()
        self.assertFalse(os.path.exists(site.dir))
        for pid in pids:
            self.assertFalse(process_exists(pid), pid)


class FreePortTests(E2ETestCase):
    def test_noPortTwice(self) -> None:
        """L{e2e.free_port} never hands out a port twice in one process: a site given an admin
        port and then its own port once failed to start with the two the same (CI, session 7)."""
        ports = [e2e.free_port() for _ in range(2000)]
        self.assertEqual(len(set(ports)), len(ports))
