"""
Running okws the way production runs servers (issue 15, items 15 and 16): socket activation as
systemd does it, the files in C{deploy/}, and a fleet of two sites behind a real HAProxy.

Socket activation is tested by doing what systemd does: the test binds and listens, then
starts twistd with the socket on fd 3 and C{LISTEN_FDS}, C{LISTEN_PID} (twistd's own pid: the
wrapper execs) and C{LISTEN_FDNAMES} set.  Real processes and HTTP over loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap


from tests.e2e import E2ETestCase, REPO, TWISTD, Site, free_port, pids_holding_socket

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello
"""

#: What systemd does before it starts a socket-activated service: the listening socket on fd 3,
#: LISTEN_FDS=1, LISTEN_PID=<the service's pid> (exec keeps this pid), LISTEN_FDNAMES.
#: argv: FD NAMES PID_RIGHT COMMAND...
SD_EXEC = """
import os, sys
fd, names, pid_right = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "yes"
if fd != 3:
    os.dup2(fd, 3, inheritable=True)
    os.close(fd)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()) if pid_right else "1")
if names:
    env["LISTEN_FDNAMES"] = names
os.execve(sys.argv[4], sys.argv[4:], env)
"""


def write_site(listen: str, okws: str = "", services: str = SERVICES) -> str:
    d = tempfile.mkdtemp(prefix="okws-deploy-")
    for name in ("services", "tests", "templates"):
        os.symlink(os.path.join(REPO, name), os.path.join(d, name))
    with open(os.path.join(d, "site.ini"), "w") as f:
        f.write(f"[okws]\nlisten = {listen}\n" + textwrap.dedent(okws) + "\n" + textwrap.dedent(services))
    return d


class SocketActivationTests(E2ETestCase):
    def listening(self, kind: int = socket.SOCK_STREAM) -> tuple[socket.socket, int]:
        sock = socket.socket(socket.AF_INET, kind)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        return sock, sock.getsockname()[1]

    def activated(self, sock: socket.socket, listen: str, names: str = "http", pid_right: bool = True,
                  okws: str = "") -> tuple[Site, "subprocess.Popen[bytes] | None"]:
        d = write_site(listen, okws)
        command = [sys.executable, "-c", SD_EXEC, str(sock.fileno()), names, "yes" if pid_right else "no",
                   *TWISTD, "-n", "--pidfile=", "okws", "--config", os.path.join(d, "site.ini")]
        site = Site.launch(command, d, sock.getsockname()[1], dict(os.environ, PYTHONPATH=REPO), pass_fds=(sock.fileno(),))
        self.addCleanup(site.close)
        return site, site.proc

    def test_by_name(self) -> None:
        """
        C{systemd:domain=INET:name=http}: okws serves on the socket it was given, the very one
        (the kernel's inode), and a relaunched dispatcher gets it again.
        """
        sock, port = self.listening()
        site, _ = self.activated(sock, "systemd:domain=INET:name=http")
        site.wait_for("site ready", 60)
        self.assertEqual(site.get("/hello").status, 200)
        inode = os.fstat(sock.fileno()).st_ino
        dispatcher = site.pids()["dispatcher"]
        self.assertIn(dispatcher, pids_holding_socket(inode), "the dispatcher accepts on our socket")
        mark = site.mark()
        os.kill(dispatcher, signal.SIGKILL)
        site.wait_for(r"dispatcher pid \d+ is ready", after=mark)
        self.assertEqual(site.get("/hello").status, 200)
        new = site.pids()["dispatcher"]
        self.assertNotEqual(new, dispatcher)
        self.assertIn(new, pids_holding_socket(inode))

    def test_by_index(self) -> None:
        sock, port = self.listening()
        site, _ = self.activated(sock, "systemd:domain=INET:index=0")
        site.wait_for("site ready", 60)
        self.assertEqual(site.get("/hello").status, 200)

    def test_systemd_socket_activate(self) -> None:
        """systemd's own tool for trying socket activation (Debian's systemd package), where there is one:
        the first request, sent before okws runs, is answered."""
        tool = shutil.which("systemd-socket-activate")
        if tool is None:
            raise self.skipTest("no systemd-socket-activate here")
        port = free_port()
        d = write_site("systemd:domain=INET:name=http")
        site = Site.launch([tool, "--fdname=http", "-l", f"127.0.0.1:{port}", *TWISTD, "-n", "--pidfile=", "okws",
                            "--config", os.path.join(d, "site.ini")], d, port, dict(os.environ, PYTHONPATH=REPO))
        self.addCleanup(site.close)
        site.wait_for(f"Listening on 127.0.0.1:{port}", 60)
        # The tool starts okws on the first connection (activation on demand): that request
        # waits in the socket's queue while okws starts, and is answered.
        self.assertEqual(site.get("/hello", timeout=90).status, 200)
        site.wait_for("site ready")

    def refused(self, sock: socket.socket, listen: str, needle: str, **kw: object) -> None:
        site, proc = self.activated(sock, listen, **kw)  # type: ignore[arg-type]
        assert proc is not None
        self.assertEqual(proc.wait(60), 1, site.log_text())
        site.drain_log()
        text = "\n".join(site.lines)
        self.assertIn(needle, text)
        self.assertNotIn("Traceback", text)

    def test_no_names(self) -> None:
        """Without LISTEN_FDNAMES Twisted sees no socket (as systemd-socket-activate without --fdname)."""
        sock, _ = self.listening()
        self.refused(sock, "systemd:domain=INET:index=0", "systemd passed 0 socket(s)", names="")

    def test_not_for_us(self) -> None:
        sock, _ = self.listening()
        self.refused(sock, "systemd:domain=INET:name=http", "systemd passed no socket named 'http' (have: none",
                     pid_right=False)

    def test_not_a_stream(self) -> None:
        sock, _ = self.listening(socket.SOCK_DGRAM)
        self.refused(sock, "systemd:domain=INET:name=http", "is a AF_INET SOCK_DGRAM socket, not listening")


DEPLOY = os.path.join(REPO, "deploy")
#: What the deploy files call, as this test suite runs it.
OPT_BIN = {
    "/opt/okws/bin/twistd": TWISTD,
    "/opt/okws/bin/okws-ctl": [sys.executable, "-m", "okws_twisted.ctl"],
}


def unit(name: str) -> dict[str, list[str]]:
    """A systemd unit file's settings (a key given twice keeps both values)."""
    out: dict[str, list[str]] = {}
    with open(os.path.join(DEPLOY, name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                out.setdefault(key, []).append(value)
    return out


def command(line: str, site_dir: str, **variables: str) -> list[str]:
    """A deploy file's command line, run against C{site_dir} with this suite's interpreter."""
    import shlex

    words = []
    for word in shlex.split(line.replace("/srv/okws", site_dir)):
        for name, value in variables.items():
            word = word.replace(f"${name}", value)
        words.extend(OPT_BIN.get(word, [word]))
    return words


class SystemdUnitTests(E2ETestCase):
    """deploy/okws.service and okws.socket: what systemd would do with them, done here."""

    def test_verify(self) -> None:
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise self.skipTest("no systemd-analyze here")
        d = tempfile.mkdtemp(prefix="okws-unit-")
        bin_dir = os.path.dirname(sys.executable)
        for name in ("okws.service", "okws.socket"):
            with open(os.path.join(DEPLOY, name)) as f:
                text = f.read().replace("/opt/okws/bin/", bin_dir + "/").replace("/srv/okws", d)
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        if not os.path.exists(os.path.join(bin_dir, "twistd")) or not os.path.exists(os.path.join(bin_dir, "okws-ctl")):
            raise self.skipTest(f"no twistd and okws-ctl beside {sys.executable}")
        p = subprocess.run([tool, "verify", os.path.join(d, "okws.service"), os.path.join(d, "okws.socket")],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual((p.returncode, p.stderr), (0, ""), p.stdout)

    def test_stop_settings(self) -> None:
        """SIGTERM to the launcher only, and time for okws's whole ordered stop before SIGKILL."""
        from okws_twisted.config import SiteConfig
        from okws_twisted.launcher.site import LOGD_STOP_TIMEOUT

        service = unit("okws.service")
        self.assertEqual(service["KillMode"], ["mixed"])
        self.assertEqual(service["KillSignal"], ["SIGTERM"])
        self.assertIn("143", service["SuccessExitStatus"][0].split())
        defaults = {f.name: f.default for f in SiteConfig.__dataclass_fields__.values()}
        self.assertGreater(float(service["TimeoutStopSec"][0]),
                           defaults["drain_timeout"] + defaults["kill_timeout"] + LOGD_STOP_TIMEOUT)
        self.assertEqual(unit("okws.socket")["Service"], ["okws.service"])

    def test_commands(self) -> None:
        """
        The unit's own command lines, run as systemd runs them: ExecStartPre checks the site,
        ExecStart serves on the socket okws.socket describes, ExecReload reloads, KillSignal to
        the main pid stops everything with an exit status the unit calls success.
        """
        service, socket_unit = unit("okws.service"), unit("okws.socket")
        name = socket_unit["FileDescriptorName"][0]
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(int(socket_unit["Backlog"][0]))
        d = write_site(f"systemd:domain=INET:name={name}", f"jail_root = /var/lib/okws-test/{os.urandom(4).hex()}\n")
        env = dict(os.environ, PYTHONPATH=REPO)
        check = subprocess.run(command(service["ExecStartPre"][0], d), capture_output=True, text=True, cwd=d,
                               env=env, timeout=120)
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn(": ok (1 services, 1 processes)", check.stdout)
        start = [sys.executable, "-c", SD_EXEC, str(sock.fileno()), name, "yes", *command(service["ExecStart"][0], d)]
        site = Site.launch(start, d, sock.getsockname()[1], env, pass_fds=(sock.fileno(),))
        self.addCleanup(site.close)
        site.wait_for("site ready", 60)
        self.assertEqual(site.get("/hello").status, 200)
        assert site.proc is not None
        main = str(site.proc.pid)
        mark = site.mark()
        subprocess.run(command(service["ExecReload"][0], d, MAINPID=main), check=True, timeout=30)
        site.wait_for(r"reloaded \S+: nothing changed", after=mark)
        children = site.all_pids()
        os.kill(site.proc.pid, getattr(signal, service["KillSignal"][0]))
        status = site.proc.wait(float(service["TimeoutStopSec"][0]))
        self.assertIn(str(128 - status if status < 0 else status), service["SuccessExitStatus"][0].split())
        from tests.e2e import process_exists

        self.assertEqual([p for p in children if process_exists(p)], [], "KillMode=mixed: the launcher stopped every child")


class LogrotateTests(E2ETestCase):
    def test_postrotate(self) -> None:
        """deploy/okws.logrotate's postrotate command makes okws write to a fresh file, losing nothing."""
        with open(os.path.join(DEPLOY, "okws.logrotate")) as f:
            text = f.read()
        postrotate = text.split("postrotate", 1)[1].split("endscript", 1)[0].strip()
        line, _, _ = postrotate.partition(" >")
        site = Site(SERVICES).start()
        self.addCleanup(site.close)
        self.assertEqual(site.get("/hello?n=before").status, 200)
        site.wait_for_log("access.log", lambda t: "n=before" in t)
        os.rename(os.path.join(site.log_dir, "access.log"), os.path.join(site.log_dir, "access.log.1"))
        p = subprocess.run(command(line, site.dir), capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=REPO))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(site.get("/hello?n=after").status, 200)
        after = site.wait_for_log("access.log", lambda t: "n=after" in t)
        self.assertNotIn("n=before", after)
        with open(os.path.join(site.log_dir, "access.log.1")) as f:
            self.assertIn("n=before", f.read())
        self.assertIn(f"{site.log_dir.replace(site.dir, '/srv/okws')}/*.log", text)


class _Loop:
    """Clients asking HAProxy for /hello over and over (new connections and one kept alive), counting."""

    def __init__(self, port: int) -> None:
        import threading

        self.port = port
        self.failures: list[str] = []
        self.served_by: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(keep,), daemon=True) for keep in (False, True, False)]

    @property
    def ok(self) -> int:
        return len(self.served_by)

    def wait(self, count: int, timeout: float = 60) -> None:
        """Until C{count} requests have succeeded (bounded; a failure shows in the assertion after)."""
        import time

        deadline = time.monotonic() + timeout
        while self.ok < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.ok} requests succeeded within {timeout}s; failures: {self.failures[:5]}")
            time.sleep(0.05)

    def __enter__(self) -> "_Loop":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, keep_alive: bool) -> None:
        import http.client

        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or not keep_alive:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/hello?fleet=1")
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    self.served_by.append(r.getheader("X-Okws-Pid") or "")
                else:
                    self.failures.append(f"{r.status} {r.reason}")
            except Exception as e:  # every failure counts: the point is that there are none
                self.failures.append(repr(e))
                conn = None
        if conn is not None:
            conn.close()


class FleetTests(E2ETestCase):
    """
    Two okws sites behind a real HAProxy running deploy/haproxy.cfg: /health checks, the PROXY
    protocol, and one site stopped with okws-ctl stop while clients loop: 0 failed requests.
    """

    def haproxy(self, front: int, servers: list[tuple[int, int]]) -> subprocess.Popen[bytes]:
        """deploy/haproxy.cfg with loopback addresses and these ports; started by the test, as its own process."""
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
        if binary is None:
            raise self.skipTest("needs haproxy (apt-get install haproxy, as .ci/run does)")
        with open(os.path.join(DEPLOY, "haproxy.cfg")) as f:
            text = f.read()
        text = text.replace("    bind :80\n", f"    bind 127.0.0.1:{front}\n")
        lines = []
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["server"]:
                port, admin = servers[len([l for l in lines if l.split()[:1] == ["server"]])]
                line = line.replace(words[2], f"127.0.0.1:{port}").replace(" check port 9090 ", f" check port {admin} ")
            lines.append(line)
        cfg = os.path.join(tempfile.mkdtemp(prefix="okws-haproxy-"), "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.assertEqual(text.count("\n    server "), len(servers), "the file's servers")
        proc = subprocess.Popen([binary, "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(self._stop, proc)
        return proc

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()  # our own process, by its pid
        proc.wait(10)

    def okws(self, uid_first: int) -> tuple[Site, int]:
        admin = free_port()
        site = Site(
            SERVICES,
            f"admin = tcp:{admin}\nproxy_trusted = 127.0.0.1\ndrain_timeout = 5\n"
            # Two launchers side by side: each its own ids and jails.
            f"uid_range = {uid_first}-{uid_first + 99}\njail_root = /var/lib/okws-test/{os.urandom(4).hex()}\n",
            listen="haproxy:tcp:{port}:interface=127.0.0.1",
        )
        self.addCleanup(site.close)
        return site, admin

    def test_stop_one_site_under_load(self) -> None:
        a, admin_a = self.okws(53000)
        b, admin_b = self.okws(53100)
        a.start()
        b.start()
        front = free_port()
        proxy = self.haproxy(front, [(a.port, admin_a), (b.port, admin_b)])
        pids_a, pids_b = str(a.pids()["hello.0"]), str(b.pids()["hello.0"])
        # Both sites serve through HAProxy once its first health checks passed.
        import time

        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while seen != {pids_a, pids_b}:
            self.assertIsNone(proxy.poll(), "haproxy exited")
            self.assertLess(time.monotonic(), deadline, f"not both sites behind haproxy yet (saw {seen})")
            try:
                with socket.create_connection(("127.0.0.1", front), timeout=5) as s:
                    s.sendall(b"GET /hello HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
                    from tests.e2e import read_response

                    r = read_response(s)
                if r.status == 200:
                    seen.add(r.header("x-okws-pid") or "")
            except OSError:
                pass
            time.sleep(0.05)  # waiting for HAProxy's health checks (every 500 ms)
        # The PROXY protocol: each site logged the client's address from the header.
        for site in (a, b):
            site.wait_for_log("access.log", lambda t: t.startswith("127.0.0.1 ") and "/hello" in t)
        with _Loop(front) as loop:
            loop.wait(200)
            from tests.test_e2e_operations import ctl

            p = ctl(a, "stop")
            self.assertEqual(p.returncode, 0, p.stderr)
            assert a.proc is not None
            a.proc.wait(60)
            stopped_at = len(loop.served_by)
            loop.wait(stopped_at + 200)
        self.assertEqual(loop.failures, [], f"{len(loop.failures)} failed of {loop.ok + len(loop.failures)}")
        self.assertEqual(set(loop.served_by[stopped_at:]), {pids_b}, "after the stop only site b serves")
        self.assertIn(pids_a, loop.served_by[:stopped_at])

    def test_shared_database(self) -> None:
        """Two sites, one PostgreSQL, each through its own database proxy: what one site stores,
        the other reads (the second half of growing past one machine)."""
        from tests.pgcluster import PostgresCluster
        from tests.sites.database import write_database_files
        from tests.test_e2e_database import post

        if not PostgresCluster.available():
            raise self.skipTest("needs PostgreSQL's server (apt-get install postgresql, as .ci/run does)")
        cluster = PostgresCluster()
        info = cluster.start()
        self.addCleanup(cluster.stop)
        services = SERVICES + "\n[service:notes]\nresource = tests.sites.database:Calls\npaths = /notes\ndb = main\nqueries = add_token count_tokens\n"
        sites = []
        for uid_first in (53200, 53300):
            site = Site(
                services,
                f"uid_range = {uid_first}-{uid_first + 99}\n"
                f"\n[db:main]\nurl = {info.tcp_url()}\npassword_file = db.password\n"
                "queries = sql/queries.sql\nschema = sql/schema.sql\n",
            )
            self.addCleanup(site.close)
            write_database_files(site.dir, "postgresql")
            with open(os.path.join(site.dir, "db.password"), "w") as f:
                f.write(info.password + "\n")
            os.chmod(os.path.join(site.dir, "db.password"), 0o600)
            sites.append(site.start())
        a, b = sites
        before = int(post(b, "/notes", {"op": "call", "query": "count_tokens", "params": {}})["result"])
        for n in range(3):
            answer = post(a, "/notes", {"op": "call", "query": "add_token", "params": {"token": f"fleet-{n}", "service": "a"}})
            self.assertEqual(answer["result"], "1")
        after = int(post(b, "/notes", {"op": "call", "query": "count_tokens", "params": {}})["result"])
        self.assertEqual(after, before + 3, "site b reads what site a stored, through its own proxy")
        # Each site reached the database through its own proxy process.
        self.assertNotEqual(a.pids()["db.main"], b.pids()["db.main"])
