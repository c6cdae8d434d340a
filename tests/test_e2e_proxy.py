"""
End-to-end tests of the PROXY protocol: okws behind a load balancer, over loopback.

A real ``twistd -n okws`` with a C{haproxy:} listener; clients are raw
sockets (to choose the claimed address), C{curl --haproxy-protocol}, and a
real HAProxy (the Debian package) started in front of okws.  Loopback is a
whole /8, so a client can connect from 127.0.0.5 to a listener on 127.0.0.1:
that is how a test tells the claimed or real client apart from the balancer.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap

from twisted.trial.unittest import SkipTest

from tests.dispatcher.test_proxyproto import v2
from tests.e2e import E2ETestCase, Site, free_port, read_response, request_bytes

SERVICES = """
[service:echo]
resource = tests.sites.echo:Echo
paths = /echo
"""

OKWS = """
restart_delay_min = 0.2
restart_delay_max = 2
head_timeout = 5
proxy_trusted = 127.0.0.1 127.0.0.3
  ::1
"""

BALANCER = "127.0.0.1"
UNTRUSTED = "127.0.0.4"
#: The client that reaches okws through HAProxy: not the address HAProxy connects from.
FAR_CLIENT = "127.0.0.5"

_shared: Site | None = None


def shared_site() -> Site:
    """A site whose one listener takes PROXY headers (started once per run)."""
    global _shared
    if _shared is None:
        site = Site(SERVICES, OKWS, listen="haproxy:tcp:{port}:interface=127.0.0.1")
        atexit.register(site.close)
        _shared = site.start()
    return _shared


def connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def closed_without_answer(sock: socket.socket) -> bool:
    """The server closed (or reset) the connection without sending a byte."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


class RawHeaderTests(E2ETestCase):
    """Headers written by hand, so the claimed client differs from the real one."""

    def setUp(self) -> None:
        self.site = shared_site()

    def echo(self, header: bytes, path: str = "/echo") -> dict:
        with connect_from(BALANCER, self.site.port) as s:
            s.sendall(header + request_bytes("GET", path, {"Connection": "close"}))
            r = read_response(s)
        self.assertEqual(r.status, 200, r)
        return json.loads(r.body)

    def test_v1(self) -> None:
        seen = self.echo(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n")
        self.assertEqual(seen["client"], ["203.0.113.7", 5555])

    def test_v2ipv6(self) -> None:
        seen = self.echo(v2(family=0x21))
        self.assertEqual(seen["client"], ["2001:db8::7", 5555])

    def test_v2local(self) -> None:
        """LOCAL (a balancer's health check): the connection's own address stays."""
        seen = self.echo(v2(command=0, family=0, block=b""))
        self.assertEqual(seen["client"][0], BALANCER)

    def test_accessLogNamesTheClaimedClient(self) -> None:
        """Both the service's records and the dispatcher's own answers (404)."""
        self.echo(b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 80\r\n", "/echo?case=proxylog")
        with connect_from(BALANCER, self.site.port) as s:
            s.sendall(b"PROXY TCP4 198.51.100.10 127.0.0.1 5555 80\r\n" + request_bytes("GET", "/nowhere?case=proxy404", {"Connection": "close"}))
            self.assertEqual(read_response(s).status, 404)
        text = self.site.wait_for_log("access.log", lambda t: "case=proxylog " in t and "case=proxy404 " in t)
        lines = {line.split('"')[1]: line for line in text.splitlines() if "case=proxy" in line}
        self.assertTrue(lines["GET /echo?case=proxylog HTTP/1.1"].startswith("198.51.100.9 "), lines)
        self.assertTrue(lines["GET /nowhere?case=proxy404 HTTP/1.1"].startswith("198.51.100.10 "), lines)

    def test_keepAliveKeepsTheClaimedClient(self) -> None:
        """The header comes once; every request on the connection is from that client."""
        with connect_from(BALANCER, self.site.port) as s:
            s.sendall(b"PROXY TCP4 203.0.113.8 127.0.0.1 6000 80\r\n")
            for _ in range(2):
                s.sendall(request_bytes("GET", "/echo"))
                r = read_response(s)
                self.assertEqual(json.loads(r.body)["client"], ["203.0.113.8", 6000])

    def test_noHeaderClosed(self) -> None:
        with connect_from(BALANCER, self.site.port) as s:
            s.sendall(request_bytes("GET", "/echo"))
            self.assertTrue(closed_without_answer(s))

    def test_untrustedClosed(self) -> None:
        """From outside proxy_trusted even a well-formed header gets the connection closed."""
        with connect_from(UNTRUSTED, self.site.port) as s:
            s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n" + request_bytes("GET", "/echo"))
            self.assertTrue(closed_without_answer(s))
        self.site.wait_for(r"closing a connection from 127\.0\.0\.4: not in proxy_trusted")


class CurlTests(E2ETestCase):
    """curl's own PROXY v1 support: C{--haproxy-protocol}."""

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        self.site = shared_site()

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", *args, f"http://127.0.0.1:{self.site.port}/echo"],
            capture_output=True, text=True, timeout=30,
        )

    def test_haproxyProtocol(self) -> None:
        """curl sends its own address in the header: the trusted 127.0.0.3."""
        done = self.curl("--haproxy-protocol", "--interface", "127.0.0.3")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["client"][0], "127.0.0.3")

    def test_withoutHeader(self) -> None:
        done = self.curl("--interface", "127.0.0.3")
        self.assertIn(done.returncode, (52, 56), done)  # empty reply, or reset
        self.assertEqual(done.stdout, "")

    def test_untrusted(self) -> None:
        done = self.curl("--haproxy-protocol", "--interface", UNTRUSTED)
        # Closed at once: curl reports an empty reply (52), a reset (56), or,
        # when the close beats its own getpeername(), a send failure (55).
        self.assertIn(done.returncode, (52, 55, 56), done)
        self.assertEqual(done.stdout, "")


class HAProxyTests(E2ETestCase):
    """A real HAProxy in front of okws: one frontend sends v1, another v2."""

    def setUp(self) -> None:
        haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
        if haproxy is None:
            raise SkipTest("haproxy is not installed (Debian: apt-get install haproxy)")
        self.site = shared_site()
        self.dir = tempfile.mkdtemp(prefix="okws-haproxy-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.v1_port, self.v2_port = free_port(), free_port()
        pidfile = os.path.join(self.dir, "haproxy.pid")
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(textwrap.dedent(f"""\
                global
                    maxconn 100
                defaults
                    mode http
                    timeout connect 5s
                    timeout client 10s
                    timeout server 10s
                frontend v1
                    bind 127.0.0.1:{self.v1_port}
                    default_backend okws_v1
                frontend v2
                    bind 127.0.0.1:{self.v2_port}
                    default_backend okws_v2
                backend okws_v1
                    server okws 127.0.0.1:{self.site.port} send-proxy
                backend okws_v2
                    server okws 127.0.0.1:{self.site.port} send-proxy-v2
                """))
        # -D: the command returns once HAProxy has bound its listeners and gone
        # to the background, so the test needs no wait of its own.
        done = subprocess.run([haproxy, "-D", "-q", "-f", cfg, "-p", pidfile], capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(pidfile) as f:
            pid = int(f.read().split()[0])
        self.addCleanup(_kill, pid)

    def via(self, port: int, path: str) -> dict:
        with connect_from(FAR_CLIENT, port) as s:
            s.sendall(request_bytes("GET", path, {"Connection": "close"}))
            r = read_response(s)
        self.assertEqual(r.status, 200, r)
        return json.loads(r.body)

    def test_v1(self) -> None:
        self.assertEqual(self.via(self.v1_port, "/echo?case=haproxy1")["client"][0], FAR_CLIENT)

    def test_v2(self) -> None:
        self.assertEqual(self.via(self.v2_port, "/echo?case=haproxy2")["client"][0], FAR_CLIENT)
        text = self.site.wait_for_log("access.log", lambda t: "case=haproxy2 " in t)
        (line,) = [line for line in text.splitlines() if "case=haproxy2 " in line]
        self.assertTrue(line.startswith(FAR_CLIENT + " "), line)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
