# -*- test-case-name: tests.launcher.test_site -*-
"""
The launcher's children (OKWS's okld): a slot kept running (L{ChildSlot}: a role, or one
instance of a service) and each process spawned for it (L{ChildProcess}: one pid).

A slot spawns its process jailed (when the launcher is root): as the init of its own PID
namespace (L{okws_twisted.launcher.pidns}), and for a service instance inside its memory and
pids cgroups (L{okws_twisted.launcher.cgroups}).  It relaunches the process with a doubling
back-off when it dies, counts crashes against the crash budget, and retires a process
gracefully (its successor first) on relaunch or reload.

A process is dead when the kernel says so (C{processExited}), not when its pipes close: an
orphan it left could hold them open for ever.  Nothing a child says is taken on trust: its
control messages are checked against what its role may send (L{control.FROM_CHILD}), and
its output reaches the log through an L{OutputLimiter}.
"""

from __future__ import annotations

import base64
import json
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
from okws_twisted.launcher import limits, niceness
from okws_twisted.launcher.cgroups import InstanceCgroup
from okws_twisted.launcher.jailplan import STATIC_ROOT
from okws_twisted.launcher.output import LINE_MAX, RATE, OutputLimiter
from okws_twisted.launcher.pidns import PidNamespaceError
from okws_twisted.launcher.supervision import Backoff, CrashBudget, Heartbeat
from okws_twisted.wire import control
from okws_twisted.wire.channel import ChannelViolation, Message, MessageChannel, socketpair
from okws_twisted.wire.limits import CONTROL_LAUNCHER

if TYPE_CHECKING:
    from okws_twisted.launcher.site import Launcher

#: How many of a child's last output lines go with the error-log record of its crash.
OUTPUT_TAIL = 20
#: How much of what a dead child left in its pipes is read before they are closed.
DRAIN_MAX = 256 * 1024
#: The largest C{stats} a child's C{pong} may carry (as JSON).
MAX_STATS = 16 * 1024
#: How many refused control messages of one process are logged one by one (all are counted).
REFUSALS_LOGGED = 5
#: How many pids of a slot's exited processes it remembers.
PAST_PIDS = 8

_LEVELS = {level.name: level for level in LogLevel.iterconstants()}


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
        # Two malloc arenas, not eight per core: every thread's arena reserves 64 MiB of
        # address space, which RLIMIT_AS (the memory limit without a cgroup) counts.
        "MALLOC_ARENA_MAX": "2",
    }
    return env


class ChildProcess(ProcessProtocol):
    """One spawned process (one pid) of a L{ChildSlot}.

    States: starting (spawned, no ``ready`` yet) -> ready -> retiring (told
    to drain because a successor took over, or the site is stopping) ->
    exited; or lost (a peer dropped its channel to it: killed, then
    relaunched) -> exited.  Its stdout/stderr lines go to the launcher's
    log, tagged, bounded by an L{OutputLimiter}.
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
        #: Why the launcher killed it, if it did (said with its exit status).
        self.killed_because: str | None = None
        self.output = OutputLimiter(now)
        self._dropping = False
        self.tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
        #: Control messages refused (a kind its role may not send, or a malformed one).
        self.refused = 0
        self.cgroup: InstanceCgroup | None = None
        #: The nice value it runs at while it keeps up (the log daemon's logd_nice, if the
        #: launcher can give it normal priority back; else 0), and the one it has now.
        self.resting_nice = 0
        self.nice = 0
        self.lowered = False

    # -- ProcessProtocol

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        now = self.slot.launcher.reactor.seconds()
        for text in self.output.feed(fd, data, now):
            self._emit(text)
        if self.output.dropped_bytes and not self._dropping:
            self._dropping = True
            self.log.warn(
                "{child} pid {pid} writes more output than is logged ({rate} KiB/s, lines up to {line} KiB): "
                "dropping the rest and counting it",
                child=self.name, pid=self.pid, rate=RATE // 1024, line=LINE_MAX // 1024,
            )

    def _emit(self, text: str) -> None:
        # A child's log lines are "LEVEL text" (okws_twisted.bootstrap.bare_lines);
        # anything else it writes (a crash's traceback, a print) is info.
        word, _, rest = text.partition(" ")
        level = _LEVELS.get(word)
        if level is None:
            level, rest = LogLevel.info, text
        self.tail.append(rest)
        self.log.emit(level, "[{child} pid {pid}] {line}", child=self.name, pid=self.pid, line=rest)

    def report_dropped(self) -> None:
        """Log what output was dropped since the last report (the watchdog's tick calls this)."""
        dropped, lines = self.output.report()
        if dropped:
            self.log.warn(
                "{child} pid {pid}: dropped {bytes} bytes of its output ({lines} lines), {total} bytes in all",
                child=self.name, pid=self.pid, bytes=dropped, lines=lines, total=self.output.dropped_bytes,
            )

    def processExited(self, reason: Failure) -> None:
        """The process is dead (reaped): the slot hears of it now, whoever still holds its pipes."""
        self._drain_pipes()
        self.state = "exited"
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        self.slot.process_ended(self, reason)
        self.exited.callback(None)

    def _drain_pipes(self) -> None:
        """Take what the child wrote before it died (bounded), then close our ends of its pipes.

        Its death and its last output race to the reactor; reading what the
        pipes already hold keeps a crash's traceback with the crash.  Closing
        our ends means a process that inherited the pipes (a child's orphan,
        without a PID namespace) cannot keep the launcher reading.
        """
        transport = self.transport
        pipes = getattr(transport, "pipes", {})
        for fd in (1, 2):
            reader = pipes.get(fd)
            left = DRAIN_MAX
            while reader is not None and left > 0:
                try:
                    data = os.read(reader.fileno(), min(65536, left))
                except OSError:
                    break  # EAGAIN: nothing more written yet
                if not data:
                    break
                left -= len(data)
                self.childDataReceived(fd, data)
        if transport is not None:
            transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        """Every pipe is closed too: log what was left of an unfinished line."""
        for text in self.output.flush(self.slot.launcher.reactor.seconds()):
            self._emit(text)

    # -- the control channel

    def control_received(self, batch: list[Message]) -> None:
        now = self.slot.launcher.reactor.seconds()
        role = self.slot.role
        for msg in batch:
            msg.close_fds()
            if self.state == "exited":
                return
            if not control.may_send(role, msg.kind):
                self.refuse(msg.kind, f"a {role} may not send it")
            elif msg.kind == control.READY:
                if self.state != "starting":
                    self.refuse(msg.kind, f"it is {self.state}, not starting")
                    continue
                self.state = "ready"
                self.heartbeat.last_answer = now
                self.slot.launcher.note(LogLevel.info, "{child} pid {pid} is ready", child=self.name, pid=self.pid)
                self.slot.process_ready(self)
            elif msg.kind == control.PONG:
                seq = msg.meta.get("n")
                if isinstance(seq, int):
                    self.heartbeat.pong(seq, now)
                stats = msg.meta.get("stats")
                if isinstance(stats, dict) and len(json.dumps(stats)) <= MAX_STATS:
                    self.stats = stats
                elif stats is not None:
                    self.refuse("pong", f"its stats are not a JSON object of at most {MAX_STATS} bytes")
            elif msg.kind == control.WANT:
                self.slot.launcher.want(msg.meta)
            elif msg.kind == control.LOST:
                self.slot.launcher.lost(self.slot, self, msg.meta)
            elif msg.kind == control.PRIORITY:
                self.priority_asked(msg.meta)

    def priority_asked(self, meta: dict[str, Any]) -> None:
        """The log daemon asks for normal priority (it falls behind) or its low one again."""
        normal = meta.get("normal")
        if not isinstance(normal, bool):
            self.refuse(control.PRIORITY, "its normal is not true or false")
            return
        if not self.resting_nice:
            return  # not lowered (logd_nice = 0, or no CAP_SYS_NICE): nothing to give back
        value = 0 if normal else self.resting_nice
        if value == self.nice or self.pid is None:
            return
        try:
            niceness.renice(self.pid, value)
        except OSError as e:
            self.slot.launcher.note(LogLevel.warn, "cannot set {child} pid {pid} to nice {nice}: {error}",
                                    child=self.name, pid=self.pid, nice=value, error=e.strerror or e)
            return
        self.nice = value
        if normal:
            said = "runs late at nice {resting} (the machine is busy): nice 0 until it keeps up"
        elif self.lowered:
            said = "keeps up again: back to nice {resting}"
        else:
            said = "keeps up: nice {resting} from now on while it does (logd_nice)"
        self.lowered = True
        self.slot.launcher.note(LogLevel.warn if normal else LogLevel.info, "{child} pid {pid} " + said,
                                child=self.name, pid=self.pid, resting=self.resting_nice)

    def refuse(self, kind: str, why: str) -> None:
        """Count a control message the launcher will not act on; log the first few."""
        self.refused += 1
        if self.refused <= REFUSALS_LOGGED:
            self.slot.launcher.note(
                LogLevel.warn, "refused {kind} from {child} pid {pid}: {why} ({n} refused)",
                kind=kind[:40], child=self.name, pid=self.pid, why=why, n=self.refused,
            )

    def send(self, meta: dict[str, Any], fds: tuple[int, ...] | list[int] = (), payload: bytes = b"") -> bool:
        if self.ctl is None or not self.ctl.connected:
            return False
        try:
            self.ctl.send(meta, payload, fds)
        except error.ConnectionDone:
            return False
        return True

    def control_lost(self, reason: Failure) -> None:
        """The control channel is gone.  A child that broke its rules (garbage, a message over the
        channel's limits) is killed at once and relaunched like any crash; one that closed it is
        exiting, and its exit says the rest."""
        if isinstance(reason.value, ChannelViolation) and self.state != "exited":
            self.killed_because = f"its control channel broke the rules ({reason.getErrorMessage()})"
            self.slot.launcher.note(
                LogLevel.warn, "{child} pid {pid} broke the rules of its control channel ({why}); killing it",
                child=self.slot.name, pid=self.pid, why=reason.getErrorMessage(),
            )
            self.signal(signal.SIGKILL)

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
        #: Output dropped and control messages refused by this slot's processes that have exited.
        self.dropped_before = (0, 0)
        self.refused_before = 0
        #: The pids of its last processes that exited (a late C{lost} about one is no news).
        self.past_pids: deque[int] = deque(maxlen=PAST_PIDS)

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
            cfg = self.service_config()
            if cfg is not None and cfg.kind == "static":
                # okws's own resource over the root: no site directory on its path.
                meta["root"] = STATIC_ROOT if launcher.jailed else cfg.root
            else:
                extra_paths.append(launcher.config.base_dir)
                secret = launcher.csrf_secrets.get(self.service or "")
                if secret is not None:
                    # To this service alone: never in the site configuration every child gets.
                    meta["csrf_secret"] = base64.b64encode(secret).decode("ascii")
        elif self.role == "dbproxy":
            meta["db"] = self.db
        proc = ChildProcess(self, reactor.seconds(), launcher.config.heartbeat_timeout)
        if launcher.jailed:
            proc.cgroup, resources = self._resources()
            meta["jail"] = launcher.jail_spec(self, resources).to_json()
        # -P: the working directory is not put on sys.path, so the child
        # imports okws exactly where the launcher did (and a jail shows it).
        args = [sys.executable, "-P", "-m", "okws_twisted.bootstrap", self.role, self.name]
        kwargs: dict[str, Any] = dict(env=child_environment(extra_paths), path=launcher.config.base_dir, childFDs=child_fds)
        try:
            if launcher.pid_namespaces is not None:
                launcher.pid_namespaces.spawn(reactor, proc, sys.executable, args, **kwargs)
            else:
                reactor.spawnProcess(proc, sys.executable, args, **kwargs)
        except BaseException as e:
            parent.close()
            if proc.cgroup is not None and launcher.cgroups is not None:
                launcher.cgroups.release(proc.cgroup)
            if isinstance(e, PidNamespaceError):
                launcher.fatal(f"cannot spawn {self.name} in a PID namespace of its own: {e}")
            raise
        finally:
            child.close()
        proc.pid = proc.transport.pid
        meta["pid"] = proc.pid
        if self.role == "logd" and launcher.config.logd_nice:
            self._allow_low_priority(proc, meta, launcher.config.logd_nice)
        if launcher.pid_namespaces is not None and launcher.pid_namespaces.broken:
            launcher.fatal(launcher.pid_namespaces.broken)
        if proc.cgroup is not None:
            try:
                # Before the child has its config: it is inside its limits
                # before it enters its jail or runs any role code.
                proc.cgroup.join(proc.pid)
            except OSError as e:
                launcher.note(LogLevel.error, "cannot move {child} pid {pid} into its cgroup: {error}; killing it",
                              child=self.name, pid=proc.pid, error=e.strerror or e)
                proc.killed_because = "it could not be put in its cgroup"
                proc.signal(signal.SIGKILL)
        proc.ctl = MessageChannel(reactor, parent, proc.control_received, proc.control_lost, name=f"control:{self.name}", limits=CONTROL_LAUNCHER)
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

    def _allow_low_priority(self, proc: ChildProcess, meta: dict[str, Any], nice: int) -> None:
        """Let the log daemon run at C{nice} while it keeps up, if the launcher can give it normal priority back.

        It starts at normal priority and asks to be lowered once it is on time
        (L{okws_twisted.logd.priority.LagWatch}).
        """
        if not niceness.may_lower():
            if self.launches == 0:
                self.launcher.note(LogLevel.info, "{child} runs at normal priority: logd_nice needs a launcher with "
                                   "CAP_SYS_NICE, to give it normal priority back when it falls behind", child=self.name)
            return
        proc.resting_nice = nice
        meta["nice"] = nice

    def _resources(self) -> tuple[InstanceCgroup | None, limits.ResourcePlan | None]:
        """A service instance's cgroups (where the launcher has them) and limits; none for a helper."""
        service = self.service_config() if self.role == "service" else None
        if service is None:
            return None, None
        cgroups = self.launcher.cgroups
        cgroup = None
        if cgroups is not None and cgroups.controllers:
            cgroup, problems = cgroups.make(f"{self.name}-{self.launches + 1}", service.memory_limit, service.max_processes)
            if problems:
                self.launcher.note(LogLevel.warn, "{child}: cgroup {problems}; falling back to rlimits",
                                   child=self.name, problems="; ".join(problems))
        have = cgroup.controllers if cgroup is not None else frozenset()
        return cgroup, limits.plan(service, "memory" in have, "pids" in have)

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
        if proc.cgroup is not None:
            if proc.cgroup.oom_kills():
                service = self.service_config()
                limit = service.memory_limit if service is not None else 0
                status += f", killed at its memory_limit of {limit} bytes"
            if launcher.cgroups is not None:
                launcher.cgroups.release(proc.cgroup)
        if proc.killed_because:
            status += f", killed because {proc.killed_because}"
        self.dropped_before = (
            self.dropped_before[0] + proc.output.dropped_bytes,
            self.dropped_before[1] + proc.output.dropped_lines,
        )
        self.refused_before += proc.refused
        if proc.pid is not None:
            self.past_pids.append(proc.pid)
        proc.report_dropped()
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
            proc.report_dropped()
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
        live = [p for p in self.processes() if p.state != "exited"]
        dropped_bytes = self.dropped_before[0] + sum(p.output.dropped_bytes for p in live)
        dropped_lines = self.dropped_before[1] + sum(p.output.dropped_lines for p in live)
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
            "output_dropped": {"bytes": dropped_bytes, "lines": dropped_lines},
            "refused": self.refused_before + sum(p.refused for p in live),
        }
