"""
What every response okws writes says about itself (issue 15, items 2, 4, 5 and 6), on a live site.

Each answer (the dispatcher's own, a service's, a service's framer's refusal, the admin
listener's) carries exactly one C{Date} (RFC 9110 6.6.1) within a few seconds of now and
exactly one C{Server: okws-twisted}; status lines use RFC 9110's reason phrases; a 404 or
C{OPTIONS *} leaves a kept-alive connection usable; a service's 405 has a Content-Length.
Real processes and HTTP over loopback (see L{tests.e2e}).
"""

from __future__ import annotations

import atexit
import email.utils
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import E2ETestCase, Response, Site, free_port, read_response, request_bytes
from tests.test_e2e_operations import ctl

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello

[service:form]
resource = services.form:Form
paths = /form
max_body = 100

[service:failing]
resource = tests.sites.failing:Failing
paths = /failing

[service:slow]
resource = tests.sites.slowstart:NeverReady
paths = /slow
lazy = yes
"""

#: Raw requests, each on a fresh connection, and the status okws answers with.
DISPATCHER_ANSWERS = [
    ("400 two Host fields", b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("404 no service", request_bytes("GET", "/nowhere"), 404),
    ("404 HEAD", request_bytes("HEAD", "/nowhere"), 404),
    ("413 declared body", request_bytes("POST", "/form", {"Content-Length": "101"}), 413),
    ("414 request line", request_bytes("GET", "/hello?" + "a" * 9000), 414),
    ("431 head", request_bytes("GET", "/hello", {"X-Big": "b" * 17000}), 431),
    ("501 CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    ("505 version", b"GET /hello HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("200 OPTIONS *", request_bytes("OPTIONS", "*"), 200),
    ("503 no instance in time", request_bytes("GET", "/slow"), 503),
]

#: Answers from the services: their own (200, 405, 500) and their framers' refusals.
SERVICE_ANSWERS = [
    ("200 service", request_bytes("GET", "/hello"), 200),
    ("405 service", request_bytes("OPTIONS", "/hello"), 405),
    ("500 service", request_bytes("GET", "/failing"), 500),
    ("400 bad chunk size (service framer)",
     request_bytes("GET", "/form") + request_bytes("POST", "/form", {"Transfer-Encoding": "chunked"}) + b"zz\r\n", 400),
    ("413 body over max_body (service framer)",
     request_bytes("GET", "/form") + request_bytes("POST", "/form", {"Transfer-Encoding": "chunked"})
     + b"65\r\n" + b"m" * 101 + b"\r\n0\r\n\r\n", 413),
    ("400 bad second request (service framer)",
     request_bytes("GET", "/form") + b"GET /form HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
]


def exchange(site: Site, data: bytes, responses: int = 1, head: bool = False) -> list[Response]:
    with site.connect() as s:
        s.sendall(data)
        return [read_response(s, head_request=head) for _ in range(responses)]


def raw_head(site: Site, data: bytes, skip: int = 0) -> list[bytes]:
    """The header lines, as sent (to count repeated fields), of response C{skip + 1}.

    With C{skip}, the connection must end after that response (okws's framing refusals close it).
    """
    with site.connect() as s:
        s.sendall(data)
        buf = b""
        while True:
            if not skip and b"\r\n\r\n" in buf:
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    for _ in range(skip):
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        buf = rest[length[0]:]
    return buf.split(b"\r\n\r\n")[0].split(b"\r\n")


def assert_stamped(test: SynchronousTestCase, lines: list[bytes], what: str, server: bytes | None = b"okws-twisted") -> None:
    """One Date (IMF-fixdate, now) and one Server (or none) among a response's header lines."""
    dates = [l for l in lines if l.lower().startswith(b"date:")]
    servers = [l for l in lines if l.lower().startswith(b"server:")]
    test.assertEqual(len(dates), 1, f"{what}: {lines!r}")
    when = email.utils.parsedate_to_datetime(dates[0].split(b":", 1)[1].strip().decode())
    test.assertLess(abs(when.timestamp() - time.time()), 5, f"{what}: {dates[0]!r}")
    test.assertTrue(dates[0].endswith(b" GMT"), what)
    if server is None:
        test.assertEqual(servers, [], what)
    else:
        test.assertEqual(servers, [b"Server: " + server], what)


def admin_head(port: int, data: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\r\n\r\n")[0].split(b"\r\n")


class StampTests(E2ETestCase):
    site: Site | None = None
    admin = 0

    @classmethod
    def live(cls) -> Site:
        if cls.site is None:
            cls.admin = free_port()
            site = Site(SERVICES, f"admin = tcp:{cls.admin}\nqueue_timeout = 1\nhead_timeout = 2\n")
            # One site for the class; trial runs no class fixtures, so it goes at exit.
            atexit.register(site.close)
            site.start()
            cls.site = site
        return cls.site

    def assertStamped(self, lines: list[bytes], what: str) -> None:
        assert_stamped(self, lines, what)

    def test_dispatcher_answers(self) -> None:
        site = self.live()
        for what, data, status in DISPATCHER_ANSWERS:
            lines = raw_head(site, data)
            self.assertTrue(lines[0].startswith(b"HTTP/1.1 %d " % status), f"{what}: {lines[0]!r}")
            self.assertStamped(lines, what)

    def test_timeout_408(self) -> None:
        site = self.live()
        with site.connect() as s:
            s.sendall(b"GET /hello HTTP/1.1\r\n")
            s.settimeout(10)
            data = s.recv(65536)
        lines = data.split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 408 Request Timeout")
        self.assertStamped(lines, "408")

    def test_service_answers(self) -> None:
        site = self.live()
        for what, data, status in SERVICE_ANSWERS:
            skip = data.count(b" HTTP/1.1\r\n") - 1
            lines = raw_head(site, data, skip=skip)
            self.assertTrue(lines[0].startswith(b"HTTP/1.1 %d " % status), f"{what}: {lines[0]!r}")
            self.assertStamped(lines, what)

    def test_admin_answers(self) -> None:
        self.live()
        for what, data in (("health", request_bytes("GET", "/health")), ("metrics", request_bytes("GET", "/metrics")),
                           ("admin 404", request_bytes("GET", "/nope")), ("admin 405", request_bytes("POST", "/health"))):
            self.assertStamped(admin_head(self.admin, data), what)

    def test_reason_phrases(self) -> None:
        """RFC 9110's phrases, not the ones Python and Twisted still carry."""
        site = self.live()
        for data, line in ((request_bytes("POST", "/form", {"Content-Length": "101"}), b"HTTP/1.1 413 Content Too Large"),
                           (request_bytes("GET", "/hello?" + "a" * 9000), b"HTTP/1.1 414 URI Too Long")):
            self.assertEqual(raw_head(site, data)[0], line)
        with site.connect() as s:
            s.sendall(request_bytes("GET", "/form") + request_bytes("POST", "/form", {"Transfer-Encoding": "chunked"})
                      + b"65\r\n" + b"m" * 101 + b"\r\n0\r\n\r\n")
            read_response(s)
            self.assertEqual(read_response(s).reason, "Content Too Large")

    def test_405_has_content_length(self) -> None:
        [r] = exchange(self.live(), request_bytes("OPTIONS", "/hello"))
        self.assertEqual(r.status, 405)
        self.assertEqual(r.header("allow"), "GET, HEAD")
        self.assertIsNone(r.header("transfer-encoding"))
        self.assertEqual(int(r.header("content-length") or -1), len(r.body))
        self.assertIn(b"405 Method Not Allowed", r.body)


class KeepAliveTests(E2ETestCase):
    """A missing favicon costs no new connection: 404 and C{OPTIONS *} keep it."""

    def test_404_then_the_page(self) -> None:
        site = StampTests.live()
        with site.connect() as s:
            s.sendall(request_bytes("GET", "/favicon.ico"))
            r = read_response(s)
            self.assertEqual((r.status, r.header("connection")), (404, None))
            s.sendall(request_bytes("GET", "/hello"))
            self.assertEqual(read_response(s).status, 200)
            s.sendall(request_bytes("OPTIONS", "*"))
            self.assertEqual(read_response(s).status, 200)
            s.sendall(request_bytes("GET", "/hello"))
            self.assertEqual(read_response(s).status, 200)

    def test_pipelined(self) -> None:
        site = StampTests.live()
        rs = exchange(site, request_bytes("GET", "/a") + request_bytes("GET", "/b") + request_bytes("GET", "/hello"), 3)
        self.assertEqual([r.status for r in rs], [404, 404, 200])

    def test_404_with_a_body_closes(self) -> None:
        site = StampTests.live()
        with site.connect() as s:
            s.sendall(request_bytes("POST", "/nowhere", body=b"abc"))
            r = read_response(s)
            self.assertEqual((r.status, r.header("connection")), (404, "close"))
            s.settimeout(10)
            self.assertEqual(s.recv(100), b"")


class ServerHeaderTests(E2ETestCase):
    """C{[okws] server_header}: another value, or none at all; applied on reload."""

    def test_reload(self) -> None:
        admin = free_port()
        site = Site(SERVICES.split("[service:slow]")[0], f"admin = tcp:{admin}\nserver_header = acme/1\n")
        self.addCleanup(site.close)
        site.start()

        def heads() -> list[list[bytes]]:
            return [raw_head(site, request_bytes("GET", "/nowhere")), raw_head(site, request_bytes("GET", "/hello")),
                    raw_head(site, request_bytes("GET", "/failing")), admin_head(admin, request_bytes("GET", "/health"))]

        for lines in heads():
            assert_stamped(self, lines, "acme", b"acme/1")
        with open(site.ini) as f:
            text = f.read()
        with open(site.ini, "w") as f:
            f.write(text.replace("server_header = acme/1", "server_header ="))
        p = ctl(site, "reload")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        for lines in heads():
            assert_stamped(self, lines, "none", None)
