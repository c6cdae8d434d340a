"""
Tests for L{okws_twisted.service.templateclient}: a service's link to the publisher.

Most tests play the publisher's part themselves over a real seqpacket
channel, to control what it says and when; one runs against a real
L{Publisher}.  Waits are for messages and Deferreds, bounded by the test
timeout; the timeouts under test are the client's own (short) ones.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from okws_twisted.pubd.publisher import Publisher
from okws_twisted.pubd.tree import etag_of
from okws_twisted.service.templateclient import PublisherClient
from okws_twisted.templating import PublisherUnavailable, TemplateMissing
from okws_twisted.wire import limits, templatechannel
from okws_twisted.wire.channel import Message, MessageChannel, socketpair
from okws_twisted.wire.errorpage import MESSAGE_MARKER
from okws_twisted.wire.templatechannel import Absent, Source


def source(name: str, text: str) -> Source:
    return Source(name, text, etag_of(text.encode()))


class PublisherEnd:
    """The test's publisher: sees each C{get}, answers when told."""

    def __init__(self, client: PublisherClient) -> None:
        ours, theirs = socketpair()
        self.gets: list[templatechannel.Get] = []
        self._waiting: list[Deferred[templatechannel.Get]] = []
        self.channel = MessageChannel(reactor, ours, self._received, limits=limits.TEMPLATES_PUBLISHER)
        client.set_channel(theirs)

    def _received(self, batch: list[Message]) -> None:
        self.gets.extend(templatechannel.parse_get(m) for m in batch)
        while self.gets and self._waiting:
            self._waiting.pop(0).callback(self.gets.pop(0))

    def next_get(self) -> Deferred[templatechannel.Get]:
        d: Deferred[templatechannel.Get] = Deferred()
        self._waiting.append(d)
        self._received([])
        return d

    def reply(self, request: templatechannel.Get, answer: Source | Absent) -> None:
        if isinstance(answer, Source):
            self.channel.send(*templatechannel.source(request.id, answer))
        else:
            self.channel.send(*templatechannel.absent(request.id, answer))

    def send(self, outgoing: tuple[dict, bytes]) -> None:
        self.channel.send(*outgoing)


class ClientTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.client = PublisherClient(reactor, timeout=5.0, retry_after=7)

    def connect(self) -> PublisherEnd:
        end = PublisherEnd(self.client)
        self.addCleanup(end.channel.close)
        return end

    async def test_fetchAndRender(self) -> None:
        end = self.connect()
        rendering = self.client.render("a.html", {"x": "<y>"})
        request = await end.next_get()
        self.assertEqual(request.name, "a.html")
        end.reply(request, source("a.html", "[{{ x }}]"))
        self.assertEqual(await rendering, "[&lt;y&gt;]")

    async def test_missing(self) -> None:
        end = self.connect()
        rendering = self.client.render("a.html", {})
        end.reply(await end.next_get(), Absent("a.html", "no such template"))
        with self.assertRaises(TemplateMissing):
            await rendering

    async def barrier(self, end: PublisherEnd) -> None:
        """Return once the client has handled everything C{end} sent so far
        (a round trip on the same ordered channel)."""
        rendering = self.client.render("barrier.txt", {})
        request = await end.next_get()
        end.reply(request, Absent(request.name, "a barrier"))
        try:
            await rendering
        except TemplateMissing:
            pass
        self.client.cache.invalidate(["barrier.txt"])

    async def test_changedMeansFetchAgain(self) -> None:
        end = self.connect()
        first = self.client.render("a.html", {})
        end.reply(await end.next_get(), source("a.html", "one"))
        self.assertEqual(await first, "one")
        self.assertEqual(await self.client.render("a.html", {}), "one")  # held: no question
        end.send(templatechannel.changed(["a.html"]))
        await self.barrier(end)
        second = self.client.render("a.html", {})
        request = await end.next_get()
        self.assertEqual(request.name, "a.html")
        end.reply(request, source("a.html", "two"))
        self.assertEqual(await second, "two")

    async def test_waitsForTheChannel(self) -> None:
        """A fetch made while no publisher is connected is sent on the next channel."""
        rendering = self.client.render("a.html", {})
        self.assertFalse(self.client.connected)
        end = self.connect()
        end.reply(await end.next_get(), source("a.html", "late but here"))
        self.assertEqual(await rendering, "late but here")

    async def test_noPublisherIs503(self) -> None:
        self.client.timeout = 0.2
        with capturedLogs() as events:
            with self.assertRaises(PublisherUnavailable) as caught:
                await self.client.render("a.html", {})
        self.assertEqual((caught.exception.status, caught.exception.retry_after), (503, 7))
        self.assertEqual([e.get("template") for e in events if e.get("template")], ["a.html"])

    async def test_lateAnswerKept(self) -> None:
        """An answer that comes after its requester gave up is still kept."""
        self.client.timeout = 0.2
        end = self.connect()
        rendering = self.client.render("a.html", {})
        request = await end.next_get()
        with self.assertRaises(PublisherUnavailable):
            await rendering
        end.reply(request, source("a.html", "kept"))
        self.client.timeout = 5.0
        await self.barrier(end)
        self.assertEqual(await self.client.render("a.html", {}), "kept")
        self.assertEqual(end.gets, [])

    async def test_newChannelChecksEverythingAgain(self) -> None:
        end = self.connect()
        rendering = self.client.render("a.html", {})
        end.reply(await end.next_get(), source("a.html", "one"))
        await rendering
        second_end = self.connect()
        rendering = self.client.render("a.html", {})
        request = await second_end.next_get()
        self.assertEqual(request.name, "a.html")
        second_end.reply(request, source("a.html", "one"))
        self.assertEqual(await rendering, "one")

    async def test_heldRendersWithoutPublisher(self) -> None:
        end = self.connect()
        rendering = self.client.render("a.html", {})
        end.reply(await end.next_get(), source("a.html", "held"))
        await rendering
        end.channel.close()
        self.assertEqual(await self.client.render("a.html", {}), "held")

    async def test_pages(self) -> None:
        self.assertIn("404 Not Found", self.client.error_page(404, "gone"))
        end = self.connect()
        with capturedLogs() as events:
            end.send(templatechannel.pages({404: f"<b>{MESSAGE_MARKER}</b>"}))
            rendering = self.client.render("a.html", {})  # a round trip: the pages arrived before
            end.reply(await end.next_get(), source("a.html", "x"))
            await rendering
        self.assertEqual(self.client.error_page(404, "<gone>"), "<b>&lt;gone&gt;</b>")
        self.assertTrue(any(e.get("count") == 1 for e in events))

    async def test_badMessages(self) -> None:
        end = self.connect()
        self.client.timeout = 0.3
        with capturedLogs() as events:
            rendering = self.client.render("a.html", {})
            request = await end.next_get()
            end.send(({"k": "get", "id": 1, "name": "x"}, b""))
            end.reply(request, source("b.html", "the wrong template"))
            with self.assertRaises(PublisherUnavailable):
                await rendering
        bad = [e for e in events if "bad message" in e.get("log_format", "")]
        self.assertEqual(len(bad), 2)


class RealPublisherTests(TestCase):
    """The client against a real publisher on a real tree."""

    timeout = 15

    async def test_liveEdit(self) -> None:
        root = os.path.realpath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "a.html"), "w") as f:
            f.write("version one")
        publisher = Publisher(reactor, root)
        publisher.start()
        self.addCleanup(publisher.stop)
        client = PublisherClient(reactor, timeout=5.0, retry_after=5)
        ours, theirs = socketpair()
        publisher.peer("templates", {"name": "a.0"}, ours)
        client.set_channel(theirs)
        self.assertEqual(await client.render("a.html", {}), "version one")
        with open(os.path.join(root, "a.html"), "w") as f:
            f.write("version two")
        # Poll the rendered output (the external condition) until the
        # publisher's watcher has seen the edit, within a deadline.
        deadline = reactor.seconds() + 5
        while (page := await client.render("a.html", {})) != "version two" and reactor.seconds() < deadline:
            await deferLater(reactor, 0.02)
        self.assertEqual(page, "version two")
