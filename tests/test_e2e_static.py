"""
End-to-end tests of a static pool (C{[static:NAME]}): a real ``twistd okws`` serving files over
loopback, and, as root, the kernel's view of its jail (C{/proc/PID/status}, C{mountinfo},
C{ns/net}, C{environ}, C{limits}).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys

import okws_twisted
from okws_twisted.launcher.jailplan import SYSTEM_BINDS
from tests.e2e import E2ETestCase, Site, read_response, request_bytes
from tests.test_e2e_jail import environ_of, status_of

IS_ROOT = os.geteuid() == 0

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello

[static:assets]
root = assets
paths = /static /favicon.ico /robots.txt
max_age = 600
"""

FAST = """
restart_delay_min = 0.2
drain_timeout = 5
"""

CSS = b"body { color: #246; }\n" * 100
#: A sparse file: 1 GiB on the wire, nothing on disk.
HUGE = 1 << 30


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".new")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def fill(root: str) -> None:
    write(os.path.join(root, "css", "app.css"), CSS)
    write(os.path.join(root, "css", "app.css.gz"), b"GZ")
    write(os.path.join(root, "favicon.ico"), b"\0\0\1\0icon")
    write(os.path.join(root, "robots.txt"), b"User-agent: *\n")
    write(os.path.join(root, ".env"), b"SECRET=1\n")
    write(os.path.join(root, "css", "private.css"), b"p { }\n")
    os.chmod(os.path.join(root, "css", "private.css"), 0o600)  # not readable by others
    with open(os.path.join(root, "huge.bin"), "wb") as f:
        f.truncate(HUGE)
    # Ways out that resolve inside a jail (its own /dev/urandom, the okws package) and out of it.
    os.symlink("/dev/urandom", os.path.join(root, "random"))
    os.symlink(os.path.abspath(okws_twisted.__file__), os.path.join(root, "code.py"))
    os.symlink("../site.ini", os.path.join(root, "config"))
    os.mkfifo(os.path.join(root, "fifo"))


_shared: Site | None = None


def shared() -> Site:
    global _shared
    if _shared is None:
        site = Site(SERVICES, FAST)
        fill(os.path.join(site.dir, "assets"))
        _shared = site.start()
        atexit.register(site.close)
    return _shared


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    return int(status_of(pid)[key].split()[0])


class StaticServingTests(E2ETestCase):
    def test_files_through_the_dispatcher(self) -> None:
        site = shared()
        r = site.get("/static/css/app.css")
        self.assertEqual((r.status, r.body), (200, CSS))
        self.assertEqual(r.header("content-type"), "text/css; charset=utf-8")
        self.assertEqual(r.header("cache-control"), "public, max-age=600")
        self.assertEqual(r.header("vary"), "Accept-Encoding")
        self.assertEqual(site.get("/static/css/app.css", {"Accept-Encoding": "gzip"}).body, b"GZ")
        self.assertEqual(site.get("/favicon.ico").body, b"\0\0\1\0icon")
        self.assertEqual(site.get("/robots.txt").body, b"User-agent: *\n")
        r304 = site.get("/static/css/app.css", {"If-None-Match": r.header("etag") or ""})
        self.assertEqual((r304.status, r304.body), (304, b""))
        part = site.get("/static/css/app.css", {"Range": "bytes=5-9"})
        self.assertEqual((part.status, part.body), (206, CSS[5:10]))
        site.wait_for_log("access.log", lambda text: '"GET /robots.txt HTTP/1.1" 200 14' in text and " assets " in text)

    def test_refused_with_the_sites_page(self) -> None:
        """Dotfiles, ways out of the root (encoded, or by symlink, also into the jail's own
        files), a FIFO and directories: 404 with the site's own page; the process serves on."""
        site = shared()
        # The dispatcher's reader already refuses an encoded dot segment (400).
        for path in ("/static/%2e%2e/%2e%2e/site.ini", "/static/.%2e/site.ini"):
            self.assertEqual(site.get(path).status, 400, path)
        for path in ("/static/.env", "/static/..%2f..%2fsite.ini", "/static/random",
                     "/static/code.py", "/static/config", "/static/fifo", "/static/css/", "/static/css", "/static/"):
            r = site.get(path)
            self.assertEqual(r.status, 404, path)
            self.assertIn(b'Try <a href="/hello">', r.body)  # templates/errors/404.html
            self.assertNotIn(b"SECRET", r.body)
        self.assertEqual(site.get("/favicon.ico").status, 200)

    def test_no_body_no_other_method(self) -> None:
        site = shared()
        with site.connect() as s:
            s.sendall(request_bytes("POST", "/static/css/app.css", {"Connection": "close"}, body=b"x=1"))
            self.assertEqual(read_response(s).status, 413)  # max_body = 0: the dispatcher answers
        with site.connect() as s:
            s.sendall(request_bytes("DELETE", "/static/css/app.css", {"Connection": "close"}))
            r = read_response(s)
        self.assertEqual((r.status, r.header("allow")), (405, "GET, HEAD"))

    def test_one_connection_across_service_and_static(self) -> None:
        """A page and its assets on one kept-alive connection, pipelined: handed between the
        service and the static pool, every response in order, a static 404 keeping it open."""
        site = shared()
        paths = ["/hello", "/static/css/app.css", "/favicon.ico", "/static/nope", "/hello?name=again", "/robots.txt"]
        with site.connect() as s:
            s.sendall(b"".join(request_bytes("GET", p) for p in paths))
            responses = [read_response(s) for _ in paths]
            self.assertEqual([r.status for r in responses], [200, 200, 200, 404, 200, 200])
            self.assertIn(b"Hello, again!", responses[4].body)
            self.assertEqual(responses[1].body, CSS)
            s.sendall(request_bytes("GET", "/favicon.ico"))
            self.assertEqual(read_response(s).status, 200)

    def test_huge_file_bounded_memory(self) -> None:
        """1 GiB to a reader that stalls, then reads it all: the static process's memory stays
        where it was (sendfile: no byte of the file passes through it)."""
        site = shared()
        pid = site.pids()["assets.0"]
        site.get("/favicon.ico")
        before = rss_kib(pid)
        with site.connect(timeout=60) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(request_bytes("GET", "/static/huge.bin"))
            buf = bytearray(1 << 20)
            got = 0
            while got < 8 << 20:
                n = s.recv_into(buf)
                self.assertGreater(n, 0)
                got += n
            stalled = rss_kib(pid)  # the reader stalls here; the server cannot send
            while got < HUGE:
                n = s.recv_into(buf)
                if not n:
                    break
                got += n
        self.assertGreater(got, HUGE)
        peak = rss_kib(pid, "VmHWM")
        self.assertLess(stalled - before, 8 * 1024, (before, stalled, peak))
        self.assertLess(peak - before, 16 * 1024, (before, stalled, peak))

    def test_files_served_fresh_and_a_replaced_root_after_reload(self) -> None:
        site = Site(SERVICES, FAST)
        self.addCleanup(site.close)
        root = os.path.join(site.dir, "assets")
        write(os.path.join(root, "v.txt"), b"one")
        site.start()
        self.assertEqual(site.get("/static/v.txt").body, b"one")
        write(os.path.join(root, "v.txt"), b"two")  # a file replaced: served at once
        self.assertEqual(site.get("/static/v.txt").body, b"two")
        # The whole directory swapped: the pool still holds the old one until a reload relaunches it.
        write(os.path.join(site.dir, "assets.new", "v.txt"), b"three")
        os.rename(root, os.path.join(site.dir, "assets.old"))
        os.rename(os.path.join(site.dir, "assets.new"), root)
        self.assertEqual(site.get("/static/v.txt").body, b"two")
        mark = site.mark()
        assert site.proc is not None
        site.proc.send_signal(signal.SIGHUP)
        site.wait_for(r"reloaded .*: changed assets", after=mark)
        site.wait_for(r"assets\.0 pid \d+ exited after retiring", after=mark)
        self.assertEqual(site.get("/static/v.txt").body, b"three")


class StaticJailTests(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: the launcher only jails children when it runs as root"

    def test_jail_holds_only_its_root(self) -> None:
        """Its own uid, an empty network namespace, no site code on its path or in its jail,
        and its root read-only at /files (the kernel's mount table of the process)."""
        site = shared()
        assert site.proc is not None
        pids = site.pids()
        pid = pids["assets.0"]
        uid = status_of(pid)["Uid"].split()[0]
        self.assertNotEqual(uid, "0")
        self.assertNotIn(uid, {status_of(pids[name])["Uid"].split()[0] for name in ("hello.0", "dispatcher", "pubd", "logd")})
        self.assertNotEqual(os.readlink(f"/proc/{pid}/ns/net"), os.readlink(f"/proc/{site.proc.pid}/ns/net"))
        with open(f"/proc/{pid}/net/dev") as f:
            self.assertEqual([line.split(":")[0].strip() for line in f.readlines()[2:]], ["lo"])
        self.assertEqual(status_of(pid)["Seccomp"], "2")
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(okws_twisted.__file__)))
        self.assertEqual(environ_of(pid)["PYTHONPATH"].split(os.pathsep), [package_parent])
        mounts = {}
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                fields = line.split()
                mounts[fields[4]] = fields[5].split(",")
        self.assertIn("ro", mounts["/files"])
        allowed = {"/", "/files", "/dev/null", "/dev/urandom", sys.base_prefix, sys.prefix,
                   os.path.dirname(os.path.abspath(okws_twisted.__file__)), *SYSTEM_BINDS}
        self.assertEqual(set(mounts) - allowed, set(), mounts)
        for point, options in mounts.items():
            self.assertIn("ro", options, point)
        jail = f"/proc/{pid}/root"
        self.assertFalse(os.path.exists(os.path.join(jail, site.dir.lstrip("/"), "services")))
        self.assertIn("favicon.ico", os.listdir(os.path.join(jail, "files")))
        with open(f"/proc/{pid}/limits") as f:
            self.assertRegex(f.read(), r"Max open files\s+2256\s+2256")

    def test_root_readable_by_its_group_only_added(self) -> None:
        """A root the pool's uid could not read is given to its group for reading; nothing gets
        write permission; and the pool serves what was private before."""
        site = shared()
        gid = int(status_of(site.pids()["assets.0"])["Gid"].split()[0])
        st = os.stat(os.path.join(site.dir, "assets", "css", "private.css"))
        self.assertEqual(st.st_gid, gid)
        self.assertEqual(st.st_mode & 0o077, 0o040)
        self.assertEqual(site.get("/static/css/private.css").body, b"p { }\n")
