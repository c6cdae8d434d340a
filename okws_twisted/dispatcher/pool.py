# -*- test-case-name: tests.dispatcher.test_dispatcher -*-
"""
The dispatcher's side of the service instances (OKWS's okd): one handoff channel per instance
(L{InstanceLink}) and, per service, the pool that picks the least busy ready instance or
queues the connection for a bounded time (L{ServicePool}).
"""

from __future__ import annotations

import itertools
import socket
from collections import deque
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from okws_twisted.dispatcher.accept import HeadConnection
from okws_twisted.wire import handoff
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel
from okws_twisted.wire.counts import RequestCounts

if TYPE_CHECKING:
    from okws_twisted.dispatcher.dispatcher import Dispatcher


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
