"""
Tests for the example services in L{services}, rendered in memory with
L{okws_twisted.testing.render} and the example site's own templates.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted import ServiceResource
from okws_twisted.testing import InMemoryDatabase, RenderedResponse, render
from services.delay import Delay
from services.form import Form
from services.guestbook import Guestbook
from services.hello import Hello
from services.index import Index

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(REPO, "templates")


def pidOf(response: RenderedResponse) -> int:
    [pid] = response.headers.getRawHeaders(b"x-okws-pid")
    return int(pid)


class ConstructionTests(SynchronousTestCase):
    def test_noArguments(self) -> None:
        """The runtime builds each service as C{Class()}."""
        for cls in (Hello, Form, Guestbook, Delay):
            self.assertIsInstance(cls(), ServiceResource)
            self.assertTrue(cls.__doc__)

    def test_anyRoutedPath(self) -> None:
        """
        A service answers every path the site routes to it: the service
        process serves it as its site root and passes the full path.
        """
        for path in ("/hello", "/hi/", "/hello/more/parts"):
            response = self.successResultOf(render(Hello(), path=path, templates=TEMPLATES))
            self.assertEqual(response.code, 200, path)
            self.assertIn("Hello, world!", response.text())
        response = self.successResultOf(render(Form(), path="/form", templates=TEMPLATES))
        self.assertEqual(response.code, 200)


class HelloTests(SynchronousTestCase):
    def test_default(self) -> None:
        response = self.successResultOf(render(Hello(), templates=TEMPLATES))
        self.assertEqual(response.code, 200)
        self.assertIn("Hello, world!", response.text())
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/html; charset=utf-8"],
        )

    def test_pid(self) -> None:
        response = self.successResultOf(render(Hello(), templates=TEMPLATES))
        self.assertEqual(pidOf(response), os.getpid())

    def test_name(self) -> None:
        response = self.successResultOf(render(Hello(), query={"name": "Ada"}, templates=TEMPLATES))
        self.assertIn("Hello, Ada!", response.text())

    def test_emptyName(self) -> None:
        response = self.successResultOf(render(Hello(), query={"name": ""}, templates=TEMPLATES))
        self.assertIn("Hello, world!", response.text())

    def test_unicodeName(self) -> None:
        response = self.successResultOf(render(Hello(), query={"name": "Zo\u00eb"}, templates=TEMPLATES))
        self.assertIn("Hello, Zo\u00eb!", response.text())

    def test_escaped(self) -> None:
        name = '<b onclick="x()">&amp;</b>'
        response = self.successResultOf(render(Hello(), query={"name": name}, templates=TEMPLATES))
        self.assertIn(
            "Hello, &lt;b onclick=&#34;x()&#34;&gt;&amp;amp;&lt;/b&gt;!",
            response.text(),
        )
        self.assertNotIn("<b onclick", response.text())

    def test_head(self) -> None:
        response = self.successResultOf(render(Hello(), "HEAD", templates=TEMPLATES))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"")
        self.assertEqual(pidOf(response), os.getpid())

    def test_layout(self) -> None:
        """The page extends the site's layout, which includes its footer."""
        text = self.successResultOf(render(Hello(), templates=TEMPLATES)).text()
        self.assertIn("<title>Hello</title>", text)
        self.assertIn("<footer>", text)

    def test_withoutTemplates(self) -> None:
        """
        A test that gives no templates gets a 500 (and a logged error), not
        a page from somewhere else.
        """
        response = self.successResultOf(render(Hello()))
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    def test_postNotAllowed(self) -> None:
        response = self.successResultOf(render(Hello(), "POST", templates=TEMPLATES))
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])


class FormTests(SynchronousTestCase):
    def post(self, **fields: str) -> RenderedResponse:
        return self.successResultOf(
            render(
                Form(),
                "POST",
                headers=FORM,
                body=urlencode(fields).encode(),
                templates=TEMPLATES,
                csrf=True,
            )
        )

    def test_form(self) -> None:
        response = self.successResultOf(render(Form(), templates=TEMPLATES))
        self.assertEqual(response.code, 200)
        self.assertIn('<form method="post">', response.text())
        self.assertIn('name="message"', response.text())
        self.assertIn("<footer>", response.text())
        self.assertNotIn("You wrote", response.text())
        self.assertEqual(pidOf(response), os.getpid())

    def test_post(self) -> None:
        response = self.post(message="hello there")
        self.assertEqual(response.code, 200)
        self.assertIn("You wrote: hello there", response.text())
        self.assertEqual(pidOf(response), os.getpid())

    def test_scriptEscaped(self) -> None:
        """User input is shown as text: a script tag never reaches the page."""
        response = self.post(message="<script>alert('x')</script>")
        self.assertIn(
            "You wrote: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;",
            response.text(),
        )
        self.assertNotIn("<script", response.text())

    def test_unicode(self) -> None:
        response = self.post(message="gr\u00fc\u00dfe \u2603")
        self.assertIn("You wrote: gr\u00fc\u00dfe \u2603", response.text())

    def test_formCarriesToken(self) -> None:
        """The form's hidden csrf_token and the cookie set with it make a POST that passes."""
        response = self.successResultOf(render(Form(), templates=TEMPLATES))
        token = re.search(r'name="csrf_token" value="([^"]+)"', response.text())
        assert token is not None
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertRegex(cookie, r"^okws-csrf-test=[A-Za-z0-9_-]{24}; Path=/; HttpOnly; SameSite=lax$")
        posted = self.successResultOf(render(
            Form(), "POST", headers={**FORM, "Cookie": cookie.split(";")[0]},
            body=urlencode({"message": "signed", "csrf_token": token.group(1)}).encode(), templates=TEMPLATES,
        ))
        self.assertEqual(posted.code, 200)
        self.assertIn("You wrote: signed", posted.text())

    def test_postWithoutToken(self) -> None:
        """A POST without its token (a form on another site) gets the site's 403 page, not the service."""
        response = self.successResultOf(render(
            Form(), "POST", headers=FORM, body=b"message=forged", templates=TEMPLATES,
        ))
        self.assertEqual(response.code, 403)
        self.assertIn("403 Forbidden", response.text())
        self.assertNotIn("forged", response.text())

    def test_noMessage(self) -> None:
        response = self.post()
        self.assertEqual(response.code, 200)
        self.assertIn("You wrote: </p>", response.text())


class GuestbookTests(SynchronousTestCase):
    """The guestbook with the example site's own database files and grants, in memory."""

    def setUp(self) -> None:
        self.db = InMemoryDatabase.for_service(os.path.join(REPO, "site.ini"), "guestbook")

    def get(self) -> RenderedResponse:
        return self.successResultOf(render(Guestbook(), templates=TEMPLATES, db=self.db))

    def post(self, **fields: str) -> RenderedResponse:
        body = urlencode(fields).encode()
        return self.successResultOf(render(Guestbook(), "POST", headers=FORM, body=body, templates=TEMPLATES, db=self.db, csrf=True))

    def stored(self) -> list[str]:
        return [row[0] for row in self.db.connection.execute("SELECT text FROM messages ORDER BY id")]

    def test_empty(self) -> None:
        response = self.get()
        self.assertEqual(response.code, 200)
        self.assertIn("No messages yet.", response.text())
        self.assertIn('<form method="post">', response.text())

    def test_post_stores_and_shows_latest_first(self) -> None:
        self.assertIn("You wrote: first", self.post(message="first").text())
        page = self.post(message="second").text()
        self.assertEqual(self.stored(), ["first", "second"])
        self.assertLess(page.index("second</li>"), page.index("first</li>"))
        self.assertIn("second</li>", self.get().text())

    def test_escaped(self) -> None:
        """A stored message is shown as text: a script tag never reaches the page."""
        self.post(message="<script>alert('x')</script>")
        self.assertEqual(self.stored(), ["<script>alert('x')</script>"])
        page = self.get().text()
        self.assertIn("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</li>", page)
        self.assertNotIn("<script", page)

    def test_forged_post_stores_nothing(self) -> None:
        """A post without the form's CSRF token gets 403 before the service runs: nothing stored."""
        response = self.successResultOf(render(
            Guestbook(), "POST", headers=FORM, body=b"message=forged", templates=TEMPLATES, db=self.db,
        ))
        self.assertEqual(response.code, 403)
        self.assertEqual(self.stored(), [])

    def test_empty_message_not_stored(self) -> None:
        self.post(message="   ")
        self.assertEqual(self.stored(), [])

    def test_only_twenty_shown(self) -> None:
        for i in range(25):
            self.post(message=f"m{i}")
        page = self.get().text()
        self.assertEqual(page.count("</li>"), 20)
        self.assertIn("m24</li>", page)
        self.assertNotIn("m4</li>", page)

    def test_without_database(self) -> None:
        """No db given: every call is refused, and the page is the 500 (logged)."""
        response = self.successResultOf(render(Guestbook(), templates=TEMPLATES))
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors()), 1)


class IndexTests(SynchronousTestCase):
    def test_links_the_examples(self) -> None:
        response = self.successResultOf(render(Index(), templates=TEMPLATES))
        self.assertEqual(response.code, 200)
        for link in ('href="/hello?name=visitor"', 'href="/guestbook"', 'href="/delay?ms=500"',
                     'href="/static/style.css"', 'href="/favicon.ico"'):
            self.assertIn(link, response.text())

    def test_anything_else_is_the_sites_404(self) -> None:
        """/ catches every path nothing else claims: only / itself is the index."""
        response = self.successResultOf(render(Index(), path="/nothing/here", templates=TEMPLATES))
        self.assertEqual(response.code, 404)
        self.assertIn("404 Not Found", response.text())
        self.assertIn('Try <a href="/hello">', response.text())
        self.assertEqual(self.successResultOf(render(Index(), path="/", templates=TEMPLATES)).code, 200)


class DelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.delay = Delay(reactor=self.clock)

    def assertAnsweredAfter(self, seconds: float, **query: str) -> RenderedResponse:
        rendering = render(self.delay, query=query)
        self.clock.advance(seconds - 0.001)
        self.assertNoResult(rendering)
        self.clock.advance(0.001)
        return self.successResultOf(rendering)

    def test_default(self) -> None:
        response = self.assertAnsweredAfter(0.1)
        self.assertEqual(response.code, 200)
        self.assertIn("Waited 100 ms.", response.text())
        self.assertEqual(pidOf(response), os.getpid())

    def test_ms(self) -> None:
        response = self.assertAnsweredAfter(0.25, ms="250")
        self.assertIn("Waited 250 ms.", response.text())

    def test_capped(self) -> None:
        response = self.assertAnsweredAfter(10.0, ms="3600000")
        self.assertIn("Waited 10000 ms.", response.text())

    def test_zeroAndNegative(self) -> None:
        for ms in ("0", "-5"):
            rendering = render(self.delay, query={"ms": ms})
            self.clock.advance(0)
            self.assertIn("Waited 0 ms.", self.successResultOf(rendering).text())

    def test_notANumber(self) -> None:
        response = self.successResultOf(render(self.delay, query={"ms": "soon"}))
        self.assertEqual(response.code, 400)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clientLeaves(self) -> None:
        """A client that leaves takes its timer with it."""
        rendering = render(self.delay, query={"ms": "5000"})
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        rendering.cancel()
        self.failureResultOf(rendering, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_concurrent(self) -> None:
        """Requests wait side by side, each answered at its own time."""
        slow = render(self.delay, query={"ms": "300"})
        fast = render(self.delay, query={"ms": "100"})
        self.clock.advance(0.1)
        self.assertNoResult(slow)
        self.assertIn("Waited 100 ms.", self.successResultOf(fast).text())
        self.clock.advance(0.2)
        self.assertIn("Waited 300 ms.", self.successResultOf(slow).text())


class PlainHelloTests(SynchronousTestCase):
    """services.plain: the benchmark's resource, no templates."""

    def test_default_and_escaping(self) -> None:
        from services.plain import Hello as PlainHello

        response = self.successResultOf(render(PlainHello(), b"GET", b"/hello", query={"name": "<b>"}))
        self.assertEqual(response.code, 200)
        self.assertIn(b"Hello, &lt;b&gt;!", response.body)
        response = self.successResultOf(render(PlainHello(), b"GET", b"/hello"))
        self.assertIn(b"Hello, world!", response.body)
