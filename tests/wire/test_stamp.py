"""Tests for L{okws_twisted.wire.stamp}: the Date and Server fields of okws's responses."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import datetimeToString

from okws_twisted.wire.stamp import ResponseStamp, http_date


class HttpDateTests(SynchronousTestCase):
    def test_rfc9110Example(self) -> None:
        self.assertEqual(http_date(784111777), b"Sun, 06 Nov 1994 08:49:37 GMT")

    def test_agreesWithTwisted(self) -> None:
        for t in (0, 784111777, 951782400, 1_000_012_345, 1_709_210_096, 4102444800, 4107542399):
            self.assertEqual(http_date(t), datetimeToString(t), t)


class ResponseStampTests(SynchronousTestCase):
    def test_formattedOncePerSecond(self) -> None:
        clock = Clock()
        clock.advance(784111777)
        stamp = ResponseStamp(clock, "okws-twisted")
        first = stamp.fields()
        clock.advance(0.99)
        self.assertIs(stamp.fields(), first, "the same bytes within the second")
        self.assertEqual(first, b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: okws-twisted\r\n")
        clock.advance(0.01)
        self.assertEqual(stamp.date(), b"Sun, 06 Nov 1994 08:49:38 GMT")

    def test_noServer(self) -> None:
        stamp = ResponseStamp(Clock(), "")
        self.assertIsNone(stamp.server)
        self.assertEqual(stamp.fields(), b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n")
