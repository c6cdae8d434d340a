# -*- test-case-name: tests.test_e2e_core -*-
"""
The first code every okws child runs (the child side of OKWS's okld).

The launcher spawns ``python -m okws_twisted.bootstrap ROLE`` with the
control channel on fd 3 (and, for the dispatcher and the TLS front, their
listening sockets on fds 4 and up).  The child reads its configuration from the control channel
(children never read the ini file), sets up its role, tells the launcher it
is ready, and runs the reactor until told to stop or until the launcher goes
away.

Every child but the log daemon also gets its log client here
(L{okws_twisted.wire.logsender.RecordSender}): the bootstrap takes the ``log``
channels the launcher sends, forwards the process's warnings and errors to
the error log, hands the client to the role for its access records, and on
stop waits (bounded) for the log daemon to acknowledge the last records
before the process exits.

A jailed child is the init (pid 1) of its own PID namespace: the kernel
delivers it no signal from the launcher that it has no handler for (SIGKILL
aside), so the bootstrap handles SIGTERM (exit at once, status 143), and its
identity is the pid the launcher put in its config, never C{os.getpid()}.
A C{MemoryError} anywhere is fatal (status 70): a process that ran out of its
memory limit is relaunched whole rather than left half-working.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import socket
import sys
from typing import Any, NoReturn

CONFIG_TIMEOUT = 30.0
#: The exit status of a child that got SIGTERM (as if killed by it: 128 + 15).
EXIT_TERMINATED = 128 + signal.SIGTERM
#: The exit status of a child that ran out of memory (EX_SOFTWARE).
EXIT_OUT_OF_MEMORY = 70
#: Every child's umask, whatever the launcher's (docs/security.md).
CHILD_UMASK = 0o027

#: Each role's C{start_role}, imported only in a child of that role (the
#: dispatcher never imports service code, jinja2 or the author API).
ROLES = {
    "logd": "okws_twisted.logd:start_role",
    "dispatcher": "okws_twisted.dispatcher:start_role",
    "service": "okws_twisted.service:start_role",
    "pubd": "okws_twisted.pubd:start_role",
    "tls": "okws_twisted.tlsfront:start_role",
    "dbproxy": "okws_twisted.dbproxy:start_role",
}

#: Modules a role's process never loads: C{None} in C{sys.modules} makes importing them fail
#: (C{ImportError}), which their standard library users handle.  Set before anything else is
#: imported: Twisted imports C{http.client} (for C{twisted.python.compat}'s C{http.cookiejar}),
#: which imports C{ssl} if it can, and C{hashlib} loads OpenSSL's C{_hashlib}; together they map
#: the system's libcrypto and libssl, 5 MiB of a database proxy's RSS, for nothing: the proxy
#: speaks no TLS (psycopg's libpq brings its own), and hashlib has built-in SHA-2.
UNUSED_MODULES: dict[str, tuple[str, ...]] = {
    "dbproxy": ("ssl", "_ssl", "_hashlib"),
}


def bare_lines(event: dict[str, Any]) -> str:
    """A child's log event for its stderr: each line C{LEVEL text}, no time, no namespace.

    The launcher adds its own (twistd's) timestamp and the child's name and pid
    (L{okws_twisted.launcher.children.ChildProcess}), so every line reaches
    twistd's log once, with one of each.
    """
    from twisted.logger import LogLevel, eventAsText

    text = eventAsText(event, includeTimestamp=False, includeSystem=False, includeTraceback=True)
    level = event.get("log_level", LogLevel.info)
    name = level.name if isinstance(level, LogLevel) else "info"
    return "".join(f"{name} {line}\n" for line in text.rstrip("\n").split("\n"))


def _log_to_stderr() -> None:
    from twisted.logger import (
        FileLogObserver,
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
    )

    observer = FilteringLogObserver(FileLogObserver(sys.stderr, bare_lines), [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _exit_on_memory_error(event: dict[str, Any]) -> None:
    """A log observer: a logged C{MemoryError} ends the process, which the launcher relaunches.

    Whoever caught it (twisted.web's render, a Deferred) carries on otherwise,
    in a process whose allocations fail at random.
    """
    failure = event.get("log_failure")
    if failure is not None and getattr(failure, "check", None) is not None and failure.check(MemoryError):
        os.write(2, b"okws child: out of memory (MemoryError); exiting\n")
        os._exit(EXIT_OUT_OF_MEMORY)


def load_resource(spec: str, base_dir: str) -> Any:
    """Import ``package.module:Class`` with the site directory first on sys.path."""
    if base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    return import_spec(spec)


def describe_failure(error: BaseException, base_dir: str) -> str:
    """One line naming where the site's code failed: C{services/x.py:12: SyntaxError: invalid syntax}.

    The place is the syntax error's own, else the last frame of the traceback
    inside the site's directory (shown relative to it); an error with no such
    frame (a module that does not exist) is shown alone.
    """
    import traceback

    what = traceback.format_exception_only(type(error), error)[-1].strip()
    if isinstance(error, SyntaxError) and error.filename:
        place: tuple[str, int | None] | None = (error.filename, error.lineno)
        what = f"{type(error).__name__}: {error.msg}"
    else:
        place = None
        for frame in traceback.extract_tb(error.__traceback__):
            if _inside(frame.filename, base_dir):
                place = (frame.filename, frame.lineno)
    if place is None or not _inside(place[0], base_dir):
        return what
    return f"{os.path.relpath(place[0], base_dir)}:{place[1]}: {what}"


def site_traceback(error: BaseException, base_dir: str) -> str:
    """C{error}'s traceback from the first frame of the site's own code (okws's and importlib's left out).

    Empty when no frame is the site's (a module that does not exist).
    """
    import traceback

    tb = error.__traceback__
    while tb is not None and not _inside(tb.tb_frame.f_code.co_filename, base_dir):
        tb = tb.tb_next
    if tb is None and not isinstance(error, SyntaxError):
        return ""  # nothing of the site's: the one line says it all (a module that does not exist)
    return "".join(traceback.format_exception(type(error), error, tb))


def _inside(path: str, directory: str) -> bool:
    return os.path.isabs(path) and os.path.commonpath([path, directory]) == directory


def import_spec(spec: str) -> Any:
    """The object named by ``package.module:name``."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _needs_tls(role: str, meta: dict[str, Any], site: Any) -> bool:
    """Only the TLS front and services that may reach the network load pyOpenSSL."""
    if role == "tls":
        return True
    if role == "service":
        service = next((s for s in site.services if s.name == meta.get("service")), None)
        return service is not None and service.network == "host"
    return False


def main(argv: list[str]) -> NoReturn:
    for name in UNUSED_MODULES.get(argv[1] if len(argv) > 1 else "", ()):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from okws_twisted.config import SiteConfig
    from okws_twisted.interfaces import IChildRole
    from okws_twisted.wire import control, limits
    from okws_twisted.wire.channel import Message, MessageChannel, read_one_blocking

    # Children never inherit the launcher's umask (twistd's daemon default is
    # 077): what a child creates is the owner's and its group's, at most.
    os.umask(CHILD_UMASK)
    role = argv[1] if len(argv) > 1 else ""
    ctl_sock = socket.socket(fileno=control.CONTROL_FD)
    first = read_one_blocking(ctl_sock, CONFIG_TIMEOUT, limits.CONTROL_CHILD)
    if first.kind != control.CONFIG or first.meta.get("role") != role:
        print(f"okws child: expected a {role} config, got {first.kind}", file=sys.stderr)
        sys.exit(2)
    site = SiteConfig.from_json(first.payload.decode("utf-8"))
    if "jail" in first.meta:
        from okws_twisted.jail import JailError, JailSpec, enter

        try:
            enter(JailSpec.from_json(first.meta["jail"]))
        except (JailError, OSError, KeyError, ValueError) as e:
            print(f"okws child {role}: cannot enter its jail: {e}", file=sys.stderr)
            os._exit(3)
    # Our pid as the launcher and the host see it, for code that names its process.
    os.environ["OKWS_PID"] = str(first.meta.get("pid", os.getpid()))
    # A PID namespace's init gets no SIGTERM without a handler.
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(EXIT_TERMINATED))
    if not _needs_tls(role, first.meta, site):
        # Twisted's reactor imports pyOpenSSL (about 12 MiB per process) if it
        # can.  A process that neither terminates TLS nor can reach the
        # network has no use for it: leave it out.
        sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    _log_to_stderr()

    # The launcher decides when children stop; a terminal's Ctrl-C reaches the
    # whole process group and must not cut requests short here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogPublisher
    from twisted.python.failure import Failure

    globalLogPublisher.addObserver(_exit_on_memory_error)

    from okws_twisted.wire import logchannel
    from okws_twisted.wire.logsender import EventForwarder, RecordSender

    exit_code = [0]

    def stop_reactor() -> None:
        if reactor.running:
            reactor.stop()

    def launcher_gone(reason: Failure) -> None:
        stop_reactor()

    spec = ROLES.get(role)
    if spec is None:
        print(f"okws child: unknown role {role!r}", file=sys.stderr)
        sys.exit(2)
    records: RecordSender | None = None
    stopped = stop_reactor
    if role != "logd":
        records = RecordSender(reactor, site.log_buffer)
        globalLogPublisher.addObserver(EventForwarder(records))

        def stopped() -> None:
            assert records is not None
            records.idle().addBoth(lambda _: stop_reactor())

    start_role = import_spec(spec)
    try:
        child = IChildRole(start_role(reactor, site, first.meta, stopped, records))
    except Exception as e:
        # A service that no longer imports (changed on disk since the check):
        # where, in one line, then the traceback.
        name = argv[2] if len(argv) > 2 else role
        trace = site_traceback(e, site.base_dir).rstrip("\n")
        lines = [f"{name} cannot start: {describe_failure(e, site.base_dir)}", *(trace.split("\n") if trace else [])]
        sys.stderr.write("".join(f"error {line}\n" for line in lines))
        sys.stderr.flush()
        os._exit(1)

    def on_control(batch: list[Message]) -> None:
        for msg in batch:
            try:
                handle(msg)
            except Exception:
                # One bad message (or a role's bug) must not cut the child off
                # from the launcher.
                Logger(namespace="okws.bootstrap").failure("handling {kind} from the launcher failed", kind=msg.kind)

    def handle(msg: Message) -> None:
        if msg.kind == control.PEER and len(msg.fds) == 1:
            if records is not None and msg.meta.get("channel") == logchannel.CHANNEL:
                records.attach(socket.socket(fileno=msg.fds[0]))
                return
            child.peer(str(msg.meta.get("channel")), msg.meta, socket.socket(fileno=msg.fds[0]))
            return
        msg.close_fds()
        if msg.kind == control.PING:
            ctl.send({"k": control.PONG, "n": msg.meta.get("n"), "stats": child.stats()})
        elif msg.kind == control.CONFIG_UPDATE:
            child.update_config(SiteConfig.from_json(msg.payload.decode("utf-8")))
        elif msg.kind == control.STOP:
            child.stop(float(msg.meta.get("drain", 0)), bool(msg.meta.get("handback", False)))
        else:
            child.control(msg.kind, msg.meta)

    ctl = MessageChannel(reactor, ctl_sock, on_control, launcher_gone, name="control", limits=limits.CONTROL_CHILD)
    if hasattr(child, "to_launcher"):
        child.to_launcher = lambda meta: ctl.send(meta) if ctl.connected else None
    ctl.send({"k": control.READY, "pid": first.meta.get("pid", os.getpid())})
    # Everything made at start-up (modules, configuration, the role's objects) lives as long as
    # the process: out of the collector's generations, a full collection under load scans only
    # what requests made, a shorter pause in the latency tail.
    gc.freeze()
    reactor.run(installSignalHandlers=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code[0])


if __name__ == "__main__":
    main(sys.argv)
