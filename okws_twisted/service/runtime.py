# -*- test-case-name: tests.service.test_runtime -*-
"""
The service runtime: one long-lived process serving one web service (OKWS's libaok).

It adopts each client connection the dispatcher hands over, replays the bytes
the dispatcher already read, and serves the connection with twisted.web.  For
C{isolation = request} what it adopts is one end of a socket pair over which
the dispatcher relays one client's requests for this service (and host), and
never a client's socket: such a connection is never handed back, and closed
only by the dispatcher (or after C{Connection: close}).
Its resources render templates that the template publisher sends over the
templates channel (L{okws_twisted.service.templateclient}).
The strict framer (L{okws_twisted.wire.httpframe.RequestFramer}) sits in front of
twisted.web's C{HTTPChannel}: it feeds the channel exactly the requests this
service owns; at a request boundary whose next request belongs to another
service it stops, waits until every fed request is answered and flushed, and
hands the connection back to the dispatcher with every unread byte.  Dispatcher
and service frame requests with the same code, so they cannot disagree about
where a request ends.

Every response becomes an access record for the log daemon
(L{ServiceSite.log}); the process writes no log file itself.

Clients never run it out of descriptors (L{okws_twisted.service.budget}): it
takes at most C{conn_cap} connections, derived from its C{RLIMIT_NOFILE} and
reported to the dispatcher, and refuses any past it (or any whose descriptor
the kernel could not pass) in its ``ack``, so the dispatcher, which still
holds them, answers C{503}.  The handoff channel is never reset for that.
"""

from __future__ import annotations

import base64
import os
import socket
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from zope.interface import implementer

from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.interfaces import IChildRole
from okws_twisted.service.budget import BodyFiles, FdBudget
from okws_twisted.service.connection import ServiceConnection
from okws_twisted.service.csrf import CsrfKey
from okws_twisted.service.templateclient import PublisherClient
from okws_twisted.service.web import MountRoot, ServiceSite
from okws_twisted.wire import handoff, limits
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel
from okws_twisted.wire.counts import RequestCounts
from okws_twisted.wire.deadlines import Deadlines
from okws_twisted.wire.errorpage import error_response
from okws_twisted.wire.httpframe import (
    Limits,
)
from okws_twisted.wire.logsender import RecordSender, RequestIds
from okws_twisted.wire.routing import ANY_HOST, Route, RouteTable
from okws_twisted.wire.stamp import ResponseStamp
from okws_twisted.wire.transport import descriptor_group, held_sends, transport_for

if TYPE_CHECKING:
    from okws_twisted.service.dbclient import DatabaseClient

STATS_INTERVAL = 1.0
#: The socket family of a handed-off client connection, by the class of its local address.
_FAMILIES = {IPv4Address: socket.AF_INET, IPv6Address: socket.AF_INET6}
DONE_REPORT_DELAY = 0.05



@implementer(IChildRole)
class ServiceRuntime:
    """The state of one service instance: its site, connections and dispatcher link."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        site_config: SiteConfig,
        service: ServiceConfig,
        index: int,
        resource: IResource,
        exited: Callable[[], None] = lambda: None,
        records: RecordSender | None = None,
        csrf_secret: bytes | None = None,
    ) -> None:
        self.reactor = reactor
        #: The connections' idle timers (one reactor timer per length).
        self.deadlines = Deadlines(reactor)
        self.config = site_config
        self.service = service
        self.index = index
        self.routes = RouteTable.from_config(site_config)
        self.limits = Limits(
            max_request_line=site_config.max_request_line,
            max_head=site_config.max_head,
            max_headers=site_config.max_headers,
            max_body=service.max_body,
        )
        self.templates = PublisherClient(reactor, site_config.template_timeout, site_config.retry_after)
        self.root = MountRoot(resource, service.paths)
        self.site = ServiceSite(self.root, self.templates, reactor=reactor)
        self.site.stamp = self.stamp = ResponseStamp(reactor, site_config.server_header)
        self.site.records = records
        if csrf_secret is not None:
            self.site.csrf = CsrfKey(service.name, csrf_secret)
        self.site.access_records = site_config.access_log or site_config.access_log_json
        self.site.request_ids = RequestIds()
        database = site_config.database(service.db) if service.db else None
        self.db: DatabaseClient | None = None
        if database is not None:
            # Only a service with C{db} loads the proxy's client (about 0.6 MiB).
            from okws_twisted.service.dbclient import DatabaseClient

            self.db = DatabaseClient(reactor, database, site_config.retry_after)
        self.site.db = self.db
        self.site.doStart()
        self.fds = FdBudget.for_process(service.max_connections)
        self.bodies = BodyFiles(self.fds.memfd_cap)
        if self.fds.conn_cap < service.max_connections:
            self.log.warn(
                "{nofile} descriptors allow {cap} connections, not max_connections = {max}",
                nofile=self.fds.nofile, cap=self.fds.conn_cap, max=service.max_connections,
            )
        self.connections: set[ServiceConnection] = set()
        self.link: MessageChannel | None = None
        #: Handed-back connections (by the dispatcher's id) until the dispatcher acknowledges them.
        self._unacked_backs: dict[int, socket.socket] = {}
        #: Connections from this dispatcher that ended here since the last ack.
        self._closed: list[int] = []
        self._done_timer: IDelayedCall | None = None
        self._exited = exited
        self.draining = False
        self.handing_back = False
        #: Requests answered, by the host pattern that routed them (the metrics' C{host}).
        self.counts: dict[str, RequestCounts] = {}
        self._stats_sent: object = None
        self._stats_loop = LoopingCall(self._send_stats)
        self._stats_loop.clock = reactor
        self._stats_loop.start(STATS_INTERVAL, now=False)
        self.in_flight = 0
        self.served = 0

    @property
    def name(self) -> str:
        return f"{self.service.name}.{self.index}"

    def route(self, host: bytes | None, path: bytes) -> Route | None:
        """How the shared table routes a request (host as L{okws_twisted.wire.routing.host_key} gives it)."""
        return self.routes.route_key(host, path)

    def owns(self, host: bytes | None, path: bytes) -> bool:
        """Does a request for C{path} on C{host} (a host key) belong to this service?"""
        route = self.routes.route_key(host, path)
        return route is not None and route.service == self.service.name

    def count(self, pattern: str, status: int, seconds: float) -> None:
        """One request answered, routed by host C{pattern}."""
        counts = self.counts.get(pattern)
        if counts is None:
            counts = self.counts[pattern] = RequestCounts()
        counts.record(status, seconds)

    # -- the dispatcher link

    def set_dispatcher(self, sock: socket.socket) -> None:
        """A (new) handoff channel to the dispatcher.

        A new channel means a new dispatcher, which has no record of the
        connections the old one handed over: they can never be handed back
        (it would refuse them), so at their next foreign request they are
        closed instead, and handbacks the old one never acknowledged are
        closed now.
        """
        old = self.link
        self.link = MessageChannel(
            self.reactor, sock, self._received, self._link_lost, name="handoff:dispatcher",
            limits=limits.handoff(self.config.max_head),
        )
        self._stats_sent = None
        if old is not None:
            old.close()
        for back in self._unacked_backs.values():
            back.close()
        self._unacked_backs.clear()
        self._closed = []
        self._send_stats()
        if self.draining:
            self._maybe_exit()

    def _link_lost(self, reason: Failure) -> None:
        self.log.info("dispatcher channel closed: {reason}", reason=reason.getErrorMessage())
        if self.link is not None and not self.link.connected:
            self.link = None

    def _received(self, batch: list[Message]) -> None:
        incoming: list[handoff.Connection] = []
        refused: list[int] = []
        for msg in batch:
            try:
                if msg.kind == handoff.CONN:
                    conn_id = handoff.message_id(msg)
                    try:
                        conn = handoff.parse_connection(msg)
                    except ChannelError as e:
                        # Never touched: the dispatcher, which still holds it, answers it.
                        msg.close_fds()
                        refused.append(conn_id)
                        why = "out of descriptors: the kernel dropped its fd" if msg.fds_lost else str(e)
                        self.log.warn("refused connection {id}: {why}", id=conn_id, why=why)
                        continue
                    if self._full(len(incoming)):
                        msg.close_fds()
                        refused.append(conn_id)
                        self.log.warn("refused connection {id}: {cap} connections is this instance's cap", id=conn_id, cap=self.fds.conn_cap)
                        continue
                    incoming.append(conn)
                elif msg.kind == handoff.CONNS:
                    try:
                        conns = handoff.parse_batch(msg)
                    except ChannelError as e:
                        # None of them touched: the dispatcher answers them all (if it named them).
                        ids = handoff.batch_ids(msg)
                        msg.close_fds()
                        refused.extend(ids)
                        why = "out of descriptors: the kernel dropped fds" if msg.fds_lost else str(e)
                        self.log.warn("refused connections {ids}: {why}", ids=ids, why=why)
                        continue
                    for conn in conns:
                        if self._full(len(incoming)):
                            os.close(conn.fd)
                            refused.append(conn.id)
                            self.log.warn("refused connection {id}: {cap} connections is this instance's cap", id=conn.id, cap=self.fds.conn_cap)
                        else:
                            incoming.append(conn)
                elif msg.kind == handoff.BACKACK:
                    handoff.check_shape(msg)
                    taken, turned_down = handoff.parse_ids(msg), handoff.parse_ids(msg, "refused")
                    for back_id in taken + turned_down:
                        back = self._unacked_backs.pop(back_id, None)
                        if back is not None:
                            back.close()
                    if turned_down:
                        self.log.warn("the dispatcher refused handbacks {ids}; closed them", ids=turned_down)
                    if self.draining:
                        self._maybe_exit()
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from the dispatcher: {error}", error=e)
        if not incoming and not refused:
            return
        # Acknowledge the whole batch before touching any of it: an
        # unacknowledged connection is one the dispatcher may give elsewhere.
        self._send_ack([c.id for c in incoming], refused)
        origin = self.link
        # Their answers leave together once the whole batch is served, in this iteration.
        with held_sends(self.reactor):
            for conn in incoming:
                try:
                    self.adopt(conn, origin)
                except Exception:
                    # One connection's failure must not close the channel that
                    # carries every other connection to this instance.
                    self.log.failure("adopting connection {id} failed", id=conn.id)

    def _full(self, arriving: int) -> bool:
        """Would one more connection (after C{arriving} others) pass the cap?"""
        return len(self.connections) + len(self._unacked_backs) + arriving >= self.fds.conn_cap

    def _unavailable(self) -> bytes:
        return error_response(
            503, "The service is busy; try again shortly.", pages=self.templates.pages, retry_after=self.config.retry_after,
            fields=self.stamp.fields(),
        )

    def _send_stats(self) -> None:
        """Report cumulative counters to the dispatcher, if they changed."""
        if self.link is None or not self.link.connected:
            return
        records = self.site.records
        snapshot = (
            self.served,
            self.in_flight,
            len(self.connections),
            records.held if records is not None else 0,
            records.dropped_total if records is not None else 0,
        )
        if snapshot == self._stats_sent:
            return
        self._stats_sent = snapshot
        records = self.site.records
        self.link.send(
            {
                "k": handoff.STATS,
                "counts": {pattern: counts.to_json() for pattern, counts in self.counts.items()},
                "in_flight": self.in_flight,
                "connections": len(self.connections),
                "log_buffered": records.held if records is not None else 0,
                "log_dropped": records.dropped_total if records is not None else 0,
                "conn_cap": self.fds.conn_cap,
            }
        )

    def _send_ack(self, ids: list[int], refused: list[int] | None = None) -> None:
        if self.link is None or not self.link.connected:
            return
        # The report timer (L{connection_ended}) stays armed: when it fires with nothing
        # left to report it sends nothing, which is cheaper than a cancel and a new timer
        # for every batch.
        closed, self._closed = self._closed, []
        meta: dict[str, Any] = {"k": handoff.ACK, "ids": ids, "closed": closed}
        if refused:
            meta["refused"] = refused
        self.link.send(meta)

    def _report_closed(self) -> None:
        """The connections that ended since the last ack, if any (the next batch's ack took them otherwise)."""
        self._done_timer = None
        if self._closed:
            self._send_ack([])

    def adopt(self, conn: handoff.Connection, origin: MessageChannel | None = None) -> None:
        """Serve a connection the dispatcher handed over (on channel C{origin})."""
        # The family from the address the dispatcher read from the socket: no getsockopt to ask
        # the kernel.  Not for a relay's or the TLS front's socket: a Unix pair, whatever the
        # client's address.
        family = None if conn.relay or conn.tls is not None else _FAMILIES.get(conn.host.__class__)
        if family is None:
            sock = socket.socket(fileno=conn.fd)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, conn.fd)
        if self.draining and not (conn.relay and self.handing_back):
            # (A relayed request is served: the dispatcher, told we retire, ends that visit
            # after its response.)
            if self.handing_back:
                # The dispatcher sent it before it learnt we are retiring: our
                # successor will take it.
                self.hand_back(conn.id, origin, sock, conn.data)
                return
            # The site is stopping (the dispatcher stops first); never drop it silently.
            _answer_and_close(sock, error_response(
                503, "The service is restarting.", pages=self.templates.pages, retry_after=self.config.retry_after,
                fields=self.stamp.fields(),
            ))
            return
        protocol = ServiceConnection(self, routed=True, conn_id=conn.id, origin=origin, relay=conn.relay)
        try:
            transport = transport_for(self.reactor, sock, protocol, conn.peer, conn.host, conn.tls)
        except OSError as e:
            # Out of descriptors (EMFILE, ENFILE) or a socket gone bad: this
            # connection is refused, every other one is served.
            self.log.warn("refused connection {id}: {error}", id=conn.id, error=e)
            _answer_and_close(sock, self._unavailable())
            return
        self.connections.add(protocol)
        if conn.relay:
            # The dispatcher's pairs, one per relayed client, many ready in one wakeup under load:
            # polled as one group (no per-read event wrapper; what a wakeup answers leaves at its
            # end, without the flusher's timer), as the dispatcher polls its side of them.
            transport.join_group(descriptor_group(self.reactor))
        transport.start(conn.data)

    def answered(self, conn: ServiceConnection, status: int, reason: str, response: bytes) -> None:
        """The runtime answered a malformed request itself: send its access record."""
        records = self.site.records
        if records is None:
            return
        now = self.reactor.seconds()
        records.emit(
            {
                "kind": "access",
                "time": int(now * 1_000_000),
                "client": getattr(conn.transport.getPeer(), "host", None) or "-",
                "status": status,
                "bytes": len(response) - response.index(b"\r\n\r\n") - 4,
                "request_id": self.site.request_ids.next(),
                "response_time": 0,
                "reason": reason,
            }
        )

    def connection_ended(self, conn: ServiceConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            if conn.conn_id is not None and not conn.handed_back and conn.origin is self.link and self.link is not None:
                # The dispatcher forgets it (a handback names it otherwise).
                self._closed.append(conn.conn_id)
                if self._done_timer is None:
                    self._done_timer = self.reactor.callLater(DONE_REPORT_DELAY, self._report_closed)
        if self.draining:
            self._maybe_exit()

    def hand_back(self, conn_id: int | None, origin: MessageChannel | None, sock: socket.socket, data: bytes) -> None:
        """Give a connection (and its unread bytes) back to the dispatcher that handed it over.

        If that dispatcher is gone, no other would take it: it is closed.
        """
        link = self.link
        if conn_id is None or link is None or not link.connected or origin is not link:
            self.log.info("closing a kept-alive connection: the dispatcher that handed it over is gone")
            sock.close()
            return
        self._unacked_backs[conn_id] = sock
        try:
            link.send(handoff.back_meta(conn_id), data, [sock.fileno()])
        except (error.ConnectionDone, ValueError) as e:
            # ValueError: more unread bytes than a handback carries (a client
            # that pipelined more than a read past a foreign request).
            self.log.info("closing a kept-alive connection instead of handing it back: {error}", error=e)
            self._unacked_backs.pop(conn_id, None)
            sock.close()

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        if channel == "handoff":
            self.set_dispatcher(sock)
        elif channel == "templates":
            self.templates.set_channel(sock)
        elif channel == "db" and self.db is not None:
            self.db.set_channel(sock)
        else:
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()

    def stop(self, drain: float = 0.0, handback: bool = False) -> None:
        self.drain(handback)

    def update_config(self, site: SiteConfig) -> None:
        """Reloaded: new routes (what this service owns) and limits for new connections.

        The descriptor budget stays: C{RLIMIT_NOFILE} was set at start.
        """
        if site.max_head > self.config.max_head and self.link is not None:
            self.link.set_limits(limits.handoff(site.max_head))
        self.config = site
        self.site.stamp = self.stamp = ResponseStamp(self.reactor, site.server_header)
        self.routes = RouteTable.from_config(site)
        self.service = next((s for s in site.services if s.name == self.service.name), self.service)
        self.root.mount_at(self.service.paths)
        database = site.database(self.service.db) if self.service.db else None
        if self.db is not None and database is not None:
            self.db.configure(database)
        self.limits = Limits(
            max_request_line=site.max_request_line,
            max_head=site.max_head,
            max_headers=site.max_headers,
            max_body=self.service.max_body,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "in_flight": self.in_flight,
            "connections": len(self.connections),
            "conn_cap": self.fds.conn_cap,
            "draining": self.draining,
        }

    def control(self, kind: str, meta: dict[str, Any]) -> None:
        self.log.warn("unexpected control message {kind}", kind=kind)

    # -- stopping

    def drain(self, handback: bool = False) -> None:
        """Finish the requests in flight, then exit.

        Kept-alive connections are handed back to the dispatcher (with
        C{handback}: a successor serves their next requests, so a client never
        races a closing server) or closed once idle (the site is stopping).
        """
        if self.draining:
            return
        self.draining = True
        self.handing_back = handback and self.link is not None
        for conn in list(self.connections):
            self.drain_connection(conn)
        self._maybe_exit()

    def drain_connection(self, conn: ServiceConnection) -> None:
        if self.handing_back:
            if not conn.relay:
                conn.hand_back_when_idle()
            # A relay pair is the dispatcher's to close: closing it here would race a request
            # the dispatcher is sending on it.
        else:
            conn.close_when_idle()

    def _maybe_exit(self) -> None:
        if self.draining and not self.connections and not self._unacked_backs:
            self._send_stats()
            if self._stats_loop.running:
                self._stats_loop.stop()
            exited, self._exited = self._exited, lambda: None
            exited()


def start_role(
    reactor: Any,
    site: SiteConfig,
    meta: dict[str, Any],
    stopped: Callable[[], None],
    records: RecordSender | None = None,
) -> ServiceRuntime:
    """A service instance child: import and build the service's resource, then serve.

    A static pool's resource is built in (L{okws_twisted.config.site.STATIC_RESOURCE}): it is
    imported by name from okws, never from the site directory, and built with the root the
    launcher named (C{/files} in its jail), the pool's C{max_age}, and C{keepalive_timeout} as
    the longest a client may read nothing of a file.
    """
    from okws_twisted.bootstrap import import_spec, load_resource

    name, index = str(meta["service"]), int(meta["index"])
    service = next(s for s in site.services if s.name == name)
    if service.kind == "static":
        resource = import_spec(service.resource)(str(meta["root"]), service.max_age, site.keepalive_timeout)
    else:
        resource = load_resource(service.resource, site.base_dir)()
    secret = meta.get("csrf_secret")
    return ServiceRuntime(
        reactor, site, service, index, resource, exited=stopped, records=records,
        csrf_secret=base64.b64decode(secret) if isinstance(secret, str) else None,
    )


def _answer_and_close(sock: socket.socket, response: bytes) -> None:
    """Write C{response} if the socket takes it now (it is small), then close.

    For a connection this instance cannot serve: never blocks the reactor.
    """
    try:
        sock.setblocking(False)
        sock.send(response)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
