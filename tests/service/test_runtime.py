"""
Unit tests for the service runtime: its access records (L{okws_twisted.service.web.ServiceSite.log})
and its side of the handoff channel (what it acknowledges, refuses, reports closed and hands
back), over a real socket pair with the reactor driven by hand.  Serving is exercised end to
end in L{tests.test_e2e_core}, the hostile cases in L{tests.test_e2e_walls}.
"""

from __future__ import annotations

import array
import io
import json
import socket

from twisted.internet.address import IPv4Address

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from okws_twisted.config import parse
from okws_twisted.service.budget import RESERVED_FDS, FdBudget
from okws_twisted.service.runtime import DONE_REPORT_DELAY, ServiceRuntime
from okws_twisted.service.web import ServiceRequest, ServiceSite
from okws_twisted.wire import channel, handoff, limits, logchannel
from okws_twisted.wire.channel import Message, encode, read_one_blocking
from okws_twisted.wire.logsender import RecordSender, RequestIds
from okws_twisted.wire.transport import descriptor_group


class AccessRecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.site = ServiceSite(Resource(), reactor=self.reactor)
        self.site.records = RecordSender(self.reactor, 100)
        self.site.request_ids = RequestIds("p")
        channel = DummyChannel()
        channel.factory = self.site
        self.request = ServiceRequest(channel)
        self.request.method, self.request.uri, self.request.clientproto = b"GET", b"/x?\xc3\xa9", b"HTTP/1.1"
        self.request.requestHeaders.setRawHeaders(b"user-agent", [b"ua \xff"])

    def records(self) -> list[dict[str, object]]:
        """The records sent, as the log daemon reads them (access records are sent as JSON text)."""
        return json.loads(logchannel.encode_records(self.site.records.buffer.pending))  # type: ignore[union-attr]

    def test_record(self) -> None:
        self.reactor.advance(0.25)
        self.request.code, self.request.sentLength = 200, 12
        self.site.log(self.request)
        self.assertEqual(
            self.records(),
            [{"kind": "access", "time": 1_000_000_000, "client": "192.168.1.1", "request": "GET /x?\u00c3\u00a9 HTTP/1.1",
              "status": 200, "bytes": 12, "request_id": "p-1", "response_time": 250_000, "user_agent": "ua \u00ff"}],
        )
        self.assertEqual(self.request.request_id, "p-1")

    def test_hostileValuesStayValues(self) -> None:
        """The record is built as JSON text: quotes, backslashes and control bytes in what the client
        sent are escaped, never markup; bytes arrive as latin-1 characters."""
        self.request.uri = b'/x?a="b"\\,"status":999'
        self.request.requestHeaders.setRawHeaders(b"referer", [b'"},{"kind":"event"\t\x7f\x01'])
        self.request.requestHeaders.setRawHeaders(b"user-agent", [b"\\\"\xe9"])
        self.request.code, self.request.sentLength = 200, 0
        self.site.log(self.request)
        [record] = self.records()
        self.assertEqual(record["request"], 'GET /x?a="b"\\,"status":999 HTTP/1.1')
        self.assertEqual(record["status"], 200)
        self.assertEqual(record["referer"], '"},{"kind":"event"\t\x7f\x01')
        self.assertEqual(record["user_agent"], '\\"\u00e9')

    def test_tls(self) -> None:
        self.request.channel.transport.tls = {"sni": "a", "cipher": "TLS_AES_128_GCM_SHA256", "version": "TLSv1.3", "alpn": ""}
        self.request.code = 200
        self.site.log(self.request)
        self.assertEqual(self.records()[0]["tls"], "TLSv1.3/TLS_AES_128_GCM_SHA256")

    def test_accessLogOff(self) -> None:
        """With no access log, only error statuses are sent (they go to error.log)."""
        self.site.access_records = False
        self.request.code = 200
        self.site.log(self.request)
        self.request.code = 404
        self.site.log(self.request)
        self.assertEqual([r["status"] for r in self.records()], [404])

    def test_noClient(self) -> None:
        """No log client (not wired yet, or okws_twisted.testing): nothing is recorded, and nothing is
        written twisted.web's way either (a service process writes no log of its own)."""
        earlier = self.site.records
        self.site.records = None
        self.site._logFile = io.StringIO()  # where twisted.web's Site.log would write
        self.request.code, self.request.sentLength = 500, 3
        with capturedLogs() as events:
            self.site.log(self.request)
        self.assertEqual(self.site._logFile.getvalue(), "")
        self.assertEqual(list(events), [])
        self.assertEqual(earlier.buffer.pending, [])  # type: ignore[union-attr]


SITE = "[okws]\n[service:hello]\nresource = services.hello:Hello\npaths = /hello\n"
PEER = IPv4Address("TCP", "192.0.2.7", 40001)
HOST = IPv4Address("TCP", "192.0.2.1", 80)


class _HandoffSide(SynchronousTestCase):
    """The instance's end of the handoff channel: the test plays the dispatcher."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = parse(SITE, "site.ini", "/srv/site")
        self.runtime = ServiceRuntime(self.reactor, config, config.services[0], 0, Resource())
        self.runtime.fds = FdBudget(RESERVED_FDS + 2, 1000)  # room for two connections
        self.addCleanup(self._close_all)
        self.dispatcher = self.new_link()

    def _close_all(self) -> None:
        for conn in list(self.runtime.connections):
            conn.transport.abortConnection()
        if self.runtime.link is not None:
            self.runtime.link.close()
        if self.runtime._stats_loop.running:
            self.runtime._stats_loop.stop()

    def new_link(self) -> socket.socket:
        ours, theirs = channel.socketpair()
        self.addCleanup(theirs.close)
        self.runtime.set_dispatcher(ours)
        stats = self.receive(theirs)
        self.assertEqual((stats.kind, stats.meta["conn_cap"]), (handoff.STATS, 2))
        return theirs

    def receive(self, sock: socket.socket | None = None) -> Message:
        return read_one_blocking(sock or self.dispatcher, 2, limits.handoff(16384))

    def nothing(self) -> None:
        self.dispatcher.setblocking(False)
        try:
            data = self.dispatcher.recv(65536)
        except BlockingIOError:
            return
        finally:
            self.dispatcher.setblocking(True)
        self.fail(f"the instance sent {data!r}")

    def hand(self, conn_id: int, with_fd: bool = True, data: bytes = b"") -> socket.socket:
        """The dispatcher hands over a client connection; returns the client's end."""
        client, server = socket.socketpair()
        self.addCleanup(client.close)
        meta = handoff.connection_meta(handoff.CONN, conn_id, PEER, HOST)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [server.fileno()]))] if with_fd else []
        self.dispatcher.sendmsg([encode(meta, data)[0]], anc)
        server.close()  # the dispatcher's copy: the instance holds the only one now
        return client

    def read(self) -> None:
        assert self.runtime.link is not None
        self.runtime.link.doRead()

    def assertClosedForClient(self, client: socket.socket) -> None:
        client.settimeout(2)
        self.assertEqual(client.recv(100), b"", "the instance still holds the connection")



class HandoffSideTests(_HandoffSide):
    """What the instance acknowledges, refuses, reports closed and hands back."""

    def test_pastTheCapRefused(self) -> None:
        """Past its descriptor budget the instance refuses (the dispatcher answers 503) and keeps its channel."""
        clients = [self.hand(i) for i in (1, 2, 3)]
        self.read()
        ack = self.receive()
        self.assertEqual((ack.kind, ack.meta["ids"], ack.meta["refused"]), (handoff.ACK, [1, 2], [3]))
        self.assertEqual(len(self.runtime.connections), 2)
        self.assertClosedForClient(clients[2])
        self.assertTrue(self.runtime.link.connected)  # type: ignore[union-attr]

    def test_descriptorLostRefused(self) -> None:
        """A connection whose fd never arrived (the kernel cut it: EMFILE) is refused, not fatal."""
        self.hand(7, with_fd=False)
        self.read()
        ack = self.receive()
        self.assertEqual((ack.meta["ids"], ack.meta["refused"]), ([], [7]))
        self.assertTrue(self.runtime.link.connected)  # type: ignore[union-attr]

    def test_endedConnectionsReported(self) -> None:
        """The dispatcher learns which connections ended, so it can forget them."""
        self.hand(4)
        self.read()
        self.assertEqual(self.receive().meta["ids"], [4])
        (conn,) = self.runtime.connections
        conn.transport.abortConnection()
        self.reactor.advance(DONE_REPORT_DELAY)
        ack = self.receive()
        self.assertEqual((ack.meta["ids"], ack.meta["closed"]), ([], [4]))

    def test_batchAnsweredWithinItsWakeup(self) -> None:
        """The answers to a batch of connections leave, and the closed ones close, at the end of
        the wakeup that brought them: no reactor iteration later, no timer of their own."""
        request = b"GET /nowhere HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        clients = [self.hand(i, data=request) for i in (1, 2)]
        self.read()
        self.assertEqual(self.receive().meta["ids"], [1, 2])
        now = self.reactor.seconds()
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.getTime() <= now], [])
        for client in clients:
            client.setblocking(False)
            self.assertTrue(client.recv(65536).startswith(b"HTTP/1.1 404 "))
        self.assertEqual(self.runtime.connections, set())

    def test_endedConnectionsRideOnTheNextAck(self) -> None:
        """A connection that ended is reported in the next batch's ack; the report timer then
        sends nothing (one message per batch, not one more per ended connection)."""
        self.hand(4)
        self.read()
        self.receive()
        (conn,) = self.runtime.connections
        conn.transport.abortConnection()
        self.hand(5)
        self.read()
        ack = self.receive()
        self.assertEqual((ack.meta["ids"], ack.meta["closed"]), ([5], [4]))
        self.reactor.advance(DONE_REPORT_DELAY)
        self.nothing()

    def test_handbackNamesTheConnectionOnly(self) -> None:
        """A handback says which connection (the dispatcher's id) and nothing about it."""
        client = self.hand(5)
        self.read()
        self.receive()
        (conn,) = self.runtime.connections
        sock = conn.transport.detach()
        self.runtime.hand_back(5, conn.origin, sock, b"GET /other HTTP/1.1\r\n\r\n")
        back = self.receive()
        self.assertEqual((back.kind, back.meta, back.payload), (handoff.BACK, {"k": "back", "id": 5}, b"GET /other HTTP/1.1\r\n\r\n"))
        socket.socket(fileno=back.fds[0]).close()
        # Refused (or taken): the instance closes its copy either way.
        self.dispatcher.send(encode({"k": handoff.BACKACK, "ids": [], "refused": [5]})[0])
        self.read()
        self.assertEqual(self.runtime._unacked_backs, {})
        self.assertClosedForClient(client)

    def test_oldDispatchersConnectionClosedNotHandedBack(self) -> None:
        """A new dispatcher never handed that connection out and would refuse it: it is closed instead."""
        client = self.hand(6)
        self.read()
        self.receive()
        (conn,) = self.runtime.connections
        self.dispatcher = self.new_link()
        sock = conn.transport.detach()
        self.runtime.hand_back(6, conn.origin, sock, b"GET /other HTTP/1.1\r\n\r\n")
        self.nothing()
        self.assertClosedForClient(client)

    def test_tooManyUnreadBytesClosedNotHandedBack(self) -> None:
        """More unread bytes than a handback may carry: the connection is closed, the channel kept."""
        client = self.hand(8)
        self.read()
        self.receive()
        (conn,) = self.runtime.connections
        sock = conn.transport.detach()
        self.runtime.hand_back(8, conn.origin, sock, b"x" * (limits.handoff_payload(16384) + 1))
        self.nothing()
        self.assertClosedForClient(client)
        self.assertTrue(self.runtime.link.connected)  # type: ignore[union-attr]


class BatchTests(_HandoffSide):
    """A C{conns} message: several connections in one, acknowledged together, each served with its
    own bytes; refused whole when its fds do not match its entries."""

    def hand_batch(self, datas: list[bytes], entries: list[list] | None = None, fds: int | None = None) -> list[socket.socket]:
        """The dispatcher hands over one client connection per item of C{datas} in one message
        (C{entries} replaces the message's list, C{fds} sends only that many fds)."""
        pairs = [socket.socketpair() for _ in datas]
        for client, _server in pairs:
            self.addCleanup(client.close)
        if entries is None:
            entries = [handoff.batch_entry(i + 1, PEER, HOST, len(data)) for i, data in enumerate(datas)]
        sent = [server.fileno() for _c, server in pairs][: len(pairs) if fds is None else fds]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", sent))]
        self.dispatcher.sendmsg([encode(handoff.batch_meta(entries), b"".join(datas))[0]], anc)
        for _client, server in pairs:
            server.close()  # the dispatcher's copies
        return [client for client, _server in pairs]

    def answer(self, client: socket.socket) -> bytes:
        client.setblocking(False)
        return client.recv(65536)

    def test_eachServedWithItsOwnBytes(self) -> None:
        good = b"GET /nowhere HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        clients = self.hand_batch([good, b"NOT HTTP\r\n\r\n"])
        self.read()
        ack = self.receive()
        self.assertEqual((ack.kind, ack.meta["ids"], ack.meta.get("refused")), (handoff.ACK, [1, 2], None))
        self.assertTrue(self.answer(clients[0]).startswith(b"HTTP/1.1 404 "))
        self.assertTrue(self.answer(clients[1]).startswith(b"HTTP/1.1 400 "))
        self.nothing()

    def test_pastTheCapRefusedOneByOne(self) -> None:
        """The cap counts each connection of a batch: the third of three is refused, the others served."""
        clients = self.hand_batch([b"", b"", b""])
        self.read()
        ack = self.receive()
        self.assertEqual((ack.meta["ids"], ack.meta["refused"]), ([1, 2], [3]))
        self.assertEqual(len(self.runtime.connections), 2)
        self.assertClosedForClient(clients[2])
        self.assertTrue(self.runtime.link.connected)  # type: ignore[union-attr]

    def test_fewerFdsRefusedWhole(self) -> None:
        """Fewer fds than entries (the kernel dropped some: out of descriptors): every connection of
        the message is refused (the dispatcher, which still holds them, answers them) and the fds
        that came are closed; the channel stays."""
        clients = self.hand_batch([b"", b"", b""], fds=2)
        self.read()
        ack = self.receive()
        self.assertEqual((ack.meta["ids"], ack.meta["refused"]), ([], [1, 2, 3]))
        self.assertEqual(self.runtime.connections, set())
        self.assertClosedForClient(clients[0])
        self.assertTrue(self.runtime.link.connected)  # type: ignore[union-attr]

    def test_sizesMustAddUp(self) -> None:
        """Entries whose sizes do not cover the payload exactly: refused whole, fds closed."""
        entries = [handoff.batch_entry(1, PEER, HOST, 1), handoff.batch_entry(2, PEER, HOST, 1)]
        clients = self.hand_batch([b"abc", b""], entries=entries)
        self.read()
        ack = self.receive()
        self.assertEqual((ack.meta["ids"], ack.meta["refused"]), ([], [1, 2]))
        for client in clients:
            self.assertClosedForClient(client)


class AdoptedSocketTests(_HandoffSide):
    """The socket object the instance makes for a handed-over fd says what the kernel says of it,
    whether its family came from the connection's address (TCP) or from the kernel (a Unix pair
    from the TLS front, whose addresses are the client's TCP ones)."""

    def adopted(self, server: socket.socket, tls: dict[str, str] | None = None) -> socket.socket:
        meta = handoff.connection_meta(handoff.CONN, 1, PEER, HOST, tls)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [server.fileno()]))]
        self.dispatcher.sendmsg([encode(meta, b"")[0]], anc)
        server.close()
        self.read()
        self.assertEqual(self.receive().meta["ids"], [1])
        (conn,) = self.runtime.connections
        return conn.transport.socket

    def test_tcp(self) -> None:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=2)
        self.addCleanup(client.close)
        server, _ = listener.accept()
        sock = self.adopted(server)
        self.assertEqual((sock.family, sock.type, sock.proto), (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP))
        self.assertEqual(sock.getpeername(), client.getsockname())

    def test_unixPairFromTheTLSFront(self) -> None:
        client, server = socket.socketpair()
        self.addCleanup(client.close)
        sock = self.adopted(server, {"sni": "", "cipher": "TLS_AES_128_GCM_SHA256", "version": "TLSv1.3", "alpn": ""})
        self.assertEqual((sock.family, sock.type), (socket.AF_UNIX, socket.SOCK_STREAM))


class HostChangeTests(_HandoffSide):
    """A connection keeps to its first request's host: another host goes back to the dispatcher."""

    def serve(self, client: socket.socket, data: bytes) -> None:
        """The client sends C{data}; the instance reads and answers (the reactor turned by hand)."""
        client.sendall(data)
        (conn,) = self.runtime.connections
        conn.transport.doRead()
        self.reactor.advance(0)

    def test_otherHostHandedBack(self) -> None:
        first = b"GET /hello HTTP/1.1\r\nHost: a.example\r\n\r\n"
        client, server = socket.socketpair()
        self.addCleanup(client.close)
        meta = handoff.connection_meta(handoff.CONN, 9, PEER, HOST)
        self.dispatcher.sendmsg([encode(meta, first)[0]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [server.fileno()]))])
        server.close()
        self.read()
        self.assertEqual(self.receive().meta["ids"], [9])
        self.reactor.advance(0)
        (conn,) = self.runtime.connections
        self.assertEqual((conn.host, conn.pattern), (b"a.example", "*"))
        self.assertIn(conn.transport, self.reactor.getReaders())  # a client's socket: not a relay group's
        # Same host, another spelling: still this connection's.
        self.serve(client, b"GET /hello HTTP/1.1\r\nHost: A.EXAMPLE:80\r\n\r\n")
        self.assertEqual(conn.fed, 2)
        other = b"GET /hello HTTP/1.1\r\nHost: b.example\r\n\r\n"
        self.serve(client, other)
        back = self.receive()
        self.assertEqual((back.kind, back.meta["id"], back.payload), (handoff.BACK, 9, other))
        socket.socket(fileno=back.fds[0]).close()
        self.assertEqual(conn.fed, 2)
        self.runtime._send_stats()
        stats = self.receive()
        self.assertEqual(list(stats.meta["counts"]), ["*"])
        self.assertEqual(sum(stats.meta["counts"]["*"]["status"].values()), 2)


class RelayPairTests(_HandoffSide):
    """A relay pair (isolation = request): every request on it is the service's; never handed back."""

    def relay(self, conn_id: int, data: bytes) -> socket.socket:
        ours, end = socket.socketpair()
        self.addCleanup(ours.close)
        meta = handoff.connection_meta(handoff.CONN, conn_id, PEER, HOST, relay=True)
        self.dispatcher.sendmsg([encode(meta, data)[0]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [end.fileno()]))])
        end.close()
        self.read()
        self.assertEqual(self.receive().meta["ids"], [conn_id])
        self.reactor.advance(0)
        return ours

    def test_everyRequestIsMine(self) -> None:
        """Another host or path on a pair is served, not handed back: the dispatcher routed it."""
        ours = self.relay(11, b"GET /hello HTTP/1.1\r\nHost: a.example\r\n\r\n")
        (conn,) = self.runtime.connections
        self.assertTrue(conn.relay)
        self.assertIsNone(conn.channel.timeOut)  # the dispatcher closes idle pairs
        ours.sendall(b"GET /other HTTP/1.1\r\nHost: b.example\r\n\r\n")
        conn.transport.doRead()
        self.reactor.advance(0)
        self.assertEqual((conn.fed, conn.handback), (2, None))
        self.nothing()

    def test_pairsPolledAsAGroup(self) -> None:
        """A pair is read through the reactor's L{DescriptorGroup} (one reader for all pairs), and
        what one group wakeup answers leaves at its end, with no timer."""
        ours = self.relay(13, b"GET /hello HTTP/1.1\r\nHost: a.example\r\n\r\n")
        ours.settimeout(2)
        self.assertIn(b"HTTP/1.1 ", ours.recv(65536))
        (conn,) = self.runtime.connections
        group = descriptor_group(self.reactor)
        self.assertIn(conn.transport, group.getReaders())
        self.assertNotIn(conn.transport, self.reactor.getReaders())
        self.assertIn(group, self.reactor.getReaders())
        ours.sendall(b"GET /other HTTP/1.1\r\nHost: a.example\r\n\r\n")
        group.doRead()
        ours.setblocking(False)
        self.assertIn(b"HTTP/1.1 ", ours.recv(65536))  # sent as the wakeup ended (no advance)
        self.assertEqual(conn.fed, 2)
        ours.close()
        group.doRead()  # EOF: the pair leaves the group, and the empty group the reactor
        self.reactor.advance(1)
        self.assertEqual(self.runtime.connections, set())
        self.assertNotIn(group, self.reactor.getReaders())

    def test_drainWaitsForTheDispatcher(self) -> None:
        """Retiring (hand back), the instance neither hands back nor closes a pair: the dispatcher does."""
        ours = self.relay(12, b"GET /hello HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.reactor.advance(1)
        self.runtime.drain(handback=True)
        self.reactor.advance(1)
        (conn,) = self.runtime.connections
        self.assertTrue(conn.transport.connected)
        self.assertEqual(self.receive().kind, handoff.STATS)  # and no handback
        self.nothing()
        ours.settimeout(2)
        self.assertIn(b"HTTP/1.1 405", ours.recv(65536))  # the dispatcher read the response
        ours.close()  # and ends the visit
        self.assertIsNone(conn.transport.doRead())  # EOF: answered everything, so it closes
        self.reactor.advance(1)
        self.assertEqual(self.runtime.connections, set())
