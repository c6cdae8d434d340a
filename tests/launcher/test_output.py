"""Unit tests for the launcher's bound on a child's output (L{okws_twisted.launcher.output})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.launcher.output import CUT, OutputLimiter


class OutputLimiterTests(SynchronousTestCase):
    def test_lines_across_reads_and_streams(self) -> None:
        out = OutputLimiter(0.0)
        self.assertEqual(out.feed(1, b"hel", 0.0), [])
        self.assertEqual(out.feed(2, b"err\nor", 0.0), ["err"])
        self.assertEqual(out.feed(1, b"lo\r\nworld\n", 0.0), ["hello", "world"])
        self.assertEqual(out.flush(0.0), ["or"])
        self.assertEqual((out.dropped_bytes, out.dropped_lines), (0, 0))

    def test_long_line_is_cut_once_and_its_rest_dropped(self) -> None:
        out = OutputLimiter(0.0, line_max=10)
        self.assertEqual(out.feed(1, b"0123456789abc", 0.0), ["0123456789" + CUT])
        self.assertEqual(out.feed(1, b"d" * 1000, 0.0), [])
        self.assertEqual(out.feed(1, b"e\nnext\n", 0.0), ["next"])
        self.assertEqual(out.dropped_bytes, 3 + 1000 + 1)
        self.assertEqual(out.dropped_lines, 0)

    def test_a_line_of_exactly_the_limit_is_whole(self) -> None:
        out = OutputLimiter(0.0, line_max=4)
        self.assertEqual(out.feed(1, b"abcd", 0.0), [])
        self.assertEqual(out.feed(1, b"\n", 0.0), ["abcd"])

    def test_rate_drops_whole_lines_and_refills(self) -> None:
        out = OutputLimiter(0.0, rate=100, line_max=1000)
        line = b"x" * 49 + b"\n"  # 50 bytes with its newline
        self.assertEqual(len(out.feed(1, line * 5, 0.0)), 2)
        self.assertEqual((out.dropped_bytes, out.dropped_lines), (3 * 49, 3))
        self.assertEqual(len(out.feed(1, line, 0.25)), 0)  # 25 bytes back: not enough
        self.assertEqual(len(out.feed(1, line * 3, 1.25)), 2)  # a full bucket, not more
        self.assertEqual(out.dropped_lines, 5)

    def test_flood_holds_at_most_one_line(self) -> None:
        out = OutputLimiter(0.0)
        chunk = b"f" * 65536
        logged = 0
        for i in range(3200):  # 200 MiB without a newline
            logged += sum(map(len, out.feed(1, chunk, i / 1000)))
        self.assertLessEqual(logged, 8 * 1024 + len(CUT))
        self.assertEqual(out.dropped_bytes, 3200 * 65536 - 8 * 1024)
        self.assertLessEqual(len(out._streams[1].line), 8 * 1024)

    def test_report_is_what_was_dropped_since_the_last(self) -> None:
        out = OutputLimiter(0.0, rate=10)
        out.feed(1, b"x" * 20 + b"\n", 0.0)
        self.assertEqual(out.report(), (20, 1))
        self.assertEqual(out.report(), (0, 0))

    def test_undecodable_bytes_are_replaced(self) -> None:
        self.assertEqual(OutputLimiter(0.0).feed(1, b"\xff\n", 0.0), ["\ufffd"])
