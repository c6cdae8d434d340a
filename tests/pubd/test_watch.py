"""
Tests for L{okws_twisted.pubd.watch}: snapshots of a real template tree,
their differences, and the watcher by polling (on a fake clock) and by
inotify (on the real reactor, waiting for its report with a bound).
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from okws_twisted.pubd.watch import TemplateWatcher, diff, scan


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class DiffTests(SynchronousTestCase):
    def test_diff(self) -> None:
        old = {"a": (1, 1, 1, 1, 1), "b": (1, 2, 1, 1, 1), "c": (1, 3, 1, 1, 1)}
        new = {"a": (1, 1, 1, 1, 1), "b": (1, 2, 9, 1, 1), "d": (1, 4, 1, 1, 1)}
        self.assertEqual(diff(old, new), ["b", "c", "d"])
        self.assertEqual(diff(new, new), [])


class ScanTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = self.mktemp()
        os.makedirs(base)
        self.base = os.path.realpath(base)
        self.root = os.path.join(self.base, "t")
        write(os.path.join(self.root, "a.html"), "a")
        write(os.path.join(self.root, "errors", "404.html"), "e")
        write(os.path.join(self.base, "outside", "x.html"), "x")

    def test_files(self) -> None:
        snap = scan(self.root)
        self.assertEqual(sorted(snap.files), ["a.html", "errors/404.html"])
        self.assertEqual(sorted(snap.directories), [self.root, os.path.join(self.root, "errors")])
        self.assertFalse(snap.truncated)

    def test_hiddenSkipped(self) -> None:
        write(os.path.join(self.root, ".a.html.swp"), "x")
        write(os.path.join(self.root, ".git", "config"), "x")
        self.assertEqual(sorted(scan(self.root).files), ["a.html", "errors/404.html"])

    def test_linksInsideFollowedOnce(self) -> None:
        os.symlink("errors", os.path.join(self.root, "current"))
        os.symlink(".", os.path.join(self.root, "errors", "again"))  # a loop
        os.symlink("a.html", os.path.join(self.root, "alias.html"))
        snap = scan(self.root)
        self.assertIn("alias.html", snap.files)
        self.assertEqual(len([n for n in snap.files if n.endswith("404.html")]), 1)
        self.assertEqual(snap.files["alias.html"], snap.files["a.html"])

    def test_linksOutSkipped(self) -> None:
        os.symlink(os.path.join(self.base, "outside"), os.path.join(self.root, "out"))
        os.symlink(os.path.join(self.base, "outside", "x.html"), os.path.join(self.root, "x.html"))
        os.symlink("nowhere", os.path.join(self.root, "dangling.html"))
        self.assertEqual(sorted(scan(self.root).files), ["a.html", "errors/404.html"])

    def test_signatureChanges(self) -> None:
        before = scan(self.root).files
        write(os.path.join(self.root, "a.html"), "longer now")
        self.assertEqual(diff(before, scan(self.root).files), ["a.html"])

    def test_bounded(self) -> None:
        for i in range(10):
            write(os.path.join(self.root, "many", f"{i}.html"), "")
        snap = scan(self.root, max_files=5)
        self.assertEqual(len(snap.files), 5)
        self.assertTrue(snap.truncated)

    def test_noRoot(self) -> None:
        self.assertEqual(scan(os.path.join(self.base, "none")).files, {})
        self.assertEqual(scan(os.path.join(self.root, "a.html")).files, {})


class PollingTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = self.mktemp()
        os.makedirs(base)
        self.root = os.path.join(os.path.realpath(base), "t")
        write(os.path.join(self.root, "a.html"), "a")
        self.clock = Clock()
        self.seen: list[list[str]] = []
        self.watcher = TemplateWatcher(self.clock, self.root, self.seen.append, poll_interval=1.0, use_inotify=False)
        self.assertEqual(self.watcher.start(), "polling")
        self.addCleanup(self.watcher.stop)

    def test_change(self) -> None:
        write(os.path.join(self.root, "a.html"), "changed!")
        write(os.path.join(self.root, "sub", "b.html"), "b")
        self.clock.advance(0.9)
        self.assertEqual(self.seen, [])
        self.clock.advance(0.1)
        self.assertEqual(self.seen, [["a.html", "sub/b.html"]])
        self.clock.advance(1.0)
        self.assertEqual(len(self.seen), 1)

    def test_rootAppears(self) -> None:
        shutil.rmtree(self.root)
        self.clock.advance(1.0)
        self.assertEqual(self.seen, [["a.html"]])
        write(os.path.join(self.root, "new.html"), "n")
        self.clock.advance(1.0)
        self.assertEqual(self.seen[-1], ["new.html"])

    def test_stop(self) -> None:
        self.watcher.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class InotifyTests(TestCase):
    """The inotify watcher on the real reactor; each wait is bounded by the test timeout."""

    timeout = 15

    def setUp(self) -> None:
        base = self.mktemp()
        os.makedirs(base)
        self.base = os.path.realpath(base)
        self.root = os.path.join(self.base, "t")
        write(os.path.join(self.root, "a.html"), "a")
        write(os.path.join(self.root, "sub", "b.html"), "b")
        self.reports: list[list[str]] = []
        self.waiting: Deferred[list[str]] | None = None
        self.watcher = TemplateWatcher(reactor, self.root, self._changed, poll_interval=3600)
        self.addCleanup(self.watcher.stop)
        if self.watcher.start() != "inotify":
            raise self.skipTest("inotify is not available here")

    def _changed(self, names: list[str]) -> None:
        self.reports.append(names)
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(names)

    def next_report(self) -> Deferred[list[str]]:
        self.waiting = Deferred()
        return self.waiting

    async def test_modify(self) -> None:
        report = self.next_report()
        write(os.path.join(self.root, "a.html"), "edited")
        self.assertEqual(await report, ["a.html"])

    async def test_newDirectoryWatched(self) -> None:
        report = self.next_report()
        write(os.path.join(self.root, "new", "c.html"), "c")
        self.assertIn("new/c.html", await report)
        report = self.next_report()
        write(os.path.join(self.root, "new", "c.html"), "c, edited")
        self.assertEqual(await report, ["new/c.html"])

    async def test_deletedDirectoryDoesNotEndWatching(self) -> None:
        """Removing one subdirectory must not stop the rest from being watched."""
        report = self.next_report()
        shutil.rmtree(os.path.join(self.root, "sub"))
        self.assertEqual(await report, ["sub/b.html"])
        report = self.next_report()
        write(os.path.join(self.root, "a.html"), "still watched")
        self.assertEqual(await report, ["a.html"])

    async def test_rootReplaced(self) -> None:
        """A deploy that renames a new tree into place is seen, and the new tree watched."""
        fresh = os.path.join(self.base, "fresh")
        write(os.path.join(fresh, "a.html"), "a, new release")
        report = self.next_report()
        os.rename(self.root, os.path.join(self.base, "old"))
        os.rename(fresh, self.root)
        names = await report
        while "a.html" not in names or "sub/b.html" not in names:
            names = names + await self.next_report()
        report = self.next_report()
        write(os.path.join(self.root, "a.html"), "edited in the new tree")
        self.assertEqual(await report, ["a.html"])
