"""
Tests for L{okws_twisted.wire.templatechannel}: building and validating template
protocol messages, through the real channel encoding.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire import channel, limits, templatechannel
from okws_twisted.wire.channel import ChannelError, Message
from okws_twisted.wire.templatechannel import MAX_NAME, Absent, Get, Reply, Source


def wire(outgoing: tuple[dict[str, Any], bytes]) -> Message:
    """The message the peer receives for C{outgoing}, over a real seqpacket pair."""
    meta, payload = outgoing
    left, right = channel.socketpair()
    with left, right:
        for datagram in channel.encode(meta, payload):
            left.send(datagram)
        return channel.read_one_blocking(right, 5, limits.TEMPLATES_PEER)


def raw(kind: str, payload: bytes = b"", **meta: Any) -> Message:
    return Message(kind, {"k": kind, **meta}, payload)


class RoundTripTests(SynchronousTestCase):
    def test_get(self) -> None:
        msg = wire(templatechannel.get(7, "errors/404.html"))
        self.assertEqual(msg.kind, templatechannel.GET)
        self.assertEqual(templatechannel.parse_get(msg), Get(7, "errors/404.html"))

    def test_source(self) -> None:
        found = Source("a.html", "<p>caf\u00e9 {{ x }}</p>", "abc")
        msg = wire(templatechannel.source(3, found))
        self.assertEqual(templatechannel.parse_reply(msg), Reply(3, found))

    def test_largeSource(self) -> None:
        """A template larger than one datagram arrives whole."""
        found = Source("big.html", "x" * (2 * channel.CHUNK + 5), "e")
        self.assertEqual(templatechannel.parse_reply(wire(templatechannel.source(1, found))).result, found)

    def test_absent(self) -> None:
        for answer in (Absent("a.html", "no such template"), Absent("../x", "the name contains a '..' segment", True)):
            msg = wire(templatechannel.absent(9, answer))
            self.assertEqual(msg.kind, templatechannel.REFUSED if answer.refused else templatechannel.MISSING)
            self.assertEqual(templatechannel.parse_reply(msg), Reply(9, answer))

    def test_changed(self) -> None:
        names = [f"dir/{i}.html" for i in range(5000)]  # far over the 64 KiB metadata limit
        self.assertEqual(templatechannel.parse_changed(wire(templatechannel.changed(names))), sorted(names))

    def test_pages(self) -> None:
        pages = {404: "<p>\x00\x1e\x00</p>", 500: "oops"}
        self.assertEqual(templatechannel.parse_pages(wire(templatechannel.pages(pages))), pages)


class ValidationTests(SynchronousTestCase):
    """A malformed message is a L{ChannelError}, never a crash or a wrong value."""

    def test_badGet(self) -> None:
        for msg in (
            raw("get", name="a"),
            raw("get", id="1", name="a"),
            raw("get", id=True, name="a"),
            raw("get", id=-1, name="a"),
            raw("get", id=1),
            raw("get", id=1, name=["a"]),
            raw("get", id=1, name="x" * (MAX_NAME + 1)),
            Message("get", {"k": "get", "id": 1, "name": "a"}, b"", (5,)),
        ):
            self.assertRaises(ChannelError, templatechannel.parse_get, msg)

    def test_getNameIsNotJudgedHere(self) -> None:
        """Whether a name is acceptable is the publisher's answer, not a protocol error."""
        self.assertEqual(templatechannel.parse_get(raw("get", id=1, name="../x")), Get(1, "../x"))

    def test_badReply(self) -> None:
        for msg in (
            raw("source", b"x", id=1, name="a"),
            raw("source", b"x", id=1, name="a", etag=""),
            raw("source", b"\xff", id=1, name="a", etag="e"),
            raw("missing", id=1, name="a"),
            raw("refused", id=1, name="a", reason=3),
            raw("changed", id=1, name="a"),
        ):
            self.assertRaises(ChannelError, templatechannel.parse_reply, msg)

    def test_badChanged(self) -> None:
        for payload in (b"", b"{", b'{"a": 1}', b'["a", 2]'):
            self.assertRaises(ChannelError, templatechannel.parse_changed, raw("changed", payload))

    def test_badPages(self) -> None:
        for payload in (b"[]", b'{"404": 1}', b'{"four": "x"}', b'{"4040": "x"}', b"nope"):
            self.assertRaises(ChannelError, templatechannel.parse_pages, raw("pages", payload))

    def test_longReasonCut(self) -> None:
        meta, _ = templatechannel.absent(1, Absent("a", "r" * 10000))
        self.assertLessEqual(len(meta["reason"]), 500)
