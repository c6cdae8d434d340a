# -*- test-case-name: tests.wire.test_transport -*-
"""
A connected socket that can be handed to another process (OKWS's ahttp fd wrapper).

Twisted's own TCP transport calls C{shutdown(2)} when it closes, which would
kill a connection that another process now holds, and offers no public way to
stop using a socket without closing it.  L{SocketTransport} is a small
transport of our own over an already connected, non-blocking socket: it is the
reactor's read/write descriptor and the protocol's C{ITransport}, push
producer and consumer, and it can L{detach <SocketTransport.detach>} the
socket (stop using it, flush nothing more, shut nothing down) so that the
socket can be passed on.  The dispatcher reads request heads through it; a
service process serves HTTP through it and hands kept-alive connections back.
It also sends a file's bytes straight from the page cache (L{SocketTransport.send_file},
C{os.sendfile}), which the static pools serve their larger files with.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Callable

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProtocol,
    IPushProducer,
    IReactorFDSet,
    IReadDescriptor,
    ISSLTransport,
    ITransport,
    IWriteDescriptor,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

READ_SIZE = 65536
WRITE_HIGH_WATER = 256 * 1024
#: A write outside a read smaller than this waits for the end of the reactor iteration.
BATCH_LIMIT = 64 * 1024
#: The most one C{sendfile} call moves (a fast reader still lets the loop turn).
SENDFILE_CHUNK = 1 << 20
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024

_DISCONNECTED = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.ESHUTDOWN)


def transport_for(
    reactor: IReactorFDSet,
    sock: socket.socket,
    protocol: IProtocol,
    peer: IAddress,
    host: IAddress,
    tls: dict[str, str] | None = None,
) -> "SocketTransport":
    """A L{SocketTransport}, or a L{DecryptedSocketTransport} if C{tls} facts are given."""
    if tls is None:
        return SocketTransport(reactor, sock, protocol, peer, host)
    transport = DecryptedSocketTransport(reactor, sock, protocol, peer, host)
    transport.tls = tls
    return transport


class _Flusher:
    """Sends, once per reactor iteration, what transports wrote while reading.

    Sending each response the moment it is written costs a system call (and
    on loopback, a wakeup of the client) per response, interleaved with the
    reads; sending all of an iteration's responses after its reads is what
    Twisted's own TCP transport does, without its add/remove-writer churn.
    """

    def __init__(self, reactor: object) -> None:
        self.reactor = reactor
        self.pending: list["SocketTransport"] = []
        self.call: object = None
        self._held = 0

    def add(self, transport: "SocketTransport") -> None:
        self.pending.append(transport)
        if self.call is None and not self._held:
            self.call = self.reactor.callLater(0, self.run)  # type: ignore[attr-defined]

    def hold(self) -> None:
        """A batch of connections is being served (L{release} ends it): send nothing yet."""
        self._held += 1

    def release(self) -> None:
        """The batch is served: send what it wrote now, in this reactor iteration.

        A service instance adopts a batch of connections at one wakeup of its handoff
        channel; their responses leave when the batch is done rather than one reactor
        iteration later (an C{epoll_wait} and a timer fewer per batch).
        """
        self._held -= 1
        if self._held or not self.pending:
            return
        call, self.call = self.call, None
        if call is not None and call.active():  # type: ignore[attr-defined]
            call.cancel()  # type: ignore[attr-defined]
        self.run()

    def run(self) -> None:
        self.call = None
        pending, self.pending = self.pending, []
        for transport in pending:
            transport._flush_scheduled = False
            try:
                transport._flush_batch()
                if transport.disconnecting and transport._lingering is None and not transport._unsent:
                    # loseConnection() was called: everything is sent, close.
                    transport._lose_now(error.ConnectionDone())
            except Exception:
                # One connection's failed send ends that connection only: the others in the
                # batch are still sent, and (run from a handoff channel's read, L{held_sends})
                # the channel that brought them stays open.
                SocketTransport.log.failure("sending on a connection failed; closing it")
                transport.abortConnection()


_flushers: dict[int, _Flusher] = {}


def held_sends(reactor: object) -> "_Holding":
    """C{with held_sends(reactor):} what transports write inside leaves together at its end."""
    return _Holding(_flusher(reactor))


class _Holding:
    """The context manager L{held_sends} returns: holds the reactor's flusher while inside."""

    __slots__ = ("_flusher",)

    def __init__(self, flusher: _Flusher) -> None:
        self._flusher = flusher

    def __enter__(self) -> None:
        self._flusher.hold()

    def __exit__(self, *exc: object) -> None:
        self._flusher.release()


def _flusher(reactor: object) -> _Flusher:
    f = _flushers.get(id(reactor))
    if f is None or f.reactor is not reactor:
        f = _flushers[id(reactor)] = _Flusher(reactor)
    return f


class FileShrank(Exception):
    """The file ended before the promised count of bytes was sent (it was truncated meanwhile)."""


class _FileSegment:
    """A part of a file being sent (L{SocketTransport.send_file})."""

    def __init__(self, fd: int, offset: int, count: int, progress: Callable[[int], None] | None) -> None:
        self.fd = fd
        self.offset = offset
        self.remaining = count
        self.sent = 0
        self.progress = progress
        self.done: Deferred[int] = Deferred()


def address_of(sockaddr: object, family: int) -> IAddress:
    """The Twisted address object for a C{getpeername}-style C{sockaddr}."""
    if family == socket.AF_INET:
        host, port = sockaddr  # type: ignore[misc]
        return IPv4Address("TCP", host, port)
    if family == socket.AF_INET6:
        host, port = sockaddr[:2]  # type: ignore[index]
        return IPv6Address("TCP", host, port)
    return UNIXAddress(sockaddr if sockaddr else None)  # type: ignore[arg-type]


def address_to_wire(addr: IAddress) -> list:
    """A JSON-able form of a TCP or Unix address for the handoff channel."""
    if isinstance(addr, (IPv4Address, IPv6Address)):
        return ["tcp6" if isinstance(addr, IPv6Address) else "tcp", addr.host, addr.port]
    name = getattr(addr, "name", None)
    if isinstance(name, bytes):
        # UNIXAddress keeps its name as bytes; JSON carries text.
        name = os.fsdecode(name)
    return ["unix", name]


def address_from_wire(value: list) -> IAddress:
    """The inverse of L{address_to_wire}."""
    if value[0] == "tcp":
        return IPv4Address("TCP", value[1], int(value[2]))
    if value[0] == "tcp6":
        return IPv6Address("TCP", value[1], int(value[2]))
    return UNIXAddress(value[1])


@implementer(ITransport, IConsumer, IPushProducer, IReadDescriptor, IWriteDescriptor)
class SocketTransport:
    """A stream transport over a socket it may later give away.

    @ivar disconnecting: C{True} once L{loseConnection} was called (twisted.web
        reads it).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorFDSet,
        sock: socket.socket,
        protocol: IProtocol,
        peer: IAddress,
        host: IAddress,
    ) -> None:
        sock.setblocking(False)
        self.reactor = reactor
        self.socket = sock
        self._fd = sock.fileno()
        self.protocol = protocol
        self._peer = peer
        self._host = host
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        self._reading = False
        self._writing = False
        self._paused = False
        #: Inside L{_deliver}: pausing and resuming only set L{_paused}; the reactor
        #: registration follows once the protocol returns (L{_deliver}).
        self._delivering = False
        self._flushed: list[Callable[[], None]] = []
        self.connected = True
        self.disconnecting = False
        self.detached = False
        self._read_done = False  # the peer half-closed; the protocol keeps writing
        self._lingering: object = None
        self._discarded = 0
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0
        self._flush_scheduled = False
        self._flusher = _flusher(reactor)
        #: The file being sent, and what was written meanwhile (sent after it).
        self._segment: _FileSegment | None = None
        self._after: list[bytes] = []

    def start(self, data: bytes = b"") -> None:
        """Connect the protocol, replay C{data} already read elsewhere, then read."""
        self.protocol.makeConnection(self)
        if data and self.connected and not self.detached:
            self._deliver(data)  # registers for reading, unless paused or closing
        elif self.connected and not self.detached and not self._paused and not self.disconnecting:
            self._start_reading()

    # -- IReadDescriptor / IWriteDescriptor

    def fileno(self) -> int:
        return self._fd if self.connected else -1

    def logPrefix(self) -> str:
        return "SocketTransport"

    def doRead(self) -> object:
        try:
            data = self.socket.recv(READ_SIZE)
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError as e:
            return error.ConnectionLost(str(e))
        if not data:
            if self._lingering is None and not self.disconnecting:
                half_close = getattr(self.protocol, "eof_received", None)
                if half_close is not None and half_close():
                    # The peer will send no more, but still reads: keep writing.
                    self._read_done = True
                    self._stop_reading()
                    return None
            return error.ConnectionDone()
        if self._lingering is not None:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                return error.ConnectionDone()
            return None
        self._deliver(data)
        return None

    def _deliver(self, data: bytes) -> None:
        """Give C{data} to the protocol; what it writes meanwhile leaves in one C{send}.

        twisted.web writes a response's head and body separately; sending each
        at once would cost a system call and a TCP segment apiece.  Likewise the
        protocol's pauses and resumes meanwhile (twisted.web pauses while it answers
        and resumes when done, or closes) change the reactor's registration once, at
        the end: none for a connection answered and closed, none for a kept-alive
        request answered at once, instead of an C{epoll_ctl} each.
        """
        if self._batch is None:
            self._batch = []
            self._batch_bytes = 0
        self._delivering = True
        try:
            self.protocol.dataReceived(data)
        finally:
            self._delivering = False
            if self._batch:
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    self._flusher.add(self)
            else:
                self._batch = None
            if self.connected and not self.detached and not self.disconnecting:
                if self._paused:
                    self._stop_reading()
                else:
                    self._start_reading()

    def _flush_batch(self) -> None:
        """Send what was written while reading (now: before closing or handing off)."""
        batch, self._batch = self._batch, None
        if batch:
            self._send(b"".join(batch))

    def doWrite(self) -> object:
        while self._buffer:
            try:
                sent = self.socket.send(self._buffer[0])
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as e:
                return error.ConnectionLost(str(e))
            first = self._buffer[0]
            self._buffered -= sent
            if sent < len(first):
                self._buffer[0] = first[sent:]
                return None
            del self._buffer[0]
        if self._segment is not None:
            if not self._pump_file():
                return None
            if self._buffer or self._segment is not None:
                return None  # what was written after the file, or the next file, is going
        self._stop_writing()
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()
            if self._buffer:
                # The producer wrote more as it resumed: not flushed yet.
                return None
        self._on_flushed()
        if self.disconnecting and not self._buffer:
            if self._lingering is True:
                self._begin_linger()
                return None
            return self._close_now(error.ConnectionDone())
        return None

    def connectionLost(self, reason: Failure) -> None:
        """Called by the reactor (or by us) when the socket is finished."""
        if not self.connected:
            return
        self.connected = False
        self._stop_reading()
        self._stop_writing()
        self._buffer.clear()
        self._buffered = 0
        segment, self._segment = self._segment, None
        self._after = []
        if segment is not None:
            segment.done.errback(Failure(error.ConnectionLost("the connection closed while a file was being sent")))
        try:
            self.socket.close()
        except OSError:
            pass
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        self._flushed.clear()
        if self._lingering not in (None, True):
            if self._lingering.active():  # type: ignore[attr-defined]
                self._lingering.cancel()  # type: ignore[attr-defined]
        self.protocol.connectionLost(reason)

    # -- ITransport

    def write(self, data: bytes) -> None:
        if not data or not self.connected or self.disconnecting or self.detached:
            return
        batch = self._batch
        if batch is not None:
            batch.append(data)
            self._batch_bytes += len(data)
            if self._batch_bytes >= BATCH_LIMIT:
                # Big enough for a send of its own; and the high-water mark
                # (pausing the producer) must see it.
                self._flush_batch()
            return
        if len(data) < BATCH_LIMIT and not self._buffer:
            # A write made outside a read (an asynchronous response): what
            # else is written in this reactor iteration (twisted.web writes a
            # response's head, body and end separately) leaves in one send.
            self._batch = [data]
            self._batch_bytes = len(data)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._flusher.add(self)
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not self.connected or self.detached:
            return
        if self._segment is not None:
            # Behind the file being sent.
            self._after.append(bytes(data))
            return
        if not self._buffer:
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                if e.errno in _DISCONNECTED:
                    self.reactor.callLater(0, self._lose_now, error.ConnectionLost(str(e)))  # type: ignore[attr-defined]
                    return
                raise
            if sent == len(data):
                return
            data = data[sent:]
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        self._start_writing()
        if (
            self._buffered > WRITE_HIGH_WATER
            and self._producer is not None
            and not self._producer_paused
        ):
            self._producer_paused = True
            self._producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once everything written so far is sent.

        What is batched is sent, and the socket closed, at the end of this
        reactor iteration (with every other transport's), not one timed call
        per connection.
        """
        if not self.connected or self.disconnecting or self.detached:
            return
        self.disconnecting = True
        self._stop_reading()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flusher.add(self)

    def close_lingering(self) -> None:
        """Close after an error answer without destroying that answer.

        A client may still be sending (a body, pipelined requests) when we
        answer early; closing a socket with unread input sends a reset, which
        can make the client's kernel discard our answer before it is read.
        So: flush, half-close, then read and discard for a short while (until
        the client closes, L{LINGER_SECONDS} pass, or L{LINGER_BYTES} arrive),
        then close.
        """
        if not self.connected or self.disconnecting or self.detached:
            return
        self._flush_batch()
        self.disconnecting = True
        self._lingering = True
        if not self._unsent:
            self._begin_linger()

    def _begin_linger(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            self.reactor.callLater(0, self._lose_now, error.ConnectionDone())  # type: ignore[attr-defined]
            return
        if self._read_done:
            # The peer already finished sending: nothing to read and discard.
            self.reactor.callLater(0, self._lose_now, error.ConnectionDone())  # type: ignore[attr-defined]
            return
        self._lingering = self.reactor.callLater(  # type: ignore[attr-defined]
            LINGER_SECONDS, self._lose_now, error.ConnectionDone()
        )
        self._paused = False
        self._start_reading()

    def abortConnection(self) -> None:
        """Close at once, dropping unsent data."""
        if not self.connected or self.detached:
            return
        self._batch = None
        self._buffer.clear()
        self._buffered = 0
        self._lose_now(error.ConnectionAborted())

    def _lose_now(self, why: Exception) -> None:
        if not self.connected or self.detached:
            return
        if self._unsent and isinstance(why, error.ConnectionDone):
            return  # doWrite closes once the rest is sent
        self._close_now(why)

    def _close_now(self, why: Exception) -> None:
        # Only this process holds the socket now; a half-close first lets the
        # client read the whole response even if it sent bytes we never read.
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.connectionLost(Failure(why))
        return None

    def getPeer(self) -> IAddress:
        return self._peer

    #: The facts of the TLS session this plaintext connection belongs to (it
    #: came through the TLS front), or C{None}; see L{okws_twisted.wire.handoff.TLS_FACTS}.
    tls: dict[str, str] | None = None
    #: The certificate the TLS front chose for this connection, as the dispatcher knows it:
    #: C{(table, id)} (L{okws_twisted.wire.certs.CertificateTable}), or C{None} (plain, or
    #: a listener with one certificate).  The dispatcher's alone: services never see it.
    cert: "tuple[object, int] | None" = None

    def set_peer(self, peer: IAddress) -> None:
        """The connection's real client is C{peer} (a PROXY protocol header said so)."""
        self._peer = peer

    def getHost(self) -> IAddress:
        return self._host

    # -- IConsumer

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = producer
        self._producer_paused = False
        if self._buffered > WRITE_HIGH_WATER:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False

    # -- IPushProducer (the reading side)

    def pauseProducing(self) -> None:
        self._paused = True
        if not self._delivering:
            self._stop_reading()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.connected and not self.disconnecting and not self.detached and not self._delivering:
            self._start_reading()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- handing the socket on

    @property
    def _unsent(self) -> bool:
        """Something written (or a file being sent) is not yet with the kernel."""
        return bool(self._buffer) or self._segment is not None

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet accepted by the kernel (a file being sent is not buffered)."""
        return self._buffered + sum(map(len, self._batch or ())) + sum(map(len, self._after))

    def notify_flushed(self, callback: Callable[[], None]) -> None:
        """Call C{callback} once the write buffer is empty and no file is being sent (now, if so)."""
        self._flush_batch()
        if not self._unsent:
            callback()
        else:
            self._flushed.append(callback)

    # -- sending a file

    def send_file(self, fd: int, offset: int, count: int, progress: Callable[[int], None] | None = None) -> "Deferred[int]":
        """Send C{count} bytes of file C{fd} from C{offset}, after everything written so far.

        The bytes go from the page cache to the socket (C{os.sendfile}), never through a
        buffer of ours: back-pressure is the socket's own buffer, so a slow reader of a huge
        file costs a descriptor and an offset.  What is written meanwhile goes after the file.
        C{progress(n)} is called as each C{n} bytes are accepted by the kernel.  The caller
        keeps C{fd} (and closes it once the result is in).

        @return: fires with C{count}; fails with C{ConnectionLost} if the connection ends
            first, with L{FileShrank} if the file ends early (the caller promised a length: it
            must abort the connection), or with the C{OSError} of a failed read.
        """
        if self._segment is not None:
            raise RuntimeError("a file is already being sent on this connection")
        if not self.connected or self.detached or self.disconnecting:
            return fail(error.ConnectionLost("the connection is closing"))
        self._flush_batch()  # the response head, before the file
        segment = self._segment = _FileSegment(fd, offset, count, progress)
        if not self._buffer:
            self._pump_file()
        else:
            self._start_writing()
        return segment.done

    def _pump_file(self) -> bool:
        """Send from the file until it is done or the socket is full; C{True} when done."""
        segment = self._segment
        assert segment is not None
        while segment.remaining > 0:
            try:
                sent = os.sendfile(self._fd, segment.fd, segment.offset, min(segment.remaining, SENDFILE_CHUNK))
            except BlockingIOError:
                self._start_writing()
                return False
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in _DISCONNECTED:
                    self._end_segment(Failure(error.ConnectionLost(str(e))))
                    self.reactor.callLater(0, self._lose_now, error.ConnectionLost(str(e)))  # type: ignore[attr-defined]
                else:
                    self._end_segment(Failure(e))
                return True
            if sent == 0:
                self._end_segment(Failure(FileShrank(f"the file ended {segment.remaining} bytes early")))
                return True
            segment.offset += sent
            segment.remaining -= sent
            segment.sent += sent
            if segment.progress is not None:
                segment.progress(sent)
        self._end_segment(segment.sent)
        return True

    def _end_segment(self, result: "int | Failure") -> None:
        segment, self._segment = self._segment, None
        after, self._after = self._after, []
        assert segment is not None
        for data in after:
            self._send(data)
        if isinstance(result, Failure):
            segment.done.errback(result)
        else:
            segment.done.callback(result)

    def _on_flushed(self) -> None:
        callbacks, self._flushed = self._flushed, []
        for cb in callbacks:
            cb()

    def detach(self) -> socket.socket:
        """Stop using the socket without closing or shutting it down.

        The protocol is told nothing; the caller owns the returned socket.
        Unsent data (there should be none: wait for L{notify_flushed}) is
        dropped.
        """
        if not self.connected or self.detached:
            raise RuntimeError("not connected")
        if self._segment is not None:
            raise RuntimeError("a file is being sent on this connection")
        self._flush_batch()
        self._stop_reading()
        self._stop_writing()
        self.detached = True
        self.connected = False
        self._buffer.clear()
        self._buffered = 0
        self._producer = None
        self._flushed.clear()
        return self.socket

    # -- reactor registration

    #: Where this transport registers to be read and written: the reactor, or a
    #: L{DescriptorGroup} (L{join_group}).
    _fdset: IReactorFDSet | None = None

    def join_group(self, group: "DescriptorGroup") -> None:
        """Be polled by C{group} instead of the reactor from now on (as registered now)."""
        old = self._fdset or self.reactor
        if self._reading:
            old.removeReader(self)
            group.addReader(self)
        if self._writing:
            old.removeWriter(self)
            group.addWriter(self)
        self._fdset = group

    def _start_reading(self) -> None:
        if not self._reading and not self._read_done:
            self._reading = True
            (self._fdset or self.reactor).addReader(self)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            (self._fdset or self.reactor).removeReader(self)

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            (self._fdset or self.reactor).addWriter(self)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            (self._fdset or self.reactor).removeWriter(self)


_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR


@implementer(IReadDescriptor)
class DescriptorGroup:
    """Descriptors polled by an epoll object of their own, which the reactor polls as one reader.

    Twisted's reactor calls each ready descriptor through C{log.callWithLogger} and
    C{context.call} (about 1.5 us a call): for the dispatcher's relay, two of them per relayed
    request, and one in the service instance (its relay pairs).  Their transports join a group
    (L{SocketTransport.join_group}); when any is ready the group's epoll descriptor is, the
    reactor calls the group once, and the group calls every ready
    descriptor's C{doRead}/C{doWrite} directly, as the reactor's C{_doReadOrWrite} would
    (disconnection, a failed call: the descriptor is removed and told C{connectionLost}).  The
    group is in the reactor only while it holds a descriptor (an empty one leaves it clean).
    It provides what L{SocketTransport} calls of C{IReactorFDSet}: add and remove, readers and
    writers.  Level-triggered, like the reactor: a descriptor not drained is ready again.  What
    members write while the group serves them leaves when it is done (L{held_sends}): one send
    per transport, in that wakeup, without the flusher's zero-delay timer.
    """

    log = Logger()

    def __init__(self, reactor: IReactorFDSet) -> None:
        self.reactor = reactor
        self._poll = select.epoll()
        self._fds: dict[int, IReadDescriptor] = {}
        self._masks: dict[int, int] = {}
        #: The descriptor each member had when it joined (a closed one says -1).
        self._fd_of: dict[object, int] = {}
        self._in_reactor = False

    def fileno(self) -> int:
        return self._poll.fileno()

    def logPrefix(self) -> str:
        return "DescriptorGroup"

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the group (it stopped, or removeAll): so are its members."""
        self._in_reactor = False
        for selectable in list(self._fds.values()):
            if selectable not in self._fd_of:
                continue  # (an earlier member's loss took it already)
            self._drop(selectable)
            selectable.connectionLost(reason)  # type: ignore[attr-defined]

    def doRead(self) -> None:
        # What members write meanwhile leaves together when the batch is done (L{held_sends}).
        flusher = _flusher(self.reactor)
        flusher.hold()
        try:
            self._dispatch()
        finally:
            flusher.release()

    def _dispatch(self) -> None:
        fds = self._fds
        masks = self._masks
        for fd, event in self._poll.poll(0, len(fds) or 1):
            selectable = fds.get(fd)
            if selectable is None:
                continue
            mask = masks[fd]
            why = None
            try:
                if event & _GONE and not event & _IN:
                    why = error.ConnectionDone() if mask & _IN else error.ConnectionLost()
                else:
                    if event & _IN and mask & _IN:
                        why = selectable.doRead()
                    if not why and event & _OUT and masks.get(fd, 0) & _OUT and fds.get(fd) is selectable:
                        why = selectable.doWrite()  # type: ignore[attr-defined]
            except Exception as e:
                self.log.failure("a descriptor's read or write failed; closing it")
                why = e
            if why and self._fd_of.get(selectable) is not None:
                self._drop(selectable)
                selectable.connectionLost(Failure(why))  # type: ignore[attr-defined]

    def addReader(self, reader: IReadDescriptor) -> None:
        self._update(reader, _IN, True)

    def removeReader(self, reader: IReadDescriptor) -> None:
        self._update(reader, _IN, False)

    def addWriter(self, writer: IWriteDescriptor) -> None:
        self._update(writer, _OUT, True)

    def removeWriter(self, writer: IWriteDescriptor) -> None:
        self._update(writer, _OUT, False)

    def getReaders(self) -> list[IReadDescriptor]:
        return [s for fd, s in self._fds.items() if self._masks[fd] & _IN]

    def getWriters(self) -> list[IWriteDescriptor]:
        return [s for fd, s in self._fds.items() if self._masks[fd] & _OUT]  # type: ignore[misc]

    def _update(self, selectable: object, bit: int, on: bool) -> None:
        fd = self._fd_of.get(selectable)
        if fd is None:
            if not on:
                return
            fd = self._fd_of[selectable] = selectable.fileno()  # type: ignore[attr-defined]
            self._fds[fd] = selectable  # type: ignore[assignment]
            self._masks[fd] = bit
            self._poll.register(fd, bit)
            if not self._in_reactor:
                self._in_reactor = True
                self.reactor.addReader(self)
            return
        old = self._masks[fd]
        mask = old | bit if on else old & ~bit
        if mask == old:
            return
        if mask:
            self._masks[fd] = mask
            self._poll.modify(fd, mask)
        else:
            self._drop(selectable)

    def _drop(self, selectable: object) -> None:
        fd = self._fd_of.pop(selectable)
        del self._fds[fd]
        del self._masks[fd]
        try:
            self._poll.unregister(fd)
        except OSError:
            pass  # (closed already: the kernel dropped it)
        if not self._fds and self._in_reactor:
            self._in_reactor = False
            self.reactor.removeReader(self)


_groups: dict[int, DescriptorGroup] = {}


def descriptor_group(reactor: IReactorFDSet) -> DescriptorGroup:
    """The reactor's one L{DescriptorGroup}."""
    group = _groups.get(id(reactor))
    if group is None or group.reactor is not reactor:
        group = _groups[id(reactor)] = DescriptorGroup(reactor)
    return group


@implementer(ISSLTransport)
class DecryptedSocketTransport(SocketTransport):
    """The plaintext side of a client connection whose TLS the TLS front terminated.

    It provides C{ISSLTransport}, which is how twisted.web decides
    C{request.isSecure()} (and so C{https} in the URLs it builds); the
    session's facts are in L{tls}.  There is no client certificate.
    """

    def getPeerCertificate(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        """twisted.web asks for it on secure transports; a socket pair has no Nagle (the front sets it on the TCP side)."""

    def getTcpNoDelay(self) -> bool:
        return True
