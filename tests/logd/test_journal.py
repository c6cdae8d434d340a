"""
Tests for L{okws_twisted.logd.journal}: recovering exactly-once state after the log daemon dies at any point.

The pure planner (L{plan}) is tested with invented file states; L{Journal}
with real files in a temporary directory, cut the way a kill -9 would leave
them.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.logd.journal import (
    JOURNAL_NAME,
    Entry,
    Found,
    Journal,
    Write,
    compacted,
    encode,
    parse,
    plan,
)


def at(sizes: dict[tuple[int, int], Found]):
    return lambda write: sizes.get((write.dev, write.ino))


A1 = Entry("r/hello.0/1/10", 1, 5, (Write("access.log", 1, 100, 0, 50),))
B1 = Entry("r/dispatcher/1/11", 1, 2, (Write("access.log", 1, 100, 50, 20), Write("error.log", 1, 200, 0, 30)))
A2 = Entry("r/hello.0/1/10", 6, 9, (Write("access.log", 1, 100, 70, 40), Write("error.log", 1, 200, 30, 10)))


class EncodingTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        data = b"".join(encode(e) for e in (A1, B1, A2, Entry("x", 7, 7)))
        entries, bad = parse(data)
        self.assertEqual(entries, [A1, B1, A2, Entry("x", 7, 7)])
        self.assertEqual(bad, 0)

    def test_tornLastLineIgnored(self) -> None:
        """The daemon died while writing a journal line: that batch had not started."""
        line = encode(A2)
        entries, bad = parse(encode(A1) + line[: len(line) // 2])
        self.assertEqual((entries, bad), ([A1], 1))

    def test_garbageLinesSkipped(self) -> None:
        for junk in (b"{}", b"[1]", b"not json", b'{"s":"x","z":-1}', b'{"s":"x","z":1,"w":[["../etc",1,1,0,1]]}'):
            entries, bad = parse(encode(A1) + junk + b"\n" + encode(B1))
            self.assertEqual((entries, bad), ([A1, B1], 1), junk)


class PlanTests(SynchronousTestCase):
    def test_empty(self) -> None:
        recovery = plan([], at({}))
        self.assertEqual((recovery.watermarks, recovery.truncate, recovery.rolled_back), ({}, [], None))

    def test_lastBatchComplete(self) -> None:
        """Killed after writing, before acknowledging: the records are in; skip them when resent."""
        sizes = {(1, 100): Found("access.log", 110), (1, 200): Found("error.log", 40)}
        recovery = plan([A1, B1, A2], at(sizes))
        self.assertEqual(recovery.watermarks, {"r/hello.0/1/10": 9, "r/dispatcher/1/11": 2})
        self.assertEqual(recovery.truncate, [])
        self.assertIsNone(recovery.rolled_back)

    def test_lastBatchPartlyWritten(self) -> None:
        """Killed in the middle of a batch: cut every file back; the sender resends it."""
        sizes = {(1, 100): Found("access.log", 110), (1, 200): Found("error.log", 35)}
        recovery = plan([A1, B1, A2], at(sizes))
        self.assertEqual(recovery.watermarks, {"r/hello.0/1/10": 5, "r/dispatcher/1/11": 2})
        self.assertEqual(recovery.truncate, [("access.log", 70), ("error.log", 30)])
        self.assertEqual(recovery.rolled_back, A2)

    def test_lastBatchNotStarted(self) -> None:
        sizes = {(1, 100): Found("access.log", 70), (1, 200): Found("error.log", 30)}
        recovery = plan([A1, B1, A2], at(sizes))
        self.assertEqual(recovery.watermarks["r/hello.0/1/10"], 5)
        self.assertEqual(recovery.truncate, [])
        self.assertEqual(recovery.rolled_back, A2)

    def test_firstBatchOfSenderRolledBack(self) -> None:
        sizes = {(1, 100): Found("access.log", 10)}
        recovery = plan([A1], at(sizes))
        self.assertEqual(recovery.watermarks, {"r/hello.0/1/10": 0})
        self.assertEqual(recovery.truncate, [("access.log", 0)])

    def test_fileMovedButFound(self) -> None:
        """logrotate renamed the file after the batch: it is checked under its new name."""
        sizes = {(1, 100): Found("access.log.1", 90), (1, 200): Found("error.log", 40)}
        recovery = plan([A1, B1, A2], at(sizes))
        self.assertEqual(recovery.truncate, [("access.log.1", 70), ("error.log", 30)])

    def test_fileGone(self) -> None:
        """A part whose file left the directory cannot be checked: assumed written, reported."""
        sizes = {(1, 200): Found("error.log", 40)}
        recovery = plan([A1, B1, A2], at(sizes))
        self.assertEqual(recovery.watermarks["r/hello.0/1/10"], 9)
        self.assertEqual(recovery.unverified, [A2.writes[0]])
        self.assertEqual(recovery.truncate, [])

    def test_fileTruncatedExternally(self) -> None:
        """A file now shorter than the batch's offset is never extended by a 'truncate'."""
        sizes = {(1, 100): Found("access.log", 0), (1, 200): Found("error.log", 40)}
        recovery = plan([A1, B1, A2], at(sizes))
        self.assertEqual(recovery.truncate, [("error.log", 30)])

    def test_watermarkLines(self) -> None:
        recovery = plan([Entry("a", 50, 50), Entry("b", 3, 3), Entry("a", 51, 60)], at({}))
        self.assertEqual(recovery.watermarks, {"a": 60, "b": 3})

    def test_compacted(self) -> None:
        data = compacted({"run1/a/1/5": 7, "run2/b/1/6": 9}, lambda key: key.startswith("run2/"))
        self.assertEqual(parse(data), ([Entry("run2/b/1/6", 9, 9)], 0))


class JournalFileTests(SynchronousTestCase):
    """L{Journal} on real files, left the way a killed daemon leaves them."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def write(self, name: str, data: bytes) -> Write:
        path = os.path.join(self.dir, name)
        with open(path, "ab") as f:
            offset = f.tell()
            f.write(data)
        st = os.stat(path)
        return Write(name, st.st_dev, st.st_ino, offset, len(data))

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.read()

    def journal(self, *entries: Entry, tail: bytes = b"") -> None:
        with open(os.path.join(self.dir, JOURNAL_NAME), "wb") as f:
            f.write(b"".join(encode(e) for e in entries) + tail)

    def test_noJournal(self) -> None:
        journal = Journal(self.dir)
        recovery = journal.recover(lambda key: True)
        self.assertEqual(recovery.watermarks, {})
        self.assertEqual(self.read(JOURNAL_NAME), b"")
        journal.record(A1)
        journal.close()
        self.assertEqual(self.read(JOURNAL_NAME), encode(A1))

    def test_partialBatchCut(self) -> None:
        first = self.write("access.log", b"line 1\nline 2\n")
        second = self.write("access.log", b"line 3\nline 4\n")
        err = self.write("error.log", b"e\n")
        # The daemon died half-way through the second batch's access.log part.
        torn = Write(second.name, second.dev, second.ino, second.offset, second.length + 20)
        self.journal(Entry("r/s/1/1", 1, 2, (first,)), Entry("r/s/1/1", 3, 6, (torn, Write("error.log", err.dev, err.ino, 2, 5))))
        journal = Journal(self.dir)
        recovery = journal.recover(lambda key: True)
        journal.close()
        self.assertEqual(self.read("access.log"), b"line 1\nline 2\n")
        self.assertEqual(self.read("error.log"), b"e\n")
        self.assertEqual(recovery.watermarks, {"r/s/1/1": 2})
        # The journal was compacted to the watermarks.
        self.assertEqual(parse(self.read(JOURNAL_NAME))[0], [Entry("r/s/1/1", 2, 2)])

    def test_completeBatchKept(self) -> None:
        first = self.write("access.log", b"line 1\n")
        self.journal(Entry("r/s/1/1", 1, 1, (first,)), tail=b'{"s":"r/s/1/1","z":9,"a":2,"w":[["acc')
        journal = Journal(self.dir)
        recovery = journal.recover(lambda key: True)
        journal.close()
        self.assertEqual(self.read("access.log"), b"line 1\n")
        self.assertEqual(recovery.watermarks, {"r/s/1/1": 1})

    def test_movedFileFoundByInode(self) -> None:
        part = self.write("access.log", b"complete\npart")
        torn = Write(part.name, part.dev, part.ino, 9, 10)
        os.rename(os.path.join(self.dir, "access.log"), os.path.join(self.dir, "access.log.1"))
        self.write("access.log", b"new file\n")
        self.journal(Entry("r/s/1/1", 4, 4, (torn,)))
        journal = Journal(self.dir)
        recovery = journal.recover(lambda key: True)
        journal.close()
        self.assertEqual(self.read("access.log.1"), b"complete\n")
        self.assertEqual(self.read("access.log"), b"new file\n")
        self.assertEqual(recovery.truncate, [("access.log.1", 9)])

    def test_otherRunsForgotten(self) -> None:
        self.journal(Entry("old/s/1/1", 5, 5), Entry("new/s/1/2", 7, 7))
        journal = Journal(self.dir)
        recovery = journal.recover(lambda key: key.startswith("new/"))
        journal.close()
        self.assertEqual(recovery.watermarks, {"old/s/1/1": 5, "new/s/1/2": 7})
        self.assertEqual(parse(self.read(JOURNAL_NAME))[0], [Entry("new/s/1/2", 7, 7)])

    def test_rewriteWhenLarge(self) -> None:
        journal = Journal(self.dir)
        journal.recover(lambda key: True)
        while not journal.large:
            journal.record(A1)
        journal.rewrite({"r/s/1/1": 5}, lambda key: True)
        journal.record(A2)
        journal.close()
        self.assertFalse(journal.large)
        self.assertEqual(parse(self.read(JOURNAL_NAME))[0], [Entry("r/s/1/1", 5, 5), A2])
        self.assertFalse(os.path.exists(os.path.join(self.dir, JOURNAL_NAME + ".new")))
