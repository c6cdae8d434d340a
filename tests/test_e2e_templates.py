"""
End-to-end tests of the template publisher: real processes, real HTTP over loopback.

A real ``twistd -n okws`` (see L{tests.e2e}) with its own template tree; the
test service C{tests.sites.pages:Pages} renders whatever template a request
names.  Facts come from HTTP responses, the processes' log lines and the
kernel (pids), never from okws's internals.  Waits for a change on disk to
show are polls of the HTTP answer with a deadline.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from urllib.parse import urlencode

import okws_twisted
from okws_twisted.wire.errorpage import STATUSES
from tests.e2e import E2ETestCase, Response, Site

SERVICES = """
[service:tpl]
resource = tests.sites.pages:Pages
paths = /tpl
"""

FAST = """
restart_delay_min = 0.2
restart_delay_max = 2
drain_timeout = 5
"""

TEMPLATES = {
    "base.html": "<main>{% block c %}{% endblock %}</main>{% include 'partials/foot.html' %}",
    "partials/foot.html": "<footer>foot</footer>",
    "macros.html": "{% macro em(v) %}<em>{{ v }}</em>{% endmacro %}",
    "page.html": '{% extends "base.html" %}{% import "macros.html" as m %}{% block c %}{{ m.em(x) }}{% endblock %}',
    "live.html": "version 0",
    "live-base.html": "[base 0 {% block c %}{% endblock %}]",
    "live-child.html": '{% extends "live-base.html" %}{% block c %}child{% endblock %}',
    "broken.html": "line 1\nline 2\n{% if %}\n",
    "errors/404.html": "site 404 page: {{ message }}",
    "errors/500.html": "site 500 page: {{ message }}",
}

#: How soon an edit on disk must show (the issue's promise).
LIVE = 2.0

_shared: Site | None = None


def shared_site() -> Site:
    """One site for the tests that only add to it (started once per run)."""
    global _shared
    if _shared is None:
        site = Site(SERVICES, FAST, templates=TEMPLATES)
        with open(os.path.join(site.dir, "secret.html"), "w") as f:
            f.write("SECRET-7f3a")
        _shared = site.start()
        atexit.register(_shared.close)
        _shared.wait_for(r"\[dispatcher pid \d+\].*received " + str(len(STATUSES)) + " error pages")
    return _shared


def page(site: Site, name: str, **context: str) -> Response:
    return site.get("/tpl?" + urlencode({"t": name, **context}))


def pid_of(response: Response) -> int:
    value = response.header("x-okws-pid")
    assert value is not None, response
    return int(value)


def until(check, deadline: float):
    """Poll C{check()} (an HTTP exchange) until it returns something true or the deadline passes."""
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.05)


class RenderTests(E2ETestCase):
    def setUp(self) -> None:
        self.site = shared_site()

    def test_extends_include_import(self) -> None:
        r = page(self.site, "page.html", x="<b>&")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"<main><em>&lt;b&gt;&amp;</em></main><footer>foot</footer>")
        self.assertEqual(r.header("content-type"), "text/html; charset=utf-8")
        self.assertEqual(pid_of(r), self.site.pids()["tpl.0"])

    def test_names_leaving_the_tree_refused(self) -> None:
        # New links each run: a service remembers a refused name and does not ask again.
        out = f"out-{time.time_ns()}.html"
        os.symlink(os.path.join(self.site.dir, "secret.html"), os.path.join(self.site.templates, out))
        # A link to a file the publisher can see, jailed or not (the okws package is
        # in every jail): it resolves, outside the tree.
        package = os.path.abspath(okws_twisted.__file__)
        with open(package, "rb") as f:
            package_text = f.read(60)
        visible = f"pkg-{time.time_ns()}.html"
        os.symlink(package, os.path.join(self.site.templates, visible))
        mark = self.site.mark()
        for name in ("../secret.html", "/etc/passwd", out, visible, "partials/../../secret.html"):
            r = page(self.site, name)
            self.assertEqual(r.status, 500, name)
            self.assertNotIn(b"SECRET", r.body, name)
            self.assertNotIn(b"root:", r.body, name)
            self.assertNotIn(package_text, r.body, name)
            self.assertEqual(r.body, b"site 500 page: The server could not answer this request.")
        # Symlinks out pass the name rules; the publisher itself refuses them.
        # (Jailed, as root, the publisher cannot even see where `out` points: it is
        # absent there; the package file it sees, and must refuse.)
        self.site.wait_for(rf"\[pubd pid \d+\].*refused template '{visible}' to tpl\.0: it resolves outside", after=mark)
        if os.geteuid() != 0:
            self.site.wait_for(rf"\[pubd pid \d+\].*refused template '{out}' to tpl\.0: it resolves outside", after=mark)
        for name in (out, visible):
            self.site.wait_for(rf"\[tpl\.0 pid \d+\].*template error in {name}", after=mark)

    def test_missing_template_is_500_and_the_service_keeps_serving(self) -> None:
        before = pid_of(page(self.site, "page.html", x="1"))
        mark = self.site.mark()
        r = page(self.site, "nope.html")
        self.assertEqual(r.status, 500)
        self.assertEqual(r.body, b"site 500 page: The server could not answer this request.")
        self.site.wait_for(r"\[tpl\.0 pid \d+\].*template error in nope\.html .*not found", after=mark)
        again = page(self.site, "page.html", x="2")
        self.assertEqual(again.status, 200)
        self.assertEqual(pid_of(again), before)

    def test_syntax_error_logs_name_and_line(self) -> None:
        before = pid_of(page(self.site, "page.html", x="1"))
        mark = self.site.mark()
        r = page(self.site, "broken.html")
        self.assertEqual(r.status, 500)
        self.assertNotIn(b"if", r.body)
        self.site.wait_for(r"\[tpl\.0 pid \d+\].*template error in broken\.html line 3 .*TemplateSyntaxError", after=mark)
        self.assertEqual(pid_of(page(self.site, "page.html", x="3")), before)

    def test_live_edit_same_pid(self) -> None:
        first = page(self.site, "live.html")
        self.assertEqual(first.status, 200)
        version = f"version {time.time_ns()}".encode()  # new on every run against this site
        self.assertNotEqual(first.body, version)
        self.site.write_template("live.html", version.decode())
        deadline = time.monotonic() + LIVE
        r = until(lambda: (r := page(self.site, "live.html")).body == version and r, deadline)
        self.assertTrue(r, f"the edit did not show within {LIVE}s")
        self.assertEqual(pid_of(r), pid_of(first))

    def test_live_edit_of_an_extended_layout(self) -> None:
        first = page(self.site, "live-child.html")
        self.assertEqual(first.status, 200)
        self.assertTrue(first.body.endswith(b" child]"), first.body)
        stamp = time.time_ns()
        self.site.write_template("live-base.html", f"[base {stamp} {{% block c %}}{{% endblock %}}]")
        deadline = time.monotonic() + LIVE
        want = f"[base {stamp} child]".encode()
        r = until(lambda: (r := page(self.site, "live-child.html")).body == want and r, deadline)
        self.assertTrue(r, f"the edit did not show within {LIVE}s")
        self.assertEqual(pid_of(r), pid_of(first))

    def test_dispatcher_error_page_from_site_template(self) -> None:
        r = self.site.get("/nothing/here")
        self.assertEqual(r.status, 404)
        self.assertRegex(r.body, rb"^(site|edited \d+) 404 page: No service here\.$")
        self.assertEqual(r.header("content-length"), str(len(r.body)))
        stamp = time.time_ns()
        self.site.write_template("errors/404.html", f"edited {stamp} 404 page: {{{{ message }}}}")
        deadline = time.monotonic() + LIVE
        want = f"edited {stamp} 404 page: No service here.".encode()
        r = until(lambda: (r := self.site.get("/nothing")).body == want and r, deadline)
        self.assertTrue(r, f"the new 404 page did not show within {LIVE}s")

    def test_default_error_page_for_other_statuses(self) -> None:
        with self.site.connect() as s:
            s.sendall(b"GET /tpl HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "))
        self.assertIn(b"<title>400 Bad Request</title>", data)


class PublisherDownTests(E2ETestCase):
    """kill -9 the publisher: held templates still render, new ones 503 until it is back."""

    def test_kill_9_publisher(self) -> None:
        site = Site(
            SERVICES,
            "restart_delay_min = 4\nrestart_delay_max = 8\ntemplate_timeout = 1\nretry_after = 3\n",
            templates={"a.html": "held {{ n }}", "b.html": "fetched later", "errors/404.html": "site 404"},
        ).start()
        self.addCleanup(site.close)
        site.wait_for(r"\[dispatcher pid \d+\].*received " + str(len(STATUSES)) + " error pages")
        warm = page(site, "a.html", n="1")
        self.assertEqual(warm.body, b"held 1")
        pubd = site.pids()["pubd"]
        mark = site.mark()
        os.kill(pubd, signal.SIGKILL)
        site.wait_for(rf"pubd pid {pubd} (crashed|exited unexpectedly)", after=mark)

        started = time.monotonic()
        r = page(site, "a.html", n="2")
        self.assertEqual((r.status, r.body), (200, b"held 2"))
        self.assertLess(time.monotonic() - started, 1.0)  # no wait for the publisher
        self.assertEqual(pid_of(r), pid_of(warm))

        started = time.monotonic()
        r = page(site, "b.html")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("retry-after"), "3")
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertEqual(site.get("/nowhere").body, b"site 404")  # the dispatcher kept its pages

        m = site.wait_for(r"started pubd as pid (\d+)", after=mark)
        site.wait_for(r"wired tpl\.0 pid \d+ to the pubd \(templates\)", after=mark)
        self.assertNotEqual(int(m.group(1)), pubd)
        r = page(site, "b.html")
        self.assertEqual((r.status, r.body), (200, b"fetched later"))
        self.assertEqual(page(site, "a.html", n="3").body, b"held 3")
        self.assertEqual(pid_of(r), pid_of(warm))
