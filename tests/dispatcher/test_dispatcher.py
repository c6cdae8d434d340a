"""
Tests for L{okws_twisted.dispatcher.dispatcher}: reading heads, answering errors, queueing, handing off.

Time and the event loop are a L{MemoryReactorClock}: readers and writers are
recorded, not run, and the tests drive them (C{doRead}) by hand.  The client
connections and the handoff channels are real socket pairs, so what a client
or a service instance sees is read from its own socket.
"""

from __future__ import annotations

import array
import itertools
import os
import select
import shutil
import socket
import tempfile
import textwrap

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import SiteConfig, parse
from okws_twisted.dispatcher.accept import HeadConnection
from okws_twisted.dispatcher.dispatcher import Dispatcher
from okws_twisted.dispatcher.pool import MISBEHAVIOUR_LIMIT, InstanceLink
from okws_twisted.dispatcher.records import ConnectionRecord
from okws_twisted.wire import channel, handoff, limits
from okws_twisted.wire.channel import Message, encode, read_one_blocking
from okws_twisted.wire.transport import LINGER_SECONDS

PEER = IPv4Address("TCP", "192.0.2.7", 40001)
HOST = IPv4Address("TCP", "192.0.2.1", 80)

SITE = """
[okws]
head_timeout = 5
queue_max = 2
queue_timeout = 10
retry_after = 7

[service:hello]
resource = services.hello:Hello
paths = /hello
max_body = 100

[service:form]
resource = services.form:Form
paths = /form
"""


def site(**okws: object) -> SiteConfig:
    text = SITE
    for key, value in okws.items():
        text = text.replace(f"\n{key} = ", f"\n#{key} = ")
        text = text.replace("[okws]\n", f"[okws]\n{key} = {value}\n")
    return parse(textwrap.dedent(text), "site.ini", "/srv/site")


def request(path: str = "/hello", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n".encode()


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class DispatcherTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.dispatcher = Dispatcher(self.reactor, site())
        self.services: list[socket.socket] = []
        self._fake_ids = itertools.count(10**9)

    def configure(self, **okws: object) -> None:
        self.dispatcher = Dispatcher(self.reactor, site(**okws))

    # -- clients

    def connect(self, data: bytes = b"", peer: object = PEER, host: object = HOST) -> tuple[socket.socket, HeadConnection]:
        """A client connection the dispatcher adopted with C{data} already read."""
        client, server = socket.socketpair()
        self.addCleanup(client.close)
        before = set(self.dispatcher.reading)
        self.dispatcher.adopt(server.detach(), peer, host, b"")
        (conn,) = set(self.dispatcher.reading) - before
        self.addCleanup(self._abort, conn)
        if data:
            self.send(client, conn, data)
        return client, conn

    def _abort(self, conn: HeadConnection) -> None:
        if conn.transport.connected:
            conn.transport.abortConnection()

    def send(self, client: socket.socket, conn: HeadConnection, data: bytes) -> None:
        """The client sends C{data}; the reactor reads it (as it would once readable)."""
        client.sendall(data)
        self.assertIn(conn.transport, self.reactor.getReaders(), "the dispatcher is not reading")
        self.read(conn.transport)

    def read(self, descriptor: object) -> None:
        """One reactor wakeup for C{descriptor}, losing it as the reactor would."""
        why = descriptor.doRead()  # type: ignore[attr-defined]
        if why is not None:
            self.reactor.removeReader(descriptor)
            self.reactor.removeWriter(descriptor)
            descriptor.connectionLost(Failure(why))  # type: ignore[attr-defined]

    def written(self, client: socket.socket) -> bytes | None:
        """What the client can read now without waiting (None: nothing yet)."""
        client.setblocking(False)
        out = b""
        while True:
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                return out or None
            if not chunk:
                return out + b"<EOF>"
            out += chunk

    def assertAnswered(self, client: socket.socket, status: int) -> tuple[dict[str, str], bytes]:
        """The client got one error response with C{status}, then end of file."""
        data = self.written(client)
        self.assertIsNotNone(data, "nothing was written to the client")
        assert data is not None
        self.assertTrue(data.endswith(b"<EOF>"), f"no EOF after the answer: {data!r}")
        got, headers, body = parse_response(data[: -len(b"<EOF>")])
        self.assertEqual(got, status, data)
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(int(headers["content-length"]), len(body))
        return headers, body

    def assertAnsweredKept(self, client: socket.socket, status: int, responses: int = 1) -> list[tuple[dict[str, str], bytes]]:
        """The client got C{responses} answers with C{status}, and the connection stays open."""
        self.reactor.advance(0)  # the transport sends what it wrote at the end of the iteration
        data = self.written(client)
        self.assertIsNotNone(data, "nothing was written to the client")
        assert data is not None
        self.assertFalse(data.endswith(b"<EOF>"), f"closed after a {status}: {data!r}")
        out = []
        for _ in range(responses):
            got, headers, rest = parse_response(data)
            self.assertEqual(got, status, data)
            self.assertNotIn("connection", headers)
            length = int(headers["content-length"])
            out.append((headers, rest[:length]))
            data = rest[length:]
        self.assertEqual(data, b"", "more than the expected answers")
        return out

    # -- service instances

    def instance(self, service: str = "hello", index: int = 0, pid: int | None = None) -> tuple[InstanceLink, socket.socket]:
        """A ready instance; returns its link and the instance's end of the channel."""
        pid = 100 + index if pid is None else pid
        mine, theirs = channel.socketpair()
        self.addCleanup(theirs.close)
        self.dispatcher.add_instance(service, index, pid, mine)
        (link,) = [
            link for link in self.dispatcher.pools[service].links.values()
            if (link.index, link.pid) == (index, pid) and link.channel.connected
        ]
        self.addCleanup(self._close_link, link)
        return link, theirs

    def hold(self, link: InstanceLink, count: int) -> list[int]:
        """Make C{link} hold C{count} more connections (records only: no sockets); their ids."""
        ids = []
        for _ in range(count):
            conn_id = next(self._fake_ids)
            self.dispatcher.ledger.handed(ConnectionRecord(conn_id, -conn_id, PEER, HOST, None, link))
            self.dispatcher.ledger.acknowledged(link, conn_id)
            ids.append(conn_id)
        return ids

    def ack(
        self, link: InstanceLink, theirs: socket.socket, ids: list[int], closed: list[int] = [], refused: list[int] = []
    ) -> None:
        theirs.send(encode({"k": handoff.ACK, "ids": ids, "closed": closed, "refused": refused})[0])
        self.read(link.channel)

    def handed(self, link: InstanceLink, theirs: socket.socket, data: bytes = b"") -> tuple[socket.socket, int, int]:
        """A client connection handed to C{link} and acknowledged: the client, its id, the instance's fd."""
        client, _ = self.connect(data or request())
        msg = self.receive(theirs)
        self.ack(link, theirs, [msg.meta["id"]])
        return client, msg.meta["id"], msg.fds[0]

    def back(self, link: InstanceLink, theirs: socket.socket, conn_id: int, fd: int, data: bytes, **meta: object) -> None:
        """The instance hands C{fd} back as connection C{conn_id} (saying C{meta} besides)."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        theirs.sendmsg([encode({**handoff.back_meta(conn_id), **meta}, data)[0]], anc)
        self.read(link.channel)

    def _close_link(self, link: InstanceLink) -> None:
        if link.channel.connected:
            link.channel.close()

    def receive(self, theirs: socket.socket) -> Message:
        msg = read_one_blocking(theirs, 2, limits.handoff(16384))
        for fd in msg.fds:
            self.addCleanup(_close_quietly, fd)
        return msg

    def nothing_for(self, theirs: socket.socket) -> None:
        theirs.setblocking(False)
        try:
            data = theirs.recv(65536)
        except BlockingIOError:
            return
        self.fail(f"the instance was sent {data!r}")


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class PickTests(DispatcherTestCase):
    """L{ServicePool.pick}: the least busy ready instance, rotating among equals."""

    def test_noInstance(self) -> None:
        self.assertIsNone(self.dispatcher.pools["hello"].pick())

    def test_leastBusy(self) -> None:
        links = [self.instance(index=i)[0] for i in range(3)]
        for link, active in zip(links, (3, 1, 2)):
            self.hold(link, active)
        pool = self.dispatcher.pools["hello"]
        self.assertEqual({pool.pick().index for _ in range(6)}, {1})  # type: ignore[union-attr]

    def test_rotatesAmongEquals(self) -> None:
        for i in range(3):
            self.instance(index=i)
        pool = self.dispatcher.pools["hello"]
        picks = [pool.pick().index for _ in range(6)]  # type: ignore[union-attr]
        self.assertEqual(sorted(picks[:3]), [0, 1, 2])
        self.assertEqual(picks[3:], picks[:3])

    def test_equalsOnlyAmongTheLeastBusy(self) -> None:
        links = [self.instance(index=i)[0] for i in range(3)]
        self.hold(links[0], 5)
        pool = self.dispatcher.pools["hello"]
        picks = {pool.pick().index for _ in range(6)}  # type: ignore[union-attr]
        self.assertEqual(picks, {1, 2})

    def test_sameInstanceAgain(self) -> None:
        """A second channel for the same instance replaces the first."""
        old, old_theirs = self.instance(index=0, pid=1)
        new, _ = self.instance(index=0, pid=1)
        self.assertFalse(old.channel.connected)
        self.assertEqual(list(self.dispatcher.pools["hello"].links.values()), [new])
        self.assertIs(self.dispatcher.pools["hello"].pick(), new)
        old_theirs.settimeout(2)
        self.assertEqual(old_theirs.recv(100), b"")  # the old channel was closed

    def test_unknownService(self) -> None:
        mine, theirs = channel.socketpair()
        self.addCleanup(theirs.close)
        self.dispatcher.add_instance("nope", 0, 1, mine)
        self.assertEqual(mine.fileno(), -1)
        self.assertNotIn("nope", self.dispatcher.pools)


class HeadErrorTests(DispatcherTestCase):
    """Requests the dispatcher answers itself."""

    def test_headDeadline(self) -> None:
        client, conn = self.connect(b"GET /hello HTTP/1.1\r\nHost: exa")
        self.reactor.advance(4.9)
        self.assertIsNone(self.written(client))
        self.send(client, conn, b"mple.com\r\nX-Drip: 1")  # bytes do not extend the deadline
        self.reactor.advance(0.1)
        headers, body = self.assertAnswered(client, 408)
        self.assertIn(b"408 Request Timeout", body)
        self.assertNotIn(conn, self.dispatcher.reading)

    def test_deadlineWithNoBytes(self) -> None:
        client, conn = self.connect()
        self.reactor.advance(5)
        self.assertAnswered(client, 408)

    def test_malformed(self) -> None:
        client, conn = self.connect(b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertAnswered(client, 400)
        self.assertNotIn(conn, self.dispatcher.reading)
        # The head deadline was cancelled: only the linger timer is left.
        self.assertEqual([c.getTime() for c in self.reactor.getDelayedCalls()], [LINGER_SECONDS])

    def test_malformedInPieces(self) -> None:
        client, conn = self.connect(b"GET /hello HTTP/1.1\r\n")
        self.assertIsNone(self.written(client))
        self.send(client, conn, b"Host: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        self.assertAnswered(client, 400)

    def test_unknownPath(self) -> None:
        client, conn = self.connect(request("/nowhere"))
        [(headers, body)] = self.assertAnsweredKept(client, 404)
        self.assertNotIn("retry-after", headers)

    def test_unknownPathConnectionClose(self) -> None:
        client, conn = self.connect(request("/nowhere", extra="Connection: close\r\n"))
        self.assertAnswered(client, 404)

    def test_prefixIsNotAPath(self) -> None:
        client, conn = self.connect(request("/helloworld"))
        self.assertAnsweredKept(client, 404)

    def test_headRequestErrorHasNoBody(self) -> None:
        client, conn = self.connect(request("/nowhere", method="HEAD", extra="Connection: close\r\n"))
        data = self.written(client)
        assert data is not None
        self.assertTrue(data.startswith(b"HTTP/1.1 404 "))
        self.assertTrue(data.endswith(b"\r\n\r\n<EOF>"), data)
        self.assertGreater(int(parse_response(data)[1]["content-length"]), 0)

    def test_bodyOverMaxBody(self) -> None:
        client, conn = self.connect(request("/hello", method="POST", extra="Content-Length: 101\r\n"))
        self.assertAnswered(client, 413)
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [])

    def test_bodyAtMaxBodyIsRouted(self) -> None:
        client, conn = self.connect(request("/hello", method="POST", extra="Content-Length: 100\r\n"))
        self.assertIsNone(self.written(client))
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [conn])
        self.assertEqual(conn.service, "hello")

    def test_maxBodyIsPerService(self) -> None:
        client, conn = self.connect(request("/form", method="POST", extra="Content-Length: 101\r\n"))
        self.assertIsNone(self.written(client))
        self.assertEqual(list(self.dispatcher.pools["form"].queue), [conn])

    def test_answerDiscardsWhatTheClientStillSends(self) -> None:
        """After an error answer the client may keep sending; it is read and dropped."""
        client, conn = self.connect(request("/hello", method="POST", extra="Content-Length: 5000\r\n"))
        self.assertAnswered(client, 413)
        client.sendall(b"x" * 5000)
        self.assertIn(conn.transport, self.reactor.getReaders())
        self.read(conn.transport)
        self.assertTrue(conn.transport.connected)
        client.close()
        self.read(conn.transport)
        self.assertFalse(conn.transport.connected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_clientGoneWhileReadingHead(self) -> None:
        client, conn = self.connect(b"GET /hel")
        client.close()
        self.read(conn.transport)
        self.assertTrue(conn.done)
        self.assertNotIn(conn, self.dispatcher.reading)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class QueueTests(DispatcherTestCase):
    """No ready instance: queue for a bounded time and count, then 503."""

    def test_queueBound(self) -> None:
        first, c1 = self.connect(request())
        second, c2 = self.connect(request())
        self.assertIsNone(self.written(first))
        self.assertIsNone(self.written(second))
        third, c3 = self.connect(request())
        headers, body = self.assertAnswered(third, 503)
        self.assertEqual(headers["retry-after"], "7")
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [c1, c2])
        self.assertIsNone(self.written(first))

    def test_queueMaxZero(self) -> None:
        self.configure(queue_max=0)
        client, conn = self.connect(request())
        headers, _ = self.assertAnswered(client, 503)
        self.assertEqual(headers["retry-after"], "7")

    def test_queueTimeout(self) -> None:
        client, conn = self.connect(request())
        self.reactor.advance(5)  # the head deadline no longer applies
        self.assertIsNone(self.written(client))
        self.reactor.advance(4.9)
        self.assertIsNone(self.written(client))
        self.reactor.advance(0.1)
        headers, body = self.assertAnswered(client, 503)
        self.assertEqual(headers["retry-after"], "7")
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [])
        self.assertNotIn(conn, self.dispatcher.reading)

    def test_expiredMakesRoom(self) -> None:
        a, _ = self.connect(request())
        self.reactor.advance(6)
        b, _ = self.connect(request())
        self.reactor.advance(4)  # a expires
        self.assertAnswered(a, 503)
        c, c3 = self.connect(request())
        self.assertIsNone(self.written(c))
        self.assertEqual(len(self.dispatcher.pools["hello"].queue), 2)

    def test_queuedHandedWhenInstanceReady(self) -> None:
        client, conn = self.connect(request() + b"next bytes")
        link, theirs = self.instance()
        msg = self.receive(theirs)
        self.assertEqual(msg.kind, handoff.CONN)
        self.assertEqual(msg.payload, request() + b"next bytes")
        self.assertEqual(msg.meta["peer"], ["tcp", "192.0.2.7", 40001])
        self.assertEqual(msg.meta["host"], ["tcp", "192.0.2.1", 80])
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [])
        self.assertEqual(link.pending, {msg.meta["id"]: conn})
        self.assertEqual(link.active, 1)
        # The queue timer is gone: no 503 later.
        self.reactor.advance(60)
        self.assertIsNone(self.written(client))
        self.assertTrue(conn.transport.connected)


class HandoffTests(DispatcherTestCase):
    """Handing connections to instances and taking them back."""

    def test_handoffAndAck(self) -> None:
        """
        The instance gets the very connection and the bytes already read; on
        its ack the dispatcher drops its copy without shutting the connection
        down.
        """
        link, theirs = self.instance()
        client, conn = self.connect(request())
        msg = self.receive(theirs)
        self.assertEqual(self.dispatcher.handed_off, 1)
        self.assertNotIn(conn, self.dispatcher.reading)
        self.assertEqual(msg.payload, request())
        served = socket.socket(fileno=os.dup(msg.fds[0]))
        self.addCleanup(served.close)
        self.assertEqual(served.getpeername(), client.getsockname())
        self.ack(link, theirs, [msg.meta["id"]])
        self.assertTrue(conn.transport.detached)
        self.assertEqual(conn.transport.socket.fileno(), -1)
        self.assertEqual(link.pending, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # Both directions still work between the client and the instance.
        served.sendall(b"HTTP/1.1 200 OK\r\n")
        client.settimeout(2)
        self.assertEqual(client.recv(100), b"HTTP/1.1 200 OK\r\n")
        client.sendall(b"more")
        served.settimeout(2)
        self.assertEqual(served.recv(100), b"more")

    def test_leastBusyGetsTheConnection(self) -> None:
        busy, busy_theirs = self.instance(index=0)
        idle, idle_theirs = self.instance(index=1)
        self.hold(busy, 4)
        self.connect(request())
        msg = self.receive(idle_theirs)
        self.assertEqual(msg.kind, handoff.CONN)
        self.nothing_for(busy_theirs)
        self.assertEqual((busy.active, idle.active), (4, 1))

    def test_ackClosedBalances(self) -> None:
        """An instance's connections count until it reports them closed, and only its own."""
        link, theirs = self.instance()
        other, _ = self.instance(index=1)
        others = self.hold(other, 5)
        ids = []
        for _ in range(3):
            self.connect(request())
            ids.append(self.receive(theirs).meta["id"])
        self.assertEqual(link.active, 3)
        self.ack(link, theirs, ids)
        self.assertEqual(link.active, 3)  # held, still counted
        self.ack(link, theirs, [], closed=[ids[0], *others])  # it cannot close another's
        self.assertEqual((link.active, other.active), (2, 5))
        self.ack(link, theirs, [], closed=ids)
        self.assertEqual(link.active, 0)

    def test_closedBeforeAckIgnored(self) -> None:
        """A connection still waiting for its ack cannot be reported closed (it would stop counting)."""
        link, theirs = self.instance()
        self.connect(request())
        conn_id = self.receive(theirs).meta["id"]
        self.ack(link, theirs, [], closed=[conn_id])
        self.assertEqual(link.active, 1)
        self.assertIn(conn_id, link.pending)

    def test_refusedAnsweredHere(self) -> None:
        """A connection the instance refuses (at its cap, out of descriptors) gets 503 from the dispatcher."""
        link, theirs = self.instance()
        client, conn = self.connect(request())
        conn_id = self.receive(theirs).meta["id"]
        self.ack(link, theirs, [], refused=[conn_id])
        headers, _ = self.assertAnswered(client, 503)
        self.assertEqual(headers["retry-after"], "7")
        self.assertEqual((link.active, link.pending), (0, {}))

    def test_capReportedByInstance(self) -> None:
        """An instance that says it takes fewer connections (its descriptor limit) gets no more."""
        link, theirs = self.instance()
        theirs.send(encode({"k": handoff.STATS, "conn_cap": 1})[0])
        self.read(link.channel)
        self.connect(request())
        self.receive(theirs)
        _, queued = self.connect(request())
        self.nothing_for(theirs)
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [queued])

    def test_instanceGoneBeforeAck(self) -> None:
        """Never acknowledged means never touched: it goes to the next instance."""
        link, theirs = self.instance(index=0)
        client, conn = self.connect(request())
        self.receive(theirs)
        theirs.close()
        self.read(link.channel)
        self.assertNotIn(link, self.dispatcher.pools["hello"].links.values())
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [conn])
        _, other = self.instance(index=1)
        msg = self.receive(other)
        self.assertEqual(msg.payload, request())
        served = socket.socket(fileno=os.dup(msg.fds[0]))
        self.addCleanup(served.close)
        self.assertEqual(served.getpeername(), client.getsockname())

    def test_handBack(self) -> None:
        """A connection handed back is routed again; the instance gets a backack."""
        link, theirs = self.instance()
        client, conn_id, fd = self.handed(link, theirs)
        self.back(link, theirs, conn_id, fd, request("/nowhere"))
        self.assertAnsweredKept(client, 404)
        backack = self.receive(theirs)
        self.assertEqual((backack.kind, backack.meta["ids"], backack.meta["refused"]), (handoff.BACKACK, [conn_id], []))
        self.assertEqual((link.active, len(self.dispatcher.ledger)), (0, 0))

    def test_handBackNotASocket(self) -> None:
        """
        An instance that hands back something that is not a socket costs the
        dispatcher nothing: the fd is closed and the rest of the batch is
        still handled.  (Fails while adopt() lets socket.socket's OSError
        escape, leaking the fd and dropping the batch's later messages.)
        """
        link, theirs = self.instance()
        self.connect(request())
        conn_id = self.receive(theirs).meta["id"]
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))]
        theirs.sendmsg([encode(handoff.back_meta(conn_id), request())[0]], anc)
        os.close(w)
        theirs.send(encode({"k": handoff.ACK, "ids": [conn_id]})[0])
        try:
            self.read(link.channel)
        except OSError as e:
            self.fail(f"reading the channel raised {e!r}")
        os.set_blocking(r, False)
        self.assertEqual(os.read(r, 1), b"", "the passed fd is still open in the dispatcher")
        self.assertEqual(link.pending, {})

    def test_unixListenerConnectionIsHandedOff(self) -> None:
        """
        A connection accepted on a Unix listener reaches the instance with its
        addresses.  (Fails while address_to_wire puts bytes in the JSON: the
        handoff raises, and Dispatcher.hand re-assigns to the same instance
        until the recursion limit.)
        """
        # A short path: sun_path holds 107 bytes, trial's temp dirs can be longer.
        tmp = tempfile.mkdtemp(prefix="okws-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "l.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(5)
        self.dispatcher.listen([listener])
        self.addCleanup(self.dispatcher.acceptors[0].close)
        link, theirs = self.instance()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        client.connect(path)
        self.dispatcher.acceptors[0].doRead()
        (conn,) = self.dispatcher.reading
        self.addCleanup(self._abort, conn)
        self.assertEqual(conn.transport.getHost(), UNIXAddress(path))
        client.sendall(request())
        self.read(conn.transport)
        msg = self.receive(theirs)
        self.assertEqual(msg.meta["host"], ["unix", path])
        self.assertEqual(msg.meta["peer"], ["unix", None])
        self.assertEqual(link.active, 1)


class HandbackCheckTests(DispatcherTestCase):
    """
    What a compromised instance sends is checked, never trusted: a handback
    must be a socket the dispatcher handed to that very instance and has not
    had back since, the facts about it are the dispatcher's own, and every
    refusal is logged, counted and, past a limit or for anything the channel
    itself refuses, costs the instance its channel (the launcher is told).
    """

    def setUp(self) -> None:
        super().setUp()
        self.told: list[dict[str, object]] = []
        self.dispatcher.to_launcher = self.told.append

    def assertRefused(self, link: InstanceLink, theirs: socket.socket, conn_id: int, why: str, events: list) -> None:
        backack = self.receive(theirs)
        self.assertEqual((backack.kind, backack.meta["ids"], backack.meta["refused"]), (handoff.BACKACK, [], [conn_id]))
        self.nothing_for(theirs)  # nothing was routed back to it
        self.assertEqual(self.dispatcher.pools[link.service].misbehaviour, 1)
        [event] = [e for e in events if "misbehaved" in e.get("log_format", "")]
        self.assertEqual((event["link"], event["pid"]), (link.name, link.pid))
        self.assertIn(why, event["why"])
        self.assertIn(f'okws_misbehaviour_total{{service="{link.service}"}} 1', self.dispatcher.metrics())

    def forged(self, data: bytes) -> tuple[socket.socket, socket.socket]:
        """A socket pair of the instance's own, C{data} waiting in it as a client's request."""
        mine, sent = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(sent.close)
        return mine, sent

    def test_forgedSocketRefused(self) -> None:
        """Its own socket pair under the id of a connection it really holds, claiming another
        client and TLS: refused, closed, nothing routed, and the real connection is still its."""
        link, theirs = self.instance()
        _client, conn_id, _fd = self.handed(link, theirs)
        mine, sent = self.forged(b"")
        tls = {"sni": "bank.example", "cipher": "TLS_AES_256_GCM_SHA384", "version": "TLSv1.3", "alpn": ""}
        with capturedLogs() as events:
            self.back(link, theirs, conn_id, sent.fileno(), request("/hello"), peer=["tcp", "6.6.6.6", 4444], tls=tls)
        sent.close()
        mine.settimeout(2)
        self.assertEqual(mine.recv(100), b"", "the forged socket is still open in the dispatcher")
        self.assertRefused(link, theirs, conn_id, "is not that connection", events)
        self.assertIs(self.dispatcher.ledger.get(conn_id).holder, link)  # type: ignore[union-attr]
        self.assertEqual(link.active, 1)

    def test_unknownIdRefused(self) -> None:
        link, theirs = self.instance()
        _mine, sent = self.forged(b"")
        with capturedLogs() as events:
            self.back(link, theirs, 424242, sent.fileno(), request("/hello"))
        self.assertRefused(link, theirs, 424242, "not held by any instance", events)

    def test_repeatedHandbackRefused(self) -> None:
        """A genuine handback is taken once; the same again is refused."""
        link, theirs = self.instance()
        client, conn_id, fd = self.handed(link, theirs)
        self.back(link, theirs, conn_id, fd, request("/nowhere"))
        self.assertAnsweredKept(client, 404)
        self.assertEqual(self.receive(theirs).meta["ids"], [conn_id])
        with capturedLogs() as events:
            self.back(link, theirs, conn_id, fd, request("/hello"))
        self.assertRefused(link, theirs, conn_id, "not held by any instance", events)

    def test_anotherInstancesConnectionRefused(self) -> None:
        """The very socket another instance holds, under its id: refused, and it stays that instance's."""
        victim, victim_theirs = self.instance(index=0)
        thief, thief_theirs = self.instance(index=1)
        self.hold(thief, 1)  # the next connection goes to the victim
        _client, conn_id, fd = self.handed(victim, victim_theirs)
        with capturedLogs() as events:
            self.back(thief, thief_theirs, conn_id, fd, request("/hello"))
        self.assertRefused(thief, thief_theirs, conn_id, "held by another instance", events)
        self.assertIs(self.dispatcher.ledger.get(conn_id).holder, victim)  # type: ignore[union-attr]
        self.nothing_for(victim_theirs)

    def test_unacknowledgedRefused(self) -> None:
        """A connection still waiting for its ack cannot come back: the dispatcher holds it too."""
        link, theirs = self.instance()
        self.connect(request())
        msg = self.receive(theirs)
        with capturedLogs() as events:
            self.back(link, theirs, msg.meta["id"], msg.fds[0], request("/hello"))
        self.assertRefused(link, theirs, msg.meta["id"], "never acknowledged", events)
        self.assertIn(msg.meta["id"], link.pending)

    def test_factsComeFromTheRecord(self) -> None:
        """A genuine handback that claims another client and TLS: the next instance sees the real ones."""
        link, theirs = self.instance()
        client, server = socket.socketpair()
        self.addCleanup(client.close)
        tls = {"sni": "", "cipher": "TLS_AES_128_GCM_SHA256", "version": "TLSv1.3", "alpn": "http/1.1"}
        before = set(self.dispatcher.reading)
        self.dispatcher.adopt(server.detach(), PEER, HOST, b"", tls)
        (conn,) = set(self.dispatcher.reading) - before
        self.addCleanup(self._abort, conn)
        self.send(client, conn, request())
        msg = self.receive(theirs)
        self.ack(link, theirs, [msg.meta["id"]])
        forged_tls = {"sni": "bank.example", "cipher": "NULL", "version": "TLSv1.3", "alpn": ""}
        self.back(link, theirs, msg.meta["id"], msg.fds[0], request(), peer=["tcp", "6.6.6.6", 4444], tls=forged_tls)
        self.assertEqual(self.receive(theirs).kind, handoff.BACKACK)
        again = self.receive(theirs)
        self.assertEqual(again.kind, handoff.CONN)
        self.assertEqual((again.meta["peer"], again.meta["tls"]), (["tcp", PEER.host, PEER.port], tls))
        self.assertEqual(self.dispatcher.pools["hello"].misbehaviour, 0)

    def test_fdsWhereNoneBelongClosed(self) -> None:
        """An ack or stats message carrying descriptors: they are closed, and it counts."""
        link, theirs = self.instance()
        pipes = [os.pipe() for _ in range(4)]
        for r, _w in pipes:
            self.addCleanup(os.close, r)
        for kind, half in ((handoff.ACK, pipes[:2]), (handoff.STATS, pipes[2:])):
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w for _r, w in half]))]
            theirs.sendmsg([encode({"k": kind, "ids": []})[0]], anc)
        for _r, w in pipes:
            os.close(w)
        self.read(link.channel)
        for r, _w in pipes:
            os.set_blocking(r, False)
            self.assertEqual(os.read(r, 1), b"", "a descriptor that came with an ack or stats is still open")
        self.assertEqual(self.dispatcher.pools["hello"].misbehaviour, 2)
        self.assertTrue(link.channel.connected)

    def test_tooManyRefusalsCutTheInstanceOff(self) -> None:
        link, theirs = self.instance()
        client, conn = self.connect(request())
        self.receive(theirs)
        for _ in range(MISBEHAVIOUR_LIMIT):
            theirs.send(encode({"k": "what"})[0])
            self.read(link.channel)
        self.assertFalse(link.channel.connected)
        self.assertNotIn(link, self.dispatcher.pools["hello"].links.values())
        [lost] = self.told
        self.assertEqual((lost["k"], lost["pid"]), ("lost", link.pid))
        self.assertIn("refused messages", str(lost["why"]))
        self.assertEqual(self.dispatcher.pools["hello"].misbehaviour, MISBEHAVIOUR_LIMIT)
        # What it had not acknowledged goes to another instance.
        self.assertEqual(list(self.dispatcher.pools["hello"].queue), [conn])
        self.assertEqual(len(self.dispatcher.ledger), 0)

    def test_garbageClosesTheChannelAndTellsTheLauncher(self) -> None:
        link, theirs = self.instance()
        theirs.send(b"\xff" * 100)
        self.read(link.channel)
        self.assertFalse(link.channel.connected)
        [lost] = self.told
        self.assertEqual((lost["k"], lost["pid"]), ("lost", link.pid))
        self.assertEqual(set(lost), {"k", "pid", "why"})
        self.assertIn('okws_misbehaviour_total{service="hello"} 1', self.dispatcher.metrics())

    def test_oversizedRefusedBeforeBuffering(self) -> None:
        """A message announcing 10^12 bytes is refused at its first datagram."""
        link, theirs = self.instance()
        [first] = encode({"k": handoff.STATS, "more": 10**12}, b"x")
        theirs.send(first)
        self.read(link.channel)
        self.assertFalse(link.channel.connected)
        self.assertIn("over this channel's limit", str(self.told[0]["why"]))

    def test_endlessFullMessagesLeaveNothingBehind(self) -> None:
        """Complete messages at the limit, one after another: each is dropped, none is kept."""
        link, theirs = self.instance()
        size = limits.handoff_payload(self.dispatcher.config.max_head)
        for datagram in encode({"k": handoff.STATS}, b"x" * size):
            theirs.send(datagram)
        self.read(link.channel)
        self.read(link.channel)
        self.assertTrue(link.channel.connected)
        self.assertIsNone(link.channel._assembler.partial)
        for datagram in encode({"k": handoff.STATS}, b"x" * (size + 1)):
            theirs.send(datagram)
        self.read(link.channel)
        self.assertFalse(link.channel.connected)

    def test_peerGoneTellsTheLauncher(self) -> None:
        link, theirs = self.instance()
        theirs.close()
        self.read(link.channel)
        [lost] = self.told
        self.assertEqual((lost["pid"], lost["why"]), (link.pid, "handoff:hello.0: peer closed"))

    def test_retiringOrReplacedTellsNothing(self) -> None:
        """An instance told to retire exits; a second channel replaces the first: neither is news."""
        link, theirs = self.instance(index=0, pid=1)
        self.instance(index=0, pid=1)
        self.assertFalse(link.channel.connected)
        retiring, retiring_theirs = self.instance(index=1, pid=2)
        self.dispatcher.retire(2)
        retiring_theirs.close()
        self.read(retiring.channel)
        self.assertEqual(self.told, [])

    def test_stoppingTellsNothing(self) -> None:
        link, theirs = self.instance()
        self.dispatcher.stop()
        theirs.close()
        self.read(link.channel)
        self.assertEqual(self.told, [])

    def test_tlsFrontGarbageTellsTheLauncher(self) -> None:
        mine, theirs = channel.socketpair()
        self.addCleanup(theirs.close)
        self.dispatcher.peer("tls", {"k": "peer", "channel": "tls", "pid": 77}, mine)
        (front,) = self.dispatcher.tls_fronts
        theirs.send(b"garbage")
        self.read(front)
        self.assertEqual(self.dispatcher.tls_fronts, set())
        self.assertEqual(self.told[0]["pid"], 77)


class AcceptTests(DispatcherTestCase):
    def test_acceptTCP(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        self.dispatcher.listen([listener])
        acceptor = self.dispatcher.acceptors[0]
        self.addCleanup(acceptor.close)
        self.assertIn(acceptor, self.reactor.getReaders())
        client = socket.create_connection(listener.getsockname(), timeout=2)
        self.addCleanup(client.close)
        self.assertTrue(select.select([listener], [], [], 2)[0])
        acceptor.doRead()
        (conn,) = self.dispatcher.reading
        self.addCleanup(self._abort, conn)
        self.assertEqual(conn.transport.getPeer(), IPv4Address("TCP", "127.0.0.1", client.getsockname()[1]))
        self.assertEqual(conn.transport.getHost(), IPv4Address("TCP", "127.0.0.1", listener.getsockname()[1]))
        self.assertTrue(conn.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        # The acceptor builds the socket object itself (no socket.accept()): what the kernel says of it.
        accepted = conn.transport.socket
        self.assertEqual((accepted.family, accepted.type), (socket.AF_INET, socket.SOCK_STREAM))
        self.assertEqual(accepted.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), socket.SOCK_STREAM)
        self.assertFalse(os.get_inheritable(accepted.fileno()))  # close-on-exec, as accept4 made it
        self.assertFalse(os.get_blocking(accepted.fileno()))
        acceptor.doRead()  # nothing more queued: returns quietly
        self.assertEqual(len(self.dispatcher.reading), 1)


class StopTests(DispatcherTestCase):
    def test_stop(self) -> None:
        stopped: list[bool] = []
        self.dispatcher = Dispatcher(self.reactor, site(), stopped=lambda: stopped.append(True))
        queued, _ = self.connect(request())
        reading, conn = self.connect(b"GET /hel")
        self.dispatcher.stop()
        headers, body = self.assertAnswered(queued, 503)
        self.assertEqual(headers["retry-after"], "7")
        self.assertFalse(conn.transport.connected)
        self.assertEqual(stopped, [True])
        # A connection handed back now is closed, not routed.
        late, server = socket.socketpair()
        self.addCleanup(late.close)
        self.dispatcher.adopt(server.detach(), PEER, HOST, request())
        self.assertEqual(self.written(late), b"<EOF>")
        self.assertEqual(self.dispatcher.reading, set())
        self.assertEqual(stopped, [True])

    def test_stopWaitsForTheLastAck(self) -> None:
        """
        Stopping with a handoff in transit: stopped once it is acknowledged.
        (Fails while an ack never re-checks whether the dispatcher may stop:
        it stops only when some later event happens, e.g. the instance exits.)
        """
        stopped: list[bool] = []
        self.dispatcher = Dispatcher(self.reactor, site(), stopped=lambda: stopped.append(True))
        link, theirs = self.instance()
        self.connect(request())
        conn_id = self.receive(theirs).meta["id"]
        self.dispatcher.stop()
        self.assertEqual(stopped, [])
        theirs.send(encode({"k": handoff.ACK, "ids": [conn_id]})[0])
        self.read(link.channel)
        self.assertEqual(link.pending, {})
        self.assertEqual(stopped, [True])

    def test_instanceGoneWhileStopping(self) -> None:
        """
        Stopping, an instance exits without acknowledging its handoff: the
        client is answered 503 before the dispatcher stops.  (Fails while
        link_lost re-queues the connection although the dispatcher is
        stopping: it then stops with the connection sitting in the queue,
        unanswered.)
        """
        stopped: list[bool] = []
        self.dispatcher = Dispatcher(self.reactor, site(), stopped=lambda: stopped.append(True))
        link, theirs = self.instance()
        client, conn = self.connect(request())
        self.receive(theirs)
        self.dispatcher.stop()
        self.assertEqual(stopped, [])
        theirs.close()
        self.read(link.channel)
        self.assertEqual(stopped, [True])
        headers, _ = self.assertAnswered(client, 503)
        self.assertEqual(headers["retry-after"], "7")


class KeepAliveTests(DispatcherTestCase):
    """A 404 or C{OPTIONS *} leaves a kept-alive connection open; answers where framing is in doubt close it."""

    def test_nextRequestIsRouted(self) -> None:
        link, theirs = self.instance()
        client, conn = self.connect(request("/favicon.ico"))
        self.assertAnsweredKept(client, 404)
        self.assertIn(conn, self.dispatcher.reading)
        self.send(client, conn, request())
        msg = self.receive(theirs)
        self.assertEqual(msg.payload, request(), "only the second request's bytes go to the service")

    def test_pipelined(self) -> None:
        """
        Pipelined after a 404, more answers than a socket buffer holds: each
        answered, and the last request handed off only once every answer is
        in the kernel (the service writes to the socket itself: its answer
        must not overtake ours).  (Fails while the next request is routed at
        once: the service gets it while 404s still wait in the dispatcher.)
        """
        link, theirs = self.instance()
        count = 800
        client, conn = self.connect(request("/nope") * count + request())
        got = b""
        for _ in range(10 * count):
            self.reactor.advance(0)
            got += self.written(client) or b""
            if got.count(b"HTTP/1.1 404 ") == count:
                break
            self.nothing_for(theirs)
            # The client reads; the kernel takes more.
            self.assertIn(conn.transport, self.reactor.getWriters(), "the dispatcher stopped writing")
            conn.transport.doWrite()
        self.assertEqual(got.count(b"HTTP/1.1 404 "), count)
        self.assertNotIn(b"Connection: close", got)
        self.assertEqual(self.receive(theirs).payload, request())

    def test_oneRecordPerAnswer(self) -> None:
        records: list[dict] = []
        self.dispatcher.records = type("R", (), {"emit": staticmethod(records.append)})()  # type: ignore[assignment]
        client, conn = self.connect(request("/a") + request("/b"))
        self.assertAnsweredKept(client, 404, responses=2)
        self.assertEqual([r["request"] for r in records], ["GET /a HTTP/1.1", "GET /b HTTP/1.1"])
        self.assertEqual(self.dispatcher.open_connections, 1)

    def test_options(self) -> None:
        client, conn = self.connect(request("*", method="OPTIONS"))
        [(headers, body)] = self.assertAnsweredKept(client, 200)
        self.assertEqual(body, b"")
        self.assertIn("GET", headers["allow"])

    def test_idleCloses(self) -> None:
        """Kept alive and nothing more comes: closed after keepalive_timeout, with no answer."""
        self.configure(keepalive_timeout=3)
        client, conn = self.connect(request("/nope"))
        self.assertAnsweredKept(client, 404)
        self.reactor.advance(2.9)
        self.assertTrue(conn.transport.connected)
        self.reactor.advance(0.2)
        self.reactor.advance(0)
        self.assertEqual(self.written(client), b"<EOF>")
        self.assertNotIn(conn, self.dispatcher.reading)

    def test_startedRequestGetsHeadTimeout(self) -> None:
        """Once the next request's first byte arrives, its head has head_timeout (408), as any head."""
        self.configure(keepalive_timeout=60)
        client, conn = self.connect(request("/nope"))
        self.assertAnsweredKept(client, 404)
        self.send(client, conn, b"GET /hel")
        self.reactor.advance(5)
        self.assertAnswered(client, 408)

    def test_closes(self) -> None:
        """Every answer whose framing is in doubt, or that the client or the limits end, closes."""
        cases = {
            "a body": request("/nope", method="POST", extra="Content-Length: 3\r\n") + b"abc",
            "a chunked body": request("/nope", method="POST", extra="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
            "HTTP/1.0": b"GET /nope HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            "Connection: close": request("/nope", extra="Connection: close\r\n"),
            "400": b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "413": request("/hello", method="POST", extra="Content-Length: 101\r\n"),
        }
        for why, data in cases.items():
            client, conn = self.connect(data)
            data = self.written(client)
            self.assertTrue(data is not None and data.endswith(b"<EOF>"), f"{why}: {data!r}")
            self.assertIn(b"\r\nConnection: close\r\n", data, why)

    def test_maxRequestsPerConnection(self) -> None:
        self.configure(max_requests_per_connection=2)
        client, conn = self.connect(request("/a"))
        self.assertAnsweredKept(client, 404)
        self.send(client, conn, request("/b"))
        self.assertAnswered(client, 404)

    def test_drainingCloses(self) -> None:
        link, theirs = self.instance()
        self.dispatcher.drain()
        client, server = socket.socketpair()
        self.addCleanup(client.close)
        conn = HeadConnection(self.dispatcher, self.dispatcher.limits, 5)
        from okws_twisted.wire.transport import SocketTransport

        SocketTransport(self.reactor, server, conn, PEER, HOST).start(request("/nope"))
        self.assertAnswered(client, 404)


class HealthTests(DispatcherTestCase):
    """C{/health}: C{[okws] health = all} (every service) or C{any}; never healthy while draining."""

    def status(self, **services: dict) -> None:
        self.dispatcher.control("status", {"services": services})

    def test_all(self) -> None:
        self.assertEqual(self.dispatcher.health(), (503, "unhealthy\nstarting: form\nstarting: hello"))
        self.instance("hello")
        self.instance("form")
        self.assertEqual(self.dispatcher.health(), (200, "ok"))

    def test_failedServiceUnderAll(self) -> None:
        """
        A service whose crash budget is spent makes the host unhealthy.
        (Fails while health ignores failed services: 200 with a service that 503s.)
        """
        self.instance("hello")
        self.status(form={"failed": True})
        self.assertEqual(self.dispatcher.health(), (503, "unhealthy\nfailed: form"))

    def test_any(self) -> None:
        self.configure(health="any")
        self.status(form={"failed": True})
        self.assertEqual(self.dispatcher.health()[0], 503)
        self.instance("hello")
        self.assertEqual(self.dispatcher.health(), (200, "ok\nfailed: form"))

    def test_lazyNotStartedIsHealthy(self) -> None:
        self.instance("hello")
        self.status(form={"dormant": True})
        self.assertEqual(self.dispatcher.health(), (200, "ok"))

    def test_retiringInstanceIsNotReady(self) -> None:
        link, _ = self.instance("hello")
        self.instance("form", pid=200)
        self.dispatcher.retire(link.pid)
        self.assertEqual(self.dispatcher.health(), (503, "unhealthy\nstarting: hello"))

    def test_draining(self) -> None:
        self.configure(health="any")
        self.instance("hello")
        self.dispatcher.drain()
        self.assertEqual(self.dispatcher.health(), (503, "draining"))


class StampTests(DispatcherTestCase):
    """Every answer the dispatcher writes carries one Date (formatted once a second) and the site's Server."""

    def answers(self) -> list[bytes]:
        out = []
        for data in (request("/nope"), b"GET /a HTTP/1.1\r\n\r\n", request("*", method="OPTIONS"),
                     request("/hello", method="POST", extra="Content-Length: 101\r\n"), b"GET / HTTP/2.0\r\n\r\n"):
            client, conn = self.connect(data)
            self.reactor.advance(0)
            written = self.written(client)
            assert written is not None
            out.append(written)
        return out

    def test_dateAndServer(self) -> None:
        self.reactor.advance(784111777.5)
        for data in self.answers():
            head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
            self.assertEqual(head[1], b"Date: Sun, 06 Nov 1994 08:49:37 GMT", data)
            self.assertEqual(head[2], b"Server: okws-twisted", data)

    def test_noServer(self) -> None:
        self.configure(server_header="")
        for data in self.answers():
            self.assertNotIn(b"\r\nServer:", data)
            self.assertIn(b"\r\nDate: ", data)

    def test_ownServer(self) -> None:
        self.configure(server_header="acme")
        for data in self.answers():
            self.assertIn(b"\r\nServer: acme\r\n", data)


class ProxyTests(DispatcherTestCase):
    """Listeners marked C{haproxy:}: a PROXY header first, from trusted addresses only."""

    def setUp(self) -> None:
        super().setUp()
        self.configure(proxy_trusted="127.0.0.1 ::1")

    def proxied(self, trusted: str | None = None) -> tuple[socket.socket, HeadConnection]:
        """A client on a PROXY listener, accepted from 127.0.0.1."""
        if trusted is not None:
            self.configure(proxy_trusted=trusted)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        self.dispatcher.listen([listener], [True])
        acceptor = self.dispatcher.acceptors[0]
        self.addCleanup(acceptor.close)
        client = socket.create_connection(listener.getsockname(), timeout=2)
        self.addCleanup(client.close)
        self.assertTrue(select.select([listener], [], [], 2)[0])
        acceptor.doRead()
        conns = list(self.dispatcher.reading)
        if not conns:
            return client, None  # type: ignore[return-value]
        (conn,) = conns
        self.addCleanup(self._abort, conn)
        return client, conn

    def assertClosedSilently(self, client: socket.socket) -> None:
        client.settimeout(2)
        self.assertEqual(client.recv(100), b"")

    def test_v1AddressReachesTheInstance(self) -> None:
        link, theirs = self.instance()
        client, conn = self.proxied()
        self.send(client, conn, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n" + request())
        msg = self.receive(theirs)
        self.assertEqual(msg.payload, request())
        self.assertEqual(msg.meta["peer"], ["tcp", "203.0.113.7", 5555])
        # The local address stays the socket's own.
        self.assertEqual(msg.meta["host"][1], "127.0.0.1")

    def test_v2InPieces(self) -> None:
        from tests.dispatcher.test_proxyproto import v2

        link, theirs = self.instance()
        client, conn = self.proxied()
        data = v2(family=0x21) + request()
        for i in range(0, len(data), 7):
            self.send(client, conn, data[i:i + 7])
        msg = self.receive(theirs)
        self.assertEqual(msg.payload, request())
        self.assertEqual(msg.meta["peer"], ["tcp6", "2001:db8::7", 5555])

    def test_localKeepsThePeer(self) -> None:
        from tests.dispatcher.test_proxyproto import v2

        link, theirs = self.instance()
        client, conn = self.proxied()
        self.send(client, conn, v2(command=0, family=0, block=b"") + request())
        msg = self.receive(theirs)
        self.assertEqual(msg.meta["peer"], ["tcp", "127.0.0.1", client.getsockname()[1]])

    def test_ownAnswersLogTheProxiedClient(self) -> None:
        """The dispatcher's own answers (here 404) name the client from the header."""
        records: list[dict] = []
        client, conn = self.proxied()
        self.dispatcher.records = type("R", (), {"emit": staticmethod(records.append)})()  # type: ignore[assignment]
        self.send(client, conn, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n" + request("/nowhere"))
        self.assertAnsweredKept(client, 404)
        self.assertEqual([r["client"] for r in records], ["203.0.113.7"])

    def test_noHeaderCloses(self) -> None:
        client, conn = self.proxied()
        self.send(client, conn, request())
        self.assertClosedSilently(client)
        self.assertNotIn(conn, self.dispatcher.reading)

    def test_badHeaderCloses(self) -> None:
        client, conn = self.proxied()
        self.send(client, conn, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555\r\n" + request())
        self.assertClosedSilently(client)

    def test_untrustedSourceCloses(self) -> None:
        """A connection from outside proxy_trusted is closed at once, before reading a byte."""
        client, conn = self.proxied(trusted="10.0.0.0/8")
        self.assertIsNone(conn)
        self.assertEqual(self.dispatcher.open_connections, 0)
        self.assertEqual(self.dispatcher.proxy_refused, 1)
        self.assertClosedSilently(client)

    def test_deadline(self) -> None:
        """A header that does not arrive within head_timeout: closed, with no HTTP answer."""
        client, conn = self.proxied()
        self.send(client, conn, b"PROXY TCP4 ")
        self.reactor.advance(5)
        self.assertClosedSilently(client)
        self.assertNotIn(conn, self.dispatcher.reading)

    def test_plainListenerTakesNoHeader(self) -> None:
        """On an unmarked listener a PROXY line is just a bad request line."""
        client, conn = self.connect(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n" + request())
        self.assertAnswered(client, 400)


HOSTS_SITE = """
[okws]
listen = tcp:80 tls:443:path=/srv/certs ssl:8443:privateKey=/k.pem:certKey=/c.pem
access_log_fields = combined host

[service:www]
resource = a:B
paths = /
hosts = www.example.com

[service:admin]
resource = a:B
paths = /
hosts = admin.example.com *.admin.example.com

[service:other]
resource = a:B
paths = /
"""


class HostRoutingTests(DispatcherTestCase):
    """The dispatcher routes by host, then path, and says which host pattern it used."""

    def setUp(self) -> None:
        super().setUp()
        self.dispatcher = Dispatcher(self.reactor, parse(textwrap.dedent(HOSTS_SITE), "site.ini", "/srv/site"))

    def routed(self, host: str, target: str = "/x") -> tuple[str, str]:
        link_of = {name: self.instance(name, index=i) for i, name in enumerate(("www", "admin", "other"))}
        client, conn = self.connect(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert conn.route is not None
        theirs = link_of[conn.route.service][1]
        self.assertEqual(self.receive(theirs).kind, handoff.CONN)
        return conn.route.service, conn.route.hosts

    def test_exactWildcardAndEveryOtherHost(self) -> None:
        self.assertEqual(self.routed("www.example.com"), ("www", "www.example.com"))
        self.assertEqual(self.routed("Admin.Example.COM:8443"), ("admin", "admin.example.com"))
        self.assertEqual(self.routed("a.b.admin.example.com"), ("admin", "*.admin.example.com"))
        self.assertEqual(self.routed("unknown.example"), ("other", "*"))
        self.assertEqual(self.routed("admin.example.com", "http://admin.example.com/x"), ("admin", "admin.example.com"))

    def test_hostInTheAccessRecord(self) -> None:
        records: list[dict[str, object]] = []

        class Records:
            def emit(self, record: dict[str, object]) -> None:
                records.append(record)

        self.dispatcher.records = Records()  # type: ignore[assignment]
        config = parse("[okws]\n[service:www]\nresource = a:B\npaths = /a\nhosts = www.example.com\n", "site.ini", "/srv")
        self.dispatcher.update_config(config)
        client, conn = self.connect(b"GET /a HTTP/1.1\r\nHost: nowhere.Example:80\r\n\r\n")
        self.assertAnsweredKept(client, 404)
        self.assertEqual(records[-1]["host"], "nowhere.example")
        self.assertEqual(self.dispatcher.own_counts[("-", "-")].by_status, {404: 1})


class MisdirectedTests(DispatcherTestCase):
    """421: a request whose host the connection's certificate is not shown for (RFC 9110 15.5.20)."""

    def setUp(self) -> None:
        super().setUp()
        self.dispatcher = Dispatcher(self.reactor, parse(textwrap.dedent(HOSTS_SITE), "site.ini", "/srv/site"))
        self.told: list[dict[str, object]] = []
        self.dispatcher.to_launcher = self.told.append  # type: ignore[method-assign]
        mine, self.front = channel.socketpair()
        self.addCleanup(self.front.close)
        self.dispatcher.peer("tls", {"k": "peer", "channel": "tls", "pid": 77}, mine)
        (self.channel,) = self.dispatcher.tls_fronts
        self.addCleanup(self._close_link_channel)
        # The tls: listener is the first TLS listener; a.test and *.w.test on 1, b.test on 2 (the default).
        self.certs(0, {"a.test": 1, "*.w.test": 1, "b.test": 2}, 2)

    def _close_link_channel(self) -> None:
        if self.channel.connected:
            self.channel.close()

    def certs(self, listener: int, names: dict[str, int], default: int) -> None:
        from okws_twisted.wire import certs

        meta, payload = certs.certs_message(listener, names, default)
        for datagram in encode(meta, payload):
            self.front.send(datagram)
        self.read(self.channel)

    def decrypted(self, host: str, listener: int = 0, cert: int | None = 1) -> socket.socket:
        """A connection from the front whose certificate was C{cert}; the client sends a request for C{host}."""
        client, plain = socket.socketpair()
        self.addCleanup(client.close)
        tls = {"sni": "a.test", "cipher": "TLS_AES_128_GCM_SHA256", "version": "TLSv1.3", "alpn": "http/1.1"}
        meta = handoff.connection_meta(handoff.CONN, 1, PEER, HOST, tls)
        meta["listener"] = listener
        if cert is not None:
            meta["cert"] = cert
        before = set(self.dispatcher.reading)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [plain.fileno()]))]
        self.front.sendmsg([encode(meta)[0]], anc)
        plain.close()
        self.read(self.channel)
        new = set(self.dispatcher.reading) - before
        for conn in new:
            self.addCleanup(self._abort, conn)
            self.send(client, conn, f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return client

    def test_otherCertificate(self) -> None:
        self.instance("www")
        client = self.decrypted("b.test")
        headers, body = self.assertAnswered(client, 421)
        self.assertIn(b"421 Misdirected Request", body)

    def test_sameCertificate(self) -> None:
        """A name the connection's certificate is also shown for (a wildcard, a port, case) is not misdirected."""
        link, theirs = self.instance("other")
        for host in ("a.test", "A.TEST:443", "x.w.test", "a.test."):
            client = self.decrypted(host)
            self.assertIsNone(self.written(client), host)
            self.assertEqual(self.receive(theirs).kind, handoff.CONN)

    def test_unknownHostGetsTheDefault(self) -> None:
        """An IP address or an unknown name gets the default certificate: misdirected only if SNI chose another."""
        link, theirs = self.instance("other")
        client = self.decrypted("127.0.0.1", cert=2)
        self.assertIsNone(self.written(client))
        self.assertAnswered(self.decrypted("127.0.0.1", cert=1), 421)
        self.assertAnswered(self.decrypted("y.z.w.test", cert=1), 421)  # a wildcard covers one label

    def test_oneCertificateListener(self) -> None:
        """An ssl: listener (one certificate, no table) never answers 421."""
        link, theirs = self.instance("other")
        client = self.decrypted("b.test", listener=1, cert=None)
        self.assertIsNone(self.written(client))
        self.assertEqual(self.receive(theirs).kind, handoff.CONN)

    def test_handbackKeepsTheCertificate(self) -> None:
        """A connection a service hands back is checked against the certificate the dispatcher recorded."""
        link, theirs = self.instance("other")
        client = self.decrypted("a.test")
        msg = self.receive(theirs)
        self.ack(link, theirs, [msg.meta["id"]])
        self.back(link, theirs, msg.meta["id"], msg.fds[0], b"GET /x HTTP/1.1\r\nHost: b.test\r\n\r\n")
        self.assertAnswered(client, 421)

    def test_unknownCertificateRefused(self) -> None:
        """A connection naming a certificate the front never listed is closed, and said so."""
        with capturedLogs() as events:
            client = self.decrypted("a.test", cert=99)
        self.assertEqual(self.written(client), b"<EOF>")
        self.assertTrue(any("never named" in str(e.get("error")) for e in events))

    def test_badCertsRefused(self) -> None:
        from okws_twisted.wire import certs

        for listener, names in ((1, {"a": 1}), (0, {"x" * 256: 1}), (0, {"a": "1"}), (7, {})):
            meta, payload = certs.certs_message(listener, names, 1)  # type: ignore[arg-type]
            with capturedLogs() as events:
                self.front.send(encode(meta, payload)[0])
                self.read(self.channel)
            self.assertTrue(any("bad message from the TLS front" in str(e.get("log_format")) for e in events), listener)
        # The table is unchanged: b.test is still certificate 2.
        self.instance("other")
        self.assertAnswered(self.decrypted("b.test"), 421)

    def test_newFrontNewTable(self) -> None:
        """Each front's ids are its own: a new front's table does not apply to the old one's connections."""
        mine, front2 = channel.socketpair()
        self.addCleanup(front2.close)
        self.dispatcher.peer("tls", {"k": "peer", "channel": "tls", "pid": 78}, mine)
        self.assertEqual(len(self.dispatcher.tls_fronts), 2)
        self.assertEqual(len(self.dispatcher.cert_tables), 1)
        link, theirs = self.instance("other")
        client = self.decrypted("b.test", cert=2)
        self.assertIsNone(self.written(client))
