"""
Virtual hosts end to end (issue 16): real ``twistd okws`` sites routing by host, then path.

Requests are written as raw bytes over loopback so each Host is exactly what the test says;
which service answered is told by the process that answered (the echo service's
C{X-Okws-Pid}, matched against the launcher's "started NAME as pid" lines), never by okws's
own word.  421 over TLS is in L{tests.test_e2e_tls}.
"""

from __future__ import annotations

import json
import os
import socket
import time

from twisted.trial.unittest import SkipTest

from tests.e2e import (
    E2ETestCase,
    Response,
    Site,
    free_port,
    pids_holding_socket,
    read_response,
    request_bytes,
    socket_inode_of_server_side,
    wait_until,
)
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
        by_pid = {pid: name.rsplit(".", 1)[0] for name, pid in site.pids().items()}
        with site.connect() as s:
            r = ask(s, "elsewhere.example")
            self.assertEqual(r.status, 404)
            # The dispatcher's 404 keeps the connection; the next request is routed by its own host.
            self.assertNotEqual(r.header("connection"), "close")
            r = ask(s, "www.example.test")
            self.assertEqual((r.status, by_pid.get(int(r.header("x-okws-pid") or 0))), (200, "www"))
            self.assertEqual(ask(s, "elsewhere.example").status, 404)
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


class StaticPoolHostTests(E2ETestCase):
    """A static pool routes by host as a service does: its C{hosts}, or with the hostless fallback.

    C{[static:assets]} serves C{/static} on www and admin (relayed: C{isolation = request});
    C{[static:public]} has no hosts, so it serves C{/public} on every host nobody names, and
    never on www, which its own service takes whole.  Which root a file came from is told by
    its bytes, which service answered by C{X-Okws-Pid}.
    """

    #: www and admin as in L{SERVICES}, with the two pools.
    SERVICES = SERVICES[: SERVICES.index("[service:tenants]")] + """
[static:assets]
root = assets
paths = /static
hosts = www.example.test admin.example.test
isolation = request

[static:public]
root = public
paths = /public
"""

    #: Big enough to take many reads through the relay.
    BIG = bytes(range(256)) * 4096

    def setUp(self) -> None:
        self.site = Site(self.SERVICES, OKWS)
        self.addCleanup(self.site.close)
        for root, text in (("assets", b"from assets\n"), ("public", b"from public\n")):
            os.makedirs(os.path.join(self.site.dir, root))
            with open(os.path.join(self.site.dir, root, "a.txt"), "wb") as f:
                f.write(text)
        with open(os.path.join(self.site.dir, "assets", "big.bin"), "wb") as f:
            f.write(self.BIG)
        self.site.start()
        self.by_pid = {pid: name.rsplit(".", 1)[0] for name, pid in self.site.pids().items()}

    def fetch(self, host: str, target: str) -> tuple[int, bytes, str | None]:
        with self.site.connect() as s:
            r = ask(s, host, target)
        pid = r.header("x-okws-pid")
        return r.status, r.body, (self.by_pid.get(int(pid)) if pid else None)

    def test_hostsAndFallback(self) -> None:
        for host in ("www.example.test", "ADMIN.example.test:8080"):
            self.assertEqual(self.fetch(host, "/static/a.txt")[:2], (200, b"from assets\n"), host)
        for host in ("elsewhere.example", "127.0.0.1"):
            self.assertEqual(self.fetch(host, "/public/a.txt")[:2], (200, b"from public\n"), host)
            # assets names its hosts: no other host reaches it.
            self.assertEqual(self.fetch(host, "/static/a.txt")[0], 404, host)
        # www is named: the hostless pool's path is www's service's there, no fall-through.
        status, body, served = self.fetch("www.example.test", "/public/a.txt")
        self.assertEqual((status, served), (200, "www"))
        self.assertNotIn(b"from public", body)

    def test_oneConnectionAcrossServicesAndPools(self) -> None:
        """www's service, the relayed pool on www then admin, admin's service: in order, pipelined too."""
        with self.site.connect() as s:
            steps = [
                ("www.example.test", "/x"), ("www.example.test", "/static/big.bin"),
                ("admin.example.test", "/static/a.txt"), ("admin.example.test", "/y"),
            ]
            got = [ask(s, host, target) for host, target in steps]
            self.assertEqual([r.status for r in got], [200] * 4)
            self.assertEqual(got[1].body, self.BIG)
            self.assertEqual(got[2].body, b"from assets\n")
            self.assertEqual([self.by_pid[int(got[i].header("x-okws-pid"))] for i in (0, 3)], ["www", "admin"])
            s.sendall(b"".join(request_bytes("GET", t, headers={"Host": h}) for h, t in reversed(steps)))
            again = [read_response(s) for _ in steps]
            self.assertEqual([r.status for r in again], [200] * 4)
            self.assertEqual((again[0].header("x-okws-pid") is not None, again[1].body, again[2].body),
                             (True, b"from assets\n", self.BIG))
            self.assertEqual(self.by_pid[int(again[3].header("x-okws-pid"))], "www")

    def test_relayedPoolNeverHoldsTheSocket(self) -> None:
        """/proc: after the relayed pool's answer the client's TCP socket is the dispatcher's alone;
        after www's (a connection service) it is www's, and back again after the pool's."""
        if os.geteuid() != 0:
            raise SkipTest("needs root: services must run jailed, as in production")
        pids = self.site.pids()
        with self.site.connect() as s:
            for host, target, holder in (
                ("www.example.test", "/static/a.txt", "dispatcher"),
                ("www.example.test", "/x", "www.0"),
                ("admin.example.test", "/static/a.txt", "dispatcher"),
            ):
                self.assertEqual(ask(s, host, target).status, 200)
                inode = socket_inode_of_server_side(self.site.port, s.getsockname()[1])
                wait_until(lambda: set(pids_holding_socket(inode)) == {pids[holder]}, 10,
                           f"{host}{target}: the client's socket held by {holder} alone")
