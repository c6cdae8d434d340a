"""
Unit tests for the launcher's logging duties (L{okws_twisted.launcher.site}); its process handling is
exercised end to end in L{tests.test_e2e_core} and L{tests.test_e2e_logging}.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.launcher.children import exit_status
from okws_twisted.launcher.site import LINKS, Launcher
from okws_twisted.wire import limits, logchannel
from okws_twisted.wire.channel import read_one_blocking, socketpair


class Reactor(MemoryReactorClock):
    """A memory reactor that also records C{callFromThread} (what a signal handler uses)."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Callable[..., Any]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.from_thread.append(f)


def launcher() -> tuple[Launcher, Reactor]:
    reactor = Reactor()
    config = SiteConfig(
        file="site.ini", base_dir="/srv", log_dir="/srv/logs", templates="/srv/templates",
        services=(ServiceConfig(name="hello", resource="a:B", paths=("/hello",)),),
    )
    return Launcher(config, [], reactor=reactor), reactor


class ExitStatusTests(SynchronousTestCase):
    def test_words(self) -> None:
        self.assertEqual(exit_status(error.ProcessDone(0)), "exit code 0")
        self.assertEqual(exit_status(error.ProcessTerminated(exitCode=3)), "exit code 3")
        self.assertEqual(exit_status(error.ProcessTerminated(signal=9)), "signal 9")


class LogWiringTests(SynchronousTestCase):
    def test_everyChildLogs(self) -> None:
        """The log daemon gets a channel from the dispatcher and from every service instance."""
        self.assertIn(("log", "logd", "dispatcher"), LINKS)
        self.assertIn(("log", "logd", "service"), LINKS)
        self.assertEqual(LINKS[0][0], "handoff")  # wired first: tests wait on its log line

    def test_logdFirst(self) -> None:
        launch, _ = launcher()
        self.assertEqual([c.name for c in launch.children], ["logd", "pubd", "dispatcher", "hello.0"])


class SigUsr1Tests(SynchronousTestCase):
    def test_chainsThePreviousHandler(self) -> None:
        """twistd's own handler (rotating its log file) still runs, then the daemon is asked to reopen."""
        calls: list[str] = []
        old = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append("twistd"))
        self.addCleanup(signal.signal, signal.SIGUSR1, old)
        launch, reactor = launcher()
        launch._install_usr1()
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertEqual(calls, ["twistd"])
        self.assertEqual(reactor.from_thread, [launch.reopen_logs])

    def test_reopenAfterTheLaunchersRecords(self) -> None:
        launch, reactor = launcher()
        ours, theirs = socketpair()
        self.addCleanup(theirs.close)
        launch.log_channel = launch.records.attach(ours)
        launch.reopen_logs()
        first, records = logchannel.parse_records(read_one_blocking(theirs, 5, limits.LOG_DAEMON))
        self.assertEqual(records[-1]["text"], "reopening the log files")
        self.assertEqual(read_one_blocking(theirs, 5, limits.LOG_DAEMON).kind, logchannel.REOPEN)

    def test_noDaemonNoMessage(self) -> None:
        launch, reactor = launcher()
        launch.reopen_logs()  # the daemon is relaunching: a new one opens the files anyway
        self.assertEqual(launch.records.held, 1)
