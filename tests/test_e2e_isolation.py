"""
Per-request isolation end to end (issue 16): services with C{isolation = request} never hold a
client's socket.

Real ``twistd okws`` sites over loopback, as root (CI is root), so the services run jailed as in
production.  What the tests check comes from outside okws: the kernel's socket tables
(C{/proc/net/tcp}, C{/proc/PID/fd}), the dispatcher's memory (C{/proc/PID/status}), which
process answered (C{X-Okws-Pid}), and, for the hostile service, what that service itself says it
read from its own end of the connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time

from tests.e2e import (
    E2ETestCase,
    Response,
    Site,
    pids_holding_socket,
    process_exists,
    read_response,
    request_bytes,
    socket_inode_of_server_side,
    socket_inodes,
    wait_until,
)

IS_ROOT = os.geteuid() == 0

SERVICES = """
[service:a]
resource = tests.sites.relayed:Relayed
paths = /a
isolation = request
max_body = 32M

[service:b]
resource = tests.sites.echo:Echo
paths = /b

[service:c]
resource = tests.sites.relayed:Relayed
paths = /c
isolation = request
"""

OKWS = """
head_timeout = 10
restart_delay_min = 0.2
restart_delay_max = 1
"""

SECRET = "session=S3CRET-COOKIE-4711"
AUTH = "Basic YWxpY2U6d29uZGVybGFuZA=="

_shared: Site | None = None


def shared_site() -> Site:
    global _shared
    if _shared is None:
        import atexit

        site = Site(SERVICES, OKWS)
        atexit.register(site.close)
        _shared = site.start()
    return _shared


def get(sock: socket.socket, path: str, **headers: str) -> Response:
    sock.sendall(request_bytes("GET", path, headers))
    return read_response(sock)


def tcp_inodes() -> set[int]:
    """Every TCP socket's inode on the machine, from /proc/net/tcp and tcp6."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            out.update(int(row.split()[9]) for row in f)
    return out - {0}


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class IsolationTestCase(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: services must run jailed, as in production"

    def setUp(self) -> None:
        self.site = shared_site()

    def pid_of(self, name: str) -> int:
        return self.site.pids()[name]


class SocketTests(IsolationTestCase):
    """/proc: the client's TCP socket is held by the dispatcher only, never by the instance."""

    def test_clientSocketStaysInTheDispatcher(self) -> None:
        with self.site.connect() as s:
            s.sendall(request_bytes("GET", "/a/slow?seconds=3"))
            # The response has begun: the request is in the instance now.
            head = s.recv(4096)
            self.assertIn(b"200 OK", head)
            inode = socket_inode_of_server_side(self.site.port, s.getsockname()[1])
            holders = set(pids_holding_socket(inode))
            self.assertEqual(holders, {self.pid_of("dispatcher")})
            instance = self.pid_of("a.0")
            held = socket_inodes(instance)
            self.assertTrue(held, "the instance holds no socket at all")
            self.assertEqual(held & tcp_inodes(), set(), "the instance holds a TCP socket")
            rest = b""
            while not rest.endswith(b"first-last"):
                chunk = s.recv(4096)
                self.assertTrue(chunk, "closed before the end of the response")
                rest = head + chunk if not rest else rest + chunk
                head = b""
        # The same service sees its connection as a Unix socket pair with the client's address.
        with self.site.connect() as s:
            seen = json.loads(get(s, "/a/peer").body)
            self.assertEqual(seen, {"family": "AF_UNIX", "client": "127.0.0.1"})

    def test_connectionModeForContrast(self) -> None:
        """The same check on a connection service finds the TCP socket in the instance (as it must)."""
        with self.site.connect() as s:
            self.assertEqual(get(s, "/b/x").status, 200)
            inode = socket_inode_of_server_side(self.site.port, s.getsockname()[1])
            self.assertEqual(set(pids_holding_socket(inode)), {self.pid_of("b.0")})


class HostileReaderTests(IsolationTestCase):
    """A compromised service that keeps reading its connection sees none of the next service's request."""

    def check(self, pipelined: bool) -> None:
        other = request_bytes("GET", "/b/private?token=QUERY-SECRET", {"Cookie": SECRET, "Authorization": AUTH})
        with self.site.connect() as s:
            if pipelined:
                s.sendall(request_bytes("GET", "/a/steal") + other)
                first = read_response(s)
            else:
                first = get(s, "/a/steal")
                s.sendall(other)
            self.assertEqual(json.loads(first.body), {"stealing": True})
            try:
                second: Response | Exception = read_response(s)
                # And back to a: a new visit, never the stealer's old pair.
                again = int(get(s, "/a/pid").header("x-okws-pid"))
            except OSError as e:
                second = e
            # What the stealer read, once its thread ended (EOF, or its own 20 s bound).
            with self.site.connect(timeout=30) as thief:
                loot = json.loads(get(thief, "/a/loot").body)
        for secret in ("S3CRET-COOKIE", "QUERY-SECRET", "/b/private", "Authorization", "YWxpY2U6"):
            self.assertNotIn(secret, loot["read"])
        self.assertEqual(loot["read"], "")
        self.assertTrue(loot["ended"], "the stolen end never saw EOF: the dispatcher kept the pair open")
        assert isinstance(second, Response), second
        self.assertEqual(second.status, 200)
        self.assertEqual(int(second.header("x-okws-pid")), self.pid_of("b.0"))
        self.assertEqual(again, self.pid_of("a.0"))

    def test_pipelined(self) -> None:
        self.check(pipelined=True)

    def test_notPipelined(self) -> None:
        self.check(pipelined=False)


class OrderTests(IsolationTestCase):
    """A(request) -> B(connection) -> A(request) on one connection, in order."""

    def test_pipelined(self) -> None:
        with self.site.connect() as s:
            s.sendall(b"".join(request_bytes("GET", p) for p in ("/a/1", "/b/2", "/a/3", "/c/4", "/a/5")))
            got = [read_response(s) for _ in range(5)]
            self.assertEqual([r.status for r in got], [200] * 5)
            pids = [int(r.header("x-okws-pid")) for r in got]
            self.assertEqual(pids, [self.pid_of(n) for n in ("a.0", "b.0", "a.0", "c.0", "a.0")])
            self.assertEqual([json.loads(r.body)["path"] for r in got], ["/a/1", "/b/2", "/a/3", "/c/4", "/a/5"])
            # Still open, still in order.
            self.assertEqual(json.loads(get(s, "/a/6").body)["path"], "/a/6")

    def test_pipelinedThroughTheDispatchersOwn404(self) -> None:
        """The dispatcher's 404 keeps the connection: relayed and handed-off requests after it, in order."""
        with self.site.connect() as s:
            s.sendall(b"".join(request_bytes("GET", p) for p in ("/a/1", "/nowhere", "/a/2", "/b/3", "/nowhere", "/a/4")))
            got = [read_response(s) for _ in range(6)]
            self.assertEqual([r.status for r in got], [200, 404, 200, 200, 404, 200])
            served = [got[i] for i in (0, 2, 3, 5)]
            self.assertEqual([int(r.header("x-okws-pid")) for r in served],
                             [self.pid_of(n) for n in ("a.0", "a.0", "b.0", "a.0")])
            self.assertEqual([json.loads(r.body)["path"] for r in served], ["/a/1", "/a/2", "/b/3", "/a/4"])

    def test_oneAtATime(self) -> None:
        with self.site.connect() as s:
            for path, name in (("/a/1", "a.0"), ("/b/2", "b.0"), ("/a/3", "a.0"), ("/a/4", "a.0")):
                r = get(s, path)
                self.assertEqual(int(r.header("x-okws-pid")), self.pid_of(name), path)

    def test_headAndClose(self) -> None:
        """HEAD gets no body; Connection: close closes after the response."""
        with self.site.connect() as s:
            s.sendall(request_bytes("HEAD", "/a/bytes?mib=1"))
            r = read_response(s, head_request=True)
            self.assertEqual((r.status, r.header("content-length")), (200, str(1 << 20)))
            r = get(s, "/a/pid", Connection="close")
            self.assertEqual(r.header("connection"), "close")
            self.assertEqual(s.recv(10), b"")


class TransferTests(IsolationTestCase):
    """20 MB each way through the relay with a slow client: whole, and the dispatcher's memory flat."""

    SIZE = 20 << 20

    def sample_rss(self, pid: int, stop: threading.Event, out: list[int]) -> None:
        while not stop.is_set():
            out.append(vm_rss(pid))
            stop.wait(0.05)

    def measure(self, transfer) -> tuple[object, int]:
        dispatcher = self.pid_of("dispatcher")
        baseline = vm_rss(dispatcher)
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=self.sample_rss, args=(dispatcher, stop, samples), daemon=True)
        sampler.start()
        try:
            result = transfer()
        finally:
            stop.set()
            sampler.join(5)
        return result, max(samples) - baseline

    def test_upload(self) -> None:
        body = os.urandom(self.SIZE)

        def upload() -> Response:
            with self.site.connect(timeout=60) as s:
                s.sendall(f"POST /a/up HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode())
                for i in range(0, len(body), 65536):
                    s.sendall(body[i : i + 65536])
                    time.sleep(0.002)  # a slow client (the pace, not a synchronisation)
                return read_response(s)

        r, growth = self.measure(upload)
        self.assertEqual(r.status, 200)  # type: ignore[attr-defined]
        self.assertEqual(json.loads(r.body), {"length": self.SIZE, "sha256": hashlib.sha256(body).hexdigest()})  # type: ignore[attr-defined]
        self.assertLess(growth, 8 << 20, f"the dispatcher grew by {growth} bytes relaying 20 MB up")

    def test_download(self) -> None:
        def download() -> bytes:
            with self.site.connect(timeout=60) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.sendall(request_bytes("GET", "/a/bytes?mib=20"))
                data = b""
                while len(data) < self.SIZE + 100:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if b"\r\n\r\n" in data and len(data) - data.index(b"\r\n\r\n") - 4 >= self.SIZE:
                        break
                    time.sleep(0.002)  # a slow reader (the pace)
                return data

        data, growth = self.measure(download)
        body = data[data.index(b"\r\n\r\n") + 4 :]  # type: ignore[union-attr]
        self.assertEqual(len(body), self.SIZE)
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(b"x" * self.SIZE).hexdigest())
        self.assertLess(growth, 8 << 20, f"the dispatcher grew by {growth} bytes relaying 20 MB down")


class KillTests(E2ETestCase):
    """kill -9 of an instance mid-response: that client's connection closes, others are unaffected."""

    if not IS_ROOT:
        skip = "needs root: services must run jailed, as in production"

    def test_killMidResponse(self) -> None:
        site = Site(SERVICES, OKWS)
        self.addCleanup(site.close)
        site.start()
        victim_pid = site.pids()["a.0"]
        # An idle keep-alive client of the same instance, and a client of another service.
        idle = site.connect()
        self.addCleanup(idle.close)
        self.assertEqual(int(get(idle, "/a/pid").header("x-okws-pid")), victim_pid)
        other = site.connect()
        self.addCleanup(other.close)
        self.assertEqual(get(other, "/c/pid").status, 200)
        with site.connect() as s:
            s.sendall(request_bytes("GET", "/a/stream?mib=10&ms=20"))
            got = b""
            while b"\r\n\r\n" not in got or len(got) < 300_000:
                chunk = s.recv(65536)
                self.assertTrue(chunk, "closed before the kill")
                got += chunk
            length = int(got.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]) if b"content-length: " in got else int(
                got.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]
            )
            mark = site.mark()
            os.kill(victim_pid, signal.SIGKILL)
            s.settimeout(2)
            started = time.monotonic()
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            self.assertLess(time.monotonic() - started, 2.5)
            body = got[got.index(b"\r\n\r\n") + 4 :]
            self.assertLess(len(body), length, "the cut response looked complete")
        wait_until(lambda: not process_exists(victim_pid), 10, "the killed instance gone")
        # The other service was served throughout, on its kept-alive connection.
        self.assertEqual(get(other, "/c/pid").status, 200)
        site.wait_for(r"started a\.0 as pid \d+", after=mark)
        site.wait_for(r"instance a\.0 \(pid \d+\) is ready", after=mark)
        new_pid = site.pids()["a.0"]
        self.assertNotEqual(new_pid, victim_pid)
        # The idle client of the dead instance: its next request is served by the new one.
        r = get(idle, "/a/pid")
        self.assertEqual((r.status, int(r.header("x-okws-pid"))), (200, new_pid))
