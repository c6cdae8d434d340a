# -*- test-case-name: tests.logd.test_journal -*-
"""
The log daemon's journal (new in okws; OKWS's oklogd had none): each record written once.

Senders keep every record until the daemon acknowledges it and send the
unacknowledged ones again to a relaunched daemon, so a record can arrive
twice.  The journal lets a daemon that was killed at any instant know which
records are already in the files.  Before it appends one batch of one sender
to the log files, the daemon appends one line here::

    {"s": SENDER, "a": FIRST_SEQ, "z": LAST_SEQ, "w": [[FILE, DEV, INODE, OFFSET, LENGTH], ...]}

The batch's writes come after the line and the next line comes after the
writes, so only the batch of the journal's last line can be incomplete.  On
start-up (L{plan}): every earlier batch is complete; the last one is complete
if each file it wrote to reaches OFFSET + LENGTH, otherwise every part of it
is cut off again (truncated to OFFSET) and its records are written when the
sender sends them again.  The highest complete sequence number of each
sender is its watermark: records at or below it are not written again.

A file is found by its inode, so a batch written just before an external
``mv`` (logrotate) is still checked in the moved file.  Watermark-only lines
(``{"s": SENDER, "z": LAST_SEQ}``) carry the state over a compaction, which
rewrites the journal (atomically, by rename) when it grows.

The daemon writes with plain C{write(2)} and no C{fsync}: what a killed
process wrote is in the kernel's page cache, so the guarantee holds across
any process crash, not across a power loss.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

JOURNAL_NAME = ".okws-logd.journal"
#: Compact the journal once it is larger than this.
COMPACT_AFTER = 1024 * 1024


@dataclass(frozen=True)
class Write:
    """One file's part of a batch: where it starts and how long it is."""

    name: str
    dev: int
    ino: int
    offset: int
    length: int


@dataclass(frozen=True)
class Entry:
    """One journal line: records C{first}..C{last} of C{sender}, and where they went."""

    sender: str
    first: int
    last: int
    writes: tuple[Write, ...] = ()


@dataclass(frozen=True)
class Found:
    """Where a journalled file is now (its name in the log directory) and its size."""

    name: str
    size: int


@dataclass
class Recovery:
    """What start-up must do and what it learnt.

    @ivar watermarks: per sender, the highest sequence number in the files.
    @ivar truncate: C{(name, offset)}: cut the file back to C{offset}.
    @ivar rolled_back: the last batch, if it was incomplete and is undone.
    @ivar unverified: parts of the last batch whose file is no longer in
        the log directory (moved away or compressed): assumed written.
    """

    watermarks: dict[str, int] = field(default_factory=dict)
    truncate: list[tuple[str, int]] = field(default_factory=list)
    rolled_back: Entry | None = None
    unverified: list[Write] = field(default_factory=list)


def encode(entry: Entry) -> bytes:
    """The journal line for C{entry}."""
    document: dict[str, object] = {"s": entry.sender, "z": entry.last}
    if entry.writes:
        document["a"] = entry.first
        document["w"] = [[w.name, w.dev, w.ino, w.offset, w.length] for w in entry.writes]
    return json.dumps(document, separators=(",", ":")).encode("utf-8") + b"\n"


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _decode(line: bytes) -> Entry:
    document = json.loads(line)
    if not isinstance(document, dict) or not isinstance(document.get("s"), str):
        raise ValueError("not a journal entry")
    last = _int(document.get("z"))
    writes = []
    for item in document.get("w", []):
        name, dev, ino, offset, length = item
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad file name {name!r}")
        writes.append(Write(name, _int(dev), _int(ino), _int(offset), _int(length)))
    first = _int(document.get("a", last))
    return Entry(document["s"], first, last, tuple(writes))


def parse(data: bytes) -> tuple[list[Entry], int]:
    """The entries of a journal, and how many lines were unreadable.

    A line without its newline (the daemon died while writing it) is
    unreadable and so is ignored: its batch had not started.
    """
    entries: list[Entry] = []
    bad = 0
    lines = data.split(b"\n")
    for line in lines[:-1]:
        if not line:
            continue
        try:
            entries.append(_decode(line))
        except (ValueError, TypeError, KeyError):
            bad += 1
    if lines[-1]:
        bad += 1
    return entries, bad


def plan(entries: list[Entry], locate: Callable[[Write], Found | None]) -> Recovery:
    """Decide, from the journal and the files as they are, how to recover.

    C{locate} finds the file a write went to (by inode) and its size now.
    """
    recovery = Recovery()
    marks = recovery.watermarks
    if not entries:
        return recovery
    for entry in entries[:-1]:
        marks[entry.sender] = max(marks.get(entry.sender, 0), entry.last)
    last = entries[-1]
    found: list[tuple[Write, Found]] = []
    complete = True
    for write in last.writes:
        where = locate(write)
        if where is None:
            recovery.unverified.append(write)
            continue
        found.append((write, where))
        if where.size < write.offset + write.length:
            complete = False
    if complete:
        marks[last.sender] = max(marks.get(last.sender, 0), last.last)
        return recovery
    recovery.rolled_back = last
    marks.setdefault(last.sender, 0)
    recovery.truncate = [(where.name, write.offset) for write, where in found if where.size > write.offset]
    return recovery


def compacted(watermarks: dict[str, int], keep: Callable[[str], bool]) -> bytes:
    """A journal holding only the watermarks of the senders C{keep} accepts."""
    return b"".join(encode(Entry(sender, last, last)) for sender, last in sorted(watermarks.items()) if keep(sender))


class Journal:
    """The journal file in the log directory (I/O around L{parse}, L{plan} and L{compacted})."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.path = os.path.join(log_dir, JOURNAL_NAME)
        self._fd = -1
        self.size = 0

    def recover(self, keep: Callable[[str], bool]) -> Recovery:
        """Read the journal, repair the files, and start a compacted journal."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        entries, _bad = parse(data)
        recovery = plan(entries, self._locate)
        for name, offset in recovery.truncate:
            os.truncate(os.path.join(self.log_dir, name), offset)
        self.rewrite(recovery.watermarks, keep)
        return recovery

    def _locate(self, write: Write) -> Found | None:
        try:
            st = os.stat(os.path.join(self.log_dir, write.name))
            if (st.st_dev, st.st_ino) == (write.dev, write.ino):
                return Found(write.name, st.st_size)
        except FileNotFoundError:
            pass
        with os.scandir(self.log_dir) as it:
            for item in it:
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (write.dev, write.ino) and item.is_file(follow_symlinks=False):
                    return Found(item.name, st.st_size)
        return None

    def rewrite(self, watermarks: dict[str, int], keep: Callable[[str], bool]) -> None:
        """Replace the journal by its compacted form (atomically)."""
        data = compacted(watermarks, keep)
        temp = self.path + ".new"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.size = len(data)

    def record(self, entry: Entry) -> None:
        """Append C{entry}; call before writing the batch it describes."""
        line = encode(entry)
        _write_all(self._fd, line)
        self.size += len(line)

    @property
    def large(self) -> bool:
        return self.size > COMPACT_AFTER

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_all(fd: int, chunks: Iterable[bytes]) -> None:
    """Write every byte of C{chunks} to C{fd} (C{write(2)} may write less than asked)."""
    for chunk in chunks:
        _write_all(fd, chunk)
