"""
Tests for L{okws_twisted.wire.dbchannel}: the db channel's messages, built and parsed through the
real channel encoding, and everything a peer may get wrong.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire import channel, dbchannel, dbvalues
from okws_twisted.wire.channel import ChannelError, Message
from okws_twisted.wire.dbchannel import Grant


def wire(outgoing: tuple[dict[str, Any], bytes]) -> Message:
    """The message the peer receives for C{outgoing}, over a real seqpacket pair."""
    meta, payload = outgoing
    left, right = channel.socketpair()
    with left, right:
        # Sent from a thread: a large message fills the socket buffer before it is read.
        sender = threading.Thread(target=lambda: [left.send(d) for d in channel.encode(meta, payload)])
        sender.start()
        try:
            return channel.read_one_blocking(right, 5, channel.ChannelLimits(max_payload=1 << 30))
        finally:
            sender.join(5)


def raw(kind: str, payload: bytes, fds: tuple[int, ...] = ()) -> Message:
    return Message(kind, {"k": kind}, payload, fds)


class RoundTripTests(SynchronousTestCase):
    def test_grants(self) -> None:
        table = {"recent": Grant("", ("limit",)), "add": Grant("!", ("text",)), "many": Grant("*!", ("a", "b"))}
        self.assertEqual(dbchannel.parse_grants(wire(dbchannel.grants(table))), table)

    def test_calls(self) -> None:
        entries = [dbchannel.call_entry(1, "recent", {"limit": 3}),
                   dbchannel.call_entry(2, "many", [dbvalues.check_params({"a": b"\x00", "b": None})])]
        calls = dbchannel.parse_calls(wire(dbchannel.calls(entries)))
        self.assertEqual(calls, [dbchannel.Call(1, "recent", {"limit": 3}),
                                 dbchannel.Call(2, "many", [{"a": {"b": "AA=="}, "b": None}])])

    def test_replies(self) -> None:
        entries = [dbchannel.reply_ok(7, dbvalues.dumps({"c": ["x"], "r": [[1]]})),
                   dbchannel.reply_error(8, dbchannel.FAILED, "UNIQUE constraint failed: names.name"),
                   dbchannel.reply_error(9, dbchannel.UNAVAILABLE, "x" * 5000)]
        replies = dbchannel.parse_replies(wire(dbchannel.replies(entries)))
        self.assertEqual(replies[0], dbchannel.Reply(7, "ok", {"c": ["x"], "r": [[1]]}))
        self.assertEqual(replies[1].status, "failed")
        self.assertEqual(len(replies[2].value), dbchannel.MAX_MESSAGE, "messages are cut")
        with self.assertRaises(ValueError):
            dbchannel.reply_error(1, "ok", "not an error")

    def test_large_batch_over_continuations(self) -> None:
        """A calls message larger than one datagram is joined back by the channel."""
        entries = [dbchannel.call_entry(i, "add", {"text": "x" * 100}) for i in range(2000)]
        self.assertEqual(len(dbchannel.parse_calls(wire(dbchannel.calls(entries)))), 2000)

    def test_limits(self) -> None:
        self.assertEqual(dbchannel.proxy_limit(1024 * 1024), 1024 * 1024)
        self.assertEqual(dbchannel.service_limit(8 * 1024 * 1024), 8 * 1024 * 1024 + dbchannel.REPLY_SLACK)


class MalformedTests(SynchronousTestCase):
    """A peer's mistakes are ChannelErrors, never crashes or silent acceptance."""

    def test_calls_only_from_a_service(self) -> None:
        for kind in (dbchannel.REPLIES, dbchannel.GRANTS, "sql"):
            with self.assertRaises(ChannelError):
                dbchannel.parse_calls(raw(kind, b"[]"))

    def test_bad_calls(self) -> None:
        for payload in (b"not json", b"{}", b'[[1, "q"]]', b'[[-1, "q", {}]]', b'[[true, "q", {}]]',
                        b'[[1.5, "q", {}]]', b'[[1, 2, {}]]', b'[[1, "", {}]]',
                        b'[[1, "' + b"q" * (dbchannel.MAX_NAME + 1) + b'", {}]]', b'[[1, "q", NaN]]'):
            with self.assertRaises(ChannelError, msg=payload[:40]):
                dbchannel.parse_calls(raw(dbchannel.CALLS, payload))

    def test_too_many_entries(self) -> None:
        payload = dbvalues.dumps([[i, "q", {}] for i in range(dbchannel.MAX_BATCH + 1)])
        with self.assertRaises(ChannelError):
            dbchannel.parse_calls(raw(dbchannel.CALLS, payload))

    def test_fds_refused(self) -> None:
        left, right = channel.socketpair()
        with left, right:
            with self.assertRaises(ChannelError):
                dbchannel.parse_calls(raw(dbchannel.CALLS, b"[]", (left.fileno(),)))
            with self.assertRaises(ChannelError):
                dbchannel.parse_grants(raw(dbchannel.GRANTS, b"{}", (left.fileno(),)))

    def test_bad_replies(self) -> None:
        for payload in (b'[[1, "maybe", 1]]', b'[[1, "failed", 3]]', b'[[1, "ok"]]', b"[1]"):
            with self.assertRaises(ChannelError, msg=payload):
                dbchannel.parse_replies(raw(dbchannel.REPLIES, payload))

    def test_bad_grants(self) -> None:
        for payload in (b"[]", b'{"q": ["#", []]}', b'{"q": ["", [1]]}', b'{"q": [""]}', b"junk"):
            with self.assertRaises(ChannelError, msg=payload):
                dbchannel.parse_grants(raw(dbchannel.GRANTS, payload))
