"""Unit tests for the handoff vocabulary (okws_twisted.wire.handoff)."""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire import handoff
from okws_twisted.wire.channel import ChannelError, Message


class HandoffTests(SynchronousTestCase):
    def test_connection_round_trip(self) -> None:
        meta = handoff.connection_meta(handoff.CONN, 7, IPv6Address("TCP", "::1", 4000), IPv4Address("TCP", "127.0.0.1", 80))
        conn = handoff.parse_connection(Message(handoff.CONN, meta, b"GET / HTTP/1.1\r\n", (9,)))
        self.assertEqual((conn.id, conn.fd, conn.data), (7, 9, b"GET / HTTP/1.1\r\n"))
        self.assertEqual(conn.peer, IPv6Address("TCP", "::1", 4000))
        self.assertEqual(conn.host, IPv4Address("TCP", "127.0.0.1", 80))

    def test_malformed(self) -> None:
        good = handoff.connection_meta(handoff.BACK, 1, IPv4Address("TCP", "1.2.3.4", 5), IPv4Address("TCP", "1.2.3.4", 6))
        self.assertRaises(ChannelError, handoff.parse_connection, Message(handoff.BACK, good, b"", ()))
        self.assertRaises(ChannelError, handoff.parse_connection, Message(handoff.BACK, good, b"", (1, 2)))
        self.assertRaises(ChannelError, handoff.parse_connection, Message(handoff.BACK, {"k": "back", "id": "x"}, b"", (3,)))
        self.assertRaises(ChannelError, handoff.parse_ids, Message(handoff.ACK, {"k": "ack", "ids": ["1"]}))
        self.assertEqual(handoff.parse_ids(Message(handoff.ACK, {"k": "ack", "ids": [1, 2]})), [1, 2])
