# -*- test-case-name: tests.test_dispatcher -*-
"""
The dispatcher (OKWS's okd): reads request heads and hands connections to services.

It accepts on listening sockets the launcher opened, reads only the request
head (bounded in bytes and by one deadline for the whole head), routes it by
path, and passes the connected socket, the bytes already read and the client
address to the least busy ready instance of that service.  Once the instance
acknowledges, the dispatcher closes its copy without shutting the socket down
and forgets the connection: no request or response byte of a handed-off
connection passes through here.  Each answer it gives itself (400, 404, 408,
413, 503, ...) becomes an access record for the log daemon.

It never imports service code, jinja2 or the author API: its error pages
come from the template publisher already rendered
(L{okws_twisted.errorpage.ErrorPages}), and it only puts each response's
message in.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted import handoff, templatechannel
from okws_twisted.channel import ChannelError, Message, MessageChannel
from okws_twisted.config import SiteConfig
from okws_twisted.errorpage import NO_PAGES, ErrorPages, error_response, phrase
from okws_twisted.interfaces import IChildRole
from okws_twisted.metrics import RequestCounts, ServiceTotals, render
from okws_twisted.httpframe import HeadReader, HTTPError, Limits, RequestHead
from okws_twisted.proxyproto import ProxyError, ProxyHeaderReader, is_trusted, trusted_networks
from okws_twisted.logsender import RecordSender, RequestIds
from okws_twisted.routing import RouteTable
from okws_twisted.transport import SocketTransport, address_from_wire, address_of, transport_for

ACCEPTS_PER_WAKEUP = 64
#: The methods a service may implement, as the answer to C{OPTIONS *} says.
SERVER_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ACCEPT_PAUSE = 0.1
#: At most this much of an unparsable request line goes to the access log.
REQUEST_LINE_LOGGED = 8192


@implementer(IReadDescriptor)
class Acceptor:
    """Accepts connections on one inherited listening socket."""

    log = Logger()

    def __init__(self, reactor: Any, sock: socket.socket, accepted: Callable[[socket.socket, Any], None]):
        sock.setblocking(False)
        self._reactor = reactor
        self._sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
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

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if not self.accepting:
                # The previous accept reached the high-water mark (or stop()
                # was called): leave the rest in the kernel's queue.
                return
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the socket stays readable, so pause
                    # instead of spinning; the rest waits in the kernel's queue.
                    self.log.warn("accept failed ({error}); pausing accepts for {t}s", error=e, t=ACCEPT_PAUSE)
                    self.stop()
                    self._reactor.callLater(ACCEPT_PAUSE, self._resume)
                return
            if self._family != socket.AF_UNIX:
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
    """

    transport: SocketTransport
    log = Logger()

    def __init__(self, dispatcher: "Dispatcher", limits: Limits, deadline: float, proxy: bool = False) -> None:
        self._dispatcher = dispatcher
        self._proxy: ProxyHeaderReader | None = ProxyHeaderReader() if proxy else None
        self._reader = HeadReader(limits)
        self._timer: IDelayedCall | None = dispatcher.reactor.callLater(deadline, self._timed_out)
        self.started = dispatcher.reactor.seconds()
        self.head: RequestHead | None = None
        self.service: str | None = None
        self.queue_timer: IDelayedCall | None = None
        self.done = False

    @property
    def data(self) -> bytes:
        """Every byte read from the client so far."""
        return self._reader.buffered

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport

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
        try:
            head = self._reader.feed(data)
        except HTTPError as e:
            self.answer(e.status, e.reason)
            return
        if head is not None:
            self.head = head
            self.transport.pauseProducing()
            self._cancel_timer()
            self._dispatcher.route(self)

    def _refuse(self, why: str) -> None:
        """Close a connection whose PROXY header is bad or late: no answer, no access record."""
        self.log.info("closing a connection from {peer}: {why}", peer=self.transport.getPeer(), why=why)
        self._cancel_timer()
        self.transport.abortConnection()

    def _timed_out(self) -> None:
        self._timer = None
        if self._proxy is not None and not self.done:
            self._refuse("no PROXY header in time")
        elif self.head is None and not self.done:
            self.answer(408, "The request head did not arrive in time.")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def answer(self, status: int, message: str = "", retry_after: int | None = None) -> None:
        """Answer with an okws error page and close."""
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        head_only = self.head is not None and self.head.method == b"HEAD"
        response = error_response(
            status, message, pages=self._dispatcher.pages, retry_after=retry_after, head_only=head_only
        )
        body = 0 if head_only else len(response) - response.index(b"\r\n\r\n") - 4
        self._dispatcher.answered(self, status, message, body)
        self.transport.write(response)
        self.transport.close_lingering()

    def answer_options(self) -> None:
        """C{OPTIONS *}: which methods this server's services may implement; then close."""
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        self._dispatcher.answered(self, 200, "OPTIONS *", 0)
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nAllow: " + SERVER_METHODS.encode() + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self.transport.close_lingering()

    def release(self) -> None:
        """The service holds the connection now: drop our copy, shutting nothing down."""
        self.done = True
        self._cancel_timer()
        self.transport.detach().close()
        self._dispatcher.closed()

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_timer()
        if not self.done:
            self.done = True
            self._dispatcher.lost(self)
        self._dispatcher.closed()


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class InstanceLink:
    """The dispatcher's handoff channel to one service instance."""

    log = Logger()

    def __init__(self, dispatcher: "Dispatcher", service: str, index: int, pid: int, sock: socket.socket):
        self.dispatcher = dispatcher
        self.service = service
        self.index = index
        self.pid = pid
        self.active = 0
        self.in_flight = 0
        self.connections = 0
        self.log_buffered = 0
        self.log_dropped = 0
        self.retiring = False
        self.pending: dict[int, HeadConnection] = {}
        self.channel = MessageChannel(
            dispatcher.reactor, sock, self._received, self._lost, name=f"handoff:{service}.{index}"
        )

    @property
    def name(self) -> str:
        return f"{self.service}.{self.index}"

    def hand(self, conn_id: int, conn: HeadConnection) -> None:
        self.pending[conn_id] = conn
        self.active += 1
        transport = conn.transport
        meta = handoff.connection_meta(handoff.CONN, conn_id, transport.getPeer(), transport.getHost(), transport.tls)
        self.channel.send(meta, conn.data, [conn.transport.fileno()])

    def _received(self, batch: list[Message]) -> None:
        backs: list[handoff.Connection] = []
        for msg in batch:
            try:
                if msg.kind == handoff.ACK:
                    for conn_id in handoff.parse_ids(msg):
                        conn = self.pending.pop(conn_id, None)
                        if conn is not None:
                            conn.release()
                    done = msg.meta.get("done", 0)
                    if isinstance(done, int) and done > 0:
                        self.active = max(0, self.active - done)
                        pool = self.dispatcher.pools[self.service]
                        if pool.queue:
                            pool.flush()
                elif msg.kind == handoff.BACK:
                    backs.append(handoff.parse_connection(msg))
                elif msg.kind == handoff.STATS:
                    self.in_flight = _count(msg.meta.get("in_flight"))
                    self.connections = _count(msg.meta.get("connections"))
                    self.log_buffered = _count(msg.meta.get("log_buffered"))
                    self.log_dropped = _count(msg.meta.get("log_dropped"))
                    self.dispatcher.totals(self.service).report(self.pid, RequestCounts.from_json(msg.meta.get("counts")))
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from {link}: {error}", link=self.name, error=e)
        # An ack may be the last thing a stopping dispatcher waits for.
        self.dispatcher._maybe_stopped()
        if not backs:
            return
        # Acknowledge before routing any of them, as services do for ``conn``:
        # a handback the service never saw acknowledged was never touched here.
        if self.channel.connected:
            self.channel.send({"k": handoff.BACKACK, "ids": [b.id for b in backs]})
        for back in backs:
            try:
                self.dispatcher.adopt(back.fd, back.peer, back.host, back.data, back.tls)
            except Exception:
                # One connection's failure must not close this instance's channel.
                self.log.failure("taking back connection {id} from {link} failed", id=back.id, link=self.name)

    def _lost(self, reason: Failure) -> None:
        self.dispatcher.link_lost(self)


class ServicePool:
    """The ready instances of one service and the connections waiting for one."""

    def __init__(self, dispatcher: "Dispatcher", name: str, max_body: int, max_connections: int, lazy: bool = False):
        self.dispatcher = dispatcher
        self.name = name
        self.lazy = lazy
        self.wanted = False
        self.max_body = max_body
        self.max_connections = max_connections
        self.links: dict[int, InstanceLink] = {}  # by pid: a retiring and a new process may share an index
        self.failed = False
        self.handed_off = 0
        self.queue: deque[HeadConnection] = deque()
        self._turn = itertools.count()

    def pick(self) -> InstanceLink | None:
        """The least busy ready instance below its connection cap, rotating among equals."""
        if not self.links:
            return None
        links = list(self.links.values())
        start = next(self._turn) % len(links)
        best: InstanceLink | None = None
        for i in range(len(links)):
            link = links[(start + i) % len(links)]
            if link.retiring or link.active >= self.max_connections:
                continue
            if best is None or link.active < best.active:
                best = link
        return best

    def assign(self, conn: HeadConnection) -> None:
        link = self.pick()
        if link is not None:
            self.dispatcher.hand(link, conn)
            return
        cfg = self.dispatcher.config
        if self.dispatcher.draining:
            conn.answer(503, "The server is shutting down.", retry_after=cfg.retry_after)
            return
        if self.failed:
            conn.answer(503, "The service is not available.", retry_after=cfg.retry_after)
            return
        if self.lazy and not self.wanted and not self.links:
            # A lazy service starts on its first request, which waits in the queue.
            self.wanted = True
            self.dispatcher.to_launcher({"k": "want", "service": self.name})
        if len(self.queue) >= cfg.queue_max:
            conn.answer(503, "The service is busy; try again shortly.", retry_after=cfg.retry_after)
            return
        self.queue.append(conn)
        conn.queue_timer = self.dispatcher.reactor.callLater(cfg.queue_timeout, self._expire, conn)

    def _expire(self, conn: HeadConnection) -> None:
        conn.queue_timer = None
        try:
            self.queue.remove(conn)
        except ValueError:
            return
        conn.answer(503, "The service is not available; try again shortly.", retry_after=self.dispatcher.config.retry_after)

    def unqueue_first_and_answer(self, message: str = "The service is not available.") -> None:
        conn = self.queue.popleft()
        if conn.queue_timer is not None:
            conn.queue_timer.cancel()
            conn.queue_timer = None
        conn.answer(503, message, retry_after=self.dispatcher.config.retry_after)

    def unqueue(self, conn: HeadConnection) -> None:
        if conn.queue_timer is not None:
            conn.queue_timer.cancel()
            conn.queue_timer = None
            try:
                self.queue.remove(conn)
            except ValueError:
                pass

    def flush(self) -> None:
        """Hand queued connections to instances that became ready or less busy."""
        while self.queue:
            link = self.pick()
            if link is None:
                return
            conn = self.queue.popleft()
            if conn.queue_timer is not None:
                conn.queue_timer.cancel()
                conn.queue_timer = None
            self.dispatcher.hand(link, conn)


class AdminConnection:
    """One request to the admin listener: C{GET /metrics} or C{GET /health}, then close."""

    transport: SocketTransport

    def __init__(self, dispatcher: "Dispatcher") -> None:
        self._dispatcher = dispatcher
        self._reader = HeadReader(dispatcher.limits)
        self._timer: IDelayedCall | None = dispatcher.reactor.callLater(dispatcher.config.head_timeout, self._timed_out)
        self._done = False

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            head = self._reader.feed(data)
        except HTTPError as e:
            self._error(e.status, e.reason)
            return
        if head is None:
            return
        if head.method not in (b"GET", b"HEAD"):
            self._error(405, "Only GET and HEAD.", (("Allow", "GET, HEAD"),))
        elif head.path == b"/metrics":
            self._send(200, self._dispatcher.metrics(), "text/plain; version=0.0.4; charset=utf-8", head.method == b"HEAD")
        elif head.path == b"/health":
            status, text = self._dispatcher.health()
            self._send(status, text + "\n", "text/plain; charset=utf-8", head.method == b"HEAD")
        else:
            self._error(404, "The admin listener serves /metrics and /health.")

    def _send(self, status: int, body: str, content_type: str, head_only: bool) -> None:
        self._finish()
        data = body.encode("utf-8")
        headers = (
            f"HTTP/1.1 {status} {phrase(status)}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        self.transport.write(headers if head_only else headers + data)
        self.transport.close_lingering()

    def _error(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._finish()
        self.transport.write(error_response(status, message, extra_headers=headers))
        self.transport.close_lingering()

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self._done:
            self._error(408, "The request head did not arrive in time.")

    def connectionLost(self, reason: Failure) -> None:
        self._finish()


@implementer(IChildRole)
class Dispatcher:
    """The dispatcher's state: listeners, routes, instance links, queues."""

    #: How the dispatcher asks the launcher for something (set by the bootstrap).
    to_launcher: Callable[[dict[str, Any]], None] = staticmethod(lambda meta: None)  # type: ignore[assignment]

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: SiteConfig,
        stopped: Callable[[], None] = lambda: None,
        records: RecordSender | None = None,
    ):
        self.reactor = reactor
        self.config = config
        self.records = records
        self.request_ids = RequestIds()
        self.routes = RouteTable.from_config(config)
        self.limits = Limits(
            max_request_line=config.max_request_line,
            max_head=config.max_head,
            max_headers=config.max_headers,
        )
        self.pools = {s.name: ServicePool(self, s.name, s.max_body, s.max_connections, s.lazy) for s in config.services}
        self.acceptors: list[Acceptor] = []
        self.reading: set[HeadConnection] = set()
        self._ids = itertools.count(1)
        self._stopped = stopped
        self.stopping = False
        self.draining = False
        self.handed_off = 0
        self.open_connections = 0
        self.accepting_paused = False
        self.handoff_failures = 0
        self.gone_log_dropped = 0
        self.own_counts: dict[str, RequestCounts] = {}
        self.service_totals: dict[str, ServiceTotals] = {}
        self.launcher_view: dict[str, dict[str, Any]] = {}
        self.admin: Acceptor | None = None
        self.pages: ErrorPages = NO_PAGES
        self.publisher: MessageChannel | None = None
        self.proxy_trusted = trusted_networks(config.proxy_trusted)
        self.proxy_refused = 0
        self.tls_fronts: set[MessageChannel] = set()
        self.from_tls = 0

    # -- listening

    def listen(self, socks: list[socket.socket], proxy: list[bool] | None = None) -> None:
        """Accept on C{socks}; C{proxy[i]} marks a listener whose connections start with a PROXY header."""
        for i, sock in enumerate(socks):
            if proxy is not None and i < len(proxy) and proxy[i]:
                accepted = self._accepted_proxied
            else:
                accepted = self._accepted
            acceptor = Acceptor(self.reactor, sock, accepted)
            self.acceptors.append(acceptor)
            acceptor.start()

    def _accepted(self, sock: socket.socket, peer: Any, host: Any) -> None:
        self._start(sock, peer, host, b"")

    def _accepted_proxied(self, sock: socket.socket, peer: Any, host: Any) -> None:
        # A Unix listener's peers are whoever its file permissions let in.
        if isinstance(peer, (IPv4Address, IPv6Address)) and not is_trusted(peer.host, self.proxy_trusted):
            self.proxy_refused += 1
            self.log.info("closing a connection from {peer}: not in proxy_trusted", peer=peer.host)
            sock.close()
            return
        self._start(sock, peer, host, b"", proxy=True)

    def adopt(self, fd: int, peer: Any, host: Any, data: bytes, tls: dict[str, str] | None = None) -> None:
        """Take back a connection a service handed back; route its next request."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            os.close(fd)
            self.log.error("a handed-back fd is not a socket: {error}", error=e)
            return
        if self.draining:
            self.log.info("closing a handed-back connection: the server is stopping")
            sock.close()
            return
        self._start(sock, peer, host, data, tls=tls)

    def _from_tls(self, batch: list[Message]) -> None:
        """Decrypted connections from the TLS front: each one end of a socket pair."""
        for msg in batch:
            try:
                if msg.kind != handoff.CONN:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
                conn = handoff.parse_connection(msg)
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from the TLS front: {error}", error=e)
                continue
            sock = socket.socket(fileno=conn.fd)
            if self.draining:
                sock.close()
                continue
            self.from_tls += 1
            self._start(sock, conn.peer, conn.host, conn.data, tls=conn.tls or None)

    def set_tls_front(self, sock: socket.socket) -> None:
        """A (new) channel from the TLS front; an old one stays until the old front exits."""
        channel = MessageChannel(self.reactor, sock, self._from_tls, lambda reason: self.tls_fronts.discard(channel), name="tls")
        self.tls_fronts.add(channel)

    def _start(
        self, sock: socket.socket, peer: Any, host: Any, data: bytes, proxy: bool = False, tls: dict[str, str] | None = None
    ) -> None:
        conn = HeadConnection(self, self.limits, self.config.head_timeout, proxy)
        self.reading.add(conn)
        self.open_connections += 1
        if self.open_connections >= self.config.max_connections and not self.accepting_paused:
            # OKWS's fd high-water mark: leave new connections in the kernel's
            # queue until enough of ours are gone.
            self.accepting_paused = True
            self.log.warn("{n} open connections: not accepting until {low}", n=self.open_connections, low=self.config.resume_connections)
            for acceptor in self.acceptors:
                acceptor.stop()
        transport_for(self.reactor, sock, conn, peer, host, tls).start(data)

    def closed(self) -> None:
        """A connection left the dispatcher (answered, handed off, or lost)."""
        self.open_connections -= 1
        if self.accepting_paused and self.open_connections <= self.config.resume_connections and not self.draining:
            self.accepting_paused = False
            self.log.info("{n} open connections: accepting again", n=self.open_connections)
            for acceptor in self.acceptors:
                acceptor.start()

    # -- routing and handing off

    def route(self, conn: HeadConnection) -> None:
        head = conn.head
        assert head is not None
        if head.path == b"*":
            # OPTIONS * (the only asterisk-form httpframe lets through) asks
            # about the server, not a resource: the dispatcher answers it.
            conn.answer_options()
            return
        name = self.routes.route(head.path)
        if name is None:
            conn.answer(404, "No service here.")
            return
        pool = self.pools[name]
        if head.content_length is not None and head.content_length > pool.max_body:
            conn.answer(413, "The request body is too large.")
            return
        if self.draining:
            conn.answer(503, "The server is shutting down.", retry_after=self.config.retry_after)
            return
        conn.service = name
        pool.assign(conn)

    def hand(self, link: InstanceLink, conn: HeadConnection) -> None:
        self.reading.discard(conn)
        conn_id = next(self._ids)
        try:
            link.hand(conn_id, conn)
        except Exception:
            # A lost channel does not raise (link_lost re-queues what the link
            # held): this message cannot be sent at all, and trying again, here
            # or on another instance, would fail the same way.
            self.handoff_failures += 1
            self.log.failure("handoff to {link} failed", link=link.name)
            if link.pending.pop(conn_id, None) is not None:
                link.active = max(0, link.active - 1)
                conn.answer(500, "The connection could not be passed on.")
            return
        self.handed_off += 1
        self.pools[link.service].handed_off += 1

    def answered(self, conn: HeadConnection, status: int, reason: str = "", sent: int = 0) -> None:
        """The dispatcher answered C{conn} itself: log it, forget it."""
        if self.records is not None:
            self.records.emit(self._access_record(conn, status, reason, sent))
        counts = self.own_counts.setdefault(conn.service or "-", RequestCounts())
        counts.record(status, None)
        self.reading.discard(conn)
        if conn.service is not None:
            self.pools[conn.service].unqueue(conn)
        self._maybe_stopped()

    def _access_record(self, conn: HeadConnection, status: int, reason: str, sent: int) -> dict[str, Any]:
        now = self.reactor.seconds()
        peer = conn.transport.getPeer()
        record: dict[str, Any] = {
            "kind": "access",
            "time": int(conn.started * 1_000_000),
            "client": getattr(peer, "host", None) or "-",
            "status": status,
            "bytes": sent,
            "request_id": self.request_ids.next(),
            "response_time": max(0, int((now - conn.started) * 1_000_000)),
        }
        if reason:
            record["reason"] = reason
        if conn.transport.tls is not None:
            record["tls"] = handoff.tls_summary(conn.transport.tls)
        if conn.service is not None:
            record["service"] = conn.service
        head = conn.head
        if head is not None:
            record["request"] = b"%s %s %s" % (head.method, head.target, head.version)
            for name, value in head.headers:
                if name == b"referer":
                    record["referer"] = value
                elif name == b"user-agent":
                    record["user_agent"] = value
        else:
            first = conn.data[:REQUEST_LINE_LOGGED].split(b"\n", 1)[0].rstrip(b"\r")
            if first:
                record["request"] = first
        for key in ("request", "referer", "user_agent"):
            if key in record:
                record[key] = record[key].decode("latin-1")
        return record

    def lost(self, conn: HeadConnection) -> None:
        self.reading.discard(conn)
        if conn.service is not None:
            self.pools[conn.service].unqueue(conn)
        self._maybe_stopped()

    # -- instances

    def add_instance(self, service: str, index: int, pid: int, sock: socket.socket) -> None:
        pool = self.pools.get(service)
        if pool is None:
            self.log.error("launcher sent a channel for unknown service {service}", service=service)
            sock.close()
            return
        old = pool.links.pop(pid, None)
        link = InstanceLink(self, service, index, pid, sock)
        pool.links[pid] = link
        pool.failed = False
        if old is not None:
            old.channel.close()
        self.log.info("instance {link} (pid {pid}) is ready", link=link.name, pid=pid)
        pool.flush()

    def retire(self, pid: int) -> None:
        """Give no new connections to instance C{pid}; it still hands connections back."""
        for pool in self.pools.values():
            link = pool.links.get(pid)
            if link is not None:
                link.retiring = True
                self.log.info("instance {link} (pid {pid}) is retiring", link=link.name, pid=pid)

    def link_lost(self, link: InstanceLink) -> None:
        pool = self.pools[link.service]
        if pool.links.get(link.pid) is link:
            del pool.links[link.pid]
            self.log.info("instance {link} (pid {pid}) is gone", link=link.name, pid=link.pid)
        self.totals(link.service).instance_gone(link.pid)
        self.gone_log_dropped += link.log_dropped
        pending, link.pending = link.pending, {}
        for conn in pending.values():
            # Never acknowledged, so never touched: another instance may take it.
            pool.assign(conn)
        self._maybe_stopped()

    def update_config(self, site: SiteConfig) -> None:
        """Reloaded: new routes, limits and pools; existing instance links stay."""
        self.config = site
        self.routes = RouteTable.from_config(site)
        self.proxy_trusted = trusted_networks(site.proxy_trusted)
        self.limits = Limits(max_request_line=site.max_request_line, max_head=site.max_head, max_headers=site.max_headers)
        for s in site.services:
            pool = self.pools.get(s.name)
            if pool is None:
                self.pools[s.name] = ServicePool(self, s.name, s.max_body, s.max_connections, s.lazy)
            else:
                pool.max_body, pool.max_connections = s.max_body, s.max_connections
        # Pools of removed services stay until their instances are gone (they
        # still hand connections back); no route leads to them any more.

    def stats(self) -> dict[str, Any]:
        return {
            "handed_off": self.handed_off,
            "open_connections": self.open_connections,
            "queued": {name: len(pool.queue) for name, pool in self.pools.items()},
        }

    def control(self, kind: str, meta: dict[str, Any]) -> None:
        if kind == "drain":
            self.drain()
        elif kind == "retire":
            self.retire(int(meta["pid"]))
        elif kind == "status":
            self.launcher_view = {k: v for k, v in dict(meta.get("services", {})).items() if isinstance(v, dict)}
            for name, info in dict(meta.get("services", {})).items():
                pool = self.pools.get(name)
                if pool is not None and isinstance(info, dict):
                    pool.failed = bool(info.get("failed")) and not pool.links
                    if pool.failed:
                        while pool.queue:
                            pool.unqueue_first_and_answer()
        else:
            self.log.warn("unexpected control message {kind}", kind=kind)

    # -- the site's error pages

    def set_publisher(self, sock: socket.socket) -> None:
        """A (new) templates channel to the publisher, which sends the error pages.

        The pages are kept when the publisher goes away: the dispatcher
        shows the last ones it got (the built-in ones until the first).
        """
        old, self.publisher = self.publisher, MessageChannel(
            self.reactor, sock, self._from_publisher, name="templates:pubd"
        )
        if old is not None:
            old.close()

    def _from_publisher(self, batch: list[Message]) -> None:
        for msg in batch:
            try:
                if msg.kind != templatechannel.PAGES:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
                self.pages = ErrorPages(templatechannel.parse_pages(msg))
                self.log.info("received {count} error pages from the publisher", count=len(self.pages.pages))
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from the template publisher: {error}", error=e)

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        if channel == "handoff":
            self.add_instance(str(meta["service"]), int(meta["index"]), int(meta["pid"]), sock)
        elif channel == "templates":
            self.set_publisher(sock)
        elif channel == "tls":
            self.set_tls_front(sock)
        else:
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()

    # -- the admin listener: metrics and health

    def totals(self, service: str) -> ServiceTotals:
        return self.service_totals.setdefault(service, ServiceTotals())

    def listen_admin(self, sock: socket.socket) -> None:
        def accepted(conn: socket.socket, peer: Any, host: Any) -> None:
            SocketTransport(self.reactor, conn, AdminConnection(self), peer, host).start()

        self.admin = Acceptor(self.reactor, sock, accepted)
        self.admin.start()

    def health(self) -> tuple[int, str]:
        """For load balancers: 503 while stopping or before every service has an instance."""
        if self.draining:
            return 503, "draining"
        waiting = [name for name, pool in self.pools.items() if not pool.links and not pool.failed and self.routes_to(name)]
        if waiting:
            return 503, "starting: no ready instance of " + ", ".join(sorted(waiting))
        return 200, "ok"

    def routes_to(self, service: str) -> bool:
        return any(s.name == service for s in self.config.services)

    def metrics(self) -> str:
        names = {s.name for s in self.config.services}
        requests: dict[str, RequestCounts] = {}
        for name in names | set(self.own_counts):
            total = RequestCounts()
            if name in self.service_totals:
                total.add(self.service_totals[name].total())
            if name in self.own_counts:
                total.add(self.own_counts[name])
            requests[name] = total
        live = {name: [l for l in pool.links.values()] for name, pool in self.pools.items() if name in names}
        gauges = {
            "in_flight_requests": {n: sum(l.in_flight for l in ls) for n, ls in live.items()},
            "connections": {n: sum(l.connections for l in ls) for n, ls in live.items()},
            "queue_depth": {n: len(self.pools[n].queue) for n in live},
            "ready_instances": {n: sum(1 for l in ls if not l.retiring) for n, ls in live.items()},
            "failed": {n: int(self.pools[n].failed) for n in live},
        }
        counters = {
            "restarts_total": {n: _count(self.launcher_view.get(n, {}).get("restarts")) for n in names},
            "handoffs_total": {n: self.pools[n].handed_off for n in live},
        }
        links = [l for pool in self.pools.values() for l in pool.links.values()]
        own = self.records
        site = {
            "log_records_buffered": (own.held if own is not None else 0) + sum(l.log_buffered for l in links),
            "log_records_dropped_total": (own.dropped_total if own is not None else 0)
            + self.gone_log_dropped
            + sum(l.log_dropped for l in links),
            "up": 1,
            "dispatcher_open_connections": self.open_connections,
            "dispatcher_accepting": int(not self.accepting_paused and not self.draining),
            "handoff_failures_total": self.handoff_failures,
        }
        return render(sorted(names | set(self.own_counts)), requests, gauges, counters, site)

    # -- stopping

    def drain(self) -> None:
        """Stop accepting and answer what is queued; keep answering health checks."""
        if self.draining:
            return
        self.draining = True
        for acceptor in self.acceptors:
            acceptor.close()
        for pool in self.pools.values():
            while pool.queue:
                pool.unqueue_first_and_answer("The server is shutting down.")
        for conn in list(self.reading):
            if conn.head is None:
                conn.transport.abortConnection()

    def stop(self, drain: float = 0.0, handback: bool = False) -> None:
        """Drain, then exit once nothing is in transit."""
        self.drain()
        self.stopping = True
        if self.admin is not None:
            self.admin.close()
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if not self.stopping:
            return
        if any(link.pending for pool in self.pools.values() for link in pool.links.values()):
            return
        if any(conn.head is not None and not conn.done for conn in self.reading):
            return
        stopped, self._stopped = self._stopped, lambda: None
        stopped()


def start_role(
    reactor: Any,
    site: SiteConfig,
    meta: dict[str, Any],
    stopped: Callable[[], None],
    records: RecordSender | None = None,
) -> Dispatcher:
    """The dispatcher child: listen on the sockets inherited from the launcher."""
    from okws_twisted.control import FIRST_LISTEN_FD

    count = int(meta.get("listeners", 0))
    dispatcher = Dispatcher(reactor, site, stopped=stopped, records=records)
    proxy = meta.get("proxy")
    dispatcher.listen(
        [socket.socket(fileno=FIRST_LISTEN_FD + i) for i in range(count)],
        [bool(p) for p in proxy] if isinstance(proxy, list) else None,
    )
    if meta.get("admin"):
        dispatcher.listen_admin(socket.socket(fileno=FIRST_LISTEN_FD + count))
    return dispatcher
