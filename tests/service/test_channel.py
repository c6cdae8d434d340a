"""
L{okws_twisted.service.web.ServiceChannel} builds each request from the framer's head
(C{head_received}) instead of replaying the bytes through twisted.web's line parser.

Its promise: an author's C{Request} is the one twisted.web's own parser builds from the same
bytes.  Each request the framer accepts, from every valid case of L{tests.http_corpus} and a
few more, is built both ways (a plain C{HTTPChannel} fed the bytes, a C{ServiceChannel} fed the
framer's events) and compared: method, uri, path, args, version, headers, cookies, body,
persistence, what was written (C{100 Continue}).  C{head_received} repeats steps of
C{HTTPChannel.lineReceived}/C{allHeadersReceived} and uses its transfer decoders; a Twisted
upgrade that changes them fails here first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from okws_twisted.service.web import ServiceChannel, origin_target
from okws_twisted.wire.httpframe import Body, End, Head, HTTPError, Limits, RequestFramer
from tests import http_corpus


class _Recorded(http.Request):
    """A request that keeps what it was built with (http.Request.process does nothing)."""

    def process(self) -> None:
        self.channel.seen.append(_snapshot(self))


def _snapshot(request: http.Request) -> dict[str, Any]:
    request.content.seek(0)
    return {
        "method": request.method,
        "uri": request.uri,
        "path": request.path,
        "args": request.args,
        "clientproto": request.clientproto,
        "headers": sorted((k, tuple(v)) for k, v in request.requestHeaders.getAllRawHeaders()),
        "cookies": request.received_cookies,
        "body": request.content.read(),
        "response_headers": sorted((k, tuple(v)) for k, v in request.responseHeaders.getAllRawHeaders()),
        "persistent": bool(request.channel.persistent),
    }


class _Plain(http.HTTPChannel):
    requestFactory = _Recorded

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []


class _Fast(ServiceChannel):
    requestFactory = _Recorded

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []


def _connected(channel: http.HTTPChannel) -> StringTransport:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5555))
    channel.makeConnection(transport)
    return transport


def both_ways(stream: bytes) -> tuple[list[dict[str, Any]], bytes, list[dict[str, Any]], bytes]:
    """Build every request of C{stream} with twisted.web's parser and with head_received."""
    limits = Limits(
        max_request_line=http_corpus.MAX_REQUEST_LINE, max_head=http_corpus.MAX_HEAD, max_headers=http_corpus.MAX_HEADERS
    )
    fast = _Fast()
    fast_out = _connected(fast)
    framer = RequestFramer(limits)
    framer.feed(stream)
    fed: list[bytes] = []
    complete: list[bytes] = []
    while True:
        try:
            event = framer.next_event()
        except HTTPError:
            break
        if event is None:
            break
        if isinstance(event, Head):
            head = event.head
            # twisted.web would take an absolute-form target whole: it gets the origin form.
            target = origin_target(head)
            fed.append(event.raw.replace(b" " + head.target + b" ", b" " + target + b" ", 1))
            fast.head_received(head, head.keep_alive and head.version == b"HTTP/1.1")
        elif isinstance(event, Body):
            fed[-1] += event.data
            fast.body_received(event.data)
        else:
            assert isinstance(event, End)
            complete.append(fed[-1])
            request = fast.requests[0]
            request.finish()  # as the author's response would: the channel takes the next one
    plain = _Plain()
    plain_out = _connected(plain)
    for raw in complete:
        # One request at a time, answered before the next, as the service feeds them.
        plain.dataReceived(raw)
        if plain.requests:
            plain.requests[0].finish()
    return plain.seen, plain_out.value(), fast.seen, fast_out.value()


EXTRA = [
    b"GET /hello?a=1&b=2&a=3 HTTP/1.1\r\nHost: h\r\nCookie: x=1; y=2\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    b"GET http://h/hello/x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /hello HTTP/1.0\r\n\r\n",
    b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"POST /hello HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /hello HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"POST /hello HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nk=v&w=x",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
]


class ChannelAgreementTests(SynchronousTestCase):
    def check(self, stream: bytes, label: str) -> int:
        plain, plain_out, fast, fast_out = both_ways(stream)
        self.assertEqual(fast, plain, f"{label}: head_received built a different request")
        self.assertEqual(fast_out, plain_out, f"{label}: the channels wrote different bytes")
        return len(fast)

    def test_extra(self) -> None:
        for stream in EXTRA:
            self.assertEqual(self.check(stream, repr(stream[:40])), 1)
        self.assertEqual(self.check(b"".join(EXTRA[:2] + EXTRA[5:8]), "pipelined"), 5)

    def test_corpus(self) -> None:
        """Every request the framer accepts in the corpus is built as twisted.web builds it."""
        built = 0
        for case in http_corpus.CORPUS:
            built += self.check(case.raw, case.name)
        self.assertGreater(built, 50)

    def test_expect_continue(self) -> None:
        """The 100 Continue is written once, before the body is read."""
        _plain, plain_out, fast, fast_out = both_ways(EXTRA[5])
        self.assertEqual(fast_out.count(b"100 Continue"), 1)
        self.assertEqual(fast[0]["body"], b"hello")

    def test_twisted_still_has_what_head_received_uses(self) -> None:
        """The private names head_received relies on (a rename fails here, not in production)."""
        for name in ("_ChunkedTransferDecoder", "_IdentityTransferDecoder"):
            self.assertTrue(hasattr(http, name), name)
        for name in ("_finishRequestBody", "allContentReceived", "rawDataReceived", "setRawMode", "resetTimeout"):
            self.assertTrue(callable(getattr(http.HTTPChannel, name, None)), name)
