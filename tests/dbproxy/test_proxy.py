"""
Tests for L{okws_twisted.dbproxy.proxy}: a L{DatabaseProxy} in this process, with a real SQLite
file and pool, over real seqpacket socket pairs; the test plays the services, well-behaved or not.
"""

from __future__ import annotations

import os
import select
import socket
import sqlite3
import tempfile
import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.config.databases import DatabaseConfig
from okws_twisted.dbproxy.pool import Database
from okws_twisted.dbproxy.proxy import DatabaseProxy, unread_bytes
from okws_twisted.sqlqueries import parse
from okws_twisted.wire import channel, dbchannel
from okws_twisted.wire.channel import ChannelLimits, Message, MessageChannel
from okws_twisted.wire.dbchannel import Grant
from tests.sites.database import QUERIES, SQLITE_SCHEMA, SQLITE_SLOW


class Peer:
    """The service's end of one db channel, driven by the test."""

    def __init__(self, proxy: DatabaseProxy, service: str, name: str) -> None:
        ours, theirs = channel.socketpair()
        self.messages: list[Message] = []
        self.replies: dict[int, dbchannel.Reply] = {}
        self.closed = defer.Deferred()
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []
        self.channel = MessageChannel(reactor, ours, self._received, lambda reason: self.closed.callback(None),
                                      name=f"test:{name}", limits=ChannelLimits(max_payload=64 << 20))
        self.sock = ours
        proxy.peer("db", {"role": "service", "service": service, "name": name, "pid": 1}, theirs)
        self.ids = iter(range(1, 10**9))

    def _received(self, batch: list[Message]) -> None:
        for msg in batch:
            self.messages.append(msg)
            if msg.kind == dbchannel.REPLIES:
                for reply in dbchannel.parse_replies(msg):
                    self.replies[reply.id] = reply
        for want, d in list(self._waiters):
            if len(self.replies) >= want:
                self._waiters.remove((want, d))
                d.callback(None)

    def grants(self) -> dict[str, Grant]:
        return dbchannel.parse_grants(self.messages[0])

    def send(self, *calls: tuple[str, Any]) -> list[int]:
        """Send C{calls}, 2,000 to a message (under the test's max_call_bytes of 64 KiB)."""
        ids = [next(self.ids) for _ in calls]
        entries = [dbchannel.call_entry(i, name, params) for i, (name, params) in zip(ids, calls)]
        for start in range(0, len(entries), 2000):
            self.channel.send(*dbchannel.calls(entries[start:start + 2000]))
        return ids

    def answered(self, count: int) -> defer.Deferred[None]:
        if len(self.replies) >= count:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, d))
        return d

    async def call(self, name: str, params: Any) -> dbchannel.Reply:
        [call_id] = self.send((name, params))
        await self.answered(len(self.replies) + 1)
        while call_id not in self.replies:
            await self.answered(len(self.replies) + 1)
        return self.replies[call_id]


class ProxyTests(TestCase):
    timeout = 60

    def make(self, pool: int = 2, queue_max: int = 50, query_timeout: float = 5.0) -> DatabaseProxy:
        folder = tempfile.mkdtemp()
        queries_text = QUERIES + SQLITE_SLOW
        self.path = os.path.join(folder, "x.db")
        db = DatabaseConfig(name="main", url="sqlite:///x.db", queries="/q.sql", path=self.path, pool=pool,
                            queue_max=queue_max, query_timeout=query_timeout, max_call_bytes=64 * 1024,
                            queries_text=queries_text, schema_text=SQLITE_SCHEMA)
        services = (
            ServiceConfig(name="a", resource="x:Y", paths=("/a",), db="main", queries=("add_name", "count_names", "slow")),
            ServiceConfig(name="b", resource="x:Y", paths=("/b",), db="main", queries=("count_names", "get_name")),
            ServiceConfig(name="c", resource="x:Y", paths=("/c",)),
            ServiceConfig(name="d", resource="x:Y", paths=("/d",), db="main", queries=("count_names", "all_names")),
        )
        site = SiteConfig(file="site.ini", base_dir=folder, log_dir=folder, templates=folder, services=services,
                          databases=(db,))
        queries = parse(queries_text, "q.sql")
        database = Database(db)
        database.prepare(queries)
        self.stopped = defer.Deferred()
        proxy = DatabaseProxy(reactor, site, db, queries, database, lambda: self.stopped.callback(None))
        self.addCleanup(self.shutdown, proxy)
        return proxy

    async def shutdown(self, proxy: DatabaseProxy) -> None:
        if not self.stopped.called:
            proxy.stop()
            await self.stopped

    def names(self) -> list[str]:
        with sqlite3.connect(self.path) as conn:
            return [row[0] for row in conn.execute("SELECT name FROM names ORDER BY id")]

    async def test_grants_are_per_service(self) -> None:
        proxy = self.make()
        a, b, c = Peer(proxy, "a", "a.0"), Peer(proxy, "b", "b.0"), Peer(proxy, "c", "c.0")
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(a.grants(), {"add_name": Grant("!", ("name",)), "count_names": Grant("$", ()),
                                      "slow": Grant("$", ("n",))})
        self.assertEqual(set(b.grants()), {"count_names", "get_name"})
        self.assertEqual(c.grants(), {}, "a service without db gets nothing (the launcher gives it no channel anyway)")

    async def test_calls_and_refusals(self) -> None:
        proxy = self.make()
        a, b = Peer(proxy, "a", "a.0"), Peer(proxy, "b", "b.0")
        self.assertEqual(await a.call("add_name", {"name": "x"}), dbchannel.Reply(1, "ok", 1))
        self.assertEqual((await b.call("count_names", {})).value, 1)
        for peer, name, params, why in (
            (b, "add_name", {"name": "y"}, "'add_name' is not a query service b was granted on [db:main]"),
            (a, "get_name", {"id": 1}, "'get_name' is not a query service a was granted"),
            (a, "SELECT * FROM names", {}, "is not a query"),
            (a, "add_name", {"name": "y", "extra": 1}, "add_name takes exactly (name), not (extra, name)"),
            (a, "add_name", {}, "add_name takes exactly (name), not ()"),
            (a, "add_name", {"name": {"T": "never"}}, "bad 'T' value"),
            (a, "add_name", {"name": [1, 2]}, "not a database value"),
            (a, "add_name", [{"name": "y"}], "parameters are not an object"),
        ):
            reply = await peer.call(name, params)
            self.assertEqual(reply.status, "refused", (name, params))
            self.assertIn(why, reply.value)
        self.assertEqual(self.names(), ["x"], "nothing refused touched the data")
        # A repeated id is refused too.
        a.channel.send(*dbchannel.calls([dbchannel.call_entry(1, "add_name", {"name": "again"})]))
        self.assertEqual((await a.call("count_names", {})).value, 1)
        self.assertEqual(self.names(), ["x"])
        self.assertEqual(proxy.counts["refused"], 9)

    async def test_malformed_or_huge_closes_only_that_channel(self) -> None:
        proxy = self.make()
        evil, b = Peer(proxy, "a", "a.0"), Peer(proxy, "b", "b.0")
        await evil.call("count_names", {})
        evil.sock.send(b"\x01\x00\x05junk!")
        await evil.closed
        self.assertEqual((await b.call("count_names", {})).status, "ok")
        evil2 = Peer(proxy, "a", "a.1")
        head = b'{"k":"calls","more":104857600}'
        evil2.sock.send(b"\x01\x00" + bytes([len(head)]) + head + b"x" * 1000)
        await evil2.closed
        evil3 = Peer(proxy, "a", "a.2")
        evil3.channel.send(*dbchannel.replies([dbchannel.reply_ok(1, b"1")]))
        await evil3.closed
        self.assertEqual((await b.call("count_names", {})).status, "ok")
        self.assertEqual({link.name for link in proxy.links}, {"b.0"})

    async def test_queue_max_holds_and_others_are_served(self) -> None:
        """10,000 calls at once: never more than queue_max held (queued or running), the rest refused
        at once; B is served meanwhile.  (The pool's thread frees a place as each call ends, so a
        few more than queue_max of the burst may run, one after another.)"""
        proxy = self.make(pool=1, queue_max=50)
        peak = [0]
        admit = proxy.queue.admit

        def observed(service: str, item: Any) -> Any:
            waiting = admit(service, item)
            peak[0] = max(peak[0], proxy.queue.held(service))
            return waiting

        proxy.queue.admit = observed  # type: ignore[method-assign]
        a, b = Peer(proxy, "a", "a.0"), Peer(proxy, "b", "b.0")
        await deferLater(reactor, 0.05, lambda: None)
        a.send(*[("count_names", {})] * 10_000)
        b_reply = await b.call("count_names", {})
        self.assertEqual(b_reply.status, "ok")
        await a.answered(10_000)
        statuses: dict[str, int] = {}
        for reply in a.replies.values():
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
        self.assertEqual(peak[0], 50)
        self.assertGreaterEqual(statuses["ok"], 50)
        self.assertGreater(statuses["unavailable"], 9_000)
        self.assertEqual(statuses["ok"] + statuses["unavailable"], 10_000)
        self.assertIn("queue full: service a already has queue_max (50)",
                      next(r.value for r in a.replies.values() if r.status == "unavailable"))

    async def test_query_timeout(self) -> None:
        """Past query_timeout a running call is cancelled in SQLite; one still queued never runs."""
        proxy = self.make(pool=1, query_timeout=0.5)
        a = Peer(proxy, "a", "a.0")
        [slow, queued] = a.send(("slow", {"n": 10**12}), ("add_name", {"name": "late"}))
        await a.answered(2)
        self.assertEqual(a.replies[slow].status, "unavailable")
        self.assertIn("cancelled in the database after query_timeout (0.5s)", a.replies[slow].value)
        self.assertEqual(a.replies[queued].status, "unavailable")
        self.assertIn("it did not run", a.replies[queued].value)
        self.assertEqual(self.names(), [])
        self.assertEqual((await a.call("count_names", {})).value, 0, "the connection is free again")

    async def test_stop_finishes_calls_in_flight(self) -> None:
        proxy = self.make(pool=1)
        a = Peer(proxy, "a", "a.0")
        ids = a.send(*[("add_name", {"name": f"n{i}"}) for i in range(20)])
        await deferLater(reactor, 0, lambda: None)
        proxy.stop()
        await self.stopped
        self.assertEqual(len(self.names()), 20)
        self.assertEqual({a.replies[i].status for i in ids}, {"ok"})

    async def test_replies_from_threads_and_reactor_never_interleave(self) -> None:
        """The pool's threads send small replies themselves while the reactor thread sends large ones,
        split over several datagrams, some queued behind a full socket: every message arrives whole
        (the peer's channel would close on a stray datagram between a message's parts) and every
        call is answered once."""
        proxy = self.make(pool=4, queue_max=100_000)
        with sqlite3.connect(self.path) as conn:
            conn.executemany("INSERT INTO names (name) VALUES (?)", [(c * 20_000,) for c in "wxyz"])  # all_names: ~80 KB
        d = Peer(proxy, "d", "d.0")
        await d.answered(0)
        await deferLater(reactor, 0.05, lambda: None)
        [link] = proxy.links
        # What the pool's threads sent themselves, counted as the real method returns it (how many
        # depends on the machine's load: the reactor thread takes over while anything is queued).
        sent_by_threads = []
        send_now = link.send_now

        def counted_send_now(entry: bytes) -> bool:
            sent = send_now(entry)
            if sent:
                sent_by_threads.append(entry)
            return sent

        link.send_now = counted_send_now  # type: ignore[method-assign]
        calls = [("all_names", {}) if i % 25 == 0 else ("count_names", {}) for i in range(4000)]
        reactor.removeReader(d.channel)  # not reading for a while: the large replies queue up in the proxy
        ids = d.send(*calls)
        for _ in range(200):
            if link.channel.backlog:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(link.channel.backlog, "the proxy never had to queue a reply")
        reactor.addReader(d.channel)
        await defer.DeferredList([d.answered(len(ids)), d.closed], fireOnOneCallback=True)
        self.assertTrue(d.channel.connected, "a message arrived broken (a datagram inside another message)")
        self.assertEqual(sorted(d.replies), ids, "every call answered once")
        for call_id, (name, _) in zip(ids, calls):
            reply = d.replies[call_id]
            self.assertEqual(reply.status, "ok", reply)
            if name == "count_names":
                self.assertEqual(reply.value, 4)
            else:
                self.assertEqual(len(reply.value["r"]), 4)
        replies = [m for m in d.messages if m.kind == dbchannel.REPLIES]
        self.assertTrue(any(len(m.payload) > channel.CHUNK for m in replies), "no reply was split")
        self.assertTrue(sent_by_threads, "the pool's threads sent no replies themselves")
        self.assertEqual(proxy.counts["ok"], len(ids))

    async def test_peer_not_reading_is_given_up(self) -> None:
        proxy = self.make(pool=2, queue_max=100_000)
        a = Peer(proxy, "a", "a.0")
        reactor.removeReader(a.channel)  # a service that never reads its replies
        a.send(*[("count_names", {})] * 200_000)
        for _ in range(600):
            if not proxy.links:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(proxy.links, set(), "the proxy gave up on a peer that leaves its replies unread")
        b = Peer(proxy, "b", "b.0")
        self.assertEqual((await b.call("count_names", {})).status, "ok")

    async def wait_until(self, condition: Any, seconds: float, what: str) -> None:
        """Poll C{condition} every 10 ms (the reactor keeps running); fail after C{seconds}."""
        for _ in range(int(seconds * 100)):
            if condition():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"not within {seconds}s: {what}")

    def big_rows(self) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.executemany("INSERT INTO names (name) VALUES (?)", [(c * 20_000,) for c in "wxyz"])  # all_names: ~80 KB

    async def test_backlogged_replies_leave_in_full_datagrams(self) -> None:
        """While a peer is behind, the replies that keep coming wait in the proxy and leave together
        when it has read the rest, in as few datagrams as their bytes need: not one datagram per
        reply (4,000 small replies to a service that reads nothing while it floods)."""
        proxy = self.make(pool=2, queue_max=100_000)
        a = Peer(proxy, "a", "a.0")
        await a.answered(0)
        await self.wait_until(lambda: a.messages, 5, "the grants")
        [link] = proxy.links
        reactor.removeReader(a.channel)
        ids = a.send(*[("count_names", {})] * 4000)
        await self.wait_until(lambda: proxy.counts["ok"] == 4000, 30, "every call run")
        self.assertTrue(link.behind, "the proxy never had to hold a reply")
        self.assertLessEqual(link.channel.backlog, 2, "replies queued one datagram each while the peer was behind")
        reactor.addReader(a.channel)
        await a.answered(4000)
        self.assertEqual(sorted(a.replies), ids, "every call answered once")
        self.assertEqual({r.status for r in a.replies.values()}, {"ok"})
        messages = [m for m in a.messages if m.kind == dbchannel.REPLIES]
        # The kernel took a few hundred one-reply datagrams from the pool's threads before the
        # socket was full (its send buffer counts each small datagram as about 1 KB); the rest came
        # together.
        self.assertLess(len(messages), 1000, f"{len(messages)} reply messages for 4,000 replies")
        await self.wait_until(lambda: not link.behind, 5, "the proxy no longer waiting for the peer")

    async def test_peer_reading_slowly_is_not_given_up(self) -> None:
        """Give up on a peer by time without progress, not by how much waits: one that reads a
        datagram every 50 ms keeps its channel for many times C{unread_timeout}."""
        proxy = self.make(pool=2, queue_max=10_000)
        proxy.unread_timeout = 0.5
        self.big_rows()
        d = Peer(proxy, "d", "d.0")
        await self.wait_until(lambda: d.messages, 5, "the grants")
        [link] = proxy.links
        reactor.removeReader(d.channel)
        d.send(*[("all_names", {})] * 100)  # 8 MB of replies
        await self.wait_until(lambda: proxy.counts["ok"] == 100, 30, "every call run")
        read = 0
        for _ in range(60):  # 3 s: six times unread_timeout
            try:
                d.sock.recv(1 << 17, socket.MSG_DONTWAIT)
                read += 1
            except BlockingIOError:
                pass
            await deferLater(reactor, 0.05, lambda: None)
        self.assertIn(link, proxy.links, f"given up on a peer that read {read} datagrams in 3 s")
        self.assertTrue(link.connected)
        self.assertGreater(read, 30)

    async def test_peer_over_the_byte_bound_is_given_up(self) -> None:
        """Give up on a peer that does not read as soon as the replies waiting for it pass
        L{proxy.unread_bytes}, whatever the time."""
        proxy = self.make(pool=2, queue_max=10_000)
        proxy.unread_timeout = 600.0
        self.big_rows()
        d = Peer(proxy, "d", "d.0")
        await self.wait_until(lambda: d.messages, 5, "the grants")
        reactor.removeReader(d.channel)
        calls = unread_bytes(proxy.config.max_result_bytes) // 80_000 + 100
        d.send(*[("all_names", {})] * calls)
        await self.wait_until(lambda: not proxy.links, 30, f"the proxy giving up ({calls} replies of ~80 KB unread)")
        b = Peer(proxy, "b", "b.0")
        self.assertEqual((await b.call("count_names", {})).status, "ok")

    async def test_fds_riding_on_calls_never_reach_the_proxy(self) -> None:
        """The proxy's threads read with a plain C{recv}: the kernel discards (closes) the fds a
        service sends along, so none reaches the proxy (the pipe's write end, closed here, has no
        holder left: its read end sees end of file), and the call itself is served."""
        proxy = self.make()
        a = Peer(proxy, "a", "a.0")
        await self.wait_until(lambda: a.messages, 5, "the grants")
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        [datagram] = channel.encode(*dbchannel.calls([dbchannel.call_entry(1, "count_names", {})]))
        socket.send_fds(a.sock, [datagram], [w, w, w])
        os.close(w)
        await a.answered(1)
        self.assertEqual(a.replies[1].status, "ok")
        readable, _, _ = select.select([r], [], [], 5)
        self.assertEqual(readable, [r], "the pipe's write end is still open somewhere: the proxy kept the fds")
        self.assertEqual(os.read(r, 1), b"")

    async def stop_while(self, method: str) -> None:
        """Stop the proxy while a pool thread holds in C{METHOD} (past its wake-up for a channel,
        before it reads: the pool's C{on_ready}; or while it reads: the proxy's C{received}), then
        let the thread go: every call is answered, once."""
        proxy = self.make(pool=2)
        a = Peer(proxy, "a", "a.0")
        await self.wait_until(lambda: a.messages, 5, "the grants")
        held, release = threading.Event(), threading.Event()
        # The pool's source for the channel (what a woken thread calls), or the proxy.
        owner = next(iter(proxy.pool._sources.values())) if method == "on_ready" else proxy
        original = getattr(owner, method)

        def holding(*args: Any) -> Any:
            held.set()
            if not release.wait(10):
                raise AssertionError("never released")
            return original(*args)

        setattr(owner, method, holding)
        ids = a.send(*[("add_name", {"name": f"n{i}"}) for i in range(20)])
        await self.wait_until(held.is_set, 5, "a pool thread woken for the channel")
        proxy.stop()
        await deferLater(reactor, 0.5, lambda: None)  # over STOP_GRACE: the proxy would have stopped
        self.assertFalse(self.stopped.called, "stopped while a thread was about to read calls, or reading them")
        release.set()
        await self.stopped
        await a.answered(20)
        self.assertEqual({a.replies[i].status for i in ids}, {"ok"})
        self.assertEqual(sorted(self.names()), sorted(f"n{i}" for i in range(20)), "each call run once")

    async def test_stop_while_a_thread_wakes_for_a_channel(self) -> None:
        await self.stop_while("on_ready")

    async def test_stop_while_a_thread_reads_a_channel(self) -> None:
        await self.stop_while("received")




class BusyPoolTests(TestCase):
    """The pool's threads read the channels themselves: one more thread than connections."""

    timeout = 60

    make = ProxyTests.make
    shutdown = ProxyTests.shutdown

    async def test_read_while_every_connection_is_busy(self) -> None:
        """Both connections run slow calls: a flood is still read and refused past queue_max at once,
        and another service's call is read and queued (answered when a connection frees), not left
        in the kernel until then."""
        proxy = self.make(pool=2, queue_max=3, query_timeout=3.0)
        a, b = Peer(proxy, "a", "a.0"), Peer(proxy, "b", "b.0")
        await deferLater(reactor, 0.05, lambda: None)
        slow = a.send(("slow", {"n": 10**12}), ("slow", {"n": 10**12}))
        for _ in range(200):
            if proxy.stats()["running"] == 2:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(proxy.stats()["running"], 2, "both connections busy")
        flood = a.send(*[("count_names", {})] * 6)
        await a.answered(5)
        refused = [a.replies[i] for i in flood if i in a.replies]
        self.assertEqual(len(refused), 5, "queue_max (3: 2 running, 1 queued) held while the pool was busy")
        self.assertTrue(all("queue full" in r.value for r in refused), refused)
        self.assertNotIn(slow[0], a.replies, "answered while the slow calls still ran")
        # b's query_timeout must end well after the slow calls' (which free the connections when
        # they are interrupted): a margin, not a synchronisation; the queue is checked below.
        await deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(proxy.stats()["running"], 2, "both connections still busy")
        [other] = b.send(("count_names", {}))
        for _ in range(200):
            if proxy.stats()["queued"] == 2:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(proxy.stats()["queued"], 2, "b's call was read and queued while the pool was busy")
        await b.answered(1)
        self.assertEqual(b.replies[other].status, "ok")

    async def test_at_most_pool_connections(self) -> None:
        """The threads share the pool's connections: never more open than C{pool}."""
        proxy = self.make(pool=2, queue_max=10_000)
        opened = []
        connect = proxy.pool._connect

        def counted() -> Any:
            conn = connect()
            opened.append(conn)
            return conn

        proxy.pool._connect = counted  # type: ignore[method-assign]
        peers = [Peer(proxy, "a", f"a.{i}") for i in range(3)]
        await deferLater(reactor, 0.05, lambda: None)
        for peer in peers:
            peer.send(*[("count_names", {})] * 300)
        for peer in peers:
            await peer.answered(300)
            self.assertEqual({r.status for r in peer.replies.values()}, {"ok"})
        self.assertLessEqual(len(opened), 2)


class ChannelPartsTests(TestCase):
    """The channel's private parts the proxy's threads read with (L{okws_twisted.dbproxy.proxy}
    imports them): fail here if a change to L{okws_twisted.wire.channel} moves them."""

    def test_longest_datagram(self) -> None:
        """C{_RECV_SIZE} is the longest datagram the channel's reader takes: the most metadata and a
        full chunk."""
        from okws_twisted.wire.channel import _RECV_SIZE

        [longest] = channel.encode({"k": "x", "p": "y" * (channel.MAX_META - 20)}, b"z" * channel.CHUNK)
        self.assertLessEqual(len(longest), _RECV_SIZE)
        self.assertEqual(_RECV_SIZE, 3 + channel.MAX_META + channel.CHUNK)

    def test_assembler(self) -> None:
        """C{_Assembler(limits).add(datagram, fds)} gives the L{Message} a datagram completes (else
        None), and raises L{ChannelError} over the limits."""
        from okws_twisted.wire.channel import _Assembler

        assembler = _Assembler(ChannelLimits(max_payload=100_000))
        [one] = channel.encode({"k": "calls"}, b"[]")
        msg = assembler.add(one, ())
        self.assertEqual((msg.kind, msg.payload, msg.fds), ("calls", b"[]", ()))
        first, second = channel.encode({"k": "calls"}, b"x" * (channel.CHUNK + 10))
        self.assertIsNone(assembler.add(first, ()))
        self.assertEqual(assembler.add(second, ()).payload, b"x" * (channel.CHUNK + 10))
        with self.assertRaises(channel.ChannelError):
            _Assembler(ChannelLimits(max_payload=10)).add(first, ())
        assembler.discard()

    def test_replies_head(self) -> None:
        """A one-datagram C{replies} message is the proxy's C{_REPLIES_HEAD} and its payload."""
        from okws_twisted.dbproxy.proxy import _REPLIES_HEAD

        entries = [dbchannel.reply_ok(7, b"1"), dbchannel.reply_error(8, "refused", "no")]
        meta, payload = dbchannel.replies(entries)
        self.assertEqual(channel.encode(meta, payload), [_REPLIES_HEAD + payload])
