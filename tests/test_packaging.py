"""
Installing okws gives a twistd that knows ``okws`` and the default error page
templates: normal and editable installs.  The normal install takes no extras
(what ``pip install okws-twisted`` gives an operator): every module of the
package imports and the example site serves, with no traceback in its log.

Each test builds a fresh virtualenv, installs a copy of this checkout into it,
and asks that virtualenv's twistd (run from an unrelated directory, so the
checkout is not on ``sys.path`` by accident) whether it lists the plugin.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING


from okws_twisted.wire.errorpage import STATUSES
from tests.e2e import REPO, E2ETestCase

if TYPE_CHECKING:
    from tests.e2e import Site

INSTALL_TIMEOUT = 600

#: Run by the installed interpreter: import every module of the package (a subpackage
#: left out of the distribution, or a dependency only an extra brings, fails here).
IMPORT_EVERYTHING = """
import importlib, pkgutil, okws_twisted
names = ["okws_twisted"] + [m.name for m in pkgutil.walk_packages(okws_twisted.__path__, "okws_twisted.")]
for name in names:
    importlib.import_module(name)
    print(name)
"""


def _copy_checkout(dest: str) -> str:
    ignore = shutil.ignore_patterns(".venv", ".git", "_trial_temp*", "*.egg-info", "build", "__pycache__", ".hypothesis", "logs", "data")
    src = os.path.join(dest, "src")
    shutil.copytree(REPO, src, ignore=ignore, symlinks=True)
    return src


class PluginInstallTests(E2ETestCase):
    def _check(self, *install: str) -> tuple[str, str]:
        d = tempfile.mkdtemp(prefix="okws-install-")
        self.addCleanup(shutil.rmtree, d, True)
        src = _copy_checkout(d)
        venv = os.path.join(d, "venv")
        # Without our PYTHONPATH (trial -j sets it for its workers): pip would find this
        # checkout's dependencies there and install none of them, twistd included.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120, env=env)
        pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        p = subprocess.run([*pip, *install, src], capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        elsewhere = tempfile.mkdtemp(prefix="okws-cwd-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        help_ = subprocess.run(
            [os.path.join(venv, "bin", "twistd"), "--help"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120
        )
        self.assertIn("okws", help_.stdout, help_.stdout + help_.stderr)
        okws_help = subprocess.run(
            [os.path.join(venv, "bin", "twistd"), "okws", "--help"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120
        )
        self.assertIn("--config", okws_help.stdout, okws_help.stdout + okws_help.stderr)
        for run in (help_, okws_help):
            # service_identity missing (twisted without [tls]) shows as a traceback in the plugin scan.
            self.assertNotIn("Traceback", run.stdout + run.stderr)
        self.assertNotIn("DEPRECATION", p.stdout + p.stderr)
        # The default error page templates are package data: the publisher needs them.
        pages = subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c",
             "from okws_twisted.templating import default_error_templates as d; print(' '.join(sorted(d())))"],
            capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120,
        )
        self.assertEqual(pages.returncode, 0, pages.stderr)
        for status in STATUSES:
            self.assertIn(f"errors/{status}.html", pages.stdout.split())
        self.assertIn("errors/layout.html", pages.stdout.split())
        return venv, src

    def test_normal_install(self) -> None:
        """C{pip install .}, no extras: every module imports, the licence is there, the site serves."""
        venv, src = self._check()
        elsewhere = tempfile.mkdtemp(prefix="okws-cwd-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        imports = subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c", IMPORT_EVERYTHING],
            capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120,
        )
        self.assertEqual(imports.returncode, 0, imports.stdout + imports.stderr)
        self.assertIn("okws_twisted.testing", imports.stdout.split())
        self.assertIn("okws_twisted.ctl", imports.stdout.split())
        licences = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "okws_twisted-*.dist-info", "licenses", "LICENSE"))
        self.assertEqual(len(licences), 1, "the licence is installed with the metadata")
        site = self._serve_example_site(venv, src)
        for bad in ("Unhandled Error", "Traceback", "service_identity"):
            self.assertNotIn(bad, site.log_text())

    def _serve_example_site(self, venv: str, src: str) -> "Site":
        """The README's first command, from the installed copy: the example site answers."""
        from tests.e2e import Site, free_port

        port = free_port()
        ini = os.path.join(src, "site.ini")
        with open(ini) as f:
            text = f.read().replace("tcp:8080:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1")
        # Its own jail root (as root), removed with the copy: concurrent runs never share one.
        text = text.replace("[okws]\n", f"[okws]\njail_root = {os.path.join(src, 'jails')}\n", 1)
        with open(ini, "w") as f:
            f.write(text)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        twistd = os.path.join(venv, "bin", "twistd")
        site = Site.launch([twistd, "-n", "--pidfile=", "okws", "--config", "site.ini"], src, port, env)
        self.addCleanup(site.close)
        site.wait_for(r"site ready", 90)
        r = site.get("/hello?name=install")
        self.assertEqual(r.status, 200, site.log_text())
        self.assertIn(b"install", r.body)
        # The guestbook keeps its messages in SQLite: the first start created the database
        # (no PostgreSQL driver needed), its directory the proxy's alone.
        from urllib.parse import quote

        from tests.e2e import form_token, read_response, request_bytes

        cookie, token = form_token(site, "/guestbook")
        with site.connect() as s:
            body = b"message=%3Cb%3Efirst%3C%2Fb%3E&csrf_token=" + quote(token).encode()
            s.sendall(request_bytes("POST", "/guestbook", {"Connection": "close", "Cookie": cookie,
                                    "Content-Type": "application/x-www-form-urlencoded"}, body))
            posted = read_response(s)
        self.assertEqual(posted.status, 200, site.log_text())
        page = site.get("/guestbook").body
        self.assertIn(b"&lt;b&gt;first&lt;/b&gt;</li>", page)
        data = os.path.join(src, "data")
        self.assertEqual(os.stat(data).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(data, "site.db")).st_mode & 0o777, 0o600)
        if os.geteuid() == 0:
            self.assertNotEqual(os.stat(os.path.join(data, "site.db")).st_uid, 0, "owned by the proxy's uid")
        return site

    def test_editable_install(self) -> None:
        self._check("-e")
