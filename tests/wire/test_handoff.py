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

    def test_batch_round_trip(self) -> None:
        peer, host = IPv6Address("TCP", "::1", 4000), IPv4Address("TCP", "127.0.0.1", 80)
        meta = handoff.batch_meta([handoff.batch_entry(7, peer, host, 3), handoff.batch_entry(8, host, peer, 0)])
        conns = handoff.parse_batch(Message(handoff.CONNS, meta, b"GET", (9, 10)))
        self.assertEqual([(c.id, c.fd, c.data, c.peer, c.host) for c in conns], [(7, 9, b"GET", peer, host), (8, 10, b"", host, peer)])
        self.assertEqual(handoff.batch_ids(Message(handoff.CONNS, meta, b"GET", (9, 10))), [7, 8])

    def test_batch_malformed(self) -> None:
        addr = IPv4Address("TCP", "1.2.3.4", 5)
        two = [handoff.batch_entry(1, addr, addr, 1), handoff.batch_entry(2, addr, addr, 1)]
        bad = [
            Message(handoff.CONNS, handoff.batch_meta(two), b"ab", (3,)),  # one fd: a conns message has 2 or more
            Message(handoff.CONNS, handoff.batch_meta(two + [handoff.batch_entry(3, addr, addr, 0)]), b"ab", (3, 4)),
            Message(handoff.CONNS, handoff.batch_meta(two), b"abc", (3, 4)),  # sizes short of the payload
            Message(handoff.CONNS, handoff.batch_meta(two), b"a", (3, 4)),  # and past it
            Message(handoff.CONNS, handoff.batch_meta([two[0], [2, {}, [], 1]]), b"ab", (3, 4)),
            Message(handoff.CONNS, handoff.batch_meta([two[0], [2, ["tcp", "x", 1], ["tcp", "x", 1], -1]]), b"ab", (3, 4)),
            Message(handoff.CONNS, handoff.batch_meta([two[0], [True]]), b"ab", (3, 4)),
            Message(handoff.CONNS, {"k": handoff.CONNS}, b"ab", (3, 4)),
            Message(handoff.CONNS, handoff.batch_meta(two), b"ab", (3, 4), fds_lost=True),
            Message(handoff.CONNS, handoff.batch_meta(two * 9), b"", tuple(range(3, 21))),  # past MAX_BATCH
        ]
        for msg in bad:
            self.assertRaises(ChannelError, handoff.parse_batch, msg)
