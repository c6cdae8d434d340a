"""
Tests for L{okws_twisted.pubd.publisher}: a real publisher over a real template
tree, spoken to through real seqpacket channels on the running reactor (the
process around it is exercised by tests.test_e2e_templates).  Every wait is
for a message, bounded by the test timeout.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from okws_twisted.pubd.publisher import Publisher
from okws_twisted.wire import limits, templatechannel
from okws_twisted.wire.channel import Message, MessageChannel, socketpair
from okws_twisted.wire.errorpage import MESSAGE_MARKER, STATUSES
from okws_twisted.wire.templatechannel import Absent, Source


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class PeerEnd:
    """The far end of one templates channel: what a service or the dispatcher sees."""

    def __init__(self, publisher: Publisher, name: str) -> None:
        ours, theirs = socketpair()
        self.inbox: list[Message] = []
        self._waiting: list[tuple[tuple[str, ...], Deferred[Message]]] = []
        self.lost: Deferred[None] = Deferred()
        self.channel = MessageChannel(reactor, ours, self._received, lambda reason: self.lost.callback(None), limits=limits.TEMPLATES_PEER)
        publisher.peer("templates", {"name": name, "role": "service"}, theirs)

    def _received(self, batch: list[Message]) -> None:
        self.inbox.extend(batch)
        self._deliver()

    def _deliver(self) -> None:
        for msg in list(self.inbox):
            for entry in self._waiting:
                if msg.kind in entry[0]:
                    self._waiting.remove(entry)
                    self.inbox.remove(msg)
                    entry[1].callback(msg)
                    break

    def next(self, *kinds: str) -> Deferred[Message]:
        """The next message of one of C{kinds} (one already received, or the next to come)."""
        d: Deferred[Message] = Deferred()
        self._waiting.append((kinds, d))
        self._deliver()
        return d

    def send(self, outgoing: tuple[dict[str, Any], bytes]) -> None:
        self.channel.send(*outgoing)

    async def get(self, name: str, request_id: int = 1) -> Source | Absent:
        self.send(templatechannel.get(request_id, name))
        reply = templatechannel.parse_reply(await self.next(*templatechannel.REPLIES))
        assert reply.id == request_id
        return reply.result


class PublisherTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        base = self.mktemp()
        os.makedirs(base)
        self.base = os.path.realpath(base)
        self.root = os.path.join(self.base, "templates")
        write(os.path.join(self.root, "hello.html"), "<p>Hello, {{ name }}!</p>")
        write(os.path.join(self.base, "secret.html"), "SECRET")
        os.symlink(os.path.join(self.base, "secret.html"), os.path.join(self.root, "out.html"))
        self.stopped: list[bool] = []
        self.publisher = Publisher(reactor, self.root, lambda: self.stopped.append(True))
        self.publisher.start()
        self.addCleanup(self.publisher.stop)

    async def test_pagesOnConnect(self) -> None:
        peer = PeerEnd(self.publisher, "dispatcher")
        pages = templatechannel.parse_pages(await peer.next(templatechannel.PAGES))
        self.assertEqual(sorted(pages), sorted(STATUSES))
        self.assertIn(MESSAGE_MARKER, pages[404])

    async def test_source(self) -> None:
        peer = PeerEnd(self.publisher, "hello.0")
        found = await peer.get("hello.html")
        assert isinstance(found, Source)
        self.assertEqual(found.text, "<p>Hello, {{ name }}!</p>")

    async def test_missing(self) -> None:
        peer = PeerEnd(self.publisher, "hello.0")
        self.assertEqual(await peer.get("nope.html"), Absent("nope.html", "no such template", False))

    async def test_refused(self) -> None:
        """Nothing outside the tree is ever sent, however the name gets there."""
        peer = PeerEnd(self.publisher, "hello.0")
        with capturedLogs() as events:
            for i, name in enumerate(["../secret.html", self.base + "/secret.html", "out.html", "a\\b", ".hidden"]):
                answer = await peer.get(name, i + 1)
                self.assertIsInstance(answer, Absent, name)
                assert isinstance(answer, Absent)
                self.assertTrue(answer.refused, name)
        refusals = [e for e in events if e.get("template") is not None]
        self.assertEqual(len(refusals), 5)
        self.assertEqual({e["peer"] for e in refusals}, {"hello.0"})

    async def test_badMessagesLoggedNotFatal(self) -> None:
        peer = PeerEnd(self.publisher, "hello.0")
        with capturedLogs() as events:
            peer.send(({"k": "source", "id": 1, "name": "x", "etag": "e"}, b""))
            peer.send(({"k": "get", "id": "one", "name": "x"}, b""))
            found = await peer.get("hello.html")
        self.assertIsInstance(found, Source)
        self.assertEqual(len([e for e in events if "bad message" in e.get("log_format", "")]), 2)

    async def test_changedToPeersThatAsked(self) -> None:
        asking = PeerEnd(self.publisher, "hello.0")
        quiet = PeerEnd(self.publisher, "dispatcher")
        await asking.get("hello.html")
        changed = asking.next(templatechannel.CHANGED)
        write(os.path.join(self.root, "hello.html"), "<p>Hi, {{ name }}</p>")
        self.assertEqual(templatechannel.parse_changed(await changed), ["hello.html"])
        found = await asking.get("hello.html", 2)
        assert isinstance(found, Source)
        self.assertEqual(found.text, "<p>Hi, {{ name }}</p>")
        self.assertEqual([m.kind for m in quiet.inbox], [templatechannel.PAGES])

    async def test_errorPageChangePushed(self) -> None:
        peer = PeerEnd(self.publisher, "dispatcher")
        await peer.next(templatechannel.PAGES)
        update = peer.next(templatechannel.PAGES)
        write(os.path.join(self.root, "errors", "404.html"), "site 404: {{ message }}")
        pages = templatechannel.parse_pages(await update)
        self.assertEqual(pages[404], f"site 404: {MESSAGE_MARKER}")
        self.assertEqual(self.publisher.pages[404], pages[404])

    async def test_brokenErrorPageLogged(self) -> None:
        """A broken site page is logged with its line; the default stands in."""
        peer = PeerEnd(self.publisher, "dispatcher")
        await peer.next(templatechannel.PAGES)
        with capturedLogs() as events:
            write(os.path.join(self.root, "errors", "500.html"), "fine\n{% if %}")
            write(os.path.join(self.root, "errors", "404.html"), "marker 404")
            while templatechannel.parse_pages(await peer.next(templatechannel.PAGES))[404] != "marker 404":
                pass
        logged = [e for e in events if e.get("template") == "errors/500.html"]
        self.assertTrue(logged)  # once per re-render while it stays broken
        self.assertEqual({e["lineno"] for e in logged}, {2})
        self.assertIn("500 Internal Server Error", self.publisher.pages[500])

    async def test_newChannelReplacesOld(self) -> None:
        first = PeerEnd(self.publisher, "hello.0")
        second = PeerEnd(self.publisher, "hello.0")
        await first.lost
        self.assertIsInstance(await second.get("hello.html"), Source)
        self.assertEqual(list(self.publisher.peers), ["hello.0"])

    async def test_stop(self) -> None:
        peer = PeerEnd(self.publisher, "hello.0")
        self.publisher.stop()
        await peer.lost
        self.assertEqual(self.stopped, [True])
        self.assertEqual(self.publisher.watcher.mode, "stopped")

    async def test_noTreeYet(self) -> None:
        with capturedLogs() as events:
            publisher = Publisher(reactor, os.path.join(self.base, "none"))
            publisher.start()
        self.addCleanup(publisher.stop)
        self.assertTrue(any("does not exist" in e.get("log_format", "") for e in events))
        peer = PeerEnd(publisher, "hello.0")
        answer = await peer.get("hello.html")
        assert isinstance(answer, Absent)
        self.assertIn("does not exist", answer.reason)
        self.assertEqual(sorted(publisher.pages), sorted(STATUSES))
