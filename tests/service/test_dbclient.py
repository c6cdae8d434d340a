"""
Tests for L{okws_twisted.service.dbclient} and L{okws_twisted.service.database}: a service's side
of its db channel, over a real seqpacket pair whose other end the test plays (the proxy).
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from okws_twisted import DatabaseUnavailable, QueryFailed, QueryRefused, ServiceResource
from okws_twisted.config.databases import DatabaseConfig
from okws_twisted.interfaces import IDatabase
from okws_twisted.service.database import CACHED, Queries, decode_result
from okws_twisted.service import dbclient
from okws_twisted.service.dbclient import BACKSTOP, DatabaseClient
from okws_twisted.testing import render
from okws_twisted.wire import channel, dbchannel, dbvalues
from okws_twisted.wire.channel import Message
from okws_twisted.wire.dbchannel import Grant

GRANTS = {
    "recent": Grant("", ("limit",)),
    "one": Grant("^", ("id",)),
    "count": Grant("$", ()),
    "add": Grant("!", ("text",)),
    "add_returning": Grant("<!", ("text",)),
    "add_many": Grant("*!", ("text",)),
}


class FakeProxy:
    """The proxy's end of one db channel: the test reads calls and writes grants and replies."""

    def __init__(self, client: DatabaseClient) -> None:
        ours, theirs = channel.socketpair()
        self.sock = ours
        ours.setblocking(False)
        client.set_channel(theirs)

    def send(self, outgoing: tuple[dict[str, Any], bytes]) -> None:
        for datagram in channel.encode(*outgoing):
            self.sock.send(datagram)

    def grant(self, table: dict[str, Grant] = GRANTS) -> None:
        self.send(dbchannel.grants(table))

    def messages(self) -> list[Message]:
        out = []
        assembler = channel._Assembler(channel.ChannelLimits(max_payload=1 << 30))
        while True:
            try:
                data, anc, _flags, _ = self.sock.recvmsg(channel._RECV_SIZE, channel._ANC_SIZE)
            except BlockingIOError:
                return out
            if not data:
                return out
            msg = assembler.add(data, ())
            if msg is not None:
                out.append(msg)

    def calls(self) -> list[dbchannel.Call]:
        return [c for m in self.messages() for c in dbchannel.parse_calls(m)]

    def reply(self, *entries: bytes) -> None:
        self.send(dbchannel.replies(list(entries)))

    def close(self) -> None:
        self.sock.close()


def config(timeout: float = 5.0, max_call_bytes: int = 1024 * 1024) -> DatabaseConfig:
    return DatabaseConfig(name="main", url="sqlite:///d/x.db", queries="/q.sql", path="/d/x.db",
                          query_timeout=timeout, max_call_bytes=max_call_bytes)


def turn() -> Any:
    """Let the reactor run the client's zero-delay flush (which it scheduled before this timer).

    Only for what the client does on its own timers; anything that depends on the client reading
    its socket is awaited with L{until}, since a loaded machine can run this timer first."""
    return deferLater(reactor, 0.02, lambda: None)


async def until(check: Any, what: str, timeout: float = 10.0) -> None:
    """Wait, bounded, for C{check()} to be true: the client has read what the test sent."""
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await deferLater(reactor, 0.005, lambda: None)


def closed(sock: Any) -> bool:
    """The peer closed this end's connection (an orderly EOF is waiting)."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class ClientTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.client = DatabaseClient(reactor, config(), retry_after=7)
        self.db = Queries(self.client)

    async def ready(self) -> FakeProxy:
        proxy = FakeProxy(self.client)
        proxy.grant()
        self.addCleanup(proxy.close)
        await until(lambda: self.client.ready, "the client read its grants")
        return proxy

    async def test_a_batch_per_turn_and_results_by_suffix(self) -> None:
        proxy = await self.ready()
        calls = [self.db.recent(limit=i) for i in range(100)]
        first = proxy.messages()
        self.assertEqual(len(first), 1, "with nothing in flight, the first call left at once")
        self.assertEqual(len(dbchannel.parse_calls(first[0])), 1)
        calls.append(self.db.one(id=1))
        calls.append(self.db.count())
        calls.append(self.db.add_many([{"text": "a"}, {"text": b"\x00"}]))
        await turn()
        messages = proxy.messages()
        self.assertEqual(len(messages), 1, "everything else called in that reactor turn leaves as one message")
        sent = dbchannel.parse_calls(first[0]) + dbchannel.parse_calls(messages[0])
        self.assertEqual(len(sent), 103)
        self.assertEqual(sent[-1].params, [{"text": "a"}, {"text": {"b": "AA=="}}])
        rows = dbvalues.dumps(dbvalues.encode_rows(["id", "when"], [[1, datetime.date(2024, 1, 2)]]))
        proxy.reply(*(dbchannel.reply_ok(c.id, rows) for c in sent[:100]),
                    dbchannel.reply_ok(sent[100].id, b"null"),
                    dbchannel.reply_ok(sent[101].id, dbvalues.dumps({"d": "1.10"})),
                    dbchannel.reply_ok(sent[102].id, b"2"))
        self.assertEqual(await calls[0], [{"id": 1, "when": datetime.date(2024, 1, 2)}])
        self.assertIsNone(await calls[100])
        self.assertEqual(str(await calls[101]), "1.10")
        self.assertIsInstance(await calls[101], decimal.Decimal)
        self.assertEqual(await calls[102], 2)

    async def test_a_lone_call_yields_after_its_send(self) -> None:
        """Only a lone call (nothing in flight) gives the core to the proxy it woke, and only once
        it left: the calls batched behind it do not yield (under load nothing does)."""
        proxy = await self.ready()
        yields: list[int] = []
        self.patch(dbclient, "_yield", lambda: yields.append(len(proxy.messages())))
        first = self.db.count()
        self.assertEqual(yields, [1], "the lone call yielded right after its send")
        others = [self.db.count() for _ in range(3)]
        await turn()
        self.assertEqual(yields, [1], "the calls behind it (in flight: batched) did not yield")
        sent = proxy.calls()
        self.assertEqual(len(sent), 3)
        proxy.reply(*(dbchannel.reply_ok(c.id, b"1") for c in sent))
        await gatherResults(others)
        # first's reply never came: answer it; then nothing is in flight, and the next call yields.
        proxy.reply(dbchannel.reply_ok(sent[0].id - 1, b"1"))
        self.assertEqual(await first, 1)
        last = self.db.count()
        self.assertEqual(yields, [1, 1])
        proxy.reply(dbchannel.reply_ok(sent[-1].id + 1, b"1"))
        self.assertEqual(await last, 1)

    async def test_errors(self) -> None:
        proxy = await self.ready()
        calls = [self.db.add(text="a"), self.db.add(text="b"), self.db.add(text="c")]
        await turn()
        ids = [c.id for c in proxy.calls()]
        proxy.reply(dbchannel.reply_error(ids[0], "failed", "UNIQUE constraint failed: t.text"),
                    dbchannel.reply_error(ids[1], "unavailable", "queue full"),
                    dbchannel.reply_error(ids[2], "refused", "not granted"))
        e0 = await self.assertFailure(calls[0], QueryFailed)
        self.assertEqual((e0.query, e0.db, e0.message), ("add", "main", "UNIQUE constraint failed: t.text"))
        self.assertEqual(str(e0), "add on [db:main]: UNIQUE constraint failed: t.text")
        e1 = await self.assertFailure(calls[1], DatabaseUnavailable)
        self.assertEqual(e1.retry_after, 7)
        await self.assertFailure(calls[2], QueryRefused)

    async def test_checked_before_sending(self) -> None:
        """A wrong value or parameter is a TypeError at the call; a query not granted, QueryRefused: nothing sent."""
        proxy = await self.ready()
        with self.assertRaises(TypeError) as cm:
            self.db.add(text=[1, 2])
        self.assertIn("parameter 'text'", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            self.db.add(txt="x")
        self.assertEqual(str(cm.exception), "add() takes (text): missing text; unexpected txt")
        with self.assertRaises(TypeError):
            self.db.add("positional")
        with self.assertRaises(TypeError):
            self.db.add_many(text="not a list")
        await self.assertFailure(self.db.drop_everything(), QueryRefused)
        await turn()
        self.assertEqual(proxy.messages(), [])

    async def test_too_large(self) -> None:
        self.client = DatabaseClient(reactor, config(max_call_bytes=1024))
        self.db = Queries(self.client)
        proxy = await self.ready()
        e = await self.assertFailure(self.db.add(text="x" * 2000), QueryRefused)
        self.assertIn("max_call_bytes is 1024", e.message)
        calls = [self.db.add(text="y" * 300) for _ in range(10)]
        await turn()
        messages = proxy.messages()
        self.assertGreater(len(messages), 2, "batches are split under max_call_bytes")
        self.assertTrue(all(len(m.payload) <= 1024 for m in messages))
        for c in calls:
            c.addErrback(lambda f: None)

    async def test_waits_for_a_proxy_then_gives_up(self) -> None:
        self.client = DatabaseClient(reactor, config(timeout=0.3))
        self.db = Queries(self.client)
        with self.assertRaises(TypeError):
            self.db.add(text=object())  # checked even before the grants are known
        e = await self.assertFailure(self.db.add(text="x"), DatabaseUnavailable)
        self.assertIn("did not answer within query_timeout (0.3s); the call was not sent", e.message)

    async def test_calls_wait_for_the_grants(self) -> None:
        proxy = FakeProxy(self.client)
        self.addCleanup(proxy.close)
        good, wrong, unknown = self.db.add(text="x"), self.db.add(nope=1), self.db.nothing()
        await turn()
        self.assertEqual(proxy.messages(), [])
        proxy.grant()
        await until(lambda: self.client.ready, "the client read its grants")
        await turn()
        await self.assertFailure(wrong, TypeError)
        await self.assertFailure(unknown, QueryRefused)
        [call] = proxy.calls()
        self.assertEqual(call.params, {"text": "x"})
        proxy.reply(dbchannel.reply_ok(call.id, b"1"))
        self.assertEqual(await good, 1)

    async def test_never_resent(self) -> None:
        """The proxy goes away mid-call: the call fails at once, and the next proxy never sees it."""
        proxy = await self.ready()
        lost = self.db.add(text="maybe")
        await turn()
        self.assertEqual(len(proxy.calls()), 1)
        proxy.close()
        e = await self.assertFailure(lost, DatabaseUnavailable)
        self.assertIn("may or may not have run", e.message)
        later = self.db.add(text="later")
        second = await self.ready()
        calls = second.calls()
        self.assertEqual([c.params for c in calls], [{"text": "later"}])
        second.reply(dbchannel.reply_ok(calls[0].id, b"1"))
        self.assertEqual(await later, 1)

    async def test_send_that_fails_fails_the_call_at_once(self) -> None:
        """The proxy's end is gone before the client has read its end of file: the send fails
        (EPIPE), and the call fails at once (never resent), not after query_timeout."""
        proxy = await self.ready()
        proxy.close()
        lost = self.db.add(text="x")
        e = self.failureResultOf(lost, DatabaseUnavailable).value
        self.assertIn("may or may not have run", e.message)
        self.assertEqual(self.client.stats(), {"waiting": 0, "sent": 0})
        self.assertFalse(self.client.ready)

    async def test_graceful_switch(self) -> None:
        """A new proxy while calls are in flight on the old one: they are answered there; new ones go to the new."""
        old = await self.ready()
        first = self.db.add(text="old")
        await turn()
        [call] = old.calls()
        new = await self.ready()
        second = self.db.add(text="new")
        await turn()
        self.assertEqual(old.calls(), [])
        [call2] = new.calls()
        old.reply(dbchannel.reply_ok(call.id, b"1"))
        new.reply(dbchannel.reply_ok(call2.id, b"1"))
        self.assertEqual((await first, await second), (1, 1))
        await until(lambda: closed(old.sock), "the client closed the old channel once it was answered")

    async def test_bad_proxy_message_closes_the_channel(self) -> None:
        proxy = await self.ready()
        pending = self.db.add(text="x")
        await turn()
        proxy.send(({"k": dbchannel.CALLS}, b"[]"))
        e = await self.assertFailure(pending, DatabaseUnavailable)
        self.assertIn("went away", e.message)
        self.flushLoggedErrors()

    async def test_cancelled_call_ignores_its_reply(self) -> None:
        proxy = await self.ready()
        gone = self.db.add(text="x")
        await turn()
        [call] = proxy.calls()
        gone.cancel()
        self.failureResultOf(gone)
        proxy.reply(dbchannel.reply_ok(call.id, b"1"), dbchannel.reply_ok(10**6, b"1"))
        after = self.db.add(text="y")  # answered after those replies: once it is, they were read
        await turn()
        [call2] = proxy.calls()
        proxy.reply(dbchannel.reply_ok(call2.id, b"1"))
        self.assertEqual(await after, 1)
        self.assertEqual(self.client.stats(), {"waiting": 0, "sent": 0})


class SweepTests(SynchronousTestCase):
    """A sent call the proxy never answers fails at C{query_timeout} + BACKSTOP after it left, by
    one timer for every call in flight.  On a clock; the channel is real, its reads the test's."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = DatabaseClient(self.reactor, config(timeout=5))
        self.db = Queries(self.client)
        self.proxy = FakeProxy(self.client)
        self.addCleanup(self.proxy.close)
        self.proxy.grant()
        self.read()
        self.assertTrue(self.client.ready)

    def read(self) -> None:
        channel = self.client._channel
        assert channel is not None
        channel.doRead()

    def answer(self, d: Any) -> None:
        [call] = self.proxy.calls()
        self.proxy.reply(dbchannel.reply_ok(call.id, b"1"))
        self.read()
        self.assertEqual(self.successResultOf(d), 1)

    def test_given_up_at_its_own_deadline(self) -> None:
        """The sweep armed for an answered call fires at that call's deadline: a later call
        is given up at its own, not before."""
        self.answer(self.db.add(text="a"))
        self.reactor.advance(3)
        second = self.db.add(text="b")
        self.reactor.advance(5 + BACKSTOP - 3)
        self.assertNoResult(second)
        self.reactor.advance(3)
        e = self.failureResultOf(second, DatabaseUnavailable).value
        self.assertIn("no reply from the database proxy in time", e.message)
        self.assertEqual(self.client.stats(), {"waiting": 0, "sent": 0})
        self.assertEqual(self.reactor.getDelayedCalls(), [], "nothing in flight: the sweep is not armed again")

    def test_idle_sweep_fires_once(self) -> None:
        """After the last answer the sweep stays armed (cheaper than a timer per call), fires once
        with nothing due, and leaves no timer."""
        self.answer(self.db.add(text="a"))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(5 + BACKSTOP)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.answer(self.db.add(text="b"))

    def test_channel_closed_leaves_no_timer(self) -> None:
        self.answer(self.db.add(text="a"))
        self.proxy.close()
        self.read()
        self.assertFalse(self.client.ready)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class DecodeTests(SynchronousTestCase):
    def test_by_suffix(self) -> None:
        rows = {"c": ["a"], "r": [[1]]}
        self.assertEqual(decode_result("", rows), [{"a": 1}])
        self.assertEqual(decode_result("^", rows), {"a": 1})
        self.assertIsNone(decode_result("^", None))
        self.assertEqual(decode_result("$", {"b": "AA=="}), b"\x00")
        self.assertEqual(decode_result("<!", 5), 5)
        self.assertEqual(decode_result("<!", rows), {"a": 1})
        self.assertEqual(decode_result("!", 3), 3)
        for suffix, bad in (("!", "3"), ("^", {"c": ["a"], "r": [[1], [2]]}), ("", [1]), ("#", None)):
            with self.assertRaises(ValueError):
                decode_result(suffix, bad)

    def test_no_database(self) -> None:
        d = Queries(None).anything(x=1)
        self.assertIn("this resource has no database", str(self.failureResultOf(d, QueryRefused).value))
        with self.assertRaises(AttributeError):
            Queries(None)._private  # noqa: B018



@implementer(IDatabase)
class NamedDatabase:
    """A database answering each call with its own name and the call: which one a page reached."""

    def __init__(self, name: str) -> None:
        self.name = name

    def call(self, query: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Deferred[Any]:
        return succeed((self.name, query, kwargs))


class QueriesKeptTests(SynchronousTestCase):
    """C{self.db} is built once per database, and its query methods once per name (a page's calls build
    nothing but the call), yet always reach the database of the site rendering now."""

    def test_methods_kept(self) -> None:
        db = Queries(NamedDatabase("a"))
        self.assertIs(db.one, db.one)
        self.assertEqual(self.successResultOf(db.one(id=1)), ("a", "one", {"id": 1}))
        self.assertEqual(self.successResultOf(db.count()), ("a", "count", {}))

    def test_kept_names_bounded(self) -> None:
        db = Queries(NamedDatabase("a"))
        for i in range(CACHED * 2):
            self.assertEqual(self.successResultOf(getattr(db, f"q{i}")()), ("a", f"q{i}", {}))
        self.assertLessEqual(len(vars(db)), CACHED)
        self.assertEqual(self.successResultOf(getattr(db, f"q{CACHED * 2 - 1}")()), ("a", f"q{CACHED * 2 - 1}", {}))

    def test_one_per_database(self) -> None:
        class Page(ServiceResource):
            isLeaf = True

            def render_GET(self, request: Any) -> Any:
                seen.append(self.db)
                return self.db.one(id=1).addCallback(lambda answer: answer[0].encode())

        seen: list[Queries] = []
        page = Page()
        a, b = NamedDatabase("a"), NamedDatabase("b")
        self.assertEqual(self.successResultOf(render(page, db=a)).body, b"a")
        self.assertEqual(self.successResultOf(render(page, db=a)).body, b"a")
        self.assertIs(seen[0], seen[1])
        self.assertEqual(self.successResultOf(render(page, db=b)).body, b"b")  # another site's: a new one
        self.assertIsNot(seen[2], seen[0])
        self.assertEqual(self.successResultOf(render(page, db=a)).body, b"a")
