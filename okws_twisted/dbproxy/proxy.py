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
      one over C{max_call_bytes}, a kind a service may not send) or leaves its
      replies unread (L{UNREAD_TIMEOUT} without reading any, or more than
      L{unread_bytes} waiting), and only that channel.  While a peer is
      behind, its replies wait here and leave together, in full datagrams.

Everything is checked before it is buffered: the channel refuses a message
over its limit when the first datagram declares it.

Threads: the pool's threads (L{okws_twisted.dbproxy.workers}) read the
channels themselves, one thread per channel at a time (L{_Link.read_ready}:
the same limits, checked before buffering, as L{MessageChannel}'s reader; one
message per wake-up), check and queue the calls, take them, run them and send
each reply when they can (L{_Link.send_now}: one datagram, under the link's
lock, only while nothing waits in the channel's queue).  A lone call is read,
run and answered by one thread: the reactor thread does not wake for it at all.  The reactor thread
sends the grants, the replies that are too large or meet a full socket,
answers the deadlines (one timer for all calls, armed once while calls keep
coming), logs, and closes channels.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IWriteDescriptor
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
# The channel's own reader parts (its private names, pinned by tests/dbproxy/test_proxy.py
# ChannelPartsTests): the pool's threads read a db channel as MessageChannel.doRead does, with the
# same datagram size, assembler and limits.
from okws_twisted.wire.channel import (
    _RECV_SIZE,
    CHUNK,
    ChannelError,
    ChannelLimits,
    Message,
    MessageChannel,
    _Assembler,
    encode,
)
from okws_twisted.wire.dbchannel import FAILED, OK, REFUSED, UNAVAILABLE, Grant

#: A peer that reads none of its replies for this many seconds while some wait is given up on (its
#: channel closed).  A service's reactor reads at every turn: only a stuck or hostile one waits so long.
UNREAD_TIMEOUT = 10.0
#: Bytes of replies the proxy keeps for a peer that does not read them (at least two of its largest
#: replies); more closes its channel (L{unread_bytes}).
MAX_UNREAD = 64 * 1024 * 1024
#: Refusals logged one by one per channel in each L{REFUSAL_WINDOW}; the rest are counted.
REFUSALS_LOGGED = 20
REFUSAL_WINDOW = 10.0
#: A stopping proxy serves at least this long: calls sent just before the services moved on.
STOP_GRACE = 0.2
#: The datagrams of one message a pool thread reads at most at one wake-up (a split message's
#: parts come together; the rest of it waits for the next).
MAX_READ = 256
#: A one-datagram C{replies} message is this header followed by its payload (the channel's wire
#: format: version, metadata length, metadata, payload).
_REPLIES_HEAD = encode({"k": dbchannel.REPLIES})[0]
#: What a pool thread asks C{recv} for: one byte more than the longest valid datagram.
_DATAGRAM_OVER = _RECV_SIZE + 1


def unread_bytes(max_result_bytes: int) -> int:
    """The bytes of replies a channel may hold for a peer that is behind, for a database's
    C{max_result_bytes}: L{MAX_UNREAD}, or room for two of its largest replies."""
    return max(MAX_UNREAD, 2 * dbchannel.service_limit(max_result_bytes))


@implementer(IWriteDescriptor)
class _Drain:
    """The reactor's watch on a db channel's socket while its peer is behind: writable means the
    peer read something (progress), and once the channel's queue is empty, the replies held for
    it leave (L{_Link._drained})."""

    def __init__(self, link: "_Link", fd: int) -> None:
        self.link = link
        self.fd = fd
        self.watching = False

    def fileno(self) -> int:
        return self.fd

    def doWrite(self) -> None:
        self.link._drained()

    def connectionLost(self, reason: Failure) -> None:
        self.watching = False

    def logPrefix(self) -> str:
        return f"db:{self.link.name}:drain"


@dataclass(eq=False, slots=True)
class _Pending:
    """One accepted call, from its arrival to its reply."""

    link: "_Link"
    call_id: int
    query: NamedQuery
    params: Any
    key: int
    deadline: float
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
        limits = ChannelLimits(max_payload=dbchannel.proxy_limit(config.max_call_bytes),
                               max_queued=unread_bytes(config.max_result_bytes))
        self.channel = MessageChannel(proxy.reactor, sock, self._received, self._lost, name=f"db:{name}", limits=limits)
        # The channel sends (and queues for a peer that does not read); the pool's threads read
        # it (L{read_ready}), through their own descriptor, with the same limits.
        proxy.reactor.removeReader(self.channel)
        self._limits = limits
        self._assembler = _Assembler(limits)
        self._reader: socket.socket | None = sock.dup()
        self._reader.setblocking(False)
        self._reader_fd = self._reader.fileno()
        #: Guards L{_reading} and L{_reader_dead}: the reader is closed by whoever uses it last.
        self._reader_guard = threading.Lock()
        self._reading = False
        self._reader_dead = False
        #: Every send on this channel holds it: the reactor thread's (through the channel) and the
        #: pool threads' (L{send_now}, on L{_direct}).  Reentrant: a failing send closes the channel,
        #: and L{_lost} takes it again.
        self.lock = threading.RLock()
        #: The pool threads' own descriptor of the channel's socket (non-blocking, as the channel's):
        #: closed under L{lock} when the channel is lost, so a thread never writes to a closed (or
        #: reused) descriptor.
        self._direct: socket.socket | None = sock.dup()
        #: Watches the socket for room while the peer is behind (L{_behind}).
        self._drain = _Drain(self, self._direct.fileno())
        #: When the peer last made room for its replies (while behind), by the reactor's clock.
        self._progress = 0.0
        self._give_up: IDelayedCall | None = None

    @property
    def connected(self) -> bool:
        return self.channel.connected

    @property
    def pending(self) -> bool:
        """Replies wait to be sent."""
        return bool(self._out)

    def send_grants(self, grants: Mapping[str, NamedQuery]) -> None:
        table = {name: Grant(q.suffix, q.params) for name, q in grants.items()}
        with self.lock:
            self.channel.send(*dbchannel.grants(table))
        if self.channel.backlog:
            self._behind()

    def start_reading(self) -> None:
        self.proxy.pool.watch(self._reader_fd, self.read_ready)

    def read_ready(self) -> None:
        """In a pool thread (one at a time per channel): read what the service sent and hand the
        calls to the proxy.

        What L{MessageChannel} checks, checked the same way and before anything is kept (the
        same assembler and limits): a datagram too long, a payload over C{max_call_bytes}
        (declared by a split message's first datagram), anything malformed closes this channel.
        """
        with self._reader_guard:
            sock = self._reader
            if sock is None or self._reader_dead:
                return
            self._reading = True
        try:
            self._read(sock)
        finally:
            with self._reader_guard:
                self._reading = False
                if self._reader_dead:
                    self._close_reader()
            if self.proxy.stopping:
                # It was busy while this thread read: now the calls read are queued (or refused).
                self.proxy.reactor.callFromThread(self.proxy._maybe_stopped)

    def quiet(self) -> bool:
        """No pool thread reads this channel, nor will: none is reading, and nothing waits unread
        in the socket (a thread may be on its way to it), or the channel is read no more."""
        with self._reader_guard:
            if self._reading:
                return False
            sock = self._reader
            if sock is None or self._reader_dead:
                return True
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                return True  # nothing waits (EAGAIN), or the socket is gone
            return False

    def _read(self, sock: socket.socket) -> None:
        """One message (all its datagrams, if split), then the channel is armed again: a lone call
        costs one C{recv}, and a message that follows wakes a thread of its own.

        A plain C{recv}: no fd may ride on a C{calls} message, and the kernel discards (closes) any
        a receiver gives no room for, so none ever reaches this process.  One byte more than the
        longest valid datagram tells a longer one.
        """
        problem: str | None = None
        gone = False
        msg: Message | None = None
        add = self._assembler.add
        for _ in range(MAX_READ):
            try:
                data = sock.recv(_DATAGRAM_OVER)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                gone = True
                break
            if not data:
                gone = True
                break
            if len(data) == _DATAGRAM_OVER:
                problem = "a datagram longer than any valid message"
                break
            try:
                msg = add(data, ())
            except ChannelError as e:
                problem = str(e)
                break
            if msg is not None:
                break
        if msg is not None and not self.proxy.received(self, msg):
            gone = True
        if problem is not None or gone:
            self.stop_reading()
            reactor = self.proxy.reactor
            if problem is not None:
                reactor.callFromThread(self.channel.refuse, problem)
            else:
                reactor.callFromThread(self.close)

    def stop_reading(self) -> None:
        """Read no more (any thread): the reader's descriptor closes once no thread uses it."""
        self.proxy.pool.unwatch(self._reader_fd)
        with self._reader_guard:
            self._reader_dead = True
            if not self._reading:
                self._close_reader()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._assembler.discard()

    def reply(self, entries: list[bytes]) -> None:
        """In a pool thread: send reply entries now, as one message, if they fit one datagram,
        else through the reactor thread (L{answer}: as few messages as the limits allow)."""
        if entries and not self.send_now(*entries):
            self.proxy.reactor.callFromThread(self._answer_all, entries)

    def _answer_all(self, entries: list[bytes]) -> None:
        for entry in entries:
            self.answer(entry)

    def send_now(self, *entries: bytes) -> bool:
        """In a pool thread: send reply entries as one message, at once; C{False} if they must go
        the reactor thread's way (L{answer}) instead.

        Only when nothing waits in the channel's queue (a split message's continuations must follow
        it unbroken, and a peer that is behind gets its replies in full datagrams, L{flush}) and the
        message is one datagram, which the kernel delivers whole whichever thread sends it.
        """
        payload = dbchannel.replies(entries)[1]
        if len(payload) > CHUNK:
            return False
        datagram = _REPLIES_HEAD + payload
        with self.lock:
            direct = self._direct
            if direct is None or self.channel.backlog:
                return False
            try:
                direct.send(datagram, socket.MSG_DONTWAIT)
            except OSError:
                return False  # its buffer is full (or it is gone): the reactor thread queues it, or drops it
        return True

    def answer(self, entry: bytes) -> None:
        """Queue one reply entry (in the reactor thread): the proxy flushes after each batch it
        handles (else the next reactor turn does), so everything answered together leaves as one
        message."""
        if not self.connected:
            return
        if self._out and (self._out_size + len(entry) + 1 > self.reply_limit or len(self._out) >= dbchannel.MAX_BATCH):
            self._send_out()  # a full message: it leaves in full datagrams, behind or not
        self._out.append(entry)
        self._out_size += len(entry) + 1
        if self._flush is None:
            self._flush = self.proxy.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Send the replies waiting here, unless the peer is behind: then they wait until it has
        read what the channel holds (L{_drained}), and leave together, in full datagrams (one
        reply per datagram would make a flood's answers thousands of datagrams)."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        if not self._out or not self.connected:
            return
        if self.channel.backlog:
            self._behind()
        else:
            self._send_out()

    def _send_out(self) -> None:
        out, self._out, self._out_size = self._out, [], 0
        with self.lock:
            self.channel.send(*dbchannel.replies(out))
        if not self.connected:
            # Over the channel's byte bound (the peer reads nothing), or the peer is gone.
            self.proxy.log.error("closing the db channel of {instance}: it leaves its replies unread ({bytes} bytes)",
                                 instance=self.name, bytes=self._limits.max_queued, service=self.service)
        elif self.channel.backlog:
            self._behind()

    @property
    def behind(self) -> bool:
        """Replies wait for the peer to read (in the channel's queue, or held here)."""
        return self._drain.watching

    def _behind(self) -> None:
        """The peer has not read everything sent: watch the socket for it to make room (each time
        it does is progress), and give up on it after L{DatabaseProxy.unread_timeout} without any."""
        reactor = self.proxy.reactor
        if not self._drain.watching:
            self._drain.watching = True
            self._progress = reactor.seconds()
            reactor.addWriter(self._drain)
        if self._give_up is None:
            self._give_up = reactor.callLater(self.proxy.unread_timeout, self._judge)

    def _drained(self) -> None:
        """The socket has room (the reactor, through L{_Drain}): the peer read something."""
        self._progress = self.proxy.reactor.seconds()
        if self.channel.backlog and self.connected:
            return  # the channel sends its own queue first
        self._drain.watching = False
        self.proxy.reactor.removeWriter(self._drain)
        if self.connected and self._out:
            self.flush()
        if not self._drain.watching:
            if self._give_up is not None and self._give_up.active():
                self._give_up.cancel()
            self._give_up = None
            if self.proxy.stopping:
                self.proxy._maybe_stopped()

    def _judge(self) -> None:
        self._give_up = None
        if not self.connected or not self.behind:
            return
        now = self.proxy.reactor.seconds()
        timeout = self.proxy.unread_timeout
        if now - self._progress < timeout:
            self._give_up = self.proxy.reactor.callLater(self._progress + timeout - now, self._judge)
            return
        self.proxy.log.error(
            "closing the db channel of {instance}: it read none of its replies for {timeout:g}s "
            "({count} messages queued)",
            instance=self.name, timeout=timeout, count=self.channel.backlog + bool(self._out), service=self.service,
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
        # Never called: the channel is not in the reactor's readers (L{read_ready} reads it).
        for msg in batch:
            msg.close_fds()

    def _lost(self, reason: Failure) -> None:
        self.stop_reading()
        if self._drain.watching:
            self._drain.watching = False
            self.proxy.reactor.removeWriter(self._drain)
        if self._give_up is not None and self._give_up.active():
            self._give_up.cancel()
        self._give_up = None
        with self.lock:
            if self._direct is not None:
                self._direct.close()
                self._direct = None
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self._out = []
        self.proxy.link_lost(self, reason)


@implementer(IChildRole)
class DatabaseProxy:
    """One database's proxy: its links to the services, its queue, its pool."""

    log = Logger()
    #: Seconds a peer may leave its replies unread (L{UNREAD_TIMEOUT}; tests shorten it).
    unread_timeout = UNREAD_TIMEOUT

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
        self.running = engine.Running()
        #: Shared with the pool's threads, which take their next call themselves and answer it: only
        #: under L{pool}.lock, as are L{_deadlines} and L{counts}.
        self.queue: CallQueue[_Pending] = CallQueue(config.pool, config.queue_max)
        self._sql = {name: database.sql(q) for name, q in queries.items()}
        self._param_names = {name: frozenset(q.params) for name, q in queries.items()}
        self.pool = database.open_pool(reactor)
        self.pool.take = self._take
        self.pool.more = self._more
        self.pool.release = self._release
        self.pool.finish = self._finish
        self.pool.completed = self._done
        # The replies of a batch of completions leave together, at once (not a reactor turn later).
        self.pool.after_batch = self._after_batch
        self.pool.start()
        self.links: set[_Link] = set()
        self._keys = itertools.count(1)
        self._deadlines: dict[int, _Pending] = {}
        self._sweep_call: IDelayedCall | None = None
        #: The deadlines' timer is armed, or being armed (under pool.lock: the threads admit calls).
        self._sweep_armed = False
        self._stopped = stopped
        self.stopping = False
        self._finished = False
        self._grace_passed = False
        self.counts = {"calls": 0, OK: 0, REFUSED: 0, UNAVAILABLE: 0, FAILED: 0}
        #: The site the grants come from, and the grants computed from it (replaced whole on a reload:
        #: the pool's threads read it).
        self._grant_state: tuple[SiteConfig, dict[str, dict[str, NamedQuery]]] = (site, {})

    # -- grants

    def grants_for(self, service: str) -> Mapping[str, NamedQuery]:
        """The queries C{service} may run here, from the site's current configuration."""
        site, table = self._grant_state
        grants = table.get(service)
        if grants is None:
            names: tuple[str, ...] = ()
            for s in site.services:
                if s.name == service and s.db == self.config.name:
                    names = s.queries
            grants = {n: self.queries[n] for n in names if n in self.queries and not self.queries[n].script}
            table[service] = grants
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
        link.start_reading()
        self.log.info("{instance} (pid {pid}) connected; it may run {count} queries", instance=link.name,
                      pid=link.pid, count=len(grants), service=service)

    def link_lost(self, link: _Link, reason: Failure) -> None:
        """A channel closed: its queued calls are dropped; its running ones finish (their replies are lost)."""
        self.links.discard(link)
        with self.pool.lock:
            dropped = [w for w in self.queue.queued_items() if w.item.link is link]
            for waiting in dropped:
                self.queue.drop(waiting)
        for waiting in dropped:
            self._cancel_timer(waiting.item)
        self._maybe_stopped()

    # -- calls

    def received(self, link: _Link, msg: Message) -> bool:
        """In the pool thread reading C{link}: queue or answer the calls of one message; C{False} if
        it broke the protocol (its channel is then closed).  The calls answered at once (refused,
        queue full) are answered together, after the message."""
        try:
            calls = dbchannel.parse_calls(msg)
        except ChannelError as e:
            msg.close_fds()
            self.reactor.callFromThread(self.log.error, "bad message from {instance}: {error}; closing its db channel",
                                        instance=link.name, error=e, service=link.service)
            return False
        answers: list[bytes] = []
        try:
            for call in calls:
                self._accept(link, call, answers)
        finally:
            if answers:
                link.reply(answers)
        return True

    def _flush_links(self) -> None:
        """Send every reply waiting on any channel, one message per channel (per limit)."""
        for link in list(self.links):
            if link.pending:
                link.flush()

    def _accept(self, link: _Link, call: dbchannel.Call, answers: list[bytes]) -> bool:
        """Queue C{call} (C{True}), or answer it at once (C{False}).  In the pool thread reading C{link}."""
        if call.id <= link.last_id:
            self._refuse(link, call, f"call id {call.id} is not above the previous one ({link.last_id})", answers)
            return False
        link.last_id = call.id
        query = self.grants_for(link.service).get(call.name)
        if query is None:
            self._refuse(link, call, f"{call.name[:dbchannel.MAX_NAME]!r} is not a query service {link.service} "
                                     f"was granted on [db:{self.config.name}]", answers)
            return False
        try:
            params = self._params(query, call.params)
        except ValueError as e:
            self._refuse(link, call, str(e), answers)
            return False
        key = next(self._keys)
        pending = _Pending(link, call.id, query, params, key, self.reactor.seconds() + self.config.query_timeout)
        counts = self.counts
        with self.pool.lock:
            counts["calls"] += 1
            # Admitted and watched at once: a pool thread may take the call (and even finish it)
            # as soon as the lock is released, and a deadline must find it.
            waiting = pending.waiting = self.queue.admit(link.service, pending)
            if waiting is not None:
                self._deadlines[key] = pending
                arm = not self._sweep_armed
                self._sweep_armed = True
            else:
                counts[UNAVAILABLE] += 1
        if waiting is not None:
            if arm:
                # The deadlines' one timer: only the first call after an idle query_timeout arms it.
                self.reactor.callFromThread(self._arm_sweep)
            return True
        answers.append(dbchannel.reply_error(call.id, UNAVAILABLE, f"queue full: service {link.service} already "
                                             f"has queue_max ({self.config.queue_max}) calls waiting or running"))
        now = self.reactor.seconds()
        log_it, suppressed = link.note_refusal(now)
        if log_it:
            self.reactor.callFromThread(
                self.log.warn, "queue full for {service}: {query} from {instance} not run{more}",
                service=link.service, query=call.name, instance=link.name,
                more=f" ({suppressed} more refusals not logged)" if suppressed else "",
            )
        return False

    def _params(self, query: NamedQuery, raw: object) -> Any:
        """The call's parameters, decoded, if they are exactly the query's; raise C{ValueError}."""
        if query.many:
            if type(raw) is not list:
                raise ValueError(f"{query.name} (*!) takes a list of parameter sets")
            return [self._param_set(query, item) for item in raw]
        return self._param_set(query, raw)

    def _param_set(self, query: NamedQuery, value: object) -> dict[str, Any]:
        if type(value) is not dict:
            raise ValueError(f"{query.name}: parameters are not an object")
        if value.keys() != self._param_names[query.name]:
            raise ValueError(f"{query.name} takes exactly ({', '.join(query.params)}), "
                             f"not ({', '.join(sorted(str(k)[:50] for k in value)[:20])})")
        return dbvalues.decode_params(value)

    def _refuse(self, link: _Link, call: dbchannel.Call, reason: str, answers: list[bytes]) -> None:
        with self.pool.lock:
            self.counts["calls"] += 1
            self.counts[REFUSED] += 1
        answers.append(dbchannel.reply_error(call.id, REFUSED, reason))
        log_it, suppressed = link.note_refusal(self.reactor.seconds())
        if log_it:
            self.reactor.callFromThread(
                self.log.warn,
                "refused {query} to {instance}: {reason}{more}",
                query=call.name[: dbchannel.MAX_NAME], instance=link.name, service=link.service, reason=reason,
                more=f" ({suppressed} more refusals not logged)" if suppressed else "",
            )

    def _count(self, status: str) -> None:
        with self.pool.lock:
            self.counts[status] += 1

    def _answer_error(self, link: _Link, call_id: int, status: str, message: str) -> None:
        """In the reactor thread."""
        self._count(status)
        link.answer(dbchannel.reply_error(call_id, status, message))

    # -- the pool's threads (under pool.lock) and its completions

    def _take(self) -> Any:
        """The next call to run, services in turn, if a connection is free (in a pool thread)."""
        waiting = self.queue.take()
        if waiting is None:
            return None
        pending = waiting.item
        # Handed while the lock is held: a cancel at its deadline now reaches it, running or not.
        self.running.handed(pending.key)
        query = pending.query
        return pending, engine.execute, (
            query, self._sql[query.name], pending.params, self.running, pending.key, self.config.max_result_bytes,
            self.config.query_timeout, max(0.0, pending.deadline - self.reactor.seconds()),
        )

    def _more(self) -> bool:
        """Another call waits for a free connection (in a pool thread, under pool.lock)."""
        return self.queue.ready

    def _release(self, pending: _Pending) -> None:
        """A call's statement is over: its connection and its place in its service's quota are free,
        and it needs no stopping at its deadline."""
        assert pending.waiting is not None
        self.queue.finished(pending.waiting)
        self._deadlines.pop(pending.key, None)

    def _finish(self, pending: _Pending, outcome: object) -> bool:
        """In the pool thread that ran the call, right after L{_release}: send its reply from there
        (C{True}), sparing the reactor thread a wake-up and the caller a thread switch."""
        if isinstance(outcome, Failure):
            return False  # logged by the reactor thread (L{_done})
        status, value = outcome  # type: ignore[misc]
        if status == OK:
            entry = dbchannel.reply_ok(pending.call_id, value)
        else:
            entry = dbchannel.reply_error(pending.call_id, status, str(value))
        if not pending.link.send_now(entry):  # one datagram: the usual case
            return False
        self._count(status)
        return True

    def _done(self, pending: _Pending, outcome: object) -> None:
        self._cancel_timer(pending)
        if isinstance(outcome, Failure):
            self.log.failure("running {query} for {instance} failed", failure=outcome, query=pending.query.name,
                             instance=pending.link.name)
            status, value = FAILED, "an internal error in the database proxy"
        else:
            status, value = outcome  # type: ignore[misc]
        if status == OK:
            self._count(OK)
            pending.link.answer(dbchannel.reply_ok(pending.call_id, value))  # type: ignore[arg-type]
        else:
            self._answer_error(pending.link, pending.call_id, status, str(value))

    def _after_batch(self) -> None:
        self._flush_links()
        self._maybe_stopped()

    def _arm_sweep(self) -> None:
        """Stop each call at its deadline.  One timer for all: C{_deadlines} is in arrival order,
        and every call gets the same C{query_timeout}, so the oldest is due first.  The timer stays
        armed while calls keep coming (it moves to the next deadline when it fires): only the first
        call after an idle C{query_timeout} wakes the reactor thread (L{_accept})."""
        if self._sweep_call is None and not self._finished:
            self._sweep_call = self.reactor.callLater(0, self._sweep)

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.reactor.seconds()
        while True:
            with self.pool.lock:
                if not self._deadlines:
                    self._sweep_armed = False
                    return
                pending = next(iter(self._deadlines.values()))
            if pending.deadline > now:
                self._sweep_call = self.reactor.callLater(pending.deadline - now, self._sweep)
                return
            self._expire(pending)

    def _expire(self, pending: _Pending) -> None:
        """C{query_timeout} after it arrived: a queued call is answered and never runs; a running
        one is stopped in the database (its reply says so)."""
        self._cancel_timer(pending)
        waiting = pending.waiting
        if waiting is None:
            return
        with self.pool.lock:
            dropped = self.queue.drop(waiting)
            running = waiting.state == "running"
        if dropped:
            self._answer_error(pending.link, pending.call_id, UNAVAILABLE,
                               f"no connection was free within query_timeout ({self.config.query_timeout:g}s); it did not run")
            self._maybe_stopped()
        elif running:
            self.log.warn("{query} for {instance} ran past query_timeout ({timeout:g}s): cancelling it in the database",
                          query=pending.query.name, instance=pending.link.name, timeout=self.config.query_timeout)
            self.database.cancel(self.reactor, self.running, pending.key)

    def _cancel_timer(self, pending: _Pending) -> None:
        """C{pending} needs no stopping any more (answered, dropped, or being stopped).  (The timer,
        left armed, finds it gone.)"""
        with self.pool.lock:
            self._deadlines.pop(pending.key, None)

    # -- IChildRole

    def stats(self) -> dict[str, Any]:
        """For okws-ctl status: its channels (CONNS), calls queued or running (IN-FLIGHT), calls answered
        with a result (SERVED), every count by outcome, and the most calls one service has held at once
        (C{peak_held}: C{queue_max} at most)."""
        with self.pool.lock:
            running, queued, peak = self.queue.running, self.queue.queued, self.queue.peak_held
        return {
            "connections": len(self.links),
            "in_flight": running + queued,
            "served": self.counts[OK],
            "running": running,
            "queued": queued,
            "peak_held": peak,
            **self.counts,
        }

    def update_config(self, site: SiteConfig) -> None:
        """Reloaded: grants follow the services' new C{queries} (a changed database relaunches this proxy)."""
        self.site = site
        self._grant_state = (site, {})

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
        # The calls answered in the pool's threads from now on tell the reactor thread, which stops when idle.
        self.pool.watch_finished = True
        self.reactor.callLater(STOP_GRACE, self._grace_over)

    def _grace_over(self) -> None:
        self._grace_passed = True
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        """Exit once idle: nothing queued, running or being answered, no thread reading a channel
        or about to (a datagram unread in one), no replies waiting for their peer to read them
        (it reads, or is given up on within L{unread_timeout})."""
        if not self._grace_passed or self._finished:
            return
        self._flush_links()
        if self._busy():
            return
        # No thread starts reading from now on; one already past its wake-up may still be reading
        # (it calls back when it is done).
        for link in self.links:
            link.stop_reading()
        if self._busy():
            return
        self._finished = True
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        for link in list(self.links):
            link.close()
        self.pool.stop()
        stopped, self._stopped = self._stopped, lambda: None
        stopped()

    def _busy(self) -> bool:
        with self.pool.lock:
            if self.queue.running or self.queue.queued or self.pool.pending:
                return True
        return any(link.behind or not link.quiet() for link in self.links)


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
