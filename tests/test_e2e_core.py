"""
End-to-end tests of the working core: real processes, real HTTP over loopback.

Each test talks to a real ``twistd -n okws`` (see L{tests.e2e}); facts about
processes and sockets come from the kernel (``/proc``), not from okws.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time

from tests.e2e import (
    E2ETestCase,
    REPO,
    TWISTD,
    Site,
    form_token,
    pids_holding_socket,
    process_exists,
    read_response,
    request_bytes,
    socket_inode_of_server_side,
    wait_until,
)

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello /hi
instances = 2

[service:form]
resource = services.form:Form
paths = /form

[service:delay]
resource = services.delay:Delay
paths = /delay

[service:echo]
resource = tests.sites.echo:Echo
paths = /echo

[service:modules]
resource = tests.sites.modules:Modules
paths = /modules
"""

FAST = """
restart_delay_min = 0.2
restart_delay_max = 2
drain_timeout = 10
head_timeout = 5
"""

_shared: Site | None = None


def shared_site() -> Site:
    """One site for the tests that do not disturb it (started once per run)."""
    global _shared
    if _shared is None:
        _shared = Site(SERVICES, FAST).start()
        atexit.register(_shared.close)
    return _shared


def pid_of(response) -> int:
    value = response.header("x-okws-pid")
    assert value is not None, f"no X-Okws-Pid in {response}"
    return int(value)


class RoutingTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = shared_site()

    def test_hello(self) -> None:
        r = self.site.get("/hello?name=okws")
        self.assertEqual(r.status, 200)
        self.assertIn(b"Hello, okws!", r.body)

    def test_services_in_different_processes(self) -> None:
        hello = pid_of(self.site.get("/hello"))
        form = pid_of(self.site.get("/form"))
        delay = pid_of(self.site.get("/delay?ms=1"))
        self.assertEqual(len({hello, form, delay}), 3)
        pids = self.site.pids()
        self.assertNotIn(pids["dispatcher"], {hello, form, delay})
        self.assertIn(form, {pids["form.0"]})

    def test_idle_service_loads_no_jinja2_and_no_database_client(self) -> None:
        """A service that renders no template and has no C{db} never loads jinja2 or the
        proxy's client (issue 14: idle instance < 40 MiB); one that renders loads them then.
        jinja2's C extension (markupsafe) shows in the kernel's map of each process."""
        r = self.site.get("/modules")
        self.assertEqual(r.status, 200)
        loaded = set(json.loads(r.body))
        self.assertIn("okws_twisted.service.runtime", loaded)
        lazy = {"jinja2", "markupsafe", "okws_twisted.templating", "okws_twisted.service.rendering",
                "okws_twisted.service.dbclient"}
        self.assertEqual(loaded & lazy, set())

        def maps_markupsafe(pid: int) -> bool:
            with open(f"/proc/{pid}/maps") as f:
                return "/markupsafe/" in f.read()

        self.assertFalse(maps_markupsafe(pid_of(r)))
        hello = self.site.get("/hello?name=lazy")
        self.assertIn(b"Hello, lazy!", hello.body)
        self.assertTrue(maps_markupsafe(pid_of(hello)))

    def test_two_instances_both_get_work(self) -> None:
        seen = {pid_of(self.site.get("/hello")) for _ in range(20)}
        pids = self.site.pids()
        self.assertEqual(seen, {pids["hello.0"], pids["hello.1"]})

    def test_service_process_owns_the_socket(self) -> None:
        with self.site.connect() as s:
            s.sendall(request_bytes("GET", "/hello"))
            r = read_response(s)
            service_pid = pid_of(r)
            inode = socket_inode_of_server_side(self.site.port, s.getsockname()[1])
            # Among every process on the machine (the launcher and the dispatcher
            # included), only the service holds it, once the dispatcher has seen
            # the acknowledgement and closed its copy.
            holders: list[int] = []

            def service_alone() -> bool:
                holders[:] = pids_holding_socket(inode)
                return holders == [service_pid]

            try:
                wait_until(service_alone, 5, "the service alone holds the connection")
            except AssertionError:
                self.fail(f"pids holding the connection: {holders}; the service is {service_pid}; children {self.site.pids()}")

    def test_client_address(self) -> None:
        with self.site.connect() as s:
            s.sendall(request_bytes("GET", "/echo"))
            r = read_response(s)
            self.assertEqual(json.loads(r.body)["client"], ["127.0.0.1", s.getsockname()[1]])

    def test_body_over_100kb(self) -> None:
        """A body of 100 KB and more reaches the service whole (run as root, the service is jailed:
        no temporary directory, so the body must live in memory, security.md)."""
        body = os.urandom(150_000)
        with self.site.connect() as s:
            s.sendall(request_bytes("POST", "/echo", headers={"Connection": "close"}, body=body))
            r = read_response(s)
        self.assertEqual(r.status, 200, r.body[:300])
        info = json.loads(r.body)
        self.assertEqual((info["length"], info["sha256"]), (len(body), hashlib.sha256(body).hexdigest()))

    def test_resource_is_mounted_at_its_path(self) -> None:
        info = json.loads(self.site.get("/echo/a/b?q=1").body)
        self.assertEqual((info["prepath"], info["postpath"]), (["echo"], ["a", "b"]))
        for path in ("/echo", "/echo/"):
            info = json.loads(self.site.get(path).body)
            self.assertEqual((info["prepath"], info["postpath"]), (["echo"], []), path)

    def test_prefix_boundary_and_404(self) -> None:
        self.assertEqual(self.site.get("/hi").status, 200)
        self.assertEqual(self.site.get("/hello/").status, 200)
        r = self.site.get("/helloworld")
        self.assertEqual(r.status, 404)
        self.assertEqual(self.site.get("/nothing/here").status, 404)

    def test_malformed_head_400(self) -> None:
        with self.site.connect() as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
            r = read_response(s)
            self.assertEqual(r.status, 400)
            self.assertEqual(r.header("connection"), "close")
            self.assertEqual(s.recv(100), b"")

    def test_async_post(self) -> None:
        cookie, token = form_token(self.site, "/form")
        body = b"message=%3Cscript%3Ealert(1)%3C%2Fscript%3E&csrf_token=" + token.encode()
        with self.site.connect() as s:
            s.sendall(request_bytes("POST", "/form", {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}, body))
            r = read_response(s)
        self.assertEqual(r.status, 200)
        self.assertIn(b"&lt;script&gt;", r.body)
        self.assertNotIn(b"<script>", r.body)


class KeepAliveTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = shared_site()

    def test_keep_alive_one_service(self) -> None:
        with self.site.connect() as s:
            pids = set()
            for i in range(5):
                s.sendall(request_bytes("GET", f"/hello?name=n{i}"))
                r = read_response(s)
                self.assertEqual(r.status, 200)
                self.assertIn(f"Hello, n{i}!".encode(), r.body)
                pids.add(pid_of(r))
            self.assertEqual(len(pids), 1)

    def test_one_connection_visits_a_b_a(self) -> None:
        with self.site.connect() as s:
            s.sendall(request_bytes("GET", "/hello?name=first"))
            a1 = read_response(s)
            s.sendall(request_bytes("GET", "/form"))
            b = read_response(s)
            s.sendall(request_bytes("GET", "/hello?name=again"))
            a2 = read_response(s)
        self.assertIn(b"Hello, first!", a1.body)
        self.assertEqual(b.status, 200)
        self.assertIn(b"<form", b.body)
        self.assertIn(b"Hello, again!", a2.body)
        self.assertNotEqual(pid_of(a1), pid_of(b))
        pids = self.site.pids()
        self.assertIn(pid_of(a2), {pids["hello.0"], pids["hello.1"]})

    def test_pipelined_across_services_in_order(self) -> None:
        reqs = [
            ("/hello?name=p1", b"Hello, p1!"),
            ("/delay?ms=300", b""),
            ("/hello?name=p3", b"Hello, p3!"),
            ("/form", b"<form"),
            ("/delay?ms=50", b""),
            ("/hello?name=p6", b"Hello, p6!"),
        ]
        with self.site.connect() as s:
            s.sendall(b"".join(request_bytes("GET", path) for path, _ in reqs))
            responses = [read_response(s) for _ in reqs]
        for (path, needle), r in zip(reqs, responses):
            self.assertEqual(r.status, 200, path)
            self.assertIn(needle, r.body, path)
        self.assertIn(b"300", responses[1].body)
        self.assertIn(b"50", responses[4].body)

    def test_pipelined_post_body_looks_like_a_request(self) -> None:
        cookie, token = form_token(self.site, "/form")
        sneaky = b"message=" + b"GET /hello?name=smuggled HTTP/1.1 Host: x"
        with self.site.connect() as s:
            s.sendall(
                request_bytes("POST", "/form", {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie,
                                                "X-CSRF-Token": token}, sneaky)
                + request_bytes("GET", "/hello?name=after")
            )
            first = read_response(s)
            second = read_response(s)
        self.assertIn(b"smuggled", first.body)
        self.assertIn(b"Hello, after!", second.body)


class NotReadyTests(E2ETestCase):
    def test_503_when_no_instance_is_ready(self) -> None:
        site = Site(
            """
            [service:hello]
            resource = services.hello:Hello
            paths = /hello

            [service:slow]
            resource = tests.sites.slowstart:NeverReady
            paths = /slow
            """,
            FAST + "queue_timeout = 1\nretry_after = 7\n",
        )
        self.addCleanup(site.close)
        site.start(wait=False)
        site.wait_for(r"hello\.0 pid \d+ is ready")
        site.wait_for(r"dispatcher pid \d+ is ready")
        started = time.monotonic()
        r = site.get("/slow")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("retry-after"), "7")
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertEqual(site.get("/hello").status, 200)


class RelaunchTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = Site(
            """
            [service:crash]
            resource = tests.sites.crashing:Crash
            paths = /crash

            [service:hello]
            resource = services.hello:Hello
            paths = /hello
            """,
            FAST,
        ).start()
        self.addCleanup(self.site.close)

    def _hammer(self, path: str, stop: threading.Event, failures: list, count: list) -> None:
        while not stop.is_set():
            try:
                r = self.site.get(path, timeout=10)
                if r.status != 200:
                    failures.append(r.status)
            except OSError as e:
                failures.append(repr(e))
            count[0] += 1

    def test_kill_9_service_instance(self) -> None:
        old = self.site.pids()["crash.0"]
        mark = self.site.mark()
        stop, failures, count = threading.Event(), [], [0]
        t = threading.Thread(target=self._hammer, args=("/hello", stop, failures, count))
        t.start()
        try:
            os.kill(old, signal.SIGKILL)
            m = self.site.wait_for(r"started crash\.0 as pid (\d+)", after=mark)
            new = int(m.group(1))
            self.site.wait_for(rf"wired crash\.0 pid {new}", after=mark)
            r = self.site.get("/crash")
            self.assertEqual(r.status, 200)
            self.assertEqual(pid_of(r), new)
        finally:
            stop.set()
            t.join(30)
        self.assertEqual(failures, [])
        self.assertGreater(count[0], 0)

    def test_crash_mid_request_then_relaunch(self) -> None:
        mark = self.site.mark()
        with self.site.connect() as s:
            s.sendall(request_bytes("GET", "/crash?die=1"))
            self.assertEqual(s.recv(100), b"")
        m = self.site.wait_for(r"started crash\.0 as pid (\d+)", after=mark)
        self.site.wait_for(rf"wired crash\.0 pid {m.group(1)}", after=mark)
        self.assertEqual(self.site.get("/crash").status, 200)

    def test_kill_9_dispatcher(self) -> None:
        old = self.site.pids()["dispatcher"]
        mark = self.site.mark()
        os.kill(old, signal.SIGKILL)
        # The launcher holds the listening socket: a connection made while no
        # dispatcher runs waits in the kernel's queue and is answered later.
        r = self.site.get("/hello", timeout=30)
        self.assertEqual(r.status, 200)
        m = self.site.wait_for(r"started dispatcher as pid (\d+)", after=mark)
        self.assertNotEqual(int(m.group(1)), old)
        self.site.wait_for(rf"dispatcher pid {m.group(1)} is ready", after=mark)
        self.site.wait_for(r"wired crash\.0 pid \d+ to the dispatcher", after=mark)
        for path in ("/hello", "/crash"):
            self.assertEqual(self.site.get(path).status, 200)


class StopTests(E2ETestCase):
    def test_sigterm_drains_and_leaves_nothing(self) -> None:
        site = Site(SERVICES, FAST).start()
        self.addCleanup(site.close)
        pids = site.all_pids()
        self.assertEqual(len(pids), 9)  # log daemon, publisher, dispatcher, 6 service instances
        # A slow request in flight when SIGTERM arrives still gets its answer.
        s = site.connect(timeout=20)
        self.addCleanup(s.close)
        s.sendall(request_bytes("GET", "/delay?ms=1500"))
        site.get("/delay?ms=1")  # the slow one has been handed off by now
        assert site.proc is not None
        site.proc.send_signal(signal.SIGTERM)
        r = read_response(s)
        self.assertEqual(r.status, 200)
        status = site.proc.wait(60)
        # A clean stop on SIGTERM: twistd re-raises the signal (README: 143, -15 here).
        self.assertEqual(status, -signal.SIGTERM, site.log_text())
        for pid in pids | {site.proc.pid}:
            self.assertFalse(process_exists(pid), f"pid {pid} still exists")


class ConfigErrorTests(E2ETestCase):
    """A broken site stops start-up with one line naming file, section and key."""

    def run_okws(self, ini: str | None) -> tuple[int, str, str]:
        """Start okws on a site file holding C{ini} (L{None}: no file at all)."""
        d = tempfile.mkdtemp(prefix="okws-badcfg-")
        self.addCleanup(shutil.rmtree, d, True)
        for name in ("services", "tests"):
            os.symlink(os.path.join(REPO, name), os.path.join(d, name))
        path = os.path.join(d, "site.ini")
        if ini is not None:
            with open(path, "w") as f:
                f.write(textwrap.dedent(ini))
        env = dict(os.environ, PYTHONPATH=REPO)
        p = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "okws", "--config", path],
            cwd=d, capture_output=True, text=True, timeout=120, env=env,
        )
        return p.returncode, p.stdout, p.stderr

    def assertRefused(self, ini: str, *needles: str) -> None:
        code, out, err = self.run_okws(ini)
        self.assertEqual(code, 1, out + err)
        # One line; an import failure's traceback may follow it, indented.
        lines = [l for l in err.splitlines() if l.strip() and not l.startswith("  ")]
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("okws: "), lines[0])
        for needle in needles:
            self.assertIn(needle, lines[0])
        self.assertNotIn("started", out)

    def test_unknown_section(self) -> None:
        self.assertRefused(
            "[okws]\nlisten = tcp:0:interface=127.0.0.1\n[servce:x]\nresource=a:B\npaths=/\n",
            "site.ini", "[servce:x]",
        )

    def test_unknown_key(self) -> None:
        self.assertRefused(
            "[okws]\nlisten = tcp:0:interface=127.0.0.1\n[service:hello]\nresource = services.hello:Hello\npaths = /\ninstance = 2\n",
            "site.ini", "[service:hello]", "instance",
        )

    def test_bad_value(self) -> None:
        self.assertRefused(
            "[okws]\nlisten = tcp:0:interface=127.0.0.1\n[service:hello]\nresource = services.hello:Hello\npaths = /\ninstances = many\n",
            "[service:hello]", "instances",
        )

    def test_path_claimed_twice(self) -> None:
        self.assertRefused(
            "[okws]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[service:a]\nresource = services.hello:Hello\npaths = /x\n"
            "[service:b]\nresource = services.hello:Hello\npaths = /y /x\n",
            "paths", "/x",
        )

    def test_unimportable_resource(self) -> None:
        self.assertRefused(
            "[okws]\nlisten = tcp:0:interface=127.0.0.1\n[service:b]\nresource = tests.sites.broken:X\npaths = /\n",
            "site.ini", "[service:b]", "resource", "broken on purpose",
        )

    def test_missing_module(self) -> None:
        self.assertRefused(
            "[okws]\nlisten = tcp:0:interface=127.0.0.1\n[service:b]\nresource = no.such.module:X\npaths = /\n",
            "[service:b]", "resource", "no.such.module",
        )

    def test_not_a_service_resource(self) -> None:
        self.assertRefused(
            "[okws]\nlisten = tcp:0:interface=127.0.0.1\n[service:b]\nresource = tests.sites.slowstart:NotAResource\npaths = /\n",
            "[service:b]", "resource", "not a subclass",
        )

    def test_missing_file(self) -> None:
        code, out, err = self.run_okws(None)
        self.assertEqual(code, 1, out + err)
        self.assertRegex(err.strip(), r"^okws: \S+/site\.ini: cannot read: No such file or directory$")
        self.assertNotIn("started", out)

    def test_empty_file(self) -> None:
        self.assertRefused("", "site.ini", "no [okws] section")

    def test_port_in_use(self) -> None:
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            port = held.getsockname()[1]
            self.assertRefused(
                f"[okws]\nlisten = tcp:{port}:interface=127.0.0.1\n[service:hello]\nresource = services.hello:Hello\npaths = /\n",
                "[okws] listen", str(port),
            )
