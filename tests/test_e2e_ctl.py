"""
The operator's tools (issue 15, items 8 to 12): okws-ctl's output and exit codes, C{okws-ctl
check}, an import failure named by file and line, the request id on a traceback's record, and
twistd's log with each child line once.

Real processes (see L{tests.e2e}); okws-ctl is run as a command, as an operator runs it.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile


from tests.e2e import E2ETestCase, REPO, TWISTD, Site, free_port
from tests.test_e2e_operations import FAST, ctl

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello
instances = 2

[service:failing]
resource = tests.sites.failing:Failing
paths = /failing
"""

#: twistd's timestamp (2026-05-10T12:00:00+0000) and the ISO time a child's own logger would add.
TWISTD_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d{4}"
ANY_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


def run_ctl(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "okws_twisted.ctl", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


class CtlTests(E2ETestCase):
    site: Site | None = None

    @classmethod
    def live(cls) -> Site:
        if cls.site is None:
            site = Site(SERVICES, FAST)
            # One site for the class; trial runs no class fixtures, so it goes at exit.
            atexit.register(site.close)
            cls.site = site.start()
        return cls.site


    def test_json_before_or_after_the_command(self) -> None:
        site = self.live()
        for args in (("--json", "status"), ("status", "--json")):
            p = ctl(site, *args)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertTrue(json.loads(p.stdout)["ok"], args)
        p = run_ctl("status", "--config", site.ini)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("hello.1", p.stdout)

    def test_text_unless_json(self) -> None:
        site = self.live()
        p = ctl(site, "reload")
        self.assertEqual((p.returncode, p.stdout), (0, f"reloaded {site.ini}: nothing changed\n"), p.stderr)
        p = ctl(site, "rotate-logs")
        self.assertEqual((p.returncode, p.stdout), (0, "log files reopened\n"), p.stderr)
        p = ctl(site, "rotate-logs", "--json")
        self.assertEqual(json.loads(p.stdout), {"ok": True, "result": {"reopened": True}})

    def test_errors_are_plain(self) -> None:
        p = ctl(self.live(), "relaunch", "nosuch")
        self.assertEqual((p.returncode, p.stderr), (1, "okws-ctl: no service named 'nosuch'\n"))

    def test_could_not_reach_is_2(self) -> None:
        d = tempfile.mkdtemp(prefix="okws-ctl-")
        p = run_ctl("--config", os.path.join(d, "site.ini"), "status")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertEqual(p.stderr, f"okws-ctl: {d}/site.ini: cannot read: No such file or directory\n")
        p = run_ctl("--socket", os.path.join(d, "okws.ctl"), "status")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("cannot reach the launcher", p.stderr)
        with open(os.path.join(d, "site.ini"), "w") as f:
            f.write("[okws]\n[service:a]\nresource = services.hello:Hello\npaths = /\n")
        p = run_ctl("stop", "--config", os.path.join(d, "site.ini"))
        self.assertEqual(p.returncode, 2, p.stderr)

    def test_sighup_logs_text(self) -> None:
        site = self.live()
        mark = site.mark()
        assert site.proc is not None
        site.proc.send_signal(signal.SIGHUP)
        line = site.wait_for(r"reloaded \S*site\.ini: .*", after=mark).group()
        self.assertEqual(line, f"reloaded {site.ini}: nothing changed")

    def test_request_id_on_the_traceback(self) -> None:
        """The id in a failed request's error-log line finds its traceback."""
        site = self.live()
        self.assertEqual(site.get("/failing").status, 500)
        text = site.wait_for_log("error.log", lambda t: "[request_id " in t and "500 \"GET /failing" in t)
        status = re.search(r'500 "GET /failing HTTP/1.1" from \S+ service \S+ request_id (\S+)', text)
        assert status is not None, text
        rid = status.group(1)
        render = [l for l in text.splitlines() if f"[request_id {rid}]" in l]
        self.assertEqual(len(render), 1, text)
        self.assertIn("render GET /failing failed", render[0])
        after = text.split(render[0], 1)[1].splitlines()[1:4]
        self.assertTrue(any("Traceback" in l for l in after), after)

    def test_twistd_log_lines_once(self) -> None:
        """One timestamp and one source on each line; no per-process noise at start-up."""
        site = self.live()
        site.drain_log()
        lines = [l for l in site.lines if l.strip()]
        self.assertGreater(len(lines), 10)
        for line in lines:
            self.assertRegex(line, rf"^{TWISTD_TIME} \[[^\]]+\] ", line)
            self.assertEqual(len(re.findall(ANY_TIME, line)), 1, line)
        children = [l for l in lines if re.search(r"\] \[\S+ pid \d+\] ", l)]
        self.assertTrue(children, "child lines reach twistd's log")
        self.assertLessEqual(sum("error pages from the publisher" in l for l in lines), 1)
        self.assertFalse([l for l in lines if "{'" in l], "no dict repr in the log")

    def test_stop_says_so(self) -> None:
        site = Site(SERVICES, FAST).start()
        self.addCleanup(site.close)
        p = ctl(site, "stop")
        self.assertEqual((p.returncode, p.stdout), (0, "stopping\n"), p.stderr)
        assert site.proc is not None
        site.proc.wait(60)


SYNTAX_ERROR = "import os\n" + "\n" * 10 + "def broken(:\n    pass\n"


class CheckTests(E2ETestCase):
    """C{okws-ctl check}: every start-up check, nothing started (like C{nginx -t})."""

    def make_site(self, extra_service: str = "") -> str:
        d = tempfile.mkdtemp(prefix="okws-check-")
        os.symlink(os.path.join(REPO, "tests"), os.path.join(d, "tests"))
        os.mkdir(os.path.join(d, "mysvc"))
        with open(os.path.join(d, "mysvc", "__init__.py"), "w"):
            pass
        with open(os.path.join(d, "mysvc", "syntax.py"), "w") as f:
            f.write(SYNTAX_ERROR)
        with open(os.path.join(d, "mysvc", "ok.py"), "w") as f:
            f.write("from okws_twisted import ServiceResource\n\nclass Ok(ServiceResource):\n    pass\n")
        self.port = free_port()
        ini = os.path.join(d, "site.ini")
        with open(ini, "w") as f:
            f.write(f"[okws]\nlisten = tcp:{self.port}:interface=127.0.0.1\njail_root = jails\n"
                    "[service:a]\nresource = mysvc.ok:Ok\npaths = /a\ninstances = 2\n"
                    "[service:b]\nresource = mysvc.ok:Ok\npaths = /b\n"
                    "[service:c]\nresource = tests.sites.echo:Echo\npaths = /c\n" + extra_service)
        return ini

    def test_ok(self) -> None:
        ini = self.make_site()
        p = run_ctl("check", "--config", ini)
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, f"{ini}: ok (3 services, 4 processes)\n", ""))
        d = os.path.dirname(ini)
        # Nothing was started: no control socket, no logs, the port is free.
        self.assertFalse(os.path.exists(os.path.join(d, "okws.ctl")))
        self.assertFalse(os.path.exists(os.path.join(d, "logs")))
        with socket.socket() as s:
            s.bind(("127.0.0.1", self.port))

    def test_config_error(self) -> None:
        ini = self.make_site("[service:d]\nresource = mysvc.ok:Ok\npaths = /d\ninstances = many\n")
        p = run_ctl("check", "--config", ini)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, "")
        self.assertIn("[service:d] instances", p.stderr)

    def test_import_failure_names_file_and_line(self) -> None:
        ini = self.make_site("[service:d]\nresource = mysvc.syntax:X\npaths = /d\n")
        p = run_ctl("check", "--config", ini)
        self.assertEqual(p.returncode, 1)
        first, *rest = p.stderr.splitlines()
        self.assertEqual(first, f"{ini}: [service:d] resource: cannot import 'mysvc.syntax:X': "
                                "mysvc/syntax.py:12: SyntaxError: invalid syntax")
        self.assertTrue(rest and all(line.startswith("  ") for line in rest), rest)
        self.assertIn("def broken(:", p.stderr)
        # twistd refuses to start with the same first line.
        env = dict(os.environ, PYTHONPATH=REPO)
        t = subprocess.run([*TWISTD, "-n", "--pidfile=", "okws", "--config", ini], capture_output=True, text=True,
                           timeout=120, env=env, cwd=os.path.dirname(ini))
        self.assertEqual(t.returncode, 1)
        self.assertEqual(t.stderr.splitlines()[0], "okws: " + first)

    def test_runtime_import_failure(self) -> None:
        """A service that stops importing after the check: its crash names the file and line."""
        ini = self.make_site()
        site = Site.launch([*TWISTD, "-n", "--pidfile=", "okws", "--config", ini], os.path.dirname(ini), self.port,
                           dict(os.environ, PYTHONPATH=REPO))
        self.addCleanup(site.close)
        site.wait_for("site ready")
        with open(os.path.join(os.path.dirname(ini), "mysvc", "ok.py"), "w") as f:
            f.write("from okws_twisted import ServiceResource\n\nclass Ok(ServiceResource):\n    x = missing_name\n")
        mark = site.mark()
        os.kill(site.pids()["b.0"], signal.SIGKILL)
        site.wait_for(r"\[b\.0 pid \d+\] b\.0 cannot start: mysvc/ok\.py:4: NameError: name 'missing_name' is not defined",
                      after=mark)
