"""
Tests for the dispatcher's accept wakeup: the C{conns} message that carries several connections to
one instance (L{okws_twisted.dispatcher.pool.HeldHandoffs}), the connections routed at accept
(L{okws_twisted.dispatcher.accept.RoutedAtAccept}) and what becomes of them when a handoff does not
go as usual, and C{TCP_NODELAY} inherited from the listener (L{okws_twisted.dispatcher.accept.Acceptor}).

Real loopback TCP listeners and clients; the instance's end of the channel is a real socket the
test reads.  The reactor is a L{MemoryReactorClock}: the tests run the acceptor's wakeup by hand.
"""

from __future__ import annotations

import array
import os
import select
import socket

from twisted.internet.address import IPv4Address

from okws_twisted.dispatcher.accept import Acceptor
from okws_twisted.wire import handoff, limits
from okws_twisted.wire.channel import MAX_META, encode
from tests.dispatcher.test_dispatcher import DispatcherTestCase, parse_response, request


class _Accepting(DispatcherTestCase):
    """A real loopback listener, and clients whose heads are queued before the wakeup."""

    def listen(self) -> tuple[socket.socket, Acceptor]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.dispatcher.listen([listener])
        acceptor = self.dispatcher.acceptors[0]
        self.addCleanup(acceptor.close)
        return listener, acceptor

    def clients(self, listener: socket.socket, heads: list[bytes]) -> list[socket.socket]:
        """Clients that connected and sent their heads; returns once all are in the accept queue."""
        out = []
        for head in heads:
            client = socket.create_connection(listener.getsockname(), timeout=2)
            self.addCleanup(client.close)
            client.sendall(head)
            out.append(client)
        self.assertTrue(select.select([listener], [], [], 2)[0])
        return out

    def wakeup(self, acceptor: Acceptor, count: int) -> None:
        """One wakeup of the acceptor that takes C{count} connections (the heads have arrived)."""
        before = self.dispatcher.open_connections
        acceptor.doRead()
        self.assertEqual(self.dispatcher.open_connections - before, count, "not all accepted at one wakeup")


class WakeupBatchTests(_Accepting):
    """Connections accepted at one wakeup for one instance leave in one message."""

    def test_oneMessageForTheWakeup(self) -> None:
        """
        Three connections accepted together reach the instance as one C{conns} message: each
        entry names its client and carries its own request, each fd is that client's socket,
        and one C{ack} releases them all.
        """
        link, theirs = self.instance()
        listener, acceptor = self.listen()
        heads = [request(f"/hello/{i}") for i in range(3)]
        clients = self.clients(listener, heads)
        self.wakeup(acceptor, 3)
        msg = self.receive(theirs)
        self.assertEqual(msg.kind, handoff.CONNS)
        conns = handoff.parse_batch(msg)
        self.assertEqual([c.data for c in conns], heads)
        for conn, client in zip(conns, clients):
            self.assertEqual(conn.peer, IPv4Address("TCP", *client.getsockname()))
            self.assertEqual(conn.host, IPv4Address("TCP", *listener.getsockname()))
            served = socket.socket(fileno=os.dup(conn.fd))
            self.addCleanup(served.close)
            self.assertEqual(served.getpeername(), client.getsockname())
        self.nothing_for(theirs)
        self.assertEqual(self.dispatcher.handed_off, 3)
        self.ack(link, theirs, [c.id for c in conns])
        self.assertEqual((link.pending, self.dispatcher.open_connections, link.active), ({}, 0, 3))

    def test_atMostMaxBatchAMessage(self) -> None:
        """More than L{handoff.MAX_BATCH} connections at one wakeup: a full message, then the rest."""
        _link, theirs = self.instance()
        listener, acceptor = self.listen()
        count = handoff.MAX_BATCH + 2
        self.clients(listener, [request() for _ in range(count)])
        self.wakeup(acceptor, count)
        first, second = self.receive(theirs), self.receive(theirs)
        self.assertEqual((first.kind, len(first.fds)), (handoff.CONNS, handoff.MAX_BATCH))
        self.assertEqual((second.kind, len(second.fds)), (handoff.CONNS, 2))
        self.nothing_for(theirs)

    def test_payloadBoundedAsOneConn(self) -> None:
        """
        A message's unread bytes together stay within one C{conn} message's limit (the instance's
        channel refuses more before buffering): large heads split the wakeup's batch.
        """
        _link, theirs = self.instance()
        listener, acceptor = self.listen()
        big = request(extra="Cookie: " + "c" * 15000 + "\r\n")
        limit = limits.handoff_payload(self.dispatcher.config.max_head)
        fit = limit // len(big)
        self.assertLess(fit, handoff.MAX_BATCH)
        count = fit + 2  # more than one message holds
        self.clients(listener, [big] * count)
        self.wakeup(acceptor, count)
        sizes = []
        while sum(sizes) < count:
            msg = self.receive(theirs)
            self.assertLessEqual(len(msg.payload), limit)
            sizes.append(len(msg.fds))
        self.assertEqual(sizes, [fit, 2])

    def test_oneInstanceOneMessageEach(self) -> None:
        """Two instances: each gets its own share of the wakeup, in its own message."""
        _a, a_theirs = self.instance(index=0)
        _b, b_theirs = self.instance(index=1)
        listener, acceptor = self.listen()
        self.clients(listener, [request() for _ in range(4)])
        self.wakeup(acceptor, 4)
        for theirs in (a_theirs, b_theirs):
            msg = self.receive(theirs)
            self.assertEqual((msg.kind, len(msg.fds)), (handoff.CONNS, 2))
            self.nothing_for(theirs)

    def test_aloneStaysConn(self) -> None:
        """One connection at a wakeup travels as a plain C{conn} message, as before."""
        _link, theirs = self.instance()
        listener, acceptor = self.listen()
        self.clients(listener, [request()])
        self.wakeup(acceptor, 1)
        self.assertEqual(self.receive(theirs).kind, handoff.CONN)

    def test_worstCaseMetadataFits(self) -> None:
        """A full batch of the longest TCP addresses (IPv6 with a zone) still fits one datagram's metadata."""
        from twisted.internet.address import IPv6Address

        far = IPv6Address("TCP", "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%interfacename15", 65535)
        entries = [handoff.batch_entry(2**63, far, far, 2**20) for _ in range(handoff.MAX_BATCH)]
        self.assertLess(len(encode(handoff.batch_meta(entries))[0]), MAX_META)


class RoutedAtAcceptTests(_Accepting):
    """
    A head that came whole with its connection is routed at accept (no transport, never read by
    the reactor); whatever else happens to it in transit gets the ordinary path's answer.
    """

    def handed_at_accept(self, head: bytes = b"") -> tuple[socket.socket, int, socket.socket]:
        """A client whose connection was handed to C{self.theirs} at accept: client, id, the instance's socket."""
        listener, acceptor = self.listen()
        [client] = self.clients(listener, [head or request()])
        self.wakeup(acceptor, 1)
        self.assertEqual(self.dispatcher.reading, set(), "not routed at accept")
        msg = self.receive(self.theirs)
        self.assertEqual(msg.kind, handoff.CONN)
        served = socket.socket(fileno=os.dup(msg.fds[0]))
        self.addCleanup(served.close)
        self.assertEqual(served.getpeername(), client.getsockname())
        return client, msg.meta["id"], served

    def test_ackClosesOurCopyOnly(self) -> None:
        """At the ack the dispatcher closes its copy without shutting the connection down."""
        link, self.theirs = self.instance()
        client, conn_id, served = self.handed_at_accept()
        self.assertEqual((self.dispatcher.open_connections, link.active), (1, 1))
        self.assertEqual(set(self.reactor.getReaders()), {*self.dispatcher.acceptors, link.channel})
        ours = link.pending[conn_id].socket
        self.ack(link, self.theirs, [conn_id])
        self.assertEqual((self.dispatcher.open_connections, link.pending), (0, {}))
        self.assertEqual(ours.fileno(), -1, "the dispatcher's copy is still open")
        served.sendall(b"HTTP/1.1 200 OK\r\n")
        client.settimeout(2)
        self.assertEqual(client.recv(100), b"HTTP/1.1 200 OK\r\n")
        client.sendall(b"more")
        served.settimeout(2)
        self.assertEqual(served.recv(100), b"more")

    def test_refusedAnsweredHere(self) -> None:
        """The instance refuses it (at its cap): the dispatcher answers 503 and logs it."""
        link, self.theirs = self.instance()
        client, conn_id, _served = self.handed_at_accept()
        _served.close()
        self.ack(link, self.theirs, [], refused=[conn_id])
        headers, _ = self.assertAnswered(client, 503)
        self.assertEqual(headers["retry-after"], "7")
        self.assertEqual((link.active, link.pending), (0, {}))
        self.assertEqual(self.dispatcher.own_counts[("hello", "*")].to_json()["status"], {"503": 1})

    def test_instanceGoneBeforeAck(self) -> None:
        """Never acknowledged, never touched: it waits for the next instance, which gets the same bytes."""
        link, self.theirs = self.instance(index=0)
        client, _conn_id, served = self.handed_at_accept()
        served.close()
        self.theirs.close()
        self.read(link.channel)
        [queued] = self.dispatcher.pools["hello"].queue
        self.assertIn(queued, self.dispatcher.reading)
        self.assertNotIn(queued.transport, self.reactor.getReaders())  # not read while it waits
        _, other = self.instance(index=1)
        msg = self.receive(other)
        self.assertEqual(msg.payload, request())
        again = socket.socket(fileno=os.dup(msg.fds[0]))
        self.addCleanup(again.close)
        self.assertEqual(again.getpeername(), client.getsockname())
        self.assertEqual(self.dispatcher.reading, set())

    def test_queuedWhenNoInstanceIsReady(self) -> None:
        """No ready instance: the ordinary path queues it, and it times out with a 503."""
        listener, acceptor = self.listen()
        [client] = self.clients(listener, [request()])
        self.wakeup(acceptor, 1)
        [queued] = self.dispatcher.pools["hello"].queue
        self.reactor.advance(self.dispatcher.config.queue_timeout)
        self.assertAnswered(client, 503)

    def test_ownAnswersTakeTheOrdinaryPath(self) -> None:
        """No route, or a head that is not whole: read and answered as before (404 keeps the connection)."""
        self.instance()
        listener, acceptor = self.listen()
        nowhere, partial = self.clients(listener, [request("/nowhere"), b"GET /hello HTTP/1.1\r\n"])
        self.wakeup(acceptor, 2)
        self.assertAnsweredKept(nowhere, 404)
        self.assertEqual(len(self.dispatcher.reading), 2)
        self.reactor.advance(self.dispatcher.config.head_timeout)
        self.assertAnswered(partial, 408)

    def test_checksOfTheOrdinaryPathHold(self) -> None:
        """A body over the service's limit (413) and C{OPTIONS *} (answered here) are answered as
        on the ordinary path, never handed off."""
        self.instance()
        listener, acceptor = self.listen()
        big, options = self.clients(listener, [
            request(method="POST", extra="Content-Length: 101\r\n"), b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ])
        self.wakeup(acceptor, 2)
        self.assertAnswered(big, 413)
        self.assertEqual(parse_response(self.written(options) or b"")[0], 200)
        self.assertEqual(self.dispatcher.handed_off, 0)

    def test_stopWaitsForTheAck(self) -> None:
        """A stopping dispatcher waits for the ack of a connection routed at accept."""
        stopped = []
        self.dispatcher._stopped = lambda: stopped.append(True)
        link, self.theirs = self.instance()
        _client, conn_id, _served = self.handed_at_accept()
        self.dispatcher.stop()
        self.assertEqual(stopped, [])
        self.ack(link, self.theirs, [conn_id])
        self.assertEqual(stopped, [True])


class HostileBatchTests(DispatcherTestCase):
    """A C{conns} message goes one way only: from an instance it is refused and its fds closed."""

    def test_fromAnInstanceRefused(self) -> None:
        link, theirs = self.instance()
        pipes = [os.pipe() for _ in range(2)]
        for r, _w in pipes:
            self.addCleanup(os.close, r)
        entries = [handoff.batch_entry(i, IPv4Address("TCP", "6.6.6.6", 1), IPv4Address("TCP", "6.6.6.6", 2), 0) for i in (1, 2)]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w for _r, w in pipes]))]
        theirs.sendmsg([encode(handoff.batch_meta(entries))[0]], anc)
        for _r, w in pipes:
            os.close(w)
        self.read(link.channel)
        for r, _w in pipes:
            os.set_blocking(r, False)
            self.assertEqual(os.read(r, 1), b"", "a descriptor that came with a conns message is still open")
        self.assertEqual(self.dispatcher.pools["hello"].misbehaviour, 1)
        self.assertEqual(self.dispatcher.reading, set())
        self.assertTrue(link.channel.connected)


class NoDelayTests(DispatcherTestCase):
    """Every accepted TCP connection has C{TCP_NODELAY}, with one C{setsockopt} per listener."""

    def test_inheritedFromTheListener(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        # Queued before the dispatcher set the option on the listener: made without it.
        early = socket.create_connection(listener.getsockname(), timeout=2)
        self.addCleanup(early.close)
        self.assertTrue(select.select([listener], [], [], 2)[0])
        self.dispatcher.listen([listener])
        acceptor = self.dispatcher.acceptors[0]
        self.addCleanup(acceptor.close)
        self.assertTrue(listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        acceptor.doRead()  # takes the early one, then finds the queue empty
        (first,) = self.dispatcher.reading
        self.addCleanup(self._abort, first)
        self.assertTrue(first.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.assertFalse(acceptor._nodelay_each, "still setting TCP_NODELAY on each connection")
        # From now on, the kernel's copy from the listener is all there is.
        late = socket.create_connection(listener.getsockname(), timeout=2)
        self.addCleanup(late.close)
        self.assertTrue(select.select([listener], [], [], 2)[0])
        acceptor.doRead()
        (second,) = self.dispatcher.reading - {first}
        self.addCleanup(self._abort, second)
        self.assertTrue(second.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

