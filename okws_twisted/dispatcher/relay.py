# -*- test-case-name: tests.dispatcher.test_relay -*-
"""
The dispatcher's relay for services with C{isolation = request} (OKWS had none: its services held
their clients' connections).

Such a service never holds a client's socket, so it can never read a request that was not
routed to it.  The dispatcher keeps the connection and, for each run of consecutive requests
for one service and host (a I{visit}), hands an instance one end of a fresh socket pair instead
of the client's socket (a ``conn`` message with C{relay}, recorded as a relay pair:
L{okws_twisted.dispatcher.records.RELAY}).  It frames the client's requests with the one
request framer (L{okws_twisted.wire.httpframe.RequestFramer}) and writes only that visit's
requests to the pair, one at a time; it frames the instance's responses
(L{okws_twisted.wire.httpframe.ResponseFramer}) and writes them to the client, so it knows
where each ends, sees a response cut short (the client's connection is then cut, never given a
stitched response) and refuses a second, unrequested one.  Bytes flow through
L{okws_twisted.wire.relay.Splice}, the TLS front's relay, with back-pressure both ways.  A relayed
connection's two transports are read by one L{okws_twisted.wire.transport.DescriptorGroup} for
the whole dispatcher (no Twisted wrapper per read), and what a wakeup forwards leaves at its end,
so an instance is handed a wakeup's requests together, as a client's own burst would reach it.

A request for another service or another host ends the visit: once the responses so far are
flushed, the client's socket goes back through the dispatcher's front door with the unread
bytes (L{okws_twisted.dispatcher.dispatcher.Dispatcher.adopt}), as a service's handback does,
so routing, 404, 421, queueing and a handoff to a C{connection} service work as for any
request.  Keep-alive and pipelining hold across services of either mode, in order.

What one relayed connection may cost the dispatcher is bounded: while a response is
outstanding the client is read only until it sends anything past the current request (its
body), so the request framer holds at most a head and one read; response heads are bounded by
the response framer, bodies pass through; each transport's write buffer pauses the other side
past its high-water mark.  Idle
time between requests is bounded by C{keepalive_timeout}, a next head by C{head_timeout}, a
body by C{body_timeout} and C{body_min_rate} (L{okws_twisted.wire.bodytime}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from okws_twisted.wire.bodytime import BodyTimer
from okws_twisted.wire.errorpage import error_response
from okws_twisted.wire.httpframe import (
    Body,
    End,
    Head,
    HTTPError,
    Limits,
    RequestFramer,
    RequestHead,
    ResponseError,
    ResponseFramer,
)
from okws_twisted.wire.relay import Splice
from okws_twisted.wire.routing import Route, RouteTable, host_key
from okws_twisted.wire.transport import SocketTransport, descriptor_group

if TYPE_CHECKING:
    import socket

    from okws_twisted.dispatcher.accept import HeadConnection
    from okws_twisted.dispatcher.dispatcher import Dispatcher
    from okws_twisted.dispatcher.pool import InstanceLink

__all__ = ["RelayStart", "RelayedConnection", "first_request"]


@dataclass
class RelayStart:
    """A visit's first request, framed when it was routed: what the ``conn`` message carries.

    @ivar framer: the client's request framer, past the bytes in C{payload}.
    @ivar payload: the request's head and the body bytes already read.
    @ivar in_body: more of its body is still to come.
    """

    framer: RequestFramer
    head: RequestHead
    payload: bytes
    in_body: bool


def first_request(data: bytes, limits: Limits, max_body: int) -> RelayStart:
    """Frame the first request of C{data} (every byte the dispatcher has read), for a relay.

    Only that request goes to the instance; anything after it stays for the requests that
    follow.  Raises L{HTTPError} for a body already known to be bad (its chunk framing, or
    chunks over C{max_body}).
    """
    framer = RequestFramer(limits)
    framer.feed(data)
    event = framer.next_event()
    assert isinstance(event, Head), event
    framer.set_body_limit(max_body)
    parts = [event.raw]
    in_body = True
    while True:
        later = framer.next_event()
        if later is None:
            break
        if isinstance(later, End):
            in_body = False
            break
        assert isinstance(later, Body)
        parts.append(later.data)
    return RelayStart(framer, event.head, b"".join(parts), in_body)


class _InstanceSide:
    """The protocol on the dispatcher's end of a visit's socket pair."""

    transport: SocketTransport

    def __init__(self, relayed: "RelayedConnection") -> None:
        self.relayed = relayed

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        relayed = self.relayed
        if relayed.pair is self.transport:  # (not a pair this visit already closed)
            relayed._from_instance(data)

    def connectionLost(self, reason: Failure) -> None:
        self.relayed.instance_lost(self.transport)


class RelayedConnection:
    """A client connection the dispatcher keeps, relaying its requests to one visit at a time.

    States: relaying (a request outstanding: the client is read only for its body) <-> idle
    (waiting for the next request, within C{keepalive_timeout}) -> routing elsewhere (the
    visit is over: flush, then the socket goes back through the front door) | closing (after
    the response: the service or the client said close, or the site is stopping) | gone.  The
    visit itself may end first (its instance retired, died, or was cut off): the connection
    stays, and its next request goes through the front door.
    """

    log = Logger()

    def __init__(self, dispatcher: "Dispatcher", conn: "HeadConnection", link: "InstanceLink", conn_id: int) -> None:
        assert conn.relay is not None and conn.route is not None
        self.dispatcher = dispatcher
        self.reactor = dispatcher.reactor
        self.link = link
        self.conn_id = conn_id
        self.route: Route = conn.route
        self.service = conn.route.service
        self.host = host_key(conn.relay.head.host)
        self.max_body = dispatcher.pools[self.service].max_body
        #: What the dispatcher's access records read (as of a HeadConnection).
        self.transport: SocketTransport = conn.transport
        self.started = conn.started
        self.head: RequestHead | None = conn.relay.head
        self.data = b""
        self.queue_timer = None
        self.done = False
        self.framer = conn.relay.framer
        self.responses = ResponseFramer()
        self.pair: SocketTransport | None = None
        self.splice: Splice | None = None
        self.outstanding = False
        self.in_body = False
        self.response_started = False
        self.requests = 0
        self.client_eof = False
        #: Set when the visit must end after the response in flight (its instance retires).
        self.retiring = False
        #: Set when the client's connection must close after the response in flight.
        self.closing = False
        self.switching = False
        #: The client is not being read (the front door paused it after the head).
        self._held = True
        self._wait: IDelayedCall | None = None
        #: When the timer fires, and when the current deadline is due (at or after it).
        self._wait_at = 0.0
        self._wait_due = 0.0
        self._waiting_for = ""
        self._body: BodyTimer | None = None
        #: L{_routed_here}'s last answer: (route table, raw host, path, whether here).
        self._seen: tuple[RouteTable, bytes | None, bytes, bool] | None = None

    # -- the start of the visit (the instance acknowledged the pair)

    @classmethod
    def take_over(
        cls, dispatcher: "Dispatcher", conn: "HeadConnection", link: "InstanceLink", conn_id: int, mine: "socket.socket"
    ) -> "RelayedConnection":
        """Relay C{conn}'s requests over C{mine}, whose other end C{link}'s instance now holds."""
        assert conn.relay is not None
        relayed = cls(dispatcher, conn, link, conn_id)
        client = conn.transport
        client.protocol = relayed  # the client's socket stays, its reader changes
        # Both ends polled as one group: no Twisted per-event wrapper per relayed read.
        group = descriptor_group(dispatcher.reactor)
        client.join_group(group)
        pair = SocketTransport(dispatcher.reactor, mine, _InstanceSide(relayed), UNIXAddress(None), UNIXAddress(None))
        pair.join_group(group)
        relayed.pair = pair
        relayed.splice = Splice(client, pair, a_to_b=relayed._from_client, b_to_a=relayed._from_instance)
        relayed.splice.hold(client)  # as the front door left it, until the first request is settled
        dispatcher.relayed.add(relayed)
        link.visits.add(relayed)
        # The first request went with the pair.
        relayed._sent(conn.relay.head, conn.relay.in_body)
        pair.start()
        relayed._pump()
        return relayed

    # -- requests: client -> instance

    def _from_client(self, data: bytes) -> None:
        framer = self.framer
        if not (self.outstanding or self.in_body or self.switching or self.closing or self.done):
            # A keep-alive client's next request, whole in one read: what L{_pump} would do with it.
            event = framer.lone_head(data)
            if event is not None:
                self._next(event)
                self._settle()
                return
        # A next head that is not complete gets head_timeout from now (L{_settle}).
        framer.feed(data)
        self._pump()

    def _pump(self) -> None:
        """Frame what the client sent: relay the current body, then take the next request."""
        framer = self.framer
        while not (self.switching or self.closing or self.done):
            if not self.in_body and (self.outstanding or not framer.buffered):
                # One request at a time: the next waits for this response.  (Between requests
                # with nothing buffered the framer has no event, the client's end of file
                # included: it refuses only a head or body cut short.)
                break
            try:
                event = framer.next_event()
            except HTTPError as e:
                self._refuse(e.status, e.reason)
                return
            if event is None:
                break
            if isinstance(event, Body):
                if self._body is not None:
                    self._body.arrived(len(event.data))
                if self.pair is None:
                    # Its instance is gone in the middle of the request: never retried.
                    self._cut("the instance went away in the middle of a request")
                    return
                self.pair.write(event.data)
            elif isinstance(event, End):
                self.in_body = False
                self._cancel_body()
            else:
                self._next(event)
        self._settle()

    def _next(self, event: Head) -> None:
        """A whole next request head: relay it on this visit, or send the connection round again."""
        self._cancel_wait()
        head = event.head
        dispatcher = self.dispatcher
        self.started = self.reactor.seconds()
        if dispatcher.draining:
            self._refuse(503, "The server is shutting down.", retry_after=dispatcher.config.retry_after, head=head)
            return
        pair = self.pair
        if pair is None or self.retiring or not self._routed_here(head, dispatcher.routes):
            self._route_again(event.raw)
            return
        in_body = head.chunked or bool(head.content_length)
        if in_body and head.content_length is not None and head.content_length > self.max_body:
            self._refuse(413, "The request body is too large.", head=head)
            return
        pair.write(event.raw)
        self.framer.set_body_limit(self.max_body)
        if not in_body:
            self.framer.take_end()  # its End, as the next event would give it
        self.head = head
        self._sent(head, in_body)

    def _routed_here(self, head: RequestHead, routes: RouteTable) -> bool:
        """Whether C{head} is this visit's: its host and service.  The last answer is kept for
        the same host, path and route table (a keep-alive client repeats them)."""
        seen = self._seen
        if seen is not None and seen[0] is routes and seen[1] == head.host and seen[2] == head.path:
            return seen[3]
        key = host_key(head.host)
        route = routes.route_key(key, head.path) if key == self.host else None
        here = route is not None and route.service == self.service
        self._seen = (routes, head.host, head.path, here)
        return here

    def _sent(self, head: RequestHead, in_body: bool) -> None:
        """A request (its head, perhaps some body) is on its way to the instance."""
        self.responses.expect(head.method)
        self.outstanding = True
        self.response_started = False
        self.in_body = in_body
        self.requests += 1
        if in_body:
            config = self.dispatcher.config
            self._body = BodyTimer(self.dispatcher.reactor, config.body_timeout, config.body_min_rate, self._body_late)

    # -- responses: instance -> client

    def _from_instance(self, data: bytes) -> None:
        try:
            pieces = self.responses.feed(data)
        except ResponseError as e:
            self._misbehaved(str(e))
            return
        if not pieces:
            return
        # One write for all of a read's pieces (a head and its body: one send to the client, at the
        # end of the wakeup with what the group's other members wrote: L{DescriptorGroup}).
        # Only the last piece can end the response: the framer refuses bytes after an end.
        last = pieces[-1]
        out = last.data if len(pieces) == 1 else b"".join([piece.data for piece in pieces])
        if out:
            self.response_started = True
            self.transport.write(out)
        if last.end:
            self._response_done(last.close)

    def _response_done(self, close: bool) -> None:
        self.outstanding = False
        self.response_started = False
        if close or self.client_eof or self.closing:
            self._close()
            return
        if self.retiring:
            self._end_visit()
        self._pump()

    def instance_lost(self, pair: SocketTransport) -> None:
        """The pair closed: the instance ended the visit (or died); or the dispatcher closed it."""
        if pair is not self.pair:
            return  # closed here: already accounted for
        self._end_visit()
        if self.done:
            return
        try:
            pieces = self.responses.eof()
        except ResponseError as e:
            # Cut short (kill -9, a crash): the client must never take the rest of another
            # response for the rest of this one.
            self._cut(str(e))
            return
        if pieces:  # a response whose body ran until the instance closed
            self._response_done(True)
        elif self.outstanding:
            self._cut("the instance closed before answering")
        else:
            self._settle()

    # -- the client

    def eof_received(self) -> bool:
        """The client half-closed: answer what it sent, then close; keep writing meanwhile."""
        self.client_eof = True
        self.framer.eof()
        self._pump()
        if not self.outstanding and not self.done and not self.switching:
            self._close()
        return True

    #: The client's bytes (this object is the client transport's protocol, joined or not).
    dataReceived = _from_client

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport

    def connectionLost(self, reason: Failure) -> None:
        if self.done:
            return
        self.done = True
        self._stop_wait()
        self._cancel_body()
        self._end_visit()
        self.dispatcher.relayed.discard(self)
        self.dispatcher.closed()
        self.dispatcher._maybe_stopped()

    # -- states

    def _settle(self) -> None:
        """After any event: hold or read the client, arm the idle or head deadline.

        While a response is due the client is still read (a client that waits sends nothing,
        and pausing and resuming it would cost two system calls a request), but only until
        it has sent anything past the current request: then at most one read is buffered.
        """
        if self.done or self.switching:
            return
        waiting = self.outstanding and not self.in_body
        self._hold(self.closing or self.client_eof or (waiting and self.framer.buffered > 0))
        if not self.outstanding and not self.in_body and not self.closing:
            if self.framer.buffered:
                if self._waiting_for != "head":
                    self._wait_for("head", self.dispatcher.config.head_timeout)
            elif self._waiting_for != "idle":
                self._wait_for("idle", self.dispatcher.config.keepalive_timeout)

    def _hold(self, hold: bool) -> None:
        if hold == self._held:
            return
        self._held = hold
        splice = self.splice
        if splice is not None and splice.joined:
            (splice.hold if hold else splice.release)(self.transport)
        elif hold:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _wait_for(self, what: str, seconds: float) -> None:
        """Set the idle or head deadline, C{seconds} from now.

        One timer per connection, not per request, and moved only to fire sooner: a
        deadline set later than the timer (the idle one, after every response) costs an
        assignment, and the timer, when it fires early, goes on to the deadline then set.
        """
        self._waiting_for = what
        reactor = self.reactor
        due = self._wait_due = reactor.seconds() + seconds
        wait = self._wait
        if wait is None:
            self._wait = reactor.callLater(seconds, self._waited)
            self._wait_at = due
        elif due < self._wait_at:
            wait.reset(seconds)
            self._wait_at = due

    def _cancel_wait(self) -> None:
        """No deadline now (a request is outstanding); the timer, if it fires meanwhile, does nothing."""
        self._waiting_for = ""

    def _stop_wait(self) -> None:
        wait, self._wait = self._wait, None
        self._waiting_for = ""
        if wait is not None and wait.active():
            wait.cancel()

    def _waited(self) -> None:
        self._wait = None
        what = self._waiting_for
        if not what:
            return  # the next deadline set arms a timer again
        reactor = self.reactor
        left = self._wait_due - reactor.seconds()
        if left > 1e-6:  # the deadline moved since the timer was armed
            self._wait = reactor.callLater(left, self._waited)
            self._wait_at = self._wait_due
            return
        self._waiting_for = ""
        if what == "idle":
            self._close()  # an idle keep-alive connection: closed without an answer
        elif what == "head":
            self._refuse(408, "The request head did not arrive in time.")

    def _body_late(self, why: str) -> None:
        self._body = None
        if self.in_body and not self.done:
            self._refuse(408, why)

    def _cancel_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.cancel()

    def _end_visit(self) -> None:
        """Close the pair (the instance sees its end close) and forget it: the client stays."""
        pair, self.pair = self.pair, None
        if pair is None:
            return
        if self.splice is not None:
            self.splice.part()
        # The splice held the client (or its back-pressure did); from now on only this object does.
        if self._held:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()
        pair.loseConnection()
        link = self.link
        link.visits.discard(self)
        self.dispatcher.ledger.drop(link, self.conn_id)
        pool = self.dispatcher.pools.get(self.service)
        if pool is not None and pool.queue:
            pool.flush()

    def retire(self) -> None:
        """Its instance takes no new work: end the visit now if idle, else after this response."""
        if not self.outstanding:
            self._end_visit()
        else:
            self.retiring = True

    def drain(self) -> None:
        """The site stops: close now if idle, else after this response."""
        if self.done or self.switching:
            return
        if not self.outstanding and not self.in_body:
            self._close()
        else:
            self.closing = True
            self._settle()

    def _route_again(self, raw: bytes) -> None:
        """The next request is another visit's: once the responses so far are flushed, the
        socket goes back through the front door with every unread byte."""
        self.switching = True
        self._stop_wait()
        self._cancel_body()
        self._hold(True)
        self._end_visit()
        unread = raw + self.framer.unread()
        self.transport.notify_flushed(lambda: self._routed_again(unread))

    def _routed_again(self, unread: bytes) -> None:
        client = self.transport
        if self.done or not client.connected or client.disconnecting:
            return
        self.done = True
        peer, host, tls, cert = client.getPeer(), client.getHost(), client.tls, client.cert
        sock = client.detach()
        self.dispatcher.relayed.discard(self)
        self.dispatcher.closed()
        self.dispatcher.adopt(sock.detach(), peer, host, unread, tls, cert)

    def _close(self) -> None:
        """Close the client's connection once what is written is sent, and the visit."""
        self._stop_wait()
        self._cancel_body()
        self._end_visit()
        self.closing = True
        self.transport.loseConnection()

    def _cut(self, why: str) -> None:
        """Abort the client's connection: a response was cut short, or cannot be given."""
        self.log.info(
            "cutting a relayed connection to {service} (instance pid {pid}): {why}",
            service=self.service, pid=self.link.pid, why=why,
        )
        self._stop_wait()
        self._cancel_body()
        self._end_visit()
        self.transport.abortConnection()

    def _misbehaved(self, why: str) -> None:
        """The instance broke response framing: its client's connection is cut, it is counted."""
        link = self.link
        if link.channel.connected:
            link.misbehaved(f"broke HTTP framing on a relayed connection: {why}")
        else:
            self.dispatcher.pools[self.service].misbehaviour += 1
        self._cut(why)

    def _refuse(self, status: int, reason: str, retry_after: int | None = None, head: RequestHead | None = None) -> None:
        """The dispatcher answers itself (a bad request, a late head or body), then closes.

        Only at a response boundary: once the instance's response has begun, the connection
        is cut instead.
        """
        if self.done or self.closing:
            return
        if self.outstanding and self.response_started:
            self._cut(f"{status} {reason} during a response")
            return
        if head is not None:
            self.head = head
        self._stop_wait()
        self._cancel_body()
        self._end_visit()
        self.closing = True
        head_only = head is not None and head.method == b"HEAD"
        response = error_response(
            status, reason, pages=self.dispatcher.pages, retry_after=retry_after, head_only=head_only,
            fields=self.dispatcher.stamp.fields(),
        )
        body = 0 if head_only else len(response) - response.index(b"\r\n\r\n") - 4
        self.dispatcher.answered(self, status, reason, body)  # type: ignore[arg-type]
        self.transport.write(response)
        self.transport.close_lingering()

    def __repr__(self) -> str:
        return f"<RelayedConnection to {self.service} ({self.link.name}, {self.requests} requests)>"
