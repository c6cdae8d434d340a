# -*- test-case-name: tests.service.test_runtime -*-
"""
The service runtime: one long-lived process serving one web service (OKWS's libaok).

It adopts each client connection the dispatcher hands over, replays the bytes
the dispatcher already read, and serves the connection with twisted.web.
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
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from zope.interface import implementer

from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.interfaces import IChildRole
from okws_twisted.service.connection import ServiceConnection
from okws_twisted.service.dbclient import DatabaseClient
from okws_twisted.service.templateclient import PublisherClient
from okws_twisted.service.web import MountRoot, ServiceSite
from okws_twisted.wire import handoff
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel
from okws_twisted.wire.counts import RequestCounts
from okws_twisted.wire.errorpage import error_response
from okws_twisted.wire.httpframe import (
    Limits,
)
from okws_twisted.wire.logsender import RecordSender, RequestIds
from okws_twisted.wire.routing import RouteTable
from okws_twisted.wire.transport import transport_for

MAX_WAITING_HANDBACKS = 1024
STATS_INTERVAL = 1.0
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
    ) -> None:
        self.reactor = reactor
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
        self.site.records = records
        self.site.access_records = site_config.access_log or site_config.access_log_json
        self.site.request_ids = RequestIds()
        database = site_config.database(service.db) if service.db else None
        self.db = DatabaseClient(reactor, database, site_config.retry_after) if database is not None else None
        self.site.db = self.db
        self.site.doStart()
        self.connections: set[ServiceConnection] = set()
        self.link: MessageChannel | None = None
        self._unacked_backs: dict[int, tuple[socket.socket, bytes, IAddress, IAddress, dict[str, str] | None]] = {}
        self._waiting_backs: list[tuple[socket.socket, bytes, IAddress, IAddress, dict[str, str] | None]] = []
        self._back_ids = 0
        self._done = 0
        self._done_timer: IDelayedCall | None = None
        self._exited = exited
        self.draining = False
        self.handing_back = False
        self.counts = RequestCounts()
        self._stats_sent: object = None
        self._stats_loop = LoopingCall(self._send_stats)
        self._stats_loop.clock = reactor
        self._stats_loop.start(STATS_INTERVAL, now=False)
        self.in_flight = 0
        self.served = 0

    @property
    def name(self) -> str:
        return f"{self.service.name}.{self.index}"

    def owns(self, path: bytes) -> bool:
        return self.routes.route(path) == self.service.name

    # -- the dispatcher link

    def set_dispatcher(self, sock: socket.socket) -> None:
        """A (new) handoff channel to the dispatcher."""
        old = self.link
        self.link = MessageChannel(self.reactor, sock, self._received, self._link_lost, name="handoff:dispatcher")
        self._stats_sent = None
        if old is not None:
            old.close()
        resend = list(self._unacked_backs.values()) + self._waiting_backs
        self._unacked_backs.clear()
        self._waiting_backs = []
        for sock_, data, peer, host, tls in resend:
            self.hand_back(sock_, data, peer, host, tls)

    def _link_lost(self, reason: Failure) -> None:
        self.log.info("dispatcher channel closed: {reason}", reason=reason.getErrorMessage())
        if self.link is not None and not self.link.connected:
            self.link = None

    def _received(self, batch: list[Message]) -> None:
        incoming: list[handoff.Connection] = []
        for msg in batch:
            try:
                if msg.kind == handoff.CONN:
                    incoming.append(handoff.parse_connection(msg))
                elif msg.kind == handoff.BACKACK:
                    for back_id in handoff.parse_ids(msg):
                        held = self._unacked_backs.pop(back_id, None)
                        if held is not None:
                            held[0].close()
                    if self.draining:
                        self._maybe_exit()
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from the dispatcher: {error}", error=e)
        if not incoming:
            return
        # Acknowledge the whole batch before touching any of it: an
        # unacknowledged connection is one the dispatcher may give elsewhere.
        self._send_ack([c.id for c in incoming])
        for conn in incoming:
            try:
                self.adopt(conn)
            except Exception:
                # One connection's failure must not close the channel that
                # carries every other connection to this instance.
                self.log.failure("adopting connection {id} failed", id=conn.id)

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
                "counts": self.counts.to_json(),
                "in_flight": self.in_flight,
                "connections": len(self.connections),
                "log_buffered": records.held if records is not None else 0,
                "log_dropped": records.dropped_total if records is not None else 0,
            }
        )

    def _send_ack(self, ids: list[int]) -> None:
        if self.link is None or not self.link.connected:
            return
        done, self._done = self._done, 0
        timer, self._done_timer = self._done_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.link.send({"k": handoff.ACK, "ids": ids, "done": done})

    def adopt(self, conn: handoff.Connection) -> None:
        """Serve a connection the dispatcher handed over."""
        sock = socket.socket(fileno=conn.fd)
        if self.draining:
            if self.handing_back:
                # The dispatcher sent it before it learnt we are retiring: our
                # successor will take it.
                self.hand_back(sock, conn.data, conn.peer, conn.host, conn.tls)
                return
            # The site is stopping (the dispatcher stops first); never drop it silently.
            sock.setblocking(True)
            sock.settimeout(1.0)
            try:
                sock.sendall(error_response(
                        503, "The service is restarting.", pages=self.templates.pages, retry_after=self.config.retry_after
                    ))
            except OSError:
                pass
            sock.close()
            return
        protocol = ServiceConnection(self, routed=True)
        self.connections.add(protocol)
        transport_for(self.reactor, sock, protocol, conn.peer, conn.host, conn.tls).start(conn.data)

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
            self._done += 1
            if self._done_timer is None and self.link is not None:
                self._done_timer = self.reactor.callLater(DONE_REPORT_DELAY, self._send_ack, [])
        if self.draining:
            self._maybe_exit()

    def hand_back(
        self, sock: socket.socket, data: bytes, peer: IAddress, host: IAddress, tls: dict[str, str] | None = None
    ) -> None:
        """Give a connection (and its unread bytes) back to the dispatcher."""
        if self.link is None or not self.link.connected:
            if self.draining or len(self._waiting_backs) >= MAX_WAITING_HANDBACKS:
                self.log.warn("closing a kept-alive connection: no dispatcher to hand it back to")
                sock.close()
                return
            self._waiting_backs.append((sock, data, peer, host, tls))
            return
        self._back_ids += 1
        back_id = self._back_ids
        self._unacked_backs[back_id] = (sock, data, peer, host, tls)
        try:
            self.link.send(handoff.connection_meta(handoff.BACK, back_id, peer, host, tls), data, [sock.fileno()])
        except error.ConnectionDone:
            self._unacked_backs.pop(back_id, None)
            self._waiting_backs.append((sock, data, peer, host, tls))

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
        """Reloaded: new routes (what this service owns) and limits for new connections."""
        self.config = site
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
        if not self.handing_back:
            for sock, *_rest in self._waiting_backs:
                sock.close()
            self._waiting_backs = []
        self._maybe_exit()

    def drain_connection(self, conn: ServiceConnection) -> None:
        if self.handing_back:
            conn.hand_back_when_idle()
        else:
            conn.close_when_idle()

    def _maybe_exit(self) -> None:
        if self.draining and not self.connections and not self._unacked_backs and not self._waiting_backs:
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
    """A service instance child: import and build the service's resource, then serve."""
    from okws_twisted.bootstrap import load_resource

    name, index = str(meta["service"]), int(meta["index"])
    service = next(s for s in site.services if s.name == name)
    resource = load_resource(service.resource, site.base_dir)()
    return ServiceRuntime(reactor, site, service, index, resource, exited=stopped, records=records)
