"""
Tests for L{okws_twisted.service.templatecache}: what a service knows about each
template name, and when it must ask again.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.service.templatecache import TemplateCache
from okws_twisted.wire.templatechannel import Absent, Source


def src(name: str, text: str) -> Source:
    return Source(name, text, f"etag-{text}")


class CacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cache = TemplateCache(max_absent=3)

    def test_empty(self) -> None:
        self.assertIsNone(self.cache.lookup("a"))
        self.assertIsNone(self.cache.version("a"))
        self.assertIsNone(self.cache.absence("a"))
        self.assertFalse(self.cache.settled("a"))

    def test_store(self) -> None:
        self.assertTrue(self.cache.store(src("a", "one")))
        held = self.cache.lookup("a")
        assert held is not None
        self.assertEqual(held[0].text, "one")
        self.assertEqual(held[1], self.cache.version("a"))
        self.assertTrue(self.cache.settled("a"))

    def test_sameTextKeepsVersion(self) -> None:
        """The same text again (same etag) needs no recompiling."""
        self.cache.store(src("a", "one"))
        version = self.cache.version("a")
        self.cache.invalidate(["a"])
        self.assertFalse(self.cache.store(src("a", "one")))
        self.assertEqual(self.cache.version("a"), version)
        self.assertTrue(self.cache.settled("a"))

    def test_newTextNewVersion(self) -> None:
        self.cache.store(src("a", "one"))
        self.cache.store(src("b", "x"))
        version = self.cache.version("a")
        self.assertTrue(self.cache.store(src("a", "two")))
        self.assertNotEqual(self.cache.version("a"), version)
        self.assertNotEqual(self.cache.version("a"), self.cache.version("b"))

    def test_invalidateMakesStaleNotGone(self) -> None:
        """A changed template is fetched again, but still held for when the publisher is away."""
        self.cache.store(src("a", "one"))
        self.assertEqual(self.cache.invalidate(["a", "unknown"]), 1)
        self.assertFalse(self.cache.settled("a"))
        held = self.cache.lookup("a")
        assert held is not None
        self.assertEqual(held[0].text, "one")
        self.assertEqual(self.cache.invalidate(["a"]), 0)

    def test_absence(self) -> None:
        self.cache.store(src("a", "one"))
        self.cache.store_absent(Absent("a", "no such template"))
        self.assertIsNone(self.cache.lookup("a"))
        self.assertIsNone(self.cache.version("a"))
        self.assertEqual(self.cache.absence("a"), Absent("a", "no such template"))
        self.assertTrue(self.cache.settled("a"))
        self.assertEqual(self.cache.invalidate(["a"]), 1)
        self.assertIsNone(self.cache.absence("a"))
        self.assertFalse(self.cache.settled("a"))

    def test_sourceReplacesAbsence(self) -> None:
        self.cache.store_absent(Absent("a", "no such template"))
        self.cache.store(src("a", "now"))
        self.assertIsNone(self.cache.absence("a"))

    def test_absencesBounded(self) -> None:
        """Names may come from requests: the oldest absences are forgotten."""
        for i in range(5):
            self.cache.store_absent(Absent(f"n{i}", "no"))
        self.assertEqual([self.cache.absence(f"n{i}") is not None for i in range(5)], [False, False, True, True, True])

    def test_invalidateAll(self) -> None:
        self.cache.store(src("a", "one"))
        self.cache.store(src("b", "two"))
        self.cache.store_absent(Absent("c", "no"))
        self.cache.invalidate_all()
        self.assertEqual([self.cache.settled(n) for n in "abc"], [False, False, False])
        self.assertIsNotNone(self.cache.lookup("a"))
        self.assertEqual(sorted(self.cache.names()), ["a", "b"])
