"""Tests for L{okws_twisted.wire.relay.Splice}, the one relay (TLS front, dispatcher)."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire.relay import Splice


class SpliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a, self.b = StringTransport(), StringTransport()
        self.splice = Splice(self.a, self.b)

    def test_forwards(self) -> None:
        self.splice.from_a(b"request")
        self.splice.from_b(b"response")
        self.assertEqual((self.b.value(), self.a.value()), (b"request", b"response"))

    def test_eachTheOthersProducer(self) -> None:
        """A side whose write buffer is full pauses reading from the other; draining resumes it."""
        self.assertTrue(self.b.streaming)
        self.b.producer.pauseProducing()  # b cannot take more
        self.assertEqual((self.a.producerState, self.b.producerState), ("paused", "producing"))
        self.b.producer.resumeProducing()
        self.assertEqual(self.a.producerState, "producing")
        self.a.producer.pauseProducing()
        self.assertEqual((self.a.producerState, self.b.producerState), ("producing", "paused"))

    def test_holdAndBackPressure(self) -> None:
        """Reading resumes only when neither the owner's hold nor back-pressure holds it."""
        self.splice.hold(self.a)
        self.assertEqual(self.a.producerState, "paused")
        self.b.producer.pauseProducing()
        self.b.producer.resumeProducing()
        self.assertEqual(self.a.producerState, "paused")  # still held
        self.b.producer.pauseProducing()
        self.splice.release(self.a)
        self.assertEqual(self.a.producerState, "paused")  # still pushed back
        self.b.producer.resumeProducing()
        self.assertEqual(self.a.producerState, "producing")

    def test_lostClosesTheOther(self) -> None:
        self.splice.lost(self.a)
        self.assertTrue(self.b.disconnecting)
        self.assertFalse(self.a.disconnecting)
        self.assertIsNone(self.a.producer)
        self.assertIsNone(self.b.producer)

    def test_part(self) -> None:
        """Parted, both stay open and neither pauses the other; holds no longer act."""
        self.splice.part()
        self.assertIsNone(self.a.producer)
        self.assertIsNone(self.b.producer)
        self.assertFalse(self.a.disconnecting or self.b.disconnecting)
        self.splice.part()  # twice is harmless

    def test_ownForwarding(self) -> None:
        """An owner with rules of its own sees the bytes instead of the other side."""
        seen: list[bytes] = []
        splice = Splice(StringTransport(), StringTransport(), a_to_b=seen.append)
        splice.from_a(b"x")
        self.assertEqual(seen, [b"x"])
        self.assertEqual(splice.b.value(), b"")
