"""
Virtual hosts end to end (issue 16): real ``twistd okws`` sites routing by host, then path.

Requests are written as raw bytes over loopback so each Host is exactly what the test says;
which service answered is told by the process that answered (the echo service's
C{X-Okws-Pid}, matched against the launcher's "started NAME as pid" lines), never by okws's
own word.  421 over TLS is in L{tests.test_e2e_tls}.
"""

from __future__ import annotations

import json
import socket
import time

from tests.e2e import E2ETestCase, Response, Site, free_port, read_response, request_bytes
from tests.test_e2e_operations import _metric

#: www and admin are named exactly, tenants by a wildcard; other serves every other host.
SERVICES = """
[service:www]
resource = tests.sites.echo:Echo
paths = /
hosts = www.example.test

[service:admin]
resource = tests.sites.echo:Echo
paths = /
hosts = admin.example.test

[service:tenants]
resource = tests.sites.echo:Echo
paths = /
hosts = *.example.org

[service:other]
resource = tests.sites.echo:Echo
paths = /other
"""

OKWS = """
head_timeout = 10
access_log_fields = combined host
"""

_shared: Site | None = None
_admin_port = 0


def shared_site() -> Site:
    global _shared, _admin_port
    if _shared is None:
        import atexit

        _admin_port = free_port()
        site = Site(SERVICES, OKWS + f"admin = tcp:{_admin_port}\n")
        atexit.register(site.close)
        _shared = site.start()
    return _shared


def ask(sock: socket.socket, host: str | None, target: str = "/x", version: str = "HTTP/1.1") -> Response:
    """One request with exactly this Host (none if L{None}) on a kept-alive connection."""
    lines = [f"GET {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return read_response(sock)


class HostRoutingTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = shared_site()
        self.by_pid = {pid: name.rsplit(".", 1)[0] for name, pid in self.site.pids().items()}

    def served_by(self, host: str | None, target: str = "/x", version: str = "HTTP/1.1") -> tuple[int, str | None]:
        with self.site.connect() as s:
            r = ask(s, host, target, version)
        pid = r.header("x-okws-pid")
        return r.status, (self.by_pid.get(int(pid)) if pid else None)

    def test_exact(self) -> None:
        self.assertEqual(self.served_by("www.example.test"), (200, "www"))
        self.assertEqual(self.served_by("admin.example.test"), (200, "admin"))

    def test_caseAndPort(self) -> None:
        """Host names compare case-insensitively, without the port (and one final dot)."""
        self.assertEqual(self.served_by("ADMIN.Example.TEST:8080"), (200, "admin"))
        self.assertEqual(self.served_by("admin.example.test."), (200, "admin"))

    def test_wildcard(self) -> None:
        """*.example.org takes one or more labels, never the bare domain."""
        self.assertEqual(self.served_by("a.example.org"), (200, "tenants"))
        self.assertEqual(self.served_by("a.b.example.org"), (200, "tenants"))
        self.assertEqual(self.served_by("example.org", "/other"), (200, "other"))

    def test_noHostsFallback(self) -> None:
        """Services without hosts serve every host nobody names, by path; no fall-through to them."""
        self.assertEqual(self.served_by("unknown.example", "/other/1"), (200, "other"))
        self.assertEqual(self.served_by("127.0.0.1", "/other"), (200, "other"))
        self.assertEqual(self.served_by(None, "/other", "HTTP/1.0"), (200, "other"))
        self.assertEqual(self.served_by("unknown.example", "/x"), (404, None))
        # www is named: its host is its own, even for a path only "other" serves.
        self.assertEqual(self.served_by("www.example.test", "/other"), (200, "www"))

    def test_absoluteForm(self) -> None:
        """The absolute-form target's authority is the host (RFC 9112 3.2.2)."""
        self.assertEqual(self.served_by("admin.example.test", "http://admin.example.test/x"), (200, "admin"))
        self.assertEqual(self.served_by(None, "http://a.example.org/x", "HTTP/1.0"), (200, "tenants"))
        self.assertEqual(self.served_by("www.example.test", "http://admin.example.test/x")[0], 400)

    def test_handbackAcrossHosts(self) -> None:
        """One keep-alive connection: www -> admin -> www -> a tenant, each answered by its own service, in order."""
        with self.site.connect() as s:
            seen = []
            for host in ("www.example.test", "admin.example.test", "www.example.test", "t.example.org"):
                r = ask(s, host)
                self.assertEqual(r.status, 200)
                self.assertNotEqual(r.header("connection"), "close")
                seen.append(self.by_pid[int(r.header("x-okws-pid"))])
            self.assertEqual(seen, ["www", "admin", "www", "tenants"])
            # Pipelined across hosts: in order.
            s.sendall(b"".join(
                request_bytes("GET", "/p", headers={"Host": h})
                for h in ("admin.example.test", "www.example.test", "admin.example.test")
            ))
            order = [self.by_pid[int(read_response(s).header("x-okws-pid"))] for _ in range(3)]
            self.assertEqual(order, ["admin", "www", "admin"])

    def test_accessLogAndMetricsCarryTheHost(self) -> None:
        """The access log has the client's host (normalized); the metrics only configured patterns."""
        with self.site.connect() as s:
            ask(s, "Q.Example.ORG:81", "/logged-host")
        with self.site.connect() as s:
            ask(s, "nobody.example", "/x")
        text = self.site.wait_for_log("access.log", lambda t: "/logged-host" in t)
        line = next(l for l in text.splitlines() if "/logged-host" in l)
        self.assertTrue(line.endswith(" q.example.org"), line)
        deadline = time.monotonic() + 20
        while True:
            with socket.create_connection(("127.0.0.1", _admin_port), timeout=10) as s:
                s.sendall(request_bytes("GET", "/metrics", {"Connection": "close"}))
                page = read_response(s).body.decode()
            if _metric(page, "okws_requests_total", service="tenants", host="*.example.org", code="200"):
                break
            self.assertLess(time.monotonic(), deadline, page)
            time.sleep(0.2)  # an external counter: instances report once a second
        self.assertGreaterEqual(_metric(page, "okws_requests_total", service="-", host="-", code="404") or 0, 1)
        self.assertNotIn("q.example.org", page)
        self.assertNotIn("nobody.example", page)


class DefaultHostTests(E2ETestCase):
    """Without services for every host: unknown hosts get 404, or default_host's services."""

    SERVICES = """
    [service:www]
    resource = tests.sites.echo:Echo
    paths = /
    hosts = www.example.test
    """

    def test_unknownHost404(self) -> None:
        site = Site(self.SERVICES, OKWS)
        self.addCleanup(site.close)
        site.start()
        with site.connect() as s:
            r = ask(s, "elsewhere.example")
            self.assertEqual(r.status, 404)
            self.assertEqual(r.header("connection"), "close")
        with site.connect() as s:
            self.assertEqual(ask(s, None, "/x", "HTTP/1.0").status, 404)

    def test_defaultHost(self) -> None:
        site = Site(self.SERVICES, OKWS + "default_host = www.example.test\n")
        self.addCleanup(site.close)
        site.start()
        with site.connect() as s:
            r = ask(s, "elsewhere.example")
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(r.body)["path"], "/x")
            self.assertEqual(r.header("x-okws-pid"), str(site.pids()["www.0"]))
