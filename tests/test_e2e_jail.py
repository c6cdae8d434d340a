"""
Privilege separation, checked by the kernel's view (issue: "each process holds only what it needs").

Run as root (CI is root), the launcher jails every child; these tests read
``/proc/PID/status`` and ``/proc/PID/root`` from outside, and ask a
"compromised" service (tests/sites/compromised.py) to try every forbidden act
from inside.  Not root: these tests skip, and the non-root mode is what every
other end-to-end test exercises.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import urllib.parse

import okws_twisted
from tests.e2e import LAUNCHER_ONLY_ENV, E2ETestCase, Site

IS_ROOT = os.geteuid() == 0

SERVICES = """
[service:evil]
resource = tests.sites.compromised:Evil
paths = /evil

[service:hello]
resource = services.hello:Hello
paths = /hello

[service:open]
resource = tests.sites.compromised:Evil
paths = /open
network = host
scratch = yes
"""


def status_of(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def environ_of(pid: int) -> dict[str, str]:
    """A process's environment, as the kernel keeps it (root can read any process's)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = [e.decode("utf-8", "replace") for e in f.read().split(b"\0") if e]
    return dict(e.partition("=")[::2] for e in entries)


class JailTests(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: the launcher only jails children when it runs as root"

    @classmethod
    def site(cls) -> Site:
        site = getattr(cls, "_site", None)
        if site is None:
            site = Site(SERVICES, "restart_delay_min = 0.2\n").start()
            atexit.register(site.close)
            cls.jail_root = site.jail_root
            cls._site = site
        return site

    def test_every_child_is_jailed(self) -> None:
        site = self.site()
        pids = site.pids()
        uids = {}
        for name, pid in pids.items():
            st = status_of(pid)
            uid = st["Uid"].split()
            gid = st["Gid"].split()
            self.assertEqual(len(set(uid)), 1, f"{name}: {uid}")
            self.assertEqual(len(set(gid)), 1, f"{name}: {gid}")
            self.assertNotEqual(uid[0], "0", name)
            self.assertEqual(st["Groups"], "", name)
            self.assertEqual(st["NoNewPrivs"], "1", name)
            self.assertEqual(int(st["CapBnd"], 16), 0, name)
            self.assertEqual(int(st["CapEff"], 16), 0, name)
            self.assertEqual(os.readlink(f"/proc/{pid}/root"), os.path.join(self.jail_root, name), name)
            with open(f"/proc/{pid}/limits") as f:
                limits = f.read()
            self.assertRegex(limits, r"Max core file size\s+0\s+0", name)
            self.assertRegex(limits, r"Max open files\s+\d+\s+\d+", name)
            uids[name] = uid[0]
        self.assertEqual(len({uids["evil.0"], uids["hello.0"], uids["open.0"], uids["dispatcher"]}), 4, uids)
        # The launcher alone stays root.
        assert site.proc is not None
        self.assertEqual(status_of(site.proc.pid)["Uid"].split()[0], "0")

    def test_compromised_service_can_do_nothing_forbidden(self) -> None:
        site = self.site()
        pids = site.pids()
        secret_dir = os.path.join(site.dir, "keys")
        os.makedirs(secret_dir, exist_ok=True)
        key = os.path.join(secret_dir, "site.key")
        with open(key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\n")
        query = [("pid", str(pids["hello.0"])), ("pid", str(pids["dispatcher"])), ("pid", str(pids["open.0"]))]
        query += [
            ("path", os.path.join(site.dir, "services", "hello.py")),  # another service's code
            ("path", os.path.join(self.jail_root, "hello.0")),  # another service's jail
            ("path", key),  # a TLS key
            ("path", os.path.join(site.dir, "site.ini")),
            ("path", "/etc/shadow"),
            ("path", os.path.join(site.dir, "templates", "errors", "404.html")),
            ("wpath", os.path.join(site.dir, "logs", "access.log")),
            ("wpath", os.path.join(self.jail_root, "scratch", "open", "x")),
            ("port", str(site.port)),
        ]
        r = site.get("/evil?" + urllib.parse.urlencode(query))
        self.assertEqual(r.status, 200, r.body)
        report = json.loads(r.body)
        self.assertNotEqual(report.pop("uid"), 0)
        succeeded = {act: result for act, result in report.items() if result == "SUCCEEDED"}
        self.assertEqual(succeeded, {}, report)
        self.assertEqual(report["connect 127.0.0.1"], "EPERM")
        self.assertEqual(report["write own jail /"], "EROFS")

    def test_network_host_and_scratch_are_opt_in(self) -> None:
        site = self.site()
        query = urllib.parse.urlencode([("wpath", "/scratch/note"), ("port", str(site.port))])
        report = json.loads(site.get("/open?" + query).body)
        self.assertEqual(report["write /scratch/note"], "SUCCEEDED")
        again = json.loads(site.get("/open?path=/scratch/note").body)
        self.assertEqual(again["read /scratch/note"], "SUCCEEDED")
        self.assertEqual(report["connect 127.0.0.1"], "SUCCEEDED")
        self.assertEqual(report["write own jail /"], "EROFS")
        scratch = os.path.join(self.jail_root, "scratch", "open")
        st = os.stat(scratch)
        self.assertEqual(oct(st.st_mode & 0o777), "0o700")
        self.assertEqual(st.st_uid, int(status_of(site.pids()["open.0"])["Uid"].split()[0]))

    def test_network_none_is_its_own_empty_namespace(self) -> None:
        """network = none: a network namespace apart from the launcher's (and every other), with only lo."""
        site = self.site()
        assert site.proc is not None
        pids = site.pids()
        host = os.readlink(f"/proc/{site.proc.pid}/ns/net")
        evil, hello = (os.readlink(f"/proc/{pids[name]}/ns/net") for name in ("evil.0", "hello.0"))
        self.assertNotEqual(evil, host)
        self.assertNotEqual(hello, host)
        self.assertNotEqual(evil, hello)
        with open(f"/proc/{pids['evil.0']}/net/dev") as f:
            interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
        self.assertEqual(interfaces, ["lo"])
        # network = host shares the launcher's.
        self.assertEqual(os.readlink(f"/proc/{pids['open.0']}/ns/net"), host)

    def test_no_child_is_dumpable(self) -> None:
        """A non-dumpable process's /proc files belong to root, not to its own uid (so its uid cannot read them)."""
        site = self.site()
        for name, pid in site.pids().items():
            self.assertNotEqual(status_of(pid)["Uid"].split()[0], "0", name)
            for entry in ("status", "environ", "maps"):
                st = os.stat(f"/proc/{pid}/{entry}")
                self.assertEqual((st.st_uid, st.st_gid), (0, 0), f"{name}: /proc/{pid}/{entry}")

    def test_child_environment_is_only_what_architecture_lists(self) -> None:
        """PATH, PYTHONPATH (okws, and the site for services), PYTHONUNBUFFERED, LANG and MALLOC_ARENA_MAX; nothing of the launcher's."""
        site = self.site()
        assert site.proc is not None
        self.assertIn(LAUNCHER_ONLY_ENV, environ_of(site.proc.pid))  # there to leak
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(okws_twisted.__file__)))
        for name, pid in site.pids().items():
            env = environ_of(pid)
            self.assertEqual(sorted(env), ["LANG", "MALLOC_ARENA_MAX", "PATH", "PYTHONPATH", "PYTHONUNBUFFERED"], name)
            self.assertEqual(env["MALLOC_ARENA_MAX"], "2", name)
            service = name.rpartition(".")[0] in ("evil", "hello", "open")
            want = [package_parent, site.dir] if service else [package_parent]
            self.assertEqual(env["PYTHONPATH"].split(os.pathsep), want, name)

    def test_jail_root_is_root_owned(self) -> None:
        self.site()
        st = os.stat(self.jail_root)
        self.assertEqual((st.st_uid, st.st_mode & 0o022), (0, 0))


class NotRootTests(E2ETestCase):
    """The same site, launched by an ordinary user: no jails, one line saying so."""

    def test_not_root_runs_unjailed(self) -> None:
        setpriv = shutil.which("setpriv")
        if IS_ROOT and setpriv is None:
            raise self.skipTest("needs setpriv (util-linux) to run the launcher as an ordinary user")
        site = Site("[service:hello]\nresource = services.hello:Hello\npaths = /hello\n")
        if IS_ROOT:
            # uid 65534 keeps read access to the root-owned interpreter through an
            # ambient CAP_DAC_READ_SEARCH, and nothing else of root's.
            os.chown(site.dir, 65534, 65534)
            site.prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        self.addCleanup(site.close)
        site.start()
        site.wait_for(r"okws is not running as root: every process runs as uid \d+ without jails")
        self.assertEqual(site.get("/hello").status, 200)
        for name, pid in site.pids().items():
            st = status_of(pid)
            self.assertNotEqual(st["Uid"].split()[0], "0", name)
            self.assertEqual(os.readlink(f"/proc/{pid}/root"), "/", name)


class OwnershipTests(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: ownership is only arranged when the launcher runs as root"

    def test_log_dir_belongs_to_the_log_daemon_alone(self) -> None:
        site = JailTests.site()
        logd = int(status_of(site.pids()["logd"])["Uid"].split()[0])
        st = os.stat(os.path.join(site.dir, "logs"))
        self.assertEqual(st.st_uid, logd)
        self.assertEqual(st.st_mode & 0o007, 0, "nobody else may read or enter the log directory")
        for name in ("evil.0", "hello.0", "dispatcher", "pubd"):
            self.assertNotEqual(int(status_of(site.pids()[name])["Uid"].split()[0]), logd, name)

    def test_privileged_port_with_an_unprivileged_dispatcher(self) -> None:
        port = None
        for candidate in range(1023, 900, -1):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", candidate))
                except OSError:
                    continue
                port = candidate
                break
        if port is None:
            raise self.skipTest("no free port below 1024 on 127.0.0.1")
        site = Site("[service:hello]\nresource = services.plain:Hello\npaths = /hello\n", port=port)
        self.addCleanup(site.close)
        site.start()
        self.assertEqual(site.get("/hello").status, 200)
        dispatcher = status_of(site.pids()["dispatcher"])
        self.assertNotEqual(dispatcher["Uid"].split()[0], "0")
        self.assertEqual(int(dispatcher["CapEff"], 16), 0)
