"""
Tests for L{okws_twisted.dispatcher.relay}: the dispatcher relaying requests to services with
C{isolation = request}.

The reactor is a L{MemoryReactorClock} driven by hand; the client connection, the handoff
channel and the relay's socket pair are real sockets, so what the client and the instance see
is read from their own ends.  The end-to-end properties (the socket stays in the dispatcher, a
hostile reader sees nothing, kill -9, 20 MB each way) are in L{tests.test_e2e_isolation}.
"""

from __future__ import annotations

import socket
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import parse
from okws_twisted.dispatcher.dispatcher import Dispatcher
from okws_twisted.dispatcher.records import HandbackRefused, socket_identity
from okws_twisted.dispatcher.relay import RelayedConnection, first_request
from okws_twisted.wire import handoff, limits
from okws_twisted.wire.channel import Message, read_one_blocking
from okws_twisted.wire.httpframe import HTTPError, Limits
from okws_twisted.wire.transport import SocketTransport, descriptor_group
from tests.dispatcher.test_dispatcher import DispatcherTestCase, parse_response

SITE = """
[okws]
head_timeout = 5
keepalive_timeout = 20
body_timeout = 4
body_min_rate = 0
queue_timeout = 10

[service:a]
resource = a:B
paths = /a
isolation = request
max_body = 100

[service:b]
resource = a:B
paths = /b
"""

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def req(path: str = "/a", extra: str = "", body: bytes = b"", host: str = "example.com") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{length}{extra}\r\n".encode() + body


class FirstRequestTests(SynchronousTestCase):
    """What goes to the instance with the pair: the first request only."""

    def test_onlyTheFirstRequest(self) -> None:
        start = first_request(req("/a", body=b"12345") + req("/b"), Limits(), 100)
        self.assertEqual(start.payload, req("/a", body=b"12345"))
        self.assertFalse(start.in_body)
        self.assertEqual(start.framer.unread(), req("/b"))

    def test_partOfTheBody(self) -> None:
        start = first_request(req("/a", body=b"12345")[:-2], Limits(), 100)
        self.assertTrue(start.in_body)
        self.assertEqual(start.framer.unread(), b"")

    def test_chunksOverTheLimit(self) -> None:
        data = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"x" * 101
        self.assertEqual(self.assertRaises(HTTPError, first_request, data, Limits(), 100).status, 413)


class RelayTests(DispatcherTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.dispatcher = Dispatcher(self.reactor, parse(textwrap.dedent(SITE), "site.ini", "/srv/site"))
        self.link, self.theirs = self.instance("a")

    def receive(self, theirs: socket.socket) -> Message:
        """The next message to an instance.  Every test here wraps each fd received in a socket
        it closes (or a cleanup does): none is closed again by number at cleanup, when the
        number may be a later socket's (the dispatcher's end of a pair)."""
        return read_one_blocking(theirs, 2, limits.handoff(16384))

    def relayed(self, data: bytes = b"") -> tuple[socket.socket, socket.socket, RelayedConnection]:
        """A client whose first request (in C{data}) was relayed: the client, the instance's end, the relay."""
        client, conn = self.connect(data or req())
        msg = self.receive(self.theirs)
        self.assertTrue(msg.meta.get("relay"))
        end = socket.socket(fileno=msg.fds[0])
        self.addCleanup(end.close)
        self.ack(self.link, self.theirs, [msg.meta["id"]])
        (relayed,) = [r for r in self.dispatcher.relayed if r.transport is conn.transport]
        self.addCleanup(self._close, relayed)
        self.first = msg
        return client, end, relayed

    def _close(self, relayed: RelayedConnection) -> None:
        if relayed.transport.connected:
            relayed.transport.abortConnection()
        if relayed.pair is not None and relayed.pair.connected:
            relayed.pair.abortConnection()

    def answer(self, relayed: RelayedConnection, end: socket.socket, data: bytes = OK) -> None:
        """The instance writes C{data}; the dispatcher reads it and passes it on."""
        end.sendall(data)
        assert relayed.pair is not None
        self.read(relayed.pair)
        self.reactor.advance(0)

    def client_sends(self, relayed: RelayedConnection, client: socket.socket, data: bytes) -> None:
        client.sendall(data)
        self.assertTrue(self.reading(relayed.transport), "the dispatcher is not reading the client")
        self.read(relayed.transport)
        self.reactor.advance(0)

    def reading(self, transport: SocketTransport) -> bool:
        """The dispatcher reads C{transport}: in the relay's descriptor group, which the reactor reads."""
        group = descriptor_group(self.reactor)
        self.assertNotIn(transport, self.reactor.getReaders(), "a relayed transport is the group's")
        return transport in group.getReaders() and group in self.reactor.getReaders()

    def instance_reads(self, end: socket.socket) -> bytes:
        end.setblocking(False)
        out = b""
        while True:
            try:
                chunk = end.recv(65536)
            except BlockingIOError:
                return out
            if not chunk:
                return out + b"<EOF>"
            out += chunk

    def test_firstRequestOnly(self) -> None:
        """The instance gets its end of a pair, never the client's socket, and only the first request."""
        client, end, relayed = self.relayed(req("/a/1") + req("/b/2"))
        self.assertEqual(self.first.payload, req("/a/1"))
        self.assertEqual(end.family, socket.AF_UNIX)
        self.assertNotEqual(socket_identity(end.fileno()), socket_identity(relayed.transport.fileno()))
        self.assertEqual(self.dispatcher.ledger.get(self.first.meta["id"]).kind, "relay")
        self.assertEqual(self.instance_reads(end), b"")

    def test_keepAliveOnThePair(self) -> None:
        client, end, relayed = self.relayed()
        self.answer(relayed, end)
        self.assertEqual(self.written(client), OK)
        self.client_sends(relayed, client, req("/a/again"))
        self.assertEqual(self.instance_reads(end), req("/a/again"))
        self.answer(relayed, end)
        self.assertEqual(self.written(client), OK)
        self.assertEqual(relayed.requests, 2)

    def test_oneRequestAtATime(self) -> None:
        """Pipelined requests for the same visit go to the instance one by one, after each response."""
        client, end, relayed = self.relayed(req("/a/1") + req("/a/2") + req("/a/3"))
        self.assertFalse(self.reading(relayed.transport))  # not read while a response is due
        self.assertEqual(self.instance_reads(end), b"")
        self.answer(relayed, end)
        self.assertEqual(self.instance_reads(end), req("/a/2"))
        self.answer(relayed, end)
        self.assertEqual(self.instance_reads(end), req("/a/3"))
        self.answer(relayed, end)
        self.assertEqual(self.written(client), OK * 3)

    def test_anotherServiceGoesThroughTheFrontDoor(self) -> None:
        """The next request for another service: the pair is closed, the socket routed again."""
        b, b_theirs = self.instance("b")
        client, end, relayed = self.relayed(req("/a/1") + req("/b/2"))
        self.answer(relayed, end)
        self.assertEqual(self.instance_reads(end), b"<EOF>")  # nothing of /b/2 on the pair
        msg = self.receive(b_theirs)
        self.assertFalse(msg.meta.get("relay"))
        self.assertEqual(msg.payload, req("/b/2"))
        handed = socket.socket(fileno=msg.fds[0])
        self.addCleanup(handed.close)
        self.assertEqual(handed.getpeername(), client.getsockname())  # the client's own socket now
        self.assertNotIn(relayed, self.dispatcher.relayed)
        self.assertIsNone(self.dispatcher.ledger.get(self.first.meta["id"]))

    def test_reloadedRoutesDecideTheNextRequest(self) -> None:
        """The same request again after a reload that gives its path to another service goes
        to that service (the visit's remembered routing is the old table's only)."""
        b, b_theirs = self.instance("b")
        client, end, relayed = self.relayed(req("/a/1"))
        self.answer(relayed, end)
        self.client_sends(relayed, client, req("/a/1"))
        self.assertEqual(self.instance_reads(end), req("/a/1"))
        self.answer(relayed, end)
        self.dispatcher.update_config(parse(textwrap.dedent(SITE).replace("paths = /b", "paths = /b /a/1"), "site.ini", "/srv/site"))
        self.client_sends(relayed, client, req("/a/1"))
        self.assertEqual(self.instance_reads(end), b"<EOF>")
        msg = self.receive(b_theirs)
        self.assertFalse(msg.meta.get("relay"))
        self.assertEqual(msg.payload, req("/a/1"))
        socket.socket(fileno=msg.fds[0]).close()

    def test_anotherHostIsAnotherVisit(self) -> None:
        client, end, relayed = self.relayed(req("/a/1") + req("/a/2", host="other.example"))
        self.answer(relayed, end)
        self.assertEqual(self.instance_reads(end), b"<EOF>")
        msg = self.receive(self.theirs)  # a new pair, to the same service
        self.assertTrue(msg.meta.get("relay"))
        self.assertIn(b"other.example", msg.payload)
        socket.socket(fileno=msg.fds[0]).close()

    def test_unknownPathAfterwards(self) -> None:
        client, end, relayed = self.relayed(req("/a/1") + req("/nowhere"))
        self.answer(relayed, end)
        data = self.written(client)
        self.assertTrue(data.startswith(OK))
        status, headers, _ = parse_response(data[len(OK):].replace(b"<EOF>", b""))
        self.assertEqual(status, 404)

    def test_bodyRelayed(self) -> None:
        client, end, relayed = self.relayed(req("/a", body=b"0123456789")[:-5])
        self.assertTrue(relayed.in_body)
        self.client_sends(relayed, client, b"56789")
        # The first part went in the conn message, the rest over the pair.
        self.assertEqual(self.first.payload, req("/a", body=b"0123456789")[:-5])
        self.assertEqual(self.instance_reads(end), b"56789")
        self.assertFalse(relayed.in_body)

    def test_declaredBodyTooLarge(self) -> None:
        client, end, relayed = self.relayed()
        self.answer(relayed, end)
        self.client_sends(relayed, client, req("/a/big", body=b"x" * 101))
        self.assertEqual(self.instance_reads(end), b"<EOF>")
        data = self.written(client)
        self.assertEqual(parse_response(data[len(OK):].replace(b"<EOF>", b""))[0], 413)

    def test_chunksTooLargeBeforeTheResponse(self) -> None:
        client, end, relayed = self.relayed(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.client_sends(relayed, client, b"65\r\n" + b"x" * 101)
        headers, body = self.assertAnswered(client, 413)

    def test_bodyTooSlow(self) -> None:
        """The body deadline holds on the relay: 408 if no response began."""
        client, end, relayed = self.relayed(req("/a", body=b"0123456789")[:-5])
        self.reactor.advance(4)
        self.assertAnswered(client, 408)
        self.assertEqual(self.instance_reads(end)[-5:], b"<EOF>")

    def test_idleTimeout(self) -> None:
        client, end, relayed = self.relayed()
        self.answer(relayed, end)
        self.reactor.advance(19.9)
        self.assertEqual(self.written(client), OK)
        self.reactor.advance(0.2)
        self.assertEqual(self.written(client), b"<EOF>")
        self.assertEqual(self.instance_reads(end), b"<EOF>")

    def test_idleTimeoutFromTheLastResponse(self) -> None:
        """The idle deadline counts from the last response, though its one timer was armed at the first."""
        client, end, relayed = self.relayed()
        self.answer(relayed, end)
        self.reactor.advance(15)
        self.client_sends(relayed, client, req("/a/2"))
        self.assertEqual(self.instance_reads(end), req("/a/2"))
        self.answer(relayed, end)
        self.reactor.advance(19.9)  # past the first response's deadline, not the second's
        self.assertEqual(self.written(client), OK * 2)
        self.assertTrue(relayed.transport.connected)
        self.reactor.advance(0.2)
        self.assertEqual(self.written(client), b"<EOF>")

    def test_headDeadline(self) -> None:
        """A next head that drips gets head_timeout from its first byte, not from each byte."""
        client, end, relayed = self.relayed()
        self.answer(relayed, end)
        self.assertEqual(self.written(client), OK)
        self.client_sends(relayed, client, b"GET /a HTTP/1.1\r\n")
        self.reactor.advance(4)
        self.client_sends(relayed, client, b"X-Drip: 1\r\n")
        self.reactor.advance(1)
        self.assertAnswered(client, 408)

    def test_unsolicitedBytesCutAndCounted(self) -> None:
        """An instance may not write when no request is outstanding (a response to the client's next one)."""
        client, end, relayed = self.relayed()
        self.answer(relayed, end)
        self.answer(relayed, end, b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(self.written(client), OK + b"<EOF>")
        self.assertEqual((self.link.misbehaviour, self.dispatcher.pools["a"].misbehaviour), (1, 1))

    def test_twoResponsesCut(self) -> None:
        client, end, relayed = self.relayed()
        self.answer(relayed, end, OK + OK)
        self.assertEqual(self.written(client), b"<EOF>")
        self.assertEqual(self.link.misbehaviour, 1)

    def test_cutShortByTheInstance(self) -> None:
        """EOF in the middle of a response: the client's connection is cut, never ended cleanly."""
        client, end, relayed = self.relayed()
        self.answer(relayed, end, OK[:-1])
        end.close()
        self.read(relayed.pair)
        data = self.written(client)
        self.assertEqual(data, OK[:-1] + b"<EOF>")
        self.assertEqual(self.link.misbehaviour, 0)  # a crash, not a lie

    def test_instanceGoneWhileIdle(self) -> None:
        """The instance closed its idle end: the client stays; its next request gets a new visit."""
        client, end, relayed = self.relayed()
        self.answer(relayed, end)
        pair = relayed.pair
        end.close()
        self.read(pair)
        self.assertIsNone(relayed.pair)
        self.assertTrue(relayed.transport.connected)
        self.client_sends(relayed, client, req("/a/2"))
        msg = self.receive(self.theirs)
        self.assertEqual(msg.payload, req("/a/2"))
        socket.socket(fileno=msg.fds[0]).close()

    def test_retire(self) -> None:
        """A retiring instance's idle visits end at once, busy ones after their response."""
        client, end, relayed = self.relayed()
        client2, end2, relayed2 = self.relayed()
        self.answer(relayed, end)
        self.dispatcher.retire(self.link.pid)
        self.reactor.advance(0)
        self.assertEqual(self.instance_reads(end), b"<EOF>")
        self.assertEqual(self.instance_reads(end2), b"")
        self.answer(relayed2, end2)
        self.assertEqual(self.instance_reads(end2), b"<EOF>")
        self.assertEqual(self.written(client2), OK)
        self.assertTrue(relayed2.transport.connected)

    def test_drain(self) -> None:
        client, end, relayed = self.relayed()
        client2, end2, relayed2 = self.relayed()
        self.answer(relayed, end)
        self.dispatcher.drain()
        self.reactor.advance(0)
        self.assertEqual(self.written(client), OK + b"<EOF>")
        self.answer(relayed2, end2)
        self.assertEqual(self.written(client2), OK + b"<EOF>")

    def test_closeFromTheService(self) -> None:
        client, end, relayed = self.relayed(req("/a/1") + req("/a/2"))
        closing = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        self.answer(relayed, end, closing)
        self.assertEqual(self.written(client), closing + b"<EOF>")
        self.assertEqual(self.instance_reads(end), b"<EOF>")

    def test_clientHalfClose(self) -> None:
        """A client that sent its request and half-closed still gets the response."""
        client, end, relayed = self.relayed()
        client.shutdown(socket.SHUT_WR)
        self.read(relayed.transport)
        self.answer(relayed, end)
        self.assertEqual(self.written(client), OK + b"<EOF>")

    def test_handbackOfAPairRefused(self) -> None:
        """An instance never hands a relay pair back: the ledger refuses it."""
        client, end, relayed = self.relayed()
        with self.assertRaises(HandbackRefused):
            self.dispatcher.ledger.take_back(self.link, self.first.meta["id"], socket_identity(end.fileno()))
        self.back(self.link, self.theirs, self.first.meta["id"], end.fileno(), req("/b/x"))
        self.assertEqual(self.link.misbehaviour, 1)
        self.assertTrue(relayed.transport.connected)

    def test_openConnectionsCounted(self) -> None:
        """A relayed connection counts against max_connections until it is gone."""
        client, end, relayed = self.relayed()
        self.assertEqual(self.dispatcher.open_connections, 1)
        self.answer(relayed, end)
        client.close()
        self.read(relayed.transport)
        self.assertEqual(self.dispatcher.open_connections, 0)
        self.assertNotIn(relayed, self.dispatcher.relayed)
        self.assertEqual(self.link.active, 0)

    def test_visitCountsAgainstTheCap(self) -> None:
        self.relayed()
        self.assertEqual(self.link.active, 1)
        self.assertEqual(len(self.link.visits), 1)

    def test_lostBeforeAckReassigned(self) -> None:
        """A pair the instance never acknowledged is closed; the request goes to another instance."""
        other, other_theirs = self.instance("a", index=1)
        self.hold(other, 1)
        client, conn = self.connect(req())
        msg = self.receive(self.theirs)
        end = socket.socket(fileno=msg.fds[0])
        self.addCleanup(end.close)
        self.theirs.close()
        self.read(self.link.channel)
        again = self.receive(other_theirs)
        self.assertTrue(again.meta.get("relay"))
        self.assertEqual(again.payload, req())
        socket.socket(fileno=again.fds[0]).close()
        self.assertEqual(self.instance_reads(end), b"<EOF>")
        self.assertEqual(handoff.CONN, again.kind)
