"""
Tests for L{okws_twisted.dispatcher.records}: the dispatcher's record of each handed-off connection.

L{ConnectionLedger} is pure logic, tested with plain values.  L{socket_identity}
is tested on real sockets: what the kernel says about a socket, its duplicate,
its copy passed over SCM_RIGHTS, and other sockets.
"""

from __future__ import annotations

import array
import os
import socket

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.dispatcher.records import ConnectionLedger, ConnectionRecord, HandbackRefused, socket_identity

PEER = IPv4Address("TCP", "192.0.2.7", 40001)
HOST = IPv4Address("TCP", "192.0.2.1", 80)
A, B = "instance a", "instance b"


def record(conn_id: int, holder: object = A, identity: int = 0) -> ConnectionRecord:
    return ConnectionRecord(conn_id, identity or 1000 + conn_id, PEER, HOST, None, holder)


class LedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ledger = ConnectionLedger()

    def held(self, conn_id: int, holder: object = A) -> ConnectionRecord:
        r = record(conn_id, holder)
        self.ledger.handed(r)
        self.assertTrue(self.ledger.acknowledged(holder, conn_id))
        return r

    def assertRefused(self, holder: object, conn_id: int, identity: object, why: str) -> None:
        e = self.assertRaises(HandbackRefused, self.ledger.take_back, holder, conn_id, identity)
        self.assertIn(why, str(e))

    def test_genuineHandbackTakenOnce(self) -> None:
        r = self.held(1)
        self.assertEqual(self.ledger.take_back(A, 1, r.identity), r)
        self.assertEqual((len(self.ledger), self.ledger.count(A)), (0, 0))
        self.assertRefused(A, 1, r.identity, "not held by any instance")

    def test_otherSocketRefused(self) -> None:
        r = self.held(1)
        self.assertRefused(A, 1, r.identity + 1, "is not that connection")
        self.assertRefused(A, 1, None, "is not a socket")
        self.assertIs(self.ledger.get(1), r)  # still A's

    def test_otherHoldersRefused(self) -> None:
        r = self.held(1, A)
        self.assertRefused(B, 1, r.identity, "held by another instance")
        self.assertEqual(self.ledger.count(A), 1)

    def test_unacknowledgedRefused(self) -> None:
        r = record(1)
        self.ledger.handed(r)
        self.assertRefused(A, 1, r.identity, "never acknowledged")
        self.assertFalse(self.ledger.acknowledged(B, 1))
        self.assertEqual(self.ledger.count(A), 1)

    def test_endedOnlyOwnAndAcknowledged(self) -> None:
        self.held(1, A)
        self.held(2, B)
        self.ledger.handed(record(3, A))  # not acknowledged yet
        self.assertEqual(self.ledger.ended(A, [1, 2, 3, 99]), 1)
        self.assertEqual((self.ledger.count(A), self.ledger.count(B)), (1, 1))

    def test_dropOnlyOwn(self) -> None:
        self.ledger.handed(record(1, A))
        self.assertFalse(self.ledger.drop(B, 1))
        self.assertTrue(self.ledger.drop(A, 1))
        self.assertEqual(len(self.ledger), 0)

    def test_holderGone(self) -> None:
        for i in range(5):
            self.held(i, A)
        self.held(9, B)
        self.assertEqual(self.ledger.holder_gone(A), 5)
        self.assertEqual((len(self.ledger), self.ledger.count(A)), (1, 0))
        self.assertRefused(A, 0, 1000, "not held by any instance")

    def test_sameIdTwiceIsABug(self) -> None:
        self.ledger.handed(record(1))
        self.assertRaises(ValueError, self.ledger.handed, record(1))

    def test_boundedOverManyConnections(self) -> None:
        """
        100,000 connections pass through two instances, one honest (reports
        each closed) and one that reports nothing: the records never outnumber
        what the instances hold, and the silent one's die with its channel.
        """
        cap = 50
        largest = 0
        for conn_id in range(100_000):
            holder = A if conn_id % 2 else B
            if holder == B and self.ledger.count(B) >= cap:
                continue  # at its cap: the pool gives it nothing more
            self.held(conn_id, holder)
            if holder == A:
                self.ledger.ended(A, [conn_id])
            largest = max(largest, len(self.ledger))
        self.assertLessEqual(largest, cap + 1)
        self.ledger.holder_gone(B)
        self.assertEqual(len(self.ledger), 0)
        self.assertEqual((self.ledger._held, self.ledger._acked), ({}, set()))


class SocketIdentityTests(SynchronousTestCase):
    def pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, b

    def test_sameSocketSameIdentity(self) -> None:
        """A socket, its duplicate and its copy passed to another socket's reader: one identity."""
        a, other = self.pair()
        dup = os.dup(a.fileno())
        self.addCleanup(os.close, dup)
        x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(x.close)
        self.addCleanup(y.close)
        x.sendmsg([b"m"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [a.fileno()]))])
        _data, anc, _flags, _addr = y.recvmsg(10, socket.CMSG_SPACE(4))
        passed = array.array("i")
        passed.frombytes(anc[0][2])
        self.addCleanup(os.close, passed[0])
        identity = socket_identity(a.fileno())
        self.assertEqual(socket_identity(dup), identity)
        self.assertEqual(socket_identity(passed[0]), identity)
        self.assertNotEqual(socket_identity(other.fileno()), identity)
        a.close()
        self.assertEqual(socket_identity(passed[0]), identity)  # the copy outlives the original

    def test_newSocketsNeverRepeat(self) -> None:
        seen = set()
        for _ in range(20):
            a, b = socket.socketpair()
            seen.update((socket_identity(a.fileno()), socket_identity(b.fileno())))
            a.close()
            b.close()
        self.assertEqual(len(seen), 40)

    def test_tcpConnection(self) -> None:
        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        self.assertIsInstance(socket_identity(accepted.fileno()), int)
        self.assertNotEqual(socket_identity(accepted.fileno()), socket_identity(client.fileno()))

    def test_socketObjectSameAsItsDescriptor(self) -> None:
        """Given the socket object (the dispatcher's hot path) or its descriptor: the same identity."""
        a, b = self.pair()
        self.assertEqual(socket_identity(a), socket_identity(a.fileno()))
        self.assertNotEqual(socket_identity(a), socket_identity(b))
        self.assertGreaterEqual(a.fileno(), 0)  # read through, not detached

    def test_notASocket(self) -> None:
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.assertRaises(OSError, socket_identity, r)
        os.fstat(r)  # still open: the caller closes it
