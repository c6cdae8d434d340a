# -*- test-case-name: tests.test_runtime -*-
"""
The service runtime: one long-lived process serving one web service (OKWS's libaok).

It adopts each client connection the dispatcher hands over, replays the bytes
the dispatcher already read, and serves the connection with twisted.web.
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

import socket
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IDelayedCall
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
from okws_twisted.httpframe import Body, End, Head, HTTPError, Limits, RequestFramer
from okws_twisted.logsender import RecordSender, RequestIds
from okws_twisted.routing import RouteTable
from okws_twisted.transport import SocketTransport

MAX_WAITING_HANDBACKS = 1024
DONE_REPORT_DELAY = 0.05


class ServiceRequest(server.Request):
    """A twisted.web request that tells its connection when it is answered.

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

    def process(self) -> None:
        conn = getattr(self.channel, "okws_connection", None)
        if conn is not None:
            conn.request_started()
            self.notifyFinish().addBoth(conn.request_finished)
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


class ServiceSite(server.Site):
    """The twisted.web site of one service instance."""

    requestFactory = ServiceRequest
    protocol = http.HTTPChannel
    displayTracebacks = False

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
        for key in ("request", "referer", "user_agent"):
            if key in record:
                record[key] = record[key].decode("latin-1")
        records.emit(record)


class ServiceConnection:
    """One client connection in a service: framer in front of an HTTPChannel.

    States: serving (feeding owned requests) -> handing back (a foreign
    request is next; waiting for fed requests to finish and flush) -> gone;
    or serving -> failing (malformed request: answer 400 once the fed
    requests are done, then close) -> gone.
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
        self.handback: bytes | None = None
        self.failure: HTTPError | None = None
        self._closing_done = False
        self._flush_wait = False

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport
        self.channel = self.runtime.site.buildProtocol(transport.getPeer())
        self.channel.okws_connection = self
        self.channel.timeOut = self.runtime.config.keepalive_timeout
        self.channel.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.framer.feed(data)
        self._pump()

    def _pump(self) -> None:
        framer = self.framer
        transport = self.transport
        while self.handback is None and self.failure is None and transport.connected:
            try:
                event = framer.next_event()
            except HTTPError as e:
                self.failure = e
                transport.pauseProducing()
                self._maybe_finish()
                return
            if event is None:
                return
            if isinstance(event, Head):
                if self.owned_next or self.runtime.owns(event.head.path):
                    self.owned_next = False
                    self.fed += 1
                    self.channel.dataReceived(event.raw)
                else:
                    self.handback = event.raw + framer.unread()
                    transport.pauseProducing()
                    self._maybe_finish()
                    return
            elif isinstance(event, Body):
                self.channel.dataReceived(event.data)
            # End: nothing to do; the next event starts the next request.

    # -- request accounting (called by ServiceRequest)

    def request_started(self) -> None:
        self.runtime.in_flight += 1

    def request_finished(self, result: object) -> None:
        self.finished += 1
        self.runtime.in_flight -= 1
        self.runtime.served += 1
        self._maybe_finish()
        if self.runtime.draining:
            self.runtime.drain_connection(self)

    @property
    def idle(self) -> bool:
        """No request is in flight or partly received."""
        return self.finished >= self.fed and not self.framer.unread()

    # -- handing back / failing

    def _maybe_finish(self) -> None:
        transport = self.transport
        if self.finished < self.fed or self._flush_wait or not transport.connected or transport.disconnecting:
            return
        if self.handback is not None or self.failure is not None:
            self._flush_wait = True
            self.transport.notify_flushed(self._flushed)

    def _flushed(self) -> None:
        if not self.transport.connected or self.transport.disconnecting:
            return
        if self.failure is not None:
            self.channel.setTimeout(None)
            response = error_response(self.failure.status, self.failure.reason)
            self.runtime.answered(self, self.failure.status, self.failure.reason, response)
            self.transport.write(response)
            self.transport.close_lingering()
            return
        assert self.handback is not None
        self.channel.setTimeout(None)
        sock = self.transport.detach()
        self.channel.connectionLost(Failure(error.ConnectionDone("handed back to the dispatcher")))
        self.runtime.connection_ended(self)
        self.runtime.hand_back(sock, self.handback, self.transport.getPeer(), self.transport.getHost())

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
        self.site = ServiceSite(MountRoot(resource, service.paths), reactor=reactor)
        self.site.records = records
        self.site.access_records = site_config.access_log or site_config.access_log_json
        self.site.request_ids = RequestIds()
        self.site.doStart()
        self.connections: set[ServiceConnection] = set()
        self.link: MessageChannel | None = None
        self._unacked_backs: dict[int, tuple[socket.socket, bytes, IAddress, IAddress]] = {}
        self._waiting_backs: list[tuple[socket.socket, bytes, IAddress, IAddress]] = []
        self._back_ids = 0
        self._done = 0
        self._done_timer: IDelayedCall | None = None
        self._exited = exited
        self.draining = False
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
        if old is not None:
            old.close()
        resend = list(self._unacked_backs.values()) + self._waiting_backs
        self._unacked_backs.clear()
        self._waiting_backs = []
        for sock_, data, peer, host in resend:
            self.hand_back(sock_, data, peer, host)

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
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                for fd in msg.fds:
                    socket.socket(fileno=fd).close()
                self.log.error("bad message from the dispatcher: {error}", error=e)
        if not incoming:
            return
        # Acknowledge the whole batch before touching any of it: an
        # unacknowledged connection is one the dispatcher may give elsewhere.
        self._send_ack([c.id for c in incoming])
        for conn in incoming:
            self.adopt(conn)

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
            # Should not happen (the dispatcher stops first); never drop it silently.
            sock.sendall(error_response(503, "The service is restarting.", retry_after=self.config.retry_after))
            sock.close()
            return
        protocol = ServiceConnection(self, routed=True)
        self.connections.add(protocol)
        SocketTransport(self.reactor, sock, protocol, conn.peer, conn.host).start(conn.data)

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

    def hand_back(self, sock: socket.socket, data: bytes, peer: IAddress, host: IAddress) -> None:
        """Give a connection (and its unread bytes) back to the dispatcher."""
        if self.link is None or not self.link.connected:
            if self.draining or len(self._waiting_backs) >= MAX_WAITING_HANDBACKS:
                sock.close()
                return
            self._waiting_backs.append((sock, data, peer, host))
            return
        self._back_ids += 1
        back_id = self._back_ids
        self._unacked_backs[back_id] = (sock, data, peer, host)
        try:
            self.link.send(handoff.connection_meta(handoff.BACK, back_id, peer, host), data, [sock.fileno()])
        except error.ConnectionDone:
            self._unacked_backs.pop(back_id, None)
            self._waiting_backs.append((sock, data, peer, host))

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        if channel == "handoff":
            self.set_dispatcher(sock)
        else:
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()

    def stop(self, drain: float = 0.0) -> None:
        self.drain()

    # -- stopping

    def drain(self) -> None:
        """Finish the requests in flight, close idle connections, then exit."""
        if self.draining:
            return
        self.draining = True
        for conn in list(self.connections):
            conn.close_when_idle()
        for sock, _data, _peer, _host in self._waiting_backs:
            sock.close()
        self._waiting_backs = []
        self._maybe_exit()

    def drain_connection(self, conn: ServiceConnection) -> None:
        conn.close_when_idle()

    def _maybe_exit(self) -> None:
        if self.draining and not self.connections:
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
