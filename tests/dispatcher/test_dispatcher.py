"""
Tests for L{okws_twisted.dispatcher.dispatcher}: reading heads, answering errors, queueing, handing off.

Time and the event loop are a L{MemoryReactorClock}: readers and writers are
recorded, not run, and the tests drive them (C{doRead}) by hand.  The client
connections and the handoff channels are real socket pairs, so what a client
or a service instance sees is read from its own socket.
"""

from __future__ import annotations

import array
import os
import select
import shutil
import socket
import tempfile
import textwrap

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import SiteConfig, parse
from okws_twisted.dispatcher.accept import HeadConnection
from okws_twisted.dispatcher.dispatcher import Dispatcher
from okws_twisted.dispatcher.pool import InstanceLink
from okws_twisted.wire import channel, handoff
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

    def _close_link(self, link: InstanceLink) -> None:
        if link.channel.connected:
            link.channel.close()

    def receive(self, theirs: socket.socket) -> Message:
        msg = read_one_blocking(theirs, 2)
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
            link.active = active
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
        links[0].active = 5
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
        headers, body = self.assertAnswered(client, 404)
        self.assertNotIn("retry-after", headers)

    def test_prefixIsNotAPath(self) -> None:
        client, conn = self.connect(request("/helloworld"))
        self.assertAnswered(client, 404)

    def test_headRequestErrorHasNoBody(self) -> None:
        client, conn = self.connect(request("/nowhere", method="HEAD"))
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

    def ack(self, link: InstanceLink, theirs: socket.socket, ids: list[int], done: int = 0) -> None:
        theirs.send(encode({"k": handoff.ACK, "ids": ids, "done": done})[0])
        self.read(link.channel)

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
        busy.active = 4
        self.connect(request())
        msg = self.receive(idle_theirs)
        self.assertEqual(msg.kind, handoff.CONN)
        self.nothing_for(busy_theirs)
        self.assertEqual((busy.active, idle.active), (4, 1))

    def test_ackDoneBalances(self) -> None:
        link, theirs = self.instance()
        ids = []
        for _ in range(3):
            self.connect(request())
            ids.append(self.receive(theirs).meta["id"])
        self.assertEqual(link.active, 3)
        self.ack(link, theirs, ids, done=2)
        self.assertEqual(link.active, 1)
        self.ack(link, theirs, [], done=5)
        self.assertEqual(link.active, 0)

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
        client, server = socket.socketpair()
        self.addCleanup(client.close)
        meta = handoff.connection_meta(handoff.BACK, 41, PEER, HOST)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [server.fileno()]))]
        theirs.sendmsg([encode(meta, request("/nowhere"))[0]], anc)
        server.close()
        self.read(link.channel)
        self.assertAnswered(client, 404)
        backack = self.receive(theirs)
        self.assertEqual((backack.kind, backack.meta["ids"]), (handoff.BACKACK, [41]))

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
        meta = handoff.connection_meta(handoff.BACK, 42, PEER, HOST)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))]
        theirs.sendmsg([encode(meta, request())[0]], anc)
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
        self.assertAnswered(client, 404)
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
