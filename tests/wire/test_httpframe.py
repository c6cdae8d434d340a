# -*- test-case-name: tests.wire.test_httpframe -*-
"""
Tests for L{okws_twisted.wire.httpframe}, the strict HTTP/1.1 reader.

Every refusal is checked three ways (one-shot L{parse_head}, a L{HeadReader}
fed one byte at a time, and a L{RequestFramer}), because the dispatcher and the
services must never disagree about a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire.httpframe import (
    FORBIDDEN_TRAILERS,
    Body,
    End,
    Head,
    HeadReader,
    HTTPError,
    Limits,
    MAX_RESPONSE_HEAD,
    Piece,
    RequestFramer,
    RequestHead,
    ResponseError,
    ResponseFramer,
    _HeadScanner,
    _parse_common,
    parse_head,
)
from tests import http_corpus

STATUSES = {400, 413, 414, 431, 501, 505}
GET = b"GET / HTTP/1.1"
HOST = b"Host: example.com"


def head(*lines: bytes) -> bytes:
    """A request head made of C{lines}, each ended by CRLF, then the blank line."""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def get(*fields: bytes, target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    """A request head with a Host field and C{fields}."""
    return head(b"GET " + target + b" " + version, HOST, *fields)


def head_bytewise(data: bytes, limits: Limits = Limits()) -> tuple:
    """The outcome of feeding C{data} to a L{HeadReader} one byte at a time."""
    reader = HeadReader(limits)
    try:
        for i in range(len(data)):
            found = reader.feed(data[i : i + 1])
            if found is not None:
                return ("head", found, found.size)
        return ("incomplete",)
    except HTTPError as e:
        return ("error", e.status, e.reason)


def head_whole(data: bytes, limits: Limits = Limits()) -> tuple:
    """The outcome of L{parse_head} on C{data}."""
    try:
        result = parse_head(data, limits)
    except HTTPError as e:
        return ("error", e.status, e.reason)
    if result is None:
        return ("incomplete",)
    return ("head", result[0], result[1])


def normalise(events: Iterable[Head | Body | End]) -> list[tuple]:
    """Events as comparable tuples, consecutive bodies merged."""
    out: list[tuple] = []
    for event in events:
        if isinstance(event, Head):
            out.append(("head", event.raw, event.head))
        elif isinstance(event, Body):
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + event.data)
            else:
                out.append(("body", event.data))
        else:
            assert isinstance(event, End)
            out.append(("end",))
    return out


def frame(pieces: Sequence[bytes], limits: Limits = Limits(), eof: bool = True) -> tuple[list[tuple], tuple | None]:
    """Feed C{pieces} to a L{RequestFramer}, draining events after each; the
    normalised events and the error (status, reason) if one was raised."""
    framer = RequestFramer(limits)
    events: list[Head | Body | End] = []
    try:
        for piece in pieces:
            framer.feed(piece)
            while (event := framer.next_event()) is not None:
                events.append(event)
        if eof:
            framer.eof()
            while (event := framer.next_event()) is not None:
                events.append(event)
    except HTTPError as e:
        return normalise(events), (e.status, e.reason)
    return normalise(events), None


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


class _Assertions(SynchronousTestCase):
    def accept(self, data: bytes, limits: Limits = Limits()) -> RequestHead:
        """C{data} is exactly one valid head: all three readers agree on it."""
        whole = head_whole(data, limits)
        self.assertEqual(whole[0], "head", whole)
        found = whole[1]
        self.assertEqual(whole[2], len(data))
        self.assertEqual(found.size, len(data))
        self.assertEqual(head_bytewise(data, limits), whole)
        events, error = frame([data], limits, eof=False)
        self.assertIsNone(error)
        self.assertEqual(events[0], ("head", data, found))
        return found

    def refuse(self, data: bytes, status: int, reason: str | None = None, limits: Limits = Limits()) -> HTTPError:
        """C{data} is refused with C{status} by all three readers alike."""
        with self.assertRaises(HTTPError) as caught:
            parse_head(data, limits)
        error = caught.exception
        self.assertEqual(error.status, status, error.reason)
        if reason is not None:
            self.assertIn(reason, error.reason)
        self.assertEqual(head_bytewise(data, limits), ("error", error.status, error.reason))
        events, framed = frame([data], limits)
        self.assertEqual(framed, (error.status, error.reason))
        self.assertEqual(events, [])
        return error


class LimitsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        limits = Limits()
        self.assertEqual(
            (limits.max_request_line, limits.max_head, limits.max_headers, limits.max_body),
            (8192, 16384, 100, None),
        )

    def test_invalid(self) -> None:
        for name in ("max_request_line", "max_head", "max_headers"):
            for value in (0, -1, 1.5, "10", None, True):
                self.assertRaises(ValueError, Limits, **{name: value})
        for value in (-1, 1.5, "10", False):
            self.assertRaises(ValueError, Limits, max_body=value)

    def test_valid(self) -> None:
        self.assertEqual(Limits(max_body=0).max_body, 0)
        self.assertEqual(Limits(1, 1, 1, 1), Limits(max_request_line=1, max_head=1, max_headers=1, max_body=1))


class HTTPErrorTests(SynchronousTestCase):
    def test_attributes(self) -> None:
        error = HTTPError(400, "bad")
        self.assertEqual((error.status, error.reason), (400, "bad"))
        self.assertEqual(str(error), "400 bad")
        self.assertIsInstance(error, Exception)


class RequestLineTests(_Assertions):
    def test_origin_form(self) -> None:
        found = self.accept(get(target=b"/a/b.html?x=1&y=/../z?"))
        self.assertEqual(found.method, b"GET")
        self.assertEqual(found.target, b"/a/b.html?x=1&y=/../z?")
        self.assertEqual(found.path, b"/a/b.html")
        self.assertEqual(found.query, b"x=1&y=/../z?")
        self.assertEqual(found.version, b"HTTP/1.1")

    def test_empty_query(self) -> None:
        found = self.accept(get(target=b"/p?"))
        self.assertEqual((found.path, found.query), (b"/p", b""))

    def test_methods(self) -> None:
        for method in (b"POST", b"DELETE", b"PATCH", b"PROPFIND", b"get", b"X-M!#$%&'*+-.^_`|~9"):
            self.assertEqual(self.accept(head(method + b" / HTTP/1.1", HOST)).method, method)

    def test_http10(self) -> None:
        found = self.accept(head(b"GET /x HTTP/1.0"))
        self.assertEqual(found.version, b"HTTP/1.0")
        self.assertIsNone(found.host)

    def test_options_asterisk(self) -> None:
        found = self.accept(head(b"OPTIONS * HTTP/1.1", HOST))
        self.assertEqual((found.target, found.path, found.query), (b"*", b"*", b""))

    def test_asterisk_other_method(self) -> None:
        self.refuse(head(b"GET * HTTP/1.1", HOST), 400, "OPTIONS")

    def test_absolute_form(self) -> None:
        found = self.accept(head(b"GET http://example.com/p/q?x=1 HTTP/1.1", HOST))
        self.assertEqual((found.path, found.query, found.host), (b"/p/q", b"x=1", b"example.com"))
        found = self.accept(head(b"GET HTTPS://Example.COM:8443 HTTP/1.1", b"Host: example.com:8443"))
        self.assertEqual((found.path, found.query), (b"/", b""))
        found = self.accept(head(b"GET http://example.com?q HTTP/1.0"))
        self.assertEqual((found.path, found.query, found.host), (b"/", b"q", b"example.com"))

    def test_absolute_form_host_mismatch(self) -> None:
        self.refuse(head(b"GET http://other.example/ HTTP/1.1", HOST), 400, "does not match")

    def test_absolute_form_bad(self) -> None:
        for target in (b"ftp://example.com/", b"http://user@example.com/", b"http:///p", b"http://a b/"):
            self.refuse(head(b"GET " + target + b" HTTP/1.1", HOST), 400)

    def test_relative_target(self) -> None:
        self.refuse(head(b"GET foo/bar HTTP/1.1", HOST), 400, "must start with /")
        self.refuse(head(b"GET ?x HTTP/1.1", HOST), 400)

    def test_authority_form(self) -> None:
        self.refuse(head(b"GET example.com:80 HTTP/1.1", HOST), 400, "CONNECT")

    def test_connect(self) -> None:
        self.refuse(head(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 501, "CONNECT is not supported")
        self.refuse(head(b"CONNECT / HTTP/1.1", HOST), 501)

    def test_malformed(self) -> None:
        for line in (
            b"GET  / HTTP/1.1",
            b"GET / HTTP/1.1 ",
            b" GET / HTTP/1.1",
            b"GET /",
            b"GET / HTTP/1.1 x",
            b"GET\t/ HTTP/1.1",
            b"GET /\tHTTP/1.1",
            b"GET",
        ):
            self.refuse(head(line, HOST), 400, "malformed request line")

    def test_invalid_method(self) -> None:
        for method in (b"G(T", b"GE\"T", b"G\x00T", b"G\xc3\xa9T", b"G;T"):
            self.refuse(head(method + b" / HTTP/1.1", HOST), 400, "invalid method")

    def test_malformed_version(self) -> None:
        for version in (b"HTTP/1", b"http/1.1", b"HTTP/1.10", b"HTTP/11.1", b"HTTP/1.x", b"HTTPS/1.1", b"HTTP/1.1x"):
            self.refuse(head(b"GET / " + version, HOST), 400, "malformed HTTP version")

    def test_unsupported_version(self) -> None:
        for version in (b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/9.9"):
            self.refuse(head(b"GET / " + version, HOST), 505)

    def test_http2_preface(self) -> None:
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        self.refuse(preface, 505)
        # Refused as soon as the request line is complete.
        self.assertRaises(HTTPError, HeadReader().feed, b"PRI * HTTP/2.0\r\n")

    def test_target_characters(self) -> None:
        for target in (b"/caf\xc3\xa9", b"/a\x00b", b"/a\x7fb", b"/a\x01", b"/\x80", b"/a\x1fb"):
            self.refuse(head(b"GET " + target + b" HTTP/1.1", HOST), 400, "request target")

    def test_fragment(self) -> None:
        self.refuse(get(target=b"/a#b"), 400, "fragment")

    def test_odd_but_valid_target_characters(self) -> None:
        found = self.accept(get(target=b"/a|b{c}\\d^e`f[g]h\"i<j>k~!$&'()*+,;=:@"))
        self.assertEqual(found.path, b"/a|b{c}\\d^e`f[g]h\"i<j>k~!$&'()*+,;=:@")


class PathTests(_Assertions):
    def test_dot_segments(self) -> None:
        for target in (
            b"/a/./b",
            b"/a/../b",
            b"/a/.",
            b"/a/..",
            b"/.",
            b"/..",
            b"/../x",
            b"/a/%2e%2e/b",
            b"/a/%2E%2E",
            b"/a/.%2e/b",
            b"/%2e/x",
            b"/a/./b?q",
            b"/a//../b",
        ):
            self.refuse(get(target=target), 400, "dot-segment")

    def test_dot_segments_in_absolute_form(self) -> None:
        self.refuse(head(b"GET http://example.com/a/../b HTTP/1.1", HOST), 400, "dot-segment")

    def test_dots_that_are_not_segments(self) -> None:
        for target in (b"/a.b/c", b"/.well-known/x", b"/a/..b", b"/...", b"/a/b.", b"/a/.b./", b"/%2e%2e%2e", b"/p?x=/../"):
            self.accept(get(target=target))

    def test_percent(self) -> None:
        for target in (b"/a%zz", b"/a%2", b"/a%", b"/%%41", b"/a%g0"):
            self.refuse(get(target=target), 400, "percent-encoding")
        self.refuse(get(target=b"/a%00b"), 400, "NUL")
        for target in (b"/a%20b", b"/%C3%A9", b"/a%2fb", b"/p?q=100%", b"/p?q=%zz"):
            self.accept(get(target=target))


class HeaderFieldTests(_Assertions):
    def test_fields(self) -> None:
        found = self.accept(
            head(
                GET,
                b"Host: example.com",
                b"X-One:   a  b \t",
                b"x-ONE:c",
                b"Empty:",
                b"Tab:\tv\tw\t",
                b"Obs: caf\xc3\xa9 \x80\xff",
                b"Colons: a: b:c",
            )
        )
        self.assertEqual(
            found.headers,
            (
                (b"host", b"example.com"),
                (b"x-one", b"a  b"),
                (b"x-one", b"c"),
                (b"empty", b""),
                (b"tab", b"v\tw"),
                (b"obs", b"caf\xc3\xa9 \x80\xff"),
                (b"colons", b"a: b:c"),
            ),
        )
        self.assertEqual(found.header(b"x-one"), b"a  b")
        self.assertEqual(found.header(b"empty"), b"")
        self.assertIsNone(found.header(b"missing"))

    def test_obs_fold(self) -> None:
        self.refuse(head(GET, HOST, b"X: a", b" b"), 400, "folding")
        self.refuse(head(GET, HOST, b"X: a", b"\tb"), 400, "folding")
        self.refuse(head(GET, b" X: a", HOST), 400, "folding")

    def test_whitespace_before_colon(self) -> None:
        self.refuse(head(GET, HOST, b"X : a"), 400, "whitespace")
        self.refuse(head(GET, HOST, b"X\t: a"), 400, "whitespace")
        self.refuse(head(GET, b"Host : example.com"), 400, "whitespace")

    def test_empty_name(self) -> None:
        self.refuse(head(GET, HOST, b": a"), 400, "empty header name")

    def test_no_colon(self) -> None:
        self.refuse(head(GET, HOST, b"Just text"), 400, "colon")

    def test_invalid_name(self) -> None:
        for name in (b"X(Y", b"X Y", b"X\x00", b"\xc3\xa9", b"X/Y", b"X@Y", b"X{}"):
            self.refuse(head(GET, HOST, name + b": a"), 400, "invalid character in header name")

    def test_control_characters_in_value(self) -> None:
        self.refuse(head(GET, HOST, b"X: a\x00b"), 400, "NUL")
        for char in list(range(0x01, 0x09)) + list(range(0x0B, 0x0D)) + list(range(0x0E, 0x20)) + [0x7F]:
            self.refuse(head(GET, HOST, b"X: a" + bytes([char]) + b"b"), 400, "control character")

    def test_bare_cr(self) -> None:
        self.refuse(head(GET, HOST, b"X: a\rb"), 400, "bare CR")
        self.refuse(b"GET / HTTP/1.1\r\nHost: x\r\r\n\r\n", 400, "bare CR")
        self.refuse(b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400, "bare CR")
        self.refuse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n", 400, "bare CR")

    def test_bare_lf(self) -> None:
        self.refuse(b"GET / HTTP/1.1\nHost: x\n\n", 400, "bare LF")
        self.refuse(b"GET / HTTP/1.1\r\nHost: x\n\r\n", 400, "bare LF")
        self.refuse(b"GET / HTTP/1.1\r\nHost: x\r\n\n", 400, "bare LF")
        self.refuse(b"GET / HTTP/1.1\r\nX: a\nb\r\nHost: x\r\n\r\n", 400, "bare LF")
        self.refuse(b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bare LF")

    def test_leading_empty_line(self) -> None:
        data = b"\r\n" + get()
        found = self.accept(data)
        self.assertEqual(found.size, len(data))
        self.assertEqual(found.path, b"/")

    def test_two_leading_empty_lines(self) -> None:
        self.refuse(b"\r\n\r\n" + get(), 400, "empty lines")


class HostTests(_Assertions):
    def test_missing(self) -> None:
        self.refuse(head(GET), 400, "missing Host")
        self.refuse(head(GET, b"X-Host: example.com"), 400, "missing Host")

    def test_repeated(self) -> None:
        self.refuse(head(GET, HOST, HOST), 400, "repeated Host")
        self.refuse(head(GET, HOST, b"host: other.example"), 400, "repeated Host")
        self.refuse(head(b"GET / HTTP/1.0", HOST, HOST), 400, "repeated Host")

    def test_valid(self) -> None:
        for value in (
            b"example.com",
            b"example.com:8080",
            b"127.0.0.1:80",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"my_host.local",
            b"xn--bcher-kva.example",
            b"EXAMPLE.com",
            b"a:65535",
        ):
            self.assertEqual(self.accept(head(GET, b"Host: " + value)).host, value)

    def test_invalid(self) -> None:
        for value in (b"", b"a b", b"a/b", b"a:b", b"a:", b"a:65536", b"a:123456", b"a@b", b"[::1", b"a:1:2", b"a\"b", b"a%zz"):
            self.refuse(head(GET, b"Host: " + value), 400, "invalid Host")


class BodyHeaderTests(_Assertions):
    def test_no_body(self) -> None:
        found = self.accept(get())
        self.assertEqual((found.content_length, found.chunked), (None, False))

    def test_content_length(self) -> None:
        self.assertEqual(self.accept(get(b"Content-Length: 5")).content_length, 5)
        self.assertEqual(self.accept(get(b"content-length:  007 ")).content_length, 7)
        self.assertEqual(self.accept(get(b"Content-Length: 0")).content_length, 0)
        self.assertEqual(self.accept(get(b"Content-Length: 000000000000000000000000123")).content_length, 123)

    def test_repeated_content_length(self) -> None:
        self.refuse(get(b"Content-Length: 5", b"Content-Length: 5"), 400, "repeated Content-Length")
        self.refuse(get(b"Content-Length: 5", b"Content-Length: 6"), 400, "repeated Content-Length")

    def test_invalid_content_length(self) -> None:
        for value in (b"1,1", b"5, 5", b"-1", b"+1", b"0x5", b"5 5", b"", b"1.0", b"five", b"\xd9\xa5"):
            self.refuse(get(b"Content-Length: " + value), 400, "invalid Content-Length")

    def test_huge_content_length(self) -> None:
        self.refuse(get(b"Content-Length: " + b"9" * 19), 413)
        self.refuse(get(b"Content-Length: " + b"9" * 5000), 413)

    def test_content_length_over_max_body(self) -> None:
        self.refuse(get(b"Content-Length: 101"), 413, limits=Limits(max_body=100))
        self.accept(get(b"Content-Length: 100"), limits=Limits(max_body=100))
        self.refuse(get(b"Content-Length: 1"), 413, limits=Limits(max_body=0))

    def test_content_length_and_transfer_encoding(self) -> None:
        self.refuse(get(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400, "both")
        self.refuse(get(b"Transfer-Encoding: chunked", b"Content-Length: 5"), 400, "both")

    def test_chunked(self) -> None:
        for value in (b"chunked", b"Chunked", b"CHUNKED", b"  chunked\t"):
            found = self.accept(get(b"Transfer-Encoding: " + value))
            self.assertEqual((found.chunked, found.content_length), (True, None))

    def test_transfer_encoding_refused(self) -> None:
        cases = [
            (b"gzip, chunked", "other than chunked"),
            (b"deflate,chunked", "other than chunked"),
            (b"chunked, gzip", "final transfer coding is not chunked"),
            (b"gzip", "final transfer coding is not chunked"),
            (b"identity", "final transfer coding is not chunked"),
            (b"chunked, chunked", "more than once"),
            (b"chunked, identity, chunked", "more than once"),
            (b"identity, chunked", "unknown transfer coding"),
            (b"foo, chunked", "unknown transfer coding"),
            (b"chunked;q=1", "malformed"),
            (b"chunked,", "malformed"),
            (b"", "malformed"),
            (b'"chunked"', "malformed"),
        ]
        for value, reason in cases:
            self.refuse(get(b"Transfer-Encoding: " + value), 400, reason)

    def test_transfer_encoding_twice(self) -> None:
        self.refuse(get(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400, "more than once")
        self.refuse(get(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"), 400, "other than chunked")

    def test_transfer_encoding_http10(self) -> None:
        self.refuse(head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked"), 400, "HTTP/1.0")


class ConnectionTests(_Assertions):
    def test_keep_alive(self) -> None:
        cases = [
            (b"HTTP/1.1", [], True),
            (b"HTTP/1.1", [b"Connection: close"], False),
            (b"HTTP/1.1", [b"Connection: Close"], False),
            (b"HTTP/1.1", [b"Connection: keep-alive, close"], False),
            (b"HTTP/1.1", [b"Connection: Upgrade ,CLOSE"], False),
            (b"HTTP/1.1", [b"Connection: keep-alive"], True),
            (b"HTTP/1.1", [b"Connection: closed"], True),
            (b"HTTP/1.1", [b"Connection: keep-alive", b"Connection: close"], False),
            (b"HTTP/1.0", [], False),
            (b"HTTP/1.0", [b"Connection: keep-alive"], True),
            (b"HTTP/1.0", [b"Connection: Keep-Alive"], True),
            (b"HTTP/1.0", [b"Connection: foo,keep-alive"], True),
            (b"HTTP/1.0", [b"Connection: keep-alive, close"], False),
            (b"HTTP/1.0", [b"Connection: close"], False),
        ]
        for version, fields, expected in cases:
            found = self.accept(get(*fields, version=version))
            self.assertEqual(found.keep_alive, expected, (version, fields))

    def test_expect_continue(self) -> None:
        self.assertTrue(self.accept(get(b"Expect: 100-continue")).expect_continue)
        self.assertTrue(self.accept(get(b"expect: 100-Continue")).expect_continue)
        self.assertFalse(self.accept(get(b"Expect: something")).expect_continue)
        self.assertFalse(self.accept(get()).expect_continue)
        # RFC 9110 section 10.1.1: ignored in an HTTP/1.0 request.
        self.assertFalse(self.accept(get(b"Expect: 100-continue", version=b"HTTP/1.0")).expect_continue)


class LimitTests(_Assertions):
    def test_request_line(self) -> None:
        limits = Limits(max_request_line=50)
        line = b"GET /" + b"a" * 36 + b" HTTP/1.1"
        self.assertEqual(len(line), 50)
        self.accept(head(line, HOST), limits)
        self.refuse(head(b"GET /" + b"a" * 37 + b" HTTP/1.1", HOST), 414, limits=limits)

    def test_request_line_early(self) -> None:
        """414 as soon as the line is past its limit, long before any CRLF."""
        reader = HeadReader(Limits(max_request_line=20))
        self.assertIsNone(reader.feed(b"GET /" + b"a" * 15))
        error = self.assertRaises(HTTPError, reader.feed, b"a")
        self.assertEqual(error.status, 414)
        # A CR just past the limit may still end the line.
        reader = HeadReader(Limits(max_request_line=20))
        self.assertIsNone(reader.feed(b"GET /" + b"a" * 15 + b"\r"))
        error = self.assertRaises(HTTPError, reader.feed, b"x")
        self.assertEqual(error.status, 400)

    def test_request_line_default(self) -> None:
        self.accept(get(target=b"/" + b"a" * (8192 - 14)))
        self.refuse(get(target=b"/" + b"a" * (8192 - 13)), 414)

    def test_head_size(self) -> None:
        data = get(b"X: " + b"v" * 100)
        self.accept(data, Limits(max_head=len(data)))
        self.refuse(data, 431, "too large", Limits(max_head=len(data) - 1))
        self.refuse(get(b"X: " + b"v" * 17000), 431)

    def test_head_size_early(self) -> None:
        """431 at the first byte past the limit, without a terminator in sight."""
        reader = HeadReader(Limits(max_head=100))
        self.assertIsNone(reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * (100 - 28)))
        self.assertEqual(len(reader.buffered), 100)
        error = self.assertRaises(HTTPError, reader.feed, b"v")
        self.assertEqual(error.status, 431)

    def test_header_count(self) -> None:
        fields = [b"X-%d: v" % i for i in range(99)]
        found = self.accept(get(*fields))
        self.assertEqual(len(found.headers), 100)
        self.refuse(get(*fields, b"One: more"), 431, "too many header fields")
        self.refuse(get(b"A: 1", b"B: 2"), 431, limits=Limits(max_headers=2))

    def test_limits_bound_work_on_a_huge_buffer(self) -> None:
        """Bytes past max_head are never scanned."""
        self.refuse(b"GET / HTTP/1.1\r\nX: " + b"v" * 10_000_000, 431)


class ParseHeadTests(_Assertions):
    def test_incomplete(self) -> None:
        data = get()
        for i in range(len(data)):
            self.assertIsNone(parse_head(data[:i]), i)

    def test_extra_bytes(self) -> None:
        data = get(b"Content-Length: 5")
        found, size = parse_head(data + b"hello" + get())
        self.assertEqual(size, len(data))
        self.assertEqual(found.content_length, 5)

    def test_request_head_is_frozen(self) -> None:
        found, _ = parse_head(get())
        self.assertRaises(AttributeError, setattr, found, "path", b"/other")


class HeadReaderTests(_Assertions):
    def test_bytewise_is_one_shot(self) -> None:
        data = head(
            b"POST /upload?x=1 HTTP/1.1",
            HOST,
            b"User-Agent: test",
            b"Content-Length: 3",
            b"Expect: 100-continue",
        )
        self.assertEqual(head_bytewise(data), head_whole(data))

    def test_pieces(self) -> None:
        reader = HeadReader()
        self.assertIsNone(reader.feed(b""))
        self.assertIsNone(reader.feed(b"GET /a HTTP/1.1\r"))
        self.assertIsNone(reader.feed(b"\nHost: x\r\n"))
        self.assertIsNone(reader.feed(b"\r"))
        found = reader.feed(b"\nbody")
        self.assertEqual(found.path, b"/a")
        self.assertEqual(found.size, len(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertEqual(reader.buffered, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nbody")
        # Later feeds keep the bytes and return the same head.
        self.assertIs(reader.feed(b"more"), found)
        self.assertEqual(reader.buffered, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nbodymore")

    def test_sticky_error(self) -> None:
        reader = HeadReader()
        error = self.assertRaises(HTTPError, reader.feed, b"GET / HTTP/1.1\n")
        self.assertIs(self.assertRaises(HTTPError, reader.feed, b"Host: x\r\n\r\n"), error)

    def test_early_errors(self) -> None:
        """Errors come at the byte that decides them, not at the end of the head."""
        cases = [
            (b"GET / HTTP/1.1\n", 400),  # bare LF
            (b"GET / HTTP/1.1\rX", 400),  # bare CR, once the byte after it arrives
            (b"G(T / HTTP/1.1\r\n", 400),  # request line checked when complete
            (b"GET / HTTP/3.0\r\n", 505),
            (b"CONNECT a:1 HTTP/1.1\r\n", 501),
            (b"GET / HTTP/1.1\r\nHost: x\r\n x\r\n", 400),  # header line checked when complete
        ]
        for data, status in cases:
            reader = HeadReader()
            self.assertIsNone(reader.feed(data[:-1]), data)
            error = self.assertRaises(HTTPError, reader.feed, data[-1:])
            self.assertEqual(error.status, status, data)

    def test_a_lone_cr_waits(self) -> None:
        self.assertIsNone(HeadReader().feed(b"GET / HTTP/1.1\r"))

    def test_large_head_bytewise(self) -> None:
        """A head at the size limit, fed one byte at a time, is read correctly."""
        data = get(*[b"X-%d: %s" % (i, b"v" * 150) for i in range(95)])
        self.assertGreater(len(data), 15000)
        self.assertEqual(head_bytewise(data), head_whole(data))


def chunked_post(target: bytes = b"/up") -> bytes:
    return head(b"POST " + target + b" HTTP/1.1", HOST, b"Transfer-Encoding: chunked")


def length_post(body: bytes, target: bytes = b"/up") -> bytes:
    return head(b"POST " + target + b" HTTP/1.1", HOST, b"Content-Length: %d" % len(body)) + body


class RequestFramerTests(_Assertions):
    def test_get(self) -> None:
        framer = RequestFramer()
        framer.feed(get())
        event = framer.next_event()
        self.assertIsInstance(event, Head)
        self.assertEqual(event.raw, get())
        self.assertEqual(event.head.path, b"/")
        self.assertEqual(framer.next_event(), End())
        self.assertIsNone(framer.next_event())
        self.assertEqual(framer.unread(), b"")

    def test_nothing(self) -> None:
        framer = RequestFramer()
        self.assertIsNone(framer.next_event())
        framer.eof()
        self.assertIsNone(framer.next_event())

    def test_content_length_body(self) -> None:
        data = length_post(b"hello")
        self.assertEqual(
            frame([data]),
            ([("head", data[:-5], parse_head(data)[0]), ("body", b"hello"), ("end",)], None),
        )

    def test_zero_content_length(self) -> None:
        events, error = frame([get(b"Content-Length: 0")])
        self.assertEqual([e[0] for e in events], ["head", "end"])
        self.assertIsNone(error)

    def test_body_streams(self) -> None:
        """Body bytes come out as they arrive: a large or 100-continue body never stalls."""
        framer = RequestFramer()
        framer.feed(get(b"Content-Length: 10", b"Expect: 100-continue"))
        found = framer.next_event()
        self.assertTrue(found.head.expect_continue)
        self.assertIsNone(framer.next_event())
        framer.feed(b"abc")
        self.assertEqual(framer.next_event(), Body(b"abc"))
        self.assertIsNone(framer.next_event())
        framer.feed(b"defghijGET")
        self.assertEqual(framer.next_event(), Body(b"defghij"))
        self.assertEqual(framer.next_event(), End())
        self.assertIsNone(framer.next_event())
        self.assertEqual(framer.unread(), b"GET")

    def test_chunked_body(self) -> None:
        body = (
            b"5\r\nhello\r\n"
            b"1A;name=value;flag;q=\"a quoted ext\"\r\n" + b"x" * 26 + b"\r\n"
            b"00000000000000a\r\n0123456789\r\n"
            b"0\r\n"
            b"X-Checksum: abc\r\n"
            b"X-Other: 1\r\n"
            b"\r\n"
        )
        data = chunked_post() + body
        events, error = frame([data])
        self.assertIsNone(error)
        self.assertEqual(events[1:], [("body", body), ("end",)])
        self.assertEqual(events[0][1], chunked_post())

    def test_chunked_empty(self) -> None:
        events, error = frame([chunked_post() + b"0\r\n\r\n"])
        self.assertEqual(events[1:], [("body", b"0\r\n\r\n"), ("end",)])
        self.assertIsNone(error)

    def test_chunked_streams(self) -> None:
        framer = RequestFramer()
        framer.feed(chunked_post())
        self.assertIsInstance(framer.next_event(), Head)
        framer.feed(b"a\r\n01234")
        self.assertEqual(framer.next_event(), Body(b"a\r\n01234"))
        framer.feed(b"56789\r\n1")
        self.assertEqual(framer.next_event(), Body(b"56789\r\n"))
        self.assertEqual(framer.unread(), b"1")
        self.assertIsNone(framer.next_event())
        framer.feed(b"\r")
        self.assertIsNone(framer.next_event())
        framer.feed(b"\nx\r\n0\r\nT: 1\r")
        self.assertEqual(framer.next_event(), Body(b"1\r\nx\r\n0\r\n"))
        self.assertEqual(framer.unread(), b"T: 1\r")
        framer.feed(b"\n\r")
        self.assertEqual(framer.next_event(), Body(b"T: 1\r\n"))
        self.assertIsNone(framer.next_event())
        framer.feed(b"\n")
        self.assertEqual(framer.next_event(), Body(b"\r\n"))
        self.assertEqual(framer.next_event(), End())

    def test_pipelined_smuggling_lookalikes(self) -> None:
        """Text that looks like a request inside a body is body."""
        inner = get(target=b"/evil")
        first = length_post(inner, b"/a")
        second = chunked_post(b"/b")
        second_body = b"%x\r\n%s\r\n0\r\nX-T: %s\r\n\r\n" % (len(inner), inner, b"GET /evil HTTP/1.1")
        third = get(target=b"/c")
        stream = first + second + second_body + b"\r\n" + third
        events, error = frame([stream])
        self.assertIsNone(error)
        heads = [e[2].path for e in events if e[0] == "head"]
        self.assertEqual(heads, [b"/a", b"/b", b"/c"])
        self.assertEqual(
            [e[0] for e in events],
            ["head", "body", "end", "head", "body", "end", "head", "end"],
        )
        self.assertEqual(events[1], ("body", inner))
        self.assertEqual(events[4], ("body", second_body))
        # The stray CRLF before the third request belongs to its head.
        self.assertEqual(events[6][1], b"\r\n" + third)
        self.assertEqual(b"".join(e[1] for e in events if e[0] in ("head", "body")), stream)

    def test_stop_at_a_head(self) -> None:
        """After a Head, its raw bytes plus unread() are exactly the rest of the stream."""
        rest = length_post(b"data", b"/b") + get(target=b"/c")
        stream = get(target=b"/a") + rest
        for pieces in ([stream], [bytes([b]) for b in stream]):
            framer = RequestFramer()
            for piece in pieces:
                framer.feed(piece)
            self.assertIsInstance(framer.next_event(), Head)
            self.assertEqual(framer.next_event(), End())
            second = framer.next_event()
            self.assertEqual(second.head.path, b"/b")
            self.assertEqual(second.raw + framer.unread(), rest)

    def test_head_in_pieces(self) -> None:
        framer = RequestFramer()
        data = get(b"X: y")
        for byte in data[:-1]:
            framer.feed(bytes([byte]))
            self.assertIsNone(framer.next_event())
        self.assertEqual(framer.unread(), data[:-1])
        framer.feed(data[-1:])
        self.assertEqual(framer.next_event().raw, data)

    def test_eof_between_requests(self) -> None:
        for tail in (b"", b"\r", b"\r\n"):
            events, error = frame([get() + tail])
            self.assertIsNone(error, tail)
            self.assertEqual([e[0] for e in events], ["head", "end"])

    def test_eof_in_head(self) -> None:
        events, error = frame([get() + b"GET / HT"])
        self.assertEqual([e[0] for e in events], ["head", "end"])
        self.assertEqual(error[0], 400)
        self.assertIn("head", error[1])

    def test_eof_in_body(self) -> None:
        events, error = frame([get(b"Content-Length: 10") + b"abc"])
        self.assertEqual(events[1:], [("body", b"abc")])
        self.assertEqual(error[0], 400)
        self.assertIn("body", error[1])
        events, error = frame([get(b"Content-Length: 10")])
        self.assertEqual(error[0], 400)

    def test_eof_in_chunked_body(self) -> None:
        for body in (b"", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r\n", b"0\r\n", b"0\r\nX: 1\r\n", b"0\r\n\r"):
            events, error = frame([chunked_post() + body])
            self.assertEqual(error[0], 400, body)

    def test_eof_then_complete_events(self) -> None:
        """eof() does not drop complete requests that are still buffered."""
        framer = RequestFramer()
        framer.feed(get() + length_post(b"xy"))
        framer.eof()
        kinds = []
        while (event := framer.next_event()) is not None:
            kinds.append(type(event).__name__)
        self.assertEqual(kinds, ["Head", "End", "Head", "Body", "End"])

    def test_dead_after_error(self) -> None:
        framer = RequestFramer()
        framer.feed(b"GET / HTTP/1.1\nHost: x\n\n")
        error = self.assertRaises(HTTPError, framer.next_event)
        framer.feed(get())
        self.assertIs(self.assertRaises(HTTPError, framer.next_event), error)
        self.assertIs(self.assertRaises(HTTPError, framer.next_event), error)

    def test_error_after_valid_body_bytes(self) -> None:
        """Valid bytes before an error are returned first; the error comes next."""
        framer = RequestFramer()
        framer.feed(chunked_post() + b"5\r\nhello\r\nzz\r\n")
        self.assertIsInstance(framer.next_event(), Head)
        self.assertEqual(framer.next_event(), Body(b"5\r\nhello\r\n"))
        error = self.assertRaises(HTTPError, framer.next_event)
        self.assertEqual((error.status, error.reason), (400, "invalid chunk size"))

    def test_head_errors(self) -> None:
        events, error = frame([get() + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"])
        self.assertEqual([e[0] for e in events], ["head", "end"])
        self.assertEqual(error, (400, "repeated Host header"))

    def test_max_body_content_length(self) -> None:
        events, error = frame([length_post(b"x" * 11)], Limits(max_body=10))
        self.assertEqual((events, error), ([], (413, "request body too large")))

    def test_max_body_chunked(self) -> None:
        limits = Limits(max_body=10)
        ok = chunked_post() + b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n"
        events, error = frame([ok], limits)
        self.assertIsNone(error)
        # Refused at the chunk-size line that goes past the limit, before its data.
        framer = RequestFramer(limits)
        framer.feed(chunked_post() + b"4\r\nabcd\r\n7\r\n")
        framer.next_event()
        self.assertEqual(framer.next_event(), Body(b"4\r\nabcd\r\n"))
        self.assertEqual(self.assertRaises(HTTPError, framer.next_event).status, 413)
        events, error = frame([chunked_post() + b"1\r\na\r\n"], Limits(max_body=0))
        self.assertEqual(error[0], 413)

    def chunk_error(self, body: bytes, status: int = 400, reason: str | None = None, limits: Limits = Limits()) -> None:
        data = chunked_post() + body
        whole = frame([data], limits)
        self.assertEqual(whole[1][0], status, (body, whole[1]))
        if reason is not None:
            self.assertIn(reason, whole[1][1])
        self.assertEqual(frame([bytes([b]) for b in data], limits), whole)

    def test_chunk_size_refused(self) -> None:
        for line in (b"", b"x", b"+5", b"-5", b"0x5", b" 5", b"5 ", b"5\t", b"5.0", b"\xc3\xa9"):
            self.chunk_error(line + b"\r\nhello\r\n0\r\n\r\n", reason="invalid chunk size")

    def test_chunk_size_too_long(self) -> None:
        self.chunk_error(b"1" + b"0" * 16 + b"\r\n", reason="chunk size too long")
        self.chunk_error(b"0" * 17 + b"5\r\nhello\r\n0\r\n\r\n", reason="chunk size too long")
        events, error = frame([chunked_post() + b"0" * 15 + b"5\r\nhello\r\n0\r\n\r\n"])
        self.assertIsNone(error)

    def test_chunk_extensions(self) -> None:
        for ext in (b";a", b";a=b", b';a="b c"', b";a=b;c", b"; a = b ; c", b";a=\"\xff\""):
            events, error = frame([chunked_post() + b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\n"])
            self.assertIsNone(error, ext)
        # A quoted-pair is refused: twisted.web refuses any backslash in an
        # extension, and the two readers must agree.
        for ext in (b";", b";a=", b";a=\x01", b';a="b', b";a b", b"; ", b";a;", b";a=b c", b";\x00", b";a=\"\x7f\"", b" ;a",
                    b";a=\"\\\"\""):
            self.chunk_error(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n", reason="invalid chunk")

    def test_chunk_line_endings(self) -> None:
        self.chunk_error(b"5\nhello\r\n0\r\n\r\n", reason="bare LF")
        self.chunk_error(b"5\r\r\nhello\r\n0\r\n\r\n", reason="bare CR")
        self.chunk_error(b"5;a\rb\r\nhello\r\n0\r\n\r\n", reason="bare CR")
        self.chunk_error(b"5\r\nhelloX\r\n0\r\n\r\n", reason="not followed by CRLF")
        self.chunk_error(b"5\r\nhello\n0\r\n\r\n", reason="not followed by CRLF")
        self.chunk_error(b"5\r\nhello\rX0\r\n\r\n", reason="not followed by CRLF")
        self.chunk_error(b"5\r\nhello!\r\n0\r\n\r\n", reason="not followed by CRLF")

    def test_chunk_line_too_long(self) -> None:
        self.chunk_error(b"5;a=" + b"b" * 1019 + b"\r\nhello\r\n0\r\n\r\n", reason="too long")
        self.chunk_error(b"5;a=" + b"b" * 5000, reason="too long")
        events, error = frame([chunked_post() + b"5;a=" + b"b" * 1018 + b"\r\nhello\r\n0\r\n\r\n"])
        self.assertIsNone(error)

    def test_trailers(self) -> None:
        for name in sorted(FORBIDDEN_TRAILERS):
            self.chunk_error(b"0\r\n" + name + b": 1\r\n\r\n", reason="forbidden field in trailer")
        self.chunk_error(b"0\r\nContent-Length: 1\r\n\r\n", reason="forbidden")
        self.chunk_error(b"0\r\nX: a\r\n b\r\n\r\n", reason="folding")
        self.chunk_error(b"0\r\nX : a\r\n\r\n", reason="whitespace")
        self.chunk_error(b"0\r\nX: a\x00\r\n\r\n", reason="NUL")
        self.chunk_error(b"0\r\nX: a\nY: b\r\n\r\n", reason="bare LF")
        self.chunk_error(b"0\r\nX: a\r\n\n", reason="bare LF")
        self.chunk_error(b"0\r\nX: a\rb\r\n\r\n", reason="bare CR")
        self.chunk_error(b"0\r\nno colon\r\n\r\n", reason="colon")

    def test_trailer_limits(self) -> None:
        self.chunk_error(b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 431, "too many trailer fields", Limits(max_headers=2))
        ok = b"0\r\nA: 1\r\nB: 2\r\n\r\n"
        self.assertIsNone(frame([chunked_post() + ok], Limits(max_headers=2))[1])
        self.chunk_error(b"0\r\nA: " + b"v" * 20000 + b"\r\n\r\n", 431, "trailer section too large")
        self.chunk_error(b"0\r\nA: " + b"v" * 20000, 431, "trailer section too large")
        # The whole section, final CRLF included, within max_head.
        section = b"A: " + b"v" * 93 + b"\r\n\r\n"
        self.assertEqual(len(section), 100)
        limits = Limits(max_head=100)
        self.assertIsNone(frame([head(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked") + b"0\r\n" + section], limits)[1])
        self.chunk_error(b"0\r\nA: " + b"v" * 94 + b"\r\n\r\n", 431, limits=limits)


# -- properties ----------------------------------------------------------------

SMALL = Limits(max_request_line=60, max_head=300, max_headers=6, max_body=200)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SEGMENT = st.text("abcxyz019-_~%20", min_size=1, max_size=6).map(lambda s: s.replace("%", "%25").encode())
_VALUE = st.binary(max_size=20).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80))
_LOOKALIKE = st.sampled_from([b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n", b"0\r\n\r\n", b"POST /"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid request: its head bytes and its raw body bytes."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]))
    path = b"/" + b"/".join(draw(st.lists(_SEGMENT, max_size=3)))
    if draw(st.booleans()):
        path += b"?" + draw(st.text("ab=&%/.?", max_size=6)).encode()
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    fields = [b"Host: example.com"] if version == b"HTTP/1.1" or draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"Accept", b"X-Thing", b"user-agent", b"Cookie", b"Connection"]))
        fields.append(name + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + draw(_VALUE))
    kind = draw(st.sampled_from(["none", "length", "chunked"] if version == b"HTTP/1.1" else ["none", "length"]))
    body = draw(_LOOKALIKE) + draw(st.binary(max_size=30)) + draw(_LOOKALIKE)
    if kind == "length":
        fields.append(b"Content-Length: %d" % len(body))
        raw_body = body
    elif kind == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        raw_body = b""
        rest = body
        while rest:
            size = draw(st.integers(1, len(rest)))
            ext = draw(st.sampled_from([b"", b";a=b", b';q="x y"']))
            raw_body += b"%x%s\r\n%s\r\n" % (size, ext, rest[:size])
            rest = rest[size:]
        raw_body += b"0\r\n"
        for _ in range(draw(st.integers(0, 2))):
            raw_body += b"X-Trailer: " + draw(_VALUE) + b"\r\n"
        raw_body += b"\r\n"
    else:
        raw_body = b""
    lead = draw(st.sampled_from([b"", b"", b"\r\n"]))
    return lead + head(method + b" " + path + b" " + version, *draw(st.permutations(fields))), raw_body


streams = st.lists(requests(), min_size=1, max_size=4)
_INTERESTING = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"0", b"-", b"chunked", b",", b"a", b"\xff", b"/", b"."]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid stream with a few bytes inserted, replaced or deleted."""
    data = b"".join(h + b for h, b in draw(streams))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        if op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 4)) :]
        else:
            piece = draw(_INTERESTING | st.binary(min_size=1, max_size=3))
            data = data[:at] + piece + data[at + (len(piece) if op == "replace" else 0) :]
    return data


def expected_events(reqs: list[tuple[bytes, bytes]]) -> list[tuple]:
    out: list[tuple] = []
    for raw, body in reqs:
        out.append(("head", raw, parse_head(raw)[0]))
        if body:
            out.append(("body", body))
        out.append(("end",))
    return out


class PropertyTests(SynchronousTestCase):
    def check_statuses(self, data: bytes, limits: Limits) -> tuple[list[tuple], tuple | None]:
        """Only HTTPError, only with a known status, and the same however the bytes arrive."""
        whole = head_whole(data, limits)
        if whole[0] == "error":
            self.assertIn(whole[1], STATUSES)
        self.assertEqual(head_bytewise(data, limits), whole)
        framed = frame([data], limits)
        if framed[1] is not None:
            self.assertIn(framed[1][0], STATUSES)
        return framed

    @PROPERTY
    @given(st.binary(max_size=400), st.booleans())
    def test_random_bytes(self, data: bytes, small: bool) -> None:
        self.check_statuses(data, SMALL if small else Limits())

    @PROPERTY
    @given(mutated(), st.booleans(), st.lists(st.integers(0, 10_000), max_size=6))
    def test_mutated_streams(self, data: bytes, small: bool, cuts: list[int]) -> None:
        limits = SMALL if small else Limits()
        framed = self.check_statuses(data, limits)
        self.assertEqual(frame(split(data, cuts), limits), framed)

    @PROPERTY
    @given(mutated(), st.booleans())
    def test_fast_path_agrees_with_line_scan(self, data: bytes, small: bool) -> None:
        """The one-match fast path and the line-by-line scan decide alike."""
        limits = SMALL if small else Limits()

        def outcome(run):
            try:
                return ("ok", run(_HeadScanner(limits)))
            except HTTPError as e:
                return ("error", e.status, e.reason)

        self.assertEqual(outcome(lambda s: s.advance(data)), outcome(lambda s: s._scan(data)))

    @PROPERTY
    @given(streams, st.lists(st.integers(0, 10_000), max_size=8))
    def test_valid_stream_any_split(self, reqs: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
        data = b"".join(h + b for h, b in reqs)
        expected = expected_events(reqs)
        self.assertEqual(frame([data]), (expected, None))
        self.assertEqual(frame(split(data, cuts)), (expected, None))

    @PROPERTY
    @given(streams, st.integers(0, 3))
    def test_raw_plus_unread(self, reqs: list[tuple[bytes, bytes]], stop: int) -> None:
        """Stopping at any Head, raw + unread() is the rest of the stream."""
        stop = min(stop, len(reqs) - 1)
        data = b"".join(h + b for h, b in reqs)
        framer = RequestFramer()
        framer.feed(data)
        seen = 0
        while True:
            event = framer.next_event()
            if isinstance(event, Head):
                if seen == stop:
                    break
                seen += 1
        self.assertEqual(event.raw + framer.unread(), b"".join(h + b for h, b in reqs[stop:]))


_COMMON_FIELD = st.sampled_from(
    [
        b"Host: example.com",
        b"host:EXAMPLE.com:8080 ",
        b"Host: ex%41mple.com",
        b"Host: [::1]:99999",
        b"Host: bad host",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Connection: Keep-Alive, Upgrade",
        b"connection:\tfoo,CLOSE",
        b"Expect: 100-continue",
        b"Expect: 100-Continue ",
        b"Content-Length: 5",
        b"Content-Length: 0",
        b"Content-Length: 000000000000000000000007",
        b"Content-Length: 9999999999999999999",
        b"Content-Length: 1000",
        b"Content-Length: -1",
        b"Content-Length: 5 5",
        b"Transfer-Encoding: chunked",
        b"Cookie: session=abc; x=y",
        b"User-Agent: wrk",
        b"X-Empty:",
    ]
)
_COMMON_TARGET = st.sampled_from(
    [b"/", b"/hello", b"/a/b.c", b"/a/./b", b"/a/..", b"/.well-known/x", b"/a?", b"/a?b=c&d=%2e", b"/a??x", b"/%41",
     b"/a#f", b"/a?b#f", b"*", b"http://example.com/a", b"/a?/../x", b"/" + b"a" * 50, b"/b?" + b"q" * 48]
)


@st.composite
def common_heads(draw: st.DrawFn) -> bytes:
    """Heads near the commonest shape (L{_parse_common}'s), valid or not."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"CONNECT", b"OPTIONS"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0"]))
    fields = [b"Host: example.com"] if draw(st.booleans()) else []
    fields += draw(st.lists(_COMMON_FIELD, max_size=4))
    lead = draw(st.sampled_from([b"", b"\r\n"]))
    return lead + head(method + b" " + draw(_COMMON_TARGET) + b" " + version, *fields)


class CommonPathTests(SynchronousTestCase):
    """L{_parse_common}, the one-step parse of the commonest heads, agrees with the line scan."""

    def scanned(self, data: bytes, limits: Limits) -> tuple:
        try:
            return ("ok", _HeadScanner(limits)._scan(data))
        except HTTPError as e:
            return ("error", e.status, e.reason)

    @settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(common_heads(), st.sampled_from([Limits(), Limits(), SMALL, Limits(max_body=5, max_headers=3)]))
    def test_agrees_with_line_scan(self, data: bytes, limits: Limits) -> None:
        common = _parse_common(data, limits)
        if common is not None:
            self.assertEqual(("ok", common), self.scanned(data, limits))

    def test_taken(self) -> None:
        """The commonest heads do take it (and give what the line scan gives)."""
        for data in [
            get(),
            get(b"User-Agent: wrk", target=b"/hello"),
            get(b"Connection: close", b"Cookie: a=b", target=b"/a/b.css?x=1&y=%2e"),
            get(b"Content-Length: 5", b"Expect: 100-continue", target=b"/a?"),
            b"\r\n" + head(b"GET /x HTTP/1.0", b"Connection: keep-alive"),
            head(b"GET / HTTP/1.0"),
        ]:
            common = _parse_common(data, Limits())
            self.assertIsNotNone(common, data)
            self.assertEqual(("ok", common), self.scanned(data, Limits()))


class BodyLimitTests(SynchronousTestCase):
    """L{RequestFramer.set_body_limit}: a limit learnt after the head (the dispatcher relaying)."""

    CHUNKED = get(b"Transfer-Encoding: chunked") + b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"

    def events(self, framer: RequestFramer) -> list[object]:
        out = []
        while True:
            event = framer.next_event()
            if event is None:
                return out
            out.append(event)

    def test_chunkSumOverTheLimit(self) -> None:
        framer = RequestFramer()
        framer.feed(self.CHUNKED)
        self.assertIsInstance(framer.next_event(), Head)
        framer.set_body_limit(7)
        with self.assertRaises(HTTPError) as caught:
            self.events(framer)
        self.assertEqual(caught.exception.status, 413)

    def test_perRequest(self) -> None:
        """The next head gets the framer's own limits again."""
        framer = RequestFramer(Limits(max_body=100))
        framer.feed(self.CHUNKED * 3)
        self.assertIsInstance(framer.next_event(), Head)
        framer.set_body_limit(None)
        self.assertIsInstance(framer.next_event(), Body)
        self.assertIsInstance(framer.next_event(), End)
        self.assertIsInstance(framer.next_event(), Head)
        framer.set_body_limit(10)  # exactly the 10 bytes sent
        self.assertIsInstance(framer.next_event(), Body)
        self.assertIsInstance(framer.next_event(), End)
        self.assertIsInstance(framer.next_event(), Head)
        framer.set_body_limit(9)
        self.assertEqual(framer.next_event(), Body(b"5\r\nhello\r\n"))  # the valid bytes before the error
        self.assertEqual(self.assertRaises(HTTPError, framer.next_event).status, 413)


def frame_response(data: bytes, method: bytes = b"GET", size: int | None = None) -> list[Piece]:
    """The pieces of one response, fed whole or C{size} bytes at a time."""
    framer = ResponseFramer()
    framer.expect(method)
    out: list[Piece] = []
    step = size or len(data) or 1
    for i in range(0, len(data), step):
        out += framer.feed(data[i : i + step])
    return out


class ResponseFramerTests(SynchronousTestCase):
    """The dispatcher's reading of a relayed response: where it ends, and what is refused."""

    OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=1\r\nabc\r\n"
               b"0\r\nX-T: 1\r\n\r\n")

    def check(self, data: bytes, method: bytes = b"GET", close: bool = False) -> None:
        """Whatever the split: the same bytes out, exactly one end, at the last byte."""
        for size in (None, 1, 2, 7, 64):
            pieces = frame_response(data, method, size)
            self.assertEqual(b"".join(p.data for p in pieces), data, size)
            self.assertEqual([p.end for p in pieces].count(True), 1, size)
            self.assertTrue(pieces[-1].end, size)
            self.assertEqual(pieces[-1].close, close, size)

    def test_contentLength(self) -> None:
        self.check(self.OK)
        self.check(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_chunked(self) -> None:
        self.check(self.CHUNKED)

    def test_noBody(self) -> None:
        self.check(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", method=b"HEAD")
        self.check(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 500\r\n\r\n")
        self.check(b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_interimThenFinal(self) -> None:
        self.check(b"HTTP/1.1 100 Continue\r\n\r\n" + self.OK)

    def test_close(self) -> None:
        self.check(self.OK.replace(b"Content-Type", b"Connection: keep-alive, Close\r\nContent-Type"), close=True)
        self.check(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", close=True)

    def test_untilEof(self) -> None:
        framer = ResponseFramer()
        framer.expect(b"GET")
        pieces = framer.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")
        self.assertFalse(any(p.end for p in pieces))
        (last,) = framer.eof()
        self.assertTrue(last.end and last.close)
        self.assertTrue(framer.idle)

    def test_oneResponseAtATime(self) -> None:
        """A service may not answer a request it was never sent (the client's next one)."""
        for size in (None, 1, 13):
            with self.assertRaises(ResponseError):
                frame_response(self.OK + self.OK, size=size)
            with self.assertRaises(ResponseError):
                frame_response(self.CHUNKED + b"HTTP/1.1 200 OK\r\n", size=size)
        with self.assertRaises(ResponseError):
            ResponseFramer().feed(b"H")

    def test_cutShort(self) -> None:
        """EOF in the middle of a response (kill -9) is an error, never the end of it."""
        for cut in (self.OK[:-2], self.OK[:10], self.CHUNKED[:-2]):
            framer = ResponseFramer()
            framer.expect(b"GET")
            framer.feed(cut)
            self.assertRaises(ResponseError, framer.eof)
        framer = ResponseFramer()
        framer.expect(b"GET")
        self.assertRaises(ResponseError, framer.eof)  # not a byte of it yet
        self.assertEqual(ResponseFramer().eof(), [])  # idle: a clean close

    def test_refused(self) -> None:
        for bad in (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\nx",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
        ):
            with self.assertRaises(ResponseError, msg=bad):
                frame_response(bad)

    def test_bounded(self) -> None:
        """A head (or trailer section) that never ends is refused at 64 KiB, whatever the split."""
        framer = ResponseFramer()
        framer.expect(b"GET")
        framer.feed(b"HTTP/1.1 200 OK\r\n")
        with self.assertRaises(ResponseError):
            for _ in range(100):
                framer.feed(b"X-A: " + b"a" * 1000 + b"\r\n")
        framer = ResponseFramer()
        framer.expect(b"GET")
        framer.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
        with self.assertRaises(ResponseError):
            for _ in range(100):
                framer.feed(b"X-T: " + b"t" * 1000 + b"\r\n")

    def test_bodyPassesThroughUncopied(self) -> None:
        framer = ResponseFramer()
        framer.expect(b"GET")
        framer.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n")
        chunk = b"x" * 100000
        (piece,) = framer.feed(chunk)
        self.assertIs(piece.data, chunk)
        (last,) = framer.feed(chunk)
        self.assertTrue(last.end)
        self.assertTrue(framer.idle)

    def test_nextRequest(self) -> None:
        framer = ResponseFramer()
        for method in (b"GET", b"HEAD", b"GET"):
            framer.expect(method)
            self.assertRaises(RuntimeError, framer.expect, method)
            data = self.OK if method == b"GET" else self.OK[: self.OK.index(b"hello")]
            self.assertTrue(framer.feed(data)[-1].end)


class TakeEndTests(SynchronousTestCase):
    """L{RequestFramer.take_end} (a service's shortcut for a bodiless request) gives the same
    events as L{RequestFramer.next_event}; a scanner kept across heads (one whose first call
    parsed a whole head) frames as a new one would."""

    @staticmethod
    def framed(pieces: Sequence[bytes], take: bool) -> tuple[list[tuple], tuple | None]:
        framer = RequestFramer()
        events: list[Head | Body | End] = []
        try:
            for piece in pieces:
                framer.feed(piece)
                while (event := framer.next_event()) is not None:
                    events.append(event)
                    if take and isinstance(event, Head) and framer.take_end():
                        events.append(End())
            framer.eof()
            while (event := framer.next_event()) is not None:
                events.append(event)
        except HTTPError as e:
            return normalise(events), (e.status, e.reason)
        return normalise(events), None

    def test_corpus(self) -> None:
        taken = 0
        for case in http_corpus.CORPUS:
            for pieces in ([case.raw], split(case.raw, range(0, len(case.raw), 7))):
                expected = self.framed(pieces, take=False)
                self.assertEqual(self.framed(pieces, take=True), expected, case.name)
                self.assertEqual(frame(pieces), expected, case.name)
                taken += sum(1 for e in expected[0] if e[0] == "end")
        self.assertGreater(taken, 50)

    def test_onlyAtAnEnd(self) -> None:
        framer = RequestFramer()
        self.assertFalse(framer.take_end())
        framer.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab" + get())
        self.assertIsInstance(framer.next_event(), Head)
        self.assertFalse(framer.take_end())  # the body is next
        self.assertEqual(framer.next_event(), Body(b"ab"))
        self.assertTrue(framer.take_end())
        self.assertFalse(framer.take_end())
        self.assertIsInstance(framer.next_event(), Head)
        self.assertTrue(framer.take_end())
        self.assertIsNone(framer.next_event())


def response_outcome(exchanges: Sequence[tuple[bytes, Sequence[bytes]]]) -> tuple:
    """What one L{ResponseFramer} makes of (method, response fed in these pieces), in turn: the
    bytes passed on, where responses end (offset, close), and the error or whether it is idle."""
    framer = ResponseFramer()
    out = bytearray()
    ends: list[tuple[int, bool]] = []
    try:
        for method, pieces in exchanges:
            framer.expect(method)
            for data in pieces:
                for piece in framer.feed(data):
                    out += piece.data
                    if piece.end:
                        ends.append((len(out), piece.close))
    except (ResponseError, RuntimeError) as e:
        return bytes(out), ends, repr(e)
    return bytes(out), ends, framer.idle


def as_response(request: bytes, status: int) -> bytes:
    """A request turned into a response: its request line replaced by a status line, its fields
    and body kept (the corpus's field and framing cases, read by the response side)."""
    _, crlf, rest = request.partition(b"\r\n")
    return b"HTTP/1.1 %d X\r\n" % status + rest if crlf else request


def sized(response: bytes) -> bytes:
    """C{response} with a C{Content-Length} field (first) for what follows its head."""
    end = response.find(b"\r\n\r\n")
    line = response.find(b"\r\n")
    if end < 0:
        return response
    length = b"Content-Length: %d\r\n" % (len(response) - end - 4)
    return response[: line + 2] + length + response[line + 2 :]


def responses_of(case: http_corpus.Case, framed: bool) -> list[tuple[bytes, bytes]]:
    """(method, response) for each of a corpus case's exchanges (C{framed}: L{sized})."""
    out = []
    for e in case.exchanges:
        response = as_response(e.request, e.status)
        out.append((e.request.split(b" ", 1)[0], sized(response) if framed else response))
    return out


#: Responses like the services' (twisted.web's), and the framing cases around them.
_BODY = b"<p>Hello, world!</p>\n"
RESPONSES = [
    ResponseFramerTests.OK,
    ResponseFramerTests.CHUNKED,
    b"HTTP/1.1 200 OK\r\nX-Okws-Pid: 1\r\nDate: x\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
    b"Server: TwistedWeb/24.11.0\r\n\r\n%s" % (len(_BODY), _BODY),
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0005\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length:\t 5 \t\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 5\r\nConnection: keep-alive, CLOSE\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: x\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\n" + ResponseFramerTests.OK,
    b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 199 X\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 00000000000000000000005\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\n Content-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nX: \x00\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhell",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + ResponseFramerTests.OK,
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * MAX_RESPONSE_HEAD + b"\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (MAX_RESPONSE_HEAD - 50) + b"\r\nContent-Length: 1\r\n\r\nx",
]


class LoneHeadTests(SynchronousTestCase):
    """L{RequestFramer.lone_head} (the relay's shortcut for a read that is one whole bodiless
    request) frames exactly as L{RequestFramer.feed} and L{RequestFramer.next_event} do, and
    takes nothing it declines."""

    @staticmethod
    def framed(pieces: Sequence[bytes], limits: Limits = Limits()) -> tuple[list[tuple], tuple | None, int]:
        """Each piece offered to lone_head first, as the relay does; the events, the error,
        and how many pieces it took."""
        framer = RequestFramer(limits)
        events: list[Head | Body | End] = []
        taken = 0
        try:
            for piece in pieces:
                event = framer.lone_head(piece)
                if event is not None:
                    events += [event, End()]
                    taken += 1
                    continue
                framer.feed(piece)
                while (event := framer.next_event()) is not None:
                    events.append(event)
            framer.eof()
            while (event := framer.next_event()) is not None:
                events.append(event)
        except HTTPError as e:
            return normalise(events), (e.status, e.reason), taken
        return normalise(events), None, taken

    def agree(self, pieces: Sequence[bytes], limits: Limits = Limits()) -> int:
        events, error, taken = self.framed(pieces, limits)
        self.assertEqual((events, error), frame(pieces, limits), pieces)
        return taken

    def test_corpus(self) -> None:
        taken = 0
        for case in http_corpus.CORPUS:
            taken += self.agree([case.raw])
            taken += self.agree(split(case.raw, range(0, len(case.raw), 7)))
        self.assertGreater(taken, 10)

    def test_keep_alive_requests(self) -> None:
        """A keep-alive client's requests, one per read: every one taken."""
        reads = [get(b"User-Agent: wrk", target=b"/hello"), get(b"Connection: close"), head(b"GET / HTTP/1.0")]
        self.assertEqual(self.agree(reads * 3), 9)

    def test_declined(self) -> None:
        """Anything but one whole bodiless common head, or with bytes buffered: L{None}, nothing taken."""
        post = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"
        for data in [
            get() + get(),  # pipelined
            post,  # a body follows
            post + b"ab",
            get()[:-1],  # not whole
            get(b"Transfer-Encoding: chunked"),
            b"\r\n\r\n" + get(),  # empty lines first: the line scan decides
            get(target=b"/a/../b"),  # not the common form
            b"GET /x HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",  # refused: the general path says why
            b"",
        ]:
            framer = RequestFramer()
            self.assertIsNone(framer.lone_head(data), data)
            self.assertEqual(framer.buffered, 0)
        framer = RequestFramer(SMALL)
        self.assertIsNone(framer.lone_head(get(b"X: " + b"a" * 400)))  # past max_head
        framer = RequestFramer()
        framer.feed(b"G")
        self.assertIsNone(framer.lone_head(get()))  # something buffered
        self.assertEqual(framer.buffered, 1)
        framer = RequestFramer()
        framer.feed(post)
        framer.next_event()
        self.assertIsNone(framer.lone_head(get()))  # in a body
        framer = RequestFramer()
        framer.feed(b"BAD\r\n\r\n")
        self.assertRaises(HTTPError, framer.next_event)
        self.assertIsNone(framer.lone_head(get()))  # dead after an error

    def test_body_limit_reset(self) -> None:
        """The head's body limit is the framer's own again (a relay then sets the service's)."""
        framer = RequestFramer(Limits(max_body=100))
        framer.set_body_limit(5)
        self.assertIsInstance(framer.lone_head(get()), Head)
        self.assertEqual(framer._body_limit, 100)

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated(), st.booleans(), st.lists(st.integers(0, 10_000), max_size=6))
    def test_mutated_streams(self, data: bytes, small: bool, cuts: list[int]) -> None:
        self.agree(split(data, cuts), SMALL if small else Limits())

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(streams)
    def test_one_request_per_read(self, reqs: list[tuple[bytes, bytes]]) -> None:
        self.agree([h + b for h, b in reqs])

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(common_heads(), st.sampled_from([Limits(), SMALL, Limits(max_body=5, max_headers=3)]))
    def test_common_heads(self, data: bytes, limits: Limits) -> None:
        self.agree([data, data], limits)


class ResponseFastPathTests(SynchronousTestCase):
    """L{ResponseFramer}'s fast path (a whole C{Content-Length} response in one read, passed on
    as read) gives the same bytes, ends, errors and state as the general path, which frames
    the same bytes when the first read holds less than the whole head."""

    def agree(self, exchanges: list[tuple[bytes, bytes]], name: object) -> bool:
        """Whole (fast path where it applies) against one byte first (general path), and against
        small reads; whether the fast path passed a whole response on as read."""
        whole = response_outcome([(m, [r]) for m, r in exchanges])
        general = response_outcome([(m, [r[:1], r[1:]]) for m, r in exchanges])
        self.assertEqual(whole, general, name)
        for size in (2, 7):
            small = response_outcome([(m, split(r, range(0, len(r), size))) for m, r in exchanges])
            if isinstance(general[2], bool):
                self.assertEqual(small, general, (name, size))
            else:
                self.assertIsInstance(small[2], str, (name, size))
        method, first = exchanges[0]
        framer = ResponseFramer()
        framer.expect(method)
        try:
            pieces = framer.feed(first)
        except ResponseError:
            return False
        return len(pieces) == 1 and pieces[0].data is first

    def test_corpus(self) -> None:
        """The request corpus read as responses (its field lines and framing under a status
        line, each exchange's status and method), one case's responses after another."""
        fast = 0
        for case in http_corpus.CORPUS:
            for framed in (False, True):
                fast += self.agree(responses_of(case, framed), case.name)
            fast += self.agree([(b"GET", sized(as_response(case.raw, 200)))], case.name)
        self.assertGreater(fast, 200)

    def test_responses(self) -> None:
        fast = 0
        for response in RESPONSES:
            for method in (b"GET", b"HEAD"):
                fast += self.agree([(method, response)], response[:80])
                fast += self.agree([(method, response), (b"GET", ResponseFramerTests.OK)], response[:80])
        self.assertGreater(fast, 15)

    def test_wholeResponseUncopied(self) -> None:
        framer = ResponseFramer()
        for response, close in ((RESPONSES[2], False), (RESPONSES[6], True), (RESPONSES[8], True)):
            framer.expect(b"GET")
            (piece,) = framer.feed(response)
            self.assertIs(piece.data, response)
            self.assertEqual((piece.end, piece.close), (True, close))
            self.assertTrue(framer.idle)

    @PROPERTY
    @given(st.sampled_from(RESPONSES[:12]), st.sampled_from([b"GET", b"HEAD"]), st.data())
    def test_mutated(self, response: bytes, method: bytes, data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(response)))
            op = data.draw(st.sampled_from(["insert", "replace", "delete"]))
            if op == "delete":
                response = response[:at] + response[at + data.draw(st.integers(1, 4)) :]
            else:
                piece = data.draw(_INTERESTING | st.binary(min_size=1, max_size=3))
                response = response[:at] + piece + response[at + (len(piece) if op == "replace" else 0) :]
        self.agree([(method, response)], response)
