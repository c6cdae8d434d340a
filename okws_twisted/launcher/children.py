# -*- test-case-name: tests.launcher.test_site -*-
"""
The launcher's children (OKWS's okld): a slot kept running (L{ChildSlot}: a role, or one
instance of a service) and each process spawned for it (L{ChildProcess}: one pid).

A slot spawns its process jailed (when the launcher is root), relaunches it with a doubling
back-off when it dies, counts crashes against the crash budget, and retires a process
gracefully (its successor first) on relaunch or reload.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

import okws_twisted
from okws_twisted.config import ServiceConfig
from okws_twisted.launcher.supervision import Backoff, CrashBudget, Heartbeat
from okws_twisted.wire import control
from okws_twisted.wire.channel import Message, MessageChannel, socketpair

if TYPE_CHECKING:
    from okws_twisted.launcher.site import Launcher

#: How many of a child's last output lines go with the error-log record of its crash.
OUTPUT_TAIL = 20


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
    # okws itself first: a site directory may hold another copy of it.
    paths = [package_parent] + [p for p in extra_paths if p != package_parent]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
    }
    return env


class ChildProcess(ProcessProtocol):
    """One spawned process (one pid) of a L{ChildSlot}.

    States: starting (spawned, no ``ready`` yet) -> ready -> retiring (told
    to drain because a successor took over, or the site is stopping) ->
    exited.  Its stdout/stderr lines go to the launcher's log, tagged.
    """

    log = Logger(namespace="okws")

    def __init__(self, slot: "ChildSlot", now: float, heartbeat_timeout: float) -> None:
        self.slot = slot
        self.name = slot.name
        self.state = "starting"
        self.pid: int | None = None
        self.ctl: MessageChannel | None = None
        self.started_at = now
        self.heartbeat = Heartbeat(heartbeat_timeout, now)
        self.stats: dict[str, Any] = {}
        self.exited: defer.Deferred[None] = defer.Deferred()
        self.killed_by_watchdog = False
        self._partial = {1: b"", 2: b""}
        self.tail: deque[str] = deque(maxlen=OUTPUT_TAIL)

    # -- ProcessProtocol

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
        self.log.info("[{child} pid {pid}] {line}", child=self.name, pid=self.pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        for fd in (1, 2):
            if self._partial.get(fd):
                self._emit(self._partial[fd])
                self._partial[fd] = b""
        self.state = "exited"
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        self.slot.process_ended(self, reason)
        self.exited.callback(None)

    # -- the control channel

    def control_received(self, batch: list[Message]) -> None:
        now = self.slot.launcher.reactor.seconds()
        for msg in batch:
            msg.close_fds()
            if msg.kind == control.READY and self.state == "starting":
                self.state = "ready"
                self.heartbeat.last_answer = now
                self.slot.launcher.note(LogLevel.info, "{child} pid {pid} is ready", child=self.name, pid=self.pid)
                self.slot.process_ready(self)
            elif msg.kind == control.PONG:
                seq = msg.meta.get("n")
                if isinstance(seq, int):
                    self.heartbeat.pong(seq, now)
                stats = msg.meta.get("stats")
                if isinstance(stats, dict):
                    self.stats = stats
            elif msg.kind == control.WANT:
                self.slot.launcher.want(msg.meta)

    def send(self, meta: dict[str, Any], fds: tuple[int, ...] | list[int] = (), payload: bytes = b"") -> bool:
        if self.ctl is None or not self.ctl.connected:
            return False
        try:
            self.ctl.send(meta, payload, fds)
        except error.ConnectionDone:
            return False
        return True

    def signal(self, signum: int) -> None:
        """Signal exactly this process (never a name, never a group)."""
        if self.state != "exited" and self.transport is not None:
            try:
                self.transport.signalProcess(signum)
            except (error.ProcessExitedAlready, OSError):
                pass

    def retire(self, drain: float, handback: bool) -> None:
        """Drain and exit: finish work in flight; hand idle connections back if asked."""
        if self.state == "exited":
            return
        self.state = "retiring"
        if not self.send({"k": control.STOP, "drain": drain, "handback": handback}):
            self.signal(signal.SIGTERM)

    def uptime(self, now: float) -> float:
        return now - self.started_at


class ChildSlot:
    """One child the launcher keeps running: the log daemon, the dispatcher or one service instance.

    A slot has at most one current process; during a graceful relaunch the
    old one keeps serving until its successor is ready, then retires.  A slot
    that crashes more than C{crash_budget} times within C{crash_window}
    seconds is marked failed and not relaunched until an operator asks.
    """

    log = Logger(namespace="okws")

    def __init__(self, launcher: "Launcher", role: str, service: str | None = None, index: int = 0,
                 db: str | None = None):
        self.launcher = launcher
        self.role = role
        self.service = service
        self.index = index
        #: For a database proxy: its [db:NAME].
        self.db = db
        cfg = launcher.config
        self.backoff = Backoff(cfg.restart_delay_min, cfg.restart_delay_max, cfg.stable_after)
        self.budget = CrashBudget(cfg.crash_budget, cfg.crash_window)
        self.current: ChildProcess | None = None
        self.replacing: ChildProcess | None = None
        self.retiring: list[ChildProcess] = []
        self.relaunch_call: IDelayedCall | None = None
        self.failed = False
        self.removed = False
        self.launches = 0
        self.crashes = 0

    @property
    def name(self) -> str:
        if self.role == "dbproxy":
            return f"db.{self.db}"
        return f"{self.service}.{self.index}" if self.role == "service" else self.role

    @property
    def state(self) -> str:
        if self.failed:
            return "failed"
        if self.current is None:
            return "waiting"
        return self.current.state

    @property
    def pid(self) -> int | None:
        return self.current.pid if self.current is not None else None

    @property
    def dormant(self) -> bool:
        """A lazy service's instance that no request has asked for yet."""
        cfg = self.service_config() if self.role == "service" else None
        return cfg is not None and cfg.lazy and self.launches == 0

    def processes(self) -> list[ChildProcess]:
        out = [p for p in (self.current, self.replacing) if p is not None]
        return out + self.retiring

    def service_config(self) -> ServiceConfig | None:
        return next((s for s in self.launcher.config.services if s.name == self.service), None)

    def peer_meta(self, proc: ChildProcess, kind: str) -> dict[str, Any]:
        """The C{peer} message that tells another child about C{proc}."""
        meta: dict[str, Any] = {
            "k": control.PEER,
            "channel": kind,
            "name": self.name,
            "role": self.role,
            "pid": proc.pid,
            "launch": self.launches,
            "run": self.launcher.run_id,
        }
        if self.role == "service":
            meta["service"] = self.service
            meta["index"] = self.index
        elif self.role == "dbproxy":
            meta["db"] = self.db
        return meta

    # -- launching

    def spawn(self) -> ChildProcess:
        """Start a new process for this slot; it becomes current once it is ready."""
        self.relaunch_call = None
        launcher = self.launcher
        reactor = launcher.reactor
        parent, child = socketpair()
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", control.CONTROL_FD: child.fileno()}
        meta: dict[str, Any] = {"k": control.CONFIG, "role": self.role, "run": launcher.run_id, "launch": self.launches + 1}
        extra_paths: list[str] = []
        if self.role == "dispatcher":
            # The plain listeners only: the TLS front alone accepts on ssl: ones.
            plain = launcher.listeners(tls=False)
            for i, (_listener, sock) in enumerate(plain):
                child_fds[control.FIRST_LISTEN_FD + i] = sock.fileno()
            meta["listeners"] = len(plain)
            # Parallel to the fds: which listeners take a PROXY header first.
            meta["proxy"] = [listener.proxy for listener, _sock in plain]
            meta["admin"] = launcher.admin_socket is not None
            if launcher.admin_socket is not None:
                child_fds[control.FIRST_LISTEN_FD + len(plain)] = launcher.admin_socket.fileno()
        elif self.role == "tls":
            secure = launcher.listeners(tls=True)
            for i, (_listener, sock) in enumerate(secure):
                child_fds[control.FIRST_LISTEN_FD + i] = sock.fileno()
            meta["listeners"] = len(secure)
        elif self.role == "service":
            meta["service"] = self.service
            meta["index"] = self.index
            extra_paths.append(launcher.config.base_dir)
        elif self.role == "dbproxy":
            meta["db"] = self.db
        if launcher.jailed:
            meta["jail"] = launcher.jail_spec(self).to_json()
        # -P: the working directory is not put on sys.path, so the child
        # imports okws exactly where the launcher did (and a jail shows it).
        args = [sys.executable, "-P", "-m", "okws_twisted.bootstrap", self.role, self.name]
        proc = ChildProcess(self, reactor.seconds(), launcher.config.heartbeat_timeout)
        try:
            reactor.spawnProcess(
                proc, sys.executable, args, env=child_environment(extra_paths), path=launcher.config.base_dir, childFDs=child_fds
            )
        finally:
            child.close()
        proc.pid = proc.transport.pid
        proc.ctl = MessageChannel(reactor, parent, proc.control_received, lambda reason: None, name=f"control:{self.name}")
        # Only a database's proxy is sent that database's SQL.
        proc.ctl.send(meta, launcher.config.to_json(sql_for=self.db).encode("utf-8"))
        self.launches += 1
        if self.current is None:
            self.current = proc
        else:
            self.replacing = proc
        if self.launches == 1:
            launcher.note(LogLevel.info, "started {child} as pid {pid}", child=self.name, pid=proc.pid)
        else:
            launcher.note(
                LogLevel.info, "started {child} as pid {pid} (relaunch {n})", child=self.name, pid=proc.pid, n=self.launches - 1
            )
        return proc

    def relaunch(self, reason: str) -> bool:
        """Graceful relaunch: a successor starts; the current process retires once it is ready.

        Also revives a failed slot.  C{False} if a relaunch is already under way.
        """
        if self.launcher.stopping or self.removed or self.replacing is not None:
            return False
        self.failed = False
        self.budget.reset()
        if self.relaunch_call is not None and self.relaunch_call.active():
            self.relaunch_call.cancel()
        self.launcher.note(LogLevel.info, "relaunching {child} ({reason})", child=self.name, reason=reason)
        self.spawn()
        return True

    def process_ready(self, proc: ChildProcess) -> None:
        launcher = self.launcher
        if proc is self.replacing:
            old, self.current, self.replacing = self.current, proc, None
            launcher.child_ready(self, proc)
            if old is not None:
                self.retire(old, handback=True)
        elif proc is self.current:
            launcher.child_ready(self, proc)

    def retire(self, proc: ChildProcess, handback: bool) -> None:
        """Take C{proc} out of service and let it drain."""
        if proc is self.current:
            self.current = None
        if proc not in self.retiring:
            self.retiring.append(proc)
        self.launcher.retired(self, proc)
        proc.retire(self.launcher.config.drain_timeout, handback)
        kill = self.launcher.reactor.callLater(
            self.launcher.config.drain_timeout + self.launcher.config.kill_timeout, proc.signal, signal.SIGKILL
        )
        proc.exited.addBoth(lambda _: kill.cancel() if kill.active() else None)

    def process_ended(self, proc: ChildProcess, reason: Failure) -> None:
        launcher = self.launcher
        note = launcher.note
        now = launcher.reactor.seconds()
        status = exit_status(reason.value)
        if proc in self.retiring:
            self.retiring.remove(proc)
            note(LogLevel.info, "{child} pid {pid} exited after retiring: {status}", child=self.name, pid=proc.pid, status=status)
            return
        was_current = proc is self.current
        if proc is self.replacing:
            self.replacing = None
        if was_current:
            self.current = None
        launcher.process_gone(self, proc)
        if launcher.stopping or self.removed:
            note(LogLevel.info, "{child} pid {pid} exited: {status}", child=self.name, pid=proc.pid, status=status)
            return
        crashed = not isinstance(reason.value, error.ProcessDone) or proc.killed_by_watchdog
        output = ("last output:\n" + "\n".join(proc.tail)) if crashed and proc.tail else None
        if not was_current:
            # A successor died before it was ready; the old process still serves.
            note(LogLevel.error, "{child} pid {pid} died while starting ({status})", child=self.name, pid=proc.pid,
                 status=status, traceback=output)
        ran_for = proc.uptime(now)
        if crashed:
            self.crashes += 1
            if self.budget.crashed(now):
                self.failed = True
                note(
                    LogLevel.error,
                    "{child} crashed {n} times within {window:g}s; not relaunching it "
                    "(okws-ctl relaunch {service} revives it)",
                    child=self.name, n=len(self.budget.crashes), window=self.budget.window,
                    service=self.service or self.role, traceback=output,
                )
                launcher.slot_failed(self)
                return
        if self.current is not None or self.replacing is not None:
            return
        delay = self.backoff.delay(ran_for) if crashed else 0.0
        note(
            LogLevel.error if crashed else LogLevel.warn,
            "{child} pid {pid} {how} ({status}) after {ran:.1f}s; relaunching in {delay:.1f}s",
            child=self.name, pid=proc.pid, how="crashed" if crashed else "exited unexpectedly",
            status=status, ran=ran_for, delay=delay, traceback=output,
        )
        self.relaunch_call = launcher.reactor.callLater(delay, self.spawn)

    # -- the watchdog

    def tick(self, now: float) -> None:
        """Ping every live process; kill one that stopped answering; restart on schedule."""
        for proc in self.processes():
            if proc.state not in ("ready", "retiring"):
                continue
            if proc.heartbeat.overdue(now):
                if not proc.killed_by_watchdog:
                    proc.killed_by_watchdog = True
                    self.launcher.note(
                        LogLevel.error,
                        "{child} pid {pid} answered no heartbeat for {t:.0f}s; killing that pid",
                        child=self.name, pid=proc.pid, t=now - proc.heartbeat.last_answer,
                    )
                    proc.signal(signal.SIGKILL)
                continue
            proc.send({"k": control.PING, "n": proc.heartbeat.ping()})
        cfg = self.service_config()
        proc = self.current
        if cfg is None or proc is None or proc.state != "ready" or self.replacing is not None:
            return
        served = proc.stats.get("served", 0)
        if cfg.restart_after_requests and isinstance(served, int) and served >= cfg.restart_after_requests:
            self.relaunch(f"served {served} requests")
        elif cfg.restart_after_seconds and proc.uptime(now) >= cfg.restart_after_seconds:
            self.relaunch(f"up for {proc.uptime(now):.0f}s")

    def status(self, now: float) -> dict[str, Any]:
        proc = self.current
        return {
            "name": self.name,
            "role": self.role,
            "service": self.service,
            "index": self.index,
            "state": self.state,
            "pid": proc.pid if proc else None,
            "uptime": round(proc.uptime(now), 1) if proc else None,
            "launches": self.launches,
            "restarts": max(0, self.launches - 1),
            "crashes": self.crashes,
            "stats": proc.stats if proc else {},
            "retiring": [p.pid for p in self.retiring],
        }
