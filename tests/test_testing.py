"""
Tests for L{okws_twisted.testing}: the in-memory request helper itself.
"""

from __future__ import annotations

import dataclasses
import os

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from okws_twisted import ServiceResource, testing
from okws_twisted.service.web import ServiceRequest, ServiceSite
from okws_twisted.testing import RenderedResponse, render


class Echo(Resource):
    """
    A plain twisted.web resource (the helper takes any resource) that
    records the request it was given and answers with a summary of it.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []
        self.bodies: list[bytes] = []

    def render(self, request):
        self.requests.append(request)
        self.bodies.append(request.content.read())
        request.setHeader(b"x-echo", b"one")
        request.responseHeaders.addRawHeader(b"x-echo", b"two")
        return b"%s %s" % (request.method, request.uri)


class Inspect(Resource):
    """Records the classes serving its request and where the request body lives."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[type, type, type, str]] = []
        self.bodies: list[bytes] = []

    def render(self, request):
        try:
            where = os.readlink(f"/proc/self/fd/{request.content.fileno()}")
        except (AttributeError, OSError):  # io.BytesIO has no file descriptor
            where = "in memory"
        self.seen.append((type(request), type(request.channel), type(request.site), where))
        self.bodies.append(request.content.read())
        return b"ok"


class Never(Resource):
    """Never answers, and remembers how its request ended."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.endings: list = []

    def render(self, request):
        request.notifyFinish().addBoth(self.endings.append)
        return 1  # NOT_DONE_YET


class RequestTests(SynchronousTestCase):
    """What the helper sends."""

    def request(self, **kwargs):
        self.echo = Echo()
        response = self.successResultOf(render(self.echo, **kwargs))
        [request] = self.echo.requests
        return request, response

    def test_defaults(self) -> None:
        request, response = self.request()
        self.assertEqual(request.method, b"GET")
        self.assertEqual(request.uri, b"/")
        self.assertEqual(request.clientproto, b"HTTP/1.1")
        self.assertEqual(request.getHeader(b"host"), b"localhost")
        self.assertEqual(response.body, b"GET /")

    def test_requestId(self) -> None:
        """As in a served request, C{request.request_id} exists (services may show it)."""
        request, _ = self.request()
        self.assertEqual(request.request_id, "test-1")

    def test_productionClasses(self) -> None:
        """The request, channel and site are the ones a service process serves with."""
        inspect = Inspect()
        self.successResultOf(render(inspect))
        self.assertEqual(inspect.seen, [(ServiceRequest, ServiceSite.protocol, ServiceSite, "in memory")])

    def test_bodyOver100KB(self) -> None:
        """A body of 100 KB and more lives in an anonymous memfd, as in a jailed service
        (no temporary file: a jail has no /tmp), and reaches the resource whole."""
        inspect = Inspect()
        body = os.urandom(150_000)
        response = self.successResultOf(render(inspect, method="POST", body=body))
        self.assertEqual(response.code, 200)
        self.assertEqual(inspect.bodies, [body])
        self.assertTrue(inspect.seen[0][3].startswith("/memfd:okws-request-body"), inspect.seen)

    def test_methodAndPathAsText(self) -> None:
        request, _ = self.request(method="PUT", path="/caf\u00e9/a b")
        self.assertEqual(request.method, b"PUT")
        self.assertEqual(request.uri, b"/caf%C3%A9/a%20b")
        self.assertEqual(request.postpath, [b"caf\xc3\xa9", b"a b"])

    def test_query(self) -> None:
        """
        C{query} becomes the query string; a list gives repeated keys; text
        is UTF-8.
        """
        request, _ = self.request(
            path="/search", query={"q": "f\u00fc & b", b"tag": [b"a", "b"]}
        )
        self.assertEqual(
            request.args,
            {b"q": ["f\u00fc & b".encode()], b"tag": [b"a", b"b"]},
        )
        self.assertEqual(request.path, b"/search")

    def test_queryAddsToPathQuery(self) -> None:
        request, _ = self.request(path="/s?a=1", query={"b": "2"})
        self.assertEqual(request.args, {b"a": [b"1"], b"b": [b"2"]})

    def test_headers(self) -> None:
        request, _ = self.request(
            headers={
                "X-Text": "caf\u00e9",
                b"X-Bytes": b"raw",
                "X-Many": ["1", "2"],
                "Host": "example.org",
            }
        )
        headers = request.requestHeaders
        self.assertEqual(headers.getRawHeaders(b"x-text"), ["caf\u00e9".encode()])
        self.assertEqual(headers.getRawHeaders(b"x-bytes"), [b"raw"])
        self.assertEqual(headers.getRawHeaders(b"x-many"), [b"1", b"2"])
        self.assertEqual(headers.getRawHeaders(b"host"), [b"example.org"])

    def test_body(self) -> None:
        request, _ = self.request(method="POST", body=b"a=1&b=2")
        self.assertEqual(request.getHeader(b"content-length"), b"7")
        self.assertEqual(self.echo.bodies, [b"a=1&b=2"])

    def test_formBody(self) -> None:
        """twisted.web parses a urlencoded POST body into C{args}."""
        request, _ = self.request(
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=b"message=hi+there",
        )
        self.assertEqual(request.args, {b"message": [b"hi there"]})

    def test_emptyPostHasLength(self) -> None:
        request, _ = self.request(method="POST")
        self.assertEqual(request.getHeader(b"content-length"), b"0")

    def test_clientAddress(self) -> None:
        request, _ = self.request(client=("203.0.113.9", 5555))
        self.assertEqual(
            request.getClientAddress(), IPv4Address("TCP", "203.0.113.9", 5555)
        )
        self.assertEqual(request.getHost(), IPv4Address("TCP", "127.0.0.1", 80))

    def test_defaultClientAddress(self) -> None:
        request, _ = self.request()
        self.assertEqual(
            request.getClientAddress(), IPv4Address("TCP", "127.0.0.1", 40000)
        )

    def test_ipv6ClientAddress(self) -> None:
        request, _ = self.request(client=("2001:db8::1", 443))
        self.assertEqual(
            request.getClientAddress(), IPv6Address("TCP", "2001:db8::1", 443)
        )

    def test_refusesLineBreaks(self) -> None:
        """
        Nothing a test passes can end a line early and smuggle a second
        request.
        """
        echo = Echo()
        for kwargs in [
            {"method": "GET / HTTP/1.1\r\nX: y"},
            {"path": b"/ HTTP/1.1\r\nX: y"},
            {"path": b"/a b"},
            {"headers": {"X-A": "1\r\nX-B: 2"}},
            {"headers": {"X A": "1"}},
        ]:
            self.assertRaises(ValueError, render, echo, **kwargs)
        self.assertEqual(echo.requests, [])

    def test_textPathIsEncoded(self) -> None:
        """A C{str} path cannot break the line either: it is percent-encoded."""
        request, _ = self.request(path="/ HTTP/1.1\r\nX: y")
        self.assertEqual(request.uri, b"/%20HTTP/1.1%0D%0AX:%20y")
        self.assertIsNone(request.getHeader(b"x"))

    def test_realParser(self) -> None:
        """
        The request goes through twisted.web's parser: a bad Content-Length
        gets twisted.web's 400.
        """
        echo = Echo()
        response = self.successResultOf(
            render(echo, "POST", headers={"Content-Length": "x"}, body=b"z")
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(echo.requests, [])


class ResponseTests(SynchronousTestCase):
    """What the helper gives back."""

    def test_response(self) -> None:
        response = self.successResultOf(render(Echo(), path="/p"))
        self.assertIsInstance(response, RenderedResponse)
        self.assertEqual(response.code, 200)
        self.assertIsInstance(response.headers, Headers)
        self.assertEqual(response.headers.getRawHeaders(b"x-echo"), [b"one", b"two"])
        self.assertEqual(response.headers.getRawHeaders("X-Echo"), ["one", "two"])
        self.assertEqual(response.body, b"GET /p")

    def test_text(self) -> None:
        response = RenderedResponse(200, Headers(), "h\u00e9".encode())
        self.assertEqual(response.text(), "h\u00e9")
        self.assertEqual(response.text("latin-1"), "h\u00c3\u00a9")

    def test_frozen(self) -> None:
        response = RenderedResponse(200, Headers(), b"")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, response, "code", 500)

    def test_chunkedBodyJoined(self) -> None:
        """A body written in pieces (chunked on the wire) comes back whole."""

        class Pieces(Resource):
            isLeaf = True

            def render(self, request):
                for piece in (b"a", b"bc", b"def"):
                    request.write(piece)
                request.finish()
                return 1

        response = self.successResultOf(render(Pieces()))
        self.assertEqual(response.headers.getRawHeaders(b"transfer-encoding"), [b"chunked"])
        self.assertEqual(response.body, b"abcdef")

    def test_notFound(self) -> None:
        """twisted.web's own traversal and error pages run."""
        response = self.successResultOf(render(Resource(), path="/missing"))
        self.assertEqual(response.code, 404)

    def test_exports(self) -> None:
        self.assertEqual(sorted(testing.__all__), ["InMemoryDatabase", "RenderedResponse", "TEST_CSRF_SECRET", "csrf", "render"])

    def test_noRuntimeImports(self) -> None:
        """
        The helper belongs to the author's one-process world: nothing of the
        launcher, dispatcher or process runtime comes with it.
        """
        from tests.test_walls import modules_after_import

        source = open(testing.__file__).read()
        # A fresh interpreter: this process's sys.modules also holds whatever
        # other test modules imported (the launcher's unit tests import it).
        loaded = " ".join(modules_after_import("okws_twisted.testing"))
        for word in ("launcher", "dispatcher", "runtime", "handoff"):
            self.assertNotIn(f"okws_twisted.{word}", source)
            self.assertNotIn(f"okws_twisted.{word}", loaded)


class CompletionTests(SynchronousTestCase):
    """When the returned Deferred fires."""

    def test_laterWithClock(self) -> None:
        clock = Clock()

        class Slow(Resource):
            isLeaf = True

            def render(self, request):
                def answer():
                    request.write(b"done")
                    request.finish()

                clock.callLater(3, answer)
                return 1

        rendering = render(Slow(), reactor=clock)
        clock.advance(2.9)
        self.assertNoResult(rendering)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(rendering).body, b"done")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_serverTimersCleanedUp(self) -> None:
        """
        Once the response is in, the connection is closed, so the server's
        idle timer on the given reactor is cancelled, not left pending.
        """
        clock = Clock()
        self.successResultOf(render(Echo(), reactor=clock))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_droppedWithoutResponse(self) -> None:
        """A connection the server drops before answering fails the Deferred."""

        class Dropper(Resource):
            isLeaf = True

            def render(self, request):
                request.loseConnection()
                return 1

        failure = self.failureResultOf(render(Dropper()), ResponseNeverReceived)
        self.assertEqual(len(failure.value.reasons), 1)

    def test_cancelIsClientDisconnect(self) -> None:
        """
        Cancelling the Deferred closes the connection from the client's side;
        the server's request learns of it.
        """
        never = Never()
        rendering = render(never)
        self.assertNoResult(rendering)
        rendering.cancel()
        self.failureResultOf(rendering, CancelledError)
        [ending] = never.endings
        self.assertIsNotNone(getattr(ending, "value", None))

    def test_cancelAfterResponse(self) -> None:
        """Cancelling a finished rendering changes nothing."""
        rendering = render(Echo())
        rendering.cancel()
        self.assertEqual(self.successResultOf(rendering).code, 200)


class RealReactorTests(TestCase):
    """The helper with the global reactor, as most authors' tests run."""

    def test_deferLaterOnReactor(self) -> None:
        class Slow(Resource):
            isLeaf = True

            def render(self, request):
                def answer() -> None:
                    request.write(b"later")
                    request.finish()

                deferLater(reactor, 0.01, answer)
                return 1

        rendering: Deferred = render(Slow())
        rendering.addCallback(lambda response: self.assertEqual(response.body, b"later"))
        return rendering


class Page(ServiceResource):
    """Renders the template named by C{?t=} with the other query arguments."""

    isLeaf = True

    async def render_GET(self, request):
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        return await self.render_template(args.pop("t"), **args)


class Later(ServiceResource):
    """Calls render_template from a plain Deferred callback, after the render returned."""

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def render_GET(self, request):
        return deferLater(self.clock, 1, lambda: None).addCallback(
            lambda _: self.render_template("a.html", x="later")
        )


class Failing(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        raise RuntimeError("a bug")


SOURCES = {
    "base.html": "<main>{% block c %}{% endblock %}</main>",
    "a.html": '{% extends "base.html" %}{% block c %}[{{ x }}]{% endblock %}',
    "broken.html": "fine\n{{ x.y.z }}",
    "syntax.html": "a\nb\n{% for %}",
    "errors/500.html": "custom 500: {{ message }}",
}


class TemplateTests(SynchronousTestCase):
    """C{templates=}: what render_template renders in a test."""

    def page(self, templates, **query) -> RenderedResponse:
        return self.successResultOf(render(Page(), query=query, templates=templates))

    def test_mapping(self) -> None:
        response = self.page(SOURCES, t="a.html", x="<b>")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.text(), "<main>[&lt;b&gt;]</main>")

    def test_directory(self) -> None:
        root = self.mktemp()
        for name, text in SOURCES.items():
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        self.assertEqual(self.page(root, t="a.html", x="1").text(), "<main>[1]</main>")
        with open(os.path.join(root, "a.html"), "w") as f:
            f.write("edited {{ x }}")
        self.assertEqual(self.page(root, t="a.html", x="2").text(), "edited 2")

    def test_directoryRefusesTheWayOut(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        with open(os.path.join(os.path.dirname(root), "secret.html"), "w") as f:
            f.write("SECRET")
        os.symlink(os.path.abspath(os.path.join(os.path.dirname(root), "secret.html")), os.path.join(root, "s.html"))
        for name in ("../secret.html", "s.html"):
            response = self.page(root, t=name)
            self.assertEqual(response.code, 500)
            self.assertNotIn("SECRET", response.text())
        self.assertEqual(len(self.flushLoggedErrors()), 2)

    def test_missing(self) -> None:
        with capturedLogs() as events:
            response = self.page(SOURCES, t="nope.html")
        self.assertEqual(response.code, 500)
        self.assertIn("custom 500: The server could not answer this request.", response.text())
        [event] = [e for e in events if "template" in e]
        self.assertEqual((event["template"], event["lineno"]), ("nope.html", None))
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    def test_errorsWithLines(self) -> None:
        for name, line in (("broken.html", 2), ("syntax.html", 3)):
            with capturedLogs() as events:
                response = self.page(SOURCES, t=name)
            self.assertEqual(response.code, 500)
            self.assertNotIn("Undefined", response.text())
            [event] = [e for e in events if "template" in e]
            self.assertEqual((event["template"], event["lineno"]), (name, line))
        self.assertEqual(len(self.flushLoggedErrors()), 2)

    def test_defaultErrorPages(self) -> None:
        """Without a site page, okws's default page for the status is used."""
        response = self.successResultOf(render(Failing(), templates={}))
        self.assertEqual(response.code, 500)
        self.assertIn("<title>500 Internal Server Error</title>", response.text())
        self.flushLoggedErrors(RuntimeError)

    def test_siteErrorPageForAnyFailure(self) -> None:
        response = self.successResultOf(render(Failing(), templates=SOURCES))
        self.assertEqual(response.text(), "custom 500: The server could not answer this request.")
        self.flushLoggedErrors(RuntimeError)

    def test_withoutTemplates(self) -> None:
        response = self.page(None, t="a.html")
        self.assertEqual(response.code, 500)
        [failure] = self.flushLoggedErrors()
        self.assertIn("templates=", failure.getErrorMessage())

    def test_calledFromALaterCallback(self) -> None:
        clock = Clock()
        rendering = render(Later(clock), templates=SOURCES)
        clock.advance(1)
        self.assertEqual(self.successResultOf(rendering).text(), "<main>[later]</main>")

    def test_badTemplatesArgument(self) -> None:
        self.assertRaises(ValueError, render, Page(), templates={"../a.html": "x"})
        self.assertRaises(TypeError, render, Page(), templates={"a.html": b"x"})
        self.assertRaises(ValueError, render, Page(), templates=self.mktemp())
