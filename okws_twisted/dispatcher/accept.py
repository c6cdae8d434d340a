# -*- test-case-name: tests.dispatcher.test_dispatcher -*-
"""
The dispatcher's front door (OKWS's okd): accepting connections and reading request heads.

L{Acceptor} accepts on a listening socket the launcher opened, in batches;
L{HeadConnection} reads one client's request head, bounded in bytes and by one
deadline for the whole head, then asks the dispatcher to route it, or answers
itself (400, 404, 408, 413, 414, 421, 431, 501, 503, C{OPTIONS *}) with the error pages the
template publisher rendered.  A 404 (or C{OPTIONS *}) on a kept-alive connection leaves it
open for the next request, as nginx does: a page whose favicon is missing costs no new
connection.
"""

from __future__ import annotations

import errno
import socket
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.dispatcher.proxyproto import ProxyError, ProxyHeaderReader
from okws_twisted.wire.deadlines import Deadline
from okws_twisted.wire.errorpage import error_response
from okws_twisted.wire.httpframe import HeadReader, HTTPError, Limits, RequestHead
from okws_twisted.wire.routing import Route
from okws_twisted.wire.transport import SocketTransport, address_from_wire, address_of

if TYPE_CHECKING:
    from okws_twisted.dispatcher.dispatcher import Dispatcher
    from okws_twisted.dispatcher.pool import InstanceLink
    from okws_twisted.dispatcher.relay import RelayStart

ACCEPTS_PER_WAKEUP = 64
#: The methods a service may implement, as the answer to C{OPTIONS *} says.
SERVER_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ACCEPT_PAUSE = 0.1


@implementer(IReadDescriptor)
class Acceptor:
    """Accepts connections on one inherited listening socket."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        accepted: Callable[[socket.socket, Any, Any], None],
        wakeup: Callable[[], ContextManager[object]] = nullcontext,
    ):
        sock.setblocking(False)
        self._reactor = reactor
        self._sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
        #: What one wakeup's accepts run inside (the dispatcher's: the handoffs they start
        #: leave together at its end).
        self._wakeup = wakeup
        tcp = self._family != socket.AF_UNIX
        #: The listener has C{TCP_NODELAY}, which its accepted sockets inherit (L{_set_nodelay}).
        self._nodelay_inherited = tcp and self._set_nodelay(sock)
        #: Each accepted socket still needs its own C{setsockopt}: until the queue of
        #: connections made before the listener had the option is drained.
        self._nodelay_each = tcp
        # What socket.accept() reads from properties (each an enum conversion) on every call.
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        self._host = address_of(sock.getsockname(), sock.family)
        self._accepted = accepted
        self.accepting = False
        self._closed = False

    def start(self) -> None:
        if not self.accepting:
            self.accepting = True
            self._reactor.addReader(self)

    def stop(self) -> None:
        if self.accepting:
            self.accepting = False
            self._reactor.removeReader(self)

    def close(self) -> None:
        self._closed = True
        self.stop()
        self._sock.close()

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "Acceptor"

    @staticmethod
    def _set_nodelay(sock: socket.socket) -> bool:
        """C{TCP_NODELAY} on the listening socket, which Linux copies to every socket it accepts
        from then on: one C{setsockopt} per listener instead of one per connection.

        Connections whose handshake completed before it are already in the accept queue without
        it: each accepted socket gets its own C{setsockopt} until an accept finds the queue empty
        (L{doRead}); every connection after that was made from the listener with the option.
        Returns whether the listener took it.
        """
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return False
        return True

    def doRead(self) -> None:
        with self._wakeup():
            self._accept_some()

    def _accept_some(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if not self.accepting:
                # The previous accept reached the high-water mark (or stop()
                # was called): leave the rest in the kernel's queue.
                return
            try:
                # socket.accept() without its per-call property reads: the same C accept4 (close-on-exec).
                fd, addr = self._sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                # The queue is empty: every later connection inherits the listener's TCP_NODELAY.
                if self._nodelay_inherited:
                    self._nodelay_each = False
                return
            except InterruptedError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the socket stays readable, so pause
                    # instead of spinning; the rest waits in the kernel's queue.
                    self.log.warn("accept failed ({error}); pausing accepts for {t}s", error=e, t=ACCEPT_PAUSE)
                    self.stop()
                    self._reactor.callLater(ACCEPT_PAUSE, self._resume)
                return
            conn = socket.socket(*self._kind, fd)
            if self._nodelay_each:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._accepted(conn, address_of(addr, self._family), self._host)

    def _resume(self) -> None:
        if not self._closed:
            self.start()

    def connectionLost(self, reason: Failure) -> None:
        self.accepting = False


class HeadConnection:
    """A client connection whose request head the dispatcher is reading.

    States: (reading the PROXY header ->) reading the head -> (answered
    with an error | queued for an instance -> handed off, waiting for the
    ack -> gone).  On a C{haproxy:} listener the connection first reads a
    PROXY protocol header, within the same deadline as the head; its source
    address becomes the transport's peer, and a bad or missing header closes
    the connection without an answer.

    An answer that leaves the connection's framing intact (404 for a request
    without a body, C{OPTIONS *}) on a kept-alive HTTP/1.1 connection does not
    close it: answered -> idle (kept alive, at most C{keepalive_timeout}
    seconds until the next request's first byte, then closed without an
    answer) -> reading the head again.  Every other answer closes.
    """

    transport: SocketTransport
    log = Logger()

    def __init__(self, dispatcher: "Dispatcher", limits: Limits, deadline: float, proxy: bool = False) -> None:
        self._dispatcher = dispatcher
        self._proxy: ProxyHeaderReader | None = ProxyHeaderReader() if proxy else None
        self._limits = limits
        self._reader = HeadReader(limits)
        self._deadline = deadline
        #: Armed by L{start_deadline} once the bytes read with the connection did not complete the head.
        self._timer: Deadline | None = None
        self.started = dispatcher.reactor.seconds()
        self.head: RequestHead | None = None
        self.service: str | None = None
        #: How the head was routed (its service and the host pattern that chose it).
        self.route: Route | None = None
        #: For a service with C{isolation = request}: its first request, framed.
        self.relay: "RelayStart | None" = None
        #: While handed to an instance for a relay: the socket pair (ours, the instance's).
        self.pair: tuple[socket.socket, socket.socket] | None = None
        self.queue_timer: IDelayedCall | None = None
        self.done = False
        #: Answers given on this connection while it stayed open.
        self.answers = 0
        #: Kept alive after an answer, and no byte of the next request has come yet.
        self.idle = False
        self._reading = False
        self._carry: bytes | None = None

    @property
    def data(self) -> bytes:
        """Every byte of the current request read from the client so far."""
        return self._reader.buffered

    def handoff_facts(self) -> tuple[socket.socket, Any, Any, dict[str, str] | None, Any]:
        """What a handoff says of this connection: its socket, peer, host, TLS facts, certificate."""
        transport = self.transport
        return transport.socket, transport.getPeer(), transport.getHost(), transport.tls, transport.cert

    def full(self) -> "HeadConnection":
        """This connection as a L{HeadConnection}: itself (see L{RoutedAtAccept.full})."""
        return self

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport

    def start_deadline(self) -> None:
        """The head must arrive within the deadline (from now: the connection was just accepted).

        Not armed when the head came with the connection (the usual case): it is routed at once.
        """
        if self._timer is None and self.head is None and not self.done:
            self._timer = self._dispatcher.deadlines.call_later(self._deadline, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.head is not None or self.done:
            return
        if self._proxy is not None:
            try:
                parsed = self._proxy.feed(data)
            except ProxyError as e:
                self._refuse(str(e))
                return
            if parsed is None:
                return
            header, data = parsed
            self._proxy = None
            if header.source is not None:
                self.transport.set_peer(address_from_wire(list(header.source)))
            if not data:
                return
        if self.idle:
            # The next request has begun: its head has head_timeout, from now.
            self.idle = False
            self.started = self._dispatcher.reactor.seconds()
            self._cancel_timer()
            self._timer = self._dispatcher.deadlines.call_later(self._dispatcher.config.head_timeout, self._timed_out)
        self._read(data)

    def _read(self, data: bytes) -> None:
        """Feed the head reader; route each complete head (pipelined ones after a kept answer too)."""
        self._reading = True
        try:
            while True:
                try:
                    head = self._reader.feed(data)
                except HTTPError as e:
                    self.answer(e.status, e.reason)
                    return
                if head is None:
                    return
                self.head = head
                self.transport.pauseProducing()
                self._cancel_timer()
                self._dispatcher.route(self)
                carry, self._carry = self._carry, None
                if carry is None:
                    return  # queued, handed off or closed: not ours to read any more
                data = carry
        finally:
            self._reading = False

    def _refuse(self, why: str) -> None:
        """Close a connection whose PROXY header is bad or late: no answer, no access record."""
        self.log.info("closing a connection from {peer}: {why}", peer=self.transport.getPeer(), why=why)
        self._cancel_timer()
        self.transport.abortConnection()

    def _timed_out(self) -> None:
        self._timer = None
        if self.idle and not self.done:
            # A kept-alive connection that sent nothing more: close it, no answer.
            self.done = True
            self._dispatcher.lost(self)
            self.transport.loseConnection()
        elif self._proxy is not None and not self.done:
            self._refuse("no PROXY header in time")
        elif self.head is None and not self.done:
            self.answer(408, "The request head did not arrive in time.")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def open_pair(self) -> socket.socket:
        """A fresh socket pair for a relay; returns the instance's end (the dispatcher keeps the other)."""
        self.drop_pair()
        self.pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return self.pair[1]

    def drop_pair(self) -> None:
        """Close a relay's pair that no instance took (refused, lost, or the handoff failed)."""
        pair, self.pair = self.pair, None
        if pair is not None:
            for end in pair:
                end.close()

    def _may_keep(self) -> bool:
        """Whether the connection may carry another request after this answer.

        Only where framing is beyond doubt: a complete HTTP/1.1 head with no
        body, a client that keeps the connection, a dispatcher that is not
        stopping, and the connection under C{max_requests_per_connection}.
        """
        head = self.head
        dispatcher = self._dispatcher
        return (
            head is not None
            and head.version == b"HTTP/1.1"
            and head.keep_alive
            and not head.chunked
            and not head.content_length
            and not dispatcher.draining
            and self.answers + 1 < dispatcher.config.max_requests_per_connection
        )

    def answer(self, status: int, message: str = "", retry_after: int | None = None) -> None:
        """Answer with an okws error page; close, unless a 404 leaves the connection reusable."""
        self.drop_pair()
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        keep = status == 404 and self._may_keep()
        head_only = self.head is not None and self.head.method == b"HEAD"
        response = error_response(
            status, message, pages=self._dispatcher.pages, retry_after=retry_after, head_only=head_only,
            fields=self._dispatcher.stamp.fields(), close=not keep,
        )
        body = 0 if head_only else len(response) - response.index(b"\r\n\r\n") - 4
        self._dispatcher.answered(self, status, message, body)
        self.transport.write(response)
        self._after_answer(keep)

    def answer_options(self) -> None:
        """C{OPTIONS *}: which methods this server's services may implement."""
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        keep = self._may_keep()
        self._dispatcher.answered(self, 200, "OPTIONS *", 0)
        self.transport.write(
            b"HTTP/1.1 200 OK\r\n" + self._dispatcher.stamp.fields()
            + b"Allow: " + SERVER_METHODS.encode() + b"\r\nContent-Length: 0\r\n"
            + (b"" if keep else b"Connection: close\r\n") + b"\r\n"
        )
        self._after_answer(keep)

    def _after_answer(self, keep: bool) -> None:
        if not keep:
            self.transport.close_lingering()
            return
        assert self.head is not None
        rest = self._reader.buffered[self.head.size:]
        dispatcher = self._dispatcher
        self.answers += 1
        self._reader = HeadReader(self._limits)
        self.head = None
        self.service = None
        self.route = None
        self.done = False
        self.started = dispatcher.reactor.seconds()
        dispatcher.reading.add(self)
        if rest:
            self._timer = dispatcher.deadlines.call_later(dispatcher.config.head_timeout, self._timed_out)
        else:
            self.idle = True
            self._timer = dispatcher.deadlines.call_later(dispatcher.config.keepalive_timeout, self._timed_out)
        # The next request may go to a service, which writes to the socket
        # itself: read it only once our answer is all in the kernel, so the
        # answers leave in order.
        self.transport.notify_flushed(lambda: self._next_request(rest))

    def _next_request(self, rest: bytes) -> None:
        if self.done or not self.transport.connected:
            return
        self.transport.resumeProducing()
        if self._reading:
            self._carry = rest
        elif rest:
            self._read(rest)

    def release(self, link: "InstanceLink", conn_id: int) -> None:
        """The instance acknowledged the connection.

        Handed off: the service holds it now; drop our copy, shutting nothing down.  Relayed:
        the instance holds its end of the pair; the dispatcher relays over ours.
        """
        self.done = True
        self._cancel_timer()
        if self.pair is not None:
            mine, theirs = self.pair
            self.pair = None
            theirs.close()
            self._dispatcher.start_relay(self, link, conn_id, mine)
            return
        self.transport.detach().close()
        self._dispatcher.closed()

    def connectionLost(self, reason: Failure) -> None:
        self.drop_pair()
        self._cancel_timer()
        if not self.done:
            self.done = True
            self._dispatcher.lost(self)
        self._dispatcher.closed()


class RoutedAtAccept:
    """A connection whose whole head came with it and was routed at accept (the usual case).

    The dispatcher's fast path (L{okws_twisted.dispatcher.dispatcher.Dispatcher._accepted}):
    nothing but the socket, its addresses, the bytes read and the routed head, from the handoff to
    the instance's ack, which closes the socket here.  No transport is made and the socket is never
    registered with the reactor.  Whatever else may happen to a connection in transit (the instance
    refuses it, the handoff fails, the instance goes away and it must wait for another) happens to a
    L{HeadConnection} made from it then (L{full}), in the state the ordinary path would have it in.
    """

    __slots__ = ("_dispatcher", "socket", "peer", "host", "head", "route", "service", "started", "_reader", "done")

    #: Never a relayed connection (C{isolation = request} takes the ordinary path), never TLS.
    pair = None
    relay = None

    def __init__(
        self, dispatcher: "Dispatcher", sock: socket.socket, peer: Any, host: Any, reader: HeadReader,
        head: RequestHead, route: Route,
    ) -> None:
        self._dispatcher = dispatcher
        self.socket = sock
        self.peer = peer
        self.host = host
        self._reader = reader
        self.head = head
        self.route = route
        self.service = route.service
        self.started = dispatcher.reactor.seconds()
        self.done = False

    @property
    def data(self) -> bytes:
        """Every byte read from the client: the head and whatever came with it."""
        return self._reader.buffered

    def handoff_facts(self) -> tuple[socket.socket, Any, Any, None, None]:
        """As L{HeadConnection.handoff_facts}: no TLS facts, no certificate."""
        return self.socket, self.peer, self.host, None, None

    def release(self, link: "InstanceLink", conn_id: int) -> None:
        """The instance holds the connection: close our copy (no shutdown)."""
        self.done = True
        self.socket.close()
        self._dispatcher.closed()

    def full(self) -> HeadConnection:
        """A L{HeadConnection} in this one's place: the head read and routed, not reading more.

        It is read from again only after an answer that keeps the connection, as on the ordinary path.
        """
        dispatcher = self._dispatcher
        conn = HeadConnection(dispatcher, dispatcher.limits, dispatcher.config.head_timeout)
        conn._reader = self._reader
        conn.head, conn.route, conn.service, conn.started = self.head, self.route, self.service, self.started
        transport = SocketTransport(dispatcher.reactor, self.socket, conn, self.peer, self.host)
        conn.makeConnection(transport)
        transport.pauseProducing()
        dispatcher.reading.add(conn)
        self.done = True
        return conn

    def answer(self, status: int, message: str = "", retry_after: int | None = None) -> None:
        """Answer as the ordinary path does (L{HeadConnection.answer})."""
        self.full().answer(status, message, retry_after)

    def drop_pair(self) -> None:
        """Nothing to drop: never relayed."""
