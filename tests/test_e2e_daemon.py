"""
The site starts and serves whatever the umask, as root and not, in the foreground and as a
daemon (issue 15, item 1).

twistd without ``-n`` sets the launcher's umask to 077.  Everything okws creates must get the
mode the docs promise anyway (log_dir 0750, log files 0640), and, as root, each jailed child
must still reach what its jail shows (the jail's skeleton is made with explicit modes).  Each
combination runs a real ``twistd okws``: the foreground ones under ``umask 077`` in the shell,
the daemon ones with twistd's own daemon umask.  The kernel says what the umask was
(``/proc/PID/status``), so each test proves the condition it claims to test.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import threading
import time


from tests.e2e import E2ETestCase, EVENT_TIMEOUT, POLL_INTERVAL, START_TIMEOUT, TWISTD, Site, process_exists

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
#: The shell words that run the rest of the command under umask 077.
UMASK_077 = ["sh", "-c", 'umask 077; exec "$@"', "sh"]

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello
"""


def status_of(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class _Daemon:
    """The launcher twistd left running after it daemonized (not our child): its pid, from the pidfile."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdout = None

    def poll(self) -> int | None:
        return None if process_exists(self.pid) else 0

    def send_signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while process_exists(self.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"launcher pid {self.pid} still runs after {timeout}s")
            time.sleep(POLL_INTERVAL)
        return 0


class DaemonSite(Site):
    """A L{Site} started the way an operator starts a daemon: twistd without C{-n}."""

    def start(self, wait: bool = True) -> "DaemonSite":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + env.get("PYTHONPATH", "")
        self.logfile = "twistd.log"
        pidfile = os.path.join(self.dir, "twistd.pid")
        p = subprocess.run(
            [*self.prefix, *TWISTD, f"--pidfile={pidfile}", f"--logfile={self.logfile}", "okws", "--config", self.ini],
            cwd=self.dir, env=env, capture_output=True, text=True, timeout=START_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        if p.returncode != 0:
            raise AssertionError(f"twistd exited {p.returncode}: {p.stdout}{p.stderr}")
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
                break
            except (FileNotFoundError, ValueError):
                if time.monotonic() > deadline:
                    raise AssertionError("the daemon wrote no pidfile") from None
                time.sleep(POLL_INTERVAL)
        self.proc = _Daemon(pid)  # type: ignore[assignment]
        threading.Thread(target=self._tail, daemon=True).start()
        if wait:
            self.wait_for(r"site ready", START_TIMEOUT)
        return self

    def kill(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        for pid in self.all_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class UmaskTests(E2ETestCase):
    """Root and not, foreground under umask 077 and daemon: the site serves, modes are as documented."""

    def _site(self, daemon: bool, as_root: bool) -> Site:
        if not as_root:
            setpriv = shutil.which("setpriv")
            if IS_ROOT and setpriv is None:
                raise self.skipTest("needs setpriv (util-linux) to run the launcher as an ordinary user")
        elif not IS_ROOT:
            raise self.skipTest("needs root: the launcher runs as root in this case")
        jail_root = os.path.join("/var/lib/okws-test", os.urandom(4).hex())
        cls = DaemonSite if daemon else Site
        site = cls(SERVICES, f"jail_root = {jail_root}\nrestart_delay_min = 0.2\n")
        self.addCleanup(site.close)
        self.addCleanup(shutil.rmtree, jail_root, True)
        if not as_root and IS_ROOT:
            # As in test_e2e_jail: uid 65534 reaches the root-owned interpreter through an
            # ambient CAP_DAC_READ_SEARCH (every okws process then runs as that one uid,
            # so the modes under test are between processes of one uid and the world).
            os.chown(site.dir, NOBODY, NOBODY)
            os.chmod(site.dir, 0o755)
            site.prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        if not daemon:
            site.prefix = [*site.prefix, *UMASK_077]
        site.start()
        return site

    def _check(self, site: Site, as_root: bool) -> None:
        launcher = site.proc.pid  # type: ignore[union-attr]
        self.assertEqual(status_of(launcher)["Umask"], "0077", "the launcher runs under umask 077")
        self.assertEqual(status_of(launcher)["Uid"].split()[0], "0" if as_root else str(NOBODY))
        r = site.get("/hello")
        self.assertEqual(r.status, 200, site.log_text())
        for name, pid in site.pids().items():
            self.assertEqual(status_of(pid)["Umask"], "0027", f"{name}: children set their own umask")
        self.assertNotRegex(site.log_text(), r"crashed|died while starting")
        self.assertEqual(mode_of(site.log_dir), 0o750, "log_dir")
        for name in ("access.log", "error.log"):
            self.assertEqual(mode_of(os.path.join(site.log_dir, name)), 0o640, name)
        site.stop()

    def test_root_foreground_umask_077(self) -> None:
        self._check(self._site(daemon=False, as_root=True), as_root=True)

    def test_root_daemon(self) -> None:
        self._check(self._site(daemon=True, as_root=True), as_root=True)

    def test_not_root_foreground_umask_077(self) -> None:
        self._check(self._site(daemon=False, as_root=False), as_root=False)

    def test_not_root_daemon(self) -> None:
        self._check(self._site(daemon=True, as_root=False), as_root=False)


class MakeDirsTests(E2ETestCase):
    """L{okws_twisted.jail.make_dirs}: every directory it makes has the mode asked for, whatever the umask."""

    def test_umask_077(self) -> None:
        from okws_twisted.jail import make_dirs

        base = self.mktemp()
        os.mkdir(base)
        old = os.umask(0o077)
        try:
            make_dirs(os.path.join(base, "a", "b", "c"))
            make_dirs(os.path.join(base, "a", "s"), 0o700)
        finally:
            os.umask(old)
        for rel in ("a", "a/b", "a/b/c"):
            self.assertEqual(mode_of(os.path.join(base, rel)), 0o755, rel)
        self.assertEqual(mode_of(os.path.join(base, "a", "s")), 0o700)

