"""Tests for L{okws_twisted.launcher.listeners}: taking a listening socket from systemd (socket activation)."""

from __future__ import annotations

import os
import socket

from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config.listeners import parse_listener
from okws_twisted.launcher.listeners import ListenError, open_listener


class SystemdTests(SynchronousTestCase):
    def listening(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, listen: bool = True) -> int:
        sock = socket.socket(family, kind)
        sock.bind(("127.0.0.1", 0) if family == socket.AF_INET else ("::1", 0))
        if listen:
            sock.listen(1)
        fd = sock.detach()
        os.set_inheritable(fd, True)  # as systemd passes it
        self.addCleanup(_close, fd)
        return fd

    def test_by_index_and_name(self) -> None:
        a, b = self.listening(), self.listening(socket.AF_INET6)
        passed = ListenFDs([a, b], ["web", "web6"])
        got = open_listener(parse_listener("systemd:domain=INET:index=0", "/"), passed)
        self.assertEqual(got.fileno(), a)
        self.assertFalse(os.get_inheritable(a), "kept from every child it is not passed to")
        got.detach()
        got = open_listener(parse_listener("systemd:domain=INET6:name=web6", "/"), passed)
        self.assertEqual((got.fileno(), got.family), (b, socket.AF_INET6))
        got.detach()

    def test_missing(self) -> None:
        e = self.assertRaises(ListenError, open_listener, parse_listener("systemd:domain=INET:index=1", "/"),
                              ListenFDs([self.listening()], ["web"]))
        self.assertIn("systemd passed 1 socket(s), so there is no index 1", str(e))
        self.assertIn("LISTEN_PID", str(e))
        e = self.assertRaises(ListenError, open_listener, parse_listener("systemd:domain=INET:name=http", "/"),
                              ListenFDs([self.listening()], ["web"]))
        self.assertIn("no socket named 'http' (have: web;", str(e))

    def test_not_from_systemd(self) -> None:
        """Outside systemd (no LISTEN_PID for this process) there is nothing to take."""
        e = self.assertRaises(ListenError, open_listener, parse_listener("systemd:domain=INET:index=0", "/"),
                              ListenFDs.fromEnvironment({"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}))
        self.assertIn("systemd passed 0 socket(s)", str(e))

    def test_wrong_sockets(self) -> None:
        cases = {
            "systemd:domain=INET6:index=0": (self.listening(), "a AF_INET SOCK_STREAM socket; expected a listening INET6"),
            "systemd:domain=INET:index=0": (self.listening(kind=socket.SOCK_DGRAM, listen=False),
                                            "a AF_INET SOCK_DGRAM socket, not listening"),
            "systemd:domain=INET:name=x": (self.listening(listen=False), "a AF_INET SOCK_STREAM socket, not listening"),
        }
        for description, (fd, message) in cases.items():
            listener = parse_listener(description, "/")
            e = self.assertRaises(ListenError, open_listener, listener, ListenFDs([fd], ["x"]))
            self.assertIn(message, str(e))
            os.fstat(fd)  # still open: refused, not closed


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
