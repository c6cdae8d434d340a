# -*- test-case-name: tests.test_e2e_core -*-
"""
The first code every okws child runs (the child side of OKWS's okld).

The launcher spawns ``python -m okws_twisted.bootstrap ROLE`` with the
control channel on fd 3 (and, for the dispatcher, the listening sockets on
fds 4 and up).  The child reads its configuration from the control channel
(children never read the ini file), sets up its role, tells the launcher it
is ready, and runs the reactor until told to stop or until the launcher goes
away.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
from typing import Any, NoReturn

CONFIG_TIMEOUT = 30.0


def _log_to_stderr() -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)


def load_resource(spec: str, base_dir: str) -> Any:
    """Import ``package.module:Class`` with the site directory first on sys.path."""
    if base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: list[str]) -> NoReturn:
    from okws_twisted import control
    from okws_twisted.channel import Message, MessageChannel, read_one_blocking
    from okws_twisted.config import SiteConfig

    role = argv[1] if len(argv) > 1 else ""
    ctl_sock = socket.socket(fileno=control.CONTROL_FD)
    first = read_one_blocking(ctl_sock, CONFIG_TIMEOUT)
    if first.kind != control.CONFIG or first.meta.get("role") != role:
        print(f"okws child: expected a {role} config, got {first.kind}", file=sys.stderr)
        sys.exit(2)
    site = SiteConfig.from_json(first.payload.decode("utf-8"))
    _log_to_stderr()

    # The launcher decides when children stop; a terminal's Ctrl-C reaches the
    # whole process group and must not cut requests short here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from twisted.internet import reactor
    from twisted.python.failure import Failure

    exit_code = [0]

    def stop_reactor() -> None:
        if reactor.running:
            reactor.stop()

    def launcher_gone(reason: Failure) -> None:
        stop_reactor()

    if role == "dispatcher":
        from okws_twisted.dispatcher import Dispatcher

        count = int(first.meta.get("listeners", 0))
        socks = [socket.socket(fileno=control.FIRST_LISTEN_FD + i) for i in range(count)]
        dispatcher = Dispatcher(reactor, site, stopped=stop_reactor)

        def dispatcher_control(batch: list[Message]) -> None:
            for msg in batch:
                if msg.kind == control.PEER and len(msg.fds) == 1:
                    dispatcher.add_instance(
                        str(msg.meta["service"]), int(msg.meta["index"]), int(msg.meta["pid"]), socket.socket(fileno=msg.fds[0])
                    )
                elif msg.kind == control.STOP:
                    dispatcher.stop()
                else:
                    for fd in msg.fds:
                        os.close(fd)

        ctl = MessageChannel(reactor, ctl_sock, dispatcher_control, launcher_gone, name="control")
        dispatcher.listen(socks)
    elif role == "service":
        from okws_twisted.runtime import ServiceRuntime

        name, index = str(first.meta["service"]), int(first.meta["index"])
        service = next(s for s in site.services if s.name == name)
        resource = load_resource(service.resource, site.base_dir)()
        runtime = ServiceRuntime(reactor, site, service, index, resource, exited=stop_reactor)

        def service_control(batch: list[Message]) -> None:
            for msg in batch:
                if msg.kind == control.PEER and len(msg.fds) == 1:
                    runtime.set_dispatcher(socket.socket(fileno=msg.fds[0]))
                elif msg.kind == control.STOP:
                    runtime.drain()
                else:
                    for fd in msg.fds:
                        os.close(fd)

        ctl = MessageChannel(reactor, ctl_sock, service_control, launcher_gone, name="control")
    else:
        print(f"okws child: unknown role {role!r}", file=sys.stderr)
        sys.exit(2)

    ctl.send({"k": control.READY, "pid": os.getpid()})
    reactor.run(installSignalHandlers=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code[0])


if __name__ == "__main__":
    main(sys.argv)
