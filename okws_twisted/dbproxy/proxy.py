# -*- test-case-name: tests.dbproxy.test_proxy -*-
"""
The database proxy (OKWS's database proxies, C{ezdb}): the only process that reaches a database.

One proxy runs per C{[db:NAME]} section.  It alone holds the database: the
SQLite file (in the only directory its jail shows, owned by its uid) or the
PostgreSQL connection and password.  Each service instance with C{db = NAME}
gets one db channel to it (L{okws_twisted.wire.dbchannel}), wired by the
launcher, which tells the proxy which service is at the other end; nothing a
service sends can change that.  On each channel the proxy:

    - sends first the grants of that service (names, suffixes, parameters;
      never SQL);
    - runs only the named queries that service was granted, with the
      parameters bound by the driver (never pasted into SQL), exactly the
      declared parameter names, each call one transaction;
    - refuses anything else, answering that call alone (C{refused}) and
      logging it with the service, the instance and the query;
    - keeps at most C{queue_max} calls queued or running per service and
      serves the services in turn (L{okws_twisted.dbproxy.scheduler});
    - stops a call in the database at C{query_timeout} after it arrived;
    - closes a channel whose peer breaks the protocol (a malformed message,
      one over C{max_call_bytes}, a kind a service may not send) or stops
      reading its replies, and only that channel.

Everything is checked before it is buffered: the channel refuses a message
over its limit when the first datagram declares it.
"""

from __future__ import annotations

import itertools
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.config import SiteConfig
from okws_twisted.config.databases import DatabaseConfig
from okws_twisted.dbproxy import engine
from okws_twisted.dbproxy.pool import Database, DatabaseOpenError
from okws_twisted.dbproxy.scheduler import CallQueue, Waiting
from okws_twisted.interfaces import IChildRole
from okws_twisted.sqlqueries import NamedQuery, QueriesError, parse
from okws_twisted.wire import dbchannel, dbvalues
from okws_twisted.wire.channel import ChannelError, ChannelLimits, Message, MessageChannel
from okws_twisted.wire.dbchannel import FAILED, OK, REFUSED, UNAVAILABLE, Grant

#: A peer that leaves this many reply datagrams unread is given up on (its channel closed).
MAX_BACKLOG = 512
#: Refusals logged one by one per channel in each L{REFUSAL_WINDOW}; the rest are counted.
REFUSALS_LOGGED = 20
REFUSAL_WINDOW = 10.0
#: A stopping proxy serves at least this long: calls sent just before the services moved on.
STOP_GRACE = 0.2


@dataclass(eq=False)
class _Pending:
    """One accepted call, from its arrival to its reply."""

    link: "_Link"
    call_id: int
    query: NamedQuery
    params: Any
    key: int
    deadline: float
    timer: IDelayedCall | None = None
    waiting: Waiting["_Pending"] | None = None


class _Link:
    """The proxy's db channel to one service instance."""

    def __init__(self, proxy: "DatabaseProxy", name: str, service: str, pid: object, sock: socket.socket) -> None:
        self.proxy = proxy
        self.name = name
        self.service = service
        self.pid = pid
        self.last_id = -1
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush: IDelayedCall | None = None
        self._window_start = -REFUSAL_WINDOW
        self._logged = 0
        self._suppressed = 0
        config = proxy.config
        self.reply_limit = dbchannel.service_limit(config.max_result_bytes)
        self.channel = MessageChannel(
            proxy.reactor, sock, self._received, self._lost, name=f"db:{name}",
            limits=ChannelLimits(max_payload=dbchannel.proxy_limit(config.max_call_bytes)),
        )

    @property
    def connected(self) -> bool:
        return self.channel.connected

    @property
    def pending(self) -> bool:
        """Replies wait to be sent."""
        return bool(self._out)

    def send_grants(self, grants: Mapping[str, NamedQuery]) -> None:
        table = {name: Grant(q.suffix, q.params) for name, q in grants.items()}
        self.channel.send(*dbchannel.grants(table))

    def answer(self, entry: bytes) -> None:
        """Queue one reply entry: the proxy flushes after each batch it handles (else the next reactor
        turn does), so everything answered together leaves as one message."""
        if not self.connected:
            return
        if self._out and (self._out_size + len(entry) + 1 > self.reply_limit or len(self._out) >= dbchannel.MAX_BATCH):
            self.flush()
        self._out.append(entry)
        self._out_size += len(entry) + 1
        if self._flush is None:
            self._flush = self.proxy.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        out, self._out, self._out_size = self._out, [], 0
        if not out or not self.connected:
            return
        self.channel.send(*dbchannel.replies(out))
        if self.channel.backlog > MAX_BACKLOG:
            self.proxy.log.error(
                "closing the db channel of {instance}: it leaves its replies unread ({count} messages queued)",
                instance=self.name, count=self.channel.backlog, service=self.service,
            )
            self.channel.close()

    def close(self) -> None:
        self.channel.close()

    def note_refusal(self, now: float) -> tuple[bool, int]:
        """Whether to log this refusal one by one, and how many were left unlogged before it."""
        if now - self._window_start >= REFUSAL_WINDOW:
            self._window_start, self._logged = now, 0
        if self._logged < REFUSALS_LOGGED:
            self._logged += 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed
        self._suppressed += 1
        return False, 0

    def _received(self, batch: list[Message]) -> None:
        self.proxy.received(self, batch)

    def _lost(self, reason: Failure) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self._out = []
        self.proxy.link_lost(self, reason)


@implementer(IChildRole)
class DatabaseProxy:
    """One database's proxy: its links to the services, its queue, its pool."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        site: SiteConfig,
        config: DatabaseConfig,
        queries: Mapping[str, NamedQuery],
        database: Database,
        stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.site = site
        self.config = config
        self.queries = queries
        self.database = database
        self.pool = database.open_pool(reactor)
        # The replies of a batch of completions leave together, at once (not a reactor turn later).
        self.pool.after_batch = self._flush_links
        self.pool.start()
        self.running = engine.Running()
        self.queue: CallQueue[_Pending] = CallQueue(config.pool, config.queue_max)
        self.links: set[_Link] = set()
        self._keys = itertools.count(1)
        self._stopped = stopped
        self.stopping = False
        self._finished = False
        self._grace_passed = False
        self.counts = {"calls": 0, OK: 0, REFUSED: 0, UNAVAILABLE: 0, FAILED: 0}
        self._grants: dict[str, dict[str, NamedQuery]] = {}

    # -- grants

    def grants_for(self, service: str) -> Mapping[str, NamedQuery]:
        """The queries C{service} may run here, from the site's current configuration."""
        grants = self._grants.get(service)
        if grants is None:
            names: tuple[str, ...] = ()
            for s in self.site.services:
                if s.name == service and s.db == self.config.name:
                    names = s.queries
            grants = {n: self.queries[n] for n in names if n in self.queries and not self.queries[n].script}
            self._grants[service] = grants
        return grants

    # -- links (IChildRole.peer)

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        service = meta.get("service")
        if channel != dbchannel.CHANNEL or meta.get("role") != "service" or not isinstance(service, str):
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()
            return
        link = _Link(self, str(meta.get("name")), service, meta.get("pid"), sock)
        self.links.add(link)
        grants = self.grants_for(service)
        link.send_grants(grants)
        self.log.info("{instance} (pid {pid}) connected; it may run {count} queries", instance=link.name,
                      pid=link.pid, count=len(grants), service=service)

    def link_lost(self, link: _Link, reason: Failure) -> None:
        """A channel closed: its queued calls are dropped; its running ones finish (their replies are lost)."""
        self.links.discard(link)
        for waiting in list(self.queue.queued_items()):
            if waiting.item.link is link:
                self.queue.drop(waiting)
                self._cancel_timer(waiting.item)
        self._maybe_stopped()

    # -- calls

    def received(self, link: _Link, batch: list[Message]) -> None:
        for msg in batch:
            try:
                calls = dbchannel.parse_calls(msg)
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from {instance}: {error}; closing its db channel",
                               instance=link.name, error=e, service=link.service)
                link.close()
                return
            for call in calls:
                self.counts["calls"] += 1
                self._accept(link, call)
        self._pump()
        self._flush_links()

    def _flush_links(self) -> None:
        """Send every reply waiting on any channel, one message per channel (per limit)."""
        for link in list(self.links):
            if link.pending:
                link.flush()

    def _accept(self, link: _Link, call: dbchannel.Call) -> None:
        if call.id <= link.last_id:
            self._refuse(link, call, f"call id {call.id} is not above the previous one ({link.last_id})")
            return
        link.last_id = call.id
        query = self.grants_for(link.service).get(call.name)
        if query is None:
            self._refuse(link, call, f"{call.name[:dbchannel.MAX_NAME]!r} is not a query service {link.service} "
                                     f"was granted on [db:{self.config.name}]")
            return
        try:
            params = self._params(query, call.params)
        except ValueError as e:
            self._refuse(link, call, str(e))
            return
        pending = _Pending(link, call.id, query, params, next(self._keys), self.reactor.seconds() + self.config.query_timeout)
        pending.waiting = self.queue.admit(link.service, pending)
        if pending.waiting is None:
            self._answer_error(link, call.id, UNAVAILABLE, f"queue full: service {link.service} already has "
                               f"queue_max ({self.config.queue_max}) calls waiting or running")
            now = self.reactor.seconds()
            log_it, suppressed = link.note_refusal(now)
            if log_it:
                self.log.warn("queue full for {service}: {query} from {instance} not run{more}",
                              service=link.service, query=call.name, instance=link.name,
                              more=f" ({suppressed} more refusals not logged)" if suppressed else "")
            return
        pending.timer = self.reactor.callLater(self.config.query_timeout, self._expire, pending)

    def _params(self, query: NamedQuery, raw: object) -> Any:
        """The call's parameters, decoded, if they are exactly the query's; raise C{ValueError}."""
        def one(value: object) -> dict[str, Any]:
            if type(value) is not dict:
                raise ValueError(f"{query.name}: parameters are not an object")
            if set(value) != set(query.params):
                raise ValueError(f"{query.name} takes exactly ({', '.join(query.params)}), "
                                 f"not ({', '.join(sorted(str(k)[:50] for k in value)[:20])})")
            return dbvalues.decode_params(value)

        if query.many:
            if type(raw) is not list:
                raise ValueError(f"{query.name} (*!) takes a list of parameter sets")
            return [one(item) for item in raw]
        return one(raw)

    def _refuse(self, link: _Link, call: dbchannel.Call, reason: str) -> None:
        self._answer_error(link, call.id, REFUSED, reason)
        log_it, suppressed = link.note_refusal(self.reactor.seconds())
        if log_it:
            self.log.warn(
                "refused {query} to {instance}: {reason}{more}",
                query=call.name[: dbchannel.MAX_NAME], instance=link.name, service=link.service, reason=reason,
                more=f" ({suppressed} more refusals not logged)" if suppressed else "",
            )

    def _answer_error(self, link: _Link, call_id: int, status: str, message: str) -> None:
        self.counts[status] += 1
        link.answer(dbchannel.reply_error(call_id, status, message))

    def _pump(self) -> None:
        """Hand the pool as many calls as it has free connections, services in turn."""
        while True:
            waiting = self.queue.take()
            if waiting is None:
                return
            pending = waiting.item
            self.running.handed(pending.key)
            self.pool.submit(
                engine.execute, pending.query, self.database.sql(pending.query), pending.params, self.running,
                pending.key, self.config.max_result_bytes, self.config.query_timeout,
                max(0.0, pending.deadline - self.reactor.seconds()),
                done=lambda outcome, pending=pending: self._done(outcome, pending),
            )

    def _done(self, outcome: object, pending: _Pending) -> None:
        self._cancel_timer(pending)
        assert pending.waiting is not None
        self.queue.finished(pending.waiting)
        if isinstance(outcome, Failure):
            self.log.failure("running {query} for {instance} failed", failure=outcome, query=pending.query.name,
                             instance=pending.link.name)
            status, value = FAILED, "an internal error in the database proxy"
        else:
            status, value = outcome  # type: ignore[misc]
        if status == OK:
            self.counts[OK] += 1
            pending.link.answer(dbchannel.reply_ok(pending.call_id, value))  # type: ignore[arg-type]
        else:
            self._answer_error(pending.link, pending.call_id, status, str(value))
        self._pump()
        self._maybe_stopped()

    def _expire(self, pending: _Pending) -> None:
        """C{query_timeout} after it arrived: a queued call is answered and never runs; a running
        one is stopped in the database (its reply says so)."""
        pending.timer = None
        waiting = pending.waiting
        if waiting is not None and self.queue.drop(waiting):
            self._answer_error(pending.link, pending.call_id, UNAVAILABLE,
                               f"no connection was free within query_timeout ({self.config.query_timeout:g}s); it did not run")
            self._maybe_stopped()
        elif waiting is not None and waiting.state == "running":
            self.log.warn("{query} for {instance} ran past query_timeout ({timeout:g}s): cancelling it in the database",
                          query=pending.query.name, instance=pending.link.name, timeout=self.config.query_timeout)
            self.database.cancel(self.reactor, self.running, pending.key)

    @staticmethod
    def _cancel_timer(pending: _Pending) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None

    # -- IChildRole

    def stats(self) -> dict[str, Any]:
        """For okws-ctl status: its channels (CONNS), calls queued or running (IN-FLIGHT), calls answered
        with a result (SERVED), and every count by outcome."""
        return {
            "connections": len(self.links),
            "in_flight": self.queue.running + self.queue.queued,
            "served": self.counts[OK],
            "running": self.queue.running,
            "queued": self.queue.queued,
            **self.counts,
        }

    def update_config(self, site: SiteConfig) -> None:
        """Reloaded: grants follow the services' new C{queries} (a changed database relaunches this proxy)."""
        self.site = site
        self._grants = {}

    def control(self, kind: str, meta: dict[str, Any]) -> None:
        self.log.warn("unexpected control message {kind}", kind=kind)

    def stop(self, drain: float = 0.0, handback: bool = False) -> None:
        """Finish every call queued or running, then exit.

        The services were already given a successor (or are gone); calls they
        sent just before may still be in flight on the old channels, so the
        proxy serves for at least L{STOP_GRACE} seconds, and until it is idle.
        """
        if self.stopping:
            return
        self.stopping = True
        self.reactor.callLater(STOP_GRACE, self._grace_over)

    def _grace_over(self) -> None:
        self._grace_passed = True
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if not self._grace_passed or self.queue.running or self.queue.queued or self._finished:
            return
        self._finished = True
        for link in list(self.links):
            link.flush()
            link.close()
        self.pool.stop()
        stopped, self._stopped = self._stopped, lambda: None
        stopped()


def start_role(
    reactor: Any, site: SiteConfig, meta: dict[str, Any], stopped: Callable[[], None], records: Any = None
) -> DatabaseProxy:
    """The proxy child of C{[db:NAME]} (C{meta["db"]}): open the database, then serve the services."""
    name = str(meta.get("db"))
    config = site.database(name)
    if config is None:
        raise SystemExit(f"okws dbproxy: no [db:{name}] in the configuration")
    # Whatever it creates (the SQLite file, its -wal and -shm) is its own alone.
    os.umask(0o077)
    try:
        queries = parse(config.queries_text, config.queries)
        database = Database(config)
        database.prepare(queries)
    except (QueriesError, DatabaseOpenError) as e:
        raise SystemExit(f"okws dbproxy [db:{name}]: {e}") from None
    proxy = DatabaseProxy(reactor, site, config, queries, database, stopped)
    Logger().info("serving [db:{db}] ({engine}, {count} queries, pool {pool}, queries digest {digest})",
                  db=name, engine=config.engine, count=len(queries), pool=config.pool, digest=config.digest)
    return proxy
