# -*- test-case-name: tests.service.test_runtime -*-
"""
One client connection in a service instance (OKWS's libaok connection).

The strict framer (L{okws_twisted.wire.httpframe.RequestFramer}) sits in front of twisted.web's
C{HTTPChannel}: it feeds the channel exactly the requests this service owns; at a request
boundary whose next request belongs to another service it stops, waits until every fed request
is answered and flushed, and hands the connection back to the dispatcher with every unread byte.
Dispatcher and service frame requests with the same code, so they cannot disagree about where a
request ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from okws_twisted.wire.errorpage import error_response
from okws_twisted.wire.httpframe import (
    Body,
    Head,
    HTTPError,
    RequestFramer,
)
from okws_twisted.wire.bodytime import BodyTimer
from okws_twisted.wire.channel import MessageChannel
from okws_twisted.wire.routing import ANY_HOST, host_key
from okws_twisted.wire.transport import SocketTransport

if TYPE_CHECKING:
    from okws_twisted.service.runtime import ServiceRuntime
    from okws_twisted.service.web import ServiceChannel

#: Bytes of pipelined requests the framer holds while a request is answered, before the
#: connection stops reading (what twisted.web's channel allows itself, C{_optimisticEagerReadSize}).
PIPELINE_BUFFER = 0x4000


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
    channel: "ServiceChannel"

    def __init__(
        self,
        runtime: "ServiceRuntime",
        routed: bool,
        conn_id: int | None = None,
        origin: MessageChannel | None = None,
        relay: bool = False,
    ) -> None:
        """
        @param conn_id: the dispatcher's id of this connection (a handback names it).
        @param origin: the handoff channel it came on: only that dispatcher
            knows the connection, so only over it can it be handed back.
        @param relay: a socket pair the dispatcher relays requests over
            (C{isolation = request}): every request on it is this service's
            (the dispatcher routed it), it is never handed back, and it has no
            idle timeout here (the dispatcher has one, and closes the pair).
        """
        self.runtime = runtime
        self.relay = relay
        self.conn_id = conn_id
        self.origin = origin
        self.handed_back = False
        self.framer = RequestFramer(runtime.limits)
        self.owned_next = routed
        #: The host of the first request (as routing compares it): a request for another host
        #: goes back to the dispatcher, which alone decides host routing (and 421).
        self.host: bytes | None = None
        #: The host pattern that routed this connection's requests here (the metrics' label).
        self.pattern = ANY_HOST
        self.fed = 0
        self.finished = 0
        self.in_body = False
        self.handback: bytes | None = None
        self.failure: HTTPError | None = None
        self.client_done = False
        self._body: BodyTimer | None = None
        self._flush_wait = False
        #: The last request was fed (twisted.web closes after it): take no more.
        self.closing = False
        self._pumping = False

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport
        self.channel = self.runtime.site.buildProtocol(transport.getPeer())
        self.channel.okws_connection = self
        # The framer enforces the site's limits: the channel never parses a head (head_received).
        # A relayed pair has no idle timeout here (the dispatcher has one, and closes the pair).
        self.channel.timeOut = None if self.relay else self.runtime.config.keepalive_timeout
        # Its idle timer (kept lazily: ServiceChannel.setTimeout) armed on the runtime's
        # deadline queues: no DelayedCall per connection, no timer operation per request.
        self.channel.callLater = self.runtime.deadlines.call_later
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
        """Feed the channel what the framer has, one request at a time.

        Like twisted.web's channel, a request is started only once the one
        before it is answered; meanwhile the framer holds what follows (at most
        L{PIPELINE_BUFFER} bytes before the connection stops reading).
        """
        if self._pumping:
            return  # a request finished while being fed: the loop below goes on
        self._pumping = True
        try:
            self._feed()
        finally:
            self._pumping = False

    def _feed(self) -> None:
        framer = self.framer
        transport = self.transport
        channel = self.channel
        last = self.runtime.config.max_requests_per_connection
        while self.handback is None and self.failure is None and transport.connected:
            if not self.in_body:
                if self.fed >= last or self.closing:
                    return
                if self.finished < self.fed:
                    # Answering: hold the next requests (bounded), as HTTPChannel would.
                    if framer.buffered > PIPELINE_BUFFER:
                        transport.pauseProducing()
                    return
            try:
                event = framer.next_event()
            except HTTPError as e:
                self._fail(e)
                return
            if event is None:
                return
            if isinstance(event, Head):
                head = event.head
                if self.owned_next:
                    # Routed here by the dispatcher: this connection's host from now on.
                    self.owned_next = False
                    key = self.host = host_key(head.host)
                    route = self.runtime.route(key, head.path)
                    self.pattern = route.hosts if route is not None else ANY_HOST
                    owned = True
                else:
                    # (A relay pair's requests are all routed here: no host to compare.)
                    owned = self.relay or (host_key(head.host) == self.host and self.runtime.owns(self.host, head.path))
                if owned:
                    self.fed += 1
                    self.in_body = True
                    # The last request this connection may carry, or the client
                    # asked to close ("close" anywhere in its Connection list),
                    # or HTTP/1.0: twisted.web answers it, then closes.
                    persistent = head.keep_alive and head.version == b"HTTP/1.1" and self.fed < last
                    self.closing = not persistent
                    if head.chunked or head.content_length:
                        self._start_body()
                        channel.head_received(head, persistent)
                    else:
                        channel.head_received(head, persistent)
                        # Its End, as the next event would give it (one framer call fewer).
                        if self.handback is None and self.failure is None and transport.connected and framer.take_end():
                            self.in_body = False
                else:
                    # Bytes read after this point join the framer's buffer; the
                    # whole unread tail is taken at the moment of handing back.
                    self.handback = event.raw
                    transport.pauseProducing()
                    self._maybe_finish()
                    return
            elif isinstance(event, Body):
                if self._body is not None:
                    self._body.arrived(len(event.data))
                channel.body_received(event.data)
            else:
                self.in_body = False
                self._cancel_body_timer()

    def _start_body(self) -> None:
        """A body must keep arriving (L{BodyTimer}): cut it at its deadline."""
        config = self.runtime.config
        self._body = BodyTimer(self.runtime.reactor, config.body_timeout, config.body_min_rate, self._body_due)

    def _cancel_body_timer(self) -> None:
        if self._body is not None:
            self._body.cancel()
            self._body = None

    def _body_due(self, why: str) -> None:
        self._body = None
        if self.in_body and self.transport.connected:
            self._fail(HTTPError(408, why))

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
        runtime.count(self.pattern, status, runtime.reactor.seconds() - started)
        self._pump()
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
            response = error_response(
                self.failure.status, self.failure.reason, pages=self.runtime.templates.pages, fields=self.runtime.stamp.fields()
            )
            self.runtime.answered(self, self.failure.status, self.failure.reason, response)
            self.transport.write(response)
            self.transport.close_lingering()
            return
        assert self.handback is not None
        self.channel.setTimeout(None)
        sock = self.transport.detach()
        self.handed_back = True
        self.channel.connectionLost(Failure(error.ConnectionDone("handed back to the dispatcher")))
        self.runtime.connection_ended(self)
        unread = self.handback + self.framer.unread()
        self.runtime.hand_back(self.conn_id, self.origin, sock, unread)

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
