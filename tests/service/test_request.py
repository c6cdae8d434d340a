"""
L{okws_twisted.service.web.ServiceRequest}'s lean request path (issue 14) against twisted.web's.

Its promise: an author's request behaves exactly as twisted.web's C{server.Request} would.  The
lean steps (C{__init__}, C{process} with the stamp set once, C{requestReceived} for a non-POST,
C{setHeader} for bytes, the first C{write} serialising the head itself, the connection told from
C{finish}/C{connectionLost}) are compared byte for byte with the same request answered by
twisted.web's own methods (L{_Stock}), over many kinds of response.  The private twisted.web names
the lean steps rely on are pinned here, so a Twisted upgrade that changes them fails here first.

The channel's idle timer (C{keepalive_timeout}) is kept lazily (L{ServiceChannel.setTimeout}): the
tests here drive a whole instance on a clock and check that it still closes an idle connection
exactly C{keepalive_timeout} after its last response, and never while a request is answered.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http, http_headers, resource, server
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import NOT_DONE_YET

from okws_twisted import ServiceResource
from okws_twisted.config import parse
from okws_twisted.service.web import MountRoot, ServiceChannel, ServiceRequest, ServiceSite
from okws_twisted.wire import handoff
from okws_twisted.wire.httpframe import Body, Head, RequestFramer

PEER = IPv4Address("TCP", "10.0.0.1", 5555)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)


class _Stock(ServiceRequest):
    """The same request answered by twisted.web's own methods (and the stamp as before the lean path)."""

    def __init__(self, channel: Any, *args: Any) -> None:
        server.Request.__init__(self, channel, *args)
        self.okws_started = channel.site.reactor.seconds()
        self.request_id = channel.site.request_ids.next()

    def process(self) -> None:
        server.Request.process(self)  # render() and processingFailed() stamp, as they did

    requestReceived = http.Request.requestReceived
    setHeader = http.Request.setHeader
    write = server.Request.write
    finish = server.Request.finish
    connectionLost = http.Request.connectionLost


class Pages(ServiceResource):
    """One leaf answering many kinds of response, chosen by the first path segment."""

    isLeaf = True
    csrf_methods = frozenset({b"POST"})  # PUT reaches render_PUT: its body is compared too

    def __init__(self) -> None:
        super().__init__()
        self.later: list[tuple[Any, Deferred[Any]]] = []

    def render_GET(self, request: Any) -> Any:
        kind = request.postpath[0] if request.postpath else b""
        request.setHeader(b"X-Line", b"a\r\nb\nc")
        request.setHeader("X-Str", "v\u00e9")
        if kind == b"bytes":
            request.setHeader(b"content-type", b"text/plain")
            return b"plain"
        if kind == b"304":
            request.setResponseCode(304)
            return b""
        if kind == b"204":
            request.setResponseCode(204)
            return b""
        if kind == b"cookie":
            request.addCookie(b"k", b"v", path=b"/", httpOnly=True)
            return "with a cookie"
        if kind == b"etag":
            request.setETag(b'"e1"')
            request.setLastModified(1_000_000)
            return "tagged"
        if kind == b"chunked":
            request.write(b"one")
            request.write(b"")
            request.write(b"two")
            request.finish()
            return NOT_DONE_YET
        if kind == b"empty":
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        if kind == b"zero":
            request.setHeader(b"content-length", b"0")
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        if kind == b"async":
            d: Deferred[Any] = Deferred()
            self.later.append((request, d))
            return d
        if kind == b"streamed":
            request.write(b"first")
            d = Deferred()
            self.later.append((request, d))
            d.addCallback(lambda _: (request.write(b"last"), request.finish()))
            return NOT_DONE_YET
        if kind == b"boom":
            raise RuntimeError("a bug")
        if kind == b"args":
            return repr(sorted(request.args.items())) + repr(request.received_cookies)
        return "<p>hello</p>"

    def render_PUT(self, request: Any) -> bytes:
        return b"put " + request.content.read()

    def render_POST(self, request: Any) -> bytes:
        return b"post"


REQUESTS = [
    b"GET /a/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/bytes HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD /a/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD /a/chunked HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/304 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/204 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/cookie HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/etag HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/chunked HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/chunked HTTP/1.0\r\n\r\n",
    b"GET /a/empty HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/zero HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/boom HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/args?x=1&y=%20&x=3 HTTP/1.1\r\nHost: h\r\nCookie: c=1; d=2\r\n\r\n",
    b"GET /a/%61rgs?q HTTP/1.1\r\nHost: h\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /a/ HTTP/1.0\r\n\r\n",
    b"DELETE /a/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /a/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nk=v",
    b"PUT /a/ HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody",
    b"PUT /a/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
]


def answer(factory: type, raw: bytes, *, later: bool = False) -> tuple[bytes, list[Any]]:
    """What a site whose requests are C{factory} writes for C{raw} (with the framer in front)."""
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    pages = Pages()
    site = ServiceSite(MountRoot(pages, ("/a",)), reactor=clock)
    site.requestFactory = factory
    channel = site.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER, hostAddress=HOST)
    channel.makeConnection(transport)
    framer = RequestFramer()
    framer.feed(raw)
    while (event := framer.next_event()) is not None:
        if isinstance(event, Head):
            channel.head_received(event.head, event.head.keep_alive and event.head.version == b"HTTP/1.1")
        elif isinstance(event, Body):
            channel.body_received(event.data)
    if later:
        for _request, d in pages.later:
            d.callback(b"answered later")
    return transport.value(), channel.requests


class LeanAgreementTests(SynchronousTestCase):
    """Every response the lean request writes is the one twisted.web's methods write."""

    def test_responses(self) -> None:
        for raw in REQUESTS:
            lean, _ = answer(ServiceRequest, raw)
            stock, _ = answer(_Stock, raw)
            self.assertEqual(lean, stock, raw)
            self.assertTrue(lean.startswith(b"HTTP/1."), raw)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)  # /a/boom, both ways

    def test_later(self) -> None:
        """Asynchronous answers (a Deferred; a streamed NOT_DONE_YET) agree too."""
        for path in (b"async", b"streamed"):
            for version in (b"1.1", b"1.0"):
                raw = b"GET /a/" + path + b" HTTP/" + version + b"\r\nHost: h\r\n\r\n"
                lean, pending = answer(ServiceRequest, raw, later=True)
                stock, _ = answer(_Stock, raw, later=True)
                self.assertEqual(lean, stock, raw)
                self.assertIn(b"answered later" if path == b"async" else b"last", lean)
                self.assertEqual(pending, [])  # finished: the channel took it off

    def test_stampOnce(self) -> None:
        """The stamp's Server and Date, each once, where twisted.web's were."""
        lean, _ = answer(ServiceRequest, REQUESTS[0])
        head = lean.split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(head[1], b"Server: okws-twisted")
        self.assertEqual(head[2], b"Date: Tue, 14 Nov 2023 22:13:20 GMT")
        self.assertEqual(lean.count(b"Server:"), 1)
        self.assertNotIn(b"TwistedWeb", lean)

    def test_optionsStar(self) -> None:
        """OPTIONS * gets twisted.web's answer with the stamp's Server and Date (twisted.web's
        own process would send its name and version)."""
        lean, _ = answer(ServiceRequest, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(
            lean,
            b"HTTP/1.1 200 OK\r\nServer: okws-twisted\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\nContent-Length: 0\r\n\r\n",
        )

    def test_notifyFinishStillFires(self) -> None:
        """notifyFinish is made only when asked for, and fires as twisted.web's: on finish, or
        with the failure when the connection is lost first."""
        clock = MemoryReactorClock()
        site = ServiceSite(resource.Resource(), reactor=clock)
        channel = site.buildProtocol(PEER)
        channel.makeConnection(StringTransport(peerAddress=PEER, hostAddress=HOST))
        done, lost = ServiceRequest(channel), ServiceRequest(channel)
        channel.requests.extend([done, lost])
        self.assertEqual(done.notifications, [])
        ended: list[Any] = []
        done.notifyFinish().addBoth(ended.append)
        lost.notifyFinish().addBoth(ended.append)
        done.method, done.clientproto = b"GET", b"HTTP/1.1"
        done.finish()
        self.assertEqual(ended, [None])
        channel.connectionLost(Exception("gone"))
        self.assertEqual(len(ended), 2)
        self.assertIsNot(ended[1], None)


class TwistedPinsTests(SynchronousTestCase):
    """The twisted.web names the lean request path relies on (a change fails here, not in production)."""

    def test_headersStorage(self) -> None:
        headers = http_headers.Headers()
        headers.setRawHeaders(b"content-type", [b"a\r\nb"])
        headers.addRawHeader(b"x-dup", b"1")
        headers.addRawHeader(b"X-Dup", b"2")
        self.assertEqual(headers._rawHeaders, {b"Content-Type": [b"a b"], b"X-Dup": [b"1", b"2"]})
        self.assertEqual(http_headers._nameEncoder.encode(b"etag"), b"ETag")
        self.assertEqual(list(headers.getAllRawHeaders()), list(headers._rawHeaders.items()))
        for value in (b"", b"a", b"a\nb", b"a\r\n\r\nb", b"a\rb\n", b" a \t"):
            self.assertEqual(http_headers._sanitizeLinearWhitespace(value), b" ".join(value.splitlines()), value)

    def test_requestState(self) -> None:
        """The lean __init__ sets what twisted.web's does; the attributes write() consults exist."""
        site = ServiceSite(resource.Resource(), reactor=MemoryReactorClock())
        channel = site.buildProtocol(PEER)
        channel.makeConnection(StringTransport(peerAddress=PEER, hostAddress=HOST))
        lean, stock = ServiceRequest(channel), server.Request(channel)
        self.assertEqual(set(vars(lean)) - {"okws_started", "request_id"}, set(vars(stock)))
        for name, value in vars(stock).items():
            self.assertEqual(type(getattr(lean, name)), type(value), name)
        self.assertFalse(lean.queued)
        for name in ("_inFakeHead", "_encoder", "_disconnected", "startedWriting", "lastModified", "etag", "chunked"):
            self.assertTrue(hasattr(server.Request, name), name)
        self.assertTrue(INonQueuedRequestFactory.providedBy(ServiceRequest))
        self.assertTrue(callable(resource._IEncodingResource.providedBy))
        self.assertTrue(callable(server.Request._handleStar))

    def test_channelTimerCalls(self) -> None:
        """HTTPChannel pauses its idle timer with setTimeout(None) per request and restores it
        after with setTimeout(saved); the lazy timer keeps that API."""
        import inspect

        source = inspect.getsource(http.HTTPChannel.allContentReceived) + inspect.getsource(http.HTTPChannel.requestDone)
        self.assertIn("self._savedTimeOut = self.setTimeout(None)", source)
        self.assertIn("self.setTimeout(self._savedTimeOut)", source)


SITE = """\
[okws]
keepalive_timeout = 5
[service:pages]
resource = tests.service.test_request:Pages
paths = /a
"""


class IdleTimerTests(SynchronousTestCase):
    """The lazy idle timer closes an idle kept-alive connection exactly keepalive_timeout after
    its last response, and never while a request is being answered."""

    def setUp(self) -> None:
        from okws_twisted.service.runtime import ServiceRuntime

        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        config = parse(SITE, "site.ini", "/srv")
        self.pages = Pages()
        self.runtime = ServiceRuntime(self.reactor, config, config.services[0], 0, self.pages)
        self.client, server_end = socket.socketpair()
        self.addCleanup(self.client.close)
        self.runtime.adopt(handoff.Connection(1, os.dup(server_end.fileno()), PEER, HOST, b""))
        server_end.close()
        [self.conn] = self.runtime.connections
        self.addCleanup(self._close)

    def _close(self) -> None:
        if self.conn.transport.connected:
            self.conn.transport.abortConnection()
        if self.runtime._stats_loop.running:
            self.runtime._stats_loop.stop()

    def ask(self, path: bytes = b"/a/") -> bytes:
        self.conn.transport._deliver(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        self.reactor.advance(0)
        return self.received()

    def received(self) -> bytes:
        self.client.settimeout(2)
        return self.client.recv(65536)

    def at(self, t: float) -> None:
        """Advance the clock to 1000 + t."""
        self.reactor.advance(1000 + t - self.reactor.seconds())

    def assertOpen(self) -> None:
        self.assertTrue(self.conn.transport.connected and not self.conn.transport.disconnecting, "closed too early")

    def assertTimedOut(self) -> None:
        self.assertFalse(self.conn.transport.connected and not self.conn.transport.disconnecting, "not closed")

    def test_idleAfterResponse(self) -> None:
        self.assertIn(b"hello", self.ask())
        self.at(4.99)
        self.assertOpen()
        self.at(5.01)
        self.assertTimedOut()

    def test_requestsPostponeIt(self) -> None:
        """Each request starts the idle period again (the check armed at the first finds it busy since)."""
        self.ask()
        self.at(3)
        self.ask()
        self.at(7.99)
        self.assertOpen()
        self.at(8.01)
        self.assertTimedOut()

    def test_notWhileAnswering(self) -> None:
        """A request answered for longer than keepalive_timeout keeps its connection; the idle
        period starts when it is answered."""
        self.conn.transport._deliver(b"GET /a/async HTTP/1.1\r\nHost: h\r\n\r\n")
        self.at(12)
        self.assertOpen()
        [(_request, d)] = self.pages.later
        d.callback(b"at last")
        self.reactor.advance(0)
        self.assertIn(b"at last", self.received())
        self.at(16.99)
        self.assertOpen()
        self.at(17.01)
        self.assertTimedOut()

    def test_noTimerLeftBehind(self) -> None:
        """A closed connection leaves no idle check pending."""
        self.ask()
        self.conn.transport.abortConnection()
        self.reactor.advance(0)
        self.assertIsNone(self.conn.channel._idle_call)
