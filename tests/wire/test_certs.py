"""Tests for L{okws_twisted.wire.certs}: the certificate a name gets, and the front's ``certs`` message."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire.certs import CERTS_MAX, CertificateTable, certs_message, choose, parse_certs
from okws_twisted.wire.channel import ChannelError, Message


class ChooseTests(SynchronousTestCase):
    NAMES = {"a.example": 1, "*.w.example": 2, "w.example": 3}

    def test_rules(self) -> None:
        self.assertEqual(choose(self.NAMES, "A.Example."), 1)
        self.assertEqual(choose(self.NAMES, "x.w.example"), 2)
        self.assertIsNone(choose(self.NAMES, "y.x.w.example"))  # one label only, as the TLS front
        self.assertEqual(choose(self.NAMES, "w.example"), 3)
        self.assertIsNone(choose(self.NAMES, "nobody"))

    def test_table(self) -> None:
        table = CertificateTable(dict(self.NAMES), 9)
        self.assertEqual(table.cert_for(b"x.w.example"), 2)
        self.assertEqual(table.cert_for(b"127.0.0.1"), 9)
        self.assertEqual(table.ids, {1, 2, 3, 9})


class MessageTests(SynchronousTestCase):
    def message(self, meta: dict[str, object], payload: bytes, fds: tuple[int, ...] = ()) -> Message:
        return Message(str(meta.get("k")), meta, payload, fds)

    def test_roundTrip(self) -> None:
        meta, payload = certs_message(2, {"a.example": 1}, 4)
        listener, table = parse_certs(self.message(meta, payload))
        self.assertEqual((listener, table.names, table.default), (2, {"a.example": 1}, 4))

    def test_refused(self) -> None:
        """What a compromised front could send is bounded and checked."""
        good = {"names": {"a": 1}, "default": 1}
        cases = [
            ({"k": "certs"}, good),
            ({"k": "certs", "listener": -1}, good),
            ({"k": "certs", "listener": True}, good),
            ({"k": "certs", "listener": 0}, {"names": {"a": 1}}),
            ({"k": "certs", "listener": 0}, {"names": [], "default": 1}),
            ({"k": "certs", "listener": 0}, {"names": {"a" * 256: 1}, "default": 1}),
            ({"k": "certs", "listener": 0}, {"names": {"": 1}, "default": 1}),
            ({"k": "certs", "listener": 0}, {"names": {"é": 1}, "default": 1}),
            ({"k": "certs", "listener": 0}, {"names": {"a": 1.5}, "default": 1}),
            ({"k": "certs", "listener": 0}, {"names": {"a": 2**60}, "default": 1}),
            ({"k": "certs", "listener": 0}, "junk"),
        ]
        for meta, document in cases:
            self.assertRaises(ChannelError, parse_certs, self.message(meta, json.dumps(document).encode()))
        self.assertRaises(ChannelError, parse_certs, self.message({"k": "certs", "listener": 0}, b"\xff"))
        self.assertRaises(ChannelError, parse_certs, self.message({"k": "certs", "listener": 0}, b" " * (CERTS_MAX + 1)))
        self.assertRaises(ChannelError, parse_certs, self.message({"k": "certs", "listener": 0}, json.dumps(good).encode(), (5,)))
