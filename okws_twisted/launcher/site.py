# -*- test-case-name: tests.launcher.test_site -*-
"""
The launcher (OKWS's okld): opens the listening sockets, spawns and relaunches every child.

It is twistd's service.  It owns the listening sockets (so a dispatcher
relaunch loses no queued connection), spawns the log daemon (first), the
template publisher, the dispatcher and every service instance with
``spawnProcess``, wires the channels of L{LINKS} between them (a handoff
channel between the dispatcher and each instance, a templates channel from
the publisher to each of them, a log channel from every child to the log
daemon; again after any of them is relaunched), relaunches a child that dies
with a doubling back-off, and on stop lets in-flight requests finish before it
stops the children (services, then the dispatcher, then the publisher, the
log daemon last, once it has written everything), killing those that
overstay.

The launcher sends its own records too (every process start, exit, crash and
relaunch) over a log channel of its own, and on SIGUSR1 asks the log daemon
to reopen its files (after twistd has rotated its own log, if it logs to a
file).

Started as root, it spawns each child as the init of its own PID namespace
and each service instance inside its own memory and pids cgroups (see
L{okws_twisted.launcher.children}).  Stopping ends every process, whatever it
left behind, within C{drain_timeout + kill_timeout} and a second.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel, formatEvent

from okws_twisted.config import Listener, SiteConfig
from okws_twisted.launcher import cgroups
from okws_twisted.launcher.children import ChildProcess, ChildSlot
from okws_twisted.launcher.limits import ResourcePlan
from okws_twisted.launcher.pidns import PidNamespaces
from okws_twisted.launcher.secrets import SecretError, csrf_secrets
from okws_twisted.wire import control, logchannel
from okws_twisted.wire.channel import MessageChannel, socketpair
from okws_twisted.wire.logsender import FINAL_FLUSH_TIMEOUT, RecordSender

#: Which children get a channel to which: (channel kind, role, role).  When a
#: child becomes ready it is wired to every ready child of the other role; a
#: relaunched child is wired again, so both sides always reach each other.
LINKS: list[tuple[str, str, str]] = [
    ("handoff", "dispatcher", "service"),
    ("templates", "pubd", "service"),
    ("templates", "pubd", "dispatcher"),
    (logchannel.CHANNEL, "logd", "dispatcher"),
    (logchannel.CHANNEL, "logd", "service"),
    (logchannel.CHANNEL, "logd", "pubd"),
    ("tls", "dispatcher", "tls"),
    (logchannel.CHANNEL, "logd", "tls"),
    # Only between a service with db = NAME and the proxy of [db:NAME] (see wire()).
    ("db", "dbproxy", "service"),
    (logchannel.CHANNEL, "logd", "dbproxy"),
]

#: Roles that serve the other children (the template publisher, the database
#: proxies): on stop they are told to stop only once every other child has
#: exited, so requests that finish during the drain can still get their
#: templates and finish their queries.
STOP_LAST = frozenset({"pubd", "dbproxy"})

#: How long the log daemon gets to exit once told to stop (it has nothing to drain).
LOGD_STOP_TIMEOUT = 5.0

#: How many of a child's last output lines go with the error-log record of its crash.
OUTPUT_TAIL = 20

#: After C{drain_timeout + kill_timeout}, how long the log daemon may still take to write the
#: last records before it is killed too: stopping never takes longer than their sum plus a second.
FINAL_GRACE = 0.5

#: How long a process reported lost may take to exit by itself before it is killed: peers see a
#: dying process close its channels just before the launcher sees it exit.
LOST_GRACE = 1.0

#: The longest C{why} of a C{lost} message that is logged.
MAX_WHY = 200


def _static_roots(site: SiteConfig) -> dict[str, tuple[int, int] | None]:
    """Each static pool's root directory as (device, inode); L{None} if it is gone."""
    roots: dict[str, tuple[int, int] | None] = {}
    for service in site.services:
        if service.kind == "static":
            try:
                st = os.stat(service.root)
                roots[service.name] = (st.st_dev, st.st_ino)
            except OSError:
                roots[service.name] = None
    return roots


class Launcher(Service):
    """twistd's service: the whole okws site."""

    log = Logger(namespace="okws")

    def __init__(
        self,
        config: SiteConfig,
        listen_sockets: list[socket.socket],
        reactor: Any = None,
        admin_socket: socket.socket | None = None,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config
        self.listen_sockets = listen_sockets
        self.admin_socket = admin_socket
        self.publisher = ChildSlot(self, "pubd")
        self.run_id = os.urandom(6).hex()
        self.records = RecordSender(reactor, config.log_buffer)
        self.log_channel: MessageChannel | None = None
        self._previous_usr1: Any = None
        self.logd = ChildSlot(self, "logd")
        self.dispatcher = ChildSlot(self, "dispatcher")
        #: The TLS front, only if some listener is ssl:.
        self.tls: ChildSlot | None = ChildSlot(self, "tls") if any(l.tls for l in config.listen) else None
        self.instances = [ChildSlot(self, "service", s.name, i) for s in config.services for i in range(s.instances)]
        #: One database proxy per [db:NAME].
        self.databases = [ChildSlot(self, "dbproxy", db=d.name) for d in config.databases]
        self.stopping = False
        self._site_ready = False
        self.jailed = os.geteuid() == 0
        self._uids: Any = None
        #: The last sample of every process (L{_sample_processes}), passed to the dispatcher.
        self.process_samples: list[dict[str, object]] = []
        self._watchdog = LoopingCall(self._tick)
        self._watchdog.clock = reactor
        self.control_port: Any = None
        #: Root only: each child the init of its own PID namespace.
        self.pid_namespaces: PidNamespaces | None = None
        #: Root only, where the kernel offers them: per-instance memory and pids cgroups.
        self.cgroups: cgroups.RunCgroups | None = None
        self._fatal = False
        #: Each service's CSRF secret (read in startService and on reload), sent to it alone.
        self.csrf_secrets: dict[str, bytes] = {}
        #: Each static pool's root as (st_dev, st_ino) when it was last (re)launched: a root
        #: replaced by another directory is only seen by a relaunch (its bind mount pins it).
        self.static_roots: dict[str, tuple[int, int] | None] = {}

    @property
    def children(self) -> list[ChildSlot]:
        front = [self.tls] if self.tls is not None else []
        return [self.logd, self.publisher, *self.databases, self.dispatcher, *front, *self.instances]

    def listeners(self, tls: bool) -> list[tuple[Listener, socket.socket]]:
        """The configured listeners (and their sockets) that are, or are not, ssl:."""
        return [(l, s) for l, s in zip(self.config.listen, self.listen_sockets) if l.tls == tls]

    def note(self, level: LogLevel, format: str, traceback: str | None = None, **fields: Any) -> None:
        """Log an event of the launcher's to twistd's log and to the error log."""
        self.log.emit(level, format, **fields)
        self.records.event(level.name, formatEvent({"log_format": format, **fields}), traceback)

    def startService(self) -> None:
        super().startService()
        if not self.jailed:
            self.log.info(
                "okws is not running as root: every process runs as uid {uid} without jails",
                uid=os.geteuid(),
            )
        else:
            self.log.info("running as root: each child gets its own uid and a jail under {root}", root=self.config.jail_root)
            self.pid_namespaces = PidNamespaces()
            self._start_cgroups()
        self._install_usr1()
        try:
            self.csrf_secrets = csrf_secrets(self.config)
        except SecretError as e:
            self.fatal(str(e))
        self.static_roots = _static_roots(self.config)
        self.logd.spawn()
        self.publisher.spawn()
        for slot in self.databases:
            slot.spawn()
        for slot in self.instances:
            if not slot.dormant:
                slot.spawn()
        self.dispatcher.spawn()
        if self.tls is not None:
            self.tls.spawn()
        self._watchdog.start(self.config.heartbeat_interval, now=False)
        from okws_twisted.launcher.controlsocket import listen_control

        self.control_port = listen_control(self)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self._reload_on_signal))

    def _start_cgroups(self) -> None:
        """Find the memory and pids cgroups to put service instances in; say which limits apply."""
        if self.config.cgroups:
            try:
                found = cgroups.find()
            except OSError as e:
                self.log.warn("cannot read this process's cgroups: {error}", error=e)
                found = {}
            self.cgroups = cgroups.RunCgroups(found, self.run_id)
            for problem in self.cgroups.problems:
                self.log.warn("cannot use the cgroup controller {problem}", problem=problem)
        have = self.cgroups.controllers if self.cgroups is not None else frozenset()
        memory = "a memory cgroup" if "memory" in have else "RLIMIT_AS and RLIMIT_FSIZE (no memory cgroup)"
        tasks = "a pids cgroup" if "pids" in have else "RLIMIT_NPROC for fork = yes services (no pids cgroup)"
        self.log.info("service limits: memory_limit by {memory}, max_processes by {tasks}", memory=memory, tasks=tasks)

    def fatal(self, message: str) -> None:
        """Something that must never be carried on with: say so and stop the site."""
        self.note(LogLevel.critical, "{message}; stopping", message=message)
        if not self._fatal:
            self._fatal = True
            self.reactor.callLater(0, self.reactor.stop)

    def _reload_on_signal(self) -> None:
        self.log.info("SIGHUP: reloading {file}", file=self.config.file)
        d = self.reload()
        d.addErrback(lambda f: self.log.error("reload refused: {error}", error=f.getErrorMessage()))

    def jail_spec(self, slot: ChildSlot, resources: ResourcePlan | None = None) -> Any:
        """The jail of one child (root only): its own ids, only the paths its job needs, its limits.

        Only a service with C{fork = yes} may start processes; no other role ever does.
        """
        from okws_twisted.launcher import jailplan

        site = self.config
        if self._uids is None:
            jailplan.prepare_jail_root(site)
            self._uids = jailplan.UidPlan(site, jailplan.uids_in_use())
        if slot.role == "service" and (service := slot.service_config()) is not None and service.kind == "static":
            # The built-in resource over its root: no site code, no network, no forks.
            uid, gid = self._uids.ids_for(service.section, service)
            spec = jailplan.jail_for(
                site, slot.name, uid, gid, jailplan.static_binds(service, uid, gid), new_net=True,
                nofile=2 * service.max_connections + 256, may_fork=False,
            )
            if resources is not None:
                spec = dataclasses.replace(spec, address_space=resources.address_space, file_size=resources.file_size,
                                           processes=resources.processes)
            return spec
        if slot.role == "service":
            service = slot.service_config()
            assert service is not None
            uid, gid = self._uids.ids_for(service.section, service)
            binds = jailplan.service_binds(site, service)
            if service.scratch:
                path = jailplan.prepare_scratch(site, service, uid, gid)
                binds.append(jailplan.Bind(path, writable=True, target="/scratch"))
            spec = jailplan.jail_for(
                site, slot.name, uid, gid, binds, new_net=service.network == "none", nofile=service.max_connections + 256,
                may_fork=service.fork,
            )
            if resources is not None:
                spec = dataclasses.replace(
                    spec, address_space=resources.address_space, file_size=resources.file_size, processes=resources.processes
                )
            return spec
        if slot.role == "dbproxy":
            database = site.database(slot.db or "")
            assert database is not None
            uid, gid = self._uids.ids_for(f"dbproxy:{database.name}", database)
            # SQLite needs no network at all; PostgreSQL is reached over the host's.
            return jailplan.jail_for(site, slot.name, uid, gid, jailplan.dbproxy_binds(database, uid, gid),
                                     new_net=database.engine == "sqlite")
        uid, gid = self._uids.ids_for(slot.role)
        nofile = site.max_connections + 1024 if slot.role == "dispatcher" else jailplan.ROLE_NOFILE
        relays = slot.role == "dispatcher" and any(s.isolation == "request" for s in site.services)
        if slot.role == "tls" or relays:
            # A client's TCP socket and its socket pair end per connection (the TLS front's, or
            # the dispatcher's for a service with isolation = request).
            import resource

            nofile = min(2 * site.max_connections + 1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        return jailplan.jail_for(
            site, slot.name, uid, gid, jailplan.role_binds(site, slot.role, uid, gid), nofile=nofile, may_fork=False
        )

    def _tick(self) -> None:
        now = self.reactor.seconds()
        for slot in self.children:
            slot.tick(now)
        if self.cgroups is not None:
            self.cgroups.sweep()
        self._sample_processes()
        self._push_status()

    def _sample_processes(self) -> None:
        """Each current process's memory, CPU and open files (and the launcher's own), for /metrics."""
        from okws_twisted.launcher.procstats import sample

        samples = []
        me = sample(os.getpid())
        if me is not None:
            samples.append(me.to_json("launcher", "", ""))
        for slot in self.children:
            proc = slot.current
            if proc is None or proc.pid is None:
                continue
            found = sample(proc.pid)
            if found is not None:
                instance = str(slot.index) if slot.role == "service" else ""
                samples.append(found.to_json(slot.role, slot.service or "", instance))
        self.process_samples = samples

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
            proc = self.logd.current
            sent = proc is not None and proc.send(meta, [theirs.fileno()])
        finally:
            theirs.close()
        if not sent:
            ours.close()
            return
        self.log_channel = self.records.attach(ours)

    # -- wiring

    def ready_processes(self, role: str) -> list[tuple[ChildSlot, ChildProcess]]:
        return [
            (slot, slot.current)
            for slot in self.children
            if slot.role == role and slot.current is not None and slot.current.state == "ready"
        ]

    def child_ready(self, slot: ChildSlot, proc: ChildProcess) -> None:
        if slot is self.logd:
            self._attach_log_client()
        for kind, left_role, right_role in LINKS:
            if slot.role == left_role:
                for other, other_proc in self.ready_processes(right_role):
                    self.wire(kind, slot, proc, other, other_proc)
            elif slot.role == right_role:
                for other, other_proc in self.ready_processes(left_role):
                    self.wire(kind, other, other_proc, slot, proc)
        if not self._site_ready and all(c.state == "ready" or c.dormant for c in self.children):
            self._site_ready = True
            self.note(LogLevel.info, "site ready: {count} processes", count=len(self.children))
        self._push_status()

    def wire(self, kind: str, left: ChildSlot, lproc: ChildProcess, right: ChildSlot, rproc: ChildProcess) -> None:
        """Give two ready processes the two ends of a new channel of C{kind}."""
        if self.stopping:
            return
        if kind == "db":
            # A service reaches the proxy of its own [db:NAME] only; one without db, none.
            service = right.service_config()
            if service is None or not service.db or service.db != left.db:
                return
        a, b = socketpair()
        try:
            ok = lproc.send(right.peer_meta(rproc, kind), [a.fileno()]) and rproc.send(left.peer_meta(lproc, kind), [b.fileno()])
        finally:
            a.close()
            b.close()
        if ok:
            self.log.info(
                "wired {right} pid {rpid} to the {left} ({kind})", right=right.name, rpid=rproc.pid, left=left.name, kind=kind
            )

    def retired(self, slot: ChildSlot, proc: ChildProcess) -> None:
        """Tell the dispatcher to give C{proc} no new connections."""
        if slot.role == "service" and self.dispatcher.current is not None:
            self.dispatcher.current.send({"k": control.RETIRE, "pid": proc.pid})

    def process_gone(self, slot: ChildSlot, proc: ChildProcess) -> None:
        self._push_status()

    def slot_failed(self, slot: ChildSlot) -> None:
        self._push_status()

    def want(self, meta: dict[str, Any]) -> None:
        """The dispatcher has a request for a lazy service nobody started yet: start it."""
        service = meta.get("service")
        for slot in self.instances:
            if slot.service == service and slot.dormant and not self.stopping:
                self.note(LogLevel.info, "starting {child}: the first request for lazy service {service}", child=slot.name, service=service)
                slot.spawn()

    def lost(self, sender: ChildSlot, proc: ChildProcess, meta: dict[str, Any]) -> None:
        """A child dropped its channel to process C{pid}: relaunch that one, if it may say so.

        The sender must be wired to the slot whose current process C{pid} is
        (L{LINKS}); that process is marked lost at once (no status says ready
        for it, nothing is wired to it any more), killed, and relaunched the
        way a crashed process is.
        """
        pid = meta.get("pid")
        why = str(meta.get("why", ""))[:MAX_WHY]
        partners = {r for _k, l, r in LINKS if l == sender.role} | {l for _k, l, r in LINKS if r == sender.role}
        wired = [slot for slot in self.children if slot.role in partners]
        if not isinstance(pid, int) or isinstance(pid, bool):
            proc.refuse(control.LOST, "its pid is not a number")
            return
        target = next((s for s in wired if s.current is not None and s.current.pid == pid), None)
        if target is None or target.current is None or target.current.state != "ready":
            if any(pid in s.past_pids or pid in [p.pid for p in s.processes()] for s in wired):
                # A process already leaving (retiring, exited, being replaced): no news.
                self.log.info("the {sender} lost its channel to pid {pid} ({why}), which is already leaving",
                              sender=sender.name, pid=pid, why=why)
            else:
                proc.refuse(control.LOST, f"pid {pid} is no process the {sender.name} is wired to")
            return
        lost = target.current
        lost.state = "lost"
        self.note(
            LogLevel.warn,
            "the {sender} lost its channel to {child} pid {pid} ({why}); killing that pid in {grace}s to relaunch it",
            sender=sender.name, child=target.name, pid=pid, why=why, grace=LOST_GRACE,
        )

        def kill() -> None:
            # A process that is dying on its own closes its channels a moment
            # before the launcher sees it exit; it keeps its own exit reason.
            if lost.state == "lost":
                lost.killed_because = f"the {sender.name} lost its channel to it ({why})"
                lost.signal(signal.SIGKILL)

        self.reactor.callLater(LOST_GRACE, kill)
        self._push_status()

    def _push_status(self) -> None:
        """Give the dispatcher the launcher's view: failed services, restarts (for 503s and metrics)."""
        proc = self.dispatcher.current
        if proc is None or proc.state != "ready":
            return
        services: dict[str, dict[str, Any]] = {}
        for slot in self.instances:
            entry = services.setdefault(slot.service or "", {"failed": True, "dormant": True, "restarts": 0, "crashes": 0})
            entry["failed"] = entry["failed"] and slot.failed
            entry["dormant"] = entry["dormant"] and slot.dormant
            entry["restarts"] += max(0, slot.launches - 1)
            entry["crashes"] += slot.crashes
        proc.send({"k": control.STATUS, "services": services, "processes": self.process_samples})

    # -- operator commands (okws-ctl)

    def status(self) -> dict[str, Any]:
        now = self.reactor.seconds()
        return {
            "pid": os.getpid(),
            "config": self.config.file,
            "stopping": self.stopping,
            "children": [slot.status(now) for slot in self.children],
        }

    def relaunch(self, service: str | None) -> list[str]:
        """Gracefully relaunch every instance of C{service} (C{None}: all services), or the proxy
        of a database: C{db.NAME}, as C{okws-ctl status} shows it, or C{db:NAME}, as site.ini
        names its section.  A proxy's successor starts, the services move to it, and the calls
        already sent finish on the old one."""
        if service is not None and service[:3] in ("db.", "db:"):
            name = service[3:]
            slots = [s for s in self.databases if s.db == name]
            if not slots:
                known = ", ".join(f"db.{s.db}" for s in self.databases) or "none"
                raise LookupError(f"no database proxy {service!r} (no [db:{name}] section); the proxies are {known}")
            return [slot.name for slot in slots if slot.relaunch("operator request")]
        slots = [s for s in self.instances if service is None or s.service == service]
        if service is not None and not slots:
            raise LookupError(f"no service named {service!r}")
        return [slot.name for slot in slots if slot.relaunch("operator request")]

    def rotate_logs(self) -> dict[str, Any]:
        """okws-ctl rotate-logs: the same as SIGUSR1 (twistd's own log aside)."""
        self.reopen_logs()
        return {"reopened": self.log_channel is not None and self.log_channel.connected}

    @defer.inlineCallbacks
    def reload(self) -> Any:
        """Re-read the site file; apply it without touching unchanged services.

        A broken file (or a resource that does not import) is refused with its
        error and the running site keeps going.  Listener changes need a
        restart and are refused.
        """
        from okws_twisted.config import ConfigError, load
        from okws_twisted.launcher.resourcecheck import check_resources_async, summaries

        if self.stopping:
            raise ValueError("the site is stopping")
        try:
            new = load(self.config.file)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if new.listen != self.config.listen or new.admin != self.config.admin:
            raise ValueError(f"{new.file}: [okws] listen/admin: changing listeners needs a restart")
        if new.control_socket != self.config.control_socket:
            raise ValueError(f"{new.file}: [okws] control_socket: changing it needs a restart")
        problems = yield check_resources_async(new, self.reactor)
        if problems:
            for problem in problems:
                if "\n" in problem:
                    # The traceback of an import failure, for the logs; the refusal says where.
                    self.note(LogLevel.error, "{problem}", problem=summaries([problem])[0], traceback=problem)
            raise ValueError("; ".join(summaries(problems)))
        try:
            self.csrf_secrets = csrf_secrets(new)
        except SecretError as e:
            raise ValueError(str(e)) from None
        result = self.apply(new)
        if self.tls is not None and self.tls.relaunch("reload: reading the certificates again"):
            result["relaunched"] = [self.tls.name]
        from okws_twisted.ctl import format_reload

        answer: dict[str, Any] = {"file": new.file, **result}
        self.log.info("{text}", text=format_reload(answer))
        return answer

    def apply(self, new: SiteConfig) -> dict[str, list[str]]:
        old = self.config
        old_services = {s.name: s for s in old.services}
        new_services = {s.name: s for s in new.services}
        added = [n for n in new_services if n not in old_services]
        removed = [n for n in old_services if n not in new_services]
        site_changed = {k: v for k, v in dataclasses.asdict(old).items() if k != "services"} != {
            k: v for k, v in dataclasses.asdict(new).items() if k != "services"
        }
        changed = [n for n in new_services if n in old_services and new_services[n] != old_services[n]]
        roots = _static_roots(new)
        # A static root replaced by another directory (mv static.new static): its pool still
        # sees the old one through its bind mount until it is relaunched.
        changed += [n for n, root in roots.items() if n in old_services and n not in changed and root != self.static_roots.get(n)]
        self.static_roots = roots
        self.config = new
        # Every surviving process learns the new routes and limits first, so
        # the dispatcher already routes removed paths away (404) when their
        # services hand their connections back.
        payload = new.to_json().encode("utf-8")
        for slot in self.children:
            for proc in slot.processes():
                if proc.state in ("starting", "ready"):
                    proc.send({"k": control.CONFIG_UPDATE}, payload=payload)
        for slot in list(self.instances):
            cfg = new_services.get(slot.service or "")
            if cfg is None or slot.index >= cfg.instances:
                self._remove(slot)
            elif slot.service in changed:
                if not slot.relaunch("its configuration changed"):
                    slot.spawn() if slot.current is None and slot.relaunch_call is None else None
        databases = self._apply_databases(old, new)
        for name, cfg in new_services.items():
            have = {s.index for s in self.instances if s.service == name}
            for index in range(cfg.instances):
                if index not in have:
                    slot = ChildSlot(self, "service", name, index)
                    self.instances.append(slot)
                    slot.spawn()
        self._push_status()
        return {"added": added, "removed": removed, "changed": changed, "site_changed": [new.file] if site_changed else [],
                "databases": databases}

    def _apply_databases(self, old: SiteConfig, new: SiteConfig) -> list[str]:
        """Relaunch the proxy of each database whose section, queries or schema changed (gracefully:
        calls in flight finish on the old one); start new ones, retire removed ones."""
        touched = []
        for slot in list(self.databases):
            before, after = old.database(slot.db or ""), new.database(slot.db or "")
            if after is None:
                slot.removed = True
                if slot.relaunch_call is not None and slot.relaunch_call.active():
                    slot.relaunch_call.cancel()
                for proc in slot.processes():
                    slot.retire(proc, handback=False)
                self.databases.remove(slot)
                touched.append(slot.name)
            elif after != before:
                if not slot.relaunch("its queries, schema or settings changed"):
                    if slot.current is None and slot.relaunch_call is None:
                        slot.spawn()
                touched.append(slot.name)
        for database in new.databases:
            if not any(slot.db == database.name for slot in self.databases):
                slot = ChildSlot(self, "dbproxy", db=database.name)
                self.databases.append(slot)
                slot.spawn()
                touched.append(slot.name)
        return touched

    def _remove(self, slot: ChildSlot) -> None:
        slot.removed = True
        if slot.relaunch_call is not None and slot.relaunch_call.active():
            slot.relaunch_call.cancel()
        for proc in slot.processes():
            slot.retire(proc, handback=True)
        self.instances.remove(slot)

    # -- stopping

    def stopService(self) -> defer.Deferred[None]:
        """Stop every child, the log daemon last (so it writes every other exit)."""
        super().stopService()
        self.stopping = True
        self.note(LogLevel.info, "stopping: draining for up to {drain}s", drain=self.config.drain_timeout)
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
        if self._watchdog.running:
            self._watchdog.stop()
        if self.control_port is not None:
            self.control_port.stopListening()
        for sock in self.listen_sockets:
            sock.close()
        if self.admin_socket is not None:
            self.admin_socket.close()
        # Services drain first; the dispatcher only stops taking connections
        # (its admin listener keeps saying "draining" to load balancers) and
        # exits once every service has.
        waits = []
        service_waits = []
        for slot in self.children:
            if slot.relaunch_call is not None and slot.relaunch_call.active():
                slot.relaunch_call.cancel()
                slot.relaunch_call = None
            for proc in slot.processes():
                waits.append(proc.exited)
                if slot.role == "dispatcher":
                    if not proc.send({"k": control.DRAIN}):
                        proc.signal(signal.SIGTERM)
                    continue
                if slot.role in STOP_LAST or slot.role == "logd":
                    continue
                service_waits.append(proc.exited)
                if proc.state != "retiring":
                    proc.retire(self.config.drain_timeout, handback=False)

        def retire_role(roles: frozenset[str] | set[str], drain: float) -> defer.Deferred[Any]:
            procs = [p for slot in self.children if slot.role in roles for p in slot.processes()]
            for proc in procs:
                if proc.state != "exited":
                    proc.retire(drain, handback=False)
            return defer.DeferredList([p.exited for p in procs])

        # Services drain first; then the dispatcher (which only stopped
        # accepting, and told load balancers "draining") exits; the helpers
        # that serve the others (STOP_LAST) go last.
        d = defer.DeferredList(service_waits)
        d.addCallback(lambda _: retire_role({"dispatcher"}, self.config.kill_timeout))
        d.addCallback(lambda _: retire_role(STOP_LAST, self.config.kill_timeout))
        # The log daemon goes last, once the launcher's own records (every
        # other process's exit) are acknowledged.
        d.addCallback(lambda _: self.records.idle(FINAL_FLUSH_TIMEOUT))

        def stop_logd(_: object) -> defer.Deferred[Any]:
            if self.records.held:
                self.log.warn("{count} log records were not written: the log daemon is gone", count=self.records.held)
            done = retire_role({"logd"}, LOGD_STOP_TIMEOUT)
            for proc in self.logd.processes():
                kill = self.reactor.callLater(LOGD_STOP_TIMEOUT, proc.signal, signal.SIGKILL)
                proc.exited.addBoth(lambda _, k=kill: k.cancel() if k.active() else None)
            return done

        d.addCallback(stop_logd)
        done = defer.DeferredList(waits)
        term = self.reactor.callLater(self.config.drain_timeout, self._signal_all, signal.SIGTERM)
        kill = self.reactor.callLater(
            self.config.drain_timeout + self.config.kill_timeout, self._signal_all, signal.SIGKILL
        )
        last = self.reactor.callLater(
            self.config.drain_timeout + self.config.kill_timeout + FINAL_GRACE, self._signal_all, signal.SIGKILL, True
        )

        def finished(_: object) -> None:
            for call in (term, kill, last):
                if call.active():
                    call.cancel()
            if self.cgroups is not None:
                self.cgroups.close()
            self.log.info("all children have exited")

        done.addCallback(finished)
        return done

    def _signal_all(self, signum: int, logd_too: bool = False) -> None:
        for slot in self.children:
            if slot is self.logd and not logd_too:
                continue  # stopped last, on its own timer
            for proc in slot.processes():
                if proc.state != "exited":
                    self.log.warn(
                        "{child} pid {pid} overstayed; sending signal {sig}", child=slot.name, pid=proc.pid, sig=signum
                    )
                    proc.signal(signum)
