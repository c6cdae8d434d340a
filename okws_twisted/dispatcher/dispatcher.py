# -*- test-case-name: tests.dispatcher.test_dispatcher -*-
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
(L{okws_twisted.wire.errorpage.ErrorPages}), and it only puts each response's
message in.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.config import SiteConfig, is_trusted, trusted_networks
from okws_twisted.dispatcher.accept import Acceptor, HeadConnection, RoutedAtAccept
from okws_twisted.dispatcher.admin import AdminListener, exposition, health
from okws_twisted.dispatcher.metrics import ProcessMetrics, ServiceTotals, process_samples
from okws_twisted.dispatcher.pool import HeldHandoffs, InstanceLink, ServicePool
from okws_twisted.dispatcher.records import ConnectionLedger
from okws_twisted.dispatcher.relay import RelayedConnection, first_request
from okws_twisted.interfaces import IChildRole
from okws_twisted.wire import certs, control, handoff, limits, templatechannel
from okws_twisted.wire.channel import ChannelError, ChannelViolation, Message, MessageChannel
from okws_twisted.wire.counts import RequestCounts
from okws_twisted.wire.deadlines import Deadlines
from okws_twisted.wire.errorpage import NO_PAGES, ErrorPages
from okws_twisted.wire.httpframe import HeadReader, HTTPError, Limits
from okws_twisted.wire.logsender import RecordSender, RequestIds
from okws_twisted.wire.routing import ANY_HOST, RouteTable, host_key
from okws_twisted.wire.stamp import ResponseStamp
from okws_twisted.wire.transport import READ_SIZE, transport_for

#: At most this much of an unparsable request line goes to the access log.
REQUEST_LINE_LOGGED = 8192


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
        #: Head and keep-alive deadlines: one timer per length, not one per connection.
        self.deadlines = Deadlines(reactor)
        self.config = config
        self.stamp = ResponseStamp(reactor, config.server_header)
        self.records = records
        self.request_ids = RequestIds()
        self.routes = RouteTable.from_config(config)
        self.limits = Limits(
            max_request_line=config.max_request_line,
            max_head=config.max_head,
            max_headers=config.max_headers,
        )
        self.pools = {
            s.name: ServicePool(self, s.name, s.max_body, s.max_connections, s.lazy, s.isolation or "connection")
            for s in config.services
        }
        #: Every connection handed to an instance and not yet back or ended.
        self.ledger = ConnectionLedger()
        #: Handoffs started at one wakeup of an acceptor leave together, one message per instance.
        self.held_handoffs = HeldHandoffs()
        self.acceptors: list[Acceptor] = []
        self.reading: set[HeadConnection] = set()
        #: Client connections whose requests the dispatcher relays (C{isolation = request}).
        self.relayed: set[RelayedConnection] = set()
        self._ids = itertools.count(1)
        self._stopped = stopped
        self.stopping = False
        self.draining = False
        self.handed_off = 0
        self.open_connections = 0
        self.accepting_paused = False
        self.handoff_failures = 0
        self.gone_log_dropped = 0
        #: The dispatcher's own answers, by service ("-": none) and host pattern ("-": none).
        self.own_counts: dict[tuple[str, str], RequestCounts] = {}
        self.service_totals: dict[str, ServiceTotals] = {}
        self.launcher_view: dict[str, dict[str, Any]] = {}
        #: Every process's memory, CPU and open files, as the launcher last sampled them.
        self.process_samples: list[ProcessMetrics] = []
        self.admin: AdminListener | None = None
        self.pages: ErrorPages = NO_PAGES
        self.publisher: MessageChannel | None = None
        self.proxy_trusted = trusted_networks(config.proxy_trusted)
        self.proxy_refused = 0
        self.tls_fronts: set[MessageChannel] = set()
        #: Per TLS front channel, per C{tls:} listener (its index among the TLS listeners), the
        #: certificates that front shows (for 421); a new front's ids are its own.
        self.cert_tables: dict[MessageChannel, dict[int, certs.CertificateTable]] = {}
        self.from_tls = 0

    # -- listening

    def listen(self, socks: list[socket.socket], proxy: list[bool] | None = None) -> None:
        """Accept on C{socks}; C{proxy[i]} marks a listener whose connections start with a PROXY header."""
        for i, sock in enumerate(socks):
            if proxy is not None and i < len(proxy) and proxy[i]:
                accepted = self._accepted_proxied
            else:
                accepted = self._accepted
            acceptor = Acceptor(self.reactor, sock, accepted, self.held_handoffs)
            self.acceptors.append(acceptor)
            acceptor.start()

    def _accepted(self, sock: socket.socket, peer: Any, host: Any) -> None:
        # The fast path: a client sends its request with the connection, so the head (a GET's
        # is all of it) is usually there already.  Read it now: a complete head is routed and
        # handed off without the socket ever being registered with the reactor.  Nothing
        # there yet, end of stream or an error: the ordinary path reads (and sees) it.
        try:
            data = sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except OSError:
            data = b""
        if not data or not self._routed_at_accept(sock, peer, host, data):
            self._start(sock, peer, host, data)

    def _routed_at_accept(self, sock: socket.socket, peer: Any, host: Any, data: bytes) -> bool:
        """Hand off a connection whose head came whole with it, if nothing about it is unusual.

        The usual case (a complete head for a service that takes whole connections, an instance
        ready for it) without a transport or a L{HeadConnection} (L{RoutedAtAccept}).  Anything
        else (an incomplete or bad head, no route, C{OPTIONS *}, a body over the limit, relaying,
        no ready instance, the dispatcher stopping) returns C{False} before anything was done:
        the ordinary path (L{_start}) reads the same bytes again and answers, queues or waits.
        """
        reader = HeadReader(self.limits)
        try:
            head = reader.feed(data)
        except HTTPError:
            return False
        if head is None or head.path == b"*" or self.draining:
            return False
        route = self.routes.route_key(host_key(head.host), head.path)
        if route is None:
            return False
        pool = self.pools[route.service]
        if pool.isolation != "connection" or (head.content_length is not None and head.content_length > pool.max_body):
            return False
        link = pool.pick()
        if link is None:
            return False
        self._opened()
        self.hand(link, RoutedAtAccept(self, sock, peer, host, reader, head, route))
        return True

    def _accepted_proxied(self, sock: socket.socket, peer: Any, host: Any) -> None:
        # A Unix listener's peers are whoever its file permissions let in.
        if isinstance(peer, (IPv4Address, IPv6Address)) and not is_trusted(peer.host, self.proxy_trusted):
            self.proxy_refused += 1
            self.log.info("closing a connection from {peer}: not in proxy_trusted", peer=peer.host)
            sock.close()
            return
        self._start(sock, peer, host, b"", proxy=True)

    def adopt(
        self, fd: int, peer: Any, host: Any, data: bytes, tls: dict[str, str] | None = None, cert: Any = None
    ) -> None:
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
        self._start(sock, peer, host, data, tls=tls, cert=cert)

    def _from_tls(self, channel: MessageChannel, batch: list[Message]) -> None:
        """Decrypted connections from the TLS front (each one end of a socket pair), and the
        certificates of its C{tls:} listeners."""
        tables = self.cert_tables.setdefault(channel, {})
        for msg in batch:
            try:
                if msg.kind == certs.CERTS:
                    listener, table = certs.parse_certs(msg)
                    if listener not in self._sni_listeners():
                        raise ChannelError(f"certs for listener {listener}, which is not a tls: listener")
                    tables[listener] = table
                    continue
                if msg.kind != handoff.CONN:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
                conn = handoff.parse_connection(msg)
                cert = self._chosen_cert(tables, msg.meta)
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from the TLS front: {error}", error=e)
                continue
            sock = socket.socket(fileno=conn.fd)
            if self.draining:
                sock.close()
                continue
            self.from_tls += 1
            self._start(sock, conn.peer, conn.host, conn.data, tls=conn.tls or None, cert=cert)

    def _sni_listeners(self) -> set[int]:
        """The indices (among the TLS listeners, as the front numbers them) of the C{tls:} ones."""
        return {i for i, listener in enumerate(l for l in self.config.listen if l.tls) if listener.sni_dir is not None}

    @staticmethod
    def _chosen_cert(tables: dict[int, certs.CertificateTable], meta: dict[str, Any]) -> Any:
        """The C{(table, id)} of a connection from the front, or L{None} (an C{ssl:} listener)."""
        table = tables.get(meta.get("listener"))  # type: ignore[arg-type]
        if table is None:
            return None
        cert = meta.get("cert")
        if cert not in table.ids or isinstance(cert, bool):
            raise ChannelError(f"a connection with certificate {cert!r}, which the front never named")
        return (table, cert)

    def set_tls_front(self, sock: socket.socket, pid: object = None) -> None:
        """A (new) channel from the TLS front; an old one stays until the old front exits."""

        def lost(reason: Failure) -> None:
            self.tls_fronts.discard(channel)
            self.cert_tables.pop(channel, None)
            self.peer_lost(channel, "tls", pid, reason)

        channel = MessageChannel(
            self.reactor, sock, lambda batch: self._from_tls(channel, batch), lost, name="tls", limits=limits.TLS_DISPATCHER
        )
        self.tls_fronts.add(channel)

    def peer_lost(self, channel: MessageChannel, what: str, pid: object, reason: Failure) -> None:
        """A channel to another process closed: unless it was closed here or the site is stopping,
        the launcher hears of it (``lost``) and relaunches that process."""
        if not self.stopping and not self.draining:
            control.report_lost(self.to_launcher, channel, what, pid, reason)

    def _start(
        self,
        sock: socket.socket,
        peer: Any,
        host: Any,
        data: bytes,
        proxy: bool = False,
        tls: dict[str, str] | None = None,
        cert: Any = None,
    ) -> None:
        conn = HeadConnection(self, self.limits, self.config.head_timeout, proxy)
        self.reading.add(conn)
        self._opened()
        transport = transport_for(self.reactor, sock, conn, peer, host, tls)
        transport.cert = cert
        transport.start(data)
        conn.start_deadline()

    def _opened(self) -> None:
        """A connection came to the dispatcher (accepted, handed back, or from the TLS front)."""
        self.open_connections += 1
        if self.open_connections >= self.config.max_connections and not self.accepting_paused:
            # OKWS's fd high-water mark: leave new connections in the kernel's
            # queue until enough of ours are gone.
            self.accepting_paused = True
            self.log.warn("{n} open connections: not accepting until {low}", n=self.open_connections, low=self.config.resume_connections)
            for acceptor in self.acceptors:
                acceptor.stop()

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
        key = host_key(head.host)
        cert = conn.transport.cert
        if cert is not None and key is not None:
            table, chosen = cert
            if table.cert_for(key) != chosen:
                # RFC 9110 15.5.20: this connection's certificate is not the one the host gets;
                # the client must open a connection of its own for that host.
                conn.answer(421, "This host is not served on this connection.")
                return
        route = self.routes.route_key(key, head.path)
        if route is None:
            conn.answer(404, "No service here.")
            return
        conn.route = route
        name = route.service
        pool = self.pools[name]
        if head.content_length is not None and head.content_length > pool.max_body:
            conn.answer(413, "The request body is too large.")
            return
        if self.draining:
            conn.answer(503, "The server is shutting down.", retry_after=self.config.retry_after)
            return
        conn.service = name
        if pool.isolation == "request":
            # Relayed: only this request goes to the instance; what follows it stays here.
            try:
                conn.relay = first_request(conn.data, self.limits, pool.max_body)
            except HTTPError as e:
                conn.answer(e.status, e.reason)
                return
        pool.assign(conn)

    def hand(self, link: InstanceLink, conn: HeadConnection | RoutedAtAccept) -> None:
        self.reading.discard(conn)
        conn_id = next(self._ids)
        try:
            if conn.relay is not None:
                conn.open_pair()
            link.hand(conn_id, conn)
        except Exception:
            self.handoff_failed(link, conn_id, conn)
            return
        self.handed_off += 1
        self.pools[link.service].handed_off += 1

    def handoff_failed(
        self, link: InstanceLink, conn_id: int, conn: HeadConnection | RoutedAtAccept, counted: bool = False
    ) -> None:
        """The message handing C{conn} to C{link} could not be sent: answer C{500}.

        A lost channel does not get here (link_lost re-queues what the link held): this message
        cannot be sent at all, and trying again, here or on another instance, would fail the same way.
        C{counted}: the handoff was counted as done when it was held (L{InstanceLink.send_held}).
        """
        if counted:
            self.handed_off -= 1
            self.pools[link.service].handed_off -= 1
        self.handoff_failures += 1
        self.log.failure("handoff to {link} failed", link=link.name)
        link.forget(conn_id)
        conn.answer(500, "The connection could not be passed on.")

    def start_relay(self, conn: HeadConnection, link: InstanceLink, conn_id: int, mine: socket.socket) -> None:
        """C{link}'s instance acknowledged its end of C{conn}'s pair: relay over C{mine}."""
        try:
            RelayedConnection.take_over(self, conn, link, conn_id, mine)
        except Exception:
            self.log.failure("relaying connection {id} to {link} failed", id=conn_id, link=link.name)
            mine.close()
            self.ledger.drop(link, conn_id)
            conn.transport.abortConnection()

    def answered(self, conn: HeadConnection, status: int, reason: str = "", sent: int = 0) -> None:
        """The dispatcher answered C{conn} itself: log it, forget it."""
        if self.records is not None:
            self.records.emit(self._access_record(conn, status, reason, sent))
        pattern = conn.route.hosts if conn.route is not None else "-"
        counts = self.own_counts.setdefault((conn.service or "-", pattern), RequestCounts())
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
            key = host_key(head.host)
            if key is not None:
                record["host"] = key
            for name, value in head.headers:
                if name == b"referer":
                    record["referer"] = value
                elif name == b"user-agent":
                    record["user_agent"] = value
        else:
            first = conn.data[:REQUEST_LINE_LOGGED].split(b"\n", 1)[0].rstrip(b"\r")
            if first:
                record["request"] = first
        for key in ("request", "referer", "user_agent", "host"):
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
        """Give no new connections to instance C{pid}; it still hands connections back.

        The client connections relayed to it end their visit: now if idle, else after the
        response in flight (their next request goes to another instance).
        """
        for pool in self.pools.values():
            link = pool.links.get(pid)
            if link is not None:
                link.retiring = True
                self.log.info("instance {link} (pid {pid}) is retiring", link=link.name, pid=pid)
                for relayed in list(link.visits):
                    relayed.retire()

    def link_lost(self, link: InstanceLink, reason: Failure) -> None:
        pool = self.pools[link.service]
        if pool.links.get(link.pid) is link:
            del pool.links[link.pid]
            self.log.info("instance {link} (pid {pid}) is gone", link=link.name, pid=link.pid)
        if reason.check(ChannelViolation) and not link.refusing:
            pool.misbehaviour += 1
        if not link.retiring:
            self.peer_lost(link.channel, f"handoff:{link.name}", link.pid, reason)
        # Whatever it held is its own now, or closed: the records die with the link.
        self.ledger.holder_gone(link)
        self.totals(link.service).instance_gone(link.pid)
        self.gone_log_dropped += link.log_dropped
        for relayed in list(link.visits):
            relayed.retire()
        pending, link.pending = link.pending, {}
        for conn in pending.values():
            # Never acknowledged, so never touched: another instance may take it.
            if not conn.done:
                conn.drop_pair()
                pool.assign(conn.full())
        self._maybe_stopped()

    def update_config(self, site: SiteConfig) -> None:
        """Reloaded: new routes, limits and pools; existing instance links stay.

        A larger C{max_head} raises the size limit of existing handoff
        channels; a smaller one leaves them as they are, since their instances
        may still hand back what the old limit allowed.
        """
        if site.max_head > self.config.max_head:
            for pool in self.pools.values():
                for link in pool.links.values():
                    link.channel.set_limits(limits.handoff(site.max_head))
        self.config = site
        self.stamp = ResponseStamp(self.reactor, site.server_header)
        self.routes = RouteTable.from_config(site)
        self.proxy_trusted = trusted_networks(site.proxy_trusted)
        self.limits = Limits(max_request_line=site.max_request_line, max_head=site.max_head, max_headers=site.max_headers)
        for s in site.services:
            pool = self.pools.get(s.name)
            isolation = s.isolation or "connection"
            if pool is None:
                self.pools[s.name] = ServicePool(self, s.name, s.max_body, s.max_connections, s.lazy, isolation)
            else:
                pool.max_body, pool.max_connections, pool.isolation = s.max_body, s.max_connections, isolation
        # Pools of removed services stay until their instances are gone (they
        # still hand connections back); no route leads to them any more.

    def stats(self) -> dict[str, Any]:
        return {
            "handed_off": self.handed_off,
            "open_connections": self.open_connections,
            "relayed_connections": len(self.relayed),
            "queued": {name: len(pool.queue) for name, pool in self.pools.items()},
        }

    def control(self, kind: str, meta: dict[str, Any]) -> None:
        if kind == "drain":
            self.drain()
        elif kind == "retire":
            self.retire(int(meta["pid"]))
        elif kind == "status":
            self.launcher_view = {k: v for k, v in dict(meta.get("services", {})).items() if isinstance(v, dict)}
            self.process_samples = process_samples(meta.get("processes"))
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

    def set_publisher(self, sock: socket.socket, pid: object = None) -> None:
        """A (new) templates channel to the publisher, which sends the error pages.

        The pages are kept when the publisher goes away: the dispatcher
        shows the last ones it got (the built-in ones until the first).
        """
        channel: MessageChannel

        def lost(reason: Failure) -> None:
            self.peer_lost(channel, "templates", pid, reason)

        channel = MessageChannel(self.reactor, sock, self._from_publisher, lost, name="templates:pubd", limits=limits.TEMPLATES_PEER)
        old, self.publisher = self.publisher, channel
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
            self.set_publisher(sock, meta.get("pid"))
        elif channel == "tls":
            self.set_tls_front(sock, meta.get("pid"))
        else:
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()

    # -- the admin listener: metrics and health

    def totals(self, service: str) -> ServiceTotals:
        return self.service_totals.setdefault(service, ServiceTotals())

    def host_patterns(self, service: str) -> frozenset[str]:
        """The host patterns C{service}'s instances may count requests under (the metrics' C{host})."""
        for s in self.config.services:
            if s.name == service:
                return frozenset(s.hosts or (ANY_HOST,))
        return frozenset()

    def listen_admin(self, sock: socket.socket) -> None:
        self.admin = AdminListener(self, sock)

    def health(self) -> tuple[int, str]:
        """For load balancers (the admin listener's C{/health})."""
        return health(self)

    def metrics(self) -> str:
        """The Prometheus exposition (the admin listener's C{/metrics})."""
        return exposition(self)

    def routes_to(self, service: str) -> bool:
        return any(s.name == service for s in self.config.services)

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
        for relayed in list(self.relayed):
            relayed.drain()

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
        if any(relayed.outstanding for relayed in self.relayed):
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
    from okws_twisted.wire.control import FIRST_LISTEN_FD

    count = int(meta.get("listeners", 0))
    dispatcher = Dispatcher(reactor, site, stopped=stopped, records=records)
    for service in site.services:
        Dispatcher.log.info(
            "service {service}: hosts {hosts}, paths {paths}, isolation {isolation}",
            service=service.name, hosts=" ".join(service.hosts) or "*", paths=" ".join(service.paths),
            isolation=service.isolation,
        )
    proxy = meta.get("proxy")
    dispatcher.listen(
        [socket.socket(fileno=FIRST_LISTEN_FD + i) for i in range(count)],
        [bool(p) for p in proxy] if isinstance(proxy, list) else None,
    )
    if meta.get("admin"):
        dispatcher.listen_admin(socket.socket(fileno=FIRST_LISTEN_FD + count))
    return dispatcher
