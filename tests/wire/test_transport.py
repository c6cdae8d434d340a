"""
Tests for L{okws_twisted.wire.transport}: a stream transport that can give its socket away.

L{SocketTransport} runs over real connected sockets (Unix stream pairs, and TCP
over loopback where TCP behaviour matters: resets, half-close, addresses)
under the real reactor.  What the peer sees is read from the peer's socket.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import socket
import struct
import time

from twisted.internet import error, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from okws_twisted.wire import transport as transport_module
from okws_twisted.wire.transport import (
    DescriptorGroup,
    held_sends,
    WRITE_HIGH_WATER,
    SocketTransport,
    address_from_wire,
    address_of,
    address_to_wire,
)


class AddressTests(SynchronousTestCase):
    """Addresses as Twisted objects and as JSON for the handoff channel."""

    def test_ipv4(self) -> None:
        addr = address_of(("10.1.2.3", 4567), socket.AF_INET)
        self.assertEqual(addr, IPv4Address("TCP", "10.1.2.3", 4567))
        self.assertEqual(address_to_wire(addr), ["tcp", "10.1.2.3", 4567])
        self.assertEqual(address_from_wire(["tcp", "10.1.2.3", 4567]), addr)

    def test_ipv6(self) -> None:
        addr = address_of(("::1", 80, 0, 0), socket.AF_INET6)
        self.assertEqual(addr, IPv6Address("TCP", "::1", 80))
        self.assertEqual(address_to_wire(addr), ["tcp6", "::1", 80])
        self.assertEqual(address_from_wire(address_to_wire(addr)), addr)

    def test_unnamedUnix(self) -> None:
        unnamed = address_of("", socket.AF_UNIX)
        self.assertIsNone(unnamed.name)
        self.assertEqual(address_to_wire(unnamed), ["unix", None])
        self.assertIsNone(address_from_wire(["unix", None]).name)

    def test_namedUnixCrossesTheWire(self) -> None:
        """
        A Unix listener's address (the host of every connection accepted on
        it) survives the JSON of the handoff channel.  (Fails while
        address_to_wire puts UNIXAddress's bytes name on the wire.)
        """
        addr = address_of("/run/okws.sock", socket.AF_UNIX)
        self.assertEqual(addr, UNIXAddress("/run/okws.sock"))
        wire = json.loads(json.dumps(address_to_wire(addr)))
        self.assertEqual(wire, ["unix", "/run/okws.sock"])
        self.assertEqual(address_from_wire(wire), addr)

    def test_wirePortFromString(self) -> None:
        self.assertEqual(address_from_wire(["tcp", "1.2.3.4", "80"]).port, 80)


class Recorder(Protocol):
    """Records every call the transport makes on its protocol."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.chunks: list[bytes] = []
        self.reason: Failure | None = None
        self._want: list[tuple[int, Deferred[None]]] = []
        self._lost: list[Deferred[None]] = []

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)

    def connectionMade(self) -> None:
        self.events.append(("made",))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))
        self.chunks.append(data)
        have = len(self.received)
        for n, d in list(self._want):
            if have >= n:
                self._want.remove((n, d))
                d.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.events.append(("lost", reason))
        self.reason = reason
        for d in self._lost:
            d.callback(None)
        self._lost = []

    def wait_bytes(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.received) >= n:
            d.callback(None)
        else:
            self._want.append((n, d))
        return d.addTimeout(8, reactor)

    def wait_lost(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.reason is not None:
            d.callback(None)
        else:
            self._lost.append(d)
        return d.addTimeout(8, reactor)


class Peer:
    """The far end of the connection: a plain socket read by the reactor.

    @ivar per_read: bytes read per wakeup (small values make a slow reader).
    """

    def __init__(self, sock: socket.socket, per_read: int = 65536) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.per_read = per_read
        self.data = bytearray()
        self.eof = False
        self.error: OSError | None = None
        self.reading = False
        self._waiters: list[tuple[object, Deferred[None]]] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Peer"

    def start(self) -> None:
        if not self.reading and not self.eof:
            self.reading = True
            reactor.addReader(self)

    def stop(self) -> None:
        if self.reading:
            self.reading = False
            reactor.removeReader(self)

    def doRead(self) -> None:
        try:
            chunk = self.sock.recv(self.per_read)
        except BlockingIOError:
            return
        except OSError as e:
            self.error = e
            chunk = b""
        if chunk:
            self.data += chunk
        else:
            self.eof = True
            self.stop()
        self._check()

    def connectionLost(self, reason: Failure) -> None:
        self.stop()

    def _check(self) -> None:
        for cond, d in list(self._waiters):
            if (self.eof if cond == "eof" else len(self.data) >= cond):  # type: ignore[operator]
                self._waiters.remove((cond, d))
                d.callback(None)
        if self.eof:
            for cond, d in list(self._waiters):
                self._waiters.remove((cond, d))
                d.errback(AssertionError(f"EOF after {len(self.data)} bytes, waiting for {cond}"))

    def wait(self, cond: object) -> Deferred[None]:
        """Fire once C{cond} bytes arrived, or (C{"eof"}) at end of file."""
        d: Deferred[None] = Deferred()
        self._waiters.append((cond, d))
        self.start()
        self._check()
        return d.addTimeout(8, reactor)


@implementer(IPushProducer)
class Producer:
    """A push producer that records when it is paused and resumed."""

    def __init__(self, transport: SocketTransport) -> None:
        self.transport = transport
        self.calls: list[tuple[str, int]] = []
        self.on_resume = lambda: None

    def pauseProducing(self) -> None:
        self.calls.append(("pause", self.transport.write_buffer_size))

    def resumeProducing(self) -> None:
        self.calls.append(("resume", self.transport.write_buffer_size))
        self.on_resume()

    def stopProducing(self) -> None:
        self.calls.append(("stop", self.transport.write_buffer_size))


class TransportTestCase(TestCase):
    timeout = 10

    def unix_pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(b.close)
        self.addCleanup(a.close)
        return a, b

    def tcp_pair(self) -> tuple[socket.socket, socket.socket]:
        """(server side, client side) of a loopback TCP connection."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        self.addCleanup(client.close)
        listener.settimeout(5)
        server, _ = listener.accept()
        self.addCleanup(server.close)
        return server, client

    def transport(self, sock: socket.socket, protocol: Protocol | None = None) -> tuple[SocketTransport, Recorder]:
        proto = protocol or Recorder()
        if sock.family == socket.AF_UNIX:
            peer, host = UNIXAddress(None), UNIXAddress(None)
        else:
            peer = address_of(sock.getpeername(), sock.family)
            host = address_of(sock.getsockname(), sock.family)
        t = SocketTransport(reactor, sock, proto, peer, host)
        self.addCleanup(self._discard, t)
        return t, proto  # type: ignore[return-value]

    def _discard(self, t: SocketTransport) -> None:
        if t.connected:
            t.abortConnection()

    def peer(self, sock: socket.socket, per_read: int = 65536) -> Peer:
        p = Peer(sock, per_read)
        self.addCleanup(p.stop)
        return p

    def spin(self, seconds: float = 0.05) -> Deferred[None]:
        """Let the reactor run for a while."""
        return deferLater(reactor, seconds, lambda: None)


class StartTests(TransportTestCase):
    """L{SocketTransport.start}: connect, replay, then read the socket."""

    async def test_replayBeforeSocketBytes(self) -> None:
        a, b = self.unix_pair()
        b.sendall(b"from the socket")
        t, proto = self.transport(a)
        t.start(b"replayed;")
        # The replay happens inside start(), before the reactor reads anything.
        self.assertEqual(proto.events, [("made",), ("data", b"replayed;")])
        self.assertIs(proto.transport, t)
        await proto.wait_bytes(len(b"replayed;from the socket"))
        self.assertEqual(proto.received, b"replayed;from the socket")
        self.assertEqual(proto.chunks[0], b"replayed;")

    async def test_nothingToReplay(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        self.assertEqual(proto.events, [("made",)])
        b.sendall(b"x")
        await proto.wait_bytes(1)
        self.assertEqual(proto.events, [("made",), ("data", b"x")])

    def test_protocolClosesDuringReplay(self) -> None:
        """A protocol that loses the connection while replaying is not read for."""
        a, b = self.unix_pair()

        class Closer(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.loseConnection()

        t, proto = self.transport(a, Closer())
        t.start(b"bad request")
        self.assertTrue(t.disconnecting)
        self.assertNotIn(t, reactor.getReaders())
        t.abortConnection()

    def test_protocolPausesDuringReplay(self) -> None:
        a, b = self.unix_pair()

        class Pauser(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()

        t, proto = self.transport(a, Pauser())
        t.start(b"head")
        self.assertNotIn(t, reactor.getReaders())
        t.resumeProducing()
        self.assertIn(t, reactor.getReaders())


class CountingReactor(MemoryReactorClock):
    """Counts the reactor registrations (each an C{epoll_ctl} on a real reactor)."""

    def __init__(self) -> None:
        super().__init__()
        self.registrations: list[str] = []

    def addReader(self, reader: object) -> None:  # type: ignore[override]
        if reader not in self.readers:
            self.registrations.append("add")
        super().addReader(reader)  # type: ignore[arg-type]

    def removeReader(self, reader: object) -> None:  # type: ignore[override]
        if reader in self.readers:
            self.registrations.append("remove")
        super().removeReader(reader)  # type: ignore[arg-type]


class RegistrationTests(TransportTestCase):
    """Pausing and resuming while the protocol handles bytes changes the registration once, at
    the end: a connection answered and closed in the read that brought it is never registered
    (each registration is a system call; on a new connection per request it is most of them)."""

    def counted(self, protocol: Protocol) -> tuple[SocketTransport, CountingReactor]:
        a, _b = self.unix_pair()
        clock = CountingReactor()
        t = SocketTransport(clock, a, protocol, UNIXAddress(None), UNIXAddress(None))
        return t, clock

    def test_answeredAndClosedNeverRegisters(self) -> None:
        class AnswerAndClose(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()  # as HTTPChannel while it answers
                self.transport.write(b"answer")
                self.transport.resumeProducing()  # the request is done...
                self.transport.loseConnection()  # ...and it was the last

        t, clock = self.counted(AnswerAndClose())
        t.start(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(clock.registrations, [])
        clock.advance(0)
        self.assertFalse(t.connected)
        self.assertEqual(clock.registrations, [])

    def test_pauseResumeInOneReadKeepsTheRegistration(self) -> None:
        class AnswerAtOnce(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()
                self.transport.resumeProducing()

        t, clock = self.counted(AnswerAtOnce())
        t.start()
        self.assertEqual(clock.registrations, ["add"])
        t._deliver(b"request")
        self.assertIn(t, clock.readers)
        self.assertEqual(clock.registrations, ["add"])

    def test_pausedAtTheEndOfARead(self) -> None:
        """A pause that is not undone within the read takes effect when the read ends."""

        class Pauser(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()

        t, clock = self.counted(Pauser())
        t.start()
        t._deliver(b"request")
        self.assertNotIn(t, clock.readers)
        self.assertEqual(clock.registrations, ["add", "remove"])
        t.resumeProducing()
        self.assertIn(t, clock.readers)

    def test_pauseOutsideAReadIsImmediate(self) -> None:
        t, clock = self.counted(Recorder())
        t.start()
        t.pauseProducing()
        self.assertNotIn(t, clock.readers)


class BatchFailureTests(TransportTestCase):
    """A send that fails with an unexpected error ends that connection only."""

    def test_otherConnectionsStillSent(self) -> None:
        clock = MemoryReactorClock()
        (a, b), (c, d) = self.unix_pair(), self.unix_pair()
        bad = SocketTransport(clock, a, Recorder(), UNIXAddress(None), UNIXAddress(None))
        good = SocketTransport(clock, c, Recorder(), UNIXAddress(None), UNIXAddress(None))
        bad.start()
        good.start()

        class Broken:
            def __getattr__(self, name: str) -> object:
                return getattr(a, name)

            def send(self, data: bytes) -> int:
                raise OSError(errno.EINVAL, "broken")

        bad.socket = Broken()  # type: ignore[assignment]
        with held_sends(clock):
            bad.write(b"one")
            good.write(b"two")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertFalse(bad.connected)
        self.assertEqual(d.recv(10), b"two")
        self.assertTrue(good.connected)


class WriteTests(TransportTestCase):
    """Writing, back-pressure, flushing."""

    async def test_writeAndWriteSequence(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.write(b"one,")
        t.write(b"")
        t.writeSequence([b"two,", b"three"])
        p = self.peer(b)
        await p.wait(len(b"one,two,three"))
        self.assertEqual(bytes(p.data), b"one,two,three")
        self.assertEqual(t.write_buffer_size, 0)

    async def test_largeWriteBackPressure(self) -> None:
        """
        10 MB written at once to a slow reader: the producer is paused as the
        buffer passes the high-water mark, resumed only once it is drained, and
        the reader gets every byte in order.
        """
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        producer = Producer(t)
        t.registerProducer(producer, True)
        data = os.urandom(1024 * 1024) * 10
        for i in range(0, len(data), 256 * 1024):
            t.write(data[i : i + 256 * 1024])
        self.assertGreater(t.write_buffer_size, WRITE_HIGH_WATER)
        self.assertEqual([c for c, _ in producer.calls], ["pause"])
        self.assertGreater(producer.calls[0][1], WRITE_HIGH_WATER)
        self.assertIn(t, reactor.getWriters())
        p = self.peer(b, per_read=16 * 1024)
        await p.wait(len(data))
        self.assertEqual(len(p.data), len(data))
        self.assertEqual(hashlib.sha256(p.data).digest(), hashlib.sha256(data).digest())
        self.assertEqual(producer.calls[1:], [("resume", 0)])
        self.assertEqual(t.write_buffer_size, 0)
        self.assertNotIn(t, reactor.getWriters())

    def test_registerWhileOverHighWater(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.write(b"x" * (4 * WRITE_HIGH_WATER + 4 * 1024 * 1024))
        producer = Producer(t)
        t.registerProducer(producer, True)
        self.assertEqual([c for c, _ in producer.calls], ["pause"])
        self.assertRaises(RuntimeError, t.registerProducer, Producer(t), True)
        t.unregisterProducer()
        t.registerProducer(Producer(t), True)

    def test_notifyFlushedWhenEmpty(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.write(b"small")
        called: list[int] = []
        t.notify_flushed(lambda: called.append(t.write_buffer_size))
        self.assertEqual(called, [0])

    async def test_notifyFlushedAfterDrain(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.write(b"y" * (3 * 1024 * 1024))
        flushed: Deferred[int] = Deferred()
        t.notify_flushed(lambda: flushed.callback(t.write_buffer_size))
        self.assertFalse(flushed.called)
        p = self.peer(b)
        p.start()
        self.assertEqual(await flushed.addTimeout(8, reactor), 0)
        await p.wait(3 * 1024 * 1024)

    async def test_notifyFlushedWaitsForWhatTheProducerWritesOnResume(self) -> None:
        """
        A producer resumed by the drain writes more at once: the buffer is not
        empty, so notify_flushed callbacks must wait for that too.  (Fails
        while doWrite runs them right after resuming the producer.)
        """
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        producer = Producer(t)
        t.registerProducer(producer, True)
        more = b"m" * (2 * 1024 * 1024)

        def write_more_once() -> None:
            producer.on_resume = lambda: None
            t.write(more)

        producer.on_resume = write_more_once
        t.write(b"f" * (2 * 1024 * 1024))
        seen: list[int] = []
        flushed: Deferred[None] = Deferred()

        def on_flushed() -> None:
            seen.append(t.write_buffer_size)
            flushed.callback(None)

        t.notify_flushed(on_flushed)
        p = self.peer(b)
        p.start()
        await flushed.addTimeout(8, reactor)
        self.assertEqual(seen, [0])
        await p.wait(4 * 1024 * 1024)

    def test_writeAfterPeerGone(self) -> None:
        """A write to a dead peer does not raise; the connection is lost soon after."""
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.pauseProducing()  # the reader must not see the EOF first
        b.close()
        t.write(b"into the void")
        self.assertIsNone(proto.reason)
        d = proto.wait_lost()

        def check(_: None) -> None:
            self.assertTrue(proto.reason.check(error.ConnectionLost))
            self.assertFalse(t.connected)

        return d.addCallback(check)


class CloseTests(TransportTestCase):
    """loseConnection, close_lingering, abortConnection, and the peer closing."""

    async def test_loseConnectionFlushesThenCloses(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        data = os.urandom(2 * 1024 * 1024)
        t.write(data)
        self.assertGreater(t.write_buffer_size, 0)
        t.loseConnection()
        self.assertTrue(t.disconnecting)
        self.assertTrue(t.connected)
        t.write(b"written after loseConnection")
        p = self.peer(b)
        await p.wait("eof")
        self.assertIsNone(p.error)
        self.assertTrue(bytes(p.data) == data, f"peer got {len(p.data)} of {len(data)} bytes")
        await proto.wait_lost()
        self.assertTrue(proto.reason.check(error.ConnectionDone))
        self.assertFalse(t.connected)
        self.assertEqual(t.fileno(), -1)
        self.assertEqual(a.fileno(), -1)

    async def test_loseConnectionEmptyBuffer(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.loseConnection()
        self.assertIsNone(proto.reason)  # not from inside loseConnection
        await proto.wait_lost()
        self.assertTrue(proto.reason.check(error.ConnectionDone))
        b.settimeout(2)
        self.assertEqual(b.recv(10), b"")
        self.assertEqual([e[0] for e in proto.events], ["made", "lost"])

    async def test_peerCloses(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        b.sendall(b"last words")
        b.close()
        await proto.wait_lost()
        self.assertEqual(proto.received, b"last words")
        self.assertTrue(proto.reason.check(error.ConnectionDone))
        self.assertNotIn(t, reactor.getReaders())

    async def test_peerResets(self) -> None:
        server, client = self.tcp_pair()
        t, proto = self.transport(server)
        t.start()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await proto.wait_lost()
        self.assertTrue(proto.reason.check(error.ConnectionLost))
        self.assertFalse(proto.reason.check(error.ConnectionDone))

    async def test_abortConnection(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        producer = Producer(t)
        t.registerProducer(producer, True)
        data = b"a" * (8 * 1024 * 1024)
        t.write(data)
        t.abortConnection()
        self.assertTrue(proto.reason.check(error.ConnectionAborted))
        self.assertFalse(t.connected)
        self.assertEqual(t.write_buffer_size, 0)
        self.assertEqual(producer.calls[-1][0], "stop")
        self.assertNotIn(t, reactor.getWriters())
        self.assertNotIn(t, reactor.getReaders())
        t.write(b"after abort")
        t.abortConnection()
        self.assertEqual(len([e for e in proto.events if e[0] == "lost"]), 1)
        p = self.peer(b)
        await p.wait("eof")
        self.assertLess(len(p.data), len(data))
        self.assertNotIn(b"after abort", bytes(p.data))

    def lingering(self) -> tuple[SocketTransport, Recorder, socket.socket]:
        server, client = self.tcp_pair()
        t, proto = self.transport(server)
        t.start()
        return t, proto, client

    async def test_closeLingeringPeerKeepsSending(self) -> None:
        """
        The peer sent more than we read and keeps sending: it still gets the
        whole answer and a clean EOF (no reset), and the transport closes as
        soon as the peer closes.
        """
        self.patch(transport_module, "LINGER_SECONDS", 5.0)
        t, proto, client = self.lingering()
        client.sendall(b"POST /x HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"b" * 4000)
        await proto.wait_bytes(1)
        t.pauseProducing()
        client.sendall(b"b" * 4000)  # unread when we answer
        answer = b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n\r\n"
        t.write(answer)
        t.close_lingering()
        self.assertTrue(t.disconnecting)
        before = len(proto.received)
        p = self.peer(client)
        sending = True

        async def keep_sending() -> None:
            while sending:
                try:
                    client.send(b"b" * 2000)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
                await self.spin(0.01)

        sender = Deferred.fromCoroutine(keep_sending())
        try:
            await p.wait("eof")
        finally:
            sending = False
            await sender
        self.assertIsNone(p.error)
        self.assertEqual(bytes(p.data), answer)
        self.assertIsNone(proto.reason)
        self.assertEqual(len(proto.received), before)  # discarded, not delivered
        started = time.monotonic()
        client.close()
        await proto.wait_lost()
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertTrue(proto.reason.check(error.ConnectionDone))

    async def test_closeLingeringTimesOut(self) -> None:
        """A peer that neither closes nor sends: closed after LINGER_SECONDS."""
        self.patch(transport_module, "LINGER_SECONDS", 0.3)
        t, proto, client = self.lingering()
        started = time.monotonic()
        t.write(b"bye")
        t.close_lingering()
        p = self.peer(client)
        await p.wait("eof")
        self.assertEqual(bytes(p.data), b"bye")
        self.assertIsNone(proto.reason)
        await proto.wait_lost()
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 3.0)
        self.assertTrue(proto.reason.check(error.ConnectionDone))

    async def test_closeLingeringByteLimit(self) -> None:
        """A peer that floods after the answer is closed once LINGER_BYTES arrive."""
        self.patch(transport_module, "LINGER_SECONDS", 8.0)
        self.patch(transport_module, "LINGER_BYTES", 10000)
        t, proto, client = self.lingering()
        t.write(b"bye")
        t.close_lingering()
        p = self.peer(client)
        await p.wait("eof")
        started = time.monotonic()
        client.sendall(b"f" * 5000)
        await self.spin(0.1)
        self.assertIsNone(proto.reason)
        client.sendall(b"f" * 6000)
        await proto.wait_lost()
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertEqual(proto.received, b"")

    async def test_closeLingeringAfterFlush(self) -> None:
        """With a full buffer, the half-close waits until everything is sent."""
        self.patch(transport_module, "LINGER_SECONDS", 5.0)
        t, proto, client = self.lingering()
        data = os.urandom(8 * 1024 * 1024)
        t.write(data)
        self.assertGreater(t.write_buffer_size, 0)
        t.close_lingering()
        p = self.peer(client)
        await p.wait("eof")
        self.assertTrue(bytes(p.data) == data, f"peer got {len(p.data)} of {len(data)} bytes")
        client.close()
        await proto.wait_lost()
        self.assertTrue(proto.reason.check(error.ConnectionDone))


class HalfCloser(Recorder):
    """A protocol that keeps answering after the peer half-closes (or not)."""

    def __init__(self, keep_writing: bool = True) -> None:
        super().__init__()
        self.keep_writing = keep_writing
        self.eofs = 0
        self.eof = Deferred()

    def eof_received(self) -> bool:
        self.eofs += 1
        self.events.append(("eof",))
        if self.eofs == 1:
            # Not from inside this call: let the transport act on the answer first.
            reactor.callLater(0, self.eof.callback, None)
        return self.keep_writing


class HalfCloseTests(TransportTestCase):
    """The peer shuts down its sending side: a protocol may keep writing."""

    async def test_keepsWritingAfterPeerHalfCloses(self) -> None:
        server, client = self.tcp_pair()
        t, proto = self.transport(server, HalfCloser())
        t.start()
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        await proto.eof.addTimeout(8, reactor)
        self.assertEqual(proto.received, b"request")
        self.assertEqual([e[0] for e in proto.events], ["made", "data", "eof"])
        self.assertTrue(t.connected)
        self.assertNotIn(t, reactor.getReaders())
        data = os.urandom(2 * 1024 * 1024)
        t.write(data)
        t.loseConnection()
        p = self.peer(client)
        await p.wait("eof")
        self.assertTrue(bytes(p.data) == data, f"peer got {len(p.data)} of {len(data)} bytes")
        await proto.wait_lost()
        self.assertTrue(proto.reason.check(error.ConnectionDone))

    async def test_protocolDeclinesHalfClose(self) -> None:
        server, client = self.tcp_pair()
        t, proto = self.transport(server, HalfCloser(keep_writing=False))
        t.start()
        client.shutdown(socket.SHUT_WR)
        await proto.wait_lost()
        await proto.eof.addTimeout(8, reactor)
        self.assertEqual(proto.eofs, 1)
        self.assertTrue(proto.reason.check(error.ConnectionDone))

    async def test_halfCloseReportedOnce(self) -> None:
        """
        After the peer's EOF, resuming the transport (HTTPChannel does after
        every request) must not read the EOF again.  (Fails while
        resumeProducing restarts reading a finished read side: eof_received
        is called again at every resume.)
        """
        server, client = self.tcp_pair()
        t, proto = self.transport(server, HalfCloser())
        t.start()
        client.shutdown(socket.SHUT_WR)
        await proto.eof.addTimeout(8, reactor)
        for _ in range(3):
            t.pauseProducing()
            t.resumeProducing()
            await self.spin(0.02)
        self.assertEqual(proto.eofs, 1)
        self.assertIsNone(proto.reason)

    async def test_closeLingeringAfterHalfClose(self) -> None:
        """The peer already finished sending: nothing to linger for."""
        self.patch(transport_module, "LINGER_SECONDS", 5.0)
        server, client = self.tcp_pair()
        t, proto = self.transport(server, HalfCloser())
        t.start()
        client.shutdown(socket.SHUT_WR)
        await proto.eof.addTimeout(8, reactor)
        started = time.monotonic()
        t.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        t.close_lingering()
        p = self.peer(client)
        await p.wait("eof")
        self.assertEqual(bytes(p.data), b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await proto.wait_lost()
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(proto.eofs, 1)


class DetachTests(TransportTestCase):
    """detach: stop using the socket without closing or shutting it down."""

    async def test_detachKeepsConnectionAlive(self) -> None:
        server, client = self.tcp_pair()
        t, proto = self.transport(server)
        t.start()
        client.sendall(b"before")
        await proto.wait_bytes(len(b"before"))
        t.write(b"answer;")
        sock = t.detach()
        self.assertIs(sock, server)
        self.assertTrue(t.detached)
        self.assertFalse(t.connected)
        self.assertEqual(t.fileno(), -1)
        self.assertNotIn(t, reactor.getReaders())
        self.assertNotIn(t, reactor.getWriters())
        self.assertRaises(RuntimeError, t.detach)
        # Nothing reaches the protocol or the socket through the transport any more.
        t.write(b"ignored;")
        t.loseConnection()
        t.abortConnection()
        client.sendall(b"after")
        await self.spin(0.1)
        self.assertEqual(proto.received, b"before")
        self.assertIsNone(proto.reason)
        self.assertNotEqual(sock.fileno(), -1)
        # Both directions still work through the returned socket.
        sock.setblocking(True)
        sock.settimeout(2)
        self.assertEqual(sock.recv(100), b"after")
        sock.sendall(b"from the new owner")
        client.settimeout(2)
        expected = b"answer;from the new owner"
        got = b""
        while len(got) < len(expected):
            chunk = client.recv(100)
            self.assertNotEqual(chunk, b"", "the peer saw EOF: the socket was shut down")
            got += chunk
        self.assertEqual(got, expected)

    async def test_detachedSocketSurvivesAHandoff(self) -> None:
        """Detach, pass on (dup then close ours, as a handoff does): still alive."""
        server, client = self.tcp_pair()
        t, proto = self.transport(server)
        t.start()
        sock = t.detach()
        other = socket.socket(fileno=os.dup(sock.fileno()))
        self.addCleanup(other.close)
        sock.close()
        other.sendall(b"still here")
        client.settimeout(2)
        self.assertEqual(client.recv(100), b"still here")
        client.sendall(b"and back")
        other.settimeout(2)
        self.assertEqual(other.recv(100), b"and back")


class PauseAndAddressTests(TransportTestCase):
    async def test_pauseStopsReads(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.pauseProducing()
        self.assertNotIn(t, reactor.getReaders())
        b.sendall(b"held back")
        await self.spin(0.1)
        self.assertEqual(proto.received, b"")
        t.resumeProducing()
        self.assertIn(t, reactor.getReaders())
        await proto.wait_bytes(len(b"held back"))
        self.assertEqual(proto.received, b"held back")

    def test_stopProducingLosesConnection(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.stopProducing()
        self.assertTrue(t.disconnecting)

    def test_resumeAfterLoseConnectionDoesNotRead(self) -> None:
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        t.write(b"x" * (4 * 1024 * 1024))
        t.loseConnection()
        t.resumeProducing()
        self.assertNotIn(t, reactor.getReaders())

    def test_getPeerGetHost(self) -> None:
        server, client = self.tcp_pair()
        t, proto = self.transport(server)
        self.assertEqual(t.getPeer(), IPv4Address("TCP", "127.0.0.1", client.getsockname()[1]))
        self.assertEqual(t.getHost(), IPv4Address("TCP", "127.0.0.1", client.getpeername()[1]))
        self.assertEqual(t.logPrefix(), "SocketTransport")
        self.assertEqual(t.fileno(), server.fileno())
        self.assertFalse(server.getblocking())


class SendFileTests(TransportTestCase):
    """L{SocketTransport.send_file}: a file's bytes from the page cache, in order, bounded."""

    def file(self, data: bytes) -> int:
        fd = os.memfd_create("send-file-test")
        self.addCleanup(os.close, fd)
        os.write(fd, data)
        return fd

    async def test_orderHeadFileAfter(self) -> None:
        """What was written before goes first (the head), what is written meanwhile after."""
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        data = os.urandom(300_000)
        t.write(b"HEAD")  # batched until the end of this reactor turn
        sent = t.send_file(self.file(data), 1000, 200_000)
        t.write(b"AFTER")
        p = self.peer(b)
        await p.wait(4 + 200_000 + 5)
        self.assertEqual(await sent, 200_000)
        self.assertEqual(bytes(p.data), b"HEAD" + data[1000:201_000] + b"AFTER")

    async def test_slowReaderCostsNoBuffer(self) -> None:
        """A 32 MiB file to a slow reader: nothing of it is ever held in the process."""
        a, b = self.unix_pair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        t, proto = self.transport(a)
        t.start()
        size = 32 << 20
        fd = os.memfd_create("big")
        self.addCleanup(os.close, fd)
        os.ftruncate(fd, size)
        seen: list[int] = []
        progress: list[int] = []

        def noted(n: int) -> None:
            progress.append(n)
            seen.append(t.write_buffer_size)

        sent = t.send_file(fd, 0, size, noted)
        self.assertIn(t, reactor.getWriters())
        p = self.peer(b, per_read=256 * 1024)
        await p.wait(size)
        self.assertEqual(await sent, size)
        self.assertEqual(sum(progress), size)
        self.assertGreater(len(progress), 10)
        self.assertEqual(set(seen), {0})
        self.assertNotIn(t, reactor.getWriters())

    async def test_fileShrank(self) -> None:
        """A file that ends before the count fails the send (the caller aborts: a length was promised)."""
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        failure = await self.assertFailure(t.send_file(self.file(b"0123456789"), 0, 100), transport_module.FileShrank)
        self.assertIn("90 bytes early", str(failure))

    async def test_peerGoneMidFile(self) -> None:
        server, client = self.tcp_pair()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        t, proto = self.transport(server)
        t.start()
        fd = os.memfd_create("big")
        self.addCleanup(os.close, fd)
        os.ftruncate(fd, 64 << 20)
        sent = t.send_file(fd, 0, 64 << 20)
        self.assertFalse(sent.called)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset
        await self.assertFailure(sent, error.ConnectionLost)
        await proto.wait_lost()

    async def test_flushedDetachAndCloseWaitForTheFile(self) -> None:
        """Until the file is sent the transport is not flushed, cannot be handed on, and closes only after it."""
        a, b = self.unix_pair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        t, proto = self.transport(a)
        t.start()
        size = 8 << 20
        data = os.urandom(size)
        sent = t.send_file(self.file(data), 0, size)
        flushed: list[bool] = []
        t.notify_flushed(lambda: flushed.append(True))
        self.assertEqual(flushed, [])
        self.assertRaises(RuntimeError, t.detach)
        self.assertRaises(RuntimeError, t.send_file, 0, 0, 1)
        t.loseConnection()
        await self.spin()
        self.assertTrue(t.connected)
        p = self.peer(b)
        await p.wait("eof")
        self.assertEqual(await sent, size)
        self.assertEqual(flushed, [True])
        self.assertEqual(hashlib.sha256(p.data).digest(), hashlib.sha256(data).digest())
        self.assertFalse(t.connected)


class Exploding(Recorder):
    """A protocol whose C{dataReceived} fails."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        raise RuntimeError("the protocol failed")


class Echo(Recorder):
    """Writes back what it receives."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)


class DescriptorGroupTests(TransportTestCase):
    """L{DescriptorGroup}: transports polled by an epoll of their own, one reader in the reactor."""

    def group(self) -> DescriptorGroup:
        group = DescriptorGroup(reactor)
        self.addCleanup(self._leave, group)
        return group

    def _leave(self, group: DescriptorGroup) -> None:
        members = group.getReaders() + group.getWriters()
        self.assertEqual(members, [], "a test left members in its group")
        self.assertNotIn(group, reactor.getReaders(), "an empty group is not in the reactor")

    async def test_readsAndWritesThroughTheGroup(self) -> None:
        """A member is read and written by the group, never by the reactor; the group is in the
        reactor only while it has members."""
        group = self.group()
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.join_group(group)
        self.assertNotIn(group, reactor.getReaders())
        t.start()
        self.assertIn(group, reactor.getReaders())
        self.assertEqual(group.getReaders(), [t])
        self.assertNotIn(t, reactor.getReaders())
        peer = self.peer(b)
        b.send(b"hello")
        await proto.wait_bytes(5)
        self.assertEqual(proto.received, b"hello")
        # More than the socket takes: the rest waits for the group's write events.
        data = os.urandom(4 * 1024 * 1024)
        t.write(data)
        await self.spin(0)
        self.assertEqual(group.getWriters(), [t])
        self.assertNotIn(t, reactor.getWriters())
        await peer.wait(len(data))
        self.assertEqual(bytes(peer.data), data)
        self.assertEqual(group.getWriters(), [])
        t.loseConnection()
        await proto.wait_lost()
        self.assertNotIn(group, reactor.getReaders())

    async def test_joinMovesTheRegistration(self) -> None:
        """A transport already read and written by the reactor moves to the group as it is."""
        group = self.group()
        a, b = self.unix_pair()
        t, proto = self.transport(a)
        t.start()
        data = os.urandom(4 * 1024 * 1024)
        t.write(data)
        await self.spin(0)
        self.assertIn(t, reactor.getWriters())
        t.join_group(group)
        self.assertNotIn(t, reactor.getReaders())
        self.assertNotIn(t, reactor.getWriters())
        self.assertEqual((group.getReaders(), group.getWriters()), ([t], [t]))
        peer = self.peer(b)
        await peer.wait(len(data))
        b.send(b"after")
        await proto.wait_bytes(5)
        t.abortConnection()
        self.assertEqual(group.getReaders() + group.getWriters(), [])

    async def test_endOfFileAndFailuresAreEachMembersOwn(self) -> None:
        """The peer's close loses that member (done); a protocol that fails loses its own
        transport, logged; the other members are read on."""
        group = self.group()
        a1, b1 = self.unix_pair()
        a2, b2 = self.unix_pair()
        a3, b3 = self.unix_pair()
        t1, p1 = self.transport(a1)
        t2, p2 = self.transport(a2, Exploding())
        t3, p3 = self.transport(a3)
        for t in (t1, t2, t3):
            t.join_group(group)
            t.start()
        b1.close()
        b2.send(b"boom")
        await p1.wait_lost()
        await p2.wait_lost()
        self.assertTrue(p1.reason.check(error.ConnectionDone))
        self.assertTrue(p2.reason.check(RuntimeError))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(group.getReaders(), [t3])
        self.assertIn(group, reactor.getReaders())
        b3.send(b"still")
        await p3.wait_bytes(5)
        t3.loseConnection()
        await p3.wait_lost()

    def test_whatMembersWriteLeavesAtTheEndOfTheBatch(self) -> None:
        """Writes made while the group serves its ready members are sent when it is done with
        them, in that wakeup: no zero-delay flush timer left for a later iteration."""
        group = self.group()
        pairs = [self.unix_pair() for _ in range(3)]
        transports = []
        for a, b in pairs:
            t, proto = self.transport(a, Echo())
            t.join_group(group)
            t.start()
            transports.append(t)
            b.send(b"ping")
        self.assertEqual(select.select([group], [], [], 5)[0], [group])
        flusher = transport_module._flusher(reactor)
        self.assertIsNone(flusher.call)
        group.doRead()
        self.assertIsNone(flusher.call, "a flush was left for a later iteration")
        for a, b in pairs:
            b.settimeout(5)
            self.assertEqual(b.recv(100), b"ping")
        for t in transports:
            t.abortConnection()

    def test_reactorDropsTheGroup(self) -> None:
        """The reactor losing the group (it stops) loses every member, as it would have them,
        also one that another member's loss closed first (as a relay closes its pair)."""
        group = self.group()
        a, b = self.unix_pair()
        c, d = self.unix_pair()
        second, second_proto = self.transport(c)

        class ClosesTheOther(Recorder):
            def connectionLost(self, reason: Failure) -> None:
                super().connectionLost(reason)
                second.abortConnection()

        first, first_proto = self.transport(a, ClosesTheOther())
        for t in (first, second):
            t.join_group(group)
            t.start()
        reactor.removeReader(group)
        group.connectionLost(Failure(error.ConnectionLost("the reactor stopped")))
        self.assertTrue(first_proto.reason.check(error.ConnectionLost))
        self.assertIsNotNone(second_proto.reason)
        self.assertFalse(first.connected or second.connected)
