"""
Tests for L{okws_twisted.wire.errorpage}: the error responses every okws process
writes, with the site's pages or the built-in ones.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire.errorpage import (
    MESSAGE_MARKER,
    NO_PAGES,
    ErrorPages,
    builtin_page,
    error_response,
    phrase,
)


def split(response: bytes) -> tuple[list[str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


class BuiltinTests(SynchronousTestCase):
    def test_page(self) -> None:
        page = builtin_page(404, "No <service> here.")
        self.assertIn("<h1>404 Not Found</h1>", page)
        self.assertIn("No &lt;service&gt; here.", page)

    def test_phrase(self) -> None:
        self.assertEqual(phrase(431), "Request Header Fields Too Large")
        self.assertEqual(phrase(599), "Unknown")

    def test_messageDefaultsToPhrase(self) -> None:
        self.assertIn("<p>Bad Request</p>", builtin_page(400))


class SitePagesTests(SynchronousTestCase):
    def test_messageEscapedIntoMarker(self) -> None:
        pages = ErrorPages({404: f"<title>{MESSAGE_MARKER}</title><p>{MESSAGE_MARKER}</p>"})
        self.assertEqual(
            pages.body(404, 'a <b> & "c"'),
            "<title>a &lt;b&gt; &amp; &quot;c&quot;</title><p>a &lt;b&gt; &amp; &quot;c&quot;</p>",
        )

    def test_noMessageShowsPhrase(self) -> None:
        self.assertEqual(ErrorPages({503: MESSAGE_MARKER}).body(503), "Service Unavailable")

    def test_pageWithoutMarker(self) -> None:
        self.assertEqual(ErrorPages({404: "static"}).body(404, "ignored"), "static")

    def test_otherStatusesBuiltin(self) -> None:
        self.assertEqual(ErrorPages({404: "site"}).body(400, "m"), builtin_page(400, "m"))
        self.assertEqual(NO_PAGES.body(404, "m"), builtin_page(404, "m"))


class ResponseTests(SynchronousTestCase):
    def test_builtin(self) -> None:
        lines, body = split(error_response(404, "No service here."))
        self.assertEqual(lines[0], "HTTP/1.1 404 Not Found")
        self.assertIn("Connection: close", lines)
        self.assertIn(f"Content-Length: {len(body)}", lines)
        self.assertIn(b"No service here.", body)

    def test_sitePage(self) -> None:
        pages = ErrorPages({503: f"<p>caf\u00e9: {MESSAGE_MARKER}</p>"})
        lines, body = split(error_response(503, "later", pages=pages, retry_after=7))
        self.assertEqual(body, "<p>caf\u00e9: later</p>".encode("utf-8"))
        self.assertIn(f"Content-Length: {len(body)}", lines)
        self.assertIn("Retry-After: 7", lines)
        self.assertIn("Content-Type: text/html; charset=utf-8", lines)

    def test_headOnly(self) -> None:
        response = error_response(404, pages=ErrorPages({404: "x" * 50}), head_only=True)
        lines, body = split(response)
        self.assertEqual(body, b"")
        self.assertIn("Content-Length: 50", lines)
