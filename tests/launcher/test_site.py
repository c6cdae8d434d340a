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
from okws_twisted.launcher.site import Launcher
from okws_twisted.wire import logchannel
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


class ReadyProcess:
    """A ready child process as the launcher sees it; what the launcher sends it is kept."""

    state = "ready"

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sent: list[dict[str, Any]] = []

    def send(self, meta: dict[str, Any], fds: Any = (), payload: bytes = b"") -> bool:
        for fd in fds:
            os.close(os.dup(fd))  # the fd is real and open when sent
        self.sent.append(meta)
        return True

    def log_peers(self) -> list[tuple[str, int]]:
        """The (name, pid) of each log channel this process was given."""
        return sorted((m["name"], m["pid"]) for m in self.sent if m.get("k") == "peer" and m["channel"] == logchannel.CHANNEL)


class LogWiringTests(SynchronousTestCase):
    """The launcher gives every child a log channel to the log daemon, whatever the order they become ready in."""

    def setUp(self) -> None:
        reactor = Reactor()
        config = SiteConfig(
            file="site.ini", base_dir="/srv", log_dir="/srv/logs", templates="/srv/templates",
            services=(ServiceConfig(name="hello", resource="a:B", paths=("/hello",), instances=2),
                      ServiceConfig(name="form", resource="a:C", paths=("/form",))),
        )
        self.launch = Launcher(config, [], reactor=reactor)
        self.addCleanup(lambda: self.launch.log_channel and self.launch.log_channel.close())
        self.pids = {slot.name: 100 + i for i, slot in enumerate(self.launch.children)}
        self.procs: dict[str, ReadyProcess] = {}

    def ready(self, name: str, pid: int | None = None) -> ReadyProcess:
        slot = next(c for c in self.launch.children if c.name == name)
        proc = self.procs[name] = ReadyProcess(pid or self.pids[name])
        slot.current = proc  # type: ignore[assignment]
        self.launch.child_ready(slot, proc)  # type: ignore[arg-type]
        return proc

    def assertEveryChildLogs(self) -> None:
        logging = {name: pid for name, pid in self.pids.items() if name != "logd"}
        self.assertEqual(
            self.procs["logd"].log_peers(), sorted([("launcher", os.getpid()), *logging.items()])
        )
        for name in logging:
            self.assertEqual(self.procs[name].log_peers(), [("logd", self.pids["logd"])], name)

    def test_everyChildLogs(self) -> None:
        """The log daemon ready first: each child is wired to it as it becomes ready."""
        for slot in self.launch.children:
            self.ready(slot.name)
        self.assertEqual(set(self.pids), {"logd", "pubd", "dispatcher", "hello.0", "hello.1", "form.0"})
        self.assertEveryChildLogs()

    def test_logdReadyLast(self) -> None:
        """The log daemon ready after the others (relaunched, say): it is wired to every one of them."""
        for slot in reversed(self.launch.children):
            self.ready(slot.name)
        self.assertEveryChildLogs()

    def test_handoffWiredFirst(self) -> None:
        """A service instance hears of the dispatcher before anything else (e2e tests wait on that line)."""
        for slot in self.launch.children:
            self.ready(slot.name)
        first = next(m for m in self.procs["hello.0"].sent if m.get("k") == "peer")
        self.assertEqual((first["channel"], first["name"]), ("handoff", "dispatcher"))

    def test_relaunchedChildWiredAgain(self) -> None:
        for slot in self.launch.children:
            self.ready(slot.name)
        logd = self.procs["logd"]
        self.ready("hello.1", pid=999)
        self.assertIn(("hello.1", 999), logd.log_peers())
        self.assertEqual(self.procs["hello.1"].log_peers(), [("logd", self.pids["logd"])])

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
        first, records = logchannel.parse_records(read_one_blocking(theirs, 5))
        self.assertEqual(records[-1]["text"], "reopening the log files")
        self.assertEqual(read_one_blocking(theirs, 5).kind, logchannel.REOPEN)

    def test_noDaemonNoMessage(self) -> None:
        launch, reactor = launcher()
        launch.reopen_logs()  # the daemon is relaunching: a new one opens the files anyway
        self.assertEqual(launch.records.held, 1)
