"""
End-to-end tests of the log daemon: real processes, real HTTP over loopback, real files.

Each test talks to a real ``twistd -n okws`` (see L{tests.e2e}) or to a real
log daemon process started alone (L{tests.e2e.LogdProcess}).  The log files
are written by another process with nothing a test could wait on, so tests
poll them with a deadline (L{tests.e2e.Site.wait_for_log}).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time

from okws_twisted.launcher.niceness import may_lower
from okws_twisted.logd.daemon import PAUSE_BEFORE_ACK
from tests.e2e import E2ETestCase, LogdProcess, Site, read_response, request_bytes

FAST = """
restart_delay_min = 0.2
restart_delay_max = 2
drain_timeout = 10
"""

SHARED_SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello
max_body = 100

[service:boom]
resource = tests.sites.failing:Failing
paths = /boom

[service:slow]
resource = tests.sites.slowstart:NeverReady
paths = /slow
"""

_shared: Site | None = None


def shared_site() -> Site:
    """One site for the tests that only read its logs (started once per run).

    Its C{slow} service never becomes ready (to get a 503), so the site is
    never "ready" as a whole: wait for the processes the tests use.
    """
    global _shared
    if _shared is None:
        site = Site(
            SHARED_SERVICES,
            FAST + "head_timeout = 1\nqueue_timeout = 1\naccess_log_json = yes\naccess_log_fields = combined request_id\n",
        )
        atexit.register(site.close)
        site.start(wait=False)
        for name in ("logd", "hello\\.0", "boom\\.0", "dispatcher"):
            site.wait_for(rf"{name} pid \d+ is ready")
        site.wait_for(r"wired boom\.0 pid \d+ to the logd")
        _shared = site
    return _shared


def line_with(text: str, needle: str) -> str:
    found = [line for line in text.splitlines() if needle in line]
    assert len(found) == 1, f"{len(found)} lines with {needle!r} in:\n{text}"
    return found[0]


ISO = r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\]"
CLF = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\]"


class AccessAndErrorLogTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = shared_site()

    def test_service_response_logged(self) -> None:
        r = self.site.get("/hello?case=ok", headers={"User-Agent": 'okws-test/1.0 "quoted"', "Referer": "http://r.example/"})
        self.assertEqual(r.status, 200)
        text = self.site.wait_for_log("access.log", lambda t: "case=ok " in t)
        line = line_with(text, "case=ok ")
        self.assertRegex(
            line,
            rf'^127\.0\.0\.1 - - {CLF} "GET /hello\?case=ok HTTP/1\.1" 200 {len(r.body)} "http://r\.example/" '
            r'"okws-test/1\.0 \\"quoted\\"" hello \d+ [0-9a-f]{12}-[0-9a-f]+$',
        )

    def test_json_log_matches(self) -> None:
        self.assertEqual(self.site.get("/hello?case=json", headers={"User-Agent": "ua\u00e9".encode().decode("latin-1")}).status, 200)
        access = line_with(self.site.wait_for_log("access.log", lambda t: "case=json " in t), "case=json ")
        request_id = access.rsplit(" ", 1)[1]
        text = self.site.wait_for_log("access.json", lambda t: "case=json " in t)
        document = json.loads(line_with(text, "case=json "))
        self.assertEqual(document["request_id"], request_id)
        self.assertEqual(
            {k: document[k] for k in ("client", "request", "status", "service", "instance", "source", "user_agent")},
            {"client": "127.0.0.1", "request": "GET /hello?case=json HTTP/1.1", "status": 200, "service": "hello",
             "instance": 0, "source": "hello.0", "user_agent": "ua\u00c3\u00a9"},
        )
        self.assertRegex(document["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertIsInstance(document["response_time_us"], int)
        self.assertIn('"ua\\xc3\\xa9"', access)  # the text log stays ASCII

    def test_client_request_id_ignored(self) -> None:
        """logging.md: okws never takes an id from the client; an X-Request-Id header is ignored."""
        forged = "abcdefabcdef-7"  # shaped like okws's own ids
        for case, path, status in (("xrid-service", "/hello", 200), ("xrid-dispatcher", "/nothing", 404)):
            r = self.site.get(f"{path}?case={case}", headers={"X-Request-Id": forged})
            self.assertEqual(r.status, status)
            access = line_with(self.site.wait_for_log("access.log", lambda t: f"case={case} " in t), f"case={case} ")
            logged = access.rsplit(" ", 1)[1]
            self.assertRegex(logged, r"^[0-9a-f]{12}-[0-9a-f]+$", case)
            self.assertNotEqual(logged, forged, case)
            document = json.loads(line_with(self.site.wait_for_log("access.json", lambda t: f"case={case} " in t), f"case={case} "))
            self.assertEqual(document["request_id"], logged, case)
        self.assertNotIn(forged, self.site.read_log("access.log") + self.site.read_log("access.json") + self.site.read_log("error.log"))

    def test_dispatcher_answers_logged(self) -> None:
        """The dispatcher's own answers reach access.log and error.log."""
        site = self.site
        self.assertEqual(site.get("/nothing?case=404").status, 404)
        with site.connect() as s:
            s.sendall(b"GET /hello?case=400 HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
            self.assertEqual(read_response(s).status, 400)
        with site.connect() as s:
            s.sendall(b"POST /hello?case=413 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
            self.assertEqual(read_response(s).status, 413)
        with site.connect() as s:
            s.sendall(b"GET /hello?case=408 HTTP/1.1\r\n")
            self.assertEqual(read_response(s).status, 408)
        self.assertEqual(site.get("/slow?case=503").status, 503)
        cases = {"404": "-", "400": "-", "413": "-", "408": "-", "503": "slow"}
        access = site.wait_for_log("access.log", lambda t: all(f"case={c}" in t for c in cases))
        errors = site.wait_for_log("error.log", lambda t: all(f"case={c}" in t for c in cases))
        dispatcher = site.pids()["dispatcher"]
        for status, service in cases.items():
            line = line_with(access, f"case={status}")
            fields = re.match(rf'^127\.0\.0\.1 - - {CLF} "[^"]*" (\d+) (\d+) "-" "-" (\S+) \d+ \S+$', line)
            assert fields is not None, line
            self.assertEqual(fields.groups()[0::2], (status, service), line)
            self.assertGreater(int(fields.group(2)), 0)
            level = "error" if status == "503" else "warn"
            self.assertRegex(
                line_with(errors, f"case={status}"),
                rf'^{ISO} \[{level}\] \[dispatcher pid {dispatcher}\] {status} ".*case={status}.*" from 127\.0\.0\.1 service {service} ',
            )

    def test_service_exception_traceback(self) -> None:
        r = self.site.get("/boom?case=tb")
        self.assertEqual(r.status, 500)
        self.assertNotIn(b"kaboom", r.body)
        self.assertNotIn(b"Traceback", r.body)
        errors = self.site.wait_for_log("error.log", lambda t: "kaboom" in t and "case=tb" in t)
        pid = self.site.pids()["boom.0"]
        prefix = rf"{ISO} \[critical\] \[boom\.0 pid {pid}\] "
        lines = [line for line in errors.splitlines() if re.match(prefix, line)]
        self.assertRegex(lines[0], prefix + r"render GET /boom failed \[request_id \S+\]$")
        self.assertRegex(lines[1], prefix + "  Traceback \\(most recent call last\\):$")
        self.assertRegex(lines[-1], prefix + "  builtins.ValueError: kaboom: the service broke on purpose$")
        self.assertRegex(line_with(errors, "case=tb"), rf'^{ISO} \[error\] \[boom\.0 pid {pid}\] 500 "GET /boom\?case=tb HTTP/1\.1"')

    def test_only_logd_opens_log_files(self) -> None:
        """The kernel says so: no other okws process holds a file under log_dir."""
        self.site.get("/hello?case=fds")
        self.site.wait_for_log("access.log", lambda t: "case=fds" in t)
        pids = self.site.pids()
        assert self.site.proc is not None
        holders = {}
        for name, pid in {**pids, "launcher": self.site.proc.pid}.items():
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                # A jailed process's paths show under its jail root.
                if (self.site.log_dir + "/") in target:
                    holders.setdefault(name, set()).add(os.path.basename(target))
        self.assertEqual(holders, {"logd": {"access.log", "access.json", "error.log", ".okws-logd.journal"}})

    def test_process_starts_logged(self) -> None:
        errors = self.site.wait_for_log("error.log", lambda t: "boom.0 pid" in t and "is ready" in t)
        assert self.site.proc is not None
        launcher = self.site.proc.pid
        for name, pid in self.site.pids().items():
            self.assertRegex(errors, rf"{ISO} \[info\] \[launcher pid {launcher}\] started {re.escape(name)} as pid {pid}\n")


class LosesNothingTests(E2ETestCase):
    def test_kill_9_logd_during_2000_requests(self) -> None:
        """Each of 2,000 requests is in access.log exactly once, though the log daemon was killed mid-way."""
        site = Site(
            """
            [service:hello]
            resource = services.hello:Hello
            paths = /hello
            instances = 2

            [service:other]
            resource = services.hello:Hello
            paths = /other
            """,
            FAST,
        ).start()
        self.addCleanup(site.close)
        total, threads = 2000, 4
        done = [0]
        failures: list[object] = []
        halfway = threading.Event()
        lock = threading.Lock()

        def client(ids: range) -> None:
            sock = None
            try:
                for i, n in enumerate(ids):
                    if sock is None or i % 50 == 0:  # fresh connections too, not only keep-alive
                        if sock is not None:
                            sock.close()
                        sock = site.connect(timeout=30)
                    path = "/other" if n % 7 == 0 else "/hello"  # some requests cross to another service
                    sock.sendall(request_bytes("GET", f"{path}?id={n}"))
                    r = read_response(sock)
                    if r.status != 200:
                        failures.append((n, r.status))
                    with lock:
                        done[0] += 1
                        if done[0] >= 600:
                            halfway.set()
            except Exception as e:  # noqa: BLE001 - reported by the test
                failures.append(repr(e))
            finally:
                halfway.set()
                if sock is not None:
                    sock.close()

        per = total // threads
        workers = [threading.Thread(target=client, args=(range(t * per, (t + 1) * per),)) for t in range(threads)]
        old = site.pids()["logd"]
        mark = site.mark()
        for w in workers:
            w.start()
        self.assertTrue(halfway.wait(60))
        os.kill(old, signal.SIGKILL)
        killed_at = done[0]
        for w in workers:
            w.join(120)
        self.assertEqual(failures, [])
        self.assertEqual(done[0], total)
        self.assertLess(killed_at, total, "the daemon was killed after the last request")
        new = int(site.wait_for(r"started logd as pid (\d+) \(relaunch 1\)", after=mark).group(1))
        site.wait_for(rf"logd pid {new} is ready", after=mark)

        wanted = {str(n) for n in range(total)}
        ids = re.compile(r"\?id=(\d+) ")
        text = site.wait_for_log("access.log", lambda t: set(ids.findall(t)) >= wanted, timeout=60)
        counts = collections.Counter(ids.findall(text))
        twice = {n: c for n, c in counts.items() if c != 1}
        self.assertEqual(twice, {})
        self.assertEqual(set(counts), wanted)
        self.assertEqual(len(text.splitlines()), total)
        errors = site.wait_for_log("error.log", lambda t: f"logd pid {new} is ready" in t)
        self.assertRegex(errors, rf"\] logd pid {old} crashed \(signal 9\) after [\d.]+s; relaunching in [\d.]+s\n")
        self.assertIn(f"] started logd as pid {new} (relaunch 1)\n", errors)

    def test_kill_between_write_and_ack_writes_the_resent_batch_once(self) -> None:
        """The daemon killed after writing a batch and before acknowledging it: the resent batch is skipped.

        The moment is made exact by the daemon's test hook (L{PAUSE_BEFORE_ACK}):
        it writes hello.0's first batch, then blocks instead of acknowledging.
        hello.0 never sees an acknowledgement, so it sends the batch again to the
        relaunched daemon, which must find it in its journal and skip it.
        """
        site = Site("[service:hello]\nresource = services.hello:Hello\npaths = /hello\n", FAST)
        self.addCleanup(site.close)
        os.makedirs(site.log_dir)
        with open(os.path.join(site.log_dir, PAUSE_BEFORE_ACK), "w") as f:
            f.write("hello.0\n")
        site.start()
        old = site.pids()["logd"]
        mark = site.mark()
        self.assertEqual(site.get("/hello?id=1").status, 200)
        site.wait_for(rf"\[logd pid {old}\].*test hook: wrote hello\.0 up to record \d+; pausing", after=mark)
        self.assertEqual(re.findall(r"\?id=(\d+) ", site.read_log("access.log")), ["1"], "written, not acknowledged")
        self.assertEqual(site.get("/hello?id=2").status, 200)  # buffered by hello.0 meanwhile
        os.kill(old, signal.SIGKILL)
        new = int(site.wait_for(r"started logd as pid (\d+) \(relaunch 1\)", after=mark).group(1))
        self.assertEqual(site.get("/hello?id=3").status, 200)
        # hello.0 resends in order, so once id=3 is written the resent batch has been dealt with.
        text = site.wait_for_log("access.log", lambda t: "?id=3 " in t)
        self.assertEqual(re.findall(r"\?id=(\d+) ", text), ["1", "2", "3"])
        self.assertNotEqual(new, old)

    def test_full_buffer_drops_are_counted(self) -> None:
        """With the daemon away and the buffer full, every record is either written or counted as dropped."""
        site = Site(
            """
            [service:hello]
            resource = services.hello:Hello
            paths = /hello
            """,
            "restart_delay_min = 3\nrestart_delay_max = 3\nlog_buffer = 10\n",
        ).start()
        self.addCleanup(site.close)
        old = site.pids()["logd"]
        mark = site.mark()
        os.kill(old, signal.SIGKILL)
        site.wait_for(rf"logd pid {old} crashed", after=mark)
        for n in range(50):
            self.assertEqual(site.get(f"/hello?id={n}").status, 200)
        self.assertNotIn("started logd as pid", "\n".join(site.lines[mark : site.mark()]), "the daemon came back too early")
        errors = site.wait_for_log("error.log", lambda t: re.search(r"\[hello\.0 pid \d+\] dropped", t), timeout=60)
        # hello.0's line (the launcher's own records may overflow its buffer of 10 too).
        dropped = int(re.search(r"\[hello\.0 pid \d+\] dropped (\d+) log records while the log daemon was away \(its buffer holds 10 records\)", errors).group(1))
        written = re.findall(r"\?id=(\d+) ", site.read_log("access.log"))
        self.assertEqual(len(written), 10)
        self.assertEqual(len(set(written)), 10)
        self.assertEqual(dropped + len(written), 50)


class ProcessEventTests(E2ETestCase):
    def test_crash_relaunch_and_stop_logged(self) -> None:
        site = Site(
            """
            [service:crash]
            resource = tests.sites.crashing:Crash
            paths = /crash
            """,
            FAST,
        ).start()
        self.addCleanup(site.close)
        old = site.pids()["crash.0"]
        mark = site.mark()
        with site.connect() as s:
            s.sendall(request_bytes("GET", "/crash?die=1"))
            self.assertEqual(s.recv(100), b"")
        new = int(site.wait_for(r"started crash\.0 as pid (\d+)", after=mark).group(1))
        site.wait_for(rf"wired crash\.0 pid {new} to the logd", after=mark)
        pids = site.pids()
        assert site.proc is not None
        launcher = site.proc.pid
        status = site.stop()
        self.assertEqual(status, -signal.SIGTERM, site.log_text())  # a clean stop: twistd re-raises SIGTERM
        errors = site.read_log("error.log")
        prefix = rf"{ISO} \[(\w+)\] \[launcher pid {launcher}\] "
        self.assertRegex(errors, prefix + rf"crash\.0 pid {old} crashed \(exit code 3\) after [\d.]+s; relaunching in 0\.2s\n")
        self.assertRegex(errors, prefix + rf"started crash\.0 as pid {new} \(relaunch 1\)\n")
        for name in ("crash.0", "dispatcher"):
            self.assertRegex(errors, prefix + rf"{re.escape(name)} pid {pids[name]} exited: exit code 0\n")
        self.assertRegex(errors, prefix + r"stopping: draining for up to 10\.0s\n")


def nices(pid: int) -> set[int]:
    """The nice values of the threads of C{pid}, as the kernel reports them (/proc/PID/task/TID/stat)."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            found.add(int(f.read().rsplit(")", 1)[1].split()[16]))
    return found


class PriorityTests(E2ETestCase):
    """The log daemon runs at [okws] logd_nice, and at nice 0 while it falls behind (docs/logging.md)."""

    def site(self, extra: str = "") -> Site:
        site = Site("[service:hello]\nresource = services.hello:Hello\npaths = /hello\n", FAST + extra).start()
        self.addCleanup(site.close)
        return site

    def test_low_then_normal_while_late_then_low(self) -> None:
        if not may_lower():
            raise self.skipTest("needs a launcher with CAP_SYS_NICE (root, as in CI)")
        site = self.site()
        pids = site.pids()
        logd = pids["logd"]
        # At normal priority through its start, lowered once it has been on time for 5 s.
        site.wait_for(rf"logd pid {logd} keeps up: nice 19 from now on while it does \(logd_nice\)", 20)
        self.assertEqual(nices(logd), {19})
        for name in ("dispatcher", "hello.0", "pubd"):
            self.assertEqual(nices(pids[name]), {0}, name)
        mark = site.mark()
        # The machine starves the daemon (here: stopped for 0.6 s, the stimulus, not a wait):
        # its timer fires late, it asks, and the launcher gives it normal priority.
        os.kill(logd, signal.SIGSTOP)
        try:
            with site.connect() as s:  # records made meanwhile are kept and written later
                for n in range(20):
                    s.sendall(request_bytes("GET", f"/hello?while-stopped={n}"))
                    self.assertEqual(read_response(s).status, 200)
            time.sleep(0.6)
        finally:
            os.kill(logd, signal.SIGCONT)
        site.wait_for(rf"logd pid {logd} runs late at nice 19 \(the machine is busy\): nice 0 until it keeps up", after=mark)
        self.assertEqual(nices(logd), {0})
        # On time for 10 s (5 s, doubled: it was late within a minute of being lowered): lowered again.
        site.wait_for(rf"logd pid {logd} keeps up again: back to nice 19", 40, after=mark)
        self.assertEqual(nices(logd), {19})
        text = site.wait_for_log("access.log", lambda t: t.count("while-stopped=") == 20)
        for n in range(20):
            self.assertEqual(text.count(f"while-stopped={n} "), 1, n)

    def test_logd_nice_0(self) -> None:
        """logd_nice = 0: the daemon runs at normal priority like every other child, and asks nothing."""
        site = self.site("logd_nice = 0\n")
        logd = site.pids()["logd"]
        self.assertEqual(nices(logd), {0})
        self.assertNotIn("nice", site.log_text())


class RotationTests(E2ETestCase):
    def test_mv_then_sigusr1_reopens(self) -> None:
        """logrotate's way: rename, SIGUSR1 to twistd; twistd rotates its own log too."""
        site = Site(
            """
            [service:hello]
            resource = services.hello:Hello
            paths = /hello
            """,
            FAST,
            logfile="twistd.log",
        ).start()
        self.addCleanup(site.close)
        site.get("/hello?id=1")
        site.wait_for_log("access.log", lambda t: "id=1 " in t)
        for name in ("access.log", "error.log"):
            os.rename(os.path.join(site.log_dir, name), os.path.join(site.log_dir, name + ".1"))
        site.get("/hello?id=2")  # written to the renamed file, which the daemon still has open
        site.wait_for_log("access.log.1", lambda t: "id=2 " in t)
        assert site.proc is not None
        site.proc.send_signal(signal.SIGUSR1)
        site.wait_for_log("error.log", lambda t: "reopened the log files" in t)
        site.get("/hello?id=3")
        site.wait_for_log("access.log", lambda t: "id=3 " in t)
        self.assertEqual(re.findall(r"id=(\d) ", site.read_log("access.log.1")), ["1", "2"])
        self.assertEqual(re.findall(r"id=(\d) ", site.read_log("access.log")), ["3"])
        # The launcher's note went out just before the reopen, so it is in the old file.
        self.assertIn("reopening the log files", site.read_log("error.log.1"))
        self.assertNotIn("reopening the log files", site.read_log("error.log"))
        self.assertTrue(os.path.exists(os.path.join(site.dir, "twistd.log.1")), os.listdir(site.dir))

    def test_size_rotation_keeps_count(self) -> None:
        site = Site(
            """
            [service:hello]
            resource = services.hello:Hello
            paths = /hello
            """,
            FAST + "log_max_size = 2000\nlog_keep = 2\n",
        ).start()
        self.addCleanup(site.close)
        def everything(_: str = "") -> str:
            return "".join(site.read_log(name) for name in ("access.log.2", "access.log.1", "access.log"))

        with site.connect() as s:
            for n in range(100):
                s.sendall(request_bytes("GET", f"/hello?id={n}"))
                self.assertEqual(read_response(s).status, 200)
                if n % 10 == 9:  # one batch per ten requests, so several rotations
                    site.wait_for_log("access.log", lambda _, n=n: f"id={n} " in everything())
        names = sorted(n for n in os.listdir(site.log_dir) if n.startswith("access.log"))
        self.assertEqual(names, ["access.log", "access.log.1", "access.log.2"])
        kept = [site.read_log(n) for n in ("access.log.2", "access.log.1", "access.log")]
        for text in kept:
            self.assertLess(len(text), 2000 + 10 * 120)
        ids = [int(n) for text in kept for n in re.findall(r"id=(\d+) ", text)]
        self.assertEqual(ids, list(range(ids[0], 100)))  # the newest, in order, none twice
        self.assertGreater(ids[0], 0)  # the oldest were rotated away


class LogDaemonAloneTests(E2ETestCase):
    """A real log daemon process; the test is its launcher and a (misbehaving) sender."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="okws-logd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ini = "[okws]\nlog_dir = logs\n[service:hello]\nresource = a:B\npaths = /hello\n"

    def logd(self) -> LogdProcess:
        logd = LogdProcess(self.ini, self.dir).start()
        self.addCleanup(logd.kill)
        return logd

    def read(self, name: str) -> str:
        with open(os.path.join(self.dir, "logs", name), encoding="ascii") as f:
            return f.read()

    def test_malicious_records_escaped_and_reported(self) -> None:
        logd = self.logd()
        sock = logd.channel("hello.0", "service", 4242, service="hello", index=0)
        self.addCleanup(sock.close)
        forged = '127.0.0.1 - - [01/Jan/2000:00:00:00 +0000] "GET /admin HTTP/1.1" 200 1 "-" "-" admin 1'
        records = [
            {"kind": "access", "status": 200, "client": "10.0.0.1", "request": "GET /a HTTP/1.1",
             "user_agent": "x\n" + forged, "referer": "\r\n\x1b[2J", "evil": "yes", "service": "admin"},
            {"kind": "access", "status": "200"},
            ["not", "a", "record"],
            {"kind": "access", "status": 200, "client": "10.0.0.2 - - [forged]", "request": "GET /b HTTP/1.1\n" + forged},
            {"kind": "event", "level": "info", "text": "hi\n[2000-01-01T00:00:00.000000Z] [info] [launcher pid 1] forged",
             "traceback": "\n".join(["x"] * 3)},
            {"kind": "access", "status": 200, "user_agent": "u" * 100_000},
        ]
        self.assertEqual(logd.records(sock, 1, records), 6)
        access = self.read("access.log").splitlines()
        self.assertEqual(len(access), 3)
        self.assertTrue(access[0].startswith('10.0.0.1 - - '))
        self.assertIn('"\\x0d\\x0a\\x1b[2J" "x\\x0a127.0.0.1 - - [01/Jan/2000:00:00:00 +0000] \\"GET /admin', access[0])
        self.assertTrue(access[0].endswith(" hello -"), access[0])  # the launcher's service name, not "admin"
        self.assertTrue(access[1].startswith("10.0.0.2\\x20-\\x20-\\x20[forged] - - "), access[1])
        self.assertEqual(len(access[2]), len(access[2].encode("ascii")))
        for line in access:
            self.assertTrue(all(0x20 <= ord(c) < 0x7F for c in line), line)
        errors = self.read("error.log").splitlines()
        for line in errors:
            self.assertRegex(line, rf"^{ISO} \[\w+\] \[(hello\.0 pid 4242|logd pid \d+)\] ")
        report = [line for line in errors if "bad log record" in line]
        self.assertEqual(len(report), 1)
        self.assertIn("bad log record from hello.0 pid 4242 (seq 1): unknown field 'evil'; unknown field 'service'", report[0])
        self.assertIn("(and 3 more bad records in this batch)", report[0])
        # A service may not rotate the logs; the daemon says so and carries on.
        LogdProcess.send(sock, {"k": "reopen"})
        self.assertEqual(logd.records(sock, 7, [{"kind": "access", "status": 204}]), 7)
        self.assertIn("bad log message from hello.0 pid 4242: unexpected 'reopen' message", self.read("error.log"))
        self.assertNotIn("reopened", self.read("error.log"))

    def test_resent_after_kill_written_once(self) -> None:
        """Killed after writing but before the sender saw the ack: the resent records are skipped."""
        def hits(first: int, last: int) -> list[dict[str, object]]:
            return [{"kind": "access", "status": 200, "request": f"GET /?id={n} HTTP/1.1"} for n in range(first, last + 1)]

        first = self.logd()
        sock = first.channel("hello.0", "service", 4242, service="hello", index=0)
        self.assertEqual(first.records(sock, 1, hits(1, 5)), 5)
        first.kill()
        sock.close()
        second = self.logd()
        sock = second.channel("hello.0", "service", 4242, service="hello", index=0)
        self.addCleanup(sock.close)
        self.assertEqual(second.records(sock, 1, hits(1, 5)), 5)
        self.assertEqual(second.records(sock, 1, hits(1, 8)), 8)
        ids = re.findall(r"id=(\d+) ", self.read("access.log"))
        self.assertEqual(ids, [str(n) for n in range(1, 9)])
        # A new process with the same name is a new sender: its numbers start again.
        other = second.channel("hello.0", "service", 4243, service="hello", index=0)
        self.addCleanup(other.close)
        self.assertEqual(second.records(other, 1, hits(100, 100)), 1)
        self.assertIn("id=100 ", self.read("access.log"))
