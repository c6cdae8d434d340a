# -*- test-case-name: tests.test_e2e_operations -*-
"""
The launcher's control socket, which ``okws-ctl`` talks to (OKWS's okmgr channel).

A Unix stream socket (mode 0600, owned by the launcher's user; never TCP:
OKWS removed its TCP management port for lacking authentication).  Besides
the file mode, every connection's peer credentials (``SO_PEERCRED``) are
checked: only root and the launcher's own user may give commands.

One request per line, one answer per line, both JSON::

    {"cmd": "status"}                      -> {"ok": true, "result": {...}}
    {"cmd": "relaunch", "service": "hello"} (or "all": true)
    {"cmd": "reload"}
    {"cmd": "rotate-logs"}
    {"cmd": "stop"}
    anything wrong                         -> {"ok": false, "error": "..."}
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

if TYPE_CHECKING:
    from okws_twisted.launcher.site import Launcher

MAX_LINE = 64 * 1024


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlProtocol(LineOnlyReceiver):
    """One okws-ctl connection."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger(namespace="okws")

    def __init__(self, launcher: "Launcher") -> None:
        self.launcher = launcher

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport.getHandle())
        if uid not in (0, os.getuid()):
            self.log.warn("refused a control connection from uid {uid}", uid=uid)
            self._answer({"ok": False, "error": "permission denied"})
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("expected a JSON object with a 'cmd'")
        except ValueError as e:
            self._answer({"ok": False, "error": f"bad request: {e}"})
            return
        d = defer.maybeDeferred(self._run, request)
        d.addCallback(lambda result: {"ok": True, "result": result})
        d.addErrback(lambda f: {"ok": False, "error": f.getErrorMessage()})
        d.addCallback(self._answer)

    def _run(self, request: dict[str, Any]) -> Any:
        cmd = request["cmd"]
        launcher = self.launcher
        self.log.info("okws-ctl: {cmd}", cmd=cmd)
        if cmd == "status":
            return launcher.status()
        if cmd == "relaunch":
            if request.get("all"):
                return {"relaunched": launcher.relaunch(None)}
            service = request.get("service")
            if not isinstance(service, str):
                raise ValueError("relaunch needs a service name or all")
            return {"relaunched": launcher.relaunch(service)}
        if cmd == "reload":
            return launcher.reload()
        if cmd == "rotate-logs":
            return launcher.rotate_logs()
        if cmd == "stop":
            launcher.reactor.callLater(0, launcher.reactor.stop)
            return {"stopping": True}
        raise ValueError(f"unknown command {cmd!r}")

    def _answer(self, answer: dict[str, Any]) -> None:
        self.sendLine(json.dumps(answer, separators=(",", ":")).encode("utf-8"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer({"ok": False, "error": "request too long"})
        self.transport.loseConnection()


class ControlFactory(Factory):
    noisy = False

    def __init__(self, launcher: "Launcher") -> None:
        self.launcher = launcher

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self.launcher)


def listen_control(launcher: "Launcher") -> Any:
    """Listen on the configured control socket, replacing a stale one."""
    path = launcher.config.control_socket
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)
    try:
        return launcher.reactor.listenUNIX(path, ControlFactory(launcher), mode=0o600)
    finally:
        os.umask(old_umask)
