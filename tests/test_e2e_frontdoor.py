"""
End-to-end tests of the front door: strict HTTP, limits, slow clients, overload.

Every test talks to a real ``twistd -n okws`` over loopback (L{tests.e2e}).
Two sites are started once each and shared:

  - the I{front} site serves the corpus (L{tests.http_corpus}) with the
    default size limits and short timeouts, and takes the slow-client,
    keep-alive and fuzzing tests;
  - the I{load} site has a small connection high-water mark and a service
    capped at two connections per instance, for the overload tests.

Facts about which process holds which connection come from the kernel
(C{/proc/net/tcp} and C{/proc/PID/fd}), not from okws.  Waits are bounded
and wait for an event (a response, a close, a log line, a socket leaving the
dispatcher); the only fixed waits are the ones that check that something does
I{not} happen for a while.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import resource
import signal
import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import e2e
from tests.e2e import E2ETestCase, Response, Site, form_token, read_response, request_bytes, wait_until
from tests.http_corpus import CORPUS, HELLO_GET, SERVICES_INI, Case

# -- the sites -------------------------------------------------------------------

HEAD_TIMEOUT = 5.0
BODY_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 1.0
MAX_REQUESTS = 3

FRONT_OKWS = f"""
body_min_rate = 0
head_timeout = {HEAD_TIMEOUT}
body_timeout = {BODY_TIMEOUT}
keepalive_timeout = {KEEPALIVE_TIMEOUT}
max_requests_per_connection = {MAX_REQUESTS}
"""

HIGH_WATER = 20
LOW_WATER = 10
QUEUE_TIMEOUT = 3.0
RETRY_AFTER = 7

LOAD_OKWS = f"""
max_connections = {HIGH_WATER}
resume_connections = {LOW_WATER}
queue_timeout = {QUEUE_TIMEOUT}
retry_after = {RETRY_AFTER}
head_timeout = 30
keepalive_timeout = 30
"""

LOAD_SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello

[service:capped]
resource = tests.sites.echo:Echo
paths = /capped
max_connections = 2
"""

#: How long a response to a simple request may take on a loaded 2-core machine.
PROMPT = 3.0
#: Bound on every other wait for something that must happen.
WAIT = 10.0

#: File descriptors the 1,000-slow-clients test needs, in this process and in the dispatcher.
NOFILE = 4096

_sites: dict[str, Site] = {}


def _raise_nofile() -> None:
    """Raise this process's fd limits to NOFILE before a site starts (its processes inherit them).

    Root (with CAP_SYS_RESOURCE) raises the hard limit too; otherwise the soft one goes up to the
    hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
            return
        except (ValueError, OSError):
            pass
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _shared(name: str, services: str, okws: str, ready: tuple[str, ...]) -> Site:
    site = _sites.get(name)
    if site is None:
        _raise_nofile()
        site = Site(services, okws).start()
        atexit.register(site.close)
        # "site ready" can precede the dispatcher's link to the last instance.
        for service in ready:
            site.wait_for(rf"instance {service}\.0 \(pid \d+\) is ready")
        _sites[name] = site
    return site


def front_site() -> Site:
    return _shared("front", SERVICES_INI, FRONT_OKWS, ("hello", "echo", "form"))


def load_site() -> Site:
    return _shared("load", LOAD_SERVICES, LOAD_OKWS, ("hello", "capped"))


# -- kernel facts ------------------------------------------------------------------


def _server_sockets(server_port: int) -> dict[int, int]:
    """Client port -> inode of the server side, for loopback connections to C{server_port}."""
    out: dict[int, int] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            cols = row.split()
            local, remote, inode = cols[1], cols[2], int(cols[9])
            if inode and int(local.rsplit(":", 1)[1], 16) == server_port:
                out[int(remote.rsplit(":", 1)[1], 16)] = inode
    return out


def dispatcher_has_no_clients(site: Site) -> bool:
    """No client connection to the site's port is held by the dispatcher or waits in its listen
    queue (an established or half-closed socket with no descriptor yet): what an earlier test on
    the shared site opened is gone, so the dispatcher's count starts from this test's."""
    held = e2e.socket_inodes(site.pids()["dispatcher"])
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            cols = row.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], int(cols[9])
            if int(local.rsplit(":", 1)[1], 16) != site.port or int(remote.rsplit(":", 1)[1], 16) == 0:
                continue
            if inode in held or (inode == 0 and state in ("01", "08")):  # ESTABLISHED, CLOSE_WAIT
                return False
    return True


def held_by_dispatcher(site: Site, client_ports: list[int]) -> set[int]:
    """Which of these client connections the dispatcher process holds an fd for."""
    held = e2e.socket_inodes(site.pids()["dispatcher"])
    servers = _server_sockets(site.port)
    return {p for p in client_ports if servers.get(p) in held}


# -- client helpers ------------------------------------------------------------------


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def read_final(sock: socket.socket, head_only: bool = False) -> Response:
    """The next final response (interim 1xx responses skipped)."""
    while True:
        r = read_response(sock, head_request=head_only)
        if r.status >= 200:
            return r


def assert_closed(test: E2ETestCase, sock: socket.socket, within: float = PROMPT) -> float:
    """The server closes (we read EOF, nothing more) within C{within} s; return how long it took."""
    start = time.monotonic()
    reader = e2e._readers.get(id(sock))
    leftover = reader.buf if reader is not None and reader.sock is sock else b""
    sock.settimeout(within)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        data = b""
    except socket.timeout:
        test.fail(f"the server did not close the connection within {within}s")
    test.assertEqual(leftover + data, b"", "bytes after the last response")
    return time.monotonic() - start


def assert_silent(test: E2ETestCase, sock: socket.socket, for_seconds: float, what: str) -> None:
    """Nothing arrives and the connection stays open for C{for_seconds} (a fixed wait by nature)."""
    sock.settimeout(for_seconds)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return
    test.fail(f"{what}: got {data[:200]!r} within {for_seconds}s")


def parse_raw_response(data: bytes) -> tuple[int, dict[str, str]]:
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """Everything until EOF, and whether EOF came within C{within} s."""
    deadline = time.monotonic() + within
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


class _Sockets:
    """Client sockets a test opens; all closed at cleanup."""

    def __init__(self, test: E2ETestCase, site: Site) -> None:
        self.site = site
        self.all: list[socket.socket] = []
        test.addCleanup(self.close_all)

    def open(self, data: bytes = b"", timeout: float = WAIT) -> socket.socket:
        s = self.site.connect(timeout)
        self.all.append(s)
        if data:
            s.sendall(data)
        return s

    def close_all(self) -> None:
        ports = []
        for s in self.all:
            try:
                ports.append(port_of(s))
            except OSError:
                pass
            s.close()
        self.all = []
        # Leave the dispatcher as we found it: the next test counts its connections.
        wait_until(lambda: not held_by_dispatcher(self.site, ports), WAIT, "the dispatcher let go of our connections")


PARTIAL_HEAD = b"GET /hello HTTP/1.1\r\nHost: loc"


# -- the corpus, live ----------------------------------------------------------------


class CorpusTests(E2ETestCase):
    """Every corpus case on a fresh connection to one live site."""

    def run_case(self, case: Case) -> None:
        site = front_site()
        pids = site.pids()
        with site.connect(WAIT) as s:
            s.sendall(case.raw)
            if case.half_close:
                s.shutdown(socket.SHUT_WR)
            for i, exchange in enumerate(case.exchanges):
                what = f"{case.name} ({case.rfc}), response {i + 1}"
                try:
                    r = read_final(s, exchange.head_only)
                except (ConnectionError, socket.timeout) as e:
                    self.fail(f"{what}: no response ({e!r}); expected {exchange.status}")
                self.assertEqual(r.status, exchange.status, f"{what}: {r.reason} {r.body[:300]!r}")
                if exchange.kept:
                    # Framing intact: the same connection carries the next request.
                    self.assertIsNone(r.header("connection"), what)
                    self.assertEqual(i, len(case.exchanges) - 1)
                    s.sendall(HELLO_GET)
                    self.assertEqual(read_final(s, False).status, 200, f"{what}: the next request on the connection")
                    continue
                if exchange.refused:
                    self.assertEqual(r.header("connection"), "close", what)
                    self.assertEqual(i, len(case.exchanges) - 1)
                    assert_closed(self, s)
                    continue
                if r.status == 200:
                    pid = r.header("x-okws-pid")
                    self.assertEqual(pid, str(pids[f"{exchange.service}.0"]), f"{what}: answered by the wrong process")
                    if exchange.service == "echo" and not exchange.head_only:
                        info = json.loads(r.body)
                        self.assertEqual(info["path"].encode("latin-1"), exchange.path, what)
                        self.assertEqual(info["prepath"], ["echo"], what)
                elif r.status == 405:
                    self.assertIsNotNone(r.header("allow"), what)
                if _keeps_alive(exchange.request):
                    self.assertNotEqual(r.header("connection"), "close", f"{what}: a service answer keeps the connection")


def _keeps_alive(request: bytes) -> bool:
    """Whether the client asked to keep the connection (RFC 9112 9.3)."""
    first, _, fields = request.lstrip(b"\r\n").partition(b"\r\n")
    fields = fields.lower()
    if b"connection: close" in fields:
        return False
    return not first.endswith(b"HTTP/1.0") or b"connection: keep-alive" in fields


def _add_corpus_tests() -> None:
    for case in CORPUS:

        def test(self: CorpusTests, case: Case = case) -> None:
            self.run_case(case)

        test.__name__ = f"test_{case.name}"
        test.__doc__ = f"{case.name} ({case.rfc}) -> {' '.join(map(str, case.statuses))}"
        setattr(CorpusTests, test.__name__, test)


_add_corpus_tests()


class PreciseAnswerTests(E2ETestCase):
    def test_connect_405_names_allowed_methods(self) -> None:
        """RFC 9110 15.5.6: a 405 MUST carry Allow (or CONNECT gets 501, which needs none)."""
        site = front_site()
        with site.connect(WAIT) as s:
            s.sendall(b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n")
            r = read_response(s)
        self.assertIn(r.status, (405, 501))
        if r.status == 405:
            self.assertIsNotNone(r.header("allow"), "405 without an Allow header")


# -- slow clients ----------------------------------------------------------------------


class SlowClientTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = front_site()
        self.socks = _Sockets(self, self.site)

    def test_head_drip_cut_at_deadline(self) -> None:
        """A head dripped byte by byte gets 408 at head_timeout; the drip does not extend it."""
        head = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Drip: " + b"d" * 200 + b"\r\n\r\n"
        s = self.socks.open()
        start = time.monotonic()
        sent = 0
        data = b""
        while time.monotonic() - start < HEAD_TIMEOUT + PROMPT:
            try:
                s.sendall(head[sent : sent + 1])
            except OSError:
                break
            sent += 1
            s.settimeout(0.5)  # one byte every half second, unless the answer comes
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            break
        elapsed = time.monotonic() - start
        self.assertTrue(data, f"no answer within {elapsed:.1f}s of dripping")
        rest, closed = read_until_closed(s, PROMPT)
        status, headers = parse_raw_response(data + rest)
        self.assertEqual(status, 408)
        self.assertEqual(headers.get("connection"), "close")
        self.assertTrue(closed, "not closed after the 408")
        self.assertLess(sent, len(head), "the head was complete")
        self.assertGreaterEqual(sent, int(HEAD_TIMEOUT / 0.5) - 2, "the drip was not kept up")
        self.assertGreater(elapsed, HEAD_TIMEOUT - 0.5, "cut before head_timeout")
        self.assertLess(elapsed, HEAD_TIMEOUT + PROMPT, "the drip extended the deadline")

    def test_stalled_body_cut_by_body_timeout(self) -> None:
        s = self.socks.open(request_bytes("POST", "/form", {"Content-Length": "100"}) + b"message=ab")
        start = time.monotonic()
        r = read_response(s)
        elapsed = time.monotonic() - start
        self.assertEqual(r.status, 408)
        self.assertEqual(r.header("connection"), "close")
        assert_closed(self, s)
        self.assertGreater(elapsed, BODY_TIMEOUT - 0.5)
        self.assertLess(elapsed, BODY_TIMEOUT + PROMPT)

    def test_body_timeout_is_between_reads(self) -> None:
        """A body that keeps arriving, each piece within body_timeout, is not cut."""
        cookie, token = form_token(self.site, "/form")
        body = b"message=" + b"x" * 7
        pieces = [body[i : i + 5] for i in range(0, len(body), 5)]
        s = self.socks.open(request_bytes("POST", "/form", {"Content-Length": str(len(body)), "Cookie": cookie,
                                                            "X-CSRF-Token": token}))
        start = time.monotonic()
        # Gaps longer than keepalive_timeout, shorter than body_timeout: the
        # idle timeout is for between requests, not inside one.
        gap = (KEEPALIVE_TIMEOUT + BODY_TIMEOUT) / 2
        for piece in pieces:
            assert_silent(self, s, gap, "answered before the body was complete")
            s.sendall(piece)
        self.assertGreater(time.monotonic() - start, BODY_TIMEOUT, "the body took less than body_timeout")
        r = read_response(s)
        self.assertEqual(r.status, 200)

    def test_thousand_slow_clients_do_not_block_a_normal_one(self) -> None:
        _raise_nofile()  # done before the site started; never skip for want of descriptors
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertTrue(
            soft == resource.RLIM_INFINITY or soft >= 1200,
            f"needs 1,200 file descriptors; the limits are {soft}/{hard} (root raises them itself)",
        )
        start = time.monotonic()
        slow = [self.socks.open(PARTIAL_HEAD) for _ in range(1000)]
        ports = [port_of(s) for s in slow]
        wait_until(
            lambda: len(held_by_dispatcher(self.site, ports)) == 1000, WAIT, "the dispatcher holds the 1,000 slow clients"
        )
        t = time.monotonic()
        r = self.site.get("/hello", timeout=WAIT)
        took = time.monotonic() - t
        self.assertEqual(r.status, 200)
        self.assertLess(took, PROMPT, f"a normal client waited {took:.2f}s")
        still = len(held_by_dispatcher(self.site, ports))
        self.assertEqual(still, 1000, f"{still} slow clients held {time.monotonic() - start:.1f}s after the first")

    def test_idle_keepalive_closed(self) -> None:
        s = self.socks.open(request_bytes("GET", "/hello"))
        r = read_response(s)
        self.assertEqual(r.status, 200)
        self.assertNotEqual(r.header("connection"), "close")
        took = assert_closed(self, s, KEEPALIVE_TIMEOUT + PROMPT)
        self.assertGreater(took, KEEPALIVE_TIMEOUT - 0.3, "closed before keepalive_timeout")

    def test_next_head_dripped_on_keepalive_is_cut(self) -> None:
        """On a kept-alive connection, a dripped next head does not hold it open past keepalive_timeout."""
        s = self.socks.open(request_bytes("GET", "/hello"))
        self.assertEqual(read_response(s).status, 200)
        head = request_bytes("GET", "/hello", {"X-Drip": "d" * 100})
        start = time.monotonic()
        data, closed = b"", False
        for i in range(len(head)):
            try:
                s.sendall(head[i : i + 1])
            except OSError:
                closed = True
                break
            s.settimeout(0.2)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if time.monotonic() - start > KEEPALIVE_TIMEOUT + PROMPT:
                break
        elapsed = time.monotonic() - start
        self.assertTrue(closed, f"still open after {elapsed:.1f}s of dripping")
        self.assertLess(elapsed, KEEPALIVE_TIMEOUT + PROMPT)
        if data:
            self.assertEqual(parse_raw_response(data)[0], 408)


# -- keep-alive rules ---------------------------------------------------------------------


class KeepAliveRuleTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = front_site()
        self.socks = _Sockets(self, self.site)

    def test_max_requests_per_connection(self) -> None:
        s = self.socks.open(b"".join(request_bytes("GET", f"/hello?name=r{i}") for i in range(MAX_REQUESTS + 1)))
        for i in range(MAX_REQUESTS):
            r = read_response(s)
            self.assertEqual(r.status, 200)
            self.assertIn(f"Hello, r{i}!".encode(), r.body)
            if i < MAX_REQUESTS - 1:
                self.assertNotEqual(r.header("connection"), "close", f"response {i + 1}")
            else:
                self.assertEqual(r.header("connection"), "close", "the last allowed response")
        assert_closed(self, s)

    def test_connection_close_honoured(self) -> None:
        s = self.socks.open(request_bytes("GET", "/hello", {"Connection": "close"}) + request_bytes("GET", "/hello"))
        r = read_response(s)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("connection"), "close")
        assert_closed(self, s)

    def test_connection_close_among_options(self) -> None:
        """RFC 9112 9.6: a "close" option, wherever it is in the list, closes after the response."""
        for value in ("close, x-opt", "x-opt,close", "close,x-opt"):
            s = self.socks.open(request_bytes("GET", "/hello", {"Connection": value}))
            r = read_response(s)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("connection"), "close", f"Connection: {value}")
            assert_closed(self, s, KEEPALIVE_TIMEOUT / 2)

    def test_absolute_form_seen_in_origin_form(self) -> None:
        authority = f"127.0.0.1:{self.site.port}"
        s = self.socks.open(
            f"GET http://{authority}/echo/a/b?x=1 HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
        )
        r = read_response(s)
        self.assertEqual(r.status, 200)
        info = json.loads(r.body)
        self.assertEqual((info["path"], info["prepath"], info["postpath"]), ("/echo/a/b", ["echo"], ["a", "b"]))


# -- overload ---------------------------------------------------------------------------------


class HighLowWaterTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = load_site()
        self.socks = _Sockets(self, self.site)

    def test_stops_accepting_at_high_water_resumes_at_low_water(self) -> None:
        # The site is shared: an earlier test's connections, still closing on a loaded machine,
        # would be counted with this test's and leave during it.
        wait_until(lambda: dispatcher_has_no_clients(self.site), WAIT, "the dispatcher holding no earlier client")
        mark = self.site.mark()
        held = [self.socks.open(PARTIAL_HEAD) for _ in range(HIGH_WATER)]
        m = self.site.wait_for(r"(\d+) open connections: not accepting until (\d+)", WAIT, after=mark)
        self.assertEqual(m.groups(), (str(HIGH_WATER), str(LOW_WATER)))
        client = self.socks.open(request_bytes("GET", "/hello", {"Connection": "close"}))
        assert_silent(self, client, 1.0, "served while the dispatcher is at its high-water mark")

        # Down to 15: still above the low-water mark.
        closing = [port_of(s) for s in held[:5]]
        for s in held[:5]:
            s.close()
        wait_until(lambda: not held_by_dispatcher(self.site, closing), WAIT, "the dispatcher saw 5 clients leave")
        assert_silent(self, client, 1.0, "served above the low-water mark")
        self.site.drain_log()
        self.assertFalse([l for l in self.site.lines[mark:] if "accepting again" in l])

        # Down to 5: at or below the low-water mark, so accepting again.
        mark = self.site.mark()
        for s in held[5:15]:
            s.close()
        self.site.wait_for(r"open connections: accepting again", WAIT, after=mark)
        start = time.monotonic()
        client.settimeout(WAIT)
        r = read_response(client)
        self.assertEqual(r.status, 200)
        self.assertLess(time.monotonic() - start, PROMPT)

    def test_no_accepts_past_high_water_in_one_wakeup(self) -> None:
        """Connections already queued in the kernel when the mark is reached stay there."""
        pid = self.site.pids()["dispatcher"]
        mark = self.site.mark()
        os.kill(pid, signal.SIGSTOP)
        try:
            # All queued in the kernel before the dispatcher wakes up once.
            burst = [self.socks.open(PARTIAL_HEAD) for _ in range(HIGH_WATER + 10)]
        finally:
            os.kill(pid, signal.SIGCONT)
        self.site.wait_for(r"open connections: not accepting until", WAIT, after=mark)
        # The first connection was accepted first: finish its head, so its answer
        # proves the dispatcher is past the wakeup that accepted the burst.
        burst[0].sendall(b"alhost\r\nConnection: close\r\n\r\n")
        self.assertEqual(read_response(burst[0]).status, 200)
        accepted = held_by_dispatcher(self.site, [port_of(s) for s in burst[1:]])
        self.assertLessEqual(len(accepted), HIGH_WATER, f"accepted {len(accepted) + 1} with max_connections={HIGH_WATER}")


class InstanceCapTests(E2ETestCase):
    """[service:capped] max_connections = 2: a third connection waits, then 503 or service."""

    def setUp(self) -> None:
        self.site = load_site()
        self.socks = _Sockets(self, self.site)

    def hold(self, n: int) -> list[socket.socket]:
        held = []
        for _ in range(n):
            s = self.socks.open(request_bytes("GET", "/capped"))
            self.assertEqual(read_response(s).status, 200)
            held.append(s)
        return held

    def test_queued_then_503(self) -> None:
        held = self.hold(2)
        third = self.socks.open(request_bytes("GET", "/capped"))
        start = time.monotonic()
        r = read_response(third)
        elapsed = time.monotonic() - start
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("retry-after"), str(RETRY_AFTER))
        self.assertEqual(r.header("connection"), "close")
        assert_closed(self, third)
        self.assertGreater(elapsed, QUEUE_TIMEOUT - 0.5, "refused without waiting in the queue")
        self.assertLess(elapsed, QUEUE_TIMEOUT + PROMPT)
        for s in held:  # the held connections are unharmed
            s.sendall(request_bytes("GET", "/capped"))
            self.assertEqual(read_response(s).status, 200)

    def test_queued_then_served_when_one_closes(self) -> None:
        held = self.hold(2)
        third = self.socks.open(request_bytes("GET", "/capped"))
        assert_silent(self, third, 0.7, "served while the instance was at its cap")
        held[0].close()
        start = time.monotonic()
        r = read_response(third)
        self.assertEqual(r.status, 200)
        self.assertLess(time.monotonic() - start, QUEUE_TIMEOUT - 0.7)

    def test_other_service_unaffected(self) -> None:
        self.hold(2)
        start = time.monotonic()
        self.assertEqual(self.site.get("/hello", timeout=WAIT).status, 200)
        self.assertLess(time.monotonic() - start, PROMPT)


# -- fuzzing the live server ------------------------------------------------------------------

_VALID_REQUESTS = sorted({e.request for c in CORPUS for e in c.exchanges if not e.refused and len(e.request) < 2048})
_INTERESTING = [
    b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\x00", b" ", b"\t", b":", b"\r\n ", b"\xff", b"%", b"/../", b"#",
    b"Content-Length: 5\r\n", b"Content-Length: 99999999\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n", b"Host: x\r\n", b"Expect: 100-continue\r\n", b"Connection: close\r\n",
    b"0\r\n\r\n", b"ffff\r\n", b"HTTP/1.1", b"HTTP/2.0", b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
]


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(_VALID_REQUESTS), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "duplicate"]))
        i = draw(st.integers(0, len(data)))
        if op == "set" and data:
            data[i % len(data)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.sampled_from(_INTERESTING))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[i:]
        else:
            j = draw(st.integers(0, len(data)))
            data[i:i] = data[min(i, j) : max(i, j)][:256]
    return bytes(data)


class LiveFuzzTests(E2ETestCase):
    def test_random_and_mutated_bytes_never_stop_the_site(self) -> None:
        site = front_site()
        mark = site.mark()
        examples = []

        @settings(
            max_examples=120,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )
        @given(st.one_of(st.binary(max_size=600), mutated_requests()), st.lists(st.integers(0, 2000), max_size=2))
        def throw(payload: bytes, cuts: list[int]) -> None:
            examples.append(payload)
            with site.connect(WAIT) as s:
                pieces = [payload[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(payload)])]
                try:
                    for piece in pieces:
                        if piece:
                            s.sendall(piece)
                    s.shutdown(socket.SHUT_WR)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused before everything was sent
                except OSError as e:
                    if e.errno != errno.ENOTCONN:
                        raise
                    # Answered and closed (reset) before the client's half-close.
                answer, closed = read_until_closed(s, PROMPT + BODY_TIMEOUT)
            self.assertTrue(closed, f"not closed after the client half-closed; got {answer[:200]!r}")
            if answer:
                # twisted.web answers an HTTP/1.0 request with an HTTP/1.0 status line.
                self.assertRegex(answer[:13], rb"^HTTP/1\.[01] [1-5][0-9][0-9] ")
            r = site.get("/hello", timeout=WAIT)
            self.assertEqual(r.status, 200, "a well-formed request after the fuzz example")

        throw()
        self.assertGreaterEqual(len(examples), 100)
        site.drain_log()
        relaunched = [line for line in site.lines[mark:] if re.search(r"started \S+ as pid", line)]
        self.assertEqual(relaunched, [], "a child was relaunched during the fuzz")


class OptionsAsteriskTests(E2ETestCase):
    def test_options_asterisk_names_the_methods(self) -> None:
        site = Site("[service:hello]\nresource = services.plain:Hello\npaths = /\n")
        self.addCleanup(site.close)
        site.start()
        with site.connect() as s:
            s.sendall(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n")
            r = read_response(s)
        self.assertEqual(r.status, 200)
        self.assertIn("GET", r.header("allow"))
        self.assertEqual(r.header("content-length"), "0")
