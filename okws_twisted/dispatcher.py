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

It never imports service code, templates or the author API.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted import handoff
from okws_twisted.channel import ChannelError, Message, MessageChannel
from okws_twisted.config import SiteConfig
from okws_twisted.errorpage import error_response
from okws_twisted.interfaces import IChildRole
from okws_twisted.httpframe import HeadReader, HTTPError, Limits, RequestHead
from okws_twisted.logsender import RecordSender, RequestIds
from okws_twisted.routing import RouteTable
from okws_twisted.transport import SocketTransport, address_of

ACCEPTS_PER_WAKEUP = 64
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

    def start(self) -> None:
        if not self.accepting:
            self.accepting = True
            self._reactor.addReader(self)

    def stop(self) -> None:
        if self.accepting:
            self.accepting = False
            self._reactor.removeReader(self)

    def close(self) -> None:
        self.stop()
        self._sock.close()

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "Acceptor"

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE/ENFILE/ECONNABORTED: leave the rest queued in the kernel.
                self.log.warn("accept failed: {error}", error=e)
                return
            if self._family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._accepted(conn, address_of(addr, self._family), self._host)

    def connectionLost(self, reason: Failure) -> None:
        self.accepting = False


class HeadConnection:
    """A client connection whose request head the dispatcher is reading.

    States: reading the head -> (answered with an error | queued for an
    instance -> handed off, waiting for the ack -> gone).
    """

    transport: SocketTransport

    def __init__(self, dispatcher: "Dispatcher", limits: Limits, deadline: float) -> None:
        self._dispatcher = dispatcher
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
        if self.head is not None:
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

    def _timed_out(self) -> None:
        self._timer = None
        if self.head is None and not self.done:
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
        response = error_response(status, message, retry_after=retry_after, head_only=head_only)
        body = 0 if head_only else len(response) - response.index(b"\r\n\r\n") - 4
        self._dispatcher.answered(self, status, message, body)
        self.transport.write(response)
        self.transport.close_lingering()

    def release(self) -> None:
        """The service holds the connection now: drop our copy, shutting nothing down."""
        self.done = True
        self._cancel_timer()
        self.transport.detach().close()

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_timer()
        if not self.done:
            self.done = True
            self._dispatcher.lost(self)


class InstanceLink:
    """The dispatcher's handoff channel to one service instance."""

    log = Logger()

    def __init__(self, dispatcher: "Dispatcher", service: str, index: int, pid: int, sock: socket.socket):
        self.dispatcher = dispatcher
        self.service = service
        self.index = index
        self.pid = pid
        self.active = 0
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
        meta = handoff.connection_meta(handoff.CONN, conn_id, conn.transport.getPeer(), conn.transport.getHost())
        self.channel.send(meta, conn.data, [conn.transport.fileno()])

    def _received(self, batch: list[Message]) -> None:
        backacks: list[int] = []
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
                elif msg.kind == handoff.BACK:
                    back = handoff.parse_connection(msg)
                    backacks.append(back.id)
                    self.dispatcher.adopt(back.fd, back.peer, back.host, back.data)
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                for fd in msg.fds:
                    os.close(fd)
                self.log.error("bad message from {link}: {error}", link=self.name, error=e)
        if backacks and self.channel.connected:
            self.channel.send({"k": handoff.BACKACK, "ids": backacks})

    def _lost(self, reason: Failure) -> None:
        self.dispatcher.link_lost(self)


class ServicePool:
    """The ready instances of one service and the connections waiting for one."""

    def __init__(self, dispatcher: "Dispatcher", name: str, max_body: int):
        self.dispatcher = dispatcher
        self.name = name
        self.max_body = max_body
        self.links: dict[int, InstanceLink] = {}
        self.queue: deque[HeadConnection] = deque()
        self._turn = itertools.count()

    def pick(self) -> InstanceLink | None:
        """The least busy ready instance, rotating among equals."""
        if not self.links:
            return None
        links = list(self.links.values())
        start = next(self._turn) % len(links)
        best: InstanceLink | None = None
        for i in range(len(links)):
            link = links[(start + i) % len(links)]
            if best is None or link.active < best.active:
                best = link
        return best

    def assign(self, conn: HeadConnection) -> None:
        link = self.pick()
        if link is not None:
            self.dispatcher.hand(link, conn)
            return
        cfg = self.dispatcher.config
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

    def unqueue(self, conn: HeadConnection) -> None:
        if conn.queue_timer is not None:
            conn.queue_timer.cancel()
            conn.queue_timer = None
            try:
                self.queue.remove(conn)
            except ValueError:
                pass

    def flush(self) -> None:
        """Hand queued connections to instances that became ready."""
        while self.queue and self.links:
            conn = self.queue.popleft()
            if conn.queue_timer is not None:
                conn.queue_timer.cancel()
                conn.queue_timer = None
            self.assign(conn)


@implementer(IChildRole)
class Dispatcher:
    """The dispatcher's state: listeners, routes, instance links, queues."""

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
        self.pools = {s.name: ServicePool(self, s.name, s.max_body) for s in config.services}
        self.acceptors: list[Acceptor] = []
        self.reading: set[HeadConnection] = set()
        self._ids = itertools.count(1)
        self._stopped = stopped
        self.stopping = False
        self.handed_off = 0

    # -- listening

    def listen(self, socks: list[socket.socket]) -> None:
        for sock in socks:
            acceptor = Acceptor(self.reactor, sock, self._accepted)
            self.acceptors.append(acceptor)
            acceptor.start()

    def _accepted(self, sock: socket.socket, peer: Any, host: Any) -> None:
        self._start(sock, peer, host, b"")

    def adopt(self, fd: int, peer: Any, host: Any, data: bytes) -> None:
        """Take back a connection a service handed back; route its next request."""
        sock = socket.socket(fileno=fd)
        if self.stopping:
            sock.close()
            return
        self._start(sock, peer, host, data)

    def _start(self, sock: socket.socket, peer: Any, host: Any, data: bytes) -> None:
        conn = HeadConnection(self, self.limits, self.config.head_timeout)
        self.reading.add(conn)
        SocketTransport(self.reactor, sock, conn, peer, host).start(data)

    # -- routing and handing off

    def route(self, conn: HeadConnection) -> None:
        head = conn.head
        assert head is not None
        name = self.routes.route(head.path)
        if name is None:
            conn.answer(404, "No service here.")
            return
        pool = self.pools[name]
        if head.content_length is not None and head.content_length > pool.max_body:
            conn.answer(413, "The request body is too large.")
            return
        if self.stopping:
            conn.answer(503, "The server is shutting down.", retry_after=self.config.retry_after)
            return
        conn.service = name
        pool.assign(conn)

    def hand(self, link: InstanceLink, conn: HeadConnection) -> None:
        self.reading.discard(conn)
        conn_id = next(self._ids)
        try:
            link.hand(conn_id, conn)
        except Exception as e:
            # The channel just failed; link_lost re-queues what it held.
            self.log.warn("handoff to {link} failed: {error}", link=link.name, error=e)
            if conn_id in link.pending:
                link.pending.pop(conn_id)
                self.pools[link.service].assign(conn)
            return
        self.handed_off += 1

    def answered(self, conn: HeadConnection, status: int, reason: str = "", sent: int = 0) -> None:
        """The dispatcher answered C{conn} itself: log it, forget it."""
        if self.records is not None:
            self.records.emit(self._access_record(conn, status, reason, sent))
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
        old = pool.links.pop(index, None)
        link = InstanceLink(self, service, index, pid, sock)
        pool.links[index] = link
        if old is not None:
            old.channel.close()
        self.log.info("instance {link} (pid {pid}) is ready", link=link.name, pid=pid)
        pool.flush()

    def link_lost(self, link: InstanceLink) -> None:
        pool = self.pools[link.service]
        if pool.links.get(link.index) is link:
            del pool.links[link.index]
            self.log.info("instance {link} (pid {pid}) is gone", link=link.name, pid=link.pid)
        pending, link.pending = link.pending, {}
        for conn in pending.values():
            # Never acknowledged, so never touched: another instance may take it.
            pool.assign(conn)
        self._maybe_stopped()

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        if channel == "handoff":
            self.add_instance(str(meta["service"]), int(meta["index"]), int(meta["pid"]), sock)
        else:
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()

    # -- stopping

    def stop(self, drain: float = 0.0) -> None:
        """Stop accepting; answer what is queued; exit once nothing is in transit."""
        if self.stopping:
            return
        self.stopping = True
        for acceptor in self.acceptors:
            acceptor.close()
        for pool in self.pools.values():
            while pool.queue:
                conn = pool.queue.popleft()
                if conn.queue_timer is not None:
                    conn.queue_timer.cancel()
                    conn.queue_timer = None
                conn.answer(503, "The server is shutting down.", retry_after=self.config.retry_after)
        for conn in list(self.reading):
            if conn.head is None:
                conn.transport.abortConnection()
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
    dispatcher.listen([socket.socket(fileno=FIRST_LISTEN_FD + i) for i in range(count)])
    return dispatcher
