"""
End-to-end tests of operating okws: okws-ctl, graceful relaunch, reload,
crash budget, watchdog, dispatcher relaunch under load.

Real processes and real HTTP over loopback (see L{tests.e2e}).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

from tests.e2e import E2ETestCase, Response, Site, process_exists, read_response, request_bytes, wait_until

FAST = """
restart_delay_min = 0.2
restart_delay_max = 1
drain_timeout = 10
heartbeat_interval = 0.5
heartbeat_timeout = 3
"""

HELLO = """
[service:hello]
resource = services.hello:Hello
paths = /hello
instances = 2

[service:delay]
resource = services.delay:Delay
paths = /delay
"""


def ctl(site: Site, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "okws_twisted.ctl", "--config", site.ini, *args],
        capture_output=True, text=True, timeout=timeout, cwd=site.dir,
    )


class Load:
    """Client threads doing keep-alive and new-connection requests until stopped; every failure kept."""

    def __init__(self, site: Site, paths: list[str], threads: int = 4) -> None:
        self.site = site
        self.paths = paths
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.count = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self, n: int) -> None:
        keepalive = n % 2 == 0
        sock: socket.socket | None = None
        i = 0
        while not self.stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            try:
                if keepalive:
                    if sock is None:
                        sock = self.site.connect(timeout=30)
                    sock.sendall(request_bytes("GET", path))
                    r = read_response(sock)
                    if r.header("connection") == "close":
                        sock.close()
                        sock = None
                else:
                    r = self.site.get(path, timeout=30)
                if r.status != 200:
                    self.failures.append(f"{path}: {r.status}")
            except OSError as e:
                self.failures.append(f"{path}: {e!r}")
                if sock is not None:
                    sock.close()
                    sock = None
            with self._lock:
                self.count += 1
        if sock is not None:
            sock.close()


class CtlTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = Site(HELLO, FAST).start()
        self.addCleanup(self.site.close)

    def test_control_socket_is_private(self) -> None:
        path = os.path.join(self.site.dir, "okws.ctl")
        st = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, os.getuid())

    def test_status_table(self) -> None:
        self.site.get("/hello")
        p = ctl(self.site, "status")
        self.assertEqual(p.returncode, 0, p.stderr)
        pids = self.site.pids()
        for name in ("dispatcher", "hello.0", "hello.1", "delay.0"):
            self.assertRegex(p.stdout, rf"\n{name}\s+{pids[name]}\s+ready\s")
        self.assertIn("RESTARTS", p.stdout)
        j = json.loads(ctl(self.site, "--json", "status").stdout)
        self.assertTrue(j["ok"])
        served = sum(c["stats"].get("served", 0) for c in j["result"]["children"] if c["role"] == "service")
        self.assertGreaterEqual(served, 0)

    def test_unknown_service(self) -> None:
        p = ctl(self.site, "relaunch", "nosuch")
        self.assertEqual(p.returncode, 1)
        self.assertIn("nosuch", p.stderr)

    def test_ctl_stop(self) -> None:
        pids = self.site.all_pids()
        p = ctl(self.site, "stop")
        self.assertEqual(p.returncode, 0, p.stderr)
        assert self.site.proc is not None
        self.site.proc.wait(60)
        for pid in pids:
            self.assertFalse(process_exists(pid))

    def test_second_launcher_refused(self) -> None:
        p = subprocess.run(
            [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
             "-n", "--pidfile=", "okws", "--config", self.site.ini],
            capture_output=True, text=True, timeout=120, cwd=self.site.dir,
        )
        self.assertEqual(p.returncode, 1)
        self.assertIn("already running", p.stderr)


class RelaunchTests(E2ETestCase):
    def test_graceful_relaunch_under_load_fails_nothing(self) -> None:
        site = Site(HELLO, FAST).start()
        self.addCleanup(site.close)
        old = {site.pids()["hello.0"], site.pids()["hello.1"]}
        mark = site.mark()
        with Load(site, ["/hello", "/delay?ms=200", "/hello?x=1"]) as load:
            wait_until(lambda: load.count >= 50, 60, f"50 requests before the relaunch (failures: {load.failures[:5]})")
            p = ctl(site, "relaunch", "--all")
            self.assertEqual(p.returncode, 0, p.stderr)
            for name in ("hello.0", "hello.1", "delay.0"):
                site.wait_for(rf"{name} pid \d+ exited after retiring", after=mark, timeout=60)
            before = load.count
            wait_until(lambda: load.count >= before + 50, 30, "50 requests after the relaunch")
        self.assertEqual(load.failures, [])
        new = {site.pids()["hello.0"], site.pids()["hello.1"]}
        self.assertFalse(old & new)
        self.assertGreater(load.count, 100)

    def test_restart_after_requests(self) -> None:
        site = Site(
            """
            [service:hello]
            resource = services.hello:Hello
            paths = /hello
            restart_after_requests = 20
            """,
            FAST,
        ).start()
        self.addCleanup(site.close)
        first = site.pids()["hello.0"]
        mark = site.mark()
        for _ in range(25):
            self.assertEqual(site.get("/hello").status, 200)
        site.wait_for(r"relaunching hello\.0 \(served \d+ requests\)", after=mark)
        site.wait_for(rf"hello\.0 pid {first} exited after retiring", after=mark)
        self.assertNotEqual(site.pids()["hello.0"], first)
        self.assertEqual(site.get("/hello").status, 200)


def pid_of(response: Response) -> int:
    value = response.header("x-okws-pid")
    assert value is not None, f"no X-Okws-Pid in {response}"
    return int(value)


class IdleKeepAliveTests(E2ETestCase):
    """Idle kept-alive connections held across a graceful relaunch, then used.

    architecture.md and operations.md: a draining instance hands its idle
    connections back instead of closing them, so a relaunch fails no request
    and the next request on each is answered by the new instance.
    """

    CONNECTIONS = 8

    def setUp(self) -> None:
        self.site = Site(HELLO, FAST).start()
        self.addCleanup(self.site.close)

    def hold_idle(self) -> list[socket.socket]:
        """Connections that were each answered once by an instance of hello, now idle."""
        held = []
        old = {self.site.pids()["hello.0"], self.site.pids()["hello.1"]}
        for i in range(self.CONNECTIONS):
            s = self.site.connect(timeout=30)
            self.addCleanup(s.close)
            s.sendall(request_bytes("GET", f"/hello?first={i}"))
            r = read_response(s)
            self.assertEqual(r.status, 200)
            self.assertNotEqual(r.header("connection"), "close")
            self.assertIn(pid_of(r), old)
            held.append(s)
        return held

    def assertAnsweredByTheNewInstances(self, held: list[socket.socket], old: set[int]) -> None:
        new = {self.site.pids()["hello.0"], self.site.pids()["hello.1"]}
        self.assertFalse(old & new, (old, new))
        answers = []
        for i, s in enumerate(held):
            s.sendall(request_bytes("GET", f"/hello?again={i}"))
            try:
                r = read_response(s)
            except OSError as e:
                answers.append(f"connection {i}: {e!r}")
                continue
            answers.append(f"connection {i}: {r.status} from {'a new' if pid_of(r) in new else 'an old'} instance")
        self.assertEqual(answers, [f"connection {i}: 200 from a new instance" for i in range(len(held))])

    def test_relaunch(self) -> None:
        old = {self.site.pids()["hello.0"], self.site.pids()["hello.1"]}
        held = self.hold_idle()
        mark = self.site.mark()
        p = ctl(self.site, "relaunch", "hello")
        self.assertEqual(p.returncode, 0, p.stderr)
        for pid in old:
            self.site.wait_for(rf"hello\.\d pid {pid} exited after retiring", after=mark, timeout=60)
        self.assertAnsweredByTheNewInstances(held, old)

    def test_reload_that_changes_the_service(self) -> None:
        old = {self.site.pids()["hello.0"], self.site.pids()["hello.1"]}
        held = self.hold_idle()
        with open(self.site.ini) as f:
            text = f.read()
        with open(self.site.ini, "w") as f:
            f.write(text.replace("paths = /hello\n", "paths = /hello /hi\n", 1))
        mark = self.site.mark()
        p = ctl(self.site, "reload", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["result"]["changed"], ["hello"])
        for pid in old:
            self.site.wait_for(rf"hello\.\d pid {pid} exited after retiring", after=mark, timeout=60)
        self.assertAnsweredByTheNewInstances(held, old)


class CrashPolicyTests(E2ETestCase):
    def test_crash_budget_then_revive(self) -> None:
        site = Site(
            """
            [service:hello]
            resource = services.hello:Hello
            paths = /hello

            [service:doomed]
            resource = tests.sites.crashing:CrashOnStart
            paths = /doomed
            """,
            FAST + "crash_budget = 3\ncrash_window = 60\nqueue_timeout = 20\n",
        ).start(wait=False)
        self.addCleanup(site.close)
        site.wait_for(r"doomed\.0 crashed 4 times within 60s; not relaunching", timeout=60)
        started = time.monotonic()
        r = site.get("/doomed")
        self.assertEqual(r.status, 503)
        self.assertIsNotNone(r.header("retry-after"))
        self.assertLess(time.monotonic() - started, 5, "a failed service answers 503 at once, not after queueing")
        self.assertEqual(site.get("/hello").status, 200)
        mark = site.mark()
        p = ctl(site, "relaunch", "doomed")
        self.assertEqual(p.returncode, 0, p.stderr)
        site.wait_for(r"relaunching doomed\.0 \(operator request\)", after=mark)
        site.wait_for(r"started doomed\.0 as pid", after=mark)

    def test_watchdog_kills_only_the_hung_instance(self) -> None:
        site = Site(
            """
            [service:hang]
            resource = tests.sites.crashing:Hang
            paths = /hang

            [service:hello]
            resource = services.hello:Hello
            paths = /hello
            """,
            FAST,
        ).start()
        self.addCleanup(site.close)
        pids = site.pids()
        hung = pids["hang.0"]
        mark = site.mark()
        s = site.connect(timeout=60)
        self.addCleanup(s.close)
        s.sendall(request_bytes("GET", "/hang?hang=1"))
        site.wait_for(rf"hang\.0 pid {hung} answered no heartbeat for \d+s; killing that pid", after=mark)
        m = site.wait_for(r"started hang\.0 as pid (\d+)", after=mark)
        self.assertNotEqual(int(m.group(1)), hung)
        site.wait_for(rf"wired hang\.0 pid {m.group(1)}", after=mark)
        self.assertEqual(site.get("/hang").status, 200)
        for name in ("dispatcher", "hello.0"):
            self.assertTrue(process_exists(pids[name]), name)
        self.assertEqual(site.pids()["hello.0"], pids["hello.0"])


class ReloadTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = Site(HELLO, FAST).start()
        self.addCleanup(self.site.close)

    def rewrite(self, services: str) -> None:
        with open(self.site.ini) as f:
            okws = f.read().split("[service:")[0]
        with open(self.site.ini, "w") as f:
            f.write(okws + services)

    def test_reload_adds_and_removes(self) -> None:
        hello_pids = {self.site.pids()["hello.0"], self.site.pids()["hello.1"]}
        self.rewrite(
            """
[service:hello]
resource = services.hello:Hello
paths = /hello
instances = 2

[service:form]
resource = services.form:Form
paths = /form
"""
        )
        mark = self.site.mark()
        p = ctl(self.site, "reload", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        result = json.loads(p.stdout)["result"]
        self.assertEqual((result["added"], result["removed"], result["changed"]), (["form"], ["delay"], []))
        self.site.wait_for(r"wired form\.0 pid \d+", after=mark)
        self.assertEqual(self.site.get("/form").status, 200)
        self.assertEqual(self.site.get("/delay?ms=1").status, 404)
        self.site.wait_for(r"delay\.0 pid \d+ exited after retiring", after=mark)
        # The unchanged service was not touched.
        self.assertEqual({self.site.pids()["hello.0"], self.site.pids()["hello.1"]}, hello_pids)
        for pid in hello_pids:
            self.assertTrue(process_exists(pid))

    def test_broken_reload_is_refused(self) -> None:
        pids = self.site.pids()
        self.rewrite("[service:hello]\nresource = services.hello:Hello\npaths = /hello\ninstances = lots\n")
        p = ctl(self.site, "reload")
        self.assertEqual(p.returncode, 1)
        self.assertIn("[service:hello] instances", p.stderr)
        self.rewrite("[service:hello]\nresource = tests.sites.broken:X\npaths = /hello\n")
        p = ctl(self.site, "reload")
        self.assertEqual(p.returncode, 1)
        self.assertIn("broken on purpose", p.stderr)
        self.assertEqual(self.site.get("/hello").status, 200)
        self.assertEqual(self.site.get("/delay?ms=1").status, 200)
        self.assertEqual(self.site.pids(), pids)

    def test_sighup_reloads(self) -> None:
        self.rewrite("[service:hello]\nresource = services.hello:Hello\npaths = /hello /hi\ninstances = 2\n")
        mark = self.site.mark()
        assert self.site.proc is not None
        self.site.proc.send_signal(signal.SIGHUP)
        self.site.wait_for(r"reloaded .*site\.ini", after=mark)
        self.assertEqual(self.site.get("/hi").status, 200)


class DispatcherRelaunchTests(E2ETestCase):
    def test_kill_9_dispatcher_refuses_no_connection(self) -> None:
        """No connection is refused and every request is answered.

        The launcher holds the listening socket, so connections made while no
        dispatcher runs wait in the kernel's queue.  The few connections the
        killed dispatcher had accepted but not yet handed off die with it (no
        byte of a response was sent on them); a client retries such a GET, as
        browsers do, and at most one per client thread can be caught so.
        """
        site = Site(HELLO, FAST).start()
        self.addCleanup(site.close)
        old = site.pids()["dispatcher"]
        mark = site.mark()
        results: list[object] = []
        retried: list[str] = []

        def client() -> None:
            for i in range(60):
                for attempt in range(3):
                    try:
                        results.append(site.get(f"/hello?i={i}", timeout=30).status)
                        break
                    except ConnectionRefusedError as e:
                        results.append(repr(e))
                        break
                    except (ConnectionResetError, ConnectionError) as e:
                        retried.append(repr(e))
                else:
                    results.append("gave up")

        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(results) >= 20, 60, f"20 answers before the kill (so far: {results[:5]})")
        os.kill(old, signal.SIGKILL)
        for t in threads:
            t.join(120)
        site.wait_for(r"started dispatcher as pid", after=mark)
        self.assertEqual(len(results), 180)
        self.assertEqual([r for r in results if r != 200], [])
        self.assertLessEqual(len(retried), 3, retried)


def _metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return None


class MetricsTests(E2ETestCase):
    def setUp(self) -> None:
        from tests.e2e import free_port

        self.admin_port = free_port()
        self.site = Site(HELLO, FAST + f"admin = tcp:{self.admin_port}\n").start()
        self.addCleanup(self.site.close)

    def admin_get(self, path: str):
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=10) as s:
            s.sendall(request_bytes("GET", path, {"Connection": "close"}))
            return read_response(s)

    def wait_metric(self, name: str, at_least: float, **labels: str) -> str:
        deadline = time.monotonic() + 20
        while True:
            text = self.admin_get("/metrics").body.decode()
            value = _metric(text, name, **labels)
            if value is not None and value >= at_least:
                return text
            if time.monotonic() > deadline:
                self.fail(f"{name}{labels} stayed at {value} (< {at_least}):\n{text}")
            time.sleep(0.2)  # polling an external counter; reports arrive once a second

    def test_metrics(self) -> None:
        for _ in range(7):
            self.assertEqual(self.site.get("/hello").status, 200)
        self.assertEqual(self.site.get("/nowhere").status, 404)
        r = self.admin_get("/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("content-type").startswith("text/plain; version=0.0.4"))
        text = self.wait_metric("okws_requests_total", 7, service="hello", host="*", code="200")
        self.assertEqual(_metric(text, "okws_requests_total", service="-", host="-", code="404"), 1)
        self.assertGreaterEqual(_metric(text, "okws_request_duration_seconds_count", service="hello"), 7)
        self.assertEqual(_metric(text, "okws_request_duration_seconds_bucket", service="hello", le="+Inf"),
                         _metric(text, "okws_request_duration_seconds_count", service="hello"))
        self.assertEqual(_metric(text, "okws_ready_instances", service="hello"), 2)
        self.assertEqual(_metric(text, "okws_queue_depth", service="hello"), 0)
        self.assertGreaterEqual(_metric(text, "okws_handoffs_total", service="hello"), 7)
        self.assertEqual(_metric(text, "okws_up"), 1)
        for family in ("okws_in_flight_requests", "okws_restarts_total", "okws_handoff_failures_total", "okws_failed"):
            self.assertIn(f"# TYPE {family} ", text)

    def test_restarts_counted(self) -> None:
        os.kill(self.site.pids()["delay.0"], signal.SIGKILL)
        self.wait_metric("okws_restarts_total", 1, service="delay")

    def test_admin_is_not_on_the_public_port(self) -> None:
        self.assertEqual(self.site.get("/metrics").status, 404)
        self.assertEqual(self.admin_get("/nope").status, 404)

    def test_health_reports_draining(self) -> None:
        self.assertEqual(self.admin_get("/health").status, 200)
        slow = self.site.connect(timeout=30)
        self.addCleanup(slow.close)
        slow.sendall(request_bytes("GET", "/delay?ms=3000"))
        self.site.get("/delay?ms=1")
        mark = self.site.mark()
        assert self.site.proc is not None
        self.site.proc.send_signal(signal.SIGTERM)
        self.site.wait_for("stopping: draining", after=mark)
        deadline = time.monotonic() + 10
        while True:
            try:
                r = self.admin_get("/health")
            except OSError:
                r = None
            if r is not None and r.status == 503:
                self.assertIn(b"draining", r.body)
                break
            self.assertLess(time.monotonic(), deadline, "health never reported draining")
            time.sleep(0.05)
        self.assertEqual(read_response(slow).status, 200)


class LazyStartTests(E2ETestCase):
    def test_lazy_service_starts_on_its_first_request(self) -> None:
        site = Site(
            """
            [service:hello]
            resource = services.plain:Hello
            paths = /hello

            [service:later]
            resource = tests.sites.echo:Echo
            paths = /later
            lazy = yes
            """,
            FAST,
        ).start()
        self.addCleanup(site.close)
        self.assertNotIn("later.0", site.pids())
        self.assertEqual(site.get("/hello").status, 200)
        self.assertNotIn("later.0", site.pids(), "a lazy service must not start before it is asked for")
        mark = site.mark()
        r = site.get("/later/x", timeout=60)
        self.assertEqual(r.status, 200)
        site.wait_for(r"starting later\.0: the first request for lazy service later", after=mark)
        self.assertIn("later.0", site.pids())
        self.assertEqual(json.loads(r.body)["pid"], site.pids()["later.0"])
