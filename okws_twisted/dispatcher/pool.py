# -*- test-case-name: tests.dispatcher.test_dispatcher -*-
"""
The dispatcher's side of the service instances (OKWS's okd): one handoff channel per instance
(L{InstanceLink}) and, per service, the pool that picks the least busy ready instance or
queues the connection for a bounded time (L{ServicePool}).

Everything an instance sends is checked: a handback must be a connection the
dispatcher handed to that instance (L{okws_twisted.dispatcher.records}), each
message kind carries exactly its number of descriptors, and a message that
breaks a rule is refused, logged with the instance and counted
(C{okws_misbehaviour_total}).  After L{MISBEHAVIOUR_LIMIT} refusals, or at once
for anything the channel itself refuses (garbage, a message over the
channel's limits), the channel is closed and the launcher is told (``lost``),
so it relaunches that instance.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from okws_twisted.dispatcher.accept import HeadConnection, RoutedAtAccept
from okws_twisted.dispatcher.records import CLIENT, RELAY, ConnectionRecord, HandbackRefused, socket_identity
from okws_twisted.wire import handoff, limits
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel
from okws_twisted.wire.counts import counts_by_host

if TYPE_CHECKING:
    from okws_twisted.dispatcher.dispatcher import Dispatcher
    from okws_twisted.dispatcher.relay import RelayedConnection

#: The addresses a C{conns} message carries (bounded text, so a full batch's metadata fits a datagram).
_TCP = (IPv4Address, IPv6Address)

#: Refused messages after which an instance's channel is closed (and the instance relaunched).
MISBEHAVIOUR_LIMIT = 100


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class InstanceLink:
    """The dispatcher's handoff channel to one service instance."""

    log = Logger()

    def __init__(self, dispatcher: "Dispatcher", service: str, index: int, pid: int, sock: socket.socket):
        self.dispatcher = dispatcher
        self.service = service
        self.index = index
        self.pid = pid
        self.in_flight = 0
        self.connections = 0
        self.log_buffered = 0
        self.log_dropped = 0
        #: The most connections the instance takes (its own report), L{None} until it says.
        self.conn_cap: int | None = None
        self.retiring = False
        self.misbehaviour = 0
        self.refusing = False
        self.pending: dict[int, HeadConnection | RoutedAtAccept] = {}
        #: Connections handed to this instance at the current wakeup, not sent yet (L{send_held}):
        #: (id, peer, host, unread bytes, fd).
        self._held: list[tuple[int, IAddress, IAddress, bytes, int]] = []
        self._held_bytes = 0
        #: The client connections relayed to this instance now (C{isolation = request}).
        self.visits: set["RelayedConnection"] = set()
        self.channel = MessageChannel(
            dispatcher.reactor, sock, self._received, self._lost, name=f"handoff:{service}.{index}",
            limits=limits.handoff(dispatcher.config.max_head),
        )
        #: The most unread bytes one C{conns} message carries: as much as one C{conn} message, by
        #: the limits the channel started with (a reload raises the instance's limit after ours).
        self._batch_payload = limits.handoff_payload(dispatcher.config.max_head)

    @property
    def name(self) -> str:
        return f"{self.service}.{self.index}"

    @property
    def active(self) -> int:
        """Connections this instance has (sent, held): what its cap counts."""
        return self.dispatcher.ledger.count(self)

    def hand(self, conn_id: int, conn: HeadConnection | RoutedAtAccept) -> None:
        """Send C{conn} to the instance under C{conn_id}, and record what it is.

        Relayed (C{conn.pair}): the instance gets its end of the pair and only the first request.
        """
        client, peer, host, tls, cert = conn.handoff_facts()
        if conn.pair is not None:
            assert conn.relay is not None
            sock, payload, kind = conn.pair[1], conn.relay.payload, RELAY
        else:
            sock, payload, kind = client, conn.data, CLIENT
        fd = sock.fileno()
        self.pending[conn_id] = conn
        # The cookie is read now: the dispatcher closes its copy at the ack.
        record = ConnectionRecord(conn_id, socket_identity(sock), peer, host, tls, self, cert, kind)
        self.dispatcher.ledger.handed(record)
        held = self.dispatcher.held_handoffs
        if held.depth and kind == CLIENT and record.tls is None and record.peer.__class__ in _TCP and record.host.__class__ in _TCP:
            # Accepted at the same wakeup as others: they leave together (L{send_held}).
            if len(self._held) >= handoff.MAX_BATCH or self._held_bytes + len(payload) > self._batch_payload:
                self.send_held()
            if self not in held.links:
                held.links.append(self)
            self._held.append((conn_id, record.peer, record.host, payload, fd))
            self._held_bytes += len(payload)
            return
        meta = handoff.connection_meta(handoff.CONN, conn_id, record.peer, record.host, record.tls, kind == RELAY)
        self.channel.send(meta, payload, [fd])

    def send_held(self) -> None:
        """Send the connections held since the wakeup began: one C{conn} message, or one C{conns}
        message for several (the instance takes them at one wakeup and acknowledges them in one
        C{ack}).  A failure answers each of them C{500}, as L{Dispatcher.hand} does for one."""
        held, self._held, self._held_bytes = self._held, [], 0
        if not held or not self.channel.connected:
            # Lost meanwhile: L{Dispatcher.link_lost} gave what this link held to another instance.
            return
        try:
            if len(held) == 1:
                conn_id, peer, host, payload, fd = held[0]
                self.channel.send(handoff.connection_meta(handoff.CONN, conn_id, peer, host), payload, [fd])
            else:
                entries = [handoff.batch_entry(conn_id, peer, host, len(data)) for conn_id, peer, host, data, _fd in held]
                self.channel.send(
                    handoff.batch_meta(entries), b"".join([data for *_, data, _fd in held]), [fd for *_, fd in held]
                )
        except Exception:
            for conn_id, *_ in held:
                conn = self.pending.get(conn_id)
                if conn is not None:
                    self.dispatcher.handoff_failed(self, conn_id, conn, counted=True)

    def forget(self, conn_id: int) -> None:
        """The handoff of C{conn_id} failed: it is not the instance's."""
        self.pending.pop(conn_id, None)
        self.dispatcher.ledger.drop(self, conn_id)

    def misbehaved(self, why: str) -> None:
        """The instance sent something it may not: log, count, and past the limit, cut it off."""
        self.misbehaviour += 1
        self.dispatcher.pools[self.service].misbehaviour += 1
        self.log.warn("instance {link} (pid {pid}) misbehaved: {why}", link=self.name, pid=self.pid, why=why)
        if self.misbehaviour >= MISBEHAVIOUR_LIMIT and self.channel.connected:
            self.refusing = True
            self.channel.refuse(f"{self.misbehaviour} refused messages")

    def _received(self, batch: list[Message]) -> None:
        ledger = self.dispatcher.ledger
        pool = self.dispatcher.pools[self.service]
        backs: list[tuple[int, int, bytes]] = []
        freed = False
        for i, msg in enumerate(batch):
            try:
                handoff.check_shape(msg)
                if msg.kind == handoff.ACK:
                    held, refused, closed = (handoff.parse_ids(msg, key) for key in ("ids", "refused", "closed"))
                    for conn_id in held:
                        conn = self.pending.pop(conn_id, None)
                        if conn is not None:
                            ledger.acknowledged(self, conn_id)
                            conn.release(self, conn_id)
                    for conn_id in refused:
                        conn = self.pending.pop(conn_id, None)
                        if conn is not None:
                            # Still ours, never touched: answer it here.
                            ledger.drop(self, conn_id)
                            freed = True
                            conn.answer(503, "The service is busy; try again shortly.", retry_after=self.dispatcher.config.retry_after)
                    freed = ledger.ended(self, closed) > 0 or freed
                elif msg.kind == handoff.BACK:
                    backs.append(handoff.parse_back(msg))
                elif msg.kind == handoff.STATS:
                    self.in_flight = _count(msg.meta.get("in_flight"))
                    self.connections = _count(msg.meta.get("connections"))
                    self.log_buffered = _count(msg.meta.get("log_buffered"))
                    self.log_dropped = _count(msg.meta.get("log_dropped"))
                    cap = msg.meta.get("conn_cap")
                    if cap is not None:
                        self.conn_cap = _count(cap)
                    patterns = self.dispatcher.host_patterns(self.service)
                    self.dispatcher.totals(self.service).report(self.pid, counts_by_host(msg.meta.get("counts"), patterns))
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                msg.close_fds()
                self.misbehaved(str(e))
            if not self.channel.connected:
                # Cut off (too many refusals): the rest of the batch is not looked at.
                for later in batch[i + 1 :]:
                    later.close_fds()
                for _conn_id, fd, _data in backs:
                    os.close(fd)
                return
        # An ack may be the last thing a stopping dispatcher waits for.
        self.dispatcher._maybe_stopped()
        if backs:
            freed = self._take_back(backs) or freed
        if freed and pool.queue:
            pool.flush()

    def _take_back(self, backs: list[tuple[int, int, bytes]]) -> bool:
        """Check each handback against the records; route the genuine ones, refuse the rest."""
        ledger = self.dispatcher.ledger
        taken: list[tuple[ConnectionRecord, int, bytes]] = []
        refused: list[int] = []
        for conn_id, fd, data in backs:
            if not self.channel.connected:
                os.close(fd)  # cut off by an earlier refusal: the rest is not looked at
                continue
            try:
                identity = socket_identity(fd)
            except OSError:
                identity = None
            try:
                taken.append((ledger.take_back(self, conn_id, identity), fd, data))
            except HandbackRefused as e:
                os.close(fd)
                refused.append(conn_id)
                self.misbehaved(f"refused a handback: {e}")
        # Acknowledge before routing any of them, as services do for ``conn``:
        # a handback the service never saw acknowledged was never touched here.
        if self.channel.connected:
            self.channel.send({"k": handoff.BACKACK, "ids": [record.id for record, _fd, _data in taken], "refused": refused})
        for record, fd, data in taken:
            try:
                # The facts are the record's: what the service said is not looked at.
                self.dispatcher.adopt(fd, record.peer, record.host, data, record.tls, record.cert)
            except Exception:
                # One connection's failure must not close this instance's channel.
                self.log.failure("taking back connection {id} from {link} failed", id=record.id, link=self.name)
        return bool(taken)

    def _lost(self, reason: Failure) -> None:
        # What it held unsent is in L{pending}: link_lost gives it to another instance.
        self._held, self._held_bytes = [], 0
        self.dispatcher.link_lost(self, reason)


class HeldHandoffs:
    """While inside C{with}, connections handed to instances wait; at its end each instance gets
    its own as one message (L{InstanceLink.send_held}).

    The dispatcher's acceptor accepts inside it: a wakeup that accepts several connections for
    one instance sends one message with their fds (one C{sendmsg}, one C{recvmsg} on the other
    side) instead of one each.
    """

    __slots__ = ("depth", "links")

    def __init__(self) -> None:
        self.depth = 0
        #: The links holding connections, each once.
        self.links: list[InstanceLink] = []

    def __call__(self) -> "HeldHandoffs":
        return self

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth:
            return
        links, self.links = self.links, []
        for link in links:
            link.send_held()


class ServicePool:
    """The ready instances of one service and the connections waiting for one."""

    def __init__(
        self, dispatcher: "Dispatcher", name: str, max_body: int, max_connections: int, lazy: bool = False,
        isolation: str = "connection",
    ):
        self.dispatcher = dispatcher
        self.name = name
        self.lazy = lazy
        #: C{connection}: hand the client's socket over; C{request}: relay (L{okws_twisted.dispatcher.relay}).
        self.isolation = isolation
        self.wanted = False
        self.max_body = max_body
        self.max_connections = max_connections
        self.links: dict[int, InstanceLink] = {}  # by pid: a retiring and a new process may share an index
        self.failed = False
        self.handed_off = 0
        #: Messages refused from this service's instances (okws_misbehaviour_total).
        self.misbehaviour = 0
        self.queue: deque[HeadConnection] = deque()
        self._turn = itertools.count()

    def pick(self) -> InstanceLink | None:
        """The least busy ready instance below its connection cap, rotating among equals.

        The cap is the service's C{max_connections}, or less if the instance
        said it takes fewer (its descriptor limit).
        """
        if not self.links:
            return None
        links = list(self.links.values())
        start = next(self._turn) % len(links)
        best: InstanceLink | None = None
        for i in range(len(links)):
            link = links[(start + i) % len(links)]
            cap = self.max_connections if link.conn_cap is None else min(self.max_connections, link.conn_cap)
            if link.retiring or link.active >= cap:
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
