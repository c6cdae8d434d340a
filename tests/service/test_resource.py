"""
Tests for L{okws_twisted.service.resource.ServiceResource}, driven through
L{okws_twisted.testing.render} so twisted.web's real request path runs.
"""

from __future__ import annotations

import gc

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

import okws_twisted
from okws_twisted import ServiceResource
from okws_twisted.interfaces import ITemplates
from okws_twisted.templating import PublisherUnavailable
from okws_twisted.testing import RenderedResponse, render


def header(response: RenderedResponse, name: str) -> str | None:
    """The single value of C{name} in C{response}, or L{None}."""
    values = response.headers.getRawHeaders(name)
    return None if values is None else ", ".join(values)


class Static(ServiceResource):
    """Answers GET with a fixed value, whatever its type."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value

    def render_GET(self, request):
        return self.value


class Boom(Exception):
    """An author's bug, with a message that must never reach the wire."""


SECRET = "secret-detail-7f3a"


class PackageTests(SynchronousTestCase):
    def test_exports(self) -> None:
        """
        The package's face is C{ServiceResource}, the database errors its
        C{self.db} calls fail with, and C{__version__}, nothing else.
        """
        self.assertEqual(
            okws_twisted.__all__,
            ["DatabaseError", "DatabaseUnavailable", "QueryFailed", "QueryRefused", "ServiceResource", "__version__"],
        )
        self.assertIs(okws_twisted.ServiceResource, ServiceResource)
        self.assertEqual(okws_twisted.__version__, "0.1.0")

    def test_renderTemplateIsNotAMethod(self) -> None:
        """
        C{render_template} is the author's helper, never an HTTP method: a
        request with method C{template} is refused like any other unknown
        method.
        """
        self.assertTrue(callable(ServiceResource.render_template))
        response = self.successResultOf(
            render(Static(b"page"), "template", templates={"x.html": "x"})
        )
        self.assertEqual(response.code, 405)

    def test_isAResource(self) -> None:
        """A service is a twisted.web resource, constructible with no arguments."""
        self.assertIsInstance(ServiceResource(), Resource)


class ReturnTypeTests(SynchronousTestCase):
    """What a render_METHOD may return, and how each is sent."""

    def test_bytes(self) -> None:
        """C{bytes} are the body, with an exact Content-Length."""
        response = self.successResultOf(render(Static(b"<p>hi</p>")))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"<p>hi</p>")
        self.assertEqual(header(response, "content-length"), "9")

    def test_str(self) -> None:
        """
        C{str} is sent as UTF-8 and labelled as UTF-8 HTML when the method set
        no Content-Type.
        """
        response = self.successResultOf(render(Static("caf\u00e9 \u2603")))
        self.assertEqual(response.body, "caf\u00e9 \u2603".encode())
        self.assertEqual(response.text(), "caf\u00e9 \u2603")
        self.assertEqual(header(response, "content-type"), "text/html; charset=utf-8")
        self.assertEqual(header(response, "content-length"), str(len(response.body)))

    def test_strKeepsAuthorsContentType(self) -> None:
        """A Content-Type the method set is not replaced."""

        class Plain(ServiceResource):
            def render_GET(self, request):
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return "plain"

        response = self.successResultOf(render(Plain()))
        self.assertEqual(header(response, "content-type"), "text/plain; charset=utf-8")
        self.assertEqual(response.body, b"plain")

    def test_firedDeferred(self) -> None:
        """A Deferred that already has its result is answered at once."""
        response = self.successResultOf(render(Static(succeed(b"ready"))))
        self.assertEqual(response.body, b"ready")

    def test_laterDeferredOfStr(self) -> None:
        """
        A Deferred that fires later with C{str} is answered then, encoded as
        for a plain C{str}.
        """
        pending: Deferred[str] = Deferred()
        rendering = render(Static(pending))
        self.assertNoResult(rendering)
        pending.callback("l\u00e4ter")
        response = self.successResultOf(rendering)
        self.assertEqual(response.text(), "l\u00e4ter")
        self.assertEqual(header(response, "content-type"), "text/html; charset=utf-8")

    def test_coroutine(self) -> None:
        """An C{async def} method's result is the body."""

        class Async(ServiceResource):
            async def render_GET(self, request):
                return b"from a coroutine"

        response = self.successResultOf(render(Async()))
        self.assertEqual(response.body, b"from a coroutine")
        self.assertEqual(header(response, "content-length"), "16")

    def test_coroutineAwaitingLater(self) -> None:
        """
        An C{async def} method that awaits time is answered when it returns.
        """
        clock = Clock()

        class Slow(ServiceResource):
            async def render_GET(self, request):
                await deferLater(clock, 2.0)
                return "slow"

        rendering = render(Slow())
        clock.advance(1.9)
        self.assertNoResult(rendering)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(rendering).text(), "slow")

    def test_notDoneYet(self) -> None:
        """
        C{NOT_DONE_YET} keeps twisted.web's meaning: the method writes and
        finishes the request itself.
        """

        class Streaming(ServiceResource):
            def render_GET(self, request):
                request.write(b"one ")
                request.write(b"two")
                request.finish()
                return NOT_DONE_YET

        response = self.successResultOf(render(Streaming()))
        self.assertEqual(response.body, b"one two")

    def test_noContentStatus(self) -> None:
        """A 204 carries neither body nor Content-Length."""

        class Empty(ServiceResource):
            def render_DELETE(self, request):
                request.setResponseCode(204)
                return b""

        response = self.successResultOf(render(Empty(), "DELETE", csrf=True))
        self.assertEqual(response.code, 204)
        self.assertEqual(response.body, b"")
        self.assertIsNone(header(response, "content-length"))


class FailureTests(SynchronousTestCase):
    """Failures become a generic 500 on the wire and a traceback in the log."""

    def assertGeneric500(self, response: RenderedResponse) -> None:
        self.assertEqual(response.code, 500)
        self.assertIn("Internal Server Error", response.text())
        for leak in (SECRET, "Traceback", "Boom", "TypeError", ".py"):
            self.assertNotIn(leak, response.text())
        self.assertEqual(header(response, "content-type"), "text/html; charset=utf-8")

    def assertFailureLogged(self, events, exceptionType, path: str = "/") -> dict:
        """
        Exactly one critical event carries the failure, the method and the
        path; return it.
        """
        failures = [event for event in events if "log_failure" in event]
        self.assertEqual(len(failures), 1, failures)
        [event] = failures
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertEqual(event["log_format"], "render {method} {path} failed")
        self.assertEqual(event["method"], "GET")
        self.assertEqual(event["path"], path)
        self.assertTrue(event["log_failure"].check(exceptionType))
        self.assertIn(
            "Traceback", event["log_failure"].getTraceback()
        )
        self.assertEqual(len(self.flushLoggedErrors(exceptionType)), 1)
        return event

    def test_synchronousException(self) -> None:
        class Broken(ServiceResource):
            isLeaf = True

            def render_GET(self, request):
                raise Boom(SECRET)

        with capturedLogs() as events:
            response = self.successResultOf(render(Broken(), path="/where?q=1"))
        self.assertGeneric500(response)
        self.assertFailureLogged(events, Boom, path="/where")

    def test_coroutineException(self) -> None:
        class Broken(ServiceResource):
            async def render_GET(self, request):
                raise Boom(SECRET)

        with capturedLogs() as events:
            response = self.successResultOf(render(Broken()))
        self.assertGeneric500(response)
        self.assertFailureLogged(events, Boom)

    def test_deferredFailsLater(self) -> None:
        pending: Deferred[bytes] = Deferred()
        with capturedLogs() as events:
            rendering = render(Static(pending))
            pending.errback(Boom(SECRET))
        self.assertGeneric500(self.successResultOf(rendering))
        self.assertFailureLogged(events, Boom)

    def test_noneIsAProgrammingError(self) -> None:
        """
        Forgetting to return gives a 500 and a logged C{TypeError} that names
        the method and the type.
        """
        with capturedLogs() as events:
            response = self.successResultOf(render(Static(None)))
        self.assertGeneric500(response)
        event = self.assertFailureLogged(events, TypeError)
        message = event["log_failure"].getErrorMessage()
        self.assertIn("Static.render_GET", message)
        self.assertIn("NoneType", message)

    def test_otherTypeIsAProgrammingError(self) -> None:
        with capturedLogs() as events:
            response = self.successResultOf(render(Static({"a": 1})))
        self.assertGeneric500(response)
        self.assertFailureLogged(events, TypeError)

    def test_asyncNoneIsAProgrammingError(self) -> None:
        class Forgetful(ServiceResource):
            async def render_GET(self, request):
                request.setHeader(b"x", b"y")

        with capturedLogs() as events:
            response = self.successResultOf(render(Forgetful()))
        self.assertGeneric500(response)
        self.assertFailureLogged(events, TypeError)

    def test_failureDropsAuthorsHeaders(self) -> None:
        """
        Headers and cookies set before the failure are not sent with the
        error page, which they would mislabel.
        """

        class HalfDone(ServiceResource):
            def render_GET(self, request):
                request.setHeader(b"content-type", b"application/json")
                request.setHeader(b"content-encoding", b"gzip")
                request.addCookie(b"session", b"abc")
                raise Boom(SECRET)

        response = self.successResultOf(render(HalfDone()))
        self.assertGeneric500(response)
        self.assertIsNone(header(response, "content-encoding"))
        self.assertIsNone(header(response, "set-cookie"))
        self.assertIsNotNone(header(response, "server"))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_failureAfterWritingCutsTheConnection(self) -> None:
        """
        Once the response has started a 500 cannot be sent; the connection is
        cut so the client sees a truncated response, not a complete one.
        """

        class Partial(ServiceResource):
            async def render_GET(self, request):
                request.write(b"half of ")
                raise Boom(SECRET)

        self.failureResultOf(render(Partial()), ResponseFailed)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)


class MethodTests(SynchronousTestCase):
    """Dispatch on the method, HEAD, and methods a class does not answer."""

    class GetAndPost(ServiceResource):
        def render_GET(self, request):
            return b"got"

        def render_POST(self, request):
            return b"posted " + request.content.read()

    class PostOnly(ServiceResource):
        def render_POST(self, request):
            return b"posted"

    def test_dispatch(self) -> None:
        response = self.successResultOf(
            render(self.GetAndPost(), "POST", body=b"data", csrf=True)
        )
        self.assertEqual(response.body, b"posted data")

    def test_notAllowed(self) -> None:
        """
        A method with no render_METHOD gets 405 with an Allow header naming
        the methods the class defines (HEAD with GET).
        """
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            response = self.successResultOf(render(self.GetAndPost(), method))
            self.assertEqual(response.code, 405, method)
            self.assertEqual(header(response, "allow"), "GET, HEAD, POST")
            self.assertIn("Method Not Allowed", response.text())

    def test_headWithoutGet(self) -> None:
        """
        Without render_GET, HEAD is not allowed either (twisted.web's default
        render_HEAD would fail looking for render_GET).
        """
        response = self.successResultOf(render(self.PostOnly(), "HEAD"))
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, "allow"), "POST")
        response = self.successResultOf(render(self.PostOnly(), "GET"))
        self.assertEqual(header(response, "allow"), "POST")

    def test_explicitAllowedMethods(self) -> None:
        """As in twisted.web, a class may state its Allow list itself."""

        class Stated(self.PostOnly):
            allowedMethods = (b"POST", b"OPTIONS")

        response = self.successResultOf(render(Stated(), "GET"))
        self.assertEqual(header(response, "allow"), "POST, OPTIONS")

    def test_lowerCaseHelpersAreNotMethods(self) -> None:
        """
        A C{render_<lowercase>} helper (like render_template) is not an HTTP
        method: a client cannot call it and Allow does not list it.
        """
        called = []

        class WithHelper(ServiceResource):
            def render_GET(self, request):
                return b"page"

            def render_fragment(self, request):
                called.append(request)
                return b"internal"

        response = self.successResultOf(render(WithHelper(), "fragment"))
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, "allow"), "GET, HEAD")
        self.assertEqual(called, [])

    def test_headUsesGet(self) -> None:
        """
        HEAD is answered by render_GET: same headers and Content-Length, no
        body.
        """
        get = self.successResultOf(render(Static("some page")))
        head = self.successResultOf(render(Static("some page"), "HEAD"))
        self.assertEqual(head.code, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(header(head, "content-length"), header(get, "content-length"))
        self.assertEqual(header(head, "content-type"), header(get, "content-type"))

    def test_headAsync(self) -> None:
        pending: Deferred[bytes] = Deferred()
        rendering = render(Static(pending), "HEAD")
        pending.callback(b"twelve bytes")
        head = self.successResultOf(rendering)
        self.assertEqual(head.body, b"")
        self.assertEqual(header(head, "content-length"), "12")

    def test_ownRenderHead(self) -> None:
        class Head(ServiceResource):
            def render_HEAD(self, request):
                request.setHeader(b"x-head", b"yes")
                return b""

        response = self.successResultOf(render(Head(), "HEAD"))
        self.assertEqual(header(response, "x-head"), "yes")
        response = self.successResultOf(render(Head(), "GET"))
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, "allow"), "HEAD")


class ChildTests(SynchronousTestCase):
    """Children work as in twisted.web, and a trailing slash renders self."""

    def test_putChild(self) -> None:
        root = Static(b"root")
        root.putChild(b"child", Static(b"child"))
        self.assertEqual(self.successResultOf(render(root, path="/child")).body, b"child")
        self.assertEqual(self.successResultOf(render(root, path="/")).body, b"root")

    def test_nestedTrailingSlash(self) -> None:
        root = Static(b"root")
        root.putChild(b"child", Static(b"child"))
        response = self.successResultOf(render(root, path="/child/"))
        self.assertEqual(response.body, b"child")

    def test_explicitEmptyChildWins(self) -> None:
        root = Static(b"root")
        root.putChild(b"", Static(b"index"))
        self.assertEqual(self.successResultOf(render(root, path="/")).body, b"index")

    def test_getChild(self) -> None:
        class Users(ServiceResource):
            def getChild(self, name, request):
                return Static(b"user " + name)

        response = self.successResultOf(render(Users(), path="/ada"))
        self.assertEqual(response.body, b"user ada")

    def test_getChildFails(self) -> None:
        """
        A failing getChild is twisted.web's to answer (traversal runs before
        any render): still a 500 with no traceback on the wire.
        """

        class Broken(ServiceResource):
            def getChild(self, name, request):
                raise Boom(SECRET)

        response = self.successResultOf(render(Broken(), path="/x"))
        self.assertEqual(response.code, 500)
        self.assertNotIn(SECRET, response.text())
        self.assertNotIn("Traceback", response.text())
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_unknownChild(self) -> None:
        response = self.successResultOf(render(Static(b"root"), path="/nowhere"))
        self.assertEqual(response.code, 404)

    def test_leafSeesRestOfPath(self) -> None:
        class Leaf(ServiceResource):
            isLeaf = True

            def render_GET(self, request):
                return b"/".join(request.postpath)

        response = self.successResultOf(render(Leaf(), path="/a/b"))
        self.assertEqual(response.body, b"a/b")


class DisconnectTests(SynchronousTestCase):
    """A client that leaves before an asynchronous answer."""

    def test_cancelsDeferred(self) -> None:
        cancelled = []
        pending: Deferred[bytes] = Deferred(cancelled.append)
        rendering = render(Static(pending))
        rendering.cancel()
        self.failureResultOf(rendering, CancelledError)
        self.assertEqual(cancelled, [pending])

    def test_cancelsCoroutine(self) -> None:
        """The coroutine sees the cancellation at its await, and nothing is logged."""
        seen = []

        class Waiting(ServiceResource):
            async def render_GET(self, request):
                try:
                    await Deferred()
                except CancelledError:
                    seen.append("cancelled")
                    raise
                return b"never"

        with capturedLogs() as events:
            rendering = render(Waiting())
            rendering.cancel()
        self.failureResultOf(rendering, CancelledError)
        self.assertEqual(seen, ["cancelled"])
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.assertIn(
            "client went away before {method} {path} was answered",
            [e.get("log_format") for e in events],
        )

    def test_cancelsTimer(self) -> None:
        clock = Clock()

        class Timed(ServiceResource):
            def render_GET(self, request):
                return deferLater(clock, 5, lambda: b"late")

        rendering = render(Timed())
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        rendering.cancel()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(rendering, CancelledError)

    def test_noWriteAfterLeaving(self) -> None:
        """
        A result that arrives after the client left (a Deferred that cannot be
        cancelled) is dropped: no write to the finished request, no error.
        """
        pending: Deferred[bytes] = Deferred()
        rendering = render(Static(pending))
        rendering.cancel()
        pending.callback(b"too late")
        self.failureResultOf(rendering, CancelledError)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_coroutineIgnoringCancellation(self) -> None:
        """
        Even a coroutine that swallows the cancellation and returns a body
        does not get it written to the gone client.
        """

        class Stubborn(ServiceResource):
            async def render_GET(self, request):
                try:
                    await Deferred()
                except CancelledError:
                    pass
                return b"written anyway?"

        rendering = render(Stubborn())
        rendering.cancel()
        self.failureResultOf(rendering, CancelledError)
        gc.collect()  # an error left in a dropped Deferred is logged now
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_errorAfterLeavingIsLogged(self) -> None:
        """
        A real error (not the cancellation) after the client left is still the
        author's bug: logged, not written.
        """

        class Messy(ServiceResource):
            async def render_GET(self, request):
                try:
                    await Deferred()
                finally:
                    raise Boom(SECRET)

        rendering = render(Messy())
        rendering.cancel()
        self.failureResultOf(rendering, CancelledError)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)


@implementer(ITemplates)
class Unreachable:
    """Templates whose publisher never answers, with a recognisable error page."""

    def render(self, name, context):
        return fail(PublisherUnavailable(name, 5.0, 9))

    def error_page(self, status, message):
        return f"site {status}: {message}"


class UsesTemplate(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"x-set-before", b"1")
        return self.render_template("page.html", who="you")


class TemplateAnswerTests(SynchronousTestCase):
    """How a template failure reaches the client and the log."""

    def test_publisherUnavailableIs503(self) -> None:
        with capturedLogs() as events:
            response = self.successResultOf(render(UsesTemplate(), templates=Unreachable()))
        self.assertEqual(response.code, 503)
        self.assertEqual(header(response, "retry-after"), "9")
        self.assertTrue(response.text().startswith("site 503: "))
        self.assertIsNone(header(response, "x-set-before"))
        [event] = [e for e in events if e.get("template") == "page.html"]
        self.assertEqual(event["log_level"], LogLevel.warn)

    def test_head(self) -> None:
        response = self.successResultOf(render(UsesTemplate(), "HEAD", templates=Unreachable()))
        self.assertEqual(response.code, 503)
        self.assertEqual(response.body, b"")

    def test_brokenIs500WithNameAndLine(self) -> None:
        with capturedLogs() as events:
            response = self.successResultOf(
                render(UsesTemplate(), templates={"page.html": "\n\n{{ who.x.y }}"})
            )
        self.assertEqual(response.code, 500)
        self.assertNotIn("who", response.text())
        [event] = [e for e in events if e.get("template") == "page.html"]
        self.assertEqual((event["lineno"], event["log_level"]), (3, LogLevel.error))
        self.assertIn("page.html line 3", event["where"])
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    def test_rendered(self) -> None:
        response = self.successResultOf(
            render(UsesTemplate(), templates={"page.html": "<p>{{ who }}</p>"})
        )
        self.assertEqual(response.body, b"<p>you</p>")
        self.assertEqual(header(response, "content-type"), "text/html; charset=utf-8")
