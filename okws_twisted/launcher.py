# -*- test-case-name: tests.test_launcher -*-
"""
The launcher (OKWS's okld): opens the listening sockets, spawns and relaunches every child.

It is twistd's service.  It owns the listening sockets (so a dispatcher
relaunch loses no queued connection), spawns the log daemon (first), the
dispatcher and every service instance with ``spawnProcess``, wires a handoff
channel between the dispatcher and each instance and a log channel from every
child to the log daemon (again after either side is relaunched), relaunches a
child that dies with a doubling back-off, and on stop lets in-flight requests
finish before it stops the children, killing those that overstay; the log
daemon stops last, once it has written everything.

The launcher sends its own records too (every process start, exit, crash and
relaunch) over a log channel of its own, and on SIGUSR1 asks the log daemon
to reopen its files (after twistd has rotated its own log, if it logs to a
file).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel, Logger, formatEvent
from twisted.python.failure import Failure

import okws_twisted
from okws_twisted import control, logchannel
from okws_twisted.channel import Message, MessageChannel, socketpair
from okws_twisted.config import Listener, SiteConfig
from okws_twisted.logsender import FINAL_FLUSH_TIMEOUT, RecordSender


#: Which children get a channel to which: (channel kind, role, role).  When a
#: child becomes ready it is wired to every ready child of the other role; a
#: relaunched child is wired again, so both sides always reach each other.
LINKS: list[tuple[str, str, str]] = [
    ("handoff", "dispatcher", "service"),
    (logchannel.CHANNEL, "logd", "dispatcher"),
    (logchannel.CHANNEL, "logd", "service"),
]

#: How long the log daemon gets to exit once told to stop (it has nothing to drain).
LOGD_STOP_TIMEOUT = 5.0

#: How many of a child's last output lines go with the error-log record of its crash.
OUTPUT_TAIL = 20


class ListenError(Exception):
    """A listening socket could not be opened."""


def open_listener(listener: Listener) -> socket.socket:
    """Bind and listen on one configured endpoint; raise L{ListenError}."""
    try:
        if listener.kind == "unix":
            assert listener.path is not None
            try:
                if stat.S_ISSOCK(os.stat(listener.path).st_mode):
                    os.unlink(listener.path)  # a stale socket from an earlier run
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(listener.path)
            os.chmod(listener.path, listener.mode)
        else:
            family = socket.AF_INET6 if listener.kind == "tcp6" else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((listener.interface, listener.port))
        sock.listen(listener.backlog)
    except OSError as e:
        raise ListenError(f"cannot listen on {listener.description}: {e.strerror or e}") from None
    return sock


@dataclass
class Backoff:
    """Relaunch delays: doubling from C{floor} to C{ceiling}, reset after a stable run."""

    floor: float
    ceiling: float
    stable_after: float
    current: float = 0.0

    def delay(self, ran_for: float) -> float:
        """The delay before the next launch of a child that ran C{ran_for} seconds."""
        if ran_for >= self.stable_after or self.current == 0.0:
            self.current = self.floor
        else:
            self.current = min(self.ceiling, self.current * 2)
        return self.current


def exit_status(reason: object) -> str:
    """A child's end in a few words: C{"exit code 3"}, C{"signal 9"}."""
    if isinstance(reason, (error.ProcessDone, error.ProcessTerminated)):
        if reason.signal is not None:
            return f"signal {reason.signal}"
        return f"exit code {reason.exitCode}"
    return str(reason)


def child_environment(extra_paths: list[str]) -> dict[str, str]:
    """The whole environment of a child: only what Python needs (never the launcher's)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(okws_twisted.__file__)))
    paths = extra_paths + [package_parent]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
    }
    return env


class ChildOutput(ProcessProtocol):
    """Relays a child's stdout/stderr lines to the launcher's log, tagged, and reports its end."""

    log = Logger(namespace="okws")

    def __init__(self, slot: "ChildSlot") -> None:
        self.slot = slot
        self._partial = {1: b"", 2: b""}
        self.tail: deque[str] = deque(maxlen=OUTPUT_TAIL)

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        self.tail.append(text)
        self.log.info("[{child} pid {pid}] {line}", child=self.slot.name, pid=self.pid, line=text)

    @property
    def pid(self) -> int | None:
        return self.slot.pid

    def processEnded(self, reason: Failure) -> None:
        for fd in (1, 2):
            if self._partial.get(fd):
                self._emit(self._partial[fd])
                self._partial[fd] = b""
        self.slot.ended(reason, list(self.tail))


class ChildSlot:
    """One child the launcher keeps running: the log daemon, the dispatcher or one service instance.

    States: waiting (not running; maybe a relaunch is scheduled) -> starting
    (spawned, no ``ready`` yet) -> ready -> waiting again when it exits.
    """

    log = Logger(namespace="okws")

    def __init__(self, launcher: "Launcher", role: str, service: str | None = None, index: int = 0):
        self.launcher = launcher
        self.role = role
        self.service = service
        self.index = index
        cfg = launcher.config
        self.backoff = Backoff(cfg.restart_delay_min, cfg.restart_delay_max, cfg.stable_after)
        self.state = "waiting"
        self.process: Any = None
        self.pid: int | None = None
        self.ctl: MessageChannel | None = None
        self.started_at = 0.0
        self.launches = 0
        self.relaunch_call: IDelayedCall | None = None
        self.exited: defer.Deferred[None] | None = None

    @property
    def name(self) -> str:
        return f"{self.service}.{self.index}" if self.role == "service" else self.role

    def peer_meta(self, kind: str) -> dict[str, Any]:
        """The C{peer} message that tells another child about this one."""
        meta: dict[str, Any] = {
            "k": control.PEER,
            "channel": kind,
            "name": self.name,
            "role": self.role,
            "pid": self.pid,
            "launch": self.launches,
            "run": self.launcher.run_id,
        }
        if self.role == "service":
            meta["service"] = self.service
            meta["index"] = self.index
        return meta

    def spawn(self) -> None:
        self.relaunch_call = None
        launcher = self.launcher
        reactor = launcher.reactor
        parent, child = socketpair()
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", control.CONTROL_FD: child.fileno()}
        meta: dict[str, Any] = {"k": control.CONFIG, "role": self.role, "run": launcher.run_id, "launch": self.launches + 1}
        extra_paths: list[str] = []
        if self.role == "logd":
            args = [sys.executable, "-m", "okws_twisted.bootstrap", "logd"]
        elif self.role == "dispatcher":
            for i, sock in enumerate(launcher.listen_sockets):
                child_fds[control.FIRST_LISTEN_FD + i] = sock.fileno()
            meta["listeners"] = len(launcher.listen_sockets)
            args = [sys.executable, "-m", "okws_twisted.bootstrap", "dispatcher"]
        else:
            meta["service"] = self.service
            meta["index"] = self.index
            extra_paths.append(launcher.config.base_dir)
            args = [sys.executable, "-m", "okws_twisted.bootstrap", "service", f"{self.service}.{self.index}"]
        protocol = ChildOutput(self)
        try:
            self.process = reactor.spawnProcess(
                protocol, sys.executable, args, env=child_environment(extra_paths), path=launcher.config.base_dir, childFDs=child_fds
            )
        finally:
            child.close()
        self.pid = self.process.pid
        self.state = "starting"
        self.started_at = reactor.seconds()
        self.launches += 1
        self.exited = defer.Deferred()
        self.ctl = MessageChannel(reactor, parent, self._control, self._control_lost, name=f"control:{self.name}")
        self.ctl.send(meta, launcher.config.to_json().encode("utf-8"))
        if self.launches == 1:
            launcher.note(LogLevel.info, "started {child} as pid {pid}", child=self.name, pid=self.pid)
        else:
            launcher.note(
                LogLevel.info, "started {child} as pid {pid} (relaunch {n})", child=self.name, pid=self.pid, n=self.launches - 1
            )

    def _control(self, batch: list[Message]) -> None:
        for msg in batch:
            for fd in msg.fds:
                os.close(fd)
            if msg.kind == control.READY and self.state == "starting":
                self.state = "ready"
                self.launcher.note(LogLevel.info, "{child} pid {pid} is ready", child=self.name, pid=self.pid)
                self.launcher.child_ready(self)

    def _control_lost(self, reason: Failure) -> None:
        pass

    def send(self, meta: dict[str, Any], fds: tuple[int, ...] | list[int] = ()) -> bool:
        if self.ctl is None or not self.ctl.connected:
            return False
        try:
            self.ctl.send(meta, b"", fds)
        except error.ConnectionDone:
            return False
        return True

    def signal(self, signum: int) -> None:
        if self.process is not None and self.pid is not None:
            try:
                self.process.signalProcess(signum)
            except (error.ProcessExitedAlready, OSError):
                pass

    def ended(self, reason: Failure, output: list[str] | None = None) -> None:
        launcher = self.launcher
        ran_for = launcher.reactor.seconds() - self.started_at
        pid, self.pid, self.process = self.pid, None, None
        self.state = "waiting"
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        exited, self.exited = self.exited, None
        status = exit_status(reason.value)
        if launcher.stopping:
            launcher.note(LogLevel.info, "{child} pid {pid} exited: {status}", child=self.name, pid=pid, status=status)
        else:
            delay = self.backoff.delay(ran_for)
            crashed = isinstance(reason.value, error.ProcessTerminated)
            launcher.note(
                LogLevel.error if crashed else LogLevel.warn,
                "{child} pid {pid} {how} ({status}) after {ran:.1f}s; relaunching in {delay:.1f}s",
                child=self.name, pid=pid, how="crashed" if crashed else "exited unexpectedly",
                status=status, ran=ran_for, delay=delay,
                traceback=("last output:\n" + "\n".join(output)) if crashed and output else None,
            )
            self.relaunch_call = launcher.reactor.callLater(delay, self.spawn)
        if exited is not None:
            exited.callback(None)


class Launcher(Service):
    """twistd's service: the whole okws site."""

    log = Logger(namespace="okws")

    def __init__(self, config: SiteConfig, listen_sockets: list[socket.socket], reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config
        self.listen_sockets = listen_sockets
        self.run_id = os.urandom(6).hex()
        self.records = RecordSender(reactor, config.log_buffer)
        self.log_channel: MessageChannel | None = None
        self._previous_usr1: Any = None
        self.logd = ChildSlot(self, "logd")
        self.dispatcher = ChildSlot(self, "dispatcher")
        self.instances = [
            ChildSlot(self, "service", s.name, i) for s in config.services for i in range(s.instances)
        ]
        self.stopping = False
        self._site_ready = False

    @property
    def children(self) -> list[ChildSlot]:
        return [self.logd, self.dispatcher, *self.instances]

    def note(self, level: LogLevel, format: str, traceback: str | None = None, **fields: Any) -> None:
        """Log an event of the launcher's to twistd's log and to the error log."""
        self.log.emit(level, format, **fields)
        self.records.event(level.name, formatEvent({"log_format": format, **fields}), traceback)

    def startService(self) -> None:
        super().startService()
        if os.geteuid() != 0:
            self.log.info(
                "okws is not running as root: every process runs as uid {uid} without jails",
                uid=os.geteuid(),
            )
        self._install_usr1()
        self.logd.spawn()
        for slot in self.instances:
            slot.spawn()
        self.dispatcher.spawn()

    # -- logging

    def _install_usr1(self) -> None:
        """SIGUSR1: whatever was installed before (twistd rotating its own log file), then ours."""
        previous = signal.getsignal(signal.SIGUSR1)
        self._previous_usr1 = previous

        def on_usr1(signum: int, frame: Any) -> None:
            if callable(previous):
                previous(signum, frame)
            self.reactor.callFromThread(self.reopen_logs)

        signal.signal(signal.SIGUSR1, on_usr1)

    def reopen_logs(self) -> None:
        """Ask the log daemon to reopen its files (after an external rotation)."""
        channel = self.log_channel
        self.note(LogLevel.info, "reopening the log files")
        if channel is not None and channel.connected:
            self.records.flush()
            channel.send({"k": logchannel.REOPEN})
        # Else the daemon is being relaunched, and a new daemon opens the files afresh.

    def _attach_log_client(self) -> None:
        """Give the (new) log daemon a channel to the launcher's own records."""
        ours, theirs = socketpair()
        meta = {
            "k": control.PEER,
            "channel": logchannel.CHANNEL,
            "name": "launcher",
            "role": "launcher",
            "pid": os.getpid(),
            "launch": 1,
            "run": self.run_id,
        }
        try:
            sent = self.logd.send(meta, [theirs.fileno()])
        finally:
            theirs.close()
        if not sent:
            ours.close()
            return
        self.log_channel = self.records.attach(ours)

    # -- wiring

    def child_ready(self, slot: ChildSlot) -> None:
        if slot is self.logd:
            self._attach_log_client()
        for kind, left_role, right_role in LINKS:
            if slot.role == left_role:
                for other in self.children:
                    if other.role == right_role and other.state == "ready":
                        self.wire(kind, slot, other)
            elif slot.role == right_role:
                for other in self.children:
                    if other.role == left_role and other.state == "ready":
                        self.wire(kind, other, slot)
        if not self._site_ready and all(c.state == "ready" for c in self.children):
            self._site_ready = True
            self.note(LogLevel.info, "site ready: {count} processes", count=len(self.children))

    def wire(self, kind: str, left: ChildSlot, right: ChildSlot) -> None:
        """Give two ready children the two ends of a new channel of C{kind}."""
        if self.stopping:
            return
        a, b = socketpair()
        try:
            ok = left.send(right.peer_meta(kind), [a.fileno()]) and right.send(left.peer_meta(kind), [b.fileno()])
        finally:
            a.close()
            b.close()
        if ok:
            self.log.info(
                "wired {right} pid {rpid} to the {left} ({kind})", right=right.name, rpid=right.pid, left=left.name, kind=kind
            )

    # -- stopping

    def stopService(self) -> defer.Deferred[None]:
        """Stop every child, the log daemon last (so it writes every other exit)."""
        super().stopService()
        self.stopping = True
        self.note(LogLevel.info, "stopping: draining for up to {drain}s", drain=self.config.drain_timeout)
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
        for sock in self.listen_sockets:
            sock.close()
        for slot in self.children:
            if slot.relaunch_call is not None and slot.relaunch_call.active():
                slot.relaunch_call.cancel()
                slot.relaunch_call = None
        others = [slot for slot in self.children if slot is not self.logd]
        done = self._stop(others, self.config.drain_timeout)
        done.addCallback(lambda _: self.records.idle(FINAL_FLUSH_TIMEOUT))

        def stop_logd(_: object) -> defer.Deferred[Any]:
            if self.records.held:
                self.log.warn("{count} log records were not written: the log daemon is gone", count=self.records.held)
            return self._stop([self.logd], LOGD_STOP_TIMEOUT)

        done.addCallback(stop_logd)

        def finished(_: object) -> None:
            self.log.info("all children have exited")

        done.addCallback(finished)
        return done

    def _stop(self, slots: list[ChildSlot], drain: float) -> defer.Deferred[Any]:
        """Tell C{slots} to stop; SIGTERM after C{drain}, SIGKILL C{kill_timeout} later."""
        waits = []
        for slot in slots:
            if slot.exited is not None:
                waits.append(slot.exited)
                if not slot.send({"k": control.STOP, "drain": drain}):
                    slot.signal(signal.SIGTERM)
        done = defer.DeferredList(waits)
        term = self.reactor.callLater(drain, self._signal_all, slots, signal.SIGTERM)
        kill = self.reactor.callLater(drain + self.config.kill_timeout, self._signal_all, slots, signal.SIGKILL)

        def finished(result: object) -> object:
            for call in (term, kill):
                if call.active():
                    call.cancel()
            return result

        done.addCallback(finished)
        return done

    def _signal_all(self, slots: list[ChildSlot], signum: int) -> None:
        for slot in slots:
            if slot.pid is not None:
                self.note(
                    LogLevel.warn, "{child} pid {pid} overstayed; sending signal {sig}", child=slot.name, pid=slot.pid, sig=signum
                )
                slot.signal(signum)
