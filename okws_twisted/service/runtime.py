# -*- test-case-name: tests.test_runtime -*-
"""
The service runtime: one long-lived process serving one web service (OKWS's libaok).

It adopts each client connection the dispatcher hands over, replays the bytes
the dispatcher already read, and serves the connection with twisted.web.
Its resources render templates that the template publisher sends over the
templates channel (L{okws_twisted.templateclient}).
The strict framer (L{okws_twisted.httpframe.RequestFramer}) sits in front of
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

import io
import os
import socket
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, NoResource, Resource
from zope.interface import implementer

from okws_twisted import handoff
from okws_twisted.channel import ChannelError, Message, MessageChannel
from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.errorpage import error_response
from okws_twisted.interfaces import IChildRole
from okws_twisted.metrics import RequestCounts
from okws_twisted.httpframe import Body, Head, HTTPError, Limits, RequestFramer, RequestHead
from okws_twisted.logsender import RecordSender, RequestIds
from okws_twisted.routing import RouteTable
from okws_twisted.templateclient import PublisherClient
from okws_twisted.handoff import tls_summary
from okws_twisted.transport import SocketTransport, transport_for

MAX_WAITING_HANDBACKS = 1024
STATS_INTERVAL = 1.0
DONE_REPORT_DELAY = 0.05


def origin_form(head: RequestHead, raw: bytes) -> bytes:
    """The raw head with an absolute-form target rewritten to origin form.

    The dispatcher routes C{GET http://host/p?q HTTP/1.1} by its path; the
    framer has already checked that the authority equals C{Host}.  twisted.web
    would take the whole URL as the path, so it gets C{GET /p?q HTTP/1.1}.
    """
    target = head.target
    if target[:1] == b"/" or target == b"*":
        return raw
    origin = head.path + (b"?" + head.query if head.query else b"")
    line_end = raw.index(b"\r\n", raw.index(target))
    first = raw[:line_end].replace(b" " + target + b" ", b" " + origin + b" ", 1)
    return first + raw[line_end:]


def with_connection_close(raw: bytes) -> bytes:
    """The raw head with C{Connection: close} as its first field.

    twisted.web decides persistence from the first C{Connection} field, so the
    one put first wins over any the client sent.
    """
    line_end = raw.index(b"\r\n", raw.index(b"HTTP/"))
    return raw[: line_end + 2] + b"Connection: close\r\n" + raw[line_end + 2 :]


class ServiceRequest(server.Request):
    """A twisted.web request that tells its connection when it is answered.

    Request bodies live in memory (an anonymous C{memfd} above 100 KB), never
    in a temporary file: a jailed service has no writable directory.  The
    framer has already bounded the body by the service's C{max_body}.

    @ivar request_id: okws's id of this request, as in the access log (okws
        makes every id; a client's X-Request-Id header is not used).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        site = getattr(self.channel, "factory", None)
        if isinstance(site, ServiceSite):
            self.okws_started = site.reactor.seconds()
            self.request_id = site.request_ids.next()
        else:
            self.okws_started = 0.0
            self.request_id = "-"

    def gotLength(self, length: int | None) -> None:
        if length is not None and length < 100_000:
            self.content = io.BytesIO()
        else:
            self.content = os.fdopen(os.memfd_create("okws-request-body", os.MFD_CLOEXEC), "w+b")

    def process(self) -> None:
        conn = getattr(self.channel, "okws_connection", None)
        if conn is not None:
            conn.request_started()
            self.notifyFinish().addBoth(conn.request_finished, self, conn.runtime.reactor.seconds())
        super().process()


class MountRoot(Resource):
    """The site root of a service process: the service's resource, mounted at each of its paths.

    The dispatcher routes by path prefix; here the matched prefix is moved
    from C{request.postpath} to C{request.prepath}, so the author's resource
    sees only the part of the path below its mount point (for C{/hello/x},
    C{postpath == [b"x"]}; for C{/hello} and C{/hello/}, C{postpath == []}).
    """

    def __init__(self, resource: IResource, paths: tuple[str, ...]) -> None:
        super().__init__()
        self.resource = resource
        self.mount_at(paths)

    def mount_at(self, paths: tuple[str, ...]) -> None:
        """Serve the resource at these paths (again, after a reload)."""
        self.mounts = sorted(
            ([seg.encode("ascii") for seg in p.strip("/").split("/")] if p != "/" else [] for p in paths),
            key=len,
            reverse=True,
        )

    def getChildWithDefault(self, name: bytes, request: server.Request) -> IResource:
        # Called once, for the first segment; Site has already moved it to prepath.
        segments = [name, *request.postpath]
        for mount in self.mounts:
            if segments[: len(mount)] == mount:
                rest = segments[len(mount) :]
                request.prepath = mount[:]
                request.postpath = [] if rest == [b""] else rest
                return self.resource
        return NoResource()

    def render(self, request: server.Request) -> bytes:
        # Only reached for a request with an empty path, which the framer refuses.
        return NoResource().render(request)


class ServiceChannel(http.HTTPChannel):
    """twisted.web's channel, with its idle timeout kept to idle time.

    C{timeOut} (C{keepalive_timeout}) is reset only when bytes are fed; while
    a request body is arriving, C{body_timeout} (L{ServiceConnection}'s body
    timer) decides, so the idle timer is re-armed instead of closing.
    """

    okws_connection: "ServiceConnection | None" = None

    def timeoutConnection(self) -> None:
        conn = self.okws_connection
        if conn is not None and conn.in_body:
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()


class ServiceSite(server.Site):
    """The twisted.web site of one service instance.

    @ivar templates: what its resources render templates with (the
        publisher's, through L{PublisherClient}).
    """

    requestFactory = ServiceRequest
    protocol = ServiceChannel
    displayTracebacks = False

    def __init__(self, resource: IResource, templates: PublisherClient | None = None, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor)
        self.templates = templates

    #: The log client (set by the runtime); L{None}: no access records.
    records: RecordSender | None = None
    #: Send records for every response (else only for status 400 and up, for error.log).
    access_records = True
    request_ids = RequestIds("-")

    def log(self, request: server.Request) -> None:
        """Send an access record to the log daemon (instead of twisted.web's own log).

        Called by twisted.web as the response finishes; cheap: it builds a dict.
        """
        records = self.records
        code = request.code
        if records is None or (code < 400 and not self.access_records):
            return
        now = self.reactor.seconds()
        started = getattr(request, "okws_started", 0.0) or now
        client = request.getClientAddress()
        record: dict[str, Any] = {
            "kind": "access",
            "time": int(started * 1_000_000),
            "client": getattr(client, "host", None) or "-",
            "request": b"%s %s %s" % (request.method, request.uri, request.clientproto),
            "status": code,
            "bytes": request.sentLength,
            "request_id": getattr(request, "request_id", "-"),
            "response_time": max(0, int((now - started) * 1_000_000)),
        }
        headers = request.requestHeaders
        referer = headers.getRawHeaders(b"referer")
        if referer:
            record["referer"] = referer[0]
        agent = headers.getRawHeaders(b"user-agent")
        if agent:
            record["user_agent"] = agent[0]
        tls = getattr(request.channel.transport, "tls", None) if request.channel is not None else None
        if tls is not None:
            record["tls"] = tls_summary(tls)
        for key in ("request", "referer", "user_agent"):
            if key in record:
                record[key] = record[key].decode("latin-1")
        records.emit(record)


class ServiceConnection:
    """One client connection in a service: framer in front of an HTTPChannel.

    States: serving (feeding owned requests) -> handing back (a foreign
    request is next; waiting for fed requests to finish and flush) -> gone;
    serving -> failing (malformed or stalled request: answer it once the
    requests before it are done, then close) -> gone; serving -> last request
    (C{max_requests_per_connection} reached, or the client half-closed):
    answer what was fed, then close.
    """

    log = Logger()
    transport: SocketTransport
    channel: http.HTTPChannel

    def __init__(self, runtime: "ServiceRuntime", routed: bool) -> None:
        self.runtime = runtime
        self.framer = RequestFramer(runtime.limits)
        self.owned_next = routed
        self.fed = 0
        self.finished = 0
        self.in_body = False
        self.handback: bytes | None = None
        self.failure: HTTPError | None = None
        self.client_done = False
        self._body_timer: IDelayedCall | None = None
        self._flush_wait = False

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport
        self.channel = self.runtime.site.buildProtocol(transport.getPeer())
        self.channel.okws_connection = self
        config = self.runtime.config
        self.channel.timeOut = config.keepalive_timeout
        # The framer enforces the site's limits; twisted.web's own must never
        # refuse a head the framer (and the dispatcher) accepted.
        self.channel.totalHeadersSize = max(config.max_head, http.HTTPChannel.totalHeadersSize)
        self.channel.MAX_LENGTH = max(config.max_head, http.HTTPChannel.MAX_LENGTH)
        self.channel.maxHeaders = max(config.max_headers, http.HTTPChannel.maxHeaders)
        self.channel.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.framer.feed(data)
        self._pump()

    def eof_received(self) -> bool:
        """The client half-closed: answer what it sent, then close (keep writing)."""
        self.client_done = True
        self.framer.eof()
        self._pump()
        if self.failure is None and self.handback is None:
            self._maybe_finish()
        return True

    def _pump(self) -> None:
        framer = self.framer
        transport = self.transport
        last = self.runtime.config.max_requests_per_connection
        while self.handback is None and self.failure is None and transport.connected:
            if self.fed >= last and not self.in_body:
                return
            try:
                event = framer.next_event()
            except HTTPError as e:
                self._fail(e)
                return
            if event is None:
                return
            if isinstance(event, Head):
                if self.owned_next or self.runtime.owns(event.head.path):
                    self.owned_next = False
                    self.fed += 1
                    self.in_body = True
                    raw = origin_form(event.head, event.raw)
                    if self.fed >= last or not event.head.keep_alive:
                        # The last request this connection may carry, or the
                        # client asked to close ("close" anywhere in its
                        # Connection list: twisted.web only finds it as a
                        # space-separated word of the first field): twisted.web
                        # answers it with "Connection: close" and then closes.
                        raw = with_connection_close(raw)
                    self.channel.dataReceived(raw)
                    head = event.head
                    if head.chunked or head.content_length:
                        self._arm_body_timer()
                else:
                    # Bytes read after this point join the framer's buffer; the
                    # whole unread tail is taken at the moment of handing back.
                    self.handback = event.raw
                    transport.pauseProducing()
                    self._maybe_finish()
                    return
            elif isinstance(event, Body):
                self._arm_body_timer()
                self.channel.dataReceived(event.data)
            else:
                self.in_body = False
                self._cancel_body_timer()

    def _arm_body_timer(self) -> None:
        """A body must keep arriving: at most C{body_timeout} seconds between reads."""
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.reset(self.runtime.config.body_timeout)
        else:
            self._body_timer = self.runtime.reactor.callLater(self.runtime.config.body_timeout, self._body_stalled)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.cancel()
        self._body_timer = None

    def _body_stalled(self) -> None:
        self._body_timer = None
        if self.in_body and self.transport.connected:
            self._fail(HTTPError(408, "The request body stopped arriving."))

    def _fail(self, e: HTTPError) -> None:
        """Answer C{e} after the requests before the bad one, then close."""
        self.failure = e
        self._cancel_body_timer()
        if self.in_body:
            # The bad request was fed but will never be complete: do not wait for it.
            self.in_body = False
            self.fed -= 1
        self.transport.pauseProducing()
        self._maybe_finish()

    # -- request accounting (called by ServiceRequest)

    def request_started(self) -> None:
        self.runtime.in_flight += 1

    def request_finished(self, result: object, request: server.Request, started: float) -> None:
        self.finished += 1
        runtime = self.runtime
        runtime.in_flight -= 1
        runtime.served += 1
        # 499 (nginx's convention): the client left before the response was complete.
        status = 499 if isinstance(result, Failure) else request.code
        runtime.counts.record(status, runtime.reactor.seconds() - started)
        self._maybe_finish()
        if self.runtime.draining:
            self.runtime.drain_connection(self)

    @property
    def idle(self) -> bool:
        """No request is in flight or partly received."""
        return self.finished >= self.fed and not self.in_body and not self.framer.unread().strip(b"\r\n")

    # -- handing back / failing / closing

    def _maybe_finish(self) -> None:
        transport = self.transport
        if self.finished < self.fed or self._flush_wait or not transport.connected or transport.disconnecting:
            return
        if self.handback is not None or self.failure is not None:
            self._flush_wait = True
            transport.notify_flushed(self._flushed)
        elif self.client_done and not self.in_body:
            self.channel.setTimeout(None)
            transport.loseConnection()

    def _flushed(self) -> None:
        if not self.transport.connected or self.transport.disconnecting:
            return
        if self.failure is not None:
            self.channel.setTimeout(None)
            response = error_response(self.failure.status, self.failure.reason, pages=self.runtime.templates.pages)
            self.runtime.answered(self, self.failure.status, self.failure.reason, response)
            self.transport.write(response)
            self.transport.close_lingering()
            return
        assert self.handback is not None
        self.channel.setTimeout(None)
        sock = self.transport.detach()
        self.channel.connectionLost(Failure(error.ConnectionDone("handed back to the dispatcher")))
        self.runtime.connection_ended(self)
        unread = self.handback + self.framer.unread()
        self.runtime.hand_back(sock, unread, self.transport.getPeer(), self.transport.getHost(), self.transport.tls)

    def hand_back_when_idle(self) -> None:
        """Draining for a successor: hand the connection back at its next request boundary."""
        if not self.transport.connected or self.handback is not None or self.failure is not None:
            return
        if self.in_body:
            return  # called again when this request finishes
        # Everything not yet fed (possibly nothing) goes back to the dispatcher.
        self.handback = b""
        self.transport.pauseProducing()
        self._maybe_finish()

    def close_when_idle(self) -> None:
        """Draining: close now if idle, else after the requests in flight."""
        if not self.transport.connected:
            return
        if self.idle:
            self.channel.setTimeout(None)
            self.transport.loseConnection()
            return
        self.channel.persistent = False
        for request in self.channel.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_body_timer()
        self.channel.connectionLost(reason)
        self.runtime.connection_ended(self)


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
