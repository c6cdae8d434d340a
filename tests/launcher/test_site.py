"""
Unit tests for the launcher (L{okws_twisted.launcher.site}, L{okws_twisted.launcher.children}): its
logging duties, what it makes of a child's death and output, and which control messages it takes
from whom.  Its process handling is exercised end to end in L{tests.test_e2e_core},
L{tests.test_e2e_logging} and L{tests.test_e2e_walls_launcher}.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ServiceConfig, SiteConfig
from twisted.python.failure import Failure

from okws_twisted.launcher.children import ChildProcess, ChildSlot, exit_status
from okws_twisted.launcher.niceness import may_lower
from okws_twisted.launcher.site import LOST_GRACE, Launcher
from okws_twisted.wire import control, limits, logchannel
from okws_twisted.wire.channel import Message, read_one_blocking, socketpair


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
        first, records = logchannel.parse_records(read_one_blocking(theirs, 5, limits.LOG_DAEMON))
        self.assertEqual(records[-1]["text"], "reopening the log files")
        self.assertEqual(read_one_blocking(theirs, 5, limits.LOG_DAEMON).kind, logchannel.REOPEN)

    def test_noDaemonNoMessage(self) -> None:
        launch, reactor = launcher()
        launch.reopen_logs()  # the daemon is relaunching: a new one opens the files anyway
        self.assertEqual(launch.records.held, 1)


class FakeProcessTransport:
    """What a L{ChildProcess} uses of Twisted's process transport."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []
        self.closed = False
        self.pipes: dict[int, Any] = {}

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)

    def loseConnection(self) -> None:
        self.closed = True


def running(slot: ChildSlot, pid: int, state: str = "ready") -> ChildProcess:
    """A process of C{slot} as if spawned (and, by default, ready)."""
    proc = ChildProcess(slot, slot.launcher.reactor.seconds(), 30.0)
    proc.makeConnection(FakeProcessTransport(pid))
    proc.pid = pid
    proc.state = state
    slot.current = proc
    slot.launches += 1
    return proc


def message(kind: str, **meta: Any) -> Message:
    return Message(kind, {"k": kind, **meta})


class DeathTests(SynchronousTestCase):
    def test_exited_is_dead_whoever_holds_the_pipes(self) -> None:
        """processExited alone (an orphan still holds the pipes): relaunch scheduled, our pipe ends closed."""
        launch, reactor = launcher()
        slot = launch.instances[0]
        proc = running(slot, 200)
        proc.processExited(Failure(error.ProcessTerminated(signal=9)))
        self.assertEqual((proc.state, slot.current), ("exited", None))
        self.assertTrue(proc.exited.called)
        self.assertTrue(proc.transport.closed)
        self.assertTrue(slot.relaunch_call is not None and slot.relaunch_call.active())
        self.assertEqual(slot.crashes, 1)

    def test_last_words_are_read_before_the_pipes_close(self) -> None:
        launch, reactor = launcher()
        proc = running(launch.instances[0], 200)
        r, w = os.pipe()
        os.set_blocking(r, False)
        self.addCleanup(os.close, r)
        os.write(w, b"Traceback (most recent call last):\nMemoryError\n")
        os.close(w)

        class Reader:
            def fileno(self) -> int:
                return r

        proc.transport.pipes[2] = Reader()
        proc.processExited(Failure(error.ProcessTerminated(exitCode=70)))
        self.assertEqual(list(proc.tail)[-2:], ["Traceback (most recent call last):", "MemoryError"])


class ControlRoleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.launch, self.reactor = launcher()
        self.dispatcher = running(self.launch.dispatcher, 100)
        self.hello = running(self.launch.instances[0], 200)
        self.logd = running(self.launch.logd, 300)

    def grace_ends(self) -> None:
        """Run the kills that wait out L{LOST_GRACE} (and nothing else the clock holds)."""
        kills = [c for c in self.reactor.getDelayedCalls() if c.func.__name__ == "kill"]
        self.assertEqual({c.getTime() - self.reactor.seconds() for c in kills}, {LOST_GRACE})
        for call in kills:
            kill = call.func
            call.cancel()
            kill()

    def test_lost_from_the_dispatcher_relaunches_the_instance(self) -> None:
        slot = self.launch.instances[0]
        self.dispatcher.control_received([message("lost", pid=200, why="its handoff channel reset")])
        self.assertEqual(self.hello.state, "lost")
        self.assertEqual(slot.status(self.reactor.seconds())["state"], "lost")
        self.assertEqual(self.launch.ready_processes("service"), [])
        self.assertEqual(self.hello.transport.signals, [])
        self.reactor.advance(LOST_GRACE)
        self.assertEqual(self.hello.transport.signals, [signal.SIGKILL])
        self.hello.processExited(Failure(error.ProcessTerminated(signal=9)))
        self.assertTrue(slot.relaunch_call is not None and slot.relaunch_call.active())
        self.assertEqual(self.dispatcher.refused, 0)

    def test_lost_only_for_a_ready_process_the_sender_is_wired_to(self) -> None:
        self.hello.state = "starting"
        self.dispatcher.control_received([message("lost", pid=200, why="x")])  # not wired yet: no news
        self.dispatcher.control_received([message("lost", pid=4242)])  # no such process
        self.dispatcher.control_received([message("lost", pid=True)])
        self.dispatcher.control_received([message("lost", pid="200")])
        self.assertEqual(self.hello.transport.signals, [])
        self.assertEqual(self.dispatcher.refused, 3)
        # One that has just exited: late news, not misbehaviour.
        self.hello.processExited(Failure(error.ProcessDone(0)))
        self.dispatcher.control_received([message("lost", pid=200, why="its channel closed")])
        self.assertEqual(self.dispatcher.refused, 3)
        # A pid of a slot the sender is not wired to (the log daemon is no peer of... itself).
        self.logd.control_received([message("lost", pid=300)])
        self.assertEqual(self.logd.refused, 1)
        # The log daemon is wired to every sender, the dispatcher too.
        self.logd.control_received([message("lost", pid=100, why="garbage on the log channel")])
        self.grace_ends()
        self.assertEqual(self.dispatcher.transport.signals, [signal.SIGKILL])

    def test_lost_process_that_exits_by_itself_keeps_its_reason(self) -> None:
        """A peer sees a dying process close its channels before the launcher sees it exit."""
        self.dispatcher.control_received([message("lost", pid=200, why="peer closed")])
        self.hello.processExited(Failure(error.ProcessTerminated(exitCode=3)))
        self.grace_ends()
        self.assertEqual(self.hello.transport.signals, [])
        self.assertIsNone(self.hello.killed_because)

    def test_a_service_may_send_neither_want_nor_lost(self) -> None:
        self.hello.control_received([message("want", service="hello"), message("lost", pid=100), message("status")])
        self.assertEqual(self.dispatcher.transport.signals, [])
        self.assertEqual(self.dispatcher.state, "ready")
        self.assertEqual(self.hello.refused, 3)
        self.assertEqual(self.launch.status()["children"][3]["refused"], 3)

    def test_priority_from_the_log_daemon_only_and_only_undoing_logd_nice(self) -> None:
        """The daemon's priority message moves a real process between its logd_nice and 0, nothing else."""
        from tests.launcher.test_niceness import thread_nices

        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        self.addCleanup(child.wait, 10)
        self.addCleanup(child.stdin.close)  # type: ignore[union-attr]
        logd = running(self.launch.logd, child.pid)
        # Not lowered (logd_nice = 0, or no CAP_SYS_NICE): the message changes nothing.
        logd.control_received([message("priority", normal=False)])
        self.assertEqual(set(thread_nices(child.pid)), {0})
        logd.resting_nice = 19  # as spawn sets it when the launcher may lower
        logd.control_received([message("priority", normal=False)])
        self.assertEqual(set(thread_nices(child.pid)), {19})
        if may_lower():
            logd.control_received([message("priority", normal=True)])
            self.assertEqual(set(thread_nices(child.pid)), {0})
        # Malformed: refused, nothing changes.
        before = set(thread_nices(child.pid))
        logd.control_received([message("priority", normal="yes"), message("priority"), message("priority", normal=1)])
        self.assertEqual(logd.refused, 3)
        self.assertEqual(set(thread_nices(child.pid)), before)
        # From a service: refused by role, whatever it says.
        self.hello.control_received([message("priority", normal=True)])
        self.assertEqual(self.hello.refused, 1)

    def test_ready_once_and_bounded_stats(self) -> None:
        self.hello.control_received([message("ready")])
        self.hello.control_received([message("pong", n=1, stats={"served": 1})])
        self.hello.control_received([message("pong", n=2, stats={"x": "y" * 20000})])
        self.assertEqual(self.hello.stats, {"served": 1})
        self.assertEqual(self.hello.refused, 2)

    def test_the_table(self) -> None:
        self.assertTrue(control.may_send("dispatcher", control.WANT))
        for role in ("service", "logd", "pubd", "tls", "nosuch"):
            self.assertFalse(control.may_send(role, control.WANT), role)
        self.assertEqual({r for r in control.FROM_CHILD if control.may_send(r, control.LOST)}, {"dispatcher", "logd", "pubd"})
        self.assertTrue(all(control.may_send(r, control.READY) for r in control.FROM_CHILD))
        self.assertFalse(control.may_send("service", control.CONFIG))

    def test_every_role_may_say_it_is_ready(self) -> None:
        """A role missing from the table could never start (its ready would be refused)."""
        from okws_twisted.bootstrap import ROLES

        self.assertEqual(set(control.FROM_CHILD), set(ROLES))


class OutputTests(SynchronousTestCase):
    def test_dropped_output_in_status(self) -> None:
        launch, reactor = launcher()
        proc = running(launch.instances[0], 200)
        proc.childDataReceived(1, b"x" * 100_000 + b"\n")
        entry = launch.status()["children"][3]
        self.assertEqual(entry["output_dropped"], {"bytes": 100_000 - 8192, "lines": 0})
        proc.processExited(Failure(error.ProcessDone(0)))
        self.assertEqual(launch.status()["children"][3]["output_dropped"]["bytes"], 100_000 - 8192)
